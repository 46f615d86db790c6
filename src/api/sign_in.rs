use std::sync::Arc;

use poem::web::Data;
use poem::Request;
use poem_openapi::payload::{Form, Html, Json};
use poem_openapi::param::Query;
use poem::RequestBody;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi, Union};
use webauthn_rs::prelude::Url;

use super::methods::{Enabled, Anonymous, EmailCode, EmailLink, IdToken, Password, SmsCode};
use super::mfa::Done;
use super::sessions::SessionBody;
use super::{context, AccessToken, ApiError, JsonBody, Tag};
use crate::app::{App, AppError, Channel, Fields, SignInResult};

#[derive(Object)]
pub struct SignInStart {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub username: String,
    /// OPAQUE KE1 (CredentialRequest, 96 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{128}$"))]
    pub credential_request: String,
}

#[derive(Object)]
pub struct SignInStarted {
    /// Opaque handle of this attempt; send it back with KE3. Single-use, expires.
    pub sign_in_id: String,
    /// OPAQUE KE2 (CredentialResponse, 320 bytes, base64url). Unknown usernames get
    /// one of the same shape.
    pub credential_response: String,
}

#[derive(Object)]
pub struct SignInFinish {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub sign_in_id: String,
    /// OPAQUE KE3 (CredentialFinalization, 64 bytes, base64url).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{86}$"))]
    pub credential_finalization: String,
}

/// MFA is on: send a code with this ticket to `/v1/sign/in/mfa`.
#[derive(Object)]
pub struct MfaRequired {
    /// Always true.
    pub mfa_required: bool,
    /// Single-use, short-lived.
    pub mfa_ticket: String,
}

/// A session, or the demand for a second factor.
#[derive(Union)]
pub enum SignInAnswer {
    Session(SessionBody),
    MfaRequired(MfaRequired),
}

impl From<SignInResult> for SignInAnswer {
    fn from(result: SignInResult) -> Self {
        match result {
            SignInResult::Session(tokens) => SignInAnswer::Session(tokens.into()),
            SignInResult::MfaRequired { mfa_ticket } => {
                SignInAnswer::MfaRequired(MfaRequired { mfa_required: true, mfa_ticket })
            }
        }
    }
}

#[derive(Object)]
pub struct MfaSignIn {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub mfa_ticket: String,
    /// The current TOTP code.
    #[oai(validator(pattern = "^[0-9]{6}$"))]
    pub code: String,
}

#[derive(Object)]
pub struct VerifyRequest {
    /// An access token.
    #[oai(validator(min_length = 1, max_length = 8192))]
    pub jwt: String,
}

#[derive(Object)]
pub struct VerifiedProfile {
    pub profile_id: String,
}

#[derive(Default)]
pub struct SignInApi;

#[OpenApi(tag = "Tag::SignIn")]
impl SignInApi {
    /// Sign in, step 1: send KE1, get KE2 and a sign-in id.
    #[oai(path = "/v1/sign/in", method = "post", operation_id = "sign_in")]
    async fn start(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<SignInStart>,
    ) -> Result<Json<SignInStarted>, ApiError> {
        let (sign_in_id, credential_response) =
            app.sign_in_start(&body.0.username, &body.0.credential_request, &context(request)).await?;
        Ok(Json(SignInStarted { sign_in_id, credential_response }))
    }

    /// Sign in, step 2: send KE3, get a session — or `{"mfa_required": true,
    /// "mfa_ticket"}` when the account has MFA on. 401 `invalid_credentials` for a
    /// wrong password, a locked account, and an unknown, expired or already finished
    /// sign-in; 403 `email_not_verified` when verified email is required.
    #[oai(path = "/v1/sign/in/finish", method = "post", operation_id = "sign_in_finish")]
    async fn finish(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<SignInFinish>,
    ) -> Result<Json<SignInAnswer>, ApiError> {
        let result =
            app.sign_in_finish(&body.0.sign_in_id, &body.0.credential_finalization, &context(request)).await?;
        Ok(Json(result.into()))
    }

    /// Sign in, MFA step: the ticket from `sign/in/finish` and a TOTP code give a
    /// session (`amr` = `["pwd", "otp"]`). Each code works once; 401 for a wrong or
    /// replayed code or a used, expired or exhausted ticket.
    #[oai(path = "/v1/sign/in/mfa", method = "post", operation_id = "sign_in_mfa")]
    async fn mfa(
        &self,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<MfaSignIn>,
    ) -> Result<Json<SessionBody>, ApiError> {
        let tokens = app.sign_in_mfa(&body.0.mfa_ticket, &body.0.code, &context(request)).await?;
        Ok(Json(tokens.into()))
    }

