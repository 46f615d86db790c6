//! Private sign-in (`POST /v1/step/one|two|three`, reference 001): an OPAQUE login
//! run inside an ephemeral X25519 key agreement, so that the username travels only
//! encrypted and the session comes back encrypted under a key bound to both the
//! agreement and the OPAQUE session key.
//!
//! Both ends use this module: the client runs [`PrivateSignIn`]; the server builds
//! its side from [`Agreement::respond`], [`Agreement::decrypt_id`] and
//! [`TokenKeys::seal`], so the key schedule exists once.
//!
//! ```text
//! C, S          client / server ephemeral X25519 public keys (32 bytes each)
//! dh            X25519(own ephemeral secret, peer public key); refused when all zero
//! agreement     HKDF-SHA256(salt = C ‖ S, ikm = dh, info = "authd/private-sign-in/v1 agreement")
//! id_key        HKDF-SHA256(ikm = agreement, info = "authd/private-sign-in/v1 encrypted_id")
//! token_key     HKDF-SHA256(ikm = agreement ‖ K, info = "authd/private-sign-in/v1 encrypted_token")
//! proof_key     HKDF-SHA256(ikm = agreement ‖ K, info = "authd/private-sign-in/v1 pake_proof")
//!               (K = the OPAQUE session key, 64 bytes, known to both ends after KE3)
//! encrypted_id     nonce(24) ‖ XChaCha20-Poly1305(id_key, pad64(username), aad = KE1)
//! encrypted_token  nonce(24) ‖ XChaCha20-Poly1305(token_key, answer JSON, aad = C ‖ S)
//! pake_proof       HMAC-SHA256(proof_key, "authd/private-sign-in/v1 server proof" ‖ C ‖ S ‖ encrypted_token)
//! pad64(x)      x ‖ 0x80 ‖ 0x00…, to the next multiple of 64 bytes (hides the name's length)
//! ```

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroize;

use crate::{b64, unb64, Api, Error, Login, SignInOutcome};

const AGREEMENT_INFO: &[u8] = b"authd/private-sign-in/v1 agreement";
const ID_INFO: &[u8] = b"authd/private-sign-in/v1 encrypted_id";
const TOKEN_INFO: &[u8] = b"authd/private-sign-in/v1 encrypted_token";
const PROOF_INFO: &[u8] = b"authd/private-sign-in/v1 pake_proof";
const SERVER_PROOF: &[u8] = b"authd/private-sign-in/v1 server proof";
/// The username is padded to a multiple of this many bytes before encryption.
pub const ID_BLOCK: usize = 64;
const NONCE: usize = 24;
/// An X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of [`Agreement::to_bytes`].
pub const AGREEMENT_LEN: usize = 96;

/// Why a private sign-in message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("not an X25519 public key (32 bytes, base64url)")]
    BadPublicKey,
    /// A low-order public key: the agreed secret would be known to anyone.
    #[error("the key agreement is not contributory")]
    WeakKey,
    /// Wrong key, tampered ciphertext, or bad padding.
    #[error("cannot decrypt: wrong key or tampered message")]
    Decrypt,
    /// The server could not prove it holds the agreed and OPAQUE session keys.
    #[error("the server's proof does not match")]
    BadProof,
}

fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

