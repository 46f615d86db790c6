//! One account per verified phone number (id: a keyed hash of the E.164 number), so a
//! texted sign-in code finds its account, and no number signs in to two.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhoneNumber {
    owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum PhoneNumberCommand {
    Claim { profile_id: Uuid },
    Release { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PhoneNumberEvent {
    PhoneNumberClaimed { profile_id: Uuid },
    PhoneNumberReleased { profile_id: Uuid },
}
crate::domain_event!(PhoneNumberEvent { PhoneNumberClaimed, PhoneNumberReleased });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("this phone number is another account's")]
    Taken,
}

impl PhoneNumber {
    pub fn owner(&self) -> Option<Uuid> {
        self.owner
    }
}

impl crate::Subject for PhoneNumber {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.owner
    }
}

impl Aggregate for PhoneNumber {
    const TYPE: &'static str = "phone_number";
    type Command = PhoneNumberCommand;
    type Event = PhoneNumberEvent;
    type Error = PhoneNumberError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            PhoneNumberCommand::Claim { profile_id } => match self.owner {
                Some(owner) if owner != profile_id => return Err(PhoneNumberError::Taken),
                Some(_) => return Ok(()),
                None => PhoneNumberEvent::PhoneNumberClaimed { profile_id },
            },
            PhoneNumberCommand::Release { profile_id } => match self.owner {
                Some(owner) if owner == profile_id => PhoneNumberEvent::PhoneNumberReleased { profile_id },
                _ => return Ok(()),
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.owner = match event {
            PhoneNumberEvent::PhoneNumberClaimed { profile_id } => Some(profile_id),
            PhoneNumberEvent::PhoneNumberReleased { .. } => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[tokio::test]
    async fn a_number_is_one_accounts() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let claimed = PhoneNumberEvent::PhoneNumberClaimed { profile_id: alice };
        TestFramework::<PhoneNumber>::with(())
            .given(vec![claimed.clone()])
            .when_async(PhoneNumberCommand::Claim { profile_id: bob })
            .await
            .then_expect_error(PhoneNumberError::Taken);
        TestFramework::<PhoneNumber>::with(())
            .given(vec![claimed.clone()])
            .when_async(PhoneNumberCommand::Release { profile_id: bob })
            .await
            .then_expect_events(vec![]);
        TestFramework::<PhoneNumber>::with(())
            .given(vec![claimed])
            .when_async(PhoneNumberCommand::Release { profile_id: alice })
            .await
            .then_expect_events(vec![PhoneNumberEvent::PhoneNumberReleased { profile_id: alice }]);
    }
}
