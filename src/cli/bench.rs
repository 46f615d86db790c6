//! `authd bench`: drives concurrent complete sign-ins, refreshes, access-token
//! verifications and `/healthz` calls against a running server, and prints for
//! each phase ops, seconds, ops/s, p50/p99 latency and errors; then the server's
//! OPAQUE work alone, measured in-process on one core. Start the server with
//! `AUTHD_RATE_LIMIT=off` (and lockout and throttle ceilings out of reach).
//!
//! By default the bench accounts use the real Argon2id, which runs on this
//! machine and dominates a complete sign-in; `--capacity` gives them the minimal
//! one (`protocol::cheap_ksf`) so the numbers show the server.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::{b64, cheap_ksf, unb64, Api, Login, Registration, Session, SignInOutcome, Suite};
use futures::{future::try_join_all, StreamExt};
use opaque_ke::ServerSetup;
use rand::rngs::OsRng;

use crate::config::BenchArgs;
use crate::crypto::opaque;

const PASSWORD: &[u8] = b"bench password, not a secret";
/// The most tokens one `POST /v1/bucket/fill` generates.
const FILL_BATCH: usize = 10_000;

/// How long each concurrent loop of a phase runs.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// This many operations per loop.
    Count(usize),
    /// Until this long after the phase started.
    Time(Duration),
}

/// What a phase (or one loop of it) measured.
#[derive(Default)]
struct Tally {
    /// Latencies of the operations that succeeded.
    latencies: Vec<Duration>,
    /// Of each successful operation, the part spent in server round trips, when
    /// the operation reports it (sign-ins).
    server: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, mut other: Tally) {
        self.latencies.append(&mut other.latencies);
        self.server.append(&mut other.server);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn print(mut self, name: &str, wall: Duration) {
        let secs = wall.as_secs_f64().max(f64::EPSILON);
        let ops = self.latencies.len();
        println!(
            "{name:<30} {ops:>8} ops {:>7.2} s {:>9.1} ops/s   p50 {:>8.2} ms   p99 {:>8.2} ms   errors {}",
            wall.as_secs_f64(),
            ops as f64 / secs,
            percentile(&mut self.latencies, 0.50),
            percentile(&mut self.latencies, 0.99),
            self.errors,
        );
        if !self.server.is_empty() {
            println!(
                "{:<30} {:>8} ops {:>7} s {:>9} {:>5}   p50 {:>8.2} ms   p99 {:>8.2} ms",
                "  of which server round trips",
                self.server.len(),
                "",
                "",
                "",
                percentile(&mut self.server, 0.50),
                percentile(&mut self.server, 0.99),
            );
        }
        if let Some(error) = self.first_error {
            println!("{:<30} first error: {error}", "");
        }
    }
}

/// The `q` quantile of `latencies`, in milliseconds (0 when empty).
fn percentile(latencies: &mut [Duration], q: f64) -> f64 {
    latencies.sort_unstable();
    let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
    latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

/// The one load generator: runs `op` in one task per state, over and over until
/// `budget` is spent, timing each call, and prints the phase. An operation gives
/// its state back even when it fails, so that an error is counted and its loop
/// goes on; on success it may report the part of its latency spent in server
/// round trips.
async fn timed<S, F, Fut>(name: &str, states: Vec<S>, budget: Budget, op: F) -> Vec<S>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = (S, anyhow::Result<Option<Duration>>)> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut done = 0;
                while match budget {
                    Budget::Count(n) => done < n,
                    Budget::Time(limit) => started.elapsed() < limit,
                } {
                    let call = Instant::now();
                    let (next, result) = op(state).await;
                    let latency = call.elapsed();
                    state = next;
                    done += 1;
                    match result {
                        Ok(server) => {
                            tally.latencies.push(latency);
                            tally.server.extend(server);
                        }
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (state, tally)
            })
        })
        .collect();
    let mut tally = Tally::default();
    let mut states = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (state, part) = task.await.expect("a bench loop panicked");
        states.push(state);
        tally.add(part);
    }
    tally.print(name, started.elapsed());
    states
}

/// One concurrent client: an account and its current session.
struct Client {
    api: Api,
    username: String,
    access_token: String,
    refresh_token: String,
}

impl Client {
    fn with(self, session: Session) -> Client {
        Client { access_token: session.access_token, refresh_token: session.refresh_token, ..self }
    }
}

