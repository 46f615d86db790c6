//! Security headers on every answer, and CORS only for the configured origins.
//!
//! - `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` everywhere;
//! - `Cache-Control: no-store` on the API (its answers carry tokens and account data);
//! - a Content-Security-Policy that loads nothing on JSON answers, and on `/docs` only
//!   what Swagger UI needs from this origin; `frame-ancestors 'none'` (and
//!   `X-Frame-Options: DENY`) everywhere, so no page can frame authd.
//! - CORS (`AUTHD_CORS_ORIGINS`): none unless configured, so a browser page of
//!   another origin cannot read any answer; with a list, only those origins may.

use poem::http::header::{self, HeaderValue};
use poem::middleware::Cors;
use poem::{Endpoint, IntoResponse, Request, Response};

const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";
/// The example pages (`/examples/…`): their own script, calls to this origin only.
const EXAMPLE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'";
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                           img-src 'self' data:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'";

pub async fn secure<E: Endpoint>(endpoint: E, request: Request) -> poem::Result<Response> {
    let docs = request.uri().path().starts_with("/docs");
    let example = request.uri().path().starts_with("/examples/");
    let api = request.uri().path().starts_with("/v1/");
    let mut response = match endpoint.call(request).await {
        Ok(response) => response.into_response(),
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let policy = if docs { DOCS_POLICY } else if example { EXAMPLE_POLICY } else { API_POLICY };
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(response)
}

/// CORS for `origins` (`AUTHD_CORS_ORIGINS`, comma-separated); `None` when none are
/// configured (poem's `Cors` with no origins would allow every origin).
pub fn cors(origins: &[String]) -> Option<Cors> {
    let origins: Vec<&str> = origins.iter().map(|origin| origin.trim()).filter(|origin| !origin.is_empty()).collect();
    (!origins.is_empty()).then(|| {
        Cors::new()
            .allow_origins(origins)
            .allow_methods(["GET", "POST", "PUT", "DELETE"])
            .allow_headers(["authorization", "content-type", "x-request-id"])
            .expose_headers(["retry-after"])
            .max_age(600)
    })
}
