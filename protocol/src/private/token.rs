//! Step three: the keys that seal the server's answer and prove the server knows
//! both the agreed key and the OPAQUE session key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use super::primitives::{hkdf, open, seal};
use super::{ChannelError, PROOF_INFO, PUBLIC_KEY_LEN, SERVER_PROOF, TOKEN_INFO};

/// Encrypts (server) or opens (client) step three's answer. Made by
/// [`Agreement::token_keys`](super::Agreement::token_keys).
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

impl std::fmt::Debug for TokenKeys {
    /// Nothing secret: only that these are keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// `ikm = agreement ‖ K`, so neither the agreement alone (a man in the middle
    /// of step one) nor the OPAQUE key alone suffices.
    pub(super) fn derive(
        agreement_key: &[u8; 32],
        client: [u8; PUBLIC_KEY_LEN],
        server: [u8; PUBLIC_KEY_LEN],
        opaque_session_key: &[u8],
    ) -> Self {
        let mut ikm = [agreement_key.as_slice(), opaque_session_key].concat();
        let keys = Self {
            token: hkdf(None, &ikm, TOKEN_INFO),
            proof: hkdf(None, &ikm, PROOF_INFO),
            transcript: [client, server].concat(),
        };
        ikm.zeroize();
        keys
    }

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

#[cfg(test)]
mod tests {
    use super::super::agreed;
    use super::*;

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
}
