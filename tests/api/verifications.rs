//! Black-box tests of the verification service (reference 004), on SQLite and
//! PostgreSQL: email through the outbox and through a real SMTP server, phone through
//! a webhook started here, google_auth with codes computed from the `totpUri`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{unique, Backend, Server, ADMIN};
use serde_json::{json, Value};

both_stores!(
    email_codes_go_out_and_validate_once,
    generated_codes_follow_length_and_symbol_sets,
    phone_codes_go_to_the_webhook,
    a_failed_delivery_leaves_no_verifier,
    wrong_codes_count_until_attempts_are_exhausted,
    a_verifier_expires,
    forced_code_and_verification_id,
    a_deleted_verifier_is_gone,
    totp_secrets_are_temporary_until_confirmed_and_can_be_removed,
    bad_input_is_named_field_by_field,
    the_verifiers_view_catches_up_after_a_missed_fold,
    no_personal_data_in_trace_logs,
);

const TEMPLATE: &str = "Your code is {{{CODE}}} (verification {{{VERIFICATION_ID}}}).";

fn email_request(consumer: &str) -> Value {
    json!({
        "consumer": consumer,
        "issuer": "Jincor",
        "template": {"subject": "Code {{{CODE}}}", "body": TEMPLATE},
        "generateCode": {"length": 6, "symbolSet": ["DIGITS"]},
        "policy": {"expiredOn": "01:00:00"},
        "payload": {"your": "custom payload", "nested": [1, 2.5, {"deep": true}], "none": null}
    })
}

async fn initiate(server: &Server, method: &str, body: Value) -> (u16, Value) {
    server.call("POST", &format!("/v1/methods/{method}/actions/initiate"), Some(ADMIN), Some(body)).await
}

async fn validate(server: &Server, method: &str, id: &str, body: Value) -> (u16, Value) {
    server.call("POST", &format!("/v1/methods/{method}/verifiers/{id}/actions/validate"), Some(ADMIN), Some(body)).await
}

async fn get(server: &Server, method: &str, id: &str) -> (u16, Value) {
    server.call("GET", &format!("/v1/methods/{method}/verifiers/{id}"), Some(ADMIN), None).await
}

async fn delete(server: &Server, method: &str, id: &str) -> (u16, Value) {
    server.call("DELETE", &format!("/v1/methods/{method}/verifiers/{id}"), Some(ADMIN), None).await
}

/// Validates and returns status, `Retry-After` and body.
async fn validate_with_headers(server: &Server, method: &str, id: &str, code: &str) -> (u16, Option<u64>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/methods/{method}/verifiers/{id}/actions/validate", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"code": code}))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    (status, retry_after, response.json().await.expect("JSON body"))
}

/// The code and verification id out of a message rendered from [`TEMPLATE`].
fn code_of(body: &str) -> (String, String) {
    let rest = body.strip_prefix("Your code is ").unwrap_or_else(|| panic!("unexpected message {body:?}"));
    let (code, rest) = rest.split_once(" (verification ").expect("verification id");
    (code.to_string(), rest.trim_end_matches(").").to_string())
}

async fn email_end_to_end_code(server: &Server, consumer: &str, request: Value) -> (String, String) {
    let (status, answer) = initiate(server, "email", request).await;
    assert_eq!(status, 200, "{answer}");
    let (_, body) = crate::helpers::outbox_message(server, consumer).await;
    let (code, id) = code_of(&body);
    assert_eq!(answer["verificationId"], id.as_str());
    (id, code)
}

