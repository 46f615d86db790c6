//! The audit trail: the gap-safe global order of the log, the NATS JetStream relay
//! (against real NATS servers: the shared one at `TEST_NATS_URL`, and private
//! `nats-server` processes a test may stop), and `GET /v1/admin/events`.
//!
//! Tests run in parallel against one NATS server, so each uses a stream and subject
//! prefix of its own (`AUTHD_NATS_STREAM`, `AUTHD_NATS_SUBJECT_PREFIX`), except the
//! one that checks the default contract, which reads only its own messages.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use crate::helpers::{unique, Backend, Server, ADMIN, PASSWORD};
use serde_json::{json, Value};

both_stores!(
    every_event_reaches_jetstream_as_its_envelope_in_log_order,
    events_over_http_page_filter_and_name_every_bad_parameter,
    a_nats_outage_under_load_loses_nothing,
    killing_authd_mid_publish_loses_nothing,
);

// ---------------------------------------------------------------------------
// NATS helpers

fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn jetstream_at(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach NATS at {url} ({e}). Start it with JetStream (`scripts/test` does: \
                 nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server) or set TEST_NATS_URL"
            )
        });
    jetstream::new(client)
}

/// A stream and subject prefix for one test alone; deleted when dropped.
struct TestStream {
    url: String,
    name: String,
    prefix: String,
}

impl TestStream {
    fn new() -> TestStream {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        TestStream { url: nats_url(), name: format!("AUTHD_TEST_{id}"), prefix: format!("authd_test_{id}.events") }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![("NATS_URL", &self.url), ("AUTHD_NATS_STREAM", &self.name), ("AUTHD_NATS_SUBJECT_PREFIX", &self.prefix)]
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(url).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            })
        })
        .join();
    }
}

/// A message as stored in a stream.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    msg_id: String,
    body: Value,
    raw: String,
}

/// Messages of `stream` from sequence `from` on (empty when the stream is missing).
async fn stored(js: &jetstream::Context, stream: &str, from: u64) -> Vec<Stored> {
    let Ok(mut handle) = js.get_stream(stream).await else { return vec![] };
    let state = handle.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence.max(from).max(1)..=state.last_sequence {
        let Ok(message) = handle.get_raw_message(sequence).await else { continue };
        let raw = String::from_utf8(message.payload.to_vec()).expect("utf-8 body");
        messages.push(Stored {
            subject: message.subject.to_string(),
            msg_id: message.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default(),
            body: serde_json::from_str(&raw).expect("a JSON body"),
            raw,
        });
    }
    messages
}

async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut handle) => handle.info().await.expect("stream info").state.last_sequence,
        Err(_) => 0,
    }
}

/// Polls `check` until it gives a value, or fails after `secs` seconds.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn msg_id(envelope: &Value) -> String {
    format!("{}:{}:{}", envelope["aggregate_type"].as_str().unwrap(), envelope["aggregate_id"].as_str().unwrap(), envelope["sequence"])
}

/// Waits until the stream holds as many messages as the server's log and the
/// relay reports no lag; returns the messages.
async fn all_published(server: &Server, js: &jetstream::Context, stream: &str, secs: u64) -> (Vec<Value>, Vec<Stored>) {
    eventually("every event of the log in the stream", secs, || async {
        let log = server.events().await;
        // Every committed event numbered (an open transaction elsewhere on a shared
        // PostgreSQL can hold the horizon back for a moment).
        let complete = log.len() == server.stored_events().await.len();
        let messages = stored(js, stream, 1).await;
        let ids: HashSet<String> = messages.iter().map(|m| m.msg_id.clone()).collect();
        let (_, ready) = server.call("GET", "/readyz", None, None).await;
        let caught_up = ready["audit_relay"]["lag_events"].as_i64() == Some(0);
        (complete && caught_up && log.iter().all(|e| ids.contains(&msg_id(e)))).then_some((log, messages))
    })
    .await
}

