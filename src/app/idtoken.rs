//! Sign-in with an ID token of a configured OpenID provider (`AUTHD_OIDC_PROVIDERS`):
//! the signature against the issuer's keys (found through its discovery document,
//! cached, fetched again for an unknown `kid`: one fetch at a time per issuer, at most
//! one per [`REFETCH_AFTER`], answers of at most [`MAX_BODY`], redirects only within
//! the issuer's origin), `iss`, `aud` and `azp` (the configured client id), `exp`,
//! `nbf`, `iat`, and `nonce` when given. A token is used once (`domain::id_token`,
//! spent in the same unit as the session or link it buys). The identity (issuer,
//! subject) signs in to the account linked to it (`domain::identity`), or a new one
//! when sign-up is open.

use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::id_token::{IdTokenCommand, IdTokenError};
use domain::identity::{IdentityCommand, IdentityLinksCommand};
use domain::user::UserCommand;
use domain::username::UsernameCommand;
use domain::{IdToken, Identity, IdentityLinks, User, Username};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use crate::store::transact;
use crate::store::{RequestContext, Unit};
use super::assurance::{Factor, Proven};
use super::{rejected, App, AppError, Conflict, Denied, SignInResult, Verified};

/// One configured provider.
#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
}

/// The configured providers and the keys fetched from them.
#[derive(Default)]
pub struct OidcProviders {
    providers: Vec<(Provider, IssuerKeys)>,
}

/// Fetch a provider's keys again for an unknown `kid` at most this often.
const REFETCH_AFTER: StdDuration = StdDuration::from_secs(1);
/// How long one fetch (discovery document, then JWKS) may take.
const FETCH_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// The largest discovery document or JWKS read: a provider's answer is small, and a
/// larger one is refused rather than buffered.
const MAX_BODY: usize = 64 * 1024;
/// Redirects followed within the issuer's origin.
const MAX_REDIRECTS: usize = 5;
/// Clock skew tolerated for `exp`, `nbf` and `iat` (as for access tokens).
const LEEWAY_SECS: u64 = 5;

/// Only asymmetric signatures: an ID token is never checked with a shared secret.
const ALGORITHMS: [Algorithm; 7] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// `aud`: one client or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    exp: i64,
    aud: Audience,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

impl IdClaims {
    /// The rules `jsonwebtoken` does not check: not issued in the future (`iat`), and
    /// the authorized party (`azp`) is this client when named, and named when the
    /// token is meant for more than one audience (OpenID Connect Core 3.1.3.7).
    fn check(&self, client_id: &str, now: i64) -> Result<(), AppError> {
        if self.iat.is_some_and(|iat| iat > (now + LEEWAY_SECS as i64) as f64) {
            return Err(AppError::InvalidCredentials);
        }
        if self.azp.as_deref().is_some_and(|azp| azp != client_id) {
            return Err(AppError::InvalidCredentials);
        }
        let audiences = match &self.aud {
            Audience::One(aud) => usize::from(aud == client_id),
            Audience::Many(list) if !list.iter().any(|aud| aud == client_id) => 0,
            Audience::Many(list) => list.len(),
        };
        match audiences {
            0 => Err(AppError::InvalidCredentials),
            1 => Ok(()),
            _ if self.azp.as_deref() == Some(client_id) => Ok(()),
            _ => Err(AppError::InvalidCredentials),
        }
    }
}

/// What a valid ID token proves.
struct IdTokenClaims {
    issuer: String,
    subject: String,
    expires_at: DateTime<Utc>,
}

