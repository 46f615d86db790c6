//! The value rules of a verification request (reference 004): what each method's
//! consumer looks like, the `HH:MM:SS` lifetime, the payload, the message and code of
//! email and phone verifications, and the attempt limit.
//!
//! Each check answers with the text the API shows for the offending field
//! (`Err(String)`, like [`crate::username::normalize`]); the caller only attaches the
//! field's path. The field each rule concerns is named in its documentation.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use chrono::Duration;
use email_address::EmailAddress;
use serde_json::Value;

use crate::verification_code::{generate_code, Method, SymbolSet};

/// Lifetime of a verifier whose policy names none.
pub const DEFAULT_TTL: Duration = Duration::hours(1);
/// Wrong codes a verifier takes when the server configures no other maximum.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The payload comes back untouched, so it is kept in the log: keep it small.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Characters in a generated code. (The API schema states the same bounds,
/// `generateCode.length` 4 to 128, and answers first over HTTP.)
pub const CODE_LENGTH: RangeInclusive<usize> = 4..=128;
/// Digits in an E.164 phone number, after the `+`.
pub const E164_DIGITS: RangeInclusive<usize> = 7..=15;

const NOT_AN_EMAIL: &str = "must be an email address";
const NOT_E164: &str = "must be a phone number in E.164 form (+ and 7 to 15 digits)";
const NO_COLON: &str = "must not contain ':' (it labels the secret in authenticator apps)";

impl Method {
    /// The consumer must be something the method can reach: an email address
    /// (`email`), an E.164 phone number (`phone`), an authenticator label without
    /// `:` (`google_auth`). Field: `consumer` (`email` for the account flows).
    pub fn check_consumer(self, consumer: &str) -> Result<(), String> {
        match self {
            Method::Email if !is_email_address(consumer) => Err(NOT_AN_EMAIL.into()),
            Method::Phone if !is_e164(consumer) => Err(NOT_E164.into()),
            Method::GoogleAuth if consumer.contains(':') => Err(NO_COLON.into()),
            _ => Ok(()),
        }
    }

    /// The issuer authenticator apps show: an empty one is none, and for
    /// `google_auth` it must not contain `:` (it labels the secret). Other methods
    /// keep it unchecked (they do not use it). Field: `issuer`.
    pub fn check_issuer(self, issuer: Option<String>) -> Result<Option<String>, String> {
        match issuer.filter(|issuer| !issuer.is_empty()) {
            Some(issuer) if self == Method::GoogleAuth && issuer.contains(':') => Err(NO_COLON.into()),
            issuer => Ok(issuer),
        }
    }
}

/// An email address as the mail transport accepts it: a valid local part, `@`
/// (the last one), and a domain name (internationalised names too, by their ASCII
/// form) or an IP address, bracketed or not. The same test as `lettre::Address`.
pub fn is_email_address(text: &str) -> bool {
    let Some((user, domain)) = text.rsplit_once('@') else { return false };
    EmailAddress::is_valid_local_part(user) && is_mail_domain(domain)
}

fn is_mail_domain(domain: &str) -> bool {
    is_ascii_mail_domain(domain) || idna::domain_to_ascii(domain).is_ok_and(|ascii| is_ascii_mail_domain(&ascii))
}

fn is_ascii_mail_domain(domain: &str) -> bool {
    if EmailAddress::is_valid_domain(domain) {
        return true;
    }
    let ip = domain.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(domain);
    ip.parse::<IpAddr>().is_ok()
}

/// A phone number in E.164 form: `+`, then 7 to 15 digits, the first not `0`.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        E164_DIGITS.contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
    })
}

/// `HH:MM:SS` (two digits each, minutes and seconds below 60) as a positive
/// duration. Field: `policy.expiredOn`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let numbers: Option<Vec<i64>> = parts
        .iter()
        .map(|part| (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse().ok()).flatten())
        .collect();
    match numbers.as_deref() {
        Some([hours, minutes, seconds]) if *minutes < 60 && *seconds < 60 => {
            let total = hours * 3600 + minutes * 60 + seconds;
            if total > 0 {
                Ok(Duration::seconds(total))
            } else {
                Err("must be longer than 00:00:00".into())
            }
        }
        _ => Err("must be HH:MM:SS".into()),
    }
}

/// A verifier's lifetime: the policy's `HH:MM:SS`, or [`DEFAULT_TTL`] when it names
/// none. Field: `policy.expiredOn`.
pub fn ttl_of(expired_on: Option<&str>) -> Result<Duration, String> {
    expired_on.map_or(Ok(DEFAULT_TTL), parse_ttl)
}

