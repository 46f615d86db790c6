//! Black-box tests of private sign-in (`/v1/step/one|two|three`, reference 001), on
//! SQLite and PostgreSQL, with the real client state machine.

use std::io::Write;
use std::process::{Command, Stdio};

use client::private::{StepOneAnswer, StepThreeAnswer, StepTwo, StepTwoAnswer};
use client::{b64, unb64, Error, PrivateSignIn, SignInOutcome};
use crate::helpers::{bogus_ke3, detail_paths, unique, Backend, Server, ADMIN, PASSWORD};
use serde_json::{json, Value};

both_stores!(
    happy_path_never_sends_the_username_in_clear,
    the_client_signs_in_privately,
    a_wrong_password_is_refused_and_counted_like_a_normal_sign_in,
    an_unknown_user_gets_a_normal_answer_then_401,
    a_tampered_encrypted_id_is_refused,
    tampered_handles_and_a_replayed_step_three_are_refused,
    expired_handles_are_refused,
    bad_input_is_named_field_by_field,
);

/// Fails when `username` (as given or normalised) appears in `body`: in any string
/// as text, or in the bytes any base64url field decodes to.
fn assert_username_absent(body: &Value, username: &str) {
    let text = body.to_string().to_lowercase();
    assert!(!text.contains(&username.to_lowercase()), "username in clear in {body}");
    for value in body.as_object().expect("an object").values() {
        if let Some(bytes) = value.as_str().and_then(|s| unb64(s).ok()) {
            let lower = bytes.to_ascii_lowercase();
            assert!(
                !lower.windows(username.len()).any(|w| w == username.to_lowercase().as_bytes()),
                "username in the bytes of {value}"
            );
        }
    }
}

async fn step(server: &Server, which: &str, body: Value) -> (u16, Value) {
    server.call("POST", &format!("/v1/step/{which}"), None, Some(body)).await
}

async fn ok<T: serde::de::DeserializeOwned>(server: &Server, which: &str, body: Value) -> T {
    let (status, answer) = step(server, which, body.clone()).await;
    assert_eq!(status, 200, "step {which} {body} -> {answer}");
    serde_json::from_value(answer).expect("answer shape")
}

/// Steps one and two with the real client; returns what step three needs.
async fn through_step_two(
    server: &Server,
    username: &str,
    password: &[u8],
) -> (client::private::KeyExchange, StepTwoAnswer) {
    let (sign_in, one) = PrivateSignIn::start();
    let answer: StepOneAnswer = ok(server, "one", json!(one)).await;
    let (exchange, two) = sign_in.step_two(&answer, username, password).expect("step two");
    let answer: StepTwoAnswer = ok(server, "two", json!(two)).await;
    (exchange, answer)
}

fn flip(text: &str, at: usize) -> String {
    let mut bytes = unb64(text).expect("base64url");
    bytes[at] ^= 1;
    b64(&bytes)
}

/// The event types of one account, in order (read from the event store).
/// The throttling events of `profile_id`'s account, in the order written: (type, payload).
async fn throttle_events(server: &Server, profile_id: &str) -> Vec<(String, Value)> {
    server
        .stored_events()
        .await
        .into_iter()
        .filter(|(kind, _, payload)| {
            kind == "throttle" && payload.as_object().and_then(|p| p.values().next()).is_some_and(|v| v["profile_id"] == profile_id)
        })
        .map(|(_, event, payload)| (event, payload))
        .collect()
}

