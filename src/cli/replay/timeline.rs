//! `authd replay timeline <username|profile_id>`: what happened to one account, in
//! log order, across every aggregate that names it.
//!
//! A username reaches its account only through the keyed hash that is the
//! `username` aggregate's id; the `UsernameClaimed` events there name the profile
//! id(s) that held it. From a profile id: its `user` and `mfa` aggregates (their id
//! is the profile id), and every session, sign-in, MFA challenge, token and username
//! whose events carry it (`profile_id`, `for_profile`). Failed sign-ins for a name
//! that had no account carry no profile id and cannot be attributed.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};

use anyhow::{bail, Context};
use cqrs_es::Aggregate;
use domain::invite_token::InviteTokenEvent;
use domain::mfa::MfaEvent;
use domain::mfa_challenge::MfaChallengeEvent;
use domain::session::SessionEvent;
use domain::sign_in::{FailureReason, SignInEvent};
use domain::user::UserEvent;
use domain::username::UsernameEvent;
use domain::throttle::ThrottleEvent;
use domain::{InviteToken, Mfa, MfaChallenge, Session, SignIn, Throttle, User, Username};
use projections::Db;
use serde_json::Value;
use uuid::Uuid;

use crate::config::TimelineArgs;
use crate::store::log::{self, Backend, Bind, Event};
use crate::crypto::keys::Keys;

type StreamKey = (String, String);

