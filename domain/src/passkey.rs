//! Passkeys (WebAuthn): an account's credentials ([`Passkeys`]), the one account each
//! credential id belongs to ([`PasskeyCredential`]), and the single-use, expiring
//! ceremonies that register or use them ([`WebauthnChallenge`]). The WebAuthn
//! verification itself (signatures, origins, RP ID) is the server's (webauthn-rs);
//! these aggregates decide what may happen with its result: a challenge is answered
//! once and before it expires, a credential's signature counter only goes forward
//! (a counter that goes back means a cloned authenticator: recorded and refused),
//! and the last way to sign in cannot be removed.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Most passkeys one account may hold.
pub const MAX_PASSKEYS: usize = 20;

/// One registered credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// base64url, as browsers name it.
    pub credential_id: String,
    pub nickname: Option<String>,
    /// The server's record of the credential (webauthn-rs `Passkey`, as JSON).
    pub passkey: Value,
    pub counter: u32,
    pub backup_state: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An account's passkeys (id: the profile id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Passkeys {
    credentials: Vec<Credential>,
}

#[derive(Debug, Clone)]
pub enum PasskeysCommand {
    Add { credential_id: String, nickname: Option<String>, passkey: Value, counter: u32, at: DateTime<Utc> },
    /// A verified assertion with this signature counter and backup state.
    Use { credential_id: String, counter: u32, backup_state: bool, passkey: Value, at: DateTime<Utc> },
    /// `has_password`: the account can still sign in with a password without it.
    Remove { credential_id: String, has_password: bool, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PasskeysEvent {
    PasskeyAdded { credential_id: String, nickname: Option<String>, passkey: Value, counter: u32, at: DateTime<Utc> },
    PasskeyUsed { credential_id: String, counter: u32, backup_state: bool, passkey: Value, at: DateTime<Utc> },
    /// The counter went back (or stood still): two copies of the key exist. Refused.
    PasskeyCloneSuspected { credential_id: String, counter: u32, stored_counter: u32, at: DateTime<Utc> },
    PasskeyRemoved { credential_id: String, at: DateTime<Utc> },
}
crate::domain_event!(PasskeysEvent { PasskeyAdded, PasskeyUsed, PasskeyCloneSuspected, PasskeyRemoved });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PasskeysError {
    #[error("this credential is already registered")]
    AlreadyRegistered,
    #[error("an account holds at most {MAX_PASSKEYS} passkeys")]
    TooMany,
    #[error("no such passkey on this account")]
    NotFound,
    #[error("the last way to sign in cannot be removed")]
    LastSignInMethod,
}

impl Passkeys {
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }
    pub fn credential(&self, credential_id: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.credential_id == credential_id)
    }
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }
    fn credential_mut(&mut self, credential_id: &str) -> Option<&mut Credential> {
        self.credentials.iter_mut().find(|c| c.credential_id == credential_id)
    }
}

impl crate::Subject for Passkeys {
    fn subject(&self, id: &str) -> Option<Uuid> {
        Uuid::parse_str(id).ok()
    }
}

