//! MFA, throttling through the private flow, and rate limits, black-box on SQLite and
//! PostgreSQL (throttling itself: `throttling.rs`).

use std::time::Duration;

use base64::Engine;
use client::{Login, SignInOutcome};
use crate::helpers::{bogus_ke3, ke3, unique, Backend, Server, PASSWORD};
use serde_json::{json, Value};

both_stores!(
    mfa_enable_sign_in_and_disable,
    mfa_rejections,
    mfa_wrong_codes_exhaust_the_ticket,
    wrong_totp_codes_count_like_wrong_passwords,
    concurrent_guesses_on_one_ticket_count_each,
    wrong_codes_on_disable_are_throttled,
    wrong_codes_on_enable_are_throttled,
    removing_the_account_ends_its_pending_mfa_tickets,
    rate_limits_answer_429,
    private_sign_in_obeys_mfa_and_lockout,
);

/// Waits, if needed, so that the next ~20 seconds stay within one TOTP step.
pub(crate) async fn start_of_step() {
    let into_step = crate::helpers::now() % 30;
    if into_step > 10 {
        tokio::time::sleep(Duration::from_secs(30 - into_step)).await;
    }
}

pub(crate) fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

/// An account with MFA on; returns the authenticator and the generated step offset
/// already spent (enabling used the code of step -1).
pub(crate) async fn account_with_mfa(server: &Server, username: &str) -> totp_rs::TOTP {
    server.sign_up(username).await;
    let session = server.sign_in(username).await;
    let (status, enrollment) = server.call("POST", "/v1/mfa/totp/generate", Some(&session.access_token), None).await;
    assert_eq!(status, 200, "{enrollment}");
    assert!(enrollment["otpauth_uri"].as_str().expect("uri").starts_with("otpauth://totp/"));
    let png = base64::engine::general_purpose::STANDARD.decode(enrollment["qr_png"].as_str().expect("qr")).expect("b64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let totp = crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let (status, body) = server
        .call("POST", "/v1/mfa/totp/enable", Some(&session.access_token), Some(json!({"code": crate::helpers::totp_code(&totp, -1)})))
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(server.api().user(&session.access_token).await.expect("user").mfa_enabled);
    totp
}

async fn mfa_ticket(server: &Server, username: &str) -> String {
    match server.api().sign_in(username, PASSWORD).await.expect("password step") {
        SignInOutcome::MfaRequired { mfa_ticket } => mfa_ticket,
        other => panic!("expected mfa_required, got {other:?}"),
    }
}

async fn mfa_enable_sign_in_and_disable(backend: Backend) {
    start_of_step().await;
    let server = Server::start(backend).await;
    let username = unique("mfa");
    let totp = account_with_mfa(&server, &username).await;

    let ticket = mfa_ticket(&server, &username).await;
    let session = server.api().sign_in_mfa(&ticket, &crate::helpers::totp_code(&totp, 0)).await.expect("second factor");
    assert_eq!(claims(&session.access_token)["amr"], json!(["pwd", "otp"]));
    server.api().jwt_verify(&session.access_token).await.expect("a working session");

    // The same code again, even with a fresh ticket, is a replay.
    let ticket = mfa_ticket(&server, &username).await;
    let (status, _) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": ticket, "code": crate::helpers::totp_code(&totp, 0)}))).await;
    assert_eq!(status, 401);

    let (status, body) = server
        .call("POST", "/v1/mfa/totp/disable", Some(&session.access_token), Some(json!({"code": crate::helpers::totp_code(&totp, 1)})))
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(!server.api().user(&session.access_token).await.expect("user").mfa_enabled);
    assert!(matches!(server.api().sign_in(&username, PASSWORD).await, Ok(SignInOutcome::Session(_))));
}

async fn mfa_rejections(backend: Backend) {
    start_of_step().await;
    let server = Server::start(backend).await;
    let username = unique("mfa-no");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = Some(session.access_token.as_str());

    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": "123456"}))).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("mfa_not_generated")));
    let (status, body) = server.call("POST", "/v1/mfa/totp/disable", bearer, Some(json!({"code": "123456"}))).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("mfa_not_enabled")));
    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": "12ab"}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["code".to_string()]));
    let (status, _) = server.call("POST", "/v1/mfa/totp/generate", None, None).await;
    assert_eq!(status, 401);

    let (_, enrollment) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    let totp = crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let wrong = if crate::helpers::totp_code(&totp, 0) == "000000" { "111111" } else { "000000" };
    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": wrong}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["code".to_string()]));
    assert!(!server.api().user(&session.access_token).await.expect("user").mfa_enabled);
    let (status, _) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": crate::helpers::totp_code(&totp, 0)}))).await;
    assert_eq!(status, 204);
    // With TOTP on, only a TOTP (or passkey) proof reaches the enrolment routes.
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("stronger_proof_required")), "{body}");
    let (status, elevated) = server.call("POST", "/v1/elevate/totp", bearer, Some(json!({"code": crate::helpers::totp_code(&totp, 1)}))).await;
    assert_eq!(status, 200, "{elevated}");
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", elevated["access_token"].as_str(), None).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("mfa_already_enabled")));

    // A made-up ticket is refused.
    let (status, body) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": "made-up", "code": crate::helpers::totp_code(&totp, 1)}))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")));
    let (status, body) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({}))).await;
    assert_eq!(status, 422);
    let mut paths = crate::helpers::detail_paths(&body);
    paths.sort();
    assert_eq!(paths, ["code", "mfa_ticket"]);
}

