//! A signed-in session: opened by a successful sign-in, its refresh token rotated on
//! every use. A rotated token presented again means it leaked: the session is revoked.
//! Only keyed hashes of refresh tokens ever enter the log. The state stays small
//! however often a session is refreshed: it remembers the last
//! [`REMEMBERED_ROTATIONS`] rotated hashes (an older token is merely invalid).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Rotated refresh-token hashes a session remembers, to recognise a reused one.
pub const REMEMBERED_ROTATIONS: usize = 8;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    profile_id: Option<Uuid>,
    opened_at: Option<DateTime<Utc>>,
    ended: bool,
    refresh_hash: String,
    rotated_hashes: Vec<String>,
    refresh_expires_at: Option<DateTime<Utc>>,
    /// The absolute end (`AUTHD_SESSION_MAX_AGE` after opening), which no refresh moves.
    ends_at: Option<DateTime<Utc>>,
    amr: Vec<String>,
    /// When the holder last proved presence (the opening, or a later elevation).
    #[serde(default)]
    auth_time: Option<DateTime<Utc>>,
    /// The device it was opened from, shown in the account's session list.
    #[serde(default)]
    device: Device,
    /// The last refresh or elevation (the opening until then).
    #[serde(default)]
    last_used_at: Option<DateTime<Utc>>,
    /// The factors (RFC 8176 names) of the last proof of presence, at `auth_time`:
    /// whether they meet the account's level decides step-up (src/app/assurance.rs).
    #[serde(default)]
    presence: Vec<String>,
    /// The personal access token that opened it: revoking or expiring it ends the session.
    #[serde(default)]
    pat_id: Option<Uuid>,
}

/// Where a session was opened from, as the request said. Personal: stored
/// encrypted under the account's key, erased with it (src/store/shred.rs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub enum SessionCommand {
    Open {
        profile_id: Uuid,
        refresh_hash: String,
        refresh_expires_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        amr: Vec<String>,
        /// The factors that proved presence (none for a PAT or an anonymous session).
        presence: Vec<String>,
        pat_id: Option<Uuid>,
        device: Device,
        at: DateTime<Utc>,
    },
    Refresh {
        presented_hash: String,
        new_hash: String,
        refresh_expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    SignOut { at: DateTime<Utc> },
    /// A fresh proof of presence (`method`, an RFC 8176 name) on this session: the
    /// refresh token rotates and `auth_time` moves to `at`.
    Elevate {
        method: String,
        new_hash: String,
        refresh_expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionEvent {
    SessionOpened {
        profile_id: Uuid,
        refresh_hash: String,
        refresh_expires_at: DateTime<Utc>,
        /// Authentication methods used (RFC 8176 names), carried into access tokens.
        amr: Vec<String>,
        opened_at: DateTime<Utc>,
        /// Absent in sessions opened before sessions had a maximum age.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ends_at: Option<DateTime<Utc>>,
        /// Absent in sessions opened before the session list.
        #[serde(default)]
        device: Device,
        /// The factors that proved presence; absent before one assurance model (such
        /// a session was never elevated since).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        presence: Vec<String>,
        /// The personal access token it was opened with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pat_id: Option<Uuid>,
    },
    SessionRefreshed { refresh_hash: String, refresh_expires_at: DateTime<Utc>, at: DateTime<Utc> },
    /// A rotated refresh token came back: the session is revoked.
    RefreshTokenReuseDetected { at: DateTime<Utc> },
    SessionSignedOut { at: DateTime<Utc> },
    /// The holder proved presence again (step-up): a new refresh token, a new `auth_time`.
    SessionElevated { method: String, refresh_hash: String, refresh_expires_at: DateTime<Utc>, at: DateTime<Utc> },
}
crate::domain_event!(SessionEvent {
    SessionOpened,
    SessionRefreshed,
    RefreshTokenReuseDetected,
    SessionSignedOut,
    SessionElevated
});

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("session already opened")]
    AlreadyOpened,
    #[error("no such session")]
    NotFound,
    #[error("session has ended")]
    Ended,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("refresh token expired")]
    RefreshTokenExpired,
    #[error("the session reached its maximum age")]
    MaxAgeReached,
}