impl Aggregate for Passkeys {
    const TYPE: &'static str = "passkeys";
    type Command = PasskeysCommand;
    type Event = PasskeysEvent;
    type Error = PasskeysError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            PasskeysCommand::Add { credential_id, nickname, passkey, counter, at } => {
                if self.credential(&credential_id).is_some() {
                    return Err(PasskeysError::AlreadyRegistered);
                }
                if self.credentials.len() >= MAX_PASSKEYS {
                    return Err(PasskeysError::TooMany);
                }
                PasskeysEvent::PasskeyAdded { credential_id, nickname, passkey, counter, at }
            }
            PasskeysCommand::Use { credential_id, counter, backup_state, passkey, at } => {
                let stored = self.credential(&credential_id).ok_or(PasskeysError::NotFound)?.counter;
                // WebAuthn §7.2 step 22: a counter in use must grow.
                if (counter > 0 || stored > 0) && counter <= stored {
                    PasskeysEvent::PasskeyCloneSuspected { credential_id, counter, stored_counter: stored, at }
                } else {
                    PasskeysEvent::PasskeyUsed { credential_id, counter, backup_state, passkey, at }
                }
            }
            PasskeysCommand::Remove { credential_id, has_password, at } => {
                if self.credential(&credential_id).is_none() {
                    return Err(PasskeysError::NotFound);
                }
                if !has_password && self.credentials.len() == 1 {
                    return Err(PasskeysError::LastSignInMethod);
                }
                PasskeysEvent::PasskeyRemoved { credential_id, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PasskeysEvent::PasskeyAdded { credential_id, nickname, passkey, counter, at } => self.credentials.push(Credential {
                credential_id,
                nickname,
                passkey,
                counter,
                backup_state: false,
                created_at: at,
                last_used_at: None,
            }),
            PasskeysEvent::PasskeyUsed { credential_id, counter, backup_state, passkey, at } => {
                if let Some(credential) = self.credential_mut(&credential_id) {
                    credential.counter = counter;
                    credential.backup_state = backup_state;
                    credential.passkey = passkey;
                    credential.last_used_at = Some(at);
                }
            }
            PasskeysEvent::PasskeyCloneSuspected { .. } => {}
            PasskeysEvent::PasskeyRemoved { credential_id, .. } => self.credentials.retain(|c| c.credential_id != credential_id),
        }
    }
}

/// The account a credential id belongs to (id: a keyed hash of the credential id),
/// so no credential is registered to two accounts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PasskeyCredential {
    owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum PasskeyCredentialCommand {
    Claim { profile_id: Uuid },
    Release { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PasskeyCredentialEvent {
    PasskeyCredentialClaimed { profile_id: Uuid },
    PasskeyCredentialReleased { profile_id: Uuid },
}
crate::domain_event!(PasskeyCredentialEvent { PasskeyCredentialClaimed, PasskeyCredentialReleased });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PasskeyCredentialError {
    #[error("this credential is registered to an account already")]
    Taken,
    #[error("this credential is not this account's")]
    NotOwner,
}

impl crate::Subject for PasskeyCredential {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.owner
    }
}

impl Aggregate for PasskeyCredential {
    const TYPE: &'static str = "passkey_credential";
    type Command = PasskeyCredentialCommand;
    type Event = PasskeyCredentialEvent;
    type Error = PasskeyCredentialError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            PasskeyCredentialCommand::Claim { profile_id } => match self.owner {
                Some(_) => return Err(PasskeyCredentialError::Taken),
                None => PasskeyCredentialEvent::PasskeyCredentialClaimed { profile_id },
            },
            PasskeyCredentialCommand::Release { profile_id } => match self.owner {
                Some(owner) if owner == profile_id => PasskeyCredentialEvent::PasskeyCredentialReleased { profile_id },
                _ => return Err(PasskeyCredentialError::NotOwner),
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.owner = match event {
            PasskeyCredentialEvent::PasskeyCredentialClaimed { profile_id } => Some(profile_id),
            PasskeyCredentialEvent::PasskeyCredentialReleased { .. } => None,
        };
    }
}

/// What a WebAuthn ceremony is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Purpose {
    /// A new account with this passkey and no password.
    SignUp {
        profile_id: Uuid,
        username: String,
        email: Option<String>,
        nickname: Option<String>,
        /// The keyed id of the sign-up token it redeems, when sign-up is by invitation.
        signup_token_id: Option<String>,
    },
    /// A sign-in: of this account (by username), of whichever account the
    /// authenticator names (discoverable: `None`), or of no account (an unknown
    /// username, answered alike so it tells nothing).
    SignIn { profile_id: Option<Uuid>, unknown: bool },
    /// Another passkey for a signed-in account.
    Add { profile_id: Uuid, session_id: Uuid, nickname: Option<String> },
    /// A fresh proof of presence on this session (step-up).
    Elevate { profile_id: Uuid, session_id: Uuid },
}

