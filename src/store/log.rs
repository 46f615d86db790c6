//! The log: every event of every aggregate in one global order that a consumer can
//! tail by position without ever skipping an event, and the one type an event row is
//! read as ([`Event`]). The read models' catch-up and gap repair, the NATS audit
//! relay and `GET /v1/admin/events` read through [`Log`], which decrypts personal
//! fields (src/store/shred.rs); `authd replay` reads the same rows with [`for_each`]
//! (the hash chain covers what is stored, so its checks read rows as stored).
//! An event's `position` is always its global position: the envelope on NATS, the
//! admin API and `authd replay` show the same number.
//!
//! # The order, and why it is gap-safe
//!
//! A consumer remembers the last position it handled and asks for what comes after
//! it. That is only sound if no event can ever appear *behind* a position a consumer
//! has already passed. A number taken from a sequence at insert time does not give
//! that: two writers take 10 and 11, the one with 11 commits first, a consumer reads
//! 11 and checkpoints it, and 10 commits a moment later behind its back.
//!
//! - **PostgreSQL.** Each event row carries the id of the transaction that wrote it
//!   (`transaction_id xid8 DEFAULT pg_current_xact_id()`). Every transaction id
//!   below `pg_snapshot_xmin(pg_current_snapshot())` belongs to a finished
//!   transaction, and every transaction that starts writing later gets a larger id,
//!   so the set of events below that horizon never changes again. A sequencer
//!   ([`Log::sequence`]) walks those events in `(transaction_id, position)` order —
//!   resuming from the pair of the last event it stamped — and gives each a dense,
//!   monotonic `global_position` in the `event_positions` table. Sequencers run
//!   under a transaction-level advisory lock, one at a time, each handing out
//!   numbers above the last one committed, so `global_position`s become visible in
//!   increasing order. Consumers tail `global_position` alone.
//!
//!   Why not checkpoint the raw `position` of events below the horizon? An *older*
//!   transaction (smaller id) can hold a *higher* position: it took its id first
//!   and inserted its event after a younger one inserted (and stayed open). Once the
//!   horizon passes the older one, its event (position 11) is readable while the
//!   younger's (position 10) is not; a consumer that checkpoints 11 skips 10 for
//!   ever. Ordering by the pair fixes that, but every consumer would then need a
//!   two-part cursor; the sequencer turns the pair order into one number, so the
//!   envelope's `position` and `after=<position>` paging stay one monotonic integer.
//!   Per aggregate the order is the sequence order: a command's transaction gets its
//!   id when it inserts, after it has read the previous event's commit.
//!
//!   A transaction that stays open holds the horizon (cluster-wide): events
//!   committed after it started wait until it ends. That is the price of never
//!   skipping; the relay's lag (`/readyz`, `/metrics`) shows it.
//! - **SQLite.** One writer at a time: an `AUTOINCREMENT` key that a trigger
//!   assigns inside the writing transaction already follows commit order and is
//!   never reused, so there is nothing to sequence.
//!
//! `recorded_at` is the writing transaction's time (PostgreSQL `now()`, SQLite the
//! insert's time): the transaction only inserts its events and commits.

use std::time::Duration;

use futures::TryStreamExt;
use projections::{with_pool, Db};
use serde_json::Value;
use sqlx::Row;

/// Events stamped by one sequencer transaction at most.
const SEQUENCE_BATCH: i64 = 5000;
/// Advisory lock (transaction level) that serialises PostgreSQL sequencers.
const SEQUENCER_LOCK: i64 = 0x6175_7468_645f_7365; // "authd_se"
/// How long a reader waits for another replica's sequencer before reading anyway.
const SEQUENCER_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(db: &Db) -> Self {
        match db {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    pub fn of_conn(conn: &projections::Conn<'_>) -> Self {
        match conn {
            projections::Conn::Postgres(_) => Backend::Postgres,
            projections::Conn::Sqlite(_) => Backend::Sqlite,
        }
    }
}

/// An event's global position (see the module documentation), over `events e`;
/// NULL while the PostgreSQL sequencer has not numbered it yet.
const GLOBAL_POSITION: &str = "(SELECT p.global_position FROM event_positions p \
     WHERE p.aggregate_type = e.aggregate_type AND p.aggregate_id = e.aggregate_id AND p.sequence = e.sequence)";

/// The global position, for conditions (`position >= $n`).
pub fn position_column() -> &'static str {
    GLOBAL_POSITION
}

