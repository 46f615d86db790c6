//! `authd replay` against a real server's store, on SQLite and PostgreSQL.
//!
//! The replay subcommands run while the server runs, on the same store: they only
//! read (SQLite is in WAL mode, so readers never block the server), except
//! `rebuild --swap`, which takes the locks a fold takes. Tampering is done the way an
//! intruder with database access would: SQL straight on the store.

use std::time::{Duration, Instant};

use client::Login;
use crate::helpers::{bogus_ke3, replay, replay_ok, unique, Backend, Server, PASSWORD};
use serde_json::{json, Value};
use sqlx::Connection;

both_stores!(
    events_export_with_filters,
    timeline_tells_an_account_history,
    state_at_a_position_before_and_after_a_change,
    rebuild_finds_a_tampered_read_model_and_swap_fixes_it,
    a_clean_log_verifies,
    verify_names_an_edited_payload,
    verify_catches_a_tail_deleted_after_a_seal,
);

/// stdout of a replay that must exit non-zero.
fn replay_fails(server: &Server, args: &[&str]) -> String {
    let output = replay(server, args);
    assert!(
        !output.status.success(),
        "authd replay {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn exported(server: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events"];
    all.extend_from_slice(args);
    replay_ok(server, &all).lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
}

/// Runs one statement on the server's store, as an intruder would.
async fn sql(server: &Server, statement: &str) -> u64 {
    match server.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("open sqlite");
            sqlx::query(statement).execute(&mut conn).await.expect(statement).rows_affected()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("open postgres");
            sqlx::query(statement).execute(&mut conn).await.expect(statement).rows_affected()
        }
    }
}

async fn count(server: &Server, query: &str) -> i64 {
    match server.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("open sqlite");
            sqlx::query_scalar(query).fetch_one(&mut conn).await.expect(query)
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("open postgres");
            sqlx::query_scalar(query).fetch_one(&mut conn).await.expect(query)
        }
    }
}

/// Replaces `from` with `to` in the payload of the matching events.
async fn edit_payload(server: &Server, condition: &str, from: &str, to: &str) -> u64 {
    let statement = match server.backend {
        Backend::Sqlite => format!("UPDATE events SET payload = replace(payload, '{from}', '{to}') WHERE {condition}"),
        Backend::Postgres => format!(
            "UPDATE events SET payload = CAST(replace(CAST(payload AS text), '{from}', '{to}') AS json) WHERE {condition}"
        ),
    };
    sql(server, &statement).await
}

/// A sign-in that fails at KE3 (the server records a wrong password).
async fn failed_sign_in(server: &Server, username: &str) {
    let (_login, ke1) = Login::start(PASSWORD).expect("login start");
    let (sign_in_id, _ke2) = server.api().sign_in_start(username, &ke1).await.expect("ke2");
    let (status, _) = server
        .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": bogus_ke3()})))
        .await;
    assert_eq!(status, 401);
}

fn positions(events: &[Value]) -> Vec<i64> {
    events.iter().map(|event| event["position"].as_i64().expect("position")).collect()
}

