use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::mfa::Done;
use super::sign_up::SignUpStarted;
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct Activate {
    /// From the activation email.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub verification_id: String,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub code: String,
}

#[derive(Object)]
pub struct Forgot {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
}

#[derive(Object)]
pub struct ResetStart {
    /// From the reset email.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub verification_id: String,
    /// The emailed code (checked here, spent by `reset/finish`).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub code: String,
    /// OPAQUE RegistrationRequest for the new password (32 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub registration_request: String,
}

#[derive(Object)]
pub struct ResetFinish {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub verification_id: String,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub code: String,
    /// OPAQUE registration record for the new password (192 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{256}$"))]
    pub registration_record: String,
}

#[derive(Object)]
pub struct RecoverStart {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    /// A `profile` bucket token issued for this account.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub recovery_token: String,
    /// OPAQUE RegistrationRequest for the new password (32 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub registration_request: String,
}

#[derive(Object)]
pub struct RecoverFinish {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub recovery_token: String,
    /// OPAQUE registration record for the new password (192 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{256}$"))]
    pub registration_record: String,
}

#[derive(Default)]
pub struct AccountApi;

#[OpenApi(tag = "Tag::Account")]
impl AccountApi {
    /// Activate: the code from the activation email (sent when sign-up gave an
    /// email) verifies the address. 422 for a wrong code (attempts are counted),
    /// 404 unknown or expired, 429 when attempts are exhausted.
    #[oai(path = "/v1/account/activate", method = "post", operation_id = "account_activate")]
    async fn activate(&self, app: Data<&Arc<App>>, request: &Request, body: JsonBody<Activate>) -> Result<Done, ApiError> {
        app.activate(&body.0.verification_id, &body.0.code, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Forgotten password: always 204, whether or not the account exists; when it
    /// does and its email is verified, a reset code is emailed there.
    #[oai(path = "/v1/account/forgot", method = "post", operation_id = "account_forgot")]
    async fn forgot(&self, app: Data<&Arc<App>>, request: &Request, body: JsonBody<Forgot>) -> Result<Done, ApiError> {
        app.forgot(&body.0.username, &context(request));
        Ok(Done::NoContent)
    }

    /// Reset, step 1: a new password's OPAQUE registration request for the account
    /// of an emailed reset code. Nothing is stored yet.
    #[oai(path = "/v1/account/reset", method = "post", operation_id = "account_reset")]
    async fn reset(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<ResetStart>,
    ) -> Result<Json<SignUpStarted>, ApiError> {
        let body = body.0;
        let registration_response =
            app.reset_start(&body.verification_id, &body.code, &body.registration_request, &context(request)).await?;
        Ok(Json(SignUpStarted { registration_response }))
    }

    /// Reset, step 2: the code is checked and spent, the new password replaces the
    /// old one, and every session of the account ends.
    #[oai(path = "/v1/account/reset/finish", method = "post", operation_id = "account_reset_finish")]
    async fn reset_finish(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<ResetFinish>,
    ) -> Result<Done, ApiError> {
        let body = body.0;
        app.reset_finish(&body.verification_id, &body.code, &body.registration_record, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Recovery, step 1: a new password registered with a recovery token an admin
    /// issued for this account (`profile` bucket). 422 when the token is not valid
    /// for the account (whether or not the account exists).
    #[oai(path = "/v1/account/recover", method = "post", operation_id = "account_recover")]
    async fn recover(&self, app: Data<&Arc<App>>, body: JsonBody<RecoverStart>) -> Result<Json<SignUpStarted>, ApiError> {
        let body = body.0;
        let registration_response =
            app.recover_start(&body.username, &body.recovery_token, &body.registration_request).await?;
        Ok(Json(SignUpStarted { registration_response }))
    }

    /// Recovery, step 2: the token is redeemed (once), the new password replaces the
    /// old one, and every session of the account ends.
    #[oai(path = "/v1/account/recover/finish", method = "post", operation_id = "account_recover_finish")]
    async fn recover_finish(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<RecoverFinish>,
    ) -> Result<Done, ApiError> {
        let body = body.0;
        app.recover_finish(&body.username, &body.recovery_token, &body.registration_record, &context(request))
            .await?;
        Ok(Done::NoContent)
    }

    /// Remove the account of the Bearer token: every session ends and the username
    /// is free again. Needs a recent proof of presence: 403 `elevation_required`
    /// when the token's `auth_time` is older than `AUTHD_ELEVATION_MAX_AGE`.
    #[oai(path = "/v1/account/remove", method = "post", operation_id = "account_remove")]
    async fn remove(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.remove_account(&who, &context(request)).await?;
        Ok(Done::NoContent)
    }
}
