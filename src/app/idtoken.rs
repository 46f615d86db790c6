//! Sign-in with an ID token of a configured OpenID provider (`AUTHD_OIDC_PROVIDERS`):
//! the signature against the issuer's keys (found through its discovery document,
//! cached, fetched again for an unknown `kid`), `iss`, `aud` (the configured client
//! id), `exp`, and `nonce` when given. The identity (issuer, subject) signs in to the
//! account linked to it (`domain::identity`), or a new one when sign-up is open.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration as StdDuration, Instant};

use chrono::Utc;
use cqrs_es::Aggregate;
use domain::identity::{IdentityCommand, IdentityLinksCommand};
use domain::user::UserCommand;
use domain::username::UsernameCommand;
use domain::{Identity, IdentityLinks, User, Username};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;
use webauthn_rs::prelude::Url;

use crate::store::Metadata;
use super::{rejected, App, AppError, Conflict, Denied, Tokens, Verified};

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
    providers: Vec<Provider>,
    http: reqwest::Client,
    /// Provider name → when its keys were fetched, and the keys.
    keys: Mutex<HashMap<String, (Instant, JwkSet)>>,
}

/// Fetch a provider's keys again for an unknown `kid` at most this often.
const REFETCH_AFTER: StdDuration = StdDuration::from_secs(1);

/// Only asymmetric signatures: an ID token is never checked with a shared secret.
const ALGORITHMS: [Algorithm; 7] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    nonce: Option<String>,
}

impl OidcProviders {
    /// `AUTHD_OIDC_PROVIDERS` (a JSON list of `{"name", "issuer", "client_id"}`), or why
    /// it cannot be used: an issuer must be https, or http on loopback (for tests).
    pub fn parse(json: Option<&str>) -> Result<Self, String> {
        let providers: Vec<Provider> = match json.map(str::trim).filter(|j| !j.is_empty()) {
            None => vec![],
            Some(json) => serde_json::from_str(json).map_err(|e| format!("AUTHD_OIDC_PROVIDERS: {e}"))?,
        };
        for provider in &providers {
            let url = Url::parse(&provider.issuer).map_err(|e| format!("AUTHD_OIDC_PROVIDERS: {}: {e}", provider.issuer))?;
            let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
                return Err(format!("AUTHD_OIDC_PROVIDERS: {} must be https (http only on loopback)", provider.issuer));
            }
        }
        let http = reqwest::Client::builder().timeout(StdDuration::from_secs(10)).build().map_err(|e| e.to_string())?;
        Ok(Self { providers, http, keys: Mutex::default() })
    }

    fn provider(&self, name: &str) -> Result<&Provider, AppError> {
        self.providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| AppError::Invalid(vec![("provider".into(), "is not a configured OpenID provider".into())]))
    }

    /// The provider's keys: from memory, unless `refetch` and the last fetch is old enough.
    async fn jwks(&self, provider: &Provider, refetch: bool) -> Result<JwkSet, AppError> {
        let cached = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&provider.name).cloned();
        if let Some((at, keys)) = &cached {
            if !refetch || at.elapsed() < REFETCH_AFTER {
                return Ok(keys.clone());
            }
        }
        let unavailable = |e: reqwest::Error| AppError::Internal(format!("OpenID provider {}: {e}", provider.name));
        let discovery = format!("{}/.well-known/openid-configuration", provider.issuer.trim_end_matches('/'));
        let discovery: Discovery = self.http.get(discovery).send().await.and_then(|r| r.error_for_status()).map_err(unavailable)?.json().await.map_err(unavailable)?;
        let keys: JwkSet = self.http.get(&discovery.jwks_uri).send().await.and_then(|r| r.error_for_status()).map_err(unavailable)?.json().await.map_err(unavailable)?;
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(provider.name.clone(), (Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// The (issuer, subject) of a valid ID token of `provider`.
    async fn verify(&self, provider: &str, id_token: &str, nonce: Option<&str>) -> Result<(String, String), AppError> {
        let provider = self.provider(provider)?;
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| AppError::InvalidCredentials)?;
        let kid = header.kid.ok_or(AppError::InvalidCredentials)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AppError::InvalidCredentials);
        }
        let mut keys = self.jwks(provider, false).await?;
        if keys.find(&kid).is_none() {
            keys = self.jwks(provider, true).await?;
        }
        let jwk = keys.find(&kid).ok_or(AppError::InvalidCredentials)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| AppError::InvalidCredentials)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&provider.issuer]);
        validation.set_audience(&[&provider.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation).map_err(|_| AppError::InvalidCredentials)?.claims;
        if nonce.is_some_and(|nonce| claims.nonce.as_deref() != Some(nonce)) {
            return Err(AppError::InvalidCredentials);
        }
        Ok((claims.iss, claims.sub))
    }
}

