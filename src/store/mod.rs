//! The event store: PostgreSQL (postgres-es) or SQLite (sqlite-es), chosen by
//! `DATABASE_URL`, behind one repository type so everything above is written once.
//!
//! Commands run in units of work (src/store/unit.rs; [`Store::execute`] is a unit of
//! one command): the aggregate's state comes from this process's memory
//! (src/store/cache.rs) or its events, the aggregate decides, and the events are
//! committed with optimistic concurrency (decided again on conflict, bounded)
//! through the write path (src/store/append.rs), one statement per commit. The read
//! models are folded from the log off the request path ([`Store::catch_up`], after
//! commits and before any answer read from them). A log follower
//! (src/store/follower.rs) keeps the memory current with other replicas' writes.

mod append;
mod cache;
mod follower;
mod snapshot;
mod unit;
pub mod chain;
pub mod log;
pub mod shred;

pub use unit::Unit;
pub(crate) use unit::transact;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use projections::{Db, ReadModels};
use sqlite_es::SqliteEventRepository;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::watch;

use cache::Cache;
use log::Log;

/// Aggregates kept in memory (src/store/cache.rs).
const CACHE_CAPACITY: usize = 10_000;

/// An event's metadata as stored: the [`RequestContext`] it was recorded with.
pub type Metadata = HashMap<String, String>;

/// Who a command came from, as its request said: recorded with every event it
/// writes (the client address and user agent encrypted under the subject's key,
/// src/store/shred.rs), and what throttles and the session list read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestContext {
    pub request_id: Option<String>,
    pub client: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// Work the server does on its own (no client), named `request_id`.
    pub fn server(request_id: &str) -> Self {
        Self { request_id: Some(request_id.to_string()), ..Self::default() }
    }

    /// The same request, without what identifies its client (for events of nobody's
    /// account, which nothing could erase).
    pub fn anonymised(&self) -> Self {
        Self { request_id: self.request_id.clone(), ..Self::default() }
    }

    /// The metadata its events are stored with.
    pub fn metadata(&self) -> Metadata {
        let mut metadata = Metadata::new();
        if let Some(request_id) = &self.request_id {
            metadata.insert("request_id".into(), request_id.clone());
        }
        if let Some(client) = self.client {
            metadata.insert("client_address".into(), client.to_string());
        }
        if let Some(agent) = &self.user_agent {
            metadata.insert("user_agent".into(), agent.clone());
        }
        metadata
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the event store at {url}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the event store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL {0:?}: use postgres://… or sqlite://…")]
    Scheme(String),
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("too many concurrent writers on one aggregate")]
    Contended,
}

/// What a command can end in, besides success.
#[derive(Debug)]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule).
    Rejected(E),
    Store(StoreError),
}

impl<E> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        CommandError::Store(error)
    }
}

/// Opens the store `url` names with the default pool ([`connect_with`]).
pub async fn connect(url: &str) -> Result<Db, StoreError> {
    connect_with(url, DEFAULT_POOL).await
}

/// PostgreSQL connections a process keeps by default: enough for two cores' worth
/// of requests (each holds one for a query or a commit at a time). More only adds
/// PostgreSQL backends that compete for the same cores (measured: 32 were about 15%
/// slower than 8 on the sign-in benchmark).
pub const DEFAULT_POOL: u32 = 10;

/// Opens the store `url` names with at most `pool` connections (PostgreSQL; SQLite
/// has one writer whatever the pool), creating a SQLite file if needed, and applies
/// the migrations of its backend.
pub async fn connect_with(url: &str, pool: u32) -> Result<Db, StoreError> {
    let connect_error = |source| StoreError::Connect { url: redact(url), source };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(pool.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(connect_error)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Db::Postgres(pool))
    } else if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(connect_error)?
            .create_if_missing(true)
            // Deleted content (a destroyed subject key) is overwritten, not left in
            // free pages (src/store/shred.rs).
            .pragma("secure_delete", "ON")
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        private_files(options.get_filename()).map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Db::Sqlite(pool))
    } else {
        Err(StoreError::Scheme(redact(url)))
    }
}

