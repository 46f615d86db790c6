//! Private sign-in, reference 001: `POST /v1/step/one|two|three`. The field names
//! are the reference's; what each carries is documented on each field and in the
//! README. The key schedule is in `protocol::private`.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{Object, OpenApi};

use super::methods::{Enabled, Password};
use super::sign_in::SignInAnswer;
use super::{context, ApiError, JsonBody, Tag};
use crate::app::App;

/// Step one: the client's half of the key agreement.
#[derive(Object)]
pub struct PrivateStepOne {
    /// The client's ephemeral X25519 public key (32 bytes, base64url). Fresh for
    /// every sign-in; a low-order key is refused (422).
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub pke_key: String,
}

/// Step one's answer: the server's half of the key agreement.
#[derive(Object)]
pub struct PrivateStepOneAnswer {
    /// The server's ephemeral X25519 public key (32 bytes, base64url). Both ends
    /// now derive `agreement = HKDF-SHA256(salt = client pke_key ‖ server pke_key,
    /// ikm = X25519 shared secret, info = "authd/private-sign-in/v1 agreement")`.
    pub pke_key: String,
    /// The agreement, sealed by the server (which keeps no state between steps):
    /// send it back unchanged as `pke_key` of step two, within `AUTHD_SIGN_IN_TTL`
    /// seconds (default 120). Opaque to the client.
    pub handle: String,
}

/// Step two: OPAQUE KE1 and the username, encrypted under the agreement.
#[derive(Object)]
pub struct PrivateStepTwo {
    /// The `handle` of step one's answer, unchanged (the sealed key agreement).
    /// Tampered or expired → 401 `invalid_credentials`.
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{192}$"))]
    pub pke_key: String,
    /// OPAQUE KE1 (CredentialRequest, 96 bytes, base64url) — the
    /// `credential_request` of `/v1/sign/in`.
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{128}$"))]
    pub pake_key: String,
    /// The username, never sent in clear: base64url of `nonce (24) ‖
    /// XChaCha20-Poly1305(key = HKDF-SHA256(ikm = agreement, info =
    /// "authd/private-sign-in/v1 encrypted_id"), plaintext = UTF-8 username ‖ 0x80 ‖
    /// 0x00… padded to a multiple of 64 bytes, aad = KE1)`. One that does not
    /// decrypt → 401 `invalid_credentials`.
    #[oai(validator(min_length = 55, max_length = 1504, pattern = "^[A-Za-z0-9_-]+$"))]
    pub encrypted_id: String,
}

/// Step two's answer: OPAQUE KE2 and the sign-in handle.
#[derive(Object)]
pub struct PrivateStepTwoAnswer {
    /// OPAQUE KE2 (CredentialResponse, 320 bytes, base64url) — the
    /// `credential_response` of `/v1/sign/in`. Unknown usernames get one of the
    /// same shape.
    pub pake_key: String,
    /// Not a salt (authd's OPAQUE needs none from the server): the sign-in handle —
    /// the `sign_in_id` of `/v1/sign/in` sealed together with the agreement. Send
    /// it back unchanged as `pake_key` of step three. Single-use, expires.
    pub salt: String,
}

/// Step three: OPAQUE KE3.
#[derive(Object)]
pub struct PrivateStepThree {
    /// The `salt` of step two's answer, unchanged (the sign-in handle). Tampered,
    /// unknown, expired or already used → 401 `invalid_credentials`.
    #[oai(validator(min_length = 1, max_length = 2048, pattern = "^[A-Za-z0-9_-]+$"))]
    pub pake_key: String,
    /// OPAQUE KE3 (CredentialFinalization, 64 bytes, base64url) — the
    /// `credential_finalization` of `/v1/sign/in/finish`.
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{86}$"))]
    pub pake_proof: String,
}

/// Step three's answer: the session, encrypted for the client alone.
#[derive(Object)]
pub struct PrivateStepThreeAnswer {
    /// The JSON `/v1/sign/in/finish` answers (the session: `profile_id`,
    /// `access_token`, `token_type`, `expires_in`, `refresh_token`,
    /// `refresh_expires_in`; or `{"mfa_required": true, "mfa_ticket"}` when the
    /// account has MFA on — then continue at `/v1/sign/in/mfa`), encrypted: base64url of `nonce (24) ‖
    /// XChaCha20-Poly1305(key = HKDF-SHA256(ikm = agreement ‖ OPAQUE session key,
    /// info = "authd/private-sign-in/v1 encrypted_token"), aad = client pke_key ‖
    /// server pke_key)`.
    pub encrypted_token: String,
    /// The server's key confirmation: base64url of HMAC-SHA256(key =
    /// HKDF-SHA256(ikm = agreement ‖ OPAQUE session key, info =
    /// "authd/private-sign-in/v1 pake_proof"), message = "authd/private-sign-in/v1
    /// server proof" ‖ client pke_key ‖ server pke_key ‖ encrypted_token bytes).
    /// Check it before decrypting.
    pub pake_proof: String,
}

#[derive(Default)]
pub struct PrivateSignInApi;

#[OpenApi(tag = "Tag::PrivateSignIn")]
impl PrivateSignInApi {
    /// Private sign-in, step 1: ephemeral X25519 key agreement. Send your
    /// ephemeral public key; get the server's and a handle for step two.
    #[oai(path = "/v1/step/one", method = "post", operation_id = "private_step_one")]
    async fn step_one(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        body: JsonBody<PrivateStepOne>,
    ) -> Result<Json<PrivateStepOneAnswer>, ApiError> {
        let agreed = app.private_step_one(&body.0.pke_key)?;
        Ok(Json(PrivateStepOneAnswer { pke_key: agreed.pke_key, handle: agreed.handle }))
    }

    /// Private sign-in, step 2: send KE1 and the encrypted username; get KE2 and a
    /// sign-in handle. This is `/v1/sign/in` with the username decrypted first.
    #[oai(path = "/v1/step/two", method = "post", operation_id = "private_step_two")]
    async fn step_two(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<PrivateStepTwo>,
    ) -> Result<Json<PrivateStepTwoAnswer>, ApiError> {
        let body = body.0;
        let started =
            app.private_step_two(&body.pke_key, &body.pake_key, &body.encrypted_id, &context(request)).await?;
        Ok(Json(PrivateStepTwoAnswer { pake_key: started.pake_key, salt: started.salt }))
    }

    /// Private sign-in, step 3: send KE3; get what `/v1/sign/in/finish` answers,
    /// encrypted under a key bound to the agreement and the OPAQUE session key,
    /// and the server's proof. Same rules as `/v1/sign/in/finish`: 401
    /// `invalid_credentials` for a wrong password and for an unknown, expired or
    /// already finished sign-in.
    #[oai(path = "/v1/step/three", method = "post", operation_id = "private_step_three")]
    async fn step_three(
        &self, _on: Enabled<Password>,
        app: Data<&Arc<App>>,
        request: &Request,
        body: JsonBody<PrivateStepThree>,
    ) -> Result<Json<PrivateStepThreeAnswer>, ApiError> {
        let (finished, keys) = app.private_step_three(&body.0.pake_key, &body.0.pake_proof, &context(request)).await?;
        // Exactly the body `/v1/sign/in/finish` would answer.
        let answer = SignInAnswer::from(finished).to_json_string();
        let (encrypted_token, pake_proof) = keys.seal(answer.as_bytes());
        Ok(Json(PrivateStepThreeAnswer {
            encrypted_token: URL_SAFE_NO_PAD.encode(encrypted_token),
            pake_proof: URL_SAFE_NO_PAD.encode(pake_proof),
        }))
    }
}
