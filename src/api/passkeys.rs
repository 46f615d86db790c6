//! Passkeys (WebAuthn): `options` are what `PublicKeyCredential.parseCreationOptionsFromJSON`
//! / `parseRequestOptionsFromJSON` take (their `publicKey` member), `credential` is
//! the browser's `credential.toJSON()`.

use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;

use super::methods::{Enabled, Passkey};
use super::mfa::Done;
use super::sessions::SessionBody;
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::{App, Ceremony, PasskeyInfo};

#[derive(Object)]
pub struct PasskeySignUpStart {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    /// Required while sign-up is invite-only.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub signup_token: Option<String>,
    /// Optional contact address (an activation code goes there).
    #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub email: Option<String>,
    /// A name for the passkey, shown in the passkey list.
    #[oai(validator(max_length = 64))]
    pub nickname: Option<String>,
}

/// A WebAuthn ceremony: answer it with `/verify` within 5 minutes, once.
#[derive(Object)]
pub struct CeremonyBody {
    pub challenge_id: String,
    /// `{"publicKey": …}`: pass `publicKey` to `PublicKeyCredential.parseCreationOptionsFromJSON`
    /// (registration) or `parseRequestOptionsFromJSON` (sign-in, step-up).
    pub options: Value,
}

impl From<Ceremony> for CeremonyBody {
    fn from(ceremony: Ceremony) -> Self {
        Self { challenge_id: ceremony.challenge_id.to_string(), options: ceremony.options }
    }
}

#[derive(Object)]
pub struct CeremonyAnswer {
    #[oai(validator(min_length = 1, max_length = 64))]
    pub challenge_id: String,
    /// The browser's `credential.toJSON()`.
    pub credential: Value,
}

#[derive(Object)]
pub struct PasskeySignInStart {
    /// Absent: a discoverable sign-in (the authenticator picks the account).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: Option<String>,
}

#[derive(Object)]
pub struct PasskeyAddStart {
    #[oai(validator(max_length = 64))]
    pub nickname: Option<String>,
}

#[derive(Object)]
pub struct PasskeyAdded {
    pub credential_id: String,
    #[oai(skip_serializing_if_is_none)]
    pub nickname: Option<String>,
}

#[derive(Object)]
pub struct PasskeyEntry {
    /// base64url, as the browser names it.
    pub credential_id: String,
    #[oai(skip_serializing_if_is_none)]
    pub nickname: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; absent until first used.
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<String>,
}

impl From<PasskeyInfo> for PasskeyEntry {
    fn from(info: PasskeyInfo) -> Self {
        Self {
            credential_id: info.credential_id,
            nickname: info.nickname,
            created_at: info.created_at.to_rfc3339(),
            last_used_at: info.last_used_at.map(|at| at.to_rfc3339()),
        }
    }
}

#[derive(Object)]
pub struct PasskeyList {
    pub credentials: Vec<PasskeyEntry>,
}

#[derive(Default)]
pub struct PasskeyApi;

#[OpenApi(tag = "Tag::Passkeys")]
impl PasskeyApi {
    /// Sign up with a passkey, step 1: the account will have no password. 409
    /// `username_taken`; 422 for a missing or unknown invitation.
    #[oai(path = "/v1/sign/up/webauthn", method = "post", operation_id = "sign_up_webauthn")]
    async fn sign_up(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<PasskeySignUpStart>) -> Result<Json<CeremonyBody>, ApiError> {
        let body = body.0;
        let ceremony = app
            .passkey_sign_up_start(&body.username, body.signup_token.as_deref(), body.email, body.nickname, &context(request))
            .await?;
        Ok(Json(ceremony.into()))
    }

    /// Sign up with a passkey, step 2: the new credential → the account and its first
    /// session. 401 `invalid_credentials` when the credential does not verify (the
    /// challenge is spent either way); 404 `challenge_not_found` when answered or expired.
    #[oai(path = "/v1/sign/up/webauthn/verify", method = "post", operation_id = "sign_up_webauthn_verify")]
    async fn sign_up_verify(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<CeremonyAnswer>) -> Result<Json<SessionBody>, ApiError> {
        let body = body.0;
        Ok(Json(app.passkey_sign_up_finish(&body.challenge_id, &body.credential, &context(request)).await?.into()))
    }

