//! Tamper evidence for the event log.
//!
//! **Hash chain.** Every event carries `prev_hash` and `hash` (hex), where
//! `hash = SHA-256("authd/event-chain/v1" ‖ lp(aggregate_type) ‖ lp(aggregate_id) ‖
//! lp(sequence) ‖ lp(event_type) ‖ lp(event_version) ‖ lp(canonical payload) ‖
//! lp(canonical metadata) ‖ prev_hash)`, `lp(x)` being x's length (u64, big-endian)
//! then x, `canonical` JSON with object keys sorted and no whitespace (so it does
//! not depend on how a store keeps JSON), and `prev_hash` the previous event's hash
//! in the same aggregate (32 zero bytes before the first). The write path
//! (src/store/append.rs) stores both in the transaction that appends the events. The chain is a function of the events'
//! content alone, so it can always be recomputed: the stored hashes let `verify`
//! name the event that no longer matches them.
//!
//! **Seals.** SHA-256 needs no key, so whoever can write the database can rewrite a
//! stream and its hashes, or drop its tail. A seal closes that: an HMAC, under a key
//! derived from the OPAQUE server setup, over a digest of every aggregate's head
//! (type, id, last sequence, hash). The heads the latest seal covers are kept in
//! `chain_heads` (the digest is over exactly those rows). The server seals every
//! `AUTHD_SEAL_INTERVAL` seconds when the log grew, and only when the log still
//! extends the previous seal (no sealed head lost or changed): a log that was cut
//! or rewritten is never sealed over, and the server logs an error instead.

use std::collections::BTreeMap;

use projections::{with_conn, Conn, Db};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::log::{self, Backend, Event, LogError};

/// The key seals are authenticated with (HMAC-SHA-256), derived from the server's
/// secret outside the database (src/crypto/keys.rs hands it over at start-up).
pub struct SealKey([u8; 32]);

impl SealKey {
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Names the key without revealing it, so `verify` can tell "sealed with another
    /// server setup" from "seal altered".
    pub fn key_id(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.mac(b"key-id"))[..12].to_string()
    }
}

/// The `prev_hash` of an aggregate's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of an event its hash covers.
pub struct Linked<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

impl<'a> From<&'a Event> for Linked<'a> {
    fn from(event: &'a Event) -> Self {
        Linked {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
        }
    }
}

fn length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// The hash of `event` chained to `prev`.
pub fn event_hash(event: &Linked<'_>, prev: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"authd/event-chain/v1");
    length_prefixed(&mut hasher, event.aggregate_type.as_bytes());
    length_prefixed(&mut hasher, event.aggregate_id.as_bytes());
    length_prefixed(&mut hasher, event.sequence.to_string().as_bytes());
    length_prefixed(&mut hasher, event.event_type.as_bytes());
    length_prefixed(&mut hasher, event.event_version.as_bytes());
    length_prefixed(&mut hasher, canonical_json(event.payload).as_bytes());
    length_prefixed(&mut hasher, canonical_json(event.metadata).as_bytes());
    hasher.update(prev);
    hasher.finalize().into()
}

/// JSON with object keys in byte order and no whitespace: the same text whether the
/// store kept the document verbatim (SQLite text) or normalised it (PostgreSQL).
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(item, out);
                }
                out.push('}');
            }
            // Scalars: serde_json's compact form.
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(out)
}

/// Recomputes one aggregate's chain head, up to and including `upto`, from the
/// events' content (for events written before the chain existed, whose hash is
/// empty).
async fn recompute_head(
    conn: &mut Conn<'_>,
    backend: Backend,
    aggregate_type: &str,
    aggregate_id: &str,
    upto: i64,
) -> Result<[u8; 32], LogError> {
    let sql = format!(
        "SELECT {} FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence <= $3 ORDER BY e.sequence",
        log::columns(backend)
    );
    let events = with_conn!(conn, c => {
        let rows = sqlx::query(&sql).bind(aggregate_type).bind(aggregate_id).bind(upto).fetch_all(&mut **c).await?;
        rows.iter().map(Event::from_row).collect::<Result<Vec<_>, _>>()?
    });
    let mut head = GENESIS;
    for event in &events {
        head = event_hash(&Linked::from(event), &head);
    }
    Ok(head)
}

