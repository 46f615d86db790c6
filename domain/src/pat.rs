//! Personal access tokens: long-lived secrets an account creates (shown once) to sign
//! in machines and scripts. Only a keyed hash of each secret enters the log; a
//! token signs in while it is neither revoked nor expired. One aggregate per account
//! (id: the profile id) holds them all, so the list and the check read one stream.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most tokens (live or not) one account may hold.
pub const MAX_PATS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pat {
    pub pat_id: Uuid,
    pub name: String,
    /// Keyed hash of the secret (hex).
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pats {
    tokens: Vec<Pat>,
}

#[derive(Debug, Clone)]
pub enum PatsCommand {
    Create { pat_id: Uuid, name: String, secret_hash: String, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    /// A sign-in presenting the secret whose keyed hash is `presented_hash`.
    Use { pat_id: Uuid, presented_hash: String, at: DateTime<Utc> },
    Revoke { pat_id: Uuid, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PatsEvent {
    PatCreated { pat_id: Uuid, name: String, secret_hash: String, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    PatUsed { pat_id: Uuid, at: DateTime<Utc> },
    PatRevoked { pat_id: Uuid, at: DateTime<Utc> },
}
crate::domain_event!(PatsEvent { PatCreated, PatUsed, PatRevoked });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatsError {
    #[error("an account holds at most {MAX_PATS} personal access tokens")]
    TooMany,
    #[error("the token must expire in the future")]
    AlreadyExpired,
    #[error("no such personal access token")]
    NotFound,
    /// Wrong secret, revoked or expired: one answer for all.
    #[error("the personal access token is not valid")]
    Invalid,
}

impl Pats {
    pub fn tokens(&self) -> &[Pat] {
        &self.tokens
    }
    /// Whether the token `pat_id` still stands `at`: neither revoked nor expired.
    /// A session it opened lives only as long (src/app/sessions.rs).
    pub fn admits(&self, pat_id: Uuid, at: DateTime<Utc>) -> bool {
        self.token(pat_id).is_some_and(|token| token.revoked_at.is_none() && at < token.expires_at)
    }
    fn token(&self, pat_id: Uuid) -> Option<&Pat> {
        self.tokens.iter().find(|t| t.pat_id == pat_id)
    }
}

impl crate::Subject for Pats {
    fn subject(&self, id: &str) -> Option<Uuid> {
        Uuid::parse_str(id).ok()
    }
}

impl Aggregate for Pats {
    const TYPE: &'static str = "pats";
    type Command = PatsCommand;
    type Event = PatsEvent;
    type Error = PatsError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            PatsCommand::Create { pat_id, name, secret_hash, expires_at, at } => {
                if self.tokens.len() >= MAX_PATS {
                    return Err(PatsError::TooMany);
                }
                if expires_at <= at {
                    return Err(PatsError::AlreadyExpired);
                }
                PatsEvent::PatCreated { pat_id, name, secret_hash, expires_at, at }
            }
            PatsCommand::Use { pat_id, presented_hash, at } => {
                let token = self.token(pat_id).ok_or(PatsError::Invalid)?;
                if token.secret_hash != presented_hash || token.revoked_at.is_some() || at >= token.expires_at {
                    return Err(PatsError::Invalid);
                }
                PatsEvent::PatUsed { pat_id, at }
            }
            PatsCommand::Revoke { pat_id, at } => match self.token(pat_id) {
                Some(token) if token.revoked_at.is_none() => PatsEvent::PatRevoked { pat_id, at },
                _ => return Err(PatsError::NotFound),
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PatsEvent::PatCreated { pat_id, name, secret_hash, expires_at, at } => self.tokens.push(Pat {
                pat_id,
                name,
                secret_hash,
                created_at: at,
                expires_at,
                revoked_at: None,
                last_used_at: None,
            }),
            PatsEvent::PatUsed { pat_id, at } => {
                if let Some(token) = self.tokens.iter_mut().find(|t| t.pat_id == pat_id) {
                    token.last_used_at = Some(at);
                }
            }
            PatsEvent::PatRevoked { pat_id, at } => {
                if let Some(token) = self.tokens.iter_mut().find(|t| t.pat_id == pat_id) {
                    token.revoked_at = Some(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type T = TestFramework<Pats>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn created(pat_id: Uuid) -> PatsEvent {
        PatsEvent::PatCreated { pat_id, name: "ci".into(), secret_hash: "h".into(), expires_at: at() + Duration::days(30), at: at() }
    }

    fn using(pat_id: Uuid, hash: &str, at: DateTime<Utc>) -> PatsCommand {
        PatsCommand::Use { pat_id, presented_hash: hash.into(), at }
    }

    #[tokio::test]
    async fn a_token_signs_in_while_right_unrevoked_and_unexpired() {
        let id = Uuid::new_v4();
        T::with(()).given(vec![created(id)]).when_async(using(id, "h", at())).await.then_expect_events(vec![PatsEvent::PatUsed { pat_id: id, at: at() }]);
        T::with(()).given(vec![created(id)]).when_async(using(id, "x", at())).await.then_expect_error(PatsError::Invalid);
        T::with(()).given(vec![created(id)]).when_async(using(id, "h", at() + Duration::days(30))).await.then_expect_error(PatsError::Invalid);
        T::with(())
            .given(vec![created(id), PatsEvent::PatRevoked { pat_id: id, at: at() }])
            .when_async(using(id, "h", at()))
            .await
            .then_expect_error(PatsError::Invalid);
        T::with(()).given(vec![created(id)]).when_async(using(Uuid::new_v4(), "h", at())).await.then_expect_error(PatsError::Invalid);
    }

    #[test]
    fn a_token_admits_its_sessions_until_revoked_or_expired() {
        let (id, mut pats) = (Uuid::new_v4(), Pats::default());
        pats.apply(created(id));
        assert!(pats.admits(id, at()) && !pats.admits(Uuid::new_v4(), at()));
        assert!(!pats.admits(id, at() + Duration::days(30)), "expired");
        pats.apply(PatsEvent::PatRevoked { pat_id: id, at: at() });
        assert!(!pats.admits(id, at()), "revoked");
    }

    #[tokio::test]
    async fn creation_and_revocation_rules() {
        let id = Uuid::new_v4();
        let create = |expires_at| PatsCommand::Create { pat_id: id, name: "ci".into(), secret_hash: "h".into(), expires_at, at: at() };
        T::with(()).given_no_previous_events().when_async(create(at())).await.then_expect_error(PatsError::AlreadyExpired);
        T::with(())
            .given((0..MAX_PATS).map(|_| created(Uuid::new_v4())).collect())
            .when_async(create(at() + Duration::days(1)))
            .await
            .then_expect_error(PatsError::TooMany);
        T::with(())
            .given(vec![created(id), PatsEvent::PatRevoked { pat_id: id, at: at() }])
            .when_async(PatsCommand::Revoke { pat_id: id, at: at() })
            .await
            .then_expect_error(PatsError::NotFound);
    }
}
