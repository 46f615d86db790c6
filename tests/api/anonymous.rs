//! Anonymous users: off unless configured; a session marked `anon` that reaches no
//! elevated route; made a real account (the same profile id) by a username and
//! password — black-box on both stores.

use client::{Registration, SignInOutcome};
use serde_json::json;

use crate::elevation::error_of;
use crate::helpers::{detail_paths, unique, Backend, Server, PASSWORD};
use crate::security::claims;

both_stores!(
    an_anonymous_user_becomes_a_real_one_with_the_same_profile_id,
    an_anonymous_user_becomes_real_by_an_emailed_link,
    unused_anonymous_accounts_are_removed,
);

async fn an_anonymous_user_becomes_a_real_one_with_the_same_profile_id(backend: Backend) {
    let off = Server::start(backend).await;
    let (status, body) = off.call("POST", "/v1/sign/in/anonymous", None, Some(json!({}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("method_disabled")), "off by default: {body}");
    drop(off);

    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true")]).await;
    let (status, session) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    assert_eq!(status, 200, "{session}");
    let access = session["access_token"].as_str().expect("access").to_string();
    let profile_id = session["profile_id"].clone();
    assert_eq!(claims(&access)["amr"], json!(["anon"]));
    let me = server.api().user(&access).await.expect("user");
    assert_eq!(json!(me.profile_id), profile_id);

    // No elevated route, whatever the age of the session.
    for (path, body) in [
        ("/v1/account/remove", None),
        ("/v1/pat", Some(json!({"name": "x", "expires_at": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339()}))),
        ("/v1/user/email/change", Some(json!({"new_email": "a@example.com"}))),
        ("/v1/mfa/totp/generate", None),
        ("/v1/elevate/email", None),
        ("/v1/elevate/totp", Some(json!({"code": "123456"}))),
    ] {
        let (status, answer) = server.call("POST", path, Some(&access), body).await;
        assert_eq!((status, error_of(&answer)), (403, Some("anonymous_user")), "{path}: {answer}");
    }

    // Deanonymize: bad input, a taken name, then the real thing.
    let taken = unique("taken");
    server.sign_up(&taken).await;
    let (registration, request) = Registration::start(PASSWORD).expect("start");
    let start = |method: &str, username: &str| json!({"method": method, "username": username, "registration_request": request});
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&access), Some(start("carrier-pigeon", "ab"))).await;
    let mut bad = detail_paths(&body);
    bad.sort();
    assert_eq!((status, bad), (422, vec!["method".to_string(), "username".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&access), Some(start("email", "ab"))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["email".to_string()]), "by email, an address: {body}");
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&access), Some(start("password", &taken))).await;
    assert_eq!((status, error_of(&body)), (409, Some("username_taken")), "{body}");
    let (status, body) = server.call("POST", "/v1/user/deanonymize/finish", Some(&access), Some(json!({"registration_record": "A".repeat(256)}))).await;
    assert_eq!(status, 422, "no username picked, or no record: {body}");

    let username = unique("was-anon");
    let (status, started) = server.call("POST", "/v1/user/deanonymize", Some(&access), Some(start("password", &username))).await;
    assert_eq!(status, 200, "{started}");
    let record = registration.finish(PASSWORD, started["registration_response"].as_str().expect("response")).expect("finish");
    let (status, body) = server.call("POST", "/v1/user/deanonymize/finish", Some(&access), Some(json!({"registration_record": record}))).await;
    assert_eq!(status, 204, "{body}");

    // The same account, now with a username and password.
    let Ok(SignInOutcome::Session(real)) = server.api().sign_in(&username, PASSWORD).await else { panic!("sign in") };
    assert_eq!(json!(real.profile_id), profile_id, "the profile id stays");
    assert_eq!(claims(&real.access_token)["amr"], json!(["pwd"]));
    assert_eq!(server.api().user(&real.access_token).await.expect("user").username, username);
    // A real session is not anonymous: deanonymizing it again is refused.
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&real.access_token), Some(start("password", &unique("again")))).await;
    assert_eq!((status, error_of(&body)), (403, Some("not_anonymous")), "{body}");
}

async fn unused_anonymous_accounts_are_removed(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true"), ("AUTHD_ANONYMOUS_RETENTION", "3")]).await;
    let anonymous = || async { server.call("POST", "/v1/sign/in/anonymous", None, None).await.1 };
    let (idle, mut used) = (anonymous().await, anonymous().await);
    let idle_token = idle["access_token"].as_str().expect("token").to_string();
    // One account used all along (refreshed every second), one left alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        let refreshed = server.api().refresh(used["refresh_token"].as_str().expect("refresh")).await.expect("the used account lives on");
        used = serde_json::to_value(&refreshed).expect("json");
        let (status, _) = server.call("GET", "/v1/user", Some(&idle_token), None).await;
        if status == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the idle anonymous account was not removed");
    }
    let removed = server.events().await.iter().any(|e| e["event_type"] == "UserRemoved" && e["aggregate_id"] == idle["profile_id"]);
    assert!(removed, "removed (and shredded) through the log");
    server.api().user(used["access_token"].as_str().expect("token")).await.expect("the used one stays");
}

async fn an_anonymous_user_becomes_real_by_an_emailed_link(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ANONYMOUS", "true")]).await;
    let (_, session) = server.call("POST", "/v1/sign/in/anonymous", None, None).await;
    let access = session["access_token"].as_str().expect("token").to_string();
    let email = format!("{}@example.com", unique("anon-link"));
    let (status, body) = server.call("POST", "/v1/user/deanonymize", Some(&access), Some(json!({"method": "email", "email": email}))).await;
    assert_eq!(status, 204, "{body}");
    let (_, mail) = crate::helpers::outbox_mail(&server, &email, |subject| subject == "Your sign-in link").await;
    let link = mail.split("Sign in: ").nth(1).and_then(|rest| rest.lines().next()).expect("link");
    let url = reqwest::Url::parse(link).expect("url");
    let ticket = url.query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.to_string()).expect("ticket");
    let (status, real) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 200, "{real}");
    assert_eq!(real["profile_id"], session["profile_id"], "the profile id stays");
    let token = real["access_token"].as_str().expect("token");
    assert_eq!(claims(token)["amr"], json!(["email"]), "a real session");
    let me = server.api().user(token).await.expect("user");
    assert_eq!((me.email.as_deref(), me.email_verified), (Some(email.as_str()), true));
    assert!(!me.username.is_empty());
    let (status, _) = server.call("POST", "/v1/verify", None, Some(json!({"ticket": ticket}))).await;
    assert_eq!(status, 401, "once");
}
