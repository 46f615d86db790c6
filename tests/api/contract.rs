//! Black-box tests of the whole HTTP contract, on SQLite and PostgreSQL.

use client::{b64, unb64, Error, Login, Registration, SignInOutcome};
use crate::helpers::{bogus_ke3, detail_paths, ke3, registration_record, unique, Backend, Server, ADMIN, PASSWORD};
use serde_json::json;

both_stores!(
    happy_path,
    wrong_password_is_refused,
    unknown_user_gets_a_normal_ke2_then_401,
    a_sign_in_finishes_once,
    an_expired_sign_in_is_refused,
    a_tampered_sign_in_id_is_refused,
    a_token_is_redeemed_once,
    a_token_is_redeemed_once_under_concurrency,
    unknown_and_missing_tokens_are_refused,
    a_username_is_taken_once,
    a_username_is_taken_once_under_concurrency,
    refresh_rotates_and_reuse_revokes,
    sign_out_ends_refresh_and_verify,
    sign_out_all_ends_every_session,
    access_tokens_verify_with_the_jwks_alone,
    bad_input_is_named_field_by_field,
    admin_routes,
    restart_keeps_accounts_and_sessions,
    a_missed_read_model_update_catches_up_on_start,
    forgetting_the_checkpoint_and_versions_refolds_from_the_log,
    a_forgotten_version_is_refolded_while_running,
    a_gap_repaired_read_model_holds_clear_text,
    open_sign_up_needs_no_token,
    buckets_fill_and_top_up,
);

async fn happy_path(backend: Backend) {
    let server = Server::start(backend).await;
    let api = server.api();
    let token = server.invitation().await;
    let username = unique("Alice");
    let profile_id = api.sign_up(&username, PASSWORD, Some(&token), Some("alice@example.com")).await.expect("sign up");

    let SignInOutcome::Session(session) = api.sign_in(&username.to_uppercase(), PASSWORD).await.expect("sign in") else {
        panic!("no MFA configured");
    };
    assert_eq!(session.profile_id, profile_id);
    assert_eq!(session.token_type, "Bearer");
    assert_eq!(session.expires_in, 900);

    let verified = api.jwt_verify(&session.access_token).await.expect("verify");
    assert_eq!(verified.profile_id, profile_id);
    assert_eq!(api.sign_in_verify(&session.access_token).await.expect("sign in verify"), profile_id);

    let user = api.user(&session.access_token).await.expect("user");
    assert_eq!(user.username, username.to_lowercase());
    assert_eq!(user.email.as_deref(), Some("alice@example.com"));
    assert!(!user.email_verified && !user.mfa_enabled);

    let refreshed = api.refresh(&session.refresh_token).await.expect("refresh");
    assert_ne!(refreshed.refresh_token, session.refresh_token);
    assert_eq!(api.jwt_verify(&refreshed.access_token).await.expect("verify").session_id, verified.session_id);

    assert_eq!(api.sign_out(&refreshed.access_token, false).await.expect("sign out"), 1);
    assert!(matches!(api.jwt_verify(&refreshed.access_token).await, Err(Error::Http { status: 401, .. })));
    assert!(matches!(api.refresh(&refreshed.refresh_token).await, Err(Error::Http { status: 401, .. })));
}

async fn wrong_password_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("bob");
    server.sign_up(&username).await;
    // The client cannot finish with a wrong password ...
    assert_eq!(server.api().sign_in(&username, b"wrong password").await.unwrap_err(), Error::InvalidLogin);
    // ... so whatever it sends as KE3 is refused.
    let (login, ke1) = Login::start(b"wrong password").expect("start");
    let (sign_in_id, ke2) = server.api().sign_in_start(&username, &ke1).await.expect("ke2");
    assert!(login.finish(b"wrong password", &ke2).is_err());
    let (status, body) = server
        .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": bogus_ke3()})))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")));
    // The right password still works afterwards.
    server.sign_in(&username).await;
}

