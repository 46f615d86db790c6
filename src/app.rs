//! The application layer: each public method is one use case, run as commands on
//! the aggregates of `domain` (which hold the rules) or as one read-model query.
//! Handlers in `api/` parse, call one of these, and map the result.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use domain::invite_token::{InviteTokenCommand, InviteTokenError};
use domain::mfa::{MfaCommand, MfaError};
use domain::mfa_challenge::MfaChallengeCommand;
use domain::services::{LoginVerifier, TotpCheck};
use domain::session::{SessionCommand, SessionError, SessionEvent};
use domain::sign_in::{SignInCommand, SignInEvent};
use domain::user::{Lockout, UserCommand};
use domain::username::{self as usernames, UsernameCommand, UsernameError};
use domain::{Bucket, InviteToken, Mfa, MfaChallenge, Session, SignIn, User, Username};
use futures::{stream, StreamExt, TryStreamExt};
use jsonwebtoken::{Algorithm, Header, Validation};
use projections::{BucketView, UserView};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::Keys;
use crate::opaque::{self, OpaqueVerifier};
use crate::store::{CommandError, Metadata, Store, StoreError};

mod verifications;
// `send_email_code` and `redeem_code` (and their types) serve the account flows.
#[allow(unused_imports)]
pub use verifications::{CodeOutcome, CodeSpec, Initiated, Initiation, Template, VerifiedCode, VerifierData};

