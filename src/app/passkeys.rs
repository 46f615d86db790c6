//! Passkeys (WebAuthn, verified by webauthn-rs): sign-up without a password,
//! sign-in by username or discoverable, more passkeys for a signed-in account,
//! listing and removing them, and step-up. Every ceremony is a `WebauthnChallenge`
//! (single-use, [`CHALLENGE_TTL`]) that keeps webauthn-rs's state server-side, so
//! an answer is checked against the challenge this server issued, once. The rules are
//! in `domain::passkey`; the user handle of every passkey is the account's profile id.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use domain::invite_token::{InviteTokenCommand, InviteTokenError};
use domain::passkey::{
    PasskeyCredentialCommand, PasskeysCommand, PasskeysError, PasskeysEvent, Purpose, WebauthnChallengeCommand,
};
use domain::user::UserCommand;
use domain::username::{self as usernames, UsernameCommand};
use domain::{InviteToken, PasskeyCredential, Passkeys, Session, User, Username, WebauthnChallenge};
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::store::transact;
use crate::store::{RequestContext, Unit};
use super::assurance::{Factor, Proven};
use super::{rejected, App, AppError, Conflict, Fields, Missing, Tokens, Verified};

/// How long a ceremony can be answered.
pub const CHALLENGE_TTL: Duration = Duration::minutes(5);

/// Longest passkey nickname, in characters.
const NICKNAME_CHARS: usize = 64;