/// Whether `url` may be fetched: https, or http on loopback (for tests).
fn allowed(url: &Url) -> bool {
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    url.scheme() == "https" || (url.scheme() == "http" && loopback)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// The last fetch of a provider's keys: when it started, and what it found (the keys
/// before it, when it failed).
#[derive(Clone)]
struct Fetched {
    started: Instant,
    keys: Arc<JwkSet>,
}

/// One provider's keys, and the one fetch at a time that renews them.
struct IssuerKeys {
    /// Follows redirects only within the issuer's origin.
    http: reqwest::Client,
    /// Held across a fetch: one fetch at a time per provider, and whoever waited for
    /// it uses its result rather than fetching again.
    turn: tokio::sync::Mutex<()>,
    last: Mutex<Option<Fetched>>,
}

impl IssuerKeys {
    fn new(issuer: &Url) -> Result<Self, String> {
        let origin = issuer.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() < MAX_REDIRECTS && same_origin(attempt.url(), &origin) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).redirect(redirects).build().map_err(|e| e.to_string())?;
        Ok(Self { http, turn: tokio::sync::Mutex::new(()), last: Mutex::default() })
    }

    fn last(&self) -> Option<Fetched> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The key `kid` of `provider`: from memory, else from a fetch that starts after
    /// this call did — this caller's own (after the cooldown of the previous one, so a
    /// flood of unknown kids costs one fetch per [`REFETCH_AFTER`]) or one it waited
    /// for. An unknown kid therefore waits at most about a cooldown and a fetch, and a
    /// rotated key is found even right after a bogus kid was looked up.
    async fn key(&self, provider: &Provider, kid: &str) -> Result<Jwk, AppError> {
        let asked = Instant::now();
        if let Some(jwk) = self.last().and_then(|last| last.keys.find(kid).cloned()) {
            return Ok(jwk);
        }
        let fetched = async {
            let _turn = self.turn.lock().await;
            if let Some(last) = self.last() {
                if let Some(jwk) = last.keys.find(kid) {
                    return Ok(jwk.clone());
                }
                if last.started >= asked {
                    // A fetch that began after this request did has not found it.
                    return Err(AppError::InvalidCredentials);
                }
                tokio::time::sleep_until((last.started + REFETCH_AFTER).into()).await;
            }
            let started = Instant::now();
            let result = fetch_keys(&self.http, provider).await;
            let keys = match result {
                Ok(keys) => Arc::new(keys),
                Err(why) => {
                    tracing::warn!(provider = %provider.name, %why, "cannot fetch the OpenID provider's keys");
                    self.last().map_or_else(|| Arc::new(JwkSet { keys: Vec::new() }), |last| last.keys)
                }
            };
            *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Fetched { started, keys: keys.clone() });
            keys.find(kid).cloned().ok_or(AppError::InvalidCredentials)
        };
        tokio::time::timeout(REFETCH_AFTER + FETCH_TIMEOUT, fetched).await.unwrap_or(Err(AppError::InvalidCredentials))
    }
}

/// The provider's keys, through its discovery document.
async fn fetch_keys(http: &reqwest::Client, provider: &Provider) -> Result<JwkSet, String> {
    let discovery = format!("{}/.well-known/openid-configuration", provider.issuer.trim_end_matches('/'));
    let discovery: Discovery = get_json(http, &discovery).await?;
    if discovery.issuer.trim_end_matches('/') != provider.issuer.trim_end_matches('/') {
        return Err(format!("the discovery document names another issuer, {}", discovery.issuer));
    }
    let jwks_uri = Url::parse(&discovery.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
    if !allowed(&jwks_uri) {
        return Err("jwks_uri must be https".into());
    }
    get_json(http, jwks_uri.as_str()).await
}

/// A JSON answer of at most [`MAX_BODY`] bytes, read in chunks (whatever
/// `Content-Length` says); a redirect not followed is a failure.
async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, String> {
    let mut response = http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {} (a redirect off the issuer's origin is not followed)", response.status()));
    }
    if response.content_length().is_some_and(|length| length > MAX_BODY as u64) {
        return Err(format!("{url}: the answer is larger than {MAX_BODY} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("{url}: the answer is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

impl OidcProviders {
    /// `AUTHD_OIDC_PROVIDERS` (a JSON list of `{"name", "issuer", "client_id"}`), or why
    /// it cannot be used: an issuer must be https, or http on loopback (for tests).
    pub fn parse(json: Option<&str>) -> Result<Self, String> {
        let providers: Vec<Provider> = match json.map(str::trim).filter(|j| !j.is_empty()) {
            None => vec![],
            Some(json) => serde_json::from_str(json).map_err(|e| format!("AUTHD_OIDC_PROVIDERS: {e}"))?,
        };
        let mut configured = Vec::with_capacity(providers.len());
        for provider in providers {
            let url = Url::parse(&provider.issuer).map_err(|e| format!("AUTHD_OIDC_PROVIDERS: {}: {e}", provider.issuer))?;
            if !allowed(&url) {
                return Err(format!("AUTHD_OIDC_PROVIDERS: {} must be https (http only on loopback)", provider.issuer));
            }
            let keys = IssuerKeys::new(&url)?;
            configured.push((provider, keys));
        }
        Ok(Self { providers: configured })
    }

    fn provider(&self, name: &str) -> Result<&(Provider, IssuerKeys), AppError> {
        self.providers
            .iter()
            .find(|(p, _)| p.name == name)
            .ok_or_else(|| AppError::Invalid(vec![("provider".into(), "is not a configured OpenID provider".into())]))
    }

    /// What a valid ID token of `provider` proves. Every token that is not is refused
    /// alike (401 `invalid_credentials`), including when the provider's keys cannot be
    /// fetched.
    async fn verify(&self, provider: &str, id_token: &str, nonce: Option<&str>) -> Result<IdTokenClaims, AppError> {
        let (provider, keys) = self.provider(provider)?;
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| AppError::InvalidCredentials)?;
        let kid = header.kid.ok_or(AppError::InvalidCredentials)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AppError::InvalidCredentials);
        }
        let jwk = keys.key(provider, &kid).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| AppError::InvalidCredentials)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&provider.issuer]);
        validation.set_audience(&[&provider.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation).map_err(|_| AppError::InvalidCredentials)?.claims;
        claims.check(&provider.client_id, Utc::now().timestamp())?;
        if nonce.is_some_and(|nonce| claims.nonce.as_deref() != Some(nonce)) {
            return Err(AppError::InvalidCredentials);
        }
        let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(AppError::InvalidCredentials)?;
        Ok(IdTokenClaims { issuer: claims.iss, subject: claims.sub, expires_at })
    }
}