/// Commands in flight at once when a bucket is filled.
const FILL_CONCURRENCY: usize = 8;

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
    #[error("unknown token")]
    TokenUnknown,
    #[error("token already redeemed")]
    TokenRedeemed,
    #[error("username taken")]
    UsernameTaken,
    /// 409 with this machine code.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// 404 with this machine code.
    #[error("not found")]
    NotFound(&'static str),
    /// 403 with this machine code.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 429: retry after this many seconds.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    TooMany { code: &'static str, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// 409: a verifier with the forced verification id exists.
    #[error("verification id already in use")]
    VerificationIdTaken,
    /// 503: a message could not be sent, or no way to send it is configured.
    #[error("{0}")]
    Delivery(String),
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<projections::Error> for AppError {
    fn from(error: projections::Error) -> Self {
        AppError::Unavailable(error.to_string())
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

/// Decodes a base64url protocol message of exactly `len` bytes.
pub fn message(text: &str, len: usize) -> Result<Vec<u8>, String> {
    match URL_SAFE_NO_PAD.decode(text) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        Ok(bytes) => Err(format!("must encode {len} bytes (has {})", bytes.len())),
        Err(_) => Err("must be base64url without padding".into()),
    }
}

pub fn bucket(name: &str) -> Option<Bucket> {
    match name {
        "signup" => Some(Bucket::Signup),
        "profile" => Some(Bucket::Profile),
        _ => None,
    }
}

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

/// A new session as the API returns it.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub profile_id: Uuid,
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
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
}

/// An access token that checked out: signature, expiry, and a live session.
#[derive(Debug, Clone)]
pub struct Verified {
    pub profile_id: Uuid,
    pub session_id: Uuid,
    pub expires_at: i64,
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
    pub sign_in_ttl: Duration,
    pub lockout: Lockout,
    pub mfa_ticket_ttl: Duration,
    /// Sign-in needs a verified email.
    pub require_verified_email: bool,
}

/// Wrong codes an `mfa_ticket` survives.
const MFA_TICKET_MAX_FAILURES: u32 = 5;

pub struct App {
    pub store: Store,
    pub keys: Arc<Keys>,
    pub policy: Policy,
    verifier: Arc<dyn LoginVerifier>,
    totp: Arc<dyn TotpCheck>,
    validation: Validation,
    verifications: verifications::Verifications,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn rejected<E: std::fmt::Debug>(error: CommandError<E>, map: impl FnOnce(E) -> AppError) -> AppError {
    match error {
        CommandError::Rejected(error) => map(error),
        CommandError::Store(error) => error.into(),
    }
}

impl App {
    pub fn new(store: Store, keys: Keys, policy: Policy) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.leeway = 5;
        let keys = Arc::new(keys);
        let totp = Arc::new(crate::totp::TotpChecker(keys.clone()));
        let verifications = verifications::Verifications::new(&keys);
        Self { store, keys, policy, verifier: Arc::new(OpaqueVerifier), totp, validation, verifications }
    }

    // ---- buckets ----------------------------------------------------------

    /// Issues the given tokens into a bucket; known ones are ignored. Returns how
    /// many were new. Recovery (`profile`) tokens are issued for one account.
    pub async fn fill(
        &self,
        bucket: Bucket,
        for_profile: Option<Uuid>,
        tokens: Vec<String>,
        meta: &Metadata,
    ) -> Result<u64, AppError> {
        let issued = stream::iter(tokens)
            .map(|token| async move {
                let id = self.token_id(bucket, &token);
                let issue = InviteTokenCommand::Issue { bucket, for_profile };
                match self.store.execute::<InviteToken>(&id, issue, &(), meta).await {
                    Ok(_) => Ok(1u64),
                    Err(CommandError::Rejected(InviteTokenError::AlreadyIssued)) => Ok(0),
                    Err(error) => Err(rejected(error, |_| {
                        AppError::Invalid(vec![("username".into(), "is required for the profile bucket".into())])
                    })),
                }
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .try_fold(0, |sum, added| async move { Ok(sum + added) })
            .await?;
        Ok(issued)
    }

    /// Generates `count` fresh tokens into a bucket.
    pub async fn generate(
        &self,
        bucket: Bucket,
        for_profile: Option<Uuid>,
        count: usize,
        meta: &Metadata,
    ) -> Result<Vec<String>, AppError> {
        let tokens: Vec<String> = (0..count).map(|_| random_token()).collect();
        self.fill(bucket, for_profile, tokens.clone(), meta).await?;
        Ok(tokens)
    }

    /// The account holding a username, if any.
    pub async fn account_of(&self, username: &str) -> Result<Option<Uuid>, AppError> {
        let Ok(username) = usernames::normalize(username) else { return Ok(None) };
        Ok(self.store.load::<Username>(&self.keys.aggregate_id("username", &username)).await?.owner())
    }

    /// Generates tokens until `size` are available in the `signup` bucket.
    pub async fn top_up(&self, size: u64, meta: &Metadata) -> Result<Vec<String>, AppError> {
        let available = u64::try_from(self.bucket(Bucket::Signup).await?.available).unwrap_or(0);
        let missing = usize::try_from(size.saturating_sub(available)).unwrap_or(0);
        self.generate(Bucket::Signup, None, missing, meta).await
    }

    pub async fn bucket(&self, bucket: Bucket) -> Result<BucketView, AppError> {
        Ok(self.store.read_models().bucket(bucket.as_str()).await?)
    }

    pub(crate) fn token_id(&self, bucket: Bucket, token: &str) -> String {
        self.keys.aggregate_id(bucket.as_str(), token)
    }

    // ---- sign-up ------------------------------------------------------------

    /// Checks the invitation without redeeming it.
    async fn check_invitation(&self, token: Option<&str>, fields: &mut Fields) -> Result<Option<String>, AppError> {
        if self.policy.open_signup {
            return Ok(None);
        }
        let Some(token) = token else {
            fields.bad("signup_token", "is required while sign-up is invite-only");
            return Ok(None);
        };
        let id = self.token_id(Bucket::Signup, token);
        let state = self.store.load::<InviteToken>(&id).await?;
        if !state.is_issued() {
            return Err(AppError::TokenUnknown);
        }
        if state.is_redeemed() {
            return Err(AppError::TokenRedeemed);
        }
        Ok(Some(id))
    }

    async fn check_username_free(&self, username: &str) -> Result<String, AppError> {
        let id = self.keys.aggregate_id("username", username);
        match self.store.load::<Username>(&id).await?.owner() {
            Some(_) => Err(AppError::UsernameTaken),
            None => Ok(id),
        }
    }

    /// OPAQUE registration, first round: no state is written.
    pub async fn sign_up_start(
        &self,
        username: &str,
        token: Option<&str>,
        registration_request: &str,
    ) -> Result<String, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let request = fields.check("registration_request", message(registration_request, 32));
        let (Some(username), Some(request)) = (username, request) else { return Err(fields.error()) };
        self.check_invitation(token, &mut fields).await?;
        if !fields.is_empty() {
            return Err(fields.error());
        }
        self.check_username_free(&username).await?;
        let response = opaque::registration_response(&self.keys.setup, &request, username.as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        Ok(URL_SAFE_NO_PAD.encode(response))
    }

    /// OPAQUE registration, final round: claims the username, redeems the
    /// invitation, registers the account. A finish that fails gives the name back
    /// and never consumes the invitation.
    pub async fn sign_up_finish(
        &self,
        username: &str,
        token: Option<&str>,
        registration_record: &str,
        email: Option<String>,
        meta: &Metadata,
    ) -> Result<Uuid, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let record = fields.check("registration_record", crate::account::checked_record(registration_record));
        let (Some(username), Some(record)) = (username, record) else { return Err(fields.error()) };
        let invitation = self.check_invitation(token, &mut fields).await?;
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let name_id = self.check_username_free(&username).await?;

        let profile_id = Uuid::new_v4();
        self.store
            .execute::<Username>(&name_id, UsernameCommand::Claim { profile_id }, &(), meta)
            .await
            .map_err(|e| rejected(e, |_: UsernameError| AppError::UsernameTaken))?;
        if let Some(token_id) = invitation {
            let redeemed = self
                .store
                .execute::<InviteToken>(&token_id, InviteTokenCommand::Redeem { profile_id }, &(), meta)
                .await;
            if let Err(error) = redeemed {
                self.release_username(&name_id, profile_id, meta).await;
                return Err(rejected(error, |e| match e {
                    InviteTokenError::Unknown => AppError::TokenUnknown,
                    _ => AppError::TokenRedeemed,
                }));
            }
        }
        let activation_email = email.clone();
        let register = UserCommand::Register {
            username,
            registration_record: record,
            email,
            at: Utc::now(),
        };
        self.store
            .execute::<User>(&profile_id.to_string(), register, &(), meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
        if let Some(email) = &activation_email {
            // The account exists either way; a lost message is sent again on request
            // by nothing yet, so say so loudly.
            if let Err(error) = self.send_activation(profile_id, email, meta).await {
                tracing::warn!(%error, %profile_id, "the activation message could not be sent");
            }
        }
        Ok(profile_id)
    }

    async fn release_username(&self, name_id: &str, profile_id: Uuid, meta: &Metadata) {
        let release = UsernameCommand::Release { profile_id };
        if let Err(error) = self.store.execute::<Username>(name_id, release, &(), meta).await {
            tracing::error!(?error, "could not give a username back after a failed sign-up");
        }
    }

    // ---- sign-in -------------------------------------------------------------

    /// Answers KE1 with KE2 and a sign-in id that carries the sealed login state.
    /// Unknown usernames get the same shape, the same work and an event too.
    pub async fn sign_in_start(
        &self,
        username: &str,
        credential_request: &str,
        meta: &Metadata,
    ) -> Result<(String, String), AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let ke1 = fields.check("credential_request", message(credential_request, 96));
        let (Some(username), Some(ke1)) = (username, ke1) else { return Err(fields.error()) };

        let at = Utc::now();
        let name_id = self.keys.aggregate_id("username", &username);
        let account = match self.store.load::<Username>(&name_id).await?.owner() {
            Some(profile_id) => {
                let user = self.store.load::<User>(&profile_id.to_string()).await?;
                let locked = user.is_locked(at);
                user.registration_record().map(|record| (profile_id, record.to_vec(), locked))
            }
            None => None,
        };
        let start = opaque::login_start(
            &self.keys.setup,
            account.as_ref().map(|(_, record, _)| record.as_slice()),
            &ke1,
            username.as_bytes(),
        )
        .map_err(|e| AppError::Invalid(vec![("credential_request".into(), e.to_string())]))?;

        // The attempt counts as failed until it succeeds: a client that learns from
        // KE2 that its guess was wrong and never sends KE3 is still counted.
        if let Some((profile_id, _, false)) = account {
            let attempt = UserCommand::RecordSignIn { succeeded: false, at, lockout: self.policy.lockout };
            self.store
                .execute::<User>(&profile_id.to_string(), attempt, &(), meta)
                .await
                .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
        }
        let sign_in = Uuid::new_v4();
        let command = SignInCommand::Start {
            profile_id: account.as_ref().map(|(profile_id, _, _)| *profile_id),
            locked: account.is_some_and(|(_, _, locked)| locked),
            at,
            expires_at: at + self.policy.sign_in_ttl,
        };
        self.store
            .execute::<SignIn>(&sign_in.to_string(), command, &self.verifier, meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
        let sealed = self.keys.seal(sign_in.as_bytes(), &start.state);
        Ok((format!("{sign_in}.{}", URL_SAFE_NO_PAD.encode(sealed)), URL_SAFE_NO_PAD.encode(start.ke2)))
    }

    /// Checks KE3. Any failure — wrong password, unknown user, locked account,
    /// unknown, expired or finished attempt — is the same 401. With the right
    /// password: 403 while the email must be verified first, a ticket when MFA is
    /// on, a session otherwise.
    pub async fn sign_in_finish(
        &self,
        sign_in_id: &str,
        credential_finalization: &str,
        meta: &Metadata,
    ) -> Result<SignInResult, AppError> {
        let mut fields = Fields::default();
        let ke3 = fields.check("credential_finalization", message(credential_finalization, 64));
        let Some(ke3) = ke3 else { return Err(fields.error()) };
        let (sign_in, login_state) = self.open_sign_in_id(sign_in_id).ok_or(AppError::InvalidCredentials)?;

        let at = Utc::now();
        let command = SignInCommand::Finish { login_state, ke3, at };
        let events = self
            .store
            .execute::<SignIn>(&sign_in.to_string(), command, &self.verifier, meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        let (profile_id, succeeded) = match events.first() {
            Some(SignInEvent::SignInSucceeded { profile_id, .. }) => (*profile_id, true),
            Some(SignInEvent::SignInFailed { profile_id: Some(profile_id), .. }) => (*profile_id, false),
            _ => return Err(AppError::InvalidCredentials),
        };
        if !succeeded {
            // Already counted when the attempt began.
            return Err(AppError::InvalidCredentials);
        }
        let record = UserCommand::RecordSignIn { succeeded, at, lockout: self.policy.lockout };
        self.store
            .execute::<User>(&profile_id.to_string(), record, &(), meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
        if self.policy.require_verified_email
            && !self.store.load::<User>(&profile_id.to_string()).await?.email_verified()
        {
            return Err(AppError::Forbidden("email_not_verified"));
        }
        if self.store.load::<Mfa>(&profile_id.to_string()).await?.is_enabled() {
            let mfa_ticket = random_token();
            let command = MfaChallengeCommand::Issue {
                profile_id,
                max_failures: MFA_TICKET_MAX_FAILURES,
                at,
                expires_at: at + self.policy.mfa_ticket_ttl,
            };
            self.store
                .execute::<MfaChallenge>(&self.keys.aggregate_id("mfa_ticket", &mfa_ticket), command, &(), meta)
                .await
                .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
            return Ok(SignInResult::MfaRequired { mfa_ticket });
        }
        Ok(SignInResult::Session(self.open_session(profile_id, vec!["pwd".into()], meta).await?))
    }

    /// The second factor of a sign-in: a valid, unused TOTP code and the ticket.
    pub async fn sign_in_mfa(&self, mfa_ticket: &str, code: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let ticket_id = self.keys.aggregate_id("mfa_ticket", mfa_ticket);
        let challenge = self.store.load::<MfaChallenge>(&ticket_id).await?;
        let profile_id = challenge.usable_for(at).ok_or(AppError::InvalidCredentials)?;
        let use_code = MfaCommand::UseCode { code: code.to_string(), at };
        if let Err(error) = self.store.execute::<Mfa>(&profile_id.to_string(), use_code, &self.totp, meta).await {
            let error = rejected(error, |_| AppError::InvalidCredentials);
            if matches!(error, AppError::InvalidCredentials) {
                // Count the wrong code; an already dead ticket changes nothing.
                let _ = self.store.execute::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Fail { at }, &(), meta).await;
            }
            return Err(error);
        }
        self.store
            .execute::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Complete { at }, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        self.open_session(profile_id, vec!["pwd".into(), "otp".into()], meta).await
    }

    // ---- MFA --------------------------------------------------------------------

    /// A new TOTP secret for the account, pending until a code enables it.
    pub async fn mfa_generate(&self, who: &Verified, meta: &Metadata) -> Result<TotpEnrollment, AppError> {
        let user = self.store.load::<User>(&who.profile_id.to_string()).await?;
        let secret = crate::totp::new_secret();
        let command = MfaCommand::Generate { sealed_secret: crate::totp::seal(&self.keys, &secret), at: Utc::now() };
        self.store
            .execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta)
            .await
            .map_err(|e| rejected(e, mfa_error))?;
        let totp = crate::totp::authenticator(secret, Some(self.policy.issuer.clone()), user.username().to_string());
        let otpauth_uri = totp.get_url();
        let qr_png = totp.get_qr_base64().map_err(AppError::Unavailable)?;
        Ok(TotpEnrollment { otp_secret: totp.get_secret_base32(), otpauth_uri, qr_png })
    }

    pub async fn mfa_enable(&self, who: &Verified, code: &str, meta: &Metadata) -> Result<(), AppError> {
        let command = MfaCommand::Enable { code: code.to_string(), at: Utc::now() };
        self.store.execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta).await.map_err(|e| rejected(e, mfa_error))?;
        Ok(())
    }

    pub async fn mfa_disable(&self, who: &Verified, code: &str, meta: &Metadata) -> Result<(), AppError> {
        let command = MfaCommand::Disable { code: code.to_string(), at: Utc::now() };
        self.store.execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta).await.map_err(|e| rejected(e, mfa_error))?;
        Ok(())
    }

    pub(crate) fn open_sign_in_id(&self, sign_in_id: &str) -> Option<(Uuid, Vec<u8>)> {
        let (id, sealed) = sign_in_id.split_once('.')?;
        let id = Uuid::parse_str(id).ok()?;
        let state = self.keys.open(id.as_bytes(), &URL_SAFE_NO_PAD.decode(sealed).ok()?)?;
        Some((id, state))
    }

    // ---- sessions ---------------------------------------------------------------

    async fn open_session(&self, profile_id: Uuid, amr: Vec<String>, meta: &Metadata) -> Result<Tokens, AppError> {
        let session_id = Uuid::new_v4();
        let refresh_token = format!("{session_id}.{}", random_token());
        let at = Utc::now();
        let command = SessionCommand::Open {
            profile_id,
            refresh_hash: self.keys.refresh_hash(&refresh_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            amr: amr.clone(),
            at,
        };
        self.store
            .execute::<Session>(&session_id.to_string(), command, &(), meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Unavailable(e.to_string())))?;
        self.tokens(profile_id, session_id, amr, refresh_token, at)
    }

    fn tokens(
        &self,
        profile_id: Uuid,
        session_id: Uuid,
        amr: Vec<String>,
        refresh_token: String,
        at: DateTime<Utc>,
    ) -> Result<Tokens, AppError> {
        let claims = Claims {
            sub: profile_id.to_string(),
            sid: session_id.to_string(),
            iat: at.timestamp(),
            exp: (at + self.policy.access_ttl).timestamp(),
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone(),
            amr,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.jwt.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.keys.jwt.encoding)
            .map_err(|e| AppError::Unavailable(format!("cannot sign access token: {e}")))?;
        Ok(Tokens {
            profile_id,
            access_token,
            expires_in: self.policy.access_ttl.num_seconds(),
            refresh_token,
            refresh_expires_in: self.policy.refresh_ttl.num_seconds(),
        })
    }

    /// Rotates the refresh token. A token that was already rotated revokes the
    /// whole session.
    pub async fn refresh(&self, refresh_token: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let session_id = refresh_token
            .split_once('.')
            .and_then(|(id, _)| Uuid::parse_str(id).ok())
            .ok_or(AppError::InvalidToken)?;
        let new_token = format!("{session_id}.{}", random_token());
        let at = Utc::now();
        let command = SessionCommand::Refresh {
            presented_hash: self.keys.refresh_hash(refresh_token),
            new_hash: self.keys.refresh_hash(&new_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            at,
        };
        let events = self
            .store
            .execute::<Session>(&session_id.to_string(), command, &(), meta)
            .await
            .map_err(|e| rejected(e, |_: SessionError| AppError::InvalidToken))?;
        match events.first() {
            Some(SessionEvent::SessionRefreshed { .. }) => {
                let session = self.store.load::<Session>(&session_id.to_string()).await?;
                let profile_id = session.profile_id().ok_or(AppError::InvalidToken)?;
                self.tokens(profile_id, session_id, session.amr().to_vec(), new_token, at)
            }
            Some(SessionEvent::RefreshTokenReuseDetected { .. }) => Err(AppError::RefreshTokenReused),
            _ => Err(AppError::InvalidToken),
        }
    }

    /// Checks an access token: signature, issuer, audience, expiry, and that its
    /// session is still open (read from the log, not a read model).
    pub async fn verify(&self, jwt: &str) -> Result<Verified, AppError> {
        let claims = jsonwebtoken::decode::<Claims>(jwt, &self.keys.jwt.decoding, &self.validation)
            .map_err(|_| AppError::InvalidToken)?
            .claims;
        let (Ok(profile_id), Ok(session_id)) = (Uuid::parse_str(&claims.sub), Uuid::parse_str(&claims.sid)) else {
            return Err(AppError::InvalidToken);
        };
        let session = self.store.load::<Session>(&claims.sid).await?;
        if !session.is_active() || session.profile_id() != Some(profile_id) {
            return Err(AppError::InvalidToken);
        }
        Ok(Verified { profile_id, session_id, expires_at: claims.exp })
    }

    /// Ends this session, or every open session of the account. Returns how many.
    pub async fn sign_out(&self, who: &Verified, all: bool, meta: &Metadata) -> Result<u64, AppError> {
        let this = who.session_id.to_string();
        let mut sessions = vec![this.clone()];
        if all {
            let others = self.store.read_models().active_sessions(&who.profile_id.to_string()).await?;
            sessions.extend(others.into_iter().filter(|id| *id != this));
        }
        self.end_sessions(sessions, meta).await
    }

    /// Ends every open session of an account (after a password change or removal).
    pub async fn end_all_sessions(&self, profile_id: Uuid, meta: &Metadata) -> Result<u64, AppError> {
        let sessions = self.store.read_models().active_sessions(&profile_id.to_string()).await?;
        self.end_sessions(sessions, meta).await
    }

    async fn end_sessions(&self, sessions: Vec<String>, meta: &Metadata) -> Result<u64, AppError> {
        let mut revoked = 0;
        for session in sessions {
            let command = SessionCommand::SignOut { at: Utc::now() };
            match self.store.execute::<Session>(&session, command, &(), meta).await {
                Ok(_) => revoked += 1,
                Err(CommandError::Rejected(_)) => {}
                Err(CommandError::Store(error)) => return Err(error.into()),
            }
        }
        Ok(revoked)
    }

    pub async fn user(&self, profile_id: Uuid) -> Result<Option<UserView>, AppError> {
        Ok(self.store.read_models().user(&profile_id.to_string()).await?)
    }

    /// Admin routes: the configured secret, compared in constant time.
    pub fn admin(&self, presented: &str) -> Result<(), AdminDenied> {
        use subtle::ConstantTimeEq;
        match &self.policy.admin_token {
            None => Err(AdminDenied::NotConfigured),
            Some(token) if bool::from(token.as_bytes().ct_eq(presented.as_bytes())) => Ok(()),
            Some(_) => Err(AdminDenied::Wrong),
        }
    }
}

fn mfa_error(error: MfaError) -> AppError {
    match error {
        MfaError::InvalidCode | MfaError::CodeReplayed => {
            AppError::Invalid(vec![("code".into(), "is not a valid, unused code".into())])
        }
        MfaError::AlreadyEnabled => AppError::Conflict("mfa_already_enabled"),
        MfaError::NothingPending => AppError::Conflict("mfa_not_generated"),
        MfaError::NotEnabled => AppError::Conflict("mfa_not_enabled"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenied {
    NotConfigured,
    Wrong,
}