async fn unknown_user_gets_a_normal_ke2_then_401(backend: Backend) {
    let server = Server::start(backend).await;
    let known = unique("known");
    server.sign_up(&known).await;
    let ke2_of = |username: String| {
        let api = server.api();
        async move {
            let (login, ke1) = Login::start(PASSWORD).expect("start");
            let (sign_in_id, ke2) = api.sign_in_start(&username, &ke1).await.expect("ke2");
            (login, sign_in_id, ke2)
        }
    };
    let (_, known_id, known_ke2) = ke2_of(known).await;
    let (login, sign_in_id, ke2) = ke2_of(unique("nobody")).await;
    assert_eq!(unb64(&ke2).expect("b64").len(), 320);
    assert_eq!(ke2.len(), known_ke2.len());
    assert_eq!(sign_in_id.len(), known_id.len());
    assert_eq!(login.finish(PASSWORD, &ke2).unwrap_err(), Error::InvalidLogin);
    let (status, body) = server
        .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": bogus_ke3()})))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")));
}

async fn a_sign_in_finishes_once(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("carol");
    server.sign_up(&username).await;
    let (sign_in_id, ke3) = ke3(&server, &username).await;
    let body = json!({"sign_in_id": sign_in_id, "credential_finalization": ke3});
    let (first, _) = server.call("POST", "/v1/sign/in/finish", None, Some(body.clone())).await;
    let (second, answer) = server.call("POST", "/v1/sign/in/finish", None, Some(body)).await;
    assert_eq!((first, second), (200, 401));
    assert_eq!(answer["error"], "invalid_credentials");
}

async fn an_expired_sign_in_is_refused(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_SIGN_IN_TTL", "1")]).await;
    let username = unique("dave");
    server.sign_up(&username).await;
    let (sign_in_id, ke3) = ke3(&server, &username).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, body) = server
        .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": ke3})))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")));
}

async fn a_tampered_sign_in_id_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("erin");
    server.sign_up(&username).await;
    let (sign_in_id, ke3) = ke3(&server, &username).await;
    let (id, sealed) = sign_in_id.split_once('.').expect("id.sealed");
    let mut bytes = unb64(sealed).expect("b64");
    bytes[40] ^= 1;
    for forged in [format!("{id}.{}", b64(&bytes)), format!("{}.{sealed}", uuid::Uuid::new_v4()), "nonsense".into()] {
        let (status, _) = server
            .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": forged, "credential_finalization": ke3})))
            .await;
        assert_eq!(status, 401, "{forged}");
    }
    // The genuine one is still good.
    let (status, _) = server
        .call("POST", "/v1/sign/in/finish", None, Some(json!({"sign_in_id": sign_in_id, "credential_finalization": ke3})))
        .await;
    assert_eq!(status, 200);
}

async fn a_token_is_redeemed_once(backend: Backend) {
    let server = Server::start(backend).await;
    let token = server.invitation().await;
    let (first, second) = (unique("frank"), unique("grace"));
    let second_record = registration_record(&server, &second, Some(&token)).await;
    server.api().sign_up(&first, PASSWORD, Some(&token), None).await.expect("first sign-up");

    let (status, body) = server
        .call("POST", "/v1/sign/up/finish", None, Some(json!({"username": second, "signup_token": token, "registration_record": second_record})))
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("token_redeemed")));
    let (status, _) = server
        .call("POST", "/v1/sign/up", None, Some(json!({"username": second, "signup_token": token, "registration_request": Registration::start(PASSWORD).expect("r").1})))
        .await;
    assert_eq!(status, 409);
    // The refused finish gave the username back.
    server.sign_up(&second).await;
}

