//! Limits an attacker meets, black-box on both stores: rate limits on every write
//! (per address, per session), the server-wide hourly budget of texted codes, wrong
//! codes answered alike for known and unknown addresses, and removal releasing what
//! the account held (an outside identity) and forgetting its pending mail.

use serde_json::{json, Value};

use crate::helpers::{outbox, outbox_mail, unique, Backend, Server, PASSWORD};
use crate::security::post;

both_stores!(
    a_flood_of_writes_from_one_session_gets_429,
    a_flood_of_anonymous_writes_from_one_address_gets_429,
    deanonymize_username_checks_are_rate_limited,
    the_sms_budget_caps_texts_server_wide,
    wrong_codes_answer_alike_for_known_and_unknown_addresses,
    after_removal_the_identity_signs_in_again,
    removal_drops_pending_mail,
);

/// Rate limits on, as shipped (the harness turns them off elsewhere).
const LIMITS_ON: (&str, &str) = ("AUTHD_RATE_LIMIT", "on");

/// Sends `request` until it answers 429; the answers before it and the 429's
/// Retry-After and body.
async fn flood(mut request: impl AsyncFnMut() -> (u16, Option<u64>, Value), most: usize) -> (Vec<u16>, u64, Value) {
    let mut before = Vec::new();
    for _ in 0..most {
        let (status, retry_after, body) = request().await;
        if status == 429 {
            return (before, retry_after.expect("429 carries Retry-After"), body);
        }
        before.push(status);
    }
    panic!("no 429 after {most} requests: {before:?}");
}

async fn a_flood_of_writes_from_one_session_gets_429(backend: Backend) {
    let server = Server::start_with(backend, &[LIMITS_ON]).await;
    let username = unique("flood");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = Some(session.access_token.as_str());
    // 30 writes a minute per session by default; the address allows more.
    let (before, retry_after, body) = flood(async || post(&server, "/v1/mfa/totp/generate", bearer, json!({})).await, 40).await;
    // (The quota refills one write every two seconds while the flood runs.)
    assert!((30..=34).contains(&before.len()), "{before:?}");
    assert!(before.iter().all(|status| *status == 200), "{before:?}");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    // Reads go on; another session of the same account (same address) may write.
    server.api().user(&session.access_token).await.expect("reads are not limited");
    let other = server.sign_in(&username).await;
    let (status, _, body) = post(&server, "/v1/mfa/totp/generate", Some(&other.access_token), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

async fn a_flood_of_anonymous_writes_from_one_address_gets_429(backend: Backend) {
    let server = Server::start_with(backend, &[LIMITS_ON]).await;
    // Refreshes with made-up tokens: 401 each, until the address's writes (120 a
    // minute by default) are spent.
    let (before, retry_after, body) =
        flood(async || post(&server, "/v1/token/refresh", None, json!({"refresh_token": unique("guess")})).await, 200).await;
    assert!((120..=140).contains(&before.len()), "{} before the 429", before.len());
    assert!(before.iter().all(|status| *status == 401), "{before:?}");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    // A bogus bearer token does not open a new allowance: the address is spent.
    let (status, _, _) = post(&server, "/v1/sign/out", Some("not-a-token"), json!({})).await;
    assert_eq!(status, 429);
    // Token checks and reads are not writes.
    let (status, _) = server.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}

async fn deanonymize_username_checks_are_rate_limited(backend: Backend) {
    let server = Server::start_with(backend, &[LIMITS_ON, ("AUTHD_ANONYMOUS", "true")]).await;
    let taken = unique("taken");
    server.sign_up(&taken).await;
    let (status, session) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    assert_eq!(status, 200, "{session}");
    let access = session["access_token"].as_str().expect("token").to_string();
    // Each attempt asks whether a username is free: an oracle, limited per session.
    let (before, retry_after, body) = flood(
        async || {
            let (_, request) = client::Registration::start(PASSWORD).expect("start");
            let body = json!({"method": "password", "username": taken, "registration_request": request});
            post(&server, "/v1/user/deanonymize", Some(&access), body).await
        },
        40,
    )
    .await;
    assert!((30..=34).contains(&before.len()), "{before:?}");
    assert!(before.iter().all(|status| *status == 409), "the name is taken: {before:?}");
    assert!((1..=60).contains(&retry_after));
    assert_eq!(body["error"], "rate_limited", "{body}");
}

async fn the_sms_budget_caps_texts_server_wide(backend: Backend) {
    let hook = crate::verifications::webhook(200).await;
    let env = [("AUTHD_OPEN_SIGNUP", "true"), ("AUTHD_SMS_WEBHOOK_URL", hook.url.as_str()), ("AUTHD_SMS_HOURLY_LIMIT", "2")];
    let server = Server::start_with(backend, &env).await;
    let numbers: Vec<String> = (0..3).map(|_| format!("+4420{:08}", uuid::Uuid::new_v4().as_u128() % 100_000_000)).collect();
    for (sent, number) in numbers.iter().enumerate() {
        let (status, body) = server.call("POST", "/v1/sign/in/passwordless/sms", None, Some(json!({"phone_number": number}))).await;
        assert_eq!(status, 204, "the same answer past the budget: {body}");
        // In turn, so the budget is spent in this order.
        for _ in 0..50 {
            if hook.received().len() > sent || sent == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let texted: Vec<String> = hook.received().iter().map(|m| m["to"].as_str().expect("to").to_string()).collect();
    assert_eq!(texted, numbers[..2], "two texts an hour, then none");
    let log = server.log();
    assert!(log.contains("AUTHD_SMS_HOURLY_LIMIT"), "a warning is logged");
    assert!(numbers.iter().all(|number| !log.contains(number.as_str())), "no number in the log");
}

async fn request_code(server: &Server, email: &str) -> String {
    let (status, body) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 204, "{body}");
    let (_, mail) = outbox_mail(server, email, |subject| subject == "Your sign-in code").await;
    mail.split("code is ").nth(1).and_then(|rest| rest.split('.').next()).expect("code").to_string()
}

/// Status and Retry-After of `tries` wrong codes for `address` at `path`.
async fn wrong_codes(server: &Server, path: &str, field: &str, address: &str, wrong: &str, tries: usize) -> Vec<(u16, Option<u64>)> {
    let mut answers = Vec::new();
    for _ in 0..tries {
        let (status, retry_after, body) = post(server, path, None, json!({field: address, "otp": wrong})).await;
        assert!(matches!(status, 401 | 429), "{status}: {body}");
        answers.push((status, retry_after));
    }
    answers
}

async fn wrong_codes_answer_alike_for_known_and_unknown_addresses(backend: Backend) {
    let env = [("AUTHD_LOCKOUT_THRESHOLD", "3"), ("AUTHD_LOCKOUT_DURATION", "600")];
    let server = Server::start_with(backend, &env).await;
    // Known: an account with a verified address and a live code.
    let username = unique("known");
    let known = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, PASSWORD, Some(&token), Some(&known)).await.expect("sign up");
    let (verification_id, code) = crate::helpers::activation_code(&server, &known).await;
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);
    let code = request_code(&server, &known).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let unknown = format!("{}@example.com", unique("nobody"));
    let (status, _) = server.call("POST", "/v1/sign/in/otp/email", None, Some(json!({"email": unknown}))).await;
    assert_eq!(status, 204);

    let path = "/v1/sign/in/otp/email/verify";
    let for_known = wrong_codes(&server, path, "email", &known, wrong, 6).await;
    let for_unknown = wrong_codes(&server, path, "email", &unknown, wrong, 6).await;
    let statuses = |answers: &[(u16, Option<u64>)]| answers.iter().map(|(status, _)| *status).collect::<Vec<_>>();
    assert_eq!(statuses(&for_known), [401, 401, 401, 429, 429, 429]);
    assert_eq!(statuses(&for_unknown), statuses(&for_known), "{for_unknown:?} / {for_known:?}");
    for (known, unknown) in for_known.iter().zip(&for_unknown) {
        // The same back-off (a second may pass between the two sequences).
        match (known.1, unknown.1) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(a.abs_diff(b) <= 2, "{for_known:?} / {for_unknown:?}"),
            other => panic!("Retry-After differs: {other:?}"),
        }
    }
    // Texted codes to an unknown number answer the same way.
    let number = format!("+4420{:08}", uuid::Uuid::new_v4().as_u128() % 100_000_000);
    let texted = wrong_codes(&server, "/v1/sign/in/passwordless/sms/otp", "phone_number", &number, wrong, 6).await;
    assert_eq!(statuses(&texted), statuses(&for_known), "{texted:?}");
    // The known account's right code is refused while throttled (not spent).
    let (status, _, _) = post(&server, path, None, json!({"email": known, "otp": code})).await;
    assert_eq!(status, 429);
}