    /// Sign in with a passkey, step 1: by username, or discoverable (no username).
    /// An unknown username gets a ceremony like any other, which no answer passes.
    #[oai(path = "/v1/sign/in/webauthn", method = "post", operation_id = "sign_in_webauthn")]
    async fn sign_in(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<PasskeySignInStart>) -> Result<Json<CeremonyBody>, ApiError> {
        Ok(Json(app.passkey_sign_in_start(body.0.username.as_deref(), &context(request)).await?.into()))
    }

    /// Sign in with a passkey, step 2: the assertion → a session (`amr` `["webauthn"]`).
    /// 401 `invalid_credentials` (wrong origin, RP ID, challenge, signature, or
    /// passkey), 401 `passkey_cloned` when its signature counter went back.
    #[oai(path = "/v1/sign/in/webauthn/verify", method = "post", operation_id = "sign_in_webauthn_verify")]
    async fn sign_in_verify(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<CeremonyAnswer>) -> Result<Json<SessionBody>, ApiError> {
        let body = body.0;
        Ok(Json(app.passkey_sign_in_finish(&body.challenge_id, &body.credential, &context(request)).await?.into()))
    }

    /// Add a passkey to the Bearer token's account, step 1 (elevated: a new way to
    /// sign in needs a recent proof of presence, 403 `elevation_required`).
    #[oai(path = "/v1/user/webauthn/add", method = "post", operation_id = "user_webauthn_add")]
    async fn add(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<PasskeyAddStart>) -> Result<Json<CeremonyBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        Ok(Json(app.passkey_add_start(&who, body.0.nickname, &context(request)).await?.into()))
    }

    /// Add a passkey, step 2: the new credential, for a ceremony this session started.
    #[oai(path = "/v1/user/webauthn/verify", method = "post", operation_id = "user_webauthn_verify")]
    async fn add_verify(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<CeremonyAnswer>) -> Result<Json<PasskeyAdded>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let body = body.0;
        let (credential_id, nickname) = app.passkey_add_finish(&who, &body.challenge_id, &body.credential, &context(request)).await?;
        Ok(Json(PasskeyAdded { credential_id, nickname }))
    }

    /// The passkeys of the Bearer token's account.
    #[oai(path = "/v1/user/webauthn", method = "get", operation_id = "user_webauthn")]
    async fn list(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, auth: AccessToken) -> Result<Json<PasskeyList>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let credentials = app.passkeys(&who).await?.into_iter().map(PasskeyEntry::from).collect();
        Ok(Json(PasskeyList { credentials }))
    }

    /// Remove a passkey (elevated). 409 `last_sign_in_method` when nothing else
    /// could sign in; 404 `passkey_not_found`.
    #[oai(path = "/v1/user/webauthn/:credential_id", method = "delete", operation_id = "user_webauthn_remove")]
    async fn remove(
        &self, _on: Enabled<Passkey>,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        #[oai(validator(max_length = 1400))] credential_id: Path<String>,
    ) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.passkey_remove(&who, &credential_id.0, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Step-up with a passkey, step 1: a ceremony for the account's passkeys. 409
    /// `no_passkeys` when it has none.
    #[oai(path = "/v1/elevate/webauthn", method = "post", operation_id = "elevate_webauthn", tag = "Tag::Elevation")]
    async fn elevate(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken) -> Result<Json<CeremonyBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        Ok(Json(app.passkey_elevate_start(&who, &context(request)).await?.into()))
    }

    /// Step-up with a passkey, step 2: the assertion → the session elevated (a new
    /// session body with a fresh `auth_time`; the refresh token rotates).
    #[oai(path = "/v1/elevate/webauthn/verify", method = "post", operation_id = "elevate_webauthn_verify", tag = "Tag::Elevation")]
    async fn elevate_verify(&self, _on: Enabled<Passkey>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<CeremonyAnswer>) -> Result<Json<SessionBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let body = body.0;
        Ok(Json(app.passkey_elevate_finish(&who, &body.challenge_id, &body.credential, &context(request)).await?.into()))
    }
}
