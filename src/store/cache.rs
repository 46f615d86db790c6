//! The aggregates this process has loaded, each at the sequence it was loaded at. A
//! command (or a load) then fetches only the events after that sequence — usually
//! none — so what a request reads does not grow with an aggregate's history: a
//! session refreshed ten thousand times loads like a fresh one. Another replica's
//! writes are found the same way (the tail after the cached sequence), and optimistic
//! concurrency still decides every commit. [`Cache`] is also the memory the token
//! checks answer from (`Store::load_current`); the follower (src/store/follower.rs)
//! evicts what other replicas changed.
//!
//! Bounded: past its capacity, a tenth of the entries is dropped (they reload from
//! the store when next needed).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_es::Aggregate;

type Key = (String, String);

/// An aggregate's state at `sequence`, or — `state: None` — only the knowledge
/// that it has reached `sequence` (another writer moved it): a miss for reads, and
/// a bar for a load that started earlier and would put back an older state.
struct Entry {
    sequence: usize,
    state: Option<Arc<dyn Any + Send + Sync>>,
}

pub(super) struct Cache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(16) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached state of `id` and its sequence.
    pub fn get<A: Aggregate + Clone + 'static>(&self, id: &str) -> Option<(A, usize)> {
        let entries = self.entries();
        let entry = entries.get(&(A::TYPE.to_string(), id.to_string()))?;
        let state = entry.state.as_ref()?.downcast_ref::<A>()?.clone();
        Some((state, entry.sequence))
    }

    /// Keeps `state` at `sequence`, unless a newer one is already kept.
    pub fn put<A: Aggregate + Clone + 'static>(&self, id: &str, state: A, sequence: usize) {
        let mut entries = self.entries();
        let key = (A::TYPE.to_string(), id.to_string());
        let newer = |entry: &Entry| entry.sequence > sequence || (entry.sequence == sequence && entry.state.is_some());
        if entries.get(&key).is_some_and(newer) {
            return;
        }
        self.make_room(&mut entries);
        entries.insert(key, Entry { sequence, state: Some(Arc::new(state)) });
    }

    /// Records that `id` reached `sequence`: a cached state older than that is
    /// dropped, and no older state can be put back (a load that read the store
    /// before this write and puts after it).
    pub fn stale(&self, aggregate_type: &str, id: &str, sequence: usize) {
        let mut entries = self.entries();
        let key = (aggregate_type.to_string(), id.to_string());
        if entries.get(&key).is_none_or(|entry| entry.sequence < sequence) {
            self.make_room(&mut entries);
            entries.insert(key, Entry { sequence, state: None });
        }
    }

    /// At capacity, drops a tenth of the entries (they reload when next needed).
    fn make_room(&self, entries: &mut HashMap<Key, Entry>) {
        if entries.len() >= self.capacity {
            let drop: Vec<Key> = entries.keys().take(self.capacity / 10 + 1).cloned().collect();
            for key in drop {
                entries.remove(&key);
            }
        }
    }

    /// Forgets every aggregate `id` names (removal: no personal data stays here).
    pub fn forget(&self, id: &str) {
        self.entries().retain(|(_, i), _| i != id);
    }
}