impl Session {
    pub fn profile_id(&self) -> Option<Uuid> {
        self.profile_id
    }
    /// Opened and neither signed out nor revoked.
    pub fn is_active(&self) -> bool {
        self.profile_id.is_some() && !self.ended
    }
    pub fn amr(&self) -> &[String] {
        &self.amr
    }
    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at
    }
    /// When the holder last proved presence: the latest elevation, else the opening.
    pub fn auth_time(&self) -> Option<DateTime<Utc>> {
        self.auth_time.or(self.opened_at)
    }
    /// The session's absolute end, if it has one: no token of it outlives this.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        self.ends_at
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The factors of the last proof of presence (see [`Session::auth_time`]).
    pub fn presence(&self) -> &[String] {
        &self.presence
    }
    /// The personal access token the session was opened with.
    pub fn pat_id(&self) -> Option<Uuid> {
        self.pat_id
    }
    /// The last refresh or elevation, else the opening.
    pub fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.last_used_at.or(self.opened_at)
    }
    /// Whether the session `id` (this one) still counts `at`: open, not past its
    /// maximum age, and admitted by its account (which ends every session opened
    /// before a revocation, see `User::admits_session`).
    pub fn admitted_by(&self, id: Uuid, user: &crate::User, at: DateTime<Utc>) -> bool {
        self.is_active()
            && self.ends_at.is_none_or(|ends_at| at < ends_at)
            && self.opened_at.is_some_and(|opened_at| user.admits_session(Some(id), opened_at))
    }

    fn rotate(&mut self, refresh_hash: String, refresh_expires_at: DateTime<Utc>) {
        let rotated = std::mem::replace(&mut self.refresh_hash, refresh_hash);
        if self.rotated_hashes.len() == REMEMBERED_ROTATIONS {
            self.rotated_hashes.remove(0);
        }
        self.rotated_hashes.push(rotated);
        self.refresh_expires_at = Some(refresh_expires_at);
    }

    fn check_live(&self) -> Result<(), SessionError> {
        match (self.profile_id, self.ended) {
            (None, _) => Err(SessionError::NotFound),
            (Some(_), true) => Err(SessionError::Ended),
            (Some(_), false) => Ok(()),
        }
    }
}

