//! The server-wide budget of texted codes for one clock hour (`AUTHD_SMS_HOURLY_LIMIT`):
//! text messages cost money and reach strangers' phones, so however many addresses
//! and sessions a flood comes from, at most `limit` texts go out in an hour. One
//! aggregate per hour (its id names the hour, [`window_id`]), so every replica
//! decides on the same stream and the stream never holds more than `limit` events.
//! Decided before a text is sent; a refused text is not sent (and not recorded: the
//! refusal writes nothing, so a flood past the budget costs no storage).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The aggregate id of the hour `at` falls in (UTC): `sms-budget:<YYYY-MM-DDTHH>`.
pub fn window_id(at: DateTime<Utc>) -> String {
    format!("sms-budget:{}", at.format("%Y-%m-%dT%H"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmsBudget {
    spent: u32,
}

#[derive(Debug, Clone)]
pub enum SmsBudgetCommand {
    /// One more text is about to go out, if fewer than `limit` went this hour.
    Spend { limit: u32, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SmsBudgetEvent {
    /// A text may go; no address or number is recorded.
    SmsBudgetSpent { at: DateTime<Utc> },
}
crate::domain_event!(SmsBudgetEvent { SmsBudgetSpent });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SmsBudgetError {
    #[error("the hourly budget of text messages is spent")]
    Exhausted,
}

impl SmsBudget {
    pub fn spent(&self) -> u32 {
        self.spent
    }
}

/// A budget concerns no account.
impl crate::Subject for SmsBudget {
    fn subject(&self, _: &str) -> Option<Uuid> {
        None
    }
}

impl Aggregate for SmsBudget {
    const TYPE: &'static str = "sms_budget";
    type Command = SmsBudgetCommand;
    type Event = SmsBudgetEvent;
    type Error = SmsBudgetError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let SmsBudgetCommand::Spend { limit, at } = command;
        if self.spent >= limit {
            return Err(SmsBudgetError::Exhausted);
        }
        sink.write(SmsBudgetEvent::SmsBudgetSpent { at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let SmsBudgetEvent::SmsBudgetSpent { .. } = event;
        self.spent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use SmsBudgetCommand::*;
    use SmsBudgetEvent::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    #[tokio::test]
    async fn texts_go_until_the_limit() {
        TestFramework::<SmsBudget>::with(())
            .given(vec![SmsBudgetSpent { at: t0() }])
            .when_async(Spend { limit: 2, at: t0() })
            .await
            .then_expect_events(vec![SmsBudgetSpent { at: t0() }]);
    }

    #[tokio::test]
    async fn past_the_limit_nothing_goes() {
        TestFramework::<SmsBudget>::with(())
            .given(vec![SmsBudgetSpent { at: t0() }, SmsBudgetSpent { at: t0() }])
            .when_async(Spend { limit: 2, at: t0() })
            .await
            .then_expect_error(SmsBudgetError::Exhausted);
        TestFramework::<SmsBudget>::with(())
            .given_no_previous_events()
            .when_async(Spend { limit: 0, at: t0() })
            .await
            .then_expect_error(SmsBudgetError::Exhausted);
    }

    #[test]
    fn one_budget_per_clock_hour() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:59:59Z").expect("time").with_timezone(&Utc);
        assert_eq!(window_id(at), "sms-budget:2026-03-04T05");
        assert_ne!(window_id(at), window_id(at + chrono::Duration::seconds(1)));
    }
}
