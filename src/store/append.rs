//! The write path of the event store: appends a command's events, in one
//! transaction, with what cqrs-es would write plus each event's hash link
//! (src/store/chain.rs), personal fields encrypted under their subject's key first
//! (src/store/shred.rs), so the chain covers what is stored. One statement per
//! commit; the read models are folded from the log afterwards.

use std::collections::HashMap;
use std::sync::Mutex;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use projections::{with_conn, with_pool, Conn, Db};
use serde_json::Value;

use super::chain::{event_hash, hash_at, hex, Linked, GENESIS};
use super::log::{Backend, LogError};
use super::shred::{self, Kek, Key};

/// Entries each of [`Memory`]'s maps keeps at most; past it, it starts afresh.
const REMEMBERED: usize = 20_000;

/// What the write path remembers between this process's commits, so an append need
/// not read back what it wrote: each aggregate's last hash, and subjects' keys.
/// Events never change, so a remembered hash for the sequence before an append is
/// the stored one; when another writer appended meanwhile, the sequences differ and
/// the hash is read. A key is forgotten when this process destroys it; another
/// replica's removal leaves it here, and what this replica then writes for the
/// removed account is encrypted under a key no store holds any more.
pub struct Memory {
    heads: Mutex<HashMap<(String, String), (i64, [u8; 32])>>,
    keys: Mutex<HashMap<String, Key>>,
    /// Wraps the subject keys this process creates, unwraps those it reads.
    kek: Kek,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.len() >= REMEMBERED {
        map.clear();
    }
}

impl Memory {
    pub fn new(kek: Kek) -> Self {
        Self { heads: Mutex::default(), keys: Mutex::default(), kek }
    }

    pub(super) fn kek(&self) -> &Kek {
        &self.kek
    }

    fn head(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Option<[u8; 32]> {
        let heads = locked(&self.heads);
        heads.get(&(aggregate_type.to_string(), aggregate_id.to_string())).filter(|(s, _)| *s == sequence).map(|(_, h)| *h)
    }

    fn remember_head(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: [u8; 32]) {
        let mut heads = locked(&self.heads);
        bounded(&mut heads);
        heads.insert((aggregate_type.to_string(), aggregate_id.to_string()), (sequence, hash));
    }

    pub(super) fn key(&self, subject: &str) -> Option<Key> {
        locked(&self.keys).get(subject).copied()
    }

    pub(super) fn remember_key(&self, subject: &str, key: Key) {
        let mut keys = locked(&self.keys);
        bounded(&mut keys);
        keys.insert(subject.to_string(), key);
    }

    /// After this process destroyed the subject's key.
    pub fn forget_subject(&self, subject: &str) {
        locked(&self.keys).remove(subject);
    }
}

fn persistence_error(backend: Backend) -> impl Fn(sqlx::Error) -> PersistenceError {
    move |error| {
        // The same conflicts postgres-es and sqlite-es report: any unique violation on
        // PostgreSQL, a primary-key violation on SQLite, as their own source does.
        let conflict = match (&error, backend) {
            (sqlx::Error::Database(db), Backend::Postgres) => db.code().as_deref() == Some("23505"),
            (sqlx::Error::Database(db), Backend::Sqlite) => db.code().as_deref() == Some("1555"),
            _ => false,
        };
        match error {
            _ if conflict => PersistenceError::OptimisticLockError,
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                PersistenceError::ConnectionError(Box::new(error))
            }
            other => PersistenceError::UnknownError(Box::new(other)),
        }
    }
}

