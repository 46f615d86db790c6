//! The verification service (reference 004): verifiers of the `email`, `phone` and
//! `google_auth` methods — initiate, validate, read, delete — and the two calls the
//! account flows use ([`App::send_email_code`], [`App::redeem_code`]).
//!
//! A failed delivery never leaves a live verifier: the message goes out *before* the
//! `VerifierInitiated` event is committed, so when sending fails nothing is written.
//! (The opposite failure — sent, then the commit fails — leaves a code that matches
//! no verifier, which is harmless.)

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cqrs_es::Aggregate;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use domain::services::{CodeVerifier, TotpVerifier};
use domain::totp_secret::{StoredSecret, TotpSecretCommand, TotpSecretError};
use domain::verification_code::{
    Method, Secret, VerificationCodeCommand, VerificationCodeError, VerificationCodeEvent, VerifierServices,
};
use domain::verification_rules::{self as rules, CodeChoice, MessageError};
use domain::{TotpSecret, VerificationCode};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde_json::Value;
use uuid::Uuid;

use super::{rejected, App, AppError, Conflict, Fields, Missing, Undeliverable};
use crate::delivery::Delivery;
use crate::crypto::keys::{CodeHasher, Keys};
use crate::store::transact;
use crate::store::{CommandError, RequestContext};

/// 160 bits, as RFC 4226 recommends.
const TOTP_SECRET_BYTES: usize = 20;
const DEFAULT_SUBJECT: &str = "Your verification code";
const NOT_FOUND: AppError = AppError::NotFound(Missing::Verification);

/// What the verification service needs besides the store and the keys.
pub(crate) struct Verifications {
    delivery: Delivery,
    max_attempts: u32,
    services: VerifierServices,
}

impl Verifications {
    /// No delivery yet: the server sets it with [`App::with_verifications`].
    pub(super) fn new(keys: &Keys) -> Self {
        Self {
            delivery: Delivery::disabled(),
            max_attempts: rules::DEFAULT_MAX_ATTEMPTS,
            services: VerifierServices { codes: Arc::new(keys.codes.clone()), totp: Arc::new(Totp) },
        }
    }
}

impl CodeVerifier for CodeHasher {
    fn matches(&self, code_hash: &str, code: &str) -> bool {
        CodeHasher::matches(self, code_hash, code)
    }
}

/// `google_auth` codes, checked like every TOTP code in authd (`crate::crypto::totp`).
struct Totp;

impl TotpVerifier for Totp {
    fn step(&self, secret: &[u8], code: &str, at: DateTime<Utc>) -> Option<u64> {
        crate::crypto::totp::matching_step(secret, code, at)
    }
}

/// The message of an email or phone verification.
#[derive(Debug, Clone)]
pub struct Template {
    /// Email only.
    pub subject: Option<String>,
    /// `{{{CODE}}}` and `{{{VERIFICATION_ID}}}` are replaced before delivery.
    pub body: String,
}

pub use domain::verification_rules::CodeSpec;

/// An initiate request as the API received it (its shape already checked).
#[derive(Debug, Clone)]
pub struct Initiation {
    pub consumer: String,
    pub issuer: Option<String>,
    /// Required for email and phone; ignored for google_auth.
    pub template: Option<Template>,
    /// Required for email and phone; ignored for google_auth.
    pub generate_code: Option<CodeSpec>,
    /// `HH:MM:SS`; one hour when absent.
    pub expired_on: Option<String>,
    pub forced_verification_id: Option<String>,
    pub forced_code: Option<String>,
    /// Lowers the server's maximum of wrong codes for this verifier.
    pub max_attempts: Option<u32>,
    /// Any JSON object, handed back untouched.
    pub payload: Option<Value>,
}

/// A new verifier.
#[derive(Debug, Clone)]
pub struct Initiated {
    pub verification_id: String,
    pub consumer: String,
    pub expires_at: DateTime<Utc>,
    pub payload: Value,
    /// google_auth, when the consumer got a new (temporary) secret.
    pub totp_uri: Option<String>,
}

/// A verifier as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierData {
    pub verification_id: String,
    pub consumer: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub payload: Value,
    /// Wrong codes so far.
    pub attempts: u32,
}