/// A lifetime given as a duration must be positive. Field: `ttl`.
pub fn check_ttl(ttl: Duration) -> Result<Duration, String> {
    if ttl > Duration::zero() {
        Ok(ttl)
    } else {
        Err("must be positive".into())
    }
}

/// A JSON object (or nothing, `null`) of at most [`MAX_PAYLOAD_BYTES`] as JSON.
/// Field: `payload`.
pub fn check_payload(payload: Value) -> Result<Value, String> {
    match &payload {
        Value::Null => Ok(payload),
        Value::Object(_) if payload.to_string().len() <= MAX_PAYLOAD_BYTES => Ok(payload),
        Value::Object(_) => Err(format!("must be at most {MAX_PAYLOAD_BYTES} bytes as JSON")),
        _ => Err("must be an object".into()),
    }
}

/// The most wrong codes a verifier takes: the request's value (at least 1), lowered
/// to the server's maximum, or the server's maximum when the request names none.
/// The server's maximum is at least 1. Field: `policy.maxAttempts`.
pub fn max_attempts(requested: Option<u32>, server_max: u32) -> Result<u32, String> {
    let server_max = server_max.max(1);
    match requested {
        Some(0) => Err("must be at least 1".into()),
        Some(wanted) => Ok(wanted.min(server_max)),
        None => Ok(server_max),
    }
}

/// How to make a code: its length and the symbol sets its characters are drawn
/// from (uniformly over their union).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSpec {
    pub length: usize,
    pub symbol_sets: Vec<SymbolSet>,
}

impl CodeSpec {
    /// Six digits: the codes of authd's own account messages.
    pub fn six_digits() -> Self {
        Self { length: 6, symbol_sets: vec![SymbolSet::Digits] }
    }

    /// At least one symbol set, and a length within [`CODE_LENGTH`].
    pub fn check(&self) -> Result<(), MessageError> {
        if self.symbol_sets.is_empty() {
            return Err(MessageError::NoSymbolSet);
        }
        if !CODE_LENGTH.contains(&self.length) {
            return Err(MessageError::CodeLength);
        }
        Ok(())
    }
}

/// The code an email or phone verification sends.
#[derive(Clone, PartialEq, Eq)]
pub enum CodeChoice {
    /// `policy.forcedCode`: sent as given.
    Forced(String),
    /// A code generated to this spec.
    Generate(CodeSpec),
}

impl std::fmt::Debug for CodeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeChoice::Forced(_) => f.write_str("Forced(***)"),
            CodeChoice::Generate(spec) => f.debug_tuple("Generate").field(spec).finish(),
        }
    }
}

impl CodeChoice {
    /// The code in clear. `pick(n)` must return a uniformly random index below `n`
    /// from a cryptographic source (see [`generate_code`]).
    pub fn code(self, pick: impl FnMut(usize) -> usize) -> String {
        match self {
            CodeChoice::Forced(code) => code,
            CodeChoice::Generate(spec) => generate_code(spec.length, &spec.symbol_sets, pick),
        }
    }
}

/// What is wrong with the message of an email or phone verification. Each variant
/// names the request field it concerns; its text is what the API shows there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Field `template`.
    #[error("is required for email and phone")]
    MissingTemplate,
    /// Field `generateCode`.
    #[error("is required for email and phone")]
    MissingCodeSpec,
    /// Field `generateCode.symbolSet`.
    #[error("must name at least one symbol set")]
    NoSymbolSet,
    /// Field `generateCode.length` (the API schema rejects such lengths first).
    #[error("must be 4 to 128 characters")]
    CodeLength,
}

