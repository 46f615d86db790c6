//! Sign-in: OPAQUE login (KE1 → KE2, KE3), then the second factor when MFA is on.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::mfa::MfaCommand;
use domain::mfa_challenge::MfaChallengeCommand;
use domain::sign_in::{SignInCommand, SignInEvent};
use domain::throttle::{address_key, ThrottleCommand, ThrottleEvent};
use domain::username as usernames;
use domain::{Mfa, MfaChallenge, SignIn, Throttle, User, Username};
use protocol::message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::opaque;
use crate::store::transact;
use crate::store::RequestContext;
use super::assurance::{Factor, Proven};
use super::mfa::Proof;
use super::{rejected, App, AppError, Fields, SignInResult, Tokens, Verified};

/// What `sign_in_id` carries, encrypted under the server's key and bound to the
/// sign-in's id: the OPAQUE login state, and where the attempt was counted.
#[derive(Serialize, Deserialize)]
pub(crate) struct PendingSignIn {
    /// The OPAQUE server login state (never in the log, never in clear at the client).
    pub login_state: String,
    /// The throttle aggregate that counted the attempt, and the address it counted.
    pub throttle_id: String,
    pub address: String,
    /// The account the username named (nil: none), and a digest of the registration
    /// record KE2 was made with: KE3 fails if the account's record changed since.
    /// Both of one length whatever the account, so the id's length tells nothing.
    pub profile_id: Uuid,
    pub record: String,
}

/// What a sign-in remembers of the registration record it started with.
fn record_digest(record: Option<&[u8]>) -> String {
    protocol::b64(&Sha256::digest(record.unwrap_or_default()))
}

impl App {
    /// Answers KE1 with KE2 and a sign-in id that carries the sealed login state.
    /// The attempt is counted and decided in one command on the username's throttle
    /// (the same for unknown usernames): a throttled address gets the KE2 of an
    /// unknown account, which no password can finish.
    pub async fn sign_in_start(
        &self,
        username: &str,
        credential_request: &str,
        meta: &RequestContext,
    ) -> Result<(String, String), AppError> {
        let mut fields = Fields::default();
        let username = fields.check("username", usernames::normalize(username));
        let ke1 = fields.check("credential_request", message(credential_request, protocol::KE1_LEN));
        let (Some(username), Some(ke1)) = (username, ke1) else { return Err(fields.error()) };

        let at = Utc::now();
        // From memory when it is there (KE3 checks the record is still current), and
        // the same reads for a known and an unknown name (a user that does not exist
        // loads as empty, and is remembered so), so the time taken does not tell them apart.
        let owner = self.store.load_current::<Username>(&self.keys.aggregate_id("username", &username)).await?.owner();
        let user = self.store.load_current::<User>(&owner.unwrap_or(Uuid::nil()).to_string()).await?;
        let throttle_id = self.throttle_id(&username, at);
        let address = self.address_of(meta);
        let attempt = ThrottleCommand::Attempt {
            address: address.clone(),
            profile_id: owner,
            at,
            policy: self.policy.throttle,
        };
        let sign_in = Uuid::new_v4();
        // Counted, decided and started in one commit: no answer before the count.
        let start = transact!(self.store, &[(Throttle::TYPE, &throttle_id)], meta, |unit| {
            let (events, _) =
                unit.decide::<Throttle>(&throttle_id, attempt.clone(), &()).await.map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
            let allowed = matches!(events.first(), Some(ThrottleEvent::ProofAttempted { allowed: true, .. }));
            let record = user.registration_record().filter(|_| allowed && owner.is_some());
            let start = opaque::login_start(&self.keys.setup, record, &ke1, username.as_bytes())
                .map_err(|e| AppError::Invalid(vec![("credential_request".into(), e.to_string())]))?;
            let command = SignInCommand::Start {
                profile_id: owner,
                locked: !allowed,
                at,
                expires_at: at + self.policy.sign_in_ttl,
            };
            unit.decide_new::<SignIn>(&sign_in.to_string(), command, &self.opaque_login)
                .await
                .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
            start
        });
        let record = record_digest(user.registration_record());
        let pending = PendingSignIn { login_state: protocol::b64(&start.state), throttle_id, address, profile_id: owner.unwrap_or(Uuid::nil()), record };
        let sealed = serde_json::to_vec(&pending).map_err(|e| AppError::Internal(e.to_string()))?;
        let sealed = self.keys.encrypt(sign_in.as_bytes(), &sealed);
        Ok((format!("{sign_in}.{}", URL_SAFE_NO_PAD.encode(sealed)), URL_SAFE_NO_PAD.encode(start.ke2)))
    }

