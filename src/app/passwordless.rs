//! Passwordless sign-in by a code sent to an address the account has verified: by
//! email (`/v1/sign/in/otp/email`) or text message (`/v1/sign/in/passwordless/sms`).
//! The start answers at once whether or not the address belongs to an account, and
//! sends in the background; a code is single-use, expires, and every guess counts on
//! the account's throttle like a wrong password. The rules are in
//! `domain::sign_in_code`.

use std::sync::Arc;

use chrono::{Duration, Utc};
use cqrs_es::Aggregate;
use domain::reset_mail::{ResetMailCommand, ResetMailError};
use domain::sign_in_code::{SignInCodeCommand, SignInCodeEvent};
use domain::verifier::Method;
use domain::{PhoneNumber, ResetMail, SignInCode, Throttle, User};
use rand::Rng;
use uuid::Uuid;

use crate::store::{CommandError, Metadata};
use super::mfa::Proof;
use super::{rejected, App, AppError, Fields, Tokens};

/// How long a sign-in code is valid.
const CODE_TTL: Duration = Duration::minutes(10);

/// Where a sign-in code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    /// The request field that names the address.
    fn field(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "phone_number",
        }
    }
    fn method(self) -> Method {
        match self {
            Channel::Email => Method::Email,
            Channel::Sms => Method::Phone,
        }
    }
    /// The RFC 8176 name a session opened with such a code carries.
    fn amr(self) -> &'static str {
        match self {
            Channel::Email => "otp",
            Channel::Sms => "sms",
        }
    }
    fn normalise(self, address: &str) -> String {
        match self {
            Channel::Email => address.trim().to_lowercase(),
            Channel::Sms => address.trim().to_string(),
        }
    }
}

impl App {
    fn sign_in_code_id(&self, channel: Channel, address: &str) -> String {
        self.keys.aggregate_id("sign-in-code", &format!("{}\n{}", channel.field(), channel.normalise(address)))
    }

    fn sign_in_code_hash(&self, channel: Channel, address: &str, code: &str) -> String {
        self.keys.aggregate_id("sign-in-code-hash", &format!("{}\n{}\n{}", channel.field(), channel.normalise(address), code.trim()))
    }

    /// The account that verified this address.
    async fn owner_of(&self, channel: Channel, address: &str) -> Result<Option<Uuid>, AppError> {
        Ok(match channel {
            Channel::Email => {
                let owner = self.store.read_models().await?.verified_email_owner(address).await?;
                owner.and_then(|id| Uuid::parse_str(&id).ok())
            }
            Channel::Sms => self.store.load_current::<PhoneNumber>(&self.keys.aggregate_id("phone", address.trim())).await?.owner(),
        })
    }

    /// Step 1: a well-formed address gets 204 at once; when an account verified it,
    /// a code goes there (at most one account message a minute: reset mails and
    /// sign-in codes share the `ResetMail` limit).
    pub fn sign_in_code_start(self: &Arc<Self>, channel: Channel, address: &str, meta: &Metadata) -> Result<(), AppError> {
        let mut fields = Fields::default();
        fields.check(channel.field(), channel.method().check_consumer(address.trim()));
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let (app, address, meta) = (self.clone(), address.trim().to_string(), meta.clone());
        tokio::spawn(async move {
            if let Err(error) = app.send_sign_in_code(channel, &address, &meta).await {
                tracing::warn!(%error, ?channel, "a sign-in code could not be sent");
            }
        });
        Ok(())
    }

    async fn send_sign_in_code(&self, channel: Channel, address: &str, meta: &Metadata) -> Result<(), AppError> {
        let Some(profile_id) = self.owner_of(channel, address).await? else { return Ok(()) };
        let at = Utc::now();
        match self.store.execute::<ResetMail>(&profile_id.to_string(), ResetMailCommand::Send { profile_id, at }, &(), meta).await {
            Ok(_) => {}
            Err(CommandError::Rejected(ResetMailError::TooSoon)) => return Ok(()),
            Err(CommandError::Store(error)) => return Err(error.into()),
        }
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000));
        let code_hash = self.sign_in_code_hash(channel, address, &code);
        let issue = SignInCodeCommand::Issue { profile_id, code_hash, expires_at: at + CODE_TTL, at };
        self.store
            .execute::<SignInCode>(&self.sign_in_code_id(channel, address), issue, &(), meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
        match channel {
            Channel::Email => {
                let body = format!("Your sign-in code is {code}.\nIt expires in 10 minutes. If you did not ask for it, ignore this mail.\n");
                self.notify_by_mail(address, "Your sign-in code", &body).await;
            }
            Channel::Sms => self.notify_by_text(address, &format!("Your sign-in code is {code}. It expires in 10 minutes.")).await,
        }
        Ok(())
    }

    /// Step 2: the code for the address → a session (`amr` `["otp"]` by email,
    /// `["sms"]` by text), decided and counted on the account's throttle in one
    /// unit. Wrong, used or expired: 401; a throttled address: 429, even with the
    /// right code (not spent).
    pub async fn sign_in_code_verify(&self, channel: Channel, address: &str, code: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let (code_hash, code_id) = (self.sign_in_code_hash(channel, address, code), self.sign_in_code_id(channel, address));
        let Some(profile_id) = self.owner_of(channel, address).await? else { return Err(AppError::InvalidCredentials) };
        let user = self.store.load_current::<User>(&profile_id.to_string()).await?;
        if !user.is_registered() {
            return Err(AppError::InvalidCredentials);
        }
        let (throttle_id, client) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let mut unit = self.store.unit(&[(SignInCode::TYPE, code_id.as_str()), (Throttle::TYPE, throttle_id.as_str())], meta).await?;
        loop {
            let redeem = SignInCodeCommand::Redeem { code_hash: code_hash.clone(), at };
            let valid = match unit.decide::<SignInCode>(&code_id, redeem, &()).await {
                Ok((events, _)) => matches!(events.first(), Some(SignInCodeEvent::SignInCodeRedeemed { profile_id: owner, .. }) if *owner == profile_id),
                Err(CommandError::Rejected(_)) => false,
                Err(CommandError::Store(error)) => return Err(error.into()),
            };
            let outcome = match self.count_proof(&mut unit, profile_id, &throttle_id, &client, valid, at).await? {
                Proof::Valid => self.open_session_in(&mut unit, profile_id, vec![channel.amr().into()], at).await,
                refused => {
                    if matches!(refused, Proof::Blocked { .. }) {
                        unit.undo::<SignInCode>(&code_id);
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