async fn email_codes_go_out_and_validate_once(backend: Backend) {
    let server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("alice"));
    let request = email_request(&consumer);
    let before = chrono::Utc::now().timestamp();
    let (status, answer) = initiate(&server, "email", request.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["attempts"], 0);
    assert_eq!(answer["payload"], request["payload"], "the payload comes back untouched");
    assert!(answer.get("totpUri").is_none());
    let expired_on = answer["expiredOn"].as_i64().expect("unix seconds");
    assert!((before + 3600..=before + 3602).contains(&expired_on), "{expired_on}");
    let id = answer["verificationId"].as_str().expect("id").to_string();
    uuid::Uuid::parse_str(&id).expect("a UUID by default");

    let (subject, body) = crate::helpers::outbox_message(&server, &consumer).await;
    let (code, id_in_message) = code_of(&body);
    assert_eq!(id_in_message, id, "{{{{{{VERIFICATION_ID}}}}}} is replaced");
    assert_eq!(code.len(), 6);
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    assert_eq!(subject, format!("Code {code}"));

    let expected = json!({
        "verificationId": id, "consumer": consumer, "expiredOn": expired_on,
        "payload": request["payload"], "attempts": 0
    });
    assert_eq!(get(&server, "email", &id).await, (200, json!({"status": 200, "data": expected})));

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, answer) = validate(&server, "email", &id, json!({"code": wrong})).await;
    let mut counted = expected.clone();
    counted["attempts"] = json!(1);
    assert_eq!((status, answer), (422, json!({"status": 422, "error": "Invalid code", "data": counted})));
    assert_eq!(get(&server, "email", &id).await.1["data"]["attempts"], 1);

    let (status, answer) = validate(&server, "email", &id, json!({"code": code})).await;
    assert_eq!((status, answer), (200, json!({"status": 200, "data": counted})));

    // Consumed: a validated verifier cannot be validated again, nor read.
    let not_found = json!({"status": 404, "error": "Not found"});
    assert_eq!(validate(&server, "email", &id, json!({"code": code})).await, (404, not_found.clone()));
    assert_eq!(get(&server, "email", &id).await, (404, not_found.clone()));
    // Another method does not see it either.
    assert_eq!(get(&server, "phone", &id).await, (404, not_found));
}

async fn generated_codes_follow_length_and_symbol_sets(backend: Backend) {
    let server = Server::start(backend).await;
    let cases: [(&[&str], usize, fn(char) -> bool); 3] = [
        (&["DIGITS", "alphas", "ALPHAS"], 32, |c| c.is_ascii_alphanumeric()),
        (&["alphas"], 8, |c| c.is_ascii_lowercase()),
        (&["ALPHAS", "DIGITS"], 40, |c| c.is_ascii_uppercase() || c.is_ascii_digit()),
    ];
    let mut codes = Vec::new();
    for (sets, length, allowed) in cases {
        let consumer = format!("{}@example.com", unique("gen"));
        let mut request = email_request(&consumer);
        request["generateCode"] = json!({"length": length, "symbolSet": sets});
        let (_, code) = email_end_to_end_code(&server, &consumer, request).await;
        assert_eq!(code.chars().count(), length, "{code}");
        assert!(code.chars().all(allowed), "{sets:?}: {code}");
        codes.push(code);
    }
    // 32 symbols from 62: drawn at random, not a fixed pattern.
    assert!(codes[0].chars().any(|c| c.is_ascii_lowercase()) || codes[0].chars().any(|c| c.is_ascii_uppercase()));
    assert_ne!(codes[1], "a".repeat(8));
}

/// A webhook that records every text message and answers with `status`.
pub(crate) struct Webhook {
    pub(crate) url: String,
    messages: Arc<Mutex<Vec<Value>>>,
}

#[poem::handler]
async fn receive_text(
    poem::web::Json(message): poem::web::Json<Value>,
    poem::web::Data(state): poem::web::Data<&(Arc<Mutex<Vec<Value>>>, u16)>,
) -> poem::http::StatusCode {
    state.0.lock().expect("lock").push(message);
    poem::http::StatusCode::from_u16(state.1).expect("status")
}

pub(crate) async fn webhook(status: u16) -> Webhook {
    use poem::listener::{Acceptor, Listener};
    use poem::EndpointExt;
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind webhook");
    let address = *acceptor.local_addr()[0].as_socket_addr().expect("a socket address");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let app = poem::Route::new().at("/sms", poem::post(receive_text)).data((messages.clone(), status));
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Webhook { url: format!("http://{address}/sms"), messages }
}

impl Webhook {
    pub(crate) fn received(&self) -> Vec<Value> {
        self.messages.lock().expect("lock").clone()
    }
}

fn phone_request(consumer: &str) -> Value {
    json!({
        "consumer": consumer,
        "template": {"body": TEMPLATE},
        "generateCode": {"length": 6, "symbolSet": ["DIGITS"]},
        "payload": {"purpose": "phone"}
    })
}

