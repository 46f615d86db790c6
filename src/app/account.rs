//! Account lifecycle use cases: email activation, forgotten password (an emailed
//! code), recovery with an admin-issued token, removal. The rules are in
//! `domain::user`, `domain::username`, `domain::invite_token` and
//! `domain::verification_code`; codes travel through the verification service.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use cqrs_es::Aggregate;
use domain::invite_token::InviteTokenCommand;
use domain::reset_mail::{ResetMailCommand, ResetMailError};
use domain::user::{UserCommand, UserError, REGISTRATION_RECORD_LEN};
use domain::username::{self as usernames, UsernameCommand};
use domain::verification_code::{CodePurpose, Method, PurposeKind};
use domain::email_address::EmailAddressCommand;
use domain::identity::IdentityCommand;
use domain::passkey::PasskeyCredentialCommand;
use domain::phone_number::PhoneNumberCommand;
use domain::{Bucket, EmailAddress, Identity, IdentityLinks, InviteToken, PasskeyCredential, Passkeys, PhoneNumber, ResetMail, User, Username};
use projections::UserView;
use protocol::message;
use uuid::Uuid;

use crate::crypto::opaque;
use crate::store::transact;
use crate::store::{CommandError, RequestContext};
use super::{rejected, App, AppError, Conflict, Fields, Missing, Verified};

/// The account an emailed code of purpose `kind` is for.
fn account_for(payload: &serde_json::Value, kind: PurposeKind) -> Result<Uuid, AppError> {
    CodePurpose::expect(payload, kind).map_err(|why| AppError::Invalid(vec![("verification_id".into(), why)]))
}

/// Why a recovery was refused, without saying whether the account exists.
fn recovery_refused() -> AppError {
    AppError::Invalid(vec![("recovery_token".into(), "is not a valid recovery token for this account".into())])
}

impl App {
    /// The account holding a username, if any.
    pub async fn account_of(&self, username: &str) -> Result<Option<Uuid>, AppError> {
        let Ok(username) = usernames::normalize(username) else { return Ok(None) };
        Ok(self.store.load::<Username>(&self.keys.aggregate_id("username", &username)).await?.owner())
    }


    /// The account's verified phone number (from the account itself, in memory).
    pub async fn phone_number(&self, profile_id: Uuid) -> Result<Option<String>, AppError> {
        Ok(self.store.load_current::<User>(&profile_id.to_string()).await?.phone_number().map(str::to_string))
    }

    pub async fn user(&self, profile_id: Uuid) -> Result<Option<UserView>, AppError> {
        Ok(self.store.read_models().await?.user(&profile_id.to_string()).await?)
    }


    /// Sends the activation code for a new account's email (24 hours valid).
    pub(crate) async fn send_activation(&self, profile_id: Uuid, email: &str, meta: &RequestContext) -> Result<String, AppError> {
        self.send_email_code(
            email,
            "Activate your account",
            "Your activation code is {{{CODE}}}.\nVerification id: {{{VERIFICATION_ID}}}\n",
            CodePurpose::Activate { profile_id }.to_payload(),
            PurposeKind::Activate.ttl(),
            meta,
        )
        .await
    }