/// Log order over `events e`: the global position; on PostgreSQL, events not
/// numbered yet follow in the order the sequencer will give them.
pub fn order_by(backend: Backend) -> String {
    match backend {
        Backend::Postgres => format!("{GLOBAL_POSITION} NULLS LAST, e.transaction_id, e.position"),
        Backend::Sqlite => GLOBAL_POSITION.to_string(),
    }
}

/// `recorded_at` as RFC 3339 text in UTC.
fn recorded_at_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => r#"to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
        Backend::Sqlite => "e.recorded_at",
    }
}

/// A condition on `recorded_at` against a bound RFC 3339 text parameter `$n`.
pub fn recorded_at_compare(backend: Backend, op: &str, parameter: usize) -> String {
    match backend {
        Backend::Postgres => format!("e.recorded_at {op} CAST(${parameter} AS timestamptz)"),
        // Stored as '%Y-%m-%dT%H:%M:%fZ' (UTC, milliseconds): text order is time order
        // when the bound is written the same way (see `sqlite_time`).
        Backend::Sqlite => format!("e.recorded_at {op} ${parameter}"),
    }
}

/// A time bound in the form each store compares `recorded_at` with.
pub fn time_bound(backend: Backend, at: chrono::DateTime<chrono::Utc>) -> String {
    match backend {
        Backend::Postgres => at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        Backend::Sqlite => at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    }
}

/// The select list [`Event::from_row`] reads, in its order, over `events e`.
pub fn columns(backend: Backend) -> String {
    format!(
        "COALESCE({GLOBAL_POSITION}, 0) AS global_position, e.aggregate_type, e.aggregate_id, e.sequence, \
         e.event_type, e.event_version, {} AS recorded_at, CAST(e.payload AS TEXT) AS payload, \
         CAST(e.metadata AS TEXT) AS metadata, e.prev_hash, e.hash",
        recorded_at_column(backend),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log: {0}")]
    Store(#[from] sqlx::Error),
    #[error("event {aggregate_type}/{aggregate_id}#{sequence}: its {column} is not JSON: {source}")]
    BadJson {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        column: &'static str,
        source: serde_json::Error,
    },
}

/// One event of the log: the one type every reader reads a row as.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Global position: strictly increasing in log order; 0 while a PostgreSQL
    /// event waits for the sequencer (its transaction is above the horizon).
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    pub metadata: Value,
    pub payload: Value,
    /// The hash chain (src/store/chain.rs); checked by `authd replay verify`.
    #[serde(skip)]
    pub prev_hash: Option<String>,
    #[serde(skip)]
    pub hash: Option<String>,
}

impl Event {
    pub fn from_row<'r, R>(row: &'r R) -> Result<Self, LogError>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let aggregate_type: String = row.try_get(1)?;
        let aggregate_id: String = row.try_get(2)?;
        let sequence: i64 = row.try_get(3)?;
        let json = |index: usize, column: &'static str| -> Result<Value, LogError> {
            let text: String = row.try_get(index)?;
            serde_json::from_str(&text).map_err(|source| LogError::BadJson {
                aggregate_type: aggregate_type.clone(),
                aggregate_id: aggregate_id.clone(),
                sequence,
                column,
                source,
            })
        };
        let payload = json(7, "payload")?;
        let metadata = json(8, "metadata")?;
        Ok(Self {
            position: row.try_get(0)?,
            event_type: row.try_get(4)?,
            event_version: row.try_get(5)?,
            recorded_at: row.try_get(6)?,
            payload,
            metadata,
            prev_hash: row.try_get(9)?,
            hash: row.try_get(10)?,
            aggregate_type,
            aggregate_id,
            sequence,
        })
    }

    /// The metadata value `key` (client address, request id, user agent).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

/// A query parameter.
#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// Runs `sql` (selecting [`columns`]) and hands each event to `each`, as stored
/// (personal fields encrypted), streaming: the log is never held in memory whole.
pub async fn for_each<E>(
    db: &Db,
    sql: &str,
    binds: &[Bind],
    mut each: impl FnMut(Event) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<LogError>,
{
    with_pool!(db, pool => {
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Int(int) => query.bind(*int),
            };
        }
        let mut rows = query.fetch(pool);
        while let Some(row) = rows.try_next().await.map_err(LogError::from)? {
            each(Event::from_row(&row)?)?;
        }
    });
    Ok(())
}

