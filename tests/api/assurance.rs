//! One assurance model for every way in, tried as an attacker would — black-box on
//! both stores: a stolen token cannot enrol a second factor, TOTP follows every first
//! factor, step-up is at the account's level (TOTP or a passkey once it has one),
//! step-up by email for an account with nothing else, and a personal access token's
//! session is a machine's: never elevated, ended with its token.

use serde_json::{json, Value};

use crate::elevation::{elevate_with_password, error_of, let_it_grow_old, stale_server};
use crate::helpers::{outbox_mail, totp_code, unique, Backend, Server, PASSWORD};
use crate::passkeys::{answer, start, SoftAuthenticator};
use crate::passwordless::{rand_digits, texted_code, verified_account, verify_number};
use crate::security::{account_with_mfa, claims, start_of_step};

both_stores!(
    a_stolen_token_cannot_enrol_a_second_factor,
    totp_follows_a_mailed_code_and_a_link,
    totp_follows_a_texted_code,
    step_up_is_at_the_account_s_level,
    step_up_by_email_is_for_accounts_with_nothing_else,
    a_pat_session_reaches_no_elevated_route,
    a_pat_s_sessions_end_with_it,
    deanonymizing_cannot_hijack_another_s_address,
    deanonymize_honours_the_sign_in_methods,
    a_verified_address_is_one_account_s,
    with_open_sign_up_a_link_creates_the_account,
    addresses_verified_before_owners_were_recorded_are_claimed_at_start_up,
);

fn access(session: &Value) -> &str {
    session["access_token"].as_str().expect("access token")
}

/// `/v1/sign/in/mfa` with `ticket` and the current code of `totp`.
async fn second_factor(server: &Server, ticket: &Value, totp: &totp_rs::TOTP, offset: i64) -> (u16, Value) {
    let body = json!({"mfa_ticket": ticket, "code": totp_code(totp, offset)});
    server.call("POST", "/v1/sign/in/mfa", None, Some(body)).await
}

