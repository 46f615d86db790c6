//! Step-up: `auth_time` in access tokens, 403 `elevation_required` on MFA disable and
//! account removal once the proof of presence is old, and the elevation routes (by
//! password, by TOTP) with their rejections — black-box on SQLite and PostgreSQL.

use std::time::Duration;

use client::Login;
use serde_json::{json, Value};

use crate::helpers::{authenticator, totp_code, unique, Backend, Server, PASSWORD};
use crate::security::{claims, post, start_of_step, wrong_code};

both_stores!(
    access_tokens_carry_auth_time_and_a_refresh_keeps_it,
    removal_needs_a_recent_password_proof,
    disabling_mfa_needs_a_recent_totp_proof,
    password_elevation_rejections,
    wrong_codes_on_elevation_are_throttled,
);

/// Seconds a proof counts as recent in these tests.
const MAX_AGE: &str = "2";

pub(crate) async fn stale_server(backend: Backend, extra: &[(&str, &str)]) -> Server {
    let mut env: Vec<(&str, &str)> = vec![("AUTHD_ELEVATION_MAX_AGE", MAX_AGE)];
    env.extend_from_slice(extra);
    Server::start_with(backend, &env).await
}

/// Lets the proof of presence of every token issued so far grow old.
pub(crate) async fn let_it_grow_old() {
    tokio::time::sleep(Duration::from_millis(3_100)).await;
}

/// `POST /v1/elevate/password` + `/finish` with `password`; status and body of the finish.
pub(crate) async fn elevate_with_password(server: &Server, access_token: &str, password: &[u8]) -> (u16, Value) {
    let (login, ke1) = Login::start(password).expect("login start");
    let (status, started) = server.call("POST", "/v1/elevate/password", Some(access_token), Some(json!({"credential_request": ke1}))).await;
    assert_eq!(status, 200, "{started}");
    let ke2 = started["credential_response"].as_str().expect("ke2");
    // A wrong password fails at the client; it sends a well-formed bogus KE3 then.
    let ke3 = login.finish(password, ke2).map(|(ke3, _)| ke3).unwrap_or_else(|_| crate::helpers::bogus_ke3());
    let body = json!({"sign_in_id": started["sign_in_id"], "credential_finalization": ke3});
    server.call("POST", "/v1/elevate/password/finish", Some(access_token), Some(body)).await
}

pub(crate) fn error_of(body: &Value) -> Option<&str> {
    body["error"].as_str()
}

async fn access_tokens_carry_auth_time_and_a_refresh_keeps_it(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("auth-time");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let signed_in = claims(&session.access_token);
    assert_eq!(signed_in["auth_time"], signed_in["iat"], "the sign-in is the proof of presence");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let refreshed = server.api().refresh(&session.refresh_token).await.expect("refresh");
    let refreshed = claims(&refreshed.access_token);
    assert!(refreshed["iat"].as_i64() > signed_in["iat"].as_i64());
    assert_eq!(refreshed["auth_time"], signed_in["auth_time"], "a refresh proves no presence");
}