async fn happy_path_never_sends_the_username_in_clear(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("Alice");
    let profile_id = server.sign_up(&username).await;
    // Spelled differently: it is normalised exactly as for a normal sign-in.
    let spelled = format!("  {}  ", username.to_uppercase());

    // The check below would catch a name in clear, as a normal sign-in sends it.
    let normal = json!({"username": username, "credential_request": b64(username.as_bytes())});
    assert!(std::panic::catch_unwind(|| assert_username_absent(&normal, &username)).is_err());
    assert!(std::panic::catch_unwind(|| assert_username_absent(&json!({"x": b64(username.as_bytes())}), &username))
        .is_err());

    let (sign_in, one) = PrivateSignIn::start();
    let one = json!(one);
    assert_username_absent(&one, &username);
    assert_eq!(unb64(one["pke_key"].as_str().expect("pke_key")).expect("b64").len(), 32);
    let answer: StepOneAnswer = ok(&server, "one", one).await;
    assert_eq!(unb64(&answer.pke_key).expect("b64").len(), 32);

    let (exchange, two) = sign_in.step_two(&answer, &spelled, PASSWORD).expect("step two");
    let two = json!(two);
    assert_username_absent(&two, &username);
    assert_eq!(two["pke_key"], answer.handle.as_str(), "step two sends the handle back as pke_key");
    assert_eq!(unb64(two["pake_key"].as_str().expect("ke1")).expect("b64").len(), 96);
    let answer: StepTwoAnswer = ok(&server, "two", two).await;
    assert_eq!(unb64(&answer.pake_key).expect("b64").len(), 320);

    let (finalization, three) = exchange.step_three(&answer, PASSWORD).expect("step three");
    let three = json!(three);
    assert_username_absent(&three, &username);
    assert_eq!(three["pake_key"], answer.salt.as_str(), "step three sends the salt back as pake_key");
    let (status, raw) = step(&server, "three", three).await;
    assert_eq!(status, 200, "{raw}");
    let keys: Vec<&String> = raw.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["encrypted_token", "pake_proof"]);
    assert!(!raw.to_string().contains(&profile_id), "the session is not in clear");
    let answer: StepThreeAnswer = serde_json::from_value(raw).expect("shape");

    let SignInOutcome::Session(session) = finalization.finish(&answer).expect("decrypts") else {
        panic!("no MFA configured")
    };
    assert_eq!(session.profile_id, profile_id);
    assert_eq!((session.token_type.as_str(), session.expires_in), ("Bearer", 900));
    let api = server.api();
    let verified = api.jwt_verify(&session.access_token).await.expect("/v1/jwt/verify");
    assert_eq!(verified.profile_id, profile_id);
    let refreshed = api.refresh(&session.refresh_token).await.expect("the refresh token works");
    assert_eq!(api.jwt_verify(&refreshed.access_token).await.expect("verify").session_id, verified.session_id);
}

async fn the_client_signs_in_privately(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("bob");
    let profile_id = server.sign_up(&username).await;
    let api = server.api();
    let SignInOutcome::Session(first) = api.sign_in_private(&username, PASSWORD).await.expect("private sign-in") else {
        panic!("no MFA configured")
    };
    let SignInOutcome::Session(second) = api.sign_in_private(&username, PASSWORD).await.expect("again") else {
        panic!("no MFA configured")
    };
    let (a, b) = (
        api.jwt_verify(&first.access_token).await.expect("verify"),
        api.jwt_verify(&second.access_token).await.expect("verify"),
    );
    assert_eq!((a.profile_id.as_str(), b.profile_id.as_str()), (profile_id.as_str(), profile_id.as_str()));
    assert_ne!(a.session_id, b.session_id, "each sign-in opens its own session");
    // A normal sign-in of the same account still works alongside.
    assert_eq!(server.sign_in(&username).await.profile_id, profile_id);
}

async fn a_wrong_password_is_refused_and_counted_like_a_normal_sign_in(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("carol");
    let profile_id = server.sign_up(&username).await;
    // The client cannot finish with a wrong password ...
    assert_eq!(server.api().sign_in_private(&username, b"wrong password").await.unwrap_err(), Error::InvalidLogin);
    // ... so whatever it sends as KE3 is refused, and counted as a failure.
    let (exchange, answer) = through_step_two(&server, &username, b"wrong password").await;
    assert_eq!(exchange.step_three(&answer, b"wrong password").err(), Some(Error::InvalidLogin));
    let (status, body) = step(&server, "three", json!({"pake_key": answer.salt, "pake_proof": bogus_ke3()})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")), "{body}");
    // A normal sign-in failure adds to the same count.
    let (sign_in_id, _) =
        server.api().sign_in_start(&username, &client::Login::start(b"x").expect("ke1").1).await.expect("ke2");
    let (status, _) = server
        .call(
            "POST",
            "/v1/sign/in/finish",
            None,
            Some(json!({"sign_in_id": sign_in_id, "credential_finalization": bogus_ke3()})),
        )
        .await;
    assert_eq!(status, 401);
    // The right password works afterwards, and resets the count.
    server.api().sign_in_private(&username, PASSWORD).await.expect("right password");

    // Every attempt counts when it begins (the abandoned first one too) until one
    // succeeds: private and normal attempts share the one count.
    let events = throttle_events(&server, &profile_id).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["ProofAttempted", "ProofAttempted", "ProofAttempted", "ProofAttempted", "ProofSucceeded"],
        "{events:?}"
    );
    assert_eq!(events[2].1["ProofAttempted"]["failures"], 3);
}