    /// Check an access token; 401 when invalid, expired or signed out.
    #[oai(path = "/v1/sign/in/verify", method = "post", operation_id = "sign_in_verify")]
    async fn verify(&self, app: Data<&Arc<App>>, body: JsonBody<VerifyRequest>) -> Result<Json<VerifiedProfile>, ApiError> {
        let verified = app.check_access_token(&body.0.jwt).await?;
        Ok(Json(VerifiedProfile { profile_id: verified.profile_id.to_string() }))
    }
}

#[derive(Object)]
pub struct EmailOtpStart {
    #[oai(validator(max_length = 254))]
    pub email: String,
}

#[derive(Object)]
pub struct EmailOtpVerify {
    #[oai(validator(max_length = 254))]
    pub email: String,
    /// The 6-digit code from the mail.
    #[oai(validator(min_length = 1, max_length = 16))]
    pub otp: String,
}

#[derive(Default)]
pub struct PasswordlessApi;

#[OpenApi(tag = "Tag::SignIn")]
impl PasswordlessApi {
    /// Sign in by email code, step 1: always 204 for a well-formed address; when it
    /// is an account's verified email, a 6-digit code (10 minutes, single-use) goes
    /// there.
    #[oai(path = "/v1/sign/in/otp/email", method = "post", operation_id = "sign_in_otp_email")]
    async fn start(&self, _on: Enabled<EmailCode>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<EmailOtpStart>) -> Result<Done, ApiError> {
        app.sign_in_code_start(Channel::Email, &body.0.email, None, &context(request))?;
        Ok(Done::NoContent)
    }

    /// Sign in by email code, step 2: the address and its code → a session (`amr`
    /// `["email"]`), or `{"mfa_required": true, "mfa_ticket"}` when the account has
    /// TOTP on. 401 `invalid_credentials` for a wrong, used or expired code
    /// (counted on the account's throttle), 429 when this address is throttled.
    #[oai(path = "/v1/sign/in/otp/email/verify", method = "post", operation_id = "sign_in_otp_email_verify")]
    async fn verify(&self, _on: Enabled<EmailCode>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<EmailOtpVerify>) -> Result<Json<SignInAnswer>, ApiError> {
        Ok(Json(app.sign_in_code_verify(Channel::Email, &body.0.email, &body.0.otp, &context(request)).await?.into()))
    }

    /// Sign in by link, step 1: always 204 for a well-formed address (422 for a
    /// `redirect_to` outside `AUTHD_ALLOWED_REDIRECT_URLS`); when it is an account's
    /// verified email, a link to `/v1/verify` (10 minutes, single-use) goes there.
    #[oai(path = "/v1/sign/in/passwordless/email", method = "post", operation_id = "sign_in_passwordless_email")]
    async fn link_start(&self, _on: Enabled<EmailLink>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<LinkStart>) -> Result<Done, ApiError> {
        let body = body.0;
        app.sign_in_code_start(Channel::Link, &body.email, body.redirect_to.as_deref(), &context(request))?;
        Ok(Done::NoContent)
    }

    /// The link in the mail: a small page with one button that submits the ticket
    /// (`POST /v1/verify`). It spends nothing, so a mail scanner that follows the link
    /// signs no one in and burns no link. 422 for a `redirect_to` outside
    /// `AUTHD_ALLOWED_REDIRECT_URLS`.
    #[oai(path = "/v1/verify", method = "get", operation_id = "verify_link")]
    async fn link_follow(
        &self, _on: Enabled<EmailLink>,
        app: Data<&Arc<App>>,
        #[oai(validator(max_length = 1024))] ticket: Query<String>,
        #[oai(validator(max_length = 2048))] redirect_to: Query<String>,
    ) -> Result<Html<String>, ApiError> {
        redirect_target(&app, &redirect_to.0)?;
        Ok(Html(link_page(&ticket.0, &redirect_to.0)))
    }