async fn a_token_is_redeemed_once_under_concurrency(backend: Backend) {
    let server = Server::start(backend).await;
    let token = server.invitation().await;
    let names: Vec<String> = (0..4).map(|i| unique(&format!("racer{i}"))).collect();
    let mut records = Vec::new();
    for name in &names {
        records.push(registration_record(&server, name, Some(&token)).await);
    }
    let finishes = names.iter().zip(&records).map(|(name, record)| {
        server.call("POST", "/v1/sign/up/finish", None, Some(json!({"username": name, "signup_token": token, "registration_record": record})))
    });
    let results = futures::future::join_all(finishes).await;
    let statuses: Vec<u16> = results.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{results:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 3, "{results:?}");
    let bucket = server.api().bucket(ADMIN, "signup").await.expect("bucket");
    assert_eq!((bucket.available, bucket.redeemed), (0, 1));
}

async fn unknown_and_missing_tokens_are_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, request) = Registration::start(PASSWORD).expect("start");
    let (status, body) = server
        .call("POST", "/v1/sign/up", None, Some(json!({"username": unique("heidi"), "signup_token": "never-issued", "registration_request": request})))
        .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("token_unknown")));
    let (status, body) = server
        .call("POST", "/v1/sign/up", None, Some(json!({"username": unique("heidi"), "registration_request": request})))
        .await;
    assert_eq!(status, 422);
    assert_eq!(detail_paths(&body), ["signup_token"]);
    // A token of the other bucket does not open sign-up.
    let owner = unique("owner");
    server.sign_up(&owner).await;
    let (_, filled) = server
        .call("POST", "/v1/bucket/fill", Some(ADMIN), Some(json!({"bucket": "profile", "count": 1, "username": owner})))
        .await;
    let profile = filled["tokens"][0].as_str().expect("token").to_string();
    let (status, _) = server
        .call("POST", "/v1/sign/up", None, Some(json!({"username": unique("heidi"), "signup_token": profile, "registration_request": request})))
        .await;
    assert_eq!(status, 422);
}

async fn a_username_is_taken_once(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("Ivan");
    server.sign_up(&username).await;
    let token = server.invitation().await;
    for spelling in [username.clone(), format!("  {}  ", username.to_uppercase())] {
        let (_, request) = Registration::start(PASSWORD).expect("start");
        let (status, body) = server
            .call("POST", "/v1/sign/up", None, Some(json!({"username": spelling, "signup_token": token, "registration_request": request})))
            .await;
        assert_eq!((status, body["error"].as_str()), (409, Some("username_taken")));
    }
    // The refused attempts did not consume the invitation.
    assert_eq!(server.api().bucket(ADMIN, "signup").await.expect("bucket").available, 1);
}

async fn a_username_is_taken_once_under_concurrency(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("judy");
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let token = server.invitation().await;
        let record = registration_record(&server, &username, Some(&token)).await;
        attempts.push(json!({"username": username, "signup_token": token, "registration_record": record}));
    }
    let results =
        futures::future::join_all(attempts.into_iter().map(|body| server.call("POST", "/v1/sign/up/finish", None, Some(body)))).await;
    let winners = results.iter().filter(|(status, _)| *status == 200).count();
    let taken = results.iter().filter(|(status, body)| *status == 409 && body["error"] == "username_taken").count();
    assert_eq!((winners, taken), (1, 3), "{results:?}");
    let bucket = server.api().bucket(ADMIN, "signup").await.expect("bucket");
    assert_eq!((bucket.available, bucket.redeemed), (3, 1), "losers keep their invitations");
}

async fn refresh_rotates_and_reuse_revokes(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("ken");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let api = server.api();
    let second = api.refresh(&session.refresh_token).await.expect("rotate");
    let third = api.refresh(&second.refresh_token).await.expect("rotate again");

    // An old token comes back: the session is revoked, whoever holds the newest one.
    let (status, body) = server.call("POST", "/v1/token/refresh", None, Some(json!({"refresh_token": session.refresh_token}))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("refresh_token_reused")));
    assert!(matches!(api.refresh(&third.refresh_token).await, Err(Error::Http { status: 401, .. })));
    assert!(matches!(api.jwt_verify(&third.access_token).await, Err(Error::Http { status: 401, .. })));

    for forged in ["garbage", "00000000-0000-0000-0000-000000000000.abc"] {
        let (status, _) = server.call("POST", "/v1/token/refresh", None, Some(json!({"refresh_token": forged}))).await;
        assert_eq!(status, 401);
    }
}

