//! ID-token sign-in against local OpenID issuers started here (discovery document and
//! JWKS on a loopback port, Ed25519 keys from `ring`): valid, wrong audience or
//! authorized party, expired, not yet valid, issued in the future, wrong signature,
//! wrong nonce, replayed (also concurrently, also for linking); a key that appears
//! after a rotation, even right after a bogus `kid`; one fetch for a burst of unknown
//! kids; an oversized JWKS and a redirect off the issuer's origin refused; linking an
//! identity to an account; closed sign-up — black-box on both stores, as an attacker
//! would try them.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use crate::elevation::error_of;
use crate::helpers::{unique, Backend, Server};
use crate::security::claims;

both_stores!(
    id_tokens_sign_in_link_and_are_refused_when_wrong,
    an_id_token_is_used_once_even_concurrently,
    keys_are_fetched_once_at_a_time_and_a_rotation_is_found,
    hostile_issuer_answers_are_refused,
    totp_follows_an_id_token,
);

const CLIENT_ID: &str = "authd-test-client";

/// What the issuer serves, and what it saw.
#[derive(Default)]
struct Served {
    jwks: Vec<Value>,
    /// JWKS requests answered.
    jwks_fetches: usize,
    /// Where `/jwks` redirects to instead of answering.
    redirect: Option<String>,
    /// Bytes of padding streamed with the JWKS (without a Content-Length).
    padding: usize,
}

pub(crate) struct Issuer {
    url: String,
    served: Arc<Mutex<Served>>,
    /// kid → PKCS#8 of its key.
    keys: Vec<(String, Vec<u8>)>,
}

#[poem::handler]
fn discovery(poem::web::Data(url): poem::web::Data<&String>) -> poem::web::Json<Value> {
    poem::web::Json(json!({"issuer": url, "jwks_uri": format!("{url}/jwks"), "id_token_signing_alg_values_supported": ["EdDSA"]}))
}

#[poem::handler]
fn jwks(poem::web::Data(served): poem::web::Data<&Arc<Mutex<Served>>>) -> poem::Response {
    let mut served = served.lock().expect("lock");
    served.jwks_fetches += 1;
    if let Some(to) = &served.redirect {
        return poem::Response::builder().status(poem::http::StatusCode::FOUND).header("Location", to.as_str()).finish();
    }
    let body = json!({"keys": served.jwks.clone(), "padding": "x".repeat(served.padding)}).to_string().into_bytes();
    // Streamed in chunks, so no Content-Length announces the size.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(8 * 1024).map(|chunk| Ok(chunk.to_vec())).collect();
    poem::Response::builder().content_type("application/json").body(poem::Body::from_bytes_stream(futures::stream::iter(chunks)))
}

