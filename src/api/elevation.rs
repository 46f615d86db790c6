use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::methods::{Enabled, Password};
use super::mfa::{Done, TotpCode};
use super::sessions::SessionBody;
use super::sign_in::{SignInFinish, SignInStarted};
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct ElevatePasswordStart {
    /// OPAQUE KE1 (CredentialRequest, 96 bytes, base64url) for the session's own account.
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{128}$"))]
    pub credential_request: String,
}

#[derive(Default)]
pub struct ElevationApi;

#[OpenApi(tag = "Tag::Elevation")]
impl ElevationApi {
    /// Step-up by password, step 1: KE1 for the session's account → KE2 and a
    /// sign-in id. Counted like a sign-in attempt.
    #[oai(path = "/v1/elevate/password", method = "post", operation_id = "elevate_password")]
    async fn password(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<ElevatePasswordStart>,
    ) -> Result<Json<SignInStarted>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let (sign_in_id, credential_response) = app.elevate_password_start(&who, &body.0.credential_request, &context(request)).await?;
        Ok(Json(SignInStarted { sign_in_id, credential_response }))
    }

    /// Step-up by password, step 2: KE3 → the session elevated: a new session body
    /// (the refresh token rotates) whose access token carries a fresh `auth_time`.
    /// 401 `invalid_credentials` for a wrong password, a throttled address, or a
    /// sign-in id of another account.
    #[oai(path = "/v1/elevate/password/finish", method = "post", operation_id = "elevate_password_finish")]
    async fn password_finish(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<SignInFinish>,
    ) -> Result<Json<SessionBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let tokens = app
            .elevate_password_finish(&who, &body.0.sign_in_id, &body.0.credential_finalization, &context(request))
            .await?;
        Ok(Json(tokens.into()))
    }

    /// Step-up by TOTP: a current, unused code → the session elevated (as above).
    /// 422 for a wrong or used code (counted; 429 past the threshold, even for the
    /// right code), 409 `mfa_not_enabled`.
    #[oai(path = "/v1/elevate/totp", method = "post", operation_id = "elevate_totp")]
    async fn totp(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<TotpCode>,
    ) -> Result<Json<SessionBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let tokens = app.elevate_totp(&who, &body.0.code, &context(request)).await?;
        Ok(Json(tokens.into()))
    }

    /// Step-up by email, step 1, for an account with no password, TOTP or passkey
    /// (403 `other_proof_required` otherwise): a 6-digit code goes to its verified
    /// address (409 `no_verified_email` without one), one message a minute.
    #[oai(path = "/v1/elevate/email", method = "post", operation_id = "elevate_email")]
    async fn email(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.elevate_email_start(&who, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Step-up by email, step 2: the code → the session elevated (as above). 401
    /// `invalid_credentials` for a wrong, used or expired code (counted; 429 past the
    /// threshold).
    #[oai(path = "/v1/elevate/email/verify", method = "post", operation_id = "elevate_email_verify")]
    async fn email_verify(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<ElevateEmailVerify>,
    ) -> Result<Json<SessionBody>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let tokens = app.elevate_email_verify(&who, &body.0.otp, &context(request)).await?;
        Ok(Json(tokens.into()))
    }
}

#[derive(Object)]
pub struct ElevateEmailVerify {
    /// The 6-digit code from the mail.
    #[oai(validator(min_length = 1, max_length = 16))]
    pub otp: String,
}