/// A complete sign-in (KE1 → KE2, the client's KSF, KE3 → session); returns the
/// session and the time spent in the two server round trips.
async fn sign_in(client: &Client) -> anyhow::Result<(Session, Duration)> {
    let (login, ke1) = Login::start(PASSWORD)?;
    let call = Instant::now();
    let (sign_in_id, ke2) = client.api.sign_in_start(&client.username, &ke1).await.context("POST /v1/sign/in")?;
    let mut server = call.elapsed();
    let ksf = client.api.ksf().clone();
    let (ke3, _) = tokio::task::spawn_blocking(move || login.finish_with(PASSWORD, &ke2, &ksf))
        .await?
        .context("KE2 does not open (a dummy KE2: throttled, locked out or unknown account?)")?;
    let call = Instant::now();
    let outcome = client.api.sign_in_finish(&sign_in_id, &ke3).await.context("POST /v1/sign/in/finish")?;
    server += call.elapsed();
    match outcome {
        SignInOutcome::Session(session) => Ok((session, server)),
        SignInOutcome::MfaRequired { .. } => anyhow::bail!("bench accounts have no MFA"),
    }
}

async fn sign_in_op(client: Client) -> (Client, anyhow::Result<Option<Duration>>) {
    match sign_in(&client).await {
        Ok((session, server)) => (client.with(session), Ok(Some(server))),
        Err(e) => (client, Err(e)),
    }
}

async fn refresh_op(client: Client) -> (Client, anyhow::Result<Option<Duration>>) {
    match client.api.refresh(&client.refresh_token).await {
        Ok(session) => (client.with(session), Ok(None)),
        Err(e) => (client, Err(anyhow::Error::new(e).context("POST /v1/token/refresh"))),
    }
}

async fn verify_op(client: Client) -> (Client, anyhow::Result<Option<Duration>>) {
    let result = client.api.jwt_verify(&client.access_token).await;
    (client, result.map(|_| None).context("GET /v1/jwt/verify"))
}

async fn healthz_op(client: Client) -> (Client, anyhow::Result<Option<Duration>>) {
    let result = client.api.healthz().await;
    (client, result.map(|_| None).context("GET /healthz"))
}

