use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::{context, AdminToken, ApiError, JsonBody, Tag};
use crate::app::{App, Fields};

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum BucketName {
    Signup,
    Profile,
}

impl From<BucketName> for domain::Bucket {
    fn from(name: BucketName) -> Self {
        match name {
            BucketName::Signup => domain::Bucket::Signup,
            BucketName::Profile => domain::Bucket::Profile,
        }
    }
}

/// Either `tokens` (add these; known ones are ignored) or `count` (generate N).
#[derive(Object)]
pub struct FillRequest {
    pub bucket: BucketName,
    /// Tokens to add (each 1 to 256 characters).
    #[oai(validator(max_items = 10000))]
    pub tokens: Option<Vec<String>>,
    /// How many tokens to generate.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub count: Option<u32>,
    /// `profile` bucket only, and required there: the account these recovery
    /// tokens are for. A recovery token redeems only for its account.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: Option<String>,
}

#[derive(Object)]
pub struct TopUpRequest {
    /// Generate `signup` tokens until this many are available.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub bucket_size: u32,
}

#[derive(Object)]
pub struct FillResponse {
    pub bucket: String,
    /// Tokens new to the bucket.
    pub added: u64,
    /// Unredeemed tokens in the bucket now.
    pub available: u64,
    /// The generated tokens (only when generating).
    pub tokens: Vec<String>,
}

#[derive(Object)]
pub struct BucketStatus {
    pub bucket: String,
    pub available: u64,
    pub redeemed: u64,
}

#[derive(Default)]
pub struct BucketApi;

impl BucketApi {
    async fn status(app: &App, bucket: domain::Bucket) -> Result<(u64, u64), ApiError> {
        let view = app.bucket(bucket).await?;
        Ok((u64::try_from(view.available).unwrap_or(0), u64::try_from(view.redeemed).unwrap_or(0)))
    }
}

#[OpenApi(tag = "Tag::Buckets")]
impl BucketApi {
    /// Fill a bucket with given tokens or N generated ones.
    #[oai(path = "/v1/bucket/fill", method = "post", operation_id = "fill_bucket")]
    async fn fill(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        body: JsonBody<FillRequest>,
    ) -> Result<Json<FillResponse>, ApiError> {
        app.admin(&auth.0.token, &context(request))?;
        let body = body.0;
        let bucket = domain::Bucket::from(body.bucket);
        let meta = context(request);
        let mut fields = Fields::default();
        let for_profile = app.token_owner(bucket, body.username.as_deref(), &mut fields).await?;
        let (added, tokens) = match (body.tokens, body.count) {
            (Some(tokens), None) => {
                for (i, token) in tokens.iter().enumerate() {
                    if !(1..=256).contains(&token.chars().count()) {
                        fields.bad(&format!("tokens[{i}]"), "must be 1 to 256 characters");
                    }
                }
                if !fields.is_empty() {
                    return Err(fields.error().into());
                }
                (app.fill(bucket, for_profile, tokens, &meta).await?, vec![])
            }
            (None, Some(count)) if fields.is_empty() => {
                let tokens = app.generate(bucket, for_profile, count as usize, &meta).await?;
                (tokens.len() as u64, tokens)
            }
            (None, Some(_)) => return Err(fields.error().into()),
            _ => {
                fields.bad("tokens", "give exactly one of tokens and count");
                fields.bad("count", "give exactly one of tokens and count");
                return Err(fields.error().into());
            }
        };
        let (available, _) = Self::status(&app, bucket).await?;
        Ok(Json(FillResponse { bucket: bucket.as_str().into(), added, available, tokens }))
    }

    /// Top the `signup` bucket up until `bucket_size` tokens are available.
    #[oai(path = "/v1/fill", method = "post", operation_id = "top_up_signup_bucket")]
    async fn top_up(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        body: JsonBody<TopUpRequest>,
    ) -> Result<Json<FillResponse>, ApiError> {
        app.admin(&auth.0.token, &context(request))?;
        let tokens = app.top_up(u64::from(body.0.bucket_size), &context(request)).await?;
        let (available, _) = Self::status(&app, domain::Bucket::Signup).await?;
        Ok(Json(FillResponse { bucket: "signup".into(), added: tokens.len() as u64, available, tokens }))
    }

    /// How many tokens of a bucket are available and redeemed.
    #[oai(path = "/v1/bucket/:bucket", method = "get", operation_id = "bucket_status")]
    async fn status_of(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AdminToken,
        /// `signup` or `profile`.
        bucket: Path<String>,
    ) -> Result<Json<BucketStatus>, ApiError> {
        app.admin(&auth.0.token, &context(request))?;
        let Some(bucket) = domain::Bucket::parse(&bucket.0) else {
            return Err(ApiError::new(404, "unknown_bucket", "buckets are `signup` and `profile`"));
        };
        let (available, redeemed) = Self::status(&app, bucket).await?;
        Ok(Json(BucketStatus { bucket: bucket.as_str().into(), available, redeemed }))
    }
}
