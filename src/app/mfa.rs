//! TOTP multi-factor authentication: generate a secret, enable and disable it.

use chrono::Utc;
use domain::mfa::{MfaCommand, MfaError};
use domain::{Mfa, User};

use crate::store::Metadata;
use super::{rejected, App, AppError, Conflict, TotpEnrollment, Verified};

impl App {
    /// A new TOTP secret for the account, pending until a code enables it.
    pub async fn mfa_generate(&self, who: &Verified, meta: &Metadata) -> Result<TotpEnrollment, AppError> {
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

    pub async fn mfa_enable(&self, who: &Verified, code: &str, meta: &Metadata) -> Result<(), AppError> {
        let command = MfaCommand::Enable { code: code.to_string(), at: Utc::now() };
        self.store.execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta).await.map_err(|e| rejected(e, mfa_error))?;
        Ok(())
    }

    pub async fn mfa_disable(&self, who: &Verified, code: &str, meta: &Metadata) -> Result<(), AppError> {
        let command = MfaCommand::Disable { code: code.to_string(), at: Utc::now() };
        self.store.execute::<Mfa>(&who.profile_id.to_string(), command, &self.totp, meta).await.map_err(|e| rejected(e, mfa_error))?;
        Ok(())
    }
}

fn mfa_error(error: MfaError) -> AppError {
    match error {
        MfaError::InvalidCode | MfaError::CodeReplayed => {
            AppError::Invalid(vec![("code".into(), "is not a valid, unused code".into())])
        }
        MfaError::AlreadyEnabled => AppError::Conflict(Conflict::MfaAlreadyEnabled),
        MfaError::NothingPending => AppError::Conflict(Conflict::MfaNotGenerated),
        MfaError::NotEnabled => AppError::Conflict(Conflict::MfaNotEnabled),
    }
}