fn public_key(bytes: &[u8]) -> Result<PublicKey, ChannelError> {
    let bytes: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| ChannelError::BadPublicKey)?;
    Ok(PublicKey::from(bytes))
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    OsRng.fill_bytes(&mut nonce);
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of a short message cannot fail");
    [nonce.as_slice(), &sealed].concat()
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ChannelError> {
    if sealed.len() < NONCE {
        return Err(ChannelError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| ChannelError::Decrypt)
}

/// ISO/IEC 7816-4 padding to a multiple of [`ID_BLOCK`].
fn pad(text: &[u8]) -> Vec<u8> {
    let mut padded = text.to_vec();
    padded.push(0x80);
    padded.resize(padded.len().div_ceil(ID_BLOCK) * ID_BLOCK, 0);
    padded
}

fn unpad(mut padded: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
    let end = padded
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(ChannelError::Decrypt)?;
    if padded[end] != 0x80 {
        return Err(ChannelError::Decrypt);
    }
    padded.truncate(end);
    Ok(padded)
}

/// The key both ends agreed in step one, with the two public keys it binds.
#[derive(Clone)]
pub struct Agreement {
    key: [u8; 32],
    client: [u8; PUBLIC_KEY_LEN],
    server: [u8; PUBLIC_KEY_LEN],
}

impl Drop for Agreement {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agreement")
            .field("client", &b64(&self.client))
            .field("server", &b64(&self.server))
            .finish()
    }
}

impl Agreement {
    fn derive(
        secret: EphemeralSecret,
        peer: &PublicKey,
        client: [u8; 32],
        server: [u8; 32],
    ) -> Result<Self, ChannelError> {
        let shared = secret.diffie_hellman(peer);
        if !shared.was_contributory() {
            return Err(ChannelError::WeakKey);
        }
        let salt = [client, server].concat();
        Ok(Self {
            key: hkdf(Some(&salt), shared.as_bytes(), AGREEMENT_INFO),
            client,
            server,
        })
    }

    /// Server side of step one: answers the client's public key with a fresh
    /// ephemeral key pair, whose secret is dropped once the key is agreed.
    pub fn respond(client_public: &[u8]) -> Result<Self, ChannelError> {
        let client = public_key(client_public)?;
        let secret = EphemeralSecret::random_from_rng(OsRng);
        let server = PublicKey::from(&secret);
        Self::derive(secret, &client, client.to_bytes(), server.to_bytes())
    }

    /// The client's ephemeral public key (`pke_key` of step one's request).
    pub fn client_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.client
    }

    /// The server's ephemeral public key (`pke_key` of step one's answer).
    pub fn server_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.server
    }

    /// `key ‖ C ‖ S`, for the server to seal into the handles it gives out.
    pub fn to_bytes(&self) -> [u8; AGREEMENT_LEN] {
        let mut bytes = [0u8; AGREEMENT_LEN];
        bytes[..32].copy_from_slice(&self.key);
        bytes[32..64].copy_from_slice(&self.client);
        bytes[64..].copy_from_slice(&self.server);
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != AGREEMENT_LEN {
            return None;
        }
        let part = |range: std::ops::Range<usize>| bytes[range].try_into().ok();
        Some(Self {
            key: part(0..32)?,
            client: part(32..64)?,
            server: part(64..96)?,
        })
    }

    fn id_key(&self) -> [u8; 32] {
        hkdf(None, &self.key, ID_INFO)
    }

    /// `encrypted_id` of step two: the username, padded, bound to this KE1.
    pub fn encrypt_id(&self, username: &str, ke1: &[u8]) -> Vec<u8> {
        let mut key = self.id_key();
        let sealed = seal(&key, &pad(username.as_bytes()), ke1);
        key.zeroize();
        sealed
    }

    /// Reads `encrypted_id`; any tampering (or another KE1) is [`ChannelError::Decrypt`].
    pub fn decrypt_id(&self, encrypted_id: &[u8], ke1: &[u8]) -> Result<String, ChannelError> {
        let mut key = self.id_key();
        let opened = open(&key, encrypted_id, ke1);
        key.zeroize();
        String::from_utf8(unpad(opened?)?).map_err(|_| ChannelError::Decrypt)
    }

    /// The keys of step three's answer, bound to this agreement and to the OPAQUE
    /// session key.
    pub fn token_keys(&self, opaque_session_key: &[u8]) -> TokenKeys {
        let mut ikm = [self.key.as_slice(), opaque_session_key].concat();
        let keys = TokenKeys {
            token: hkdf(None, &ikm, TOKEN_INFO),
            proof: hkdf(None, &ikm, PROOF_INFO),
            transcript: [self.client, self.server].concat(),
        };
        ikm.zeroize();
        keys
    }
}

