//! Sessions: opening one, access tokens, refresh rotation, token checks, sign-out.

use chrono::{DateTime, Utc};
use domain::session::{Device, SessionCommand, SessionError, SessionEvent};
use domain::user::UserCommand;
use domain::{Pats, Session, User};
use uuid::Uuid;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::store::{CommandError, RequestContext};
use super::{random_token, rejected, App, AppError, Claims, Missing, Presence, Tokens, Verified};

impl App {
    /// Rotates the refresh token. A token that was already rotated revokes the
    /// whole session.
    pub async fn refresh(&self, refresh_token: &str, meta: &RequestContext) -> Result<Tokens, AppError> {
        let session_id = refresh_token
            .split_once('.')
            .and_then(|(id, _)| Uuid::parse_str(id).ok())
            .ok_or(AppError::InvalidToken)?;
        // The account decides first: a session it ended (sign-out everywhere, reset,
        // removal) refreshes no more, whatever its own stream says.
        let current = self.store.load_current::<Session>(&session_id.to_string()).await?;
        self.admitted(session_id, &current).await?;
        let new_token = format!("{session_id}.{}", random_token());
        let at = Utc::now();
        let command = SessionCommand::Refresh {
            presented_hash: self.keys.refresh_hash(refresh_token),
            new_hash: self.keys.refresh_hash(&new_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            at,
        };
        let (events, session) = self
            .store
            .execute_for_state::<Session>(&session_id.to_string(), command, &(), meta)
            .await
            .map_err(|e| rejected(e, |_: SessionError| AppError::InvalidToken))?;
        match events.first() {
            Some(SessionEvent::SessionRefreshed { .. }) => {
                let profile_id = session.profile_id().ok_or(AppError::InvalidToken)?;
                self.reissue(profile_id, session_id, &session, new_token, at)
            }
            Some(SessionEvent::RefreshTokenReuseDetected { .. }) => Err(AppError::RefreshTokenReused),
            _ => Err(AppError::InvalidToken),
        }
    }

    /// Checks an access token: signature, issuer, audience, expiry, and that its
    /// session is still open — from this replica's memory of the session, which its
    /// own sign-outs update at once and the log follower within a poll (no query).
    /// A token seen before skips the signature check ([`VerifiedTokens`]); its expiry
    /// and its session are checked every time.
    pub async fn check_access_token(&self, jwt: &str) -> Result<Verified, AppError> {
        let digest: [u8; 32] = Sha256::digest(jwt.as_bytes()).into();
        let verified = match self.verified_tokens.get(&digest) {
            Some(verified) if Utc::now().timestamp() <= verified.expires_at + self.validation.leeway as i64 => verified,
            Some(_) => return Err(AppError::InvalidToken),
            None => {
                let claims = jsonwebtoken::decode::<Claims>(jwt, &self.keys.jwt.decoding, &self.validation)
                    .map_err(|_| AppError::InvalidToken)?
                    .claims;
                let (Ok(profile_id), Ok(session_id)) = (Uuid::parse_str(&claims.sub), Uuid::parse_str(&claims.sid)) else {
                    return Err(AppError::InvalidToken);
                };
                let anonymous = claims.amr.iter().any(|method| method == "anon");
                let machine = claims.amr.iter().any(|method| method == "pat");
                let verified = Verified { profile_id, session_id, expires_at: claims.exp, auth_time: claims.auth_time, presence: Presence::None, anonymous, machine };
                self.verified_tokens.put(digest, verified.clone());
                verified
            }
        };
        let session = self.store.load_current::<Session>(&verified.session_id.to_string()).await?;
        if session.profile_id() != Some(verified.profile_id) {
            return Err(AppError::InvalidToken);
        }
        self.admitted(verified.session_id, &session).await?;
        // What the session's last proof of presence is worth — for a token minted
        // after it only: a token from before a step-up stays as it was (a copy taken
        // earlier gains nothing from the holder's step-up).
        let latest = session.auth_time().map(|at| at.timestamp());
        let presence = if latest == Some(verified.auth_time) { Presence::of(session.presence()) } else { Presence::None };
        Ok(Verified { presence, ..verified })
    }

    /// A session counts while its account (the `User` aggregate, from memory)
    /// admits it — and, opened with a personal access token, while that token stands.
    async fn admitted(&self, session_id: Uuid, session: &Session) -> Result<(), AppError> {
        let profile_id = session.profile_id().ok_or(AppError::InvalidToken)?;
        let user = self.store.load_current::<User>(&profile_id.to_string()).await?;
        let now = Utc::now();
        if !session.admitted_by(session_id, &user, now) {
            return Err(AppError::InvalidToken);
        }
        if let Some(pat_id) = session.pat_id() {
            if !self.store.load_current::<Pats>(&profile_id.to_string()).await?.admits(pat_id, now) {
                return Err(AppError::InvalidToken);
            }
        }
        Ok(())
    }

    /// Ends this session, or every open session of the account. Returns how many.
    /// Everywhere: the account revokes every session opened until now (decided by the
    /// log, on every replica, including sessions the read model has not seen yet);
    /// the sessions the read model knows are then ended one by one, for the count
    /// and the audit trail.
    pub async fn sign_out(&self, who: &Verified, all: bool, meta: &RequestContext) -> Result<u64, AppError> {
        let this = who.session_id.to_string();
        let mut sessions = vec![this.clone()];
        if all {
            self.store
                .execute::<User>(&who.profile_id.to_string(), UserCommand::RevokeSessions { at: Utc::now() }, &(), meta)
                .await
                .map_err(|e| rejected(e, |_| AppError::InvalidToken))?;
            let others = self.store.read_models().await?.active_sessions(&who.profile_id.to_string()).await?;
            sessions.extend(others.into_iter().filter(|id| *id != this));
        }
        self.end_sessions(sessions, meta).await
    }

    /// Ends every open session of an account (after a password reset or removal),
    /// but `kept`.
    pub async fn end_all_sessions(&self, profile_id: Uuid, kept: Option<Uuid>, meta: &RequestContext) -> Result<u64, AppError> {
        let mut sessions = self.store.read_models().await?.active_sessions(&profile_id.to_string()).await?;
        sessions.retain(|id| kept.is_none_or(|kept| *id != kept.to_string()));
        self.end_sessions(sessions, meta).await
    }

    /// The open sessions of the holder's account, newest first.
    pub async fn my_sessions(&self, who: &Verified) -> Result<Vec<SessionInfo>, AppError> {
        let ids = self.store.read_models().await?.active_sessions(&who.profile_id.to_string()).await?;
        let user = self.store.load_current::<User>(&who.profile_id.to_string()).await?;
        let now = Utc::now();
        let mut sessions = Vec::new();
        for id in ids {
            let Ok(session_id) = Uuid::parse_str(&id) else { continue };
            let session = self.store.load_current::<Session>(&id).await?;
            if session.profile_id() != Some(who.profile_id) || !session.admitted_by(session_id, &user, now) {
                continue;
            }
            let (Some(created_at), Some(last_used_at)) = (session.opened_at(), session.last_used_at()) else { continue };
            sessions.push(SessionInfo {
                session_id,
                created_at,
                last_used_at,
                device: session.device().clone(),
                amr: session.amr().to_vec(),
                current: session_id == who.session_id,
            });
        }
        sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(sessions)
    }

    /// Ends one session of the holder's account (this one too). Another account's
    /// session, or one already over, is not found.
    pub async fn end_my_session(&self, who: &Verified, session_id: &str, meta: &RequestContext) -> Result<(), AppError> {
        let not_found = || AppError::NotFound(Missing::Session);
        let id = Uuid::parse_str(session_id).map_err(|_| not_found())?;
        let session = self.store.load_current::<Session>(&id.to_string()).await?;
        if session.profile_id() != Some(who.profile_id) || self.admitted(id, &session).await.is_err() {
            return Err(not_found());
        }
        match self.store.execute::<Session>(&id.to_string(), SessionCommand::SignOut { at: Utc::now() }, &(), meta).await {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(_)) => Err(not_found()),
            Err(CommandError::Store(error)) => Err(error.into()),
        }
    }

