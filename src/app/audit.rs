//! Operations: the log as auditors page through it, and the health of the store and
//! of the audit relay.

use crate::relay::{self, Lag};
use crate::store::log::{Filter, Page};
use super::{App, AppError};

impl App {
    /// Up to `limit` events after `after`, in the log's global order: the same
    /// envelopes the audit relay publishes (an account's client address and user
    /// agent encrypted under its key; `authd replay events` shows them decrypted).
    pub async fn events(&self, after: i64, limit: usize, filter: &Filter) -> Result<Page, AppError> {
        Ok(self.store.log().read_as_stored(after, limit, filter).await?)
    }

    /// True when the event store answers.
    pub async fn store_ready(&self) -> bool {
        self.store.ready().await
    }

    /// The newest global position in the log.
    pub async fn log_head(&self) -> Result<i64, AppError> {
        Ok(self.store.log().head().await?)
    }

    /// How far the audit relay is behind the log.
    pub async fn relay_lag(&self) -> Result<Lag, AppError> {
        Ok(relay::lag(&self.store).await?)
    }
}