async fn phone_codes_go_to_the_webhook(backend: Backend) {
    let hook = webhook(200).await;
    let server = Server::start_with(backend, &[("AUTHD_SMS_WEBHOOK_URL", &hook.url)]).await;
    let number = "+4915112345678";
    let (status, answer) = initiate(&server, "phone", phone_request(number)).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["verificationId"].as_str().expect("id").to_string();
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["to"], number);
    let (code, id_in_message) = code_of(received[0]["body"].as_str().expect("body"));
    assert_eq!(id_in_message, id);

    let (status, answer) = validate(&server, "phone", &id, json!({"code": code})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["consumer"], number);
    assert_eq!(answer["data"]["payload"], json!({"purpose": "phone"}));
    // The code of a phone verifier is not an email code.
    assert_eq!(validate(&server, "email", &id, json!({"code": code})).await.0, 404);
}

async fn a_failed_delivery_leaves_no_verifier(backend: Backend) {
    // No webhook configured: phone is unavailable, and says so.
    let server = Server::start(backend).await;
    let mut request = phone_request("+15555550100");
    request["policy"] = json!({"forcedVerificationId": "no-webhook", "forcedCode": "123456"});
    let (status, answer) = initiate(&server, "phone", request).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "delivery_unavailable");
    assert!(answer["message"].as_str().expect("message").contains("AUTHD_SMS_WEBHOOK_URL"), "{answer}");
    assert_eq!(get(&server, "phone", "no-webhook").await.0, 404);
    assert_eq!(validate(&server, "phone", "no-webhook", json!({"code": "123456"})).await.0, 404);
    drop(server);

    // A webhook that fails, and an SMTP server that is not there.
    let hook = webhook(500).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let smtp = format!("smtp://127.0.0.1:{closed}");
    let server =
        Server::start_with(backend, &[("AUTHD_SMS_WEBHOOK_URL", &hook.url), ("AUTHD_SMTP_URL", &smtp)]).await;
    let mut request = phone_request("+15555550100");
    request["policy"] = json!({"forcedVerificationId": "hook-fails", "forcedCode": "123456"});
    let (status, answer) = initiate(&server, "phone", request).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("delivery_unavailable")), "{answer}");
    assert_eq!(hook.received().len(), 1, "the webhook was tried");
    assert_eq!(get(&server, "phone", "hook-fails").await.0, 404);
    assert_eq!(validate(&server, "phone", "hook-fails", json!({"code": "123456"})).await.0, 404);

    let mut request = email_request("nobody@example.com");
    request["policy"] = json!({"forcedVerificationId": "smtp-down", "forcedCode": "123456"});
    let (status, answer) = initiate(&server, "email", request).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("delivery_unavailable")), "{answer}");
    assert_eq!(get(&server, "email", "smtp-down").await.0, 404);
    assert_eq!(validate(&server, "email", "smtp-down", json!({"code": "123456"})).await.0, 404);
    assert!(!server.data_dir.join("outbox").exists(), "with SMTP configured nothing goes to the outbox");
}

async fn wrong_codes_count_until_attempts_are_exhausted(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_VERIFICATION_MAX_ATTEMPTS", "3")]).await;
    // (policy.maxAttempts, the limit that applies)
    for (requested, limit) in [(None, 3), (Some(1), 1), (Some(10), 3)] {
        let consumer = format!("{}@example.com", unique("mallory"));
        let mut request = email_request(&consumer);
        if let Some(max) = requested {
            request["policy"]["maxAttempts"] = json!(max);
        }
        let (id, code) = email_end_to_end_code(&server, &consumer, request).await;
        let wrong = if code == "999999" { "888888" } else { "999999" };
        for attempt in 1..=limit {
            let (status, retry_after, answer) = validate_with_headers(&server, "email", &id, wrong).await;
            assert_eq!((status, retry_after), (422, None), "{requested:?} attempt {attempt}: {answer}");
            assert_eq!(answer["data"]["attempts"], attempt);
        }
        // Dead: even the right code is refused, with a Retry-After.
        for code in [wrong, code.as_str()] {
            let (status, retry_after, answer) = validate_with_headers(&server, "email", &id, code).await;
            assert_eq!(status, 429, "{requested:?}: {answer}");
            assert_eq!(answer["status"], 429);
            assert!(answer["message"].is_string(), "{answer}");
            let retry_after = retry_after.expect("Retry-After");
            assert!((1..=3600).contains(&retry_after), "{retry_after}");
        }
        assert_eq!(get(&server, "email", &id).await.1["data"]["attempts"], limit, "refusals are not counted");
    }
}

