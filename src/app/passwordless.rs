//! Passwordless sign-in by an emailed code (`/v1/sign/in/otp/email`). The start
//! answers at once whether or not the address belongs to an account, and mails in
//! the background; a code is single-use, expires, and every guess counts on the
//! account's throttle like a wrong password. The rules are in `domain::email_otp`.

use std::sync::Arc;

use chrono::{Duration, Utc};
use cqrs_es::Aggregate;
use domain::email_otp::{EmailOtpCommand, EmailOtpEvent};
use domain::reset_mail::{ResetMailCommand, ResetMailError};
use domain::verifier::Method;
use domain::{EmailOtp, ResetMail, Throttle, User};
use rand::Rng;
use uuid::Uuid;

use crate::store::{CommandError, Metadata};
use super::mfa::Proof;
use super::{rejected, App, AppError, Fields, Tokens};

/// How long an emailed sign-in code is valid.
const CODE_TTL: Duration = Duration::minutes(10);

impl App {
    fn email_otp_id(&self, email: &str) -> String {
        self.keys.aggregate_id("email-otp", &email.to_lowercase())
    }

    fn email_otp_hash(&self, email: &str, code: &str) -> String {
        self.keys.aggregate_id("email-otp-code", &format!("{}\n{}", email.to_lowercase(), code.trim()))
    }

    /// The account whose verified email this is.
    async fn verified_email_owner(&self, email: &str) -> Result<Option<Uuid>, AppError> {
        let owner = self.store.read_models().await?.verified_email_owner(email).await?;
        Ok(owner.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    /// Step 1: a well-formed address gets 204 at once; when it is an account's
    /// verified email, a code goes there (at most one account mail a minute — reset
    /// and sign-in mails share the `ResetMail` limit).
    pub fn email_otp_start(self: &Arc<Self>, email: &str, meta: &Metadata) -> Result<(), AppError> {
        let mut fields = Fields::default();
        fields.check("email", Method::Email.check_consumer(email));
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let (app, email, meta) = (self.clone(), email.to_string(), meta.clone());
        tokio::spawn(async move {
            if let Err(error) = app.send_email_otp(&email, &meta).await {
                tracing::warn!(%error, "a sign-in code could not be sent");
            }
        });
        Ok(())
    }

    async fn send_email_otp(&self, email: &str, meta: &Metadata) -> Result<(), AppError> {
        let Some(profile_id) = self.verified_email_owner(email).await? else { return Ok(()) };
        let at = Utc::now();
        match self.store.execute::<ResetMail>(&profile_id.to_string(), ResetMailCommand::Send { profile_id, at }, &(), meta).await {
            Ok(_) => {}
            Err(CommandError::Rejected(ResetMailError::TooSoon)) => return Ok(()),
            Err(CommandError::Store(error)) => return Err(error.into()),
        }
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000));
        let issue = EmailOtpCommand::Issue { profile_id, code_hash: self.email_otp_hash(email, &code), expires_at: at + CODE_TTL, at };
        self.store.execute::<EmailOtp>(&self.email_otp_id(email), issue, &(), meta).await.map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
        let body = format!("Your sign-in code is {code}.\nIt expires in 10 minutes. If you did not ask for it, ignore this mail.\n");
        self.notify_by_mail(email, "Your sign-in code", &body).await;
        Ok(())
    }

    /// Step 2: the code for the address → a session (`amr` `["otp"]`), decided and
    /// counted on the account's throttle in one unit. Wrong, used or expired: 401; a
    /// throttled address: 429, even with the right code (not spent).
    pub async fn email_otp_verify(&self, email: &str, code: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let (at, code_hash, otp_id) = (Utc::now(), self.email_otp_hash(email, code), self.email_otp_id(email));
        let Some(profile_id) = self.verified_email_owner(email).await? else { return Err(AppError::InvalidCredentials) };
        let user = self.store.load_current::<User>(&profile_id.to_string()).await?;
        if !user.is_registered() {
            return Err(AppError::InvalidCredentials);
        }
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let mut unit = self.store.unit(&[(EmailOtp::TYPE, otp_id.as_str()), (Throttle::TYPE, throttle_id.as_str())], meta).await?;
        loop {
            let redeem = EmailOtpCommand::Redeem { code_hash: code_hash.clone(), at };
            let valid = match unit.decide::<EmailOtp>(&otp_id, redeem, &()).await {
                Ok((events, _)) => matches!(events.first(), Some(EmailOtpEvent::EmailOtpRedeemed { profile_id: owner, .. }) if *owner == profile_id),
                Err(CommandError::Rejected(_)) => false,
                Err(CommandError::Store(error)) => return Err(error.into()),
            };
            let outcome = match self.count_proof(&mut unit, profile_id, &throttle_id, &address, valid, at).await? {
                Proof::Valid => self.open_session_in(&mut unit, profile_id, vec!["otp".into()], at).await,
                refused => {
                    if matches!(refused, Proof::Blocked { .. }) {
                        unit.undo::<EmailOtp>(&otp_id);
                    }
                    Err(refused.refusal(AppError::InvalidCredentials))
                }
            };
            if unit.commit().await? {
                return outcome;
            }
        }
    }
}
