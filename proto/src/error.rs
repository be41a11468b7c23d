//! The one error kind that crosses every gRPC hop (STYLE.md practice 6).
//!
//! Services build a [`RpcError`] and turn it into a `tonic::Status` whose details carry an encoded
//! [`ErrorDetail`]; edges read it back with [`RpcError::from_status`] and map the kind to their
//! protocol's own error. Internal detail is logged where it happens and never put in `message`.

use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};

pub use crate::errors::{ErrorDetail, ErrorKind};

/// A typed error as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} ({rule}): {message}")]
pub struct RpcError {
    /// What went wrong, coarsely.
    pub kind: ErrorKind,
    /// The rule that refused the request (e.g. `profile.max_validity`), or empty.
    pub rule: String,
    /// Safe to show to clients.
    pub message: String,
    /// When the client may retry, for `RateLimited` and `Unavailable`.
    pub retry_after: Option<Duration>,
}

impl RpcError {
    /// A new error with no retry hint.
    pub fn new(kind: ErrorKind, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            rule: rule.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Shorthand for a malformed request.
    pub fn malformed(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Malformed, rule, message)
    }

    /// Shorthand for a policy refusal naming the rule.
    pub fn policy(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PolicyRefused, rule, message)
    }

    /// Shorthand for an unauthorized caller.
    pub fn unauthorized(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, rule, message)
    }

    /// Shorthand for a missing object.
    pub fn not_found(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, rule, message)
    }

    /// Shorthand for a dependency that is down; clients may retry after `retry_after`.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            rule: "unavailable".into(),
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }

    /// Sets the retry hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The gRPC status code each kind travels under, so clients that ignore details still behave.
    pub fn code(&self) -> Code {
        match self.kind {
            ErrorKind::Malformed => Code::InvalidArgument,
            ErrorKind::Unauthorized => Code::PermissionDenied,
            ErrorKind::RateLimited => Code::ResourceExhausted,
            ErrorKind::PolicyRefused => Code::FailedPrecondition,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Unspecified => Code::Internal,
        }
    }

    /// Reads the typed error back from a status. A status without certgate details (a transport
    /// failure, a deadline) is classified by its code; connection-level failures become
    /// `Unavailable` so callers retry them only where the call is idempotent.
    pub fn from_status(status: &Status) -> Self {
        if let Ok(detail) = ErrorDetail::decode(status.details())
            && detail.kind != ErrorKind::Unspecified as i32
        {
            return Self {
                kind: ErrorKind::try_from(detail.kind).unwrap_or(ErrorKind::Unspecified),
                rule: detail.rule,
                message: detail.message,
                retry_after: (detail.retry_after_ms > 0)
                    .then(|| Duration::from_millis(detail.retry_after_ms)),
            };
        }
        let kind = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::Malformed,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Unauthorized,
            Code::ResourceExhausted => ErrorKind::RateLimited,
            Code::FailedPrecondition => ErrorKind::PolicyRefused,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::NotFound => ErrorKind::NotFound,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Unspecified,
        };
        Self {
            kind,
            rule: String::new(),
            message: status.message().to_owned(),
            retry_after: None,
        }
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        let detail = ErrorDetail {
            kind: e.kind as i32,
            rule: e.rule.clone(),
            message: e.message.clone(),
            retry_after_ms: e
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        Status::with_details(e.code(), e.message, detail.encode_to_vec().into())
    }
}

impl From<Status> for RpcError {
    fn from(s: Status) -> Self {
        Self::from_status(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_round_trips_through_status() {
        let e = RpcError::policy("profile.max_validity", "validity exceeds 90 days")
            .with_retry_after(Duration::from_millis(1500));
        let status: Status = e.clone().into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(RpcError::from_status(&status), e);
    }

    #[test]
    fn plain_status_is_classified_by_code() {
        let e = RpcError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let e = RpcError::from_status(&Status::internal("boom"));
        assert_eq!(e.kind, ErrorKind::Unspecified);
    }
}
