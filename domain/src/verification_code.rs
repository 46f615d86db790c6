//! One verification: a code sent to a consumer (by email or phone), or a TOTP code
//! from the consumer's authenticator app (`google_auth`), checked a bounded number of
//! times before it expires. A successful validation consumes the verifier. Only a
//! keyed hash of a sent code ever enters the log; TOTP secrets live in their own
//! aggregate ([`crate::TotpSecret`]) and reach a validation through the command.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::services::{CodeVerifier, TotpVerifier};

/// How a verification reaches the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A code sent by email.
    Email,
    /// A TOTP code from an authenticator app.
    GoogleAuth,
    /// A code sent by text message.
    Phone,
}

impl Method {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "email" => Some(Method::Email),
            "google_auth" => Some(Method::GoogleAuth),
            "phone" => Some(Method::Phone),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Email => "email",
            Method::GoogleAuth => "google_auth",
            Method::Phone => "phone",
        }
    }

    /// Email and phone send a code of ours; google_auth checks the app's own.
    pub fn sends_code(self) -> bool {
        !matches!(self, Method::GoogleAuth)
    }
}

/// The characters a generated code is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSet {
    /// `0-9` (`DIGITS`).
    Digits,
    /// `a-z` (`alphas`).
    Lower,
    /// `A-Z` (`ALPHAS`).
    Upper,
}

impl SymbolSet {
    pub fn alphabet(self) -> &'static str {
        match self {
            SymbolSet::Digits => "0123456789",
            SymbolSet::Lower => "abcdefghijklmnopqrstuvwxyz",
            SymbolSet::Upper => "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        }
    }
}

/// A code of `length` characters, each drawn uniformly from the union of `sets`
/// (a set named twice counts once). `pick(n)` must return a uniformly random index
/// below `n` from a cryptographic source.
pub fn generate_code(length: usize, sets: &[SymbolSet], mut pick: impl FnMut(usize) -> usize) -> String {
    let mut alphabet: Vec<char> = Vec::new();
    for set in sets {
        for symbol in set.alphabet().chars() {
            if !alphabet.contains(&symbol) {
                alphabet.push(symbol);
            }
        }
    }
    if alphabet.is_empty() {
        return String::new();
    }
    (0..length).map(|_| alphabet[pick(alphabet.len()) % alphabet.len()]).collect()
}

/// What authd's own emailed codes are for (the account flows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurposeKind {
    /// Proves a new account's email address.
    Activate,
    /// Lets a forgotten password be replaced.
    Reset,
    /// Proves a signed-in account's new email address.
    ChangeEmail,
    /// Proves a signed-in account's new phone number (texted).
    ChangePhone,
}

impl PurposeKind {
    /// The name stored in the payload (`purpose`).
    pub fn as_str(self) -> &'static str {
        match self {
            PurposeKind::Activate => "activate",
            PurposeKind::Reset => "reset",
            PurposeKind::ChangeEmail => "change_email",
            PurposeKind::ChangePhone => "change_phone",
        }
    }

    /// How long such a code is valid: a day to activate, 15 minutes otherwise.
    pub fn ttl(self) -> Duration {
        match self {
            PurposeKind::Activate => Duration::hours(24),
            PurposeKind::Reset | PurposeKind::ChangeEmail | PurposeKind::ChangePhone => Duration::minutes(15),
        }
    }
}

/// The purpose of an emailed account code, and the account it is for. It travels
/// as the verifier's payload, `{"purpose": "activate"|"reset", "profile_id": "<uuid>"}`
/// (the shape stored verifier events carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    Activate { profile_id: Uuid },
    Reset { profile_id: Uuid },
    ChangeEmail { profile_id: Uuid },
    ChangePhone { profile_id: Uuid },
}

impl CodePurpose {
    pub fn new(kind: PurposeKind, profile_id: Uuid) -> Self {
        match kind {
            PurposeKind::Activate => CodePurpose::Activate { profile_id },
            PurposeKind::Reset => CodePurpose::Reset { profile_id },
            PurposeKind::ChangeEmail => CodePurpose::ChangeEmail { profile_id },
            PurposeKind::ChangePhone => CodePurpose::ChangePhone { profile_id },
        }
    }

