//! ID-token sign-in against a local OpenID issuer started here (discovery document and
//! JWKS on a loopback port, Ed25519 keys from `ring`): valid, wrong audience, expired,
//! wrong signature, wrong nonce, a key that appears after a rotation; linking an
//! identity to an account; closed sign-up — black-box on both stores.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use crate::elevation::error_of;
use crate::helpers::{unique, Backend, Server};
use crate::security::claims;

both_stores!(id_tokens_sign_in_link_and_are_refused_when_wrong,);

const CLIENT_ID: &str = "authd-test-client";

pub(crate) struct Issuer {
    url: String,
    jwks: Arc<Mutex<Vec<Value>>>,
    /// kid → PKCS#8 of its key.
    keys: Vec<(String, Vec<u8>)>,
}

#[poem::handler]
fn discovery(poem::web::Data(url): poem::web::Data<&String>) -> poem::web::Json<Value> {
    poem::web::Json(json!({"issuer": url, "jwks_uri": format!("{url}/jwks"), "id_token_signing_alg_values_supported": ["EdDSA"]}))
}

#[poem::handler]
fn jwks(poem::web::Data(keys): poem::web::Data<&Arc<Mutex<Vec<Value>>>>) -> poem::web::Json<Value> {
    poem::web::Json(json!({"keys": keys.lock().expect("lock").clone()}))
}

pub(crate) async fn issuer() -> Issuer {
    use poem::listener::{Acceptor, Listener};
    use poem::EndpointExt;
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind issuer");
    let address = *acceptor.local_addr()[0].as_socket_addr().expect("a socket address");
    let url = format!("http://{address}");
    let keys = Arc::new(Mutex::new(Vec::new()));
    let app = poem::Route::new()
        .at("/.well-known/openid-configuration", poem::get(discovery))
        .at("/jwks", poem::get(jwks))
        .data(url.clone())
        .data(keys.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Issuer { url, jwks: keys, keys: Vec::new() }
}

impl Issuer {
    /// A new signing key; `publish`: in the JWKS (else only the issuer knows it).
    pub(crate) fn add_key(&mut self, kid: &str, publish: bool) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key").as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("pair");
        if publish {
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            self.jwks.lock().expect("lock").push(json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}));
        }
        self.keys.push((kid.to_string(), pkcs8));
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
        let mut claims = json!({"iss": self.url, "sub": sub, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": "n-1"});
        change(&mut claims);
        claims
    }

    pub(crate) fn providers(&self) -> String {
        json!([{"name": "local", "issuer": self.url, "client_id": CLIENT_ID}]).to_string()
    }
}

pub(crate) async fn sign_in(server: &Server, token: &str, nonce: Option<&str>) -> (u16, Value) {
    let body = json!({"provider": "local", "id_token": token, "nonce": nonce});
    server.call("POST", "/v1/sign/in/idtoken", None, Some(body)).await
}

async fn id_tokens_sign_in_link_and_are_refused_when_wrong(backend: Backend) {
    let mut issuer = issuer().await;
    issuer.add_key("k1", true);
    issuer.add_key("forger", false);
    let providers = issuer.providers();
    let server = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers), ("AUTHD_OPEN_SIGNUP", "true")]).await;
    let alice = format!("alice-{}", unique("ext"));

    // Valid: a new account (sign-up is open), then the same one again.
    let token = issuer.token("k1", "k1", issuer.claims(&alice, |_| {}));
    let (status, first) = sign_in(&server, &token, Some("n-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(claims(first["access_token"].as_str().expect("token"))["amr"], json!(["idtoken"]));
    let (status, again) = sign_in(&server, &token, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["profile_id"], first["profile_id"], "the identity signs in to its account");

    // Refused: wrong audience, expired, forged signature, wrong nonce, unknown provider.
    let cases = [
        ("wrong audience", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["aud"] = json!("someone-else")))),
        ("expired", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["exp"] = json!(chrono::Utc::now().timestamp() - 600)))),
        ("wrong issuer", issuer.token("k1", "k1", issuer.claims(&alice, |c| c["iss"] = json!("https://evil.test")))),
        ("forged signature", issuer.token("forger", "k1", issuer.claims(&alice, |_| {}))),
        ("not a token", "not.a.token".to_string()),
    ];
    for (why, token) in cases {
        let (status, body) = sign_in(&server, &token, None).await;
        assert_eq!((status, error_of(&body)), (401, Some("invalid_credentials")), "{why}: {body}");
    }
    let (status, _) = sign_in(&server, &token, Some("another nonce")).await;
    assert_eq!(status, 401, "wrong nonce");
    let (status, body) = server.call("POST", "/v1/sign/in/idtoken", None, Some(json!({"provider": "nope", "id_token": token}))).await;
    assert_eq!((status, crate::helpers::detail_paths(&body)), (422, vec!["provider".to_string()]), "{body}");

    // A key rotation: a kid the server has not seen is fetched again.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    issuer.add_key("k2", true);
    let (status, rotated) = sign_in(&server, &issuer.token("k2", "k2", issuer.claims(&alice, |_| {})), None).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["profile_id"], first["profile_id"]);

    // Linking: Bob (a fresh password sign-in is recent) links his external identity;
    // Alice's identity is taken.
    let bob = unique("bob-ext");
    let bob_profile = server.sign_up(&bob).await;
    let bobs = server.sign_in(&bob).await;
    let link = |token: &str| json!({"provider": "local", "id_token": token});
    let bobs_token = issuer.token("k1", "k1", issuer.claims(&bob, |_| {}));
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&bobs_token))).await;
    assert_eq!(status, 204, "{body}");
    let (status, session) = sign_in(&server, &bobs_token, None).await;
    assert_eq!((status, session["profile_id"].as_str()), (200, Some(bob_profile.as_str())), "{session}");
    let (status, body) = server.call("POST", "/v1/link/idtoken", Some(&bobs.access_token), Some(link(&token))).await;
    assert_eq!((status, error_of(&body)), (409, Some("identity_linked")), "{body}");
    let (status, _) = server.call("POST", "/v1/link/idtoken", None, Some(link(&token))).await;
    assert_eq!(status, 401);

    // Invite-only sign-up: an identity linked to nothing is refused.
    let closed = Server::start_with(backend, &[("AUTHD_OIDC_PROVIDERS", &providers)]).await;
    let (status, body) = sign_in(&closed, &issuer.token("k1", "k1", issuer.claims("stranger", |_| {})), None).await;
    assert_eq!((status, error_of(&body)), (403, Some("sign_up_closed")), "{body}");
}
