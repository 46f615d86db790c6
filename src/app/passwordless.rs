//! Passwordless sign-in by a code sent to an address the account has verified: by
//! email (`/v1/sign/in/otp/email`), text message (`/v1/sign/in/passwordless/sms`), or
//! a link in a mail (`/v1/sign/in/passwordless/email`, answered at `/v1/verify`).
//! The start answers at once whether or not the address belongs to an account, and
//! sends in the background; a code is single-use, expires, and every guess counts on
//! the account's throttle like a wrong password. The rules are in
//! `domain::sign_in_code`.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::reset_mail::{ResetMailCommand, ResetMailError};
use domain::sign_in_code::{SignInCodeCommand, SignInCodeEvent};
use domain::verification_code::Method;
use domain::phone_number::PhoneNumberCommand;
use domain::user::UserCommand;
use domain::username::UsernameCommand;
use domain::{EmailAddress, PhoneNumber, ResetMail, Session, SignInCode, Throttle, User, Username};
use rand::Rng;
use uuid::Uuid;
use webauthn_rs::prelude::Url;

use crate::store::transact;
use crate::store::{CommandError, RequestContext, Unit};
use super::assurance::{Factor, Proven};
use super::mfa::Proof;
use super::{random_token, rejected, App, AppError, Conflict, Fields, SignInResult, Tokens, Verified};

/// Where a sign-in code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
    /// A link with a ticket, by email.
    Link,
    /// A code by email that steps a session up (an account with nothing else).
    StepUp,
}

impl Channel {
    /// The request field that names the address.
    fn field(self) -> &'static str {
        match self {
            Channel::Email | Channel::Link | Channel::StepUp => "email",
            Channel::Sms => "phone_number",
        }
    }
    fn method(self) -> Method {
        match self {
            Channel::Email | Channel::Link | Channel::StepUp => Method::Email,
            Channel::Sms => Method::Phone,
        }
    }
    /// What such a code proves: the mailbox (`amr` `email`, never `otp`, which is
    /// TOTP's) or the phone (`sms`).
    fn factor(self) -> Factor {
        match self {
            Channel::Email | Channel::Link | Channel::StepUp => Factor::Email,
            Channel::Sms => Factor::Sms,
        }
    }
    fn normalise(self, address: &str) -> String {
        match self {
            Channel::Email | Channel::Link | Channel::StepUp => address.trim().to_lowercase(),
            Channel::Sms => address.trim().to_string(),
        }
    }
    /// The key a code id is derived under.
    fn kind(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "phone_number",
            Channel::Link => "link",
            Channel::StepUp => "step-up",
        }
    }
}

/// The username of an account created by a code: the channel and part of the
/// address's keyed id (it names neither the address nor anything guessable).
fn new_username(channel: Channel, code_id: &str) -> String {
    format!("{}-{}", channel.kind().replace('_', "-"), code_id.chars().filter(char::is_ascii_alphanumeric).take(16).collect::<String>()).to_lowercase()
}

/// Whether `candidate` is at or below one of the `allowed` URLs: the same scheme, host
/// and port, and a path that is the allowed one or inside it (so
/// `https://app.example.com.evil.test` is not `https://app.example.com`).
pub fn redirect_allowed(allowed: &[Url], candidate: &str) -> bool {
    let Ok(candidate) = Url::parse(candidate) else { return false };
    let plain = candidate.username().is_empty() && candidate.password().is_none();
    plain
        && matches!(candidate.scheme(), "https" | "http")
        && allowed.iter().any(|allowed| {
            let base = allowed.path().trim_end_matches('/');
            allowed.scheme() == candidate.scheme()
                && allowed.host_str() == candidate.host_str()
                && allowed.port_or_known_default() == candidate.port_or_known_default()
                && (base.is_empty() || candidate.path() == base || candidate.path().starts_with(&format!("{base}/")))
        })
}