/// The stored hash of event `sequence`, recomputed when it is missing or malformed.
/// `None` when there is no such event.
pub(super) async fn hash_at(
    conn: &mut Conn<'_>,
    backend: Backend,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> Result<Option<[u8; 32]>, LogError> {
    let sql = "SELECT hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";
    let stored: Option<Option<String>> = with_conn!(conn, c => {
        sqlx::query_scalar(sql).bind(aggregate_type).bind(aggregate_id).bind(sequence).fetch_optional(&mut **c).await?
    });
    match stored {
        None => Ok(None),
        Some(Some(hash)) if unhex(&hash).is_some() => Ok(unhex(&hash)),
        Some(_) => Ok(Some(recompute_head(conn, backend, aggregate_type, aggregate_id, sequence).await?)),
    }
}

// ---------------------------------------------------------------------------------
// Seals.

/// Heads written, or read back, per statement when sealing.
const SEAL_CHUNK: usize = 1000;

/// (aggregate type, aggregate id) → (last sequence, hash), in byte order.
pub type Heads = BTreeMap<(String, String), (i64, [u8; 32])>;

/// The digest a seal authenticates: the digest of every head's [`HeadsState`].
pub fn heads_digest(heads: &Heads) -> [u8; 32] {
    HeadsState::of(heads).digest()
}

/// A multiset hash of the heads (LtHash16: each head expands to 1,024 16-bit lanes,
/// and the heads' lanes are added modulo 2^16), so a seal moves its digest by
/// subtracting the old heads of the streams that moved and adding their new ones —
/// its cost follows what moved since the last seal, not the size of the log. A seal
/// stores the state beside its MAC'd digest (the SHA-256 of the state), so the state
/// is as authentic as the digest.
#[derive(Clone, PartialEq, Eq)]
pub struct HeadsState(Box<[u16; LANES]>);

const LANES: usize = 1024;

impl std::fmt::Debug for HeadsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadsState({})", hex(&self.digest()))
    }
}

impl HeadsState {
    pub fn empty() -> Self {
        Self(Box::new([0; LANES]))
    }

    /// The state of exactly these heads.
    pub fn of(heads: &Heads) -> Self {
        let mut state = Self::empty();
        for ((aggregate_type, aggregate_id), (sequence, hash)) in heads {
            state.add(aggregate_type, aggregate_id, *sequence, hash);
        }
        state
    }

    /// A head's lanes: ChaCha20's keystream under the SHA-256 of the head.
    fn lanes(aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: &[u8; 32]) -> [u16; LANES] {
        use chacha20::cipher::{KeyIvInit, StreamCipher};
        let mut hasher = Sha256::new();
        hasher.update(b"authd/chain-heads/v2");
        length_prefixed(&mut hasher, aggregate_type.as_bytes());
        length_prefixed(&mut hasher, aggregate_id.as_bytes());
        hasher.update(sequence.to_be_bytes());
        hasher.update(hash);
        let key: [u8; 32] = hasher.finalize().into();
        let mut bytes = [0u8; LANES * 2];
        chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into()).apply_keystream(&mut bytes);
        std::array::from_fn(|n| u16::from_le_bytes([bytes[2 * n], bytes[2 * n + 1]]))
    }

    pub fn add(&mut self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: &[u8; 32]) {
        let lanes = Self::lanes(aggregate_type, aggregate_id, sequence, hash);
        self.0.iter_mut().zip(lanes).for_each(|(lane, x)| *lane = lane.wrapping_add(x));
    }

    pub fn remove(&mut self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: &[u8; 32]) {
        let lanes = Self::lanes(aggregate_type, aggregate_id, sequence, hash);
        self.0.iter_mut().zip(lanes).for_each(|(lane, x)| *lane = lane.wrapping_sub(x));
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|lane| lane.to_le_bytes()).collect()
    }

    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"authd/chain-heads-digest/v2");
        hasher.update(self.bytes());
        hasher.finalize().into()
    }

    /// As stored in `chain_seals.heads_state`: base64url of the lanes, little-endian.
    pub fn to_text(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.bytes())
    }

    pub fn from_text(text: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        (bytes.len() == LANES * 2).then(|| Self(Box::new(std::array::from_fn(|n| u16::from_le_bytes([bytes[2 * n], bytes[2 * n + 1]])))))
    }
}

/// The digest of seals taken before [`HeadsState`] (no `heads_state`): SHA-256 over
/// every head in byte order of (type, id). Still read, to check those seals.
fn legacy_heads_digest(heads: &Heads) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"authd/chain-heads/v1");
    for ((aggregate_type, aggregate_id), (sequence, hash)) in heads {
        length_prefixed(&mut hasher, aggregate_type.as_bytes());
        length_prefixed(&mut hasher, aggregate_id.as_bytes());
        hasher.update(sequence.to_be_bytes());
        hasher.update(hash);
    }
    hasher.finalize().into()
}

/// One row of `chain_seals`.
#[derive(Debug, Clone)]
pub struct Seal {
    pub id: i64,
    pub sealed_at: String,
    pub streams: i64,
    pub events: i64,
    pub digest: String,
    pub key_id: String,
    pub mac: String,
    /// How far in the global order the sealer looked (`None`: seals from before).
    /// Not covered by the MAC: it only tells the next seal where to start, and a
    /// full check every few seals (and `authd replay verify`) looks at every stream.
    pub through: Option<i64>,
    /// The [`HeadsState`] whose digest is `digest` (`None`: a seal from before,
    /// whose digest is the legacy one).
    pub heads_state: Option<String>,
}

