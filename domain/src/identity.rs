//! The account an external identity signs in to (id: a keyed hash of the issuer and
//! the subject of an OpenID provider's ID token): one account per identity.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Identity {
    owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum IdentityCommand {
    /// `provider`: the configured name it came through.
    Link { profile_id: Uuid, provider: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdentityEvent {
    IdentityLinked { profile_id: Uuid, provider: String },
}
crate::domain_event!(IdentityEvent { IdentityLinked });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    #[error("this identity is linked to another account")]
    Taken,
}

impl Identity {
    pub fn owner(&self) -> Option<Uuid> {
        self.owner
    }
}

impl crate::Subject for Identity {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.owner
    }
}

impl Aggregate for Identity {
    const TYPE: &'static str = "identity";
    type Command = IdentityCommand;
    type Event = IdentityEvent;
    type Error = IdentityError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let IdentityCommand::Link { profile_id, provider } = command;
        match self.owner {
            Some(owner) if owner == profile_id => Ok(()),
            Some(_) => Err(IdentityError::Taken),
            None => {
                sink.write(IdentityEvent::IdentityLinked { profile_id, provider }, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        let IdentityEvent::IdentityLinked { profile_id, .. } = event;
        self.owner = Some(profile_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[tokio::test]
    async fn an_identity_is_one_accounts() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let linked = IdentityEvent::IdentityLinked { profile_id: alice, provider: "p".into() };
        TestFramework::<Identity>::with(())
            .given(vec![linked.clone()])
            .when_async(IdentityCommand::Link { profile_id: bob, provider: "p".into() })
            .await
            .then_expect_error(IdentityError::Taken);
        TestFramework::<Identity>::with(())
            .given(vec![linked])
            .when_async(IdentityCommand::Link { profile_id: alice, provider: "p".into() })
            .await
            .then_expect_events(vec![]);
    }
}
