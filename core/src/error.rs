//! The core's one error enum, mapped to the wire in one place ([`CoreError::to_rpc`]).
//!
//! Variants name what the peer (or a dependency) did. Internal detail (SQL errors, transport
//! errors) is logged here when mapped and never echoed to the client (STYLE.md practice 6).

use std::time::Duration;

use certgate_proto::{ErrorKind, RpcError};

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request is malformed; `rule` names what was wrong.
    #[error("malformed ({rule}): {message}")]
    Malformed {
        /// Machine-readable rule, e.g. `csr.signature`.
        rule: &'static str,
        /// Safe for the client.
        message: String,
    },
    /// A profile or ceremony rule refused the request.
    #[error("refused ({rule}): {message}")]
    Policy {
        /// Machine-readable rule, e.g. `profile.allowed_suffixes`.
        rule: &'static str,
        /// Safe for the client.
        message: String,
    },
    /// The caller is not on the allow-list.
    #[error("unauthorized ({rule})")]
    Unauthorized {
        /// Which list refused.
        rule: &'static str,
    },
    /// The idempotency key was used for a different request, or the object exists.
    #[error("already exists ({rule}): {message}")]
    AlreadyExists {
        /// Machine-readable rule.
        rule: &'static str,
        /// Safe for the client.
        message: String,
    },
    /// No such object (or one the caller's tenant may not see: no leak).
    #[error("not found ({rule}): {message}")]
    NotFound {
        /// Machine-readable rule.
        rule: &'static str,
        /// Safe for the client.
        message: String,
    },
    /// Too much in flight; shed early (I-8).
    #[error("overloaded")]
    Overloaded,
    /// A bounded resource (on-demand OCSP signing) is at its limit: UNAVAILABLE with a short
    /// retry-after, so the caller retries rather than queueing without bound (I-8).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The signer could not be reached or failed internally. Never a fallback (I-5).
    #[error("signer unavailable: {0}")]
    SignerUnavailable(String),
    /// The signer answered with a typed refusal (key policy, unknown key...), passed through.
    #[error("signer refused: {0}")]
    Signer(RpcError),
    /// The signer returned a signature that does not verify under the CA's public key.
    #[error("signer returned a bad signature")]
    BadSignature,
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// An internal invariant failed (encoding a structure we built ourselves...).
    #[error("internal: {0}")]
    Internal(String),
}

impl CoreError {
    /// A malformed-request error.
    pub fn malformed(rule: &'static str, message: impl Into<String>) -> Self {
        Self::Malformed {
            rule,
            message: message.into(),
        }
    }

    /// A policy refusal naming the rule.
    pub fn policy(rule: &'static str, message: impl Into<String>) -> Self {
        Self::Policy {
            rule,
            message: message.into(),
        }
    }

    /// A not-found error.
    pub fn not_found(rule: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            rule,
            message: message.into(),
        }
    }

    /// An already-exists error.
    pub fn exists(rule: &'static str, message: impl Into<String>) -> Self {
        Self::AlreadyExists {
            rule,
            message: message.into(),
        }
    }

    /// The one table from core errors to the wire.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            CoreError::Malformed { rule, message } => RpcError::malformed(*rule, message.clone()),
            CoreError::Policy { rule, message } => RpcError::policy(*rule, message.clone()),
            CoreError::Unauthorized { rule } => {
                RpcError::unauthorized(*rule, "caller is not allowed to use this service")
            }
            CoreError::AlreadyExists { rule, message } => {
                RpcError::new(ErrorKind::AlreadyExists, *rule, message.clone())
            }
            CoreError::NotFound { rule, message } => RpcError::not_found(*rule, message.clone()),
            CoreError::Overloaded => RpcError::new(
                ErrorKind::RateLimited,
                "core.overloaded",
                "too many requests in flight",
            )
            .with_retry_after(Duration::from_millis(100)),
            CoreError::Busy(what) => RpcError::unavailable(*what, Duration::from_millis(200)),
            CoreError::SignerUnavailable(detail) => {
                tracing::warn!(%detail, "signer unavailable");
                RpcError::unavailable("the signer is unavailable", Duration::from_secs(1))
            }
            CoreError::Signer(e) => {
                tracing::warn!(error = %e, "signer refused");
                e.clone()
            }
            CoreError::BadSignature => {
                tracing::error!("signer returned a signature that does not verify");
                RpcError::unavailable("the signer is unavailable", Duration::from_secs(1))
            }
            CoreError::Store(detail) => {
                tracing::error!(%detail, "store failure");
                RpcError::unavailable("the store is unavailable", Duration::from_secs(1))
            }
            CoreError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                RpcError::new(ErrorKind::Unspecified, "core.internal", "internal error")
            }
        }
    }
}

impl From<CoreError> for tonic::Status {
    fn from(e: CoreError) -> Self {
        e.to_rpc().into()
    }
}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Store(e.to_string())
    }
}

impl From<der::Error> for CoreError {
    fn from(e: der::Error) -> Self {
        CoreError::Internal(format!("DER: {e}"))
    }
}

/// Result alias.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