impl App {
    /// Claims, in `unit`, the username an account gets from the code `code_id`.
    async fn claim_code_username_in(&self, unit: &mut Unit<'_>, channel: Channel, code_id: &str, profile_id: Uuid) -> Result<String, AppError> {
        let username = new_username(channel, code_id);
        unit.decide::<Username>(&self.keys.aggregate_id("username", &username), UsernameCommand::Claim { profile_id }, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::UsernameTaken)))?;
        Ok(username)
    }

    /// Decides, in `unit`, the account a first sign-in by code creates: its username,
    /// the address (the number claimed for SMS), verified by the code.
    async fn register_by_code_in(&self, unit: &mut Unit<'_>, channel: Channel, code_id: &str, profile_id: Uuid, address: &str, at: DateTime<Utc>) -> Result<(), AppError> {
        let username = self.claim_code_username_in(unit, channel, code_id, profile_id).await?;
        let (email, phone_number) = match channel {
            Channel::Sms => {
                unit.decide::<PhoneNumber>(&self.keys.aggregate_id("phone", address), PhoneNumberCommand::Claim { profile_id }, &())
                    .await
                    .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::PhoneNumberTaken)))?;
                (None, Some(address.to_string()))
            }
            Channel::Email | Channel::Link | Channel::StepUp => {
                self.claim_email_in(unit, address, profile_id).await?;
                (Some(channel.normalise(address)), None)
            }
        };
        let register = UserCommand::RegisterByCode { username, email, phone_number, at };
        unit.decide::<User>(&profile_id.to_string(), register, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("account"))))?;
        Ok(())
    }

    /// Decides, in `unit`, that the anonymous account `profile_id` whose link came
    /// back is real: a username, the address verified.
    async fn deanonymize_by_link_in(&self, unit: &mut Unit<'_>, profile_id: Uuid, code_id: &str, address: &str, at: DateTime<Utc>) -> Result<(), AppError> {
        let username = self.claim_code_username_in(unit, Channel::Link, code_id, profile_id).await?;
        self.claim_email_in(unit, address, profile_id).await?;
        unit.decide::<User>(&profile_id.to_string(), UserCommand::DeanonymizeByEmail { username, at }, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        Ok(())
    }

    /// `redirect_to` as a field check.
    pub(crate) fn allowed_redirect(&self, redirect_to: &str) -> Result<(), String> {
        redirect_allowed(&self.policy.allowed_redirects, redirect_to)
            .then_some(())
            .ok_or_else(|| "is not within AUTHD_ALLOWED_REDIRECT_URLS".to_string())
    }

    fn sign_in_code_id(&self, channel: Channel, address: &str) -> String {
        self.keys.aggregate_id("sign-in-code", &format!("{}\n{}", channel.kind(), channel.normalise(address)))
    }

    fn sign_in_code_hash(&self, channel: Channel, address: &str, code: &str) -> String {
        self.keys.aggregate_id("sign-in-code-hash", &format!("{}\n{}\n{}", channel.kind(), channel.normalise(address), code.trim()))
    }

    /// The account that verified this address.
    async fn owner_of(&self, channel: Channel, address: &str) -> Result<Option<Uuid>, AppError> {
        Ok(match channel {
            Channel::Email | Channel::Link | Channel::StepUp => self.email_owner(address).await?,
            Channel::Sms => self.store.load_current::<PhoneNumber>(&self.keys.aggregate_id("phone", address.trim())).await?.owner(),
        })
    }

    /// Step 1: a well-formed address gets 204 at once; when an account verified it
    /// (or sign-up is open), a code goes there, one message a minute per address.
    /// A link (`Channel::Link`) may send the browser on to `redirect_to`, which must
    /// be allowed (`AUTHD_ALLOWED_REDIRECT_URLS`; 422 otherwise).
    pub fn sign_in_code_start(
        self: &Arc<Self>,
        channel: Channel,
        address: &str,
        redirect_to: Option<&str>,
        meta: &RequestContext,
    ) -> Result<(), AppError> {
        let mut fields = Fields::default();
        fields.check(channel.field(), channel.method().check_consumer(address.trim()));
        if let Some(redirect_to) = redirect_to {
            fields.check("redirect_to", self.allowed_redirect(redirect_to));
        }
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let (app, address, meta) = (self.clone(), address.trim().to_string(), meta.clone());
        let redirect_to = redirect_to.map(str::to_string);
        tokio::spawn(async move {
            if let Err(error) = app.send_sign_in_code(channel, &address, redirect_to.as_deref(), &meta).await {
                tracing::warn!(%error, ?channel, "a sign-in code could not be sent");
            }
        });
        Ok(())
    }

    async fn send_sign_in_code(&self, channel: Channel, address: &str, redirect_to: Option<&str>, meta: &RequestContext) -> Result<(), AppError> {
        let profile_id = match self.owner_of(channel, address).await? {
            Some(owner) => owner,
            // Open sign-up: the code is for the account its first use creates.
            None if self.policy.open_signup => Uuid::new_v4(),
            None => return Ok(()),
        };
        self.send_code_to(channel, profile_id, address, redirect_to, meta).await
    }

    /// Issues a code (or a link's ticket) for `profile_id` and sends it to `address`,
    /// at most one message a minute per address.
    pub(super) async fn send_code_to(&self, channel: Channel, profile_id: Uuid, address: &str, redirect_to: Option<&str>, meta: &RequestContext) -> Result<(), AppError> {
        let at = Utc::now();
        let code_id = self.sign_in_code_id(channel, address);
        // One message a minute per address (the `ResetMail` rule, kept per address).
        match self.store.execute::<ResetMail>(&code_id, ResetMailCommand::Send { profile_id, at }, &(), meta).await {
            Ok(_) => {}
            Err(CommandError::Rejected(ResetMailError::TooSoon)) => return Ok(()),
            Err(CommandError::Store(error)) => return Err(error.into()),
        }
        // The server-wide hourly budget of texts: past it, no code is issued or sent
        // (the start already answered 204, as for any address).
        if channel == Channel::Sms && !self.spend_sms_budget(meta).await? {
            return Ok(());
        }
        let code = match channel {
            // A ticket names its code's id, so the link alone finds it, and carries
            // its address sealed to that id (an account it creates needs it).
            Channel::Link => {
                let sealed = self.keys.encrypt(code_id.as_bytes(), channel.normalise(address).as_bytes());
                format!("{code_id}.{}.{}", random_token(), URL_SAFE_NO_PAD.encode(sealed))
            }
            Channel::Email | Channel::Sms | Channel::StepUp => format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000)),
        };
        let code_hash = self.sign_in_code_hash(channel, address, &code);
        let issue = SignInCodeCommand::Issue { profile_id, code_hash, expires_at: at + self.policy.sign_in_code_ttl, at };
        self.store
            .execute::<SignInCode>(&code_id, issue, &(), meta)
            .await
            .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
        let minutes = self.policy.sign_in_code_ttl.num_minutes().max(1);
        match channel {
            Channel::Email => {
                let body = format!("Your sign-in code is {code}.\nIt expires in {minutes} minutes. If you did not ask for it, ignore this mail.\n");
                self.notify_by_mail(address, "Your sign-in code", &body).await;
            }
            Channel::StepUp => {
                let body = format!("Your confirmation code is {code}.\nIt expires in {minutes} minutes. If you did not ask for it, someone may be using your account: sign out everywhere.\n");
                self.notify_by_mail(address, "Confirm it is you", &body).await;
            }
            Channel::Sms => self.notify_by_text(address, &format!("Your sign-in code is {code}. It expires in {minutes} minutes.")).await,
            Channel::Link => {
                let mut link = Url::parse(&format!("{}/v1/verify", self.policy.public_url.trim_end_matches('/')))
                    .map_err(|e| AppError::Internal(format!("AUTHD_PUBLIC_URL: {e}")))?;
                link.query_pairs_mut().append_pair("ticket", &code);
                if let Some(redirect_to) = redirect_to {
                    link.query_pairs_mut().append_pair("redirect_to", redirect_to);
                }
                let body = format!("Sign in: {link}\nThe link works once, for {minutes} minutes. If you did not ask for it, ignore this mail.\n");
                self.notify_by_mail(address, "Your sign-in link", &body).await;
            }
        }
        Ok(())
    }

    /// Step 2: the code for the address → a session (`amr` `["otp"]` by email,
    /// `["sms"]` by text), decided and counted on the account's throttle in one
    /// unit. Wrong, used or expired: 401; a throttled address: 429, even with the
    /// right code (not spent).
    /// With open sign-up, the first sign-in of an address no account verified
    /// creates the account (no password; the address verified by the code).
    pub async fn sign_in_code_verify(&self, channel: Channel, address: &str, code: &str, meta: &RequestContext) -> Result<SignInResult, AppError> {
        let address = address.trim();
        let (code_hash, code_id) = (self.sign_in_code_hash(channel, address, code), self.sign_in_code_id(channel, address));
        match self.owner_of(channel, address).await? {
            Some(owner) => self.redeem_sign_in_code(channel, &code_id, code_hash, owner, None, None, meta).await,
            None => {
                let pending = self.store.load::<SignInCode>(&code_id).await?.profile_id().filter(|_| self.policy.open_signup);
                match pending {
                    Some(pending) => self.redeem_sign_in_code(channel, &code_id, code_hash, pending, Some(address), None, meta).await,
                    None => self.count_unknown_address(channel, address, meta).await,
                }
            }
        }
    }

    /// A code for an address no account has (and no open sign-up awaits): always
    /// wrong, and counted on the address's own throttle — the one a first sign-in by
    /// code counts on — with the account's rules, so guesses at an unknown address
    /// get the same 401s, then the same 429s, as at a known one.
    async fn count_unknown_address(&self, channel: Channel, address: &str, meta: &RequestContext) -> Result<SignInResult, AppError> {
        let at = Utc::now();
        let (throttle_id, client) = (self.address_throttle_id(channel, address, at), self.address_of(meta));
        let proof = transact!(self.store, &[(Throttle::TYPE, throttle_id.as_str())], meta, |unit| {
            self.count_proof(unit, None, &throttle_id, &client, false, at).await?
        });
        Err(proof.refusal(AppError::InvalidCredentials))
    }

    /// The throttle a code for `address` counts on while no account has the address
    /// (and an account its first use creates).
    fn address_throttle_id(&self, channel: Channel, address: &str, at: DateTime<Utc>) -> String {
        self.throttle_id(&format!("{}:{}", channel.kind(), channel.normalise(address)), at)
    }

    /// A sign-in link's ticket (`/v1/verify`) → a session (`amr` `["email"]`), or
    /// the MFA ticket. The ticket names its code and carries its address sealed under
    /// the server's key (bound to the code): the address's account signs in, an
    /// anonymous account that asked for the link becomes real, and with open sign-up
    /// an address no account verified gets a new account.
    pub async fn sign_in_link_verify(&self, ticket: &str, meta: &RequestContext) -> Result<SignInResult, AppError> {
        let mut parts = ticket.split('.');
        let code_id = parts.next().filter(|id| id.len() == 43 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let code_id = code_id.ok_or(AppError::InvalidCredentials)?;
        let sealed = parts.nth(1).and_then(|sealed| URL_SAFE_NO_PAD.decode(sealed).ok());
        let address = sealed.and_then(|sealed| self.keys.decrypt(code_id.as_bytes(), &sealed)).and_then(|address| String::from_utf8(address).ok());
        let address = address.ok_or(AppError::InvalidCredentials)?;
        let code_hash = self.sign_in_code_hash(Channel::Link, &address, ticket);
        let pending = self.store.load::<SignInCode>(code_id).await?.profile_id().ok_or(AppError::InvalidCredentials)?;
        let (owner, creating) = match self.email_owner(&address).await? {
            Some(owner) => (owner, None),
            None => {
                let user = self.store.load_current::<User>(&pending.to_string()).await?;
                match user.pending_email() {
                    Some(asked) if asked.eq_ignore_ascii_case(&address) => (pending, None),
                    _ if self.policy.open_signup => (pending, Some(address.as_str())),
                    _ => return Err(AppError::InvalidCredentials),
                }
            }
        };
        self.redeem_sign_in_code(Channel::Link, code_id, code_hash, owner, creating, None, meta).await
    }

    /// Step-up by email, step 1, for an account with no password, TOTP or passkey
    /// (403 `other_proof_required` otherwise): a code to its verified address (409
    /// `no_verified_email` without one), one message a minute.
    pub async fn elevate_email_start(&self, who: &Verified, meta: &RequestContext) -> Result<(), AppError> {
        let email = self.email_step_up_address(who).await?;
        self.send_code_to(Channel::StepUp, who.profile_id, &email, None, meta).await
    }

    /// Step-up by email, step 2: the code → the session elevated (`email`). Wrong,
    /// used or expired: 401, counted on the account's throttle like any code.
    pub async fn elevate_email_verify(&self, who: &Verified, otp: &str, meta: &RequestContext) -> Result<Tokens, AppError> {
        let email = self.email_step_up_address(who).await?;
        let (code_id, code_hash) = (self.sign_in_code_id(Channel::StepUp, &email), self.sign_in_code_hash(Channel::StepUp, &email, otp));
        self.redeem_sign_in_code(Channel::StepUp, &code_id, code_hash, who.profile_id, None, Some(who), meta).await?.into_session()
    }

    /// Redeems the code `code_id` for `profile_id`, counted on the account's throttle
    /// (a new account's: the address's) in one unit with the session it opens — and,
    /// for `creating` (the address), with the account it creates; or, `elevating`, with
    /// the step-up of that session.
    #[allow(clippy::too_many_arguments)]
    async fn redeem_sign_in_code(
        &self,
        channel: Channel,
        code_id: &str,
        code_hash: String,
        profile_id: Uuid,
        creating: Option<&str>,
        elevating: Option<&Verified>,
        meta: &RequestContext,
    ) -> Result<SignInResult, AppError> {
        let (at, profile) = (Utc::now(), profile_id.to_string());
        let user = self.store.load_current::<User>(&profile).await?;
        if user.is_registered() == creating.is_some() {
            return Err(AppError::InvalidCredentials);
        }
        let throttle_id = match creating {
            Some(address) => self.address_throttle_id(channel, address, at),
            None => self.account_throttle_id(&user, at),
        };
        let client = self.address_of(meta);
        // An anonymous account following its link becomes real with the address it
        // asked the link for (`upgrading`).
        let upgrading = user.pending_email().filter(|_| channel == Channel::Link);
        let name_id = (creating.is_some() || upgrading.is_some()).then(|| self.keys.aggregate_id("username", &new_username(channel, code_id)));
        let email_id = match channel {
            Channel::Sms => None,
            _ => creating.or(upgrading).map(|address| self.email_address_id(address)),
        };
        let phone_id = creating.filter(|_| channel == Channel::Sms).map(|address| self.keys.aggregate_id("phone", address));
        let session = elevating.map(|who| who.session_id.to_string());
        let mut locked = vec![(SignInCode::TYPE, code_id), (Throttle::TYPE, throttle_id.as_str()), (User::TYPE, profile.as_str())];
        locked.extend(session.as_deref().map(|id| (Session::TYPE, id)));
        locked.extend(name_id.as_deref().map(|id| (Username::TYPE, id)));
        locked.extend(phone_id.as_deref().map(|id| (PhoneNumber::TYPE, id)));
        locked.extend(email_id.as_deref().map(|id| (EmailAddress::TYPE, id)));
        transact!(self.store, &locked, meta, |unit| {
            let redeem = SignInCodeCommand::Redeem { code_hash: code_hash.clone(), at };
            let valid = match unit.decide::<SignInCode>(code_id, redeem, &()).await {
                Ok((events, _)) => matches!(events.first(), Some(SignInCodeEvent::SignInCodeRedeemed { profile_id: owner, .. }) if *owner == profile_id),
                Err(CommandError::Rejected(_)) => false,
                Err(CommandError::Store(error)) => return Err(error.into()),
            };
            let outcome = match self.count_proof(unit, Some(profile_id), &throttle_id, &client, valid, at).await? {
                Proof::Valid => {
                    let account = match creating {
                        Some(address) => self.register_by_code_in(unit, channel, code_id, profile_id, address, at).await,
                        None => match upgrading {
                            Some(address) => self.deanonymize_by_link_in(unit, profile_id, code_id, address, at).await,
                            None => Ok(()),
                        },
                    };
                    if account.is_err() {
                        // The code is spent and counted; nothing of the account is kept.
                        for id in [&name_id, &phone_id, &email_id].into_iter().flatten() {
                            unit.undo::<Username>(id);
                            unit.undo::<PhoneNumber>(id);
                            unit.undo::<EmailAddress>(id);
                        }
                        unit.undo::<User>(&profile);
                    }
                    match (account, elevating) {
                        (Err(error), _) => Err(error),
                        (Ok(()), None) => self.admit_in(unit, Proven::by(channel.factor(), profile_id, at)).await,
                        (Ok(()), Some(who)) => self.elevate_in(unit, who, channel.factor(), at).await.map(SignInResult::Session),
                    }
                }
                refused => {
                    if matches!(refused, Proof::Blocked { .. }) {
                        unit.undo::<SignInCode>(code_id);
                    }
                    Err(refused.refusal(AppError::InvalidCredentials))
                }
            };
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{redirect_allowed, Url};

    #[test]
    fn only_allowed_redirects_pass() {
        let allowed: Vec<Url> = ["https://app.example.com/auth", "http://localhost:3000/"].iter().map(|u| u.parse().expect("url")).collect();
        for ok in ["https://app.example.com/auth", "https://app.example.com/auth/done?x=1", "http://localhost:3000/anything"] {
            assert!(redirect_allowed(&allowed, ok), "{ok}");
        }
        for bad in [
            "https://app.example.com.evil.test/auth",
            "https://app.example.com/authx",
            "https://app.example.com/",
            "http://app.example.com/auth",
            "https://app.example.com:8443/auth",
            "https://user@app.example.com/auth",
            "javascript:alert(1)",
            "//app.example.com/auth",
            "http://localhost:3001/",
        ] {
            assert!(!redirect_allowed(&allowed, bad), "{bad}");
        }
        assert!(!redirect_allowed(&[], "https://app.example.com/auth"), "nothing is allowed by default");
    }
}