impl App {
    fn identity_id(&self, issuer: &str, subject: &str) -> String {
        self.keys.aggregate_id("identity", &format!("{issuer}\n{subject}"))
    }

    /// The id of an ID token's single-use record: a keyed hash, never the token.
    fn id_token_id(&self, id_token: &str) -> String {
        self.keys.aggregate_id("id_token", id_token)
    }

    /// Spends the ID token in `unit` (which holds its turn) for `profile_id`: a token
    /// used before, here or on another replica, refuses the whole unit (401).
    async fn use_id_token(&self, unit: &mut Unit<'_>, token_id: &str, profile_id: Uuid, claims: &IdTokenClaims, at: DateTime<Utc>) -> Result<(), AppError> {
        let spend = IdTokenCommand::Use { profile_id, expires_at: claims.expires_at, at };
        unit.decide::<IdToken>(token_id, spend, &()).await.map_err(|e| {
            rejected(e, |e| match e {
                IdTokenError::AlreadyUsed | IdTokenError::Expired => AppError::InvalidCredentials,
            })
        })?;
        Ok(())
    }

    /// Sign-in with an ID token → a session (`amr` `["idtoken"]`) for the account
    /// linked to the identity; a new account when none is and sign-up is open (403
    /// `sign_up_closed` otherwise). The token signs in once: it is spent in the
    /// session's own unit, so two concurrent uses cannot both succeed.
    pub async fn idtoken_sign_in(&self, provider: &str, id_token: &str, nonce: Option<&str>, meta: &RequestContext) -> Result<SignInResult, AppError> {
        let claims = self.oidc.verify(provider, id_token, nonce).await?;
        let identity_id = self.identity_id(&claims.issuer, &claims.subject);
        let token_id = self.id_token_id(id_token);
        let at = Utc::now();
        if let Some(owner) = self.store.load::<Identity>(&identity_id).await?.owner() {
            if !self.store.load_current::<User>(&owner.to_string()).await?.is_registered() {
                // Held by a removed account (linked before removal released
                // identities): released now, and the identity is free to sign up.
                self.store
                    .execute::<Identity>(&identity_id, IdentityCommand::Release { profile_id: owner }, &(), meta)
                    .await
                    .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
                return self.idtoken_sign_up(provider, &identity_id, &token_id, &claims, at, meta).await;
            }
            return transact!(self.store, &[(IdToken::TYPE, token_id.as_str())], meta, |unit| {
                    self.use_id_token(unit, &token_id, owner, &claims, at).await?;
                    self.admit_in(unit, Proven::by(Factor::IdToken, owner, at)).await
                });
        }
        self.idtoken_sign_up(provider, &identity_id, &token_id, &claims, at, meta).await
    }

