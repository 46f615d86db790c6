//! Self-service for a signed-in holder: the account's sessions, and (elevated)
//! password, email and phone number changes.

use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::methods::{Enabled, Password, SignInMethod};
use super::mfa::Done;
use super::sign_up::SignUpStarted;
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use super::methods::Methods;
use crate::app::{App, Deanonymization, SessionInfo};

/// One open session of the account.
#[derive(Object)]
pub struct MySession {
    pub session_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// The last refresh or elevation (RFC 3339); the creation until then.
    pub last_used_at: String,
    /// The address it was opened from, when known.
    #[oai(skip_serializing_if_is_none)]
    pub client_address: Option<String>,
    /// The `User-Agent` it was opened with, when sent.
    #[oai(skip_serializing_if_is_none)]
    pub user_agent: Option<String>,
    /// How its holder proved who they are (RFC 8176 names).
    pub amr: Vec<String>,
    /// The session of the token that asked.
    pub current: bool,
}

impl From<SessionInfo> for MySession {
    fn from(info: SessionInfo) -> Self {
        Self {
            session_id: info.session_id.to_string(),
            created_at: info.created_at.to_rfc3339(),
            last_used_at: info.last_used_at.to_rfc3339(),
            client_address: info.device.client_address,
            user_agent: info.device.user_agent,
            amr: info.amr,
            current: info.current,
        }
    }
}

#[derive(Object)]
pub struct MySessions {
    /// Newest first.
    pub sessions: Vec<MySession>,
}

#[derive(Object)]
pub struct PasswordChangeStart {
    /// OPAQUE RegistrationRequest for the new password (32 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub registration_request: String,
}

#[derive(Object)]
pub struct PasswordChangeFinish {
    /// OPAQUE registration record for the new password (192 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{256}$"))]
    pub registration_record: String,
}

#[derive(Object)]
pub struct EmailChange {
    /// Gets a code; the address changes only when the code comes back.
    #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub new_email: String,
}

#[derive(Object)]
pub struct PhoneChange {
    /// E.164 (`+` and up to 15 digits); gets a texted code.
    #[oai(validator(max_length = 16))]
    pub phone_number: String,
}

#[derive(Object)]
pub struct CodeProof {
    /// From the message with the code.
    #[oai(validator(min_length = 1, max_length = 256))]
    pub verification_id: String,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub code: String,
}

#[derive(Object)]
pub struct DeanonymizeStart {
    /// `password` (an OPAQUE registration: `username`, `registration_request`) or
    /// `email` (a link to `email`).
    #[oai(validator(max_length = 32))]
    pub method: String,
    /// For `email`: where the link goes.
    #[oai(validator(max_length = 254))]
    pub email: Option<String>,
    #[oai(validator(max_length = 256))]
    pub username: Option<String>,
    /// OPAQUE RegistrationRequest for the password (32 bytes, base64url).
    #[oai(validator(max_length = 64))]
    pub registration_request: Option<String>,
}

#[derive(Object)]
pub struct DeanonymizeFinish {
    /// OPAQUE registration record (192 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{256}$"))]
    pub registration_record: String,
    /// Optional contact address (an activation code goes there).
    #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub email: Option<String>,
}

#[derive(ApiResponse)]
pub enum Deanonymizing {
    /// `password`: the OPAQUE registration response; finish with `/finish`.
    #[oai(status = 200)]
    Registration(Json<SignUpStarted>),
    /// `email`: the link is on its way.
    #[oai(status = 204)]
    LinkSent,
}

#[derive(Default)]
pub struct SelfServiceApi;