pub async fn print(db: &Db, keys: &Keys, args: &TimelineArgs) -> anyhow::Result<()> {
    let backend = Backend::of(db);
    let mut streams = BTreeSet::<StreamKey>::new();
    let (title, profiles) = match Uuid::parse_str(args.account.trim()) {
        Ok(profile_id) => (format!("profile {profile_id}"), vec![profile_id]),
        Err(_) => {
            let name = domain::username::normalize(&args.account)
                .map_err(|why| anyhow::anyhow!("{:?} is neither a profile id nor a username: {why}", args.account))?;
            let name_id = keys.aggregate_id("username", &name);
            let claims = stream(db, backend, Username::TYPE, &name_id).await?;
            let mut profiles = Vec::new();
            for event in &claims {
                if let Ok(UsernameEvent::UsernameClaimed { profile_id }) = serde_json::from_value(event.payload.clone()) {
                    if !profiles.contains(&profile_id) {
                        profiles.push(profile_id);
                    }
                }
            }
            if profiles.is_empty() {
                bail!("no account has held the username {name:?} (username aggregate {name_id})");
            }
            streams.insert((Username::TYPE.to_string(), name_id));
            let list = profiles.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ");
            (format!("username {name} (profile {list})"), profiles)
        }
    };
    for profile_id in &profiles {
        streams.extend(streams_of(db, backend, *profile_id).await?);
    }
    let mut events = Vec::new();
    for (aggregate_type, aggregate_id) in &streams {
        events.extend(stream(db, backend, aggregate_type, aggregate_id).await?);
    }
    // Log order across aggregates: the global position, events not numbered yet last.
    events.sort_by_key(|event| (event.position == 0, event.position));
    // Personal fields in clear, or erased (src/store/shred.rs).
    let ring = crate::store::shred::KeyRing::load_all(db, &crate::store::shred::Kek::new(keys.subject_keys_secret())).await?;
    for event in &mut events {
        ring.reveal(&mut event.payload);
        ring.reveal(&mut event.metadata);
    }
    if events.is_empty() {
        bail!("no events for {title}");
    }

    let mut out = BufWriter::new(std::io::stdout());
    if !args.json {
        writeln!(out, "# timeline of {title}: {} events in {} aggregates", events.len(), streams.len())?;
    }
    for event in &events {
        let description = describe(event);
        if args.json {
            serde_json::to_writer(&mut out, &Described { event, description })?;
            writeln!(out)?;
        } else {
            let from = event.meta("client_address").map(|address| format!("from {address}")).unwrap_or_default();
            writeln!(
                out,
                "{}  {:>6}  {:<52} {:<20} {}/{}#{}",
                event.recorded_at,
                event.position,
                description,
                from,
                event.aggregate_type,
                event.aggregate_id,
                event.sequence
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A timeline line as JSON: the event and what it means in plain language.
#[derive(serde::Serialize)]
struct Described<'a> {
    #[serde(flatten)]
    event: &'a Event,
    description: String,
}

/// Every event of one aggregate, in sequence order.
async fn stream(db: &Db, backend: Backend, aggregate_type: &str, aggregate_id: &str) -> anyhow::Result<Vec<Event>> {
    let sql = format!(
        "SELECT {} FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 ORDER BY e.sequence",
        log::columns(backend)
    );
    let binds = [Bind::Text(aggregate_type.to_string()), Bind::Text(aggregate_id.to_string())];
    log::fetch(db, &sql, &binds)
        .await
        .with_context(|| format!("cannot read {aggregate_type}/{aggregate_id}"))
}

/// The aggregates that belong to `profile_id`: its own, and those whose events name it.
async fn streams_of(db: &Db, backend: Backend, profile_id: Uuid) -> anyhow::Result<BTreeSet<StreamKey>> {
    let id = profile_id.to_string();
    let mut streams = BTreeSet::from([(User::TYPE.to_string(), id.clone()), (Mfa::TYPE.to_string(), id.clone())]);
    // A coarse text match first (a UUID holds no LIKE wildcards), then an exact check
    // of the fields that carry an account.
    let sql = format!("SELECT {} FROM events e WHERE CAST(e.payload AS TEXT) LIKE $1", log::columns(backend));
    log::for_each(db, &sql, &[Bind::Text(format!("%{id}%"))], |event| {
        if names_account(&event.payload, &id) {
            streams.insert((event.aggregate_type, event.aggregate_id));
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("cannot search the log for the account's aggregates")?;
    Ok(streams)
}

/// Whether an event payload (`{"EventName": {fields}}`) names the account.
fn names_account(payload: &Value, profile_id: &str) -> bool {
    payload.as_object().into_iter().flat_map(|variants| variants.values()).any(|fields| {
        ["profile_id", "for_profile"].iter().any(|field| fields.get(field).and_then(Value::as_str) == Some(profile_id))
    })
}

fn reason(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::WrongPassword => "wrong password",
        FailureReason::UnknownUser => "unknown user",
        FailureReason::Expired => "expired",
        FailureReason::AccountLocked => "throttled",
        FailureReason::CredentialsChanged => "password changed since it started",
    }
}

/// One line of plain language for an event.
pub fn describe(event: &Event) -> String {
    let payload = event.payload.clone();
    let described = match event.aggregate_type.as_str() {
        Username::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            UsernameEvent::UsernameClaimed { .. } => "username claimed (sign-up)".to_string(),
            UsernameEvent::UsernameReleased { .. } => "username released".to_string(),
        }),
        InviteToken::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            InviteTokenEvent::InviteTokenIssued { for_profile: Some(_), .. } => "recovery token issued".to_string(),
            InviteTokenEvent::InviteTokenIssued { bucket, .. } => format!("{} token issued", bucket.as_str()),
            InviteTokenEvent::InviteTokenRedeemed { .. } => "token redeemed".to_string(),
        }),
        User::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            UserEvent::UserRegistered { username, email: Some(email), .. } => {
                format!("signed up as {username} <{email}>")
            }
            UserEvent::UserRegistered { username, .. } => format!("signed up as {username}"),
            UserEvent::SignInFailureCounted { consecutive, .. } => {
                format!("sign-in attempt counted ({consecutive} since the last success)")
            }
            UserEvent::SignInFailuresReset { .. } => "failed sign-in count reset".to_string(),
            UserEvent::AccountLocked { until, .. } => format!("account locked until {}", until.to_rfc3339()),
            UserEvent::EmailVerified { email, .. } => format!("email {email} verified"),
            UserEvent::EmailChanged { email, .. } => format!("email changed to {email} (verified by a code)"),
            UserEvent::AnonymousUserRegistered { .. } => "anonymous account created".to_string(),
            UserEvent::DeanonymizationStarted { username, .. } => format!("anonymous account picks the username {username}"),
            UserEvent::DeanonymizationByEmailStarted { email, .. } => format!("anonymous account asks for a link to {email}"),
            UserEvent::UserDeanonymized { username, .. } => format!("anonymous account became {username} (OPAQUE registration)"),
            UserEvent::PhoneNumberChanged { phone_number, .. } => format!("phone number {phone_number} verified"),
            UserEvent::PasswordReset { .. } => "password reset (new OPAQUE registration)".to_string(),
            UserEvent::PasswordChanged { kept_session, .. } => {
                format!("password changed while signed in (new OPAQUE registration; every session but {kept_session} ends)")
            }
            UserEvent::UserRemoved { .. } => "account removed".to_string(),
            UserEvent::SessionsRevoked { .. } => "signed out everywhere (every session until now ends)".to_string(),
        }),
        Throttle::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            ThrottleEvent::ProofAttempted { allowed: true, failures, .. } => {
                format!("sign-in attempt counted ({failures} from this address)")
            }
            ThrottleEvent::ProofAttempted { failures, .. } => {
                format!("sign-in attempt throttled ({failures} from this address)")
            }
            ThrottleEvent::ProofSucceeded { .. } => "proof succeeded (password or code): this address's count starts again".to_string(),
        }),
        SignIn::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            SignInEvent::SignInStarted { locked: true, .. } => "sign-in started (throttled)".to_string(),
            SignInEvent::SignInStarted { .. } => "sign-in started".to_string(),
            SignInEvent::SignInSucceeded { .. } => "signed in (password)".to_string(),
            SignInEvent::SignInFailed { reason: why, .. } => format!("sign-in failed: {}", reason(why)),
        }),
        Session::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            SessionEvent::SessionOpened { amr, .. } => format!("session opened ({})", amr.join("+")),
            SessionEvent::SessionRefreshed { .. } => "session refreshed".to_string(),
            SessionEvent::RefreshTokenReuseDetected { .. } => "refresh token reused: session revoked".to_string(),
            SessionEvent::SessionSignedOut { .. } => "signed out".to_string(),
            SessionEvent::SessionElevated { method, .. } => format!("session elevated ({method})"),
        }),
        Mfa::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            MfaEvent::TotpSecretGenerated { .. } => "MFA: TOTP secret generated (pending)".to_string(),
            MfaEvent::TotpEnabled { .. } => "MFA: TOTP enabled".to_string(),
            MfaEvent::TotpDisabled { .. } => "MFA: TOTP disabled".to_string(),
            MfaEvent::TotpCodeUsed { .. } => "MFA: TOTP code accepted".to_string(),
        }),
        MfaChallenge::TYPE => serde_json::from_value(payload).ok().map(|e| match e {
            MfaChallengeEvent::MfaChallengeIssued { .. } => "MFA code requested (password was right)".to_string(),
            MfaChallengeEvent::MfaChallengeFailed { failures, .. } => format!("MFA code wrong ({failures})"),
            MfaChallengeEvent::MfaChallengeCompleted { .. } => "MFA code accepted".to_string(),
        }),
        _ => None,
    };
    described.unwrap_or_else(|| format!("{} (v{})", event.event_type, event.event_version))
}
