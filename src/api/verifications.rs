//! The verification service, with the routes and response bodies of reference 004
//! (a numeric `status`, `data` for the verifier, its `error` texts) so its clients
//! keep working. Other error answers on these routes carry `message` and, for bad
//! fields, `details`, like every other error.

use std::sync::Arc;

use domain::verification_code::{Method, SymbolSet};
use poem::web::Data;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use super::error::{ErrorBody, FieldError};
use super::{context, AdminToken, ApiError, JsonBody, Tag};
use crate::app::{AdminDenied, App, AppError, CodeOutcome, CodeSpec, Initiation, Template, VerifierData};

#[derive(Debug, Clone, Copy, Enum)]
pub enum SymbolSetName {
    /// `0-9`
    #[oai(rename = "DIGITS")]
    Digits,
    /// `a-z`
    #[oai(rename = "alphas")]
    Lower,
    /// `A-Z`
    #[oai(rename = "ALPHAS")]
    Upper,
}

impl From<SymbolSetName> for SymbolSet {
    fn from(name: SymbolSetName) -> Self {
        match name {
            SymbolSetName::Digits => SymbolSet::Digits,
            SymbolSetName::Lower => SymbolSet::Lower,
            SymbolSetName::Upper => SymbolSet::Upper,
        }
    }
}

