//! The account an external identity signs in to (id: a keyed hash of the issuer and
//! the subject of an OpenID provider's ID token): one account per identity, released
//! when the account is removed ([`Identity`]); and the identities an account holds
//! ([`IdentityLinks`], id: the profile id), so its removal can release each.

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
    /// The account `profile_id` lets go of it (its removal); nothing when another
    /// account, or none, holds it.
    Release { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdentityEvent {
    IdentityLinked { profile_id: Uuid, provider: String },
    IdentityReleased { profile_id: Uuid },
}
crate::domain_event!(IdentityEvent { IdentityLinked, IdentityReleased });

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
        let event = match command {
            IdentityCommand::Link { profile_id, provider } => match self.owner {
                Some(owner) if owner == profile_id => return Ok(()),
                Some(_) => return Err(IdentityError::Taken),
                None => IdentityEvent::IdentityLinked { profile_id, provider },
            },
            IdentityCommand::Release { profile_id } => match self.owner {
                Some(owner) if owner == profile_id => IdentityEvent::IdentityReleased { profile_id },
                _ => return Ok(()),
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.owner = match event {
            IdentityEvent::IdentityLinked { profile_id, .. } => Some(profile_id),
            IdentityEvent::IdentityReleased { .. } => None,
        };
    }
}

/// The identities one account holds (id: the profile id), by their [`Identity`] ids
/// (keyed hashes: nothing personal).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdentityLinks {
    identities: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum IdentityLinksCommand {
    /// The account now holds the identity `identity_id` (decided with its `Link`).
    Add { identity_id: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdentityLinksEvent {
    IdentityAdded { identity_id: String },
}
crate::domain_event!(IdentityLinksEvent { IdentityAdded });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityLinksError {}

impl IdentityLinks {
    /// Every identity the account was linked to (released ones too: releasing is a
    /// no-op for an identity no longer the account's).
    pub fn identities(&self) -> &[String] {
        &self.identities
    }
}

impl crate::Subject for IdentityLinks {
    fn subject(&self, id: &str) -> Option<Uuid> {
        Uuid::parse_str(id).ok()
    }
}

impl Aggregate for IdentityLinks {
    const TYPE: &'static str = "identity_links";
    type Command = IdentityLinksCommand;
    type Event = IdentityLinksEvent;
    type Error = IdentityLinksError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let IdentityLinksCommand::Add { identity_id } = command;
        if !self.identities.contains(&identity_id) {
            sink.write(IdentityLinksEvent::IdentityAdded { identity_id }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let IdentityLinksEvent::IdentityAdded { identity_id } = event;
        self.identities.push(identity_id);
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

    #[tokio::test]
    async fn a_released_identity_links_again() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let linked = IdentityEvent::IdentityLinked { profile_id: alice, provider: "p".into() };
        TestFramework::<Identity>::with(())
            .given(vec![linked.clone()])
            .when_async(IdentityCommand::Release { profile_id: alice })
            .await
            .then_expect_events(vec![IdentityEvent::IdentityReleased { profile_id: alice }]);
        TestFramework::<Identity>::with(())
            .given(vec![linked.clone(), IdentityEvent::IdentityReleased { profile_id: alice }])
            .when_async(IdentityCommand::Link { profile_id: bob, provider: "p".into() })
            .await
            .then_expect_events(vec![IdentityEvent::IdentityLinked { profile_id: bob, provider: "p".into() }]);
        TestFramework::<Identity>::with(())
            .given(vec![linked])
            .when_async(IdentityCommand::Release { profile_id: bob })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn an_account_lists_each_identity_once() {
        let added = IdentityLinksEvent::IdentityAdded { identity_id: "i1".into() };
        TestFramework::<IdentityLinks>::with(())
            .given(vec![added.clone()])
            .when_async(IdentityLinksCommand::Add { identity_id: "i1".into() })
            .await
            .then_expect_events(vec![]);
        TestFramework::<IdentityLinks>::with(())
            .given(vec![added])
            .when_async(IdentityLinksCommand::Add { identity_id: "i2".into() })
            .await
            .then_expect_events(vec![IdentityLinksEvent::IdentityAdded { identity_id: "i2".into() }]);
    }
}