/// The stream holds each event of the log exactly once, in log order, as the
/// same envelope the HTTP API lists.
fn assert_published_once_in_order(log: &[Value], messages: &[Stored], prefix: &str) {
    let mut seen = HashMap::new();
    for message in messages {
        *seen.entry(message.msg_id.clone()).or_insert(0) += 1;
    }
    let doubles: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "published more than once: {doubles:?}");
    assert_eq!(messages.len(), log.len(), "one message per event");
    for (message, envelope) in messages.iter().zip(log) {
        assert_eq!(&message.body, envelope, "the same envelope, in the same order");
        assert_eq!(message.msg_id, msg_id(envelope));
        let subject = format!(
            "{prefix}.{}.{}",
            envelope["aggregate_type"].as_str().unwrap(),
            envelope["event_type"].as_str().unwrap()
        );
        assert_eq!(message.subject, subject);
    }
    let positions: Vec<i64> = log.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions increase: {positions:?}");
}

/// Checks an envelope against `openapi/audit-envelope.schema.json`: exactly the
/// listed fields, each of its type.
fn assert_matches_schema(envelope: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../../openapi/audit-envelope.schema.json")).expect("schema");
    let properties = schema["properties"].as_object().expect("properties");
    let object = envelope.as_object().expect("an envelope is an object");
    let mut keys: Vec<&String> = object.keys().collect();
    let mut expected: Vec<&String> = properties.keys().collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected, "{envelope}");
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(required.len(), properties.len());
    for (name, property) in properties {
        let value = &object[name];
        let ok = match property["type"].as_str().unwrap() {
            "integer" => value.is_i64(),
            "string" => value.is_string(),
            "object" => value.is_object(),
            other => panic!("schema type {other}"),
        };
        assert!(ok, "{name} is not {}: {envelope}", property["type"]);
    }
}

async fn lag_of(server: &Server) -> Value {
    let (status, ready) = server.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    ready["audit_relay"].clone()
}

async fn metric(server: &Server, name: &str) -> Option<i64> {
    let http = reqwest::Client::new();
    let anonymous = http.get(format!("{}/metrics", server.base)).send().await.expect("metrics");
    assert_eq!(anonymous.status().as_u16(), 401, "metrics are for the admin token only");
    let response = http.get(format!("{}/metrics", server.base)).bearer_auth(ADMIN).send().await.expect("metrics");
    let text = response.text().await.expect("text");
    text.lines().find_map(|line| line.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse().ok()))
}

// ---------------------------------------------------------------------------
// Private NATS servers, for tests that stop one

fn nats_server_binary() -> PathBuf {
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server"), PathBuf::from("/usr/local/bin/nats-server")])
        .collect::<Vec<_>>();
    candidates.into_iter().find(|path| path.is_file()).unwrap_or_else(|| {
        panic!("this test runs its own nats-server and cannot find one (install nats-server, e.g. apt-get install nats-server)")
    })
}

