//! The event store: PostgreSQL (postgres-es) or SQLite (sqlite-es), chosen by
//! `DATABASE_URL`, behind one repository type so everything above is written once.
//!
//! Commands run through [`Store::execute`]: the aggregate's state comes from this
//! process's memory (src/store/cache.rs) or its events, the aggregate decides, and
//! the events are committed with optimistic concurrency (retried on conflict,
//! bounded) through the write path (src/store/append.rs), which folds them into the
//! read models in the same transaction. A log follower (src/store/follower.rs)
//! keeps the memory current with other replicas' writes.

mod append;
mod cache;
mod follower;
pub mod chain;
pub mod log;
pub mod shred;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use postgres_es::PostgresEventRepository;
use projections::{Db, ReadModels};
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Notify;

use cache::Cache;
use log::Log;

/// How often a command is retried when another writer (another replica: this one
/// serialises its own, see [`Stripes`]) committed to the same aggregate first.
const MAX_ATTEMPTS: u32 = 12;
/// Locks that serialise this process's commands per aggregate (by hash).
const STRIPES: usize = 1024;
/// How long a command waits for its aggregate's turn in this process.
const TURN_WAIT: Duration = Duration::from_secs(5);
/// Aggregates kept in memory (src/store/cache.rs).
const CACHE_CAPACITY: usize = 10_000;

/// Context recorded with every event: request id, client address, user agent.
pub type Metadata = HashMap<String, String>;

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

/// Opens the store `url` names (creating a SQLite file if needed) and applies the
/// migrations of its backend.
pub async fn connect(url: &str) -> Result<Db, StoreError> {
    let connect_error = |source| StoreError::Connect { url: redact(url), source };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(32)
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
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
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

/// One repository type over both backends (the backends' repositories are not
/// `Clone`; they are cheap to rebuild from a pool), with what the write path
/// remembers between commits (src/store/append.rs).
#[derive(Clone)]
pub struct Repo {
    db: Db,
    memory: Arc<append::Memory>,
}

macro_rules! delegate {
    ($self:ident, $repo:ident => $call:expr) => {
        match &$self.db {
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

impl Repo {
    /// Aggregates see personal fields in clear (or erased), see src/store/shred.rs. Only
    /// payloads: `apply` never reads metadata, and leaving it sealed spares the key
    /// look-up on hot loads such as a session's at every token check.
    async fn reveal(&self, mut events: Vec<SerializedEvent>) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let ring = shred::KeyRing::load_remembering(&self.db, Some(&self.memory), events.iter().map(|event| &event.payload))
            .await
            .map_err(|error| PersistenceError::ConnectionError(Box::new(error)))?;
        events.iter_mut().for_each(|event| ring.reveal(&mut event.payload));
        Ok(events)
    }
}

impl PersistedEventRepository for Repo {
    async fn get_events<A: Aggregate>(&self, id: &str) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = delegate!(self, repo => repo.get_events::<A>(id))?;
        self.reveal(events).await
    }
    async fn get_last_events<A: Aggregate>(
        &self,
        id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = delegate!(self, repo => repo.get_last_events::<A>(id, last_sequence))?;
        self.reveal(events).await
    }
    async fn get_snapshot<A: Aggregate>(&self, id: &str) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        delegate!(self, repo => repo.get_snapshot::<A>(id))
    }
    // Tamper evidence: we write the INSERT ourselves (same columns as postgres-es /
    // sqlite-es, plus each event's hash link), see src/store/append.rs.
    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        append::persist(&self.db, &self.memory, A::TYPE, events, snapshot_update).await
    }
    // Not decrypted (src/store/shred.rs): authd does not use the replay streams; a caller
    // would see `enc:v1:` values.
    async fn stream_events<A: Aggregate>(&self, id: &str) -> Result<ReplayStream, PersistenceError> {
        delegate!(self, repo => repo.stream_events::<A>(id))
    }
    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        delegate!(self, repo => repo.stream_all_events::<A>())
    }
}

/// Serialises commands on one aggregate within this process, so concurrent requests
/// for a hot aggregate (one account signing in from many workers) queue here instead
/// of losing optimistic-concurrency races in the database. Striped: bounded memory,
/// and two aggregates rarely share a lock.
struct Stripes(Vec<tokio::sync::Mutex<()>>);

