//! Passkeys through the real HTTP API with a software authenticator (ECDSA P-256
//! from `ring`, "none" attestation, the WebAuthn JSON a browser's `toJSON()` gives):
//! sign-up without a password, sign-in by username and discoverable, a second key,
//! step-up, removal — and every refusal: a replayed challenge or assertion, a wrong
//! origin or RP ID, a counter that goes back, strangers and stale tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::elevation::{error_of, let_it_grow_old, stale_server};
use crate::helpers::{detail_paths, unique, Backend, Server, PASSWORD};
use crate::security::claims;

both_stores!(
    the_example_page_is_served_with_its_own_script_only,
    a_passkey_signs_up_signs_in_steps_up_and_is_removed,
    passkey_answers_that_must_be_refused,
    a_cloned_authenticator_is_refused_and_recorded,
    strangers_and_stale_tokens_get_nothing,
);

/// The origin and RP ID authd is configured with by default.
const ORIGIN: &str = "http://localhost:8080";
const RP_ID: &str = "localhost";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

/// Minimal CBOR for the few shapes WebAuthn needs.
enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

impl Cbor {
    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        match n {
            0..=23 => out.push(major << 5 | n as u8),
            24..=255 => out.extend([major << 5 | 24, n as u8]),
            _ => {
                out.push(major << 5 | 25);
                out.extend((n as u16).to_be_bytes());
            }
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Int(n) if *n >= 0 => Self::head(out, 0, *n as u64),
            Cbor::Int(n) => Self::head(out, 1, (-1 - n) as u64),
            Cbor::Bytes(bytes) => {
                Self::head(out, 2, bytes.len() as u64);
                out.extend(bytes);
            }
            Cbor::Text(text) => {
                Self::head(out, 3, text.len() as u64);
                out.extend(text.as_bytes());
            }
            Cbor::Map(entries) => {
                Self::head(out, 5, entries.len() as u64);
                for (key, value) in entries {
                    key.encode(out);
                    value.encode(out);
                }
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

struct Key {
    id: Vec<u8>,
    pair: EcdsaKeyPair,
    user_handle: Vec<u8>,
    counter: u32,
}

/// A platform authenticator in software: keeps its credentials (all discoverable),
/// signs with user presence and verification, counts signatures.
pub(crate) struct SoftAuthenticator {
    origin: String,
    rp_id: String,
    keys: Vec<Key>,
    rng: SystemRandom,
}

impl SoftAuthenticator {
    pub(crate) fn new() -> Self {
        Self::at(ORIGIN, RP_ID)
    }

    /// One that believes it is on another page (wrong origin) or site (wrong RP ID).
    fn at(origin: &str, rp_id: &str) -> Self {
        Self { origin: origin.into(), rp_id: rp_id.into(), keys: Vec::new(), rng: SystemRandom::new() }
    }

    fn client_data(&self, kind: &str, options: &Value) -> Vec<u8> {
        let challenge = options["publicKey"]["challenge"].as_str().expect("challenge");
        serde_json::to_vec(&json!({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false})).expect("json")
    }

    /// `navigator.credentials.create()` then `toJSON()`.
    pub(crate) fn create(&mut self, options: &Value) -> Value {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &self.rng).expect("pair");
        let point = pair.public_key().as_ref().to_vec();
        let id: Vec<u8> = (0..32).map(|_| rand_byte(&self.rng)).collect();
        let cose = Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),
            (Cbor::Int(3), Cbor::Int(-7)),
            (Cbor::Int(-1), Cbor::Int(1)),
            (Cbor::Int(-2), Cbor::Bytes(point[1..33].to_vec())),
            (Cbor::Int(-3), Cbor::Bytes(point[33..65].to_vec())),
        ]);
        let mut auth_data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        auth_data.push(0x01 | 0x04 | 0x40); // user present, user verified, attested credential
        auth_data.extend(0u32.to_be_bytes());
        auth_data.extend([0u8; 16]); // AAGUID
        auth_data.extend((id.len() as u16).to_be_bytes());
        auth_data.extend(&id);
        auth_data.extend(cose.bytes());
        let attestation = Cbor::Map(vec![
            (Cbor::Text("fmt"), Cbor::Text("none")),
            (Cbor::Text("attStmt"), Cbor::Map(vec![])),
            (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
        ]);
        let user_handle = unb64(options["publicKey"]["user"]["id"].as_str().expect("user id"));
        let client_data = self.client_data("webauthn.create", options);
        self.keys.push(Key { id: id.clone(), pair, user_handle, counter: 0 });
        json!({
            "id": b64(&id),
            "rawId": b64(&id),
            "type": "public-key",
            "response": {"clientDataJSON": b64(&client_data), "attestationObject": b64(&attestation.bytes()), "transports": ["internal"]},
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }

    /// `navigator.credentials.get()` then `toJSON()`, with the key the options allow
    /// (or, discoverable, the newest one).
    pub(crate) fn get(&mut self, options: &Value) -> Value {
        let allowed: Vec<Vec<u8>> = options["publicKey"]["allowCredentials"]
            .as_array()
            .map(|list| list.iter().map(|c| unb64(c["id"].as_str().expect("id"))).collect())
            .unwrap_or_default();
        let client_data = self.client_data("webauthn.get", options);
        let rp_id_hash = Sha256::digest(self.rp_id.as_bytes());
        let key = self
            .keys
            .iter_mut()
            .rev()
            .find(|k| allowed.is_empty() || allowed.contains(&k.id))
            .expect("a key the options allow");
        key.counter += 1;
        let mut auth_data = rp_id_hash.to_vec();
        auth_data.push(0x01 | 0x04);
        auth_data.extend(key.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let signature = key.pair.sign(&self.rng, &signed).expect("sign");
        json!({
            "id": b64(&key.id),
            "rawId": b64(&key.id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(signature.as_ref()),
                "userHandle": b64(&key.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        })
    }
}

fn rand_byte(rng: &SystemRandom) -> u8 {
    let mut byte = [0u8; 1];
    ring::rand::SecureRandom::fill(rng, &mut byte).expect("random");
    byte[0]
}

/// Starts a ceremony at `path`; returns its id and options.
pub(crate) async fn start(server: &Server, path: &str, bearer: Option<&str>, body: Value) -> (String, Value) {
    let (status, started) = server.call("POST", path, bearer, Some(body)).await;
    assert_eq!(status, 200, "{path}: {started}");
    (started["challenge_id"].as_str().expect("challenge id").to_string(), started["options"].clone())
}

pub(crate) async fn answer(server: &Server, path: &str, bearer: Option<&str>, challenge_id: &str, credential: &Value) -> (u16, Value) {
    server.call("POST", path, bearer, Some(json!({"challenge_id": challenge_id, "credential": credential}))).await
}

/// A new passkey-only account; returns its username and first session body.
async fn sign_up_with_passkey(server: &Server, authenticator: &mut SoftAuthenticator, prefix: &str) -> (String, Value) {
    let username = unique(prefix);
    let token = server.invitation().await;
    let body = json!({"username": username, "signup_token": token, "nickname": "laptop"});
    let (challenge_id, options) = start(server, "/v1/sign/up/webauthn", None, body).await;
    assert_eq!(options["publicKey"]["rp"]["id"], RP_ID);
    assert_eq!(options["publicKey"]["authenticatorSelection"]["residentKey"], "required", "discoverable: {options}");
    let credential = authenticator.create(&options);
    let (status, session) = answer(server, "/v1/sign/up/webauthn/verify", None, &challenge_id, &credential).await;
    assert_eq!(status, 200, "{session}");
    (username, session)
}

async fn sign_in_with_passkey(server: &Server, authenticator: &mut SoftAuthenticator, username: Option<&str>) -> (u16, Value) {
    let (challenge_id, options) = start(server, "/v1/sign/in/webauthn", None, json!({"username": username})).await;
    let assertion = authenticator.get(&options);
    answer(server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &assertion).await
}

async fn the_example_page_is_served_with_its_own_script_only(backend: Backend) {
    let server = Server::start(backend).await;
    for (path, kind, needle) in [
        ("/examples/passkey.html", "text/html", "/examples/passkey.js"),
        ("/examples/passkey.js", "text/javascript", "parseCreationOptionsFromJSON"),
    ] {
        let response = reqwest::get(format!("{}{path}", server.base)).await.expect("get");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(header("content-type").starts_with(kind), "{path}");
        let policy = header("content-security-policy");
        let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
        assert!(directives.contains(&"script-src 'self'") && directives.contains(&"frame-ancestors 'none'"), "no inline script: {policy}");
        assert!(response.text().await.expect("body").contains(needle), "{path}");
    }
}

async fn a_passkey_signs_up_signs_in_steps_up_and_is_removed(backend: Backend) {
    let server = Server::start(backend).await;
    let mut laptop = SoftAuthenticator::new();
    let (username, first) = sign_up_with_passkey(&server, &mut laptop, "pk").await;
    let token = first["access_token"].as_str().expect("access token");
    assert_eq!(claims(token)["amr"], json!(["webauthn"]));
    let profile = server.api().user(token).await.expect("user");
    assert_eq!(profile.username, username);
    // No password: a password sign-in fails like a wrong password.
    assert!(server.api().sign_in(&username, PASSWORD).await.is_err());

    // By username, and discoverable (the authenticator names the account).
    let (status, by_name) = sign_in_with_passkey(&server, &mut laptop, Some(&username)).await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["profile_id"], first["profile_id"]);
    let (status, discovered) = sign_in_with_passkey(&server, &mut laptop, None).await;
    assert_eq!(status, 200, "{discovered}");
    assert_eq!(discovered["profile_id"], first["profile_id"]);
    assert_eq!(claims(discovered["access_token"].as_str().expect("token"))["amr"], json!(["webauthn"]));

    // A second key (the session is fresh, so recent enough).
    let mut phone = SoftAuthenticator::new();
    let bearer = discovered["access_token"].as_str();
    let (challenge_id, options) = start(&server, "/v1/user/webauthn/add", bearer, json!({"nickname": "phone"})).await;
    let excluded = options["publicKey"]["excludeCredentials"].as_array().map_or(0, Vec::len);
    assert_eq!(excluded, 1, "the laptop's key is excluded: {options}");
    let (status, added) = answer(&server, "/v1/user/webauthn/verify", bearer, &challenge_id, &phone.create(&options)).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["nickname"], "phone");
    let (status, list) = server.call("GET", "/v1/user/webauthn", bearer, None).await;
    assert_eq!(status, 200);
    let nicknames: Vec<_> = list["credentials"].as_array().expect("list").iter().map(|c| c["nickname"].clone()).collect();
    assert_eq!(nicknames, [json!("laptop"), json!("phone")]);
    assert!(list["credentials"][0]["last_used_at"].is_string(), "the laptop's key was used: {list}");
    let (status, by_phone) = sign_in_with_passkey(&server, &mut phone, Some(&username)).await;
    assert_eq!(status, 200, "the new key signs in: {by_phone}");

    // Step-up with a passkey.
    let (challenge_id, options) = start(&server, "/v1/elevate/webauthn", bearer, json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, elevated) = answer(&server, "/v1/elevate/webauthn/verify", bearer, &challenge_id, &laptop.get(&options)).await;
    assert_eq!(status, 200, "{elevated}");
    let fresh = claims(elevated["access_token"].as_str().expect("token"));
    assert!(fresh["auth_time"].as_i64() > claims(bearer.expect("bearer"))["auth_time"].as_i64());
    assert_eq!(fresh["sid"], claims(bearer.expect("bearer"))["sid"], "the same session, elevated");

    // Removal: never the last way to sign in.
    let bearer = elevated["access_token"].as_str();
    let phone_id = added["credential_id"].as_str().expect("id");
    let (status, _) = server.call("DELETE", &format!("/v1/user/webauthn/{phone_id}"), bearer, None).await;
    assert_eq!(status, 204);
    let (status, body) = server.call("DELETE", &format!("/v1/user/webauthn/{phone_id}"), bearer, None).await;
    assert_eq!((status, error_of(&body)), (404, Some("passkey_not_found")), "{body}");
    let laptop_id = list["credentials"][0]["credential_id"].as_str().expect("id");
    let (status, body) = server.call("DELETE", &format!("/v1/user/webauthn/{laptop_id}"), bearer, None).await;
    assert_eq!((status, error_of(&body)), (409, Some("last_sign_in_method")), "{body}");
    // (Discoverable: by username, the options no longer even list the removed key.)
    let (status, body) = sign_in_with_passkey(&server, &mut phone, None).await;
    assert_eq!(status, 401, "a removed key no longer signs in: {body}");
    let (status, body) = sign_in_with_passkey(&server, &mut laptop, Some(&username)).await;
    assert_eq!(status, 200, "{body}");

    // With a password added, the last passkey can go.
    server.api().change_password(bearer.expect("bearer"), PASSWORD).await.expect("add a password");
    let (status, body) = server.call("DELETE", &format!("/v1/user/webauthn/{laptop_id}"), bearer, None).await;
    assert_eq!(status, 204, "{body}");
    server.sign_in(&username).await;
}

async fn passkey_answers_that_must_be_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let mut laptop = SoftAuthenticator::new();
    let (username, _) = sign_up_with_passkey(&server, &mut laptop, "pk-refuse").await;

    // A replayed challenge: answered once.
    let (challenge_id, options) = start(&server, "/v1/sign/in/webauthn", None, json!({"username": username})).await;
    let assertion = laptop.get(&options);
    let (status, _) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &assertion).await;
    assert_eq!(status, 200);
    let (status, body) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &assertion).await;
    assert_eq!((status, error_of(&body)), (404, Some("challenge_not_found")), "{body}");
    // A replayed assertion on a new challenge: it signed another challenge.
    let (challenge_id, _) = start(&server, "/v1/sign/in/webauthn", None, json!({"username": username})).await;
    let (status, body) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &assertion).await;
    assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{body}");
    let (status, _) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &laptop.get(&json!({"publicKey": {"challenge": "x"}}))).await;
    assert_eq!(status, 404, "a refused answer spent its challenge");

    // Another page (origin) or another site (RP ID) holding a copy of the key.
    for (origin, rp_id) in [("http://evil.localhost:8080", RP_ID), ("https://example.com", "example.com")] {
        let mut elsewhere = SoftAuthenticator::at(origin, rp_id);
        elsewhere.keys = laptop.keys.drain(..).collect();
        let (status, body) = sign_in_with_passkey(&server, &mut elsewhere, Some(&username)).await;
        assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{origin} {rp_id}: {body}");
        laptop.keys = elsewhere.keys.drain(..).collect();
        // And at registration.
        let token = server.invitation().await;
        let body = json!({"username": unique("pk-elsewhere"), "signup_token": token});
        let (challenge_id, options) = start(&server, "/v1/sign/up/webauthn", None, body).await;
        let (status, body) = answer(&server, "/v1/sign/up/webauthn/verify", None, &challenge_id, &elsewhere.create(&options)).await;
        assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{origin} {rp_id}: {body}");
    }

    // An unknown username gets a ceremony alike (one credential), which nothing passes.
    let (challenge_id, options) = start(&server, "/v1/sign/in/webauthn", None, json!({"username": unique("nobody")})).await;
    assert_eq!(options["publicKey"]["allowCredentials"].as_array().map(Vec::len), Some(1), "{options}");
    let mut pretender = SoftAuthenticator::new();
    let _ = pretender.create(&json!({"publicKey": {"challenge": "x", "user": {"id": b64(&[1; 16])}}}));
    pretender.keys[0].id = unb64(options["publicKey"]["allowCredentials"][0]["id"].as_str().expect("id"));
    let (status, _) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &pretender.get(&options)).await;
    assert_eq!(status, 401);
    // A key registered nowhere, discoverable: its user handle names no passkey.
    let (status, _) = sign_in_with_passkey(&server, &mut pretender, None).await;
    assert_eq!(status, 401);

    // Bad input names its fields; a taken username is refused before any ceremony.
    let (status, body) = server.call("POST", "/v1/sign/in/webauthn/verify", None, Some(json!({"challenge_id": "", "credential": {}}))).await;
    assert_eq!(status, 422, "{body}");
    let (challenge_id, _) = start(&server, "/v1/sign/in/webauthn", None, json!({})).await;
    let (status, body) = answer(&server, "/v1/sign/in/webauthn/verify", None, &challenge_id, &json!({"id": 7})).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["credential".to_string()]), "{body}");
    let token = server.invitation().await;
    let (status, body) = server.call("POST", "/v1/sign/up/webauthn", None, Some(json!({"username": username, "signup_token": token}))).await;
    assert_eq!((status, error_of(&body)), (409, Some("username_taken")), "{body}");
    let (status, body) = server.call("POST", "/v1/sign/up/webauthn", None, Some(json!({"username": unique("pk-no-token")}))).await;
    assert_eq!((status, detail_paths(&body)), (422, vec!["signup_token".to_string()]), "invite-only: {body}");
}

