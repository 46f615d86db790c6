//! Step-up: sensitive routes need a recent proof of presence (`auth_time` within
//! `AUTHD_ELEVATION_MAX_AGE`); a fresh proof on the current session — the password
//! (OPAQUE, throttled like a sign-in) or a TOTP code (throttled like any code) —
//! elevates it: a new refresh token and access token with a fresh `auth_time`.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::mfa::MfaCommand;
use domain::session::SessionCommand;
use domain::{Mfa, Session, Throttle, User};

use crate::store::{Metadata, Unit};
use super::mfa::{mfa_error, Proof};
use super::{random_token, rejected, App, AppError, Denied, SignInResult, Tokens, Verified};

impl App {
    /// 403 `elevation_required` unless the token's holder proved presence recently;
    /// 403 `anonymous_user` for an anonymous session, which has nothing to prove.
    pub fn require_elevation(&self, who: &Verified) -> Result<(), AppError> {
        if who.anonymous {
            return Err(AppError::Forbidden(Denied::AnonymousUser));
        }
        if Utc::now().timestamp() - who.auth_time <= self.policy.elevation_max_age.num_seconds() {
            Ok(())
        } else {
            Err(AppError::Forbidden(Denied::ElevationRequired))
        }
    }

    /// Step-up by password, step 1: KE1 for the session's own account, answered like
    /// a sign-in (counted on the account's throttle; a throttled address gets a KE2
    /// no password finishes).
    pub async fn elevate_password_start(
        &self,
        who: &Verified,
        credential_request: &str,
        meta: &Metadata,
    ) -> Result<(String, String), AppError> {
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
        meta: &Metadata,
    ) -> Result<Tokens, AppError> {
        match self.password_finish(sign_in_id, credential_finalization, Some(who), meta).await? {
            SignInResult::Session(tokens) => Ok(tokens),
            SignInResult::MfaRequired { .. } => Err(AppError::Internal("a step-up asked for a second factor".into())),
        }
    }

    /// Step-up by TOTP: the code is proved and counted on the account's throttle and
    /// the session elevated, in one unit.
    pub async fn elevate_totp(&self, who: &Verified, code: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let (profile, session) = (who.profile_id.to_string(), who.session_id.to_string());
        let user = self.store.load::<User>(&profile).await?;
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let locked = [(Mfa::TYPE, profile.as_str()), (Throttle::TYPE, throttle_id.as_str()), (Session::TYPE, session.as_str())];
        let mut unit = self.store.unit(&locked, meta).await?;
        loop {
            let use_code = MfaCommand::UseCode { code: code.to_string(), at };
            let proof = self.prove_code(&mut unit, who.profile_id, &throttle_id, &address, use_code, at, mfa_error).await?;
            let outcome = match proof {
                Proof::Valid => self.elevate_in(&mut unit, who, "otp", at).await,
                refused => Err(refused.refusal(mfa_error(domain::mfa::MfaError::InvalidCode))),
            };
            if unit.commit().await? {
                return outcome;
            }
        }
    }

    /// Decides the elevation of `who`'s session by `method` in `unit` and signs its
    /// new tokens.
    pub(super) async fn elevate_in(&self, unit: &mut Unit<'_>, who: &Verified, method: &str, at: DateTime<Utc>) -> Result<Tokens, AppError> {
        let refresh_token = format!("{}.{}", who.session_id, random_token());
        let command = SessionCommand::Elevate {
            method: method.to_string(),
            new_hash: self.keys.refresh_hash(&refresh_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            at,
        };
        let (_, session) = unit
            .decide::<Session>(&who.session_id.to_string(), command, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidToken))?;
        self.tokens(who.profile_id, who.session_id, session.amr().to_vec(), refresh_token, at, session.ends_at(), at)
    }
}