async fn a_verifier_expires(backend: Backend) {
    let server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("erin"));
    let mut request = email_request(&consumer);
    request["policy"]["expiredOn"] = json!("00:00:01");
    let before = chrono::Utc::now().timestamp();
    let (status, answer) = initiate(&server, "email", request).await;
    assert_eq!(status, 200, "{answer}");
    let expired_on = answer["expiredOn"].as_i64().expect("expiredOn");
    assert!((before + 1..=before + 2).contains(&expired_on), "{expired_on} vs {before}");
    let id = answer["verificationId"].as_str().expect("id").to_string();
    let (_, body) = crate::helpers::outbox_message(&server, &consumer).await;
    let (code, _) = code_of(&body);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let not_found = json!({"status": 404, "error": "Not found"});
    assert_eq!(validate(&server, "email", &id, json!({"code": code})).await, (404, not_found.clone()));
    assert_eq!(get(&server, "email", &id).await, (404, not_found.clone()));
    assert_eq!(delete(&server, "email", &id).await, (404, not_found));
}

async fn forced_code_and_verification_id(backend: Backend) {
    let server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("frank"));
    let forced_id = unique("forced");
    let mut request = email_request(&consumer);
    request["policy"]["forcedVerificationId"] = json!(forced_id);
    request["policy"]["forcedCode"] = json!("Open-Sesame_42");
    let (status, answer) = initiate(&server, "email", request.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["verificationId"], forced_id.as_str());
    let (_, body) = crate::helpers::outbox_message(&server, &consumer).await;
    assert_eq!(code_of(&body), ("Open-Sesame_42".to_string(), forced_id.clone()));

    // The id is taken now, whatever the method.
    let (status, answer) = initiate(&server, "email", request).await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("verification_id_taken")), "{answer}");
    let totp = json!({"consumer": unique("taken"), "policy": {"forcedVerificationId": forced_id}});
    let (status, _) = initiate(&server, "google_auth", totp).await;
    assert_eq!(status, 409);

    assert_eq!(validate(&server, "email", &forced_id, json!({"code": "open-sesame_42"})).await.0, 422, "codes are case-sensitive");
    let (status, answer) = validate(&server, "email", &forced_id, json!({"code": "Open-Sesame_42"})).await;
    assert_eq!((status, answer["data"]["verificationId"].as_str()), (200, Some(forced_id.as_str())));
}

async fn a_deleted_verifier_is_gone(backend: Backend) {
    let server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("grace"));
    let (id, code) = email_end_to_end_code(&server, &consumer, email_request(&consumer)).await;
    assert_eq!(delete(&server, "phone", &id).await.0, 404, "only through its own method");
    assert_eq!(delete(&server, "email", &id).await, (200, json!({"status": 200})));
    let not_found = json!({"status": 404, "error": "Not found"});
    assert_eq!(get(&server, "email", &id).await, (404, not_found.clone()));
    assert_eq!(validate(&server, "email", &id, json!({"code": code})).await, (404, not_found.clone()));
    assert_eq!(delete(&server, "email", &id).await, (404, not_found.clone()));
    assert_eq!(delete(&server, "email", "never-issued").await, (404, not_found));
}

/// The current TOTP code for the secret in `uri`.
fn totp_code(uri: &str) -> String {
    totp_code_at(uri, 0)
}

/// The code of `uri`'s secret `steps` time steps from now (the server accepts one
/// step either side, each step's code once).
fn totp_code_at(uri: &str, steps: i64) -> String {
    let totp = totp_rs::TOTP::from_url_unchecked(uri).expect("an otpauth URI");
    totp.generate((crate::helpers::now() as i64 + steps * 30) as u64)
}

