//! What a use case can fail with, typed by reason. `api::error` maps each reason to
//! its one HTTP status: a rejected command is a 4xx that names why; 503 only when the
//! store, the log or a delivery channel is down.

use crate::delivery::DeliveryError;
use crate::store::log::LogError;
use crate::store::{CommandError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A well-formed request that breaks a rule: every failing field with why.
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("refresh token reused: the session is revoked")]
    RefreshTokenReused,
    /// A passkey's signature counter went back: recorded, refused.
    #[error("this passkey's signature counter went back (a cloned authenticator?): refused")]
    PasskeyCloned,
    #[error("unknown token")]
    TokenUnknown,
    #[error("{0}")]
    Conflict(Conflict),
    #[error("{0}")]
    NotFound(Missing),
    #[error("{0}")]
    Forbidden(Denied),
    /// 429: retry after this many seconds.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("the event store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the read models are unavailable: {0}")]
    ReadModels(#[from] projections::Error),
    #[error("the event log is unavailable: {0}")]
    Log(#[from] LogError),
    /// A message could not be sent, or no way to send it is configured.
    #[error("{0}")]
    Delivery(#[from] Undeliverable),
    /// A step that cannot fail with valid keys failed (signing a token, drawing a QR
    /// code): reported like an outage, logged as the bug it is.
    #[error("internal error: {0}")]
    Internal(String),
}

/// 409: taken, used, or in a state that does not allow the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("username taken")]
    UsernameTaken,
    #[error("token already redeemed")]
    TokenRedeemed,
    #[error("verification id already in use")]
    VerificationIdTaken,
    #[error("the email is already verified")]
    EmailAlreadyVerified,
    #[error("MFA is already enabled")]
    MfaAlreadyEnabled,
    #[error("no TOTP secret was generated; generate one first")]
    MfaNotGenerated,
    #[error("MFA is not enabled")]
    MfaNotEnabled,
    #[error("this passkey is registered already")]
    PasskeyRegistered,
    #[error("the last way to sign in cannot be removed")]
    LastSignInMethod,
    #[error("the account has no passkey")]
    NoPasskeys,
    #[error("this phone number is another account's")]
    PhoneNumberTaken,
    #[error("this identity is linked to another account")]
    IdentityLinked,
    #[error("the account has no verified email")]
    NoVerifiedEmail,
    #[error("this email address is verified on another account")]
    EmailTaken,
    /// A fresh random id already had history: retrying the request succeeds.
    #[error("the new {0} collided with an existing one; try again")]
    IdCollision(&'static str),
}

/// 404: what was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("no such verification, or it expired")]
    Verification,
    #[error("no such account")]
    Account,
    #[error("no such open session of this account")]
    Session,
    #[error("no such WebAuthn challenge, or it was answered or expired")]
    Challenge,
    #[error("no such passkey on this account")]
    Passkey,
    #[error("no such live personal access token on this account")]
    Pat,
}

/// 403: why the request is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the account's email must be verified first")]
    EmailNotVerified,
    #[error("this needs a recent proof of presence: elevate the session first (/v1/elevate/…)")]
    ElevationRequired,
    #[error("an anonymous session cannot do this: make the account a real one first (/v1/user/deanonymize)")]
    AnonymousUser,
    #[error("the account is not anonymous")]
    NotAnonymous,
    #[error("no account is linked to this identity, and sign-up is invite-only")]
    SignUpClosed,
    #[error("this account has TOTP or a passkey: step up with one of them (/v1/elevate/totp, /v1/elevate/webauthn)")]
    StrongerProofRequired,
    #[error("a personal access token's session is for machines: it is never elevated")]
    MachineSession,
    #[error("this account has a password, TOTP or a passkey: step up with it")]
    OtherProofRequired,
}

#[derive(Debug, thiserror::Error)]
pub enum Undeliverable {
    #[error("phone verification is not available: no AUTHD_SMS_WEBHOOK_URL is configured")]
    NoSmsWebhook,
    #[error("the message could not be delivered: {0}")]
    Failed(#[from] DeliveryError),
}

impl Conflict {
    pub fn code(self) -> &'static str {
        match self {
            Conflict::UsernameTaken => "username_taken",
            Conflict::TokenRedeemed => "token_redeemed",
            Conflict::VerificationIdTaken => "verification_id_taken",
            Conflict::EmailAlreadyVerified => "email_already_verified",
            Conflict::MfaAlreadyEnabled => "mfa_already_enabled",
            Conflict::MfaNotGenerated => "mfa_not_generated",
            Conflict::MfaNotEnabled => "mfa_not_enabled",
            Conflict::PasskeyRegistered => "passkey_registered",
            Conflict::LastSignInMethod => "last_sign_in_method",
            Conflict::NoPasskeys => "no_passkeys",
            Conflict::PhoneNumberTaken => "phone_number_taken",
            Conflict::IdentityLinked => "identity_linked",
            Conflict::NoVerifiedEmail => "no_verified_email",
            Conflict::EmailTaken => "email_taken",
            Conflict::IdCollision(_) => "id_collision",
        }
    }
}

impl Missing {
    pub fn code(self) -> &'static str {
        match self {
            Missing::Verification => "verification_not_found",
            Missing::Account => "account_not_found",
            Missing::Session => "session_not_found",
            Missing::Challenge => "challenge_not_found",
            Missing::Passkey => "passkey_not_found",
            Missing::Pat => "pat_not_found",
        }
    }
}

impl Denied {
    pub fn code(self) -> &'static str {
        match self {
            Denied::EmailNotVerified => "email_not_verified",
            Denied::ElevationRequired => "elevation_required",
            Denied::AnonymousUser => "anonymous_user",
            Denied::NotAnonymous => "not_anonymous",
            Denied::SignUpClosed => "sign_up_closed",
            Denied::StrongerProofRequired => "stronger_proof_required",
            Denied::MachineSession => "machine_session",
            Denied::OtherProofRequired => "other_proof_required",
        }
    }
}

/// Maps a command's business rejection with `map`; a store failure stays one.
pub(crate) fn rejected<E: std::fmt::Debug>(error: CommandError<E>, map: impl FnOnce(E) -> AppError) -> AppError {
    match error {
        CommandError::Rejected(error) => map(error),
        CommandError::Store(error) => error.into(),
    }
}

/// Collects every bad field of a request before answering.
#[derive(Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|why| self.0.push((path.to_string(), why))).ok()
    }
    pub fn bad(&mut self, path: &str, why: &str) {
        self.0.push((path.to_string(), why.to_string()));
    }
    pub fn error(self) -> AppError {
        AppError::Invalid(self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
