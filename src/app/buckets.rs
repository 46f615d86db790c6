//! Invitation buckets: filling them (admin) and what they hold.

use domain::invite_token::{InviteTokenCommand, InviteTokenError};
use domain::{Bucket, InviteToken};
use futures::{stream, StreamExt, TryStreamExt};
use projections::BucketView;
use uuid::Uuid;

use crate::store::{CommandError, RequestContext};
use super::{random_token, rejected, App, AppError, Conflict, Fields};

/// Commands in flight at once when a bucket is filled.
const FILL_CONCURRENCY: usize = 8;

impl App {
    /// Issues the given tokens into a bucket; known ones are ignored. Returns how
    /// many were new. Recovery (`profile`) tokens are issued for one account.
    pub async fn fill(
        &self,
        bucket: Bucket,
        for_profile: Option<Uuid>,
        tokens: Vec<String>,
        meta: &RequestContext,
    ) -> Result<u64, AppError> {
        let issued = stream::iter(tokens)
            .map(|token| async move {
                let id = self.token_id(bucket, &token);
                let issue = InviteTokenCommand::Issue { bucket, for_profile };
                match self.store.execute::<InviteToken>(&id, issue, &(), meta).await {
                    Ok(_) => Ok(1u64),
                    Err(CommandError::Rejected(InviteTokenError::AlreadyIssued)) => Ok(0),
                    Err(error) => Err(rejected(error, |e| match e.owner_error() {
                        Some(owner) => AppError::Invalid(vec![("username".into(), owner.to_string())]),
                        None => AppError::Conflict(Conflict::TokenRedeemed),
                    })),
                }
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .try_fold(0, |sum, added| async move { Ok(sum + added) })
            .await?;
        Ok(issued)
    }

    /// The account that tokens for `bucket` are issued for, named by `username`
    /// (the bucket's rule is `Bucket::check_owner`); a broken rule goes to `fields`.
    pub async fn token_owner(
        &self,
        bucket: Bucket,
        username: Option<&str>,
        fields: &mut Fields,
    ) -> Result<Option<Uuid>, AppError> {
        let Some(username) = fields.check("username", bucket.check_owner(username).map_err(|e| e.to_string())).flatten()
        else {
            return Ok(None);
        };
        let account = self.account_of(username).await?;
        if account.is_none() {
            fields.bad("username", "no such account");
        }
        Ok(account)
    }

    /// Generates `count` fresh tokens into a bucket.
    pub async fn generate(
        &self,
        bucket: Bucket,
        for_profile: Option<Uuid>,
        count: usize,
        meta: &RequestContext,
    ) -> Result<Vec<String>, AppError> {
        let tokens: Vec<String> = (0..count).map(|_| random_token()).collect();
        self.fill(bucket, for_profile, tokens.clone(), meta).await?;
        Ok(tokens)
    }

    /// Generates tokens until `size` are available in the `signup` bucket.
    pub async fn top_up(&self, size: u64, meta: &RequestContext) -> Result<Vec<String>, AppError> {
        let available = u64::try_from(self.bucket(Bucket::Signup).await?.available).unwrap_or(0);
        let missing = usize::try_from(size.saturating_sub(available)).unwrap_or(0);
        self.generate(Bucket::Signup, None, missing, meta).await
    }

    pub async fn bucket(&self, bucket: Bucket) -> Result<BucketView, AppError> {
        Ok(self.store.read_models().await?.bucket(bucket.as_str()).await?)
    }

    pub(crate) fn token_id(&self, bucket: Bucket, token: &str) -> String {
        self.keys.aggregate_id(bucket.as_str(), token)
    }
}