/// Waits, if needed, so that the next ~20 seconds stay within one TOTP step.
async fn start_of_step() {
    let into_step = crate::helpers::now() % 30;
    if into_step > 10 {
        tokio::time::sleep(std::time::Duration::from_secs(30 - into_step)).await;
    }
}

async fn initiate_totp(server: &Server, consumer: &str) -> (String, Option<String>) {
    let (status, answer) =
        initiate(server, "google_auth", json!({"consumer": consumer, "issuer": "Jincor", "payload": {"n": 1}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["consumer"], consumer);
    assert_eq!(answer["payload"], json!({"n": 1}));
    let id = answer["verificationId"].as_str().expect("id").to_string();
    (id, answer["totpUri"].as_str().map(String::from))
}

async fn totp_secrets_are_temporary_until_confirmed_and_can_be_removed(backend: Backend) {
    start_of_step().await;
    let server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("trudy"));

    // First initiate: a temporary secret.
    let (first_id, first_uri) = initiate_totp(&server, &consumer).await;
    let first_uri = first_uri.expect("a first initiate hands out a secret");
    assert!(first_uri.starts_with("otpauth://totp/"), "{first_uri}");
    for parameter in ["issuer=Jincor", "algorithm=SHA1", "digits=6", "period=30"] {
        assert!(first_uri.contains(parameter), "{first_uri}");
    }
    let totp = totp_rs::TOTP::from_url_unchecked(&first_uri).expect("uri");
    assert_eq!((totp.digits, totp.step), (6, 30));

    // Not confirmed yet: a new initiate replaces it, and the old one stops working.
    let (second_id, second_uri) = initiate_totp(&server, &consumer).await;
    let second_uri = second_uri.expect("an unconfirmed secret is replaced");
    assert_ne!(totp_rs::TOTP::from_url_unchecked(&second_uri).expect("uri").secret, totp.secret);
    let (status, answer) = validate(&server, "google_auth", &first_id, json!({"code": totp_code(&first_uri)})).await;
    assert_eq!((status, answer["error"].as_str(), answer["data"]["attempts"].as_u64()), (422, Some("Invalid code"), Some(1)));

    // The first right code (the previous step's) confirms the secret ...
    let (status, answer) = validate(&server, "google_auth", &second_id, json!({"code": totp_code_at(&second_uri, -1)})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["consumer"], consumer.as_str());
    assert_eq!(answer["data"]["payload"], json!({"n": 1}));

    // ... so it is permanent: no new secret, and codes keep working.
    let (third_id, third_uri) = initiate_totp(&server, &consumer).await;
    assert_eq!(third_uri, None, "a confirmed secret is not handed out again");
    let (status, _) = validate(&server, "google_auth", &third_id, json!({"code": totp_code(&second_uri)})).await;
    assert_eq!(status, 200);
    // A code is good once per consumer: the same code for another verifier is wrong.
    let (replay_id, _) = initiate_totp(&server, &consumer).await;
    let (status, answer) = validate(&server, "google_auth", &replay_id, json!({"code": totp_code(&second_uri)})).await;
    assert_eq!((status, answer["error"].as_str()), (422, Some("Invalid code")), "{answer}");

    // removeSecret with a right code removes it (2FA off) ...
    let (fourth_id, _) = initiate_totp(&server, &consumer).await;
    let (pending_id, _) = initiate_totp(&server, &consumer).await;
    let wrong = if totp_code(&second_uri) == "000000" { "111111" } else { "000000" };
    let (status, _) = validate(&server, "google_auth", &fourth_id, json!({"code": wrong, "removeSecret": true})).await;
    assert_eq!(status, 422, "a wrong code removes nothing");
    let (status, _) =
        validate(&server, "google_auth", &fourth_id, json!({"code": totp_code_at(&second_uri, 1), "removeSecret": true})).await;
    assert_eq!(status, 200);
    // ... verifiers started before have no secret to check against ...
    let (status, _) = validate(&server, "google_auth", &pending_id, json!({"code": totp_code(&second_uri)})).await;
    assert_eq!(status, 404);
    // ... and the next initiate hands out a new secret.
    let (fifth_id, fifth_uri) = initiate_totp(&server, &consumer).await;
    let fifth_uri = fifth_uri.expect("a new secret after removal");
    assert_ne!(fifth_uri, second_uri);
    assert_eq!(validate(&server, "google_auth", &fifth_id, json!({"code": totp_code(&fifth_uri)})).await.0, 200);

    // Another consumer has a secret of its own.
    let (_, other_uri) = initiate_totp(&server, &format!("{}@example.com", unique("victor"))).await;
    assert!(other_uri.is_some());
}

async fn bad_input_is_named_field_by_field(backend: Backend) {
    let server = Server::start(backend).await;
    let good = email_request("ok@example.com");
    let with = |path: &[&str], value: Value| {
        let mut body = good.clone();
        let (last, parents) = path.split_last().expect("path");
        let mut target = &mut body;
        for key in parents {
            target = &mut target[*key];
        }
        if value.is_null() {
            target.as_object_mut().expect("object").remove(*last);
        } else {
            target[*last] = value;
        }
        body
    };
    let initiate_path = "/v1/methods/email/actions/initiate";
    let cases: Vec<(&str, String, Option<&str>, Value, u16, Vec<&str>)> = vec![
        ("POST", initiate_path.into(), Some(ADMIN), json!({}), 422, vec!["consumer"]),
        (
            "POST",
            initiate_path.into(),
            Some(ADMIN),
            json!({
                "consumer": "", "issuer": 7,
                "template": {"subject": "", "body": ""},
                "generateCode": {"length": 3, "symbolSet": ["SYMBOLS"]},
                "policy": {"expiredOn": "1 hour", "forcedVerificationId": "no spaces", "forcedCode": "", "maxAttempts": 0}
            }),
            422,
            vec![
                "consumer", "issuer", "template.subject", "template.body", "generateCode.length",
                "generateCode.symbolSet[0]", "policy.expiredOn", "policy.forcedVerificationId",
                "policy.forcedCode", "policy.maxAttempts",
            ],
        ),
        ("POST", initiate_path.into(), Some(ADMIN), with(&["generateCode", "symbolSet"], json!([])), 422, vec!["generateCode.symbolSet"]),
        ("POST", initiate_path.into(), Some(ADMIN), with(&["generateCode", "length"], json!("six")), 422, vec!["generateCode.length"]),
        // Well-formed, but breaking the method's rules: every field at once.
        (
            "POST",
            initiate_path.into(),
            Some(ADMIN),
            json!({"consumer": "not-an-address", "policy": {"expiredOn": "00:00:00"}, "payload": [1, 2]}),
            422,
            vec!["consumer", "template", "generateCode", "policy.expiredOn", "payload"],
        ),
        (
            "POST",
            "/v1/methods/phone/actions/initiate".into(),
            Some(ADMIN),
            json!({"consumer": "0151 1234", "template": {"body": "x"}, "generateCode": {"length": 6, "symbolSet": ["DIGITS"]}}),
            422,
            vec!["consumer"],
        ),
        (
            "POST",
            "/v1/methods/google_auth/actions/initiate".into(),
            Some(ADMIN),
            json!({"consumer": "a:b", "issuer": "x:y"}),
            422,
            vec!["consumer", "issuer"],
        ),
        ("POST", initiate_path.into(), Some(ADMIN), with(&["payload"], json!({"big": "x".repeat(20_000)})), 422, vec!["payload"]),
        ("POST", "/v1/methods/email/verifiers/x/actions/validate".into(), Some(ADMIN), json!({}), 422, vec!["code"]),
        (
            "POST",
            "/v1/methods/email/verifiers/x/actions/validate".into(),
            Some(ADMIN),
            json!({"code": "", "removeSecret": "yes"}),
            422,
            vec!["code", "removeSecret"],
        ),
        ("POST", initiate_path.into(), None, good.clone(), 401, vec![]),
        ("POST", initiate_path.into(), Some("wrong-admin"), good.clone(), 401, vec![]),
        ("GET", "/v1/methods/email/verifiers/x".into(), Some("wrong-admin"), Value::Null, 401, vec![]),
        ("DELETE", "/v1/methods/email/verifiers/x".into(), None, Value::Null, 401, vec![]),
    ];
    crate::helpers::assert_error_answers(&server, cases).await;

    // Unknown methods answer as the reference does.
    let unsupported = json!({"status": 404, "error": "Method not supported"});
    assert_eq!(initiate(&server, "carrier_pigeon", good.clone()).await, (404, unsupported.clone()));
    assert_eq!(get(&server, "carrier_pigeon", "x").await, (404, unsupported.clone()));
    assert_eq!(validate(&server, "carrier_pigeon", "x", json!({"code": "1"})).await, (404, unsupported.clone()));
    assert_eq!(delete(&server, "carrier_pigeon", "x").await, (404, unsupported));
    // Malformed JSON is a 400.
    let response = reqwest::Client::new()
        .post(format!("{}{initiate_path}", server.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"consumer\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    // google_auth ignores template and generateCode.
    let (status, answer) = initiate(&server, "google_auth", json!({"consumer": unique("ignores")})).await;
    assert_eq!(status, 200, "{answer}");
    // Nothing of the refused requests was sent.
    assert!(!server.data_dir.join("outbox").exists());
}

async fn the_verifiers_view_catches_up_after_a_missed_fold(backend: Backend) {
    let mut server = Server::start(backend).await;
    let consumer = format!("{}@example.com", unique("rupert"));
    let (id, code) = email_end_to_end_code(&server, &consumer, email_request(&consumer)).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(validate(&server, "email", &id, json!({"code": wrong})).await.0, 422);
    let before = get(&server, "email", &id).await;
    assert_eq!(before.1["data"]["attempts"], 1);
    server.kill();
    // A crash between commit and fold: the log has the events, the view does not.
    let forget = ["DELETE FROM verifiers_view", "DELETE FROM projection_versions WHERE aggregate_type = 'verifier'"];
    server.execute_sql(&forget).await;
    server.restart().await;
    assert_eq!(get(&server, "email", &id).await, before);
    assert_eq!(validate(&server, "email", &id, json!({"code": code})).await.0, 200, "the code survives a restart");
}

/// Email through a real SMTP server (Python's aiosmtpd, writing a maildir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_out_over_smtp() {
    let smtpd = crate::helpers::SmtpServer::start();
    let smtp = smtpd.url.clone();
    let server = Server::start_with(
        Backend::Sqlite,
        &[("AUTHD_SMTP_URL", &smtp), ("AUTHD_SMTP_FROM", "Verify <verify@authd.test>")],
    )
    .await;
    let consumer = format!("{}@example.com", unique("smtp"));
    let (status, answer) = initiate(&server, "email", email_request(&consumer)).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["verificationId"].as_str().expect("id").to_string();

    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let Some(message) = smtpd.messages().into_iter().next() {
            break message;
        }
        assert!(Instant::now() < deadline, "no mail arrived in {}", smtpd.maildir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(smtpd);

    let (head, body) = message.split_once("\n\n").expect("headers and body");
    assert!(head.lines().any(|l| l == format!("To: {consumer}")), "{head}");
    assert!(head.lines().any(|l| l.starts_with("From: ") && l.contains("<verify@authd.test>")), "{head}");
    let (code, id_in_message) = code_of(body.trim());
    assert_eq!(id_in_message, id);
    assert!(head.lines().any(|l| l == format!("Subject: Code {code}")), "{head}");
    assert!(!server.data_dir.join("outbox").exists(), "nothing went to the outbox");
    let (status, answer) = validate(&server, "email", &id, json!({"code": code})).await;
    assert_eq!(status, 200, "{answer}");
}

/// Where `secret` occurs in `log` as a whole token (not inside a longer run of
/// digits or letters, nor as a timestamp's fraction of a second).
fn occurrences(log: &str, secret: &str) -> Vec<String> {
    let bytes = log.as_bytes();
    log.match_indices(secret)
        .filter(|(at, _)| {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + secret.len()).copied();
            let word = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
            !word(before) && !word(after) && before != Some(b'.')
        })
        .map(|(at, _)| log[at.saturating_sub(80)..(at + secret.len() + 40).min(log.len())].to_string())
        .collect()
}

/// At `RUST_LOG=trace`, across sign-up, activation, sign-in, refresh, MFA, password
/// reset, email and phone verifications, and failing SMTP and text-message
/// deliveries, no log line carries an email address, phone number, code, token or
/// secret.
async fn no_personal_data_in_trace_logs(backend: Backend) {
    let hook = webhook(200).await;
    let trace = [("RUST_LOG", "trace"), ("AUTHD_SMS_WEBHOOK_URL", hook.url.as_str())];
    let server = Server::start_with(backend, &trace).await;
    let mut secrets: Vec<String> = Vec::new();

    let username = unique("logged");
    let email = format!("{username}@example.com");
    let token = server.invitation().await;
    server.api().sign_up(&username, crate::helpers::PASSWORD, Some(&token), Some(&email)).await.expect("sign up");
    let (verification_id, code) = crate::helpers::activation_code(&server, &email).await;
    let (status, _) = server.call("POST", "/v1/account/activate", None, Some(json!({"verification_id": verification_id, "code": code}))).await;
    assert_eq!(status, 204);
    let session = server.sign_in(&username).await;
    let refreshed = server.api().refresh(&session.refresh_token).await.expect("refresh");
    server.api().jwt_verify(&refreshed.access_token).await.expect("verify");
    let (_, enrollment) = server.call("POST", "/v1/mfa/totp/generate", Some(&refreshed.access_token), None).await;
    let secret = enrollment["otp_secret"].as_str().expect("secret").to_string();
    let totp = crate::helpers::authenticator(&secret);
    let totp_code = crate::helpers::totp_code(&totp, 0);
    let (status, _) = server.call("POST", "/v1/mfa/totp/enable", Some(&refreshed.access_token), Some(json!({"code": totp_code}))).await;
    assert_eq!(status, 204);
    let (status, _) = server.call("POST", "/v1/account/forgot", None, Some(json!({"username": username}))).await;
    assert_eq!(status, 204);
    let (_, reset) = crate::helpers::outbox_mail(&server, &email, |subject| subject != "Activate your account").await;
    let (_, reset_code) = crate::helpers::code_and_id(&reset);
    secrets.extend([email.clone(), code, session.access_token, session.refresh_token, refreshed.access_token, refreshed.refresh_token, secret, totp_code, reset_code, token]);

    let phone = "+4915199988877";
    let (status, answer) = initiate(&server, "phone", phone_request(phone)).await;
    assert_eq!(status, 200, "{answer}");
    let (phone_code, phone_id) = code_of(hook.received()[0]["body"].as_str().expect("body"));
    assert_eq!(validate(&server, "phone", &phone_id, json!({"code": phone_code})).await.0, 200);
    let other = format!("{}@example.com", unique("verified"));
    let (email_id, email_code) = email_end_to_end_code(&server, &other, email_request(&other)).await;
    assert_eq!(validate(&server, "email", &email_id, json!({"code": email_code})).await.0, 200);
    secrets.extend([phone.to_string(), phone_code, other, email_code]);

    // Deliveries that fail: their errors are logged, without the recipient.
    let failing = webhook(500).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let smtp = format!("smtp://127.0.0.1:{closed}");
    let broken = Server::start_with(
        backend,
        &[("RUST_LOG", "trace"), ("AUTHD_SMS_WEBHOOK_URL", failing.url.as_str()), ("AUTHD_SMTP_URL", smtp.as_str())],
    )
    .await;
    let (lost_phone, lost_email) = ("+4915155544433", format!("{}@example.com", unique("undelivered")));
    assert_eq!(initiate(&broken, "phone", phone_request(lost_phone)).await.0, 503);
    assert_eq!(initiate(&broken, "email", email_request(&lost_email)).await.0, 503);
    let signed_up = format!("{}@example.com", unique("unsent"));
    let invitation = broken.invitation().await;
    broken.api().sign_up(&unique("unsent"), crate::helpers::PASSWORD, Some(&invitation), Some(&signed_up)).await.expect("sign up");
    secrets.extend([lost_phone.to_string(), lost_email, signed_up]);

    for server in [&server, &broken] {
        let log = server.log();
        assert!(log.lines().count() > 20 && log.contains("TRACE"), "the server logged at trace level ({} lines)", log.lines().count());
        for secret in &secrets {
            let found = occurrences(&log, secret);
            assert!(found.is_empty(), "{secret:?} is in the log: {found:#?}");
        }
    }
    assert!(broken.log().contains("not delivered") || broken.log().contains("could not be sent"), "the failures were logged");
}
