//! Private sign-in (reference 001): the OPAQUE login of `/v1/sign/in*` run inside an
//! ephemeral X25519 key agreement, so the username never travels in clear and the
//! session comes back encrypted.
//!
//! The rules are not here: step two is [`App::sign_in_start`] and step three is
//! [`App::sign_in_finish`] — the same `Throttle` and `SignIn` commands, the same
//! failure counting, the same answers (MFA included) — with the username taken out
//! of `encrypted_id` and the answer sealed for the client. The key schedule is
//! `protocol::private`, shared with the client so it exists once.
//!
//! The server keeps no state between steps (any replica can answer any step):
//! - step one seals the agreement (`key ‖ C ‖ S`) and the time it was made with
//!   [`Keys::seal`](crate::crypto::keys::Keys::seal) into the `handle` the client sends back
//!   as step two's `pke_key`; it is good for `AUTHD_SIGN_IN_TTL` seconds;
//! - step two seals the agreement and the sign-in id of the normal flow into the
//!   `salt` the client sends back as step three's `pake_key`; the `SignIn`
//!   aggregate makes it single-use and expiring, as for a normal sign-in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use protocol::message;
use protocol::private::{Agreement, TokenKeys, AGREEMENT_LEN, PUBLIC_KEY_LEN};

use crate::crypto::opaque;
use crate::store::RequestContext;
use super::{App, AppError, Fields, SignInResult};

/// Seals step one's `handle`.
const HANDLE_CONTEXT: &[u8] = b"authd/private-sign-in/v1 step one handle";
/// Seals step two's `salt`.
const SIGN_IN_CONTEXT: &[u8] = b"authd/private-sign-in/v1 step two sign-in";
/// Clock skew tolerated between replicas when a handle is checked.
const SKEW_SECS: i64 = 30;

/// Step one's answer.
#[derive(Debug, Clone)]
pub struct KeyAgreed {
    /// The server's ephemeral public key, base64url.
    pub pke_key: String,
    /// The sealed agreement, base64url.
    pub handle: String,
}

/// Step two's answer.
#[derive(Debug, Clone)]
pub struct PrivateSignInStarted {
    /// KE2, base64url.
    pub pake_key: String,
    /// The sealed agreement and sign-in id, base64url.
    pub salt: String,
}

/// Renames the fields the normal sign-in reports to those of the private one.
fn private_fields(error: AppError) -> AppError {
    match error {
        AppError::Invalid(fields) => AppError::Invalid(
            fields
                .into_iter()
                .map(|(path, why)| match path.as_str() {
                    "username" => ("encrypted_id".into(), format!("the username it carries {why}")),
                    "credential_request" => ("pake_key".into(), why),
                    "credential_finalization" => ("pake_proof".into(), why),
                    _ => (path, why),
                })
                .collect(),
        ),
        other => other,
    }
}

impl App {
    /// Step one: agrees an ephemeral key with the client's and seals it into a handle.
    pub fn private_step_one(&self, pke_key: &str) -> Result<KeyAgreed, AppError> {
        let mut fields = Fields::default();
        let agreement = fields.check(
            "pke_key",
            message(pke_key, PUBLIC_KEY_LEN).and_then(|key| Agreement::respond(&key).map_err(|e| e.to_string())),
        );
        let Some(agreement) = agreement else { return Err(fields.error()) };
        let made_at = Utc::now().timestamp().to_be_bytes();
        let sealed = self.keys.encrypt(HANDLE_CONTEXT, &[agreement.to_bytes().as_slice(), &made_at].concat());
        Ok(KeyAgreed {
            pke_key: URL_SAFE_NO_PAD.encode(agreement.server_public()),
            handle: URL_SAFE_NO_PAD.encode(sealed),
        })
    }

    fn open_handle(&self, handle: &str) -> Option<Agreement> {
        let opened = self.keys.decrypt(HANDLE_CONTEXT, &URL_SAFE_NO_PAD.decode(handle).ok()?)?;
        if opened.len() != AGREEMENT_LEN + 8 {
            return None;
        }
        let (agreement, made_at) = opened.split_at(AGREEMENT_LEN);
        let age = Utc::now().timestamp() - i64::from_be_bytes(made_at.try_into().ok()?);
        if !(-SKEW_SECS..=self.policy.sign_in_ttl.num_seconds()).contains(&age) {
            return None;
        }
        Agreement::from_bytes(agreement)
    }

