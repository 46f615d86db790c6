//! `authd replay`: forensics on the event log, on either store.
//!
//! - `events`: export (filtered) events as JSON lines;
//! - `timeline`: one account's history across all its aggregates;
//! - `state`: an aggregate's state at a log position or a time;
//! - `rebuild`: fold the log into fresh read-model tables, compare, optionally swap;
//! - `verify`: check every aggregate's hash chain and the latest seal;
//! - `seal`: seal the chain heads now.
//!
//! Everything reads the store as [`crate::store::log::Event`]s, in the log's global
//! order ([`crate::store::log::order_by`]); `position` is the global position the
//! audit envelope carries. It is safe to run while the server
//! runs: reads do not block it (SQLite is in WAL mode), and the only writes
//! (`rebuild --swap`, `seal`) take the same locks the server does.

mod events;
mod rebuild;
mod state;
mod timeline;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use projections::Db;

use crate::store::chain::{self, SealOutcome};
use crate::config::{ReplayArgs, ReplayCommand, ServerConfig};
use crate::store::log::{self, Bind};
use crate::crypto::keys::Keys;

pub async fn run(args: ReplayArgs, server: &ServerConfig) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| server.data_dir.clone());
    let url = match args.database_url.clone().or_else(|| server.database_url.clone()) {
        Some(url) => url,
        None => format!("sqlite://{}", data_dir.join("authd.db").display()),
    };
    let setup = args.server_setup.clone().or_else(|| server.server_setup.clone());
    // Every command needs the server's keys: personal fields open only with the
    // key-encryption key, seals only with the seal key.
    let keys = load_keys(setup.as_deref(), &data_dir)?;
    let kek = crate::store::shred::Kek::new(keys.subject_keys_secret());
    let db = open(&url, &kek).await?;
    match args.command {
        ReplayCommand::Events(events) => events::export(&db, &kek, &events).await.map(|()| ExitCode::SUCCESS),
        ReplayCommand::Timeline(timeline) => timeline::print(&db, &keys, &timeline).await.map(|()| ExitCode::SUCCESS),
        ReplayCommand::State(state) => state::print(&db, &kek, &state).await.map(|()| ExitCode::SUCCESS),
        ReplayCommand::Rebuild(rebuild) => rebuild::run(&db, &kek, &rebuild).await,
        ReplayCommand::Verify => verify::run(&db, &crate::store::chain::SealKey::new(keys.chain_seals_secret())).await,
        ReplayCommand::Seal(seal) => {
            match chain::seal(&db, &chain::SealKey::new(keys.chain_seals_secret()), seal.accept_current, true).await? {
                SealOutcome::Sealed(seal) => println!(
                    "seal #{} at {}: {} streams, {} events, digest {}",
                    seal.id, seal.sealed_at, seal.streams, seal.events, seal.digest
                ),
                SealOutcome::Unchanged => println!("the latest seal already covers the log"),
                SealOutcome::Empty => println!("the log is empty: nothing to seal"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long replay waits for transactions open elsewhere before it reads the log.
const NUMBERING_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Opens an existing store (a missing SQLite file is an error here, not a new store)
/// and numbers every committed event, so positions here are the ones the audit
/// envelope, NATS and `GET /v1/admin/events` carry.
async fn open(url: &str, kek: &crate::store::shred::Kek) -> anyhow::Result<Db> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if path != ":memory:" && !PathBuf::from(path).exists() {
            bail!("no event store at {} (set DATABASE_URL or AUTHD_DATA_DIR)", crate::store::redact(url));
        }
    }
    let db = crate::store::connect(url).await?;
    crate::store::log::Log::new(db.clone(), kek.clone())
        .number_committed(NUMBERING_WAIT)
        .await
        .context("cannot number the log's events")?;
    Ok(db)
}

/// The server's keys. Never creates a setup: a new one would be useless here.
fn load_keys(configured: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<Keys> {
    let configured = configured.filter(|setup| !setup.trim().is_empty());
    if configured.is_none() && !data_dir.join("server_setup").exists() {
        bail!(
            "no OPAQUE server setup in {} and AUTHD_SERVER_SETUP is not set: the keys that hash usernames \
             and seal the log come from it",
            data_dir.display()
        );
    }
    Keys::load(configured, data_dir).context("cannot load the server's keys")
}

/// A progress bar on stderr when it is a terminal, counting the events `where_clause`
/// selects; hidden (and nothing counted) otherwise.
async fn progress(db: &Db, where_clause: &str, binds: &[Bind], what: &str) -> anyhow::Result<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let total = log::count(db, where_clause, binds).await?;
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg:12} {wide_bar} {pos}/{len} events ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    Ok(bar)
}
