//! authd's business rules: aggregates, their commands, events and errors.
//!
//! Pure: no IO, no HTTP, no SQL. Time comes in with the command (`at`), and crypto
//! that decides an outcome (OPAQUE) is reached through the small traits in
//! [`services`], so every rule can be driven by given/when/then tests.

pub mod email_address;
pub mod id_token;
pub mod identity;
pub mod invite_token;
pub mod mfa;
pub mod mfa_challenge;
pub mod passkey;
pub mod phone_number;
pub mod pat;
pub mod reset_mail;
pub mod services;
pub mod session;
pub mod sign_in;
pub mod sign_in_code;
pub mod sms_budget;
pub mod throttle;
pub mod totp_secret;
pub mod user;
pub mod username;
pub mod verification_rules;
pub mod verification_code;

pub use email_address::EmailAddress;
pub use id_token::IdToken;
pub use identity::{Identity, IdentityLinks};
pub use invite_token::{Bucket, InviteToken};
pub use mfa::Mfa;
pub use mfa_challenge::MfaChallenge;
pub use passkey::{PasskeyCredential, Passkeys, WebauthnChallenge};
pub use pat::Pats;
pub use phone_number::PhoneNumber;
pub use reset_mail::ResetMail;
pub use session::Session;
pub use sign_in::SignIn;
pub use sign_in_code::SignInCode;
pub use sms_budget::SmsBudget;
pub use throttle::Throttle;
pub use user::User;
pub use username::Username;
pub use totp_secret::TotpSecret;
pub use verification_code::VerificationCode;

/// The account whose personal data an aggregate's events carry: their request
/// metadata (client address, user agent) and personal payload fields are encrypted
/// under that account's key, so removing the account erases them (crypto-shredding,
/// src/store/shred.rs). Every aggregate answers, from its id and its state after the
/// events, so no aggregate's events escape by omission; `None` where they concern no
/// account (an unknown username's sign-in, say).
pub trait Subject {
    fn subject(&self, id: &str) -> Option<uuid::Uuid>;
}

/// The subject of aggregates whose id is the account's profile id.
fn profile_of(id: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(id).ok()
}

impl Subject for User {
    fn subject(&self, id: &str) -> Option<uuid::Uuid> {
        profile_of(id)
    }
}

impl Subject for Mfa {
    fn subject(&self, id: &str) -> Option<uuid::Uuid> {
        profile_of(id)
    }
}

impl Subject for ResetMail {
    fn subject(&self, id: &str) -> Option<uuid::Uuid> {
        profile_of(id)
    }
}

/// Every event type is versioned; all current shapes are version 1.
pub const EVENT_VERSION: &str = "1";

/// Implements `cqrs_es::DomainEvent` for an event enum whose variants are all
/// unit-like or struct-like: the event type is the variant name.
#[macro_export]
macro_rules! domain_event {
    ($ty:ty { $($variant:ident),+ $(,)? }) => {
        impl cqrs_es::DomainEvent for $ty {
            fn event_type(&self) -> String {
                match self {
                    $(Self::$variant { .. } => stringify!($variant).to_string(),)+
                }
            }
            fn event_version(&self) -> String {
                $crate::EVENT_VERSION.to_string()
            }
        }
    };
}
