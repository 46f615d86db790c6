//! Account lifecycle, black-box on SQLite and PostgreSQL: recovery with an
//! admin-issued token, removal.

mod common;

use client::{Error, Registration, SignInOutcome};
use common::{detail_paths, unique, Backend, Server, ADMIN, PASSWORD};
use serde_json::{json, Value};

both_stores!(recovery_with_a_recovery_token, a_recovery_token_is_for_one_account, removal_frees_the_username);

const NEW_PASSWORD: &[u8] = b"a brand new passphrase";

async fn recovery_token(server: &Server, username: &str) -> String {
    let (status, body) = server
        .call("POST", "/v1/bucket/fill", Some(ADMIN), Some(json!({"bucket": "profile", "count": 1, "username": username})))
        .await;
    assert_eq!(status, 200, "{body}");
    body["tokens"][0].as_str().expect("token").to_string()
}

/// Runs both recovery steps with a new password; returns the finish answer.
async fn recover(server: &Server, username: &str, token: &str) -> (u16, Value) {
    let (registration, request) = Registration::start(NEW_PASSWORD).expect("start");
    let (status, body) = server
        .call("POST", "/v1/account/recover", None, Some(json!({"username": username, "recovery_token": token, "registration_request": request})))
        .await;
    if status != 200 {
        return (status, body);
    }
    let record = registration.finish(NEW_PASSWORD, body["registration_response"].as_str().expect("response")).expect("finish");
    server
        .call("POST", "/v1/account/recover/finish", None, Some(json!({"username": username, "recovery_token": token, "registration_record": record})))
        .await
}

async fn recovery_with_a_recovery_token(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("forgetful");
    let profile_id = server.sign_up(&username).await;
    let before = server.sign_in(&username).await;
    let token = recovery_token(&server, &username).await;

    assert_eq!(recover(&server, &username, &token).await.0, 204);
    let api = server.api();
    assert!(matches!(api.jwt_verify(&before.access_token).await, Err(Error::Http { status: 401, .. })), "sessions end");
    assert!(matches!(api.refresh(&before.refresh_token).await, Err(Error::Http { status: 401, .. })));
    assert_eq!(api.sign_in(&username, PASSWORD).await.unwrap_err(), Error::InvalidLogin, "the old password stops working");
    let Ok(SignInOutcome::Session(after)) = api.sign_in(&username, NEW_PASSWORD).await else { panic!("new password") };
    assert_eq!(after.profile_id, profile_id);

    let (status, body) = recover(&server, &username, &token).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["recovery_token".to_string()]), "single use");
    let bucket = api.bucket(ADMIN, "profile").await.expect("bucket");
    assert_eq!((bucket.available, bucket.redeemed), (0, 1));
}

async fn a_recovery_token_is_for_one_account(backend: Backend) {
    let server = Server::start(backend).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    server.sign_up(&alice).await;
    server.sign_up(&bob).await;
    let alices = recovery_token(&server, &alice).await;

    let refused = recover(&server, &bob, &alices).await;
    assert_eq!((refused.0, detail_paths(&refused.1)), (422, vec!["recovery_token".to_string()]));
    assert_eq!(recover(&server, &unique("ghost"), &alices).await, refused, "an unknown account looks the same");
    let invitation = server.invitation().await;
    assert_eq!(recover(&server, &alice, &invitation).await, refused, "a signup token is no recovery token");
    assert_eq!(recover(&server, &alice, "made-up").await, refused);
    server.sign_in(&bob).await; // bob's password still works

    let (status, body) = server.call("POST", "/v1/account/recover", None, Some(json!({"username": "x"}))).await;
    assert_eq!(status, 422);
    let mut paths = detail_paths(&body);
    paths.sort();
    assert_eq!(paths, ["recovery_token", "registration_request"]);
    assert_eq!(recover(&server, &alice, &alices).await.0, 204, "the right account still can");
}

async fn removal_frees_the_username(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("leaving");
    let profile_id = server.sign_up(&username).await;
    let first = server.sign_in(&username).await;
    let second = server.sign_in(&username).await;
    let (status, _) = server.call("POST", "/v1/account/remove", Some(&first.access_token), None).await;
    assert_eq!(status, 204);
    let api = server.api();
    for session in [&first, &second] {
        assert!(matches!(api.jwt_verify(&session.access_token).await, Err(Error::Http { status: 401, .. })));
        assert!(matches!(api.refresh(&session.refresh_token).await, Err(Error::Http { status: 401, .. })));
    }
    assert_eq!(api.sign_in(&username, PASSWORD).await.unwrap_err(), Error::InvalidLogin, "no such account any more");
    let (status, _) = server.call("POST", "/v1/account/remove", Some(&first.access_token), None).await;
    assert_eq!(status, 401);

    let again = server.sign_up(&username).await;
    assert_ne!(again, profile_id, "the name is free for a new account");
    let session = server.sign_in(&username).await;
    assert_eq!(api.user(&session.access_token).await.expect("user").profile_id, again);
}