    /// Activation: the emailed code proves the address; the email becomes verified
    /// and the account's (409 `email_taken` when another account verified it first).
    pub async fn activate(&self, verification_id: &str, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        let redeemed = self.redeem_code(Method::Email.as_str(), verification_id, code, meta).await?;
        let profile_id = account_for(&redeemed.payload, PurposeKind::Activate)?;
        let (profile, email_id) = (profile_id.to_string(), self.email_address_id(&redeemed.consumer));
        transact!(self.store, &[(User::TYPE, profile.as_str()), (EmailAddress::TYPE, email_id.as_str())], meta, |unit| {
            self.claim_email_in(unit, &redeemed.consumer, profile_id).await?;
            let verify = UserCommand::VerifyEmail { email: redeemed.consumer.clone(), at: Utc::now() };
            unit.decide::<User>(&profile, verify, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::EmailAlreadyVerified)))?;
            Ok(())
        })
    }

    /// Forgotten password: when the account exists and has a verified email, a reset
    /// code goes there (15 minutes valid), one mail a minute at most. Answers at once either way, and sends in
    /// the background, so neither the answer nor its timing reveals the account.
    pub fn forgot(self: &Arc<Self>, username: &str, meta: &RequestContext) {
        let (app, username, meta) = (self.clone(), username.to_string(), meta.clone());
        tokio::spawn(async move {
            if let Err(error) = app.send_reset(&username, &meta).await {
                tracing::warn!(%error, "a password reset code could not be sent");
            }
        });
    }

    async fn send_reset(&self, username: &str, meta: &RequestContext) -> Result<(), AppError> {
        let Some(profile_id) = self.account_of(username).await? else { return Ok(()) };
        let user = self.store.load::<User>(&profile_id.to_string()).await?;
        let (Some(email), true) = (user.email(), user.email_verified()) else { return Ok(()) };
        // One mail a minute at most, decided on the account's own aggregate.
        let send = ResetMailCommand::Send { profile_id, at: Utc::now() };
        match self.store.execute::<ResetMail>(&profile_id.to_string(), send, &(), meta).await {
            Ok(_) => {}
            Err(CommandError::Rejected(ResetMailError::TooSoon)) => return Ok(()),
            Err(CommandError::Store(error)) => return Err(error.into()),
        }
        self.send_email_code(
            email,
            "Reset your password",
            "Your password reset code is {{{CODE}}}.\nVerification id: {{{VERIFICATION_ID}}}\n",
            CodePurpose::Reset { profile_id }.to_payload(),
            PurposeKind::Reset.ttl(),
            meta,
        )
        .await?;
        Ok(())
    }

    /// Reset, step 1: a fresh OPAQUE registration for the account of a live reset
    /// code. The code is checked here (a wrong one counts) and spent by step 2,
    /// before anything changes.
    pub async fn reset_start(
        &self,
        verification_id: &str,
        code: &str,
        registration_request: &str,
        meta: &RequestContext,
    ) -> Result<String, AppError> {
        let mut fields = Fields::default();
        let request = fields.check("registration_request", message(registration_request, protocol::REGISTRATION_REQUEST_LEN));
        let Some(request) = request else { return Err(fields.error()) };
        let verifier = self.verifier(Method::Email, verification_id).await?;
        let profile_id = account_for(&verifier.payload, PurposeKind::Reset)?;
        self.check_code(Method::Email, verification_id, code, meta).await?;
        let user = self.store.load::<User>(&profile_id.to_string()).await?;
        if !user.is_registered() {
            return Err(AppError::NotFound(Missing::Verification));
        }
        let response = opaque::registration_response(&self.keys.setup, &request, user.username().as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        Ok(URL_SAFE_NO_PAD.encode(response))
    }

    /// Reset, step 2: the code is checked and spent, the new record replaces the old
    /// one, and every session of the account ends.
    pub async fn reset_finish(
        &self,
        verification_id: &str,
        code: &str,
        registration_record: &str,
        meta: &RequestContext,
    ) -> Result<(), AppError> {
        let mut fields = Fields::default();
        let record = fields.check("registration_record", checked_record(registration_record));
        let Some(record) = record else { return Err(fields.error()) };
        let redeemed = self.redeem_code(Method::Email.as_str(), verification_id, code, meta).await?;
        let profile_id = account_for(&redeemed.payload, PurposeKind::Reset)?;
        self.reset_password(profile_id, record, meta).await
    }

    /// The account and the token's aggregate id, when `token` is a live recovery
    /// token issued for `username`'s account.
    async fn recovery(&self, username: &str, token: &str) -> Result<(Uuid, String), AppError> {
        let name_id = self.keys.aggregate_id("username", username);
        let profile_id = self.store.load::<Username>(&name_id).await?.owner().ok_or_else(recovery_refused)?;
        let token_id = self.token_id(Bucket::Profile, token);
        if !self.store.load::<InviteToken>(&token_id).await?.redeemable_by(profile_id) {
            return Err(recovery_refused());
        }
        Ok((profile_id, token_id))
    }

    /// Recovery, step 1: a fresh OPAQUE registration for the account, authorised by
    /// a recovery token. Nothing is stored yet.
    pub async fn recover_start(&self, username: &str, token: &str, registration_request: &str) -> Result<String, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let request = fields.check("registration_request", message(registration_request, protocol::REGISTRATION_REQUEST_LEN));
        let (Some(username), Some(request)) = (username, request) else { return Err(fields.error()) };
        self.recovery(&username, token).await?;
        let response = opaque::registration_response(&self.keys.setup, &request, username.as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        Ok(URL_SAFE_NO_PAD.encode(response))
    }

    /// Recovery, step 2: redeems the token, replaces the OPAQUE record, ends every
    /// session of the account.
    pub async fn recover_finish(
        &self,
        username: &str,
        token: &str,
        registration_record: &str,
        meta: &RequestContext,
    ) -> Result<(), AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let record = fields.check("registration_record", checked_record(registration_record));
        let (Some(username), Some(record)) = (username, record) else { return Err(fields.error()) };
        let (profile_id, token_id) = self.recovery(&username, token).await?;
        self.store
            .execute::<InviteToken>(&token_id, InviteTokenCommand::Redeem { profile_id }, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| recovery_refused()))?;
        self.reset_password(profile_id, record, meta).await
    }

    /// A new OPAQUE record for the account; every session ends.
    pub(crate) async fn reset_password(&self, profile_id: Uuid, record: Vec<u8>, meta: &RequestContext) -> Result<(), AppError> {
        let reset = UserCommand::ResetPassword { registration_record: record, at: Utc::now() };
        self.store
            .execute::<User>(&profile_id.to_string(), reset, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Account)))?;
        self.end_all_sessions(profile_id, None, meta).await?;
        Ok(())
    }

    /// Password change, step 1 (elevated): a fresh OPAQUE registration for the
    /// holder's account. Nothing is stored yet.
    pub async fn change_password_start(&self, who: &Verified, registration_request: &str) -> Result<String, AppError> {
        self.require_elevation(who).await?;
        let mut fields = Fields::default();
        let request = fields.check("registration_request", message(registration_request, protocol::REGISTRATION_REQUEST_LEN));
        let Some(request) = request else { return Err(fields.error()) };
        let user = self.store.load_current::<User>(&who.profile_id.to_string()).await?;
        if !user.is_registered() {
            return Err(AppError::NotFound(Missing::Account));
        }
        let response = opaque::registration_response(&self.keys.setup, &request, user.username().as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        Ok(URL_SAFE_NO_PAD.encode(response))
    }

    /// Password change, step 2 (elevated): the new record replaces the old one and
    /// every other session of the account ends; this one goes on.
    pub async fn change_password_finish(&self, who: &Verified, registration_record: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let mut fields = Fields::default();
        let record = fields.check("registration_record", checked_record(registration_record));
        let Some(record) = record else { return Err(fields.error()) };
        let change = UserCommand::ChangePassword { registration_record: record, kept_session: who.session_id, at: Utc::now() };
        self.store
            .execute::<User>(&who.profile_id.to_string(), change, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Account)))?;
        self.end_all_sessions(who.profile_id, Some(who.session_id), meta).await?;
        Ok(())
    }

    /// Email change, step 1 (elevated): a code to the new address (15 minutes), a
    /// notice to the old one. Nothing changes until the code comes back.
    pub async fn change_email_start(&self, who: &Verified, new_email: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let mut fields = Fields::default();
        fields.check("new_email", Method::Email.check_consumer(new_email));
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let user = self.store.load_current::<User>(&who.profile_id.to_string()).await?;
        let purpose = CodePurpose::ChangeEmail { profile_id: who.profile_id };
        let body = "Your confirmation code is {{{CODE}}}.\nVerification id: {{{VERIFICATION_ID}}}\n";
        self.send_email_code(new_email, "Confirm your new email address", body, purpose.to_payload(), purpose.ttl(), meta).await?;
        if let Some(old) = user.email().filter(|old| *old != new_email) {
            let notice = format!(
                "A change of your account's email address to {new_email} was requested.\n\
                 If that was not you, sign in, change your password and end your other sessions.\n"
            );
            self.notify_by_mail(old, "Your email address is being changed", &notice).await;
        }
        Ok(())
    }

    /// Email change, step 2: the code sent to the new address makes it the
    /// account's, verified.
    pub async fn change_email_verify(&self, who: &Verified, verification_id: &str, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        let email = self.redeem_own_code(who, Method::Email, PurposeKind::ChangeEmail, verification_id, code, meta).await?;
        let profile = who.profile_id.to_string();
        let user = self.store.load::<User>(&profile).await?;
        let old = user.email().filter(|old| user.email_verified() && !old.eq_ignore_ascii_case(&email)).map(str::to_string);
        let (new_id, old_id) = (self.email_address_id(&email), old.as_deref().map(|old| self.email_address_id(old)));
        let mut locked = vec![(User::TYPE, profile.as_str()), (EmailAddress::TYPE, new_id.as_str())];
        locked.extend(old_id.as_deref().map(|id| (EmailAddress::TYPE, id)));
        transact!(self.store, &locked, meta, |unit| {
            self.claim_email_in(unit, &email, who.profile_id).await?;
            if let Some(old) = &old {
                self.release_email_in(unit, old, who.profile_id).await?;
            }
            let change = UserCommand::ChangeEmail { email: email.clone(), at: Utc::now() };
            unit.decide::<User>(&profile, change, &()).await.map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Account)))?;
            Ok(())
        })
    }

    /// Phone number, step 1 (elevated): a code texted to it (E.164) through the SMS
    /// webhook (503 `delivery_unavailable` without one), within the server's hourly
    /// budget of texts (429 past it).
    pub async fn change_phone_start(&self, who: &Verified, phone_number: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let mut fields = Fields::default();
        fields.check("phone_number", Method::Phone.check_consumer(phone_number));
        if !fields.is_empty() {
            return Err(fields.error());
        }
        if !self.spend_sms_budget(meta).await? {
            return Err(AppError::TooManyAttempts { retry_after_secs: self.next_sms_budget_in() });
        }
        let purpose = CodePurpose::ChangePhone { profile_id: who.profile_id };
        let body = "Your authd code is {{{CODE}}} (verification id {{{VERIFICATION_ID}}}).";
        self.send_code(Method::Phone, phone_number, None, body, purpose.to_payload(), purpose.ttl(), meta).await?;
        Ok(())
    }

    /// Phone number, step 2: the texted code makes the number the account's.
    /// The number becomes the account's only if no other account holds it (409
    /// `phone_number_taken`); the account's former number is free again.
    pub async fn change_phone_verify(&self, who: &Verified, verification_id: &str, code: &str, meta: &RequestContext) -> Result<(), AppError> {
        let phone_number = self.redeem_own_code(who, Method::Phone, PurposeKind::ChangePhone, verification_id, code, meta).await?;
        let (profile_id, profile) = (who.profile_id, who.profile_id.to_string());
        let new_id = self.keys.aggregate_id("phone", &phone_number);
        let user = self.store.load_current::<User>(&profile).await?;
        let old_id = user.phone_number().map(|old| self.keys.aggregate_id("phone", old)).filter(|old| *old != new_id);
        let mut locked = vec![(User::TYPE, profile.as_str()), (PhoneNumber::TYPE, new_id.as_str())];
        locked.extend(old_id.as_deref().map(|old| (PhoneNumber::TYPE, old)));
        transact!(self.store, &locked, meta, |unit| {
            unit.decide::<PhoneNumber>(&new_id, PhoneNumberCommand::Claim { profile_id }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::PhoneNumberTaken)))?;
            if let Some(old_id) = &old_id {
                unit.decide::<PhoneNumber>(old_id, PhoneNumberCommand::Release { profile_id }, &()).await.map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
            }
            let change = UserCommand::ChangePhoneNumber { phone_number: phone_number.clone(), at: Utc::now() };
            unit.decide::<User>(&profile, change, &()).await.map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Account)))?;
            Ok(())
        })
    }

    /// Redeems a code of purpose `kind` sent for the holder's own account (checked
    /// before the code is tried, so nobody spends another account's code): the
    /// address it proves.
    async fn redeem_own_code(
        &self,
        who: &Verified,
        method: Method,
        kind: PurposeKind,
        verification_id: &str,
        code: &str,
        meta: &RequestContext,
    ) -> Result<String, AppError> {
        let verifier = self.verifier(method, verification_id).await?;
        if account_for(&verifier.payload, kind)? != who.profile_id {
            return Err(AppError::NotFound(Missing::Verification));
        }
        Ok(self.redeem_code(method.as_str(), verification_id, code, meta).await?.consumer)
    }

    /// Removes the account: the username becomes free and every session ends. Safe
    /// to repeat after a partial failure (each step accepts that it already ran).
    /// Needs a recent proof of presence (step-up).
    pub async fn remove_account(&self, who: &Verified, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        self.remove(who.profile_id, meta).await
    }

    /// Removes the account `profile_id` (the checks are the caller's). One unit
    /// removes it and releases every owner claim it holds — its username, phone
    /// number, passkey credential ids and outside identities — so each can be
    /// claimed again at once; then every session ends, the outbox forgets the
    /// account's mail (to every address it had or asked a code or link for), and the
    /// personal data in the log is shredded. Safe to repeat after a partial failure.
    pub(crate) async fn remove(&self, profile_id: Uuid, meta: &RequestContext) -> Result<(), AppError> {
        let id = profile_id.to_string();
        let user = self.store.load::<User>(&id).await?;
        let name_id = self.keys.aggregate_id("username", user.username());
        let phone_id = user.phone_number().map(|number| self.keys.aggregate_id("phone", number));
        let credential_ids: Vec<String> = self
            .store
            .load::<Passkeys>(&id)
            .await?
            .credentials()
            .iter()
            .map(|credential| self.keys.aggregate_id("passkey", &credential.credential_id))
            .collect();
        let identity_ids = self.store.load::<IdentityLinks>(&id).await?.identities().to_vec();
        let email_id = user.email().filter(|_| user.email_verified()).map(|email| self.email_address_id(email));
        let mut locked = vec![(User::TYPE, id.as_str()), (Username::TYPE, name_id.as_str())];
        locked.extend(phone_id.as_deref().map(|phone| (PhoneNumber::TYPE, phone)));
        locked.extend(email_id.as_deref().map(|email| (EmailAddress::TYPE, email)));
        locked.extend(credential_ids.iter().map(|claim| (PasskeyCredential::TYPE, claim.as_str())));
        locked.extend(identity_ids.iter().map(|identity| (Identity::TYPE, identity.as_str())));
        transact!(self.store, &locked, meta, |unit| {
            match unit.decide::<User>(&id, UserCommand::Remove { at: Utc::now() }, &()).await {
                Ok(_) | Err(CommandError::Rejected(UserError::NotRegistered)) => {}
                Err(error) => return Err(rejected(error, |_| AppError::NotFound(Missing::Account))),
            }
            // A claim another account (or none) holds now is left alone.
            match unit.decide::<Username>(&name_id, UsernameCommand::Release { profile_id }, &()).await {
                Ok(_) | Err(CommandError::Rejected(_)) => {}
                Err(CommandError::Store(error)) => return Err(error.into()),
            }
            if let Some(email_id) = &email_id {
                unit.decide::<EmailAddress>(email_id, EmailAddressCommand::Release { profile_id }, &())
                    .await
                    .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
            }
            if let Some(phone_id) = &phone_id {
                unit.decide::<PhoneNumber>(phone_id, PhoneNumberCommand::Release { profile_id }, &())
                    .await
                    .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
            }
            for claim in &credential_ids {
                match unit.decide::<PasskeyCredential>(claim, PasskeyCredentialCommand::Release { profile_id }, &()).await {
                    Ok(_) | Err(CommandError::Rejected(_)) => {}
                    Err(CommandError::Store(error)) => return Err(error.into()),
                }
            }
            for identity in &identity_ids {
                unit.decide::<Identity>(identity, IdentityCommand::Release { profile_id }, &())
                    .await
                    .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
            }
        });
        self.end_all_sessions(profile_id, None, meta).await?;
        // The account's mail in the outbox goes too (addresses, codes, links): to
        // every address it has had, the one an anonymous account asked a link for,
        // and those it asked a code for (an email change not yet confirmed).
        let mut addresses: Vec<String> = user.emails().chain(user.pending_email()).map(str::to_string).collect();
        addresses.extend(self.store.read_models().await?.verifier_consumers_of(Method::Email.as_str(), &id).await?);
        addresses.sort_unstable();
        addresses.dedup();
        for email in addresses.iter().filter(|email| email.as_str() != crate::store::shred::ERASED) {
            self.forget_mail_to(email).await?;
        }
        // Last, so every step above could still read the account: from here on
        // its personal data in the log reads as erased (src/store/shred.rs).
        self.store.shred(&id).await?;
        Ok(())
    }
}

/// A base64url registration record that decodes as one.
pub(crate) fn checked_record(text: &str) -> Result<Vec<u8>, String> {
    let record = message(text, REGISTRATION_RECORD_LEN)?;
    opaque::check_record(&record).map_err(|e| e.to_string())?;
    Ok(record)
}
