//! The authd wire protocol, shared by the server and the client so that each
//! part of it exists once and both ends cannot drift apart.
//!
//! - [`Suite`] and [`ksf`]: the OPAQUE (RFC 9807) cipher suite and key-stretching
//!   parameters, and the sizes of the OPAQUE messages they produce ([`KE1_LEN`]…);
//!   [`cheap_ksf`]: minimal stretching, for benchmarks only;
//! - [`b64`] / [`unb64`] / [`message`]: base64url without padding, the only text
//!   encoding of bytes on the wire;
//! - [`private`]: the key schedule of private sign-in (reference 001).
//!
//! Nothing here does I/O: transports (the HTTP client, the server's routes) live
//! in the crates that use this one.

mod codec;
pub mod private;
mod suite;

pub use codec::{b64, message, unb64, unb64_exact, DecodeError};
pub use suite::{
    cheap_ksf, ksf, Ksf, Suite, KE1_LEN, KE2_LEN, KE3_LEN, REGISTRATION_RECORD_LEN, REGISTRATION_REQUEST_LEN,
    REGISTRATION_RESPONSE_LEN,
};