async fn sign_out_ends_refresh_and_verify(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("leo");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let other = server.sign_in(&username).await;
    let api = server.api();
    assert_eq!(api.sign_out(&session.access_token, false).await.expect("sign out"), 1);
    let (status, _) = server.call("POST", "/v1/sign/in/verify", None, Some(json!({"jwt": session.access_token}))).await;
    assert_eq!(status, 401);
    assert!(matches!(api.jwt_verify(&session.access_token).await, Err(Error::Http { status: 401, .. })));
    assert!(matches!(api.refresh(&session.refresh_token).await, Err(Error::Http { status: 401, .. })));
    let (status, _) = server.call("POST", "/v1/sign/out", Some(&session.access_token), Some(json!({}))).await;
    assert_eq!(status, 401, "a signed-out token cannot sign out again");
    // The other session is untouched.
    api.jwt_verify(&other.access_token).await.expect("other session lives");
}

async fn sign_out_all_ends_every_session(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("mallory");
    server.sign_up(&username).await;
    let sessions = [server.sign_in(&username).await, server.sign_in(&username).await, server.sign_in(&username).await];
    let bystander = unique("niaj");
    server.sign_up(&bystander).await;
    let theirs = server.sign_in(&bystander).await;
    let api = server.api();
    assert_eq!(api.sign_out(&sessions[0].access_token, true).await.expect("sign out all"), 3);
    for session in &sessions {
        assert!(matches!(api.jwt_verify(&session.access_token).await, Err(Error::Http { status: 401, .. })));
        assert!(matches!(api.refresh(&session.refresh_token).await, Err(Error::Http { status: 401, .. })));
    }
    api.jwt_verify(&theirs.access_token).await.expect("another account is untouched");
}

async fn access_tokens_verify_with_the_jwks_alone(backend: Backend) {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let server = Server::start(backend).await;
    let username = unique("olivia");
    let profile_id = server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let jwks: JwkSet = serde_json::from_value(server.api().jwks().await.expect("jwks")).expect("a JWK set");
    let header = decode_header(&session.access_token).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["authd"]);
    validation.set_issuer(&["authd"]);
    let claims = decode::<serde_json::Value>(&session.access_token, &key, &validation).expect("valid").claims;
    assert_eq!(claims["sub"], profile_id.as_str());
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert!(claims["sid"].is_string() && claims["iat"].is_i64());
    assert_eq!(claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"), 900);

    // A token with a changed payload does not verify, even after the genuine one was
    // checked (and remembered).
    server.api().jwt_verify(&session.access_token).await.expect("the genuine token");
    let parts: Vec<&str> = session.access_token.split('.').collect();
    let forged_claims = b64(serde_json::to_string(&json!({"sub": "someone-else"})).expect("json").as_bytes());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert!(decode::<serde_json::Value>(&forged, &key, &validation).is_err());
    assert!(matches!(server.api().jwt_verify(&forged).await, Err(Error::Http { status: 401, .. })));
}

