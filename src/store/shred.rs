//! Crypto-shredding: personal data in events is encrypted under a key per account,
//! kept outside the log; removing the account destroys the key. The log stays
//! complete and its hash chain verifiable (the chain covers the ciphertext), replay
//! still works, and what the key protected reads as [`ERASED`] from then on.
//!
//! - **Subject.** The account an event concerns, by its profile id: what its
//!   aggregate answers (`domain::Subject`, which every aggregate implements: a
//!   session's, an MFA ticket's, a verifier's account…), else the first `profile_id`
//!   (a UUID) anywhere in the payload (a throttle's attempt). An event with no
//!   subject (a sign-in for an unknown username, a verification not tied to an
//!   account) is written in clear.
//! - **What is encrypted.** In the payload, at any depth, the string fields
//!   `username`, `email` and `consumer` (the verification's address); in the
//!   metadata, `client_address` and `user_agent`. Each becomes
//!   `enc:v1:<subject>:<base64url(nonce ‖ XChaCha20-Poly1305 ciphertext)>`, the
//!   subject being the associated data. [`encrypt_personal`] does it on the write path (src/store/append.rs),
//!   the one place events are written, before the hash is taken and in the same
//!   transaction that creates the subject's key on first use.
//! - **Keys.** `subject_keys(subject, key, destroyed_at)`: 32 random bytes per
//!   account, stored wrapped by the key-encryption key [`Kek`] (derived from the
//!   server's secret, outside the database). [`destroy`] deletes the row, leaves a
//!   tombstone without a key, and [`scrub`]s the deleted bytes from the database
//!   files; an event written for a destroyed subject gets [`ERASED`] in place of its
//!   personal fields.
//! - **Reading.** Every reader that shows events decrypts with a [`KeyRing`]: the
//!   repository (aggregates see clear values), [`crate::store::log::Log`] (read models,
//!   the NATS relay, `GET /v1/admin/events`) and `authd replay` (timeline, state,
//!   events, rebuild). `replay verify` reads what is stored. A destroyed key, or a
//!   value that fails to decrypt, reads as [`ERASED`].
//! - **Audit stream.** The envelope withholds `username`, `email` and `consumer`
//!   (src/relay/envelope.rs): they never reach NATS, in clear or not. The metadata
//!   is published as stored: an account's client address and user agent encrypted
//!   under its key (a consumer holding the server's secret can read them while the
//!   account exists; nobody can after removal), since a published message cannot be
//!   recalled. `GET /v1/admin/events` shows them decrypted (or [`ERASED`]).
//! - **Read models.** `users_view` loses the account's row on removal; [`destroy`]
//!   also erases `verifiers_view.consumer` for the account's verifiers.

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use projections::{with_conn, with_pool, Conn, Db};
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::Value;
use uuid::Uuid;

use super::append::Memory;

/// Prefix of an encrypted value.
pub const PREFIX: &str = "enc:v1:";
/// What an encrypted value reads as once its key is destroyed.
pub const ERASED: &str = "[erased]";

const PAYLOAD_FIELDS: [&str; 8] = ["username", "email", "consumer", "client_address", "user_agent", "nickname", "phone_number", "name"];
const METADATA_FIELDS: [&str; 2] = ["client_address", "user_agent"];
const NONCE_LEN: usize = 24;

pub type Key = [u8; 32];

/// The key-encryption key: subject keys are stored wrapped under it (XChaCha20-Poly1305,
/// the subject as associated data), so the database alone — a dump, a stolen disk —
/// opens nothing. Derived from the server's secret (src/crypto/keys.rs), which lives
/// outside the database.
#[derive(Clone)]
pub struct Kek(Key);