impl App {
    fn identity_id(&self, issuer: &str, subject: &str) -> String {
        self.keys.aggregate_id("identity", &format!("{issuer}\n{subject}"))
    }

    /// Sign-in with an ID token → a session (`amr` `["idtoken"]`) for the account
    /// linked to the identity; a new account when none is and sign-up is open (403
    /// `sign_up_closed` otherwise).
    pub async fn idtoken_sign_in(&self, provider: &str, id_token: &str, nonce: Option<&str>, meta: &Metadata) -> Result<Tokens, AppError> {
        let (issuer, subject) = self.oidc.verify(provider, id_token, nonce).await?;
        let identity_id = self.identity_id(&issuer, &subject);
        let at = Utc::now();
        if let Some(owner) = self.store.load::<Identity>(&identity_id).await?.owner() {
            if !self.store.load_current::<User>(&owner.to_string()).await?.is_registered() {
                // Held by a removed account (linked before removal released
                // identities): released now, and the identity is free to sign up.
                self.store
                    .execute::<Identity>(&identity_id, IdentityCommand::Release { profile_id: owner }, &(), meta)
                    .await
                    .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
                return self.idtoken_sign_in_as(provider, &identity_id, at, meta).await;
            }
            let mut unit = self.store.unit(&[], meta).await?;
            loop {
                let tokens = self.open_session_in(&mut unit, owner, vec!["idtoken".into()], at).await?;
                if unit.commit().await? {
                    return Ok(tokens);
                }
            }
        }
        self.idtoken_sign_in_as(provider, &identity_id, at, meta).await
    }

    /// A first sign-in with the free identity `identity_id`: a new account, when
    /// sign-up is open.
    async fn idtoken_sign_in_as(&self, provider: &str, identity_id: &str, at: chrono::DateTime<Utc>, meta: &Metadata) -> Result<Tokens, AppError> {
        let identity_id = identity_id.to_string();
        if !self.policy.open_signup {
            return Err(AppError::Forbidden(Denied::SignUpClosed));
        }
        // A new account: no password, a username derived from the identity.
        let profile_id = Uuid::new_v4();
        let username = format!("{provider}-{}", identity_id.chars().filter(char::is_ascii_alphanumeric).take(12).collect::<String>()).to_lowercase();
        let name_id = self.keys.aggregate_id("username", &username);
        let profile = profile_id.to_string();
        let mut unit = self.store.unit(&[(Identity::TYPE, identity_id.as_str()), (Username::TYPE, name_id.as_str())], meta).await?;
        loop {
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
            let tokens = self.open_session_in(&mut unit, profile_id, vec!["idtoken".into()], at).await?;
            if unit.commit().await? {
                return Ok(tokens);
            }
        }
    }

    /// Links an ID token's identity to the holder's account (elevated); 409
    /// `identity_linked` when another account has it.
    pub async fn idtoken_link(&self, who: &Verified, provider: &str, id_token: &str, nonce: Option<&str>, meta: &Metadata) -> Result<(), AppError> {
        self.require_elevation(who)?;
        let (issuer, subject) = self.oidc.verify(provider, id_token, nonce).await?;
        let (identity_id, profile) = (self.identity_id(&issuer, &subject), who.profile_id.to_string());
        let link = IdentityCommand::Link { profile_id: who.profile_id, provider: provider.to_string() };
        let mut unit = self.store.unit(&[(Identity::TYPE, identity_id.as_str()), (IdentityLinks::TYPE, profile.as_str())], meta).await?;
        loop {
            unit.decide::<Identity>(&identity_id, link.clone(), &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdentityLinked)))?;
            unit.decide::<IdentityLinks>(&profile, IdentityLinksCommand::Add { identity_id: identity_id.clone() }, &())
                .await
                .map_err(|e| rejected(e, |never| match never {}))?;
            if unit.commit().await? {
                return Ok(());
            }
        }
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
