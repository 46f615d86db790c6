//! Read models folded from the event log: users, sessions, buckets and verifiers.
//!
//! Every fold is idempotent and ordered per aggregate: a row in
//! `projection_versions` records the last sequence folded for each aggregate, and an
//! event is folded only in the transaction that moves that version from `n - 1` to
//! `n`. Events are folded off the request path by [`ReadModels::catch_up`], which
//! tails the global log (an [`EventLog`]) from the read models' checkpoint
//! (`checkpoints`, name [`CHECKPOINT`]): each pass reads only what is new, this
//! replica's writes and every other's alike. The server runs it at start-up, after
//! its commits, periodically, and before each answer read from a read model, so a
//! read model can lag but never permanently miss an event. The checkpoint promises that everything at or
//! below it is folded; forgetting an aggregate's version rewinds it (a trigger, see
//! the migrations), so emptying these tables refolds them from the log.
//! [`ReadModels::rebuild`] replays from zero.

use std::collections::HashMap;
use cqrs_es::Aggregate;
use domain::invite_token::InviteTokenEvent;
use domain::mfa::MfaEvent;
use domain::session::SessionEvent;
use domain::user::UserEvent;
use domain::verification_code::VerificationCodeEvent;
use domain::{InviteToken, Mfa, Session, User, VerificationCode};
use sqlx::{PgPool, Row, SqlitePool};

/// A connection pool to whichever store `DATABASE_URL` selected.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same code on either pool: the SQL in this crate and in the server is
/// written once, in the dialect both stores share (`$n` placeholders, `ON CONFLICT`).
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Postgres($pool) => $body,
            $crate::Db::Sqlite($pool) => $body,
        }
    };
}

/// One connection to whichever store: for work that must stay on one connection (a
/// transaction, or temporary tables that shadow the live read models while
/// `authd replay rebuild` folds the log into them).
pub enum Conn<'a> {
    Postgres(&'a mut sqlx::PgConnection),
    Sqlite(&'a mut sqlx::SqliteConnection),
}

impl<'a> From<&'a mut sqlx::PgConnection> for Conn<'a> {
    fn from(conn: &'a mut sqlx::PgConnection) -> Self {
        Conn::Postgres(conn)
    }
}

impl<'a> From<&'a mut sqlx::SqliteConnection> for Conn<'a> {
    fn from(conn: &'a mut sqlx::SqliteConnection) -> Self {
        Conn::Sqlite(conn)
    }
}

