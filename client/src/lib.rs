//! authd client: the OPAQUE (RFC 9807) client side and typed HTTP calls.
//!
//! The [`Suite`] cipher suite and the base64url codec ([`b64`], [`unb64`]) come
//! from the `protocol` crate, shared with the server. [`Registration`] and
//! [`Login`] wrap the opaque-ke client state machines and exchange base64url
//! messages; [`Api`] wraps the authd HTTP routes. [`private`] holds private
//! sign-in (reference 001): the same login inside an ephemeral key agreement.

pub mod private;

pub use private::PrivateSignIn;
/// The OPAQUE suite and the base64url codec live in the `protocol` crate, shared
/// with the server; they are re-exported so that users of this crate need only it.
pub use protocol::{b64, cheap_ksf, ksf, unb64, DecodeError, Ksf, Suite};

use opaque_ke::errors::ProtocolError;
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::rngs::OsRng;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

/// Errors returned by the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The login failed: wrong password, or an unknown user (dummy KE2).
    #[error("invalid login")]
    InvalidLogin,
    /// Any other OPAQUE protocol failure (malformed message, KSF error, ...).
    #[error("opaque protocol error: {0}")]
    Protocol(String),
    /// Input was not valid unpadded base64url.
    #[error("invalid base64url: {0}")]
    Base64(String),
    /// The server answered with a non-2xx status.
    #[error("http {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// Response body, parsed as JSON if possible, else a JSON string.
        body: Value,
    },
    /// The request could not be sent or the response could not be read.
    #[error("transport error: {0}")]
    Transport(String),
    /// A 2xx response did not have the expected shape.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// A private sign-in message did not check out (bad key, tampering, a server
    /// that could not prove it holds the session keys).
    #[error("private sign-in: {0}")]
    Private(#[from] private::ChannelError),
}

impl From<DecodeError> for Error {
    /// Keeps the decoder's own reason, as [`Error::Base64`] always has.
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Base64(reason) => Error::Base64(reason),
            length @ DecodeError::Length { .. } => Error::Base64(length.to_string()),
        }
    }
}

fn protocol(e: ProtocolError) -> Error {
    Error::Protocol(format!("{e:?}"))
}

/// Client side of OPAQUE registration.
pub struct Registration {
    state: ClientRegistration<Suite>,
}

impl Registration {
    /// Returns the state and the base64url RegistrationRequest (32 bytes).
    pub fn start(password: &[u8]) -> Result<(Registration, String), Error> {
        let res = ClientRegistration::<Suite>::start(&mut OsRng, password).map_err(protocol)?;
        Ok((
            Registration { state: res.state },
            b64(&res.message.serialize()),
        ))
    }

    /// Takes the base64url RegistrationResponse (64 bytes) and returns the
    /// base64url registration record (192 bytes), stretching with [`ksf`].
    pub fn finish(self, password: &[u8], registration_response_b64: &str) -> Result<String, Error> {
        self.finish_with(password, registration_response_b64, &ksf())
    }

    /// [`Registration::finish`] stretching with `ksf` instead of [`ksf`]. The
    /// record then opens only with the same KSF: [`cheap_ksf`] is for benchmark
    /// accounts only.
    pub fn finish_with(
        self,
        password: &[u8],
        registration_response_b64: &str,
        ksf: &Ksf,
    ) -> Result<String, Error> {
        let response =
            RegistrationResponse::<Suite>::deserialize(&unb64(registration_response_b64)?)
                .map_err(protocol)?;
        let params = ClientRegistrationFinishParameters::new(Identifiers::default(), Some(ksf));
        let res = self
            .state
            .finish(&mut OsRng, password, response, params)
            .map_err(protocol)?;
        Ok(b64(&res.message.serialize()))
    }
}

/// Client side of OPAQUE login.
pub struct Login {
    state: ClientLogin<Suite>,
}

