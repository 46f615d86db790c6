//! The key schedule of private sign-in (`POST /v1/step/one|two|three`, reference
//! 001): an OPAQUE login run inside an ephemeral X25519 key agreement, so that the
//! username travels only encrypted and the session comes back encrypted under a
//! key bound to both the agreement and the OPAQUE session key.
//!
//! Both ends use this module, so the key schedule exists once: the client starts
//! with [`Initiator`] and opens the answer with [`TokenKeys::open`]; the server
//! answers with [`Agreement::respond`], reads the username with
//! [`Agreement::decrypt_id`] and seals the answer with [`TokenKeys::seal`]. The
//! HTTP bodies and the client's state machine are in the `client` crate.
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

mod agreement;
mod primitives;
mod token;

pub use agreement::{Agreement, Initiator};
pub use token::TokenKeys;

// HKDF info labels and the proof's domain separator: changing any of them is a
// new protocol version, hence the `v1` in each.
const AGREEMENT_INFO: &[u8] = b"authd/private-sign-in/v1 agreement";
const ID_INFO: &[u8] = b"authd/private-sign-in/v1 encrypted_id";
const TOKEN_INFO: &[u8] = b"authd/private-sign-in/v1 encrypted_token";
const PROOF_INFO: &[u8] = b"authd/private-sign-in/v1 pake_proof";
const SERVER_PROOF: &[u8] = b"authd/private-sign-in/v1 server proof";

/// The username is padded to a multiple of this many bytes before encryption,
/// so that `encrypted_id` does not tell how long the name is.
pub const ID_BLOCK: usize = 64;
/// An X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of [`Agreement::to_bytes`]: `key ‖ C ‖ S`.
pub const AGREEMENT_LEN: usize = 96;
/// XChaCha20-Poly1305 nonce, random per message.
const NONCE: usize = 24;

/// Why a private sign-in message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Not 32 bytes.
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

/// Both ends of a fresh agreement, for the tests of the submodules.
#[cfg(test)]
fn agreed() -> (Agreement, Agreement) {
    let client = Initiator::generate();
    let server = Agreement::respond(&client.public()).unwrap();
    let mine = client.agree(&server.server_public()).unwrap();
    (mine, server)
}
