//! Account lifecycle use cases: recovery with an admin-issued token, removal.
//! (The rules are in `domain::user`, `domain::username` and `domain::invite_token`.)

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use domain::invite_token::InviteTokenCommand;
use domain::user::{UserCommand, UserError, REGISTRATION_RECORD_LEN};
use domain::username::{self as usernames, UsernameCommand};
use domain::{Bucket, InviteToken, User, Username};
use uuid::Uuid;

use crate::app::{message, rejected, App, AppError, Fields, Verified};
use crate::opaque;
use crate::store::{CommandError, Metadata};

/// Why a recovery was refused, without saying whether the account exists.
fn recovery_refused() -> AppError {
    AppError::Invalid(vec![("recovery_token".into(), "is not a valid recovery token for this account".into())])
}

impl App {
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
        let request = fields.check("registration_request", message(registration_request, 32));
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
        meta: &Metadata,
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
    pub(crate) async fn reset_password(&self, profile_id: Uuid, record: Vec<u8>, meta: &Metadata) -> Result<(), AppError> {
        let reset = UserCommand::ResetPassword { registration_record: record, at: Utc::now() };
        self.store
            .execute::<User>(&profile_id.to_string(), reset, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::NotFound("account_not_found")))?;
        self.end_all_sessions(profile_id, meta).await?;
        Ok(())
    }

    /// Removes the account: the username becomes free and every session ends. Safe
    /// to repeat after a partial failure (each step accepts that it already ran).
    pub async fn remove_account(&self, who: &Verified, meta: &Metadata) -> Result<(), AppError> {
        let id = who.profile_id.to_string();
        let user = self.store.load::<User>(&id).await?;
        match self.store.execute::<User>(&id, UserCommand::Remove { at: Utc::now() }, &(), meta).await {
            Ok(_) | Err(CommandError::Rejected(UserError::NotRegistered)) => {}
            Err(error) => return Err(rejected(error, |e| AppError::Unavailable(e.to_string()))),
        }
        let name_id = self.keys.aggregate_id("username", user.username());
        let release = UsernameCommand::Release { profile_id: who.profile_id };
        match self.store.execute::<Username>(&name_id, release, &(), meta).await {
            Ok(_) | Err(CommandError::Rejected(_)) => {}
            Err(CommandError::Store(error)) => return Err(error.into()),
        }
        self.end_all_sessions(who.profile_id, meta).await?;
        Ok(())
    }
}

/// A base64url registration record that decodes as one.
pub(crate) fn checked_record(text: &str) -> Result<Vec<u8>, String> {
    let record = message(text, REGISTRATION_RECORD_LEN)?;
    opaque::check_record(&record).map_err(|e| e.to_string())?;
    Ok(record)
}
