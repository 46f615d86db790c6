//! The building blocks of the key schedule: HKDF-SHA256, XChaCha20-Poly1305 with
//! a random nonce in front, and the username's padding.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::PublicKey;

use super::{ChannelError, ID_BLOCK, NONCE, PUBLIC_KEY_LEN};

/// A 32-byte key: HKDF-SHA256 of `ikm`, under `info`.
pub(super) fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Reads a peer's X25519 public key; only the size can be wrong here (weak keys
/// are caught by the agreement itself).
pub(super) fn public_key(bytes: &[u8]) -> Result<PublicKey, ChannelError> {
    let bytes: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| ChannelError::BadPublicKey)?;
    Ok(PublicKey::from(bytes))
}

/// `nonce ‖ ciphertext`, with a random nonce (192 bits: no counter to keep).
pub(super) fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
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

/// Opens what [`seal`] made; anything else is [`ChannelError::Decrypt`].
pub(super) fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ChannelError> {
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
pub(super) fn pad(text: &[u8]) -> Vec<u8> {
    let mut padded = text.to_vec();
    padded.push(0x80);
    padded.resize(padded.len().div_ceil(ID_BLOCK) * ID_BLOCK, 0);
    padded
}

/// Undoes [`pad`]; a missing `0x80` marker is [`ChannelError::Decrypt`].
pub(super) fn unpad(mut padded: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_padding_is_refused() {
        assert_eq!(unpad(vec![b'a', 0, 0]), Err(ChannelError::Decrypt));
        assert_eq!(unpad(vec![0; 64]), Err(ChannelError::Decrypt));
        assert_eq!(unpad(pad(b"abc")), Ok(b"abc".to_vec()));
    }

    #[test]
    fn a_short_or_tampered_seal_does_not_open() {
        let key = [3u8; 32];
        let sealed = seal(&key, b"hello", b"aad");
        assert_eq!(open(&key, &sealed, b"aad").unwrap(), b"hello");
        assert_eq!(open(&key, &sealed, b"other"), Err(ChannelError::Decrypt));
        assert_eq!(
            open(&[4u8; 32], &sealed, b"aad"),
            Err(ChannelError::Decrypt)
        );
        assert_eq!(
            open(&key, &sealed[..NONCE - 1], b"aad"),
            Err(ChannelError::Decrypt)
        );
    }
}
