//! What a session proves — decided here, and only here, for every way in
//! (`../shared/API.md`, "Assurance"). A way in checks its proof and hands
//! [`App::admit_in`] a [`Proven`]; that alone decides whether the second factor must
//! follow (an MFA ticket), the session's `amr` and `acr`, its `auth_time`, and what
//! its proof of presence is worth for step-up — and opens the session. Step-up
//! ([`App::elevate_in`]) and its check ([`App::require_elevation`]) live here too.
//!
//! [`Tokens`] carry a [`Seal`] that only this module can make: a way in that skipped
//! these rules has no session to answer with.

use chrono::{DateTime, Utc};
use domain::mfa_challenge::MfaChallengeCommand;
use domain::session::{Device, SessionCommand, SessionError};
use domain::{Mfa, MfaChallenge, Passkeys, Session, User};
use jsonwebtoken::{Algorithm, Header};
use uuid::Uuid;

use crate::store::{RequestContext, Unit};
use super::{random_token, rejected, App, AppError, Claims, Conflict, Denied, SignInResult, Tokens, Verified};

/// Wrong codes an `mfa_ticket` survives.
const MFA_TICKET_MAX_FAILURES: u32 = 5;

/// A factor a way in checked, named in `amr` by its RFC 8176 name where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Password,
    Totp,
    /// A code or a link sent by email.
    Email,
    /// A code sent by text message.
    Sms,
    /// A passkey, user verification required.
    Passkey,
    /// An ID token of a configured OpenID provider.
    IdToken,
    /// A provider's redirect sign-in.
    OAuth,
    /// A personal access token: a machine, never presence.
    Pat,
    Anonymous,
}

impl Factor {
    pub fn amr(self) -> &'static str {
        match self {
            Factor::Password => "pwd",
            Factor::Totp => "otp",
            Factor::Email => "email",
            Factor::Sms => "sms",
            Factor::Passkey => "webauthn",
            Factor::IdToken => "idtoken",
            Factor::OAuth => "oauth",
            Factor::Pat => "pat",
            Factor::Anonymous => "anon",
        }
    }

    fn from_amr(name: &str) -> Option<Self> {
        [Self::Password, Self::Totp, Self::Email, Self::Sms, Self::Passkey, Self::IdToken, Self::OAuth, Self::Pat, Self::Anonymous]
            .into_iter()
            .find(|factor| factor.amr() == name)
    }

    /// A first factor that TOTP must follow when the account has it on.
    fn needs_second_factor(self) -> bool {
        matches!(self, Factor::Password | Factor::Email | Factor::Sms | Factor::IdToken | Factor::OAuth)
    }

    /// Proves the holder is there (a PAT proves a machine; anonymous, nothing).
    fn proves_presence(self) -> bool {
        !matches!(self, Factor::Pat | Factor::Anonymous)
    }

    /// Meets the level of an account with TOTP or a passkey.
    fn strong(self) -> bool {
        matches!(self, Factor::Totp | Factor::Passkey)
    }
}

/// `aal2` when two different factors were proven, or a passkey (with user
/// verification); `aal1` otherwise.
fn acr_of(amr: &[String]) -> &'static str {
    let factors: Vec<Factor> = amr.iter().filter_map(|name| Factor::from_amr(name)).filter(|f| f.proves_presence()).collect();
    let distinct = factors.iter().enumerate().filter(|(i, f)| !factors[..*i].contains(f)).count();
    if distinct >= 2 || factors.contains(&Factor::Passkey) {
        "aal2"
    } else {
        "aal1"
    }
}

/// The factors a way in checked for one account, at one moment.
pub(super) struct Proven {
    profile_id: Uuid,
    factors: Vec<Factor>,
    /// The personal access token that was the proof.
    pat_id: Option<Uuid>,
    at: DateTime<Utc>,
}

impl Proven {
    /// `factor` was checked for `profile_id` at `at`.
    pub(super) fn by(factor: Factor, profile_id: Uuid, at: DateTime<Utc>) -> Self {
        Self { profile_id, factors: vec![factor], pat_id: None, at }
    }

