//! Keeps this process's memory of aggregates (src/store/cache.rs) current with what
//! other replicas write: it follows the global log (only positions, ids and
//! sequences — nothing is decrypted) and forgets every cached aggregate that another
//! writer moved past. A replica's own writes update its memory when they commit; the
//! others' reach it within one poll.

use std::sync::Arc;
use std::time::Duration;

use super::cache::Cache;
use super::log::Log;

/// Positions read per poll at most (more wait for the next poll).
const PAGE: i64 = 5000;

pub(super) fn spawn(log: Log, cache: Arc<Cache>, every: Duration) {
    tokio::spawn(async move {
        // What was written before this process started is not in its memory.
        let mut after = loop {
            match log.head().await {
                Ok(head) => break head,
                Err(error) => {
                    tracing::warn!(%error, "log follower: cannot read the log head; retrying");
                    tokio::time::sleep(every).await;
                }
            }
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match log.moved_after(after, PAGE).await {
                Ok(moved) => {
                    for (position, aggregate_type, aggregate_id, sequence) in moved {
                        cache.stale(&aggregate_type, &aggregate_id, usize::try_from(sequence).unwrap_or(usize::MAX));
                        after = position;
                    }
                }
                Err(error) => tracing::warn!(%error, "log follower: cannot read the log; retrying"),
            }
        }
    });
}
