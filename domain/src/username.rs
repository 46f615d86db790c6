//! One account per normalised username. The aggregate id is a keyed hash of the
//! normalised username (never the username itself), so the event store's key decides
//! who gets a name when two sign-ups race.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Shortest and longest username, in characters after normalisation.
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=64;

/// The one spelling of a username: trimmed, Unicode NFKC, lower case, 3 to 64
/// characters, no control characters. Two names that normalise alike are one name.
pub fn normalize(raw: &str) -> Result<String, String> {
    use unicode_normalization::UnicodeNormalization;
    let name: String = raw.trim().nfkc().collect::<String>().to_lowercase();
    let chars = name.chars().count();
    if !USERNAME_CHARS.contains(&chars) {
        return Err(format!(
            "must be {} to {} characters after normalisation (has {chars})",
            USERNAME_CHARS.start(),
            USERNAME_CHARS.end()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Username {
    owner: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub enum UsernameCommand {
    Claim { profile_id: Uuid },
    /// Gives a name back: a sign-up that could not complete, or (later) a removal.
    Release { profile_id: Uuid },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UsernameEvent {
    UsernameClaimed { profile_id: Uuid },
    UsernameReleased { profile_id: Uuid },
}
crate::domain_event!(UsernameEvent { UsernameClaimed, UsernameReleased });

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UsernameError {
    #[error("username taken")]
    Taken,
    #[error("username not held by this account")]
    NotOwner,
}

impl Username {
    /// The account holding the name, if any.
    pub fn owner(&self) -> Option<Uuid> {
        self.owner
    }
}

impl crate::Subject for Username {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.owner
    }
}

impl Aggregate for Username {
    const TYPE: &'static str = "username";
    type Command = UsernameCommand;
    type Event = UsernameEvent;
    type Error = UsernameError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            UsernameCommand::Claim { profile_id } => {
                if self.owner.is_some() {
                    return Err(UsernameError::Taken);
                }
                UsernameEvent::UsernameClaimed { profile_id }
            }
            UsernameCommand::Release { profile_id } => {
                if self.owner != Some(profile_id) {
                    return Err(UsernameError::NotOwner);
                }
                UsernameEvent::UsernameReleased { profile_id }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UsernameEvent::UsernameClaimed { profile_id } => self.owner = Some(profile_id),
            UsernameEvent::UsernameReleased { .. } => self.owner = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use UsernameCommand::*;
    use UsernameEvent::*;

    type T = TestFramework<Username>;

    #[test]
    fn names_that_normalise_alike_are_one_name() {
        assert_eq!(normalize("  Alice ").as_deref(), Ok("alice"));
        assert_eq!(normalize("ＡＬＩＣＥ").as_deref(), Ok("alice"));
        assert_eq!(normalize("ﬁre").as_deref(), Ok("fire"));
    }

    #[test]
    fn names_outside_the_length_range_or_with_controls_are_refused() {
        assert!(normalize("ab").is_err());
        assert!(normalize("   ab   ").is_err());
        assert!(normalize(&"x".repeat(65)).is_err());
        assert!(normalize(&"x".repeat(64)).is_ok());
        assert!(normalize("ali\u{7}ce").is_err());
    }

    #[tokio::test]
    async fn claiming_a_free_name() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given_no_previous_events()
            .when_async(Claim { profile_id })
            .await
            .then_expect_events(vec![UsernameClaimed { profile_id }]);
    }

    #[tokio::test]
    async fn claiming_a_taken_name_is_rejected() {
        T::with(())
            .given(vec![UsernameClaimed { profile_id: Uuid::new_v4() }])
            .when_async(Claim { profile_id: Uuid::new_v4() })
            .await
            .then_expect_error(UsernameError::Taken);
    }

    #[tokio::test]
    async fn a_released_name_can_be_claimed_again() {
        let first = Uuid::new_v4();
        let second = Uuid::new_v4();
        T::with(())
            .given(vec![UsernameClaimed { profile_id: first }, UsernameReleased { profile_id: first }])
            .when_async(Claim { profile_id: second })
            .await
            .then_expect_events(vec![UsernameClaimed { profile_id: second }]);
    }

    #[tokio::test]
    async fn releasing_by_the_owner() {
        let owner = Uuid::new_v4();
        T::with(())
            .given(vec![UsernameClaimed { profile_id: owner }])
            .when_async(Release { profile_id: owner })
            .await
            .then_expect_events(vec![UsernameReleased { profile_id: owner }]);
    }

    #[tokio::test]
    async fn releasing_someone_elses_name_is_rejected() {
        T::with(())
            .given(vec![UsernameClaimed { profile_id: Uuid::new_v4() }])
            .when_async(Release { profile_id: Uuid::new_v4() })
            .await
            .then_expect_error(UsernameError::NotOwner);
    }
}