async fn events_export_with_filters(backend: Backend) {
    let server = Server::start(backend).await;
    let first = unique("first");
    let first_id = server.sign_up(&first).await;
    // recorded_at has millisecond precision on SQLite: keep the two apart.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = unique("second");
    server.sign_up(&second).await;
    server.sign_in(&second).await;

    let all = exported(&server, &[]);
    let envelope = ["position", "aggregate_type", "aggregate_id", "sequence", "event_type", "event_version", "recorded_at", "metadata", "payload"];
    for event in &all {
        let keys: Vec<&str> = event.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), envelope.len(), "{event}");
        for key in envelope {
            assert!(keys.contains(&key), "{key} missing from {event}");
        }
    }
    let all_positions = positions(&all);
    assert!(all_positions.windows(2).all(|pair| pair[0] < pair[1]), "log order: {all_positions:?}");
    assert_eq!(all.iter().filter(|e| e["event_type"] == "UserRegistered").count(), 2);
    assert_eq!(all[0]["metadata"]["client_address"], "127.0.0.1");

    let user = exported(&server, &["--aggregate-type", "user", "--aggregate-id", &first_id]);
    assert_eq!(user.len(), 1, "{user:?}");
    assert_eq!(user[0]["event_type"], "UserRegistered");
    assert_eq!(user[0]["payload"]["UserRegistered"]["username"], first.to_lowercase());
    assert_eq!(user[0]["sequence"], 1);

    let opened = exported(&server, &["--event-type", "SessionOpened"]);
    assert_eq!(opened.len(), 1);
    assert!(opened.iter().all(|e| e["aggregate_type"] == "session"));

    let sessions = exported(&server, &["--aggregate-type", "session"]);
    assert_eq!(sessions.len(), 1);

    let (from, to) = (all_positions[2], all_positions[5]);
    let range = exported(&server, &["--from", &from.to_string(), "--to", &to.to_string()]);
    assert_eq!(positions(&range), all_positions[2..=5].to_vec());

    let since = between.to_rfc3339();
    let later = exported(&server, &["--since", &since]);
    assert!(!later.is_empty() && later.len() < all.len());
    assert!(later.iter().all(|e| e["aggregate_id"] != first_id.as_str()), "the first account's events are older");
    assert!(later.iter().any(|e| e["event_type"] == "SessionOpened"));
    let earlier = exported(&server, &["--until", &since]);
    assert_eq!(earlier.len() + later.len(), all.len());
    assert!(earlier.iter().any(|e| e["aggregate_id"] == first_id.as_str()));
}

