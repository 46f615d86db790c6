//! `authd replay verify`: walk every aggregate's hash chain and check the latest seal
//! (see `chain.rs` for the design). Reports every broken link, the first one (in log
//! order) first, and exits non-zero when there is any.
//!
//! Per event, in sequence order per aggregate:
//! - the sequence follows the previous one (a gap is a deleted event);
//! - the stored `prev_hash` is the previous event's stored hash (else an event before
//!   it was removed or replaced);
//! - the stored `hash` is the hash of the event's content chained to its `prev_hash`
//!   (else the payload, metadata, type or version was changed);
//! - no hash is missing after a hashed event (events written before the chain existed
//!   have none and are counted as unchained).
//!
//! Then against the latest seal: its MAC verifies under this server's key, the
//! sealed heads are the ones its digest covers, and every sealed aggregate still
//! reaches its sealed sequence with the sealed hash (recomputed from content), so a
//! deleted tail, a deleted stream, or a stream rewritten with fresh hashes is caught.

use std::process::ExitCode;

use anyhow::Context;
use projections::{Conn, Db};

use crate::store::chain::{self, event_hash, hex, unhex, Heads, Linked, Seal, GENESIS};
use crate::store::log::{self, Backend, Event};
use crate::store::chain::SealKey;

/// A broken link: where, and what differs.
#[derive(Debug)]
struct Break {
    stream: String,
    sequence: Option<i64>,
    position: Option<i64>,
    what: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.stream)?;
        if let Some(sequence) = self.sequence {
            write!(f, " sequence {sequence}")?;
        }
        if let Some(position) = self.position {
            write!(f, " (position {position})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Where the walk is in the current aggregate.
struct Stream {
    key: (String, String),
    /// The sequence the next event must have.
    next: i64,
    /// The stored hash of the previous event (recomputed when it had none): what the
    /// next event's `prev_hash` must be.
    link: [u8; 32],
    /// The chain recomputed from content alone, from the first event.
    truth: [u8; 32],
    hashed: bool,
    /// The sealed head of this aggregate, if the latest seal covers it.
    sealed: Option<(i64, [u8; 32])>,
}

struct Walk<'a> {
    seal: Option<&'a Seal>,
    sealed: Heads,
    current: Option<Stream>,
    breaks: Vec<Break>,
    events: u64,
    streams: u64,
    unchained: u64,
}

fn short(hash: &[u8; 32]) -> String {
    hex(&hash[..8])
}

impl Walk<'_> {
    fn seal_name(&self) -> String {
        self.seal.map(|seal| format!("seal #{} ({})", seal.id, seal.sealed_at)).unwrap_or_default()
    }

    fn feed(&mut self, event: &Event) {
        self.events += 1;
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if self.current.as_ref().is_none_or(|stream| stream.key != key) {
            self.end_stream();
            self.streams += 1;
            let sealed = self.sealed.remove(&key);
            self.current = Some(Stream { key, next: 1, link: GENESIS, truth: GENESIS, hashed: false, sealed });
        }
        let seal_name = self.seal_name();
        let Some(stream) = self.current.as_mut() else { return };
        let at = |what: String| Break {
            stream: format!("{}/{}", event.aggregate_type, event.aggregate_id),
            sequence: Some(event.sequence),
            position: Some(event.position),
            what,
        };
        if event.sequence != stream.next {
            let missing = if event.sequence == stream.next + 1 {
                format!("event {} is missing", stream.next)
            } else {
                format!("events {} to {} are missing", stream.next, event.sequence - 1)
            };
            self.breaks.push(at(format!("{missing}: the stream jumps from {} to {}", stream.next - 1, event.sequence)));
        }
        let content = Linked::from(event);
        let stored_prev = event.prev_hash.as_deref().map(unhex);
        let stored_hash = event.hash.as_deref().map(unhex);
        match stored_prev {
            Some(Some(prev)) if prev != stream.link && event.sequence == stream.next => self.breaks.push(at(format!(
                "prev_hash {} is not the hash of event {} ({}): an event before it was removed, replaced or reordered",
                short(&prev),
                event.sequence - 1,
                short(&stream.link)
            ))),
            Some(None) => self.breaks.push(at("prev_hash is malformed".to_string())),
            _ => {}
        }
        let prev = match stored_prev {
            Some(Some(prev)) => prev,
            _ => stream.link,
        };
        let recomputed = event_hash(&content, &prev);
        match stored_hash {
            None if stream.hashed => {
                self.breaks.push(at("the hash was removed (an earlier event of this stream has one)".to_string()))
            }
            None => self.unchained += 1,
            Some(None) => self.breaks.push(at("hash is malformed".to_string())),
            Some(Some(stored)) if stored != recomputed => self.breaks.push(at(format!(
                "the event's content no longer matches its hash: its payload, metadata, event type or version \
                 was changed (stored {}, recomputed {})",
                short(&stored),
                short(&recomputed)
            ))),
            Some(Some(_)) => {}
        }
        if matches!(stored_hash, Some(Some(_))) {
            stream.hashed = true;
        }
        stream.link = match stored_hash {
            Some(Some(stored)) => stored,
            _ => recomputed,
        };
        stream.truth = event_hash(&content, &stream.truth);
        stream.next = event.sequence + 1;
        if let Some((sequence, hash)) = stream.sealed {
            if sequence == event.sequence && hash != stream.truth {
                self.breaks.push(at(format!(
                    "differs from {seal_name}: sealed hash {}, the log now gives {} (an event up to here was changed, \
                     or removed and the chain rewritten)",
                    short(&hash),
                    short(&stream.truth)
                )));
            }
        }
    }

    fn end_stream(&mut self) {
        let seal_name = self.seal_name();
        if let Some(stream) = self.current.take() {
            let last = stream.next - 1;
            if let Some((sequence, _)) = stream.sealed.filter(|(sequence, _)| *sequence > last) {
                let gone = if sequence == last + 1 {
                    format!("event {sequence} was")
                } else {
                    format!("events {} to {sequence} were", last + 1)
                };
                self.breaks.push(Break {
                    stream: format!("{}/{}", stream.key.0, stream.key.1),
                    sequence: Some(sequence),
                    position: None,
                    what: format!("{seal_name} recorded it up to sequence {sequence}, it now ends at {last}: {gone} deleted"),
                });
            }
        }
    }

    fn finish(&mut self) {
        self.end_stream();
        let seal_name = self.seal_name();
        for ((aggregate_type, aggregate_id), (sequence, _)) in std::mem::take(&mut self.sealed) {
            self.breaks.push(Break {
                stream: format!("{aggregate_type}/{aggregate_id}"),
                sequence: None,
                position: None,
                what: format!("{seal_name} recorded it up to sequence {sequence}; the whole stream was deleted"),
            });
        }
    }
}

