//! One OPAQUE login attempt: started when KE1 arrives and KE2 leaves, then finished
//! once — succeeded or failed. It expires; the server's login state never enters it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::services::LoginVerifier;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignIn {
    started: bool,
    finished: bool,
    locked: bool,
    profile_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub enum SignInCommand {
    /// `profile_id` is `None` for an unknown username: the attempt still runs (with a
    /// dummy KE2) so the answer does not reveal whether the account exists. A locked
    /// account also runs the whole protocol, and fails at the end like a wrong
    /// password would.
    Start { profile_id: Option<Uuid>, locked: bool, at: DateTime<Utc>, expires_at: DateTime<Utc> },
    /// `credentials_current`: the account's registration record is still the one the
    /// attempt started with; a password reset (or removal) in between fails it, even
    /// with the old password's KE3.
    Finish { login_state: Vec<u8>, ke3: Vec<u8>, credentials_current: bool, at: DateTime<Utc> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    WrongPassword,
    UnknownUser,
    Expired,
    AccountLocked,
    CredentialsChanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SignInEvent {
    SignInStarted {
        profile_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        locked: bool,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    SignInSucceeded { profile_id: Uuid, at: DateTime<Utc> },
    SignInFailed { profile_id: Option<Uuid>, reason: FailureReason, at: DateTime<Utc> },
}
crate::domain_event!(SignInEvent { SignInStarted, SignInSucceeded, SignInFailed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignInError {
    #[error("sign-in already started")]
    AlreadyStarted,
    #[error("unknown sign-in")]
    Unknown,
    #[error("sign-in already finished")]
    AlreadyFinished,
}

impl SignIn {
    pub fn profile_id(&self) -> Option<Uuid> {
        self.profile_id
    }
}

impl crate::Subject for SignIn {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.profile_id
    }
}

impl Aggregate for SignIn {
    const TYPE: &'static str = "sign_in";
    type Command = SignInCommand;
    type Event = SignInEvent;
    type Error = SignInError;
    type Services = Arc<dyn LoginVerifier>;

    async fn handle(
        &mut self,
        command: Self::Command,
        verifier: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            SignInCommand::Start { profile_id, locked, at, expires_at } => {
                if self.started {
                    return Err(SignInError::AlreadyStarted);
                }
                SignInEvent::SignInStarted { profile_id, locked, started_at: at, expires_at }
            }
            SignInCommand::Finish { login_state, ke3, credentials_current, at } => {
                if !self.started {
                    return Err(SignInError::Unknown);
                }
                if self.finished {
                    return Err(SignInError::AlreadyFinished);
                }
                let failed = |reason| SignInEvent::SignInFailed { profile_id: self.profile_id, reason, at };
                // Checked for every attempt, so an unknown or throttled one takes the
                // same work as a wrong password.
                let proven = verifier.verify(&login_state, &ke3);
                match self.profile_id {
                    _ if self.expires_at.is_some_and(|expires_at| at >= expires_at) => {
                        failed(FailureReason::Expired)
                    }
                    None => failed(FailureReason::UnknownUser),
                    Some(_) if self.locked => failed(FailureReason::AccountLocked),
                    Some(_) if !credentials_current => failed(FailureReason::CredentialsChanged),
                    Some(profile_id) if proven => {
                        SignInEvent::SignInSucceeded { profile_id, at }
                    }
                    Some(_) => failed(FailureReason::WrongPassword),
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SignInEvent::SignInStarted { profile_id, locked, expires_at, .. } => {
                self.started = true;
                self.locked = locked;
                self.profile_id = profile_id;
                self.expires_at = Some(expires_at);
            }
            SignInEvent::SignInSucceeded { .. } | SignInEvent::SignInFailed { .. } => {
                self.finished = true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;
    use SignInCommand::*;
    use SignInEvent::*;

    /// Accepts exactly the finalization `b"proof"` for the state `b"state"`.
    struct Verifier;
    impl LoginVerifier for Verifier {
        fn verify(&self, login_state: &[u8], ke3: &[u8]) -> bool {
            login_state == b"state" && ke3 == b"proof"
        }
    }

    fn framework() -> TestFramework<SignIn> {
        TestFramework::with(Arc::new(Verifier) as Arc<dyn LoginVerifier>)
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn started(profile_id: Option<Uuid>) -> SignInEvent {
        SignInStarted { profile_id, locked: false, started_at: t0(), expires_at: t0() + Duration::minutes(2) }
    }

    fn finish(ke3: &[u8], after: Duration) -> SignInCommand {
        Finish { login_state: b"state".to_vec(), ke3: ke3.to_vec(), credentials_current: true, at: t0() + after }
    }

    #[tokio::test]
    async fn starting() {
        let profile_id = Some(Uuid::new_v4());
        framework()
            .given_no_previous_events()
            .when_async(Start { profile_id, locked: false, at: t0(), expires_at: t0() + Duration::minutes(2) })
            .await
            .then_expect_events(vec![started(profile_id)]);
    }

    #[tokio::test]
    async fn starting_twice_is_rejected() {
        framework()
            .given(vec![started(None)])
            .when_async(Start { profile_id: None, locked: false, at: t0(), expires_at: t0() })
            .await
            .then_expect_error(SignInError::AlreadyStarted);
    }

    #[tokio::test]
    async fn the_right_proof_succeeds() {
        let profile_id = Uuid::new_v4();
        framework()
            .given(vec![started(Some(profile_id))])
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_events(vec![SignInSucceeded { profile_id, at: t0() + Duration::seconds(5) }]);
    }

    #[tokio::test]
    async fn a_wrong_proof_fails() {
        let profile_id = Some(Uuid::new_v4());
        framework()
            .given(vec![started(profile_id)])
            .when_async(finish(b"guess", Duration::seconds(5)))
            .await
            .then_expect_events(vec![SignInFailed {
                profile_id,
                reason: FailureReason::WrongPassword,
                at: t0() + Duration::seconds(5),
            }]);
    }

    #[tokio::test]
    async fn an_unknown_user_always_fails() {
        framework()
            .given(vec![started(None)])
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_events(vec![SignInFailed {
                profile_id: None,
                reason: FailureReason::UnknownUser,
                at: t0() + Duration::seconds(5),
            }]);
    }

    #[tokio::test]
    async fn an_expired_attempt_fails_even_with_the_right_proof() {
        let profile_id = Some(Uuid::new_v4());
        framework()
            .given(vec![started(profile_id)])
            .when_async(finish(b"proof", Duration::minutes(2)))
            .await
            .then_expect_events(vec![SignInFailed {
                profile_id,
                reason: FailureReason::Expired,
                at: t0() + Duration::minutes(2),
            }]);
    }

    #[tokio::test]
    async fn a_locked_account_fails_even_with_the_right_proof() {
        let profile_id = Some(Uuid::new_v4());
        framework()
            .given(vec![SignInStarted {
                profile_id,
                locked: true,
                started_at: t0(),
                expires_at: t0() + Duration::minutes(2),
            }])
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_events(vec![SignInFailed {
                profile_id,
                reason: FailureReason::AccountLocked,
                at: t0() + Duration::seconds(5),
            }]);
    }

    #[tokio::test]
    async fn a_password_reset_since_the_start_fails_even_the_old_proof() {
        let profile_id = Some(Uuid::new_v4());
        let at = t0() + Duration::seconds(5);
        framework()
            .given(vec![started(profile_id)])
            .when_async(Finish { login_state: b"state".to_vec(), ke3: b"proof".to_vec(), credentials_current: false, at })
            .await
            .then_expect_events(vec![SignInFailed { profile_id, reason: FailureReason::CredentialsChanged, at }]);
    }

    #[tokio::test]
    async fn finishing_twice_is_rejected() {
        let profile_id = Uuid::new_v4();
        framework()
            .given(vec![started(Some(profile_id)), SignInSucceeded { profile_id, at: t0() }])
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_error(SignInError::AlreadyFinished);
    }

    #[tokio::test]
    async fn finishing_after_a_failure_is_rejected() {
        framework()
            .given(vec![
                started(None),
                SignInFailed { profile_id: None, reason: FailureReason::UnknownUser, at: t0() },
            ])
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_error(SignInError::AlreadyFinished);
    }

    #[tokio::test]
    async fn finishing_an_unknown_attempt_is_rejected() {
        framework()
            .given_no_previous_events()
            .when_async(finish(b"proof", Duration::seconds(5)))
            .await
            .then_expect_error(SignInError::Unknown);
    }
}
