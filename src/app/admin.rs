//! Admin routes: one configured secret (`AUTHD_ADMIN_TOKEN`, at least
//! [`MIN_ADMIN_TOKEN_LEN`] characters), compared without leaking its length or
//! content through timing, and wrong guesses throttled per client address: past
//! [`MAX_FAILURES`] in [`WINDOW`], every admin request from that address is a 429
//! until the window ends — even with the right token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{App, RequestContext};

/// The shortest admin token the server starts with.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;
/// Wrong admin tokens an address may present per window.
const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, the oldest windows are forgotten.
const REMEMBERED: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenied {
    NotConfigured,
    Wrong,
    /// Too many wrong tokens from this address: retry after this many seconds.
    Throttled { retry_after_secs: u64 },
}

/// Wrong admin tokens per client address: (failures, when the window began).
#[derive(Default)]
pub(super) struct Failures(Mutex<HashMap<String, (u32, Instant)>>);

impl Failures {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds until `address` may try again, if it is throttled now.
    fn throttled(&self, address: &str, now: Instant) -> Option<u64> {
        let entries = self.entries();
        let (failures, since) = entries.get(address)?;
        let ends = *since + WINDOW;
        (*failures >= MAX_FAILURES && now < ends).then(|| (ends - now).as_secs().max(1))
    }

    fn fail(&self, address: &str, now: Instant) {
        let mut entries = self.entries();
        if entries.len() >= REMEMBERED {
            entries.retain(|_, (_, since)| now < *since + WINDOW);
        }
        let entry = entries.entry(address.to_string()).or_insert((0, now));
        if now >= entry.1 + WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

impl App {
    /// Admits an admin request presenting `presented`, from the client `meta` names.
    pub fn admin(&self, presented: &str, meta: &RequestContext) -> Result<(), AdminDenied> {
        let Some(token) = &self.policy.admin_token else { return Err(AdminDenied::NotConfigured) };
        let address = meta.client.map_or_else(|| "unknown".to_string(), |client| client.to_string());
        let address = address.as_str();
        let now = Instant::now();
        if let Some(retry_after_secs) = self.admin_failures.throttled(address, now) {
            return Err(AdminDenied::Throttled { retry_after_secs });
        }
        // Digests of equal length: the comparison's time tells neither length nor prefix.
        if bool::from(Sha256::digest(token.as_bytes()).ct_eq(&Sha256::digest(presented.as_bytes()))) {
            Ok(())
        } else {
            self.admin_failures.fail(address, now);
            Err(AdminDenied::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_too_many_failures_until_its_window_ends() {
        let failures = Failures::default();
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(failures.throttled("a", start), None);
            failures.fail("a", start);
        }
        assert!(failures.throttled("a", start).is_some_and(|secs| secs <= WINDOW.as_secs()));
        assert_eq!(failures.throttled("b", start), None, "other addresses are not affected");
        assert_eq!(failures.throttled("a", start + WINDOW), None, "the window ends");
    }
}