/// A `nats-server -js` of one test: it can be stopped and started again on the
/// same port and store directory.
struct PrivateNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let dir = std::env::temp_dir().join(format!("authd-test-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("nats store dir");
        let mut nats = PrivateNats { port, dir, child: None };
        nats.spawn().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("nats.log")).expect("log");
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        eventually("the private nats-server to listen", 20, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Stops the server the way an operator would (SIGTERM), and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Fills `count` signup tokens (each its own event).
async fn fill(server: &Server, count: u32) -> u16 {
    server.call("POST", "/v1/bucket/fill", Some(ADMIN), Some(json!({"bucket": "signup", "count": count}))).await.0
}

// ---------------------------------------------------------------------------
// The relay

async fn every_event_reaches_jetstream_as_its_envelope_in_log_order(backend: Backend) {
    let stream = TestStream::new();
    let server = Server::start_with(backend, &stream.env()).await;
    let js = jetstream_at(&stream.url).await;
    let username = unique("quentin");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let session = server.sign_in(&username).await;
    server.api().refresh(&session.refresh_token).await.expect("refresh");
    let (_, wrong) = client::Login::start(b"wrong password").expect("login");
    let _ = server.api().sign_in_start(&username, &wrong).await;

    let (log, messages) = all_published(&server, &js, &stream.name, 60).await;
    assert_published_once_in_order(&log, &messages, &stream.prefix);
    let types: HashSet<&str> = log.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    for expected in ["InviteTokenIssued", "InviteTokenRedeemed", "UsernameClaimed", "UserRegistered", "SessionOpened", "SessionRefreshed"] {
        assert!(types.contains(expected), "{expected} missing from {types:?}");
    }
    for message in &messages {
        assert_matches_schema(&message.body);
        // What an auditor does not get: OPAQUE records, token hashes, the username
        // and the email address.
        for withheld in ["registration_record", "refresh_hash", "sealed_secret", username.as_str(), email.as_str()] {
            assert!(!message.raw.contains(withheld), "{withheld} published in {}", message.raw);
        }
    }
    let registered = log.iter().find(|e| e["event_type"] == "UserRegistered").expect("UserRegistered");
    let fields = registered["payload"]["UserRegistered"].as_object().expect("payload");
    assert!(fields.contains_key("registered_at") && !fields.contains_key("registration_record"), "{registered}");
    // The account's client address only encrypted under its key (erased by removal).
    let address = registered["metadata"]["client_address"].as_str().expect("address");
    assert!(address.starts_with(&format!("enc:v1:{}:", registered["aggregate_id"].as_str().expect("id"))), "{registered}");

    let relay = lag_of(&server).await;
    assert_eq!(relay["state"], "publishing");
    assert_eq!(relay["lag_events"], 0);
    assert_eq!(relay["published_position"], log.last().unwrap()["position"]);
    assert_eq!(metric(&server, "authd_audit_relay_lag_events").await, Some(0));
    assert_eq!(metric(&server, "authd_audit_relay_publishing").await, Some(1));
}

/// With only `NATS_URL` set: stream `AUTHD_EVENTS`, subjects
/// `authd.events.<aggregate_type>.<event_type>`. The stream is shared, so this test
/// reads only the messages of its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_stream_and_subjects_are_the_contract() {
    let url = nats_url();
    let server = Server::start_with(Backend::Sqlite, &[("NATS_URL", &url)]).await;
    let js = jetstream_at(&url).await;
    eventually("the relay to publish", 30, || async { (lag_of(&server).await["state"] == "publishing").then_some(()) }).await;
    let mut handle = js.get_stream("AUTHD_EVENTS").await.expect("the relay creates AUTHD_EVENTS");
    let subjects = handle.info().await.expect("info").config.subjects.clone();
    assert!(subjects.contains(&"authd.events.>".to_string()), "{subjects:?}");
    let from = last_sequence(&js, "AUTHD_EVENTS").await + 1;
    assert_eq!(fill(&server, 3).await, 200);
    let log = server.events().await;
    let ids: HashSet<String> = log.iter().map(msg_id).collect();
    assert_eq!(ids.len(), 3);
    let ours = eventually("our three events on AUTHD_EVENTS", 30, || async {
        let ours: Vec<Stored> = stored(&js, "AUTHD_EVENTS", from).await.into_iter().filter(|m| ids.contains(&m.msg_id)).collect();
        (ours.len() >= 3).then_some(ours)
    })
    .await;
    assert_published_once_in_order(&log, &ours, "authd.events");
    assert!(ours.iter().all(|m| m.subject == "authd.events.invite_token.InviteTokenIssued"));
}

async fn a_nats_outage_under_load_loses_nothing(backend: Backend) {
    let mut nats = PrivateNats::start().await;
    let url = nats.url();
    let server = Server::start_with(backend, &[("NATS_URL", &url)]).await;
    let js = jetstream_at(&url).await;
    assert_eq!(fill(&server, 20).await, 200);
    all_published(&server, &js, "AUTHD_EVENTS", 60).await;

    // Load runs throughout: before, during and after the outage.
    let base = server.base.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let api = client::Api::new(&base);
        let mut rounds = 0;
        while !*stop_rx.borrow_and_update() {
            api.fill_bucket(ADMIN, "signup", 5).await.expect("writes go on while NATS is down");
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rounds
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = lag_of(&server).await;
    assert!(during["lag_events"].as_i64().unwrap_or(0) > 0, "events wait while NATS is down: {during}");
    assert!(metric(&server, "authd_audit_relay_lag_events").await.unwrap_or(0) > 0);
    nats.spawn().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_tx.send(true).expect("stop the load");
    let rounds = load.await.expect("load");
    assert!(rounds >= 10, "the load ran ({rounds} rounds)");

    let js = jetstream_at(&url).await;
    let (log, messages) = all_published(&server, &js, "AUTHD_EVENTS", 90).await;
    assert_eq!(log.len(), 20 + 5 * rounds, "every write is in the log");
    assert_published_once_in_order(&log, &messages, "authd.events");
}

async fn killing_authd_mid_publish_loses_nothing(backend: Backend) {
    let stream = TestStream::new();
    let mut server = Server::start_with(backend, &stream.env()).await;
    let js = jetstream_at(&stream.url).await;
    let base = server.base.clone();
    // One long burst: 3000 commands, published while they commit.
    let burst = tokio::spawn(async move {
        let api = client::Api::new(&base);
        let _ = api.fill_bucket(ADMIN, "signup", 3000).await;
    });
    let published_at_kill = eventually("the relay to be publishing the burst", 60, || async {
        let n = last_sequence(&js, &stream.name).await;
        (n >= 100).then_some(n)
    })
    .await;
    server.kill();
    let _ = burst.await;
    server.restart().await;
    let (log, messages) = all_published(&server, &js, &stream.name, 120).await;
    assert!(
        (published_at_kill as usize) < log.len(),
        "killed mid-publish: {published_at_kill} of {} published",
        log.len()
    );
    assert_published_once_in_order(&log, &messages, &stream.prefix);
}

/// Replicas on one PostgreSQL store: exactly one publishes (the advisory lock);
/// when it dies, another takes over from the shared checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_publishes_and_another_takes_over() {
    let stream = TestStream::new();
    let mut first = Server::start_with(Backend::Postgres, &stream.env()).await;
    let second = first.replica().await;
    let js = jetstream_at(&stream.url).await;
    let states = eventually("one publisher and one standby", 30, || async {
        let mut states = vec![lag_of(&first).await["state"].clone(), lag_of(&second).await["state"].clone()];
        states.sort_by_key(|s| s.to_string());
        (states == [json!("publishing"), json!("standby")]).then_some(states)
    })
    .await;
    assert_eq!(states.len(), 2);
    let publishing = [metric(&first, "authd_audit_relay_publishing").await, metric(&second, "authd_audit_relay_publishing").await];
    assert_eq!(publishing.iter().flatten().sum::<i64>(), 1, "{publishing:?}");
    let holders: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&first.database_url).await.expect("postgres");
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(0x6175_7468_645f_726c_i64)
        .fetch_one(&mut conn)
        .await
        .expect("pg_locks")
    };
    assert_eq!(holders, 1, "exactly one relay lock holder");
    assert_eq!(fill(&first, 10).await, 200);
    assert_eq!(fill(&second, 10).await, 200);
    all_published(&first, &js, &stream.name, 60).await;

    // Kill whichever publishes; the other takes over.
    let first_leads = lag_of(&first).await["state"] == "publishing";
    let survivor = if first_leads {
        first.kill();
        &second
    } else {
        drop(second);
        &first
    };
    assert_eq!(fill(survivor, 10).await, 200);
    eventually("the survivor to take over", 30, || async { (lag_of(survivor).await["state"] == "publishing").then_some(()) }).await;
    let (log, messages) = all_published(survivor, &js, &stream.name, 60).await;
    assert_eq!(log.len(), 30);
    assert_published_once_in_order(&log, &messages, &stream.prefix);
}