#[OpenApi(tag = "Tag::SelfService")]
impl SelfServiceApi {
    /// The open sessions of the Bearer token's account, with the device each was
    /// opened from.
    #[oai(path = "/v1/user/sessions", method = "get", operation_id = "user_sessions")]
    async fn sessions(&self, app: Data<&Arc<App>>, auth: AccessToken) -> Result<Json<MySessions>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let sessions = app.my_sessions(&who).await?.into_iter().map(MySession::from).collect();
        Ok(Json(MySessions { sessions }))
    }

    /// End one session of the account (this one too). 404 `session_not_found` for
    /// one that is over or belongs to another account.
    #[oai(path = "/v1/user/sessions/:session_id", method = "delete", operation_id = "user_session_end")]
    async fn end_session(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        #[oai(validator(max_length = 64))] session_id: Path<String>,
    ) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.end_my_session(&who, &session_id.0, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Email change, step 1 (elevated): a code goes to the new address, a notice to
    /// the old one. 403 `elevation_required` without a recent proof of presence.
    #[oai(path = "/v1/user/email/change", method = "post", operation_id = "user_email_change")]
    async fn email_change(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<EmailChange>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.change_email_start(&who, &body.0.new_email, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Email change, step 2: the code from the new address → it is the account's,
    /// verified. 422 for a wrong code (attempts are counted) or a code of another
    /// purpose; 404 unknown, expired or another account's.
    #[oai(path = "/v1/user/email/verify", method = "post", operation_id = "user_email_verify")]
    async fn email_verify(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<CodeProof>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.change_email_verify(&who, &body.0.verification_id, &body.0.code, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Phone number, step 1 (elevated): a code texted through the SMS webhook (503
    /// `delivery_unavailable` when none is configured).
    #[oai(path = "/v1/user/phone/change", method = "post", operation_id = "user_phone_change")]
    async fn phone_change(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<PhoneChange>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.change_phone_start(&who, &body.0.phone_number, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Phone number, step 2: the texted code → the number is the account's.
    #[oai(path = "/v1/user/phone/verify", method = "post", operation_id = "user_phone_verify")]
    async fn phone_verify(&self, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<CodeProof>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.change_phone_verify(&who, &body.0.verification_id, &body.0.code, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Make an anonymous account a real one: by `password`, step 1 — its username and
    /// the OPAQUE registration request of its password (then `/finish`); or by
    /// `email` — 204, a link goes to the address, and following it (`/v1/verify`)
    /// makes the account real with that address verified. 403 `not_anonymous` for
    /// other sessions; 409 `username_taken`.
    #[oai(path = "/v1/user/deanonymize", method = "post", operation_id = "user_deanonymize")]
    async fn deanonymize(&self, app: Data<&Arc<App>>, methods: Data<&Methods>, request: &Request, auth: AccessToken, body: JsonBody<DeanonymizeStart>) -> Result<Deanonymizing, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let body = body.0;
        // The way in it makes: honoured like the routes of that method.
        methods.require(if body.method == "email" { SignInMethod::EmailLink } else { SignInMethod::Password })?;
        let (username, request_message, email) = (body.username.as_deref(), body.registration_request.as_deref(), body.email.as_deref());
        Ok(match app.deanonymize(&who, &body.method, username, request_message, email, &context(request)).await? {
            Deanonymization::Registration(registration_response) => Deanonymizing::Registration(Json(SignUpStarted { registration_response })),
            Deanonymization::LinkSent => Deanonymizing::LinkSent,
        })
    }

    /// Make an anonymous account a real one, step 2: the registration record → the
    /// account has a username and password, the same profile id. Sign in with them
    /// for a non-anonymous session.
    #[oai(path = "/v1/user/deanonymize/finish", method = "post", operation_id = "user_deanonymize_finish")]
    async fn deanonymize_finish(&self, app: Data<&Arc<App>>, methods: Data<&Methods>, request: &Request, auth: AccessToken, body: JsonBody<DeanonymizeFinish>) -> Result<Done, ApiError> {
        methods.require(SignInMethod::Password)?;
        let who = app.check_access_token(&auth.0.token).await?;
        app.deanonymize_finish(&who, &body.0.registration_record, body.0.email, &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Password change, step 1 (elevated): the new password's OPAQUE registration
    /// request. Nothing is stored yet. 403 `elevation_required` without a recent
    /// proof of presence.
    #[oai(path = "/v1/user/password", method = "post", operation_id = "user_password")]
    async fn password(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        auth: AccessToken,
        body: JsonBody<PasswordChangeStart>,
    ) -> Result<Json<SignUpStarted>, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let registration_response = app.change_password_start(&who, &body.0.registration_request).await?;
        Ok(Json(SignUpStarted { registration_response }))
    }

    /// Password change, step 2 (elevated): the new password replaces the old one
    /// and every other session of the account ends; this one goes on.
    #[oai(path = "/v1/user/password/finish", method = "post", operation_id = "user_password_finish")]
    async fn password_finish(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        auth: AccessToken,
        body: JsonBody<PasswordChangeFinish>,
    ) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        app.change_password_finish(&who, &body.0.registration_record, &context(request)).await?;
        Ok(Done::NoContent)
    }
}