async fn a_stolen_token_cannot_enrol_a_second_factor(backend: Backend) {
    let server = stale_server(backend, &[]).await;
    let username = unique("stolen");
    server.sign_up(&username).await;
    // The thief holds a session whose proof of presence is old.
    let stolen = server.sign_in(&username).await;
    let_it_grow_old().await;
    let bearer = Some(stolen.access_token.as_str());
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": "123456"}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    // Nor step up with a TOTP of their own (there is none), nor reach what follows.
    let (status, body) = server.call("POST", "/v1/elevate/totp", bearer, Some(json!({"code": "123456"}))).await;
    assert_eq!((status, error_of(&body)), (409, Some("mfa_not_enabled")), "{body}");
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (status, body) = server.call("POST", "/v1/pat", bearer, Some(json!({"name": "thief", "expires_at": expires}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    // The owner, proving the password again, enrols.
    let (status, elevated) = elevate_with_password(&server, &stolen.access_token, PASSWORD).await;
    assert_eq!(status, 200, "{elevated}");
    // The thief's copy of the old access token gains nothing from the owner's step-up.
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", Some(access(&elevated)), None).await;
    assert_eq!(status, 200, "{body}");
}

/// An account with a password, a verified email and TOTP on (enabled with the code
/// of step -1): its address, authenticator and first session.
async fn mailbox_account_with_totp(server: &Server) -> (String, totp_rs::TOTP, client::Session) {
    let email = verified_account(server, "every").await;
    let session = server.sign_in(email.split('@').next().expect("username")).await;
    let totp = enable_totp(server, &session.access_token).await;
    (email, totp, session)
}

/// TOTP on for `bearer`'s account (a fresh session), enabled with the code of step -1.
async fn enable_totp(server: &Server, bearer: &str) -> totp_rs::TOTP {
    let (status, enrollment) = server.call("POST", "/v1/mfa/totp/generate", Some(bearer), None).await;
    assert_eq!(status, 200, "{enrollment}");
    let totp = crate::helpers::authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", Some(bearer), Some(json!({"code": totp_code(&totp, -1)}))).await;
    assert_eq!(status, 204, "{body}");
    totp
}

/// A sign-in by emailed code to `email`: the answer to the code's verification.
async fn sign_in_by_mailed_code(server: &Server, email: &str) -> (u16, Value) {
    let (status, _) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204);
    let (_, mail) = outbox_mail(server, email, |subject| subject == "Your sign-in code").await;
    let code = mail.split("code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code");
    server.call("POST", "/v1/sign/in/otp/email/verify", None, Some(json!({"email": email, "otp": code}))).await
}

async fn totp_follows_a_mailed_code_and_a_link(backend: Backend) {
    start_of_step().await;
    let allowed = ("AUTHD_ALLOWED_REDIRECT_URLS", "https://app.example.com/auth");
    let server = Server::start_with(backend, &[allowed]).await;
    let (email, totp, _) = mailbox_account_with_totp(&server).await;

    // An emailed code: the ticket, then TOTP.
    let (status, answer_body) = sign_in_by_mailed_code(&server, &email).await;
    assert_eq!((status, &answer_body["mfa_required"]), (200, &json!(true)), "no session without TOTP: {answer_body}");
    assert!(answer_body.get("access_token").is_none());
    let (status, wrong) = server.call("POST", "/v1/sign/in/mfa", None, Some(json!({"mfa_ticket": answer_body["mfa_ticket"], "code": "000000"}))).await;
    assert_eq!(status, 401, "{wrong}");
    let (status, by_email) = second_factor(&server, &answer_body["mfa_ticket"], &totp, 0).await;
    assert_eq!(status, 200, "{by_email}");
    let by_email = claims(access(&by_email));
    assert_eq!((&by_email["amr"], &by_email["acr"]), (&json!(["email", "otp"]), &json!("aal2")));

    // A sign-in link, followed in a browser: the fragment carries the MFA ticket.
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(json!({"email": email, "redirect_to": "https://app.example.com/auth"}))).await;
    assert_eq!(status, 204);
    let (_, mail) = outbox_mail(&server, &email, |subject| subject == "Your sign-in link").await;
    let link = mail.split("Sign in: ").nth(1).and_then(|rest| rest.lines().next()).expect("link");
    let ticket = reqwest::Url::parse(link).expect("url").query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.to_string()).expect("ticket");
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let form = [("ticket", ticket.as_str()), ("redirect_to", "https://app.example.com/auth")];
    let response = browser.post(format!("{}/v1/verify", server.base)).form(&form).send().await.expect("post");
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().expect("location").to_string();
    let mfa_ticket = location.split_once("#mfa_ticket=").map(|(_, t)| t.to_string()).expect("an MFA ticket, no token");
    assert!(!location.contains("refresh_token"), "{location}");
    // (Each TOTP code works once: the next one, from the following step's window.)
    let (status, by_link) = second_factor(&server, &json!(mfa_ticket), &totp, 1).await;
    assert_eq!(status, 200, "{by_link}");
    assert_eq!(claims(access(&by_link))["amr"], json!(["email", "otp"]));
}