/// The answer to a presented code.
#[derive(Debug, Clone, PartialEq)]
pub enum CodeOutcome {
    /// The right code: the verifier is consumed.
    Valid(VerifierData),
    /// A wrong code, counted.
    Invalid(VerifierData),
}

/// A redeemed code: whom it verified and what the initiator attached.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCode {
    pub consumer: String,
    pub payload: Value,
}

/// A checked initiate request, ready to run.
struct Plan {
    verification_id: Option<String>,
    consumer: String,
    issuer: Option<String>,
    /// Email and phone: the template and the code in clear (until it is hashed).
    message: Option<(Template, String)>,
    ttl: Duration,
    max_attempts: u32,
    payload: Value,
}

impl App {
    /// Sets how verification messages are delivered and the most wrong codes a
    /// verifier takes (`AUTHD_VERIFICATION_MAX_ATTEMPTS`).
    /// Deletes the outbox's messages to `address` (see [`Delivery::forget_recipient`]).
    /// A plain notice by mail (no code): logged, not failed, when it cannot go out.
    pub(crate) async fn notify_by_mail(&self, to: &str, subject: &str, body: &str) {
        if let Err(error) = self.verifications.delivery.email(to, subject, body).await {
            tracing::warn!(%error, "a notice could not be mailed");
        }
    }

    /// A plain text message through the SMS webhook: logged, not failed, when it
    /// cannot go out.
    pub(crate) async fn notify_by_text(&self, to: &str, body: &str) {
        if let Err(error) = self.verifications.delivery.text(to, body).await {
            tracing::warn!(%error, "a text message could not be sent");
        }
    }

    /// Whether one more code may be texted this hour (`AUTHD_SMS_HOURLY_LIMIT`, all
    /// replicas together): decided and counted in one command on the hour's budget
    /// before the text goes. `false`: the budget is spent and nothing may be sent; a
    /// warning is logged (without the number).
    pub(crate) async fn spend_sms_budget(&self, meta: &RequestContext) -> Result<bool, AppError> {
        if !self.verifications.delivery.can_text() {
            // Nothing can be texted anyway (and the caller says so): nothing spent.
            return Ok(true);
        }
        let at = Utc::now();
        let spend = domain::sms_budget::SmsBudgetCommand::Spend { limit: self.policy.sms_hourly_limit, at };
        // The budget concerns no account: its events carry no client address either.
        let meta = meta.anonymised();
        match self.store.execute::<domain::SmsBudget>(&domain::sms_budget::window_id(at), spend, &(), &meta).await {
            Ok(_) => Ok(true),
            Err(CommandError::Rejected(domain::sms_budget::SmsBudgetError::Exhausted)) => {
                tracing::warn!(limit = self.policy.sms_hourly_limit, "the hourly budget of text messages (AUTHD_SMS_HOURLY_LIMIT) is spent: a code was not texted");
                Ok(false)
            }
            Err(CommandError::Store(error)) => Err(error.into()),
        }
    }

    /// Seconds until the next hour's text-message budget.
    pub(crate) fn next_sms_budget_in(&self) -> u64 {
        let now = Utc::now();
        let into_hour = i64::from(chrono::Timelike::minute(&now)) * 60 + i64::from(chrono::Timelike::second(&now));
        (3600 - into_hour).max(1) as u64
    }

    pub(crate) async fn forget_mail_to(&self, address: &str) -> Result<(), AppError> {
        self.verifications.delivery.forget_recipient(address).await.map_err(|e| AppError::Delivery(Undeliverable::Failed(e)))?;
        Ok(())
    }

    pub fn with_verifications(mut self, delivery: Delivery, max_attempts: u32) -> Self {
        self.verifications.delivery = delivery;
        self.verifications.max_attempts = max_attempts.max(1);
        self
    }

    /// Starts a verification: sends the code (email, phone) or makes sure the
    /// consumer has a TOTP secret (google_auth), then records the verifier.
    pub async fn initiate_verification(
        &self,
        method: Method,
        request: Initiation,
        meta: &RequestContext,
    ) -> Result<Initiated, AppError> {
        let plan = self.plan(method, request)?;
        if method == Method::Phone && !self.verifications.delivery.can_text() {
            return Err(Undeliverable::NoSmsWebhook.into());
        }
        self.start(method, plan, meta).await
    }

