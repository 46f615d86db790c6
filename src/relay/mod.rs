//! The audit relay: publishes every event of the log to NATS JetStream, in log
//! order, at least once, never skipping one.
//!
//! - It tails the gap-safe [`Log`](crate::store::log::Log) from its checkpoint
//!   (`checkpoints`, name [`CHECKPOINT`]), publishes each event as an
//!   [`Envelope`] to `<prefix>.<aggregate_type>.<event_type>` with
//!   `Nats-Msg-Id: <aggregate_type>:<aggregate_id>:<sequence>`, and waits for
//!   JetStream's ack before the next one. The checkpoint moves only over acked
//!   events (every [`CHECKPOINT_EVERY`] and at the end of each page), so a crash
//!   re-publishes at most those since the last move — JetStream drops them by
//!   `Nats-Msg-Id` within its duplicate window — and never loses one.
//! - When NATS is down, publishing fails, the relay backs off and retries the same
//!   event; requests are not affected (the log is the store, not NATS).
//! - **One publisher.** On PostgreSQL a replica publishes only while it holds the
//!   session advisory lock [`RELAY_LOCK`] on a connection of its own; the others
//!   stand by and retry, so when the holder dies (its connection closes, the lock
//!   goes with it) another takes over from the shared checkpoint. Even two
//!   publishers at once (a holder cut off without knowing it) would keep the
//!   stream in log order: each publishes in log order and only after its previous
//!   event was stored, and copies are de-duplicated. SQLite is an embedded,
//!   single-process store: one authd per file, so one relay.

pub mod envelope;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sqlx::Connection;

use crate::relay::envelope::Envelope;
use crate::store::log::{Filter, LogError};
use crate::store::Store;

/// The relay's entry in `checkpoints`.
pub const CHECKPOINT: &str = "audit_relay";
/// Session advisory lock held by the one publishing replica (PostgreSQL).
pub const RELAY_LOCK: i64 = 0x6175_7468_645f_726c; // "authd_rl"
/// Events read from the log at a time.
const PAGE: usize = 500;
/// Acked events between two checkpoint writes.
const CHECKPOINT_EVERY: usize = 100;
/// How often an idle relay looks for writes of other replicas.
const POLL: Duration = Duration::from_millis(500);
/// How often a standby replica tries to take over.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
/// Wait for a JetStream ack (and for other JetStream requests).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("relay lock connection: {0}")]
    Lock(#[from] sqlx::Error),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("publishing {msg_id}: {detail}")]
    Publish { msg_id: String, detail: String },
}

/// Where the relay publishes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// For the lock connection (PostgreSQL).
    pub database_url: String,
}

impl Settings {
    /// Refuses a stream name or subject prefix NATS would not take.
    pub fn validate(&self) -> Result<(), String> {
        let bad_name = |c: char| c == '.' || c == '*' || c == '>' || c == '/' || c == '\\' || c.is_whitespace();
        if self.stream.is_empty() || self.stream.chars().any(bad_name) {
            return Err(format!("AUTHD_NATS_STREAM {:?} is not a valid stream name", self.stream));
        }
        let bad_token = |t: &str| t.is_empty() || t.chars().any(|c| c == '*' || c == '>' || c.is_whitespace());
        if self.subject_prefix.split('.').any(bad_token) {
            return Err(format!(
                "AUTHD_NATS_SUBJECT_PREFIX {:?} is not a subject prefix (dot-separated tokens, no wildcards)",
                self.subject_prefix
            ));
        }
        Ok(())
    }
}

/// What the relay of this replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// No `NATS_URL`.
    Disabled = 0,
    /// Another replica holds the relay lock.
    Standby = 1,
    /// Taking the lock, connecting, or checking the stream.
    Connecting = 2,
    Publishing = 3,
    /// The last attempt failed (NATS or the store down); retrying.
    Retrying = 4,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Disabled => "disabled",
            State::Standby => "standby",
            State::Connecting => "connecting",
            State::Publishing => "publishing",
            State::Retrying => "retrying",
        }
    }
}

