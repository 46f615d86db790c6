//! Account lifecycle, black-box on SQLite and PostgreSQL: recovery with an
//! admin-issued token, removal.

use client::{Error, Registration, SignInOutcome};
use crate::helpers::{activation_code, code_and_id, detail_paths, unique, Backend, Server, ADMIN, PASSWORD};
use serde_json::{json, Value};

both_stores!(
    recovery_with_a_recovery_token,
    a_recovery_token_is_for_one_account,
    removal_frees_the_username,
    activation_gates_sign_in,
    forgot_and_reset,
    forgot_sends_one_mail_a_minute,
    account_routes_name_bad_fields,
);

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

/// (verification id, code) out of one of authd's own account messages.

async fn finish_status(server: &Server, username: &str, password: &[u8]) -> (u16, Value) {
    let (login, ke1) = client::Login::start(password).expect("start");
    let (sign_in_id, ke2) = server.api().sign_in_start(username, &ke1).await.expect("ke2");
    let (ke3, _) = login.finish(password, &ke2).expect("right password");
    server.call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": ke3}))).await
}

async fn activation_gates_sign_in(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_REQUIRE_VERIFIED_EMAIL", "true")]).await;
    let username = unique("activating");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = activation_code(&server, &email).await;

    let (status, body) = finish_status(&server, &username, PASSWORD).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("email_not_verified")));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": wrong}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["code".to_string()]));
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);
    let (status, session) = finish_status(&server, &username, PASSWORD).await;
    assert_eq!(status, 200);
    let user = server.api().user(session["access_token"].as_str().expect("token")).await.expect("user");
    assert!(user.email_verified);
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 404, "an activation code works once");

    // Without an email there is nothing to verify: sign-in stays refused.
    let plain = unique("no-email");
    server.sign_up(&plain).await;
    assert_eq!(finish_status(&server, &plain, PASSWORD).await.0, 403);
}

/// `forgot` cannot be turned into a mail bomb: concurrent requests for one account,
/// each answered 204, send one mail between them (at most one a minute).
async fn forgot_sends_one_mail_a_minute(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("bombed");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = activation_code(&server, &email).await;
    server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    let forgot = || server.call("POST", "/v1/account/forgot", None, Some(json!({"username": username})));
    let answers = futures::future::join_all((0..6).map(|_| forgot())).await;
    assert!(answers.iter().all(|(status, _)| *status == 204));
    crate::helpers::outbox_mail(&server, &email, |subject| subject == "Reset your password").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(forgot().await.0, 204);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mails = crate::helpers::outbox(&server).into_iter().filter(|(to, subject, _)| to == &email && subject == "Reset your password").count();
    assert_eq!(mails, 1, "one reset mail a minute");
    let sent = server.stored_events().await.into_iter().filter(|(_, event, _)| event == "ResetMailSent").count();
    assert_eq!(sent, 1);
}