    /// Checks a code; a wrong one is counted. Unknown, expired, deleted or already
    /// validated verifiers are not found; exhausted ones are 429 until they expire.
    /// `remove_secret` (google_auth): a right code also removes the consumer's secret.
    pub async fn validate_verification(
        &self,
        method: Method,
        verification_id: &str,
        code: &str,
        remove_secret: bool,
        meta: &RequestContext,
    ) -> Result<CodeOutcome, AppError> {
        // Read first for what the answer shows and whose TOTP secret applies; the
        // command below decides (and re-reads on a concurrent write).
        let verifier = self.store.load::<VerificationCode>(verification_id).await?;
        let secret = match (method, verifier.method()) {
            (Method::GoogleAuth, Some(Method::GoogleAuth)) => self.totp_secret(verifier.consumer()).await?,
            _ => None,
        };
        let at = Utc::now();
        let validate = |totp_secret: Option<&Vec<u8>>, last_step| VerificationCodeCommand::Validate {
            method,
            code: Secret(code.to_string()),
            totp_secret: totp_secret.map(|clear| Secret(clear.clone())),
            last_step,
            at,
        };
        let services = &self.verifications.services;
        let events = match &secret {
            // A TOTP code is good once per consumer, whichever verifier it is for: the
            // consumer's last step is read, and a right code's step recorded, in the
            // verifier's own commit.
            Some((owner, _, clear)) => {
                transact!(self.store, &[(VerificationCode::TYPE, verification_id), (TotpSecret::TYPE, owner.as_str())], meta, |unit| {
                    let last_step = unit.read::<TotpSecret>(owner).await?.last_step();
                    let (events, _) =
                        unit.decide::<VerificationCode>(verification_id, validate(Some(clear), last_step), services).await.map_err(|e| rejected(e, refused))?;
                    if let (Some(VerificationCodeEvent::VerifierValidated { .. }), Some(step)) =
                        (events.first(), crate::crypto::totp::matching_step(clear, code, at))
                    {
                        let used = TotpSecretCommand::UseCode { step, at };
                        unit.decide::<TotpSecret>(owner, used, &()).await.map_err(|e| rejected(e, |_| NOT_FOUND))?;
                    }
                    events
                })
            }
            None => self
                .store
                .execute::<VerificationCode>(verification_id, validate(None, None), services, meta)
                .await
                .map_err(|e| rejected(e, refused))?,
        };
        let mut data = VerifierData {
            verification_id: verification_id.to_string(),
            consumer: verifier.consumer().to_string(),
            expires_at: verifier.expires_at().map_or(0, |at| at.timestamp()),
            payload: verifier.payload().clone(),
            attempts: verifier.attempts(),
        };
        match events.first() {
            Some(VerificationCodeEvent::VerificationFailed { attempts, .. }) => {
                data.attempts = *attempts;
                Ok(CodeOutcome::Invalid(data))
            }
            Some(VerificationCodeEvent::VerifierValidated { .. }) => {
                if let Some((owner, stored, _)) = secret {
                    self.settle_totp_secret(&owner, &stored, remove_secret, meta).await?;
                }
                Ok(CodeOutcome::Valid(data))
            }
            _ => Err(NOT_FOUND),
        }
    }

    /// A live verifier (not validated, deleted or expired), from the read model.
    pub async fn verifier(&self, method: Method, verification_id: &str) -> Result<VerifierData, AppError> {
        let view = self
            .store
            .read_models()
            .await?
            .verifier(method.as_str(), verification_id)
            .await?
            .filter(|view| view.is_live(Utc::now().timestamp()))
            .ok_or(NOT_FOUND)?;
        Ok(VerifierData {
            verification_id: view.verification_id,
            consumer: view.consumer,
            expires_at: view.expires_at,
            payload: view.payload,
            attempts: u32::try_from(view.attempts).unwrap_or(u32::MAX),
        })
    }

    /// Invalidates a live verifier.
    pub async fn delete_verification(&self, method: Method, verification_id: &str, meta: &RequestContext) -> Result<(), AppError> {
        let command = VerificationCodeCommand::Delete { method, at: Utc::now() };
        self.store
            .execute::<VerificationCode>(verification_id, command, &self.verifications.services, meta)
            .await
            .map_err(|e| rejected(e, |_| NOT_FOUND))?;
        Ok(())
    }