    /// The link's ticket. From the page's button (form-encoded `ticket`,
    /// `redirect_to`): 303 to `redirect_to` with `#refresh_token=…`, or
    /// `#mfa_ticket=…` when the account has TOTP on. From an API client (JSON
    /// `{"ticket"}`): a session (`amr` `["email"]`) or the MFA ticket. 401 for a
    /// used, expired or unknown ticket; 422 for a `redirect_to` outside
    /// `AUTHD_ALLOWED_REDIRECT_URLS` (nothing spent).
    #[oai(path = "/v1/verify", method = "post", operation_id = "verify_ticket")]
    async fn link_verify(&self, _on: Enabled<EmailLink>, app: Data<&Arc<App>>, request: &Request, body: TicketRequest) -> Result<TicketAnswer, ApiError> {
        match body {
            TicketRequest::Json(body) => Ok(TicketAnswer::Session(Json(app.sign_in_link_verify(&body.0.ticket, &context(request)).await?.into()))),
            TicketRequest::Form(form) => {
                let mut fields = Fields::default();
                if form.ticket.is_empty() || form.ticket.len() > 1024 {
                    fields.bad("ticket", "must be 1 to 1024 characters");
                }
                let target = fields.check("redirect_to", redirect_target(&app, &form.redirect_to).map_err(|_| "is not within AUTHD_ALLOWED_REDIRECT_URLS".to_string()));
                let (Some(mut target), true) = (target, fields.is_empty()) else { return Err(fields.error().into()) };
                let fragment = match app.sign_in_link_verify(&form.ticket, &context(request)).await? {
                    SignInResult::Session(tokens) => format!("refresh_token={}", tokens.refresh_token),
                    SignInResult::MfaRequired { mfa_ticket } => format!("mfa_ticket={mfa_ticket}"),
                };
                target.set_fragment(Some(&fragment));
                Ok(TicketAnswer::SeeOther(target.to_string()))
            }
        }
    }

    /// Anonymous sign-in (only with `AUTHD_ANONYMOUS=true`; else 403
    /// `method_disabled`): a new account with no way to sign in again, and its
    /// session (`amr` `["anon"]`). It reaches no elevated route; `/v1/user/deanonymize`
    /// makes it a real account.
    #[oai(path = "/v1/sign/in/anonymous", method = "post", operation_id = "sign_in_anonymous")]
    async fn anonymous(&self, _on: Enabled<Anonymous>, app: Data<&Arc<App>>, request: &Request) -> Result<Json<SessionBody>, ApiError> {
        Ok(Json(app.anonymous_sign_in(&context(request)).await?.into()))
    }

    /// Sign in with an ID token of a configured OpenID provider → a session (`amr`
    /// `["idtoken"]`) for the account linked to the identity (or the MFA ticket when
    /// it has TOTP on), or a new account when sign-up is open (403 `sign_up_closed`
    /// otherwise). 401 `invalid_credentials` for a bad signature, issuer, audience,
    /// expiry or nonce; 422 for an unknown provider.
    #[oai(path = "/v1/sign/in/idtoken", method = "post", operation_id = "sign_in_idtoken")]
    async fn idtoken(&self, _on: Enabled<IdToken>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<IdTokenBody>) -> Result<Json<SignInAnswer>, ApiError> {
        let body = body.0;
        Ok(Json(app.idtoken_sign_in(&body.provider, &body.id_token, body.nonce.as_deref(), &context(request)).await?.into()))
    }

    /// Link an ID token's identity to the Bearer token's account (elevated); 409
    /// `identity_linked` when another account has it.
    #[oai(path = "/v1/link/idtoken", method = "post", operation_id = "link_idtoken")]
    async fn link_idtoken(&self, _on: Enabled<IdToken>, app: Data<&Arc<App>>, request: &Request, auth: AccessToken, body: JsonBody<IdTokenBody>) -> Result<Done, ApiError> {
        let who = app.check_access_token(&auth.0.token).await?;
        let body = body.0;
        app.idtoken_link(&who, &body.provider, &body.id_token, body.nonce.as_deref(), &context(request)).await?;
        Ok(Done::NoContent)
    }

    /// Sign in by text message, step 1: always 204 for an E.164 number; when it is an
    /// account's verified number, a 6-digit code (10 minutes, single-use) is texted
    /// through the SMS webhook.
    #[oai(path = "/v1/sign/in/passwordless/sms", method = "post", operation_id = "sign_in_sms")]
    async fn sms_start(&self, _on: Enabled<SmsCode>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<SmsStart>) -> Result<Done, ApiError> {
        app.sign_in_code_start(Channel::Sms, &body.0.phone_number, None, &context(request))?;
        Ok(Done::NoContent)
    }

    /// Sign in by text message, step 2: the number and its code → a session (`amr`
    /// `["sms"]`) or the MFA ticket; refusals as for the email code.
    #[oai(path = "/v1/sign/in/passwordless/sms/otp", method = "post", operation_id = "sign_in_sms_otp")]
    async fn sms_verify(&self, _on: Enabled<SmsCode>, app: Data<&Arc<App>>, request: &Request, body: JsonBody<SmsVerify>) -> Result<Json<SignInAnswer>, ApiError> {
        Ok(Json(app.sign_in_code_verify(Channel::Sms, &body.0.phone_number, &body.0.otp, &context(request)).await?.into()))
    }
}

