//! Single-use invite and recovery tokens. Each token is its own aggregate (its id is
//! a keyed hash of bucket and token), so the event store's key guarantees that a token
//! is issued once and redeemed at most once, even under concurrent redemptions.
//! A recovery (`profile`) token is issued for one account and redeems only for it:
//! otherwise whoever was handed one could take over any account.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The two buckets of single-use tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Invitations redeemed by sign-up.
    Signup,
    /// Recovery tokens an admin hands a user.
    Profile,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Signup => "signup",
            Bucket::Profile => "profile",
        }
    }

    /// The bucket of this name (`signup`, `profile`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "signup" => Some(Bucket::Signup),
            "profile" => Some(Bucket::Profile),
            _ => None,
        }
    }

    /// Whether its tokens are issued for one account: recovery (`profile`) tokens
    /// must be, invitations (`signup`) must not be.
    pub fn needs_owner(self) -> bool {
        matches!(self, Bucket::Profile)
    }

    /// The account its tokens are issued for, checked against [`Bucket::needs_owner`].
    /// `owner` is whatever names the account at the caller's stage (a username
    /// before it is looked up, the profile id after); it comes back unchanged.
    pub fn check_owner<T>(self, owner: Option<T>) -> Result<Option<T>, OwnerError> {
        match (self.needs_owner(), owner) {
            (true, None) => Err(OwnerError::Required),
            (false, Some(_)) => Err(OwnerError::NotAllowed),
            (_, owner) => Ok(owner),
        }
    }
}