    /// Checks KE3. Any failure — wrong password, unknown user, throttled address,
    /// unknown, expired or finished attempt — is the same 401. With the right
    /// password: 403 while the email must be verified first, a ticket when MFA is
    /// on, a session otherwise.
    pub async fn sign_in_finish(
        &self,
        sign_in_id: &str,
        credential_finalization: &str,
        meta: &RequestContext,
    ) -> Result<SignInResult, AppError> {
        self.password_finish(sign_in_id, credential_finalization, None, meta).await
    }

    /// KE3 of a sign-in (`elevating` none: the proof opens a session or issues an MFA
    /// ticket) or of a step-up of the session `elevating` (the sign-in must be of its
    /// account; the proof elevates that session, worth what a password is worth:
    /// see `assurance.rs`).
    pub(super) async fn password_finish(
        &self,
        sign_in_id: &str,
        credential_finalization: &str,
        elevating: Option<&Verified>,
        meta: &RequestContext,
    ) -> Result<SignInResult, AppError> {
        let mut fields = Fields::default();
        let ke3 = fields.check("credential_finalization", message(credential_finalization, protocol::KE3_LEN));
        let Some(ke3) = ke3 else { return Err(fields.error()) };
        let (sign_in, pending) = self.open_sign_in_id(sign_in_id).ok_or(AppError::InvalidCredentials)?;
        if elevating.is_some_and(|who| who.profile_id != pending.profile_id) {
            return Err(AppError::InvalidCredentials);
        }

        let at = Utc::now();
        let login_state = protocol::unb64(&pending.login_state).map_err(|_| AppError::InvalidCredentials)?;
        let sign_in = sign_in.to_string();
        let profile = pending.profile_id.to_string();
        // The sign-in's end, the address's clean slate and the session (or MFA
        // ticket): one commit.
        transact!(self.store, &[(SignIn::TYPE, &sign_in), (Throttle::TYPE, &pending.throttle_id)], meta, |unit| {
            // The account as it stands: read from memory, and the commit goes in only
            // if the store has nothing newer (a reset on another replica counts at once;
            // so does an MFA change, read by the admission).
            let user = unit.read::<User>(&profile).await?;
            let credentials_current = record_digest(user.registration_record()) == pending.record;
            let finish = SignInCommand::Finish { login_state: login_state.clone(), ke3: ke3.clone(), credentials_current, at };
            let (events, _) = unit
                .decide::<SignIn>(&sign_in, finish, &self.opaque_login)
                .await
                .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
            match events.first() {
                Some(SignInEvent::SignInSucceeded { profile_id, .. }) => {
                    let profile_id = *profile_id;
                    let result = match elevating {
                        Some(who) => self.elevate_in(unit, who, Factor::Password, at).await.map(SignInResult::Session),
                        None => self.admit_in(unit, Proven::by(Factor::Password, profile_id, at)).await,
                    };
                    // The address's count starts again once the proof is complete: with TOTP
                    // on, at the second factor (a password alone buys no fresh guesses, nor
                    // does a password step-up, which would reset the count of TOTP guesses).
                    let complete = match elevating {
                        None => matches!(result, Ok(SignInResult::Session(_))),
                        Some(_) => result.is_ok() && !unit.read::<Mfa>(&profile).await?.is_enabled(),
                    };
                    if complete {
                        let succeed = ThrottleCommand::Succeed { address: pending.address.clone(), profile_id: Some(profile_id), at };
                        unit.decide::<Throttle>(&pending.throttle_id, succeed, &())
                            .await
                            .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
                    }
                    result
                }
                // Recorded, and counted when the attempt began.
                _ => Err(AppError::InvalidCredentials),
            }
        })
    }