    /// A first sign-in with the free identity `identity_id` (its token `token_id`): a
    /// new account, when sign-up is open.
    async fn idtoken_sign_up(
        &self,
        provider: &str,
        identity_id: &str,
        token_id: &str,
        claims: &IdTokenClaims,
        at: DateTime<Utc>,
        meta: &RequestContext,
    ) -> Result<SignInResult, AppError> {
        let identity_id = identity_id.to_string();
        if !self.policy.open_signup {
            return Err(AppError::Forbidden(Denied::SignUpClosed));
        }
        // A new account: no password, a username derived from the identity.
        let profile_id = Uuid::new_v4();
        let username = format!("{provider}-{}", identity_id.chars().filter(char::is_ascii_alphanumeric).take(12).collect::<String>()).to_lowercase();
        let name_id = self.keys.aggregate_id("username", &username);
        let profile = profile_id.to_string();
        let locked = [(IdToken::TYPE, token_id), (Identity::TYPE, identity_id.as_str()), (Username::TYPE, name_id.as_str())];
        transact!(self.store, &locked, meta, |unit| {
            self.use_id_token(unit, token_id, profile_id, claims, at).await?;
            unit.decide::<Identity>(&identity_id, IdentityCommand::Link { profile_id, provider: provider.to_string() }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdentityLinked)))?;
            unit.decide_new::<IdentityLinks>(&profile, IdentityLinksCommand::Add { identity_id: identity_id.clone() }, &())
                .await
                .map_err(|e| rejected(e, |never| match never {}))?;
            unit.decide::<Username>(&name_id, UsernameCommand::Claim { profile_id }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::UsernameTaken)))?;
            unit.decide_new::<User>(&profile, UserCommand::RegisterWithoutPassword { username: username.clone(), email: None, at }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("account"))))?;
            let result = self.admit_in(unit, Proven::by(Factor::IdToken, profile_id, at)).await?;
            Ok(result)
        })
    }

    /// Links an ID token's identity to the holder's account (elevated); 409
    /// `identity_linked` when another account has it.
    pub async fn idtoken_link(&self, who: &Verified, provider: &str, id_token: &str, nonce: Option<&str>, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let claims = self.oidc.verify(provider, id_token, nonce).await?;
        let (identity_id, profile) = (self.identity_id(&claims.issuer, &claims.subject), who.profile_id.to_string());
        let token_id = self.id_token_id(id_token);
        let at = Utc::now();
        let link = IdentityCommand::Link { profile_id: who.profile_id, provider: provider.to_string() };
        let locked = [(IdToken::TYPE, token_id.as_str()), (Identity::TYPE, identity_id.as_str()), (IdentityLinks::TYPE, profile.as_str())];
        transact!(self.store, &locked, meta, |unit| {
            self.use_id_token(unit, &token_id, who.profile_id, &claims, at).await?;
            unit.decide::<Identity>(&identity_id, link.clone(), &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdentityLinked)))?;
            unit.decide::<IdentityLinks>(&profile, IdentityLinksCommand::Add { identity_id: identity_id.clone() }, &())
                .await
                .map_err(|e| rejected(e, |never| match never {}))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::OidcProviders;

    #[test]
    fn issuers_are_https_or_loopback() {
        let list = |issuer: &str| format!(r#"[{{"name": "p", "issuer": "{issuer}", "client_id": "c"}}]"#);
        for ok in ["https://accounts.example.com", "http://127.0.0.1:9000", "http://localhost:9000"] {
            assert!(OidcProviders::parse(Some(&list(ok))).is_ok(), "{ok}");
        }
        for bad in ["http://accounts.example.com", "ftp://127.0.0.1", "not a url"] {
            assert!(OidcProviders::parse(Some(&list(bad))).is_err(), "{bad}");
        }
        assert!(OidcProviders::parse(Some("{not json")).is_err());
        assert!(OidcProviders::parse(None).is_ok_and(|p| p.providers.is_empty()));
    }
}