async fn timeline_tells_an_account_history(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("Timeline");
    let token = server.invitation().await;
    let profile_id =
        server.api().sign_up(&username, PASSWORD, Some(&token), Some("tl@example.com")).await.expect("sign up");
    let session = server.sign_in(&username).await;
    let refreshed = server.api().refresh(&session.refresh_token).await.expect("refresh");
    assert_eq!(server.api().sign_out(&refreshed.access_token, false).await.expect("sign out"), 1);
    failed_sign_in(&server, &username).await;
    let session = server.sign_in(&username).await;
    let (status, enrollment) = server.call("POST", "/v1/mfa/totp/generate", Some(&session.access_token), None).await;
    assert_eq!(status, 200, "{enrollment}");
    let code = crate::helpers::totp_code(&crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret")), 0);
    let (status, body) =
        server.call("POST", "/v1/mfa/totp/enable", Some(&session.access_token), Some(json!({"code": code}))).await;
    assert_eq!(status, 204, "{body}");
    // Someone else's history stays out of it.
    let other = unique("other");
    server.sign_up(&other).await;
    server.sign_in(&other).await;

    // By username, typed differently from the sign-up (it is normalised).
    let text = replay_ok(&server, &["timeline", &username.to_uppercase()]);
    let lines: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
    let expected = [
        "signed up as",
        "signed in (password)",
        "session opened (pwd)",
        "session refreshed",
        "signed out",
        "sign-in attempt counted (1 from this address)",
        "sign-in failed: wrong password",
        "signed in (password)",
        "MFA: TOTP secret generated",
        "MFA: TOTP enabled",
    ];
    let mut at = 0;
    for wanted in expected {
        let found = lines[at..].iter().position(|line| line.contains(wanted));
        let Some(offset) = found else { panic!("{wanted:?} missing (in order) from the timeline:\n{text}") };
        at += offset + 1;
    }
    let signed_up = lines.iter().find(|line| line.contains("signed up as")).expect("sign-up line");
    assert!(signed_up.contains(&username.to_lowercase()) && signed_up.contains("tl@example.com"), "{signed_up}");
    let signed_in = lines.iter().find(|line| line.contains("signed in (password)")).expect("sign-in line");
    assert!(signed_in.contains("from 127.0.0.1"), "client address: {signed_in}");
    assert!(!text.contains(&other.to_lowercase()), "another account leaked in:\n{text}");

    // By profile id, as JSON lines: the same events (the username's claim names the
    // profile id), in log order.
    let json_lines: Vec<Value> = replay_ok(&server, &["timeline", &profile_id, "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    let by_id = positions(&json_lines);
    assert!(by_id.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(json_lines.iter().all(|e| e["description"].is_string()));
    assert!(json_lines.iter().any(|e| e["event_type"] == "SessionSignedOut"));
    assert!(json_lines.iter().any(|e| e["aggregate_type"] == "sign_in" && e["event_type"] == "SignInFailed"));
    assert!(json_lines.iter().any(|e| e["aggregate_type"] == "mfa" && e["event_type"] == "TotpEnabled"));
    assert_eq!(json_lines.len(), lines.len(), "the same history by username and by profile id");

    let output = replay(&server, &["timeline", "nobody-here"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no account has held the username"));
}

async fn state_at_a_position_before_and_after_a_change(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("state");
    let profile_id = server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    assert_eq!(server.api().sign_out(&session.access_token, false).await.expect("sign out"), 1);

    let signed_out = exported(&server, &["--event-type", "SessionSignedOut"]);
    assert_eq!(signed_out.len(), 1);
    let session_id = signed_out[0]["aggregate_id"].as_str().expect("id").to_string();
    let position = signed_out[0]["position"].as_i64().expect("position");

    let at = |bound: String| -> Value {
        let out = replay_ok(&server, &["state", "session", &session_id, "--at", &bound]);
        serde_json::from_str(&out).expect("state JSON")
    };
    let before = at((position - 1).to_string());
    assert_eq!(before["events_applied"], 1);
    assert_eq!(before["state"]["ended"], false);
    assert_eq!(before["state"]["profile_id"], profile_id.as_str());
    let after = at(position.to_string());
    assert_eq!(after["events_applied"], 2);
    assert_eq!(after["last_position"], position);
    assert_eq!(after["state"]["ended"], true);

    // A time bound works the same way.
    let recorded_at = signed_out[0]["recorded_at"].as_str().expect("recorded_at").to_string();
    assert_eq!(at(recorded_at)["state"]["ended"], true);
    let long_ago = at("2000-01-01T00:00:00Z".to_string());
    assert_eq!(long_ago["events_applied"], 0);
    assert_eq!(long_ago["state"]["profile_id"], Value::Null);

    let now: Value = serde_json::from_str(&replay_ok(&server, &["state", "user", &profile_id])).expect("JSON");
    assert_eq!(now["state"]["username"], username.to_lowercase());
    let output = replay(&server, &["state", "nonsense", "x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown aggregate type"));
}

async fn rebuild_finds_a_tampered_read_model_and_swap_fixes_it(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("rebuild");
    let token = server.invitation().await;
    let profile_id =
        server.api().sign_up(&username, PASSWORD, Some(&token), Some("rb@example.com")).await.expect("sign up");
    let session = server.sign_in(&username).await;

    let healthy = replay_ok(&server, &["rebuild"]);
    assert!(healthy.contains("no differences"), "{healthy}");

    let changed =
        sql(&server, &format!("UPDATE users_view SET email = 'evil@example.com' WHERE profile_id = '{profile_id}'")).await;
    assert_eq!(changed, 1);
    assert_eq!(sql(&server, "DELETE FROM sessions_view").await, 1);
    let report = replay_fails(&server, &["rebuild"]);
    assert!(report.contains("users_view: 1 rows differ"), "{report}");
    assert!(report.contains(&format!("profile_id={profile_id}: email: live evil@example.com, rebuilt rb@example.com")), "{report}");
    assert!(report.contains("sessions_view: 1 rows differ") && report.contains("missing from the live table"), "{report}");
    assert!(report.contains("2 differences"), "{report}");
    // Only a report: the live read model is still the tampered one.
    assert_eq!(server.api().user(&session.access_token).await.expect("user").email.as_deref(), Some("evil@example.com"));

    let swapped = replay_ok(&server, &["rebuild", "--swap"]);
    assert!(swapped.contains("swapped"), "{swapped}");
    assert_eq!(server.api().user(&session.access_token).await.expect("user").email.as_deref(), Some("rb@example.com"));
    let again = replay_ok(&server, &["rebuild"]);
    assert!(again.contains("no differences"), "{again}");
    // The server keeps folding into the swapped tables.
    assert_eq!(server.api().sign_out(&session.access_token, false).await.expect("sign out"), 1);
    let after = replay_ok(&server, &["rebuild"]);
    assert!(after.contains("no differences"), "{after}");
}

/// Waits until the server has sealed the log with `aggregate_id` at `sequence`.
async fn wait_for_seal(server: &Server, aggregate_id: &str, sequence: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = format!("SELECT COUNT(*) FROM chain_heads WHERE aggregate_id = '{aggregate_id}' AND sequence = {sequence}");
    while count(server, &query).await == 0 {
        assert!(Instant::now() < deadline, "no seal covered {aggregate_id}#{sequence}:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_clean_log_verifies(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_SEAL_INTERVAL", "1")]).await;
    let username = unique("clean");
    let profile_id = server.sign_up(&username).await;
    failed_sign_in(&server, &username).await;
    let session = server.sign_in(&username).await;
    server.api().refresh(&session.refresh_token).await.expect("refresh");

    // Hashed and linked as they were written.
    let unhashed = count(&server, "SELECT COUNT(*) FROM events WHERE hash IS NULL OR prev_hash IS NULL").await;
    assert_eq!(unhashed, 0);
    let out = replay_ok(&server, &["verify"]);
    assert!(out.contains("ok: every link holds"), "{out}");

    // Sealed, too.
    let user_events = count(&server, &format!("SELECT COUNT(*) FROM events WHERE aggregate_id = '{profile_id}' AND aggregate_type = 'user'")).await;
    wait_for_seal(&server, &profile_id, user_events).await;
    let out = replay_ok(&server, &["verify"]);
    assert!(out.contains("ok: every link holds and the log extends the latest seal"), "{out}");
    assert!(out.contains("latest seal: #"), "{out}");
}

async fn verify_names_an_edited_payload(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("victim");
    let profile_id = server.sign_up(&username).await;
    server.sign_in(&username).await;
    let out = replay_ok(&server, &["verify"]);
    assert!(out.contains("ok: every link holds"), "{out}");

    // Rename the account in its registration event (its username is stored
    // encrypted, see src/store/shred.rs: swap the ciphertext).
    let name = format!("enc:v1:{profile_id}:");
    let edited = edit_payload(&server, &format!("aggregate_type = 'user' AND aggregate_id = '{profile_id}' AND event_type = 'UserRegistered'"), &name, &format!("{name}bWFsbG9yeQ")).await;
    assert_eq!(edited, 1);
    let out = replay_fails(&server, &["verify"]);
    let first = out.lines().find(|line| line.starts_with("first broken link:")).unwrap_or_else(|| panic!("{out}"));
    assert!(first.contains(&format!("user/{profile_id} sequence 1")), "{out}");
    assert!(first.contains("content no longer matches its hash"), "{out}");
    assert!(out.contains("BROKEN: 1 problems"), "exactly the edited event: {out}");
}

async fn verify_catches_a_tail_deleted_after_a_seal(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_SEAL_INTERVAL", "1"), ("AUTHD_SEAL_FULL_CHECK_INTERVAL", "1")]).await;
    let username = unique("tail");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    assert_eq!(server.api().sign_out(&session.access_token, false).await.expect("sign out"), 1);
    let signed_out = exported(&server, &["--event-type", "SessionSignedOut"]);
    let session_id = signed_out[0]["aggregate_id"].as_str().expect("id").to_string();
    wait_for_seal(&server, &session_id, 2).await;
    let out = replay_ok(&server, &["verify"]);
    assert!(out.contains("the log extends the latest seal"), "{out}");

    // Hide the sign-out: the chain that is left is intact, only the seal knows.
    let deleted = sql(
        &server,
        &format!("DELETE FROM events WHERE aggregate_type = 'session' AND aggregate_id = '{session_id}' AND sequence = 2"),
    )
    .await;
    assert_eq!(deleted, 1);
    let out = replay_fails(&server, &["verify"]);
    let first = out.lines().find(|line| line.starts_with("first broken link:")).unwrap_or_else(|| panic!("{out}"));
    assert!(first.contains(&format!("session/{session_id} sequence 2")), "{out}");
    assert!(first.contains("it now ends at 1: event 2 was deleted"), "{out}");

    // The server does not seal over it; it says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("refusing to seal") {
        assert!(Instant::now() < deadline, "the server should refuse to seal:\n{}", server.log());
        // Found by the full check (a deletion numbers nothing new for the others).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.log().contains(&format!("session/{session_id}: sealed at sequence 2, now ends at 1")));
}