/// Bytes of a wrapped subject key: nonce, key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn new(key: Key) -> Self {
        Self(key)
    }

    fn aad(subject: &str) -> Vec<u8> {
        [b"authd subject key\0".as_slice(), subject.as_bytes()].concat()
    }

    fn wrap(&self, subject: &str, key: &Key) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = Self::aad(subject);
        // Encryption with a valid key and nonce cannot fail for 32 bytes.
        let sealed = XChaCha20Poly1305::new((&self.0).into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: key, aad: &aad })
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// The subject key a stored value holds: wrapped (the only form written), or a
    /// bare 32-byte key from before wrapping (rewrapped at start-up, [`wrap_bare_keys`]).
    fn unwrap(&self, subject: &str, stored: &[u8]) -> Option<Key> {
        match stored.len() {
            32 => Key::try_from(stored).ok(),
            WRAPPED_LEN => {
                let (nonce, sealed) = stored.split_at(NONCE_LEN);
                let aad = Self::aad(subject);
                let key = XChaCha20Poly1305::new((&self.0).into())
                    .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
                    .ok()?;
                Key::try_from(key.as_slice()).ok()
            }
            _ => None,
        }
    }
}

/// Wraps every subject key still stored bare (written before keys were wrapped);
/// returns how many. Run at start-up; the bare bytes are scrubbed like a destroyed key.
pub async fn wrap_bare_keys(db: &Db, kek: &Kek) -> Result<u64, sqlx::Error> {
    // length() of a blob / bytea is its size in bytes on both stores.
    let select = "SELECT subject, key FROM subject_keys WHERE length(key) = 32";
    let update = "UPDATE subject_keys SET key = $1 WHERE subject = $2";
    let bare: Vec<(String, Vec<u8>)> = with_pool!(db, pool => sqlx::query_as(select).fetch_all(pool).await?);
    for (subject, key) in &bare {
        let Ok(key) = Key::try_from(key.as_slice()) else { continue };
        with_pool!(db, pool => {
            sqlx::query(update).bind(kek.wrap(subject, &key)).bind(subject).execute(pool).await?;
        });
    }
    if !bare.is_empty() {
        scrub(db).await?;
    }
    Ok(bare.len() as u64)
}

/// The account `payload` (of an event of `aggregate_type`/`aggregate_id`) concerns.
pub fn subject_of(aggregate_type: &str, aggregate_id: &str, payload: &Value) -> Option<String> {
    fn profile_id(value: &Value) -> Option<Uuid> {
        match value {
            Value::Object(fields) => fields
                .get("profile_id")
                .and_then(Value::as_str)
                .and_then(|id| Uuid::parse_str(id).ok())
                .or_else(|| fields.values().find_map(profile_id)),
            Value::Array(items) => items.iter().find_map(profile_id),
            _ => None,
        }
    }
    if aggregate_type == "user" {
        return Uuid::parse_str(aggregate_id).ok().map(|id| id.to_string());
    }
    profile_id(payload).map(|id| id.to_string())
}

fn encrypt(subject: &str, key: &Key, clear: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.into());
    // Encryption with a valid key and nonce cannot fail for inputs this small.
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: clear.as_bytes(), aad: subject.as_bytes() })
        .unwrap_or_default();
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    format!("{PREFIX}{subject}:{}", URL_SAFE_NO_PAD.encode(blob))
}

/// `(subject, nonce ‖ ciphertext)` of an encrypted value.
fn parse(text: &str) -> Option<(&str, Vec<u8>)> {
    let (subject, data) = text.strip_prefix(PREFIX)?.split_once(':')?;
    Some((subject, URL_SAFE_NO_PAD.decode(data).ok()?))
}

fn decrypt(subject: &str, key: &Key, blob: &[u8]) -> Option<String> {
    if blob.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let clear = XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: subject.as_bytes() })
        .ok()?;
    String::from_utf8(clear).ok()
}