impl Login {
    /// Returns the state and the base64url KE1 (96 bytes).
    pub fn start(password: &[u8]) -> Result<(Login, String), Error> {
        let res = ClientLogin::<Suite>::start(&mut OsRng, password).map_err(protocol)?;
        Ok((Login { state: res.state }, b64(&res.message.serialize())))
    }

    /// Takes the base64url KE2 (320 bytes); returns the base64url KE3 (64 bytes)
    /// and the session key bytes. A wrong password (or a dummy KE2 for an
    /// unknown user) gives `Err(Error::InvalidLogin)`.
    pub fn finish(
        self,
        password: &[u8],
        credential_response_b64: &str,
    ) -> Result<(String, Vec<u8>), Error> {
        self.finish_with(password, credential_response_b64, &ksf())
    }

    /// [`Login::finish`] stretching with `ksf` instead of [`ksf`]: the KSF the
    /// account's record was made with (a different one gives
    /// `Err(Error::InvalidLogin)`).
    pub fn finish_with(
        self,
        password: &[u8],
        credential_response_b64: &str,
        ksf: &Ksf,
    ) -> Result<(String, Vec<u8>), Error> {
        let response = CredentialResponse::<Suite>::deserialize(&unb64(credential_response_b64)?)
            .map_err(protocol)?;
        let params = ClientLoginFinishParameters::new(None, Identifiers::default(), Some(ksf));
        let res = self
            .state
            .finish(&mut OsRng, password, response, params)
            .map_err(|e| match e {
                ProtocolError::InvalidLoginError
                | ProtocolError::SerializationError
                | ProtocolError::ReflectedValueError => Error::InvalidLogin,
                e => protocol(e),
            })?;
        Ok((b64(&res.message.serialize()), res.session_key.to_vec()))
    }
}

/// Tokens issued by a successful sign-in or refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub profile_id: String,
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
}

/// Result of finishing a sign-in: either a session, or a second factor is required.
#[derive(Debug, Clone)]
pub enum SignInOutcome {
    /// The user is signed in.
    Session(Session),
    /// MFA is enabled; continue with the ticket.
    MfaRequired { mfa_ticket: String },
}

impl<'de> Deserialize<'de> for SignInOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = Value::deserialize(d)?;
        if v.get("mfa_required").is_some() {
            let mfa_ticket = v
                .get("mfa_ticket")
                .and_then(Value::as_str)
                .ok_or_else(|| D::Error::missing_field("mfa_ticket"))?;
            Ok(SignInOutcome::MfaRequired {
                mfa_ticket: mfa_ticket.to_owned(),
            })
        } else {
            Session::deserialize(v)
                .map(SignInOutcome::Session)
                .map_err(D::Error::custom)
        }
    }
}

/// Result of filling a sign-up token bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillResult {
    pub bucket: String,
    pub added: u64,
    pub available: u64,
    pub tokens: Vec<String>,
}

/// State of a sign-up token bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketStatus {
    pub bucket: String,
    pub available: u64,
    pub redeemed: u64,
}

/// A verified access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    pub profile_id: String,
    pub session_id: String,
    pub expires_at: i64,
}

/// The signed-in user's profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    pub profile_id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    #[serde(default)]
    pub phone_number: Option<String>,
    pub mfa_enabled: bool,
    pub created_at: String,
}

/// One open session of the account (`GET /v1/user/sessions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEntry {
    pub session_id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub amr: Vec<String>,
    pub current: bool,
}

/// Typed HTTP client for the authd API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    /// The KSF of [`Api::sign_up`] and [`Api::sign_in`]: [`ksf`] unless
    /// [`Api::with_ksf`] chose another.
    ksf: Ksf,
}

#[derive(Deserialize)]
struct SignInStarted {
    sign_in_id: String,
    credential_response: String,
}

fn field(v: &Value, name: &str) -> Result<String, Error> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Decode(format!("missing string field `{name}`")))
}

