use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct TotpSecret {
    /// The secret, base32, for typing into an authenticator app.
    pub otp_secret: String,
    /// `otpauth://totp/…` URI.
    pub otpauth_uri: String,
    /// QR code of the URI: PNG, base64.
    pub qr_png: String,
}

#[derive(Object)]
pub struct TotpCode {
    /// The current 6-digit code.
    #[oai(validator(pattern = "^[0-9]{6}$"))]
    pub code: String,
}

#[derive(ApiResponse)]
pub enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

#[derive(Default)]
pub struct MfaApi;

#[OpenApi(tag = "Tag::Mfa")]
impl MfaApi {
    /// Generate a TOTP secret (pending until enabled with a code from it).
    #[oai(path = "/v1/mfa/totp/generate", method = "post", operation_id = "mfa_totp_generate")]
    async fn generate(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken) -> Result<Json<TotpSecret>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let enrollment = app.mfa_generate(&who, &context(request)).await?;
        Ok(Json(TotpSecret {
            otp_secret: enrollment.otp_secret,
            otpauth_uri: enrollment.otpauth_uri,
            qr_png: enrollment.qr_png,
        }))
    }

    /// Turn MFA on with a code of the generated secret.
    #[oai(path = "/v1/mfa/totp/enable", method = "post", operation_id = "mfa_totp_enable")]
    async fn enable(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<TotpCode>,
    ) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.mfa_enable(&who, &body.0.code, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Turn MFA off with a current code. Needs a recent proof of presence: 403
    /// `elevation_required` when the token's `auth_time` is older than
    /// `AUTHD_ELEVATION_MAX_AGE`.
    #[oai(path = "/v1/mfa/totp/disable", method = "post", operation_id = "mfa_totp_disable")]
    async fn disable(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<TotpCode>,
    ) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.mfa_disable(&who, &body.0.code, &context(request)).await?;
        Ok(Done::NoContent)
    }
}