async fn an_unknown_user_gets_a_normal_answer_then_401(backend: Backend) {
    let server = Server::start(backend).await;
    let known = unique("known");
    server.sign_up(&known).await;
    let (_, known_answer) = through_step_two(&server, &known, PASSWORD).await;
    let (exchange, answer) = through_step_two(&server, &unique("nobody"), PASSWORD).await;
    assert_eq!(answer.pake_key.len(), known_answer.pake_key.len());
    assert_eq!(answer.salt.len(), known_answer.salt.len());
    assert_eq!(exchange.step_three(&answer, PASSWORD).err(), Some(Error::InvalidLogin));
    let (status, body) = step(&server, "three", json!({"pake_key": answer.salt, "pake_proof": bogus_ke3()})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")));
}

async fn a_tampered_encrypted_id_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("dave");
    server.sign_up(&username).await;
    let (sign_in, one) = PrivateSignIn::start();
    let answer: StepOneAnswer = ok(&server, "one", json!(one)).await;
    let (_, two) = sign_in.step_two(&answer, &username, PASSWORD).expect("step two");

    // Another client's agreement, with its own KE1 and encrypted_id.
    let (stranger, one) = PrivateSignIn::start();
    let theirs: StepOneAnswer = ok(&server, "one", json!(one)).await;
    let (_, their_two) = stranger.step_two(&theirs, &username, PASSWORD).expect("step two");

    let forged: Vec<(&str, StepTwo)> = vec![
        ("a flipped nonce byte", StepTwo { encrypted_id: flip(&two.encrypted_id, 0), ..two.clone() }),
        ("a flipped ciphertext byte", StepTwo { encrypted_id: flip(&two.encrypted_id, 30), ..two.clone() }),
        ("a flipped tag byte", StepTwo { encrypted_id: flip(&two.encrypted_id, 24 + 64 + 15), ..two.clone() }),
        ("another agreement's encrypted_id", StepTwo { encrypted_id: their_two.encrypted_id.clone(), ..two.clone() }),
        ("another KE1", StepTwo { pake_key: their_two.pake_key.clone(), ..two.clone() }),
        ("another agreement's handle", StepTwo { pke_key: their_two.pke_key.clone(), ..two.clone() }),
    ];
    for (what, body) in forged {
        let (status, answer) = step(&server, "two", json!(body)).await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_credentials")), "{what}: {answer}");
    }
    // The genuine body is still good.
    let _: StepTwoAnswer = ok(&server, "two", json!(two)).await;
}

async fn tampered_handles_and_a_replayed_step_three_are_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let username = unique("erin");
    server.sign_up(&username).await;

    let (sign_in, one) = PrivateSignIn::start();
    let answer: StepOneAnswer = ok(&server, "one", json!(one)).await;
    let (exchange, two) = sign_in.step_two(&answer, &username, PASSWORD).expect("step two");
    for at in [0, 40, 143] {
        let body = StepTwo { pke_key: flip(&two.pke_key, at), ..two.clone() };
        let (status, answer) = step(&server, "two", json!(body)).await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_credentials")), "handle byte {at}");
    }
    let answer: StepTwoAnswer = ok(&server, "two", json!(two)).await;
    let (finalization, three) = exchange.step_three(&answer, PASSWORD).expect("step three");

    let salt_len = unb64(&three.pake_key).expect("b64").len();
    for forged in
        [flip(&three.pake_key, 0), flip(&three.pake_key, 100), flip(&three.pake_key, salt_len - 1), two.pke_key.clone()]
    {
        let (status, answer) =
            step(&server, "three", json!({"pake_key": forged, "pake_proof": three.pake_proof})).await;
        assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_credentials")), "{forged}");
    }
    // The genuine step three is good once; replayed, it is refused.
    let body = json!(three);
    let answer: StepThreeAnswer = ok(&server, "three", body.clone()).await;
    assert!(matches!(finalization.finish(&answer), Ok(SignInOutcome::Session(_))));
    let (status, answer) = step(&server, "three", body).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_credentials")), "replayed: {answer}");
}

