//! Reading the event log with the columns cqrs-es does not know about (the log
//! position, `recorded_at`, the hash chain), the same way on both stores.

use futures::TryStreamExt;
use projections::{with_pool, Db};
use serde_json::Value;
use sqlx::Row;

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
}

/// The expression that orders the whole log (exports, timelines, `--at <position>`)
/// and that is reported as an event's `position`.
///
/// PostgreSQL: the `position` bigserial. It is assignment order, not commit order: a
/// reader can see position 11 committed before 10 is. That is fine for forensics on
/// a log at rest, not for tailing a live one. SQLite has one writer at a time, so
/// its rowid follows commit order. Kept in this one function so a gap-safe global
/// order can replace it.
pub fn order_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "position",
        Backend::Sqlite => "rowid",
    }
}

/// `recorded_at` as RFC 3339 text in UTC.
fn recorded_at_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => r#"to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
        Backend::Sqlite => "recorded_at",
    }
}

/// A condition on `recorded_at` against a bound RFC 3339 text parameter `$n`.
pub fn recorded_at_compare(backend: Backend, op: &str, parameter: usize) -> String {
    match backend {
        Backend::Postgres => format!("recorded_at {op} CAST(${parameter} AS timestamptz)"),
        // Stored as '%Y-%m-%dT%H:%M:%fZ' (UTC, milliseconds): text order is time order
        // when the bound is written the same way (see `sqlite_time`).
        Backend::Sqlite => format!("recorded_at {op} ${parameter}"),
    }
}

/// A time bound in the form each store compares `recorded_at` with.
pub fn time_bound(backend: Backend, at: chrono::DateTime<chrono::Utc>) -> String {
    match backend {
        Backend::Postgres => at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        Backend::Sqlite => at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    }
}

/// The select list [`LoggedEvent::from_row`] reads, in its order.
pub fn columns(backend: Backend) -> String {
    format!(
        "{} AS position, aggregate_type, aggregate_id, sequence, event_type, event_version, {} AS recorded_at, \
         CAST(payload AS TEXT) AS payload, CAST(metadata AS TEXT) AS metadata, prev_hash, hash",
        order_column(backend),
        recorded_at_column(backend),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event store: {0}")]
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

/// One row of the log, every column.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: String,
    pub payload: Value,
    pub metadata: Value,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

impl LoggedEvent {
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

    /// The envelope `authd replay events` prints.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            position: self.position,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            recorded_at: &self.recorded_at,
            metadata: &self.metadata,
            payload: &self.payload,
            description: None,
        }
    }
}

/// One event as exported, fields in this order.
#[derive(Debug, serde::Serialize)]
pub struct Envelope<'a> {
    pub position: i64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: &'a str,
    pub metadata: &'a Value,
    pub payload: &'a Value,
    /// Timelines only: the event in plain language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A query parameter.
#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// Runs `sql` (selecting [`columns`]) and hands each event to `each`, streaming:
/// the log is never held in memory whole.
pub async fn for_each<E>(
    db: &Db,
    sql: &str,
    binds: &[Bind],
    mut each: impl FnMut(LoggedEvent) -> Result<(), E>,
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
            each(LoggedEvent::from_row(&row)?)?;
        }
    });
    Ok(())
}

/// Collects what [`for_each`] streams.
pub async fn fetch(db: &Db, sql: &str, binds: &[Bind]) -> Result<Vec<LoggedEvent>, LogError> {
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
    let sql = format!("SELECT COUNT(*) FROM events {where_clause}");
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
