use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::methods::{Enabled, Password};
use super::{context, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct SignUpStart {
    /// 3 to 64 characters after normalisation (trimmed, NFKC, lower case).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    /// A `signup` bucket token; required while sign-up is invite-only.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub signup_token: Option<String>,
    /// OPAQUE RegistrationRequest (32 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub registration_request: String,
}

#[derive(Object)]
pub struct SignUpStarted {
    /// OPAQUE RegistrationResponse (64 bytes, base64url).
    pub registration_response: String,
}

#[derive(Object)]
pub struct SignUpFinish {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub signup_token: Option<String>,
    /// OPAQUE registration record (RegistrationUpload, 192 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{256}$"))]
    pub registration_record: String,
    /// Optional contact address.
    #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub email: Option<String>,
}

#[derive(Object)]
pub struct SignedUp {
    /// The new account's id (UUID).
    pub profile_id: String,
}

#[derive(Default)]
pub struct SignUpApi;

#[OpenApi(tag = "Tag::SignUp")]
impl SignUpApi {
    /// Sign up, step 1: send the OPAQUE registration request, get the response.
    /// Nothing is stored yet.
    #[oai(path = "/v1/sign/up", method = "post", operation_id = "sign_up")]
    async fn start(&self, _on: Enabled<Password>, app: Data<&Arc<App>>, body: JsonBody<SignUpStart>) -> Result<Json<SignUpStarted>, ApiError> {
        let body = body.0;
        let registration_response =
            app.sign_up_start(&body.username, body.signup_token.as_deref(), &body.registration_request).await?;
        Ok(Json(SignUpStarted { registration_response }))
    }

    /// Sign up, step 2: send the registration record; the account exists afterwards.
    /// 409 `username_taken` or `token_redeemed`, 422 `token_unknown`. A refused
    /// finish never consumes the token.
    #[oai(path = "/v1/sign/up/finish", method = "post", operation_id = "sign_up_finish")]
    async fn finish(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<SignUpFinish>,
    ) -> Result<Json<SignedUp>, ApiError> {
        let body = body.0;
        let profile_id = app
            .sign_up_finish(
                &body.username,
                body.signup_token.as_deref(),
                &body.registration_record,
                body.email,
                &context(request),
            )
            .await?;
        Ok(Json(SignedUp { profile_id: profile_id.to_string() }))
    }
}