async fn mfa_wrong_codes_exhaust_the_ticket(backend: Backend) {
    start_of_step().await;
    let server = Server::start(backend).await;
    let username = unique("mfa-brute");
    let totp = account_with_mfa(&server, &username).await;
    let ticket = mfa_ticket(&server, &username).await;
    let right = crate::helpers::totp_code(&totp, 0);
    let wrong = if right == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let (status, _) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": ticket, "code": wrong}))).await;
        assert_eq!(status, 401);
    }
    let (status, _) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": ticket, "code": right}))).await;
    assert_eq!(status, 401, "five wrong codes kill the ticket");
    // A new ticket with the right code works; then that ticket is spent.
    let ticket = mfa_ticket(&server, &username).await;
    server.api().sign_in_mfa(&ticket, &right).await.expect("fresh ticket");
    let (status, _) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": ticket, "code": crate::helpers::totp_code(&totp, 1)}))).await;
    assert_eq!(status, 401, "a ticket is single-use");
}

/// `POST path` with a JSON body: status, `Retry-After` (seconds) and body.
pub(crate) async fn post(server: &Server, path: &str, bearer: Option<&str>, body: Value) -> (u16, Option<u64>, Value) {
    let mut request = reqwest::Client::new().post(format!("{}{path}", server.base)).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").parse().expect("seconds"));
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

pub(crate) fn wrong_code(totp: &totp_rs::TOTP) -> &'static str {
    let valid: Vec<String> = (-1..=1).map(|offset| crate::helpers::totp_code(totp, offset)).collect();
    ["000000", "111111", "222222", "333333"].into_iter().find(|wrong| !valid.iter().any(|v| v == wrong)).expect("a wrong code")
}