/// Runs the same code on either connection of a [`Conn`] (`$conn: &mut Conn`).
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::Conn::Postgres($c) => $body,
            $crate::Conn::Sqlite($c) => $body,
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read model store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("reading the event log: {0}")]
    Log(#[from] LogError),
    #[error("event {aggregate_type}/{aggregate_id}#{sequence} cannot be read: {source}")]
    BadEvent {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        source: serde_json::Error,
    },
    #[error("read model row {table}/{key} cannot be read: {source}")]
    BadRow { table: &'static str, key: String, source: serde_json::Error },
}

/// The read models' entry in `checkpoints`.
pub const CHECKPOINT: &str = "read_models";

/// The global log, in an order that never puts an event behind one already read
/// (the server's `log` module).
pub trait EventLog: Sync {
    type Event: Folded + Send + Sync;
    /// Events after position `after` (at most `limit`), and the position to read
    /// after next time.
    fn read_after(
        &self,
        after: i64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<(Vec<Self::Event>, i64), LogError>> + Send;
    /// One aggregate's events after `sequence` (at most `limit`), in sequence order,
    /// personal fields in clear: what the gap repair folds.
    fn read_aggregate(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Self::Event>, LogError>> + Send;
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// What a fold needs of an event (the server's one event type implements it).
pub trait Folded {
    fn aggregate_type(&self) -> &str;
    fn aggregate_id(&self) -> &str;
    fn sequence(&self) -> i64;
    /// Personal fields in clear.
    fn payload(&self) -> &serde_json::Value;
}

/// `GET /v1/user`.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    pub profile_id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub mfa_enabled: bool,
    pub created_at: String,
}

/// `GET /v1/bucket/{bucket}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketView {
    pub available: i64,
    pub redeemed: i64,
}

/// `GET /v1/methods/{method}/verifiers/{id}`: a verifier as initiated, with the
/// wrong codes counted so far.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierView {
    pub verification_id: String,
    pub method: String,
    pub consumer: String,
    pub payload: serde_json::Value,
    /// Unix seconds.
    pub expires_at: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    /// `pending`, `validated` or `deleted`.
    pub status: String,
}

impl VerifierView {
    /// Still usable at `now` (unix seconds): neither consumed, deleted nor expired.
    pub fn is_live(&self, now: i64) -> bool {
        self.status == "pending" && now < self.expires_at
    }
}

/// The aggregate types that feed a read model.
const PROJECTED: [&str; 5] = [User::TYPE, Session::TYPE, InviteToken::TYPE, Mfa::TYPE, VerificationCode::TYPE];
const BATCH: usize = 500;

enum Arg {
    Text(String),
    OptText(Option<String>),
    Bool(bool),
    Int(i64),
}

struct Stmt {
    sql: &'static str,
    args: Vec<Arg>,
}

fn stmt(sql: &'static str, args: Vec<Arg>) -> Stmt {
    Stmt { sql, args }
}

/// The read-model writes one event makes. Pure, so the same fold serves the live
/// path, catch-up and rebuild.
fn fold(event: &impl Folded) -> Result<Vec<Stmt>, Error> {
    use Arg::*;
    let id = || Text(event.aggregate_id().to_string());
    let parse_error = |source| Error::BadEvent {
        aggregate_type: event.aggregate_type().to_string(),
        aggregate_id: event.aggregate_id().to_string(),
        sequence: event.sequence(),
        source,
    };
    let payload = event.payload().clone();
    Ok(match event.aggregate_type() {
        User::TYPE => match serde_json::from_value(payload).map_err(parse_error)? {
            UserEvent::UserRegistered { username, email, registered_at, .. } => vec![stmt(
                "INSERT INTO users_view (profile_id, username, email, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (profile_id) DO UPDATE SET username = excluded.username, email = excluded.email",
                vec![id(), Text(username), OptText(email), Text(registered_at.to_rfc3339())],
            )],
            UserEvent::SignInFailureCounted { consecutive, .. } => vec![stmt(
                "UPDATE users_view SET failed_sign_ins = $2 WHERE profile_id = $1",
                vec![id(), Int(i64::from(consecutive))],
            )],
            UserEvent::SignInFailuresReset { .. } | UserEvent::AccountLocked { .. } => vec![stmt(
                "UPDATE users_view SET failed_sign_ins = $2 WHERE profile_id = $1",
                vec![id(), Int(0)],
            )],
            UserEvent::EmailVerified { .. } => vec![stmt(
                "UPDATE users_view SET email_verified = $2 WHERE profile_id = $1",
                vec![id(), Bool(true)],
            )],
            UserEvent::AnonymousUserRegistered { at } => vec![stmt(
                "INSERT INTO users_view (profile_id, username, email, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (profile_id) DO NOTHING",
                vec![id(), Text(String::new()), OptText(None), Text(at.to_rfc3339())],
            )],
            UserEvent::UserDeanonymized { username, email, .. } => vec![stmt(
                "UPDATE users_view SET username = $2, email = $3 WHERE profile_id = $1",
                vec![id(), Text(username), OptText(email)],
            )],
            UserEvent::DeanonymizationStarted { .. } | UserEvent::DeanonymizationByEmailStarted { .. } => vec![],
            UserEvent::EmailChanged { email, .. } => vec![stmt(
                "UPDATE users_view SET email = $2, email_verified = $3 WHERE profile_id = $1",
                vec![id(), Text(email), Bool(true)],
            )],
            UserEvent::PasswordReset { .. }
            | UserEvent::PasswordChanged { .. }
            | UserEvent::PhoneNumberChanged { .. }
            | UserEvent::SessionsRevoked { .. } => vec![],
            UserEvent::UserRemoved { .. } => {
                vec![stmt("DELETE FROM users_view WHERE profile_id = $1", vec![id()])]
            }
        },
        Mfa::TYPE => {
            let enabled = match serde_json::from_value(payload).map_err(parse_error)? {
                MfaEvent::TotpEnabled { .. } => true,
                MfaEvent::TotpDisabled { .. } => false,
                MfaEvent::TotpSecretGenerated { .. } | MfaEvent::TotpCodeUsed { .. } => return Ok(vec![]),
            };
            vec![stmt(
                "INSERT INTO mfa_view (profile_id, enabled) VALUES ($1, $2)
                 ON CONFLICT (profile_id) DO UPDATE SET enabled = excluded.enabled",
                vec![id(), Bool(enabled)],
            )]
        }
        Session::TYPE => match serde_json::from_value(payload).map_err(parse_error)? {
            SessionEvent::SessionOpened { profile_id, opened_at, .. } => vec![stmt(
                "INSERT INTO sessions_view (session_id, profile_id, active, opened_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (session_id) DO NOTHING",
                vec![id(), Text(profile_id.to_string()), Bool(true), Text(opened_at.to_rfc3339())],
            )],
            SessionEvent::SessionRefreshed { .. } | SessionEvent::SessionElevated { .. } => vec![],
            SessionEvent::RefreshTokenReuseDetected { .. } | SessionEvent::SessionSignedOut { .. } => {
                vec![stmt("UPDATE sessions_view SET active = $2 WHERE session_id = $1", vec![id(), Bool(false)])]
            }
        },
        InviteToken::TYPE => match serde_json::from_value(payload).map_err(parse_error)? {
            InviteTokenEvent::InviteTokenIssued { bucket, .. } => vec![stmt(
                "INSERT INTO invite_tokens_view (token_id, bucket, redeemed) VALUES ($1, $2, $3)
                 ON CONFLICT (token_id) DO NOTHING",
                vec![id(), Text(bucket.as_str().to_string()), Bool(false)],
            )],
            InviteTokenEvent::InviteTokenRedeemed { .. } => vec![stmt(
                "UPDATE invite_tokens_view SET redeemed = $2 WHERE token_id = $1",
                vec![id(), Bool(true)],
            )],
        },
        VerificationCode::TYPE => match serde_json::from_value(payload).map_err(parse_error)? {
            VerificationCodeEvent::VerifierInitiated { method, consumer, payload, expires_at, max_attempts, .. } => vec![stmt(
                "INSERT INTO verifiers_view
                   (verification_id, method, consumer, payload, expires_at, attempts, max_attempts, status)
                 VALUES ($1, $2, $3, $4, $5, 0, $6, 'pending')
                 ON CONFLICT (verification_id) DO NOTHING",
                vec![
                    id(),
                    Text(method.as_str().to_string()),
                    Text(consumer),
                    Text(payload.to_string()),
                    Int(expires_at.timestamp()),
                    Int(i64::from(max_attempts)),
                ],
            )],
            VerificationCodeEvent::VerificationFailed { attempts, .. } => vec![stmt(
                "UPDATE verifiers_view SET attempts = $2 WHERE verification_id = $1",
                vec![id(), Int(i64::from(attempts))],
            )],
            VerificationCodeEvent::VerifierValidated { .. } => vec![stmt(
                "UPDATE verifiers_view SET status = 'validated' WHERE verification_id = $1",
                vec![id()],
            )],
            VerificationCodeEvent::VerifierDeleted { .. } => vec![stmt(
                "UPDATE verifiers_view SET status = 'deleted' WHERE verification_id = $1",
                vec![id()],
            )],
        },
        _ => vec![],
    })
}

/// The version bump that guards a fold: it succeeds only for the next event in line.
fn version_guard(event: &impl Folded) -> Stmt {
    use Arg::*;
    let key = vec![Text(event.aggregate_type().to_string()), Text(event.aggregate_id().to_string())];
    if event.sequence() == 1 {
        stmt(
            "INSERT INTO projection_versions (aggregate_type, aggregate_id, version) VALUES ($1, $2, 1)
             ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING",
            key,
        )
    } else {
        let mut args = key;
        args.extend([Int(event.sequence()), Int(event.sequence() - 1)]);
        stmt(
            "UPDATE projection_versions SET version = $3
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $4",
            args,
        )
    }
}

macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
            };
        }
        query
    }};
}

