//! The binary's own commands: the spec it prints, start-up failures, the CLI flow.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::{unique, Backend, Server, ADMIN};

fn authd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_authd"))
}

#[test]
fn the_committed_spec_matches_the_code() {
    let output = authd().arg("openapi").output().expect("run authd openapi");
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml"))
        .expect("openapi/openapi.yaml is committed");
    assert!(
        generated == committed,
        "openapi/openapi.yaml is out of date: run `cargo run -- openapi > openapi/openapi.yaml`"
    );
}

#[test]
fn an_unreachable_store_is_one_clear_line_and_a_failure() {
    let output = authd()
        .env("DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/nothing")
        .env("AUTHD_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run authd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("authd: cannot open the event store at postgres://postgres:***@127.0.0.1:1/nothing"), "{stderr}");
    assert!(!stderr.contains("secret") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_inconsistent_relying_party_refuses_to_start() {
    let data = std::env::temp_dir().join(unique("authd-rp"));
    for (rp_id, origins, why) in [
        ("example.com", "https://evil.example.org", "is not on the RP ID example.com"),
        ("example.com", "http://example.com", "must be https"),
    ] {
        let output = authd()
            .env("AUTHD_DATA_DIR", &data)
            .env("AUTHD_LISTEN", "127.0.0.1:0")
            .env("AUTHD_WEBAUTHN_RP_ID", rp_id)
            .env("AUTHD_WEBAUTHN_ORIGINS", origins)
            .output()
            .expect("run authd");
        assert!(!output.status.success(), "{rp_id} / {origins} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.lines().last().unwrap_or_default().contains(why), "{stderr}");
    }
    std::fs::remove_dir_all(data).ok();
}

#[tokio::test]
async fn switched_off_methods_answer_403_and_the_spec_says_so() {
    let server = Server::start_with(Backend::Sqlite, &[("AUTHD_SIGN_IN_METHODS", "password,pat")]).await;
    for (path, body) in [
        ("/v1/sign/in/webauthn", serde_json::json!({})),
        ("/v1/sign/up/webauthn", serde_json::json!({"username": "someone"})),
        ("/v1/sign/in/otp/email", serde_json::json!({"email": "a@example.com"})),
        ("/v1/sign/in/passwordless/sms", serde_json::json!({"phone_number": "+14155550100"})),
        ("/v1/sign/in/passwordless/email", serde_json::json!({"email": "a@example.com"})),
        ("/v1/verify", serde_json::json!({"ticket": "x"})),
    ] {
        let (status, answer) = server.call("POST", path, None, Some(body)).await;
        assert_eq!((status, answer["error"].as_str()), (403, Some("method_disabled")), "{path}: {answer}");
    }
    let username = unique("methods");
    server.sign_up(&username).await;
    server.sign_in(&username).await;
    let (status, _) = server.call("POST", "/v1/sign/in/pat", None, Some(serde_json::json!({"personal_access_token": "x"}))).await;
    assert_eq!(status, 401, "pat is on");
    let (_, spec) = server.call("GET", "/openapi.json", None, None).await;
    let description = spec["info"]["description"].as_str().expect("description");
    assert!(description.contains("Sign-in methods on: password, pat; off"), "{description}");
    assert!(description.contains("passkey, email_code, sms_code, email_link, idtoken, anonymous"), "{description}");

    let output = authd().env("AUTHD_LISTEN", "127.0.0.1:0").env("AUTHD_SIGN_IN_METHODS", "password,carrier-pigeon").output().expect("run authd");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown method \"carrier-pigeon\""));
}

#[test]
fn an_unknown_store_scheme_is_refused() {
    let output = authd().env("DATABASE_URL", "mysql://localhost/x").output().expect("run authd");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsupported DATABASE_URL"));
}

/// Runs a client subcommand against `server`, feeding `stdin`; returns stdout.
pub(crate) fn run(server: &Server, args: &[&str], stdin: &str) -> String {
    let output = output_of(server, args, stdin);
    assert!(output.status.success(), "authd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Runs a client subcommand against `server`, feeding `stdin`, whatever its fate.
fn output_of(server: &Server, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = authd()
        .args(args)
        .env("AUTHD_URL", &server.base)
        .env("AUTHD_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walk_through_works() {
    let server = Server::start(Backend::Sqlite).await;
    let tokens = tokio::task::block_in_place(|| run(&server, &["fill", "--count", "1"], ""));
    let token = tokens.trim();
    let username = unique("walker");
    tokio::task::block_in_place(|| {
        let signed_up = run(&server, &["sign-up", "--username", &username, "--token", token], "pass phrase\n");
        let profile_id = serde_json::from_str::<serde_json::Value>(&signed_up).expect("json")["profile_id"].clone();
        let session: serde_json::Value =
            serde_json::from_str(&run(&server, &["sign-in", "--username", &username], "pass phrase\n")).expect("json");
        assert_eq!(session["profile_id"], profile_id);
        let access = session["access_token"].as_str().expect("access token");
        let verified: serde_json::Value =
            serde_json::from_str(&run(&server, &["verify", "--access-token", access], "")).expect("json");
        assert_eq!(verified["profile_id"], profile_id);
        let refreshed: serde_json::Value = serde_json::from_str(&run(
            &server,
            &["refresh", "--refresh-token", session["refresh_token"].as_str().expect("refresh")],
            "",
        ))
        .expect("json");
        // A second session, listed, then ended from the first.
        let other: serde_json::Value =
            serde_json::from_str(&run(&server, &["sign-in", "--username", &username], "pass phrase\n")).expect("json");
        let access = refreshed["access_token"].as_str().expect("a");
        let sessions: serde_json::Value = serde_json::from_str(&run(&server, &["sessions", "--access-token", access], "")).expect("json");
        assert_eq!(sessions.as_array().map(Vec::len), Some(2), "{sessions}");
        let other_id = sessions[0]["session_id"].as_str().expect("id");
        assert_eq!(sessions[0]["current"], false);
        run(&server, &["sessions", "--access-token", access, "--end", other_id], "");
        let ended = output_of(&server, &["verify", "--access-token", other["access_token"].as_str().expect("a")], "");
        assert!(!ended.status.success(), "the ended session's token is refused");
        // The password changes (the sign-in is recent); the old one no longer signs in.
        let fresh: serde_json::Value =
            serde_json::from_str(&run(&server, &["sign-in", "--username", &username], "pass phrase\n")).expect("json");
        run(&server, &["change-password", "--access-token", fresh["access_token"].as_str().expect("a")], "new pass phrase\n");
        let old = output_of(&server, &["sign-in", "--username", &username], "pass phrase\n");
        assert!(!old.status.success(), "the old password is refused");
        run(&server, &["sign-in", "--username", &username], "new pass phrase\n");
        let out = run(&server, &["sign-out", "--access-token", fresh["access_token"].as_str().expect("a")], "");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("json")["revoked"], 1);
    });
}