    async fn end_sessions(&self, sessions: Vec<String>, meta: &RequestContext) -> Result<u64, AppError> {
        let mut revoked = 0;
        for session in sessions {
            let command = SessionCommand::SignOut { at: Utc::now() };
            match self.store.execute::<Session>(&session, command, &(), meta).await {
                Ok(_) => revoked += 1,
                Err(CommandError::Rejected(_)) => {}
                Err(CommandError::Store(error)) => return Err(error.into()),
            }
        }
        Ok(revoked)
    }
}

/// One open session, as its account sees it.
pub struct SessionInfo {
    pub session_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub device: Device,
    pub amr: Vec<String>,
    /// The session of the token that asked.
    pub current: bool,
}


/// Access tokens whose signature and claims checked out, by SHA-256 of the whole
/// token: the same bytes verified again need no Ed25519 check (most of a token
/// check's cost). Only a byte-identical token hits, so nothing unsigned gets in;
/// expiry and the session are still checked on every use. Bounded: past
/// [`VERIFIED_TOKENS`] entries it starts afresh.
#[derive(Default)]
pub(super) struct VerifiedTokens(Mutex<HashMap<[u8; 32], Verified>>);

/// Tokens [`VerifiedTokens`] remembers at most (~100 bytes each).
const VERIFIED_TOKENS: usize = 10_000;

impl VerifiedTokens {
    fn get(&self, digest: &[u8; 32]) -> Option<Verified> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(digest).cloned()
    }

    fn put(&self, digest: [u8; 32], verified: Verified) {
        let mut tokens = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= VERIFIED_TOKENS {
            tokens.clear();
        }
        tokens.insert(digest, verified);
    }
}