/// Collects what [`for_each`] streams.
pub async fn fetch(db: &Db, sql: &str, binds: &[Bind]) -> Result<Vec<Event>, LogError> {
    let mut events = Vec::new();
    for_each(db, sql, binds, |event| {
        events.push(event);
        Ok::<_, LogError>(())
    })
    .await?;
    Ok(events)
}

/// How many events match `where_clause` (for progress bars and "did the log grow").
pub async fn count(db: &Db, where_clause: &str, binds: &[Bind]) -> Result<u64, LogError> {
    let sql = format!("SELECT COUNT(*) FROM events e {where_clause}");
    let count: i64 = with_pool!(db, pool => {
        let mut query = sqlx::query_scalar(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Int(int) => query.bind(*int),
            };
        }
        query.fetch_one(pool).await?
    });
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Only events matching every given field.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
}

/// A page of the log.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Event>,
    /// The position to read after next time. Past the last event returned, or —
    /// when fewer than `limit` matched — the head of the log as of this read, so a
    /// filtered reader moves past events that did not match.
    pub next: i64,
}

/// Reader of the global log; cheap to clone.
#[derive(Clone, Debug)]
pub struct Log {
    db: Db,
    /// Unwraps the subject keys that reveal personal fields (src/store/shred.rs).
    kek: crate::store::shred::Kek,
}

impl Log {
    pub fn new(db: Db, kek: crate::store::shred::Kek) -> Self {
        Self { db, kek }
    }

    /// Up to `limit` events after position `after` matching `filter`, in log order,
    /// personal fields in clear (or erased).
    pub async fn read(&self, after: i64, limit: usize, filter: &Filter) -> Result<Page, LogError> {
        self.read_page(after, limit, filter, true).await
    }

    /// [`Log::read`] with personal fields as stored: encrypted under their account's
    /// key, for what leaves the server for good (the audit stream), so removing the
    /// account erases them there too.
    pub async fn read_as_stored(&self, after: i64, limit: usize, filter: &Filter) -> Result<Page, LogError> {
        self.read_page(after, limit, filter, false).await
    }

    async fn read_page(&self, after: i64, limit: usize, filter: &Filter, reveal: bool) -> Result<Page, LogError> {
        self.sequence().await?;
        // The head is read before the page: every position at or below it is
        // already visible (positions become visible in order), so bounding the page
        // by it makes `next` safe even when nothing matched.
        let head = self.stamped_head().await?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let mut sql = format!(
            "SELECT {}
             FROM event_positions p
             JOIN events e ON e.aggregate_type = p.aggregate_type
                          AND e.aggregate_id = p.aggregate_id
                          AND e.sequence = p.sequence
             WHERE p.global_position > $1 AND p.global_position <= $2",
            columns(self.backend())
        );
        let mut texts = Vec::new();
        for (column, value) in [
            ("p.aggregate_type", &filter.aggregate_type),
            ("p.aggregate_id", &filter.aggregate_id),
            ("e.event_type", &filter.event_type),
        ] {
            if let Some(value) = value {
                texts.push(value.clone());
                sql.push_str(&format!(" AND {column} = ${}", texts.len() + 3));
            }
        }
        sql.push_str(" ORDER BY p.global_position LIMIT $3");
        let rows = projections::with_pool!(&self.db, pool => {
            let mut query = sqlx::query(&sql).bind(after).bind(head).bind(limit);
            for text in texts {
                query = query.bind(text);
            }
            query.fetch_all(pool).await?.iter().map(Event::from_row).collect::<Result<Vec<_>, _>>()?
        });
        let mut events = rows;
        if reveal {
            self.reveal(&mut events).await?;
        }
        let next = match events.last() {
            Some(last) if events.len() as i64 == limit => last.position,
            _ => head.max(after),
        };
        Ok(Page { events, next })
    }

