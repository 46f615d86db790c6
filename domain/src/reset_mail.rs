//! Password-reset mails of one account: at most one per [`MIN_INTERVAL`], so
//! `POST /v1/account/forgot` cannot be turned into a mail bomb against the account's
//! owner. Decided and recorded in one command (the aggregate id is the account's), so
//! concurrent requests on any replica send one mail between them.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The least time between two reset mails of one account.
pub const MIN_INTERVAL: Duration = Duration::seconds(60);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResetMail {
    last_sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub enum ResetMailCommand {
    /// A reset mail is about to go to the account `profile_id`.
    Send { profile_id: Uuid, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResetMailEvent {
    ResetMailSent { profile_id: Uuid, at: DateTime<Utc> },
}
crate::domain_event!(ResetMailEvent { ResetMailSent });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResetMailError {
    #[error("a reset mail went to this account less than a minute ago")]
    TooSoon,
}

impl Aggregate for ResetMail {
    const TYPE: &'static str = "reset_mail";
    type Command = ResetMailCommand;
    type Event = ResetMailEvent;
    type Error = ResetMailError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            ResetMailCommand::Send { profile_id, at } => {
                if self.last_sent_at.is_some_and(|last| at < last + MIN_INTERVAL) {
                    return Err(ResetMailError::TooSoon);
                }
                ResetMailEvent::ResetMailSent { profile_id, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ResetMailEvent::ResetMailSent { at, .. } => self.last_sent_at = Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use ResetMailCommand::*;
    use ResetMailEvent::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    #[tokio::test]
    async fn the_first_mail_goes() {
        let profile_id = Uuid::new_v4();
        TestFramework::<ResetMail>::with(())
            .given_no_previous_events()
            .when_async(Send { profile_id, at: t0() })
            .await
            .then_expect_events(vec![ResetMailSent { profile_id, at: t0() }]);
    }

    #[tokio::test]
    async fn a_second_within_a_minute_is_refused_and_one_after_it_goes() {
        let profile_id = Uuid::new_v4();
        let sent = ResetMailSent { profile_id, at: t0() };
        TestFramework::<ResetMail>::with(())
            .given(vec![sent.clone()])
            .when_async(Send { profile_id, at: t0() + Duration::seconds(59) })
            .await
            .then_expect_error(ResetMailError::TooSoon);
        let later = t0() + Duration::seconds(60);
        TestFramework::<ResetMail>::with(())
            .given(vec![sent])
            .when_async(Send { profile_id, at: later })
            .await
            .then_expect_events(vec![ResetMailSent { profile_id, at: later }]);
    }
}