impl Seal {
    fn message(v2: bool, sealed_at: &str, streams: i64, events: i64, digest: &str) -> Vec<u8> {
        let mut message = if v2 { b"authd/chain-seal/v2".to_vec() } else { b"authd/chain-seal/v1".to_vec() };
        for part in [sealed_at.as_bytes(), &streams.to_be_bytes(), &events.to_be_bytes(), digest.as_bytes()] {
            message.extend_from_slice(&(part.len() as u64).to_be_bytes());
            message.extend_from_slice(part);
        }
        message
    }

    /// Whether the seal's MAC verifies under `keys`.
    pub fn authentic(&self, keys: &SealKey) -> bool {
        let message = Self::message(self.heads_state.is_some(), &self.sealed_at, self.streams, self.events, &self.digest);
        let expected = hex(&keys.mac(&message));
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), self.mac.as_bytes()).into()
    }

    /// Whether the seal's digest is the digest of exactly `heads`.
    pub fn covers(&self, heads: &Heads) -> bool {
        let digest = if self.heads_state.is_some() { heads_digest(heads) } else { legacy_heads_digest(heads) };
        hex(&digest) == self.digest
    }

    /// The stored state, when it is the one the (MAC'd) digest names.
    fn state(&self) -> Option<HeadsState> {
        HeadsState::from_text(self.heads_state.as_deref()?).filter(|state| hex(&state.digest()) == self.digest)
    }
}

/// The latest seal, if any.
pub async fn latest_seal(conn: &mut Conn<'_>) -> Result<Option<Seal>, sqlx::Error> {
    let sql = "SELECT id, sealed_at, streams, events, digest, key_id, mac, through_position, heads_state
               FROM chain_seals ORDER BY id DESC LIMIT 1";
    with_conn!(conn, c => {
        match sqlx::query(sql).fetch_optional(&mut **c).await? {
            None => Ok(None),
            Some(row) => Ok(Some(Seal {
                id: row.try_get(0)?,
                sealed_at: row.try_get(1)?,
                streams: row.try_get(2)?,
                events: row.try_get(3)?,
                digest: row.try_get(4)?,
                key_id: row.try_get(5)?,
                mac: row.try_get(6)?,
                through: row.try_get(7)?,
                heads_state: row.try_get(8)?,
            })),
        }
    })
}

/// The heads the latest seal covers (`chain_heads`). A malformed hash reads as zeros
/// (and so no longer matches the seal's digest).
pub async fn sealed_heads(conn: &mut Conn<'_>) -> Result<Heads, sqlx::Error> {
    let sql = "SELECT aggregate_type, aggregate_id, sequence, hash FROM chain_heads";
    let rows: Vec<(String, String, i64, String)> = with_conn!(conn, c => {
        sqlx::query_as(sql).fetch_all(&mut **c).await?
    });
    Ok(rows
        .into_iter()
        .map(|(aggregate_type, aggregate_id, sequence, hash)| {
            ((aggregate_type, aggregate_id), (sequence, unhex(&hash).unwrap_or_default()))
        })
        .collect())
}

/// Every aggregate's current head in the log.
async fn current_heads(conn: &mut Conn<'_>, backend: Backend) -> Result<Heads, LogError> {
    let sql = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash FROM events e
               JOIN (SELECT aggregate_type, aggregate_id, MAX(sequence) AS last FROM events
                     GROUP BY aggregate_type, aggregate_id) h
                 ON h.aggregate_type = e.aggregate_type AND h.aggregate_id = e.aggregate_id AND h.last = e.sequence";
    let rows: Vec<(String, String, i64, Option<String>)> = with_conn!(conn, c => {
        sqlx::query_as(sql).fetch_all(&mut **c).await?
    });
    let mut heads = Heads::new();
    for (aggregate_type, aggregate_id, sequence, hash) in rows {
        let hash = match hash.as_deref().and_then(unhex) {
            Some(hash) => hash,
            None => recompute_head(conn, backend, &aggregate_type, &aggregate_id, sequence).await?,
        };
        heads.insert((aggregate_type, aggregate_id), (sequence, hash));
    }
    Ok(heads)
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("refusing to seal: the log no longer extends the latest seal: {}", .0.join("; "))]
    Refused(Vec<String>),
}

impl From<sqlx::Error> for SealError {
    fn from(error: sqlx::Error) -> Self {
        SealError::Log(LogError::Store(error))
    }
}

