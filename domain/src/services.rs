//! Crypto that decides domain outcomes, behind traits the server implements and
//! tests can drive.

/// Finishes the server side of an OPAQUE login.
pub trait LoginVerifier: Send + Sync {
    /// `login_state` is the server's state from KE2, `ke3` the client's
    /// finalization. True only when the client proved knowledge of the password.
    fn verify(&self, login_state: &[u8], ke3: &[u8]) -> bool;
}

/// Checks a TOTP code against a sealed secret.
pub trait TotpCheck: Send + Sync {
    /// The time step (RFC 6238) whose code `code` is, allowing one step of clock skew
    /// either way around `at`; `None` when it matches none.
    fn matching_step(&self, sealed_secret: &str, code: &str, at: chrono::DateTime<chrono::Utc>) -> Option<u64>;
}

/// Checks a presented verification code against the keyed hash stored for it.
pub trait CodeVerifier: Send + Sync {
    /// True only when `code` is the code `code_hash` was made from. Must compare in
    /// constant time.
    fn matches(&self, code_hash: &str, code: &str) -> bool;
}

/// Checks a TOTP code (RFC 6238) against a consumer's secret.
pub trait TotpVerifier: Send + Sync {
    /// The time step `code` is the code of `secret` for: the step of `at` or one
    /// step either side; `None` when it is none of them.
    fn step(&self, secret: &[u8], code: &str, at: chrono::DateTime<chrono::Utc>) -> Option<u64>;
}
