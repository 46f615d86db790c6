use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::{App, Tokens};

/// A session: a short-lived access token and a single-use refresh token.
#[derive(Object)]
pub struct SessionBody {
    pub profile_id: String,
    /// EdDSA JWT; check it with `/.well-known/jwks.json`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Rotated on every use; a rotated one presented again revokes the session.
    pub refresh_token: String,
    pub refresh_expires_in: i64,
}

impl From<Tokens> for SessionBody {
    fn from(tokens: Tokens) -> Self {
        Self {
            profile_id: tokens.profile_id.to_string(),
            access_token: tokens.access_token,
            token_type: "Bearer".into(),
            expires_in: tokens.expires_in,
            refresh_token: tokens.refresh_token,
            refresh_expires_in: tokens.refresh_expires_in,
        }
    }
}

#[derive(Object)]
pub struct TokenInfo {
    pub profile_id: String,
    pub session_id: String,
    /// Unix time the access token expires.
    pub expires_at: i64,
}

#[derive(Object)]
pub struct RefreshRequest {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub refresh_token: String,
}

#[derive(Object)]
pub struct SignOutRequest {
    /// End every session of the account, not just this one.
    #[oai(default)]
    pub all: bool,
}

#[derive(Object)]
pub struct SignedOut {
    /// Sessions ended.
    pub revoked: u64,
}

#[derive(Object)]
pub struct Profile {
    pub profile_id: String,
    pub username: String,
    /// Absent when the account has none.
    #[oai(skip_serializing_if_is_none)]
    pub email: Option<String>,
    pub email_verified: bool,
    /// The verified phone number (E.164), when the account has one.
    #[oai(skip_serializing_if_is_none)]
    pub phone_number: Option<String>,
    pub mfa_enabled: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// A public key (RFC 8037 OKP).
#[derive(Object)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[oai(rename = "use")]
    pub key_use: String,
}

#[derive(Object)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

#[derive(Default)]
pub struct SessionApi;

#[OpenApi(tag = "Tag::Sessions")]
impl SessionApi {
    /// Check the Bearer access token: signature, expiry, and that its session is open.
    #[oai(path = "/v1/jwt/verify", method = "get", operation_id = "jwt_verify")]
    async fn verify(&self, app: Data<&Arc<App>>, auth: AccessToken) -> Result<Json<TokenInfo>, ApiError> {
        let verified = app.check_access_token(&auth.0.token).await?;
        Ok(Json(TokenInfo {
            profile_id: verified.profile_id.to_string(),
            session_id: verified.session_id.to_string(),
            expires_at: verified.expires_at,
        }))
    }

    /// Exchange a refresh token for a new session; the old refresh token stops working.
    #[oai(path = "/v1/token/refresh", method = "post", operation_id = "token_refresh")]
    async fn refresh(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<RefreshRequest>,
    ) -> Result<Json<SessionBody>, ApiError> {
        Ok(Json(app.refresh(&body.0.refresh_token, &context(request)).await?.into()))
    }

    /// End this session, or with `all` every session of the account.
    #[oai(path = "/v1/sign/out", method = "post", operation_id = "sign_out")]
    async fn sign_out(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<SignOutRequest>,
    ) -> Result<Json<SignedOut>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let revoked = app.sign_out(&who, body.0.all, &context(request)).await?;
        Ok(Json(SignedOut { revoked }))
    }

    /// The account of the Bearer access token.
    #[oai(path = "/v1/user", method = "get", operation_id = "user")]
    async fn user(&self, app: Data<&Arc<App>>, auth: AccessToken) -> Result<Json<Profile>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let Some(user) = app.user(who.profile_id).await? else {
            return Err(ApiError::new(503, "catching_up", "the account is not in the read model yet; retry"));
        };
        Ok(Json(Profile {
            profile_id: user.profile_id,
            username: user.username,
            email: user.email,
            email_verified: user.email_verified,
            phone_number: app.phone_number(who.profile_id).await?,
            mfa_enabled: user.mfa_enabled,
            created_at: user.created_at,
        }))
    }

    /// The public keys that sign access tokens (JWK Set).
    #[oai(path = "/.well-known/jwks.json", method = "get", operation_id = "jwks")]
    async fn jwks(&self, app: Data<&Arc<App>>) -> Json<JwkSet> {
        let jwt = &app.keys.jwt;
        Json(JwkSet {
            keys: vec![Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: jwt.x.clone(),
                kid: jwt.kid.clone(),
                alg: "EdDSA".into(),
                key_use: "sig".into(),
            }],
        })
    }
}