pub async fn run(db: &Db, keys: &SealKey) -> anyhow::Result<ExitCode> {
    let backend = Backend::of(db);
    let (seal, sealed) = match db {
        Db::Postgres(pool) => read_seal(&mut Conn::Postgres(&mut *pool.acquire().await?)).await?,
        Db::Sqlite(pool) => read_seal(&mut Conn::Sqlite(&mut *pool.acquire().await?)).await?,
    };

    let mut breaks = Vec::new();
    match &seal {
        None if !sealed.is_empty() => breaks.push(Break {
            stream: "chain_seals".into(),
            sequence: None,
            position: None,
            what: "chain_heads has rows but there is no seal (seals were deleted)".into(),
        }),
        None => {}
        Some(seal) => {
            if !seal.authentic(keys) {
                let what = if seal.key_id != keys.key_id() {
                    format!("seal #{} was made with another key (key id {}, ours {})", seal.id, seal.key_id, keys.key_id())
                } else {
                    format!("seal #{}: its MAC does not verify: the seal was altered", seal.id)
                };
                breaks.push(Break { stream: "chain_seals".into(), sequence: None, position: None, what });
            }
            if !seal.covers(&sealed) {
                breaks.push(Break {
                    stream: "chain_heads".into(),
                    sequence: None,
                    position: None,
                    what: format!("the sealed heads no longer match seal #{}'s digest: chain_heads was altered", seal.id),
                });
            }
        }
    }

    let bar = super::progress(db, "", &[], "verifying").await?;
    let mut walk = Walk { seal: seal.as_ref(), sealed, current: None, breaks, events: 0, streams: 0, unchained: 0 };
    let sql = format!(
        "SELECT {} FROM events e ORDER BY e.aggregate_type, e.aggregate_id, e.sequence",
        log::columns(backend)
    );
    log::for_each(db, &sql, &[], |event| {
        walk.feed(&event);
        bar.inc(1);
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("cannot read the log")?;
    walk.finish();
    bar.finish_and_clear();

    println!(
        "checked {} events in {} aggregates ({} unchained, written before the hash chain)",
        walk.events, walk.streams, walk.unchained
    );
    match &seal {
        Some(seal) => println!(
            "latest seal: #{} at {}, {} aggregates, {} events",
            seal.id, seal.sealed_at, seal.streams, seal.events
        ),
        None => println!("no seal yet: a deleted tail or a rewritten stream cannot be told apart from a genuine log"),
    }
    let mut breaks = walk.breaks;
    if breaks.is_empty() {
        println!("ok: every link holds{}", if seal.is_some() { " and the log extends the latest seal" } else { "" });
        return Ok(ExitCode::SUCCESS);
    }
    // Log order; problems that have no position (deleted events, the seal) last.
    breaks.sort_by_key(|b| (b.position.is_none(), b.position));
    println!("BROKEN: {} problems", breaks.len());
    println!("first broken link: {}", breaks[0]);
    for b in &breaks[1..] {
        println!("  {b}");
    }
    Ok(ExitCode::FAILURE)
}

async fn read_seal(conn: &mut Conn<'_>) -> anyhow::Result<(Option<Seal>, Heads)> {
    let seal = chain::latest_seal(conn).await.context("cannot read chain_seals")?;
    let sealed = chain::sealed_heads(conn).await.context("cannot read chain_heads")?;
    Ok((seal, sealed))
}
