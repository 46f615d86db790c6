//! Self-service: the account's session list (devices, current, ending one) and the
//! password change (elevated; every other session ends) — black-box on both stores.

use client::{Api, Registration, SignInOutcome};
use serde_json::json;

use crate::elevation::{elevate_with_password, error_of, let_it_grow_old, stale_server};
use crate::helpers::{detail_paths, unique, Backend, Server, PASSWORD};

both_stores!(
    the_session_list_shows_devices_and_ends_one,
    a_password_change_needs_a_recent_proof_and_ends_every_other_session,
);

async fn the_session_list_shows_devices_and_ends_one(backend: Backend) {
    let server = Server::start(backend).await;
    let (alice, bob) = (unique("list-a"), unique("list-b"));
    server.sign_up(&alice).await;
    server.sign_up(&bob).await;
    let laptop = server.sign_in(&alice).await;
    let phone = server.sign_in(&alice).await;
    let bobs = server.sign_in(&bob).await;
    let api = server.api();
    let phone_id = api.jwt_verify(&phone.access_token).await.expect("verify").session_id;
    let laptop_id = api.jwt_verify(&laptop.access_token).await.expect("verify").session_id;

    let sessions = api.sessions(&laptop.access_token).await.expect("sessions");
    let ids: Vec<_> = sessions.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(ids, [phone_id.clone(), laptop_id.clone()], "this account's, newest first");
    let this = &sessions[1];
    assert!(this.current && !sessions[0].current);
    assert_eq!(this.client_address.as_deref(), Some("127.0.0.1"));
    assert!(this.user_agent.as_deref().is_some_and(|agent| agent.starts_with("authd-client/")), "{this:?}");
    assert_eq!(this.amr, ["pwd"]);
    assert_eq!(this.created_at, this.last_used_at, "not refreshed yet");

    // A refresh is a use.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let phone = api.refresh(&phone.refresh_token).await.expect("refresh");
    let sessions = api.sessions(&phone.access_token).await.expect("sessions");
    assert!(sessions[0].last_used_at > sessions[0].created_at, "{sessions:?}");

    // Ending the phone's session from the laptop.
    api.end_session(&laptop.access_token, &phone_id).await.expect("end");
    let (status, _) = server.call("GET", "/v1/user", Some(&phone.access_token), None).await;
    assert_eq!(status, 401, "the ended session's token is refused");
    let (status, _) = server.call("POST", "/v1/token/refresh", None, Some(json!({"refresh_token": phone.refresh_token}))).await;
    assert_eq!(status, 401, "and so is its refresh token");
    let ids: Vec<_> = api.sessions(&laptop.access_token).await.expect("sessions").into_iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [laptop_id.clone()]);

    // Over, another account's, or not a session id at all: 404, and Bob's goes on.
    let bobs_id = api.jwt_verify(&bobs.access_token).await.expect("verify").session_id;
    for id in [phone_id.as_str(), bobs_id.as_str(), "not-a-session"] {
        let (status, body) = server.call("DELETE", &format!("/v1/user/sessions/{id}"), Some(&laptop.access_token), None).await;
        assert_eq!((status, error_of(&body)), (404, Some("session_not_found")), "{id}: {body}");
    }
    api.jwt_verify(&bobs.access_token).await.expect("Bob's session is untouched");
    assert_eq!(api.sessions(&bobs.access_token).await.expect("sessions").len(), 1, "Bob sees only his");

    // Strangers get nothing.
    for (method, path) in [("GET", "/v1/user/sessions".to_string()), ("DELETE", format!("/v1/user/sessions/{laptop_id}"))] {
        for bearer in [None, Some("not-a-token")] {
            let (status, _) = server.call(method, &path, bearer, None).await;
            assert_eq!(status, 401, "{method} {path}");
        }
    }
    // Ending this very session is a sign-out.
    api.end_session(&laptop.access_token, &laptop_id).await.expect("end this one");
    let (status, _) = server.call("GET", "/v1/user/sessions", Some(&laptop.access_token), None).await;
    assert_eq!(status, 401);
}

const NEW_PASSWORD: &[u8] = b"a brand new passphrase";

async fn a_password_change_needs_a_recent_proof_and_ends_every_other_session(backend: Backend) {
    let server = stale_server(backend, &[]).await;
    let username = unique("change");
    server.sign_up(&username).await;
    let this = server.sign_in(&username).await;
    let other = server.sign_in(&username).await;
    let api = server.api();
    let_it_grow_old().await;

    // A stale proof (a stolen access token, say) changes nothing.
    let (registration, request) = Registration::start(NEW_PASSWORD).expect("start");
    let bearer = Some(this.access_token.as_str());
    let (status, body) = server.call("POST", "/v1/user/password", bearer, Some(json!({"registration_request": request}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/user/password/finish", bearer, Some(json!({"registration_record": "A".repeat(256)}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    for path in ["/v1/user/password", "/v1/user/password/finish"] {
        let (status, _) = server.call("POST", path, None, Some(json!({}))).await;
        assert_eq!(status, 401, "{path}");
    }

    let (status, elevated) = elevate_with_password(&server, &this.access_token, PASSWORD).await;
    assert_eq!(status, 200, "{elevated}");
    let token = elevated["access_token"].as_str().expect("access token").to_string();
    let refresh = elevated["refresh_token"].as_str().expect("refresh token").to_string();

    // Bad input names every bad field.
    let (status, body) = server.call("POST", "/v1/user/password", Some(&token), Some(json!({"registration_request": "short"}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["registration_request".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/user/password/finish", Some(&token), Some(json!({"registration_record": "A".repeat(256)}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["registration_record".to_string()]), "not a record: {body}");

    let (status, started) = server.call("POST", "/v1/user/password", Some(&token), Some(json!({"registration_request": request}))).await;
    assert_eq!(status, 200, "{started}");
    let record = registration.finish(NEW_PASSWORD, started["registration_response"].as_str().expect("response")).expect("finish");
    let (status, body) = server.call("POST", "/v1/user/password/finish", Some(&token), Some(json!({"registration_record": record}))).await;
    assert_eq!(status, 204, "{body}");

    // This session goes on; the other one is over.
    api.jwt_verify(&token).await.expect("this session goes on");
    let refreshed = api.refresh(&refresh).await.expect("and refreshes");
    api.jwt_verify(&refreshed.access_token).await.expect("verify");
    let (status, _) = server.call("GET", "/v1/user", Some(&other.access_token), None).await;
    assert_eq!(status, 401, "every other session ends");
    let (status, _) = server.call("POST", "/v1/token/refresh", None, Some(json!({"refresh_token": other.refresh_token}))).await;
    assert_eq!(status, 401);
    assert_eq!(api.sessions(&refreshed.access_token).await.expect("sessions").len(), 1);

    // The old password no longer signs in; the new one does.
    assert!(api.sign_in(&username, PASSWORD).await.is_err(), "the old password is gone");
    match api.sign_in(&username, NEW_PASSWORD).await.expect("the new password signs in") {
        SignInOutcome::Session(_) => {}
        other => panic!("expected a session, got {other:?}"),
    }
    // The Rust client's own change (a fresh sign-in is a recent proof).
    let Ok(SignInOutcome::Session(fresh)) = Api::new(&server.base).sign_in(&username, NEW_PASSWORD).await else { panic!("sign in") };
    api.change_password(&fresh.access_token, PASSWORD).await.expect("change back");
    server.sign_in(&username).await;
}