/// Access to the read models.
#[derive(Clone, Debug)]
pub struct ReadModels {
    db: Db,
}

impl ReadModels {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Folds one event if it is the next in line for its aggregate. Returns false
    /// when it was not (already folded, or an earlier one is missing).
    async fn fold_one(&self, event: &impl Folded) -> Result<bool, Error> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let folded = Self::fold_on(&mut Conn::from(&mut *tx), event).await?;
            tx.commit().await?;
            Ok(folded)
        })
    }

    /// Folds every event of the log past the read models' checkpoint, and moves the
    /// checkpoint. Returns how many events it folded (events already folded are
    /// skipped by their version). Each page of the log is folded, and the checkpoint
    /// moved past it, in one transaction: a burst of commits costs one transaction
    /// here, not one each.
    pub async fn catch_up<L: EventLog>(&self, log: &L) -> Result<u64, Error> {
        let mut folded = 0;
        loop {
            let from = self.checkpoint().await?;
            let (events, next) = log.read_after(from, BATCH).await?;
            let projected: Vec<&L::Event> = events.iter().filter(|e| Self::projects(e.aggregate_type())).collect();
            // The page's versions in one query.
            let mut versions = self.versions(projected.iter().map(|e| (e.aggregate_type(), e.aggregate_id()))).await?;
            // Aggregates with an earlier event never folded: repaired from their own
            // streams after the page.
            let mut behind = std::collections::BTreeSet::new();
            with_pool!(&self.db, pool => {
                let mut tx = pool.begin().await?;
                let mut conn = Conn::from(&mut *tx);
                for event in projected {
                    let key = (event.aggregate_type().to_string(), event.aggregate_id().to_string());
                    let version = versions.get(&key).copied().unwrap_or(0);
                    if event.sequence() <= version {
                        continue;
                    }
                    if event.sequence() == version + 1 && Self::fold_on(&mut conn, event).await? {
                        folded += 1;
                        versions.insert(key, event.sequence());
                    } else {
                        behind.insert(key);
                    }
                }
                if next > from {
                    // Compare-and-set: if the checkpoint was rewound meanwhile (a version
                    // forgotten) or another replica moved it, the next round reads it again.
                    Self::move_checkpoint(&mut conn, from, next).await?;
                }
                tx.commit().await?;
            });
            for (aggregate_type, aggregate_id) in behind {
                folded += self.catch_up_aggregate(log, &aggregate_type, &aggregate_id).await?;
            }
            if events.len() < BATCH {
                return Ok(folded);
            }
        }
    }

    /// The recorded versions of these aggregates, by (type, id): one query, on the
    /// primary key.
    async fn versions<'a>(&self, keys: impl Iterator<Item = (&'a str, &'a str)>) -> Result<HashMap<(String, String), i64>, Error> {
        let keys: Vec<(&str, &str)> = keys.collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let list = (0..keys.len()).map(|n| format!("(${}, ${})", 2 * n + 1, 2 * n + 2)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT aggregate_type, aggregate_id, version FROM projection_versions WHERE (aggregate_type, aggregate_id) IN ({list})"
        );
        let rows: Vec<(String, String, i64)> = with_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&sql);
            for (aggregate_type, aggregate_id) in &keys {
                query = query.bind(*aggregate_type).bind(*aggregate_id);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(t, i, v)| ((t, i), v)).collect())
    }

    async fn version(&self, aggregate_type: &str, aggregate_id: &str) -> Result<i64, Error> {
        let sql = "SELECT version FROM projection_versions WHERE aggregate_type = $1 AND aggregate_id = $2";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(aggregate_type).bind(aggregate_id).fetch_optional(pool).await?
        })
        .unwrap_or(0))
    }

    /// The position of the log up to which every event is folded.
    pub async fn checkpoint(&self) -> Result<i64, Error> {
        let sql = "SELECT position FROM checkpoints WHERE name = $1";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(CHECKPOINT).fetch_optional(pool).await?
        })
        .unwrap_or(0))
    }

    async fn move_checkpoint(conn: &mut Conn<'_>, from: i64, to: i64) -> Result<(), Error> {
        let sql = "INSERT INTO checkpoints (name, position) VALUES ($1, $3)
                   ON CONFLICT (name) DO UPDATE SET position = excluded.position
                   WHERE checkpoints.position = $2";
        with_conn!(conn, c => {
            sqlx::query(sql).bind(CHECKPOINT).bind(from).bind(to).execute(&mut **c).await?;
        });
        Ok(())
    }


    /// Folds the events of one aggregate past its recorded version, read from its
    /// own stream (the primary key), not from the global log.
    async fn catch_up_aggregate<L: EventLog>(&self, log: &L, aggregate_type: &str, aggregate_id: &str) -> Result<u64, Error> {
        let mut folded = 0;
        let mut stalls = 0;
        loop {
            let version = self.version(aggregate_type, aggregate_id).await?;
            let batch = log.read_aggregate(aggregate_type, aggregate_id, version, BATCH).await?;
            if batch.is_empty() {
                return Ok(folded);
            }
            let mut progressed = false;
            for event in &batch {
                if self.fold_one(event).await? {
                    folded += 1;
                    progressed = true;
                }
            }
            // No progress: another projector folded these between our read and our
            // write. Read again a few times, then leave the rest to the next pass.
            stalls = if progressed { 0 } else { stalls + 1 };
            if stalls > 3 {
                return Ok(folded);
            }
        }
    }

    /// Whether any read model folds events of `aggregate_type`.
    pub fn projects(aggregate_type: &str) -> bool {
        PROJECTED.contains(&aggregate_type)
    }

    /// Folds one event on `conn`, outside any transaction of its own, if it is the next
    /// in line for its aggregate (the same fold and version guard as catch-up's).
    /// `authd replay rebuild` runs it with temporary tables shadowing the live ones.

    pub async fn fold_on(conn: &mut Conn<'_>, event: &impl Folded) -> Result<bool, Error> {
        if !Self::projects(event.aggregate_type()) {
            return Ok(false);
        }
        let statements = fold(event)?;
        let guard = version_guard(event);
        with_conn!(conn, c => {
            let moved = bind_all!(sqlx::query(guard.sql), guard.args).execute(&mut **c).await?;
            if moved.rows_affected() != 1 {
                return Ok(false);
            }
            for s in statements {
                bind_all!(sqlx::query(s.sql), s.args).execute(&mut **c).await?;
            }
        });
        Ok(true)
    }

    pub async fn user(&self, profile_id: &str) -> Result<Option<UserView>, Error> {
        let sql = "SELECT u.profile_id, u.username, u.email, u.email_verified,
                          COALESCE(m.enabled, $2), u.created_at
                   FROM users_view u LEFT JOIN mfa_view m ON m.profile_id = u.profile_id
                   WHERE u.profile_id = $1";
        Ok(with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(profile_id).bind(false).fetch_optional(pool).await? {
                None => None,
                Some(row) => Some(UserView {
                    profile_id: row.try_get(0)?,
                    username: row.try_get(1)?,
                    email: row.try_get(2)?,
                    email_verified: row.try_get(3)?,
                    mfa_enabled: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                }),
            }
        }))
    }

    /// Anonymous accounts (no username) created before `before` (RFC 3339), at most
    /// `limit`, oldest first.
    pub async fn anonymous_accounts_before(&self, before: &str, limit: i64) -> Result<Vec<String>, Error> {
        let sql = "SELECT profile_id FROM users_view WHERE username = $1 AND created_at < $2 ORDER BY created_at LIMIT $3";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(sql).bind("").bind(before).bind(limit).fetch_all(pool).await?
        }))
    }

    /// The account whose verified email is `email` (case-insensitively), if any.
    pub async fn verified_email_owner(&self, email: &str) -> Result<Option<String>, Error> {
        let sql = "SELECT profile_id FROM users_view WHERE lower(email) = lower($1) AND email_verified = $2";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(sql).bind(email).bind(true).fetch_optional(pool).await?
        }))
    }

    /// Every verified address and its account, as `(email, profile_id)` (the one-time
    /// backfill of email owners reads it).
    pub async fn verified_emails(&self) -> Result<Vec<(String, String)>, Error> {
        let sql = "SELECT email, profile_id FROM users_view WHERE email IS NOT NULL AND email_verified = $1 ORDER BY created_at, profile_id";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(true).fetch_all(pool).await?
        }))
    }

    /// The addresses codes of `method` went to for the account `profile_id` (its
    /// verifiers' consumers, whatever their status): where its mail may still wait.
    pub async fn verifier_consumers_of(&self, method: &str, profile_id: &str) -> Result<Vec<String>, Error> {
        // A profile id (a UUID) holds no LIKE wildcards; the account's verifiers
        // carry it in their payload (`CodePurpose`).
        let sql = "SELECT DISTINCT consumer FROM verifiers_view WHERE method = $1 AND payload LIKE $2";
        let pattern = format!("%{}%", profile_id.replace(['%', '_'], ""));
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(sql).bind(method).bind(pattern).fetch_all(pool).await?
        }))
    }

    /// Ids of the sessions of an account that are still open.
    pub async fn active_sessions(&self, profile_id: &str) -> Result<Vec<String>, Error> {
        let sql = "SELECT session_id FROM sessions_view WHERE profile_id = $1 AND active = $2";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(sql).bind(profile_id).bind(true).fetch_all(pool).await?
        }))
    }

    /// The verifier `verification_id` of `method`, whatever its status.
    pub async fn verifier(&self, method: &str, verification_id: &str) -> Result<Option<VerifierView>, Error> {
        let sql = "SELECT verification_id, method, consumer, payload, expires_at, attempts, max_attempts, status
                   FROM verifiers_view WHERE verification_id = $1 AND method = $2";
        let row = with_pool!(&self.db, pool => {
            match sqlx::query(sql).bind(verification_id).bind(method).fetch_optional(pool).await? {
                None => None,
                Some(row) => Some((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<String, _>(2)?,
                    row.try_get::<String, _>(3)?,
                    row.try_get::<i64, _>(4)?,
                    row.try_get::<i64, _>(5)?,
                    row.try_get::<i64, _>(6)?,
                    row.try_get::<String, _>(7)?,
                )),
            }
        });
        let Some((verification_id, method, consumer, payload, expires_at, attempts, max_attempts, status)) = row else {
            return Ok(None);
        };
        let payload = serde_json::from_str(&payload).map_err(|source| Error::BadRow {
            table: "verifiers_view",
            key: verification_id.clone(),
            source,
        })?;
        Ok(Some(VerifierView { verification_id, method, consumer, payload, expires_at, attempts, max_attempts, status }))
    }

    pub async fn bucket(&self, bucket: &str) -> Result<BucketView, Error> {
        let sql = "SELECT
                     COALESCE(SUM(CASE WHEN redeemed THEN 0 ELSE 1 END), 0),
                     COALESCE(SUM(CASE WHEN redeemed THEN 1 ELSE 0 END), 0)
                   FROM invite_tokens_view WHERE bucket = $1";
        Ok(with_pool!(&self.db, pool => {
            let row = sqlx::query(sql).bind(bucket).fetch_one(pool).await?;
            BucketView { available: row.try_get(0)?, redeemed: row.try_get(1)? }
        }))
    }
}
