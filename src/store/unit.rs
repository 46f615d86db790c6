//! A unit of work: commands on one or more aggregates, decided in turn and committed
//! in one transaction — all of their events or none. A sign-in step is one unit:
//! KE1 counts the attempt on the throttle and starts the sign-in; KE3 finishes the
//! sign-in, clears the address's failures and opens the session.
//!
//! The aggregates a unit changes are taken in this process first (their stripes,
//! in one fixed order, so two units never wait on each other), so concurrent
//! requests queue here instead of losing optimistic-concurrency races. Another
//! replica's commit in between makes [`Unit::commit`] answer `false`: the caller
//! decides again, this time on the store's state, after a jittered back-off.
//!
//! [`transact!`] is the one retry loop: a use case hands it the body that decides on
//! the unit, and it commits, or decides again after a conflict.
//!
//! ```ignore
//! let events = transact!(store, &[(Throttle::TYPE, &throttle_id)], meta, |unit| {
//!     let (events, _) = unit.decide::<Throttle>(&throttle_id, command.clone(), &()).await?;
//!     unit.decide_new::<SignIn>(&sign_in_id, start.clone(), &verifier).await?;
//!     events
//! });
//! ```

use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, EventEnvelope};
use domain::Subject;
use tokio::sync::MutexGuard;

use super::cache::Cache;
use super::{append, snapshot, CommandError, Metadata, RequestContext, Store, StoreError};

/// How often a unit is decided again when another writer (another replica: this
/// one serialises its own) committed to one of its aggregates first.
const MAX_ATTEMPTS: u32 = 12;
/// Locks that serialise this process's commands per aggregate (by hash).
pub(super) const STRIPES: usize = 1024;
/// How long a unit waits for its aggregates' turn in this process.
const TURN_WAIT: Duration = Duration::from_secs(5);

/// Serialises units on one aggregate within this process. Striped: bounded memory,
/// and two aggregates rarely share a lock.
pub(super) struct Stripes(Vec<tokio::sync::Mutex<()>>);

