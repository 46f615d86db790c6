//! Throttling of failed proofs, per account and client address: a throttled address
//! gets the answer an unknown username gets (a KE2 no password can finish), other
//! addresses go on, attempts are counted as they begin — concurrent ones each — and
//! an unknown username writes the same events as a known one. Addresses come
//! through `X-Forwarded-For` from the loopback proxy the server is told to trust.

use client::Login;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{unique, Backend, Server, PASSWORD};

both_stores!(
    a_throttled_address_cannot_finish_while_another_can,
    a_success_starts_the_count_again_and_the_block_ends,
    abandoned_and_concurrent_attempts_each_count,
    an_unknown_username_writes_the_same_events_as_a_known_one,
    one_hot_account_signs_in_concurrently_without_errors,
);

/// What a complete sign-in from `address` ends in.
#[derive(Debug, PartialEq)]
enum Outcome {
    Session,
    /// The server refused the finish with this status.
    Refused(u16),
    /// The KE2 cannot be finished with this password: a wrong one, an unknown
    /// username, or a throttled address — the client cannot tell which.
    Unfinishable,
}

async fn start(backend: Backend, threshold: &str, backoff_secs: &str) -> Server {
    Server::start_with(
        backend,
        &[
            ("AUTHD_TRUSTED_PROXIES", "127.0.0.1,::1"),
            ("AUTHD_LOCKOUT_THRESHOLD", threshold),
            ("AUTHD_LOCKOUT_DURATION", backoff_secs),
        ],
    )
    .await
}

async fn post_from(server: &Server, address: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .header("x-forwarded-for", address)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// KE1 from `address`; the client's state and the server's answer.
async fn begin(server: &Server, username: &str, password: &[u8], address: &str) -> (Login, Value) {
    let (login, ke1) = Login::start(password).expect("start");
    let (status, body) =
        post_from(server, address, "/v1/sign/in", json!({"username": username, "credential_request": ke1})).await;
    assert_eq!(status, 200, "KE1 is always answered: {body}");
    (login, body)
}

async fn sign_in_from(server: &Server, username: &str, password: &[u8], address: &str) -> Outcome {
    let (login, answer) = begin(server, username, password, address).await;
    let Ok((ke3, _)) = login.finish(password, answer["credential_response"].as_str().expect("ke2")) else {
        return Outcome::Unfinishable;
    };
    let body = json!({"sign_in_id": answer["sign_in_id"], "credential_finalization": ke3});
    match post_from(server, address, "/v1/sign/in/finish", body).await {
        (200, _) => Outcome::Session,
        (status, _) => Outcome::Refused(status),
    }
}

const A: &str = "198.51.100.7";
const B: &str = "2001:db8:5:6::1";

async fn a_throttled_address_cannot_finish_while_another_can(backend: Backend) {
    let server = start(backend, "3", "60").await;
    let username = unique("throttled");
    server.sign_up(&username).await;
    for _ in 0..3 {
        assert_eq!(sign_in_from(&server, &username, b"a wrong guess", A).await, Outcome::Unfinishable);
    }
    // Throttled: even the right password cannot finish — the answer is an unknown
    // user's, so it does not confirm a guess.
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Unfinishable);
    assert_eq!(sign_in_from(&server, &unique("nobody"), PASSWORD, A).await, Outcome::Unfinishable);
    // Another address is not throttled, and another /64 is another address.
    assert_eq!(sign_in_from(&server, &username, PASSWORD, B).await, Outcome::Session);
    // The same /64 is the same address.
    for _ in 0..3 {
        assert_eq!(sign_in_from(&server, &username, b"a wrong guess", "2001:db8:7:8::1").await, Outcome::Unfinishable);
    }
    assert_eq!(sign_in_from(&server, &username, PASSWORD, "2001:db8:7:8:ffff::2").await, Outcome::Unfinishable);
    // A forged X-Forwarded-For from an untrusted peer is ignored: the peer counts.
    let untrusted = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2")]).await;
    let name = unique("forged");
    untrusted.sign_up(&name).await;
    for n in 0..2 {
        assert_eq!(sign_in_from(&untrusted, &name, b"wrong", &format!("203.0.113.{n}")).await, Outcome::Unfinishable);
    }
    assert_eq!(sign_in_from(&untrusted, &name, PASSWORD, "203.0.113.99").await, Outcome::Unfinishable);
}