/// Shared with `/readyz` and `/metrics`.
#[derive(Clone, Debug)]
pub struct Status(Arc<AtomicU8>);

impl Status {
    pub fn new(state: State) -> Self {
        Self(Arc::new(AtomicU8::new(state as u8)))
    }

    pub fn get(&self) -> State {
        match self.0.load(Ordering::Relaxed) {
            1 => State::Standby,
            2 => State::Connecting,
            3 => State::Publishing,
            4 => State::Retrying,
            _ => State::Disabled,
        }
    }

    fn set(&self, state: State) {
        self.0.store(state as u8, Ordering::Relaxed);
    }

    /// This replica holds the lock (or is the only one).
    pub fn leading(&self) -> bool {
        matches!(self.get(), State::Publishing)
    }
}

/// How far behind the log the relay is.
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// Newest position of the log.
    pub log_position: i64,
    /// Last position JetStream acknowledged (the relay's checkpoint).
    pub published_position: i64,
}

impl Lag {
    pub fn events(&self) -> i64 {
        (self.log_position - self.published_position).max(0)
    }
}

/// Reads the lag from the store (shared by all replicas).
pub async fn lag(store: &Store) -> Result<Lag, LogError> {
    let published_position = store.log().checkpoint(CHECKPOINT).await?;
    let log_position = store.log().head().await?;
    Ok(Lag { log_position, published_position })
}

/// Starts the relay in the background.
pub fn spawn(store: Store, settings: Settings, status: Status) {
    tokio::spawn(Relay { store, settings, status }.run());
}

struct Relay {
    store: Store,
    settings: Settings,
    status: Status,
}

/// The right to publish.
enum Lease {
    /// The advisory lock, held for as long as this connection lives.
    Postgres(sqlx::PgConnection),
    /// SQLite: one process per store.
    Sole,
}

impl Lease {
    /// Fails when the lock connection is gone (and with it the lock).
    async fn check(&mut self) -> Result<(), RelayError> {
        if let Lease::Postgres(connection) = self {
            connection.ping().await?;
        }
        Ok(())
    }
}