#[derive(Object)]
pub struct LinkStart {
    #[oai(validator(max_length = 254))]
    pub email: String,
    /// Where `/v1/verify` sends the browser (within `AUTHD_ALLOWED_REDIRECT_URLS`).
    #[oai(validator(max_length = 2048))]
    pub redirect_to: Option<String>,
}

#[derive(Object)]
pub struct TicketBody {
    /// The `ticket` of the link in the mail.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub ticket: String,
}

/// The ticket, from an API client (JSON — also without a `Content-Type`, like every
/// JSON body here) or from the link page's button (a form).
pub enum TicketRequest {
    Json(JsonBody<TicketBody>),
    Form(Form<TicketForm>),
}

impl<'a> ApiExtractor<'a> for TicketRequest {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        TicketBody::register(registry);
        TicketForm::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        let json = <JsonBody<TicketBody> as ApiExtractor>::request_meta().map(|meta| meta.content).unwrap_or_default();
        let form = MetaMediaType { content_type: <Form<TicketForm> as Payload>::CONTENT_TYPE, schema: TicketForm::schema_ref() };
        Some(MetaRequest { description: None, content: json.into_iter().chain([form]).collect(), required: true })
    }

    async fn from_request(request: &'a Request, body: &mut RequestBody, _: ExtractParamOptions<()>) -> poem::Result<Self> {
        if request.content_type().is_some_and(<Form<TicketForm> as Payload>::check_content_type) {
            <Form<TicketForm> as ParsePayload>::from_request(request, body).await.map(Self::Form)
        } else {
            <JsonBody<TicketBody> as ParsePayload>::from_request(request, body).await.map(Self::Json)
        }
    }
}

/// What the link page's button submits.
#[derive(Object, serde::Deserialize)]
pub struct TicketForm {
    pub ticket: String,
    /// Within `AUTHD_ALLOWED_REDIRECT_URLS`.
    pub redirect_to: String,
}

#[derive(ApiResponse)]
pub enum TicketAnswer {
    /// A session, or the demand for a second factor (JSON requests).
    #[oai(status = 200)]
    Session(Json<SignInAnswer>),
    /// To `redirect_to`, the refresh token (or the MFA ticket) in the fragment
    /// (`#refresh_token=…`, `#mfa_ticket=…`), never in the query (form requests).
    #[oai(status = 303)]
    SeeOther(#[oai(header = "Location")] String),
}

/// `redirect_to` as a URL, when it is allowed (422 otherwise).
fn redirect_target(app: &App, redirect_to: &str) -> Result<Url, ApiError> {
    app.allowed_redirect(redirect_to)
        .and_then(|()| redirect_to.parse::<Url>().map_err(|e| e.to_string()))
        .map_err(|why| ApiError::from(AppError::Invalid(vec![("redirect_to".into(), why)])))
}

/// The page a sign-in link opens: one button, no script.
fn link_page(ticket: &str, redirect_to: &str) -> String {
    let escape = |text: &str| {
        text.chars().fold(String::new(), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
            out
        })
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign in</title></head><body><main><h1>Sign in</h1><p>Continue to sign in with the link from your mail.</p>\
         <form method=\"post\" action=\"verify\"><input type=\"hidden\" name=\"ticket\" value=\"{}\">\
         <input type=\"hidden\" name=\"redirect_to\" value=\"{}\"><button type=\"submit\">Sign in</button></form>\
         <p>If you did not ask for this link, close this page.</p></main></body></html>\n",
        escape(ticket),
        escape(redirect_to)
    )
}

#[derive(Object)]
pub struct IdTokenBody {
    /// The `name` of a provider in `AUTHD_OIDC_PROVIDERS`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub provider: String,
    /// The provider's ID token (a signed JWT).
    #[oai(validator(min_length = 1, max_length = 8192))]
    pub id_token: String,
    /// When given, the token's `nonce` must be this.
    #[oai(validator(max_length = 256))]
    pub nonce: Option<String>,
}

#[derive(Object)]
pub struct SmsStart {
    /// E.164.
    #[oai(validator(max_length = 16))]
    pub phone_number: String,
}

#[derive(Object)]
pub struct SmsVerify {
    #[oai(validator(max_length = 16))]
    pub phone_number: String,
    /// The 6-digit code from the text message.
    #[oai(validator(min_length = 1, max_length = 16))]
    pub otp: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_link_page_escapes_what_it_repeats() {
        let page = super::link_page("a\"><script>", "https://app.example/?x=1&y='2'");
        assert!(page.contains("value=\"a&quot;&gt;&lt;script&gt;\""), "{page}");
        assert!(page.contains("value=\"https://app.example/?x=1&amp;y=&#39;2&#39;\""), "{page}");
        assert!(!page.contains("<script"));
    }
}