/// `--rate`: complete sign-ins started every `1 / rate` seconds for `total`, each in
/// its own task (open loop: arrivals keep their schedule however long answers take,
/// so queueing shows in the latencies instead of slowing the load), the accounts
/// taken in turn.
async fn at_rate(clients: Vec<Client>, rate: f64, total: Duration) {
    let accounts: Vec<(Api, String)> = clients.into_iter().map(|c| (c.api, c.username)).collect();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0.. {
        ticks.tick().await;
        if started.elapsed() >= total {
            break;
        }
        let (api, username) = accounts[n % accounts.len()].clone();
        let client = Client { api, username, access_token: String::new(), refresh_token: String::new() };
        tasks.push(tokio::spawn(async move {
            let call = Instant::now();
            let result = sign_in(&client).await;
            (call.elapsed(), result.map(|(_, server)| server))
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        match task.await.expect("a sign-in task panicked") {
            (latency, Ok(server)) => {
                tally.latencies.push(latency);
                tally.server.push(server);
            }
            (_, Err(e)) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    tally.print(&format!("sign-in at {rate}/s (open loop)"), started.elapsed());
}

/// The operations of the mixed load, as counted per window.
const MIXED: [&str; 3] = ["sign-in", "refresh", "verify"];

/// `--mixed`: every client signs in, refreshes 4 times and checks its token 20 times,
/// over and over, for `total`; prints the rates of each window and the last window
/// against the first (a server whose cost grows with history or memory shows here).
async fn mixed(clients: Vec<Client>, total: Duration) {
    let windows = if total >= Duration::from_secs(180) { (total.as_secs_f64() / 60.0).round() as usize } else { 3 };
    let window = total / windows as u32;
    let started = Instant::now();
    // Per window: successes of each operation, then errors.
    type Counts = Vec<[usize; 4]>;
    let count = move |counts: &mut Counts, kind: usize, ok: bool| {
        let w = ((started.elapsed().as_secs_f64() / window.as_secs_f64()) as usize).min(windows - 1);
        counts[w][if ok { kind } else { 3 }] += 1;
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut counts: Counts = vec![[0; 4]; windows];
                while started.elapsed() < total {
                    let (next, result) = sign_in_op(client).await;
                    client = next;
                    count(&mut counts, 0, result.is_ok());
                    for _ in 0..4 {
                        let (next, result) = refresh_op(client).await;
                        client = next;
                        count(&mut counts, 1, result.is_ok());
                    }
                    for _ in 0..20 {
                        let (next, result) = verify_op(client).await;
                        client = next;
                        count(&mut counts, 2, result.is_ok());
                    }
                }
                counts
            })
        })
        .collect();
    let mut counts: Counts = vec![[0; 4]; windows];
    for task in tasks {
        for (w, part) in task.await.expect("a bench loop panicked").into_iter().enumerate() {
            (0..4).for_each(|k| counts[w][k] += part[k]);
        }
    }
    let secs = window.as_secs_f64();
    for (w, c) in counts.iter().enumerate() {
        let rates: Vec<String> = MIXED.iter().zip(c).map(|(name, n)| format!("{name} {:>8.1}/s", *n as f64 / secs)).collect();
        println!("mixed {:>4.0}-{:<4.0} s   {}   errors {}", w as f64 * secs, (w + 1) as f64 * secs, rates.join("   "), c[3]);
    }
    let (first, last) = (counts[0], counts[windows - 1]);
    let change: Vec<String> = MIXED
        .iter()
        .enumerate()
        .map(|(k, name)| format!("{name} {:+.1}%", (last[k] as f64 / first[k].max(1) as f64 - 1.0) * 100.0))
        .collect();
    println!("mixed: last window against the first: {}", change.join(", "));
}

/// Signs up `n` accounts with `api`'s KSF, `concurrency` at a time, invitations
/// issued in batches of [`FILL_BATCH`]; prints progress every 10% and the rate.
async fn seed(api: &Api, admin_token: &str, prefix: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut done, mut tenths) = (0, 0);
    let mut tally = Tally::default();
    for first in (0..n).step_by(FILL_BATCH) {
        let count = FILL_BATCH.min(n - first);
        let tokens = api
            .fill_bucket(admin_token, "signup", count as u32)
            .await
            .context("cannot issue invitations for the seed accounts")?
            .tokens;
        let mut signups = futures::stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let api = api.clone();
                let username = format!("{prefix}-seed-{}", first + i);
                tokio::spawn(async move { api.sign_up(&username, PASSWORD, Some(&token), None).await })
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(result) = signups.next().await {
            done += 1;
            match result.expect("a sign-up task panicked") {
                Ok(_) => tally.latencies.push(Duration::ZERO),
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            if done * 10 >= n * (tenths + 1) {
                tenths = done * 10 / n;
                println!("  seeded {done}/{n} ({}%) in {:.1} s", tenths * 10, started.elapsed().as_secs_f64());
            }
        }
    }
    let wall = started.elapsed();
    println!(
        "seed sign-ups                  {:>8} ops {:>7.2} s {:>9.1} ops/s   errors {}",
        tally.latencies.len(),
        wall.as_secs_f64(),
        tally.latencies.len() as f64 / wall.as_secs_f64().max(f64::EPSILON),
        tally.errors
    );
    if let Some(error) = tally.first_error {
        println!("{:<30} first error: {error}", "");
    }
    Ok(())
}

/// The server's OPAQUE steps alone, in-process on this thread: `iterations`
/// times `login_start` (KE1 → KE2) and the KE3 check, each against a client made
/// with the cheap KSF (whose work is not counted). Returns the time spent in each.
fn server_opaque(iterations: usize) -> anyhow::Result<(Duration, Duration)> {
    let setup = ServerSetup::<Suite>::new(&mut OsRng);
    let ksf = cheap_ksf();
    let (registration, request) = Registration::start(PASSWORD)?;
    let response = opaque::registration_response(&setup, &unb64(&request)?, b"bench")?;
    let record = unb64(&registration.finish_with(PASSWORD, &b64(&response), &ksf)?)?;
    let (mut start_time, mut check_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iterations {
        let (login, ke1) = Login::start(PASSWORD)?;
        let ke1 = unb64(&ke1)?;
        let call = Instant::now();
        let start = opaque::login_start(&setup, Some(&record), &ke1, b"bench")?;
        start_time += call.elapsed();
        let (ke3, _) = login.finish_with(PASSWORD, &b64(&start.ke2), &ksf)?;
        let ke3 = unb64(&ke3)?;
        let call = Instant::now();
        let key = opaque::session_key(&start.state, &ke3);
        check_time += call.elapsed();
        anyhow::ensure!(key.is_some(), "the server refused a good KE3");
    }
    Ok((start_time, check_time))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    if let Some(secs) = args.duration {
        anyhow::ensure!(secs.is_finite() && secs > 0.0, "--duration must be a positive number of seconds");
    }
    let mut api = Api::new(&args.target.url);
    if args.capacity {
        api = api.with_ksf(cheap_ksf());
    }
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let budget = |count| match args.duration {
        Some(secs) => Budget::Time(Duration::from_secs_f64(secs)),
        None => Budget::Count(count),
    };

    println!(
        "authd bench against {}: {} clients{}; client KSF: {}; {}",
        args.target.url,
        args.concurrency,
        if args.hot_account { " on ONE account" } else { ", one account each" },
        if args.capacity { "cheap Argon2id (m=8 KiB, t=1) -- server capacity" } else { "Argon2id (m=64 MiB, t=3)" },
        match (args.mixed, args.duration) {
            _ if args.rate.is_some() => format!("{} sign-ins/s for {} s, open loop", args.rate.unwrap_or_default(), args.duration.unwrap_or(10.0)),
            (Some(secs), _) => format!("a mixed load for {secs} s"),
            (None, Some(secs)) => format!("{secs} s per phase"),
            (None, None) => format!(
                "{} sign-ins, {} refreshes, {} verifications and /healthz calls per client",
                args.sign_ins, args.refreshes, args.verifications
            ),
        }
    );

    if args.seed_accounts > 0 {
        println!("seeding {} accounts (cheap Argon2id)...", args.seed_accounts);
        let seeder = api.clone().with_ksf(cheap_ksf());
        seed(&seeder, &args.admin_token, &prefix, args.seed_accounts, args.concurrency).await?;
    }

    let accounts = if args.hot_account { 1 } else { args.concurrency };
    let invitations = api
        .fill_bucket(&args.admin_token, "signup", accounts as u32)
        .await
        .context("cannot issue invitations (is the admin token right?)")?;
    let signups = invitations.tokens.iter().enumerate().map(|(i, token)| {
        let (api, username) = (api.clone(), format!("{prefix}-{i}"));
        async move { api.sign_up(&username, PASSWORD, Some(token), None).await.map(|_| username) }
    });
    let usernames = try_join_all(signups).await.context("cannot sign up the bench accounts")?;
    let clients: Vec<Client> = (0..args.concurrency)
        .map(|i| Client {
            api: api.clone(),
            username: usernames[i % usernames.len()].clone(),
            access_token: String::new(),
            refresh_token: String::new(),
        })
        .collect();

    let history = Budget::Count(args.history);
    let clients = if args.history > 0 {
        println!("history: {} sign-ins and {} refreshes per account before measuring", args.history, args.history);
        timed("history: sign-in", clients, history, sign_in_op).await
    } else {
        clients
    };
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number per second");
        let total = Duration::from_secs_f64(args.duration.unwrap_or(10.0));
        at_rate(clients, rate, total).await;
        return Ok(());
    }
    if let Some(secs) = args.mixed {
        anyhow::ensure!(secs.is_finite() && secs >= 3.0, "--mixed must be at least 3 seconds");
        let clients = timed("first sign-in", clients, Budget::Count(1), sign_in_op).await;
        mixed(clients, Duration::from_secs_f64(secs)).await;
        return Ok(());
    }
    let clients = timed("sign-in (complete)", clients, budget(args.sign_ins), sign_in_op).await;
    let clients = if args.history > 0 {
        timed("history: refresh", clients, history, refresh_op).await
    } else {
        clients
    };
    let clients = timed("refresh", clients, budget(args.refreshes), refresh_op).await;
    let clients = timed("jwt verify", clients, budget(args.verifications), verify_op).await;
    timed("/healthz (ceiling)", clients, budget(args.verifications), healthz_op).await;

    if args.opaque_iterations > 0 {
        let n = args.opaque_iterations;
        let (start, check) = tokio::task::spawn_blocking(move || server_opaque(n)).await??;
        let total = (start + check).as_secs_f64().max(f64::EPSILON);
        println!(
            "server-side OPAQUE work alone, one core: {:.1} sign-ins/s ({n} in-process: KE1 → KE2 {:.0} µs, KE3 check {:.1} µs each)",
            n as f64 / total,
            start.as_secs_f64() * 1e6 / n as f64,
            check.as_secs_f64() * 1e6 / n as f64,
        );
    }
    Ok(())
}