/// The relying party of `AUTHD_WEBAUTHN_RP_ID` and `AUTHD_WEBAUTHN_ORIGINS`, or why
/// the pair cannot work: every origin must be on the RP ID (or a subdomain of it),
/// and https unless on localhost.
pub fn relying_party(rp_id: &str, origins: &[String]) -> Result<Webauthn, String> {
    let rp_id = rp_id.trim().to_ascii_lowercase();
    if rp_id.is_empty() || rp_id.contains(['/', ':', ' ']) {
        return Err(format!("AUTHD_WEBAUTHN_RP_ID must be a domain name, got {rp_id:?}"));
    }
    let mut urls = Vec::new();
    for origin in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let url = Url::parse(origin).map_err(|e| format!("AUTHD_WEBAUTHN_ORIGINS: {origin}: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            return Err(format!("AUTHD_WEBAUTHN_ORIGINS: {origin} is not on the RP ID {rp_id} or a subdomain of it"));
        }
        let local = host == "localhost" || host.ends_with(".localhost");
        if !(url.scheme() == "https" || (url.scheme() == "http" && local)) {
            return Err(format!("AUTHD_WEBAUTHN_ORIGINS: {origin} must be https (http only on localhost)"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("AUTHD_WEBAUTHN_ORIGINS: {origin} must be an origin (scheme://host[:port]), no path"));
        }
        urls.push(url);
    }
    let Some(first) = urls.first() else { return Err("AUTHD_WEBAUTHN_ORIGINS names no origin".into()) };
    let mut builder = WebauthnBuilder::new(&rp_id, first)
        .map_err(|e| format!("AUTHD_WEBAUTHN_RP_ID / AUTHD_WEBAUTHN_ORIGINS: {e}"))?
        .rp_name("authd")
        .timeout(CHALLENGE_TTL.to_std().unwrap_or_default());
    for url in &urls[1..] {
        builder = builder.append_allowed_origin(url);
    }
    builder.build().map_err(|e| format!("AUTHD_WEBAUTHN_RP_ID / AUTHD_WEBAUTHN_ORIGINS: {e}"))
}

/// A ceremony's start: its id and the options for the browser.
pub struct Ceremony {
    pub challenge_id: Uuid,
    /// `{"publicKey": …}`: `publicKey` goes to `PublicKeyCredential.parse…OptionsFromJSON`.
    pub options: Value,
}

/// One passkey of an account, as listed.
pub struct PasskeyInfo {
    pub credential_id: String,
    pub nickname: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Value, AppError> {
    serde_json::to_value(value).map_err(|e| AppError::Internal(format!("cannot serialise WebAuthn state: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, AppError> {
    serde_json::from_value(value.clone()).map_err(|e| AppError::Internal(format!("cannot read WebAuthn state: {e}")))
}

/// An answer that does not verify (wrong origin, RP ID, challenge, signature…).
fn refused(error: WebauthnError) -> AppError {
    tracing::info!(%error, "a WebAuthn answer was refused");
    AppError::InvalidCredentials
}

fn challenge_gone() -> AppError {
    AppError::NotFound(Missing::Challenge)
}

/// Options that make a registration create a discoverable credential (a passkey
/// that can sign in without a username).
fn discoverable(mut options: Value) -> Value {
    if let Some(selection) = options.pointer_mut("/publicKey/authenticatorSelection").and_then(Value::as_object_mut) {
        selection.insert("residentKey".into(), "required".into());
        selection.insert("requireResidentKey".into(), true.into());
    }
    options
}

fn checked_nickname(nickname: Option<String>, fields: &mut Fields) -> Option<String> {
    let nickname = nickname.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    if nickname.as_ref().is_some_and(|n| n.chars().count() > NICKNAME_CHARS || n.chars().any(char::is_control)) {
        fields.bad("nickname", &format!("must be at most {NICKNAME_CHARS} characters, without control characters"));
    }
    nickname
}

/// The signature counter of an assertion's authenticator data (bytes 33..37).
fn counter_of(credential: &PublicKeyCredential) -> u32 {
    let data = &credential.response.authenticator_data;
    data.get(33..37).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl App {
    fn webauthn(&self) -> Result<&Webauthn, AppError> {
        self.webauthn.as_deref().ok_or_else(|| AppError::Internal("passkeys are not configured".into()))
    }

    /// Records a ceremony's state and purpose; returns its id.
    async fn issue(&self, purpose: Purpose, state: Value, options: Value, meta: &RequestContext) -> Result<Ceremony, AppError> {
        let challenge_id = Uuid::new_v4();
        let at = Utc::now();
        let issue = WebauthnChallengeCommand::Issue { purpose, state, expires_at: at + CHALLENGE_TTL, at };
        self.store
            .execute::<WebauthnChallenge>(&challenge_id.to_string(), issue, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("challenge"))))?;
        Ok(Ceremony { challenge_id, options })
    }

    /// Answers the ceremony `challenge_id` in `unit` (it never counts again): its
    /// purpose and state.
    async fn answer_in(&self, unit: &mut Unit<'_>, challenge_id: &str, at: DateTime<Utc>) -> Result<(Purpose, Value), AppError> {
        let (_, challenge) = unit
            .decide::<WebauthnChallenge>(challenge_id, WebauthnChallengeCommand::Answer { at }, &())
            .await
            .map_err(|e| rejected(e, |_| challenge_gone()))?;
        let purpose = challenge.purpose().cloned().ok_or_else(challenge_gone)?;
        Ok((purpose, challenge.state().clone()))
    }

    /// The webauthn-rs records of an account's passkeys.
    fn passkeys_of(passkeys: &Passkeys) -> Vec<Passkey> {
        passkeys.credentials().iter().filter_map(|c| serde_json::from_value(c.passkey.clone()).ok()).collect()
    }

    /// A registration ceremony for `profile_id`, excluding the passkeys it has.
    fn start_registration(&self, profile_id: Uuid, username: &str, existing: &Passkeys) -> Result<(Value, Value), AppError> {
        let exclude: Vec<_> = Self::passkeys_of(existing).iter().map(|p| p.cred_id().clone()).collect();
        let (options, state) = self
            .webauthn()?
            .start_passkey_registration(profile_id, username, username, (!exclude.is_empty()).then_some(exclude))
            .map_err(|e| AppError::Internal(format!("cannot start a passkey registration: {e}")))?;
        Ok((discoverable(json(&options)?), json::<PasskeyRegistration>(&state)?))
    }

    /// Checks a registration answer against the ceremony's state.
    fn finish_registration(&self, credential: &Value, state: &Value) -> Result<Passkey, AppError> {
        let credential: RegisterPublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| AppError::Invalid(vec![("credential".into(), format!("is not a WebAuthn registration response: {e}"))]))?;
        let state: PasskeyRegistration = from_json(state)?;
        self.webauthn()?.finish_passkey_registration(&credential, &state).map_err(refused)
    }

    /// Claims the credential id for the account and adds the passkey, in `unit`.
    async fn add_passkey_in(&self, unit: &mut Unit<'_>, profile_id: Uuid, passkey: &Passkey, nickname: Option<String>, at: DateTime<Utc>) -> Result<String, AppError> {
        let credential_id = b64(passkey.cred_id());
        unit.decide::<PasskeyCredential>(&self.keys.aggregate_id("passkey", &credential_id), PasskeyCredentialCommand::Claim { profile_id }, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::PasskeyRegistered)))?;
        let add = PasskeysCommand::Add { credential_id: credential_id.clone(), nickname, passkey: json(passkey)?, counter: 0, at };
        unit.decide::<Passkeys>(&profile_id.to_string(), add, &()).await.map_err(|e| {
            rejected(e, |e| match e {
                PasskeysError::TooMany => AppError::Invalid(vec![("credential".into(), e.to_string())]),
                _ => AppError::Conflict(Conflict::PasskeyRegistered),
            })
        })?;
        Ok(credential_id)
    }

    /// Sign-up with a passkey, step 1: checks the username (free) and the invitation
    /// (unless sign-up is open); nothing is claimed until step 2.
    pub async fn passkey_sign_up_start(
        &self,
        username: &str,
        token: Option<&str>,
        email: Option<String>,
        nickname: Option<String>,
        meta: &RequestContext,
    ) -> Result<Ceremony, AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let nickname = checked_nickname(nickname, &mut fields);
        let signup_token_id = self.check_invitation(token, &mut fields).await?;
        let Some(username) = username.filter(|_| fields.is_empty()) else { return Err(fields.error()) };
        self.check_username_free(&username).await?;
        let profile_id = Uuid::new_v4();
        let (options, state) = self.start_registration(profile_id, &username, &Passkeys::default())?;
        let purpose = Purpose::SignUp { profile_id, username, email, nickname, signup_token_id };
        self.issue(purpose, state, options, meta).await
    }

    /// Sign-up with a passkey, step 2: in one unit the challenge is answered, the
    /// username claimed, the invitation redeemed, the account (without a password)
    /// registered with its passkey, and a session opened (`amr` `["webauthn"]`).
    pub async fn passkey_sign_up_finish(&self, challenge_id: &str, credential: &Value, meta: &RequestContext) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let challenge = self.store.load::<WebauthnChallenge>(challenge_id).await?;
        let Some(Purpose::SignUp { profile_id, username, signup_token_id, .. }) = challenge.purpose().cloned() else {
            return Err(challenge_gone());
        };
        let (profile, name_id) = (profile_id.to_string(), self.keys.aggregate_id("username", &username));
        let mut locked = vec![(WebauthnChallenge::TYPE, challenge_id), (Username::TYPE, name_id.as_str()), (User::TYPE, profile.as_str())];
        if let Some(token_id) = &signup_token_id {
            locked.push((InviteToken::TYPE, token_id.as_str()));
        }
        let tokens = transact!(self.store, &locked, meta, |unit| {
            let outcome = async {
                let (purpose, state) = self.answer_in(unit, challenge_id, at).await?;
                let Purpose::SignUp { email, nickname, .. } = purpose else { return Err(challenge_gone()) };
                let passkey = self.finish_registration(credential, &state)?;
                unit.decide::<Username>(&name_id, UsernameCommand::Claim { profile_id }, &())
                    .await
                    .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::UsernameTaken)))?;
                if let Some(token_id) = &signup_token_id {
                    unit.decide::<InviteToken>(token_id, InviteTokenCommand::Redeem { profile_id }, &()).await.map_err(|e| {
                        rejected(e, |e| match e {
                            InviteTokenError::Unknown => AppError::TokenUnknown,
                            _ => AppError::Conflict(Conflict::TokenRedeemed),
                        })
                    })?;
                }
                let register = UserCommand::RegisterWithoutPassword { username: username.clone(), email: email.clone(), at };
                unit.decide::<User>(&profile, register, &())
                    .await
                    .map_err(|e| rejected(e, |_| AppError::Conflict(Conflict::IdCollision("account"))))?;
                self.add_passkey_in(unit, profile_id, &passkey, nickname, at).await?;
                let tokens = self.admit_in(unit, Proven::by(Factor::Passkey, profile_id, at)).await?.into_session()?;
                Ok((tokens, email))
            }
            .await;
            // A refused answer still spends the challenge; nothing else is kept.
            if outcome.is_err() {
                unit.keep_only::<WebauthnChallenge>(challenge_id);
            }
            outcome
        })?;
        let (tokens, email) = tokens;
        if let Some(email) = email {
            if let Err(error) = self.send_activation(profile_id, &email, meta).await {
                tracing::warn!(%error, %profile_id, "the activation message could not be sent");
            }
        }
        Ok(tokens)
    }

    /// Sign-in with a passkey, step 1. With a username, the options list that
    /// account's passkeys — or, for an unknown name or an account without one, a
    /// credential id derived from the name, so the answer looks alike; without one, a
    /// discoverable sign-in (the authenticator picks the account).
    pub async fn passkey_sign_in_start(&self, username: Option<&str>, meta: &RequestContext) -> Result<Ceremony, AppError> {
        let webauthn = self.webauthn()?;
        let known = match username {
            None => None,
            Some(name) => {
                let owner = self.account_of(name).await?;
                let passkeys = match owner {
                    Some(owner) => Self::passkeys_of(&self.store.load_current::<Passkeys>(&owner.to_string()).await?),
                    None => vec![],
                };
                Some((name, owner.filter(|_| !passkeys.is_empty()), passkeys))
            }
        };
        let (options, state, purpose) = match known {
            Some((_, Some(owner), passkeys)) => {
                let (options, state) = webauthn
                    .start_passkey_authentication(&passkeys)
                    .map_err(|e| AppError::Internal(format!("cannot start a passkey sign-in: {e}")))?;
                (json(&options)?, json::<PasskeyAuthentication>(&state)?, Purpose::SignIn { profile_id: Some(owner), unknown: false })
            }
            other => {
                let (options, state) = webauthn
                    .start_discoverable_authentication()
                    .map_err(|e| AppError::Internal(format!("cannot start a passkey sign-in: {e}")))?;
                let mut options = json(&options)?;
                if let Some(object) = options.as_object_mut() {
                    object.remove("mediation");
                }
                let unknown = other.is_some();
                if let Some((name, ..)) = other {
                    // Unknown: one credential id, the same for the same name every time.
                    let id = self.keys.aggregate_id("passkey-decoy", &usernames::normalize(name).unwrap_or_default());
                    let decoy = serde_json::json!([{"type": "public-key", "id": id.chars().take(43).collect::<String>()}]);
                    if let Some(public_key) = options.get_mut("publicKey").and_then(Value::as_object_mut) {
                        public_key.insert("allowCredentials".into(), decoy);
                        public_key.insert("userVerification".into(), "required".into());
                    }
                }
                (options, json::<DiscoverableAuthentication>(&state)?, Purpose::SignIn { profile_id: None, unknown })
            }
        };
        self.issue(purpose, state, options, meta).await
    }

    /// Sign-in with a passkey, step 2: the assertion verified against the challenge
    /// (answered once), the passkey's counter moved forward, a session opened
    /// (`amr` `["webauthn"]`) — one unit. A counter that went back is recorded
    /// (`PasskeyCloneSuspected`) and refused.
    pub async fn passkey_sign_in_finish(&self, challenge_id: &str, credential: &Value, meta: &RequestContext) -> Result<Tokens, AppError> {
        let credential: PublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| AppError::Invalid(vec![("credential".into(), format!("is not a WebAuthn assertion: {e}"))]))?;
        let challenge = self.store.load::<WebauthnChallenge>(challenge_id).await?;
        let profile_id = match challenge.purpose() {
            Some(Purpose::SignIn { profile_id: Some(profile_id), .. }) => *profile_id,
            // Discoverable: the authenticator names the account (the user handle).
            Some(Purpose::SignIn { profile_id: None, unknown: false }) => self
                .webauthn()?
                .identify_discoverable_authentication(&credential)
                .map(|(user, _)| user)
                .unwrap_or(Uuid::nil()),
            Some(Purpose::SignIn { .. }) => Uuid::nil(),
            _ => return Err(challenge_gone()),
        };
        self.passkey_proof(challenge_id, &credential, profile_id, None, meta).await
    }

    /// Checks an assertion for `profile_id`'s passkeys in one unit with the
    /// challenge's answer and the counter; then opens a session, or elevates `who`'s.
    async fn passkey_proof(
        &self,
        challenge_id: &str,
        credential: &PublicKeyCredential,
        profile_id: Uuid,
        who: Option<&Verified>,
        meta: &RequestContext,
    ) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let profile = profile_id.to_string();
        let session = who.map(|who| who.session_id.to_string());
        let mut locked = vec![(WebauthnChallenge::TYPE, challenge_id), (Passkeys::TYPE, profile.as_str())];
        if let Some(session) = &session {
            locked.push((Session::TYPE, session.as_str()));
        }
        transact!(self.store, &locked, meta, |unit| {
            let outcome = async {
                let (purpose, state) = self.answer_in(unit, challenge_id, at).await?;
                let passkeys = self.store.load_current::<Passkeys>(&profile).await?;
                let user = self.store.load_current::<User>(&profile).await?;
                let known = Self::passkeys_of(&passkeys);
                let result = match (&purpose, who) {
                    (Purpose::SignIn { unknown: true, .. }, _) => return Err(AppError::InvalidCredentials),
                    (Purpose::SignIn { profile_id: None, .. }, None) => {
                        let used = known.iter().find(|p| p.cred_id().as_slice() == credential.get_credential_id());
                        let used = used.ok_or(AppError::InvalidCredentials)?;
                        self.webauthn()?.finish_discoverable_authentication_v2(credential, from_json(&state)?, used)
                    }
                    (Purpose::SignIn { profile_id: Some(owner), .. }, None) if *owner == profile_id => {
                        self.webauthn()?.finish_passkey_authentication(credential, &from_json(&state)?)
                    }
                    (Purpose::Elevate { profile_id: owner, session_id }, Some(who)) if *owner == who.profile_id && *session_id == who.session_id => {
                        self.webauthn()?.finish_passkey_authentication(credential, &from_json(&state)?)
                    }
                    _ => return Err(challenge_gone()),
                };
                if !user.is_registered() {
                    return Err(AppError::InvalidCredentials);
                }
                let credential_id = b64(credential.get_credential_id());
                let (counter, backup_state, passkey) = match result {
                    Ok(result) => {
                        let mut passkey = known.into_iter().find(|p| p.cred_id() == result.cred_id()).ok_or(AppError::InvalidCredentials)?;
                        passkey.update_credential(&result);
                        (result.counter(), result.backup_state(), json(&passkey)?)
                    }
                    // webauthn-rs's own counter check: recorded below like ours.
                    Err(WebauthnError::CredentialPossibleCompromise) => (counter_of(credential), false, Value::Null),
                    Err(error) => return Err(refused(error)),
                };
                let used = PasskeysCommand::Use { credential_id, counter, backup_state, passkey, at };
                let (events, _) = unit.decide::<Passkeys>(&profile, used, &()).await.map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
                if matches!(events.first(), Some(PasskeysEvent::PasskeyCloneSuspected { .. })) {
                    tracing::warn!(%profile_id, "a passkey's signature counter went back: a cloned authenticator? refused");
                    return Err(AppError::PasskeyCloned);
                }
                match who {
                    None => self.admit_in(unit, Proven::by(Factor::Passkey, profile_id, at)).await?.into_session(),
                    Some(who) => self.elevate_in(unit, who, Factor::Passkey, at).await,
                }
            }
            .await;
            // The challenge is spent either way; a suspected clone stays on record.
            if outcome.as_ref().is_err_and(|error| !matches!(error, AppError::PasskeyCloned)) {
                unit.keep_only::<WebauthnChallenge>(challenge_id);
            }
            outcome
        })
    }

    /// Another passkey for the holder's account, step 1 (elevated: a new way to sign
    /// in is as sensitive as a new password).
    pub async fn passkey_add_start(&self, who: &Verified, nickname: Option<String>, meta: &RequestContext) -> Result<Ceremony, AppError> {
        self.require_elevation(who).await?;
        let mut fields = Fields::default();
        let nickname = checked_nickname(nickname, &mut fields);
        if !fields.is_empty() {
            return Err(fields.error());
        }
        let profile = who.profile_id.to_string();
        let user = self.store.load_current::<User>(&profile).await?;
        let existing = self.store.load_current::<Passkeys>(&profile).await?;
        let (options, state) = self.start_registration(who.profile_id, user.username(), &existing)?;
        let purpose = Purpose::Add { profile_id: who.profile_id, session_id: who.session_id, nickname };
        self.issue(purpose, state, options, meta).await
    }

    /// Another passkey, step 2: the registration answer for a ceremony this session
    /// started; returns the credential id and nickname.
    pub async fn passkey_add_finish(&self, who: &Verified, challenge_id: &str, credential: &Value, meta: &RequestContext) -> Result<(String, Option<String>), AppError> {
        self.require_elevation(who).await?;
        let at = Utc::now();
        let profile = who.profile_id.to_string();
        transact!(self.store, &[(WebauthnChallenge::TYPE, challenge_id), (Passkeys::TYPE, profile.as_str())], meta, |unit| {
            let outcome = async {
                let (purpose, state) = self.answer_in(unit, challenge_id, at).await?;
                let Purpose::Add { profile_id, session_id, nickname } = purpose else { return Err(challenge_gone()) };
                if (profile_id, session_id) != (who.profile_id, who.session_id) {
                    return Err(challenge_gone());
                }
                let passkey = self.finish_registration(credential, &state)?;
                let credential_id = self.add_passkey_in(unit, profile_id, &passkey, nickname.clone(), at).await?;
                Ok((credential_id, nickname))
            }
            .await;
            if outcome.is_err() {
                unit.keep_only::<WebauthnChallenge>(challenge_id);
            }
            outcome
        })
    }

    /// The holder's passkeys.
    pub async fn passkeys(&self, who: &Verified) -> Result<Vec<PasskeyInfo>, AppError> {
        let passkeys = self.store.load_current::<Passkeys>(&who.profile_id.to_string()).await?;
        Ok(passkeys
            .credentials()
            .iter()
            .map(|c| PasskeyInfo {
                credential_id: c.credential_id.clone(),
                nickname: c.nickname.clone(),
                created_at: c.created_at,
                last_used_at: c.last_used_at,
            })
            .collect())
    }

    /// Removes one of the holder's passkeys (elevated); never the last way to sign in
    /// (409 `last_sign_in_method`). The credential id is free again.
    pub async fn passkey_remove(&self, who: &Verified, credential_id: &str, meta: &RequestContext) -> Result<(), AppError> {
        self.require_elevation(who).await?;
        let profile = who.profile_id.to_string();
        let claim = self.keys.aggregate_id("passkey", credential_id);
        transact!(self.store, &[(Passkeys::TYPE, profile.as_str()), (User::TYPE, profile.as_str()), (PasskeyCredential::TYPE, claim.as_str())], meta, |unit| {
            let user: User = unit.read(&profile).await?;
            let remove = PasskeysCommand::Remove { credential_id: credential_id.to_string(), has_password: user.has_password(), at: Utc::now() };
            unit.decide::<Passkeys>(&profile, remove, &()).await.map_err(|e| {
                rejected(e, |e| match e {
                    PasskeysError::LastSignInMethod => AppError::Conflict(Conflict::LastSignInMethod),
                    _ => AppError::NotFound(Missing::Passkey),
                })
            })?;
            unit.decide::<PasskeyCredential>(&claim, PasskeyCredentialCommand::Release { profile_id: who.profile_id }, &())
                .await
                .map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Passkey)))?;
            Ok(())
        })
    }

    /// Step-up with a passkey, step 1: a ceremony for the account's passkeys.
    pub async fn passkey_elevate_start(&self, who: &Verified, meta: &RequestContext) -> Result<Ceremony, AppError> {
        self.may_elevate(who)?;
        let passkeys = Self::passkeys_of(&self.store.load_current::<Passkeys>(&who.profile_id.to_string()).await?);
        if passkeys.is_empty() {
            return Err(AppError::Conflict(Conflict::NoPasskeys));
        }
        let (options, state) = self
            .webauthn()?
            .start_passkey_authentication(&passkeys)
            .map_err(|e| AppError::Internal(format!("cannot start a passkey step-up: {e}")))?;
        let purpose = Purpose::Elevate { profile_id: who.profile_id, session_id: who.session_id };
        self.issue(purpose, json::<PasskeyAuthentication>(&state)?, json(&options)?, meta).await
    }

    /// Step-up with a passkey, step 2: the session gets a fresh `auth_time`.
    pub async fn passkey_elevate_finish(&self, who: &Verified, challenge_id: &str, credential: &Value, meta: &RequestContext) -> Result<Tokens, AppError> {
        let credential: PublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| AppError::Invalid(vec![("credential".into(), format!("is not a WebAuthn assertion: {e}"))]))?;
        self.passkey_proof(challenge_id, &credential, who.profile_id, Some(who), meta).await
    }
}

#[cfg(test)]
mod tests {
    use super::relying_party;

    #[test]
    fn an_inconsistent_relying_party_is_refused() {
        let origins = |list: &[&str]| list.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        assert!(relying_party("localhost", &origins(&["http://localhost:8080"])).is_ok());
        assert!(relying_party("example.com", &origins(&["https://example.com", "https://app.example.com"])).is_ok());
        for (rp_id, list, why) in [
            ("example.com", vec!["https://example.org"], "not on the RP ID"),
            ("example.com", vec!["https://notexample.com"], "not on the RP ID"),
            ("example.com", vec!["http://example.com"], "must be https"),
            ("example.com", vec!["https://example.com/login"], "no path"),
            ("example.com", vec![], "names no origin"),
            ("https://example.com", vec!["https://example.com"], "must be a domain name"),
        ] {
            let error = relying_party(rp_id, &origins(&list)).err().unwrap_or_else(|| panic!("{rp_id} {list:?} accepted"));
            assert!(error.contains(why), "{error}");
        }
    }
}