/// The message sent (email, phone). `{{{CODE}}}` and `{{{VERIFICATION_ID}}}` are
/// replaced before delivery.
#[derive(Object)]
pub struct TemplateBody {
    /// Email subject (default "Your verification code").
    #[oai(validator(min_length = 1, max_length = 256))]
    pub subject: Option<String>,
    #[oai(validator(min_length = 1, max_length = 10000))]
    pub body: String,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct GenerateCode {
    /// Characters in the code.
    #[oai(validator(minimum(value = "4"), maximum(value = "128")))]
    pub length: u32,
    /// The sets the characters are drawn from, uniformly over their union.
    #[oai(validator(min_items = 1, max_items = 3))]
    pub symbol_set: Vec<SymbolSetName>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct VerificationPolicy {
    /// Lifetime, `HH:MM:SS` (default `01:00:00`).
    #[oai(validator(pattern = r"^[0-9]{2}:[0-5][0-9]:[0-5][0-9]$"))]
    pub expired_on: Option<String>,
    /// Use this verification id instead of a new UUID.
    #[oai(validator(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub forced_verification_id: Option<String>,
    /// Use this code instead of a generated one (email, phone).
    #[oai(validator(min_length = 1, max_length = 128))]
    pub forced_code: Option<String>,
    /// Wrong codes accepted before the verifier refuses every code; at most the
    /// server's `AUTHD_VERIFICATION_MAX_ATTEMPTS` (a larger value is lowered to it).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub max_attempts: Option<u32>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct InitiateRequest {
    /// Who is verified: an email address (`email`), an E.164 phone number (`phone`),
    /// or the account name shown by authenticator apps (`google_auth`).
    #[oai(validator(min_length = 1, max_length = 320))]
    pub consumer: String,
    /// Issuer shown by authenticator apps (`google_auth`).
    #[oai(validator(max_length = 128))]
    pub issuer: Option<String>,
    /// Required for `email` and `phone`; ignored for `google_auth`.
    pub template: Option<TemplateBody>,
    /// Required for `email` and `phone`; ignored for `google_auth`.
    pub generate_code: Option<GenerateCode>,
    pub policy: Option<VerificationPolicy>,
    /// Any JSON object (at most 16 KiB), handed back untouched.
    pub payload: Option<Value>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ValidateRequest {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub code: String,
    /// `google_auth`: a right code also removes the consumer's secret (turns 2FA off).
    #[oai(default)]
    pub remove_secret: bool,
}

/// A new verifier.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct InitiatedBody {
    /// Always 200.
    pub status: u16,
    pub verification_id: String,
    pub consumer: String,
    /// Always 0.
    pub attempts: u32,
    /// Unix time the verifier expires.
    pub expired_on: i64,
    #[oai(skip_serializing_if_is_none)]
    pub payload: Option<Value>,
    /// `google_auth`, when the consumer has no confirmed secret yet: a new temporary
    /// secret for authenticator apps; it becomes permanent on its first right code.
    #[oai(skip_serializing_if_is_none)]
    pub totp_uri: Option<String>,
}

/// A verifier.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct VerifierBody {
    pub verification_id: String,
    pub consumer: String,
    /// Unix time the verifier expires.
    pub expired_on: i64,
    #[oai(skip_serializing_if_is_none)]
    pub payload: Option<Value>,
    /// Wrong codes so far.
    pub attempts: u32,
}

impl From<VerifierData> for VerifierBody {
    fn from(data: VerifierData) -> Self {
        Self {
            verification_id: data.verification_id,
            consumer: data.consumer,
            expired_on: data.expires_at,
            payload: Some(data.payload).filter(|payload| !payload.is_null()),
            attempts: data.attempts,
        }
    }
}

#[derive(Object)]
pub struct VerifierAnswer {
    /// Always 200.
    pub status: u16,
    pub data: VerifierBody,
}

#[derive(Object)]
pub struct StatusAnswer {
    /// Always 200.
    pub status: u16,
}

/// An error on these routes: `status` and `error` as in reference 004 (`Not found`,
/// `Invalid code` with `data`, `Method not supported`), or the usual `message` and
/// `details`.
#[derive(Debug, Object)]
pub struct VerificationErrorBody {
    pub status: u16,
    pub error: String,
    #[oai(skip_serializing_if_is_none)]
    pub message: Option<String>,
    /// Every bad field, for 422 answers about the request (absent otherwise).
    #[oai(default, skip_serializing_if_is_empty)]
    pub details: Vec<FieldError>,
    /// `Invalid code`: the verifier, with this attempt counted.
    #[oai(skip_serializing_if_is_none)]
    pub data: Option<VerifierBody>,
}

#[derive(Debug, ApiResponse)]
pub enum VerificationError {
    /// Malformed request (not JSON, wrong content type).
    #[oai(status = 400)]
    BadRequest(Json<VerificationErrorBody>),
    /// Missing or wrong admin token.
    #[oai(status = 401)]
    Unauthorized(Json<VerificationErrorBody>),
    /// Admin routes are disabled.
    #[oai(status = 403)]
    Forbidden(Json<VerificationErrorBody>),
    /// `Not found` (unknown, expired, deleted or already validated verifier) or
    /// `Method not supported`.
    #[oai(status = 404)]
    NotFound(Json<VerificationErrorBody>),
    /// Initiate: `policy.forcedVerificationId` is already in use.
    #[oai(status = 409)]
    Conflict(Json<VerificationErrorBody>),
    /// The request body is larger than `AUTHD_MAX_BODY_BYTES`.
    #[oai(status = 413)]
    TooLarge(Json<VerificationErrorBody>),
    /// Validate: `Invalid code`, with the verifier and the attempt counted. Any route:
    /// bad fields, each in `details`.
    #[oai(status = 422)]
    Unprocessable(Json<VerificationErrorBody>),
    /// Validate: too many wrong codes; the verifier refuses every code until it
    /// expires (`Retry-After`).
    #[oai(status = 429)]
    TooMany(Json<VerificationErrorBody>, #[oai(header = "Retry-After")] Option<u64>),
    /// The event store is unavailable (`unavailable`), or initiate could not send the
    /// message or has no way to (`delivery_unavailable`, as `phone` without
    /// `AUTHD_SMS_WEBHOOK_URL`).
    #[oai(status = 503)]
    Unavailable(Json<VerificationErrorBody>),
}

impl VerificationError {
    /// An answer in reference 004's shape: `{"status", "error"}`.
    fn reference(status: u16, error: &str, data: Option<VerifierBody>) -> Self {
        let body = Json(VerificationErrorBody {
            status,
            error: error.to_string(),
            message: None,
            details: vec![],
            data,
        });
        match status {
            404 => Self::NotFound(body),
            _ => Self::Unprocessable(body),
        }
    }
}

impl From<ApiError> for VerificationError {
    fn from(error: ApiError) -> Self {
        let body = |Json(ErrorBody { status, error, message, details }): Json<ErrorBody>| {
            Json(VerificationErrorBody { status, error, message: Some(message), details, data: None })
        };
        match error {
            ApiError::BadRequest(b) => Self::BadRequest(body(b)),
            ApiError::Unauthorized(b) => Self::Unauthorized(body(b)),
            ApiError::Forbidden(b) => Self::Forbidden(body(b)),
            ApiError::NotFound(b) => Self::NotFound(body(b)),
            ApiError::Conflict(b) => Self::Conflict(body(b)),
            ApiError::TooLarge(b) => Self::TooLarge(body(b)),
            ApiError::Unprocessable(b) => Self::Unprocessable(body(b)),
            ApiError::TooMany(b, retry_after) => Self::TooMany(body(b), retry_after),
            ApiError::Unavailable(b) => Self::Unavailable(body(b)),
        }
    }
}

impl From<AppError> for VerificationError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::NotFound(_) => Self::reference(404, "Not found", None),
            other => ApiError::from(other).into(),
        }
    }
}