async fn bad_input_is_named_field_by_field(backend: Backend) {
    let server = Server::start(backend).await;
    let cases: Vec<(&str, &str, Option<&str>, serde_json::Value, u16, Vec<&str>)> = vec![
        ("POST", "/v1/sign/up", None, json!({}), 422, vec!["username", "registration_request"]),
        ("POST", "/v1/sign/up", None, json!({"username": 5, "registration_request": "too-short", "signup_token": ""}), 422,
            vec!["username", "signup_token", "registration_request"]),
        ("POST", "/v1/sign/up", None, json!({"username": "ab", "registration_request": b64(&[0u8; 32]), "signup_token": "t"}), 422, vec!["username"]),
        ("POST", "/v1/sign/up/finish", None, json!({"username": "x".repeat(300), "registration_record": "!", "email": "not-an-address"}), 422,
            vec!["username", "registration_record", "email"]),
        ("POST", "/v1/sign/up/finish", None, json!({"username": "valid-name", "signup_token": "t", "registration_record": b64(&[0u8; 192])}), 422,
            vec!["registration_record"]),
        ("POST", "/v1/sign/in", None, json!({"username": [], "credential_request": b64(&[1u8; 95])}), 422, vec!["username", "credential_request"]),
        ("POST", "/v1/sign/in", None, json!({"username": "valid-name", "credential_request": b64(&[0xffu8; 96])}), 422, vec!["credential_request"]),
        ("POST", "/v1/sign/in/finish", None, json!({"sign_in_id": ""}), 422, vec!["sign_in_id", "credential_finalization"]),
        ("POST", "/v1/sign/in/verify", None, json!({}), 422, vec!["jwt"]),
        ("POST", "/v1/sign/in/verify", None, json!({"jwt": "not.a.jwt"}), 401, vec![]),
        ("POST", "/v1/token/refresh", None, json!({"refresh_token": 1}), 422, vec!["refresh_token"]),
        ("GET", "/v1/jwt/verify", None, json!(null), 401, vec![]),
        ("GET", "/v1/jwt/verify", Some("garbage"), json!(null), 401, vec![]),
        ("GET", "/v1/user", None, json!(null), 401, vec![]),
        ("POST", "/v1/sign/out", None, json!({}), 401, vec![]),
        ("POST", "/v1/bucket/fill", None, json!({"bucket": "signup", "count": 1}), 401, vec![]),
        ("POST", "/v1/bucket/fill", Some("wrong-admin"), json!({"bucket": "signup", "count": 1}), 401, vec![]),
        ("POST", "/v1/bucket/fill", Some(ADMIN), json!({"bucket": "other", "count": 0}), 422, vec!["bucket", "count"]),
        ("POST", "/v1/bucket/fill", Some(ADMIN), json!({"bucket": "signup", "count": 1, "tokens": ["a"]}), 422, vec!["tokens", "count"]),
        ("POST", "/v1/bucket/fill", Some(ADMIN), json!({"bucket": "signup", "tokens": ["ok", ""]}), 422, vec!["tokens[1]"]),
        ("POST", "/v1/bucket/fill", Some(ADMIN), json!({"bucket": "signup", "count": 10001}), 422, vec!["count"]),
        ("POST", "/v1/fill", Some(ADMIN), json!({"bucket_size": 0}), 422, vec!["bucket_size"]),
        ("GET", "/v1/bucket/elsewhere", Some(ADMIN), json!(null), 404, vec![]),
        ("GET", "/v1/no/such/route", None, json!(null), 404, vec![]),
    ];
    crate::helpers::assert_error_answers(&server, cases).await;

    // Malformed JSON is a 400, wrong content type too; neither is a 500.
    let http = reqwest::Client::new();
    for (content_type, body) in [("application/json", "{\"username\": "), ("text/plain", "{}")] {
        let response = http
            .post(format!("{}/v1/sign/in", server.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 400);
        let answer: serde_json::Value = response.json().await.expect("a JSON error");
        assert_eq!(answer["status"], 400);
    }
    // Nothing was half-written: no sign-up happened, the bucket is empty.
    let bucket = server.api().bucket(ADMIN, "signup").await.expect("bucket");
    assert_eq!((bucket.available, bucket.redeemed), (0, 0));
}

async fn admin_routes(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_ADMIN_TOKEN", "")]).await;
    let (status, body) = server.call("POST", "/v1/bucket/fill", Some("anything"), Some(json!({"bucket": "signup", "count": 1}))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("admin_disabled")));
    let (status, _) = server.call("GET", "/v1/bucket/signup", Some("anything"), None).await;
    assert_eq!(status, 403);
}

