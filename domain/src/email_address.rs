//! One account per verified email address (id: a keyed hash of the normalised
//! address), claimed when a code or link proves the address and released on change
//! and removal: a mailed code or link finds its one account, and no address is
//! verified on two (an anonymous account cannot take over another's address).
//! Addresses verified before this aggregate existed are claimed once at start-up
//! (src/app/email_owners.rs).

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmailAddress {
    owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum EmailAddressCommand {
    Claim { profile_id: Uuid },
    Release { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmailAddressEvent {
    EmailAddressClaimed { profile_id: Uuid },
    EmailAddressReleased { profile_id: Uuid },
}
crate::domain_event!(EmailAddressEvent { EmailAddressClaimed, EmailAddressReleased });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmailAddressError {
    #[error("this email address is another account's")]
    Taken,
}

impl EmailAddress {
    pub fn owner(&self) -> Option<Uuid> {
        self.owner
    }
}

impl crate::Subject for EmailAddress {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.owner
    }
}

impl Aggregate for EmailAddress {
    const TYPE: &'static str = "email_address";
    type Command = EmailAddressCommand;
    type Event = EmailAddressEvent;
    type Error = EmailAddressError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match (command, self.owner) {
            (EmailAddressCommand::Claim { profile_id }, None) => EmailAddressEvent::EmailAddressClaimed { profile_id },
            (EmailAddressCommand::Claim { profile_id }, Some(owner)) if owner != profile_id => return Err(EmailAddressError::Taken),
            (EmailAddressCommand::Release { profile_id }, Some(owner)) if owner == profile_id => EmailAddressEvent::EmailAddressReleased { profile_id },
            // Claiming one's own address again, or releasing one not held: nothing to do.
            _ => return Ok(()),
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.owner = match event {
            EmailAddressEvent::EmailAddressClaimed { profile_id } => Some(profile_id),
            EmailAddressEvent::EmailAddressReleased { .. } => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use EmailAddressCommand::*;
    use EmailAddressEvent::*;

    type T = TestFramework<EmailAddress>;

    #[tokio::test]
    async fn an_address_is_one_account_s_until_released() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        T::with(()).given_no_previous_events().when_async(Claim { profile_id: alice }).await.then_expect_events(vec![EmailAddressClaimed { profile_id: alice }]);
        T::with(()).given(vec![EmailAddressClaimed { profile_id: alice }]).when_async(Claim { profile_id: bob }).await.then_expect_error(EmailAddressError::Taken);
        T::with(()).given(vec![EmailAddressClaimed { profile_id: alice }]).when_async(Claim { profile_id: alice }).await.then_expect_events(vec![]);
        T::with(()).given(vec![EmailAddressClaimed { profile_id: alice }]).when_async(Release { profile_id: bob }).await.then_expect_events(vec![]);
        T::with(())
            .given(vec![EmailAddressClaimed { profile_id: alice }, EmailAddressReleased { profile_id: alice }])
            .when_async(Claim { profile_id: bob })
            .await
            .then_expect_events(vec![EmailAddressClaimed { profile_id: bob }]);
    }
}
