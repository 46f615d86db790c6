//! Sign-in: OPAQUE login (KE1 → KE2, KE3), then the second factor when MFA is on.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use domain::mfa::MfaCommand;
use domain::mfa_challenge::MfaChallengeCommand;
use domain::sign_in::{SignInCommand, SignInEvent};
use domain::user::UserCommand;
use domain::username::{self as usernames};
use domain::{Mfa, MfaChallenge, SignIn, User, Username};

use uuid::Uuid;
use crate::crypto::opaque::{self};
use crate::store::Metadata;

use protocol::message;
use super::{random_token, rejected, App, AppError, Denied, Fields, SignInResult, Tokens};

/// Wrong codes an `mfa_ticket` survives.
const MFA_TICKET_MAX_FAILURES: u32 = 5;

impl App {
    /// Answers KE1 with KE2 and a sign-in id that carries the sealed login state.
    /// Unknown usernames get the same shape, the same work and an event too.
    pub async fn sign_in_start(
        &self,
        username: &str,
        credential_request: &str,
        meta: &Metadata,
    ) -> Result<(String, String), AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let ke1 = fields.check("credential_request", message(credential_request, protocol::KE1_LEN));
        let (Some(username), Some(ke1)) = (username, ke1) else { return Err(fields.error()) };

        let at = Utc::now();
        let name_id = self.keys.aggregate_id("username", &username);
        let account = match self.store.load::<Username>(&name_id).await?.owner() {
            Some(profile_id) => {
                let user = self.store.load::<User>(&profile_id.to_string()).await?;
                let locked = user.is_locked(at);
                user.registration_record().map(|record| (profile_id, record.to_vec(), locked))
            }
            None => None,
        };
        let start = opaque::login_start(
            &self.keys.setup,
            account.as_ref().map(|(_, record, _)| record.as_slice()),
            &ke1,
            username.as_bytes(),
        )
        .map_err(|e| AppError::Invalid(vec![("credential_request".into(), e.to_string())]))?;

        // The attempt counts as failed until it succeeds: a client that learns from
        // KE2 that its guess was wrong and never sends KE3 is still counted.
        if let Some((profile_id, _, false)) = account {
            let attempt = UserCommand::RecordSignIn { succeeded: false, at, lockout: self.policy.lockout };
            self.store
                .execute::<User>(&profile_id.to_string(), attempt, &(), meta)
                .await
                .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        }
        let sign_in = Uuid::new_v4();
        let command = SignInCommand::Start {
            profile_id: account.as_ref().map(|(profile_id, _, _)| *profile_id),
            locked: account.is_some_and(|(_, _, locked)| locked),
            at,
            expires_at: at + self.policy.sign_in_ttl,
        };
        self.store
            .execute::<SignIn>(&sign_in.to_string(), command, &self.verifier, meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        let sealed = self.keys.encrypt(sign_in.as_bytes(), &start.state);
        Ok((format!("{sign_in}.{}", URL_SAFE_NO_PAD.encode(sealed)), URL_SAFE_NO_PAD.encode(start.ke2)))
    }

    /// Checks KE3. Any failure — wrong password, unknown user, locked account,
    /// unknown, expired or finished attempt — is the same 401. With the right
    /// password: 403 while the email must be verified first, a ticket when MFA is
    /// on, a session otherwise.
    pub async fn sign_in_finish(
        &self,
        sign_in_id: &str,
        credential_finalization: &str,
        meta: &Metadata,
    ) -> Result<SignInResult, AppError> {
        let mut fields = Fields::default();
        let ke3 = fields.check("credential_finalization", message(credential_finalization, protocol::KE3_LEN));
        let Some(ke3) = ke3 else { return Err(fields.error()) };
        let (sign_in, login_state) = self.open_sign_in_id(sign_in_id).ok_or(AppError::InvalidCredentials)?;

        let at = Utc::now();
        let command = SignInCommand::Finish { login_state, ke3, at };
        let events = self
            .store
            .execute::<SignIn>(&sign_in.to_string(), command, &self.verifier, meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        let (profile_id, succeeded) = match events.first() {
            Some(SignInEvent::SignInSucceeded { profile_id, .. }) => (*profile_id, true),
            Some(SignInEvent::SignInFailed { profile_id: Some(profile_id), .. }) => (*profile_id, false),
            _ => return Err(AppError::InvalidCredentials),
        };
        if !succeeded {
            // Already counted when the attempt began.
            return Err(AppError::InvalidCredentials);
        }
        let record = UserCommand::RecordSignIn { succeeded, at, lockout: self.policy.lockout };
        self.store
            .execute::<User>(&profile_id.to_string(), record, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        if self.policy.require_verified_email
            && !self.store.load::<User>(&profile_id.to_string()).await?.email_verified()
        {
            return Err(AppError::Forbidden(Denied::EmailNotVerified));
        }
        if self.store.load::<Mfa>(&profile_id.to_string()).await?.is_enabled() {
            let mfa_ticket = random_token();
            let command = MfaChallengeCommand::Issue {
                profile_id,
                max_failures: MFA_TICKET_MAX_FAILURES,
                at,
                expires_at: at + self.policy.mfa_ticket_ttl,
            };
            self.store
                .execute::<MfaChallenge>(&self.keys.aggregate_id("mfa_ticket", &mfa_ticket), command, &(), meta)
                .await
                .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
            return Ok(SignInResult::MfaRequired { mfa_ticket });
        }
        Ok(SignInResult::Session(self.open_session(profile_id, vec!["pwd".into()], meta).await?))
    }

    /// The second factor of a sign-in: a valid, unused TOTP code and the ticket.
    pub async fn sign_in_mfa(&self, mfa_ticket: &str, code: &str, meta: &Metadata) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let ticket_id = self.keys.aggregate_id("mfa_ticket", mfa_ticket);
        let challenge = self.store.load::<MfaChallenge>(&ticket_id).await?;
        let profile_id = challenge.usable_for(at).ok_or(AppError::InvalidCredentials)?;
        let use_code = MfaCommand::UseCode { code: code.to_string(), at };
        if let Err(error) = self.store.execute::<Mfa>(&profile_id.to_string(), use_code, &self.totp, meta).await {
            let error = rejected(error, |_| AppError::InvalidCredentials);
            if matches!(error, AppError::InvalidCredentials) {
                // Count the wrong code; an already dead ticket changes nothing.
                let _ = self.store.execute::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Fail { at }, &(), meta).await;
            }
            return Err(error);
        }
        self.store
            .execute::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Complete { at }, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
        self.open_session(profile_id, vec!["pwd".into(), "otp".into()], meta).await
    }



    pub(crate) fn open_sign_in_id(&self, sign_in_id: &str) -> Option<(Uuid, Vec<u8>)> {
        let (id, sealed) = sign_in_id.split_once('.')?;
        let id = Uuid::parse_str(id).ok()?;
        let state = self.keys.decrypt(id.as_bytes(), &URL_SAFE_NO_PAD.decode(sealed).ok()?)?;
        Some((id, state))
    }
}