    pub fn kind(&self) -> PurposeKind {
        match self {
            CodePurpose::Activate { .. } => PurposeKind::Activate,
            CodePurpose::Reset { .. } => PurposeKind::Reset,
            CodePurpose::ChangeEmail { .. } => PurposeKind::ChangeEmail,
            CodePurpose::ChangePhone { .. } => PurposeKind::ChangePhone,
        }
    }

    pub fn profile_id(&self) -> Uuid {
        match *self {
            CodePurpose::Activate { profile_id }
            | CodePurpose::Reset { profile_id }
            | CodePurpose::ChangeEmail { profile_id }
            | CodePurpose::ChangePhone { profile_id } => profile_id,
        }
    }

    /// How long the code is valid ([`PurposeKind::ttl`]).
    pub fn ttl(&self) -> Duration {
        self.kind().ttl()
    }

    /// The verifier payload.
    pub fn to_payload(&self) -> Value {
        json!({"purpose": self.kind().as_str(), "profile_id": self.profile_id()})
    }

    /// The purpose a verifier payload names; `None` for any other payload (other
    /// keys are ignored).
    pub fn from_payload(payload: &Value) -> Option<Self> {
        let kind = match payload.get("purpose")?.as_str()? {
            "activate" => PurposeKind::Activate,
            "reset" => PurposeKind::Reset,
            "change_email" => PurposeKind::ChangeEmail,
            "change_phone" => PurposeKind::ChangePhone,
            _ => return None,
        };
        let profile_id = Uuid::parse_str(payload.get("profile_id")?.as_str()?).ok()?;
        Some(Self::new(kind, profile_id))
    }

    /// The account a code of purpose `kind` is for, or why the payload is not such
    /// a code (the text shown for `verification_id`).
    pub fn expect(payload: &Value, kind: PurposeKind) -> Result<Uuid, String> {
        match Self::from_payload(payload) {
            Some(purpose) if purpose.kind() == kind => Ok(purpose.profile_id()),
            _ => Err(format!("is not a code to {} an account", kind.as_str().replace('_', " "))),
        }
    }
}

