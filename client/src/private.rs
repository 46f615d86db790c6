//! Private sign-in (`POST /v1/step/one|two|three`, reference 001): an OPAQUE login
//! run inside an ephemeral X25519 key agreement, so that the username travels only
//! encrypted and the session comes back encrypted under a key bound to both the
//! agreement and the OPAQUE session key.
//!
//! This module holds the HTTP side: the step bodies, the client's state machine
//! [`PrivateSignIn`] and the [`Api`] calls. The key schedule ([`Agreement`],
//! [`TokenKeys`], ...) is `protocol::private`, shared with the server so that it
//! exists once; it is re-exported here so `client::private::Agreement` and the
//! rest keep resolving.

use reqwest::Method;
use serde::{Deserialize, Serialize};

pub use protocol::private::{
    Agreement, ChannelError, Initiator, TokenKeys, AGREEMENT_LEN, ID_BLOCK, PUBLIC_KEY_LEN,
};

use crate::{b64, unb64, Api, Error, Login, SignInOutcome};

// ---- wire bodies --------------------------------------------------------------

/// `POST /v1/step/one`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepOne {
    /// The client's ephemeral X25519 public key.
    pub pke_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepOneAnswer {
    /// The server's ephemeral X25519 public key.
    pub pke_key: String,
    /// The sealed key agreement; goes back as `pke_key` of step two.
    pub handle: String,
}

/// `POST /v1/step/two`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTwo {
    /// `handle` of step one's answer.
    pub pke_key: String,
    /// OPAQUE KE1.
    pub pake_key: String,
    /// The username, encrypted under the agreement.
    pub encrypted_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTwoAnswer {
    /// OPAQUE KE2.
    pub pake_key: String,
    /// The sign-in handle; goes back as `pake_key` of step three.
    pub salt: String,
}

/// `POST /v1/step/three`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepThree {
    /// `salt` of step two's answer.
    pub pake_key: String,
    /// OPAQUE KE3.
    pub pake_proof: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepThreeAnswer {
    /// What `/v1/sign/in/finish` would answer, encrypted.
    pub encrypted_token: String,
    /// The server's key confirmation.
    pub pake_proof: String,
}

// ---- client state machine -------------------------------------------------------

/// Client side of a private sign-in. Each step consumes the previous state:
/// [`PrivateSignIn::start`] → [`PrivateSignIn::step_two`] →
/// [`KeyExchange::step_three`] → [`Finalization::finish`].
pub struct PrivateSignIn {
    initiator: Initiator,
}

impl PrivateSignIn {
    /// A fresh ephemeral key pair and the body of step one.
    pub fn start() -> (PrivateSignIn, StepOne) {
        let initiator = Initiator::generate();
        let body = StepOne {
            pke_key: b64(&initiator.public()),
        };
        (PrivateSignIn { initiator }, body)
    }

    /// Agrees the key with the server's answer to step one and builds step two:
    /// KE1 in clear (it says nothing about the user), the username encrypted.
    pub fn step_two(
        self,
        answer: &StepOneAnswer,
        username: &str,
        password: &[u8],
    ) -> Result<(KeyExchange, StepTwo), Error> {
        let agreement = self.initiator.agree(&unb64(&answer.pke_key)?)?;
        let (login, ke1) = Login::start(password)?;
        let encrypted_id = b64(&agreement.encrypt_id(username, &unb64(&ke1)?));
        let body = StepTwo {
            pke_key: answer.handle.clone(),
            pake_key: ke1,
            encrypted_id,
        };
        Ok((KeyExchange { agreement, login }, body))
    }
}

/// Waiting for KE2 (step two's answer).
pub struct KeyExchange {
    agreement: Agreement,
    login: Login,
}

impl KeyExchange {
    /// Finishes OPAQUE on the client; a wrong password (or an unknown user) is
    /// [`Error::InvalidLogin`] here, before anything else is sent.
    pub fn step_three(
        self,
        answer: &StepTwoAnswer,
        password: &[u8],
    ) -> Result<(Finalization, StepThree), Error> {
        self.step_three_with(answer, password, &crate::ksf())
    }

    /// [`KeyExchange::step_three`] stretching with `ksf` (see [`Login::finish_with`]).
    pub fn step_three_with(
        self,
        answer: &StepTwoAnswer,
        password: &[u8],
        ksf: &crate::Ksf,
    ) -> Result<(Finalization, StepThree), Error> {
        let (ke3, session_key) = self.login.finish_with(password, &answer.pake_key, ksf)?;
        let keys = self.agreement.token_keys(&session_key);
        let body = StepThree {
            pake_key: answer.salt.clone(),
            pake_proof: ke3,
        };
        Ok((Finalization { keys }, body))
    }
}

/// Waiting for the encrypted session (step three's answer).
pub struct Finalization {
    keys: TokenKeys,
}

