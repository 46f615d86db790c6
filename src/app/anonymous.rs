//! Anonymous users (`AUTHD_ANONYMOUS=true`): a session for nobody in particular
//! (`amr` `["anon"]`), which can become a real account — the same profile id — by
//! registering a username and password (OPAQUE). Anonymous sessions reach no
//! elevated route.

use chrono::Utc;
use cqrs_es::Aggregate;
use domain::user::UserCommand;
use domain::username::{self as usernames, UsernameCommand};
use domain::{User, Username};
use protocol::message;
use uuid::Uuid;

use crate::crypto::opaque;
use crate::store::transact;
use crate::store::RequestContext;
use super::assurance::{Factor, Proven};
use super::{rejected, App, AppError, Conflict, Denied, Fields, Tokens, Verified};

/// What the first step of making an anonymous account real answers.
pub enum Deanonymization {
    /// By password: the OPAQUE registration response.
    Registration(String),
    /// By email: the link is on its way.
    LinkSent,
}

/// Accounts looked at per retention pass.
const RETENTION_BATCH: i64 = 500;

impl App {
    /// Removes (shreds) the anonymous accounts that nobody used for `retention`: none
    /// of their sessions was opened, refreshed or elevated since. Returns how many.
    pub async fn remove_unused_anonymous(&self, retention: chrono::Duration) -> Result<usize, AppError> {
        let now = Utc::now();
        let cutoff = now - retention;
        let candidates = self.store.read_models().await?.anonymous_accounts_before(&cutoff.to_rfc3339(), RETENTION_BATCH).await?;
        let meta = RequestContext::server("anonymous-retention");
        let mut removed = 0;
        for id in candidates {
            let Ok(profile_id) = Uuid::parse_str(&id) else { continue };
            let user = self.store.load_current::<User>(&id).await?;
            if !user.is_registered() || !user.is_anonymous() {
                continue;
            }
            let mut last_used = None;
            for session in self.store.read_models().await?.active_sessions(&id).await? {
                let session = self.store.load_current::<domain::Session>(&session).await?;
                last_used = last_used.max(session.last_used_at());
            }
            if last_used.is_some_and(|at| at > cutoff) {
                continue;
            }
            self.remove(profile_id, &meta).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// A new anonymous account and its session, in one unit.
    pub async fn anonymous_sign_in(&self, meta: &RequestContext) -> Result<Tokens, AppError> {
        let (profile_id, at) = (Uuid::new_v4(), Utc::now());
        transact!(self.store, &[], meta, |unit| {
            unit.decide_new::<User>(&profile_id.to_string(), UserCommand::RegisterAnonymous { at }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("account"))))?;
            let tokens = self.admit_in(unit, Proven::by(Factor::Anonymous, profile_id, at)).await?.into_session()?;
            Ok(tokens)
        })
    }

    /// Deanonymize, step 1, by `method`: `password` answers the OPAQUE registration
    /// response (then [`App::deanonymize_finish`]); `email` mails a link.
    pub async fn deanonymize(
        &self,
        who: &Verified,
        method: &str,
        username: Option<&str>,
        registration_request: Option<&str>,
        email: Option<&str>,
        meta: &RequestContext,
    ) -> Result<Deanonymization, AppError> {
        if method == "email" {
            self.deanonymize_by_email(who, email, meta).await?;
            return Ok(Deanonymization::LinkSent);
        }
        self.deanonymize_start(who, method, username, registration_request, meta).await.map(Deanonymization::Registration)
    }

