//! An account: registered with its OPAQUE record, counts consecutive failed sign-ins.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

/// Size of an OPAQUE registration record for authd's cipher suite.
pub const REGISTRATION_RECORD_LEN: usize = 192;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct User {
    registered: bool,
    username: String,
    registration_record: Vec<u8>,
    failed_sign_ins: u32,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    Register {
        username: String,
        registration_record: Vec<u8>,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    /// The outcome of a finished sign-in for this account.
    RecordSignIn { succeeded: bool, at: DateTime<Utc> },
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
    SignInFailureCounted { consecutive: u32, at: DateTime<Utc> },
    SignInFailuresReset { at: DateTime<Utc> },
}
crate::domain_event!(UserEvent { UserRegistered, SignInFailureCounted, SignInFailuresReset });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("account already registered")]
    AlreadyRegistered,
    #[error("no such account")]
    NotRegistered,
    #[error("registration record must be {REGISTRATION_RECORD_LEN} bytes")]
    BadRecord,
}

impl User {
    pub fn is_registered(&self) -> bool {
        self.registered
    }
    pub fn username(&self) -> &str {
        &self.username
    }
    /// The OPAQUE record, present once registered.
    pub fn registration_record(&self) -> Option<&[u8]> {
        self.registered.then_some(self.registration_record.as_slice())
    }
    pub fn failed_sign_ins(&self) -> u32 {
        self.failed_sign_ins
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
            UserCommand::RecordSignIn { succeeded, at } => {
                if !self.registered {
                    return Err(UserError::NotRegistered);
                }
                if !succeeded {
                    let consecutive = self.failed_sign_ins + 1;
                    sink.write(UserEvent::SignInFailureCounted { consecutive, at }, self).await;
                } else if self.failed_sign_ins > 0 {
                    sink.write(UserEvent::SignInFailuresReset { at }, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { username, registration_record, .. } => {
                self.registered = true;
                self.username = username;
                self.registration_record = decode(&registration_record);
            }
            UserEvent::SignInFailureCounted { consecutive, .. } => {
                self.failed_sign_ins = consecutive
            }
            UserEvent::SignInFailuresReset { .. } => self.failed_sign_ins = 0,
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
    async fn failures_are_counted_consecutively() {
        T::with(())
            .given(vec![registered(), SignInFailureCounted { consecutive: 1, at: at() }])
            .when_async(RecordSignIn { succeeded: false, at: at() })
            .await
            .then_expect_events(vec![SignInFailureCounted { consecutive: 2, at: at() }]);
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        T::with(())
            .given(vec![registered(), SignInFailureCounted { consecutive: 1, at: at() }])
            .when_async(RecordSignIn { succeeded: true, at: at() })
            .await
            .then_expect_events(vec![SignInFailuresReset { at: at() }]);
    }

    #[tokio::test]
    async fn a_success_without_failures_records_nothing() {
        T::with(())
            .given(vec![registered()])
            .when_async(RecordSignIn { succeeded: true, at: at() })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn recording_a_sign_in_for_an_unknown_account_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(RecordSignIn { succeeded: false, at: at() })
            .await
            .then_expect_error(UserError::NotRegistered);
    }
}