async fn restart_keeps_accounts_and_sessions(backend: Backend) {
    let mut server = Server::start(backend).await;
    let username = unique("peggy");
    let profile_id = server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    server.restart().await;
    let api = server.api();
    assert_eq!(api.jwt_verify(&session.access_token).await.expect("token survives").profile_id, profile_id);
    let refreshed = api.refresh(&session.refresh_token).await.expect("refresh survives");
    assert_eq!(server.sign_in(&username).await.profile_id, profile_id, "the OPAQUE setup survives");
    assert_eq!(api.user(&refreshed.access_token).await.expect("user").username, username.to_lowercase());
}

async fn a_missed_read_model_update_catches_up_on_start(backend: Backend) {
    let mut server = Server::start(backend).await;
    let username = unique("rupert");
    let profile_id = server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    server.kill();
    // Simulate a crash between commit and fold: the events are in the log, the
    // read models never saw them.
    let forget = [
        "DELETE FROM users_view",
        "DELETE FROM sessions_view",
        "DELETE FROM projection_versions WHERE aggregate_type IN ('user', 'session')",
    ];
    server.execute_sql(&forget).await;
    server.restart().await;
    let api = server.api();
    let user = api.user(&session.access_token).await.expect("caught up");
    assert_eq!(user.profile_id, profile_id);
    let second = server.sign_in(&username).await;
    assert_eq!(api.sign_out(&second.access_token, true).await.expect("sign out all"), 2, "sessions caught up too");
}

async fn open_sign_up_needs_no_token(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_OPEN_SIGNUP", "true")]).await;
    let username = unique("sybil");
    let profile_id = server.api().sign_up(&username, PASSWORD, None, None).await.expect("open sign-up");
    assert_eq!(server.sign_in(&username).await.profile_id, profile_id);
}

async fn buckets_fill_and_top_up(backend: Backend) {
    let server = Server::start(backend).await;
    let api = server.api();
    let given = vec!["alpha-token".to_string(), "beta-token".to_string()];
    let first = api.fill_bucket_tokens(ADMIN, "signup", &given).await.expect("fill");
    assert_eq!((first.added, first.available), (2, 2));
    let again = api.fill_bucket_tokens(ADMIN, "signup", &given).await.expect("fill again");
    assert_eq!((again.added, again.available), (0, 2), "known tokens are ignored");
    let generated = api.fill_bucket(ADMIN, "signup", 3).await.expect("generate");
    assert_eq!((generated.added, generated.available, generated.tokens.len()), (3, 5, 3));
    let topped = api.top_up(ADMIN, 8).await.expect("top up");
    assert_eq!((topped.added, topped.available, topped.tokens.len()), (3, 8, 3));
    let topped = api.top_up(ADMIN, 4).await.expect("already full");
    assert_eq!((topped.added, topped.available), (0, 8));
    let trent = unique("trent");
    api.sign_up(&trent, PASSWORD, Some("alpha-token"), None).await.expect("a given token works");
    let status = api.bucket(ADMIN, "signup").await.expect("status");
    assert_eq!((status.available, status.redeemed), (7, 1));

    // Recovery tokens are issued for one account.
    let (status, body) = server
        .call("POST", "/v1/bucket/fill", Some(ADMIN), Some(json!({"bucket": "profile", "tokens": ["r1", "r2"], "username": trent})))
        .await;
    assert_eq!((status, body["added"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(api.bucket(ADMIN, "profile").await.expect("status").available, 2);
    for (body, field) in [
        (json!({"bucket": "profile", "count": 1}), "username"),
        (json!({"bucket": "profile", "count": 1, "username": unique("nobody")}), "username"),
        (json!({"bucket": "signup", "count": 1, "username": trent}), "username"),
    ] {
        let (status, answer) = server.call("POST", "/v1/bucket/fill", Some(ADMIN), Some(body)).await;
        assert_eq!((status, detail_paths(&answer)), (422, vec![field.to_string()]), "{answer}");
    }
}

/// PostgreSQL goes away under a running server: answers are 503 (never 500),
/// readiness says so, and service resumes when the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_503() {
    use sqlx::Connection;
    let server = Server::start(Backend::Postgres).await;
    let username = unique("victor");
    server.sign_up(&username).await;
    let database = server.database_url.rsplit('/').next().expect("database name").to_string();
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::postgres_admin_url()).await.expect("admin connection");
    for sql in [
        format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.expect(&sql);
    }
    let (status, body) = server.call("GET", "/readyz", None, None).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    let (_, ke1) = Login::start(PASSWORD).expect("start");
    let (status, body) = server.call("POST", "/v1/sign/in", None, Some(json!({"username": username, "credential_request": ke1}))).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");

    let sql = format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true");
    sqlx::query(&sql).execute(&mut admin).await.expect(&sql);
    let (status, _) = server.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    server.sign_in(&username).await;
}

/// The read models' checkpoint, or None before their first catch-up.
async fn read_models_checkpoint(server: &Server) -> Option<i64> {
    use sqlx::Connection;
    let sql = "SELECT position FROM checkpoints WHERE name = 'read_models'";
    match server.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("sqlite");
            sqlx::query_scalar(sql).fetch_optional(&mut conn).await.expect(sql)
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
            sqlx::query_scalar(sql).fetch_optional(&mut conn).await.expect(sql)
        }
    }
}