#[derive(Debug)]
pub enum SealOutcome {
    Sealed(Seal),
    /// The heads are the ones the latest seal covers.
    Unchanged,
    /// The log is empty.
    Empty,
}

/// Seals the current heads, if they changed since the latest seal and extend it.
/// `accept_current` seals whatever the log holds now (after an investigation, to
/// start a new baseline); `full_check` checks every stream, not only those that
/// moved since the latest seal.
pub async fn seal(db: &Db, keys: &SealKey, accept_current: bool, full_check: bool) -> Result<SealOutcome, SealError> {
    let backend = Backend::of(db);
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // One sealer at a time across replicas; plain reads go on.
            sqlx::query("LOCK TABLE chain_heads IN EXCLUSIVE MODE").execute(&mut *tx).await?;
            let outcome = seal_on(&mut Conn::Postgres(&mut tx), backend, keys, accept_current, full_check).await?;
            tx.commit().await?;
            Ok(outcome)
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let outcome = seal_on(&mut Conn::Sqlite(&mut tx), backend, keys, accept_current, full_check).await?;
            tx.commit().await?;
            Ok(outcome)
        }
    }
}

/// Seals what moved since the latest seal (the streams numbered after its
/// `through_position`), checking that those streams extend what it sealed, in time
/// and reads that follow what moved, not the size of the log. A full check — and any
/// seal after one from before [`HeadsState`], or when nothing new was numbered —
/// checks every stream instead (`seal_everything`).
async fn seal_on(
    conn: &mut Conn<'_>,
    backend: Backend,
    keys: &SealKey,
    accept_current: bool,
    full_check: bool,
) -> Result<SealOutcome, SealError> {
    let through = numbered_through(conn).await?;
    if !accept_current && !full_check {
        let latest = latest_seal(conn).await?;
        if let Some((seal, after)) = latest.as_ref().and_then(|seal| Some((seal, seal.through?))) {
            if through > after && seal.heads_state.is_some() {
                return seal_moved(conn, backend, keys, seal, after, through).await;
            }
        }
    }
    seal_everything(conn, backend, keys, accept_current, through).await
}

/// The last global position numbered (0 when none).
async fn numbered_through(conn: &mut Conn<'_>) -> Result<i64, sqlx::Error> {
    with_conn!(conn, c => {
        sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM event_positions").fetch_one(&mut **c).await
    })
}

/// The incremental seal: the heads of the streams numbered in (`after`, `through`].
async fn seal_moved(
    conn: &mut Conn<'_>,
    backend: Backend,
    keys: &SealKey,
    latest: &Seal,
    after: i64,
    through: i64,
) -> Result<SealOutcome, SealError> {
    let mut problems = Vec::new();
    if !latest.authentic(keys) {
        problems.push(format!("seal #{} does not verify with this server's key", latest.id));
    }
    let sql = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash FROM events e
               JOIN (SELECT aggregate_type, aggregate_id, MAX(sequence) AS last FROM event_positions
                     WHERE global_position > $1 AND global_position <= $2
                     GROUP BY aggregate_type, aggregate_id) m
                 ON m.aggregate_type = e.aggregate_type AND m.aggregate_id = e.aggregate_id AND m.last = e.sequence";
    let rows: Vec<(String, String, i64, Option<String>)> = with_conn!(conn, c => {
        sqlx::query_as(sql).bind(after).bind(through).fetch_all(&mut **c).await?
    });
    let mut moved = Heads::new();
    for (aggregate_type, aggregate_id, sequence, hash) in rows {
        let hash = match hash.as_deref().and_then(unhex) {
            Some(hash) => hash,
            None => recompute_head(conn, backend, &aggregate_type, &aggregate_id, sequence).await?,
        };
        moved.insert((aggregate_type, aggregate_id), (sequence, hash));
    }
    let sealed = sealed_heads_of(conn, backend, moved.keys()).await?;
    problems.extend(extension_problems_of(conn, backend, &sealed, &moved).await?);
    let Some(mut state) = latest.state() else {
        problems.push(format!("chain_seals: the heads state of seal #{} no longer matches its digest", latest.id));
        return Err(SealError::Refused(problems));
    };
    if !problems.is_empty() {
        return Err(SealError::Refused(problems));
    }
    let changed: Heads = moved.into_iter().filter(|(stream, head)| sealed.get(stream) != Some(head)).collect();
    if changed.is_empty() {
        return Ok(SealOutcome::Unchanged);
    }
    let (mut streams, mut events) = (latest.streams, latest.events);
    for ((aggregate_type, aggregate_id), (sequence, hash)) in &changed {
        match sealed.get(&(aggregate_type.clone(), aggregate_id.clone())) {
            Some((old_sequence, old_hash)) => {
                state.remove(aggregate_type, aggregate_id, *old_sequence, old_hash);
                events -= old_sequence;
            }
            None => streams += 1,
        }
        state.add(aggregate_type, aggregate_id, *sequence, hash);
        events += sequence;
    }
    write_heads(conn, &changed.iter().collect::<Vec<_>>()).await?;
    Ok(SealOutcome::Sealed(insert_seal(conn, keys, streams, events, &state, through).await?))
}