/// Wrong TOTP codes count on the account's throttle like wrong passwords, across
/// tickets (a right password does not start the count again while the second factor
/// is pending): past the threshold even the right code is refused with 429.
async fn wrong_totp_codes_count_like_wrong_passwords(backend: Backend) {
    start_of_step().await;
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "4"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    let username = unique("totp-guess");
    let totp = account_with_mfa(&server, &username).await;
    let wrong = wrong_code(&totp);
    // Password step 1 counts 1 until the second factor is done; two wrong codes: 3.
    let ticket = mfa_ticket(&server, &username).await;
    for _ in 0..2 {
        let (status, _, _) = post(&server, "/v1/sign/in/mfa", None, json!({"mfa_ticket": ticket, "code": wrong})).await;
        assert_eq!(status, 401);
    }
    // A fresh ticket (the password again: 4, the threshold) buys no fresh guesses.
    let ticket = mfa_ticket(&server, &username).await;
    let (status, retry_after, body) =
        post(&server, "/v1/sign/in/mfa", None, json!({"mfa_ticket": ticket, "code": crate::helpers::totp_code(&totp, 0)})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_attempts", "{body}");
    assert!(retry_after.is_some_and(|secs| secs > 60), "{retry_after:?}");
    // The refused code was not spent: the count, not the code, refused it.
    let events = server.stored_events().await;
    assert_eq!(events.iter().filter(|(_, event, _)| event == "TotpCodeUsed").count(), 0);
    assert!(events.iter().any(|(_, event, payload)| event == "ProofAttempted" && payload["ProofAttempted"]["allowed"] == false));
}

/// Concurrent wrong codes on one ticket are decided and counted one by one: no more
/// than the ticket's five get an answer other than "dead ticket", and the ticket is
/// dead after them.
async fn concurrent_guesses_on_one_ticket_count_each(backend: Backend) {
    start_of_step().await;
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "1000")]).await;
    let username = unique("totp-race");
    let totp = account_with_mfa(&server, &username).await;
    let ticket = mfa_ticket(&server, &username).await;
    let wrong = wrong_code(&totp);
    let guesses = (0..12).map(|_| post(&server, "/v1/sign/in/mfa", None, json!({"mfa_ticket": ticket, "code": wrong})));
    let answers = futures::future::join_all(guesses).await;
    assert!(answers.iter().all(|(status, _, _)| *status == 401), "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    let failed = server.stored_events().await.into_iter().filter(|(_, event, _)| event == "MfaChallengeFailed").count();
    assert_eq!(failed, 5, "each guess counted on the ticket, none past its five");
    let (status, _, _) = post(&server, "/v1/sign/in/mfa", None, json!({"mfa_ticket": ticket, "code": crate::helpers::totp_code(&totp, 0)})).await;
    assert_eq!(status, 401, "the ticket is dead");
}

/// A stolen access token cannot guess its way to disabling TOTP: wrong codes count,
/// and past the threshold the right code is refused too.
async fn wrong_codes_on_disable_are_throttled(backend: Backend) {
    start_of_step().await;
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "3"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    let username = unique("totp-disable");
    let totp = account_with_mfa(&server, &username).await;
    let ticket = mfa_ticket(&server, &username).await;
    let session = server.api().sign_in_mfa(&ticket, &crate::helpers::totp_code(&totp, 0)).await.expect("second factor");
    let bearer = Some(session.access_token.as_str());
    let wrong = wrong_code(&totp);
    for _ in 0..3 {
        let (status, _, body) = post(&server, "/v1/mfa/totp/disable", bearer, json!({"code": wrong})).await;
        assert_eq!(status, 422, "{body}");
    }
    let (status, retry_after, body) = post(&server, "/v1/mfa/totp/disable", bearer, json!({"code": crate::helpers::totp_code(&totp, 1)})).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_attempts")), "{body}");
    assert!(retry_after.is_some());
    assert!(server.api().user(&session.access_token).await.expect("user").mfa_enabled, "still on");
}

/// Enabling counts wrong codes too: a stolen access token cannot find the pending
/// secret's code by guessing.
async fn wrong_codes_on_enable_are_throttled(backend: Backend) {
    start_of_step().await;
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    let username = unique("totp-enable");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = Some(session.access_token.as_str());
    let (_, enrollment) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    let totp = crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    for _ in 0..2 {
        let (status, _, body) = post(&server, "/v1/mfa/totp/enable", bearer, json!({"code": wrong_code(&totp)})).await;
        assert_eq!(status, 422, "{body}");
    }
    let (status, retry_after, body) = post(&server, "/v1/mfa/totp/enable", bearer, json!({"code": crate::helpers::totp_code(&totp, 0)})).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_attempts")), "{body}");
    assert!(retry_after.is_some());
    assert!(!server.api().user(&session.access_token).await.expect("user").mfa_enabled, "still off");
}

