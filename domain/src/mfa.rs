//! TOTP as a second factor of an account (aggregate id: the profile id). A secret is
//! generated (pending), enabled by a first valid code, and disabled by another. Each
//! code is accepted once: a step at or before the last one used is a replay. The
//! secret travels only sealed (encrypted by the server).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::services::TotpCheck;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mfa {
    pending_secret: Option<String>,
    secret: Option<String>,
    last_step: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum MfaCommand {
    Generate { sealed_secret: String, at: DateTime<Utc> },
    Enable { code: String, at: DateTime<Utc> },
    Disable { code: String, at: DateTime<Utc> },
    /// A code given at sign-in.
    UseCode { code: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MfaEvent {
    TotpSecretGenerated { sealed_secret: String, at: DateTime<Utc> },
    TotpEnabled { step: u64, at: DateTime<Utc> },
    TotpDisabled { step: u64, at: DateTime<Utc> },
    TotpCodeUsed { step: u64, at: DateTime<Utc> },
}
crate::domain_event!(MfaEvent { TotpSecretGenerated, TotpEnabled, TotpDisabled, TotpCodeUsed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MfaError {
    #[error("MFA is already enabled")]
    AlreadyEnabled,
    #[error("no TOTP secret was generated")]
    NothingPending,
    #[error("MFA is not enabled")]
    NotEnabled,
    #[error("invalid code")]
    InvalidCode,
    #[error("code already used")]
    CodeReplayed,
}

impl Mfa {
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// The step of a fresh, valid code for `secret`.
    fn fresh_step(&self, check: &dyn TotpCheck, secret: &str, code: &str, at: DateTime<Utc>) -> Result<u64, MfaError> {
        let step = check.matching_step(secret, code, at).ok_or(MfaError::InvalidCode)?;
        if self.last_step.is_some_and(|last| step <= last) {
            return Err(MfaError::CodeReplayed);
        }
        Ok(step)
    }
}

impl Aggregate for Mfa {
    const TYPE: &'static str = "mfa";
    type Command = MfaCommand;
    type Event = MfaEvent;
    type Error = MfaError;
    type Services = Arc<dyn TotpCheck>;

    async fn handle(
        &mut self,
        command: Self::Command,
        check: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            MfaCommand::Generate { sealed_secret, at } => {
                if self.is_enabled() {
                    return Err(MfaError::AlreadyEnabled);
                }
                MfaEvent::TotpSecretGenerated { sealed_secret, at }
            }
            MfaCommand::Enable { code, at } => {
                if self.is_enabled() {
                    return Err(MfaError::AlreadyEnabled);
                }
                let pending = self.pending_secret.as_deref().ok_or(MfaError::NothingPending)?;
                let step = self.fresh_step(check.as_ref(), pending, &code, at)?;
                MfaEvent::TotpEnabled { step, at }
            }
            MfaCommand::Disable { code, at } => {
                let secret = self.secret.as_deref().ok_or(MfaError::NotEnabled)?;
                let step = self.fresh_step(check.as_ref(), secret, &code, at)?;
                MfaEvent::TotpDisabled { step, at }
            }
            MfaCommand::UseCode { code, at } => {
                let secret = self.secret.as_deref().ok_or(MfaError::NotEnabled)?;
                let step = self.fresh_step(check.as_ref(), secret, &code, at)?;
                MfaEvent::TotpCodeUsed { step, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MfaEvent::TotpSecretGenerated { sealed_secret, .. } => self.pending_secret = Some(sealed_secret),
            MfaEvent::TotpEnabled { step, .. } => {
                self.secret = self.pending_secret.take();
                self.last_step = Some(step);
            }
            MfaEvent::TotpDisabled { step, .. } => {
                self.secret = None;
                self.last_step = Some(step);
            }
            MfaEvent::TotpCodeUsed { step, .. } => self.last_step = Some(step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use MfaCommand::*;
    use MfaEvent::*;

    /// Codes are "<secret>:<step>"; the current step is 100.
    struct Check;
    impl TotpCheck for Check {
        fn matching_step(&self, secret: &str, code: &str, _: DateTime<Utc>) -> Option<u64> {
            let (code_secret, step) = code.split_once(':')?;
            let step: u64 = step.parse().ok()?;
            (code_secret == secret && (99..=101).contains(&step)).then_some(step)
        }
    }

    fn framework() -> TestFramework<Mfa> {
        TestFramework::with(Arc::new(Check) as Arc<dyn TotpCheck>)
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn generated(secret: &str) -> MfaEvent {
        TotpSecretGenerated { sealed_secret: secret.into(), at: t0() }
    }

    fn enabled() -> Vec<MfaEvent> {
        vec![generated("s1"), TotpEnabled { step: 100, at: t0() }]
    }

    fn code(code: &str) -> String {
        code.to_string()
    }

    #[tokio::test]
    async fn generating_a_secret() {
        framework()
            .given_no_previous_events()
            .when_async(Generate { sealed_secret: "s1".into(), at: t0() })
            .await
            .then_expect_events(vec![generated("s1")]);
    }

    #[tokio::test]
    async fn generating_while_enabled_is_rejected() {
        framework()
            .given(enabled())
            .when_async(Generate { sealed_secret: "s2".into(), at: t0() })
            .await
            .then_expect_error(MfaError::AlreadyEnabled);
    }

    #[tokio::test]
    async fn a_valid_code_enables_the_latest_secret() {
        framework()
            .given(vec![generated("s1"), generated("s2")])
            .when_async(Enable { code: code("s2:101"), at: t0() })
            .await
            .then_expect_events(vec![TotpEnabled { step: 101, at: t0() }]);
    }

    #[tokio::test]
    async fn a_code_of_a_replaced_secret_does_not_enable() {
        framework()
            .given(vec![generated("s1"), generated("s2")])
            .when_async(Enable { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::InvalidCode);
    }

    #[tokio::test]
    async fn enabling_without_a_secret_is_rejected() {
        framework()
            .given_no_previous_events()
            .when_async(Enable { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::NothingPending);
    }

    #[tokio::test]
    async fn enabling_twice_is_rejected() {
        framework()
            .given(enabled())
            .when_async(Enable { code: code("s1:101"), at: t0() })
            .await
            .then_expect_error(MfaError::AlreadyEnabled);
    }

    #[tokio::test]
    async fn a_fresh_code_is_accepted_at_sign_in() {
        framework()
            .given(enabled())
            .when_async(UseCode { code: code("s1:101"), at: t0() })
            .await
            .then_expect_events(vec![TotpCodeUsed { step: 101, at: t0() }]);
    }

    #[tokio::test]
    async fn a_used_code_is_a_replay() {
        framework()
            .given(enabled())
            .when_async(UseCode { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::CodeReplayed);
    }

    #[tokio::test]
    async fn an_older_step_is_a_replay_too() {
        framework()
            .given([enabled(), vec![TotpCodeUsed { step: 101, at: t0() }]].concat())
            .when_async(UseCode { code: code("s1:99"), at: t0() })
            .await
            .then_expect_error(MfaError::CodeReplayed);
    }

    #[tokio::test]
    async fn a_wrong_code_is_rejected() {
        framework()
            .given(enabled())
            .when_async(UseCode { code: code("s1:7"), at: t0() })
            .await
            .then_expect_error(MfaError::InvalidCode);
    }

    #[tokio::test]
    async fn codes_without_mfa_are_rejected() {
        framework()
            .given_no_previous_events()
            .when_async(UseCode { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::NotEnabled);
        framework()
            .given(vec![generated("s1")])
            .when_async(Disable { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::NotEnabled);
    }

    #[tokio::test]
    async fn a_fresh_code_disables() {
        framework()
            .given(enabled())
            .when_async(Disable { code: code("s1:101"), at: t0() })
            .await
            .then_expect_events(vec![TotpDisabled { step: 101, at: t0() }]);
    }

    #[tokio::test]
    async fn disabling_with_a_wrong_code_is_rejected() {
        framework()
            .given(enabled())
            .when_async(Disable { code: code("s1:100"), at: t0() })
            .await
            .then_expect_error(MfaError::CodeReplayed);
    }
}
