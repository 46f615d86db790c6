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
use uuid::Uuid;

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
    /// Addresses the account had before its email changes (mail to them is its too).
    #[serde(default)]
    former_emails: Vec<String>,
    /// E.164, verified by a texted code.
    #[serde(default)]
    phone_number: Option<String>,
    sessions_revoked_at: Option<DateTime<Utc>>,
    /// Signed in with nothing: no username, no way to sign in again but its sessions.
    #[serde(default)]
    anonymous: bool,
    /// The username an anonymous account is becoming (between the two steps).
    #[serde(default)]
    pending_username: Option<String>,
    /// The address an anonymous account is becoming real by (a link was mailed there).
    #[serde(default)]
    pending_email: Option<String>,
    /// The one session the last revocation spared (a password change keeps the
    /// session that made it).
    #[serde(default)]
    kept_session: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    Register {
        username: String,
        registration_record: Vec<u8>,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    /// An account created by its first sign-in with a code sent to an address (open
    /// sign-up): no password, the address verified by that code.
    RegisterByCode { username: String, email: Option<String>, phone_number: Option<String>, at: DateTime<Utc> },
    /// An account with nothing to sign in with (`AUTHD_ANONYMOUS`).
    RegisterAnonymous { at: DateTime<Utc> },
    /// An anonymous account picks its username (the OPAQUE registration follows).
    StartDeanonymize { username: String, at: DateTime<Utc> },
    /// ...and registers its password under it: a real account, the same profile id.
    Deanonymize { registration_record: Vec<u8>, email: Option<String>, at: DateTime<Utc> },
    /// An anonymous account asks to become real by the link mailed to `email`.
    StartDeanonymizeByEmail { email: String, at: DateTime<Utc> },
    /// ...and the link came back: a real account (no password) with that address,
    /// verified, under `username`.
    DeanonymizeByEmail { username: String, at: DateTime<Utc> },
    /// An account that signs in with a passkey only (no OPAQUE record).
    RegisterWithoutPassword { username: String, email: Option<String>, at: DateTime<Utc> },
    /// A code sent to `email` came back.
    VerifyEmail { email: String, at: DateTime<Utc> },
    /// A code sent to a new address came back: it replaces the old one, verified.
    ChangeEmail { email: String, at: DateTime<Utc> },
    /// A code texted to a phone number came back: it is the account's, verified.
    ChangePhoneNumber { phone_number: String, at: DateTime<Utc> },
    /// A fresh OPAQUE registration replaces the old one.
    ResetPassword { registration_record: Vec<u8>, at: DateTime<Utc> },
    /// A signed-in holder replaces the password: every other session ends.
    ChangePassword { registration_record: Vec<u8>, kept_session: Uuid, at: DateTime<Utc> },
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
    EmailChanged { email: String, at: DateTime<Utc> },
    PhoneNumberChanged { phone_number: String, at: DateTime<Utc> },
    PasswordReset { registration_record: String, at: DateTime<Utc> },
    PasswordChanged { registration_record: String, kept_session: Uuid, at: DateTime<Utc> },
    UserRemoved { at: DateTime<Utc> },
    SessionsRevoked { at: DateTime<Utc> },
    AnonymousUserRegistered { at: DateTime<Utc> },
    DeanonymizationStarted { username: String, at: DateTime<Utc> },
    DeanonymizationByEmailStarted { email: String, at: DateTime<Utc> },
    UserDeanonymized { username: String, registration_record: String, email: Option<String>, at: DateTime<Utc> },
}
crate::domain_event!(UserEvent {
    UserRegistered,
    SignInFailureCounted,
    SignInFailuresReset,
    AccountLocked,
    EmailVerified,
    EmailChanged,
    PhoneNumberChanged,
    PasswordReset,
    PasswordChanged,
    UserRemoved,
    SessionsRevoked,
    AnonymousUserRegistered,
    DeanonymizationStarted,
    DeanonymizationByEmailStarted,
    UserDeanonymized,
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
    #[error("the account is not anonymous, or picked no username first")]
    NotAnonymous,
}

impl User {
    /// Signed in with nothing (until deanonymized).
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }
    /// The username an anonymous account is becoming.
    pub fn pending_username(&self) -> Option<&str> {
        self.pending_username.as_deref()
    }
    /// The address an anonymous account is becoming real by.
    pub fn pending_email(&self) -> Option<&str> {
        self.pending_email.as_deref().filter(|_| self.anonymous)
    }
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
    /// Every address the account has had, the current one first.
    pub fn emails(&self) -> impl Iterator<Item = &str> {
        self.email.iter().chain(self.former_emails.iter()).map(String::as_str)
    }
    /// The verified phone number (E.164), if any.
    pub fn phone_number(&self) -> Option<&str> {
        self.phone_number.as_deref()
    }
    /// Whether the session `id` (`None`: something else bound to the account, like a
    /// pending MFA challenge), opened at `opened_at`, still counts: the account exists
    /// and has not revoked its sessions since, or spared this one.
    pub fn admits_session(&self, id: Option<Uuid>, opened_at: DateTime<Utc>) -> bool {
        self.is_registered()
            && (self.sessions_revoked_at.is_none_or(|revoked| opened_at > revoked)
                || id.is_some_and(|id| self.kept_session == Some(id)))
    }
    pub fn username(&self) -> &str {
        &self.username
    }
    fn revoke_sessions(&mut self, at: DateTime<Utc>, kept: Option<Uuid>) {
        self.sessions_revoked_at = Some(at);
        self.kept_session = kept;
    }
    /// The OPAQUE record, present once registered with a password.
    pub fn registration_record(&self) -> Option<&[u8]> {
        (self.is_registered() && self.has_password()).then_some(self.registration_record.as_slice())
    }
    /// Whether the account can sign in with a password (not a passkey-only one).
    pub fn has_password(&self) -> bool {
        !self.registration_record.is_empty()
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
        let registering = matches!(
            command,
            UserCommand::Register { .. }
                | UserCommand::RegisterWithoutPassword { .. }
                | UserCommand::RegisterAnonymous { .. }
                | UserCommand::RegisterByCode { .. }
        );
        if !registering && !self.is_registered() {
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
            UserCommand::RegisterByCode { username, email, phone_number, at } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                let registered = UserEvent::UserRegistered { username, registration_record: String::new(), email: email.clone(), registered_at: at };
                sink.write(registered, self).await;
                if let Some(email) = email {
                    sink.write(UserEvent::EmailVerified { email, at }, self).await;
                }
                if let Some(phone_number) = phone_number {
                    sink.write(UserEvent::PhoneNumberChanged { phone_number, at }, self).await;
                }
            }
            UserCommand::RegisterAnonymous { at } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                sink.write(UserEvent::AnonymousUserRegistered { at }, self).await;
            }
            UserCommand::StartDeanonymize { username, at } => {
                if !self.anonymous {
                    return Err(UserError::NotAnonymous);
                }
                sink.write(UserEvent::DeanonymizationStarted { username, at }, self).await;
            }
            UserCommand::StartDeanonymizeByEmail { email, at } => {
                if !self.anonymous {
                    return Err(UserError::NotAnonymous);
                }
                sink.write(UserEvent::DeanonymizationByEmailStarted { email, at }, self).await;
            }
            UserCommand::DeanonymizeByEmail { username, at } => {
                let Some(email) = self.pending_email.clone().filter(|_| self.anonymous) else {
                    return Err(UserError::NotAnonymous);
                };
                let event = UserEvent::UserDeanonymized { username, registration_record: String::new(), email: Some(email.clone()), at };
                sink.write(event, self).await;
                sink.write(UserEvent::EmailVerified { email, at }, self).await;
            }
            UserCommand::Deanonymize { registration_record, email, at } => {
                let Some(username) = self.pending_username.clone().filter(|_| self.anonymous) else {
                    return Err(UserError::NotAnonymous);
                };
                if registration_record.len() != REGISTRATION_RECORD_LEN {
                    return Err(UserError::BadRecord);
                }
                let event = UserEvent::UserDeanonymized { username, registration_record: encode(&registration_record), email, at };
                sink.write(event, self).await;
            }
            UserCommand::RegisterWithoutPassword { username, email, at } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegistered { username, registration_record: String::new(), email, registered_at: at };
                sink.write(event, self).await;
            }
            UserCommand::VerifyEmail { email, at } => {
                if self.email.as_deref() != Some(email.as_str()) || self.email_verified {
                    return Err(UserError::EmailMismatch);
                }
                sink.write(UserEvent::EmailVerified { email, at }, self).await;
            }
            UserCommand::ChangeEmail { email, at } => sink.write(UserEvent::EmailChanged { email, at }, self).await,
            UserCommand::ChangePhoneNumber { phone_number, at } => {
                sink.write(UserEvent::PhoneNumberChanged { phone_number, at }, self).await
            }
            UserCommand::ResetPassword { registration_record, at } => {
                if registration_record.len() != REGISTRATION_RECORD_LEN {
                    return Err(UserError::BadRecord);
                }
                let event = UserEvent::PasswordReset { registration_record: encode(&registration_record), at };
                sink.write(event, self).await;
            }
            UserCommand::ChangePassword { registration_record, kept_session, at } => {
                if registration_record.len() != REGISTRATION_RECORD_LEN {
                    return Err(UserError::BadRecord);
                }
                let event = UserEvent::PasswordChanged { registration_record: encode(&registration_record), kept_session, at };
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
            UserEvent::EmailChanged { email, .. } => {
                if let Some(former) = self.email.replace(email).filter(|former| Some(former) != self.email.as_ref()) {
                    self.former_emails.push(former);
                }
                self.email_verified = true;
            }
            UserEvent::PhoneNumberChanged { phone_number, .. } => self.phone_number = Some(phone_number),
            UserEvent::PasswordReset { registration_record, at } => {
                self.registration_record = decode(&registration_record);
                self.revoke_sessions(at, None);
            }
            UserEvent::PasswordChanged { registration_record, kept_session, at } => {
                self.registration_record = decode(&registration_record);
                self.revoke_sessions(at, Some(kept_session));
            }
            UserEvent::UserRemoved { at } => {
                self.removed = true;
                self.revoke_sessions(at, None);
            }
            UserEvent::SessionsRevoked { at } => self.revoke_sessions(at, None),
            UserEvent::AnonymousUserRegistered { .. } => {
                self.registered = true;
                self.anonymous = true;
            }
            UserEvent::DeanonymizationStarted { username, .. } => self.pending_username = Some(username),
            UserEvent::DeanonymizationByEmailStarted { email, .. } => self.pending_email = Some(email),
            UserEvent::UserDeanonymized { username, registration_record, email, .. } => {
                self.anonymous = false;
                self.pending_username = None;
                self.pending_email = None;
                self.username = username;
                self.registration_record = decode(&registration_record);
                self.email = email;
            }
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
            assert!(user.admits_session(None, at()));
            let removal = matches!(ended_by, UserRemoved { .. });
            user.apply(ended_by);
            assert!(!user.admits_session(None, at()), "a session opened before is over");
            assert_eq!(user.admits_session(None, later), !removal, "a later one counts, unless the account is gone");
        }
    }

    #[tokio::test]
    async fn a_changed_email_is_verified_and_a_phone_number_kept() {
        T::with(())
            .given(vec![with_email("a@example.com")])
            .when_async(ChangeEmail { email: "b@example.com".into(), at: at() })
            .await
            .then_expect_events(vec![EmailChanged { email: "b@example.com".into(), at: at() }]);
        let mut user = User::default();
        user.apply(with_email("a@example.com"));
        user.apply(EmailChanged { email: "b@example.com".into(), at: at() });
        assert_eq!((user.email(), user.email_verified()), (Some("b@example.com"), true));
        assert_eq!(user.emails().collect::<Vec<_>>(), ["b@example.com", "a@example.com"], "the former one is remembered");
        user.apply(PhoneNumberChanged { phone_number: "+14155550100".into(), at: at() });
        assert_eq!(user.phone_number(), Some("+14155550100"));
        T::with(())
            .given_no_previous_events()
            .when_async(ChangeEmail { email: "b@example.com".into(), at: at() })
            .await
            .then_expect_error(UserError::NotRegistered);
    }

    #[tokio::test]
    async fn a_first_sign_in_by_code_registers_with_the_address_verified() {
        T::with(())
            .given_no_previous_events()
            .when_async(RegisterByCode { username: "email-x".into(), email: Some("a@example.com".into()), phone_number: None, at: at() })
            .await
            .then_expect_events(vec![
                UserRegistered { username: "email-x".into(), registration_record: String::new(), email: Some("a@example.com".into()), registered_at: at() },
                EmailVerified { email: "a@example.com".into(), at: at() },
            ]);
        T::with(())
            .given_no_previous_events()
            .when_async(RegisterByCode { username: "sms-x".into(), email: None, phone_number: Some("+14155550100".into()), at: at() })
            .await
            .then_expect_events(vec![
                UserRegistered { username: "sms-x".into(), registration_record: String::new(), email: None, registered_at: at() },
                PhoneNumberChanged { phone_number: "+14155550100".into(), at: at() },
            ]);
    }

    #[tokio::test]
    async fn an_anonymous_account_becomes_a_real_one() {
        let record = [9u8; REGISTRATION_RECORD_LEN];
        let anonymous = AnonymousUserRegistered { at: at() };
        let started = DeanonymizationStarted { username: "alice".into(), at: at() };
        T::with(()).given(vec![registered()]).when_async(StartDeanonymize { username: "alice".into(), at: at() }).await.then_expect_error(UserError::NotAnonymous);
        T::with(())
            .given(vec![anonymous.clone()])
            .when_async(Deanonymize { registration_record: record.to_vec(), email: None, at: at() })
            .await
            .then_expect_error(UserError::NotAnonymous);
        let done = UserDeanonymized { username: "alice".into(), registration_record: encode(&record), email: None, at: at() };
        T::with(())
            .given(vec![anonymous.clone(), started.clone()])
            .when_async(Deanonymize { registration_record: record.to_vec(), email: None, at: at() })
            .await
            .then_expect_events(vec![done.clone()]);
        let mut user = User::default();
        for event in [anonymous, started, done] {
            user.apply(event);
        }
        assert!(!user.is_anonymous() && user.has_password() && user.username() == "alice");
    }

    #[tokio::test]
    async fn an_account_without_a_password_has_no_record() {
        let without = UserRegistered { username: "alice".into(), registration_record: String::new(), email: None, registered_at: at() };
        T::with(())
            .given_no_previous_events()
            .when_async(RegisterWithoutPassword { username: "alice".into(), email: None, at: at() })
            .await
            .then_expect_events(vec![without.clone()]);
        let mut user = User::default();
        user.apply(without);
        assert!(user.is_registered() && !user.has_password());
        assert_eq!(user.registration_record(), None, "a password sign-in finds no record");
        user.apply(PasswordChanged { registration_record: encode(&[9u8; REGISTRATION_RECORD_LEN]), kept_session: Uuid::nil(), at: at() });
        assert!(user.has_password(), "a password can be added");
    }

    #[tokio::test]
    async fn a_password_change_ends_every_session_but_the_one_that_made_it() {
        let (kept, other) = (Uuid::new_v4(), Uuid::new_v4());
        let record = [9u8; REGISTRATION_RECORD_LEN];
        let changed = PasswordChanged { registration_record: encode(&record), kept_session: kept, at: at() };
        T::with(())
            .given(vec![registered()])
            .when_async(ChangePassword { registration_record: record.to_vec(), kept_session: kept, at: at() })
            .await
            .then_expect_events(vec![changed.clone()]);
        T::with(())
            .given(vec![registered()])
            .when_async(ChangePassword { registration_record: vec![1], kept_session: kept, at: at() })
            .await
            .then_expect_error(UserError::BadRecord);
        let mut user = User::default();
        user.apply(registered());
        user.apply(changed);
        assert_eq!(user.registration_record(), Some(&record[..]));
        assert!(user.admits_session(Some(kept), at()), "the session that changed it goes on");
        assert!(!user.admits_session(Some(other), at()) && !user.admits_session(None, at()), "every other one ends");
        // A later revocation spares nothing.
        user.apply(SessionsRevoked { at: at() + chrono::Duration::seconds(1) });
        assert!(!user.admits_session(Some(kept), at()));
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
