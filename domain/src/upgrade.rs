//! A one-time data upgrade (id: its name) that start-up runs until it is recorded as
//! done — for example backfilling the owner of every verified email address from
//! what the log says. Replicas that run one at the same time do the same idempotent
//! work; the first to finish records it.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Upgrade {
    completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub enum UpgradeCommand {
    /// The upgrade ran to its end, having changed `changed` things.
    Complete { changed: u64, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpgradeEvent {
    UpgradeCompleted { changed: u64, at: DateTime<Utc> },
}
crate::domain_event!(UpgradeEvent { UpgradeCompleted });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpgradeError {
    #[error("this upgrade has run already")]
    AlreadyCompleted,
}

impl Upgrade {
    pub fn is_completed(&self) -> bool {
        self.completed_at.is_some()
    }
}

impl crate::Subject for Upgrade {
    fn subject(&self, _: &str) -> Option<Uuid> {
        None
    }
}

impl Aggregate for Upgrade {
    const TYPE: &'static str = "upgrade";
    type Command = UpgradeCommand;
    type Event = UpgradeEvent;
    type Error = UpgradeError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let UpgradeCommand::Complete { changed, at } = command;
        if self.is_completed() {
            return Err(UpgradeError::AlreadyCompleted);
        }
        sink.write(UpgradeEvent::UpgradeCompleted { changed, at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let UpgradeEvent::UpgradeCompleted { at, .. } = event;
        self.completed_at = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[tokio::test]
    async fn an_upgrade_completes_once() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let done = UpgradeEvent::UpgradeCompleted { changed: 3, at };
        TestFramework::<Upgrade>::with(()).given_no_previous_events().when_async(UpgradeCommand::Complete { changed: 3, at }).await.then_expect_events(vec![done.clone()]);
        TestFramework::<Upgrade>::with(()).given(vec![done]).when_async(UpgradeCommand::Complete { changed: 0, at }).await.then_expect_error(UpgradeError::AlreadyCompleted);
    }
}