fn log_error(backend: Backend) -> impl Fn(LogError) -> PersistenceError {
    move |error| match error {
        LogError::Store(error) => persistence_error(backend)(error),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

/// An aggregate a unit read without changing it (src/store/unit.rs): the unit's
/// events go in only if it has nothing past `sequence` by then.
pub struct Unchanged<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
}

/// Appends each batch (`events` of one aggregate, in sequence order, and the account
/// they concern: `domain::Subject`, else what their payload names) with their hash
/// links, in ONE statement — atomic by itself, no BEGIN or COMMIT round trips: the
/// same rows and columns postgres-es / sqlite-es write, plus `prev_hash` and `hash`.
/// A second writer at the same sequence fails on the primary key, and an aggregate
/// of `unchanged` that gained an event makes the statement insert nothing; both
/// surface as [`PersistenceError::OptimisticLockError`]. Read models are folded
/// afterwards, off the request path (src/store/mod.rs).
pub async fn persist(
    db: &Db,
    memory: &Memory,
    batches: &[(&str, Option<&str>, &[SerializedEvent])],
    unchanged: &[Unchanged<'_>],
) -> Result<(), PersistenceError> {
    let batches: Vec<_> = batches.iter().filter_map(|(t, subject, events)| Some((*t, *subject, events.first()?, *events))).collect();
    if batches.is_empty() {
        return Ok(());
    }
    let backend = Backend::of(db);
    let error = persistence_error(backend);
    let heads = with_pool!(db, pool => {
        let mut conn = pool.acquire().await.map_err(&error)?;
        append(&mut Conn::from(&mut *conn), backend, memory, &batches, unchanged).await?
    });
    for ((aggregate_type, _, first, _), (sequence, hash)) in batches.iter().zip(heads) {
        memory.remember_head(aggregate_type, &first.aggregate_id, sequence, hash);
    }
    Ok(())
}

/// One row of `events` as it is stored.
struct Row<'a> {
    aggregate_type: &'a str,
    event: &'a SerializedEvent,
    sequence: i64,
    payload: Value,
    metadata: Value,
    prev: [u8; 32],
    hash: [u8; 32],
}

/// Inserts every batch's events in one statement (on the condition that `unchanged`
/// holds); returns each batch's new head (last sequence, its hash).
async fn append(
    conn: &mut Conn<'_>,
    backend: Backend,
    memory: &Memory,
    batches: &[(&str, Option<&str>, &SerializedEvent, &[SerializedEvent])],
    unchanged: &[Unchanged<'_>],
) -> Result<Vec<(i64, [u8; 32])>, PersistenceError> {
    let error = persistence_error(backend);
    let mut rows = Vec::new();
    let mut heads = Vec::with_capacity(batches.len());
    for (aggregate_type, subject, first, events) in batches {
        let mut prev = previous_hash(conn, backend, memory, aggregate_type, first).await?;
        let mut last = 0;
        for event in *events {
            let sequence = i64::try_from(event.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
            // Personal data is encrypted before the hash is taken, so the chain covers
            // what is stored and stays verifiable once a key is destroyed (src/store/shred.rs).
            let (payload, metadata) =
                shred::encrypt_personal(conn, memory, *subject, aggregate_type, &event.aggregate_id, &event.payload, &event.metadata)
                    .await
                    .map_err(&error)?;
            let hash = event_hash(
                &Linked {
                    aggregate_type,
                    aggregate_id: &event.aggregate_id,
                    sequence,
                    event_type: &event.event_type,
                    event_version: &event.event_version,
                    payload: &payload,
                    metadata: &metadata,
                },
                &prev,
            );
            rows.push(Row { aggregate_type, event, sequence, payload, metadata, prev, hash });
            prev = hash;
            last = sequence;
        }
        heads.push((last, prev));
    }
    let columns = "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, prev_hash, hash";
    let values = (0..rows.len())
        .map(|row| format!("({})", (1..=9).map(|column| format!("${}", row * 9 + column)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = if unchanged.is_empty() {
        format!("INSERT INTO events ({columns}) VALUES {values}")
    } else {
        let first = rows.len() * 9;
        let newer = (0..unchanged.len())
            .map(|n| {
                let p = first + n * 3;
                format!("(aggregate_type = ${} AND aggregate_id = ${} AND sequence > ${})", p + 1, p + 2, p + 3)
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        format!(
            "INSERT INTO events ({columns}) SELECT * FROM (VALUES {values}) AS decided
             WHERE NOT EXISTS (SELECT 1 FROM events WHERE {newer})"
        )
    };
    let inserted = with_conn!(conn, c => {
        let mut query = sqlx::query(&sql);
        for row in &rows {
            query = query
                .bind(row.aggregate_type)
                .bind(row.event.aggregate_id.as_str())
                .bind(row.sequence)
                .bind(row.event.event_type.as_str())
                .bind(row.event.event_version.as_str())
                .bind(&row.payload)
                .bind(&row.metadata)
                .bind(hex(&row.prev))
                .bind(hex(&row.hash));
        }
        for read in unchanged {
            query = query.bind(read.aggregate_type).bind(read.aggregate_id).bind(read.sequence);
        }
        query.execute(&mut **c).await.map_err(&error)?.rows_affected()
    });
    if inserted != rows.len() as u64 {
        return Err(PersistenceError::OptimisticLockError);
    }
    Ok(heads)
}

/// The hash of the event before `first` in its aggregate: remembered from this
/// process's last append, else read (or recomputed) from the log.
async fn previous_hash(
    conn: &mut Conn<'_>,
    backend: Backend,
    memory: &Memory,
    aggregate_type: &str,
    first: &SerializedEvent,
) -> Result<[u8; 32], PersistenceError> {
    let first_sequence = i64::try_from(first.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
    if first_sequence <= 1 {
        return Ok(GENESIS);
    }
    if let Some(hash) = memory.head(aggregate_type, &first.aggregate_id, first_sequence - 1) {
        return Ok(hash);
    }
    hash_at(conn, backend, aggregate_type, &first.aggregate_id, first_sequence - 1)
        .await
        .map_err(log_error(backend))?
        .ok_or_else(|| {
            PersistenceError::UnknownError(
                format!(
                    "cannot append {aggregate_type}/{}#{first_sequence}: event {} is missing from the log",
                    first.aggregate_id,
                    first_sequence - 1
                )
                .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain::{event_hash, Linked};
    use serde_json::json;

    fn serialized(sequence: usize, payload: Value) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: "s1".into(),
            sequence,
            aggregate_type: "sign_in".into(),
            event_type: "SessionRefreshed".into(),
            event_version: "1".into(),
            payload,
            metadata: json!({"client_address": "127.0.0.1"}),
        }
    }

    async fn sqlite_store() -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("authd-chain-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = crate::store::connect(&format!("sqlite://{}", dir.join("authd.db").display())).await.expect("store");
        (db, dir)
    }

    async fn stored(db: &Db) -> Vec<(i64, Option<String>, Option<String>)> {
        let Db::Sqlite(pool) = db else { panic!("sqlite") };
        sqlx::query_as("SELECT sequence, prev_hash, hash FROM events ORDER BY sequence").fetch_all(pool).await.expect("rows")
    }

    #[tokio::test]
    async fn appends_link_each_event_to_the_previous_and_a_second_writer_conflicts() {
        let (db, dir) = sqlite_store().await;
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(1, json!({"a": 1})), serialized(2, json!({"a": 2}))])], &[]).await.expect("append");
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(3, json!({"a": 3}))])], &[]).await.expect("append");
        let rows = stored(&db).await;
        assert_eq!(rows[0].1.as_deref(), Some(hex(&GENESIS).as_str()));
        assert_eq!(rows[1].1, rows[0].2);
        assert_eq!(rows[2].1, rows[1].2);
        let conflict = persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(3, json!({"a": "late"}))])], &[]).await;
        assert!(matches!(conflict, Err(PersistenceError::OptimisticLockError)), "{conflict:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn batches_commit_together_or_not_at_all() {
        let (db, dir) = sqlite_store().await;
        let other = |sequence: usize| SerializedEvent { aggregate_id: "s2".into(), ..serialized(sequence, json!({"b": sequence})) };
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(1, json!({"a": 1}))])], &[]).await.expect("append");
        // The second batch conflicts at sequence 1: the first batch is not written either.
        let conflict = persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[other(1)]), ("sign_in", None, &[serialized(1, json!({"a": "late"}))])], &[]).await;
        assert!(matches!(conflict, Err(PersistenceError::OptimisticLockError)), "{conflict:?}");
        assert_eq!(stored(&db).await.len(), 1);
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[other(1), other(2)]), ("sign_in", None, &[serialized(2, json!({"a": 2}))])], &[]).await.expect("append");
        assert_eq!(stored(&db).await.len(), 4);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn an_aggregate_read_unchanged_that_gained_an_event_refuses_the_append() {
        let (db, dir) = sqlite_store().await;
        let read = |sequence| Unchanged { aggregate_type: "user", aggregate_id: "u1", sequence };
        let user = |sequence: usize| SerializedEvent { aggregate_id: "u1".into(), aggregate_type: "user".into(), ..serialized(sequence, json!({})) };
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("user", None, &[user(1)])], &[]).await.expect("append");
        // Decided on the user at sequence 0: it has moved on, nothing is written.
        let conflict = persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(1, json!({"a": 1}))])], &[read(0)]).await;
        assert!(matches!(conflict, Err(PersistenceError::OptimisticLockError)), "{conflict:?}");
        assert_eq!(stored(&db).await.len(), 1);
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(1, json!({"a": 1}))])], &[read(1)]).await.expect("append");
        assert_eq!(stored(&db).await.len(), 2);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn an_append_after_events_written_before_the_chain_links_to_their_recomputed_head() {
        let (db, dir) = sqlite_store().await;
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(1, json!({"a": 1}))])], &[]).await.expect("append");
        let Db::Sqlite(pool) = &db else { panic!("sqlite") };
        sqlx::query("UPDATE events SET prev_hash = NULL, hash = NULL").execute(pool).await.expect("legacy");
        persist(&db, &Memory::new(Kek::new([3; 32])), &[("sign_in", None, &[serialized(2, json!({"a": 2}))])], &[]).await.expect("append");
        let first = serialized(1, json!({"a": 1}));
        let head = event_hash(
            &Linked {
                aggregate_type: "sign_in",
                aggregate_id: "s1",
                sequence: 1,
                event_type: &first.event_type,
                event_version: &first.event_version,
                payload: &first.payload,
                metadata: &first.metadata,
            },
            &GENESIS,
        );
        assert_eq!(stored(&db).await[1].1.as_deref(), Some(hex(&head).as_str()));
        std::fs::remove_dir_all(dir).ok();
    }
}
