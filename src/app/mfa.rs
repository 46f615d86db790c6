//! TOTP multi-factor authentication: generate a secret, enable and disable it; and
//! how every TOTP code is proved: decided on the account's `Mfa` and counted on its
//! throttle (domain/src/throttle.rs) in one unit, like a password.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::mfa::{MfaCommand, MfaError};
use domain::throttle::{ThrottleCommand, ThrottleEvent};
use domain::{Mfa, Throttle, User};
use uuid::Uuid;

use crate::store::transact;
use crate::store::{CommandError, RequestContext, Unit};
use super::{rejected, App, AppError, Conflict, TotpEnrollment, Verified};

/// What a TOTP code proved.
pub(crate) enum Proof {
    /// Right, unused, and the address may try: the code is spent, the count starts again.
    Valid,
    /// Wrong or replayed: counted.
    Wrong,
    /// The address is blocked: counted, and refused even the right code (not spent).
    Blocked { retry_after_secs: u64 },
}

impl Proof {
    /// The answer for a proof that did not succeed.
    pub(crate) fn refusal(&self, wrong: AppError) -> AppError {
        match self {
            Proof::Blocked { retry_after_secs } => AppError::TooManyAttempts { retry_after_secs: *retry_after_secs },
            _ => wrong,
        }
    }
}

impl App {
    /// A new TOTP secret for the account, pending until a code enables it. Elevated,
    /// like enabling it: a stolen session must not enrol its own second factor.
    pub async fn mfa_generate(&self, who: &Verified, meta: &RequestContext) -> Result<TotpEnrollment, AppError> {
        self.require_elevation(who).await?;
        let user = self.store.load::<User>(&who.profile_id.to_string()).await?;
        let secret = crate::crypto::totp::new_secret();
        let command = MfaCommand::Generate { sealed_secret: crate::crypto::totp::encrypt_secret(&self.keys, &secret), at: Utc::now() };
        self.store
            .execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta)
            .await
            .map_err(|e| rejected(e, mfa_error))?;
        let totp = crate::crypto::totp::authenticator(secret, Some(self.policy.issuer.clone()), user.username().to_string());
        let otpauth_uri = totp.get_url();
        let qr_png = totp.get_qr_base64().map_err(|e| AppError::Internal(format!("cannot draw the QR code: {e}")))?;
        Ok(TotpEnrollment { otp_secret: totp.get_secret_base32(), otpauth_uri, qr_png })
    }

    /// Elevated, and a current code of the pending secret.
    pub async fn mfa_enable(&self, who: &Verified, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let at = Utc::now();
        self.change_mfa(who, MfaCommand::Enable { code: code.to_string(), at }, at, meta).await
    }

    /// Needs a recent proof of presence (step-up) as well as a current code.
    pub async fn mfa_disable(&self, who: &Verified, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let at = Utc::now();
        self.change_mfa(who, MfaCommand::Disable { code: code.to_string(), at }, at, meta).await
    }

    /// Enables or disables TOTP with a code, proved and counted in one unit.
    async fn change_mfa(&self, who: &Verified, command: MfaCommand, at: DateTime<Utc>, meta: &RequestContext) -> Result<(), AppError> {
        let profile = who.profile_id.to_string();
        let user = self.store.load::<User>(&profile).await?;
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let proof = transact!(self.store, &[(Mfa::TYPE, &profile), (Throttle::TYPE, &throttle_id)], meta, |unit| {
                self.prove_code(unit, who.profile_id, &throttle_id, &address, command.clone(), at, mfa_error).await
            })?;
        match proof {
            Proof::Valid => Ok(()),
            refused => Err(refused.refusal(mfa_error(MfaError::InvalidCode))),
        }
    }

    /// Decides a TOTP `command` on the account's `Mfa` in `unit` and counts it on the
    /// throttle `throttle_id` for `address` (both aggregates in the unit). A refusal
    /// other than a wrong or replayed code (no TOTP on, say) counts nothing and is
    /// answered through `map`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn prove_code(
        &self,
        unit: &mut Unit<'_>,
        profile_id: Uuid,
        throttle_id: &str,
        address: &str,
        command: MfaCommand,
        at: DateTime<Utc>,
        map: fn(MfaError) -> AppError,
    ) -> Result<Proof, AppError> {
        let profile = profile_id.to_string();
        let valid = match unit.decide::<Mfa>(&profile, command, &self.totp).await {
            Ok(_) => true,
            Err(CommandError::Rejected(MfaError::InvalidCode | MfaError::CodeReplayed)) => false,
            Err(error) => return Err(rejected(error, map)),
        };
        let proof = self.count_proof(unit, Some(profile_id), throttle_id, address, valid, at).await?;
        if matches!(proof, Proof::Blocked { .. }) {
            unit.undo::<Mfa>(&profile);
        }
        Ok(proof)
    }

    /// Counts a proof of `profile_id` (none: an address no account has) from `address`
    /// (`valid` or not) on the throttle
    /// `throttle_id`, in `unit`. Blocked: the caller undoes what the proof decided.
    pub(crate) async fn count_proof(
        &self,
        unit: &mut Unit<'_>,
        profile_id: Option<Uuid>,
        throttle_id: &str,
        address: &str,
        valid: bool,
        at: DateTime<Utc>,
    ) -> Result<Proof, AppError> {
        let prove = ThrottleCommand::Prove { address: address.to_string(), profile_id, valid, at, policy: self.policy.throttle };
        let (events, _) = unit.decide::<Throttle>(throttle_id, prove, &()).await.map_err(|e| rejected(e, |never| match never {}))?;
        Ok(match events.first() {
            Some(ThrottleEvent::ProofAttempted { allowed: false, blocked_until, .. }) => {
                let retry_after_secs = blocked_until.map_or(1, |until| (until - at).num_seconds().max(1) as u64);
                Proof::Blocked { retry_after_secs }
            }
            _ if valid => Proof::Valid,
            _ => Proof::Wrong,
        })
    }
}

pub(super) fn mfa_error(error: MfaError) -> AppError {
    match error {
        MfaError::InvalidCode | MfaError::CodeReplayed => {
            AppError::Invalid(vec![("code".into(), "is not a valid, unused code".into())])
        }
        MfaError::AlreadyEnabled => AppError::Conflict(Conflict::MfaAlreadyEnabled),
        MfaError::NothingPending => AppError::Conflict(Conflict::MfaNotGenerated),
        MfaError::NotEnabled => AppError::Conflict(Conflict::MfaNotEnabled),
    }
}
