//! `authd bench`: drives concurrent complete sign-ins, refreshes and access-token
//! verifications against a running server and prints throughput and p50/p99
//! latency for each. Start the server with `AUTHD_RATE_LIMIT=off`.

use std::time::{Duration, Instant};

use anyhow::Context;
use client::{Api, Login, SignInOutcome};
use futures::future::try_join_all;

use crate::config::BenchArgs;

const PASSWORD: &[u8] = b"bench password, not a secret";

/// Latencies of one kind of operation.
struct Sample {
    name: &'static str,
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Sample {
    fn print(mut self) {
        self.latencies.sort();
        let pick = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
        };
        println!(
            "{:<28} {:>7} ops {:>8.2} s {:>10.1} ops/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
            self.name,
            self.latencies.len(),
            self.wall.as_secs_f64(),
            self.latencies.len() as f64 / self.wall.as_secs_f64().max(f64::EPSILON),
            pick(0.50),
            pick(0.99),
        );
    }
}

/// Runs `per_client` operations in each of `clients` concurrent loops, timing each.
async fn measure<S, F, Fut>(name: &'static str, states: Vec<S>, per_client: usize, op: F) -> anyhow::Result<(Sample, Vec<S>)>
where
    F: Fn(S) -> Fut + Copy,
    Fut: std::future::Future<Output = anyhow::Result<(S, Duration)>>,
{
    let started = Instant::now();
    let runs = states.into_iter().map(|mut state| async move {
        let mut latencies = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            let (next, latency) = op(state).await?;
            state = next;
            latencies.push(latency);
        }
        anyhow::Ok((state, latencies))
    });
    let results = try_join_all(runs).await?;
    let wall = started.elapsed();
    let mut latencies = Vec::new();
    let mut states = Vec::new();
    for (state, mut l) in results {
        states.push(state);
        latencies.append(&mut l);
    }
    Ok((Sample { name, latencies, wall }, states))
}

#[derive(Clone)]
struct Client {
    api: Api,
    username: String,
    access_token: String,
    refresh_token: String,
}

async fn sign_in(client: Client) -> anyhow::Result<(Client, Duration, Duration)> {
    let started = Instant::now();
    let (login, ke1) = Login::start(PASSWORD)?;
    let (sign_in_id, ke2) = client.api.sign_in_start(&client.username, &ke1).await?;
    let server_start = started.elapsed();
    let (ke3, _) = tokio::task::spawn_blocking(move || login.finish(PASSWORD, &ke2)).await??;
    let finish_started = Instant::now();
    let outcome = client.api.sign_in_finish(&sign_in_id, &ke3).await?;
    let server = server_start + finish_started.elapsed();
    let SignInOutcome::Session(session) = outcome else { anyhow::bail!("bench accounts have no MFA") };
    let total = started.elapsed();
    Ok((Client { access_token: session.access_token, refresh_token: session.refresh_token, ..client }, total, server))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.target.url);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let invitations = api
        .fill_bucket(&args.admin_token, "signup", args.concurrency as u32)
        .await
        .context("cannot issue invitations (is the admin token right?)")?;
    let signups = invitations.tokens.iter().enumerate().map(|(i, token)| {
        let api = api.clone();
        let username = format!("bench-{}-{i}", &run_id[..8]);
        async move {
            api.sign_up(&username, PASSWORD, Some(token), None).await?;
            anyhow::Ok(Client { api, username, access_token: String::new(), refresh_token: String::new() })
        }
    });
    let clients = try_join_all(signups).await.context("cannot sign up the bench accounts")?;
    println!(
        "authd bench against {}: {} clients; {} sign-ins, {} refreshes, {} verifications each",
        args.target.url, args.concurrency, args.sign_ins, args.refreshes, args.verifications
    );

    // Complete sign-ins: the client's Argon2id (m=64 MiB, t=3) is part of the total.
    let started = Instant::now();
    let runs = clients.into_iter().map(|mut client| async move {
        let mut totals = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..args.sign_ins {
            let (next, total, server) = sign_in(client).await?;
            client = next;
            totals.push(total);
            servers.push(server);
        }
        anyhow::Ok((client, totals, servers))
    });
    let results = try_join_all(runs).await?;
    let wall = started.elapsed();
    let (mut clients, mut totals, mut servers) = (Vec::new(), Vec::new(), Vec::new());
    for (client, mut t, mut s) in results {
        clients.push(client);
        totals.append(&mut t);
        servers.append(&mut s);
    }
    Sample { name: "sign-in (complete)", latencies: totals, wall }.print();
    Sample { name: "sign-in (server round trips)", latencies: servers, wall }.print();

    let (sample, clients) = measure("refresh", clients, args.refreshes, |client: Client| async move {
        let started = Instant::now();
        let session = client.api.refresh(&client.refresh_token).await?;
        let latency = started.elapsed();
        Ok((Client { access_token: session.access_token, refresh_token: session.refresh_token, ..client }, latency))
    })
    .await?;
    sample.print();

    let (sample, _) = measure("jwt verify", clients, args.verifications, |client: Client| async move {
        let started = Instant::now();
        client.api.jwt_verify(&client.access_token).await?;
        Ok((client, started.elapsed()))
    })
    .await?;
    sample.print();
    Ok(())
}