impl Api {
    /// Creates a client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    /// Requests carry `User-Agent: authd-client/<version>` (what a session list shows).
    pub fn new(base_url: &str) -> Api {
        let http = reqwest::Client::builder()
            .user_agent(concat!("authd-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Api::with_client(base_url, http)
    }

    /// Creates a client using a preconfigured `reqwest::Client`.
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Api {
        Api {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            ksf: ksf(),
        }
    }

    /// The same client, stretching passwords with `ksf` in [`Api::sign_up`] and
    /// [`Api::sign_in`] (default: [`ksf`]). For benchmarks ([`cheap_ksf`]): an
    /// account signed up with one KSF signs in only with the same one.
    pub fn with_ksf(self, ksf: Ksf) -> Api {
        Api { ksf, ..self }
    }

    /// The KSF that [`Api::sign_up`] and [`Api::sign_in`] stretch with.
    pub fn ksf(&self) -> &Ksf {
        &self.ksf
    }

    /// Sends a request and returns the status and body without mapping
    /// non-2xx to an error. Body: JSON if parseable, else a string; empty → null.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<T, Error> {
        let (status, value) = self.raw(method, path, bearer, body.as_ref()).await?;
        if !(200..300).contains(&status) {
            return Err(Error::Http {
                status,
                body: value,
            });
        }
        serde_json::from_value(value).map_err(|e| Error::Decode(e.to_string()))
    }

    /// POST /v1/bucket/fill with a count of tokens to generate (admin).
    pub async fn fill_bucket(
        &self,
        admin_token: &str,
        bucket: &str,
        count: u32,
    ) -> Result<FillResult, Error> {
        let body = json!({"bucket": bucket, "count": count});
        self.call(
            Method::POST,
            "/v1/bucket/fill",
            Some(admin_token),
            Some(body),
        )
        .await
    }

    /// POST /v1/bucket/fill with explicit tokens (admin).
    pub async fn fill_bucket_tokens(
        &self,
        admin_token: &str,
        bucket: &str,
        tokens: &[String],
    ) -> Result<FillResult, Error> {
        let body = json!({"bucket": bucket, "tokens": tokens});
        self.call(
            Method::POST,
            "/v1/bucket/fill",
            Some(admin_token),
            Some(body),
        )
        .await
    }

    /// POST /v1/fill: tops up the default bucket to `bucket_size` (admin).
    pub async fn top_up(&self, admin_token: &str, bucket_size: u32) -> Result<FillResult, Error> {
        let body = json!({"bucket_size": bucket_size});
        self.call(Method::POST, "/v1/fill", Some(admin_token), Some(body))
            .await
    }

    /// GET /v1/bucket/{bucket} (admin).
    pub async fn bucket(&self, admin_token: &str, bucket: &str) -> Result<BucketStatus, Error> {
        self.call(
            Method::GET,
            &format!("/v1/bucket/{bucket}"),
            Some(admin_token),
            None,
        )
        .await
    }

    /// POST /v1/sign/up; returns the base64url registration response.
    pub async fn sign_up_start(
        &self,
        username: &str,
        signup_token: Option<&str>,
        registration_request: &str,
    ) -> Result<String, Error> {
        let mut body = json!({"username": username, "registration_request": registration_request});
        if let Some(t) = signup_token {
            body["signup_token"] = t.into();
        }
        let v: Value = self
            .call(Method::POST, "/v1/sign/up", None, Some(body))
            .await?;
        field(&v, "registration_response")
    }

    /// POST /v1/sign/up/finish; returns the new profile id.
    pub async fn sign_up_finish(
        &self,
        username: &str,
        signup_token: Option<&str>,
        registration_record: &str,
        email: Option<&str>,
    ) -> Result<String, Error> {
        let mut body = json!({"username": username, "registration_record": registration_record});
        if let Some(t) = signup_token {
            body["signup_token"] = t.into();
        }
        if let Some(e) = email {
            body["email"] = e.into();
        }
        let v: Value = self
            .call(Method::POST, "/v1/sign/up/finish", None, Some(body))
            .await?;
        field(&v, "profile_id")
    }

    /// POST /v1/sign/in; returns `(sign_in_id, credential_response)`.
    pub async fn sign_in_start(
        &self,
        username: &str,
        credential_request: &str,
    ) -> Result<(String, String), Error> {
        let body = json!({"username": username, "credential_request": credential_request});
        let r: SignInStarted = self
            .call(Method::POST, "/v1/sign/in", None, Some(body))
            .await?;
        Ok((r.sign_in_id, r.credential_response))
    }

    /// POST /v1/sign/in/finish with the base64url KE3.
    pub async fn sign_in_finish(
        &self,
        sign_in_id: &str,
        credential_finalization: &str,
    ) -> Result<SignInOutcome, Error> {
        let body =
            json!({"sign_in_id": sign_in_id, "credential_finalization": credential_finalization});
        self.call(Method::POST, "/v1/sign/in/finish", None, Some(body))
            .await
    }

    /// POST /v1/sign/in/verify; returns the profile id the JWT belongs to.
    pub async fn sign_in_verify(&self, jwt: &str) -> Result<String, Error> {
        let v: Value = self
            .call(
                Method::POST,
                "/v1/sign/in/verify",
                None,
                Some(json!({"jwt": jwt})),
            )
            .await?;
        field(&v, "profile_id")
    }

    /// GET /v1/jwt/verify with the access token as bearer.
    pub async fn jwt_verify(&self, access_token: &str) -> Result<Verified, Error> {
        self.call(Method::GET, "/v1/jwt/verify", Some(access_token), None)
            .await
    }

    /// POST /v1/token/refresh; returns a fresh session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, Error> {
        let body = json!({"refresh_token": refresh_token});
        self.call(Method::POST, "/v1/token/refresh", None, Some(body))
            .await
    }