impl Stripes {
    pub fn new() -> Self {
        Self((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    /// The turn of every aggregate named, taken in stripe order (no two units wait on
    /// each other); waiting longer than [`TURN_WAIT`] (a flood on one aggregate)
    /// gives up rather than queue without bound.
    async fn lock(&self, aggregates: &[(&str, &str)]) -> Result<Vec<MutexGuard<'_, ()>>, StoreError> {
        use std::hash::{Hash, Hasher};
        let mut stripes: Vec<usize> = aggregates
            .iter()
            .map(|aggregate| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                aggregate.hash(&mut hasher);
                (hasher.finish() % STRIPES as u64) as usize
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let turns = async {
            let mut turns = Vec::with_capacity(stripes.len());
            for stripe in stripes {
                turns.push(self.0[stripe].lock().await);
            }
            turns
        };
        tokio::time::timeout(TURN_WAIT, turns).await.map_err(|_| StoreError::Contended)
    }
}

/// A conflict with another replica: wait a random while, longer each time.
async fn back_off(attempt: u32) {
    use rand::Rng;
    let ceiling = 2u64.pow(attempt.min(6));
    let wait = rand::thread_rng().gen_range(1..=ceiling);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// One aggregate's decided events, and how to remember its state once committed.
struct Decided {
    aggregate_type: &'static str,
    /// The account the events concern (`domain::Subject`): their personal data is
    /// encrypted under its key.
    subject: Option<String>,
    events: Vec<SerializedEvent>,
    remember: Box<dyn FnOnce(&Cache) + Send + Sync>,
    /// The state after the events, when it is due for a snapshot (src/store/snapshot.rs).
    snapshot: Option<(usize, serde_json::Value)>,
}

/// Commands decided and not yet committed; see the module's documentation.
pub struct Unit<'s> {
    store: &'s Store,
    _turns: Vec<MutexGuard<'s, ()>>,
    context: RequestContext,
    /// `context` as its events store it.
    metadata: Metadata,
    /// 0 until a commit conflicts: the first decisions are taken on this process's
    /// memory, later ones on the store's state.
    attempt: u32,
    decided: Vec<Decided>,
    /// Aggregates read and not changed, at the sequence read: the commit requires them
    /// still there.
    unchanged: Vec<(&'static str, String, i64)>,
}

impl Store {
    /// A unit of work on the aggregates `locked` names (not those with ids just drawn
    /// at random, which nobody else can name), its events recorded with `metadata`.
    pub async fn unit<'s>(&'s self, locked: &[(&str, &str)], context: &RequestContext) -> Result<Unit<'s>, StoreError> {
        let turns = self.stripes.lock(locked).await?;
        Ok(Unit { store: self, _turns: turns, context: context.clone(), metadata: context.metadata(), attempt: 0, decided: Vec::new(), unchanged: Vec::new() })
    }
}

/// The write path's one retry loop: `transact!(store, locked, metadata, |unit| body)`
/// opens a unit on the aggregates `locked` names, evaluates `body` with `unit` (a
/// `&mut Unit`) and commits; when another replica committed to one of them first, it
/// evaluates `body` again (on the store's state). It answers what `body` evaluated to.
/// Leaving `body` early (`?`, `return`) commits nothing; a refusal that must be
/// recorded (a counted wrong password) is a value `body` evaluates to.
///
/// A macro rather than a method taking a closure: the body borrows the request's
/// values, and a future of an async closure over them is not `Send` for the
/// compiler, which poem's handlers need.
macro_rules! transact {
    ($store:expr, $locked:expr, $metadata:expr, |$unit:ident| $body:expr) => {{
        let mut unit = $store.unit($locked, $metadata).await?;
        loop {
            let $unit = &mut unit;
            let outcome = $body;
            if unit.commit().await? {
                break outcome;
            }
        }
    }};
}
pub(crate) use transact;

impl Unit<'_> {
    /// Who the unit's command came from.
    pub fn context(&self) -> &RequestContext {
        &self.context
    }

    /// The state of an aggregate the unit depends on without changing it (a sign-in's
    /// account): from this process's memory on the first attempt, from the store after
    /// a conflict. The unit commits only if the aggregate has gained no event since —
    /// checked by the commit's one statement, so it costs no query of its own.
    pub async fn read<A: Aggregate + Clone + 'static>(&mut self, id: &str) -> Result<A, StoreError> {
        let remembered = if self.attempt == 0 { self.store.cache.get::<A>(id) } else { None };
        let (aggregate, sequence) = match remembered {
            Some(state) => state,
            None => self.store.state::<A>(id).await?,
        };
        let sequence = i64::try_from(sequence).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.unchanged.push((A::TYPE, id.to_string(), sequence));
        Ok(aggregate)
    }

