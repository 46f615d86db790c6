//! `authd replay state <type> <id> --at <position|time>`: an aggregate as it was,
//! folded with the domain's own `apply` over its events up to the bound.

use anyhow::{bail, Context};
use cqrs_es::Aggregate;
use domain::{InviteToken, Mfa, MfaChallenge, Passkeys, Session, SignIn, User, Username, WebauthnChallenge};
use projections::Db;
use serde_json::{json, Value};

use crate::config::{At, StateArgs};
use crate::store::log::{self, Backend, Bind, Event};

const TYPES: [&str; 9] = [
    User::TYPE,
    Username::TYPE,
    Session::TYPE,
    SignIn::TYPE,
    Mfa::TYPE,
    MfaChallenge::TYPE,
    InviteToken::TYPE,
    Passkeys::TYPE,
    WebauthnChallenge::TYPE,
];

pub async fn print(db: &Db, kek: &crate::store::shred::Kek, args: &StateArgs) -> anyhow::Result<()> {
    if !TYPES.contains(&args.aggregate_type.as_str()) {
        bail!("unknown aggregate type {:?}: one of {}", args.aggregate_type, TYPES.join(", "));
    }
    let backend = Backend::of(db);
    let mut binds = vec![Bind::Text(args.aggregate_type.clone()), Bind::Text(args.aggregate_id.clone())];
    let bound = match args.at {
        None => String::new(),
        Some(At::Position(position)) => {
            binds.push(Bind::Int(position));
            format!("AND {} <= $3", log::position_column())
        }
        Some(At::Time(time)) => {
            binds.push(Bind::Text(log::time_bound(backend, time)));
            format!("AND {}", log::recorded_at_compare(backend, "<=", 3))
        }
    };
    let sql = format!(
        "SELECT {} FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 {bound} ORDER BY e.sequence",
        log::columns(backend)
    );
    let mut events = log::fetch(db, &sql, &binds).await?;
    // Personal fields in clear, or erased (src/store/shred.rs).
    let ring = crate::store::shred::KeyRing::load_all(db, kek).await?;
    for event in &mut events {
        ring.reveal(&mut event.payload);
        ring.reveal(&mut event.metadata);
    }
    if events.is_empty() && args.at.is_none() {
        bail!("no events for {}/{}", args.aggregate_type, args.aggregate_id);
    }
    let state = match args.aggregate_type.as_str() {
        User::TYPE => fold::<User>(&events),
        Username::TYPE => fold::<Username>(&events),
        Session::TYPE => fold::<Session>(&events),
        SignIn::TYPE => fold::<SignIn>(&events),
        Mfa::TYPE => fold::<Mfa>(&events),
        MfaChallenge::TYPE => fold::<MfaChallenge>(&events),
        InviteToken::TYPE => fold::<InviteToken>(&events),
        Passkeys::TYPE => fold::<Passkeys>(&events),
        WebauthnChallenge::TYPE => fold::<WebauthnChallenge>(&events),
        other => bail!("unknown aggregate type {other:?}: one of {}", TYPES.join(", ")),
    }?;
    let last = events.last();
    let at = match args.at {
        None => Value::Null,
        Some(At::Position(position)) => json!({ "position": position }),
        Some(At::Time(time)) => json!({ "time": time.to_rfc3339() }),
    };
    let report = json!({
        "aggregate_type": args.aggregate_type,
        "aggregate_id": args.aggregate_id,
        "at": at,
        "events_applied": events.len(),
        "last_sequence": last.map(|event| event.sequence),
        "last_position": last.map(|event| event.position),
        "last_recorded_at": last.map(|event| event.recorded_at.clone()),
        "state": state,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The aggregate after applying `events` in order, as JSON.
fn fold<A: Aggregate>(events: &[Event]) -> anyhow::Result<Value> {
    let mut aggregate = A::default();
    for event in events {
        let domain_event: A::Event = serde_json::from_value(event.payload.clone()).with_context(|| {
            format!(
                "event {}/{}#{} ({} v{}) does not read as a {} event",
                event.aggregate_type,
                event.aggregate_id,
                event.sequence,
                event.event_type,
                event.event_version,
                A::TYPE
            )
        })?;
        aggregate.apply(domain_event);
    }
    serde_json::to_value(&aggregate).context("cannot serialise the aggregate")
}
