//! The black-box tests: one binary that starts the real `authd` (its
//! `CARGO_BIN_EXE`) on a random port against a fresh SQLite file or PostgreSQL
//! database, and drives it over HTTP with the real OPAQUE client. One module per
//! feature; the spawn helper and the shared helpers live in `helpers`.

#[macro_use]
mod helpers;

mod account;
mod anonymous;
mod assurance;
mod audit;
mod cli;
mod contract;
mod elevation;
mod hardening;
mod idtoken;
mod limits;
mod passkeys;
mod passwordless;
mod pats;
mod private_sign_in;
mod replay;
mod replicas;
mod security;
mod self_service;
mod shredding;
mod throttling;
mod verifications;
