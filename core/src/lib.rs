//! certgate core: the single issuance path (I-2), idempotency (I-3), tenant-scoped versioned
//! profiles (I-9), the CA hierarchy built through the signer, the durable store and the signed,
//! hash-linked audit chain (I-7).
//!
//! The core never holds a CA private key: every signature comes from `certgate-signer` over gRPC
//! (I-1). This crate must never depend on the signer crate or on PKCS#11 code.

pub mod acme;
pub mod approval;
pub mod audit;
pub mod ca;
pub mod cmp;
pub mod config;
pub mod csr;
pub mod error;
pub mod issue;
pub mod metrics_http;
pub mod profile;
pub(crate) mod ra;
pub mod scep;
pub mod service;
pub mod signer_client;
pub mod status;
pub mod store;
pub mod tasks;
pub mod tls_listener;
pub mod x509;

pub use error::CoreError;

/// Seconds since the Unix epoch, the one place the core reads the wall clock for records.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
