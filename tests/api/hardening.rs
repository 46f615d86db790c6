//! Hardening (issue 9): bounded request bodies, an absolute session lifetime, the
//! admin token's rules and the security headers, black-box on SQLite and PostgreSQL.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{unique, Backend, Server};

both_stores!(
    bodies_over_the_limit_are_refused_before_they_are_read,
    refreshing_never_extends_a_session_past_its_maximum_age,
    the_admin_token_is_long_and_guessing_it_is_throttled,
    every_answer_carries_security_headers_and_cors_is_opt_in,
    a_token_checked_before_is_refused_once_expired,
);

/// Token checks remember tokens whose signature checked out (src/app/sessions.rs):
/// a remembered token is still refused once it expires (after the 5 s leeway).
async fn a_token_checked_before_is_refused_once_expired(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ACCESS_TTL", "1")]).await;
    let username = unique("expiring");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let api = server.api();
    for _ in 0..2 {
        api.jwt_verify(&session.access_token).await.expect("a fresh token checks out, and again from memory");
    }
    tokio::time::sleep(Duration::from_millis(7_200)).await;
    let check = api.jwt_verify(&session.access_token).await;
    assert!(matches!(check, Err(client::Error::Http { status: 401, .. })), "expired: {check:?}");
}

/// Sends a chunked POST of `total` bytes (a JSON string that never ends) and returns
/// the status line of the answer, which may come before the body is all sent.
async fn chunked_post(server: &Server, path: &str, total: usize) -> String {
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'a'; 16 * 1024];
    let mut sent = 0;
    let mut first = true;
    while sent < total {
        let mut frame = format!("{:x}\r\n", chunk.len() + usize::from(first)).into_bytes();
        if first {
            frame.push(b'"');
            first = false;
        }
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break; // the server answered and closed: no need to send the rest
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()
}

async fn bodies_over_the_limit_are_refused_before_they_are_read(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_MAX_BODY_BYTES", "4096")]).await;
    let http = reqwest::Client::new();
    let post = |body: String| http.post(format!("{}/v1/token/refresh", server.base)).header("content-type", "application/json").body(body).send();

    // Declared too large: refused in the error shape.
    let big = format!("{{\"refresh_token\": \"{}\"}}", "a".repeat(5000));
    let response = post(big).await.expect("send");
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.expect("json error");
    assert_eq!((body["status"].as_u64(), body["error"].as_str()), (Some(413), Some("payload_too_large")), "{body}");

    // Under the limit: read and judged as usual.
    let response = post(json!({"refresh_token": "x"}).to_string()).await.expect("send");
    assert_eq!(response.status().as_u16(), 401, "a small body still reaches the route");

    // Chunked, with no length to judge by: refused once the limit is passed.
    assert!(chunked_post(&server, "/v1/token/refresh", 64 * 1024).await.contains(" 413 "), "chunked bodies are bounded too");

    // A flood of oversized chunked bodies leaves the server's memory flat.
    let before = server.rss_kib();
    let flood: Vec<_> = (0..16).map(|_| chunked_post(&server, "/v1/sign/up", 4 * 1024 * 1024)).collect();
    for status in futures::future::join_all(flood).await {
        assert!(status.contains(" 413 "), "{status}");
    }
    let after = server.rss_kib();
    assert!(after < before + 16 * 1024, "16 × 4 MiB bodies grew the server from {before} KiB to {after} KiB");
}

async fn refreshing_never_extends_a_session_past_its_maximum_age(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_SESSION_MAX_AGE", "3"), ("AUTHD_ACCESS_TTL", "900")]).await;
    let username = unique("short-lived");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    assert!(session.expires_in <= 3 && session.refresh_expires_in <= 3, "no token outlives the session: {session:?}");
    let api = server.api();
    let refreshed = api.refresh(&session.refresh_token).await.expect("a young session refreshes");
    assert!(refreshed.expires_in <= 3 && refreshed.refresh_expires_in <= 3, "{refreshed:?}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let late = api.refresh(&refreshed.refresh_token).await;
    assert!(matches!(late, Err(client::Error::Http { status: 401, .. })), "past its maximum age: {late:?}");
    let check = api.jwt_verify(&refreshed.access_token).await;
    assert!(matches!(check, Err(client::Error::Http { status: 401, .. })), "its access token too: {check:?}");
}

async fn the_admin_token_is_long_and_guessing_it_is_throttled(backend: Backend) {
    // Too short: the server refuses to start, saying why in one line.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .env_clear()
        .env("AUTHD_ADMIN_TOKEN", "short-token")
        .env("AUTHD_DATA_DIR", std::env::temp_dir().join(format!("authd-short-{}", unique("t"))))
        .env("AUTHD_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run authd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AUTHD_ADMIN_TOKEN is 11 characters; it must be at least 32"), "{stderr}");

    let server = Server::start(backend).await;
    let http = reqwest::Client::new();
    let events = |token: &str| http.get(format!("{}/v1/admin/events", server.base)).bearer_auth(token).send();
    assert_eq!(events(crate::helpers::ADMIN).await.expect("send").status().as_u16(), 200);
    for guess in 0..10 {
        let response = events(&format!("guess-{guess}")).await.expect("send");
        assert_eq!(response.status().as_u16(), 401, "wrong token {guess}");
    }
    // Past ten wrong tokens a minute: this address gets 429, even with the right token.
    for token in ["guess-11", crate::helpers::ADMIN] {
        let response = events(token).await.expect("send");
        assert_eq!(response.status().as_u16(), 429);
        assert!(response.headers().get("retry-after").is_some());
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "too_many_attempts");
    }
}

async fn every_answer_carries_security_headers_and_cors_is_opt_in(backend: Backend) {
    let allowed = "https://app.example.com";
    let server = Server::start_with(backend, &[("AUTHD_CORS_ORIGINS", allowed)]).await;
    let http = reqwest::Client::new();
    let username = unique("headers");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;

    let refresh = http
        .post(format!("{}/v1/token/refresh", server.base))
        .json(&json!({"refresh_token": session.refresh_token}))
        .send()
        .await
        .expect("refresh");
    let errors = http.get(format!("{}/v1/no-such-route", server.base)).send().await.expect("404");
    for (what, response) in [("a token answer", &refresh), ("an error", &errors)] {
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"), "{what}");
    }
    assert_eq!(refresh.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"), "tokens are never cached");
    let docs = http.get(format!("{}/docs/", server.base)).send().await.expect("docs");
    let policy = docs.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src"), "{policy}");

    // CORS: the configured origin may call; another origin gets no permission.
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/v1/token/refresh", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight(allowed).await.expect("preflight");
    assert_eq!(ok.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(allowed));
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none(), "an unlisted origin is not allowed");

    // Without AUTHD_CORS_ORIGINS no origin is allowed.
    let plain = Server::start(backend).await;
    let answer = http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/token/refresh", plain.base))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(answer.headers().get("access-control-allow-origin").is_none());
}