async fn forgot_and_reset(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("resetting");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = activation_code(&server, &email).await;
    server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    let before = server.sign_in(&username).await;

    // Unknown accounts and unverified emails get the same 204 and no message.
    let unverified = unique("unverified");
    let token = server.invitation().await;
    server.api().sign_up(&unverified, PASSWORD, Some(&token), Some(&format!("{unverified}@example.com"))).await.expect("sign up");
    for name in [unique("ghost"), unverified.clone()] {
        let (status, _) = server.call("POST", "/v1/account/forgot", None, Some(json!({"username": name}))).await;
        assert_eq!(status, 204);
    }
    let (status, _) = server.call("POST", "/v1/account/forgot", None, Some(json!({"username": username.to_uppercase()}))).await;
    assert_eq!(status, 204);
    let (_, reset_mail) = crate::helpers::outbox_mail(&server, &email, |subject| subject == "Reset your password").await;
    let (verification_id, code) = code_and_id(&reset_mail);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let others = crate::helpers::outbox(&server).into_iter().filter(|(_, subject, _)| subject == "Reset your password").count();
    assert_eq!(others, 1, "no reset message for an unknown account or an unverified email");

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (registration, request) = Registration::start(NEW_PASSWORD).expect("start");
    let start = |code: &str| json!({"verification_id": verification_id, "code": code, "registration_request": request});
    let (status, body) = server.call("POST", "/v1/account/reset", None, Some(start(wrong))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["code".to_string()]), "step 1 checks the code: {body}");
    let (status, body) = server.call("POST", "/v1/account/reset", None, Some(start(&code))).await;
    assert_eq!(status, 200, "checking the code does not spend it: {body}");
    let record = registration.finish(NEW_PASSWORD, body["registration_response"].as_str().expect("response")).expect("finish");
    let finish = |code: String| json!({"verification_id": verification_id, "code": code, "registration_record": record});
    let (status, _) = server.call("POST", "/v1/account/reset/finish", None, Some(finish(wrong.into()))).await;
    assert_eq!(status, 422, "a wrong code changes nothing");
    assert!(server.api().sign_in(&username, PASSWORD).await.is_ok(), "the old password works until the reset");
    // A sign-in started with the old password before the reset...
    let (sign_in_id, old_ke3) = crate::helpers::ke3(&server, &username).await;
    let (status, _) = server.call("POST", "/v1/account/reset/finish", None, Some(finish(code.clone()))).await;
    assert_eq!(status, 204);
    // ...cannot finish after it.
    let finished = server.api().sign_in_finish(&sign_in_id, &old_ke3).await;
    assert!(matches!(finished, Err(Error::Http { status: 401, .. })), "a sign-in begun before the reset ends with it: {finished:?}");
    let failures: Vec<Value> = server.stored_events().await.into_iter().map(|(_, _, payload)| payload).collect();
    assert!(failures.iter().any(|p| p["SignInFailed"]["reason"] == "credentials_changed"), "{failures:?}");

    let api = server.api();
    assert!(matches!(api.jwt_verify(&before.access_token).await, Err(Error::Http { status: 401, .. })), "sessions end");
    assert_eq!(api.sign_in(&username, PASSWORD).await.unwrap_err(), Error::InvalidLogin);
    assert!(matches!(api.sign_in(&username, NEW_PASSWORD).await, Ok(SignInOutcome::Session(_))));
    let (status, _) = server.call("POST", "/v1/account/reset/finish", None, Some(finish(code))).await;
    assert_eq!(status, 404, "a reset code works once");
}

async fn account_routes_name_bad_fields(backend: Backend) {
    let server = Server::start(backend).await;
    let cases: Vec<(&str, Value, u16, Vec<&str>)> = vec![
        ("/v1/account/activate", json!({}), 422, vec!["code", "verification_id"]),
        ("/v1/account/activate", json!({"verification_id": "nope", "code": "123456"}), 404, vec![]),
        ("/v1/account/forgot", json!({"username": 7}), 422, vec!["username"]),
        ("/v1/account/reset", json!({"code": ""}), 422, vec!["code", "registration_request", "verification_id"]),
        ("/v1/account/reset", json!({"verification_id": "nope", "code": "1", "registration_request": client::b64(&[0u8; 32])}), 404, vec![]),
        ("/v1/account/reset/finish", json!({"verification_id": "v", "code": "1", "registration_record": "short"}), 422, vec!["registration_record"]),
        ("/v1/account/recover/finish", json!({}), 422, vec!["recovery_token", "registration_record", "username"]),
        ("/v1/account/remove", json!({}), 401, vec![]),
    ];
    for (path, body, status, fields) in cases {
        let (got, answer) = server.call("POST", path, None, Some(body.clone())).await;
        assert_eq!(got, status, "{path} {body} -> {answer}");
        let mut paths = detail_paths(&answer);
        paths.sort();
        assert_eq!(paths, fields, "{path} {body} -> {answer}");
    }
}
