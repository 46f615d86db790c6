//! Sign-up: OPAQUE registration in two rounds, gated by an invitation unless
//! sign-up is open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use domain::invite_token::{InviteTokenCommand, InviteTokenError};
use domain::user::UserCommand;
use domain::username::{self as usernames, UsernameCommand, UsernameError};
use domain::{Bucket, InviteToken, User, Username};
use protocol::message;
use uuid::Uuid;

use crate::crypto::opaque;
use crate::store::RequestContext;
use super::{rejected, App, AppError, Conflict, Fields};

impl App {
    /// Checks the invitation without redeeming it.
    pub(super) async fn check_invitation(&self, token: Option<&str>, fields: &mut Fields) -> Result<Option<String>, AppError> {
        if self.policy.open_signup {
            return Ok(None);
        }
        let Some(token) = token else {
            fields.bad("signup_token", "is required while sign-up is invite-only");
            return Ok(None);
        };
        let id = self.token_id(Bucket::Signup, token);
        let state = self.store.load::<InviteToken>(&id).await?;
        if !state.is_issued() {
            return Err(AppError::TokenUnknown);
        }
        if state.is_redeemed() {
            return Err(AppError::Conflict(Conflict::TokenRedeemed));
        }
        Ok(Some(id))
    }

    pub(super) async fn check_username_free(&self, username: &str) -> Result<String, AppError> {
        let id = self.keys.aggregate_id("username", username);
        match self.store.load::<Username>(&id).await?.owner() {
            Some(_) => Err(AppError::Conflict(Conflict::UsernameTaken)),
            None => Ok(id),
        }
    }

    /// OPAQUE registration, first round: no state is written.
    pub async fn sign_up_start(
        &self,
        username: &str,
        token: Option<&str>,
        registration_request: &str,
    ) -> Result<String, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let request = fields.check("registration_request", message(registration_request, protocol::REGISTRATION_REQUEST_LEN));
        let (Some(username), Some(request)) = (username, request) else { return Err(fields.error()) };
        self.check_invitation(token, &mut fields).await?;
        if !fields.is_empty() {
            return Err(fields.error());
        }
        self.check_username_free(&username).await?;
        let response = opaque::registration_response(&self.keys.setup, &request, username.as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        Ok(URL_SAFE_NO_PAD.encode(response))
    }

    /// OPAQUE registration, final round: claims the username, redeems the
    /// invitation, registers the account. A finish that fails gives the name back
    /// and never consumes the invitation.
    pub async fn sign_up_finish(
        &self,
        username: &str,
        token: Option<&str>,
        registration_record: &str,
        email: Option<String>,
        meta: &RequestContext,
    ) -> Result<Uuid, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let record = fields.check("registration_record", crate::app::account::checked_record(registration_record));
        let (Some(username), Some(record)) = (username, record) else { return Err(fields.error()) };
        let invitation = self.check_invitation(token, &mut fields).await?;
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let name_id = self.check_username_free(&username).await?;

        let profile_id = Uuid::new_v4();
        self.store
            .execute::<Username>(&name_id, UsernameCommand::Claim { profile_id }, &(), meta)
            .await
            .map_err(|e| rejected(e, |_: UsernameError| AppError::Conflict(Conflict::UsernameTaken)))?;
        if let Some(token_id) = invitation {
            let redeemed = self
                .store
                .execute::<InviteToken>(&token_id, InviteTokenCommand::Redeem { profile_id }, &(), meta)
                .await;
            if let Err(error) = redeemed {
                self.release_username(&name_id, profile_id, meta).await;
                return Err(rejected(error, |e| match e {
                    InviteTokenError::Unknown => AppError::TokenUnknown,
                    _ => AppError::Conflict(Conflict::TokenRedeemed),
                }));
            }
        }
        let activation_email = email.clone();
        let register = UserCommand::Register {
            username,
            registration_record: record,
            email,
            at: Utc::now(),
        };
        self.store
            .execute::<User>(&profile_id.to_string(), register, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("account"))))?;
        if let Some(email) = &activation_email {
            // The account exists either way; a lost message is sent again on request
            // by nothing yet, so say so loudly.
            if let Err(error) = self.send_activation(profile_id, email, meta).await {
                tracing::warn!(%error, %profile_id, "the activation message could not be sent");
            }
        }
        Ok(profile_id)
    }

    async fn release_username(&self, name_id: &str, profile_id: Uuid, meta: &RequestContext) {
        let release = UsernameCommand::Release { profile_id };
        if let Err(error) = self.store.execute::<Username>(name_id, release, &(), meta).await {
            tracing::error!(?error, "could not give a username back after a failed sign-up");
        }
    }
}
