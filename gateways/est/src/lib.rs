//! certgate-est: the EST protocol (RFC 7030 with the RFC 8951 clarifications), free of I/O.
//!
//! The edge's EST handler (`certgate-edge`, `est` module) does the HTTP and the core calls; this
//! crate holds what can be decided from bytes alone, so it can be unit-tested and fuzzed:
//!
//! - [`request`]: the base64 PKCS#10 body of `simpleenroll` / `simplereenroll` / `serverkeygen`
//!   (line-wrapped or not, `Content-Transfer-Encoding` ignored as RFC 8951 §3.2 says), bounded.
//! - [`response`]: `cacerts` and enrollment answers as certs-only CMS SignedData, base64 without
//!   line breaks (strongSwan's `pki --est` cannot read wrapped base64), `csrattrs`, and the
//!   `serverkeygen` multipart body.
//! - [`reenroll`]: RFC 7030 §4.2.2 — the CSR's subject and subjectAltName must equal those of the
//!   certificate being renewed.
//! - [`auth`]: HTTP Basic credentials, stored as PBKDF2-HMAC-SHA256 hashes and checked in
//!   constant time; passwords only ever live in `Zeroizing` buffers.
//! - [`keygen`]: the server-side key pair of `serverkeygen` (aws-lc-rs), PKCS#8 in `Zeroizing`,
//!   and the CSR the edge signs with it so the core's one issuance path is used unchanged.

pub mod auth;
pub mod binding;
pub mod csrattrs;
pub mod keygen;
pub mod keyprotect;
pub mod reenroll;
pub mod request;
pub mod response;

/// Why an EST request or value was refused. The edge maps each to an HTTP status; messages are
/// safe to show a client (they never echo secrets).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EstError {
    /// The body is larger than allowed (413).
    #[error("request body too large")]
    TooLarge,
    /// The body is not base64 (400).
    #[error("body is not base64")]
    Base64,
    /// The body is not a DER PKCS#10 CertificationRequest (400).
    #[error("body is not a PKCS#10 certification request")]
    NotPkcs10,
    /// A certificate could not be parsed (ours or the client's).
    #[error("certificate does not parse")]
    BadCertificate,
    /// Re-enrollment names another subject or other subjectAltNames than the certificate being
    /// renewed (RFC 7030 §4.2.2).
    #[error("{0}")]
    ReenrollMismatch(&'static str),
    /// DER encoding failed (a bug or an absurd input size).
    #[error("encoding failed")]
    Encode,
    /// The Authorization header is not HTTP Basic or does not decode.
    #[error("malformed Basic credentials")]
    BadAuthorization,
    /// A stored credential hash is not in the `pbkdf2-sha256$ITER$SALT$HASH` format.
    #[error("invalid password hash: {0}")]
    BadHash(&'static str),
    /// The platform's random generator or key generation failed.
    #[error("key generation failed")]
    KeyGen,
    /// A `serverkeygen` request for an encrypted key that cannot be served as asked (RFC 7030
    /// §4.4.1: unknown or ambiguous decrypt key) (400); the key is never sent unencrypted then.
    #[error("{0}")]
    KeyProtection(&'static str),
    /// Asked for something this server does not implement (501).
    #[error("{0}")]
    Unsupported(&'static str),
    /// RFC 7030 §3.5 channel binding: the CSR's challengePassword is missing or does not carry
    /// this TLS connection's binding value (403).
    #[error("{0}")]
    ChannelBinding(&'static str),
}
