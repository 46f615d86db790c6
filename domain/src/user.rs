//! An account: registered with its OPAQUE record; verifies its email; resets its
//! password (a fresh OPAQUE registration); can be removed. It decides which of its
//! sessions still count: every session opened before its last revocation — sign-out
//! everywhere, a password reset, removal — is over, whatever the session's own
//! stream says (so no read model decides it). Failed sign-ins are not
//! counted here (the stream would grow with every attempt) but by the `Throttle`
//! aggregate of the account and time window.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

/// Size of an OPAQUE registration record for authd's cipher suite.
pub const REGISTRATION_RECORD_LEN: usize = 192;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    registered: bool,
    removed: bool,
    username: String,
    registration_record: Vec<u8>,
    email: Option<String>,
    email_verified: bool,
    sessions_revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    Register {
        username: String,
        registration_record: Vec<u8>,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    /// A code sent to `email` came back.
    VerifyEmail { email: String, at: DateTime<Utc> },
    /// A fresh OPAQUE registration replaces the old one.
    ResetPassword { registration_record: Vec<u8>, at: DateTime<Utc> },
    Remove { at: DateTime<Utc> },
    /// Ends every session opened until now (sign-out everywhere).
    RevokeSessions { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        username: String,
        /// The OPAQUE record (base64url): useless without the server's secret setup.
        registration_record: String,
        email: Option<String>,
        registered_at: DateTime<Utc>,
    },
    /// History only (no longer written): the lockout once counted here, see
    /// `throttle`.
    SignInFailureCounted { consecutive: u32, at: DateTime<Utc> },
    SignInFailuresReset { at: DateTime<Utc> },
    AccountLocked { until: DateTime<Utc>, at: DateTime<Utc> },
    EmailVerified { email: String, at: DateTime<Utc> },
    PasswordReset { registration_record: String, at: DateTime<Utc> },
    UserRemoved { at: DateTime<Utc> },
    SessionsRevoked { at: DateTime<Utc> },
}
crate::domain_event!(UserEvent {
    UserRegistered,
    SignInFailureCounted,
    SignInFailuresReset,
    AccountLocked,
    EmailVerified,
    PasswordReset,
    UserRemoved,
    SessionsRevoked,
});

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("account already registered")]
    AlreadyRegistered,
    #[error("no such account")]
    NotRegistered,
    #[error("registration record must be {REGISTRATION_RECORD_LEN} bytes")]
    BadRecord,
    #[error("the email was changed or is already verified")]
    EmailMismatch,
}

impl User {
    /// Registered and not removed.
    pub fn is_registered(&self) -> bool {
        self.registered && !self.removed
    }
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }
    pub fn email_verified(&self) -> bool {
        self.email_verified
    }
    /// Whether a session opened at `opened_at` still counts: the account exists and
    /// has not revoked its sessions since.
    pub fn admits_session(&self, opened_at: DateTime<Utc>) -> bool {
        self.is_registered() && self.sessions_revoked_at.is_none_or(|revoked| opened_at > revoked)
    }
    pub fn username(&self) -> &str {
        &self.username
    }
    /// The OPAQUE record, present once registered.
    pub fn registration_record(&self) -> Option<&[u8]> {
        self.is_registered().then_some(self.registration_record.as_slice())
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if !matches!(command, UserCommand::Register { .. }) && !self.is_registered() {
            return Err(UserError::NotRegistered);
        }
        match command {
            UserCommand::Register { username, registration_record, email, at } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                if registration_record.len() != REGISTRATION_RECORD_LEN {
                    return Err(UserError::BadRecord);
                }
                let event = UserEvent::UserRegistered {
                    username,
                    registration_record: encode(&registration_record),
                    email,
                    registered_at: at,
                };
                sink.write(event, self).await;
            }
            UserCommand::VerifyEmail { email, at } => {
                if self.email.as_deref() != Some(email.as_str()) || self.email_verified {
                    return Err(UserError::EmailMismatch);
                }
                sink.write(UserEvent::EmailVerified { email, at }, self).await;
            }
            UserCommand::ResetPassword { registration_record, at } => {
                if registration_record.len() != REGISTRATION_RECORD_LEN {
                    return Err(UserError::BadRecord);
                }
                let event = UserEvent::PasswordReset { registration_record: encode(&registration_record), at };
                sink.write(event, self).await;
            }
            UserCommand::Remove { at } => sink.write(UserEvent::UserRemoved { at }, self).await,
            UserCommand::RevokeSessions { at } => sink.write(UserEvent::SessionsRevoked { at }, self).await,
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { username, registration_record, email, .. } => {
                self.registered = true;
                self.username = username;
                self.registration_record = decode(&registration_record);
                self.email = email;
            }
            UserEvent::SignInFailureCounted { .. }
            | UserEvent::SignInFailuresReset { .. }
            | UserEvent::AccountLocked { .. } => {}
            UserEvent::EmailVerified { .. } => self.email_verified = true,
            UserEvent::PasswordReset { registration_record, at } => {
                self.registration_record = decode(&registration_record);
                self.sessions_revoked_at = Some(at);
            }
            UserEvent::UserRemoved { at } => {
                self.removed = true;
                self.sessions_revoked_at = Some(at);
            }
            UserEvent::SessionsRevoked { at } => self.sessions_revoked_at = Some(at),
        }
    }
}

