//! The server's secrets. One secret, the OPAQUE `ServerSetup`, is created once and
//! kept (a 0600 file in the data directory, or `AUTHD_SERVER_SETUP` in production so
//! every replica shares it); every other key is derived from it with HMAC-SHA256 under
//! a fixed label, so replicas agree without sharing more.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use protocol::Suite;
use hmac::{Hmac, Mac};
use jsonwebtoken::{DecodingKey, EncodingKey};
use opaque_ke::ServerSetup;
use rand::rngs::OsRng;
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

const SETUP_FILE: &str = "server_setup";
/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the OPAQUE server setup is not valid (expected base64url of 128 bytes)")]
    BadSetup,
    #[error("cannot build the JWT signing key: {0}")]
    Jwt(String),
}

type HmacSha256 = Hmac<Sha256>;

/// All keys, derived once at start-up and shared by every request.
pub struct Keys {
    pub setup: ServerSetup<Suite>,
    /// Seals the OPAQUE login state between KE2 and KE3.
    state_cipher: XChaCha20Poly1305,
    /// Keyed hashes for aggregate ids (usernames, tokens) and refresh tokens.
    ids: [u8; 32],
    refresh: [u8; 32],
    pub jwt: JwtKeys,
    /// Authenticates the seals over the event log's hash-chain heads (`chain_seals`).
    chain_seals: [u8; 32],
    /// Keyed hashes of verification codes.
    pub codes: CodeHasher,
    /// Wraps the per-account keys of crypto-shredding (src/store/shred.rs).
    subject_keys: [u8; 32],
}

/// Salted keyed hashes (HMAC-SHA256) of verification codes: what the log keeps in
/// place of a code. Cheap to clone into the domain's services.
#[derive(Clone)]
pub struct CodeHasher {
    key: [u8; 32],
}

impl CodeHasher {
    /// `salt.mac`, both base64url; a fresh salt each time, so equal codes of two
    /// verifiers do not show as equal hashes.
    pub fn hash(&self, code: &str) -> String {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(salt), keyed_hash(&self.key, &[&salt, code.as_bytes()]))
    }

    /// True when `code` is the code `stored` was made from; compared in constant time.
    pub fn matches(&self, stored: &str, code: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Some((salt, mac)) = stored.split_once('.') else { return false };
        let Ok(salt) = URL_SAFE_NO_PAD.decode(salt) else { return false };
        let expected = keyed_hash(&self.key, &[&salt, code.as_bytes()]);
        bool::from(expected.as_bytes().ct_eq(mac.as_bytes()))
    }
}

pub struct JwtKeys {
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    pub kid: String,
    /// The public key, base64url: the `x` of its JWK (RFC 8037).
    pub x: String,
}

impl Keys {
    /// Loads the setup from `configured` (base64url) or the data directory, creating
    /// and storing a new one when neither exists.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> Result<Self, KeyError> {
        let setup = match configured {
            Some(text) => {
                let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| KeyError::BadSetup)?;
                ServerSetup::<Suite>::deserialize(&bytes).map_err(|_| KeyError::BadSetup)?
            }
            None => load_or_create_setup(&data_dir.join(SETUP_FILE))?,
        };
        Self::from_setup(setup)
    }

    pub fn from_setup(setup: ServerSetup<Suite>) -> Result<Self, KeyError> {
        let master = setup.serialize();
        let derive = |label: &str| -> [u8; 32] {
            let mut mac = <HmacSha256 as Mac>::new_from_slice(&master).expect("HMAC takes any key length");
            mac.update(b"authd/");
            mac.update(label.as_bytes());
            mac.finalize().into_bytes().into()
        };
        let state_cipher = XChaCha20Poly1305::new(&derive("sign-in-state").into());
        let jwt = JwtKeys::from_seed(derive("jwt-ed25519"))?;
        Ok(Self {
            setup,
            state_cipher,
            ids: derive("aggregate-ids"),
            refresh: derive("refresh-tokens"),
            jwt,
            codes: CodeHasher { key: derive("verification-codes") },
            chain_seals: derive("chain-seals"),
            subject_keys: derive("subject-keys"),
        })
    }

    /// A stable, non-reversible aggregate id for a value that must not appear in
    /// clear (a username, a token).
    pub fn aggregate_id(&self, kind: &str, value: &str) -> String {
        keyed_hash(&self.ids, &[kind.as_bytes(), b"\0", value.as_bytes()])
    }

    /// The secret of the key-encryption key of the subject keys (`store::shred::Kek`).
    pub fn subject_keys_secret(&self) -> [u8; 32] {
        self.subject_keys
    }

    /// The secret of the log's seals (`store::chain::SealKey`).
    pub fn chain_seals_secret(&self) -> [u8; 32] {
        self.chain_seals
    }

    pub fn refresh_hash(&self, token: &str) -> String {
        keyed_hash(&self.refresh, &[token.as_bytes()])
    }

    /// Encrypts `plaintext` so that only this server (or a replica with the same
    /// setup) can read it back, bound to `context`.
    pub fn encrypt(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .state_cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context })
            .expect("XChaCha20-Poly1305 encryption of a short message cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn decrypt(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        self.state_cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: context }).ok()
    }
}