pub(crate) async fn issuer() -> Issuer {
    use poem::listener::{Acceptor, Listener};
    use poem::EndpointExt;
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind issuer");
    let address = *acceptor.local_addr()[0].as_socket_addr().expect("a socket address");
    let url = format!("http://{address}");
    let served = Arc::new(Mutex::new(Served::default()));
    let app = poem::Route::new()
        .at("/.well-known/openid-configuration", poem::get(discovery))
        .at("/jwks", poem::get(jwks))
        .data(url.clone())
        .data(served.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Issuer { url, served, keys: Vec::new() }
}

impl Issuer {
    /// A new signing key; `publish`: in the JWKS (else only the issuer knows it).
    pub(crate) fn add_key(&mut self, kid: &str, publish: bool) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key").as_ref().to_vec();
        if publish {
            self.served.lock().expect("lock").jwks.push(Self::jwk(kid, &pkcs8));
        }
        self.keys.push((kid.to_string(), pkcs8));
    }

    /// The public key `kid` as a JWK.
    fn jwk(kid: &str, pkcs8: &[u8]) -> Value {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).expect("pair");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
    }

    /// Publishes this issuer's key `kid` in `other`'s JWKS too.
    fn publish_in(&self, kid: &str, other: &Issuer) {
        let (_, pkcs8) = self.keys.iter().find(|(k, _)| k == kid).expect("key");
        other.served.lock().expect("lock").jwks.push(Self::jwk(kid, pkcs8));
    }

    fn jwks_fetches(&self) -> usize {
        self.served.lock().expect("lock").jwks_fetches
    }

    /// A token signed with the key `signer`, naming `kid`.
    pub(crate) fn token(&self, signer: &str, kid: &str, claims: Value) -> String {
        let (_, pkcs8) = self.keys.iter().find(|(k, _)| k == signer).expect("key");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ed_der(pkcs8)).expect("sign")
    }

    pub(crate) fn claims(&self, sub: &str, change: impl FnOnce(&mut Value)) -> Value {
        let now = chrono::Utc::now().timestamp();
        // A `jti` makes every token distinct, as a provider's are.
        let mut claims = json!({"iss": self.url, "sub": sub, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": "n-1", "jti": unique("jti")});
        change(&mut claims);
        claims
    }

    /// A fresh valid token for `sub`, signed with `kid`.
    fn fresh(&self, kid: &str, sub: &str) -> String {
        self.token(kid, kid, self.claims(sub, |_| {}))
    }

    fn provider(&self, name: &str) -> Value {
        json!({"name": name, "issuer": self.url, "client_id": CLIENT_ID})
    }

    pub(crate) fn providers(&self) -> String {
        json!([self.provider("local")]).to_string()
    }
}

pub(crate) async fn sign_in(server: &Server, token: &str, nonce: Option<&str>) -> (u16, Value) {
    sign_in_with(server, "local", token, nonce).await
}

async fn sign_in_with(server: &Server, provider: &str, token: &str, nonce: Option<&str>) -> (u16, Value) {
    let body = json!({"provider": provider, "id_token": token, "nonce": nonce});
    server.call("POST", "/v1/sign/in/idtoken", None, Some(body)).await
}

fn assert_refused((status, body): &(u16, Value), why: &str) {
    assert_eq!((*status, error_of(body)), (401, Some("invalid_credentials")), "{why}: {body}");
}

async fn id_tokens_sign_in_link_and_are_refused_when_wrong(backend: Backend) {
    let mut issuer = issuer().await;
    issuer.add_key("k1", true);
    issuer.add_key("forger", false);
    let providers = issuer.providers();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let alice = format!("alice-{}", unique("ext"));

    // Valid: a new account (sign-up is open), then the same one again with a new token.
    let token = issuer.fresh("k1", &alice);
    let (status, first) = sign_in(&server, &token, Some("n-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(claims(first["access_token"].as_str().expect("token"))["amr"], json!(["idtoken"]));
    let (status, again) = sign_in(&server, &issuer.fresh("k1", &alice), None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["profile_id"], first["profile_id"], "the identity signs in to its account");

    // Replayed: a token signs in once (it used to sign in again and again).
    assert_refused(&sign_in(&server, &token, Some("n-1")).await, "replayed token");
    assert_refused(&sign_in(&server, &token, None).await, "replayed token without the nonce");

    // Refused: wrong audience or authorized party, expired, not yet valid, issued in
    // the future, wrong issuer, forged signature, not a token.
    let now = chrono::Utc::now().timestamp();
    let wrong = |change: fn(&mut Value)| issuer.token("k1", "k1", issuer.claims(&alice, change));
    let cases = [
        ("wrong audience", wrong(|c| c["aud"] = json!("someone-else"))),
        ("an audience list without this client", wrong(|c| c["aud"] = json!(["someone-else", "another"]))),
        ("an audience list with another client's azp", wrong(|c| {
            c["aud"] = json!([CLIENT_ID, "someone-else"]);
            c["azp"] = json!("someone-else");
        })),
        ("an audience list without azp", wrong(|c| c["aud"] = json!([CLIENT_ID, "someone-else"]))),
        ("azp another client", wrong(|c| c["azp"] = json!("someone-else"))),
        ("expired", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["exp"] = json!(now - 600)))),
        ("not valid before a minute from now", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["nbf"] = json!(now + 60)))),
        ("issued a minute from now", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["iat"] = json!(now + 60)))),
        ("wrong issuer", wrong(|c| c["iss"] = json!("https://evil.test"))),
        ("forged signature", issuer.token("forger", "k1", issuer.claims(&alice, |_| {}))),
        ("not a token", "not.a.token".to_string()),
    ];
    for (why, token) in cases {
        assert_refused(&sign_in(&server, &token, None).await, why);
    }
    // An audience list is fine when this client is the authorized party; a one-entry
    // list needs none.
    for (why, token) in [
        ("an audience list with this client's azp", wrong(|c| {
            c["aud"] = json!([CLIENT_ID, "someone-else"]);
            c["azp"] = json!(CLIENT_ID);
        })),
        ("a one-entry audience list", wrong(|c| c["aud"] = json!([CLIENT_ID]))),
        ("nbf and iat now", wrong(|c| c["nbf"] = c["iat"].clone())),
    ] {
        let (status, body) = sign_in(&server, &token, None).await;
        assert_eq!((status, &body["profile_id"]), (200, &first["profile_id"]), "{why}: {body}");
    }
    // A wrong nonce is refused and does not spend the token.
    let nonced = issuer.fresh("k1", &alice);
    assert_refused(&sign_in(&server, &nonced, Some("another nonce")).await, "wrong nonce");
    assert_eq!(sign_in(&server, &nonced, Some("n-1")).await.0, 200, "the token refused for its nonce is still good");
    let (status, body) = server.call("POST", "/v1/sign/in/idtoken", None, Some(json!({"provider": "nope", "id_token": token}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["provider".to_string()]), "{body}");

    // A key rotation: a kid the server has not seen is fetched again.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    issuer.add_key("k2", true);
    let (status, rotated) = sign_in(&server, &issuer.fresh("k2", &alice), None).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["profile_id"], first["profile_id"]);

    // Linking: Bob (a fresh password sign-in is recent) links his external identity,
    // once per token; Alice's identity is taken.
    let bob = unique("bob-ext");
    let bob_profile = server.sign_up(&bob).await;
    let bobs = server.sign_in(&bob).await;
    let link = |token: &str| json!({"provider": "local", "id_token": token});
    let bobs_token = issuer.fresh("k1", &bob);
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&bobs_token))).await;
    assert_eq!(status, 204, "{body}");
    assert_refused(&server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&bobs_token))).await, "a replayed link");
    assert_refused(&sign_in(&server, &bobs_token, None).await, "a token spent on a link signs in no more");
    let (status, session) = sign_in(&server, &issuer.fresh("k1", &bob), None).await;
    assert_eq!((status, session["profile_id"].as_str()), (200, Some(bob_profile.as_str())), "{session}");
    let alices = issuer.fresh("k1", &alice);
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&alices))).await;
    assert_eq!((status, error_of(&body)), (409, Some("identity_linked")), "{body}");
    assert_refused(&server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&token))).await, "a used token links nothing");
    let (status, _) = server.call("POST", "/v1/link/idtoken", None, Some(link(&alices))).await;
    assert_eq!(status, 401);

    // Invite-only sign-up: an identity linked to nothing is refused.
    let closed = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers)]).await;
    let (status, body) = sign_in(&closed, &issuer.fresh("k1", "stranger"), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("sign_up_closed")), "{body}");
}