    /// Step two: reads the username out of `encrypted_id` and runs the normal
    /// sign-in start. A handle or `encrypted_id` that does not open (tampered,
    /// expired, another agreement or KE1) is the 401 of any failed sign-in.
    pub async fn private_step_two(
        &self,
        handle: &str,
        ke1: &str,
        encrypted_id: &str,
        meta: &RequestContext,
    ) -> Result<PrivateSignInStarted, AppError> {
        let mut fields = Fields::default();
        let ke1_bytes = fields.check("pake_key", message(ke1, protocol::KE1_LEN));
        let encrypted = fields.check(
            "encrypted_id",
            URL_SAFE_NO_PAD.decode(encrypted_id).map_err(|_| "must be base64url without padding".into()),
        );
        let (Some(ke1_bytes), Some(encrypted)) = (ke1_bytes, encrypted) else { return Err(fields.error()) };
        let agreement = self.open_handle(handle).ok_or(AppError::InvalidCredentials)?;
        let username = agreement.decrypt_id(&encrypted, &ke1_bytes).map_err(|_| AppError::InvalidCredentials)?;

        let (sign_in_id, ke2) = self.sign_in_start(&username, ke1, meta).await.map_err(private_fields)?;
        let salt = self.keys.encrypt(SIGN_IN_CONTEXT, &[agreement.to_bytes().as_slice(), sign_in_id.as_bytes()].concat());
        Ok(PrivateSignInStarted { pake_key: ke2, salt: URL_SAFE_NO_PAD.encode(salt) })
    }

    fn open_salt(&self, salt: &str) -> Option<(Agreement, String)> {
        let opened = self.keys.decrypt(SIGN_IN_CONTEXT, &URL_SAFE_NO_PAD.decode(salt).ok()?)?;
        if opened.len() <= AGREEMENT_LEN {
            return None;
        }
        let (agreement, sign_in_id) = opened.split_at(AGREEMENT_LEN);
        Some((Agreement::from_bytes(agreement)?, String::from_utf8(sign_in_id.to_vec()).ok()?))
    }

    /// Step three: the normal sign-in finish, plus the keys that seal its answer —
    /// bound to the agreement and to the OPAQUE session key, which only a client
    /// that knew the password shares.
    pub async fn private_step_three(
        &self,
        salt: &str,
        ke3: &str,
        meta: &RequestContext,
    ) -> Result<(SignInResult, TokenKeys), AppError> {
        let mut fields = Fields::default();
        let ke3_bytes = fields.check("pake_proof", message(ke3, protocol::KE3_LEN));
        let Some(ke3_bytes) = ke3_bytes else { return Err(fields.error()) };
        let (agreement, sign_in_id) = self.open_salt(salt).ok_or(AppError::InvalidCredentials)?;
        // Computed before the finish, which must run (and count a failure) either way.
        let session_key =
            self.open_sign_in_id(&sign_in_id).and_then(|(_, pending)| {
                let state = protocol::unb64(&pending.login_state).ok()?;
                opaque::session_key(&state, &ke3_bytes)
            });
        let finished = self.sign_in_finish(&sign_in_id, ke3, meta).await.map_err(private_fields)?;
        let Some(session_key) = session_key else {
            // The aggregate accepted a KE3 the same check refused here: cannot happen.
            tracing::error!("a private sign-in finished without an OPAQUE session key");
            return Err(AppError::InvalidCredentials);
        };
        Ok((finished, agreement.token_keys(&session_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_field_names_become_private_ones() {
        let error = private_fields(AppError::Invalid(vec![
            ("username".into(), "must be 3 to 64 characters after normalisation (has 2)".into()),
            ("credential_request".into(), "not a valid OPAQUE message".into()),
            ("credential_finalization".into(), "must encode 64 bytes (has 3)".into()),
        ]));
        let AppError::Invalid(fields) = error else { panic!("still invalid") };
        let paths: Vec<&str> = fields.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["encrypted_id", "pake_key", "pake_proof"]);
        assert_eq!(fields[0].1, "the username it carries must be 3 to 64 characters after normalisation (has 2)");
        assert!(matches!(private_fields(AppError::InvalidCredentials), AppError::InvalidCredentials));
    }
}
