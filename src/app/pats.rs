//! Personal access tokens: created on an elevated session and shown once, listed,
//! revoked; a token signs in (`amr` `["pat"]`), its failures counted on the
//! account's throttle like a wrong password. The rules are in `domain::pat`.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use domain::pat::{Pat, PatsCommand, PatsError};
use domain::{Pats, Throttle, User};
use uuid::Uuid;

use crate::store::transact;
use crate::store::{CommandError, RequestContext};
use super::assurance::Proven;
use super::mfa::Proof;
use super::{random_token, rejected, App, AppError, Fields, Missing, SignInResult, Tokens, Verified};

/// Every token starts so (and names its account and itself before the secret), so
/// secret scanners can recognise a leaked one.
const PREFIX: &str = "authd_pat_";

/// The longest a token may live.
const MAX_LIFETIME: Duration = Duration::days(366);

/// The account and token a presented token names, if it has the shape of one.
fn parse(token: &str) -> Option<(Uuid, Uuid)> {
    let mut parts = token.strip_prefix(PREFIX)?.splitn(3, '_');
    let (profile, pat, secret) = (parts.next()?, parts.next()?, parts.next()?);
    (secret.len() == 43).then_some(())?;
    Some((Uuid::try_parse(profile).ok()?, Uuid::try_parse(pat).ok()?))
}

impl App {
    fn pat_hash(&self, token: &str) -> String {
        self.keys.aggregate_id("pat-secret", token)
    }

    /// Creates a token (elevated): its id and the token, shown this once.
    pub async fn pat_create(&self, who: &Verified, name: &str, expires_at: &str, meta: &RequestContext) -> Result<(Uuid, String), AppError> {
        self.require_elevation(who).await?;
        let at = Utc::now();
        let mut fields = Fields::default();
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            fields.bad("name", "must be 1 to 64 characters, without control characters");
        }
        let expires_at = match DateTime::parse_from_rfc3339(expires_at).map(|t| t.with_timezone(&Utc)) {
            Ok(expires) if expires > at && expires <= at + MAX_LIFETIME => Some(expires),
            Ok(_) => fields.check("expires_at", Err("must be in the future, at most 366 days from now".into())),
            Err(_) => fields.check("expires_at", Err("must be an RFC 3339 time".into())),
        };
        let (Some(expires_at), true) = (expires_at, fields.is_empty()) else { return Err(fields.error()) };
        let pat_id = Uuid::new_v4();
        let token = format!("{PREFIX}{}_{}_{}", who.profile_id.simple(), pat_id.simple(), random_token());
        let create = PatsCommand::Create { pat_id, name: name.to_string(), secret_hash: self.pat_hash(&token), expires_at, at };
        self.store.execute::<Pats>(&who.profile_id.to_string(), create, &(), meta).await.map_err(|e| {
            rejected(e, |e| match e {
                PatsError::TooMany => AppError::Invalid(vec![("name".into(), e.to_string())]),
                e => AppError::Invalid(vec![("expires_at".into(), e.to_string())]),
            })
        })?;
        Ok((pat_id, token))
    }

    /// The holder's tokens (never their secrets).
    pub async fn pats(&self, who: &Verified) -> Result<Vec<Pat>, AppError> {
        Ok(self.store.load_current::<Pats>(&who.profile_id.to_string()).await?.tokens().to_vec())
    }

    /// Revokes one of the holder's tokens: it signs in no more.
    pub async fn pat_revoke(&self, who: &Verified, pat_id: &str, meta: &RequestContext) -> Result<(), AppError> {
        let pat_id = Uuid::try_parse(pat_id).map_err(|_| AppError::NotFound(Missing::Pat))?;
        let revoke = PatsCommand::Revoke { pat_id, at: Utc::now() };
        self.store
            .execute::<Pats>(&who.profile_id.to_string(), revoke, &(), meta)
            .await
            .map_err(|e| rejected(e, |_| AppError::NotFound(Missing::Pat)))?;
        Ok(())
    }

    /// Sign-in with a token: checked and counted on the account's throttle in one
    /// unit with the session it opens. Wrong, revoked or expired: 401; a throttled
    /// address: 429, even with a valid token.
    pub async fn pat_sign_in(&self, token: &str, meta: &RequestContext) -> Result<Tokens, AppError> {
        let (profile_id, pat_id) = parse(token).ok_or(AppError::InvalidCredentials)?;
        let (at, profile) = (Utc::now(), profile_id.to_string());
        let user = self.store.load_current::<User>(&profile).await?;
        if !user.is_registered() {
            return Err(AppError::InvalidCredentials);
        }
        let (throttle_id, address) = (self.account_throttle_id(&user, at), self.address_of(meta));
        transact!(self.store, &[(Pats::TYPE, profile.as_str()), (Throttle::TYPE, throttle_id.as_str())], meta, |unit| {
            let valid = match unit.decide::<Pats>(&profile, PatsCommand::Use { pat_id, presented_hash: self.pat_hash(token), at }, &()).await {
                Ok(_) => true,
                Err(CommandError::Rejected(_)) => false,
                Err(CommandError::Store(error)) => return Err(error.into()),
            };
            let outcome = match self.count_proof(unit, Some(profile_id), &throttle_id, &address, valid, at).await? {
                Proof::Valid => self.admit_in(unit, Proven::pat(profile_id, pat_id, at)).await.and_then(SignInResult::into_session),
                refused => {
                    unit.undo::<Pats>(&profile);
                    Err(refused.refusal(AppError::InvalidCredentials))
                }
            };
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_the_shape_of_a_token_parses() {
        let (profile, pat) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let token = format!("authd_pat_{}_{}_{}", profile.simple(), pat.simple(), "a".repeat(43));
        assert_eq!(parse(&token), Some((profile, pat)));
        for bad in [&token[1..], &token[..token.len() - 1], "authd_pat_x_y_z", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