/// A fresh setup as base64url, for `AUTHD_SERVER_SETUP`.
pub fn generate_setup() -> String {
    URL_SAFE_NO_PAD.encode(ServerSetup::<Suite>::new(&mut OsRng).serialize())
}

fn keyed_hash(key: &[u8; 32], parts: &[&[u8]]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

impl JwtKeys {
    fn from_seed(seed: [u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| KeyError::Jwt(e.to_string()))?;
        let public = pair.public_key().as_ref();
        let x = URL_SAFE_NO_PAD.encode(public);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
        let pkcs8 = [ED25519_PKCS8_PREFIX.as_slice(), &seed].concat();
        Ok(Self {
            encoding: EncodingKey::from_ed_der(&pkcs8),
            decoding: DecodingKey::from_ed_components(&x).map_err(|e| KeyError::Jwt(e.to_string()))?,
            kid,
            x,
        })
    }
}

fn load_or_create_setup(path: &Path) -> Result<ServerSetup<Suite>, KeyError> {
    let io = |source| KeyError::Io { path: path.display().to_string(), source };
    match std::fs::read(path) {
        Ok(bytes) => ServerSetup::<Suite>::deserialize(&bytes).map_err(|_| KeyError::BadSetup),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let setup = ServerSetup::<Suite>::new(&mut OsRng);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(&setup.serialize()).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    tracing::info!(path = %path.display(), "created a new OPAQUE server setup");
                    Ok(setup)
                }
                // Another process created it first: use theirs.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_setup(path),
                Err(error) => Err(io(error)),
            }
        }
        Err(error) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_is_created_once_with_owner_only_permissions_and_kept() {
        let dir = std::env::temp_dir().join(format!("authd-keys-{}", uuid::Uuid::new_v4()));
        let first = Keys::load(None, &dir).expect("create");
        let second = Keys::load(None, &dir).expect("reload");
        assert_eq!(first.setup.serialize(), second.setup.serialize());
        assert_eq!(first.jwt.kid, second.jwt.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SETUP_FILE)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn sealed_state_opens_only_with_its_context() {
        let keys = Keys::from_setup(ServerSetup::<Suite>::new(&mut OsRng)).expect("keys");
        let sealed = keys.encrypt(b"sign-in-1", b"state");
        assert_eq!(keys.decrypt(b"sign-in-1", &sealed).as_deref(), Some(b"state".as_slice()));
        assert_eq!(keys.decrypt(b"sign-in-2", &sealed), None);
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert_eq!(keys.decrypt(b"sign-in-1", &tampered), None);
    }

    #[test]
    fn code_hashes_match_only_their_code_and_differ_each_time() {
        let keys = Keys::from_setup(ServerSetup::<Suite>::new(&mut OsRng)).expect("keys");
        let first = keys.codes.hash("482913");
        let second = keys.codes.hash("482913");
        assert_ne!(first, second);
        assert!(!first.contains("482913"));
        assert!(keys.codes.matches(&first, "482913") && keys.codes.matches(&second, "482913"));
        assert!(!keys.codes.matches(&first, "482914"));
        assert!(!keys.codes.matches("garbage", "482913"));
        let other = Keys::from_setup(ServerSetup::<Suite>::new(&mut OsRng)).expect("keys");
        assert!(!other.codes.matches(&first, "482913"));
    }

    #[test]
    fn a_generated_setup_loads_from_configuration() {
        let text = generate_setup();
        let first = Keys::load(Some(&text), &std::env::temp_dir()).expect("load");
        let second = Keys::load(Some(&text), &std::env::temp_dir()).expect("load");
        assert_eq!(first.jwt.kid, second.jwt.kid);
        assert_eq!(first.aggregate_id("username", "a"), second.aggregate_id("username", "a"));
    }

    #[test]
    fn a_bad_configured_setup_is_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(Keys::load(Some("not-a-setup"), &dir), Err(KeyError::BadSetup)));
    }
}