async fn after_removal_the_identity_signs_in_again(backend: Backend) {
    let mut issuer = crate::idtoken::issuer().await;
    issuer.add_key("k1", true);
    let providers = issuer.providers();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let subject = unique("ext-subject");
    let id_token = || issuer.token("k1", "k1", issuer.claims(&subject, |_| {}));
    // Linked to a password account, which then is removed.
    let username = unique("linked");
    let first = server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let link = json!({"provider": "local", "id_token": id_token()});
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&session.access_token), Some(link)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = crate::idtoken::sign_in(&server, &id_token(), None).await;
    assert_eq!((status, body["profile_id"].as_str()), (200, Some(first.as_str())), "{body}");
    let (status, body) = server.call("POST", "/v1/account/remove", Some(&session.access_token), None).await;
    assert_eq!(status, 204, "{body}");
    // The identity is free: with open sign-up it signs up a new account...
    let (status, fresh) = crate::idtoken::sign_in(&server, &id_token(), None).await;
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["profile_id"].as_str(), Some(first.as_str()), "a new account");
    // ...and after that one's removal, another account can link it.
    let (status, body) = server.call("POST", "/v1/account/remove", fresh["access_token"].as_str(), None).await;
    assert_eq!(status, 204, "{body}");
    let other = unique("relinks");
    let other_profile = server.sign_up(&other).await;
    let others = server.sign_in(&other).await;
    let link = json!({"provider": "local", "id_token": id_token()});
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&others.access_token), Some(link)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = crate::idtoken::sign_in(&server, &id_token(), None).await;
    assert_eq!((status, body["profile_id"].as_str()), (200, Some(other_profile.as_str())), "{body}");
}

async fn removal_drops_pending_mail(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("moving");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let new_email = format!("{}@example.com", unique("new-address"));
    let (status, body) = server.call("POST", "/v1/user/email/change", Some(&session.access_token), Some(json!({"new_email": new_email}))).await;
    assert_eq!(status, 204, "{body}");
    outbox_mail(&server, &new_email, |subject| subject == "Confirm your new email address").await;
    let (status, body) = server.call("POST", "/v1/account/remove", Some(&session.access_token), None).await;
    assert_eq!(status, 204, "{body}");
    let left: Vec<_> = outbox(&server).into_iter().filter(|(to, _, _)| *to == new_email).collect();
    assert!(left.is_empty(), "mail to the pending address is gone: {left:?}");
}