/// Why a bucket refuses the account named for its tokens. The text is what the API
/// shows for the account field of a fill (`username`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error("is required for the profile bucket")]
    Required,
    #[error("only profile tokens are issued for an account")]
    NotAllowed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InviteToken {
    bucket: Option<Bucket>,
    for_profile: Option<Uuid>,
    redeemed_by: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum InviteTokenCommand {
    /// `for_profile`: the account a `profile` token recovers (required there).
    Issue { bucket: Bucket, for_profile: Option<Uuid> },
    Redeem { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InviteTokenEvent {
    InviteTokenIssued {
        bucket: Bucket,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_profile: Option<Uuid>,
    },
    InviteTokenRedeemed { profile_id: Uuid },
}
crate::domain_event!(InviteTokenEvent { InviteTokenIssued, InviteTokenRedeemed });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InviteTokenError {
    #[error("token already issued")]
    AlreadyIssued,
    #[error("unknown token")]
    Unknown,
    #[error("token already redeemed")]
    AlreadyRedeemed,
    #[error("a recovery token must be issued for one account")]
    Unbound,
    #[error("an invitation must not be issued for an account")]
    BoundInvitation,
    #[error("token issued for another account")]
    WrongAccount,
}

impl From<OwnerError> for InviteTokenError {
    fn from(error: OwnerError) -> Self {
        match error {
            OwnerError::Required => InviteTokenError::Unbound,
            OwnerError::NotAllowed => InviteTokenError::BoundInvitation,
        }
    }
}

impl InviteTokenError {
    /// The owner rule an issue broke, if that is why it was rejected.
    pub fn owner_error(&self) -> Option<OwnerError> {
        match self {
            InviteTokenError::Unbound => Some(OwnerError::Required),
            InviteTokenError::BoundInvitation => Some(OwnerError::NotAllowed),
            _ => None,
        }
    }
}

impl InviteToken {
    pub fn is_issued(&self) -> bool {
        self.bucket.is_some()
    }
    pub fn is_redeemed(&self) -> bool {
        self.redeemed_by.is_some()
    }
    /// Issued, unredeemed, and (when bound) bound to `profile_id`.
    pub fn redeemable_by(&self, profile_id: Uuid) -> bool {
        self.is_issued() && !self.is_redeemed() && self.for_profile.is_none_or(|bound| bound == profile_id)
    }
}

impl crate::Subject for InviteToken {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.redeemed_by.or(self.for_profile)
    }
}

impl Aggregate for InviteToken {
    const TYPE: &'static str = "invite_token";
    type Command = InviteTokenCommand;
    type Event = InviteTokenEvent;
    type Error = InviteTokenError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            InviteTokenCommand::Issue { bucket, for_profile } => {
                if self.is_issued() {
                    return Err(InviteTokenError::AlreadyIssued);
                }
                bucket.check_owner(for_profile)?;
                InviteTokenEvent::InviteTokenIssued { bucket, for_profile }
            }
            InviteTokenCommand::Redeem { profile_id } => {
                if !self.is_issued() {
                    return Err(InviteTokenError::Unknown);
                }
                if self.is_redeemed() {
                    return Err(InviteTokenError::AlreadyRedeemed);
                }
                if self.for_profile.is_some_and(|bound| bound != profile_id) {
                    return Err(InviteTokenError::WrongAccount);
                }
                InviteTokenEvent::InviteTokenRedeemed { profile_id }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            InviteTokenEvent::InviteTokenIssued { bucket, for_profile } => {
                self.bucket = Some(bucket);
                self.for_profile = for_profile;
            }
            InviteTokenEvent::InviteTokenRedeemed { profile_id } => {
                self.redeemed_by = Some(profile_id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use InviteTokenCommand::*;
    use InviteTokenEvent::*;

    type T = TestFramework<InviteToken>;

    #[tokio::test]
    async fn issuing_a_new_token() {
        T::with(())
            .given_no_previous_events()
            .when_async(Issue { bucket: Bucket::Signup, for_profile: None })
            .await
            .then_expect_events(vec![InviteTokenIssued { bucket: Bucket::Signup, for_profile: None }]);
    }

    #[tokio::test]
    async fn issuing_a_known_token_is_rejected() {
        T::with(())
            .given(vec![InviteTokenIssued { bucket: Bucket::Signup, for_profile: None }])
            .when_async(Issue { bucket: Bucket::Signup, for_profile: None })
            .await
            .then_expect_error(InviteTokenError::AlreadyIssued);
    }

    #[tokio::test]
    async fn redeeming_an_issued_token() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given(vec![InviteTokenIssued { bucket: Bucket::Signup, for_profile: None }])
            .when_async(Redeem { profile_id })
            .await
            .then_expect_events(vec![InviteTokenRedeemed { profile_id }]);
    }

    #[tokio::test]
    async fn a_recovery_token_must_name_its_account() {
        T::with(())
            .given_no_previous_events()
            .when_async(Issue { bucket: Bucket::Profile, for_profile: None })
            .await
            .then_expect_error(InviteTokenError::Unbound);
    }

    #[tokio::test]
    async fn an_invitation_is_not_issued_for_an_account() {
        T::with(())
            .given_no_previous_events()
            .when_async(Issue { bucket: Bucket::Signup, for_profile: Some(Uuid::new_v4()) })
            .await
            .then_expect_error(InviteTokenError::BoundInvitation);
    }

    #[tokio::test]
    async fn issuing_a_recovery_token_for_an_account() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given_no_previous_events()
            .when_async(Issue { bucket: Bucket::Profile, for_profile: Some(profile_id) })
            .await
            .then_expect_events(vec![InviteTokenIssued { bucket: Bucket::Profile, for_profile: Some(profile_id) }]);
    }

    #[test]
    fn only_recovery_tokens_name_an_account() {
        assert!(Bucket::Profile.needs_owner() && !Bucket::Signup.needs_owner());
        assert_eq!(Bucket::Profile.check_owner(Some("alice")), Ok(Some("alice")));
        assert_eq!(Bucket::Profile.check_owner::<&str>(None), Err(OwnerError::Required));
        assert_eq!(Bucket::Signup.check_owner(Some("alice")), Err(OwnerError::NotAllowed));
        assert_eq!(Bucket::Signup.check_owner::<&str>(None), Ok(None));
        assert_eq!(OwnerError::Required.to_string(), "is required for the profile bucket");
        assert_eq!(OwnerError::NotAllowed.to_string(), "only profile tokens are issued for an account");
        for error in [OwnerError::Required, OwnerError::NotAllowed] {
            assert_eq!(InviteTokenError::from(error).owner_error(), Some(error));
        }
        assert_eq!(InviteTokenError::AlreadyIssued.owner_error(), None);
    }

    #[test]
    fn buckets_are_named() {
        for bucket in [Bucket::Signup, Bucket::Profile] {
            assert_eq!(Bucket::parse(bucket.as_str()), Some(bucket));
        }
        assert_eq!(Bucket::parse("Signup"), None);
        assert_eq!(Bucket::parse(""), None);
    }

    #[tokio::test]
    async fn a_recovery_token_redeems_for_its_account() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given(vec![InviteTokenIssued { bucket: Bucket::Profile, for_profile: Some(profile_id) }])
            .when_async(Redeem { profile_id })
            .await
            .then_expect_events(vec![InviteTokenRedeemed { profile_id }]);
    }

    #[tokio::test]
    async fn a_recovery_token_does_not_redeem_for_another_account() {
        T::with(())
            .given(vec![InviteTokenIssued { bucket: Bucket::Profile, for_profile: Some(Uuid::new_v4()) }])
            .when_async(Redeem { profile_id: Uuid::new_v4() })
            .await
            .then_expect_error(InviteTokenError::WrongAccount);
    }

    #[tokio::test]
    async fn redeeming_an_unknown_token_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(Redeem { profile_id: Uuid::new_v4() })
            .await
            .then_expect_error(InviteTokenError::Unknown);
    }

    #[tokio::test]
    async fn redeeming_twice_is_rejected() {
        T::with(())
            .given(vec![
                InviteTokenIssued { bucket: Bucket::Signup, for_profile: None },
                InviteTokenRedeemed { profile_id: Uuid::new_v4() },
            ])
            .when_async(Redeem { profile_id: Uuid::new_v4() })
            .await
            .then_expect_error(InviteTokenError::AlreadyRedeemed);
    }
}
