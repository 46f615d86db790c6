//! The HTTP API, one module per resource. A handler parses (via [`JsonBody`] and
//! the types in its module), calls one use case of [`App`], and maps the result.
//! The OpenAPI spec is generated from these types: `authd openapi` prints it.

mod account;
mod body;
mod body_limit;
mod buckets;
mod client_address;
mod elevation;
mod error;
mod events;
mod headers;
mod health;
mod methods;
mod mfa;
mod passkeys;
mod pats;
mod private_sign_in;
mod rate_limit;
mod self_service;
mod sessions;
mod sign_in;
mod sign_up;
mod verifications;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Request, Route};
use poem_openapi::auth::Bearer;
use poem_openapi::{OpenApiService, SecurityScheme, Tags};

pub use body::JsonBody;
pub use body_limit::BodyLimit;
pub use client_address::{parse_proxy, ClientAddress, TrustedProxies};
pub use error::ApiError;
pub use methods::Methods;
pub use rate_limit::{RateLimitSetting, RateLimits};

use crate::app::App;
use crate::app::RequestContext;

#[derive(Tags)]
pub enum Tag {
    /// Single-use invitation and recovery tokens (admin).
    Buckets,
    /// OPAQUE registration.
    SignUp,
    /// OPAQUE login.
    SignIn,
    /// OPAQUE login inside an ephemeral X25519 key agreement (reference 001): the
    /// username travels only encrypted, the session comes back encrypted.
    PrivateSignIn,
    /// Access tokens, refresh, sign-out, the JWKS.
    Sessions,
    /// TOTP second factor.
    Mfa,
    /// Step-up: a fresh proof of presence on the current session, which sensitive
    /// routes (MFA disable, account removal) need within `AUTHD_ELEVATION_MAX_AGE`.
    Elevation,
    /// Account activation, password recovery, removal.
    Account,
    /// A signed-in holder's own account: sessions, password change.
    SelfService,
    /// Passkeys (WebAuthn): sign-up without a password, sign-in by username or
    /// discoverable, adding, listing and removing them.
    Passkeys,
    /// Personal access tokens: long-lived secrets that sign machines in.
    Pats,
    /// Liveness and readiness.
    Health,
    /// Verification codes by email, phone or authenticator app (admin; reference 004).
    Verifications,
    /// The event log as audit envelopes (admin).
    Audit,
}

/// An access token issued by this server.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", rename = "access_token")]
pub struct AccessToken(pub Bearer);

/// The admin secret configured as `AUTHD_ADMIN_TOKEN`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "admin_token")]
pub struct AdminToken(pub Bearer);

/// What every event records about the request that caused it.
pub fn context(request: &Request) -> RequestContext {
    let header = |name: &str, max: usize| {
        request.header(name).map(|value| value.chars().take(max).collect::<String>())
    };
    RequestContext {
        request_id: Some(header("x-request-id", 128).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())),
        client: ClientAddress::of(request),
        user_agent: header("user-agent", 256),
    }
}

pub type Apis = (
    health::HealthApi,
    buckets::BucketApi,
    sign_up::SignUpApi,
    sign_in::SignInApi,
    private_sign_in::PrivateSignInApi,
    sessions::SessionApi,
    mfa::MfaApi,
    elevation::ElevationApi,
    account::AccountApi,
    // A tuple has `Default` up to 12 members: the newer APIs nest.
    (self_service::SelfServiceApi, passkeys::PasskeyApi, pats::PatApi, sign_in::PasswordlessApi),
    verifications::VerificationApi,
    events::EventsApi,
);

/// The API description; needs no server, so `authd openapi` can print it (with every
/// sign-in method on).
pub fn service(methods: &Methods) -> OpenApiService<Apis, ()> {
    OpenApiService::new(Apis::default(), "authd", env!("CARGO_PKG_VERSION")).description(format!(
        "Event-sourced, password-blind authentication: OPAQUE (RFC 9807) sign-up and sign-in, \
         EdDSA access tokens verifiable with the JWKS, rotating refresh tokens. \
         Protocol messages are base64url without padding. Every error is \
         {{\"status\", \"error\", \"message\", \"details\"}}. {}",
        methods.describe()
    ))
}

/// The spec as YAML, exactly as committed in `openapi/openapi.yaml`.
pub fn spec_yaml() -> String {
    service(&Methods::default()).spec_yaml()
}

/// A page of `examples/`, compiled in.
fn example(body: &'static str, content_type: &'static str) -> impl Endpoint {
    poem::endpoint::make_sync(move |_| poem::Response::builder().content_type(content_type).body(body))
}

/// Every route: the API, its spec and the interactive UI at `/docs`.
pub fn routes(app: Arc<App>, limits: RateLimits, proxies: TrustedProxies, body_limit: BodyLimit, cors_origins: &[String], methods: Methods) -> impl Endpoint {
    let api = service(&methods);
    let ui = api.swagger_ui();
    let yaml = api.spec_endpoint_yaml();
    let json = api.spec_endpoint();
    let cors = headers::cors(cors_origins);
    Route::new()
        .nest("/", api)
        .nest("/docs", ui)
        .at("/openapi.yaml", yaml)
        .at("/openapi.json", json)
        .at("/examples/passkey.html", poem::get(example(include_str!("../../examples/passkey.html"), "text/html; charset=utf-8")))
        .at("/examples/passkey.js", poem::get(example(include_str!("../../examples/passkey.js"), "text/javascript; charset=utf-8")))
        .data(app)
        .data(methods.clone())
        .around(move |endpoint, request| {
            let limits = limits.clone();
            async move { limits.call(endpoint, request).await }
        })
        .around(move |endpoint, request| {
            let proxies = proxies.clone();
            async move { proxies.call(endpoint, request).await }
        })
        .around(move |endpoint, request| async move { body_limit.call(endpoint, request).await })
        .after(error::json_errors)
        .with_if(cors.is_some(), cors.unwrap_or_else(poem::middleware::Cors::new))
        .around(headers::secure)
}