/// The Rust consumer of the README, as written there (a durable pull consumer that
/// acks each message), reads the events of a running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_consumer_reads_the_stream() {
    use futures::StreamExt;
    let stream_under_test = TestStream::new();
    let server = Server::start_with(Backend::Sqlite, &stream_under_test.env()).await;
    assert_eq!(fill(&server, 3).await, 200);
    let log = server.events().await;

    // README: "Subscribing", Rust.
    let client = async_nats::connect(stream_under_test.url.as_str()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = eventually("the relay to create the stream", 30, || async {
        js.get_stream(&stream_under_test.name).await.ok()
    })
    .await;
    let consumer = stream
        .get_or_create_consumer(
            "auditor",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("auditor".into()),
                filter_subject: format!("{}.invite_token.>", stream_under_test.prefix),
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut seen = HashSet::new();
    let mut received = Vec::new();
    while received.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("a message in time")
            .expect("the stream goes on")
            .expect("a message");
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
        let envelope: Value = serde_json::from_slice(&message.payload).expect("an envelope");
        if seen.insert(id) {
            received.push(envelope);
        }
        message.ack().await.expect("ack");
    }
    assert_eq!(received, log);
}

// ---------------------------------------------------------------------------
// The order

/// The case a position from a sequence gets wrong: an older transaction (smaller
/// id) takes a *higher* position and commits while a younger one, holding a lower
/// position, stays open. A consumer that checkpointed the higher position would
/// skip the lower one for ever. Both the HTTP consumer and the relay deliver both,
/// in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_never_lets_a_later_commit_skip_ahead() {
    use sqlx::Connection;
    let stream = TestStream::new();
    let server = Server::start_with(Backend::Postgres, &stream.env()).await;
    let js = jetstream_at(&stream.url).await;
    assert_eq!(fill(&server, 2).await, 200);
    let (_, before) = all_published(&server, &js, &stream.name, 60).await;
    let mut checkpoint = server.events().await.last().unwrap()["position"].as_i64().unwrap();

    let probe = |id: &str| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('probe', '{id}', 1, 'ProbeRecorded', '1', '{{\"ProbeRecorded\": {{}}}}', '{{}}') RETURNING position"
        )
    };
    let mut older = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
    let mut younger = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
    sqlx::query("BEGIN").execute(&mut older).await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut older).await.expect("older takes its id first");
    sqlx::query("BEGIN").execute(&mut younger).await.expect("begin");
    let low: i64 = sqlx::query_scalar(&probe("younger")).fetch_one(&mut younger).await.expect("insert");
    let high: i64 = sqlx::query_scalar(&probe("older")).fetch_one(&mut older).await.expect("insert");
    sqlx::query("COMMIT").execute(&mut older).await.expect("commit");
    assert!(high > low, "the committed event holds the higher raw position ({high} > {low})");

    // A tailing consumer: reads after its checkpoint, moves it to `next`.
    let mut delivered: Vec<Value> = Vec::new();
    let tail = |checkpoint: i64| {
        let server = &server;
        async move {
            let (status, page) = server.call("GET", &format!("/v1/admin/events?after={checkpoint}"), Some(ADMIN), None).await;
            assert_eq!(status, 200, "{page}");
            (page["events"].as_array().unwrap().clone(), page["next"].as_i64().unwrap())
        }
    };
    let probes = |events: &[Value]| -> Vec<String> {
        events.iter().filter(|e| e["aggregate_type"] == "probe").map(|e| e["aggregate_id"].as_str().unwrap().to_string()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probes(&delivered).contains(&"older".to_string()) {
        let (events, next) = tail(checkpoint).await;
        delivered.extend(events);
        checkpoint = next;
        assert!(Instant::now() < deadline, "the committed event is delivered while the other is open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probes(&delivered), ["older"], "the open transaction's event is not there yet, nothing skipped it");
    let published = eventually("the relay to publish the committed event", 30, || async {
        let probes: Vec<Stored> = stored(&js, &stream.name, 1).await.into_iter().filter(|m| m.msg_id.starts_with("probe:")).collect();
        (!probes.is_empty()).then_some(probes)
    })
    .await;
    assert_eq!(published.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(), ["probe:older:1"]);

    sqlx::query("COMMIT").execute(&mut younger).await.expect("commit the younger");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probes(&delivered).len() < 2 {
        let (events, next) = tail(checkpoint).await;
        delivered.extend(events);
        checkpoint = next;
        assert!(Instant::now() < deadline, "the late commit is delivered after the consumer's checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let (events, next) = tail(checkpoint).await;
        delivered.extend(events);
        checkpoint = next;
    }
    assert_eq!(probes(&delivered), ["older", "younger"], "both, in order, once");
    let positions: Vec<i64> = delivered.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    let (log, messages) = all_published(&server, &js, &stream.name, 60).await;
    assert_eq!(log.len(), before.len() + 2);
    assert_published_once_in_order(&log, &messages, &stream.prefix);
    let order: Vec<&str> = messages.iter().filter(|m| m.msg_id.starts_with("probe:")).map(|m| m.msg_id.as_str()).collect();
    assert_eq!(order, ["probe:older:1", "probe:younger:1"]);
}

// ---------------------------------------------------------------------------
// Events over HTTP

async fn events_over_http_page_filter_and_name_every_bad_parameter(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("ursula");
    let profile_id = server.sign_up(&username).await;
    assert_eq!(fill(&server, 120).await, 200);
    let all = server.events().await;
    assert!(all.len() >= 124, "{}", all.len());
    all.iter().for_each(assert_matches_schema);

    // Default limit 100; paging with any limit gives the same envelopes in order.
    let (status, page) = server.call("GET", "/v1/admin/events", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 100);
    assert_eq!(page["next"], page["events"][99]["position"]);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = server.call("GET", &format!("/v1/admin/events?after={after}&limit=7"), Some(ADMIN), None).await;
        let events = page["events"].as_array().unwrap().clone();
        after = page["next"].as_i64().unwrap();
        if events.is_empty() {
            break;
        }
        paged.extend(events);
    }
    assert_eq!(paged, all);
    assert_eq!(after, all.last().unwrap()["position"].as_i64().unwrap(), "next stays at the head");

    // Filters.
    let (_, users) = server.call("GET", &format!("/v1/admin/events?aggregate_id={profile_id}"), Some(ADMIN), None).await;
    let users = users["events"].as_array().unwrap().clone();
    assert!(!users.is_empty() && users.iter().all(|e| e["aggregate_id"] == profile_id.as_str()));
    assert_eq!(users[0]["event_type"], "UserRegistered");
    assert!(users[0]["payload"]["UserRegistered"].get("registration_record").is_none(), "{}", users[0]);
    let (_, issued) = server
        .call("GET", "/v1/admin/events?aggregate_type=invite_token&event_type=InviteTokenIssued&limit=1000", Some(ADMIN), None)
        .await;
    let issued = issued["events"].as_array().unwrap().clone();
    assert_eq!(issued.len(), 121);
    assert!(issued.iter().all(|e| e["aggregate_type"] == "invite_token" && e["event_type"] == "InviteTokenIssued"));
    let (_, none) = server.call("GET", "/v1/admin/events?event_type=NoSuchEvent", Some(ADMIN), None).await;
    assert_eq!(none["events"], json!([]));
    assert_eq!(none["next"], all.last().unwrap()["position"], "a filtered reader moves past what did not match");

    // Every bad parameter is named in one 422.
    let (status, body) =
        server.call("GET", "/v1/admin/events?after=-1&limit=1001&aggregate_type=&event_type=x", Some(ADMIN), None).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["after".into(), "limit".into(), "aggregate_type".into()]), "{body}");
    let (status, body) = server.call("GET", "/v1/admin/events?after=soon&limit=0", Some(ADMIN), None).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["after".into(), "limit".into()]), "{body}");
    let (status, body) = server.call("GET", "/v1/admin/events?limit=1.5", Some(ADMIN), None).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["limit".into()]), "{body}");

    // Admin only.
    let (status, _) = server.call("GET", "/v1/admin/events", Some("wrong"), None).await;
    assert_eq!(status, 401);
    let (status, _) = server.call("GET", "/v1/admin/events", None, None).await;
    assert_eq!(status, 401);
    let relay = lag_of(&server).await;
    assert_eq!(relay["state"], "disabled");
    assert_eq!(metric(&server, "authd_audit_relay_enabled").await, Some(0));
    assert_eq!(metric(&server, "authd_event_log_position").await, all.last().unwrap()["position"].as_i64());
}