/// Exactly one of `answers` signed in; the others are refused.
fn assert_one_sign_in(answers: &[(u16, Value)], why: &str) {
    let signed_in = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(signed_in, 1, "{why}: {answers:?}");
    for answer in answers.iter().filter(|(status, _)| *status != 200) {
        assert_refused(answer, why);
    }
}

/// The same token presented at once, for a new account and for a linked one: one
/// sign-in, the others refused; still spent after a restart and on another replica,
/// and presented at once on two replicas, it signs in once.
async fn an_id_token_is_used_once_even_concurrently(backend: Backend) {
    let mut issuer = issuer().await;
    issuer.add_key("k1", true);
    let providers = issuer.providers();
    let mut server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let carol = unique("carol-ext");
    for round in ["a new account", "a linked identity"] {
        let token = issuer.fresh("k1", &carol);
        assert_one_sign_in(&futures::future::join_all((0..4).map(|_| sign_in(&server, &token, None))).await, round);
    }

    let spent = issuer.fresh("k1", &carol);
    assert_eq!(sign_in(&server, &spent, None).await.0, 200);
    server.restart().await;
    assert_refused(&sign_in(&server, &spent, None).await, "replayed after a restart");
    if backend == Backend::Postgres {
        let replica = server.replica().await;
        assert_refused(&sign_in(&replica, &spent, None).await, "replayed on another replica");
        for round in 0..3 {
            let token = issuer.fresh("k1", &carol);
            let answers = futures::future::join_all([&server, &replica, &server, &replica].map(|s| sign_in(s, &token, None))).await;
            assert_one_sign_in(&answers, &format!("at once on two replicas, round {round}"));
        }
    }
}

/// Key fetching: a burst of unknown kids costs one fetch; a kid the issuer rotated to
/// is found right after a bogus one was looked up (it waits for the cooldown instead
/// of failing).
async fn keys_are_fetched_once_at_a_time_and_a_rotation_is_found(backend: Backend) {
    let mut issuer = issuer().await;
    issuer.add_key("k1", true);
    let providers = issuer.providers();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let dave = unique("dave-ext");
    assert_eq!(sign_in(&server, &issuer.fresh("k1", &dave), None).await.0, 200);
    assert_eq!(issuer.jwks_fetches(), 1);

    // Eight requests at once, each naming a kid nobody published (signed with k1).
    let before = issuer.jwks_fetches();
    let bogus: Vec<String> = (0..8).map(|_| issuer.token("k1", &unique("kid"), issuer.claims(&dave, |_| {}))).collect();
    let answers = futures::future::join_all(bogus.iter().map(|token| sign_in(&server, token, None))).await;
    for answer in &answers {
        assert_refused(answer, "an unknown kid");
    }
    let fetched = issuer.jwks_fetches() - before;
    assert!((1..=2).contains(&fetched), "one fetch for the burst, not {fetched}");

    // A bogus kid, then at once the issuer rotates and a token names the new key: it
    // is found although the bogus one's fetch is less than a cooldown ago.
    assert_refused(&sign_in(&server, &issuer.token("k1", &unique("kid"), issuer.claims(&dave, |_| {})), None).await, "a bogus kid");
    issuer.add_key("k2", true);
    let (status, body) = sign_in(&server, &issuer.fresh("k2", &dave), None).await;
    assert_eq!(status, 200, "the rotated key is fetched after the cooldown: {body}");
    // And the same both at once.
    issuer.add_key("k3", true);
    let bogus = issuer.token("k1", &unique("kid"), issuer.claims(&dave, |_| {}));
    let real = issuer.fresh("k3", &dave);
    let (bogus, real) = tokio::join!(sign_in(&server, &bogus, None), sign_in(&server, &real, None));
    assert_refused(&bogus, "a bogus kid");
    assert_eq!(real.0, 200, "{}", real.1);
}

