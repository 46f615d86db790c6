//! The one JSON error shape of every answer that is not a success, and the single
//! mapping from application errors to HTTP.

use poem::http::StatusCode;
use poem::Response;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::app::{AdminDenied, AppError};

/// One bad field of a request.
#[derive(Debug, Clone, Object)]
pub struct FieldError {
    /// The field, as a JSON path (`username`, `tokens[2]`).
    pub path: String,
    /// Why it was refused.
    pub error: String,
}

/// Every error answer: `{"status", "error", "message", "details"}`.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    pub status: u16,
    /// Machine-readable code (`invalid_request`, `invalid_credentials`, …).
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// Every bad field, for 422 answers; empty otherwise (always present, so a client
    /// generated from the spec parses every error).
    pub details: Vec<FieldError>,
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed request (not JSON, wrong content type).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or bad credentials or token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Not allowed.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Taken or already used.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is larger than `AUTHD_MAX_BODY_BYTES`.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// Well-formed but breaks a rule; `details` names every bad field.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Too many attempts or requests; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooMany(Json<ErrorBody>, #[oai(header = "Retry-After")] Option<u64>),
    /// The event store is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl ApiError {
    pub fn new(status: u16, error: &str, message: impl Into<String>) -> Self {
        Self::with_details(status, error, message, vec![])
    }

    pub fn with_details(status: u16, error: &str, message: impl Into<String>, details: Vec<FieldError>) -> Self {
        let body = Json(ErrorBody { status, error: error.to_string(), message: message.into(), details });
        match status {
            400 => Self::BadRequest(body),
            401 => Self::Unauthorized(body),
            403 => Self::Forbidden(body),
            404 => Self::NotFound(body),
            409 => Self::Conflict(body),
            413 => Self::TooLarge(body),
            422 => Self::Unprocessable(body),
            429 => Self::TooMany(body, None),
            _ => Self::Unavailable(body),
        }
    }

    /// 429 with a `Retry-After` header.
    pub fn too_many(error: &str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        let body = Json(ErrorBody { status: 429, error: error.to_string(), message: message.into(), details: vec![] });
        Self::TooMany(body, Some(retry_after_secs.max(1)))
    }

    pub fn invalid(details: Vec<FieldError>) -> Self {
        let names: Vec<&str> = details.iter().map(|d| d.path.as_str()).collect();
        let message = format!("invalid fields: {}", names.join(", "));
        Self::with_details(422, "invalid_request", message, details)
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        let message = error.to_string();
        match error {
            AppError::Invalid(fields) => ApiError::invalid(
                fields.into_iter().map(|(path, error)| FieldError { path, error }).collect(),
            ),
            AppError::InvalidCredentials => ApiError::new(401, "invalid_credentials", message),
            AppError::InvalidToken => ApiError::new(401, "invalid_token", message),
            AppError::RefreshTokenReused => ApiError::new(401, "refresh_token_reused", message),
            AppError::PasskeyCloned => ApiError::new(401, "passkey_cloned", message),
            AppError::TokenUnknown => ApiError::with_details(
                422,
                "token_unknown",
                message,
                vec![FieldError { path: "signup_token".into(), error: "is not a known token".into() }],
            ),
            AppError::Conflict(reason) => ApiError::new(409, reason.code(), message),
            AppError::NotFound(what) => ApiError::new(404, what.code(), message),
            AppError::Forbidden(why) => ApiError::new(403, why.code(), message),
            AppError::TooManyAttempts { retry_after_secs } => {
                ApiError::too_many("too_many_attempts", message, retry_after_secs)
            }
            AppError::Store(_) | AppError::ReadModels(_) | AppError::Log(_) | AppError::Internal(_) => {
                tracing::error!(detail = %message, "request failed: a dependency is down");
                ApiError::new(503, "unavailable", "the event store is unavailable; try again")
            }
            AppError::Delivery(_) => ApiError::new(503, "delivery_unavailable", message),
        }
    }
}

impl From<AdminDenied> for ApiError {
    fn from(denied: AdminDenied) -> Self {
        match denied {
            AdminDenied::NotConfigured => {
                ApiError::new(403, "admin_disabled", "admin routes are disabled: no AUTHD_ADMIN_TOKEN configured")
            }
            AdminDenied::Wrong => ApiError::new(401, "invalid_admin_token", "wrong admin token"),
            AdminDenied::Throttled { retry_after_secs } => {
                ApiError::too_many("too_many_attempts", "too many wrong admin tokens from this address", retry_after_secs)
            }
        }
    }
}

/// Rewrites any error answer that is not already JSON (poem's own: unknown route,
/// missing Authorization header, unsupported method) into the one error shape.
pub async fn json_errors(result: poem::Result<Response>) -> poem::Result<Response> {
    let response = match result {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let status = response.status();
    let is_json = response.content_type().is_some_and(|ct| ct.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return Ok(response);
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "error",
    };
    let text = response.into_body().into_string().await.unwrap_or_default();
    let reason = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        text => text.to_string(),
    };
    Ok(poem::Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(
            serde_json::json!({"status": status.as_u16(), "error": code, "message": reason, "details": []}).to_string(),
        ))
}
