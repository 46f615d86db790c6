//! Step one: the ephemeral X25519 agreement, and the username sealed under it in
//! step two.

use rand::rngs::OsRng;
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroize;

use super::primitives::{hkdf, open, pad, public_key, seal, unpad};
use super::{ChannelError, TokenKeys, AGREEMENT_INFO, AGREEMENT_LEN, ID_INFO, PUBLIC_KEY_LEN};
use crate::b64;

/// Client side of step one: a fresh ephemeral key pair, waiting for the server's
/// public key. [`Initiator::agree`] consumes it, so the secret serves once.
pub struct Initiator {
    secret: EphemeralSecret,
    public: PublicKey,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("public", &b64(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// A fresh ephemeral key pair from the OS's random source.
    pub fn generate() -> Self {
        let secret = EphemeralSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The client's ephemeral public key (`pke_key` of step one's request).
    pub fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public.to_bytes()
    }

    /// Agrees the key with the server's public key (`pke_key` of step one's
    /// answer); a low-order key is [`ChannelError::WeakKey`].
    pub fn agree(self, server_public: &[u8]) -> Result<Agreement, ChannelError> {
        let server = public_key(server_public)?;
        Agreement::derive(
            self.secret,
            &server,
            self.public.to_bytes(),
            server.to_bytes(),
        )
    }
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
    /// The public keys only: the agreed key must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agreement")
            .field("client", &b64(&self.client))
            .field("server", &b64(&self.server))
            .finish_non_exhaustive()
    }
}

impl Agreement {
    fn derive(
        secret: EphemeralSecret,
        peer: &PublicKey,
        client: [u8; PUBLIC_KEY_LEN],
        server: [u8; PUBLIC_KEY_LEN],
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

    /// `key ‖ C ‖ S`, for the server to seal into the handles it gives out (it
    /// keeps no state between steps).
    pub fn to_bytes(&self) -> [u8; AGREEMENT_LEN] {
        let mut bytes = [0u8; AGREEMENT_LEN];
        bytes[..32].copy_from_slice(&self.key);
        bytes[32..64].copy_from_slice(&self.client);
        bytes[64..].copy_from_slice(&self.server);
        bytes
    }

    /// Reads back [`Agreement::to_bytes`]; `None` unless exactly
    /// [`AGREEMENT_LEN`] bytes.
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
        TokenKeys::derive(&self.key, self.client, self.server, opaque_session_key)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{agreed, ID_BLOCK, NONCE};
    use super::*;

    #[test]
    fn both_ends_agree_on_the_key() {
        let (client, server) = agreed();
        assert_eq!(client.to_bytes(), server.to_bytes());
        assert_eq!(client.client_public(), server.client_public());
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
        assert_eq!(
            Initiator::generate().agree(&order_four).unwrap_err(),
            ChannelError::WeakKey
        );
        assert_eq!(
            Initiator::generate().agree(&[9u8; 33]).unwrap_err(),
            ChannelError::BadPublicKey
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let (client, _) = agreed();
        let shown = format!("{client:?}");
        assert!(shown.contains(&b64(&client.client_public())));
        assert!(!shown.contains(&b64(&client.key)));
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
}