    /// The personal access token `pat_id` of `profile_id` was checked.
    pub(super) fn pat(profile_id: Uuid, pat_id: Uuid, at: DateTime<Utc>) -> Self {
        Self { profile_id, factors: vec![Factor::Pat], pat_id: Some(pat_id), at }
    }

    fn amr(&self) -> Vec<String> {
        self.factors.iter().map(|f| f.amr().to_string()).collect()
    }
}

/// Made only in this module: the mark of tokens issued under its rules.
#[derive(Debug, Clone)]
pub struct Seal(());

/// What a session's proof of presence is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// None proven (a PAT or an anonymous session, or one from before this model).
    None,
    /// A password, a mailed or texted code, an ID token.
    Basic,
    /// TOTP or a passkey.
    Strong,
}

impl Presence {
    pub(super) fn of(factors: &[String]) -> Self {
        let factors: Vec<Factor> = factors.iter().filter_map(|name| Factor::from_amr(name)).filter(|f| f.proves_presence()).collect();
        if factors.iter().any(|f| f.strong()) {
            Presence::Strong
        } else if factors.is_empty() {
            Presence::None
        } else {
            Presence::Basic
        }
    }
}

impl SignInResult {
    /// The session of a way in that never asks for a second factor (a passkey, a PAT,
    /// an anonymous sign-in).
    pub(super) fn into_session(self) -> Result<Tokens, AppError> {
        match self {
            SignInResult::Session(tokens) => Ok(tokens),
            SignInResult::MfaRequired { .. } => Err(AppError::Internal("a way in without a second factor was asked for one".into())),
        }
    }
}

impl App {
    /// Turns checked proofs into a session, in `unit` (committed with the proof):
    /// with TOTP on, a first factor alone gets an MFA ticket instead; a password
    /// sign-in is refused while the email must be verified first.
    pub(super) async fn admit_in(&self, unit: &mut Unit<'_>, proven: Proven) -> Result<SignInResult, AppError> {
        let profile = proven.profile_id.to_string();
        if proven.factors.contains(&Factor::Password) && self.policy.require_verified_email {
            let user = unit.read::<User>(&profile).await?;
            if !user.email_verified() {
                return Err(AppError::Forbidden(Denied::EmailNotVerified));
            }
        }
        if let [first] = proven.factors[..] {
            if first.needs_second_factor() && unit.read::<Mfa>(&profile).await?.is_enabled() {
                let mfa_ticket = random_token();
                let command = MfaChallengeCommand::Issue {
                    profile_id: proven.profile_id,
                    first_factor: first.amr().to_string(),
                    max_failures: MFA_TICKET_MAX_FAILURES,
                    at: proven.at,
                    expires_at: proven.at + self.policy.mfa_ticket_ttl,
                };
                unit.decide_new::<MfaChallenge>(&self.keys.aggregate_id("mfa_ticket", &mfa_ticket), command, &())
                    .await
                    .map_err(|e| rejected(e, |_| AppError::InvalidCredentials))?;
                return Ok(SignInResult::MfaRequired { mfa_ticket });
            }
        }
        self.open_session_in(unit, proven).await.map(SignInResult::Session)
    }

    /// The session after the second factor: the ticket's first factor and TOTP.
    pub(super) async fn admit_second_factor_in(&self, unit: &mut Unit<'_>, profile_id: Uuid, first_factor: &str, at: DateTime<Utc>) -> Result<Tokens, AppError> {
        let first = Factor::from_amr(first_factor).filter(|f| f.needs_second_factor()).ok_or(AppError::InvalidCredentials)?;
        let proven = Proven { profile_id, factors: vec![first, Factor::Totp], pat_id: None, at };
        self.open_session_in(unit, proven).await
    }

