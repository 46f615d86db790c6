//! Throttling of proofs of identity: the failed proofs for one account — or for one
//! unknown username, which runs the same commands and writes the same events — counted
//! per client address, within one window of time.
//!
//! - A proof counts as failed from the moment it begins (`Attempt`) until it succeeds
//!   (`Succeed`), so a client that learns it guessed wrong and walks away is counted.
//! - The same command that counts an attempt decides whether it may run: concurrent
//!   attempts are serialised by the aggregate's stream, so N attempts count as N.
//! - Once an address has `threshold` failures it is blocked for `backoff`, doubling
//!   with every further failure (blocked attempts count too); other addresses go on,
//!   up to the account-wide `ceiling` of failures, past which every address waits for
//!   the window to end. Only attempts that were allowed to run count toward the
//!   ceiling, so one address adds `threshold` at most: reaching it takes many.
//! - One aggregate per account and window (its id names both), so the stream a
//!   sign-in loads holds one window's attempts at most, never the account's history.
//! - Addresses arrive as keyed hashes of their throttling key ([`address_key`]):
//!   the aggregate never holds an address in clear.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How failed proofs are throttled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottlePolicy {
    /// Failures from one address before it is blocked.
    pub threshold: u32,
    /// The first block; each further failure doubles it.
    pub backoff: Duration,
    /// Failures from all addresses together before every address is blocked.
    pub ceiling: u32,
    /// How long one throttle aggregate counts.
    pub window: Duration,
}

/// Doublings of the back-off at most (64 × the first block).
const MAX_DOUBLINGS: u32 = 6;

impl ThrottlePolicy {
    /// The number of the window `at` falls in; part of the aggregate id.
    pub fn window_of(&self, at: DateTime<Utc>) -> i64 {
        at.timestamp().div_euclid(self.window.num_seconds().max(1))
    }

    fn block_after(&self, failures: u32, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let over = failures.checked_sub(self.threshold)?;
        Some(at + self.backoff * 2i32.pow(over.min(MAX_DOUBLINGS)))
    }
}

