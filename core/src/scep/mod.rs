//! The core's SCEP support (proto/scep.proto, RFC 8894): the tenant's SCEP RA (an RSA key held
//! by the signer with role SCEP_RA, certified by the tenant's issuing CA with digitalSignature and
//! keyEncipherment), key-transport unwrap and response signing through the signer, and challenge
//! passwords that never leave the core (stored as digests, compared in constant time, one-time
//! challenges consumed atomically).
//!
//! The edge (gateways/scep) does all CMS parsing; this module sees only the encryptedKey and its
//! AlgorithmIdentifier, the DER SignedAttributes to sign, and the challenge the client sent.

pub mod ra;
pub mod service;

pub use service::{ScepAdminService, ScepService, ScepState};

/// Longest challenge password accepted (RFC 2985 challengePassword is a DirectoryString of at
/// most 255 characters).
pub const MAX_CHALLENGE: usize = 255;
/// Random bytes of a generated one-time challenge (printed as base64url).
pub const GENERATED_CHALLENGE_BYTES: usize = 24;
/// Outstanding one-time challenges a tenant may have (bounded, I-8).
pub const MAX_ONE_TIME_CHALLENGES: usize = 10_000;
/// How long a one-time challenge stays valid.
pub const ONE_TIME_VALIDITY_SECONDS: i64 = 7 * 24 * 3600;
/// Longest SignedAttributes the RA signs (a SCEP CertRep's carry a handful of attributes).
pub const MAX_SIGNED_ATTRIBUTES: usize = 16 * 1024;
/// Longest encryptedKey accepted (the modulus of an RSA-4096 key).
pub const MAX_ENCRYPTED_KEY: usize = 512;
/// Longest profile name.
pub const MAX_PROFILE: usize = 128;
