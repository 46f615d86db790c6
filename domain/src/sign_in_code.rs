//! Passwordless sign-in codes (by email or text message): the code pending for one
//! address (id: a keyed hash of the channel and the normalised address). Only a keyed
//! hash of the code enters the log; a code is single-use, expires, and takes a
//! bounded number of wrong guesses (which the account's throttle counts as well). A
//! new code replaces the pending one.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignInCode {
    profile_id: Option<Uuid>,
    code_hash: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    failures: u32,
}

#[derive(Debug, Clone)]
pub enum SignInCodeCommand {
    Issue { profile_id: Uuid, code_hash: String, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    /// A code presented for the address (as its keyed hash).
    Redeem { code_hash: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SignInCodeEvent {
    SignInCodeIssued { profile_id: Uuid, code_hash: String, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    SignInCodeRedeemed { profile_id: Uuid, at: DateTime<Utc> },
    /// A wrong code: counted; at `max_failures` the pending code is void.
    SignInCodeFailed { profile_id: Uuid, failures: u32, at: DateTime<Utc> },
}
crate::domain_event!(SignInCodeEvent { SignInCodeIssued, SignInCodeRedeemed, SignInCodeFailed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignInCodeError {
    /// None pending: never sent, used, expired, or too many wrong guesses.
    #[error("no live code for this address")]
    NoCode,
}

impl SignInCode {
    /// The account a code was issued for.
    pub fn profile_id(&self) -> Option<Uuid> {
        self.profile_id
    }
    fn live(&self, at: DateTime<Utc>) -> bool {
        self.code_hash.is_some() && self.expires_at.is_some_and(|expires| at < expires)
    }
}

impl crate::Subject for SignInCode {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.profile_id
    }
}

impl Aggregate for SignInCode {
    const TYPE: &'static str = "sign_in_code";
    type Command = SignInCodeCommand;
    type Event = SignInCodeEvent;
    type Error = SignInCodeError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            SignInCodeCommand::Issue { profile_id, code_hash, expires_at, at } => {
                SignInCodeEvent::SignInCodeIssued { profile_id, code_hash, expires_at, at }
            }
            SignInCodeCommand::Redeem { code_hash, at } => {
                let profile_id = self.profile_id.filter(|_| self.live(at)).ok_or(SignInCodeError::NoCode)?;
                if self.code_hash.as_deref() == Some(code_hash.as_str()) {
                    SignInCodeEvent::SignInCodeRedeemed { profile_id, at }
                } else {
                    // Recorded (not refused): the caller reads the outcome from the event.
                    SignInCodeEvent::SignInCodeFailed { profile_id, failures: self.failures + 1, at }
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SignInCodeEvent::SignInCodeIssued { profile_id, code_hash, expires_at, .. } => {
                self.profile_id = Some(profile_id);
                self.code_hash = Some(code_hash);
                self.expires_at = Some(expires_at);
                self.failures = 0;
            }
            SignInCodeEvent::SignInCodeRedeemed { .. } => self.code_hash = None,
            SignInCodeEvent::SignInCodeFailed { failures, .. } => {
                self.failures = failures;
                if failures >= MAX_FAILURES {
                    self.code_hash = None;
                }
            }
        }
    }
}

/// Wrong guesses a code takes before it is void.
pub const MAX_FAILURES: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type T = TestFramework<SignInCode>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn issued(profile_id: Uuid) -> SignInCodeEvent {
        SignInCodeEvent::SignInCodeIssued { profile_id, code_hash: "right".into(), expires_at: at() + Duration::minutes(10), at: at() }
    }

    fn redeem(hash: &str, at: DateTime<Utc>) -> SignInCodeCommand {
        SignInCodeCommand::Redeem { code_hash: hash.into(), at }
    }

    #[tokio::test]
    async fn a_code_signs_in_once_before_it_expires() {
        let id = Uuid::new_v4();
        let redeemed = SignInCodeEvent::SignInCodeRedeemed { profile_id: id, at: at() };
        T::with(()).given(vec![issued(id)]).when_async(redeem("right", at())).await.then_expect_events(vec![redeemed.clone()]);
        T::with(()).given(vec![issued(id), redeemed]).when_async(redeem("right", at())).await.then_expect_error(SignInCodeError::NoCode);
        T::with(()).given(vec![issued(id)]).when_async(redeem("right", at() + Duration::minutes(10))).await.then_expect_error(SignInCodeError::NoCode);
        T::with(()).given_no_previous_events().when_async(redeem("right", at())).await.then_expect_error(SignInCodeError::NoCode);
    }

    #[tokio::test]
    async fn wrong_codes_are_counted_and_void_the_code() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![issued(id)])
            .when_async(redeem("wrong", at()))
            .await
            .then_expect_events(vec![SignInCodeEvent::SignInCodeFailed { profile_id: id, failures: 1, at: at() }]);
        let failed: Vec<_> = (1..=MAX_FAILURES).map(|failures| SignInCodeEvent::SignInCodeFailed { profile_id: id, failures, at: at() }).collect();
        T::with(()).given([vec![issued(id)], failed].concat()).when_async(redeem("right", at())).await.then_expect_error(SignInCodeError::NoCode);
    }
}