async fn expired_handles_are_refused(backend: Backend) {
    let server = Server::start_with(backend, &[("AUTHD_SIGN_IN_TTL", "1")]).await;
    let username = unique("frank");
    server.sign_up(&username).await;
    let (sign_in, one) = PrivateSignIn::start();
    let answer: StepOneAnswer = ok(&server, "one", json!(one)).await;
    let (exchange, two) = sign_in.step_two(&answer, &username, PASSWORD).expect("step two");
    let answer: StepTwoAnswer = ok(&server, "two", json!(two)).await;
    let (_, three) = exchange.step_three(&answer, PASSWORD).expect("step three");
    // Handles carry whole seconds: 2.5 s is past a 1 s lifetime whatever the rounding.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, body) = step(&server, "two", json!(two)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")), "expired handle: {body}");
    let (status, body) = step(&server, "three", json!(three)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_credentials")), "expired sign-in: {body}");
}

async fn bad_input_is_named_field_by_field(backend: Backend) {
    let server = Server::start(backend).await;
    let (sign_in, one) = PrivateSignIn::start();
    let answer: StepOneAnswer = ok(&server, "one", json!(one)).await;
    // A well-formed, decryptable encrypted_id that carries a name too short to exist.
    let (_, short_name) = sign_in.step_two(&answer, "ab", PASSWORD).expect("step two");

    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("one", json!({}), vec!["pke_key"]),
        ("one", json!({"pke_key": 42}), vec!["pke_key"]),
        ("one", json!({"pke_key": b64(&[9u8; 31])}), vec!["pke_key"]),
        // A low-order point: the agreed secret would be known to everyone.
        ("one", json!({"pke_key": b64(&[0u8; 32])}), vec!["pke_key"]),
        ("two", json!({}), vec!["pke_key", "pake_key", "encrypted_id"]),
        (
            "two",
            json!({"pke_key": "short", "pake_key": b64(&[1u8; 95]), "encrypted_id": "not base64!"}),
            vec!["pke_key", "pake_key", "encrypted_id"],
        ),
        (
            "two",
            json!({"pke_key": answer.handle, "pake_key": short_name.pake_key, "encrypted_id": "x".repeat(54)}),
            vec!["encrypted_id"],
        ),
        ("two", json!(short_name), vec!["encrypted_id"]),
        ("three", json!({}), vec!["pake_key", "pake_proof"]),
        ("three", json!({"pake_key": "", "pake_proof": b64(&[1u8; 63])}), vec!["pake_key", "pake_proof"]),
        ("three", json!({"pake_key": "a.b", "pake_proof": null}), vec!["pake_key", "pake_proof"]),
    ];
    for (which, body, fields) in cases {
        let (status, answer) = step(&server, which, body.clone()).await;
        let context = format!("step {which} {body} -> {status} {answer}");
        assert_eq!((status, answer["status"].as_u64()), (422, Some(422)), "{context}");
        assert_eq!(answer["error"], "invalid_request", "{context}");
        let mut paths = detail_paths(&answer);
        let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        paths.sort();
        expected.sort();
        assert_eq!(paths, expected, "{context}");
    }
    let (_, answer) = step(&server, "two", json!(short_name)).await;
    assert!(answer["details"][0]["error"].as_str().is_some_and(|why| why.contains("3 to 64 characters")), "{answer}");

    // Malformed JSON and a wrong content type are 400s, never 500s.
    let http = reqwest::Client::new();
    for which in ["one", "two", "three"] {
        for (content_type, body) in [("application/json", "{\"pke_key\": "), ("text/plain", "{}")] {
            let response = http
                .post(format!("{}/v1/step/{which}", server.base))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status().as_u16(), 400, "step {which} {content_type}");
            let answer: Value = response.json().await.expect("a JSON error");
            assert_eq!(answer["status"], 400);
        }
    }
}

/// `authd sign-in --private` against a running server: the session it prints works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_in_privately() {
    let server = Server::start(Backend::Sqlite).await;
    let username = unique("walker");
    let profile_id = server.sign_up(&username).await;
    let password = format!("{}\n", String::from_utf8_lossy(PASSWORD));
    let run = |password: String| {
        let base = server.base.clone();
        let username = username.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
                .args(["sign-in", "--private", "--username", &username])
                .env("AUTHD_URL", base)
                .env("AUTHD_ADMIN_TOKEN", ADMIN)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn authd");
            child.stdin.take().expect("stdin").write_all(password.as_bytes()).expect("write stdin");
            child.wait_with_output().expect("wait")
        })
    };
    let output = run(password).await.expect("join");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let session: Value = serde_json::from_slice(&output.stdout).expect("a JSON session");
    assert_eq!(session["profile_id"], profile_id.as_str());
    let verified =
        server.api().jwt_verify(session["access_token"].as_str().expect("access token")).await.expect("verify");
    assert_eq!(verified.profile_id, profile_id);

    let output = run("not the password\n".into()).await.expect("join");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("invalid login"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
