//! The second step of a sign-in with MFA on: a single-use, short-lived ticket (the
//! aggregate id is a keyed hash of it, never the ticket) that a valid code turns into
//! a session. Wrong codes are counted; too many kill the ticket.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MfaChallenge {
    profile_id: Option<Uuid>,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    failures: u32,
    max_failures: u32,
    completed: bool,
    /// The first factor the ticket continues (RFC 8176 name).
    #[serde(default = "password")]
    first_factor: String,
}

/// Tickets from before every first factor could ask for TOTP followed a password.
fn password() -> String {
    "pwd".into()
}

#[derive(Debug, Clone)]
pub enum MfaChallengeCommand {
    /// After the first factor `first_factor` (an RFC 8176 name) of an account with TOTP on.
    Issue { profile_id: Uuid, first_factor: String, max_failures: u32, at: DateTime<Utc>, expires_at: DateTime<Utc> },
    /// A wrong code was given for this ticket.
    Fail { at: DateTime<Utc> },
    /// A valid code was given (checked and spent on the account's `Mfa`).
    Complete { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MfaChallengeEvent {
    MfaChallengeIssued {
        profile_id: Uuid,
        /// Absent in tickets from before every first factor could ask for TOTP: `pwd`.
        #[serde(default = "password")]
        first_factor: String,
        max_failures: u32,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    MfaChallengeFailed { failures: u32, at: DateTime<Utc> },
    MfaChallengeCompleted { profile_id: Uuid, at: DateTime<Utc> },
}
crate::domain_event!(MfaChallengeEvent { MfaChallengeIssued, MfaChallengeFailed, MfaChallengeCompleted });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MfaChallengeError {
    #[error("ticket already issued")]
    AlreadyIssued,
    #[error("unknown, used, expired or exhausted ticket")]
    Unusable,
}

impl MfaChallenge {
    /// When the ticket was issued (the password step it continues).
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.issued_at
    }

    /// The first factor the ticket continues.
    pub fn first_factor(&self) -> &str {
        &self.first_factor
    }

    /// The account, while the ticket can still be used at `at`.
    pub fn usable_for(&self, at: DateTime<Utc>) -> Option<Uuid> {
        let live = !self.completed
            && self.failures < self.max_failures
            && self.expires_at.is_some_and(|expires_at| at < expires_at);
        self.profile_id.filter(|_| live)
    }
}

impl crate::Subject for MfaChallenge {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.profile_id
    }
}

impl Aggregate for MfaChallenge {
    const TYPE: &'static str = "mfa_challenge";
    type Command = MfaChallengeCommand;
    type Event = MfaChallengeEvent;
    type Error = MfaChallengeError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            MfaChallengeCommand::Issue { profile_id, first_factor, max_failures, at, expires_at } => {
                if self.profile_id.is_some() {
                    return Err(MfaChallengeError::AlreadyIssued);
                }
                MfaChallengeEvent::MfaChallengeIssued { profile_id, first_factor, max_failures, issued_at: at, expires_at }
            }
            MfaChallengeCommand::Fail { at } => {
                self.usable_for(at).ok_or(MfaChallengeError::Unusable)?;
                MfaChallengeEvent::MfaChallengeFailed { failures: self.failures + 1, at }
            }
            MfaChallengeCommand::Complete { at } => {
                let profile_id = self.usable_for(at).ok_or(MfaChallengeError::Unusable)?;
                MfaChallengeEvent::MfaChallengeCompleted { profile_id, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MfaChallengeEvent::MfaChallengeIssued { profile_id, first_factor, max_failures, issued_at, expires_at } => {
                self.profile_id = Some(profile_id);
                self.first_factor = first_factor;
                self.issued_at = Some(issued_at);
                self.max_failures = max_failures;
                self.expires_at = Some(expires_at);
            }
            MfaChallengeEvent::MfaChallengeFailed { failures, .. } => self.failures = failures,
            MfaChallengeEvent::MfaChallengeCompleted { .. } => self.completed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;
    use MfaChallengeCommand::*;
    use MfaChallengeEvent::*;

    type T = TestFramework<MfaChallenge>;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn issued(profile_id: Uuid) -> MfaChallengeEvent {
        MfaChallengeIssued { profile_id, first_factor: "email".into(), max_failures: 2, issued_at: t0(), expires_at: t0() + Duration::minutes(5) }
    }

    #[test]
    fn a_ticket_remembers_its_first_factor_and_old_ones_followed_a_password() {
        let mut challenge = MfaChallenge::default();
        challenge.apply(issued(Uuid::nil()));
        assert_eq!(challenge.first_factor(), "email");
        let old = serde_json::json!({"MfaChallengeIssued": {"profile_id": Uuid::nil(), "max_failures": 5, "issued_at": t0(), "expires_at": t0()}});
        let mut challenge = MfaChallenge::default();
        challenge.apply(serde_json::from_value(old).expect("old event"));
        assert_eq!(challenge.first_factor(), "pwd");
    }

    #[tokio::test]
    async fn issuing() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given_no_previous_events()
            .when_async(Issue { profile_id, first_factor: "email".into(), max_failures: 2, at: t0(), expires_at: t0() + Duration::minutes(5) })
            .await
            .then_expect_events(vec![issued(profile_id)]);
    }

    #[tokio::test]
    async fn issuing_twice_is_rejected() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given(vec![issued(profile_id)])
            .when_async(Issue { profile_id, first_factor: "email".into(), max_failures: 2, at: t0(), expires_at: t0() })
            .await
            .then_expect_error(MfaChallengeError::AlreadyIssued);
    }

    #[tokio::test]
    async fn completing() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given(vec![issued(profile_id)])
            .when_async(Complete { at: t0() })
            .await
            .then_expect_events(vec![MfaChallengeCompleted { profile_id, at: t0() }]);
    }

    #[tokio::test]
    async fn a_ticket_is_single_use() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given(vec![issued(profile_id), MfaChallengeCompleted { profile_id, at: t0() }])
            .when_async(Complete { at: t0() })
            .await
            .then_expect_error(MfaChallengeError::Unusable);
    }

    #[tokio::test]
    async fn an_expired_ticket_is_rejected() {
        T::with(())
            .given(vec![issued(Uuid::new_v4())])
            .when_async(Complete { at: t0() + Duration::minutes(5) })
            .await
            .then_expect_error(MfaChallengeError::Unusable);
    }

    #[tokio::test]
    async fn failures_are_counted() {
        T::with(())
            .given(vec![issued(Uuid::new_v4())])
            .when_async(Fail { at: t0() })
            .await
            .then_expect_events(vec![MfaChallengeFailed { failures: 1, at: t0() }]);
    }

    #[tokio::test]
    async fn too_many_failures_kill_the_ticket() {
        T::with(())
            .given(vec![issued(Uuid::new_v4()), MfaChallengeFailed { failures: 1, at: t0() }, MfaChallengeFailed { failures: 2, at: t0() }])
            .when_async(Complete { at: t0() })
            .await
            .then_expect_error(MfaChallengeError::Unusable);
    }

    #[tokio::test]
    async fn an_unknown_ticket_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(Fail { at: t0() })
            .await
            .then_expect_error(MfaChallengeError::Unusable);
    }
}