    /// Creates an `email` verifier for `to` (6 digits, expires in `ttl`), delivers it with the template, returns the verification id.
    pub async fn send_email_code(
        &self,
        to: &str,
        subject: &str,
        body_template: &str,
        payload: serde_json::Value,
        ttl: chrono::Duration,
        meta: &RequestContext,
    ) -> Result<String, AppError> {
        self.send_code(Method::Email, to, Some(subject), body_template, payload, ttl, meta).await
    }

    /// Creates an `email` or `phone` verifier for `to` (6 digits, expires in `ttl`),
    /// delivers it with the template (a mail, or a text through the SMS webhook),
    /// returns the verification id.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_code(
        &self,
        method: Method,
        to: &str,
        subject: Option<&str>,
        body_template: &str,
        payload: serde_json::Value,
        ttl: chrono::Duration,
        meta: &RequestContext,
    ) -> Result<String, AppError> {
        let mut fields = Fields::default();
        fields.check(if method == Method::Phone { "phone_number" } else { "email" }, method.check_consumer(to));
        let ttl = fields.check("ttl", rules::check_ttl(ttl));
        let payload = fields.check("payload", rules::check_payload(payload));
        let (Some(ttl), Some(payload), true) = (ttl, payload, fields.is_empty()) else { return Err(fields.error()) };
        let template = Template { subject: subject.map(str::to_string), body: body_template.to_string() };
        let plan = Plan {
            verification_id: None,
            consumer: to.to_string(),
            issuer: None,
            message: Some((template, CodeChoice::Generate(CodeSpec::six_digits()).code(pick))),
            ttl,
            max_attempts: self.verifications.max_attempts,
            payload,
        };
        Ok(self.start(method, plan, meta).await?.verification_id)
    }

    /// Checks an emailed or texted code without spending it; a wrong one counts.
    pub async fn check_code(&self, method: Method, verification_id: &str, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        let command = VerificationCodeCommand::Check { method, code: Secret(code.to_string()), at: Utc::now() };
        let events = self
            .store
            .execute::<VerificationCode>(verification_id, command, &self.verifications.services, meta)
            .await
            .map_err(|e| rejected(e, refused))?;
        match events.first() {
            None => Ok(()),
            Some(_) => Err(AppError::Invalid(vec![("code".into(), "is not valid".into())])),
        }
    }

    /// Validates a code of any method; counts the attempt. Ok → the verifier (consumer, payload). Wrong code → AppError::Invalid(vec![("code", "is not valid")]) ; unknown/expired → AppError::NotFound(Missing::Verification); exhausted → AppError::TooManyAttempts{..}.
    pub async fn redeem_code(
        &self,
        method: &str,
        verification_id: &str,
        code: &str,
        meta: &RequestContext,
    ) -> Result<VerifiedCode, AppError> {
        let method = Method::parse(method).ok_or(NOT_FOUND)?;
        match self.validate_verification(method, verification_id, code, false, meta).await? {
            CodeOutcome::Valid(data) => Ok(VerifiedCode { consumer: data.consumer, payload: data.payload }),
            CodeOutcome::Invalid(_) => Err(AppError::Invalid(vec![("code".into(), "is not valid".into())])),
        }
    }

    /// Checks an initiate request field by field (JSON paths of the request body);
    /// the rules are `domain::verification_rules`.
    fn plan(&self, method: Method, request: Initiation) -> Result<Plan, AppError> {
        let mut fields = Fields::default();
        fields.check("consumer", method.check_consumer(&request.consumer));
        let issuer = fields.check("issuer", method.check_issuer(request.issuer)).flatten();
        let message = match rules::check_message(method, request.template, request.generate_code, request.forced_code) {
            Ok(message) => message.map(|(template, code)| (template, code.code(pick))),
            Err(errors) => {
                for error in errors {
                    fields.bad(message_field(error), &error.to_string());
                }
                None
            }
        };
        let ttl = fields.check("policy.expiredOn", rules::ttl_of(request.expired_on.as_deref()));
        let payload = fields.check("payload", rules::check_payload(request.payload.unwrap_or(Value::Null)));
        let max_attempts =
            fields.check("policy.maxAttempts", rules::max_attempts(request.max_attempts, self.verifications.max_attempts));
        let (Some(ttl), Some(payload), Some(max_attempts), true) = (ttl, payload, max_attempts, fields.is_empty()) else {
            return Err(fields.error());
        };
        Ok(Plan {
            verification_id: request.forced_verification_id,
            consumer: request.consumer,
            issuer,
            message,
            ttl,
            max_attempts,
            payload,
        })
    }

    async fn start(&self, method: Method, plan: Plan, meta: &RequestContext) -> Result<Initiated, AppError> {
        let verification_id = match plan.verification_id {
            Some(id) => {
                // Checked before anything is sent; the event store's key still
                // decides a race between two initiations with the same id.
                if self.store.load::<VerificationCode>(&id).await?.method().is_some() {
                    return Err(AppError::Conflict(Conflict::VerificationIdTaken));
                }
                id
            }
            None => Uuid::new_v4().to_string(),
        };
        let at = Utc::now();
        let (code_hash, totp_uri) = match (method, plan.message) {
            (Method::GoogleAuth, _) => (None, self.ensure_totp_secret(&plan.consumer, plan.issuer, meta).await?),
            (_, Some((template, code))) => {
                let fill = |text: &str| text.replace("{{{CODE}}}", &code).replace("{{{VERIFICATION_ID}}}", &verification_id);
                let body = fill(&template.body);
                let subject = fill(template.subject.as_deref().unwrap_or(DEFAULT_SUBJECT));
                self.deliver(method, &plan.consumer, &subject, &body).await?;
                (Some(self.keys.codes.hash(&code)), None)
            }
            (_, None) => return Err(AppError::Invalid(vec![("template".into(), "is required for email and phone".into())])),
        };
        let command = VerificationCodeCommand::Initiate {
            method,
            consumer: plan.consumer.clone(),
            code_hash,
            payload: plan.payload.clone(),
            expires_at: at + plan.ttl,
            max_attempts: plan.max_attempts,
            at,
        };
        self.store
            .execute::<VerificationCode>(&verification_id, command, &self.verifications.services, meta)
            .await
            .map_err(|e| {
                rejected(e, |e| match e {
                    VerificationCodeError::AlreadyInitiated => AppError::Conflict(Conflict::VerificationIdTaken),
                    other => AppError::Invalid(vec![("policy".into(), other.to_string())]),
                })
            })?;
        Ok(Initiated {
            verification_id,
            consumer: plan.consumer,
            expires_at: at + plan.ttl,
            payload: plan.payload,
            totp_uri,
        })
    }

    async fn deliver(&self, method: Method, to: &str, subject: &str, body: &str) -> Result<(), AppError> {
        let delivery = &self.verifications.delivery;
        let sent = match method {
            Method::Email => delivery.email(to, subject, body).await,
            Method::Phone => delivery.text(to, body).await,
            Method::GoogleAuth => Ok(()),
        };
        sent.map_err(|error| {
            tracing::warn!(%error, method = method.as_str(), "verification message not delivered");
            Undeliverable::Failed(error).into()
        })
    }

    /// The id of a consumer's TOTP secret aggregate: a keyed hash, never the consumer.
    fn totp_owner(&self, consumer: &str) -> String {
        self.keys.aggregate_id("totp", consumer)
    }

    /// Gives the consumer a new temporary secret unless it has a confirmed one;
    /// returns its `otpauth://` URI when it made one.
    async fn ensure_totp_secret(
        &self,
        consumer: &str,
        issuer: Option<String>,
        meta: &RequestContext,
    ) -> Result<Option<String>, AppError> {
        let owner = self.totp_owner(consumer);
        let state = self.store.load::<TotpSecret>(&owner).await?;
        if state.current().is_some_and(|secret| secret.confirmed) {
            return Ok(None);
        }
        let mut secret = vec![0u8; TOTP_SECRET_BYTES];
        OsRng.fill_bytes(&mut secret);
        let sealed_secret = URL_SAFE_NO_PAD.encode(self.keys.encrypt(&secret_context(&owner), &secret));
        let command = TotpSecretCommand::Generate { secret_id: Uuid::new_v4(), sealed_secret, at: Utc::now() };
        match self.store.execute::<TotpSecret>(&owner, command, &(), meta).await {
            // totp-rs leaves out parameters at their defaults; the reference (and
            // some apps) want them spelled out.
            Ok(_) => Ok(Some(format!(
                "{}&algorithm=SHA1&digits=6&period=30",
                crate::crypto::totp::authenticator(secret, issuer, consumer.to_string()).get_url()
            ))),
            // Confirmed in the meantime: the consumer keeps that one.
            Err(CommandError::Rejected(TotpSecretError::AlreadyConfirmed)) => Ok(None),
            Err(error) => Err(rejected(error, |_| AppError::Conflict(Conflict::IdCollision("TOTP secret")))),
        }
    }

    /// The consumer's current TOTP secret: its owner id, as stored, and opened.
    async fn totp_secret(&self, consumer: &str) -> Result<Option<(String, StoredSecret, Vec<u8>)>, AppError> {
        let owner = self.totp_owner(consumer);
        let Some(stored) = self.store.load::<TotpSecret>(&owner).await?.current().cloned() else { return Ok(None) };
        let opened = URL_SAFE_NO_PAD
            .decode(&stored.sealed_secret)
            .ok()
            .and_then(|sealed| self.keys.decrypt(&secret_context(&owner), &sealed));
        match opened {
            Some(clear) => Ok(Some((owner, stored, clear))),
            None => {
                // Sealed under another server setup: as good as no secret.
                tracing::error!(aggregate_id = %owner, "a TOTP secret does not open with this server's keys");
                Ok(None)
            }
        }
    }

    /// After a right TOTP code: a temporary secret becomes permanent, or the secret
    /// goes when the caller asked to remove it.
    async fn settle_totp_secret(
        &self,
        owner: &str,
        stored: &StoredSecret,
        remove: bool,
        meta: &RequestContext,
    ) -> Result<(), AppError> {
        let command = if remove {
            TotpSecretCommand::Remove { at: Utc::now() }
        } else if !stored.confirmed {
            TotpSecretCommand::Confirm { secret_id: stored.secret_id, at: Utc::now() }
        } else {
            return Ok(());
        };
        match self.store.execute::<TotpSecret>(owner, command, &(), meta).await {
            // Removed, confirmed or replaced meanwhile by another request: that
            // request's outcome stands.
            Ok(_) | Err(CommandError::Rejected(_)) => Ok(()),
            Err(CommandError::Store(error)) => Err(error.into()),
        }
    }
}