async fn a_cloned_authenticator_is_refused_and_recorded(backend: Backend) {
    let server = Server::start(backend).await;
    let mut laptop = SoftAuthenticator::new();
    let (username, _) = sign_up_with_passkey(&server, &mut laptop, "pk-clone").await;
    for _ in 0..3 {
        let (status, body) = sign_in_with_passkey(&server, &mut laptop, Some(&username)).await;
        assert_eq!(status, 200, "{body}");
    }
    // A copy of the key whose counter is behind: refused, and on record.
    laptop.keys[0].counter = 1;
    let (status, body) = sign_in_with_passkey(&server, &mut laptop, Some(&username)).await;
    assert_eq!((status, error_of(&body)), (401, Some("passkey_cloned")), "{body}");
    let recorded = server.events().await.into_iter().filter(|e| e["event_type"] == "PasskeyCloneSuspected").count();
    assert_eq!(recorded, 1, "the suspected clone is in the audit log");
    // The genuine key, ahead of the stored counter, still signs in.
    laptop.keys[0].counter = 10;
    let (status, body) = sign_in_with_passkey(&server, &mut laptop, Some(&username)).await;
    assert_eq!(status, 200, "{body}");
}

async fn strangers_and_stale_tokens_get_nothing(backend: Backend) {
    let server = stale_server(backend, &[]).await;
    let mut laptop = SoftAuthenticator::new();
    let (_, session) = sign_up_with_passkey(&server, &mut laptop, "pk-stale").await;
    let routes = [
        ("POST", "/v1/user/webauthn/add", json!({})),
        ("POST", "/v1/user/webauthn/verify", json!({"challenge_id": "x", "credential": {}})),
        ("GET", "/v1/user/webauthn", Value::Null),
        ("DELETE", "/v1/user/webauthn/abc", Value::Null),
        ("POST", "/v1/elevate/webauthn", json!({})),
        ("POST", "/v1/elevate/webauthn/verify", json!({"challenge_id": "x", "credential": {}})),
    ];
    for (method, path, body) in &routes {
        let body = (!body.is_null()).then(|| body.clone());
        for bearer in [None, Some("not-a-token")] {
            let (status, _) = server.call(method, path, bearer, body.clone()).await;
            assert_eq!(status, 401, "{method} {path}");
        }
    }
    // A stolen, stale access token adds no passkey and removes none.
    let_it_grow_old().await;
    let bearer = session["access_token"].as_str();
    let (status, body) = server.call("POST", "/v1/user/webauthn/add", bearer, Some(json!({}))).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    let (_, list) = server.call("GET", "/v1/user/webauthn", bearer, None).await;
    let id = list["credentials"][0]["credential_id"].as_str().expect("id").to_string();
    let (status, body) = server.call("DELETE", &format!("/v1/user/webauthn/{id}"), bearer, None).await;
    assert_eq!((status, error_of(&body)), (403, Some("elevation_required")), "{body}");
    // Another session's ceremony cannot be answered with this session's token.
    let (_, other) = sign_in_with_passkey(&server, &mut laptop, None).await;
    let (challenge_id, options) = start(&server, "/v1/elevate/webauthn", other["access_token"].as_str(), json!({})).await;
    let (status, body) = answer(&server, "/v1/elevate/webauthn/verify", bearer, &challenge_id, &laptop.get(&options)).await;
    assert_eq!((status, error_of(&body)), (404, Some("challenge_not_found")), "{body}");
    // After a passkey step-up, the stale session may remove again (here: refused as the last way in).
    let (challenge_id, options) = start(&server, "/v1/elevate/webauthn", bearer, json!({})).await;
    let (status, elevated) = answer(&server, "/v1/elevate/webauthn/verify", bearer, &challenge_id, &laptop.get(&options)).await;
    assert_eq!(status, 200, "{elevated}");
    let (status, body) = server.call("DELETE", &format!("/v1/user/webauthn/{id}"), elevated["access_token"].as_str(), None).await;
    assert_eq!((status, error_of(&body)), (409, Some("last_sign_in_method")), "{body}");
}
