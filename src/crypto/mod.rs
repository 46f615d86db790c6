//! The server's cryptography: its keys, the server side of OPAQUE, and TOTP.

pub mod keys;
pub mod opaque;
pub mod totp;