/// The rows of `chain_heads` for these streams.
async fn sealed_heads_of<'a>(
    conn: &mut Conn<'_>,
    backend: Backend,
    streams: impl Iterator<Item = &'a (String, String)>,
) -> Result<Heads, sqlx::Error> {
    let streams: Vec<_> = streams.collect();
    let mut heads = Heads::new();
    for chunk in streams.chunks(SEAL_CHUNK) {
        let sql = match backend {
            // Arrays, not a list of a thousand pairs the planner would weigh one by one.
            Backend::Postgres => "SELECT h.aggregate_type, h.aggregate_id, h.sequence, h.hash
                 FROM chain_heads h JOIN unnest($1::text[], $2::text[]) AS k (t, i)
                   ON h.aggregate_type = k.t AND h.aggregate_id = k.i"
                .to_string(),
            Backend::Sqlite => {
                let keys = (0..chunk.len()).map(|n| format!("(${}, ${})", n * 2 + 1, n * 2 + 2)).collect::<Vec<_>>().join(", ");
                format!("SELECT aggregate_type, aggregate_id, sequence, hash FROM chain_heads WHERE (aggregate_type, aggregate_id) IN ({keys})")
            }
        };
        let rows: Vec<(String, String, i64, String)> = match conn {
            Conn::Postgres(c) => {
                let (types, ids): (Vec<&str>, Vec<&str>) = chunk.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
                sqlx::query_as(&sql).bind(types).bind(ids).fetch_all(&mut **c).await?
            }
            Conn::Sqlite(c) => {
                let mut query = sqlx::query_as(&sql);
                for (aggregate_type, aggregate_id) in chunk {
                    query = query.bind(aggregate_type.as_str()).bind(aggregate_id.as_str());
                }
                query.fetch_all(&mut **c).await?
            }
        };
        heads.extend(rows.into_iter().map(|(t, i, n, hash)| ((t, i), (n, unhex(&hash).unwrap_or_default()))));
    }
    Ok(heads)
}

/// Checks every stream against the latest seal and seals all of them.
async fn seal_everything(
    conn: &mut Conn<'_>,
    backend: Backend,
    keys: &SealKey,
    accept_current: bool,
    through: i64,
) -> Result<SealOutcome, SealError> {
    let current = current_heads(conn, backend).await?;
    if current.is_empty() {
        return Ok(SealOutcome::Empty);
    }
    let latest = latest_seal(conn).await?;
    let sealed = sealed_heads(conn).await?;
    let state = HeadsState::of(&current);
    if latest.as_ref().is_some_and(|seal| seal.heads_state.is_some() && seal.digest == hex(&state.digest())) && sealed == current {
        return Ok(SealOutcome::Unchanged);
    }
    if !accept_current {
        let problems = extension_problems(conn, backend, keys, latest.as_ref(), &sealed, &current).await?;
        if !problems.is_empty() {
            return Err(SealError::Refused(problems));
        }
    }
    if accept_current {
        with_conn!(conn, c => {
            sqlx::query("DELETE FROM chain_heads").execute(&mut **c).await?;
        });
    }
    let moved: Vec<_> = current
        .iter()
        .filter(|(stream, head)| accept_current || sealed.get(*stream) != Some(*head))
        .collect();
    write_heads(conn, &moved).await?;
    let streams = i64::try_from(current.len()).unwrap_or(i64::MAX);
    let events: i64 = current.values().map(|(sequence, _)| *sequence).sum();
    Ok(SealOutcome::Sealed(insert_seal(conn, keys, streams, events, &state, through).await?))
}

/// Writes heads into `chain_heads`, many rows per statement (a minute of sign-ins
/// moves tens of thousands of them).
async fn write_heads(conn: &mut Conn<'_>, heads: &[(&(String, String), &(i64, [u8; 32]))]) -> Result<(), sqlx::Error> {
    for chunk in heads.chunks(SEAL_CHUNK) {
        let values = (0..chunk.len()).map(|n| format!("(${}, ${}, ${}, ${})", n * 4 + 1, n * 4 + 2, n * 4 + 3, n * 4 + 4)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "INSERT INTO chain_heads (aggregate_type, aggregate_id, sequence, hash) VALUES {values}
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET sequence = excluded.sequence, hash = excluded.hash"
        );
        with_conn!(conn, c => {
            let mut query = sqlx::query(&sql);
            for ((aggregate_type, aggregate_id), (sequence, hash)) in chunk {
                query = query.bind(aggregate_type.as_str()).bind(aggregate_id.as_str()).bind(*sequence).bind(hex(hash));
            }
            query.execute(&mut **c).await?;
        });
    }
    Ok(())
}