async fn a_success_starts_the_count_again_and_the_block_ends(backend: Backend) {
    let server = start(backend, "3", "2").await;
    let username = unique("backoff");
    server.sign_up(&username).await;
    for _ in 0..2 {
        assert_eq!(sign_in_from(&server, &username, b"wrong", A).await, Outcome::Unfinishable);
    }
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Session, "two failures: not yet");
    for _ in 0..3 {
        assert_eq!(sign_in_from(&server, &username, b"wrong", A).await, Outcome::Unfinishable);
    }
    // Blocked for 2 s; the refused attempt counts too and doubles the wait to 4 s.
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Unfinishable);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Unfinishable, "the back-off grew");
    tokio::time::sleep(std::time::Duration::from_millis(8200)).await;
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Session, "the block ends");
}

async fn abandoned_and_concurrent_attempts_each_count(backend: Backend) {
    let server = start(backend, "8", "60").await;
    let username = unique("burst");
    server.sign_up(&username).await;
    // Eight KE1s at once, none ever finished: each counts, none races the count.
    let burst = (0..8).map(|_| begin(&server, &username, b"a guess", A));
    for (_, answer) in join_all(burst).await {
        assert!(answer["sign_in_id"].is_string());
    }
    assert_eq!(sign_in_from(&server, &username, PASSWORD, A).await, Outcome::Unfinishable);
    assert_eq!(sign_in_from(&server, &username, PASSWORD, B).await, Outcome::Session);
    let attempts: Vec<Value> =
        server.stored_events().await.into_iter().filter(|(_, event, _)| event == "ProofAttempted").map(|e| e.2).collect();
    assert_eq!(attempts.len(), 10, "every attempt is in the log: {attempts:?}");
    let refused = attempts.iter().filter(|e| e["ProofAttempted"]["allowed"] == json!(false)).count();
    assert_eq!(refused, 1, "only the ninth from the same address was refused");
}

/// The event types the next KE1 for `username` writes.
async fn written_by_one_attempt(server: &Server, username: &str) -> Vec<String> {
    let before = server.stored_events().await.len();
    begin(server, username, PASSWORD, A).await;
    let mut types: Vec<String> = server.stored_events().await.into_iter().skip(before).map(|e| e.1).collect();
    types.sort();
    types
}

async fn an_unknown_username_writes_the_same_events_as_a_known_one(backend: Backend) {
    let server = start(backend, "10", "60").await;
    let username = unique("known");
    server.sign_up(&username).await;
    let known = written_by_one_attempt(&server, &username).await;
    let unknown = written_by_one_attempt(&server, &unique("unknown")).await;
    assert_eq!(known, ["ProofAttempted", "SignInStarted"]);
    assert_eq!(known, unknown);
}

/// Many workers sharing one account: their attempts and successes all land on the
/// account's throttle stream at once. Every one is answered, none with an error.
async fn one_hot_account_signs_in_concurrently_without_errors(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "10000"), ("AUTHD_THROTTLE_CEILING", "100000")]).await;
    let username = unique("service");
    server.sign_up(&username).await;
    let api = server.api();
    let starts = join_all((0..16).map(|_| async {
        let (login, ke1) = Login::start(PASSWORD).expect("start");
        (login, api.sign_in_start(&username, &ke1).await.expect("KE1 answered"))
    }))
    .await;
    let finals: Vec<(String, String)> = starts
        .into_iter()
        .map(|(login, (sign_in_id, ke2))| (sign_in_id, login.finish(PASSWORD, &ke2).expect("a real KE2").0))
        .collect();
    let finished = join_all(finals.iter().map(|(sign_in_id, ke3)| api.sign_in_finish(sign_in_id, ke3))).await;
    for outcome in finished {
        assert!(matches!(outcome, Ok(client::SignInOutcome::Session(_))), "{outcome:?}");
    }
}
