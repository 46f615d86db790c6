//! Step-up: sensitive routes need a recent proof of presence at the account's level
//! (the rule: `assurance.rs`); a fresh proof on the current session — the password
//! (OPAQUE, throttled like a sign-in), a TOTP code (throttled like any code), a
//! passkey (passkeys.rs) or, for an account with nothing else, an emailed code
//! (passwordless.rs) — elevates it: a new refresh token and access token with a
//! fresh `auth_time`.

use chrono::Utc;
use cqrs_es::Aggregate;
use domain::mfa::MfaCommand;
use domain::{Mfa, Session, Throttle, User};

use crate::store::transact;
use crate::store::RequestContext;
use super::assurance::Factor;
use super::mfa::{mfa_error, Proof};
use super::{App, AppError, SignInResult, Tokens, Verified};

impl App {
    /// Step-up by password, step 1: KE1 for the session's own account, answered like
    /// a sign-in (counted on the account's throttle; a throttled address gets a KE2
    /// no password finishes).
    pub async fn elevate_password_start(
        &self,
        who: &Verified,
        credential_request: &str,
        meta: &RequestContext,
    ) -> Result<(String, String), AppError> {
        self.may_elevate(who)?;
        let user = self.store.load_current::<User>(&who.profile_id.to_string()).await?;
        self.sign_in_start(user.username(), credential_request, meta).await
    }

    /// Step-up by password, step 2: KE3 of a sign-in of this session's account; a
    /// wrong password is 401 `invalid_credentials`, as at sign-in.
    pub async fn elevate_password_finish(
        &self,
        who: &Verified,
        sign_in_id: &str,
        credential_finalization: &str,
        meta: &RequestContext,
    ) -> Result<Tokens, AppError> {
        match self.password_finish(sign_in_id, credential_finalization, Some(who), meta).await? {
            SignInResult::Session(tokens) => Ok(tokens),
            SignInResult::MfaRequired { .. } => Err(AppError::Internal("a step-up asked for a second factor".into())),
        }
    }

    /// Step-up by TOTP: the code is proved and counted on the account's throttle and
    /// the session elevated, in one unit.
    pub async fn elevate_totp(&self, who: &Verified, code: &str, meta: &RequestContext) -> Result<Tokens, AppError> {
        self.may_elevate(who)?;
        let at = Utc::now();
        let (profile, session) = (who.profile_id.to_string(), who.session_id.to_string());
        let user = self.store.load::<User>(&profile).await?;
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let locked = [(Mfa::TYPE, profile.as_str()), (Throttle::TYPE, throttle_id.as_str()), (Session::TYPE, session.as_str())];
        transact!(self.store, &locked, meta, |unit| {
            let use_code = MfaCommand::UseCode { code: code.to_string(), at };
            let proof = self.prove_code(unit, who.profile_id, &throttle_id, &address, use_code, at, mfa_error).await?;
            let outcome = match proof {
                Proof::Valid => self.elevate_in(unit, who, Factor::Totp, at).await,
                refused => Err(refused.refusal(mfa_error(domain::mfa::MfaError::InvalidCode))),
            };
            outcome
        })
    }
}
