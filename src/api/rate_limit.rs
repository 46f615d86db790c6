//! Per-address rate limits (governor) on the routes that guess at secrets: sign-in
//! (all steps), sign-up, password recovery, and code validation. Over the limit the
//! answer is 429 with `Retry-After`. The counters live in each replica's memory: a
//! limit is per replica, and a restart forgets it — acceptable for throttling, which
//! guards nothing that must survive.

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

#[derive(Clone)]
pub struct RateLimits {
    limiter: Option<Arc<DefaultKeyedRateLimiter<(Kind, String)>>>,
}

impl RateLimits {
    pub fn new(setting: RateLimitSetting) -> Self {
        let quota = match setting {
            RateLimitSetting::Off => None,
            RateLimitSetting::PerMinute(n) => Some(Quota::per_minute(n)),
            RateLimitSetting::PerSecond(n) => Some(Quota::per_second(n)),
        };
        let limiter = quota.map(|quota| Arc::new(RateLimiter::keyed(quota)));
        if let Some(limiter) = &limiter {
            let limiter = Arc::downgrade(limiter);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
                while let Some(limiter) = {
                    ticker.tick().await;
                    limiter.upgrade()
                } {
                    limiter.retain_recent();
                }
            });
        }
        Self { limiter }
    }

    /// Seconds to wait when `request` is over its limit.
    fn over_limit(&self, request: &Request) -> Option<u64> {
        let limiter = self.limiter.as_ref()?;
        let kind = kind(request.uri().path())?;
        // IPv6 callers per /64, like the throttling of proofs.
        let address = domain::throttle::address_key(super::ClientAddress::of(request)?);
        let not_until = limiter.check_key(&(kind, address)).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    }

    /// Wraps `endpoint` so limited requests answer 429 before reaching it.
    pub async fn call<E: Endpoint>(&self, endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
        if let Some(retry_after) = self.over_limit(&request) {
            return Ok(ApiError::too_many("rate_limited", "too many requests from this address", retry_after)
                .into_response());
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
}