impl Stripes {
    fn new() -> Self {
        Self((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    /// The aggregate's turn; waiting longer than [`TURN_WAIT`] (a flood on one
    /// aggregate) gives up rather than queue without bound.
    async fn lock(&self, aggregate_type: &str, id: &str) -> Result<tokio::sync::MutexGuard<'_, ()>, StoreError> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (aggregate_type, id).hash(&mut hasher);
        let stripe = &self.0[(hasher.finish() % STRIPES as u64) as usize];
        tokio::time::timeout(TURN_WAIT, stripe.lock()).await.map_err(|_| StoreError::Contended)
    }
}

/// A conflict with another replica: wait a random while, longer each time.
async fn back_off(attempt: u32) {
    use rand::Rng;
    let ceiling = 2u64.pow(attempt.min(6));
    let wait = rand::thread_rng().gen_range(1..=ceiling);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// The event store plus the read models its commits feed.
#[derive(Clone)]
pub struct Store {
    db: Db,
    repo: Repo,
    read_models: ReadModels,
    log: Log,
    /// Signalled after every commit, so log consumers (the audit relay) need not
    /// wait for their next poll.
    committed: Arc<Notify>,
    stripes: Arc<Stripes>,
    cache: Arc<Cache>,
    /// When the log follower last caught up (src/store/follower.rs).
    fresh: Arc<follower::Freshness>,
}

fn unavailable<E: std::error::Error>(error: AggregateError<E>) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl Store {
    pub fn new(db: Db) -> Self {
        let repo = Repo { db: db.clone(), memory: Arc::new(append::Memory::default()) };
        let read_models = ReadModels::new(db.clone());
        let log = Log::new(db.clone());
        Self { db, repo, read_models, log, committed: Arc::new(Notify::new()), stripes: Arc::new(Stripes::new()), cache: Arc::new(Cache::new(CACHE_CAPACITY)), fresh: Arc::default() }
    }

    pub fn read_models(&self) -> &ReadModels {
        &self.read_models
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

    /// Notified after each commit of this process.
    pub fn commits(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Folds whatever the read models have not seen, from their checkpoint on.
    pub async fn catch_up(&self) -> Result<u64, projections::Error> {
        self.read_models.catch_up(&self.log).await
    }

    fn events<A: Aggregate>(&self) -> PersistedEventStore<Repo, A> {
        // The plain event store: the snapshot and aggregate stores apply each new
        // event twice (cqrs-es 0.5: `new_snapshot_store` and `new_aggregate_store`).
        PersistedEventStore::new_event_store(self.repo.clone())
    }

    /// The aggregate as of its last event: the cached state (src/store/cache.rs)
    /// plus the events committed after it, usually none.
    async fn context<A: Aggregate + Clone + 'static>(&self, id: &str) -> Result<EventStoreAggregateContext<A>, StoreError> {
        let (mut aggregate, mut sequence) = self.cache.get::<A>(id).unwrap_or_default();
        let tail = self.repo.get_last_events::<A>(id, sequence).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let grew = !tail.is_empty();
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
        Ok(EventStoreAggregateContext { aggregate_id: id.to_string(), aggregate, current_sequence: sequence, current_snapshot: None })
    }

    /// The aggregate's current state.
    pub async fn load<A: Aggregate + Clone + 'static>(&self, id: &str) -> Result<A, StoreError> {
        Ok(self.context::<A>(id).await?.aggregate)
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
        metadata: &Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        Ok(self.execute_for_state::<A>(id, command, services, metadata).await?.0)
    }

    /// [`Store::execute`] for an aggregate whose id was just drawn at random (a
    /// sign-in, a session): it is decided as new without asking the store; were the
    /// id taken, the commit would conflict and the command be decided again.
    pub async fn execute_new<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        let assumed = Some((A::default(), 0));
        Ok(self.decide_and_commit::<A>(id, command, services, metadata, assumed).await?.0)
    }

    /// [`Store::execute`], also returning the aggregate's state after the command.
    pub async fn execute_for_state<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        // This process's own last write is usually the aggregate's last one: the first
        // decision is taken on the cached state without asking the store.
        let cached = self.cache.get::<A>(id);
        self.decide_and_commit::<A>(id, command, services, metadata, cached).await
    }

    /// Decides `command` — first on `unverified` state when given, which a commit
    /// conflict, a refusal or a no-op sends back to be decided again on the store's
    /// tail — and commits what it decided.
    async fn decide_and_commit<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
        mut unverified: Option<(A, usize)>,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        let store = self.events::<A>();
        let _turn = self.stripes.lock(A::TYPE, id).await?;
        for attempt in 0..MAX_ATTEMPTS {
            let trusted = unverified.is_none();
            let mut context = match unverified.take() {
                Some((aggregate, sequence)) => EventStoreAggregateContext {
                    aggregate_id: id.to_string(),
                    aggregate,
                    current_sequence: sequence,
                    current_snapshot: None,
                },
                None => self.context::<A>(id).await?,
            };
            let sink = EventSink::default();
            // `handle` applies what it decides: the context holds the state after it.
            let decided = context.aggregate().handle(command.clone(), services, &sink).await;
            let events = sink.collect().await;
            match decided {
                Err(_) | Ok(()) if !trusted && events.is_empty() => continue,
                Err(rejection) => return Err(CommandError::Rejected(rejection)),
                Ok(()) if events.is_empty() => return Ok((events, context.aggregate)),
                Ok(()) => {}
            }
            let after = context.aggregate.clone();
            let sequence = context.current_sequence + events.len();
            match store.commit(events, context, metadata.clone()).await {
                Ok(committed) => {
                    self.cache.put(id, after.clone(), sequence);
                    self.committed.notify_one();
                    return Ok((committed.into_iter().map(|envelope| envelope.payload).collect(), after));
                }
                Err(AggregateError::AggregateConflict) if trusted => back_off(attempt).await,
                Err(AggregateError::AggregateConflict) => {}
                Err(error) => return Err(unavailable(error).into()),
            }
        }
        Err(StoreError::Contended.into())
    }

    /// Destroys the account's personal-data key (see src/store/shred.rs).
    pub async fn shred(&self, subject: &str) -> Result<(), StoreError> {
        shred::destroy(&self.db, subject).await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
        self.repo.memory.forget_subject(subject);
        self.cache.forget(subject);
        Ok(())
    }

    /// True when the store answers a trivial query.
    pub async fn ready(&self) -> bool {
        projections::with_pool!(&self.db, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }
}