/// The message of a verification: email and phone need a template and a code spec;
/// a forced code, when given, is sent instead of a generated one (the spec is then
/// not checked). `google_auth` sends nothing: `Ok(None)`, whatever was given.
/// Every violation is reported, `template` first.
pub fn check_message<T>(
    method: Method,
    template: Option<T>,
    spec: Option<CodeSpec>,
    forced_code: Option<String>,
) -> Result<Option<(T, CodeChoice)>, Vec<MessageError>> {
    if !method.sends_code() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    if template.is_none() {
        errors.push(MessageError::MissingTemplate);
    }
    let code = match (spec, forced_code) {
        (None, _) => Err(MessageError::MissingCodeSpec),
        (Some(_), Some(forced)) => Ok(CodeChoice::Forced(forced)),
        (Some(spec), None) => spec.check().map(|()| CodeChoice::Generate(spec)),
    };
    match (template, code) {
        (Some(template), Ok(code)) => Ok(Some((template, code))),
        (_, code) => {
            errors.extend(code.err());
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLON: &str = "must not contain ':' (it labels the secret in authenticator apps)";

    fn digits(length: usize) -> CodeSpec {
        CodeSpec { length, symbol_sets: vec![SymbolSet::Digits] }
    }

    #[test]
    fn consumers_are_what_the_method_reaches() {
        assert_eq!(Method::Email.check_consumer("alice@example.com"), Ok(()));
        assert_eq!(Method::Email.check_consumer("not an address"), Err("must be an email address".into()));
        assert_eq!(Method::Phone.check_consumer("+4915112345678"), Ok(()));
        assert_eq!(
            Method::Phone.check_consumer("alice@example.com"),
            Err("must be a phone number in E.164 form (+ and 7 to 15 digits)".into())
        );
        assert_eq!(Method::GoogleAuth.check_consumer("alice@example.com"), Ok(()));
        assert_eq!(Method::GoogleAuth.check_consumer("authd:alice"), Err(COLON.into()));
        // A method checks only its own kind of consumer.
        assert_eq!(Method::GoogleAuth.check_consumer("anything at all"), Ok(()));
        assert!(Method::Email.check_consumer("+4915112345678").is_err());
    }

    #[test]
    fn email_addresses_are_what_the_mail_transport_takes() {
        for good in [
            "alice@example.com",
            "a.b+tag@sub.example.co.uk",
            "\"quoted local\"@example.com",
            "x@localhost",
            "x@1.1.1.1",
            "x@[2606:4700:4700::1111]",
            "jörg@bücher.example",
        ] {
            assert!(is_email_address(good), "{good}");
        }
        for bad in ["", "alice", "@example.com", "alice@", "alice@exa mple.com", "al ice@example.com", "alice@-example.com", "a@b@example.com"] {
            assert!(!is_email_address(bad), "{bad}");
        }
    }

    #[test]
    fn phone_numbers_are_e164() {
        assert!(is_e164("+4915112345678") && is_e164("+1555010") && is_e164("+123456789012345"));
        for bad in ["4915112345678", "+0151123", "+12", "+123456", "+1234567890123456", "+49 151 1234", "+", ""] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn issuers_are_optional_and_colon_free_for_google_auth() {
        assert_eq!(Method::GoogleAuth.check_issuer(None), Ok(None));
        assert_eq!(Method::GoogleAuth.check_issuer(Some(String::new())), Ok(None));
        assert_eq!(Method::GoogleAuth.check_issuer(Some("authd".into())), Ok(Some("authd".into())));
        assert_eq!(Method::GoogleAuth.check_issuer(Some("a:b".into())), Err(COLON.into()));
        assert_eq!(Method::Email.check_issuer(Some("a:b".into())), Ok(Some("a:b".into())));
        assert_eq!(Method::Phone.check_issuer(Some(String::new())), Ok(None));
    }

    #[test]
    fn durations_are_hh_mm_ss_and_positive() {
        assert_eq!(parse_ttl("01:00:00"), Ok(Duration::hours(1)));
        assert_eq!(parse_ttl("00:00:01"), Ok(Duration::seconds(1)));
        assert_eq!(parse_ttl("99:59:59"), Ok(Duration::seconds(99 * 3600 + 59 * 60 + 59)));
        assert_eq!(parse_ttl("00:00:00"), Err("must be longer than 00:00:00".into()));
        for bad in ["1:00:00", "00:60:00", "00:00:60", "aa:bb:cc", "01:00", "", "+1:00:00", "01:00:00:00", "-1:00:00"] {
            assert_eq!(parse_ttl(bad), Err("must be HH:MM:SS".into()), "{bad}");
        }
    }

    #[test]
    fn a_missing_lifetime_is_one_hour() {
        assert_eq!(ttl_of(None), Ok(Duration::hours(1)));
        assert_eq!(ttl_of(Some("00:10:00")), Ok(Duration::minutes(10)));
        assert_eq!(ttl_of(Some("soon")), Err("must be HH:MM:SS".into()));
    }

    #[test]
    fn given_lifetimes_are_positive() {
        assert_eq!(check_ttl(Duration::minutes(15)), Ok(Duration::minutes(15)));
        assert_eq!(check_ttl(Duration::zero()), Err("must be positive".into()));
        assert_eq!(check_ttl(Duration::seconds(-1)), Err("must be positive".into()));
    }

    #[test]
    fn payloads_are_small_objects() {
        assert_eq!(check_payload(json!({"a": 1})), Ok(json!({"a": 1})));
        assert_eq!(check_payload(Value::Null), Ok(Value::Null));
        for bad in [json!([1]), json!("text"), json!(1), json!(true)] {
            assert_eq!(check_payload(bad.clone()), Err("must be an object".into()), "{bad}");
        }
        // The limit counts the JSON text: `{"a":"…"}` is 8 bytes around the string.
        let fits = json!({"a": "x".repeat(MAX_PAYLOAD_BYTES - 8)});
        assert_eq!(fits.to_string().len(), MAX_PAYLOAD_BYTES);
        assert!(check_payload(fits).is_ok());
        assert_eq!(
            check_payload(json!({"a": "x".repeat(MAX_PAYLOAD_BYTES - 7)})),
            Err("must be at most 16384 bytes as JSON".into())
        );
    }

    #[test]
    fn attempts_are_at_least_one_and_at_most_the_servers() {
        assert_eq!(max_attempts(None, 5), Ok(5));
        assert_eq!(max_attempts(Some(3), 5), Ok(3));
        assert_eq!(max_attempts(Some(50), 5), Ok(5));
        assert_eq!(max_attempts(Some(0), 5), Err("must be at least 1".into()));
        assert_eq!(max_attempts(None, 0), Ok(1));
        assert_eq!(max_attempts(Some(7), 0), Ok(1));
    }

    #[test]
    fn code_specs_name_a_symbol_set_and_a_sane_length() {
        assert_eq!(CodeSpec::six_digits().check(), Ok(()));
        assert_eq!(digits(4).check(), Ok(()));
        assert_eq!(digits(128).check(), Ok(()));
        assert_eq!(digits(3).check(), Err(MessageError::CodeLength));
        assert_eq!(digits(129).check(), Err(MessageError::CodeLength));
        assert_eq!(CodeSpec { length: 6, symbol_sets: vec![] }.check(), Err(MessageError::NoSymbolSet));
        assert_eq!(MessageError::NoSymbolSet.to_string(), "must name at least one symbol set");
    }

    #[test]
    fn email_and_phone_need_a_template_and_a_code() {
        for method in [Method::Email, Method::Phone] {
            let planned = check_message(method, Some("body"), Some(digits(6)), None);
            assert_eq!(planned, Ok(Some(("body", CodeChoice::Generate(digits(6))))));
            assert_eq!(
                check_message::<&str>(method, None, None, None),
                Err(vec![MessageError::MissingTemplate, MessageError::MissingCodeSpec])
            );
            assert_eq!(check_message(method, Some("body"), None, Some("4711".into())), Err(vec![MessageError::MissingCodeSpec]));
            assert_eq!(
                check_message::<&str>(method, None, Some(CodeSpec { length: 6, symbol_sets: vec![] }), None),
                Err(vec![MessageError::MissingTemplate, MessageError::NoSymbolSet])
            );
        }
        assert_eq!(MessageError::MissingTemplate.to_string(), "is required for email and phone");
        assert_eq!(MessageError::MissingCodeSpec.to_string(), "is required for email and phone");
    }

    #[test]
    fn a_forced_code_is_sent_as_given_whatever_the_spec() {
        let empty = CodeSpec { length: 1, symbol_sets: vec![] };
        let planned = check_message(Method::Email, Some("body"), Some(empty), Some("4711".into()));
        let Ok(Some(("body", choice))) = planned else { panic!("{planned:?}") };
        assert_eq!(choice, CodeChoice::Forced("4711".into()));
        assert!(!format!("{choice:?}").contains("4711"));
        assert_eq!(choice.code(|_| unreachable!()), "4711");
    }

    #[test]
    fn generated_codes_follow_the_spec() {
        assert_eq!(CodeChoice::Generate(CodeSpec::six_digits()).code(|_| 7), "777777");
    }

    #[test]
    fn google_auth_sends_no_message() {
        assert_eq!(check_message::<&str>(Method::GoogleAuth, None, None, None), Ok(None));
        assert_eq!(check_message(Method::GoogleAuth, Some("body"), Some(digits(6)), None), Ok(None));
    }
}