/// Records a seal (authenticated by the server's key) of `streams` heads covering
/// `events` events with `state`, having looked through global position `through`.
async fn insert_seal(conn: &mut Conn<'_>, keys: &SealKey, streams: i64, events: i64, state: &HeadsState, through: i64) -> Result<Seal, sqlx::Error> {
    let sealed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let digest = hex(&state.digest());
    let mac = hex(&keys.mac(&Seal::message(true, &sealed_at, streams, events, &digest)));
    let key_id = keys.key_id();
    let heads_state = state.to_text();
    let id: i64 = with_conn!(conn, c => {
        sqlx::query_scalar(
            "INSERT INTO chain_seals (sealed_at, streams, events, digest, key_id, mac, through_position, heads_state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(sealed_at.as_str())
        .bind(streams)
        .bind(events)
        .bind(digest.as_str())
        .bind(key_id.as_str())
        .bind(mac.as_str())
        .bind(through)
        .bind(heads_state.as_str())
        .fetch_one(&mut **c)
        .await?
    });
    Ok(Seal { id, sealed_at, streams, events, digest, key_id, mac, through: Some(through), heads_state: Some(heads_state) })
}

/// Why the current heads do not extend the latest seal (empty: they do).
async fn extension_problems(
    conn: &mut Conn<'_>,
    backend: Backend,
    keys: &SealKey,
    latest: Option<&Seal>,
    sealed: &Heads,
    current: &Heads,
) -> Result<Vec<String>, SealError> {
    let mut problems = Vec::new();
    match latest {
        None if !sealed.is_empty() => problems.push("chain_heads has rows but chain_seals has no seal".to_string()),
        None => return Ok(problems),
        Some(seal) => {
            if !seal.authentic(keys) {
                problems.push(format!("seal #{} does not verify with this server's key", seal.id));
            }
            if !seal.covers(sealed) {
                problems.push(format!("chain_heads no longer match seal #{}", seal.id));
            }
        }
    }
    problems.extend(extension_problems_of(conn, backend, sealed, current).await?);
    Ok(problems)
}

/// Whether each stream of `sealed` still extends its sealed head in `current`.
async fn extension_problems_of(conn: &mut Conn<'_>, backend: Backend, sealed: &Heads, current: &Heads) -> Result<Vec<String>, SealError> {
    let mut problems = Vec::new();
    // Streams that grew since the seal: their sealed event is read back, many per query.
    let mut grown = Vec::new();
    for ((aggregate_type, aggregate_id), (sequence, hash)) in sealed {
        let stream = format!("{aggregate_type}/{aggregate_id}");
        match current.get(&(aggregate_type.clone(), aggregate_id.clone())) {
            None => problems.push(format!("{stream}: sealed at sequence {sequence}, now gone")),
            Some((now, _)) if now < sequence => {
                problems.push(format!("{stream}: sealed at sequence {sequence}, now ends at {now}"))
            }
            Some((now, now_hash)) if now == sequence => {
                if now_hash != hash {
                    problems.push(format!("{stream}: event {sequence} changed since it was sealed"));
                }
            }
            Some(_) => grown.push((aggregate_type, aggregate_id, *sequence, hash)),
        }
    }
    for chunk in grown.chunks(SEAL_CHUNK) {
        let rows: Vec<(String, String, i64, Option<String>)> = match conn {
            Conn::Postgres(c) => {
                let sql = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash
                           FROM events e JOIN unnest($1::text[], $2::text[], $3::int8[]) AS k (t, i, n)
                             ON e.aggregate_type = k.t AND e.aggregate_id = k.i AND e.sequence = k.n";
                let types: Vec<&str> = chunk.iter().map(|(t, ..)| t.as_str()).collect();
                let ids: Vec<&str> = chunk.iter().map(|(_, i, ..)| i.as_str()).collect();
                let sequences: Vec<i64> = chunk.iter().map(|(_, _, n, _)| *n).collect();
                sqlx::query_as(sql).bind(types).bind(ids).bind(sequences).fetch_all(&mut **c).await?
            }
            Conn::Sqlite(c) => {
                let keys = (0..chunk.len()).map(|n| format!("(${}, ${}, ${})", n * 3 + 1, n * 3 + 2, n * 3 + 3)).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "SELECT aggregate_type, aggregate_id, sequence, hash FROM events
                     WHERE (aggregate_type, aggregate_id, sequence) IN ({keys})"
                );
                let mut query = sqlx::query_as(&sql);
                for (aggregate_type, aggregate_id, sequence, _) in chunk {
                    query = query.bind(aggregate_type.as_str()).bind(aggregate_id.as_str()).bind(*sequence);
                }
                query.fetch_all(&mut **c).await?
            }
        };
        let stored: std::collections::HashMap<(String, String, i64), Option<[u8; 32]>> =
            rows.into_iter().map(|(t, i, n, hash)| ((t, i, n), hash.as_deref().and_then(unhex))).collect();
        for (aggregate_type, aggregate_id, sequence, hash) in chunk {
            let now = match stored.get(&((*aggregate_type).clone(), (*aggregate_id).clone(), *sequence)) {
                None => None,
                Some(Some(hash)) => Some(*hash),
                // Written before the chain: recomputed.
                Some(None) => hash_at(conn, backend, aggregate_type, aggregate_id, *sequence).await?,
            };
            if now.as_ref() != Some(*hash) {
                problems.push(format!("{aggregate_type}/{aggregate_id}: event {sequence} changed since it was sealed"));
            }
        }
    }
    Ok(problems)
}

