//! Snapshots of the aggregates whose streams grow on the hot path: a session gains an
//! event at every refresh, an account's second factor at every code used, a throttle
//! two at every sign-in of its window (a busy service account: hundreds of thousands
//! an hour). Every
//! [`EVERY`] events the write path keeps the aggregate's state beside the log, and a
//! load from the store (a cold cache: a restart, another replica, an eviction) starts
//! from it, so it reads at most [`EVERY`] events whatever the history. Snapshots are
//! not the truth — the events are — and hold no personal data (a session's, a second
//! factor's and a throttle's state name the account by id and addresses by keyed hash
//! only); removing an account deletes
//! them with its key (src/store/shred.rs).

use cqrs_es::Aggregate;
use domain::{Mfa, Session, Throttle};
use projections::{with_pool, Db};
use serde_json::Value;

/// Events between two snapshots of an aggregate.
pub const EVERY: usize = 100;

/// Whether aggregates of this type are snapshotted.
pub fn kept(aggregate_type: &str) -> bool {
    [Session::TYPE, Mfa::TYPE, Throttle::TYPE].contains(&aggregate_type)
}

/// Whether a commit that moved an aggregate from `before` to `after` crosses a
/// snapshot boundary.
pub fn due(aggregate_type: &str, before: usize, after: usize) -> bool {
    kept(aggregate_type) && before / EVERY != after / EVERY
}

/// The latest snapshot of the aggregate, and its sequence.
pub async fn load<A: Aggregate>(db: &Db, id: &str) -> Result<Option<(A, usize)>, sqlx::Error> {
    let sql = "SELECT sequence, state FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2";
    let row: Option<(i64, String)> = with_pool!(db, pool => {
        sqlx::query_as(sql).bind(A::TYPE).bind(id).fetch_optional(pool).await?
    });
    // An unreadable snapshot (the aggregate's shape changed) is ignored: the events
    // rebuild the state.
    Ok(row.and_then(|(sequence, state)| Some((serde_json::from_str(&state).ok()?, usize::try_from(sequence).ok()?))))
}

/// Keeps `state` as the aggregate's snapshot at `sequence`, unless a later one is kept.
pub async fn save(db: &Db, aggregate_type: &str, id: &str, sequence: usize, state: &Value) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO snapshots (aggregate_type, aggregate_id, sequence, state) VALUES ($1, $2, $3, $4)
               ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET sequence = excluded.sequence, state = excluded.state
               WHERE snapshots.sequence < excluded.sequence";
    let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
    with_pool!(db, pool => {
        sqlx::query(sql).bind(aggregate_type).bind(id).bind(sequence).bind(state.to_string()).execute(pool).await?;
    });
    Ok(())
}

/// Deletes every snapshot of the aggregate `id` (of any type).
pub async fn forget(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM snapshots WHERE aggregate_id = $1").bind(id).execute(pool).await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{connect, Store};
    use chrono::{Duration, Utc};
    use domain::session::SessionCommand;
    use uuid::Uuid;

    #[tokio::test]
    async fn a_cold_load_starts_from_the_latest_snapshot() {
        let dir = std::env::temp_dir().join(format!("authd-snapshot-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = connect(&format!("sqlite://{}", dir.join("authd.db").display())).await.expect("store");
        let store = Store::new(db.clone(), crate::store::shred::Kek::new([3; 32]));
        let (id, at, meta) = (Uuid::new_v4().to_string(), Utc::now(), Default::default());
        let open = SessionCommand::Open {
            profile_id: Uuid::new_v4(),
            refresh_hash: "h0".into(),
            refresh_expires_at: at + Duration::days(1),
            ends_at: at + Duration::days(30),
            amr: vec!["pwd".into()],
            presence: vec!["pwd".into()],
            pat_id: None,
            device: Default::default(),
            at,
        };
        store.execute::<Session>(&id, open, &(), &meta).await.expect("open");
        for n in 0..(2 * EVERY + 10) {
            let refresh = SessionCommand::Refresh {
                presented_hash: format!("h{n}"),
                new_hash: format!("h{}", n + 1),
                refresh_expires_at: at + Duration::days(1),
                at,
            };
            store.execute::<Session>(&id, refresh, &(), &meta).await.expect("refresh");
        }
        let (_, sequence) = load::<Session>(&db, &id).await.expect("read").expect("a snapshot");
        assert_eq!(sequence, 2 * EVERY, "the latest boundary crossed");

        // A process with an empty memory loads the same state as the one that wrote it.
        let warm = store.load::<Session>(&id).await.expect("load");
        let cold = Store::new(db.clone(), crate::store::shred::Kek::new([3; 32])).load::<Session>(&id).await.expect("load");
        assert_eq!(serde_json::to_value(&cold).unwrap(), serde_json::to_value(&warm).unwrap());

        // It starts from the snapshot: one made to say the session ended is believed.
        let Db::Sqlite(pool) = &db else { panic!("sqlite") };
        let mut ended = serde_json::to_value(&warm).unwrap();
        ended["ended"] = Value::Bool(true);
        sqlx::query("UPDATE snapshots SET state = $1").bind(ended.to_string()).execute(pool).await.expect("edit");
        assert!(!Store::new(db.clone(), crate::store::shred::Kek::new([3; 32])).load::<Session>(&id).await.expect("load").is_active());

        forget(&db, &id).await.expect("forget");
        assert!(load::<Session>(&db, &id).await.expect("read").is_none());
        std::fs::remove_dir_all(dir).ok();
    }
}
