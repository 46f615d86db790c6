//! The application layer: each public method is one use case, run as commands on
//! the aggregates of `domain` (which hold the rules) or as one read-model query.
//! Handlers in `api/` parse, call one of these, and map the result.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Duration;
use domain::services::{LoginVerifier, TotpCheck};
use domain::throttle::ThrottlePolicy;
use jsonwebtoken::{Algorithm, Validation};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::keys::Keys;
use crate::crypto::opaque::OpaqueVerifier;
use crate::store::Store;

mod account;
mod admin;
mod anonymous;
mod assurance;
mod audit;
mod error;
mod idtoken;
mod buckets;
mod elevation;
mod email_owners;
mod mfa;
mod passkeys;
mod passwordless;
mod pats;
mod private_sign_in;
mod sessions;
mod sign_in;
mod sign_up;
mod verifications;
pub(crate) use error::rejected;
/// Types the API layer passes through: request metadata, the log filter, the audit
/// envelope and the relay's state.
pub use crate::relay::envelope::Envelope as AuditEnvelope;
pub use crate::relay::{State as RelayState, Status as RelayStatus};
pub use crate::store::log::Filter as EventFilter;
pub use crate::store::RequestContext;
pub use admin::{AdminDenied, MIN_ADMIN_TOKEN_LEN};
pub use error::{AppError, Conflict, Denied, Fields, Missing, Undeliverable};
pub use passkeys::{relying_party, Ceremony, PasskeyInfo};
pub use anonymous::Deanonymization;
pub use assurance::Presence;
pub use idtoken::OidcProviders;
pub use passwordless::Channel;
pub use sessions::SessionInfo;
pub use verifications::{CodeOutcome, CodeSpec, Initiation, Template, VerifierData};



/// What a sign-in with the right password ends in.
#[derive(Debug, Clone)]
pub enum SignInResult {
    Session(Tokens),
    /// The account has MFA on: a code must follow with this single-use ticket.
    MfaRequired { mfa_ticket: String },
}

/// A freshly generated TOTP secret, shown once.
#[derive(Debug, Clone)]
pub struct TotpEnrollment {
    /// Base32, for manual entry.
    pub otp_secret: String,
    pub otpauth_uri: String,
    /// QR code of the URI, PNG as base64.
    pub qr_png: String,
}

/// A new session as the API returns it: issued only under the assurance rules
/// (`assurance.rs`, the only maker of its seal).
#[derive(Debug, Clone)]
pub struct Tokens {
    pub profile_id: Uuid,
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
    #[allow(dead_code)]
    seal: assurance::Seal,
}

/// Access token claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub amr: Vec<String>,
    /// `aal1` or `aal2` (assurance.rs).
    #[serde(default)]
    pub acr: String,
    /// When the holder last proved presence (0 in tokens from before step-up).
    #[serde(default)]
    pub auth_time: i64,
}

/// An access token that checked out: signature, expiry, and a live session.
#[derive(Debug, Clone)]
pub struct Verified {
    pub profile_id: Uuid,
    pub session_id: Uuid,
    pub expires_at: i64,
    /// When the holder last proved presence on this session (its `auth_time`).
    pub auth_time: i64,
    /// What that proof of presence is worth (step-up, assurance.rs).
    pub presence: Presence,
    /// An anonymous session (`amr` `["anon"]`): no elevated route, ever.
    pub anonymous: bool,
    /// A personal access token's session (`amr` `["pat"]`): never elevated.
    pub machine: bool,
}

/// Settings the use cases need.
#[derive(Debug, Clone)]
pub struct Policy {
    pub open_signup: bool,
    pub admin_token: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A session's absolute lifetime, which refreshing cannot extend.
    pub session_max_age: Duration,
    /// How long a proof of presence counts as recent (step-up, `auth_time`).
    pub elevation_max_age: Duration,
    pub sign_in_ttl: Duration,
    /// How failed proofs are throttled (per account and client address).
    pub throttle: ThrottlePolicy,
    pub mfa_ticket_ttl: Duration,
    /// Sign-in needs a verified email.
    pub require_verified_email: bool,
    /// How long a passwordless sign-in code or link is valid.
    pub sign_in_code_ttl: Duration,
    /// The base URL links in mail point to (`AUTHD_PUBLIC_URL`).
    pub public_url: String,
    /// Where a sign-in link may send the browser (`AUTHD_ALLOWED_REDIRECT_URLS`).
    pub allowed_redirects: Vec<webauthn_rs::prelude::Url>,
    /// Codes the whole server may text in one clock hour (`AUTHD_SMS_HOURLY_LIMIT`).
    pub sms_hourly_limit: u32,
}

pub struct App {
    store: Store,
    pub keys: Arc<Keys>,
    pub policy: Policy,
    /// The OPAQUE KE3 check (`LoginVerifier`), a service of the `SignIn` aggregate.
    opaque_login: Arc<dyn LoginVerifier>,
    totp: Arc<dyn TotpCheck>,
    validation: Validation,
    verifications: verifications::Verifications,
    admin_failures: admin::Failures,
    verified_tokens: sessions::VerifiedTokens,
    /// The WebAuthn relying party (passkeys); `None` until [`App::with_webauthn`].
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// OpenID providers whose ID tokens sign in (none until [`App::with_oidc`]).
    oidc: OidcProviders,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}


impl App {
    pub fn new(store: Store, keys: Keys, policy: Policy) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.leeway = 5;
        let keys = Arc::new(keys);
        let totp = Arc::new(crate::crypto::totp::TotpChecker(keys.clone()));
        let verifications = verifications::Verifications::new(&keys);
        Self { store, keys, policy, opaque_login: Arc::new(OpaqueVerifier), totp, validation, verifications, admin_failures: Default::default(), verified_tokens: Default::default(), webauthn: None, oidc: OidcProviders::default() }
    }

    /// ID-token sign-in with these providers.
    pub fn with_oidc(self, oidc: OidcProviders) -> Self {
        Self { oidc, ..self }
    }

    /// Passkeys with this relying party (see [`relying_party`]).
    pub fn with_webauthn(self, webauthn: webauthn_rs::Webauthn) -> Self {
        Self { webauthn: Some(Arc::new(webauthn)), ..self }
    }
}
