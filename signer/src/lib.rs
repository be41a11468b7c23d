//! certgate-signer: the only process that holds CA private keys.
//!
//! The pure parts (key policy, audit record encoding, configuration) are unit-tested here; the
//! service ([`service`]) wires them to the key stores and to tonic. See docs/signer.md.
#![forbid(unsafe_code)]

pub mod algo;
pub mod audit;
pub mod config;
pub mod hardening;
pub mod keystore;
pub mod policy;
pub mod server;
pub mod service;
