//! Personal access tokens: create (elevated; the token is shown once), list, revoke,
//! and sign in with one.

use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::methods::{Enabled, Pat};
use super::mfa::Done;
use super::sessions::SessionBody;
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::App;

#[derive(Object)]
pub struct PatCreate {
    /// What it is for (1 to 64 characters).
    #[oai(validator(max_length = 256))]
    pub name: String,
    /// RFC 3339, in the future, at most 366 days away.
    #[oai(validator(max_length = 64))]
    pub expires_at: String,
}

#[derive(Object)]
pub struct PatCreated {
    pub pat_id: String,
    /// Shown this once; only a keyed hash of it is kept.
    pub personal_access_token: String,
}

#[derive(Object)]
pub struct PatEntry {
    pub pat_id: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub revoked_at: Option<String>,
}

#[derive(Object)]
pub struct PatList {
    pub pats: Vec<PatEntry>,
}

#[derive(Object)]
pub struct PatSignIn {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub personal_access_token: String,
}

#[derive(Default)]
pub struct PatApi;

#[OpenApi(tag = "Tag::Pats")]
impl PatApi {
    /// Create a personal access token (elevated: 403 `elevation_required` without a
    /// recent proof of presence). The token is in this answer only.
    #[oai(path = "/v1/pat", method = "post", operation_id = "pat_create")]
    async fn create(&self, _on: Enabled<Pat>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<PatCreate>) -> Result<Json<PatCreated>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let (pat_id, token) = app.pat_create(&who, &body.0.name, &body.0.expires_at, &context(request)).await?;
        Ok(Json(PatCreated { pat_id: pat_id.to_string(), personal_access_token: token }))
    }

    /// The account's personal access tokens (never the tokens themselves).
    #[oai(path = "/v1/pat", method = "get", operation_id = "pat_list")]
    async fn list(&self, _on: Enabled<Pat>, app: Data<&Arc<App>>, auth: AccessToken) -> Result<Json<PatList>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let pats = app
            .pats(&who)
            .await?
            .into_iter()
            .map(|pat| PatEntry {
                pat_id: pat.pat_id.to_string(),
                name: pat.name,
                created_at: pat.created_at.to_rfc3339(),
                expires_at: pat.expires_at.to_rfc3339(),
                last_used_at: pat.last_used_at.map(|at| at.to_rfc3339()),
                revoked_at: pat.revoked_at.map(|at| at.to_rfc3339()),
            })
            .collect();
        Ok(Json(PatList { pats }))
    }

    /// Revoke a personal access token: it signs in no more. 404 `pat_not_found` for
    /// one that is revoked already or not this account's.
    #[oai(path = "/v1/pat/:pat_id", method = "delete", operation_id = "pat_revoke")]
    async fn revoke(&self, _on: Enabled<Pat>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, #[oai(validator(max_length = 64))] pat_id: Path<String>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.pat_revoke(&who, &pat_id.0, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Sign in with a personal access token → a session (`amr` `["pat"]`). 401
    /// `invalid_credentials` for a wrong, revoked or expired token (counted on the
    /// account's throttle); 429 when this address is throttled.
    #[oai(path = "/v1/sign/in/pat", method = "post", operation_id = "sign_in_pat", tag = "Tag::SignIn")]
    async fn sign_in(&self, _on: Enabled<Pat>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<PatSignIn>) -> Result<Json<SessionBody>, ApiError> {
        Ok(Json(app.pat_sign_in(&body.0.personal_access_token, &context(request)).await?.into()))
    }
}