async fn removal_needs_a_recent_password_proof(backend: Backend) {
    let server = stale_server(backend, &[]).await;
    let username = unique("stale-remove");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let_it_grow_old().await;

    let (status, body) = server.call("POST", "/v1/account/remove", Some(&session.access_token), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    server.api().jwt_verify(&session.access_token).await.expect("the account is still there");

    let (status, elevated) = elevate_with_password(&server, &session.access_token, PASSWORD).await;
    assert_eq!(status, 200, "{elevated}");
    let token = elevated["access_token"].as_str().expect("access token");
    let fresh = claims(token);
    assert!(fresh["auth_time"].as_i64() > claims(&session.access_token)["auth_time"].as_i64());
    assert_eq!(fresh["sid"], claims(&session.access_token)["sid"], "the same session, elevated");
    assert_eq!(fresh["amr"], json!(["pwd"]));

    let (status, body) = server.call("POST", "/v1/account/remove", Some(token), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = server.call("GET", "/v1/user", Some(token), None).await;
    assert_eq!(status, 401);
}

async fn disabling_mfa_needs_a_recent_totp_proof(backend: Backend) {
    start_of_step().await;
    let server = stale_server(backend, &[]).await;
    let username = unique("stale-mfa");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = Some(session.access_token.as_str());
    let (status, body) = server.call("POST", "/v1/elevate/totp", bearer, Some(json!({"code": "123456"}))).await;
    assert_eq!((status, error_of(&body)), (409, Some("mfa_not_enabled")), "{body}");
    let (_, enrollment) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    let totp = authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let (status, body) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": totp_code(&totp, -1)}))).await;
    assert_eq!(status, 204, "{body}");
    let_it_grow_old().await;

    let (status, body) = server.call("POST", "/v1/mfa/totp/disable", bearer, Some(json!({"code": totp_code(&totp, 0)}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (status, body) = server.call("POST", "/v1/elevate/totp", bearer, Some(json!({"code": wrong_code(&totp)}))).await;
    assert_eq!(status, 422, "{body}");
    // The refused disable did not spend the code: it elevates.
    let (status, elevated) = server.call("POST", "/v1/elevate/totp", bearer, Some(json!({"code": totp_code(&totp, 0)}))).await;
    assert_eq!(status, 200, "{elevated}");
    let token = elevated["access_token"].as_str().expect("access token");
    assert_eq!(claims(token)["amr"], json!(["pwd", "otp"]));
    let (status, body) = server.call("POST", "/v1/elevate/totp", Some(token), Some(json!({"code": totp_code(&totp, 0)}))).await;
    assert_eq!(status, 422, "a code elevates once: {body}");

    let (status, body) = server.call("POST", "/v1/mfa/totp/disable", Some(token), Some(json!({"code": totp_code(&totp, 1)}))).await;
    assert_eq!(status, 204, "{body}");
    assert!(!server.api().user(token).await.expect("user").mfa_enabled);

    // The refresh token from before the elevation was rotated by it: presenting it
    // again is a reuse, which ends the session.
    let (status, body) = server.call("POST", "/v1/token/refresh", None, Some(json!({"refresh_token": session.refresh_token}))).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = server.call("GET", "/v1/user", Some(token), None).await;
    assert_eq!(status, 401, "a reused refresh token revoked the session");
}

async fn password_elevation_rejections(backend: Backend) {
    let server = stale_server(backend, &[]).await;
    let (alice, bob) = (unique("elev-a"), unique("elev-b"));
    server.sign_up(&alice).await;
    server.sign_up(&bob).await;
    let session = server.sign_in(&alice).await;
    let bearer = Some(session.access_token.as_str());

    // A stranger: no token, or a token that is not one.
    let (_, ke1) = Login::start(PASSWORD).expect("login start");
    let (sign_in_id, ke3) = crate::helpers::ke3(&server, &alice).await;
    let requests = [
        ("/v1/elevate/password", json!({"credential_request": ke1})),
        ("/v1/elevate/password/finish", json!({"sign_in_id": sign_in_id, "credential_finalization": ke3})),
        ("/v1/elevate/totp", json!({"code": "123456"})),
    ];
    for (path, body) in requests {
        let (status, _) = server.call("POST", path, None, Some(body.clone())).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = server.call("POST", path, Some("not-a-token"), Some(body)).await;
        assert_eq!(status, 401, "{path}");
    }
    // Bad input names its fields.
    let (status, body) = server.call("POST", "/v1/elevate/password", bearer, Some(json!({"credential_request": "short"}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["credential_request".to_string()]), "{body}");
    let (status, body) = server.call("POST", "/v1/elevate/password/finish", bearer, Some(json!({"sign_in_id": "", "credential_finalization": "x"}))).await;
    assert_eq!(status, 422, "{body}");
    let mut fields = crate::helpers::detail_paths(&body);
    fields.sort();
    assert_eq!(fields, ["credential_finalization", "sign_in_id"]);

    // A holder of the token without the password gets nothing.
    let (status, body) = elevate_with_password(&server, &session.access_token, b"not the password").await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{body}");
    // Bob's own valid proof does not elevate Alice's session.
    let (sign_in_id, ke3) = crate::helpers::ke3(&server, &bob).await;
    let body = json!({"sign_in_id": sign_in_id, "credential_finalization": ke3});
    let (status, body) = server.call("POST", "/v1/elevate/password/finish", bearer, Some(body)).await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{body}");

    // A signed-out session cannot be elevated, even with the password.
    let other = server.sign_in(&alice).await;
    server.api().sign_out(&other.access_token, false).await.expect("sign out");
    let (login, ke1) = Login::start(PASSWORD).expect("login start");
    let (status, _) = server.call("POST", "/v1/elevate/password", Some(&other.access_token), Some(json!({"credential_request": ke1}))).await;
    assert_eq!(status, 401);
    drop(login);

    // The proof of presence is still the sign-in's: removal is refused once it is old.
    let_it_grow_old().await;
    let (status, body) = server.call("POST", "/v1/account/remove", bearer, None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
}

/// A stolen access token cannot guess TOTP codes at the elevation route: wrong codes
/// count on the account's throttle, and past the threshold the right one gets 429.
async fn wrong_codes_on_elevation_are_throttled(backend: Backend) {
    start_of_step().await;
    let server = stale_server(backend, &[("AUTHD_LOCKOUT_THRESHOLD", "2"), ("AUTHD_LOCKOUT_DURATION", "600")]).await;
    let username = unique("elev-guess");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let bearer = Some(session.access_token.as_str());
    let (_, enrollment) = server.call("POST", "/v1/mfa/totp/generate", bearer, None).await;
    let totp = authenticator(enrollment["otp_secret"].as_str().expect("secret"));
    let (status, _) = server.call("POST", "/v1/mfa/totp/enable", bearer, Some(json!({"code": totp_code(&totp, -1)}))).await;
    assert_eq!(status, 204);
    for _ in 0..2 {
        let (status, _, body) = post(&server, "/v1/elevate/totp", bearer, json!({"code": wrong_code(&totp)})).await;
        assert_eq!(status, 422, "{body}");
    }
    let (status, retry_after, body) = post(&server, "/v1/elevate/totp", bearer, json!({"code": totp_code(&totp, 0)})).await;
    assert_eq!((status, error_of(&body)), (429, Some("too_many_attempts")), "{body}");
    assert!(retry_after.is_some());
    // Password proofs from the same address are throttled by the same count.
    let (status, body) = elevate_with_password(&server, &session.access_token, PASSWORD).await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{body}");
}