async fn finish_with(server: &Server, username: &str, proof: Option<String>) -> (u16, Value) {
    let (sign_in_id, ke3) = match proof {
        None => ke3(server, username).await,
        Some(bogus) => {
            let (_, ke1) = Login::start(PASSWORD).expect("start");
            let (sign_in_id, _) = server.api().sign_in_start(username, &ke1).await.expect("ke2");
            (sign_in_id, bogus)
        }
    };
    server.call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": ke3}))).await
}

async fn rate_limits_answer_429(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_RATE_LIMIT", "3/min")]).await;
    let username = unique("hammer");
    server.sign_up(&username).await; // two sign-up calls: within the sign-up limit
    let session_token = {
        let (sign_in_id, ke3) = ke3(&server, &username).await; // sign-in call 1
        let (status, body) = server
            .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": ke3})))
            .await; // sign-in call 2
        assert_eq!(status, 200);
        body["access_token"].as_str().expect("token").to_string()
    };
    let (_, ke1) = Login::start(PASSWORD).expect("start");
    let body = json!({"username": username, "credential_request": ke1});
    let (status, _) = server.call("POST", "/v1/sign/in", None, Some(body.clone())).await; // call 3
    assert_eq!(status, 200);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sign/in", server.base))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"], "rate_limited");
    // Other kinds of routes are not limited by it.
    for _ in 0..5 {
        server.api().jwt_verify(&session_token).await.expect("verification is not rate limited");
    }
}

async fn private_sign_in_obeys_mfa_and_lockout(backend: Backend) {
    start_of_step().await;
    let server = Server::start_with(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "60")]).await;
    let username = unique("private-mfa");
    let totp = account_with_mfa(&server, &username).await;
    let api = server.api();
    let SignInOutcome::MfaRequired { mfa_ticket } = api.sign_in_private(&username, PASSWORD).await.expect("private") else {
        panic!("MFA applies to private sign-in");
    };
    let session = api.sign_in_mfa(&mfa_ticket, &crate::helpers::totp_code(&totp, 0)).await.expect("second factor");
    assert_eq!(claims(&session.access_token)["amr"], json!(["pwd", "otp"]));

    // Failures through the normal flow throttle the private flow too: its KE2 is
    // then an unknown user's, which the right password cannot finish.
    for _ in 0..2 {
        assert_eq!(finish_with(&server, &username, Some(bogus_ke3())).await.0, 401);
    }
    assert_eq!(api.sign_in_private(&username, PASSWORD).await.unwrap_err(), client::Error::InvalidLogin);
}

async fn removing_the_account_ends_its_pending_mfa_tickets(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("removed-mid-mfa");
    let totp = account_with_mfa(&server, &username).await;
    start_of_step().await;
    let first = mfa_ticket(&server, &username).await;
    let pending = mfa_ticket(&server, &username).await;
    let (status, session) = server
        .call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": first, "code": crate::helpers::totp_code(&totp, 0)})))
        .await;
    assert_eq!(status, 200, "{session}");
    let token = session["access_token"].as_str().expect("access token").to_string();
    let (status, _) = server.call("POST", "/v1/account/remove", Some(&token), None).await;
    assert_eq!(status, 204);
    // The ticket issued before the removal opens nothing, even with a fresh, valid code.
    let (status, body) = server
        .call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": pending, "code": crate::helpers::totp_code(&totp, 1)})))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")), "{body}");
    // The removed account's own token: 401, never 503.
    let (status, body) = server.call("GET", "/v1/user", Some(&token), None).await;
    assert_eq!(status, 401, "{body}");
}