    /// POST /v1/sign/out; returns the number of revoked sessions.
    pub async fn sign_out(&self, access_token: &str, all: bool) -> Result<u64, Error> {
        let v: Value = self
            .call(
                Method::POST,
                "/v1/sign/out",
                Some(access_token),
                Some(json!({"all": all})),
            )
            .await?;
        v.get("revoked")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Decode("missing integer field `revoked`".into()))
    }

    /// GET /v1/user with the access token as bearer.
    pub async fn user(&self, access_token: &str) -> Result<UserInfo, Error> {
        self.call(Method::GET, "/v1/user", Some(access_token), None)
            .await
    }

    /// POST /v1/sign/in/mfa: the ticket from a sign-in with MFA on and a TOTP code.
    pub async fn sign_in_mfa(&self, mfa_ticket: &str, code: &str) -> Result<Session, Error> {
        let body = json!({ "mfa_ticket": mfa_ticket, "code": code });
        self.call(Method::POST, "/v1/sign/in/mfa", None, Some(body)).await
    }

    /// GET /healthz (liveness).
    pub async fn healthz(&self) -> Result<(), Error> {
        self.call::<Value>(Method::GET, "/healthz", None, None)
            .await
            .map(drop)
    }

    /// GET /.well-known/jwks.json.
    pub async fn jwks(&self) -> Result<Value, Error> {
        self.call(Method::GET, "/.well-known/jwks.json", None, None)
            .await
    }

    /// POST /v1/sign/in/otp/email: asks for a sign-in code by mail (always succeeds
    /// for a well-formed address).
    pub async fn sign_in_email_code_start(&self, email: &str) -> Result<(), Error> {
        self.call::<Value>(Method::POST, "/v1/sign/in/otp/email", None, Some(json!({ "email": email }))).await.map(drop)
    }

    /// POST /v1/sign/in/otp/email/verify: a session for the mailed code, or the MFA
    /// ticket when the account has TOTP on.
    pub async fn sign_in_email_code(&self, email: &str, otp: &str) -> Result<SignInOutcome, Error> {
        let body = json!({ "email": email, "otp": otp });
        self.call(Method::POST, "/v1/sign/in/otp/email/verify", None, Some(body)).await
    }

    /// POST /v1/sign/in/pat: a session for a personal access token.
    pub async fn sign_in_pat(&self, personal_access_token: &str) -> Result<Session, Error> {
        let body = json!({ "personal_access_token": personal_access_token });
        self.call(Method::POST, "/v1/sign/in/pat", None, Some(body)).await
    }

    /// GET /v1/user/sessions: the account's open sessions, newest first.
    pub async fn sessions(&self, access_token: &str) -> Result<Vec<SessionEntry>, Error> {
        #[derive(Deserialize)]
        struct Sessions {
            sessions: Vec<SessionEntry>,
        }
        let list: Sessions = self.call(Method::GET, "/v1/user/sessions", Some(access_token), None).await?;
        Ok(list.sessions)
    }

    /// DELETE /v1/user/sessions/{session_id}: ends one session of the account.
    pub async fn end_session(&self, access_token: &str, session_id: &str) -> Result<(), Error> {
        let path = format!("/v1/user/sessions/{session_id}");
        self.call::<Value>(Method::DELETE, &path, Some(access_token), None).await.map(drop)
    }

    /// Password change (POST /v1/user/password + /finish) on a recently proved
    /// session: every other session of the account ends.
    pub async fn change_password(&self, access_token: &str, new_password: &[u8]) -> Result<(), Error> {
        let (reg, request) = Registration::start(new_password)?;
        let body = json!({ "registration_request": request });
        let started: Value = self.call(Method::POST, "/v1/user/password", Some(access_token), Some(body)).await?;
        let record = reg.finish_with(new_password, &field(&started, "registration_response")?, &self.ksf)?;
        let body = json!({ "registration_record": record });
        self.call::<Value>(Method::POST, "/v1/user/password/finish", Some(access_token), Some(body)).await.map(drop)
    }

    /// Full OPAQUE registration; returns the new profile id.
    pub async fn sign_up(
        &self,
        username: &str,
        password: &[u8],
        signup_token: Option<&str>,
        email: Option<&str>,
    ) -> Result<String, Error> {
        let (reg, request) = Registration::start(password)?;
        let response = self.sign_up_start(username, signup_token, &request).await?;
        let record = reg.finish_with(password, &response, &self.ksf)?;
        self.sign_up_finish(username, signup_token, &record, email)
            .await
    }

    /// Full OPAQUE login. A wrong password (detected locally) returns
    /// `Err(Error::InvalidLogin)` without calling the finish route.
    pub async fn sign_in(&self, username: &str, password: &[u8]) -> Result<SignInOutcome, Error> {
        let (login, ke1) = Login::start(password)?;
        let (sign_in_id, ke2) = self.sign_in_start(username, &ke1).await?;
        let (ke3, _session_key) = login.finish_with(password, &ke2, &self.ksf)?;
        self.sign_in_finish(&sign_in_id, &ke3).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opaque_ke::{
        CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
        ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
    };

    fn register(setup: &ServerSetup<Suite>, id: &[u8], pw: &[u8]) -> ServerRegistration<Suite> {
        let (reg, req) = Registration::start(pw).unwrap();
        let req = unb64(&req).unwrap();
        assert_eq!(req.len(), 32);
        let req = RegistrationRequest::<Suite>::deserialize(&req).unwrap();
        let resp = ServerRegistration::<Suite>::start(setup, req, id)
            .unwrap()
            .message
            .serialize();
        assert_eq!(resp.len(), 64);
        let record = unb64(&reg.finish(pw, &b64(&resp)).unwrap()).unwrap();
        assert_eq!(record.len(), 192);
        ServerRegistration::finish(RegistrationUpload::<Suite>::deserialize(&record).unwrap())
    }

    fn server_ke2(
        setup: &ServerSetup<Suite>,
        file: Option<ServerRegistration<Suite>>,
        id: &[u8],
        ke1: &str,
    ) -> (ServerLogin<Suite>, String) {
        let ke1 = unb64(ke1).unwrap();
        assert_eq!(ke1.len(), 96);
        let req = CredentialRequest::<Suite>::deserialize(&ke1).unwrap();
        let params = ServerLoginParameters::default();
        let res = ServerLogin::start(&mut OsRng, setup, file, req, id, params).unwrap();
        let ke2 = res.message.serialize();
        assert_eq!(ke2.len(), 320);
        (res.state, b64(&ke2))
    }

    #[test]
    fn opaque_round_trip() {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        let file = register(&setup, b"alice", b"correct horse");

        let (login, ke1) = Login::start(b"correct horse").unwrap();
        let (server, ke2) = server_ke2(&setup, Some(file.clone()), b"alice", &ke1);
        let (ke3, client_key) = login.finish(b"correct horse", &ke2).unwrap();
        let ke3 = unb64(&ke3).unwrap();
        assert_eq!(ke3.len(), 64);
        let fin = CredentialFinalization::<Suite>::deserialize(&ke3).unwrap();
        let done = server
            .finish(fin, ServerLoginParameters::default())
            .unwrap();
        assert_eq!(client_key, done.session_key.to_vec());

        let (login, ke1) = Login::start(b"wrong").unwrap();
        let (_, ke2) = server_ke2(&setup, Some(file), b"alice", &ke1);
        assert_eq!(
            login.finish(b"wrong", &ke2).unwrap_err(),
            Error::InvalidLogin
        );

        let (login, ke1) = Login::start(b"whatever").unwrap();
        let (_, ke2) = server_ke2(&setup, None, b"nobody", &ke1);
        assert_eq!(
            login.finish(b"whatever", &ke2).unwrap_err(),
            Error::InvalidLogin
        );
    }

    #[test]
    fn a_record_opens_only_with_the_ksf_it_was_made_with() {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        let (reg, req) = Registration::start(b"pw").unwrap();
        let req = RegistrationRequest::<Suite>::deserialize(&unb64(&req).unwrap()).unwrap();
        let resp = ServerRegistration::<Suite>::start(&setup, req, b"bob")
            .unwrap()
            .message;
        let record = reg
            .finish_with(b"pw", &b64(&resp.serialize()), &cheap_ksf())
            .unwrap();
        let record = RegistrationUpload::<Suite>::deserialize(&unb64(&record).unwrap()).unwrap();
        let file = ServerRegistration::finish(record);

        let (login, ke1) = Login::start(b"pw").unwrap();
        let (server, ke2) = server_ke2(&setup, Some(file.clone()), b"bob", &ke1);
        let (ke3, key) = login.finish_with(b"pw", &ke2, &cheap_ksf()).unwrap();
        let fin = CredentialFinalization::<Suite>::deserialize(&unb64(&ke3).unwrap()).unwrap();
        let done = server
            .finish(fin, ServerLoginParameters::default())
            .unwrap();
        assert_eq!(key, done.session_key.to_vec());

        let (login, ke1) = Login::start(b"pw").unwrap();
        let (_, ke2) = server_ke2(&setup, Some(file), b"bob", &ke1);
        assert_eq!(login.finish(b"pw", &ke2).unwrap_err(), Error::InvalidLogin);
    }

    #[test]
    fn bad_base64url_is_a_base64_error() {
        let bad: Result<Vec<u8>, Error> = unb64("-_8=").map_err(Error::from);
        assert!(matches!(bad, Err(Error::Base64(_))));
        assert!(matches!(
            Registration::start(b"pw").unwrap().0.finish(b"pw", "ab+/"),
            Err(Error::Base64(_))
        ));
    }

    #[test]
    fn sign_in_outcome_decoding() {
        let mfa: SignInOutcome =
            serde_json::from_value(json!({"mfa_required": true, "mfa_ticket": "t"})).unwrap();
        assert!(matches!(mfa, SignInOutcome::MfaRequired { mfa_ticket } if mfa_ticket == "t"));
        let s: SignInOutcome = serde_json::from_value(json!({
            "profile_id": "p", "access_token": "a", "token_type": "Bearer",
            "expires_in": 900, "refresh_token": "r", "refresh_expires_in": 86400
        }))
        .unwrap();
        assert!(matches!(s, SignInOutcome::Session(s) if s.access_token == "a"));
    }
}