/// Encrypts (server) or opens (client) step three's answer.
pub struct TokenKeys {
    token: [u8; 32],
    proof: [u8; 32],
    /// `C ‖ S`.
    transcript: Vec<u8>,
}

impl Drop for TokenKeys {
    fn drop(&mut self) {
        self.token.zeroize();
        self.proof.zeroize();
    }
}

impl TokenKeys {
    fn mac(&self, encrypted_token: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.proof).expect("HMAC takes any key length");
        mac.update(SERVER_PROOF);
        mac.update(&self.transcript);
        mac.update(encrypted_token);
        mac
    }

    /// Server side: `(encrypted_token, pake_proof)`.
    pub fn seal(&self, answer: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let encrypted_token = seal(&self.token, answer, &self.transcript);
        let proof = self.mac(&encrypted_token).finalize().into_bytes().to_vec();
        (encrypted_token, proof)
    }

    /// Client side: checks `pake_proof` (in constant time), then decrypts.
    pub fn open(&self, encrypted_token: &[u8], pake_proof: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.mac(encrypted_token)
            .verify_slice(pake_proof)
            .map_err(|_| ChannelError::BadProof)?;
        open(&self.token, encrypted_token, &self.transcript)
    }
}

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
    secret: EphemeralSecret,
    public: PublicKey,
}