impl From<AdminDenied> for VerificationError {
    fn from(denied: AdminDenied) -> Self {
        ApiError::from(denied).into()
    }
}

fn method(name: &str) -> Result<Method, VerificationError> {
    Method::parse(name).ok_or_else(|| VerificationError::reference(404, "Method not supported", None))
}

#[derive(Default)]
pub struct VerificationApi;

#[OpenApi(tag = "Tag::Verifications")]
impl VerificationApi {
    /// Start a verification: send a code (email, phone) or use the consumer's TOTP
    /// secret (google_auth; the first time, `totpUri` carries a new one).
    #[oai(path = "/v1/methods/:method/actions/initiate", method = "post", operation_id = "initiate_verification")]
    async fn initiate(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// `email`, `google_auth` or `phone`.
        method: Path<String>,
        body: JsonBody<InitiateRequest>,
    ) -> Result<Json<InitiatedBody>, VerificationError> {
        app.admin(&auth.0.token, &context(request))?;
        let method = self::method(&method.0)?;
        let body = body.0;
        let policy = body.policy;
        let initiation = Initiation {
            consumer: body.consumer,
            issuer: body.issuer,
            template: body.template.map(|t| Template { subject: t.subject, body: t.body }),
            generate_code: body.generate_code.map(|g| CodeSpec {
                length: g.length as usize,
                symbol_sets: g.symbol_set.into_iter().map(SymbolSet::from).collect(),
            }),
            expired_on: policy.as_ref().and_then(|p| p.expired_on.clone()),
            forced_verification_id: policy.as_ref().and_then(|p| p.forced_verification_id.clone()),
            forced_code: policy.as_ref().and_then(|p| p.forced_code.clone()),
            max_attempts: policy.as_ref().and_then(|p| p.max_attempts),
            payload: body.payload,
        };
        let initiated = app.initiate_verification(method, initiation, &context(request)).await?;
        Ok(Json(InitiatedBody {
            status: 200,
            verification_id: initiated.verification_id,
            consumer: initiated.consumer,
            attempts: 0,
            expired_on: initiated.expires_at.timestamp(),
            payload: Some(initiated.payload).filter(|payload| !payload.is_null()),
            totp_uri: initiated.totp_uri,
        }))
    }

    /// Check a code. A wrong one is counted (422 `Invalid code`); once the verifier's
    /// attempts are used up, every code is refused (429). A right code consumes it.
    #[oai(
        path = "/v1/methods/:method/verifiers/:id/actions/validate",
        method = "post",
        operation_id = "validate_verification"
    )]
    async fn validate(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// `email`, `google_auth` or `phone`.
        method: Path<String>,
        /// The verification id.
        id: Path<String>,
        body: JsonBody<ValidateRequest>,
    ) -> Result<Json<VerifierAnswer>, VerificationError> {
        app.admin(&auth.0.token, &context(request))?;
        let method = self::method(&method.0)?;
        let outcome =
            app.validate_verification(method, &id.0, &body.0.code, body.0.remove_secret, &context(request)).await?;
        match outcome {
            CodeOutcome::Valid(data) => Ok(Json(VerifierAnswer { status: 200, data: data.into() })),
            CodeOutcome::Invalid(data) => Err(VerificationError::reference(422, "Invalid code", Some(data.into()))),
        }
    }

    /// A live verifier (not validated, deleted or expired).
    #[oai(path = "/v1/methods/:method/verifiers/:id", method = "get", operation_id = "get_verification")]
    async fn get(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// `email`, `google_auth` or `phone`.
        method: Path<String>,
        /// The verification id.
        id: Path<String>,
    ) -> Result<Json<VerifierAnswer>, VerificationError> {
        app.admin(&auth.0.token, &context(request))?;
        let method = self::method(&method.0)?;
        let data = app.verifier(method, &id.0).await?;
        Ok(Json(VerifierAnswer { status: 200, data: data.into() }))
    }

    /// Invalidate a live verifier.
    #[oai(path = "/v1/methods/:method/verifiers/:id", method = "delete", operation_id = "delete_verification")]
    async fn delete(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// `email`, `google_auth` or `phone`.
        method: Path<String>,
        /// The verification id.
        id: Path<String>,
    ) -> Result<Json<StatusAnswer>, VerificationError> {
        app.admin(&auth.0.token, &context(request))?;
        let method = self::method(&method.0)?;
        app.delete_verification(method, &id.0, &context(request)).await?;
        Ok(Json(StatusAnswer { status: 200 }))
    }
}