// The record travels in the event as base64url, like every protocol message.
fn encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    // Only this aggregate writes the field, so it always decodes; an empty record
    // would fail every sign-in rather than admit one.
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use UserCommand::*;
    use UserEvent::*;

    type T = TestFramework<User>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn registered() -> UserEvent {
        UserRegistered {
            username: "alice".into(),
            registration_record: encode(&[7u8; REGISTRATION_RECORD_LEN]),
            email: None,
            registered_at: at(),
        }
    }

    fn with_email(email: &str) -> UserEvent {
        UserRegistered {
            username: "alice".into(),
            registration_record: encode(&[7u8; REGISTRATION_RECORD_LEN]),
            email: Some(email.into()),
            registered_at: at(),
        }
    }

    #[tokio::test]
    async fn verifying_the_registered_email() {
        T::with(())
            .given(vec![with_email("a@example.com")])
            .when_async(VerifyEmail { email: "a@example.com".into(), at: at() })
            .await
            .then_expect_events(vec![EmailVerified { email: "a@example.com".into(), at: at() }]);
    }

    #[tokio::test]
    async fn verifying_another_email_is_rejected() {
        T::with(())
            .given(vec![with_email("a@example.com")])
            .when_async(VerifyEmail { email: "b@example.com".into(), at: at() })
            .await
            .then_expect_error(UserError::EmailMismatch);
    }

    #[tokio::test]
    async fn verifying_twice_is_rejected() {
        T::with(())
            .given(vec![with_email("a@example.com"), EmailVerified { email: "a@example.com".into(), at: at() }])
            .when_async(VerifyEmail { email: "a@example.com".into(), at: at() })
            .await
            .then_expect_error(UserError::EmailMismatch);
    }

    #[tokio::test]
    async fn a_reset_replaces_the_record() {
        let mut user = User::default();
        user.apply(registered());
        // Events of the lockout this aggregate once kept still load.
        user.apply(AccountLocked { until: at() + chrono::Duration::minutes(15), at: at() });
        user.apply(PasswordReset { registration_record: encode(&[9u8; REGISTRATION_RECORD_LEN]), at: at() });
        assert_eq!(user.registration_record(), Some([9u8; REGISTRATION_RECORD_LEN].as_slice()));
        T::with(())
            .given(vec![registered()])
            .when_async(ResetPassword { registration_record: vec![9u8; REGISTRATION_RECORD_LEN], at: at() })
            .await
            .then_expect_events(vec![PasswordReset {
                registration_record: encode(&[9u8; REGISTRATION_RECORD_LEN]),
                at: at(),
            }]);
    }

    #[tokio::test]
    async fn a_reset_with_a_bad_record_is_rejected() {
        T::with(())
            .given(vec![registered()])
            .when_async(ResetPassword { registration_record: vec![9u8; 10], at: at() })
            .await
            .then_expect_error(UserError::BadRecord);
    }

    #[tokio::test]
    async fn removing_an_account() {
        T::with(())
            .given(vec![registered()])
            .when_async(Remove { at: at() })
            .await
            .then_expect_events(vec![UserRemoved { at: at() }]);
    }

    #[tokio::test]
    async fn a_removed_account_takes_no_more_commands() {
        T::with(())
            .given(vec![registered(), UserRemoved { at: at() }])
            .when_async(VerifyEmail { email: "a@example.com".into(), at: at() })
            .await
            .then_expect_error(UserError::NotRegistered);
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserRemoved { at: at() });
        assert_eq!(user.registration_record(), None);
    }

    fn register(record_len: usize) -> UserCommand {
        Register {
            username: "alice".into(),
            registration_record: vec![7u8; record_len],
            email: None,
            at: at(),
        }
    }

    #[tokio::test]
    async fn registering_a_new_account() {
        T::with(())
            .given_no_previous_events()
            .when_async(register(REGISTRATION_RECORD_LEN))
            .await
            .then_expect_events(vec![registered()]);
    }

    #[tokio::test]
    async fn registering_twice_is_rejected() {
        T::with(())
            .given(vec![registered()])
            .when_async(register(REGISTRATION_RECORD_LEN))
            .await
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[tokio::test]
    async fn a_record_of_the_wrong_size_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(register(191))
            .await
            .then_expect_error(UserError::BadRecord);
    }

    #[tokio::test]
    async fn revoking_sessions_ends_those_opened_before() {
        T::with(())
            .given(vec![registered()])
            .when_async(RevokeSessions { at: at() })
            .await
            .then_expect_events(vec![SessionsRevoked { at: at() }]);
        let later = at() + chrono::Duration::seconds(1);
        for ended_by in [
            SessionsRevoked { at: at() },
            PasswordReset { registration_record: encode(&[9u8; REGISTRATION_RECORD_LEN]), at: at() },
            UserRemoved { at: at() },
        ] {
            let mut user = User::default();
            user.apply(registered());
            assert!(user.admits_session(at()));
            let removal = matches!(ended_by, UserRemoved { .. });
            user.apply(ended_by);
            assert!(!user.admits_session(at()), "a session opened before is over");
            assert_eq!(user.admits_session(later), !removal, "a later one counts, unless the account is gone");
        }
    }

    #[tokio::test]
    async fn commands_for_an_unknown_account_are_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(Remove { at: at() })
            .await
            .then_expect_error(UserError::NotRegistered);
    }
}