    async fn open_session_in(&self, unit: &mut Unit<'_>, proven: Proven) -> Result<Tokens, AppError> {
        let (profile_id, at) = (proven.profile_id, proven.at);
        let session_id = Uuid::new_v4();
        let refresh_token = format!("{session_id}.{}", random_token());
        let ends_at = at + self.policy.session_max_age;
        let amr = proven.amr();
        let presence = proven.factors.iter().filter(|f| f.proves_presence()).map(|f| f.amr().to_string()).collect();
        let command = SessionCommand::Open {
            profile_id,
            refresh_hash: self.keys.refresh_hash(&refresh_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            ends_at,
            amr: amr.clone(),
            presence,
            pat_id: proven.pat_id,
            device: device_of(unit.context()),
            at,
        };
        unit.decide_new::<Session>(&session_id.to_string(), command, &())
            .await
            .map_err(|e| rejected(e, |_: SessionError| AppError::Conflict(Conflict::IdCollision("session"))))?;
        self.tokens(profile_id, session_id, amr, refresh_token, at, Some(ends_at), at)
    }

    /// New tokens of a session after a refresh (which moves no `auth_time`).
    pub(super) fn reissue(&self, profile_id: Uuid, session_id: Uuid, session: &Session, refresh_token: String, at: DateTime<Utc>) -> Result<Tokens, AppError> {
        let auth_time = session.auth_time().unwrap_or(at);
        self.tokens(profile_id, session_id, session.amr().to_vec(), refresh_token, at, session.ends_at(), auth_time)
    }

    /// Signs the tokens of a session issued `at`; `auth_time` is when its holder last
    /// proved presence.
    #[allow(clippy::too_many_arguments)]
    fn tokens(
        &self,
        profile_id: Uuid,
        session_id: Uuid,
        amr: Vec<String>,
        refresh_token: String,
        at: DateTime<Utc>,
        ends_at: Option<DateTime<Utc>>,
        auth_time: DateTime<Utc>,
    ) -> Result<Tokens, AppError> {
        // No token outlives its session's absolute end.
        let until = |ttl: chrono::Duration| ends_at.map_or(at + ttl, |end| (at + ttl).min(end));
        let (access_expires_at, refresh_expires_at) = (until(self.policy.access_ttl), until(self.policy.refresh_ttl));
        let claims = Claims {
            sub: profile_id.to_string(),
            sid: session_id.to_string(),
            iat: at.timestamp(),
            exp: access_expires_at.timestamp(),
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone(),
            acr: acr_of(&amr).to_string(),
            amr,
            auth_time: auth_time.timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.jwt.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.keys.jwt.encoding)
            .map_err(|e| AppError::Internal(format!("cannot sign an access token: {e}")))?;
        Ok(Tokens {
            profile_id,
            access_token,
            expires_in: (access_expires_at - at).num_seconds(),
            refresh_token,
            refresh_expires_in: (refresh_expires_at - at).num_seconds(),
            seal: Seal(()),
        })
    }

    /// 403 unless the holder proved presence within `AUTHD_ELEVATION_MAX_AGE` at the
    /// account's level: with TOTP or a passkey on the account, by one of them
    /// (`stronger_proof_required` otherwise). Never for an anonymous session
    /// (`anonymous_user`) or a PAT's (`machine_session`).
    pub async fn require_elevation(&self, who: &Verified) -> Result<(), AppError> {
        self.may_elevate(who)?;
        let recent = Utc::now().timestamp() - who.auth_time <= self.policy.elevation_max_age.num_seconds();
        if who.presence == Presence::None || !recent {
            return Err(AppError::Forbidden(Denied::ElevationRequired));
        }
        if who.presence != Presence::Strong && self.needs_strong_proof(who.profile_id).await? {
            return Err(AppError::Forbidden(Denied::StrongerProofRequired));
        }
        Ok(())
    }

    /// Whether the account has TOTP or a passkey: its proofs of presence must be one of them.
    async fn needs_strong_proof(&self, profile_id: Uuid) -> Result<bool, AppError> {
        let profile = profile_id.to_string();
        Ok(self.store.load_current::<Mfa>(&profile).await?.is_enabled() || !self.store.load_current::<Passkeys>(&profile).await?.is_empty())
    }

    /// An anonymous or a PAT session is never elevated.
    pub(super) fn may_elevate(&self, who: &Verified) -> Result<(), AppError> {
        match (who.anonymous, who.machine) {
            (true, _) => Err(AppError::Forbidden(Denied::AnonymousUser)),
            (_, true) => Err(AppError::Forbidden(Denied::MachineSession)),
            _ => Ok(()),
        }
    }

    /// The verified address a step-up by email goes to: only for accounts with
    /// nothing else (no password, TOTP or passkey; 403 `other_proof_required`), 409
    /// `no_verified_email` without one.
    pub(super) async fn email_step_up_address(&self, who: &Verified) -> Result<String, AppError> {
        self.may_elevate(who)?;
        let user = self.store.load_current::<User>(&who.profile_id.to_string()).await?;
        if user.has_password() || self.needs_strong_proof(who.profile_id).await? {
            return Err(AppError::Forbidden(Denied::OtherProofRequired));
        }
        let email = user.email().filter(|_| user.email_verified());
        email.map(str::to_string).ok_or(AppError::Conflict(Conflict::NoVerifiedEmail))
    }

    /// Decides, in `unit`, a fresh proof `factor` on `who`'s session (step-up) and
    /// signs its new tokens: `auth_time` moves, and the proof's worth is `factor`'s.
    pub(super) async fn elevate_in(&self, unit: &mut Unit<'_>, who: &Verified, factor: Factor, at: DateTime<Utc>) -> Result<Tokens, AppError> {
        self.may_elevate(who)?;
        let refresh_token = format!("{}.{}", who.session_id, random_token());
        let command = SessionCommand::Elevate {
            method: factor.amr().to_string(),
            new_hash: self.keys.refresh_hash(&refresh_token),
            refresh_expires_at: at + self.policy.refresh_ttl,
            at,
        };
        let (_, session) = unit
            .decide::<Session>(&who.session_id.to_string(), command, &())
            .await
            .map_err(|e| rejected(e, |_| AppError::InvalidToken))?;
        self.tokens(who.profile_id, who.session_id, session.amr().to_vec(), refresh_token, at, session.ends_at(), at)
    }
}

/// The device a request came from.
fn device_of(context: &RequestContext) -> Device {
    Device { client_address: context.client.map(|client| client.to_string()), user_agent: context.user_agent.clone() }
}

#[cfg(test)]
mod tests {
    use super::{acr_of, Factor, Presence};