    /// The second factor of a sign-in: a valid, unused TOTP code and the ticket. The
    /// code is proved on the account's throttle (a wrong one counts like a wrong
    /// password; a blocked address is refused even the right one), and the ticket
    /// spent or its failure counted, in one unit: concurrent guesses count each.
    pub async fn sign_in_mfa(&self, mfa_ticket: &str, code: &str, meta: &RequestContext) -> Result<Tokens, AppError> {
        let at = Utc::now();
        let ticket_id = self.keys.aggregate_id("mfa_ticket", mfa_ticket);
        let challenge = self.store.load::<MfaChallenge>(&ticket_id).await?;
        let profile_id = challenge.usable_for(at).ok_or(AppError::InvalidCredentials)?;
        // A removal, reset or sign-out everywhere since the password step ends the
        // ticket too: the account decides, read from the store.
        let user = self.store.load::<User>(&profile_id.to_string()).await?;
        if !challenge.issued_at().is_some_and(|issued_at| user.admits_session(None, issued_at)) {
            return Err(AppError::InvalidCredentials);
        }
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        let profile = profile_id.to_string();
        let locked = [(MfaChallenge::TYPE, ticket_id.as_str()), (Mfa::TYPE, profile.as_str()), (Throttle::TYPE, throttle_id.as_str())];
        let outcome = transact!(self.store, &locked, meta, |unit| {
            let use_code = MfaCommand::UseCode { code: code.to_string(), at };
            let proof = self.prove_code(unit, profile_id, &throttle_id, &address, use_code, at, |_| AppError::InvalidCredentials).await?;
            let outcome = match proof {
                Proof::Valid => {
                    // A ticket that died meanwhile (another guess) spends nothing.
                    unit.decide::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Complete { at }, &())
                        .await
                        .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
                    self.admit_second_factor_in(unit, profile_id, challenge.first_factor(), at).await
                }
                Proof::Wrong => {
                    unit.decide::<MfaChallenge>(&ticket_id, MfaChallengeCommand::Fail { at }, &())
                        .await
                        .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
                    Err(AppError::InvalidCredentials)
                }
                blocked => Err(blocked.refusal(AppError::InvalidCredentials)),
            };
            outcome
        });
        outcome
    }

    pub(crate) fn open_sign_in_id(&self, sign_in_id: &str) -> Option<(Uuid, PendingSignIn)> {
        let (id, sealed) = sign_in_id.split_once('.')?;
        let id = Uuid::parse_str(id).ok()?;
        let opened = self.keys.decrypt(id.as_bytes(), &URL_SAFE_NO_PAD.decode(sealed).ok()?)?;
        Some((id, serde_json::from_slice(&opened).ok()?))
    }

    /// The throttle of an account's proofs (its username's, as at KE1).
    pub(crate) fn account_throttle_id(&self, user: &User, at: DateTime<Utc>) -> String {
        self.throttle_id(user.username(), at)
    }

    /// The throttle aggregate of `username` (normalised) for the window `at` is in:
    /// a keyed hash, so the id names neither.
    pub(super) fn throttle_id(&self, username: &str, at: DateTime<Utc>) -> String {
        let window = self.policy.throttle.window_of(at);
        self.keys.aggregate_id("throttle", &format!("{username}\n{window}"))
    }

    /// The client address a proof is throttled by ([`address_key`]), as a keyed hash.
    pub(crate) fn address_of(&self, meta: &RequestContext) -> String {
        let key = meta.client.map_or_else(|| "unknown".to_string(), address_key);
        self.keys.aggregate_id("address", &key)
    }
}
