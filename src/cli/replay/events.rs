//! `authd replay events`: the log as JSON lines, one envelope per event, in log order.

use std::io::{BufWriter, Write};

use projections::Db;

use crate::config::EventsArgs;
use crate::store::log::{self, Backend, Bind};

/// The WHERE clause (with its parameters) for the export's filters.
fn filter(backend: Backend, args: &EventsArgs) -> (String, Vec<Bind>) {
    let position = log::position_column();
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    let mut add = |condition: &dyn Fn(usize) -> String, bind: Bind| {
        binds.push(bind);
        conditions.push(condition(binds.len()));
    };
    if let Some(aggregate_type) = &args.aggregate_type {
        add(&|n| format!("e.aggregate_type = ${n}"), Bind::Text(aggregate_type.clone()));
    }
    if let Some(aggregate_id) = &args.aggregate_id {
        add(&|n| format!("e.aggregate_id = ${n}"), Bind::Text(aggregate_id.clone()));
    }
    if let Some(event_type) = &args.event_type {
        add(&|n| format!("e.event_type = ${n}"), Bind::Text(event_type.clone()));
    }
    if let Some(from) = args.from {
        add(&|n| format!("{position} >= ${n}"), Bind::Int(from));
    }
    if let Some(to) = args.to {
        add(&|n| format!("{position} <= ${n}"), Bind::Int(to));
    }
    if let Some(since) = args.since {
        add(&|n| log::recorded_at_compare(backend, ">=", n), Bind::Text(log::time_bound(backend, since)));
    }
    if let Some(until) = args.until {
        add(&|n| log::recorded_at_compare(backend, "<=", n), Bind::Text(log::time_bound(backend, until)));
    }
    let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    (clause, binds)
}

pub async fn export(db: &Db, kek: &crate::store::shred::Kek, args: &EventsArgs) -> anyhow::Result<()> {
    let backend = Backend::of(db);
    let (clause, binds) = filter(backend, args);
    let bar = super::progress(db, &clause, &binds, "exporting").await?;
    let sql = format!(
        "SELECT {} FROM events e {clause} ORDER BY {}",
        log::columns(backend),
        log::order_by(backend)
    );
    let ring = crate::store::shred::KeyRing::load_all(db, kek).await?;
    let mut out = BufWriter::new(std::io::stdout());
    log::for_each(db, &sql, &binds, |mut event| {
        // Personal fields in clear, or erased (src/store/shred.rs).
        ring.reveal(&mut event.payload);
        ring.reveal(&mut event.metadata);
        serde_json::to_writer(&mut out, &event)?;
        writeln!(out)?;
        bar.inc(1);
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}