impl Purpose {
    fn profile_id(&self) -> Option<Uuid> {
        match self {
            Purpose::SignUp { profile_id, .. } | Purpose::Add { profile_id, .. } | Purpose::Elevate { profile_id, .. } => {
                Some(*profile_id)
            }
            Purpose::SignIn { profile_id, .. } => *profile_id,
        }
    }
}

/// A single-use WebAuthn ceremony (id: the `challenge_id`), holding the server-side
/// state webauthn-rs needs to check the answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WebauthnChallenge {
    purpose: Option<Purpose>,
    state: Value,
    expires_at: Option<DateTime<Utc>>,
    used: bool,
}

#[derive(Debug, Clone)]
pub enum WebauthnChallengeCommand {
    Issue { purpose: Purpose, state: Value, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    /// Answered (whatever the answer's fate): it never counts again.
    Answer { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WebauthnChallengeEvent {
    WebauthnChallengeIssued { purpose: Purpose, state: Value, expires_at: DateTime<Utc>, at: DateTime<Utc> },
    WebauthnChallengeAnswered { at: DateTime<Utc> },
}
crate::domain_event!(WebauthnChallengeEvent { WebauthnChallengeIssued, WebauthnChallengeAnswered });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebauthnChallengeError {
    #[error("challenge already issued")]
    AlreadyIssued,
    #[error("no such challenge, or it was answered or expired")]
    NotFound,
}

impl WebauthnChallenge {
    pub fn purpose(&self) -> Option<&Purpose> {
        self.purpose.as_ref()
    }
    /// The ceremony's state (what webauthn-rs checks the answer against).
    pub fn state(&self) -> &Value {
        &self.state
    }
    /// The ceremony's state, while it can still be answered `at`.
    pub fn live_state(&self, at: DateTime<Utc>) -> Option<&Value> {
        (self.purpose.is_some() && !self.used && self.expires_at.is_some_and(|expires| at < expires)).then_some(&self.state)
    }
}

impl crate::Subject for WebauthnChallenge {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.purpose.as_ref().and_then(Purpose::profile_id)
    }
}

impl Aggregate for WebauthnChallenge {
    const TYPE: &'static str = "webauthn_challenge";
    type Command = WebauthnChallengeCommand;
    type Event = WebauthnChallengeEvent;
    type Error = WebauthnChallengeError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            WebauthnChallengeCommand::Issue { purpose, state, expires_at, at } => {
                if self.purpose.is_some() {
                    return Err(WebauthnChallengeError::AlreadyIssued);
                }
                WebauthnChallengeEvent::WebauthnChallengeIssued { purpose, state, expires_at, at }
            }
            WebauthnChallengeCommand::Answer { at } => {
                if self.live_state(at).is_none() {
                    return Err(WebauthnChallengeError::NotFound);
                }
                WebauthnChallengeEvent::WebauthnChallengeAnswered { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            WebauthnChallengeEvent::WebauthnChallengeIssued { purpose, state, expires_at, .. } => {
                self.purpose = Some(purpose);
                self.state = state;
                self.expires_at = Some(expires_at);
            }
            WebauthnChallengeEvent::WebauthnChallengeAnswered { .. } => self.used = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn added(id: &str) -> PasskeysEvent {
        PasskeysEvent::PasskeyAdded { credential_id: id.into(), nickname: Some("laptop".into()), passkey: json!({"k": id}), counter: 0, at: at() }
    }

    fn used(id: &str, counter: u32) -> PasskeysCommand {
        PasskeysCommand::Use { credential_id: id.into(), counter, backup_state: false, passkey: json!({"k": id, "c": counter}), at: at() }
    }

    #[tokio::test]
    async fn a_counter_that_goes_back_is_recorded_as_a_clone() {
        let went_to_5 = PasskeysEvent::PasskeyUsed { credential_id: "a".into(), counter: 5, backup_state: false, passkey: json!({"k": "a", "c": 5}), at: at() };
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(used("a", 5))
            .await
            .then_expect_events(vec![went_to_5.clone()]);
        for counter in [5, 3] {
            TestFramework::<Passkeys>::with(())
                .given(vec![added("a"), went_to_5.clone()])
                .when_async(used("a", counter))
                .await
                .then_expect_events(vec![PasskeysEvent::PasskeyCloneSuspected { credential_id: "a".into(), counter, stored_counter: 5, at: at() }]);
        }
        // Authenticators without a counter (always 0) are fine.
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(used("a", 0))
            .await
            .then_expect_events(vec![PasskeysEvent::PasskeyUsed { credential_id: "a".into(), counter: 0, backup_state: false, passkey: json!({"k": "a", "c": 0}), at: at() }]);
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(used("b", 1))
            .await
            .then_expect_error(PasskeysError::NotFound);
    }

    #[tokio::test]
    async fn the_last_way_to_sign_in_stays() {
        let remove = |has_password| PasskeysCommand::Remove { credential_id: "a".into(), has_password, at: at() };
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(remove(false))
            .await
            .then_expect_error(PasskeysError::LastSignInMethod);
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(remove(true))
            .await
            .then_expect_events(vec![PasskeysEvent::PasskeyRemoved { credential_id: "a".into(), at: at() }]);
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a"), added("b")])
            .when_async(remove(false))
            .await
            .then_expect_events(vec![PasskeysEvent::PasskeyRemoved { credential_id: "a".into(), at: at() }]);
        TestFramework::<Passkeys>::with(())
            .given(vec![added("a")])
            .when_async(PasskeysCommand::Add { credential_id: "a".into(), nickname: None, passkey: json!({}), counter: 0, at: at() })
            .await
            .then_expect_error(PasskeysError::AlreadyRegistered);
        TestFramework::<Passkeys>::with(())
            .given((0..MAX_PASSKEYS).map(|n| added(&n.to_string())).collect())
            .when_async(PasskeysCommand::Add { credential_id: "x".into(), nickname: None, passkey: json!({}), counter: 0, at: at() })
            .await
            .then_expect_error(PasskeysError::TooMany);
    }

    #[tokio::test]
    async fn a_credential_belongs_to_one_account() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        TestFramework::<PasskeyCredential>::with(())
            .given(vec![PasskeyCredentialEvent::PasskeyCredentialClaimed { profile_id: alice }])
            .when_async(PasskeyCredentialCommand::Claim { profile_id: bob })
            .await
            .then_expect_error(PasskeyCredentialError::Taken);
        TestFramework::<PasskeyCredential>::with(())
            .given(vec![PasskeyCredentialEvent::PasskeyCredentialClaimed { profile_id: alice }])
            .when_async(PasskeyCredentialCommand::Release { profile_id: bob })
            .await
            .then_expect_error(PasskeyCredentialError::NotOwner);
    }

    #[tokio::test]
    async fn a_challenge_is_answered_once_and_before_it_expires() {
        let issued = WebauthnChallengeEvent::WebauthnChallengeIssued {
            purpose: Purpose::SignIn { profile_id: None, unknown: false },
            state: json!({"challenge": "c"}),
            expires_at: at() + chrono::Duration::minutes(5),
            at: at(),
        };
        let answered = WebauthnChallengeEvent::WebauthnChallengeAnswered { at: at() };
        TestFramework::<WebauthnChallenge>::with(())
            .given(vec![issued.clone()])
            .when_async(WebauthnChallengeCommand::Answer { at: at() })
            .await
            .then_expect_events(vec![answered.clone()]);
        TestFramework::<WebauthnChallenge>::with(())
            .given(vec![issued.clone(), answered])
            .when_async(WebauthnChallengeCommand::Answer { at: at() })
            .await
            .then_expect_error(WebauthnChallengeError::NotFound);
        TestFramework::<WebauthnChallenge>::with(())
            .given(vec![issued])
            .when_async(WebauthnChallengeCommand::Answer { at: at() + chrono::Duration::minutes(5) })
            .await
            .then_expect_error(WebauthnChallengeError::NotFound);
        TestFramework::<WebauthnChallenge>::with(())
            .given_no_previous_events()
            .when_async(WebauthnChallengeCommand::Answer { at: at() })
            .await
            .then_expect_error(WebauthnChallengeError::NotFound);
    }
}