fn secret_context(owner: &str) -> Vec<u8> {
    [b"totp:".as_slice(), owner.as_bytes()].concat()
}

/// Why a verifier refused a code: exhausted (429 until it expires) or gone (404).
fn refused(error: VerificationCodeError) -> AppError {
    match error {
        VerificationCodeError::AttemptsExhausted { expires_at } => AppError::TooManyAttempts {
            retry_after_secs: u64::try_from((expires_at - Utc::now()).num_seconds()).unwrap_or(0).max(1),
        },
        _ => NOT_FOUND,
    }
}

/// A uniform index below `n` from the operating system's generator.
fn pick(n: usize) -> usize {
    OsRng.gen_range(0..n)
}

/// The request field a message error concerns.
fn message_field(error: MessageError) -> &'static str {
    match error {
        MessageError::MissingTemplate => "template",
        MessageError::MissingCodeSpec => "generateCode",
        MessageError::NoSymbolSet => "generateCode.symbolSet",
        MessageError::CodeLength => "generateCode.length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Policy;

    /// An app on a fresh SQLite store, mail going to `<dir>/outbox`.
    async fn app(dir: &std::path::Path, max_attempts: u32) -> App {
        std::fs::create_dir_all(dir).expect("dir");
        let db = crate::store::connect(&format!("sqlite://{}", dir.join("authd.db").display())).await.expect("store");
        let keys = Keys::load(None, dir).expect("keys");
        let policy = Policy {
            open_signup: false,
            admin_token: None,
            issuer: "authd".into(),
            audience: "authd".into(),
            access_ttl: Duration::minutes(15),
            refresh_ttl: Duration::days(30),
            session_max_age: Duration::days(30),
            elevation_max_age: Duration::minutes(5),
            sign_in_ttl: Duration::minutes(2),
            throttle: domain::throttle::ThrottlePolicy {
                threshold: 10,
                backoff: Duration::minutes(15),
                ceiling: 100,
                window: Duration::hours(1),
            },
            mfa_ticket_ttl: Duration::minutes(5),
            require_verified_email: false,
            sign_in_code_ttl: Duration::minutes(10),
            public_url: "http://localhost:8080".into(),
            allowed_redirects: vec![],
            sms_hourly_limit: 200,
        };
        let delivery = Delivery::new(None, "authd@localhost", dir.join("outbox"), None).expect("delivery");
        App::new(crate::store::Store::new(db, crate::store::shred::Kek::new(keys.subject_keys_secret())), keys, policy).with_verifications(delivery, max_attempts)
    }

    /// The code in the only outbox message to `to`, sent as `Code <code> for <id>`.
    fn sent_code(dir: &std::path::Path, to: &str, id: &str) -> String {
        let messages: Vec<String> = std::fs::read_dir(dir.join("outbox"))
            .expect("outbox")
            .flatten()
            .map(|entry| std::fs::read_to_string(entry.path()).expect("read"))
            .filter(|text| text.contains(&format!("To: {to}\n")))
            .collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        let body = messages[0].split_once("\n\n").expect("body").1.trim();
        let (code, for_id) = body.strip_prefix("Code ").and_then(|rest| rest.split_once(" for ")).expect("template");
        assert_eq!(for_id, id);
        code.to_string()
    }

    #[tokio::test]
    async fn account_flows_send_and_redeem_email_codes() {
        let dir = std::env::temp_dir().join(format!("authd-codes-{}", Uuid::new_v4().simple()));
        let app = app(&dir, 2).await;
        let meta = RequestContext::default();
        let payload = serde_json::json!({"profile_id": "p-1", "purpose": "activation"});
        let send = |to: &'static str| {
            let (app, payload, meta) = (&app, payload.clone(), &meta);
            async move {
                let template = "Code {{{CODE}}} for {{{VERIFICATION_ID}}}";
                app.send_email_code(to, "Activate", template, payload, Duration::minutes(10), meta).await
            }
        };

        let id = send("alice@example.com").await.expect("sent");
        let code = sent_code(&dir, "alice@example.com", &id);
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        let wrong = if code == "000000" { "111111" } else { "000000" };
        match app.redeem_code("email", &id, wrong, &meta).await {
            Err(AppError::Invalid(fields)) => assert_eq!(fields, [("code".to_string(), "is not valid".to_string())]),
            other => panic!("a wrong code: {other:?}"),
        }
        let redeemed = app.redeem_code("email", &id, &code, &meta).await.expect("the right code");
        assert_eq!(redeemed, VerifiedCode { consumer: "alice@example.com".into(), payload: payload.clone() });
        for (method, id) in [("email", id.as_str()), ("email", "unknown"), ("phone", id.as_str()), ("fax", id.as_str())] {
            let again = app.redeem_code(method, id, &code, &meta).await;
            assert!(matches!(again, Err(AppError::NotFound(Missing::Verification))), "{method} {id}: {again:?}");
        }

        // Two wrong codes exhaust it (this app allows two).
        let id = send("bob@example.com").await.expect("sent");
        let code = sent_code(&dir, "bob@example.com", &id);
        for _ in 0..2 {
            assert!(matches!(app.redeem_code("email", &id, wrong, &meta).await, Err(AppError::Invalid(_))));
        }
        let exhausted = app.redeem_code("email", &id, &code, &meta).await;
        assert!(matches!(exhausted, Err(AppError::TooManyAttempts { retry_after_secs: 1..=600, .. })), "{exhausted:?}");

        let refused = send("not an address").await;
        assert!(matches!(&refused, Err(AppError::Invalid(fields)) if fields[0].0 == "email"), "{refused:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn totp_codes_match_for_one_step_either_side() {
        let secret = b"12345678901234567890".to_vec();
        let at = DateTime::from_timestamp(59, 0).expect("time");
        // RFC 6238 test vector (SHA-1, T = 59 s): 94287082, last six digits.
        assert_eq!(Totp.step(&secret, "287082", at), Some(1));
        assert_eq!(Totp.step(&secret, "287082", at + Duration::seconds(30)), Some(1));
        assert_eq!(Totp.step(&secret, "287082", at + Duration::seconds(61)), None);
        assert_eq!(Totp.step(&secret, "287083", at), None);
    }
}