/// Everything derived is forgotten — every read model, every per-aggregate version
/// and the checkpoint — but not the log: a restart folds it all back from the log.
async fn forgetting_the_checkpoint_and_versions_refolds_from_the_log(backend: Backend) {
    let mut server = Server::start(backend).await;
    let username = unique("wanda");
    let profile_id = server.sign_up(&username).await;
    let first = server.sign_in(&username).await;
    server.api().fill_bucket(ADMIN, "signup", 3).await.expect("fill");
    let before = server.api().bucket(ADMIN, "signup").await.expect("bucket");
    assert_eq!((before.available, before.redeemed), (3, 1));
    server.kill();
    server
        .sql(&[
            "DELETE FROM checkpoints",
            "DELETE FROM projection_versions",
            "DELETE FROM users_view",
            "DELETE FROM sessions_view",
            "DELETE FROM invite_tokens_view",
            "DELETE FROM mfa_view",
        ])
        .await;
    assert_eq!(read_models_checkpoint(&server).await, None);
    server.restart().await;
    let api = server.api();
    let user = api.user(&first.access_token).await.expect("the user is back");
    assert_eq!((user.profile_id, user.username), (profile_id, username.to_lowercase()));
    let after = api.bucket(ADMIN, "signup").await.expect("bucket");
    assert_eq!((after.available, after.redeemed), (3, 1), "buckets are back");
    let second = server.sign_in(&username).await;
    assert_eq!(api.sign_out(&second.access_token, true).await.expect("sign out all"), 2, "sessions are back");
    assert!(read_models_checkpoint(&server).await.unwrap_or(0) > 0, "the checkpoint is recorded again");
}

