//! The edge's one error enum and its one table to the wire (STYLE.md practices 5 and 7).
//!
//! Protocol modules answer their own protocol errors themselves; what reaches this type is what
//! the shared plumbing decides (no route, body too large, shed, deadline, core unreachable). The
//! rescue function [`EdgeError::into_response`] is the single place these become HTTP: a
//! problem+json document (RFC 9457) and, for "try later" cases, a `Retry-After` header (I-8).

use std::time::Duration;

use bytes::Bytes;
use certgate_proto::{ErrorKind, RpcError};
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

/// An HTTP response as every edge handler produces it (bodies are small and fully buffered).
pub type EdgeResponse = http::Response<Full<Bytes>>;

/// What went wrong, named after what the peer (client or core) did.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// No route serves this path on this listener.
    #[error("no such resource")]
    NotFound,
    /// The method is not served at this path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request is malformed (bad tenant name, bad path).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The body exceeds the configured limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// Too many requests in flight; shed early (I-8).
    #[error("overloaded")]
    Overloaded,
    /// The request did not finish within its deadline.
    #[error("request deadline exceeded")]
    Timeout,
    /// The core answered with an error (or could not be reached).
    #[error("core: {0}")]
    Core(#[from] RpcError),
}

/// Retry hint for shed requests and an unreachable core.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl EdgeError {
    /// The outcome label used in metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            EdgeError::NotFound | EdgeError::MethodNotAllowed => "not_found",
            EdgeError::Malformed(_) | EdgeError::BodyTooLarge => "client_error",
            EdgeError::Overloaded => "shed",
            EdgeError::Timeout => "timeout",
            EdgeError::Core(e) => match e.kind {
                ErrorKind::Unavailable | ErrorKind::RateLimited => "shed",
                ErrorKind::Unspecified => "error",
                _ => "client_error",
            },
        }
    }

    /// HTTP status, problem title and retry hint. One row per variant; tested below.
    fn wire(&self) -> (StatusCode, &'static str, Option<Duration>) {
        match self {
            EdgeError::NotFound => (StatusCode::NOT_FOUND, "Not Found", None),
            EdgeError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", None)
            }
            EdgeError::Malformed(_) => (StatusCode::BAD_REQUEST, "Bad Request", None),
            EdgeError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", None),
            EdgeError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                Some(RETRY_AFTER),
            ),
            EdgeError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                Some(RETRY_AFTER),
            ),
            EdgeError::Core(e) => match e.kind {
                ErrorKind::Malformed => (StatusCode::BAD_REQUEST, "Bad Request", None),
                ErrorKind::Unauthorized => (StatusCode::FORBIDDEN, "Forbidden", None),
                ErrorKind::RateLimited => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    Some(e.retry_after.unwrap_or(RETRY_AFTER)),
                ),
                ErrorKind::PolicyRefused => (StatusCode::FORBIDDEN, "Forbidden", None),
                ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "Conflict", None),
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "Not Found", None),
                ErrorKind::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                    Some(e.retry_after.unwrap_or(RETRY_AFTER)),
                ),
                ErrorKind::Unspecified => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    None,
                ),
            },
        }
    }

    /// The problem+json response. Only safe text is echoed: our own messages and the core's
    /// client-safe `message` (never internal detail, practice 6).
    pub fn into_response(self) -> EdgeResponse {
        let (status, title, retry) = self.wire();
        let detail = match &self {
            EdgeError::Core(e) if e.kind == ErrorKind::Unspecified => "internal error".to_owned(),
            EdgeError::Core(e) => e.message.clone(),
            other => other.to_string(),
        };
        problem(status, title, &detail, retry)
    }
}

/// Builds an RFC 9457 problem+json response.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    retry_after: Option<Duration>,
) -> EdgeResponse {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(after) = retry_after {
        // Whole seconds, at least 1 (RFC 9110 §10.2.3).
        let secs = after.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_retry(e: EdgeError) -> (u16, Option<String>, String) {
        let r = e.into_response();
        let ct = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            r.status().as_u16(),
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            ct,
        )
    }

    #[test]
    fn every_variant_maps_to_its_row() {
        let rows: Vec<(EdgeError, u16, Option<&str>)> = vec![
            (EdgeError::NotFound, 404, None),
            (EdgeError::MethodNotAllowed, 405, None),
            (EdgeError::Malformed("x".into()), 400, None),
            (EdgeError::BodyTooLarge, 413, None),
            (EdgeError::Overloaded, 503, Some("1")),
            (EdgeError::Timeout, 503, Some("1")),
            (EdgeError::Core(RpcError::malformed("r", "m")), 400, None),
            (EdgeError::Core(RpcError::unauthorized("r", "m")), 403, None),
            (EdgeError::Core(RpcError::policy("r", "m")), 403, None),
            (EdgeError::Core(RpcError::not_found("r", "m")), 404, None),
            (
                EdgeError::Core(RpcError::new(ErrorKind::AlreadyExists, "r", "m")),
                409,
                None,
            ),
            (
                EdgeError::Core(RpcError::unavailable("down", Duration::from_secs(3))),
                503,
                Some("3"),
            ),
            (
                EdgeError::Core(RpcError::new(ErrorKind::RateLimited, "r", "m")),
                429,
                Some("1"),
            ),
            (
                EdgeError::Core(RpcError::new(ErrorKind::Unspecified, "r", "secret")),
                500,
                None,
            ),
        ];
        for (err, status, retry) in rows {
            let name = format!("{err:?}");
            let (s, r, ct) = status_and_retry(err);
            assert_eq!(s, status, "{name}");
            assert_eq!(r.as_deref(), retry, "{name}");
            assert_eq!(ct, "application/problem+json", "{name}");
        }
    }

    #[test]
    fn internal_core_detail_is_not_echoed() {
        let r = EdgeError::Core(RpcError::new(ErrorKind::Unspecified, "r", "db password x"))
            .into_response();
        let body = format!("{:?}", r.body());
        assert!(!body.contains("password"));
    }
}