/// An issuer whose JWKS is over 64 KiB (streamed, without Content-Length), and one
/// whose JWKS redirects to another origin (which does publish the key): refused with
/// 401, and the other origin is never asked. Once they behave, their tokens sign in.
async fn hostile_issuer_answers_are_refused(backend: Backend) {
    let mut big = issuer().await;
    big.add_key("b1", true);
    big.served.lock().expect("lock").padding = 70 * 1024;
    let mut moved = issuer().await;
    moved.add_key("m1", true);
    let elsewhere = issuer().await;
    moved.publish_in("m1", &elsewhere);
    moved.served.lock().expect("lock").redirect = Some(format!("{}/jwks", elsewhere.url));
    let providers = json!([big.provider("big"), moved.provider("moved")]).to_string();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let erin = unique("erin-ext");

    assert_refused(&sign_in_with(&server, "big", &big.fresh("b1", &erin), None).await, "an oversized JWKS");
    assert_eq!(big.jwks_fetches(), 1);
    assert_refused(&sign_in_with(&server, "moved", &moved.fresh("m1", &erin), None).await, "a JWKS redirected off the issuer");
    assert_eq!((moved.jwks_fetches(), elsewhere.jwks_fetches()), (1, 0), "the redirect is not followed");

    // The same issuers, behaving: a small JWKS, no redirect.
    big.served.lock().expect("lock").padding = 60 * 1024;
    moved.served.lock().expect("lock").redirect = None;
    let (status, body) = sign_in_with(&server, "big", &big.fresh("b1", &erin), None).await;
    assert_eq!(status, 200, "a JWKS under 64 KiB: {body}");
    let (status, body) = sign_in_with(&server, "moved", &moved.fresh("m1", &erin), None).await;
    assert_eq!(status, 200, "{body}");
}

/// With TOTP on, an ID token is a first factor like any other: the MFA ticket, then
/// the code, then the session (`amr` `["idtoken", "otp"]`).
async fn totp_follows_an_id_token(backend: Backend) {
    crate::security::start_of_step().await;
    let mut issuer = issuer().await;
    issuer.add_key("k1", true);
    let providers = issuer.providers();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers)]).await;
    let username = unique("ext-totp");
    let totp = crate::security::account_with_mfa(&server, &username).await;
    let subject = format!("bob-{}", unique("ext"));
    // Linking needs a TOTP step-up now.
    let session = match server.api().sign_in(&username, crate::helpers::PASSWORD).await.expect("password") {
        client::SignInOutcome::MfaRequired { mfa_ticket } => mfa_ticket,
        other => panic!("expected mfa_required, got {other:?}"),
    };
    let body = json!({"mfa_ticket": session, "code": crate::helpers::totp_code(&totp, 0)});
    let (status, session) = server.call("POST", "/v1/sign/in/mfa", None, Some(body)).await;
    assert_eq!(status, 200, "{session}");
    let link = json!({"provider": "local", "id_token": issuer.fresh("k1", &subject)});
    let (status, body) = server.call("POST", "/v1/link/idtoken", session["access_token"].as_str(), Some(link)).await;
    assert_eq!(status, 204, "{body}");

    let (status, ticket) = sign_in(&server, &issuer.fresh("k1", &subject), None).await;
    assert_eq!((status, &ticket["mfa_required"]), (200, &json!(true)), "{ticket}");
    assert!(ticket.get("access_token").is_none());
    let body = json!({"mfa_ticket": ticket["mfa_ticket"], "code": crate::helpers::totp_code(&totp, 1)});
    let (status, session) = server.call("POST", "/v1/sign/in/mfa", None, Some(body)).await;
    assert_eq!(status, 200, "{session}");
    let claims = claims(session["access_token"].as_str().expect("token"));
    assert_eq!((&claims["amr"], &claims["acr"]), (&json!(["idtoken", "otp"]), &json!("aal2")));
}