/// The key an address is throttled by: an IPv4 address itself, an IPv6 address by
/// its /64 (one subscriber's prefix, which it can fill with addresses at will).
pub fn address_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Address {
    failures: u32,
    blocked_until: Option<DateTime<Utc>>,
    /// Of `failures`, those that were allowed to run (they count toward the ceiling).
    counted: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throttle {
    addresses: BTreeMap<String, Address>,
    /// All addresses' failures that were allowed to run (what the ceiling bounds).
    failures: u32,
}

#[derive(Debug, Clone)]
pub enum ThrottleCommand {
    /// A proof begins from `address` (a keyed hash of its [`address_key`]) for the
    /// account `profile_id` (`None`: an unknown username).
    Attempt { address: String, profile_id: Option<Uuid>, at: DateTime<Utc>, policy: ThrottlePolicy },
    /// The proof begun from `address` succeeded: it was no failure.
    Succeed { address: String, profile_id: Option<Uuid>, at: DateTime<Utc> },
    /// A proof checked at once (a TOTP code): counted like an [`ThrottleCommand::Attempt`]
    /// and, when it was allowed and `valid`, a success instead. A blocked address is
    /// refused even the right code.
    Prove { address: String, profile_id: Option<Uuid>, valid: bool, at: DateTime<Utc>, policy: ThrottlePolicy },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ThrottleEvent {
    /// Counted as a failure until it succeeds. `allowed: false`: the address (or the
    /// account) was blocked, and the proof must not be able to succeed.
    ProofAttempted {
        address: String,
        profile_id: Option<Uuid>,
        allowed: bool,
        /// This address's failures in the window, this one included.
        failures: u32,
        blocked_until: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// The address's count starts again.
    ProofSucceeded { address: String, profile_id: Option<Uuid>, at: DateTime<Utc> },
}
crate::domain_event!(ThrottleEvent { ProofAttempted, ProofSucceeded });

/// Throttling refuses no command: a blocked attempt is answered (and counted), not
/// rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThrottleError {}

impl Throttle {
    /// A proof beginning from `address`, counted as a failure until it succeeds.
    fn attempt(&self, address: String, profile_id: Option<Uuid>, at: DateTime<Utc>, policy: ThrottlePolicy) -> ThrottleEvent {
        let known = self.addresses.get(&address).cloned().unwrap_or_default();
        let blocked = known.blocked_until.is_some_and(|until| at < until) || self.failures >= policy.ceiling;
        let failures = known.failures + 1;
        let blocked_until = policy.block_after(failures, at).or(known.blocked_until);
        ThrottleEvent::ProofAttempted { address, profile_id, allowed: !blocked, failures, blocked_until, at }
    }
}

/// A throttle counts proofs for one username, whichever account holds it: each
/// event names its account (`profile_id`) itself, or none for an unknown name.
impl crate::Subject for Throttle {
    fn subject(&self, _: &str) -> Option<Uuid> {
        None
    }
}

impl Aggregate for Throttle {
    const TYPE: &'static str = "throttle";
    type Command = ThrottleCommand;
    type Event = ThrottleEvent;
    type Error = ThrottleError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            ThrottleCommand::Attempt { address, profile_id, at, policy } => self.attempt(address, profile_id, at, policy),
            ThrottleCommand::Prove { address, profile_id, valid, at, policy } => match self.attempt(address, profile_id, at, policy) {
                ThrottleEvent::ProofAttempted { address, allowed: true, .. } if valid => {
                    ThrottleEvent::ProofSucceeded { address, profile_id, at }
                }
                counted => counted,
            },
            // Several attempts from one address may be in flight (workers sharing an
            // account): the first success starts the count again, the others find
            // it started.
            ThrottleCommand::Succeed { address, profile_id, at } => ThrottleEvent::ProofSucceeded { address, profile_id, at },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ThrottleEvent::ProofAttempted { address, allowed, failures, blocked_until, .. } => {
                let entry = self.addresses.entry(address).or_default();
                entry.failures = failures;
                entry.blocked_until = blocked_until;
                entry.counted += u32::from(allowed);
                self.failures += u32::from(allowed);
            }
            ThrottleEvent::ProofSucceeded { address, .. } => {
                // The address proved the secret: its failures were a user's typos.
                if let Some(known) = self.addresses.remove(&address) {
                    self.failures = self.failures.saturating_sub(known.counted);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use ThrottleCommand::*;
    use ThrottleEvent::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy { threshold: 3, backoff: Duration::seconds(60), ceiling: 5, window: Duration::hours(1) }
    }

    fn attempt(address: &str, after: i64) -> ThrottleCommand {
        Attempt { address: address.into(), profile_id: None, at: t0() + Duration::seconds(after), policy: policy() }
    }

    fn attempted(address: &str, allowed: bool, failures: u32, blocked: Option<i64>, after: i64) -> ThrottleEvent {
        ProofAttempted {
            address: address.into(),
            profile_id: None,
            allowed,
            failures,
            blocked_until: blocked.map(|s| t0() + Duration::seconds(s)),
            at: t0() + Duration::seconds(after),
        }
    }

    fn prove(address: &str, valid: bool, after: i64) -> ThrottleCommand {
        Prove { address: address.into(), profile_id: None, valid, at: t0() + Duration::seconds(after), policy: policy() }
    }

    #[tokio::test]
    async fn a_wrong_code_counts_and_a_right_one_starts_the_count_again() {
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0)])
            .when_async(prove("a", false, 1))
            .await
            .then_expect_events(vec![attempted("a", true, 2, None, 1)]);
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 1)])
            .when_async(prove("a", true, 2))
            .await
            .then_expect_events(vec![ProofSucceeded { address: "a".into(), profile_id: None, at: t0() + Duration::seconds(2) }]);
    }

    #[tokio::test]
    async fn a_blocked_address_is_refused_even_the_right_code() {
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 1), attempted("a", true, 3, Some(62), 2)])
            .when_async(prove("a", true, 3))
            .await
            .then_expect_events(vec![attempted("a", false, 4, Some(123), 3)]);
    }

    #[tokio::test]
    async fn an_attempt_counts_before_it_can_succeed() {
        TestFramework::<Throttle>::with(())
            .given_no_previous_events()
            .when_async(attempt("a", 0))
            .await
            .then_expect_events(vec![attempted("a", true, 1, None, 0)]);
    }

    #[tokio::test]
    async fn the_threshold_blocks_the_address_with_growing_backoff() {
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0)])
            .when_async(attempt("a", 1))
            .await
            .then_expect_events(vec![attempted("a", true, 3, Some(61), 1)]);
        // Blocked: refused, and counted, which doubles the wait.
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0), attempted("a", true, 3, Some(61), 1)])
            .when_async(attempt("a", 2))
            .await
            .then_expect_events(vec![attempted("a", false, 4, Some(122), 2)]);
    }

    #[tokio::test]
    async fn the_block_ends_and_other_addresses_go_on() {
        let history = vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0), attempted("a", true, 3, Some(61), 1)];
        TestFramework::<Throttle>::with(())
            .given(history.clone())
            .when_async(attempt("b", 2))
            .await
            .then_expect_events(vec![attempted("b", true, 1, None, 2)]);
        TestFramework::<Throttle>::with(())
            .given(history)
            .when_async(attempt("a", 61))
            .await
            .then_expect_events(vec![attempted("a", true, 4, Some(61 + 120), 61)]);
    }

    #[tokio::test]
    async fn one_address_cannot_reach_the_ceiling_alone() {
        // "a" is blocked after 3; its 10 blocked attempts do not count toward the
        // ceiling (5), so "b" still gets through.
        let mut history: Vec<ThrottleEvent> = (1..=3).map(|n| attempted("a", true, n, None, 0)).collect();
        history.extend((4..=13).map(|n| attempted("a", false, n, Some(600), 0)));
        TestFramework::<Throttle>::with(())
            .given(history)
            .when_async(attempt("b", 1))
            .await
            .then_expect_events(vec![attempted("b", true, 1, None, 1)]);
    }

    #[tokio::test]
    async fn the_ceiling_blocks_every_address() {
        let history: Vec<ThrottleEvent> = (0..5).map(|n| attempted(&format!("x{n}"), true, 1, None, 0)).collect();
        TestFramework::<Throttle>::with(())
            .given(history)
            .when_async(attempt("fresh", 1))
            .await
            .then_expect_events(vec![attempted("fresh", false, 1, None, 1)]);
    }

    #[tokio::test]
    async fn a_success_starts_the_address_again() {
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0)])
            .when_async(Succeed { address: "a".into(), profile_id: None, at: t0() })
            .await
            .then_expect_events(vec![ProofSucceeded { address: "a".into(), profile_id: None, at: t0() }]);
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0), ProofSucceeded { address: "a".into(), profile_id: None, at: t0() }])
            .when_async(attempt("a", 1))
            .await
            .then_expect_events(vec![attempted("a", true, 1, None, 1)]);
    }

    #[tokio::test]
    async fn a_success_takes_its_address_out_of_the_account_wide_count() {
        // Four failures from "a", then a success from "a": only "x"'s one remains, so
        // the ceiling (5) is far.
        let mut history: Vec<ThrottleEvent> = (1..=4).map(|n| attempted("a", true, n, None, 0)).collect();
        history.push(attempted("x", true, 1, None, 0));
        history.push(ProofSucceeded { address: "a".into(), profile_id: None, at: t0() });
        for n in 0..3 {
            history.push(attempted(&format!("y{n}"), true, 1, None, 0));
        }
        TestFramework::<Throttle>::with(())
            .given(history)
            .when_async(attempt("z", 1))
            .await
            .then_expect_events(vec![attempted("z", true, 1, None, 1)]);
    }

    #[tokio::test]
    async fn concurrent_successes_from_one_address_are_all_recorded() {
        let success = || ProofSucceeded { address: "a".into(), profile_id: None, at: t0() };
        TestFramework::<Throttle>::with(())
            .given(vec![attempted("a", true, 1, None, 0), attempted("a", true, 2, None, 0), success()])
            .when_async(Succeed { address: "a".into(), profile_id: None, at: t0() })
            .await
            .then_expect_events(vec![success()]);
    }

    #[test]
    fn ipv6_is_throttled_per_64_and_ipv4_per_address() {
        let key = |text: &str| address_key(text.parse().expect("address"));
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn windows_are_numbered_by_time() {
        let policy = policy();
        // t0 starts a window (1_800_000_000 is a multiple of 3600).
        assert_eq!(policy.window_of(t0()), policy.window_of(t0() + Duration::minutes(59)));
        assert_ne!(policy.window_of(t0()), policy.window_of(t0() - Duration::seconds(1)));
        assert_ne!(policy.window_of(t0()), policy.window_of(t0() + Duration::hours(1)));
    }
}