/// A value that must not show up in logs or debug output (a presented code, a TOTP
/// secret in clear).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What checks codes for the verifier.
#[derive(Clone)]
pub struct VerifierServices {
    pub codes: Arc<dyn CodeVerifier>,
    pub totp: Arc<dyn TotpVerifier>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Stage {
    #[default]
    Pending,
    Validated,
    Deleted,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerificationCode {
    method: Option<Method>,
    consumer: String,
    code_hash: Option<String>,
    payload: Value,
    expires_at: Option<DateTime<Utc>>,
    attempts: u32,
    max_attempts: u32,
    stage: Stage,
}

#[derive(Debug, Clone)]
pub enum VerificationCodeCommand {
    /// `code_hash` is the keyed hash of the sent code (email, phone); `None` for
    /// google_auth.
    Initiate {
        method: Method,
        consumer: String,
        code_hash: Option<String>,
        payload: Value,
        expires_at: DateTime<Utc>,
        max_attempts: u32,
        at: DateTime<Utc>,
    },
    /// `totp_secret` is the consumer's current TOTP secret in clear (google_auth
    /// only; `None` when the consumer has none), and `last_step` the step of the
    /// consumer's last code accepted: a code is good once per consumer.
    Validate {
        method: Method,
        code: Secret<String>,
        totp_secret: Option<Secret<Vec<u8>>>,
        last_step: Option<u64>,
        at: DateTime<Utc>,
    },
    /// Checks an email or phone code without spending it: a wrong code counts like
    /// one presented to `Validate`; the right one writes nothing and stays valid.
    Check { method: Method, code: Secret<String>, at: DateTime<Utc> },
    Delete { method: Method, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VerificationCodeEvent {
    VerifierInitiated {
        method: Method,
        consumer: String,
        /// Keyed hash of the code; never the code.
        code_hash: Option<String>,
        payload: Value,
        expires_at: DateTime<Utc>,
        max_attempts: u32,
        initiated_at: DateTime<Utc>,
    },
    /// A wrong code: `attempts` wrong codes so far.
    VerificationFailed { attempts: u32, at: DateTime<Utc> },
    /// The right code: the verifier is consumed.
    VerifierValidated { at: DateTime<Utc> },
    VerifierDeleted { at: DateTime<Utc> },
}
crate::domain_event!(VerificationCodeEvent { VerifierInitiated, VerificationFailed, VerifierValidated, VerifierDeleted });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerificationCodeError {
    #[error("verification id already used")]
    AlreadyInitiated,
    #[error("email and phone verifications need a code")]
    MissingCode,
    #[error("a verifier needs at least one attempt")]
    NoAttempts,
    #[error("a verifier must expire after it starts")]
    ExpiresTooSoon,
    /// Never initiated, initiated for another method, or deleted.
    #[error("no such verification")]
    NotFound,
    #[error("verification already validated")]
    Consumed,
    #[error("verification expired")]
    Expired,
    #[error("too many wrong codes")]
    AttemptsExhausted { expires_at: DateTime<Utc> },
    #[error("the consumer has no TOTP secret")]
    NoSecret,
}

impl VerificationCode {
    pub fn method(&self) -> Option<Method> {
        self.method
    }
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// Wrong codes so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The verifier of `method` that is neither consumed, deleted nor expired.
    fn check_live(&self, method: Method, at: DateTime<Utc>) -> Result<DateTime<Utc>, VerificationCodeError> {
        if self.method != Some(method) {
            return Err(VerificationCodeError::NotFound);
        }
        match self.stage {
            Stage::Deleted => return Err(VerificationCodeError::NotFound),
            Stage::Validated => return Err(VerificationCodeError::Consumed),
            Stage::Pending => {}
        }
        match self.expires_at {
            Some(expires_at) if at < expires_at => Ok(expires_at),
            _ => Err(VerificationCodeError::Expired),
        }
    }
}

impl crate::Subject for VerificationCode {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.payload.get("profile_id").and_then(|id| id.as_str()).and_then(|id| Uuid::parse_str(id).ok())
    }
}

impl Aggregate for VerificationCode {
    // The name the log has always known it by (events keep their aggregate type).
    const TYPE: &'static str = "verifier";
    type Command = VerificationCodeCommand;
    type Event = VerificationCodeEvent;
    type Error = VerificationCodeError;
    type Services = VerifierServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            VerificationCodeCommand::Initiate { method, consumer, code_hash, payload, expires_at, max_attempts, at } => {
                if self.method.is_some() {
                    return Err(VerificationCodeError::AlreadyInitiated);
                }
                if method.sends_code() && code_hash.is_none() {
                    return Err(VerificationCodeError::MissingCode);
                }
                if max_attempts == 0 {
                    return Err(VerificationCodeError::NoAttempts);
                }
                if expires_at <= at {
                    return Err(VerificationCodeError::ExpiresTooSoon);
                }
                VerificationCodeEvent::VerifierInitiated {
                    method,
                    consumer,
                    code_hash: code_hash.filter(|_| method.sends_code()),
                    payload,
                    expires_at,
                    max_attempts,
                    initiated_at: at,
                }
            }
            VerificationCodeCommand::Validate { method, code, totp_secret, last_step, at } => {
                let expires_at = self.check_live(method, at)?;
                if self.attempts >= self.max_attempts {
                    return Err(VerificationCodeError::AttemptsExhausted { expires_at });
                }
                let matched = if method.sends_code() {
                    self.code_hash.as_deref().is_some_and(|hash| services.codes.matches(hash, &code.0))
                } else {
                    let secret = totp_secret.ok_or(VerificationCodeError::NoSecret)?;
                    let step = services.totp.step(&secret.0, &code.0, at);
                    step.is_some_and(|step| last_step.is_none_or(|last| step > last))
                };
                if matched {
                    VerificationCodeEvent::VerifierValidated { at }
                } else {
                    VerificationCodeEvent::VerificationFailed { attempts: self.attempts + 1, at }
                }
            }
            VerificationCodeCommand::Check { method, code, at } => {
                let expires_at = self.check_live(method, at)?;
                if !method.sends_code() {
                    return Err(VerificationCodeError::NotFound);
                }
                if self.attempts >= self.max_attempts {
                    return Err(VerificationCodeError::AttemptsExhausted { expires_at });
                }
                if self.code_hash.as_deref().is_some_and(|hash| services.codes.matches(hash, &code.0)) {
                    return Ok(());
                }
                VerificationCodeEvent::VerificationFailed { attempts: self.attempts + 1, at }
            }
            VerificationCodeCommand::Delete { method, at } => {
                self.check_live(method, at)?;
                VerificationCodeEvent::VerifierDeleted { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            VerificationCodeEvent::VerifierInitiated { method, consumer, code_hash, payload, expires_at, max_attempts, .. } => {
                self.method = Some(method);
                self.consumer = consumer;
                self.code_hash = code_hash;
                self.payload = payload;
                self.expires_at = Some(expires_at);
                self.max_attempts = max_attempts;
            }
            VerificationCodeEvent::VerificationFailed { attempts, .. } => self.attempts = attempts,
            VerificationCodeEvent::VerifierValidated { .. } => self.stage = Stage::Validated,
            VerificationCodeEvent::VerifierDeleted { .. } => self.stage = Stage::Deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;
    use VerificationCodeCommand::*;
    use VerificationCodeEvent::*;

    /// The hash of a code is `hash:` + the code.
    struct Codes;
    impl CodeVerifier for Codes {
        fn matches(&self, code_hash: &str, code: &str) -> bool {
            code_hash == format!("hash:{code}")
        }
    }

    /// Accepts `123456` for the secret `s3cret` at any time.
    struct Totp;
    impl TotpVerifier for Totp {
        fn step(&self, secret: &[u8], code: &str, _: DateTime<Utc>) -> Option<u64> {
            (secret == b"s3cret" && code == "123456").then_some(100)
        }
    }

    fn framework() -> TestFramework<VerificationCode> {
        TestFramework::with(VerifierServices { codes: Arc::new(Codes), totp: Arc::new(Totp) })
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn initiated(method: Method) -> VerificationCodeEvent {
        VerifierInitiated {
            method,
            consumer: "alice@example.com".into(),
            code_hash: method.sends_code().then(|| "hash:4711".into()),
            payload: json!({"your": "payload"}),
            expires_at: t0() + Duration::hours(1),
            max_attempts: 3,
            initiated_at: t0(),
        }
    }

    fn initiate(method: Method, code_hash: Option<&str>) -> VerificationCodeCommand {
        Initiate {
            method,
            consumer: "alice@example.com".into(),
            code_hash: code_hash.map(String::from),
            payload: json!({"your": "payload"}),
            expires_at: t0() + Duration::hours(1),
            max_attempts: 3,
            at: t0(),
        }
    }

    fn validate(method: Method, code: &str, after: Duration) -> VerificationCodeCommand {
        Validate { method, code: Secret(code.into()), totp_secret: None, last_step: None, at: t0() + after }
    }

    fn validate_totp(code: &str, secret: Option<&[u8]>) -> VerificationCodeCommand {
        validate_totp_after(code, secret, None)
    }

    fn validate_totp_after(code: &str, secret: Option<&[u8]>, last_step: Option<u64>) -> VerificationCodeCommand {
        Validate {
            method: Method::GoogleAuth,
            code: Secret(code.into()),
            totp_secret: secret.map(|s| Secret(s.to_vec())),
            last_step,
            at: t0() + Duration::minutes(1),
        }
    }

    fn failed(attempts: u32) -> VerificationCodeEvent {
        VerificationFailed { attempts, at: t0() }
    }

    #[test]
    fn codes_are_drawn_from_the_named_sets_only() {
        let mut next = 0;
        let code = generate_code(40, &[SymbolSet::Digits, SymbolSet::Upper, SymbolSet::Digits], |n| {
            next += 7;
            next % n
        });
        assert_eq!(code.chars().count(), 40);
        assert!(code.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()), "{code}");
        assert!(code.chars().any(|c| c.is_ascii_uppercase()) && code.chars().any(|c| c.is_ascii_digit()));
        assert_eq!(generate_code(6, &[SymbolSet::Lower], |_| 0), "aaaaaa");
        assert_eq!(generate_code(6, &[SymbolSet::Lower], |n| n - 1), "zzzzzz");
        assert_eq!(generate_code(6, &[], |_| 0), "");
    }

    #[test]
    fn code_purposes_keep_the_stored_payload_shape() {
        let profile_id = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").expect("uuid");
        let activate = CodePurpose::Activate { profile_id };
        let reset = CodePurpose::Reset { profile_id };
        // Exactly what the account flows stored before: `json!({"purpose": …, "profile_id": …})`.
        assert_eq!(activate.to_payload(), json!({"purpose": "activate", "profile_id": profile_id}));
        assert_eq!(reset.to_payload(), json!({"purpose": "reset", "profile_id": profile_id}));
        assert_eq!(
            reset.to_payload().to_string(),
            r#"{"profile_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","purpose":"reset"}"#
        );
        for purpose in [activate, reset] {
            assert_eq!(CodePurpose::from_payload(&purpose.to_payload()), Some(purpose));
            assert_eq!(CodePurpose::new(purpose.kind(), purpose.profile_id()), purpose);
        }
        // As read from a stored event, other keys alongside.
        let stored = json!({"profile_id": "67e55044-10b1-426f-9247-bb680e5fe0c8", "purpose": "activate", "extra": 1});
        assert_eq!(CodePurpose::from_payload(&stored), Some(activate));
    }

    #[test]
    fn other_payloads_name_no_purpose() {
        let id = Uuid::new_v4();
        for payload in [
            Value::Null,
            json!({}),
            json!({"purpose": "activation", "profile_id": id}),
            json!({"purpose": "activate"}),
            json!({"profile_id": id}),
            json!({"purpose": "reset", "profile_id": "not-a-uuid"}),
            json!({"purpose": "reset", "profile_id": 7}),
            json!({"purpose": ["reset"], "profile_id": id}),
            json!(["reset", id]),
        ] {
            assert_eq!(CodePurpose::from_payload(&payload), None, "{payload}");
        }
    }

    #[test]
    fn a_code_serves_only_its_own_purpose() {
        let profile_id = Uuid::new_v4();
        let reset = CodePurpose::Reset { profile_id }.to_payload();
        assert_eq!(CodePurpose::expect(&reset, PurposeKind::Reset), Ok(profile_id));
        assert_eq!(CodePurpose::expect(&reset, PurposeKind::Activate), Err("is not a code to activate an account".into()));
        assert_eq!(CodePurpose::expect(&json!({"your": "payload"}), PurposeKind::Reset), Err("is not a code to reset an account".into()));
    }

    #[test]
    fn account_codes_live_a_day_to_activate_and_minutes_to_reset() {
        assert_eq!(CodePurpose::Activate { profile_id: Uuid::nil() }.ttl(), Duration::hours(24));
        assert_eq!(CodePurpose::Reset { profile_id: Uuid::nil() }.ttl(), Duration::minutes(15));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let command = validate(Method::Email, "4711", Duration::zero());
        assert!(!format!("{command:?}").contains("4711"));
    }

    fn check(code: &str) -> VerificationCodeCommand {
        Check { method: Method::Email, code: Secret(code.into()), at: t0() + Duration::minutes(1) }
    }

    #[tokio::test]
    async fn checking_the_right_code_writes_nothing_and_keeps_it_valid() {
        framework().given(vec![initiated(Method::Email)]).when_async(check("4711")).await.then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn checking_a_wrong_code_counts_it() {
        framework()
            .given(vec![initiated(Method::Email), failed(1)])
            .when_async(check("0000"))
            .await
            .then_expect_events(vec![VerificationFailed { attempts: 2, at: t0() + Duration::minutes(1) }]);
    }

    #[tokio::test]
    async fn checking_past_the_attempts_is_refused_even_with_the_right_code() {
        framework()
            .given(vec![initiated(Method::Email), failed(1), failed(2), failed(3)])
            .when_async(check("4711"))
            .await
            .then_expect_error(VerificationCodeError::AttemptsExhausted { expires_at: t0() + Duration::hours(1) });
    }

    #[tokio::test]
    async fn checking_a_spent_or_totp_verifier_is_refused() {
        framework()
            .given(vec![initiated(Method::Email), VerifierValidated { at: t0() }])
            .when_async(check("4711"))
            .await
            .then_expect_error(VerificationCodeError::Consumed);
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(Check { method: Method::GoogleAuth, code: Secret("123456".into()), at: t0() })
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }

    #[tokio::test]
    async fn initiating_an_email_verification() {
        framework()
            .given_no_previous_events()
            .when_async(initiate(Method::Email, Some("hash:4711")))
            .await
            .then_expect_events(vec![initiated(Method::Email)]);
    }

    #[tokio::test]
    async fn initiating_a_google_auth_verification_keeps_no_code() {
        framework()
            .given_no_previous_events()
            .when_async(initiate(Method::GoogleAuth, Some("hash:ignored")))
            .await
            .then_expect_events(vec![initiated(Method::GoogleAuth)]);
    }

    #[tokio::test]
    async fn initiating_a_used_id_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email)])
            .when_async(initiate(Method::Email, Some("hash:1")))
            .await
            .then_expect_error(VerificationCodeError::AlreadyInitiated);
    }

    #[tokio::test]
    async fn initiating_email_or_phone_without_a_code_is_rejected() {
        for method in [Method::Email, Method::Phone] {
            framework()
                .given_no_previous_events()
                .when_async(initiate(method, None))
                .await
                .then_expect_error(VerificationCodeError::MissingCode);
        }
    }

    #[tokio::test]
    async fn initiating_without_attempts_is_rejected() {
        let Initiate { method, consumer, code_hash, payload, expires_at, at, .. } = initiate(Method::Email, Some("h"))
        else {
            unreachable!()
        };
        framework()
            .given_no_previous_events()
            .when_async(Initiate { method, consumer, code_hash, payload, expires_at, max_attempts: 0, at })
            .await
            .then_expect_error(VerificationCodeError::NoAttempts);
    }

    #[tokio::test]
    async fn initiating_an_already_expired_verifier_is_rejected() {
        let Initiate { method, consumer, code_hash, payload, max_attempts, at, .. } = initiate(Method::Email, Some("h"))
        else {
            unreachable!()
        };
        framework()
            .given_no_previous_events()
            .when_async(Initiate { method, consumer, code_hash, payload, expires_at: at, max_attempts, at })
            .await
            .then_expect_error(VerificationCodeError::ExpiresTooSoon);
    }

    #[tokio::test]
    async fn the_right_code_validates() {
        framework()
            .given(vec![initiated(Method::Email), failed(1)])
            .when_async(validate(Method::Email, "4711", Duration::minutes(5)))
            .await
            .then_expect_events(vec![VerifierValidated { at: t0() + Duration::minutes(5) }]);
    }

    #[tokio::test]
    async fn a_wrong_code_counts_an_attempt() {
        framework()
            .given(vec![initiated(Method::Phone), failed(1)])
            .when_async(validate(Method::Phone, "0000", Duration::zero()))
            .await
            .then_expect_events(vec![failed(2)]);
    }

    #[tokio::test]
    async fn once_attempts_are_exhausted_even_the_right_code_is_refused() {
        framework()
            .given(vec![initiated(Method::Email), failed(1), failed(2), failed(3)])
            .when_async(validate(Method::Email, "4711", Duration::zero()))
            .await
            .then_expect_error(VerificationCodeError::AttemptsExhausted { expires_at: t0() + Duration::hours(1) });
    }

    #[tokio::test]
    async fn validating_after_expiry_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email)])
            .when_async(validate(Method::Email, "4711", Duration::hours(1)))
            .await
            .then_expect_error(VerificationCodeError::Expired);
    }

    #[tokio::test]
    async fn validating_twice_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email), VerifierValidated { at: t0() }])
            .when_async(validate(Method::Email, "4711", Duration::zero()))
            .await
            .then_expect_error(VerificationCodeError::Consumed);
    }

    #[tokio::test]
    async fn validating_an_unknown_verifier_is_rejected() {
        framework()
            .given_no_previous_events()
            .when_async(validate(Method::Email, "4711", Duration::zero()))
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }

    #[tokio::test]
    async fn validating_with_another_method_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email)])
            .when_async(validate(Method::Phone, "4711", Duration::zero()))
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }

    #[tokio::test]
    async fn validating_a_deleted_verifier_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email), VerifierDeleted { at: t0() }])
            .when_async(validate(Method::Email, "4711", Duration::zero()))
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }

    #[tokio::test]
    async fn a_current_totp_code_validates() {
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(validate_totp("123456", Some(b"s3cret")))
            .await
            .then_expect_events(vec![VerifierValidated { at: t0() + Duration::minutes(1) }]);
    }

    #[tokio::test]
    async fn a_wrong_totp_code_counts_an_attempt() {
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(validate_totp("654321", Some(b"s3cret")))
            .await
            .then_expect_events(vec![VerificationFailed { attempts: 1, at: t0() + Duration::minutes(1) }]);
    }

    #[tokio::test]
    async fn a_totp_code_the_consumer_already_used_counts_as_wrong() {
        let replayed = validate_totp_after("123456", Some(b"s3cret"), Some(100));
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(replayed)
            .await
            .then_expect_events(vec![VerificationFailed { attempts: 1, at: t0() + Duration::minutes(1) }]);
        let next = validate_totp_after("123456", Some(b"s3cret"), Some(99));
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(next)
            .await
            .then_expect_events(vec![VerifierValidated { at: t0() + Duration::minutes(1) }]);
    }

    #[tokio::test]
    async fn a_totp_code_without_a_secret_is_rejected() {
        framework()
            .given(vec![initiated(Method::GoogleAuth)])
            .when_async(validate_totp("123456", None))
            .await
            .then_expect_error(VerificationCodeError::NoSecret);
    }

    #[tokio::test]
    async fn deleting_a_live_verifier() {
        framework()
            .given(vec![initiated(Method::Phone), failed(1)])
            .when_async(Delete { method: Method::Phone, at: t0() })
            .await
            .then_expect_events(vec![VerifierDeleted { at: t0() }]);
    }

    #[tokio::test]
    async fn deleting_twice_is_rejected() {
        framework()
            .given(vec![initiated(Method::Phone), VerifierDeleted { at: t0() }])
            .when_async(Delete { method: Method::Phone, at: t0() })
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }

    #[tokio::test]
    async fn deleting_an_expired_verifier_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email)])
            .when_async(Delete { method: Method::Email, at: t0() + Duration::hours(2) })
            .await
            .then_expect_error(VerificationCodeError::Expired);
    }

    #[tokio::test]
    async fn deleting_a_validated_verifier_is_rejected() {
        framework()
            .given(vec![initiated(Method::Email), VerifierValidated { at: t0() }])
            .when_async(Delete { method: Method::Email, at: t0() })
            .await
            .then_expect_error(VerificationCodeError::Consumed);
    }

    #[tokio::test]
    async fn deleting_an_unknown_verifier_is_rejected() {
        framework()
            .given_no_previous_events()
            .when_async(Delete { method: Method::Email, at: t0() })
            .await
            .then_expect_error(VerificationCodeError::NotFound);
    }
}
