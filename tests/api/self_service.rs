//! Self-service: the account's session list (devices, current, ending one) and the
//! password change (elevated; every other session ends) — black-box on both stores.

use client::{Api, Registration, SignInOutcome};
use serde_json::json;

use crate::elevation::{elevate_with_password, error_of, let_it_grow_old, stale_server};
use crate::helpers::{code_and_id, detail_paths, outbox_mail, unique, Backend, Server, PASSWORD};
use crate::verifications::webhook;

both_stores!(
    the_session_list_shows_devices_and_ends_one,
    a_password_change_needs_a_recent_proof_and_ends_every_other_session,
    email_and_phone_changes_need_a_recent_proof_and_a_code,
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

async fn email_and_phone_changes_need_a_recent_proof_and_a_code(backend: Backend) {
    let hook = webhook(200).await;
    let server = stale_server(backend, &[("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    let (alice, bob) = (unique("move-a"), unique("move-b"));
    let (old, new) = (format!("{alice}@old.example.com"), format!("{alice}@new.example.com"));
    let token = server.invitation().await;
    server.api().sign_up(&alice, PASSWORD, Some(&token), Some(&old)).await.expect("sign up");
    server.sign_up(&bob).await;
    let session = server.sign_in(&alice).await;
    let bobs = server.sign_in(&bob).await;
    let_it_grow_old().await;

    // A stale proof (a stolen token) changes neither.
    let bearer = Some(session.access_token.as_str());
    let (status, body) = server.call("POST", "/v1/user/email/change", bearer, Some(json!({"new_email": new}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/user/phone/change", bearer, Some(json!({"phone_number": "+14155550100"}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    for path in ["/v1/user/email/change", "/v1/user/email/verify", "/v1/user/phone/change", "/v1/user/phone/verify"] {
        let (status, _) = server.call("POST", path, None, Some(json!({}))).await;
        assert_eq!(status, 401, "{path}");
    }

    let (status, elevated) = elevate_with_password(&server, &session.access_token, PASSWORD).await;
    assert_eq!(status, 200, "{elevated}");
    let bearer = elevated["access_token"].as_str();
    let (status, body) = server.call("POST", "/v1/user/email/change", bearer, Some(json!({"new_email": "not an address"}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["new_email".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/user/email/change", bearer, Some(json!({"new_email": new}))).await;
    assert_eq!(status, 204, "{body}");
    let (_, notice) = outbox_mail(&server, &old, |subject| subject == "Your email address is being changed").await;
    assert!(notice.contains(&new), "the old address is told: {notice}");
    let (_, mail) = outbox_mail(&server, &new, |subject| subject == "Confirm your new email address").await;
    let (verification_id, code) = code_and_id(&mail);
    let profile = server.api().user(bearer.expect("bearer")).await.expect("user");
    assert_eq!(profile.email.as_deref(), Some(old.as_str()), "unchanged until the code comes back");

    // Bob cannot spend Alice's code; a wrong code is 422; the right one moves the address.
    let proof = |code: &str| json!({"verification_id": verification_id, "code": code});
    let (status, body) = server.call("POST", "/v1/user/email/verify", Some(&bobs.access_token), Some(proof(&code))).await;
    assert_eq!((status, error_of(&body)), (404, Some("verification_not_found")), "{body}");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = server.call("POST", "/v1/user/email/verify", bearer, Some(proof(wrong))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["code".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/user/email/verify", bearer, Some(proof(&code))).await;
    assert_eq!(status, 204, "{body}");
    let profile = server.api().user(bearer.expect("bearer")).await.expect("user");
    assert_eq!((profile.email.as_deref(), profile.email_verified), (Some(new.as_str()), true));
    let (status, _) = server.call("POST", "/v1/user/email/verify", bearer, Some(proof(&code))).await;
    assert_eq!(status, 404, "a code changes the address once");

    // The phone number: E.164 only, then a texted code.
    let (status, body) = server.call("POST", "/v1/user/phone/change", bearer, Some(json!({"phone_number": "555-0100"}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["phone_number".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/user/phone/change", bearer, Some(json!({"phone_number": "+14155550100"}))).await;
    assert_eq!(status, 204, "{body}");
    let text = hook.received().last().cloned().expect("a text message");
    assert_eq!(text["to"], "+14155550100");
    let body = text["body"].as_str().expect("body");
    let code = body.split(" code is ").nth(1).and_then(|rest| rest.split(' ').next()).expect("code");
    let verification_id = body.split("verification id ").nth(1).and_then(|rest| rest.split(')').next()).expect("id");
    // An email code's id is no phone code, and the other way round.
    let (status, _) = server.call("POST", "/v1/user/email/verify", bearer, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 404);
    let (status, body) = server.call("POST", "/v1/user/phone/verify", bearer, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(server.api().user(bearer.expect("bearer")).await.expect("user").phone_number.as_deref(), Some("+14155550100"));
}
