use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::sessions::SessionBody;
use super::{metadata, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct SignInStart {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    /// OPAQUE KE1 (CredentialRequest, 96 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{128}$"))]
    pub credential_request: String,
}

#[derive(Object)]
pub struct SignInStarted {
    /// Opaque handle of this attempt; send it back with KE3. Single-use, expires.
    pub sign_in_id: String,
    /// OPAQUE KE2 (CredentialResponse, 320 bytes, base64url). Unknown usernames get
    /// one of the same shape.
    pub credential_response: String,
}

#[derive(Object)]
pub struct SignInFinish {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub sign_in_id: String,
    /// OPAQUE KE3 (CredentialFinalization, 64 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{86}$"))]
    pub credential_finalization: String,
}

#[derive(Object)]
pub struct VerifyRequest {
    /// An access token.
    #[oai(validator(min_length = 1, max_length = 8192))]
    pub jwt: String,
}

#[derive(Object)]
pub struct VerifiedProfile {
    pub profile_id: String,
}

pub struct SignInApi;

#[OpenApi(tag = "Tag::SignIn")]
impl SignInApi {
    /// Sign in, step 1: send KE1, get KE2 and a sign-in id.
    #[oai(path = "/v1/sign/in", method = "post", operation_id = "sign_in")]
    async fn start(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<SignInStart>,
    ) -> Result<Json<SignInStarted>, ApiError> {
        let (sign_in_id, credential_response) =
            app.sign_in_start(&body.0.username, &body.0.credential_request, &metadata(request)).await?;
        Ok(Json(SignInStarted { sign_in_id, credential_response }))
    }

    /// Sign in, step 2: send KE3, get a session. 401 `invalid_credentials` for a
    /// wrong password and for an unknown, expired or already finished sign-in.
    #[oai(path = "/v1/sign/in/finish", method = "post", operation_id = "sign_in_finish")]
    async fn finish(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<SignInFinish>,
    ) -> Result<Json<SessionBody>, ApiError> {
        let tokens =
            app.sign_in_finish(&body.0.sign_in_id, &body.0.credential_finalization, &metadata(request)).await?;
        Ok(Json(tokens.into()))
    }

    /// Check an access token; 401 when invalid, expired or signed out.
    #[oai(path = "/v1/sign/in/verify", method = "post", operation_id = "sign_in_verify")]
    async fn verify(&self, app: Data<&Arc<App>>, body: JsonBody<VerifyRequest>) -> Result<Json<VerifiedProfile>, ApiError> {
        let verified = app.verify(&body.0.jwt).await?;
        Ok(Json(VerifiedProfile { profile_id: verified.profile_id.to_string() }))
    }
}
