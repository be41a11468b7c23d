//! certgate's ACME (RFC 8555) protocol logic, free of I/O.
//!
//! The edge glue hands this crate bytes, headers and `now`, and gets back typed requests,
//! decisions and bytes (STYLE.md practice 1). Nothing here opens a socket, reads the clock or
//! draws randomness: nonce keys, MAC keys, random bytes and the time are all inputs, which is
//! what lets the tests use RFC vectors and a fake clock and the fuzz target run the parsers.
//!
//! Modules, in the order a request meets them:
//! - [`problem`]: content-type check, problem documents and the one error → wire table;
//! - [`jws`] and [`jwk`]: the flattened JWS, header rules, signature verification, thumbprints;
//! - [`nonce`]: stateless authenticated nonces and the redeem-once store trait;
//! - [`payload`]: typed request bodies, identifier and contact validation, EAB, keyChange;
//! - [`directory`]: the directory document and the URL layout per tenant;
//! - [`state`]: order, authorization and challenge state machines, CSR-vs-order check;
//! - [`resource`]: the account, order, authorization and challenge JSON objects;
//! - [`ari`]: RFC 9773 certificate identifiers and suggested renewal windows.

#![forbid(unsafe_code)]

pub mod ari;
mod b64;
pub mod directory;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod jwk;
pub mod jws;
pub mod nonce;
pub mod payload;
pub mod problem;
pub mod resource;
pub mod state;

pub use b64::encode as base64url;

/// Account keys and JWS signing for tests (this crate's and the end-to-end ACME client's).
#[cfg(any(test, feature = "testkeys"))]
pub mod testkeys;
pub use error::{Error, ValidationFailure};