impl crate::Subject for Session {
    fn subject(&self, _: &str) -> Option<Uuid> {
        self.profile_id
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            SessionCommand::Open { profile_id, refresh_hash, refresh_expires_at, ends_at, amr, presence, pat_id, device, at } => {
                if self.profile_id.is_some() {
                    return Err(SessionError::AlreadyOpened);
                }
                let refresh_expires_at = refresh_expires_at.min(ends_at);
                let ends_at = Some(ends_at);
                SessionEvent::SessionOpened { profile_id, refresh_hash, refresh_expires_at, amr, opened_at: at, ends_at, device, presence, pat_id }
            }
            SessionCommand::Refresh { presented_hash, new_hash, refresh_expires_at, at } => {
                self.check_live()?;
                if self.rotated_hashes.contains(&presented_hash) {
                    SessionEvent::RefreshTokenReuseDetected { at }
                } else if presented_hash != self.refresh_hash {
                    return Err(SessionError::InvalidRefreshToken);
                } else if self.ends_at.is_some_and(|ends_at| at >= ends_at) {
                    return Err(SessionError::MaxAgeReached);
                } else if self.refresh_expires_at.is_some_and(|expires| at >= expires) {
                    return Err(SessionError::RefreshTokenExpired);
                } else {
                    // A refresh never carries the session past its absolute end.
                    let refresh_expires_at = self.ends_at.map_or(refresh_expires_at, |end| refresh_expires_at.min(end));
                    SessionEvent::SessionRefreshed { refresh_hash: new_hash, refresh_expires_at, at }
                }
            }
            SessionCommand::SignOut { at } => {
                self.check_live()?;
                SessionEvent::SessionSignedOut { at }
            }
            SessionCommand::Elevate { method, new_hash, refresh_expires_at, at } => {
                self.check_live()?;
                if self.ends_at.is_some_and(|ends_at| at >= ends_at) {
                    return Err(SessionError::MaxAgeReached);
                }
                let refresh_expires_at = self.ends_at.map_or(refresh_expires_at, |end| refresh_expires_at.min(end));
                SessionEvent::SessionElevated { method, refresh_hash: new_hash, refresh_expires_at, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::SessionOpened { profile_id, refresh_hash, refresh_expires_at, amr, opened_at, ends_at, device, presence, pat_id } => {
                self.device = device;
                self.presence = presence;
                self.pat_id = pat_id;
                self.profile_id = Some(profile_id);
                self.opened_at = Some(opened_at);
                self.ends_at = ends_at;
                self.refresh_hash = refresh_hash;
                self.refresh_expires_at = Some(refresh_expires_at);
                self.amr = amr;
            }
            SessionEvent::SessionRefreshed { refresh_hash, refresh_expires_at, at } => {
                self.rotate(refresh_hash, refresh_expires_at);
                self.last_used_at = Some(at);
            }
            SessionEvent::SessionElevated { method, refresh_hash, refresh_expires_at, at } => {
                self.rotate(refresh_hash, refresh_expires_at);
                self.last_used_at = Some(at);
                self.auth_time = Some(at);
                self.presence = vec![method.clone()];
                if !self.amr.contains(&method) {
                    self.amr.push(method);
                }
            }
            SessionEvent::RefreshTokenReuseDetected { .. } | SessionEvent::SessionSignedOut { .. } => {
                self.ended = true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use cqrs_es::test::TestFramework;
    use SessionCommand::*;
    use SessionEvent::*;

    type T = TestFramework<Session>;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    #[test]
    fn the_state_stays_small_however_often_a_session_is_refreshed() {
        let mut session = Session::default();
        session.apply(opened(Uuid::nil()));
        for n in 0..1000 {
            session.apply(SessionRefreshed { refresh_hash: format!("h{}", n + 2), refresh_expires_at: t0(), at: t0() });
        }
        assert_eq!(session.rotated_hashes.len(), REMEMBERED_ROTATIONS);
        assert!(session.rotated_hashes.contains(&"h1000".to_string()) && !session.rotated_hashes.contains(&"h1".to_string()));
    }

    #[test]
    fn the_session_list_shows_the_device_and_the_last_use() {
        let mut session = Session::default();
        session.apply(opened(Uuid::nil()));
        assert_eq!((session.device(), session.last_used_at()), (&laptop(), Some(t0())));
        let later = t0() + Duration::hours(1);
        session.apply(SessionRefreshed { refresh_hash: "h2".into(), refresh_expires_at: t0(), at: later });
        assert_eq!(session.last_used_at(), Some(later));
        // A session opened before devices were recorded still reads.
        let old = serde_json::json!({"SessionOpened": {"profile_id": Uuid::nil(), "refresh_hash": "h", "refresh_expires_at": t0(), "amr": [], "opened_at": t0()}});
        let SessionOpened { device, .. } = serde_json::from_value(old).expect("old event") else { panic!("opened") };
        assert_eq!(device, Device::default());
    }

    fn opened(profile_id: Uuid) -> SessionEvent {
        SessionOpened {
            profile_id,
            refresh_hash: "h1".into(),
            refresh_expires_at: t0() + Duration::days(30),
            amr: vec!["pwd".into()],
            opened_at: t0(),
            ends_at: Some(t0() + Duration::days(90)),
            device: laptop(),
            presence: vec!["pwd".into()],
            pat_id: None,
        }
    }

    fn laptop() -> Device {
        Device { client_address: Some("192.0.2.1".into()), user_agent: Some("laptop".into()) }
    }

    fn refreshed(to: &str) -> SessionEvent {
        SessionRefreshed { refresh_hash: to.into(), refresh_expires_at: t0() + Duration::days(31), at: t0() }
    }

    fn refresh(presented: &str, at: DateTime<Utc>) -> SessionCommand {
        Refresh {
            presented_hash: presented.into(),
            new_hash: "h3".into(),
            refresh_expires_at: t0() + Duration::days(31),
            at,
        }
    }

    #[tokio::test]
    async fn opening() {
        let profile_id = Uuid::new_v4();
        T::with(())
            .given_no_previous_events()
            .when_async(Open {
                profile_id,
                refresh_hash: "h1".into(),
                refresh_expires_at: t0() + Duration::days(30),
                ends_at: t0() + Duration::days(90),
                amr: vec!["pwd".into()],
                presence: vec!["pwd".into()],
                pat_id: None,
                device: laptop(),
                at: t0(),
            })
            .await
            .then_expect_events(vec![opened(profile_id)]);
    }

    #[test]
    fn presence_is_the_last_proof_and_a_pat_session_names_its_token() {
        let mut session = Session::default();
        let pat_id = Uuid::new_v4();
        let SessionOpened { profile_id, refresh_hash, refresh_expires_at, opened_at, ends_at, device, .. } = opened(Uuid::nil()) else { unreachable!() };
        session.apply(SessionOpened { profile_id, refresh_hash, refresh_expires_at, amr: vec!["pat".into()], opened_at, ends_at, device, presence: vec![], pat_id: Some(pat_id) });
        assert_eq!((session.presence(), session.pat_id()), (&[][..], Some(pat_id)));
        let mut session = Session::default();
        session.apply(opened(Uuid::nil()));
        assert_eq!(session.presence(), ["pwd"]);
        session.apply(SessionElevated { method: "otp".into(), refresh_hash: "h2".into(), refresh_expires_at: t0(), at: t0() });
        assert_eq!((session.presence(), session.amr()), (&["otp".to_string()][..], &["pwd".to_string(), "otp".to_string()][..]));
        // A session opened before presence was recorded proves none (never elevated).
        let old = serde_json::json!({"SessionOpened": {"profile_id": Uuid::nil(), "refresh_hash": "h", "refresh_expires_at": t0(), "amr": ["pwd"], "opened_at": t0()}});
        let mut session = Session::default();
        session.apply(serde_json::from_value(old).expect("old event"));
        assert!(session.presence().is_empty() && session.pat_id().is_none());
    }

    #[tokio::test]
    async fn no_refresh_outlives_the_maximum_age() {
        let ends_at = t0() + Duration::days(90);
        // A refresh near the end gets a token that expires at the end, not later...
        let late = SessionRefreshed { refresh_hash: "h2".into(), refresh_expires_at: ends_at + Duration::days(30), at: t0() };
        T::with(())
            .given(vec![opened(Uuid::new_v4()), late.clone()])
            .when_async(Refresh {
                presented_hash: "h2".into(),
                new_hash: "h3".into(),
                refresh_expires_at: ends_at + Duration::days(30),
                at: ends_at - Duration::days(1),
            })
            .await
            .then_expect_events(vec![SessionRefreshed { refresh_hash: "h3".into(), refresh_expires_at: ends_at, at: ends_at - Duration::days(1) }]);
        // ...and none is granted at or after it, whatever the token's own expiry.
        T::with(())
            .given(vec![opened(Uuid::new_v4()), late])
            .when_async(refresh("h2", ends_at))
            .await
            .then_expect_error(SessionError::MaxAgeReached);
    }

    #[tokio::test]
    async fn opening_twice_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(Open {
                profile_id: Uuid::new_v4(),
                refresh_hash: "x".into(),
                refresh_expires_at: t0(),
                ends_at: t0(),
                amr: vec![],
                presence: vec![],
                pat_id: None,
                device: Device::default(),
                at: t0(),
            })
            .await
            .then_expect_error(SessionError::AlreadyOpened);
    }

    #[tokio::test]
    async fn refreshing_with_the_current_token_rotates_it() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), refreshed("h2")])
            .when_async(refresh("h2", t0()))
            .await
            .then_expect_events(vec![SessionRefreshed {
                refresh_hash: "h3".into(),
                refresh_expires_at: t0() + Duration::days(31),
                at: t0(),
            }]);
    }

    #[tokio::test]
    async fn a_rotated_token_presented_again_revokes_the_session() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), refreshed("h2")])
            .when_async(refresh("h1", t0()))
            .await
            .then_expect_events(vec![RefreshTokenReuseDetected { at: t0() }]);
    }

    #[tokio::test]
    async fn an_unknown_token_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(refresh("nope", t0()))
            .await
            .then_expect_error(SessionError::InvalidRefreshToken);
    }

    #[tokio::test]
    async fn an_expired_token_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(refresh("h1", t0() + Duration::days(30)))
            .await
            .then_expect_error(SessionError::RefreshTokenExpired);
    }

    #[tokio::test]
    async fn refreshing_a_revoked_session_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), refreshed("h2"), RefreshTokenReuseDetected { at: t0() }])
            .when_async(refresh("h2", t0()))
            .await
            .then_expect_error(SessionError::Ended);
    }

    #[tokio::test]
    async fn refreshing_an_unknown_session_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(refresh("h1", t0()))
            .await
            .then_expect_error(SessionError::NotFound);
    }

    fn elevate(at: DateTime<Utc>) -> SessionCommand {
        Elevate { method: "otp".into(), new_hash: "h9".into(), refresh_expires_at: t0() + Duration::days(120), at }
    }

    #[tokio::test]
    async fn elevating_rotates_the_token_and_moves_auth_time() {
        let later = t0() + Duration::hours(5);
        // The refresh token's expiry stays within the session's absolute end.
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(elevate(later))
            .await
            .then_expect_events(vec![SessionElevated {
                method: "otp".into(),
                refresh_hash: "h9".into(),
                refresh_expires_at: t0() + Duration::days(90),
                at: later,
            }]);
        let mut session = Session::default();
        session.apply(opened(Uuid::nil()));
        assert_eq!(session.auth_time(), Some(t0()), "the opening is the first proof");
        session.apply(SessionElevated { method: "otp".into(), refresh_hash: "h9".into(), refresh_expires_at: t0(), at: later });
        assert_eq!(session.auth_time(), Some(later));
        assert_eq!(session.amr(), ["pwd".to_string(), "otp".to_string()]);
        assert!(session.rotated_hashes.contains(&"h1".to_string()), "the token before the elevation is a rotated one");
    }

    #[tokio::test]
    async fn an_ended_or_expired_session_cannot_be_elevated() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), SessionSignedOut { at: t0() }])
            .when_async(elevate(t0()))
            .await
            .then_expect_error(SessionError::Ended);
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(elevate(t0() + Duration::days(90)))
            .await
            .then_expect_error(SessionError::MaxAgeReached);
        T::with(()).given_no_previous_events().when_async(elevate(t0())).await.then_expect_error(SessionError::NotFound);
    }

    #[tokio::test]
    async fn signing_out() {
        T::with(())
            .given(vec![opened(Uuid::new_v4())])
            .when_async(SignOut { at: t0() })
            .await
            .then_expect_events(vec![SessionSignedOut { at: t0() }]);
    }

    #[tokio::test]
    async fn signing_out_twice_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), SessionSignedOut { at: t0() }])
            .when_async(SignOut { at: t0() })
            .await
            .then_expect_error(SessionError::Ended);
    }

    #[tokio::test]
    async fn refreshing_after_sign_out_is_rejected() {
        T::with(())
            .given(vec![opened(Uuid::new_v4()), SessionSignedOut { at: t0() }])
            .when_async(refresh("h1", t0()))
            .await
            .then_expect_error(SessionError::Ended);
    }

    #[tokio::test]
    async fn signing_out_of_an_unknown_session_is_rejected() {
        T::with(())
            .given_no_previous_events()
            .when_async(SignOut { at: t0() })
            .await
            .then_expect_error(SessionError::NotFound);
    }
}
