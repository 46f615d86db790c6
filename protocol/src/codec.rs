//! base64url without padding (RFC 4648 §5): every binary field on authd's wire
//! (OPAQUE messages, keys, sealed handles) travels in this one encoding, so both
//! ends must accept and refuse exactly the same texts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Why a wire text did not decode.
///
/// The messages are the ones the server reports per field, so they read as the
/// end of "`field` …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Padding, `+` or `/`, whitespace or any other character outside the
    /// alphabet. Holds the decoder's own reason, for logs and the client's error.
    #[error("must be base64url without padding")]
    Base64(String),
    /// Valid base64url, but a fixed-size message of another size.
    #[error("must encode {expected} bytes (has {actual})")]
    Length {
        /// The size the message must have.
        expected: usize,
        /// The size it has.
        actual: usize,
    },
}

/// Encodes bytes as base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; padding and characters outside the
/// alphabet are refused, so one value has exactly one text.
pub fn unb64(text: &str) -> Result<Vec<u8>, DecodeError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| DecodeError::Base64(e.to_string()))
}

/// Decodes a fixed-size message (an OPAQUE message, a public key) of exactly
/// `len` bytes, so that a wrong size is refused before any parsing.
pub fn unb64_exact(text: &str, len: usize) -> Result<Vec<u8>, DecodeError> {
    let bytes = unb64(text)?;
    if bytes.len() != len {
        return Err(DecodeError::Length {
            expected: len,
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}

/// [`unb64_exact`] with the reason as text: "must encode {len} bytes (has {n})"
/// or "must be base64url without padding", ready for a per-field validation
/// error.
pub fn message(text: &str, len: usize) -> Result<Vec<u8>, String> {
    unb64_exact(text, len).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_the_url_safe_alphabet() {
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(unb64(&b64(&data)).unwrap(), data);
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64(&[]), "");
        assert_eq!(unb64("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn padding_and_foreign_characters_are_refused() {
        for text in ["-_8=", "ab+/", "a b", "abc\n", "a"] {
            assert!(
                matches!(unb64(text), Err(DecodeError::Base64(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn fixed_size_messages_say_what_is_wrong() {
        assert_eq!(message(&b64(&[1; 32]), 32).unwrap(), vec![1; 32]);
        assert_eq!(
            message(&b64(&[1; 31]), 32).unwrap_err(),
            "must encode 32 bytes (has 31)"
        );
        assert_eq!(
            message("AA==", 1).unwrap_err(),
            "must be base64url without padding"
        );
        assert_eq!(
            unb64_exact(&b64(&[0; 33]), 32),
            Err(DecodeError::Length {
                expected: 32,
                actual: 33
            })
        );
    }
}
