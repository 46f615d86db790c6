//! A consumer's TOTP secret for `google_auth` verifications. Its aggregate id is a
//! keyed hash of the consumer, so each consumer has at most one. A new secret is
//! temporary until a code made from it validates once; until then a new one
//! replaces it. Once confirmed it stays until removed. The secret only ever enters
//! the log sealed (encrypted by the server, bound to this aggregate's id).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The consumer's current secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// Names this secret, so a confirmation cannot land on a newer one.
    pub secret_id: Uuid,
    /// The secret, sealed by the server (base64url).
    pub sealed_secret: String,
    /// A code made from it validated at least once.
    pub confirmed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TotpSecret {
    current: Option<StoredSecret>,
    /// The time step of the last code of the current secret accepted.
    #[serde(default)]
    last_step: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum TotpSecretCommand {
    /// A new temporary secret, replacing a temporary one.
    Generate { secret_id: Uuid, sealed_secret: String, at: DateTime<Utc> },
    /// A code made from the secret `secret_id` validated.
    Confirm { secret_id: Uuid, at: DateTime<Utc> },
    Remove { at: DateTime<Utc> },
    /// A code of time step `step` was accepted: no code of that step or an earlier
    /// one is accepted again.
    UseCode { step: u64, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TotpSecretEvent {
    TotpSecretGenerated { secret_id: Uuid, sealed_secret: String, generated_at: DateTime<Utc> },
    TotpSecretConfirmed { secret_id: Uuid, at: DateTime<Utc> },
    TotpSecretRemoved { secret_id: Uuid, at: DateTime<Utc> },
    TotpSecretCodeUsed { step: u64, at: DateTime<Utc> },
}
crate::domain_event!(TotpSecretEvent { TotpSecretGenerated, TotpSecretConfirmed, TotpSecretRemoved, TotpSecretCodeUsed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TotpSecretError {
    #[error("the consumer already has a confirmed TOTP secret")]
    AlreadyConfirmed,
    #[error("the consumer has no TOTP secret")]
    NoSecret,
    #[error("the TOTP secret was replaced by a newer one")]
    Replaced,
    #[error("a code of this time step was already accepted")]
    CodeReplayed,
}

impl TotpSecret {
    pub fn current(&self) -> Option<&StoredSecret> {
        self.current.as_ref()
    }

    /// The time step of the last code accepted from the consumer.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }
}

/// A `google_auth` secret belongs to its consumer, not to an account: when its
/// events concern one, their payload names it.
impl crate::Subject for TotpSecret {
    fn subject(&self, _: &str) -> Option<Uuid> {
        None
    }
}

impl Aggregate for TotpSecret {
    const TYPE: &'static str = "totp_secret";
    type Command = TotpSecretCommand;
    type Event = TotpSecretEvent;
    type Error = TotpSecretError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            TotpSecretCommand::Generate { secret_id, sealed_secret, at } => {
                if self.current.as_ref().is_some_and(|secret| secret.confirmed) {
                    return Err(TotpSecretError::AlreadyConfirmed);
                }
                TotpSecretEvent::TotpSecretGenerated { secret_id, sealed_secret, generated_at: at }
            }
            TotpSecretCommand::Confirm { secret_id, at } => match &self.current {
                None => return Err(TotpSecretError::NoSecret),
                Some(secret) if secret.confirmed => return Err(TotpSecretError::AlreadyConfirmed),
                Some(secret) if secret.secret_id != secret_id => return Err(TotpSecretError::Replaced),
                Some(_) => TotpSecretEvent::TotpSecretConfirmed { secret_id, at },
            },
            TotpSecretCommand::Remove { at } => match &self.current {
                None => return Err(TotpSecretError::NoSecret),
                Some(secret) => TotpSecretEvent::TotpSecretRemoved { secret_id: secret.secret_id, at },
            },
            TotpSecretCommand::UseCode { step, at } => {
                if self.last_step.is_some_and(|last| step <= last) {
                    return Err(TotpSecretError::CodeReplayed);
                }
                TotpSecretEvent::TotpSecretCodeUsed { step, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TotpSecretEvent::TotpSecretGenerated { secret_id, sealed_secret, .. } => {
                self.current = Some(StoredSecret { secret_id, sealed_secret, confirmed: false });
                self.last_step = None;
            }
            TotpSecretEvent::TotpSecretConfirmed { .. } => {
                if let Some(secret) = self.current.as_mut() {
                    secret.confirmed = true
                }
            }
            TotpSecretEvent::TotpSecretRemoved { .. } => {
                self.current = None;
                self.last_step = None;
            }
            TotpSecretEvent::TotpSecretCodeUsed { step, .. } => self.last_step = Some(step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use TotpSecretCommand::*;
    use TotpSecretEvent::*;

    type T = TestFramework<TotpSecret>;

    #[tokio::test]
    async fn a_code_step_is_used_once() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("valid time");
        T::with(()).given_no_previous_events().when_async(UseCode { step: 7, at }).await.then_expect_events(vec![TotpSecretCodeUsed { step: 7, at }]);
        T::with(()).given(vec![TotpSecretCodeUsed { step: 7, at }]).when_async(UseCode { step: 7, at }).await.then_expect_error(TotpSecretError::CodeReplayed);
        T::with(()).given(vec![TotpSecretCodeUsed { step: 7, at }]).when_async(UseCode { step: 8, at }).await.then_expect_events(vec![TotpSecretCodeUsed { step: 8, at }]);
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn generated(secret_id: Uuid) -> TotpSecretEvent {
        TotpSecretGenerated { secret_id, sealed_secret: format!("sealed-{secret_id}"), generated_at: t0() }
    }

    fn generate(secret_id: Uuid) -> TotpSecretCommand {
        Generate { secret_id, sealed_secret: format!("sealed-{secret_id}"), at: t0() }
    }

    #[tokio::test]
    async fn generating_a_first_secret() {
        let id = Uuid::new_v4();
        T::with(()).given_no_previous_events().when_async(generate(id)).await.then_expect_events(vec![generated(id)]);
    }

    #[tokio::test]
    async fn a_temporary_secret_is_replaced_by_a_new_one() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        T::with(()).given(vec![generated(old)]).when_async(generate(new)).await.then_expect_events(vec![generated(new)]);
    }

    #[tokio::test]
    async fn a_confirmed_secret_is_not_replaced() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![generated(id), TotpSecretConfirmed { secret_id: id, at: t0() }])
            .when_async(generate(Uuid::new_v4()))
            .await
            .then_expect_error(TotpSecretError::AlreadyConfirmed);
    }

    #[tokio::test]
    async fn a_removed_secret_can_be_generated_again() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        T::with(())
            .given(vec![
                generated(old),
                TotpSecretConfirmed { secret_id: old, at: t0() },
                TotpSecretRemoved { secret_id: old, at: t0() },
            ])
            .when_async(generate(new))
            .await
            .then_expect_events(vec![generated(new)]);
    }

    #[tokio::test]
    async fn confirming_the_temporary_secret() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![generated(id)])
            .when_async(Confirm { secret_id: id, at: t0() })
            .await
            .then_expect_events(vec![TotpSecretConfirmed { secret_id: id, at: t0() }]);
    }

    #[tokio::test]
    async fn confirming_a_replaced_secret_is_rejected() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        T::with(())
            .given(vec![generated(old), generated(new)])
            .when_async(Confirm { secret_id: old, at: t0() })
            .await
            .then_expect_error(TotpSecretError::Replaced);
    }

    #[tokio::test]
    async fn confirming_twice_is_rejected() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![generated(id), TotpSecretConfirmed { secret_id: id, at: t0() }])
            .when_async(Confirm { secret_id: id, at: t0() })
            .await
            .then_expect_error(TotpSecretError::AlreadyConfirmed);
    }

    #[tokio::test]
    async fn confirming_without_a_secret_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(Confirm { secret_id: Uuid::new_v4(), at: t0() })
            .await
            .then_expect_error(TotpSecretError::NoSecret);
    }

    #[tokio::test]
    async fn removing_the_secret() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![generated(id), TotpSecretConfirmed { secret_id: id, at: t0() }])
            .when_async(Remove { at: t0() })
            .await
            .then_expect_events(vec![TotpSecretRemoved { secret_id: id, at: t0() }]);
    }

    #[tokio::test]
    async fn removing_without_a_secret_is_rejected() {
        let id = Uuid::new_v4();
        T::with(())
            .given(vec![generated(id), TotpSecretRemoved { secret_id: id, at: t0() }])
            .when_async(Remove { at: t0() })
            .await
            .then_expect_error(TotpSecretError::NoSecret);
    }
}
