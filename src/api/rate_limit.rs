//! Per-address and per-session rate limits (governor). Over a limit the answer is 429
//! with `Retry-After`. The counters live in each replica's memory: a limit is per
//! replica, and a restart forgets it — acceptable for rate limiting, which guards
//! nothing that must survive (the durable rules — throttled proofs, one mail a
//! minute, the SMS budget — live in aggregates).
//!
//! Three limits, each configured on its own (`off` in `AUTHD_RATE_LIMIT` turns all
//! three off, for load tests and benchmarks):
//! - **Secret-guessing routes** — sign-in (all steps), sign-up, password recovery,
//!   code validation — per client address and kind of route (`AUTHD_RATE_LIMIT`,
//!   default 60 a minute).
//! - **Every other route that writes** (any method but GET, HEAD and OPTIONS) per
//!   client address (`AUTHD_WRITE_RATE_LIMIT`, default 120 a minute).
//! - **Every route that writes, per session** when it carries `Authorization: Bearer
//!   <access token>` (`AUTHD_SESSION_RATE_LIMIT`, default 30 a minute): keyed by the
//!   token's `sid` claim, read from its payload unverified (the route checks the token
//!   anyway; a forged `sid` buys no more than the per-address limit allows), or by a
//!   hash of the token when it has none.
//!
//! Not limited: admin-token routes (the admin is trusted, and tooling fills buckets
//! in bulk), health and spec routes, and token checks that write nothing
//! (`POST /v1/sign/in/verify`, which resource servers call on every request).

use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::ApiError;

/// `AUTHD_RATE_LIMIT`: `off`, `on`, `<n>/min` or `<n>/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitSetting {
    Off,
    PerMinute(NonZeroU32),
    PerSecond(NonZeroU32),
}

impl FromStr for RateLimitSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let count = |n: &str| n.trim().parse::<NonZeroU32>().map_err(|_| format!("bad count in {text:?}"));
        match text.trim() {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::PerMinute(NonZeroU32::MIN.saturating_add(59))),
            other => match other.split_once('/') {
                Some((n, "min")) => Ok(Self::PerMinute(count(n)?)),
                Some((n, "s")) => Ok(Self::PerSecond(count(n)?)),
                _ => Err(format!("expected off, on, <n>/min or <n>/s, got {text:?}")),
            },
        }
    }
}

/// What a request is limited as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    SignIn,
    SignUp,
    Recovery,
    Validation,
}

fn kind(path: &str) -> Option<Kind> {
    if path == "/v1/sign/in/verify" {
        None
    } else if path == "/v1/sign/in/anonymous" {
        // It creates an account, as a sign-up does.
        Some(Kind::SignUp)
    } else if path.starts_with("/v1/sign/in") || path.starts_with("/v1/step/") || path.starts_with("/v1/elevate/") {
        Some(Kind::SignIn)
    } else if path.starts_with("/v1/sign/up") {
        Some(Kind::SignUp)
    } else if path.starts_with("/v1/account/forgot")
        || path.starts_with("/v1/account/reset")
        || path.starts_with("/v1/account/recover")
        || path == "/v1/user/email/change"
        || path == "/v1/user/phone/change"
    {
        Some(Kind::Recovery)
    } else if path == "/v1/account/activate"
        || path == "/v1/verify"
        || path == "/v1/user/email/verify"
        || path == "/v1/user/phone/verify"
        || (path.starts_with("/v1/methods/") && path.ends_with("/actions/validate"))
    {
        Some(Kind::Validation)
    } else {
        None
    }
}

/// Admin-token routes, and routes that answer without writing although not by GET.
fn unlimited_write(path: &str) -> bool {
    path == "/metrics"
        || path == "/v1/fill"
        || path.starts_with("/v1/bucket/")
        || path.starts_with("/v1/methods/")
        || path.starts_with("/v1/admin/")
        || path == "/v1/sign/in/verify"
        || path == "/healthz"
        || path == "/readyz"
        || path.starts_with("/openapi")
        || path.starts_with("/docs")
}

/// Whether `request` may change something (every method but GET, HEAD, OPTIONS).
fn writes(request: &Request) -> bool {
    !matches!(*request.method(), poem::http::Method::GET | poem::http::Method::HEAD | poem::http::Method::OPTIONS)
}

