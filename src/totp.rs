//! TOTP (RFC 6238, totp-rs): SHA-1, 6 digits, 30-second steps, one step of skew
//! either way — what authenticator apps expect. Secrets are kept sealed by the
//! server; only the account holder ever sees one in clear, once, at generation.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use domain::services::TotpCheck;
use rand::rngs::OsRng;
use rand::RngCore;
use totp_rs::{Builder, Totp};

use crate::keys::Keys;

/// Binds sealed MFA secrets to their purpose.
const CONTEXT: &[u8] = b"authd/mfa-totp";

/// A new secret: 160 random bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    OsRng.fill_bytes(&mut secret);
    secret
}

/// The TOTP of `secret`, labelled for authenticator apps.
pub fn totp(secret: Vec<u8>, issuer: &str, account: &str) -> Result<Totp, String> {
    Builder::new()
        .with_secret(secret)
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| e.to_string())
}

pub fn seal(keys: &Keys, secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(keys.seal(CONTEXT, secret))
}

/// The server's [`TotpCheck`]: opens the sealed secret and checks the code.
pub struct TotpChecker(pub Arc<Keys>);

impl TotpCheck for TotpChecker {
    fn matching_step(&self, sealed_secret: &str, code: &str, at: DateTime<Utc>) -> Option<u64> {
        let sealed = URL_SAFE_NO_PAD.decode(sealed_secret).ok()?;
        let secret = self.0.open(CONTEXT, &sealed)?;
        let totp = totp(secret, "authd", "check").ok()?;
        totp.check(code.trim(), u64::try_from(at.timestamp()).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::Suite;
    use opaque_ke::ServerSetup;

    #[test]
    fn codes_match_within_one_step_of_skew() {
        let keys = Arc::new(Keys::from_setup(ServerSetup::<Suite>::new(&mut OsRng)).expect("keys"));
        let secret = new_secret();
        let sealed = seal(&keys, &secret);
        let totp = totp(secret, "authd", "alice").expect("totp");
        let check = TotpChecker(keys);
        let now = DateTime::from_timestamp(1_800_000_015, 0).expect("time");
        let t = |offset: i64| u64::try_from(now.timestamp() + offset).expect("positive");
        let step = t(0) / 30;
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(0)).to_string(), now), Some(step));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(-30)).to_string(), now), Some(step - 1));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(30)).to_string(), now), Some(step + 1));
        assert_eq!(check.matching_step(&sealed, &totp.generate(t(90)).to_string(), now), None);
        assert_eq!(check.matching_step("not-sealed", &totp.generate(t(0)).to_string(), now), None);
    }
}