async fn totp_follows_a_texted_code(backend: Backend) {
    start_of_step().await;
    let hook = crate::verifications::webhook(200).await;
    let server = Server::start_with(backend, &[("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    let username = unique("sms-totp");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let number = format!("+1415556{:04}", rand_digits());
    verify_number(&server, &hook, &session.access_token, &number).await;
    let totp = enable_totp(&server, &session.access_token).await;

    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(json!({"phone_number": number}))).await;
    assert_eq!(status, 204);
    let mut code = None;
    for _ in 0..50 {
        if hook.received().iter().any(|m| m["to"] == number && m["body"].as_str().is_some_and(|b| b.contains("sign-in code"))) {
            code = Some(texted_code(&hook, &number));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let code = code.expect("a texted sign-in code");
    let (status, by_sms) = server.call("POST", "/v1/sign/in/passwordless/sms/otp", None, Some(json!({"phone_number": number, "otp": code}))).await;
    assert_eq!((status, &by_sms["mfa_required"]), (200, &json!(true)), "{by_sms}");
    let (status, by_sms) = second_factor(&server, &by_sms["mfa_ticket"], &totp, 0).await;
    assert_eq!(status, 200, "{by_sms}");
    assert_eq!(claims(access(&by_sms))["amr"], json!(["sms", "otp"]));
}

async fn step_up_is_at_the_account_s_level(backend: Backend) {
    start_of_step().await;
    let server = stale_server(backend, &[]).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let mint = |bearer: String| {
        let server = &server;
        let body = json!({"name": "ci", "expires_at": expires});
        async move { server.call("POST", "/v1/pat", Some(&bearer), Some(body)).await }
    };

    // With TOTP on, a password step-up is not enough; a TOTP one is.
    let username = unique("level-totp");
    let totp = account_with_mfa(&server, &username).await;
    let ticket = match server.api().sign_in(&username, PASSWORD).await.expect("password") {
        client::SignInOutcome::MfaRequired { mfa_ticket } => mfa_ticket,
        other => panic!("expected mfa_required, got {other:?}"),
    };
    let (status, session) = second_factor(&server, &json!(ticket), &totp, 0).await;
    assert_eq!(status, 200, "{session}");
    let (status, body) = mint(access(&session).to_string()).await;
    assert_eq!(status, 200, "a fresh sign-in with TOTP is elevated: {body}");
    let_it_grow_old().await;
    let (status, by_password) = elevate_with_password(&server, access(&session), PASSWORD).await;
    assert_eq!(status, 200, "{by_password}");
    let (status, body) = mint(access(&by_password).to_string()).await;
    assert_eq!((status, error_of(&body)), (403, Some("stronger_proof_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/account/remove", Some(access(&by_password)), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("stronger_proof_required")), "{body}");
    let (status, by_totp) = server.call("POST", "/v1/elevate/totp", Some(access(&by_password)), Some(json!({"code": totp_code(&totp, 1)}))).await;
    assert_eq!(status, 200, "{by_totp}");
    let (status, body) = mint(access(&by_totp).to_string()).await;
    assert_eq!(status, 200, "{body}");

    // With a passkey added, a password sign-in is no longer elevated; the passkey is.
    let username = unique("level-passkey");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let mut laptop = SoftAuthenticator::new();
    let bearer = Some(session.access_token.as_str());
    let (challenge_id, options) = start(&server, "/v1/user/webauthn/add", bearer, json!({"nickname": "laptop"})).await;
    let (status, added) = answer(&server, "/v1/user/webauthn/verify", bearer, &challenge_id, &laptop.create(&options)).await;
    assert_eq!(status, 200, "{added}");
    let fresh = server.sign_in(&username).await;
    let (status, body) = mint(fresh.access_token.clone()).await;
    assert_eq!((status, error_of(&body)), (403, Some("stronger_proof_required")), "a password alone: {body}");
    let (status, body) = server.call("POST", "/v1/mfa/totp/generate", Some(&fresh.access_token), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("stronger_proof_required")), "{body}");
    let (challenge_id, options) = start(&server, "/v1/elevate/webauthn", Some(&fresh.access_token), json!({})).await;
    let (status, elevated) = answer(&server, "/v1/elevate/webauthn/verify", Some(&fresh.access_token), &challenge_id, &laptop.get(&options)).await;
    assert_eq!(status, 200, "{elevated}");
    assert_eq!(claims(access(&elevated))["acr"], json!("aal2"));
    let (status, body) = mint(access(&elevated).to_string()).await;
    assert_eq!(status, 200, "{body}");
}

async fn step_up_by_email_is_for_accounts_with_nothing_else(backend: Backend) {
    let server = stale_server(backend, &[("AUTHD_OPEN_SIGNUP", "true")]).await;
    // An account made by an emailed code: no password, TOTP or passkey.
    let email = format!("{}@example.com", unique("mailonly"));
    let (status, session) = sign_in_by_mailed_code(&server, &email).await;
    assert_eq!(status, 200, "{session}");
    let_it_grow_old().await;
    let bearer = Some(access(&session));
    let (status, body) = server.call("POST", "/v1/account/remove", bearer, None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");

    let (status, body) = server.call("POST", "/v1/elevate/email", bearer, None).await;
    assert_eq!(status, 204, "{body}");
    let (_, mail) = outbox_mail(&server, &email, |subject| subject == "Confirm it is you").await;
    let code = mail.split("code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code").to_string();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = server.call("POST", "/v1/elevate/email/verify", bearer, Some(json!({"otp": wrong}))).await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{body}");
    // A sign-in code is no step-up code, and the other way round.
    let (status, body) = server.call("POST", "/v1/sign/in/otp/email/verify", None, Some(json!({"email": email, "otp": code}))).await;
    assert_eq!(status, 401, "{body}");
    let (status, elevated) = server.call("POST", "/v1/elevate/email/verify", bearer, Some(json!({"otp": code}))).await;
    assert_eq!(status, 200, "{elevated}");
    let (status, body) = server.call("POST", "/v1/elevate/email/verify", bearer, Some(json!({"otp": code}))).await;
    assert_eq!(status, 401, "a code works once: {body}");
    let fresh = claims(access(&elevated));
    assert!(fresh["auth_time"].as_i64() > claims(access(&session))["auth_time"].as_i64());
    let (status, body) = server.call("POST", "/v1/account/remove", Some(access(&elevated)), None).await;
    assert_eq!(status, 204, "{body}");

    // An account with a password steps up with it, not by mail; a stranger not at all.
    let username = unique("has-password");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let (status, body) = server.call("POST", "/v1/elevate/email", Some(&session.access_token), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("other_proof_required")), "{body}");
    let (status, _) = server.call("POST", "/v1/elevate/email", None, None).await;
    assert_eq!(status, 401);
}

/// The routes a PAT session must never reach, with bodies that would otherwise pass.
fn elevated_routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    vec![
        ("POST", "/v1/pat", Some(json!({"name": "more", "expires_at": expires}))),
        ("POST", "/v1/account/remove", None),
        ("POST", "/v1/mfa/totp/generate", None),
        ("POST", "/v1/mfa/totp/enable", Some(json!({"code": "123456"}))),
        ("POST", "/v1/mfa/totp/disable", Some(json!({"code": "123456"}))),
        ("POST", "/v1/user/password", Some(json!({"registration_request": "A".repeat(43)}))),
        ("POST", "/v1/user/email/change", Some(json!({"new_email": "thief@example.com"}))),
        ("POST", "/v1/user/phone/change", Some(json!({"phone_number": "+14155550000"}))),
        ("POST", "/v1/user/webauthn/add", Some(json!({}))),
        ("DELETE", "/v1/user/webauthn/AAAA", None),
        ("POST", "/v1/elevate/password", Some(json!({"credential_request": "A".repeat(128)}))),
        ("POST", "/v1/elevate/totp", Some(json!({"code": "123456"}))),
        ("POST", "/v1/elevate/email", None),
        ("POST", "/v1/elevate/webauthn", Some(json!({}))),
    ]
}

async fn a_pat_session_reaches_no_elevated_route(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("machine");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (status, created) = server.call("POST", "/v1/pat", Some(&session.access_token), Some(json!({"name": "ci", "expires_at": expires}))).await;
    assert_eq!(status, 200, "{created}");
    let (status, machine) = server.call("POST", "/v1/sign/in/pat", None, Some(json!({"personal_access_token": created["personal_access_token"]}))).await;
    assert_eq!(status, 200, "{machine}");
    let token = access(&machine);
    assert_eq!(claims(token)["amr"], json!(["pat"]));
    // Fresh as it is, the session is a machine's.
    for (method, path, body) in elevated_routes() {
        let (status, answer_body) = server.call(method, path, Some(token), body).await;
        assert_eq!((status, error_of(&answer_body)), (403, Some("machine_session")), "{method} {path}: {answer_body}");
    }
    // It still reads what it may.
    let (status, _) = server.call("GET", "/v1/user", Some(token), None).await;
    assert_eq!(status, 200);
    // The password is unchanged: the owner still signs in with it.
    server.sign_in(&username).await;
}

async fn a_pat_s_sessions_end_with_it(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("pat-end");
    server.sign_up(&username).await;
    let owner = server.sign_in(&username).await;
    let pat = |expires_at: String| {
        let server = &server;
        let bearer = owner.access_token.clone();
        async move {
            let (status, created) = server.call("POST", "/v1/pat", Some(&bearer), Some(json!({"name": "ci", "expires_at": expires_at}))).await;
            assert_eq!(status, 200, "{created}");
            let (status, session) = server.call("POST", "/v1/sign/in/pat", None, Some(json!({"personal_access_token": created["personal_access_token"]}))).await;
            assert_eq!(status, 200, "{session}");
            (created["pat_id"].as_str().expect("id").to_string(), session)
        }
    };
    // Revoked: its session ends at once (token check and refresh).
    let (pat_id, session) = pat((chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339()).await;
    server.api().jwt_verify(access(&session)).await.expect("alive before");
    let (status, _) = server.call("DELETE", &format!("/v1/pat/{pat_id}"), Some(&owner.access_token), None).await;
    assert_eq!(status, 204);
    assert!(server.api().jwt_verify(access(&session)).await.is_err(), "revoked: the session ends");
    assert!(server.api().refresh(session["refresh_token"].as_str().expect("refresh")).await.is_err());
    server.api().jwt_verify(&owner.access_token).await.expect("the owner's own session lives on");

    // Expired: likewise, without anyone revoking it.
    let (_, session) = pat((chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339()).await;
    server.api().jwt_verify(access(&session)).await.expect("alive before");
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    assert!(server.api().jwt_verify(access(&session)).await.is_err(), "expired: the session ends");
    assert!(server.api().refresh(session["refresh_token"].as_str().expect("refresh")).await.is_err());
}

/// The ticket of the last sign-in link mailed to `email`.
async fn ticket_in_mail(server: &Server, email: &str) -> String {
    let (_, mail) = outbox_mail(server, email, |subject| subject == "Your sign-in link").await;
    let link = mail.split("Sign in: ").nth(1).and_then(|rest| rest.lines().next()).expect("link");
    reqwest::Url::parse(link).expect("url").query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.to_string()).expect("ticket")
}

async fn deanonymizing_cannot_hijack_another_s_address(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true")]).await;
    let victim = verified_account(&server, "victim").await;
    let (_, attacker) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    let attacker = access(&attacker).to_string();
    // Asked for the victim's address, and for a free one: the same answer.
    let free = format!("{}@example.com", unique("free"));
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&attacker), Some(json!({"method": "email", "email": victim}))).await;
    let (free_status, free_body) = server.call("POST", "/v1/user/deanonymize", Some(&attacker), Some(json!({"method": "email", "email": free}))).await;
    assert_eq!((status, &body), (free_status, &free_body), "answered alike");
    assert_eq!(status, 204);
    // The victim gets a notice, never a link into the attacker's account.
    let (_, notice) = outbox_mail(&server, &victim, |subject| subject == "Your address was used to sign up").await;
    assert!(!notice.contains("/v1/verify"), "{notice}");
    let links_to_victim = crate::helpers::outbox(&server).into_iter().filter(|(to, subject, _)| to == &victim && subject == "Your sign-in link").count();
    assert_eq!(links_to_victim, 0);
    // The attacker's account is still anonymous; the victim's address is hers alone.
    let (status, body) = server.call("GET", "/v1/user", Some(&attacker), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["email"].is_null() || body["email"] == json!(free), "{body}");
    let (status, session) = sign_in_by_mailed_code(&server, &victim).await;
    assert_eq!(status, 200, "{session}");
    assert_ne!(session["profile_id"], claims(&attacker)["sub"], "a code to her address signs in to her account");
}

async fn deanonymize_honours_the_sign_in_methods(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true"), ("AUTHD_SIGN_IN_METHODS", "password")]).await;
    let (_, session) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    let email = format!("{}@example.com", unique("off"));
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(access(&session)), Some(json!({"method": "email", "email": email}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("method_disabled")), "{body}");
    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true"), ("AUTHD_SIGN_IN_METHODS", "email_link")]).await;
    let (_, session) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    let body = json!({"method": "password", "username": unique("off"), "registration_request": "A".repeat(43)});
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(access(&session)), Some(body)).await;
    assert_eq!((status, error_of(&body)), (403, Some("method_disabled")), "{body}");
    let (status, body) = server.call("POST", "/v1/user/deanonymize/finish", Some(access(&session)), Some(json!({"registration_record": "A".repeat(256)}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("method_disabled")), "{body}");
}

async fn a_verified_address_is_one_account_s(backend: Backend) {
    let server = Server::start(backend).await;
    let email = verified_account(&server, "first").await;
    // A second account signs up with the same address: its activation is refused.
    let username = unique("second");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let mut activations = Vec::new();
    for _ in 0..50 {
        activations = crate::helpers::outbox(&server).into_iter().filter(|(to, subject, _)| to == &email && subject == "Activate your account").collect();
        if activations.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(activations.len(), 2);
    // (The first account's code is spent; the second's is refused.)
    let mut answers = Vec::new();
    for (_, _, mail) in activations {
        let (verification_id, code) = crate::helpers::code_and_id(&mail);
        let (status, body) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
        answers.push((status, error_of(&body).map(str::to_string)));
    }
    assert!(answers.contains(&(409, Some("email_taken".to_string()))), "{answers:?}");
    let second = server.sign_in(&username).await;
    assert!(!server.api().user(&second.access_token).await.expect("user").email_verified);
    // Once the first account moves to another address, the old one is free.
    let first = server.sign_in(email.split('@').next().expect("username")).await;
    let other = format!("{}@example.com", unique("moved"));
    let (status, _) = server.call("POST", "/v1/user/email/change", Some(&first.access_token), Some(json!({"new_email": other}))).await;
    assert_eq!(status, 204);
    let (_, mail) = outbox_mail(&server, &other, |subject| subject == "Confirm your new email address").await;
    let (verification_id, code) = crate::helpers::code_and_id(&mail);
    let (status, body) = server.call("POST", "/v1/user/email/verify", Some(&first.access_token), Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = server.call("POST", "/v1/user/email/change", Some(&second.access_token), Some(json!({"new_email": email}))).await;
    assert_eq!(status, 204);
    let (_, mail) = outbox_mail(&server, &email, |subject| subject == "Confirm your new email address").await;
    let (verification_id, code) = crate::helpers::code_and_id(&mail);
    let (status, body) = server.call("POST", "/v1/user/email/verify", Some(&second.access_token), Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204, "{body}");
    assert!(server.api().user(&second.access_token).await.expect("user").email_verified);
}

async fn with_open_sign_up_a_link_creates_the_account(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_OPEN_SIGNUP", "true")]).await;
    let email = format!("{}@example.com", unique("link-new"));
    let (status, _) = server.call("POST", "/v1/sign/in/passwordless/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204);
    let ticket = ticket_in_mail(&server, &email).await;
    // A ticket whose sealed address was tampered with creates nothing.
    let mut parts: Vec<String> = ticket.split('.').map(str::to_string).collect();
    assert_eq!(parts.len(), 3, "{ticket}");
    parts[2] = format!("{}{}", if parts[2].starts_with('A') { "B" } else { "A" }, &parts[2][1..]);
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": parts.join(".")}))).await;
    assert_eq!(status, 401, "a forged seal");
    let (status, session) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 200, "{session}");
    let me = server.api().user(access(&session)).await.expect("user");
    assert_eq!((me.email.as_deref(), me.email_verified), (Some(email.as_str()), true));
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 401, "once");
    // The address is the new account's: a code to it signs in there.
    let (status, by_code) = sign_in_by_mailed_code(&server, &email).await;
    assert_eq!(status, 200, "{by_code}");
    assert_eq!(by_code["profile_id"], session["profile_id"]);
}

async fn addresses_verified_before_owners_were_recorded_are_claimed_at_start_up(backend: Backend) {
    let mut server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true")]).await;
    let email = verified_account(&server, "before").await;
    // A store from before owners were recorded: no claims, no upgrade done.
    let forget_claims = ["DELETE FROM event_positions WHERE aggregate_type = 'email_address'", "DELETE FROM events WHERE aggregate_type = 'email_address'"];
    server.sql(&forget_claims).await;
    server.sql(&["DELETE FROM upgrades"]).await;
    server.restart().await;
    let claims: Vec<_> = server.stored_events().await.into_iter().filter(|(kind, _, _)| kind == "email_address").collect();
    assert_eq!(claims.len(), 1, "start-up claimed the verified address: {claims:?}");
    // So an anonymous account asking for it gets no link, only the owner a notice.
    let (_, anonymous) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(access(&anonymous)), Some(json!({"method": "email", "email": email}))).await;
    assert_eq!(status, 204, "{body}");
    outbox_mail(&server, &email, |subject| subject == "Your address was used to sign up").await;
    // Once is enough: a start-up after it leaves the claims alone (a claim deleted
    // now stays deleted).
    server.sql(&forget_claims).await;
    server.restart().await;
    let claims = server.stored_events().await.into_iter().filter(|(kind, _, _)| kind == "email_address").count();
    assert_eq!(claims, 0, "the upgrade ran once");
}