/// Forgetting an aggregate's version while the server runs rewinds the checkpoint
/// (a trigger), and the periodic catch-up folds the aggregate back from the log.
async fn a_forgotten_version_is_refolded_while_running(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_CATCH_UP_INTERVAL", "1")]).await;
    let username = unique("yannick");
    server.sign_up(&username).await;
    let session = server.sign_in(&username).await;
    let api = server.api();
    api.user(&session.access_token).await.expect("folded live");
    let caught_up = {
        let mut checkpoint = None;
        for _ in 0..100 {
            checkpoint = read_models_checkpoint(&server).await.filter(|position| *position >= 4);
            if checkpoint.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        checkpoint.expect("the periodic catch-up moves the checkpoint past the sign-up")
    };
    server.sql(&["DELETE FROM users_view", "DELETE FROM projection_versions WHERE aggregate_type = 'user'"]).await;
    let rewound = read_models_checkpoint(&server).await.expect("checkpoint");
    assert!(rewound < caught_up, "forgetting a version rewinds the checkpoint ({rewound} < {caught_up})");
    let mut user = api.user(&session.access_token).await;
    for _ in 0..100 {
        if user.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        user = api.user(&session.access_token).await;
    }
    assert_eq!(user.expect("refolded while running").username, username.to_lowercase());
}

/// The gap repair: catch-up meets an event whose predecessors the read models lost
/// (here: the account's version is forgotten and the checkpoint moved past its
/// first event) and folds the aggregate's missing events from the log. It reads
/// through the log's decrypting reader, so the repaired row holds the username in
/// clear, not the `enc:v1:` text the log stores.
async fn a_gap_repaired_read_model_holds_clear_text(backend: Backend) {
    use sqlx::Connection;
    let server = Server::start_with(backend, &[("AUTHD_CATCH_UP_INTERVAL", "1")]).await;
    let username = unique("gwen");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    let profile_id = server.api().sign_up(&username, PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = crate::helpers::activation_code(&server, &email).await;
    server.read_models_caught_up().await;
    let past_registration = format!(
        "UPDATE checkpoints SET position = (SELECT global_position FROM event_positions
           WHERE aggregate_type = 'user' AND aggregate_id = '{profile_id}' AND sequence = 1) WHERE name = 'read_models'"
    );
    server
        .sql(&["DELETE FROM users_view", "DELETE FROM projection_versions WHERE aggregate_type = 'user'", &past_registration])
        .await;
    // Activating appends to the account's stream: the next event is out of line.
    let activate = json!({"verification_id": verification_id, "code": code});
    assert_eq!(server.call("POST", "/v1/account/activate", None, Some(activate)).await.0, 204);
    let sql = "SELECT username FROM users_view WHERE profile_id = $1";
    let mut stored: Option<String> = None;
    for _ in 0..100 {
        stored = match server.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.expect("sqlite");
                sqlx::query_scalar(sql).bind(&profile_id).fetch_optional(&mut conn).await.expect(sql)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
                sqlx::query_scalar(sql).bind(&profile_id).fetch_optional(&mut conn).await.expect(sql)
            }
        };
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored.as_deref(), Some(username.to_lowercase().as_str()), "repaired from the log, in clear");
}

/// Read models are folded off the request path: a sign-up answers while the users'
/// read model is locked, and a real kill while the fold waits on that lock leaves the
/// event in the log and the row to the next start, which folds it (the fold and the
/// checkpoint's move are one transaction: nothing half-written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_a_fold_waits_leaves_it_to_the_next_start() {
    use sqlx::Connection;
    let mut server = Server::start(Backend::Postgres).await;
    let username = unique("xavier");
    let token = server.invitation().await;
    let mut blocker = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
    let mut watcher = sqlx::PgConnection::connect(&server.database_url).await.expect("postgres");
    sqlx::query("BEGIN").execute(&mut blocker).await.expect("begin");
    sqlx::query("LOCK TABLE users_view IN ACCESS EXCLUSIVE MODE").execute(&mut blocker).await.expect("lock");
    let profile_id = server.api().sign_up(&username, PASSWORD, Some(&token), None).await.expect("sign-up answers");

    // The fold of the registration waits on the read model's lock.
    let mut waiting = 0i64;
    for _ in 0..100 {
        waiting = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users_view'::regclass")
            .fetch_one(&mut watcher)
            .await
            .expect("pg_locks");
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(waiting > 0, "the registration's fold waits on the read model");
    server.kill();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.expect("release the lock");
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegistered'")
        .fetch_one(&mut watcher)
        .await
        .expect("events");
    let folded: i64 = sqlx::query_scalar("SELECT count(*) FROM users_view").fetch_one(&mut watcher).await.expect("count");
    assert_eq!((registered, folded), (1, 0), "the event, and not yet its fold");
    server.restart().await;
    let row: Option<String> = sqlx::query_scalar("SELECT profile_id FROM users_view").fetch_optional(&mut watcher).await.expect("row");
    assert_eq!(row.as_deref(), Some(profile_id.as_str()), "folded at start-up");
    server.api().sign_in(&username, PASSWORD).await.expect("sign-in");
}