/// Replaces the named string fields (at any depth when `deep`) by `replace(text)`.
fn rewrite(value: &mut Value, fields: &[&str], deep: bool, replace: &dyn Fn(&str) -> String) {
    match value {
        Value::Object(map) => {
            for (name, item) in map.iter_mut() {
                match item {
                    Value::String(text) if fields.contains(&name.as_str()) && !text.starts_with(PREFIX) => {
                        *text = replace(text)
                    }
                    _ if deep => rewrite(item, fields, deep, replace),
                    _ => {}
                }
            }
        }
        Value::Array(items) if deep => items.iter_mut().for_each(|item| rewrite(item, fields, deep, replace)),
        _ => {}
    }
}

/// Encrypts the personal fields of one event for `subject` under `key`, or erases
/// them when the key is destroyed (`None`).
pub fn protect(subject: &str, key: Option<&Key>, payload: &mut Value, metadata: &mut Value) {
    let replace = |clear: &str| match key {
        Some(key) => encrypt(subject, key, clear),
        None => ERASED.to_string(),
    };
    rewrite(payload, &PAYLOAD_FIELDS, true, &replace);
    rewrite(metadata, &METADATA_FIELDS, false, &replace);
}

/// The subject's key, created when it has none yet; `None` once destroyed.
async fn key_for(conn: &mut Conn<'_>, memory: &Memory, subject: &str) -> Result<Option<Key>, sqlx::Error> {
    if let Some(key) = memory.key(subject) {
        return Ok(Some(key));
    }
    let mut fresh = [0u8; 32];
    OsRng.fill_bytes(&mut fresh);
    let insert = "INSERT INTO subject_keys (subject, key) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING";
    let select = "SELECT key FROM subject_keys WHERE subject = $1";
    let stored: Option<Vec<u8>> = with_conn!(conn, c => {
        sqlx::query(insert).bind(subject).bind(memory.kek().wrap(subject, &fresh)).execute(&mut **c).await?;
        sqlx::query_scalar(select).bind(subject).fetch_one(&mut **c).await?
    });
    let key = stored.and_then(|key| memory.kek().unwrap(subject, &key));
    if let Some(key) = key {
        memory.remember_key(subject, key);
    }
    Ok(key)
}

/// The payload and metadata of an event as they are stored: personal fields
/// encrypted for the event's subject (see the module documentation), or erased once
/// its key is destroyed.
pub async fn encrypt_personal(
    conn: &mut Conn<'_>,
    memory: &Memory,
    subject: Option<&str>,
    aggregate_type: &str,
    aggregate_id: &str,
    payload: &Value,
    metadata: &Value,
) -> Result<(Value, Value), sqlx::Error> {
    let (mut payload, mut metadata) = (payload.clone(), metadata.clone());
    if let Some(subject) = subject.map(str::to_string).or_else(|| subject_of(aggregate_type, aggregate_id, &payload)) {
        let key = key_for(conn, memory, &subject).await?;
        protect(&subject, key.as_ref(), &mut payload, &mut metadata);
    }
    Ok((payload, metadata))
}

/// Destroys the subject's key: its row is deleted and a tombstone without a key put
/// in its place (so later events of the subject are written erased), in one
/// transaction; then the deleted bytes are scrubbed from the database files
/// ([`scrub`]). Also erases what the read models keep of the subject in clear. Safe
/// to repeat.
pub async fn destroy(db: &Db, subject: &str) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // The transaction's first statement writes: on SQLite a read first would pin a
    // snapshot that a concurrent commit makes unusable for the write (SQLITE_BUSY_SNAPSHOT).
    let delete = "DELETE FROM subject_keys WHERE subject = $1 RETURNING destroyed_at";
    let tombstone = "INSERT INTO subject_keys (subject, key, destroyed_at) VALUES ($1, NULL, $2)";
    // A UUID holds no LIKE wildcards.
    let verifiers = "UPDATE verifiers_view SET consumer = $1 WHERE payload LIKE $2 AND consumer <> $1";
    with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        let earlier: Option<Option<String>> = sqlx::query_scalar(delete).bind(subject).fetch_optional(&mut *tx).await?;
        sqlx::query(tombstone).bind(subject).bind(earlier.flatten().unwrap_or(now)).execute(&mut *tx).await?;
        tx.commit().await?;
        sqlx::query(verifiers).bind(ERASED).bind(format!("%{subject}%")).execute(pool).await?;
    });
    scrub(db).await
}