    /// Deanonymize by email: a link to `email` (which follows as a sign-in link does);
    /// following it makes the account real with that address, verified. An address
    /// another account verified gets a notice instead, never a link into this account
    /// — and the answer is the same.
    async fn deanonymize_by_email(&self, who: &Verified, email: Option<&str>, meta: &RequestContext) -> Result<(), AppError> {
        let mut fields = Fields::default();
        let email = email.unwrap_or_default().trim().to_string();
        fields.check("email", domain::verification_code::Method::Email.check_consumer(&email));
        if !fields.is_empty() {
            return Err(fields.error());
        }
        if !who.anonymous {
            return Err(AppError::Forbidden(Denied::NotAnonymous));
        }
        if self.email_owner(&email).await?.is_some_and(|owner| owner != who.profile_id) {
            let notice = "Someone asked to use this address for a new account. It already belongs to yours, so nothing was changed.\n\
                          If that was not you, you need do nothing.\n";
            self.notify_by_mail(&email, "Your address was used to sign up", notice).await;
            return Ok(());
        }
        let start = UserCommand::StartDeanonymizeByEmail { email: email.clone(), at: Utc::now() };
        self.store
            .execute::<User>(&who.profile_id.to_string(), start, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::Forbidden(Denied::NotAnonymous)))?;
        self.send_code_to(super::Channel::Link, who.profile_id, &email, None, meta).await
    }

    /// Deanonymize, step 1: the username (free, kept until step 2) and the OPAQUE
    /// registration request of the new password.
    async fn deanonymize_start(&self, who: &Verified, method: &str, username: Option<&str>, registration_request: Option<&str>, meta: &RequestContext) -> Result<String, AppError> {
        let mut fields = Fields::default();
        if method != "password" {
            fields.bad("method", "must be \"password\" or \"email\"");
        }
        let username = fields.check("username", usernames::normalize(username.unwrap_or_default()));
        let request = fields.check("registration_request", message(registration_request.unwrap_or_default(), protocol::REGISTRATION_REQUEST_LEN));
        let (Some(username), Some(request), true) = (username, request, fields.is_empty()) else { return Err(fields.error()) };
        if !who.anonymous {
            return Err(AppError::Forbidden(Denied::NotAnonymous));
        }
        self.check_username_free(&username).await?;
        let response = opaque::registration_response(&self.keys.setup, &request, username.as_bytes())
            .map_err(|e| AppError::Invalid(vec![("registration_request".into(), e.to_string())]))?;
        let start = UserCommand::StartDeanonymize { username, at: Utc::now() };
        self.store
            .execute::<User>(&who.profile_id.to_string(), start, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::Forbidden(Denied::NotAnonymous)))?;
        use base64::Engine;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(response))
    }

    /// Deanonymize, step 2: the username is claimed and the password registered in
    /// one unit; the account keeps its profile id. An email gets an activation code.
    pub async fn deanonymize_finish(&self, who: &Verified, registration_record: &str, email: Option<String>, meta: &RequestContext) -> Result<(), AppError> {
        let mut fields = Fields::default();
        let record = fields.check("registration_record", super::account::checked_record(registration_record));
        let Some(record) = record else { return Err(fields.error()) };
        if !who.anonymous {
            return Err(AppError::Forbidden(Denied::NotAnonymous));
        }
        let profile = who.profile_id.to_string();
        let user = self.store.load_current::<User>(&profile).await?;
        let username = user.pending_username().ok_or(AppError::Forbidden(Denied::NotAnonymous))?.to_string();
        let name_id = self.keys.aggregate_id("username", &username);
        transact!(self.store, &[(User::TYPE, profile.as_str()), (Username::TYPE, name_id.as_str())], meta, |unit| {
            unit.decide::<Username>(&name_id, UsernameCommand::Claim { profile_id: who.profile_id }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::UsernameTaken)))?;
            let finish = UserCommand::Deanonymize { registration_record: record.clone(), email: email.clone(), at: Utc::now() };
            unit.decide::<User>(&profile, finish, &()).await.map_err(|e| rejected(e, |_| AppError::Forbidden(Denied::NotAnonymous)))?;
        });
        if let Some(email) = &email {
            if let Err(error) = self.send_activation(who.profile_id, email, meta).await {
                tracing::warn!(%error, "the activation message could not be sent");
            }
        }
        Ok(())
    }
}