impl PrivateSignIn {
    /// A fresh ephemeral key pair and the body of step one.
    pub fn start() -> (PrivateSignIn, StepOne) {
        let secret = EphemeralSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&secret);
        let body = StepOne {
            pke_key: b64(public.as_bytes()),
        };
        (PrivateSignIn { secret, public }, body)
    }

    /// Agrees the key with the server's answer to step one and builds step two:
    /// KE1 in clear (it says nothing about the user), the username encrypted.
    pub fn step_two(
        self,
        answer: &StepOneAnswer,
        username: &str,
        password: &[u8],
    ) -> Result<(KeyExchange, StepTwo), Error> {
        let server = public_key(&unb64(&answer.pke_key)?)?;
        let agreement = Agreement::derive(
            self.secret,
            &server,
            self.public.to_bytes(),
            server.to_bytes(),
        )?;
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
        let (ke3, session_key) = self.login.finish(password, &answer.pake_key)?;
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
        let (finalization, three) = exchange.step_three(&answer, password)?;
        let answer = self.step_three(&three).await?;
        finalization.finish(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed() -> (Agreement, Agreement) {
        let (client, one) = PrivateSignIn::start();
        let server = Agreement::respond(&unb64(&one.pke_key).unwrap()).unwrap();
        let mine = Agreement::derive(
            client.secret,
            &PublicKey::from(server.server_public()),
            client.public.to_bytes(),
            server.server_public(),
        )
        .unwrap();
        (mine, server)
    }

    #[test]
    fn both_ends_agree_on_the_key() {
        let (client, server) = agreed();
        assert_eq!(client.to_bytes(), server.to_bytes());
        let (other, _) = agreed();
        assert_ne!(client.key, other.key, "each sign-in agrees a fresh key");
        assert_eq!(
            Agreement::from_bytes(&server.to_bytes())
                .unwrap()
                .to_bytes(),
            server.to_bytes()
        );
        assert!(Agreement::from_bytes(&[0u8; 95]).is_none());
    }

    #[test]
    fn low_order_and_malformed_keys_are_refused() {
        assert_eq!(
            Agreement::respond(&[0u8; 32]).unwrap_err(),
            ChannelError::WeakKey
        );
        let mut order_four = [0u8; 32];
        order_four[0] = 1; // u = 1: a point of order 4, killed by the clamped scalar
        assert_eq!(
            Agreement::respond(&order_four).unwrap_err(),
            ChannelError::WeakKey
        );
        assert_eq!(
            Agreement::respond(&[9u8; 31]).unwrap_err(),
            ChannelError::BadPublicKey
        );
    }

    #[test]
    fn the_username_round_trips_and_hides_its_length() {
        let (client, server) = agreed();
        let ke1 = [7u8; 96];
        let short = client.encrypt_id("Bob", &ke1);
        let longer = client.encrypt_id("bartholomew-the-longer-name", &ke1);
        assert_eq!(short.len(), NONCE + ID_BLOCK + 16);
        assert_eq!(short.len(), longer.len());
        assert!(!short.windows(3).any(|w| w == b"Bob"));
        assert_eq!(server.decrypt_id(&short, &ke1).unwrap(), "Bob");
        let exactly_one_block = "x".repeat(ID_BLOCK);
        let sealed = client.encrypt_id(&exactly_one_block, &ke1);
        assert_eq!(sealed.len(), NONCE + 2 * ID_BLOCK + 16);
        assert_eq!(server.decrypt_id(&sealed, &ke1).unwrap(), exactly_one_block);
        assert_eq!(
            server
                .decrypt_id(&client.encrypt_id("", &ke1), &ke1)
                .unwrap(),
            ""
        );
    }

    #[test]
    fn a_tampered_or_misbound_username_does_not_decrypt() {
        let (client, server) = agreed();
        let ke1 = [7u8; 96];
        let sealed = client.encrypt_id("alice", &ke1);
        for i in [0, NONCE, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(
                server.decrypt_id(&tampered, &ke1),
                Err(ChannelError::Decrypt),
                "byte {i}"
            );
        }
        assert_eq!(
            server.decrypt_id(&sealed, &[8u8; 96]),
            Err(ChannelError::Decrypt),
            "another KE1"
        );
        let (_, stranger) = agreed();
        assert_eq!(
            stranger.decrypt_id(&sealed, &ke1),
            Err(ChannelError::Decrypt),
            "another agreement"
        );
        assert_eq!(
            server.decrypt_id(&sealed[..10], &ke1),
            Err(ChannelError::Decrypt)
        );
    }

    #[test]
    fn bad_padding_is_refused() {
        assert_eq!(unpad(vec![b'a', 0, 0]), Err(ChannelError::Decrypt));
        assert_eq!(unpad(vec![0; 64]), Err(ChannelError::Decrypt));
        assert_eq!(unpad(pad(b"abc")), Ok(b"abc".to_vec()));
    }

    #[test]
    fn the_answer_round_trips_under_both_keys_with_the_servers_proof() {
        let (client, server) = agreed();
        let session_key = [5u8; 64];
        let (encrypted, proof) = server.token_keys(&session_key).seal(br#"{"a":1}"#);
        assert_eq!(proof.len(), 32);
        let keys = client.token_keys(&session_key);
        assert_eq!(keys.open(&encrypted, &proof).unwrap(), br#"{"a":1}"#);

        let mut tampered = encrypted.clone();
        tampered[30] ^= 1;
        assert_eq!(keys.open(&tampered, &proof), Err(ChannelError::BadProof));
        let mut bad_proof = proof.clone();
        bad_proof[0] ^= 1;
        assert_eq!(
            keys.open(&encrypted, &bad_proof),
            Err(ChannelError::BadProof)
        );
        // The right agreement but another OPAQUE session key (a server that does not
        // know the password's session), or the reverse, opens nothing.
        assert_eq!(
            client.token_keys(&[6u8; 64]).open(&encrypted, &proof),
            Err(ChannelError::BadProof)
        );
        let (stranger, _) = agreed();
        assert_eq!(
            stranger.token_keys(&session_key).open(&encrypted, &proof),
            Err(ChannelError::BadProof)
        );
    }

    #[test]
    fn the_client_state_machine_runs_against_a_server_side_made_of_this_module() {
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