/// The session a bearer access token names: its `sid` claim, read without checking
/// the signature (the route checks it), or else a hash of the token. `None` without
/// a bearer token.
fn session_key(request: &Request) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let header = request.header("authorization")?;
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    let sid = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims.get("sid").and_then(serde_json::Value::as_str).map(|sid| sid.chars().take(64).collect::<String>()));
    Some(match sid {
        Some(sid) => format!("sid:{sid}"),
        None => format!("token:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(token.as_bytes())[..16])),
    })
}

type Limiter<K> = Arc<DefaultKeyedRateLimiter<K>>;

/// A keyed limiter for `setting` (none when off), forgotten keys swept every minute.
fn limiter<K: Clone + Eq + std::hash::Hash + Send + Sync + 'static>(setting: RateLimitSetting) -> Option<Limiter<K>> {
    let quota = match setting {
        RateLimitSetting::Off => return None,
        RateLimitSetting::PerMinute(n) => Quota::per_minute(n),
        RateLimitSetting::PerSecond(n) => Quota::per_second(n),
    };
    let limiter: Limiter<K> = Arc::new(RateLimiter::keyed(quota));
    let weak = Arc::downgrade(&limiter);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
        while let Some(limiter) = {
            ticker.tick().await;
            weak.upgrade()
        } {
            limiter.retain_recent();
        }
    });
    Some(limiter)
}