    /// Decides `command` on the aggregate `id` (one of those the unit was opened on),
    /// returning its events and the state after them. Each aggregate once per attempt.
    pub async fn decide<A>(
        &mut self,
        id: &str,
        command: A::Command,
        services: &A::Services,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + Subject + Clone + 'static,
        A::Command: Clone,
    {
        // This process's own last write is usually the aggregate's last one.
        let cached = if self.attempt == 0 { self.store.cache.get::<A>(id) } else { None };
        self.decide_on(id, command, services, cached).await
    }

    /// [`Unit::decide`] for an aggregate whose id was just drawn at random (a sign-in,
    /// a session): it is decided as new without asking the store; were the id taken,
    /// the commit would conflict and the unit be decided again.
    pub async fn decide_new<A>(
        &mut self,
        id: &str,
        command: A::Command,
        services: &A::Services,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + Subject + Clone + 'static,
        A::Command: Clone,
    {
        let assumed = (self.attempt == 0).then(|| (A::default(), 0));
        self.decide_on(id, command, services, assumed).await
    }

    /// Decides on `unverified` state when given — a refusal or a no-op there is
    /// decided again on the store's state — and keeps the events for the commit.
    async fn decide_on<A>(
        &mut self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        unverified: Option<(A, usize)>,
    ) -> Result<(Vec<A::Event>, A), CommandError<A::Error>>
    where
        A: Aggregate + Subject + Clone + 'static,
        A::Command: Clone,
    {
        let mut unverified = unverified;
        loop {
            let trusted = unverified.is_none();
            let (mut aggregate, sequence) = match unverified.take() {
                Some(state) => state,
                None => self.store.state::<A>(id).await?,
            };
            let sink = EventSink::default();
            // `handle` applies what it decides: `aggregate` is the state after it.
            let decided = aggregate.handle(command.clone(), services, &sink).await;
            let events = sink.collect().await;
            match decided {
                Err(_) | Ok(()) if !trusted && events.is_empty() => continue,
                Err(rejection) => return Err(CommandError::Rejected(rejection)),
                Ok(()) => {}
            }
            if !events.is_empty() {
                self.keep(id, sequence, &events, aggregate.clone())?;
            }
            return Ok((events, aggregate));
        }
    }

    /// Drops what this attempt decided on every aggregate but `id` of type `A` (a
    /// refused answer spends its challenge and changes nothing else).
    pub fn keep_only<A: Aggregate>(&mut self, id: &str) {
        self.decided.retain(|d| d.aggregate_type == A::TYPE && d.events.first().is_some_and(|e| e.aggregate_id == id));
    }

    /// Drops what this attempt decided on the aggregate `id` of type `A` (an outcome
    /// decided later overrides it: a blocked proof spends no code).
    pub fn undo<A: Aggregate>(&mut self, id: &str) {
        self.decided.retain(|d| !(d.aggregate_type == A::TYPE && d.events.first().is_some_and(|e| e.aggregate_id == id)));
    }

    fn keep<A: Aggregate + Subject + Clone + 'static>(
        &mut self,
        id: &str,
        sequence: usize,
        events: &[A::Event],
        after: A,
    ) -> Result<(), StoreError> {
        let serialized = events
            .iter()
            .zip(sequence + 1..)
            .map(|(event, sequence)| {
                let envelope = EventEnvelope::<A> {
                    aggregate_id: id.to_string(),
                    sequence,
                    payload: event.clone(),
                    metadata: self.metadata.clone(),
                };
                SerializedEvent::try_from(&envelope)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let last = sequence + events.len();
        let snapshot = snapshot::due(A::TYPE, sequence, last)
            .then(|| serde_json::to_value(&after).ok().map(|state| (last, state)))
            .flatten();
        let subject = after.subject(id).map(|profile_id| profile_id.to_string());
        let id = id.to_string();
        self.decided.push(Decided {
            aggregate_type: A::TYPE,
            subject,
            events: serialized,
            remember: Box::new(move |cache| cache.put(&id, after, last)),
            snapshot,
        });
        Ok(())
    }

    /// Commits every event decided since the last attempt in one statement: `true`
    /// when they are stored (or there were none), `false` when another writer came
    /// first (or an aggregate [`Unit::read`] changed) and the unit must be decided again.
    pub async fn commit(&mut self) -> Result<bool, StoreError> {
        let decided = std::mem::take(&mut self.decided);
        let unchanged = std::mem::take(&mut self.unchanged);
        if decided.is_empty() {
            return Ok(true);
        }
        let batches: Vec<(&str, Option<&str>, &[SerializedEvent])> =
            decided.iter().map(|d| (d.aggregate_type, d.subject.as_deref(), d.events.as_slice())).collect();
        let unchanged: Vec<_> = unchanged
            .iter()
            .map(|(aggregate_type, aggregate_id, sequence)| append::Unchanged { aggregate_type, aggregate_id, sequence: *sequence })
            .collect();
        match append::persist(&self.store.db, &self.store.memory, &batches, &unchanged).await {
            Ok(()) => {
                for d in decided {
                    if let (Some((sequence, state)), Some(first)) = (&d.snapshot, d.events.first()) {
                        // Only an optimisation: a failure costs a longer load later.
                        if let Err(error) = snapshot::save(&self.store.db, d.aggregate_type, &first.aggregate_id, *sequence, state).await {
                            tracing::warn!(%error, "cannot keep a snapshot");
                        }
                    }
                    (d.remember)(&self.store.cache);
                }
                self.store.committed.send_replace(());
                Ok(true)
            }
            Err(PersistenceError::OptimisticLockError) => {
                self.attempt += 1;
                if self.attempt >= MAX_ATTEMPTS {
                    return Err(StoreError::Contended);
                }
                // The first conflict is usually this process's stale memory, not a race.
                if self.attempt > 1 {
                    back_off(self.attempt).await;
                }
                Ok(false)
            }
            Err(error) => Err(StoreError::Unavailable(error.to_string())),
        }
    }
}