impl Finalization {
    /// Checks the server's proof, decrypts, and reads what `/v1/sign/in/finish`
    /// would have answered.
    pub fn finish(self, answer: &StepThreeAnswer) -> Result<SignInOutcome, Error> {
        let plaintext = self.keys.open(
            &unb64(&answer.encrypted_token)?,
            &unb64(&answer.pake_proof)?,
        )?;
        serde_json::from_slice(&plaintext)
            .map_err(|e| Error::Decode(format!("encrypted_token: {e}")))
    }
}

impl Api {
    async fn step<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let body = serde_json::to_value(body).map_err(|e| Error::Decode(e.to_string()))?;
        self.call(Method::POST, path, None, Some(body)).await
    }

    /// POST /v1/step/one.
    pub async fn step_one(&self, body: &StepOne) -> Result<StepOneAnswer, Error> {
        self.step("/v1/step/one", body).await
    }

    /// POST /v1/step/two.
    pub async fn step_two(&self, body: &StepTwo) -> Result<StepTwoAnswer, Error> {
        self.step("/v1/step/two", body).await
    }

    /// POST /v1/step/three.
    pub async fn step_three(&self, body: &StepThree) -> Result<StepThreeAnswer, Error> {
        self.step("/v1/step/three", body).await
    }

    /// A complete private sign-in: the three steps, then the decrypted answer. A
    /// wrong password (detected locally) returns `Err(Error::InvalidLogin)` without
    /// calling step three.
    pub async fn sign_in_private(
        &self,
        username: &str,
        password: &[u8],
    ) -> Result<SignInOutcome, Error> {
        let (sign_in, one) = PrivateSignIn::start();
        let answer = self.step_one(&one).await?;
        let (exchange, two) = sign_in.step_two(&answer, username, password)?;
        let answer = self.step_two(&two).await?;
        let (finalization, three) = exchange.step_three_with(&answer, password, &self.ksf)?;
        let answer = self.step_three(&three).await?;
        finalization.finish(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn the_client_state_machine_runs_against_a_server_side_made_of_protocol() {
        use opaque_ke::{
            CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
            ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
        };
        let setup = ServerSetup::<crate::Suite>::new(&mut OsRng);
        let (registration, request) = crate::Registration::start(b"pw").unwrap();
        let request = RegistrationRequest::deserialize(&unb64(&request).unwrap()).unwrap();
        let response = ServerRegistration::<crate::Suite>::start(&setup, request, b"carol")
            .unwrap()
            .message;
        let record = registration
            .finish(b"pw", &b64(&response.serialize()))
            .unwrap();
        let file = ServerRegistration::finish(
            RegistrationUpload::deserialize(&unb64(&record).unwrap()).unwrap(),
        );

        let (sign_in, one) = PrivateSignIn::start();
        let server = Agreement::respond(&unb64(&one.pke_key).unwrap()).unwrap();
        let answer = StepOneAnswer {
            pke_key: b64(&server.server_public()),
            handle: "sealed".into(),
        };
        let (exchange, two) = sign_in.step_two(&answer, "carol", b"pw").unwrap();
        assert_eq!(two.pke_key, "sealed");
        let ke1 = unb64(&two.pake_key).unwrap();
        assert_eq!(
            server
                .decrypt_id(&unb64(&two.encrypted_id).unwrap(), &ke1)
                .unwrap(),
            "carol"
        );

        let request = CredentialRequest::deserialize(&ke1).unwrap();
        let start = ServerLogin::start(
            &mut OsRng,
            &setup,
            Some(file),
            request,
            b"carol",
            ServerLoginParameters::default(),
        )
        .unwrap();
        let answer = StepTwoAnswer {
            pake_key: b64(&start.message.serialize()),
            salt: "handle".into(),
        };
        let (finalization, three) = exchange.step_three(&answer, b"pw").unwrap();
        assert_eq!(three.pake_key, "handle");
        let ke3 = CredentialFinalization::deserialize(&unb64(&three.pake_proof).unwrap()).unwrap();
        let done = start
            .state
            .finish(ke3, ServerLoginParameters::default())
            .unwrap();

        let session = serde_json::json!({
            "profile_id": "p", "access_token": "a", "token_type": "Bearer",
            "expires_in": 900, "refresh_token": "r", "refresh_expires_in": 60
        });
        let (encrypted, proof) = server
            .token_keys(&done.session_key)
            .seal(session.to_string().as_bytes());
        let answer = StepThreeAnswer {
            encrypted_token: b64(&encrypted),
            pake_proof: b64(&proof),
        };
        let outcome = finalization.finish(&answer).unwrap();
        assert!(
            matches!(outcome, SignInOutcome::Session(s) if s.access_token == "a" && s.profile_id == "p")
        );
    }
}