    fn names(amr: &[&str]) -> Vec<String> {
        amr.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_different_factors_or_a_passkey_are_aal2() {
        for (amr, acr) in [
            (&["pwd"][..], "aal1"),
            (&["email"][..], "aal1"),
            (&["pwd", "pwd"][..], "aal1"),
            (&["pat"][..], "aal1"),
            (&["anon"][..], "aal1"),
            (&["pwd", "otp"][..], "aal2"),
            (&["email", "otp"][..], "aal2"),
            (&["webauthn"][..], "aal2"),
        ] {
            assert_eq!(acr_of(&names(amr)), acr, "{amr:?}");
        }
    }

    #[test]
    fn presence_is_worth_what_its_strongest_factor_is() {
        assert_eq!(Presence::of(&names(&["pwd"])), Presence::Basic);
        assert_eq!(Presence::of(&names(&["email"])), Presence::Basic);
        assert_eq!(Presence::of(&names(&["pwd", "otp"])), Presence::Strong);
        assert_eq!(Presence::of(&names(&["webauthn"])), Presence::Strong);
        assert_eq!(Presence::of(&names(&["pat"])), Presence::None);
        assert_eq!(Presence::of(&names(&["anon"])), Presence::None);
        assert_eq!(Presence::of(&[]), Presence::None);
    }

    #[test]
    fn every_first_factor_but_a_passkey_needs_the_second() {
        for factor in [Factor::Password, Factor::Email, Factor::Sms, Factor::IdToken, Factor::OAuth] {
            assert!(factor.needs_second_factor(), "{factor:?}");
        }
        for factor in [Factor::Passkey, Factor::Totp, Factor::Pat, Factor::Anonymous] {
            assert!(!factor.needs_second_factor(), "{factor:?}");
        }
        for factor in [Factor::Password, Factor::Totp, Factor::Email, Factor::Sms, Factor::Passkey, Factor::IdToken, Factor::OAuth, Factor::Pat, Factor::Anonymous] {
            assert_eq!(Factor::from_amr(factor.amr()), Some(factor));
        }
    }
}