    /// PostgreSQL: events already committed but not stamped yet (their transaction
    /// is above the horizon, or no sequencer ran since), oldest first, without a
    /// position (0). Not gap-safe: only for consumers that need not follow the
    /// global order, like the read models (whose per-aggregate versions make any
    /// re-fold a no-op), to see a commit without waiting for the horizon.
    pub async fn unsequenced(&self, limit: usize) -> Result<Vec<Event>, LogError> {
        let Db::Postgres(pool) = &self.db else { return Ok(vec![]) };
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {}
             FROM events e
             WHERE (e.transaction_id, e.position) > (
                 COALESCE((SELECT transaction_id FROM event_positions ORDER BY global_position DESC LIMIT 1), '0'::xid8),
                 COALESCE((SELECT position FROM event_positions ORDER BY global_position DESC LIMIT 1), 0))
             ORDER BY e.transaction_id, e.position
             LIMIT $1",
            columns(Backend::Postgres)
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(pool).await?;
        let mut events = rows.iter().map(Event::from_row).collect::<Result<Vec<_>, _>>()?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// Personal fields in clear, or erased once their account is removed (see
    /// src/store/shred.rs): read models fold clear values, and the audit envelope
    /// withholds the payload's personal fields itself.
    async fn reveal(&self, events: &mut [Event]) -> Result<(), LogError> {
        let mut values: Vec<&mut Value> =
            events.iter_mut().flat_map(|event| [&mut event.payload, &mut event.metadata]).collect();
        crate::store::shred::reveal_all(&self.db, &self.kek, &mut values).await?;
        Ok(())
    }

    /// One aggregate's events after `sequence` (at most `limit`), in sequence order,
    /// personal fields in clear.
    pub async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<Event>, LogError> {
        let sql = format!(
            "SELECT {} FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > $3
             ORDER BY e.sequence LIMIT $4",
            columns(self.backend())
        );
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let binds =
            [Bind::Text(aggregate_type.into()), Bind::Text(aggregate_id.into()), Bind::Int(sequence), Bind::Int(limit)];
        let mut events = fetch(&self.db, &sql, &binds).await?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    fn backend(&self) -> Backend {
        Backend::of(&self.db)
    }

    /// The aggregates written after `after` (at most `limit`), in log order: global
    /// position, type, id, sequence. Nothing decrypted: for followers that only need
    /// to know what moved.
    pub async fn moved_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, String, String, i64)>, LogError> {
        self.sequence().await?;
        let sql = "SELECT global_position, aggregate_type, aggregate_id, sequence FROM event_positions
                   WHERE global_position > $1 ORDER BY global_position LIMIT $2";
        Ok(projections::with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(after).bind(limit).fetch_all(pool).await?
        }))
    }

    /// PostgreSQL: the aggregates of events committed but not numbered yet (their
    /// transaction is above the horizon), at most `limit`, in commit order.
    /// What a follower drops from memory at once, before the numbering catches up.
    pub async fn moved_unnumbered(&self, limit: i64) -> Result<Vec<(String, String, i64)>, LogError> {
        let Db::Postgres(pool) = &self.db else { return Ok(vec![]) };
        let sql = "SELECT e.aggregate_type, e.aggregate_id, e.sequence FROM events e
                   WHERE (e.transaction_id, e.position) > (
                       COALESCE((SELECT transaction_id FROM event_positions ORDER BY global_position DESC LIMIT 1), '0'::xid8),
                       COALESCE((SELECT position FROM event_positions ORDER BY global_position DESC LIMIT 1), 0))
                   ORDER BY e.transaction_id, e.position
                   LIMIT $1";
        // The ORDER BY is the index's (events_commit_order): without it the planner
        // scans the whole table for the few rows past the cursor.
        Ok(sqlx::query_as(sql).bind(limit).fetch_all(pool).await?)
    }

    /// The position of the newest event in the log (0 when empty).
    pub async fn head(&self) -> Result<i64, LogError> {
        self.sequence().await?;
        self.stamped_head().await
    }

    async fn stamped_head(&self) -> Result<i64, LogError> {
        let sql = "SELECT COALESCE(MAX(global_position), 0) FROM event_positions";
        Ok(projections::with_pool!(&self.db, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?))
    }

    /// How far the consumer `name` got (0: nowhere yet).
    pub async fn checkpoint(&self, name: &str) -> Result<i64, LogError> {
        let sql = "SELECT position FROM checkpoints WHERE name = $1";
        let position = projections::with_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(name).fetch_optional(pool).await?
        });
        Ok(position.unwrap_or(0))
    }

    /// Moves the consumer `name` forward to `position` (never back).
    pub async fn advance(&self, name: &str, position: i64) -> Result<(), LogError> {
        let sql = "INSERT INTO checkpoints (name, position) VALUES ($1, $2)
                   ON CONFLICT (name) DO UPDATE SET position = excluded.position
                   WHERE checkpoints.position < excluded.position";
        projections::with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(name).bind(position).execute(pool).await?;
        });
        Ok(())
    }

    /// Numbers every event committed so far, waiting up to `wait` for transactions
    /// still open elsewhere to end (they hold the horizon back). What is still not
    /// numbered then reads with position 0 and sorts last.
    pub async fn number_committed(&self, wait: Duration) -> Result<(), LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.sequence().await?;
            if self.unsequenced(1).await?.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PostgreSQL: stamps a `global_position` on every event below the horizon that
    /// has none yet (see the module documentation). SQLite: nothing to do.
    pub async fn sequence(&self) -> Result<(), LogError> {
        let Db::Postgres(pool) = &self.db else { return Ok(()) };
        loop {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("SET LOCAL lock_timeout = {}", SEQUENCER_WAIT.as_millis()))
                .execute(&mut *tx)
                .await?;
            match sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SEQUENCER_LOCK).execute(&mut *tx).await {
                Ok(_) => {}
                // lock_not_available: another replica has been sequencing for a
                // while. Read what is stamped; the next read picks up the rest.
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => return Ok(()),
                Err(error) => return Err(error.into()),
            }
            // The cursor: the (transaction, position) of the last event stamped.
            // Read after taking the lock, in a new statement, so it sees the last
            // sequencer's commit.
            let cursor = sqlx::query(
                "SELECT global_position, CAST(transaction_id AS TEXT), position
                 FROM event_positions ORDER BY global_position DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let (last, transaction_id, position) = match cursor {
                Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?, row.try_get::<i64, _>(2)?),
                None => (0, "0".to_string(), 0),
            };
            // `pg_current_snapshot()` is this statement's snapshot: every
            // transaction below its xmin has finished, and its rows are visible here.
            let stamped = sqlx::query(
                "INSERT INTO event_positions
                     (global_position, transaction_id, position, aggregate_type, aggregate_id, sequence)
                 SELECT $1 + row_number() OVER (ORDER BY b.transaction_id, b.position),
                        b.transaction_id, b.position, b.aggregate_type, b.aggregate_id, b.sequence
                 FROM (SELECT e.transaction_id, e.position, e.aggregate_type, e.aggregate_id, e.sequence
                       FROM events e
                       WHERE (e.transaction_id, e.position) > (CAST($2 AS xid8), $3)
                         AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                       ORDER BY e.transaction_id, e.position
                       LIMIT $4) b",
            )
            .bind(last)
            .bind(transaction_id)
            .bind(position)
            .bind(SEQUENCE_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            if stamped < SEQUENCE_BATCH as u64 {
                return Ok(());
            }
        }
    }
}

/// Lets the read models catch up from the log: the gap-safe log from their
/// checkpoint, and once they reach its head, the commits not stamped yet (folding
/// those early is safe, the checkpoint only ever moves over stamped events).
impl projections::EventLog for Log {
    type Event = Event;

    async fn read_after(&self, after: i64, limit: usize) -> Result<(Vec<Event>, i64), projections::LogError> {
        let error = |e: LogError| projections::LogError(e.to_string());
        let mut page = self.read(after, limit, &Filter::default()).await.map_err(error)?;
        if page.events.len() < limit {
            page.events.extend(self.unsequenced(limit - page.events.len()).await.map_err(error)?);
        }
        Ok((page.events, page.next))
    }

    async fn read_aggregate(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        limit: usize,
    ) -> Result<Vec<Event>, projections::LogError> {
        self.stream(aggregate_type, aggregate_id, sequence, limit).await.map_err(|e| projections::LogError(e.to_string()))
    }
}

impl projections::Folded for Event {
    fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    fn sequence(&self) -> i64 {
        self.sequence
    }
    fn payload(&self) -> &Value {
        &self.payload
    }
}