/// The SQLite database and its write-ahead log and shared-memory files are readable
/// by this user only (0600): the file is created so before SQLite opens it, and
/// SQLite gives the files it adds the database file's mode.
fn private_files(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str().is_empty() || path.to_str().is_some_and(|p| p == ":memory:" || p.starts_with("file::memory")) {
            return Ok(());
        }
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// A URL with any password replaced, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Runs `$call` on the backend's own repository (postgres-es / sqlite-es), which
/// reads an aggregate's events (they are cheap to build from a pool).
macro_rules! delegate {
    ($db:expr, $repo:ident => $call:expr) => {
        match $db {
            Db::Postgres(pool) => {
                let $repo = PostgresEventRepository::new(pool.clone());
                $call.await
            }
            Db::Sqlite(pool) => {
                let $repo = SqliteEventRepository::new(pool.clone());
                $call.await
            }
        }
    };
}

/// The event store plus the read models its commits feed.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// What the write path remembers between commits (src/store/append.rs).
    memory: Arc<append::Memory>,
    read_models: ReadModels,
    log: Log,
    /// Signalled after every commit, so log consumers (the audit relay, the read
    /// models' catch-up) need not wait for their next poll.
    committed: Arc<watch::Sender<()>>,
    stripes: Arc<unit::Stripes>,
    cache: Arc<Cache>,
    /// When the log follower last caught up (src/store/follower.rs).
    fresh: Arc<follower::Freshness>,
    /// One read-model catch-up at a time in this process.
    folding: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// The store on `db`; `kek` wraps the subject keys (src/store/shred.rs).
    pub fn new(db: Db, kek: shred::Kek) -> Self {
        let read_models = ReadModels::new(db.clone());
        let log = Log::new(db.clone(), kek.clone());
        Self { db, memory: Arc::new(append::Memory::new(kek)), read_models, log, committed: Arc::new(watch::Sender::new(())), stripes: Arc::new(unit::Stripes::new()), cache: Arc::new(Cache::new(CACHE_CAPACITY)), fresh: Arc::default(), folding: Arc::default() }
    }

    /// The read models, caught up first: they show at least every commit this
    /// process answered before the call (and every other replica's that the log
    /// shows by then).
    pub async fn read_models(&self) -> Result<&ReadModels, projections::Error> {
        self.catch_up().await?;
        Ok(&self.read_models)
    }

    /// The whole log in its global order.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Follows the log for other replicas' writes, every `every`, so the memory that
    /// [`Store::load_current`] answers from stays current (src/store/follower.rs).
    pub async fn follow(&self, every: Duration) -> Result<(), StoreError> {
        follower::start(self.log.clone(), self.cache.clone(), self.fresh.clone(), every)
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))
    }

    /// Changes after each commit of this process.
    pub fn commits(&self) -> watch::Receiver<()> {
        self.committed.subscribe()
    }

    /// Folds whatever the read models have not seen, from their checkpoint on. One
    /// pass at a time: a caller that waited for another pass runs its own, which
    /// starts after its own commits.
    pub async fn catch_up(&self) -> Result<u64, projections::Error> {
        let _turn = self.folding.lock().await;
        self.read_models.catch_up(&self.log).await
    }

    /// The aggregate's events after `sequence`. Aggregates see personal fields in
    /// clear (or erased), see src/store/shred.rs. Only payloads: `apply` never reads
    /// metadata, and leaving it sealed spares the key look-up on hot loads such as a
    /// session's at every token check.
    async fn events_after<A: Aggregate>(&self, id: &str, sequence: usize) -> Result<Vec<SerializedEvent>, StoreError> {
        let unavailable = |error: &dyn std::fmt::Display| StoreError::Unavailable(error.to_string());
        let mut events = delegate!(&self.db, repo => repo.get_last_events::<A>(id, sequence)).map_err(|e| unavailable(&e))?;
        let ring = shred::KeyRing::load_remembering(&self.db, self.memory.kek(), Some(&self.memory), events.iter().map(|event| &event.payload))
            .await
            .map_err(|e| unavailable(&e))?;
        events.iter_mut().for_each(|event| ring.reveal(&mut event.payload));
        Ok(events)
    }

    /// The aggregate as of its last event: the cached state (src/store/cache.rs), or
    /// else its snapshot (src/store/snapshot.rs), plus the events committed after it.
    async fn state<A: Aggregate + Clone + 'static>(&self, id: &str) -> Result<(A, usize), StoreError> {
        let cached = self.cache.get::<A>(id);
        let remembered = cached.is_some();
        let (mut aggregate, mut sequence) = match cached {
            Some(state) => state,
            None if snapshot::kept(A::TYPE) => snapshot::load::<A>(&self.db, id)
                .await
                .map_err(|error| StoreError::Unavailable(error.to_string()))?
                .unwrap_or_default(),
            None => Default::default(),
        };
        let tail = self.events_after::<A>(id, sequence).await?;
        // An aggregate with no events is remembered too: an unknown username then
        // reads like a known one (from memory), and does not ask the store each time.
        let grew = !tail.is_empty() || !remembered;
        for event in tail {
            let payload = serde_json::from_value::<A::Event>(event.payload).map_err(|error| {
                StoreError::Unavailable(format!("{}/{id}#{}: unreadable event: {error}", A::TYPE, event.sequence))
            })?;
            aggregate.apply(payload);
            sequence = event.sequence;
        }
        if grew {
            self.cache.put(id, aggregate.clone(), sequence);
        }
        Ok((aggregate, sequence))
    }

    /// The aggregate's current state.
    pub async fn load<A: Aggregate + Clone + 'static>(&self, id: &str) -> Result<A, StoreError> {
        Ok(self.state::<A>(id).await?.0)
    }

    /// The aggregate's state from this process's memory when it is there, without
    /// asking the store: current for this replica's own writes at once, for other
    /// replicas' within the follower's poll (src/store/follower.rs). For the hot
    /// reads that must not cost a query (a session at every token check).
    pub async fn load_current<A: Aggregate + Clone + 'static>(&self, id: &str) -> Result<A, StoreError> {
        match self.cache.get::<A>(id).filter(|_| self.fresh.is_fresh()) {
            Some((aggregate, _)) => Ok(aggregate),
            None => self.load(id).await,
        }
    }

    /// Runs a command against the aggregate `id` and returns the events it committed.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &RequestContext,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate + domain::Subject + Clone + 'static,
        A::Command: Clone,
    {
        Ok(self.execute_for_state::<A>(id, command, services, metadata).await?.0)
    }

    /// [`Store::execute`], also returning the aggregate's state after the command.
    pub async fn execute_for_state<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &RequestContext,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + domain::Subject + Clone + 'static,
        A::Command: Clone,
    {
        Ok(unit::transact!(self, &[(A::TYPE, id)], metadata, |unit| unit.decide::<A>(id, command.clone(), services).await?))
    }

    /// Whether the data upgrade `name` ran to its end on this store.
    pub async fn upgrade_done(&self, name: &str) -> Result<bool, StoreError> {
        let sql = "SELECT count(*) FROM upgrades WHERE name = $1";
        let count: i64 = projections::with_pool!(&self.db, pool => sqlx::query_scalar(sql).bind(name).fetch_one(pool).await)
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(count > 0)
    }

    /// Records that the data upgrade `name` ran to its end, having changed `changed`
    /// things (a replica that finished it at the same time recorded it already).
    pub async fn record_upgrade(&self, name: &str, changed: u64) -> Result<(), StoreError> {
        let sql = "INSERT INTO upgrades (name, changed, completed_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
        let (changed, at) = (i64::try_from(changed).unwrap_or(i64::MAX), chrono::Utc::now().to_rfc3339());
        projections::with_pool!(&self.db, pool => sqlx::query(sql).bind(name).bind(changed).bind(&at).execute(pool).await.map(drop))
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(())
    }

    /// Destroys the account's personal-data key (see src/store/shred.rs).
    pub async fn shred(&self, subject: &str) -> Result<(), StoreError> {
        shred::destroy(&self.db, subject).await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
        snapshot::forget(&self.db, subject).await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
        self.memory.forget_subject(subject);
        self.cache.forget(subject);
        Ok(())
    }

    /// True when the store answers a trivial query.
    pub async fn ready(&self) -> bool {
        projections::with_pool!(&self.db, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }
}
