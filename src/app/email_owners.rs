//! Who owns a verified email address: the `EmailAddress` aggregate keyed by the
//! address (see `domain::email_address`), claimed in the same unit that verifies an
//! address, released when it changes and at removal. Mailed codes and links find
//! their account through it — never through a read model. Start-up backfills it once
//! from the accounts verified before it existed ([`App::backfill_email_owners`]).

use domain::email_address::{EmailAddressCommand, EmailAddressError};
use domain::EmailAddress;
use uuid::Uuid;

use crate::store::{CommandError, RequestContext, Unit};
use super::{rejected, App, AppError, Conflict};

/// The upgrade that claimed every address verified before owners were recorded.
const BACKFILL: &str = "email-owners-v1";

impl App {
    /// The aggregate id of `email` (normalised: trimmed, lower case).
    pub(super) fn email_address_id(&self, email: &str) -> String {
        self.keys.aggregate_id("email", &email.trim().to_lowercase())
    }

    /// The account that verified `email`, if one did.
    pub(super) async fn email_owner(&self, email: &str) -> Result<Option<Uuid>, AppError> {
        Ok(self.store.load_current::<EmailAddress>(&self.email_address_id(email)).await?.owner())
    }

    /// Claims `email` for `profile_id` in `unit` (its aggregate among the unit's): 409
    /// `email_taken` when another account verified it.
    pub(super) async fn claim_email_in(&self, unit: &mut Unit<'_>, email: &str, profile_id: Uuid) -> Result<(), AppError> {
        unit.decide::<EmailAddress>(&self.email_address_id(email), EmailAddressCommand::Claim { profile_id }, &())
            .await
            .map_err(|e| rejected(e, |EmailAddressError::Taken| AppError::Conflict(Conflict::EmailTaken)))?;
        Ok(())
    }

    /// Releases `email` if `profile_id` holds it, in `unit`.
    pub(super) async fn release_email_in(&self, unit: &mut Unit<'_>, email: &str, profile_id: Uuid) -> Result<(), AppError> {
        unit.decide::<EmailAddress>(&self.email_address_id(email), EmailAddressCommand::Release { profile_id }, &())
            .await
            .map_err(|e| rejected(e, |e| AppError::Internal(e.to_string())))?;
        Ok(())
    }

    /// Once per store: every address an account verified before owners were recorded
    /// is claimed for it (the read models caught up from the log first). Where two
    /// accounts had verified one address, the first keeps it and the case is logged.
    pub async fn backfill_email_owners(&self) -> Result<(), AppError> {
        if self.store.upgrade_done(BACKFILL).await? {
            return Ok(());
        }
        self.store.catch_up().await?;
        let meta = RequestContext::default();
        let mut changed = 0;
        for (email, profile_id) in self.store.read_models().await?.verified_emails().await? {
            let Ok(profile_id) = Uuid::parse_str(&profile_id) else { continue };
            let claim = EmailAddressCommand::Claim { profile_id };
            match self.store.execute::<EmailAddress>(&self.email_address_id(&email), claim, &(), &meta).await {
                Ok(events) => changed += events.len() as u64,
                Err(CommandError::Rejected(EmailAddressError::Taken)) => {
                    tracing::warn!(%profile_id, "an email address was verified on two accounts before owners were recorded: the first keeps it");
                }
                Err(CommandError::Store(error)) => return Err(error.into()),
            }
        }
        Ok(self.store.record_upgrade(BACKFILL, changed).await?)
    }
}
