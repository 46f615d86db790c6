//! An ID token of an OpenID provider, once it has signed in or linked: each accepted
//! token is its own aggregate (its id is a keyed hash of the token, never the token),
//! so the event store's key lets a token be used at most once, across replicas and
//! restarts, even when two requests present it at the same moment.
//!
//! Its stream is one event: `IdTokenUsed`. Every later use is refused, whatever the
//! time; the event keeps the token's expiry so the record's purpose is plain (it only
//! has to outlive the token, after which the signature check refuses it anyway).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a token is in its (short) life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum IdToken {
    /// Never presented successfully.
    #[default]
    Unused,
    /// Signed `profile_id` in (or linked its identity to it); the token expires at `until`.
    Used { profile_id: Uuid, until: DateTime<Utc> },
}

#[derive(Debug, Clone)]
pub enum IdTokenCommand {
    /// Spend the token for `profile_id`; `expires_at` is its `exp`, `at` the time now.
    Use { profile_id: Uuid, expires_at: DateTime<Utc>, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdTokenEvent {
    IdTokenUsed { profile_id: Uuid, until: DateTime<Utc> },
}
crate::domain_event!(IdTokenEvent { IdTokenUsed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdTokenError {
    #[error("this ID token has already been used")]
    AlreadyUsed,
    #[error("this ID token has expired")]
    Expired,
}

impl IdToken {
    pub fn is_used(&self) -> bool {
        matches!(self, IdToken::Used { .. })
    }
}

impl crate::Subject for IdToken {
    fn subject(&self, _: &str) -> Option<Uuid> {
        match self {
            IdToken::Unused => None,
            IdToken::Used { profile_id, .. } => Some(*profile_id),
        }
    }
}

impl Aggregate for IdToken {
    const TYPE: &'static str = "id_token";
    type Command = IdTokenCommand;
    type Event = IdTokenEvent;
    type Error = IdTokenError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let IdTokenCommand::Use { profile_id, expires_at, at } = command;
        if self.is_used() {
            return Err(IdTokenError::AlreadyUsed);
        }
        if at >= expires_at {
            return Err(IdTokenError::Expired);
        }
        sink.write(IdTokenEvent::IdTokenUsed { profile_id, until: expires_at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let IdTokenEvent::IdTokenUsed { profile_id, until } = event;
        *self = IdToken::Used { profile_id, until };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;
    use IdTokenCommand::*;
    use IdTokenEvent::*;

    type T = TestFramework<IdToken>;

    #[tokio::test]
    async fn a_token_is_used_once() {
        let (profile_id, at) = (Uuid::new_v4(), Utc::now());
        let expires_at = at + Duration::minutes(5);
        T::with(())
            .given_no_previous_events()
            .when_async(Use { profile_id, expires_at, at })
            .await
            .then_expect_events(vec![IdTokenUsed { profile_id, until: expires_at }]);
    }

    #[tokio::test]
    async fn a_second_use_is_refused_even_for_the_same_account() {
        let (profile_id, at) = (Uuid::new_v4(), Utc::now());
        let expires_at = at + Duration::minutes(5);
        T::with(())
            .given(vec![IdTokenUsed { profile_id, until: expires_at }])
            .when_async(Use { profile_id, expires_at, at })
            .await
            .then_expect_error(IdTokenError::AlreadyUsed);
        T::with(())
            .given(vec![IdTokenUsed { profile_id, until: expires_at }])
            .when_async(Use { profile_id: Uuid::new_v4(), expires_at, at: at + Duration::minutes(1) })
            .await
            .then_expect_error(IdTokenError::AlreadyUsed);
    }

    #[tokio::test]
    async fn a_used_token_stays_used_after_it_expires() {
        let (profile_id, at) = (Uuid::new_v4(), Utc::now());
        T::with(())
            .given(vec![IdTokenUsed { profile_id, until: at }])
            .when_async(Use { profile_id, expires_at: at, at: at + Duration::days(1) })
            .await
            .then_expect_error(IdTokenError::AlreadyUsed);
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let at = Utc::now();
        T::with(())
            .given_no_previous_events()
            .when_async(Use { profile_id: Uuid::new_v4(), expires_at: at, at })
            .await
            .then_expect_error(IdTokenError::Expired);
    }

    #[test]
    fn its_subject_is_the_account_it_signed_in() {
        use crate::Subject;
        let profile_id = Uuid::new_v4();
        assert_eq!(IdToken::Unused.subject("x"), None);
        assert_eq!(IdToken::Used { profile_id, until: Utc::now() }.subject("x"), Some(profile_id));
    }
}