/// Seconds until `key` may go again, when it is over `limiter`'s quota now.
fn wait<K: Clone + Eq + std::hash::Hash>(limiter: Option<&Limiter<K>>, key: &K) -> Option<u64> {
    let not_until = limiter?.check_key(key).err()?;
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

#[derive(Clone)]
pub struct RateLimits {
    /// Secret-guessing routes, per address and kind.
    guesses: Option<Limiter<(Kind, String)>>,
    /// Other writes, per address.
    writes: Option<Limiter<String>>,
    /// Every write, per session.
    sessions: Option<Limiter<String>>,
}

impl RateLimits {
    /// `guesses` off turns every limit off (load tests and benchmarks).
    pub fn new(guesses: RateLimitSetting, writes: RateLimitSetting, sessions: RateLimitSetting) -> Self {
        if guesses == RateLimitSetting::Off {
            return Self { guesses: None, writes: None, sessions: None };
        }
        Self { guesses: limiter(guesses), writes: limiter(writes), sessions: limiter(sessions) }
    }

    /// What `request` is over, and the seconds to wait, when it is over a limit.
    fn over_limit(&self, request: &Request) -> Option<(&'static str, u64)> {
        if self.guesses.is_none() && self.writes.is_none() && self.sessions.is_none() {
            return None;
        }
        let path = request.uri().path();
        // IPv6 callers per /64, like the throttling of proofs.
        let address = super::ClientAddress::of(request).map(domain::throttle::address_key);
        let by_address = match kind(path) {
            Some(kind) => address.and_then(|address| wait(self.guesses.as_ref(), &(kind, address))),
            None if writes(request) && !unlimited_write(path) => address.and_then(|address| wait(self.writes.as_ref(), &address)),
            None => return None,
        };
        if let Some(seconds) = by_address {
            return Some(("too many requests from this address", seconds));
        }
        if !writes(request) || unlimited_write(path) {
            return None;
        }
        let session = session_key(request)?;
        wait(self.sessions.as_ref(), &session).map(|seconds| ("too many changes from this session", seconds))
    }

    /// Wraps `endpoint` so limited requests answer 429 before reaching it.
    pub async fn call<E: Endpoint>(&self, endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
        if let Some((message, retry_after)) = self.over_limit(&request) {
            return Ok(ApiError::too_many("rate_limited", message, retry_after).into_response());
        }
        endpoint.call(request).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!("off".parse(), Ok(RateLimitSetting::Off));
        assert_eq!("on".parse(), Ok(RateLimitSetting::PerMinute(NonZeroU32::new(60).expect("60"))));
        assert_eq!("5/s".parse(), Ok(RateLimitSetting::PerSecond(NonZeroU32::new(5).expect("5"))));
        assert!("0/min".parse::<RateLimitSetting>().is_err());
        assert!("lots".parse::<RateLimitSetting>().is_err());
    }

    #[test]
    fn only_secret_guessing_routes_are_limited() {
        assert_eq!(kind("/v1/sign/in/finish"), Some(Kind::SignIn));
        assert_eq!(kind("/v1/step/two"), Some(Kind::SignIn));
        assert_eq!(kind("/v1/elevate/totp"), Some(Kind::SignIn));
        assert_eq!(kind("/v1/sign/in/verify"), None);
        assert_eq!(kind("/v1/sign/up/finish"), Some(Kind::SignUp));
        assert_eq!(kind("/v1/sign/in/anonymous"), Some(Kind::SignUp));
        assert_eq!(kind("/v1/account/forgot"), Some(Kind::Recovery));
        assert_eq!(kind("/v1/methods/email/verifiers/x/actions/validate"), Some(Kind::Validation));
        assert_eq!(kind("/v1/user/email/change"), Some(Kind::Recovery), "a mail to any address");
        assert_eq!(kind("/v1/user/phone/verify"), Some(Kind::Validation));
        assert_eq!(kind("/v1/token/refresh"), None);
        assert_eq!(kind("/v1/jwt/verify"), None);
    }

    fn request(method: &str, path: &str, bearer: Option<&str>) -> Request {
        let mut builder = Request::builder().method(method.parse().expect("method")).uri(path.parse().expect("uri"));
        if let Some(token) = bearer {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.finish()
    }

    #[test]
    fn writes_are_every_method_but_reads_and_not_admin_routes() {
        assert!(writes(&request("POST", "/v1/token/refresh", None)));
        assert!(writes(&request("DELETE", "/v1/pat/x", None)));
        assert!(!writes(&request("GET", "/v1/user", None)));
        assert!(!writes(&request("OPTIONS", "/v1/user", None)));
        for path in ["/v1/bucket/fill", "/v1/fill", "/v1/methods/email/actions/initiate", "/v1/admin/events", "/v1/sign/in/verify", "/healthz"] {
            assert!(unlimited_write(path), "{path}");
        }
        for path in ["/v1/mfa/totp/generate", "/v1/user/deanonymize", "/v1/token/refresh", "/v1/sign/out", "/v1/account/remove"] {
            assert!(!unlimited_write(path), "{path}");
        }
    }

    #[test]
    fn a_session_is_named_by_its_sid_or_else_a_hash_of_the_token() {
        use base64::Engine;
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let jwt = |sid: &str| format!("{}.{}.sig", encode(r#"{"alg":"EdDSA"}"#), encode(&format!(r#"{{"sub":"p","sid":"{sid}"}}"#)));
        let key = |token: &str| session_key(&request("POST", "/v1/sign/out", Some(token)));
        assert_eq!(key(&jwt("s1")), Some("sid:s1".to_string()));
        assert_eq!(key(&jwt("s1")), key(&format!("{}.other-signature", jwt("s1").rsplit_once('.').expect("dot").0)), "the signature is not read");
        let opaque = key("not-a-jwt").expect("a key");
        assert!(opaque.starts_with("token:") && !opaque.contains("not-a-jwt"), "{opaque}");
        assert_ne!(key("not-a-jwt"), key("another"));
        assert_eq!(session_key(&request("POST", "/v1/sign/out", None)), None);
    }

    #[tokio::test]
    async fn off_turns_every_limit_off() {
        let limits = RateLimits::new(RateLimitSetting::Off, RateLimitSetting::PerMinute(NonZeroU32::MIN), RateLimitSetting::PerMinute(NonZeroU32::MIN));
        assert!(limits.guesses.is_none() && limits.writes.is_none() && limits.sessions.is_none());
    }

    #[tokio::test]
    async fn a_session_over_its_writes_waits_whatever_the_address() {
        let one = RateLimitSetting::PerMinute(NonZeroU32::MIN);
        let limits = RateLimits::new(RateLimitSetting::PerMinute(NonZeroU32::new(60).expect("60")), RateLimitSetting::PerMinute(NonZeroU32::new(60).expect("60")), one);
        let first = request("POST", "/v1/mfa/totp/generate", Some("token-a"));
        assert_eq!(limits.over_limit(&first), None);
        let (_, seconds) = limits.over_limit(&request("POST", "/v1/mfa/totp/generate", Some("token-a"))).expect("over");
        assert!((1..=60).contains(&seconds), "{seconds}");
        assert_eq!(limits.over_limit(&request("GET", "/v1/user", Some("token-a"))), None, "reads are not limited");
        assert_eq!(limits.over_limit(&request("POST", "/v1/mfa/totp/generate", Some("token-b"))), None, "another session");
    }
}
