//! Personal access tokens: created (elevated, shown once), listed, used to sign in
//! (`amr` `["pat"]`), revoked; wrong, revoked and expired tokens refused and counted
//! on the throttle — black-box on both stores, and through the CLI.

use serde_json::{json, Value};

use crate::elevation::{error_of, let_it_grow_old, stale_server};
use crate::helpers::{detail_paths, unique, Backend, Server};
use crate::security::claims;

both_stores!(
    a_token_is_created_once_signs_in_and_is_revoked,
    pat_rejections_and_throttling,
);

fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339()
}

async fn create(server: &Server, bearer: &str, name: &str, expires_at: &str) -> (u16, Value) {
    server.call("POST", "/v1/pat", Some(bearer), Some(json!({"name": name, "expires_at": expires_at}))).await
}

async fn sign_in(server: &Server, token: &str) -> (u16, Value) {
    server.call("POST", "/v1/sign/in/pat", None, Some(json!({"personal_access_token": token}))).await
}

async fn a_token_is_created_once_signs_in_and_is_revoked(backend: Backend) {
    let server = Server::start(backend).await;
    let (alice, bob) = (unique("pat-a"), unique("pat-b"));
    let profile = server.sign_up(&alice).await;
    server.sign_up(&bob).await;
    let session = server.sign_in(&alice).await;
    let (status, created) = create(&server, &session.access_token, "ci", &in_days(30)).await;
    assert_eq!(status, 200, "{created}");
    let token = created["personal_access_token"].as_str().expect("token").to_string();
    assert!(token.starts_with("authd_pat_"), "{token}");

    let (status, list) = server.call("GET", "/v1/pat", Some(&session.access_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["pats"][0]["name"], "ci");
    assert!(!list.to_string().contains(&token[token.len() - 43..]), "the list never shows the secret");
    assert!(list["pats"][0].get("last_used_at").is_none());

    let (status, pat_session) = sign_in(&server, &token).await;
    assert_eq!(status, 200, "{pat_session}");
    assert_eq!(pat_session["profile_id"], profile);
    let pat_access = pat_session["access_token"].as_str().expect("access").to_string();
    assert_eq!(claims(&pat_access)["amr"], json!(["pat"]));
    let (_, list) = server.call("GET", "/v1/pat", Some(&session.access_token), None).await;
    assert!(list["pats"][0]["last_used_at"].is_string(), "{list}");
    // The CLI signs in with it too (read from stdin, never an argument).
    let out = crate::cli::run(&server, &["sign-in", "--pat"], &format!("{token}\n"));
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["profile_id"], profile);

    // Bob cannot revoke Alice's token; Alice can, once.
    let pat_id = created["pat_id"].as_str().expect("id");
    let bobs = server.sign_in(&bob).await;
    let (status, body) = server.call("DELETE", &format!("/v1/pat/{pat_id}"), Some(&bobs.access_token), None).await;
    assert_eq!((status, error_of(&body)), (404, Some("pat_not_found")), "{body}");
    let (status, _) = server.call("DELETE", &format!("/v1/pat/{pat_id}"), Some(&session.access_token), None).await;
    assert_eq!(status, 204);
    let (status, body) = sign_in(&server, &token).await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "a revoked token: {body}");
    let (status, _) = server.call("DELETE", &format!("/v1/pat/{pat_id}"), Some(&session.access_token), None).await;
    assert_eq!(status, 404, "revoked already");
    let (_, list) = server.call("GET", "/v1/pat", Some(&session.access_token), None).await;
    assert!(list["pats"][0]["revoked_at"].is_string(), "{list}");
}

async fn pat_rejections_and_throttling(backend: Backend) {
    let server = stale_server(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    let username = unique("pat-no");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = session.access_token.as_str();

    // Strangers get nothing; bad input names its fields.
    for (method, path) in [("POST", "/v1/pat"), ("GET", "/v1/pat"), ("DELETE", "/v1/pat/x")] {
        let (status, _) = server.call(method, path, None, Some(json!({"name": "x", "expires_at": in_days(1)}))).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    for (name, expires_at, bad) in [
        ("", in_days(1), vec!["name"]),
        ("ci", in_days(-1), vec!["expires_at"]),
        ("ci", in_days(400), vec!["expires_at"]),
        ("ci", "tomorrow".to_string(), vec!["expires_at"]),
        (" ", "tomorrow".to_string(), vec!["name", "expires_at"]),
    ] {
        let (status, body) = create(&server, bearer, name, &expires_at).await;
        assert_eq!((status, detail_paths(&body)), (422, bad.iter().map(|s| s.to_string()).collect::<Vec<_>>()), "{body}");
    }
    // A token that expires in two seconds.
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, created) = create(&server, bearer, "short", &expires).await;
    assert_eq!(status, 200, "{created}");
    let short = created["personal_access_token"].as_str().expect("token").to_string();
    let (status, created) = create(&server, bearer, "long", &in_days(30)).await;
    assert_eq!(status, 200, "{created}");
    let long = created["personal_access_token"].as_str().expect("token").to_string();

    // A stale session (a stolen access token) creates none.
    let_it_grow_old().await;
    let (status, body) = create(&server, bearer, "stolen", &in_days(1)).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");

    let (status, _) = sign_in(&server, &short).await;
    assert_eq!(status, 401, "expired");
    for garbage in ["", "authd_pat_nothing", "not a token"] {
        let (status, _) = sign_in(&server, garbage).await;
        assert!(status == 401 || status == 422, "{garbage}: {status}");
    }
    // A forged secret for the right account and token: counted; past the threshold
    // even the right token is refused (429), from this address.
    let forged = format!("{}{}", &long[..long.len() - 43], "A".repeat(43));
    let (status, _) = sign_in(&server, &forged).await;
    assert_eq!(status, 401);
    let (status, body) = sign_in(&server, &long).await;
    assert_eq!(status, 429, "the expired and the forged token counted: {body}");
}
