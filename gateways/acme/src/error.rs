//! The crate's one error type. Each variant names what the peer (or the environment) did; the
//! mapping to an ACME problem type and HTTP status lives in one table in [`crate::problem`].

use crate::problem::Subproblem;

/// Why a validation attempt failed, as the validator (the glue) observed it. Kept as data so the
/// challenge state can record the matching ACME problem type (RFC 8555 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationFailure {
    /// CAA records forbid issuance (`caa`).
    Caa,
    /// The DNS query failed or returned nothing usable (`dns`).
    Dns,
    /// The validation server could not be reached (`connection`).
    Connection,
    /// The response did not match the expected key authorization (`incorrectResponse`).
    IncorrectResponse,
    /// The TLS handshake for tls-alpn-01 failed or presented a wrong certificate (`tls`).
    Tls,
}

/// Everything that can go wrong while handling an ACME request in the protocol crate.
///
/// Display strings become the problem document's `detail`, so they describe the client's
/// mistake and never carry key material or internal state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request did not carry `Content-Type: application/jose+json` (RFC 8555 §6.2).
    #[error("request Content-Type must be application/jose+json")]
    WrongContentType,
    /// The body is not a flattened JWS or a field is missing or of the wrong type.
    #[error("malformed JWS: {0}")]
    MalformedJws(String),
    /// A base64url field did not decode (padding, wrong alphabet, trailing bits).
    #[error("field {0} is not unpadded base64url")]
    BadBase64(&'static str),
    /// The request's content breaks an RFC rule not covered by a more specific variant.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The JSON of a header or payload did not parse into the expected shape.
    #[error("malformed JSON: {0}")]
    InvalidJson(String),
    /// A protected header the server does not understand was marked critical (RFC 7515 §4.1.11).
    #[error("unsupported critical header")]
    CriticalHeader,
    /// The signature algorithm is not one the server accepts (or is `none` / a MAC).
    #[error("signature algorithm {0:?} is not supported")]
    UnsupportedAlgorithm(String),
    /// `jwk` and `kid` rules violated: both, neither, or the wrong one for this endpoint.
    #[error("{0}")]
    WrongKeyReference(&'static str),
    /// The public key is malformed, too small, carries private parts, or does not fit `alg`.
    #[error("bad public key: {0}")]
    BadPublicKey(String),
    /// The signature does not verify under the given key.
    #[error("JWS signature does not verify")]
    BadSignature,
    /// The `url` header differs from the URL the request was sent to (RFC 8555 §6.4).
    #[error("JWS url header does not match the request URL")]
    UrlMismatch,
    /// The nonce is missing, forged, expired or already used (RFC 8555 §6.5).
    #[error("bad nonce: {0}")]
    BadNonce(&'static str),
    /// The nonce store is full of unexpired nonces; refusing is the fail-closed answer.
    #[error("bad nonce: too many outstanding nonces, retry with a fresh one")]
    NonceStoreFull,
    /// The nonce store could not be reached; without it a replay cannot be ruled out.
    #[error("nonce store unavailable")]
    NonceStoreUnavailable,
    /// POST-as-GET was expected but the payload was not empty, or the reverse.
    #[error("{0}")]
    WrongPayloadKind(&'static str),
    /// The `kid` does not name an existing account.
    #[error("account does not exist")]
    AccountDoesNotExist,
    /// The requester may not do this (wrong account, bad EAB MAC, …).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A contact URL uses a scheme other than `mailto:`.
    #[error("unsupported contact: {0}")]
    UnsupportedContact(String),
    /// A `mailto:` contact is not a single plain address.
    #[error("invalid contact: {0}")]
    InvalidContact(String),
    /// The server requires agreement to its terms and the client did not give it.
    #[error("terms of service must be agreed to")]
    TermsNotAgreed,
    /// The tenant requires External Account Binding and none was given.
    #[error("external account binding is required")]
    ExternalAccountRequired,
    /// An identifier is syntactically valid but the server will not issue for it.
    #[error("rejected identifier: {0}")]
    RejectedIdentifier(String),
    /// An identifier type the server does not support, or a value of the wrong form.
    #[error("unsupported identifier: {0}")]
    UnsupportedIdentifier(String),
    /// Several identifiers failed; each one is a subproblem (RFC 8555 §6.7.1).
    #[error("{detail}")]
    Identifiers {
        /// Summary for the top-level problem.
        detail: String,
        /// One entry per failing identifier.
        subproblems: Vec<Subproblem>,
    },
    /// The CSR does not parse, is unsigned, or does not match the order.
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// Finalize arrived while the order was not `ready` (RFC 8555 §7.4).
    #[error("order is {0}, not ready")]
    OrderNotReady(&'static str),
    /// An input arrived that the object's current state does not accept.
    #[error("{object} is {state}: {input} not allowed")]
    InvalidTransition {
        /// `order`, `authorization` or `challenge`.
        object: &'static str,
        /// The current state.
        state: &'static str,
        /// The input that was refused.
        input: &'static str,
    },
    /// The certificate is already revoked.
    #[error("certificate is already revoked")]
    AlreadyRevoked,
    /// The revocation reason is not allowed (RFC 8555 §7.6).
    #[error("revocation reason {0} is not allowed")]
    BadRevocationReason(u8),
    /// The client must visit a URL first (e.g. new terms of service).
    #[error("user action required: {0}")]
    UserActionRequired(String),
    /// A limit was hit; the glue adds `Retry-After`.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// A validation attempt failed the way the variant says.
    #[error("validation failed: {detail}")]
    Validation {
        /// Which check failed.
        kind: ValidationFailure,
        /// What was observed.
        detail: String,
    },
    /// Something on the server side failed; no detail is given to the client.
    #[error("internal server error")]
    ServerInternal,
}

impl Error {
    /// Shorthand for a JSON error with the parser's message.
    pub(crate) fn json(e: &serde_json::Error) -> Self {
        Error::InvalidJson(e.to_string())
    }
}
