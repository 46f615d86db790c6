//! TOTP (RFC 6238, totp-rs) as authenticator apps make it: SHA-1, 6 digits,
//! 30-second steps, one step of clock skew either way. The one place authd computes
//! TOTP codes — for MFA and for `google_auth` verifications alike. Secrets are kept
//! sealed by the server; only their holder sees one in clear, once.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use domain::services::TotpCheck;
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::crypto::keys::Keys;

/// Binds sealed MFA secrets to their purpose.
const CONTEXT: &[u8] = b"authd/mfa-totp";
const STEP: u64 = 30;

/// A new secret: 160 random bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    OsRng.fill_bytes(&mut secret);
    secret
}

/// The TOTP of `secret`, labelled for authenticator apps.
pub fn authenticator(secret: Vec<u8>, issuer: Option<String>, account: String) -> TOTP {
    TOTP::new_unchecked(Algorithm::SHA1, 6, 1, STEP, secret, issuer, account)
}

/// The time step whose code `code` is, within one step of `at`.
pub fn matching_step(secret: &[u8], code: &str, at: DateTime<Utc>) -> Option<u64> {
    let now = u64::try_from(at.timestamp()).ok()? / STEP;
    let totp = authenticator(secret.to_vec(), None, String::new());
    let code = code.trim().as_bytes();
    (now.saturating_sub(1)..=now + 1).find(|step| bool::from(totp.generate(step * STEP).as_bytes().ct_eq(code)))
}

pub fn encrypt_secret(keys: &Keys, secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(keys.encrypt(CONTEXT, secret))
}

/// The server's [`TotpCheck`] for MFA: opens the sealed secret and checks the code.
pub struct TotpChecker(pub Arc<Keys>);

impl TotpCheck for TotpChecker {
    fn matching_step(&self, sealed_secret: &str, code: &str, at: DateTime<Utc>) -> Option<u64> {
        let sealed = URL_SAFE_NO_PAD.decode(sealed_secret).ok()?;
        matching_step(&self.0.decrypt(CONTEXT, &sealed)?, code, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Suite;
    use opaque_ke::ServerSetup;

    #[test]
    fn codes_match_within_one_step_of_skew() {
        let keys = Arc::new(Keys::from_setup(ServerSetup::<Suite>::new(&mut OsRng)).expect("keys"));
        let secret = new_secret();
        let sealed = encrypt_secret(&keys, &secret);
        let totp = authenticator(secret, Some("authd".into()), "alice".into());
        let check = TotpChecker(keys);
        let now = DateTime::from_timestamp(1_800_000_015, 0).expect("time");
        let t = |offset: i64| u64::try_from(now.timestamp() + offset).expect("positive");
        let step = t(0) / 30;
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(0)), now), Some(step));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(-30)), now), Some(step - 1));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(30)), now), Some(step + 1));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(90)), now), None);
        assert_eq!(check.matching_step("not-sealed", &totp.generate(t(0)), now), None);
    }

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits) ends in 287082.
        let at = DateTime::from_timestamp(59, 0).expect("time");
        assert_eq!(matching_step(b"12345678901234567890", "287082", at), Some(1));
    }
}