impl Relay {
    async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            self.status.set(State::Connecting);
            let result = match self.lease().await {
                Ok(Some(mut lease)) => self.publish(&mut lease, &mut backoff).await,
                Ok(None) => {
                    self.status.set(State::Standby);
                    tokio::time::sleep(STANDBY_RETRY).await;
                    continue;
                }
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                self.status.set(State::Retrying);
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "audit relay interrupted");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Takes the relay lock, or `None` when another replica has it.
    async fn lease(&self) -> Result<Option<Lease>, RelayError> {
        if !self.settings.database_url.starts_with("postgres") {
            return Ok(Some(Lease::Sole));
        }
        let mut connection = sqlx::PgConnection::connect(&self.settings.database_url).await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(RELAY_LOCK).fetch_one(&mut connection).await?;
        if locked {
            tracing::info!("audit relay: this replica publishes");
            Ok(Some(Lease::Postgres(connection)))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    /// Publishes for as long as the lease, NATS and the store hold up.
    async fn publish(&self, lease: &mut Lease, backoff: &mut Duration) -> Result<(), RelayError> {
        let url = &self.settings.nats_url;
        let client = async_nats::ConnectOptions::new()
            .name("authd audit relay")
            .connection_timeout(ACK_TIMEOUT)
            .connect(url.as_str())
            .await
            .map_err(|source| RelayError::Connect { url: url.clone(), source })?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(ACK_TIMEOUT);
        self.ensure_stream(&jetstream).await?;
        self.status.set(State::Publishing);
        let log = self.store.log();
        let mut commits = self.store.commits();
        loop {
            lease.check().await?;
            let from = log.checkpoint(CHECKPOINT).await?;
            // As stored: an account's client address and user agent stay encrypted under
            // its key (src/store/shred.rs).
            let page = log.read_as_stored(from, PAGE, &Filter::default()).await?;
            if page.events.is_empty() {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let mut acked = from;
            let mut unsaved = 0;
            for event in page.events {
                let envelope = Envelope::from(event);
                if let Err(error) = self.publish_one(&jetstream, &envelope).await {
                    log.advance(CHECKPOINT, acked).await?;
                    return Err(error);
                }
                acked = envelope.position;
                *backoff = Duration::from_millis(200);
                unsaved += 1;
                if unsaved == CHECKPOINT_EVERY {
                    log.advance(CHECKPOINT, acked).await?;
                    unsaved = 0;
                }
            }
            log.advance(CHECKPOINT, acked).await?;
        }
    }

    /// Publishes one envelope and waits for JetStream to store it (or to report it
    /// as a duplicate of one stored before).
    async fn publish_one(&self, jetstream: &jetstream::Context, envelope: &Envelope) -> Result<(), RelayError> {
        let msg_id = envelope.msg_id();
        let failed = |detail: String| RelayError::Publish { msg_id: msg_id.clone(), detail };
        let body = serde_json::to_vec(envelope).map_err(|e| failed(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let ack = jetstream
            .publish_with_headers(envelope.subject(&self.settings.subject_prefix), headers, body.into())
            .await
            .map_err(|e| failed(e.to_string()))?;
        ack.await.map_err(|e| failed(e.to_string()))?;
        Ok(())
    }

    /// Creates the stream if it is missing; refuses one that would not store our
    /// subjects.
    async fn ensure_stream(&self, jetstream: &jetstream::Context) -> Result<(), RelayError> {
        let name = &self.settings.stream;
        let subjects = format!("{}.>", self.settings.subject_prefix);
        let stream_error = |detail: String| RelayError::Stream { stream: name.clone(), detail };
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subjects.clone()],
            description: Some("authd audit events (JSON envelopes, Nats-Msg-Id de-duplication)".into()),
            ..Default::default()
        };
        let mut stream = jetstream.get_or_create_stream(config).await.map_err(|e| stream_error(e.to_string()))?;
        let info = stream.info().await.map_err(|e| stream_error(e.to_string()))?;
        let probe = format!("{}.aggregate.Event", self.settings.subject_prefix);
        if !info.config.subjects.iter().any(|pattern| subject_matches(pattern, &probe)) {
            return Err(stream_error(format!(
                "exists but does not take {subjects} (its subjects: {})",
                info.config.subjects.join(", ")
            )));
        }
        Ok(())
    }
}

/// Whether the NATS subject pattern (`*` one token, `>` the rest) covers `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (part, Some(token)) if part == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_cover_the_prefix() {
        assert!(subject_matches("authd.events.>", "authd.events.user.UserRegistered"));
        assert!(subject_matches("authd.>", "authd.events.user.UserRegistered"));
        assert!(subject_matches("authd.events.*.*", "authd.events.user.UserRegistered"));
        assert!(!subject_matches("authd.events.*", "authd.events.user.UserRegistered"));
        assert!(!subject_matches("other.>", "authd.events.user.UserRegistered"));
        assert!(!subject_matches("authd.events.>", "authd.events"));
    }

    #[test]
    fn settings_refuse_bad_names() {
        let settings = |stream: &str, prefix: &str| Settings {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: stream.into(),
            subject_prefix: prefix.into(),
            database_url: "sqlite://x".into(),
        };
        assert!(settings("AUTHD_EVENTS", "authd.events").validate().is_ok());
        assert!(settings("AUTHD.EVENTS", "authd.events").validate().is_err());
        assert!(settings("AUTHD_EVENTS", "authd.*").validate().is_err());
        assert!(settings("AUTHD_EVENTS", "authd..events").validate().is_err());
        assert!(settings("", "authd.events").validate().is_err());
    }
}