/// Leaves no deleted key bytes where the database keeps old data. SQLite: every
/// connection runs with `secure_delete` (deleted content is overwritten with zeros,
/// src/store/mod.rs), and the write-ahead log, which still holds the pages as they
/// were, is checkpointed into the database and truncated. PostgreSQL: the key table
/// is vacuumed, so the dead row versions are removed (what PostgreSQL's own WAL and
/// backups keep is theirs to expire; the keys there are wrapped, [`Kek`]).
pub async fn scrub(db: &Db) -> Result<(), sqlx::Error> {
    match db {
        Db::Sqlite(pool) => {
            // A checkpoint cannot pass readers that are still on old pages (busy, or
            // an error under contention): try again briefly until the log is fully
            // copied back and truncated. The key is gone either way; only where its
            // old bytes linger is at stake, until SQLite's next checkpoint.
            for _ in 0..50 {
                let checkpoint: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await;
                if matches!(checkpoint, Ok((0, _, _))) {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            tracing::warn!("the write-ahead log could not be truncated after a key was destroyed; the next checkpoint will");
            Ok(())
        }
        Db::Postgres(pool) => {
            sqlx::query("VACUUM subject_keys").execute(pool).await?;
            Ok(())
        }
    }
}

/// Keys for decrypting: subject → key (`None`: destroyed or unknown).
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    keys: HashMap<String, Option<Key>>,
}

/// The subjects named by encrypted values in `value`.
fn subjects(value: &Value, out: &mut HashSet<String>) {
    match value {
        Value::String(text) => {
            if let Some((subject, _)) = text.strip_prefix(PREFIX).and_then(|rest| rest.split_once(':')) {
                out.insert(subject.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|item| subjects(item, out)),
        Value::Object(map) => map.values().for_each(|item| subjects(item, out)),
        _ => {}
    }
}

fn rows_to_ring(rows: Vec<(String, Option<Vec<u8>>)>, kek: &Kek) -> KeyRing {
    let keys = rows
        .into_iter()
        .map(|(subject, key)| {
            let key = key.and_then(|key| kek.unwrap(&subject, &key));
            (subject, key)
        })
        .collect();
    KeyRing { keys }
}

impl KeyRing {
    /// Every key (for replay tooling).
    pub async fn load_all(db: &Db, kek: &Kek) -> Result<Self, sqlx::Error> {
        let sql = "SELECT subject, key FROM subject_keys";
        Ok(rows_to_ring(with_pool!(db, pool => sqlx::query_as(sql).fetch_all(pool).await?), kek))
    }

    /// Every key, on a connection (inside a transaction).
    pub async fn load_all_on(conn: &mut Conn<'_>, kek: &Kek) -> Result<Self, sqlx::Error> {
        let sql = "SELECT subject, key FROM subject_keys";
        Ok(rows_to_ring(with_conn!(conn, c => sqlx::query_as(sql).fetch_all(&mut **c).await?), kek))
    }

    /// The keys the encrypted values in `values` need.
    pub async fn load_for<'v>(db: &Db, kek: &Kek, values: impl IntoIterator<Item = &'v Value>) -> Result<Self, sqlx::Error> {
        Self::load_remembering(db, kek, None, values).await
    }

    /// [`KeyRing::load_for`], taking the keys the write path remembers (src/store/append.rs)
    /// from memory and reading only the others: an aggregate load on the hot path
    /// (an account at every sign-in) then costs no key query.
    pub async fn load_remembering<'v>(
        db: &Db,
        kek: &Kek,
        memory: Option<&Memory>,
        values: impl IntoIterator<Item = &'v Value>,
    ) -> Result<Self, sqlx::Error> {
        let mut needed = HashSet::new();
        values.into_iter().for_each(|value| subjects(value, &mut needed));
        let mut remembered = HashMap::new();
        if let Some(memory) = memory {
            needed.retain(|subject| match memory.key(subject) {
                Some(key) => {
                    remembered.insert(subject.clone(), Some(key));
                    false
                }
                None => true,
            });
        }
        if needed.is_empty() {
            return Ok(KeyRing { keys: remembered });
        }
        // One query for every account the values name.
        let placeholders: Vec<String> = (1..=needed.len()).map(|n| format!("${n}")).collect();
        let sql = format!("SELECT subject, key FROM subject_keys WHERE subject IN ({})", placeholders.join(", "));
        let rows = with_pool!(db, pool => {
            let mut query = sqlx::query_as(&sql);
            for subject in &needed {
                query = query.bind(subject);
            }
            query.fetch_all(pool).await?
        });
        let mut ring = rows_to_ring(rows, kek);
        if let Some(memory) = memory {
            ring.keys.iter().for_each(|(subject, key)| key.iter().for_each(|key| memory.remember_key(subject, *key)));
        }
        // A subject without a row has no key: its values read as erased.
        for subject in needed {
            ring.keys.entry(subject).or_insert(None);
        }
        ring.keys.extend(remembered);
        Ok(ring)
    }

    /// Replaces every encrypted string in `value` by its clear text, or by
    /// [`ERASED`] when its key is destroyed or it does not decrypt.
    pub fn reveal(&self, value: &mut Value) {
        match value {
            Value::String(text) if text.starts_with(PREFIX) => {
                let clear = parse(text).and_then(|(subject, blob)| {
                    let key = self.keys.get(subject)?.as_ref()?;
                    decrypt(subject, key, &blob)
                });
                *text = clear.unwrap_or_else(|| ERASED.to_string());
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.reveal(item)),
            Value::Object(map) => map.values_mut().for_each(|item| self.reveal(item)),
            _ => {}
        }
    }
}

/// Decrypts payloads and metadata in place, loading the keys they need.
pub async fn reveal_all(db: &Db, kek: &Kek, values: &mut [&mut Value]) -> Result<(), sqlx::Error> {
    let ring = KeyRing::load_for(db, kek, values.iter().map(|value| &**value)).await?;
    values.iter_mut().for_each(|value| ring.reveal(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encrypt_decrypt_and_erase_round_trip() {
        let subject = Uuid::new_v4().to_string();
        let key: Key = [7; 32];
        let clear_payload = json!({"UserRegistered": {"username": "alice", "email": "a@example.com", "registered_at": "t"}});
        let clear_metadata = json!({"request_id": "r1", "client_address": "10.0.0.1", "user_agent": "curl"});
        let (mut payload, mut metadata) = (clear_payload.clone(), clear_metadata.clone());
        protect(&subject, Some(&key), &mut payload, &mut metadata);

        let text = format!("{payload}{metadata}");
        for clear in ["alice", "a@example.com", "10.0.0.1", "curl"] {
            assert!(!text.contains(clear), "{clear} is encrypted: {text}");
        }
        assert!(payload["UserRegistered"]["username"].as_str().is_some_and(|v| v.starts_with(&format!("{PREFIX}{subject}:"))));
        assert_eq!(payload["UserRegistered"]["registered_at"], "t", "other fields stay");
        assert_eq!(metadata["request_id"], "r1");

        let ring = KeyRing { keys: HashMap::from([(subject.clone(), Some(key))]) };
        let (mut revealed_payload, mut revealed_metadata) = (payload.clone(), metadata.clone());
        ring.reveal(&mut revealed_payload);
        ring.reveal(&mut revealed_metadata);
        assert_eq!((revealed_payload, revealed_metadata), (clear_payload, clear_metadata));

        let shredded = KeyRing { keys: HashMap::from([(subject.clone(), None)]) };
        shredded.reveal(&mut payload);
        shredded.reveal(&mut metadata);
        assert_eq!(payload["UserRegistered"]["username"], ERASED);
        assert_eq!(payload["UserRegistered"]["email"], ERASED);
        assert_eq!(metadata["client_address"], ERASED);
        assert_eq!(metadata["request_id"], "r1");

        let wrong = KeyRing { keys: HashMap::from([(subject, Some([8; 32]))]) };
        let mut value = json!(encrypt("s", &key, "x"));
        wrong.reveal(&mut value);
        assert_eq!(value, json!(ERASED), "a value that does not decrypt reads as erased");
    }

    #[test]
    fn subject_keys_open_only_with_the_kek_and_their_subject() {
        let (kek, key) = (Kek::new([1; 32]), [9u8; 32]);
        let wrapped = kek.wrap("alice", &key);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert!(!wrapped.windows(32).any(|window| window == key), "the key is not stored bare");
        assert_eq!(kek.unwrap("alice", &wrapped), Some(key));
        assert_eq!(Kek::new([2; 32]).unwrap("alice", &wrapped), None, "another server's KEK opens nothing");
        assert_eq!(kek.unwrap("bob", &wrapped), None, "a wrapped key is bound to its subject");
        assert_eq!(kek.unwrap("alice", &key), Some(key), "a bare key from before wrapping still reads");
    }

    #[tokio::test]
    async fn bare_keys_are_wrapped_at_start_up() {
        let dir = std::env::temp_dir().join(format!("authd-kek-{}", Uuid::new_v4()));
        let db = crate::store::connect(&format!("sqlite://{}", dir.join("authd.db").display())).await.expect("store");
        let Db::Sqlite(pool) = &db else { unreachable!() };
        sqlx::query("INSERT INTO subject_keys (subject, key) VALUES ('s1', $1), ('s2', NULL)")
            .bind(vec![5u8; 32])
            .execute(pool)
            .await
            .expect("insert");
        let kek = Kek::new([1; 32]);
        assert_eq!(wrap_bare_keys(&db, &kek).await.expect("wrap"), 1);
        assert_eq!(wrap_bare_keys(&db, &kek).await.expect("wrap"), 0, "once");
        let ring = KeyRing::load_all(&db, &kek).await.expect("ring");
        assert_eq!(ring.keys.get("s1"), Some(&Some([5u8; 32])));
        assert_eq!(ring.keys.get("s2"), Some(&None));
        let stored: Vec<u8> = sqlx::query_scalar("SELECT key FROM subject_keys WHERE subject = 's1'").fetch_one(pool).await.expect("row");
        assert_eq!(stored.len(), WRAPPED_LEN);
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_destroyed_key_writes_erased_values() {
        let mut payload = json!({"VerifierInitiated": {"consumer": "a@example.com", "payload": {"profile_id": "x"}}});
        let mut metadata = json!({"client_address": "10.0.0.1"});
        protect("s", None, &mut payload, &mut metadata);
        assert_eq!(payload["VerifierInitiated"]["consumer"], ERASED);
        assert_eq!(metadata["client_address"], ERASED);
    }

    #[test]
    fn subjects_are_accounts() {
        let id = Uuid::new_v4();
        assert_eq!(subject_of("user", &id.to_string(), &json!({})), Some(id.to_string()));
        let verifier = json!({"VerifierInitiated": {"consumer": "c", "payload": {"purpose": "activate", "profile_id": id}}});
        assert_eq!(subject_of("verifier", "v", &verifier), Some(id.to_string()));
        assert_eq!(subject_of("sign_in", "s", &json!({"SignInStarted": {"profile_id": null}})), None);
        assert_eq!(subject_of("verifier", "v", &json!({"VerifierInitiated": {"consumer": "c", "payload": {}}})), None);
    }
}
