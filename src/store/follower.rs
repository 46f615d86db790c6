//! Keeps this process's memory of aggregates (src/store/cache.rs) current with what
//! other replicas write: it follows the global log (only positions, ids and
//! sequences — nothing is decrypted), and on PostgreSQL also the commits not numbered
//! yet (an open transaction elsewhere can hold the numbering back), and marks every
//! aggregate that another writer moved. A replica's own writes update its memory when
//! they commit; the others' reach it within one poll. Each complete poll is stamped:
//! memory older than [`FRESH_FOR`] is not trusted (`Store::load_current` then asks
//! the store), so a stuck follower never leaves a revoked session alive.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::cache::Cache;
use super::log::{Log, LogError};

/// Positions read per poll at most (more wait for the next poll).
const PAGE: i64 = 5000;
/// How old the last complete poll may be for the memory to be trusted.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);

/// When the follower last completed a poll (milliseconds since the epoch; 0: never).
#[derive(Default)]
pub(super) struct Freshness(AtomicI64);

impl Freshness {
    fn stamp(&self) {
        self.0.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn is_fresh(&self) -> bool {
        let age = chrono::Utc::now().timestamp_millis() - self.0.load(Ordering::Relaxed);
        age >= 0 && age < FRESH_FOR.as_millis() as i64
    }
}

/// Reads where the log ends (what was written before this process started is not in
/// its memory), then follows it every `every`.
pub(super) async fn start(log: Log, cache: Arc<Cache>, fresh: Arc<Freshness>, every: Duration) -> Result<(), LogError> {
    let mut after = log.head().await?;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match poll(&log, &cache, &mut after).await {
                Ok(()) => fresh.stamp(),
                Err(error) => tracing::warn!(%error, "log follower: cannot read the log; retrying"),
            }
        }
    });
    Ok(())
}

async fn poll(log: &Log, cache: &Cache, after: &mut i64) -> Result<(), LogError> {
    let sequence = |s: i64| usize::try_from(s).unwrap_or(usize::MAX);
    for (aggregate_type, aggregate_id, s) in log.moved_unnumbered(PAGE).await? {
        cache.stale(&aggregate_type, &aggregate_id, sequence(s));
    }
    for (position, aggregate_type, aggregate_id, s) in log.moved_after(*after, PAGE).await? {
        cache.stale(&aggregate_type, &aggregate_id, sequence(s));
        *after = position;
    }
    Ok(())
}