/// Whether events were numbered after the latest seal looked (two index reads, cheap
/// enough to ask every interval whatever the size of the log). A deletion that
/// numbers nothing new is found by the next full check or `authd replay verify`.
pub async fn log_changed_since_seal(db: &Db) -> Result<bool, LogError> {
    let sql = "SELECT through_position FROM chain_seals ORDER BY id DESC LIMIT 1";
    let (through, sealed): (i64, Option<Option<i64>>) = projections::with_pool!(db, pool => {
        let mut conn = pool.acquire().await?;
        let through = numbered_through(&mut Conn::from(&mut *conn)).await?;
        (through, sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?)
    });
    Ok(match sealed {
        None => through > 0,
        Some(None) => true,
        Some(Some(sealed)) => through > sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(aggregate_id: &str, sequence: usize) -> cqrs_es::persist::SerializedEvent {
        cqrs_es::persist::SerializedEvent {
            aggregate_id: aggregate_id.into(),
            sequence,
            aggregate_type: "session".into(),
            event_type: "SessionRefreshed".into(),
            event_version: "1".into(),
            payload: json!({"n": sequence}),
            metadata: json!({}),
        }
    }

    async fn append(db: &Db, events: &[(&str, usize)]) {
        for (id, sequence) in events {
            let batch = [event(id, *sequence)];
            super::super::append::persist(db, &super::super::append::Memory::new(super::super::shred::Kek::new([3; 32])), &[("session", None, &batch)], &[]).await.expect("append");
        }
    }

    #[tokio::test]
    async fn an_incremental_seal_seals_what_a_full_one_would_and_refuses_edited_heads() {
        let dir = std::env::temp_dir().join(format!("authd-seal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = crate::store::connect(&format!("sqlite://{}", dir.join("authd.db").display())).await.expect("store");
        let keys = SealKey::new(rand::random());
        let Db::Sqlite(pool) = &db else { panic!("sqlite") };
        let full_heads = |db: Db| async move {
            let Db::Sqlite(pool) = &db else { panic!("sqlite") };
            let mut conn = pool.acquire().await.expect("conn");
            current_heads(&mut Conn::Sqlite(&mut conn), Backend::Sqlite).await.expect("heads")
        };
        let full = |db: Db| async move {
            let heads = full_heads(db).await;
            (hex(&heads_digest(&heads)), heads.len() as i64, heads.values().map(|(n, _)| *n).sum::<i64>())
        };

        append(&db, &[("b", 1), ("b", 2), ("d", 1)]).await;
        assert!(matches!(seal(&db, &keys, false, false).await, Ok(SealOutcome::Sealed(_))));
        // Streams that grew, a new one before and one after the others in byte order.
        append(&db, &[("b", 3), ("a", 1), ("e", 1)]).await;
        let Ok(SealOutcome::Sealed(incremental)) = seal(&db, &keys, false, false).await else { panic!("sealed") };
        assert_eq!((incremental.digest.clone(), incremental.streams, incremental.events), full(db.clone()).await);
        assert!(incremental.authentic(&keys));
        assert!(matches!(seal(&db, &keys, false, false).await, Ok(SealOutcome::Unchanged)));

        // A seal from before HeadsState (legacy digest, no state) is checked with its
        // digest and followed by a full seal that has a state.
        let legacy = legacy_heads_digest(&full_heads(db.clone()).await);
        let sealed_at = "2026-01-01T00:00:00.000000Z";
        let mac = hex(&keys.mac(&Seal::message(false, sealed_at, incremental.streams, incremental.events, &hex(&legacy))));
        sqlx::query("UPDATE chain_seals SET heads_state = NULL, sealed_at = $1, digest = $2, mac = $3 WHERE id = $4")
            .bind(sealed_at)
            .bind(hex(&legacy))
            .bind(mac)
            .bind(incremental.id)
            .execute(pool)
            .await
            .expect("legacy seal");
        append(&db, &[("a", 2)]).await;
        let Ok(SealOutcome::Sealed(upgraded)) = seal(&db, &keys, false, false).await else { panic!("sealed over the legacy seal") };
        assert!(upgraded.heads_state.is_some() && upgraded.authentic(&keys));
        assert_eq!((upgraded.digest.clone(), upgraded.streams, upgraded.events), full(db.clone()).await);

        // chain_heads edited behind the seal's back: an incremental seal refuses when
        // the edited stream moves, and a full check refuses whatever moved.
        sqlx::query("UPDATE chain_heads SET sequence = 2 WHERE aggregate_id = 'b'").execute(pool).await.expect("edit");
        append(&db, &[("d", 2)]).await;
        let mut conn = pool.acquire().await.expect("conn");
        let everything = seal_everything(&mut Conn::Sqlite(&mut conn), Backend::Sqlite, &keys, false, i64::MAX).await;
        drop(conn);
        match everything {
            Err(SealError::Refused(problems)) => assert!(problems.iter().any(|p| p.contains("chain_heads no longer match")), "{problems:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        append(&db, &[("b", 4)]).await;
        match seal(&db, &keys, false, false).await {
            Err(SealError::Refused(problems)) => assert!(problems.iter().any(|p| p.contains("session/b: event 2 changed")), "{problems:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The stored state edited: refused (its digest is the MAC'd one).
        sqlx::query("UPDATE chain_heads SET sequence = 3 WHERE aggregate_id = 'b'").execute(pool).await.expect("undo");
        assert!(matches!(seal(&db, &keys, false, false).await, Ok(SealOutcome::Sealed(_))), "sealed once the heads are back");
        let other = HeadsState::of(&Heads::from([(("session".into(), "x".into()), (1, [9; 32]))])).to_text();
        sqlx::query("UPDATE chain_seals SET heads_state = $1 WHERE id = (SELECT MAX(id) FROM chain_seals)").bind(other).execute(pool).await.expect("edit state");
        append(&db, &[("e", 2)]).await;
        match seal(&db, &keys, false, false).await {
            Err(SealError::Refused(problems)) => assert!(problems.iter().any(|p| p.contains("heads state")), "{problems:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::fs::remove_dir_all(dir).ok();
    }

    fn linked<'a>(payload: &'a Value, metadata: &'a Value) -> Linked<'a> {
        Linked {
            aggregate_type: "user",
            aggregate_id: "p1",
            sequence: 1,
            event_type: "UserRegistered",
            event_version: "1",
            payload,
            metadata,
        }
    }

    #[test]
    fn the_hash_does_not_depend_on_key_order_or_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, "x"], "x": null}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).expect("json");
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        let meta = json!({"client_address": "127.0.0.1"});
        assert_eq!(event_hash(&linked(&a, &meta), &GENESIS), event_hash(&linked(&b, &meta), &GENESIS));
    }

    #[test]
    fn the_hash_covers_content_and_link() {
        let payload = json!({"UserRegistered": {"username": "alice"}});
        let meta = json!({});
        let base = event_hash(&linked(&payload, &meta), &GENESIS);
        let other_payload = json!({"UserRegistered": {"username": "mallory"}});
        assert_ne!(base, event_hash(&linked(&other_payload, &meta), &GENESIS));
        assert_ne!(base, event_hash(&linked(&payload, &json!({"client_address": "10.0.0.1"})), &GENESIS));
        assert_ne!(base, event_hash(&linked(&payload, &meta), &[1; 32]));
        let mut moved = linked(&payload, &meta);
        moved.sequence = 2;
        assert_ne!(base, event_hash(&moved, &GENESIS));
    }

    #[test]
    fn the_heads_state_moves_by_what_moved() {
        let head = |id: &str, n: i64| ((("session".to_string(), id.to_string())), (n, [n as u8; 32]));
        let before = Heads::from([head("a", 1), head("b", 2)]);
        let after = Heads::from([head("a", 3), head("b", 2), head("c", 1)]);
        let mut state = HeadsState::of(&before);
        state.remove("session", "a", 1, &[1; 32]);
        state.add("session", "a", 3, &[3; 32]);
        state.add("session", "c", 1, &[1; 32]);
        assert_eq!(state, HeadsState::of(&after), "incremental = from scratch, in any order");
        assert_ne!(heads_digest(&before), heads_digest(&after));
        assert_eq!(HeadsState::from_text(&state.to_text()), Some(state));
        assert_eq!(HeadsState::from_text("AAAA"), None, "wrong length");
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0xab; 32];
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("zz"), None);
    }
}
