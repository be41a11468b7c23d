//! The front function: an HTTP request's parts, `now` and the caches in; a [`Decision`] out.
//!
//! Paths are relative to the tenant prefix (the edge strips `/t/{tenant}`), without the query:
//! - `POST /ocsp` (or `/ocsp/`): DER body, `application/ocsp-request`;
//! - `GET|HEAD /ocsp/{request}`: see [`crate::request`] for the encodings accepted;
//! - `GET|HEAD /crl/{issuer-id}/{shard}.crl` and `/crl/{issuer-id}/full.crl`.
//!
//! Anything else is [`Decision::NotFound`]; a known path with another method is
//! [`Decision::MethodNotAllowed`]. Nothing here panics on input (the fuzz target checks).

use std::time::SystemTime;

use bytes::Bytes;

use crate::Error;
use crate::cached::CachedResponse;
use crate::index::{CacheKey, CrlShard, IssuerIndex, valid_issuer_id};
use crate::request::{Limits, decode_get, decode_post};
use crate::status::OcspStatus;

/// The parts of an HTTP request this crate looks at.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestParts<'a> {
    /// The tenant the edge routed the request to.
    pub tenant: &'a str,
    /// The HTTP method, as sent (`GET`, `HEAD`, `POST`, …).
    pub method: &'a str,
    /// The path after the tenant prefix, without the query string.
    pub path: &'a str,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The `If-None-Match` header, if any (honoured on GET and HEAD only).
    pub if_none_match: Option<&'a str>,
    /// The body (empty for GET/HEAD).
    pub body: &'a [u8],
}

/// Where cached responses come from. The edge puts its moka cache (bounded by bytes, filled from
/// `WatchStatus` and from single-flight core lookups) behind this trait; tests use a `HashMap`.
pub trait ResponseSource {
    /// The cached response for `key`, if any. Expired entries may be returned; the caller checks
    /// freshness.
    fn get(&self, key: &CacheKey) -> Option<CachedResponse>;
}

impl<S: std::hash::BuildHasher> ResponseSource
    for std::collections::HashMap<CacheKey, CachedResponse, S>
{
    fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        std::collections::HashMap::get(self, key).cloned()
    }
}

/// What [`decide`] reads: the issuer index, the response cache and the limits.
#[derive(Debug, Clone, Copy)]
pub struct Cache<'a, S: ?Sized> {
    /// Issuers per tenant.
    pub issuers: &'a IssuerIndex,
    /// Cached OCSP responses and CRLs.
    pub responses: &'a S,
    /// Request bounds and policy.
    pub limits: &'a Limits,
}

/// What the glue does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 200 with these bytes, `Content-Type: {content_type}`, `Cache-Control:
    /// {cache_control(now)}`, `Last-Modified`, `Expires`, `ETag` (for HEAD: headers and
    /// `Content-Length` only).
    Serve(CachedResponse),
    /// 304 Not Modified (RFC 9110 §13.1.2: the GET/HEAD request's `If-None-Match` names this
    /// response's ETag): no body; `ETag`, `Cache-Control`, `Expires` and `Last-Modified` as for
    /// [`Decision::Serve`].
    NotModified(CachedResponse),
    /// An OCSP error response: `Content-Type: application/ocsp-response`, HTTP `http_status`
    /// (200), body `body` (a constant), no caching headers.
    Error {
        /// The OCSP status.
        status: OcspStatus,
        /// The DER `OCSPResponse` with only that status.
        body: Bytes,
        /// The HTTP status to send.
        http_status: u16,
    },
    /// Not in the cache (or expired): ask the core once for `key` (single-flight on the key),
    /// cache and serve the answer. The core's "no such certificate" is `unauthorized` for OCSP
    /// (RFC 5019 §2.2.3) and 404 for a CRL; the core unreachable is `tryLater` / 503.
    Miss(CacheKey),
    /// 404.
    NotFound,
    /// 405 with the `Allow` header value.
    MethodNotAllowed {
        /// Value for the `Allow` header.
        allow: &'static str,
    },
    /// 415 (POST without `application/ocsp-request`).
    UnsupportedMediaType,
    /// 413 (POST body over [`Limits::max_body`]).
    PayloadTooLarge,
    /// 414 (GET segment over [`Limits::max_get`]).
    UriTooLong,
}

impl Decision {
    /// The OCSP error decision for `status`.
    pub fn ocsp_error(status: OcspStatus) -> Self {
        Decision::Error {
            status,
            body: status.bytes(),
            http_status: status.http_status(),
        }
    }

    fn from_error(e: &Error) -> Self {
        match e {
            Error::BodyTooLarge { .. } => Decision::PayloadTooLarge,
            Error::UriTooLong { .. } => Decision::UriTooLong,
            Error::WrongContentType => Decision::UnsupportedMediaType,
            e => Decision::ocsp_error(e.ocsp_status()),
        }
    }
}

const OCSP_ROOT_ALLOW: &str = "GET, HEAD, POST";
const GET_ALLOW: &str = "GET, HEAD";

/// Decides what to answer. `now` is the edge's clock (STYLE.md practice 2).
pub fn decide<S: ResponseSource + ?Sized>(
    req: &HttpRequestParts<'_>,
    now: SystemTime,
    cache: &Cache<'_, S>,
) -> Decision {
    let is_get = matches!(req.method, "GET" | "HEAD");
    if req.path == "/ocsp" || req.path == "/ocsp/" {
        return match req.method {
            "POST" => ocsp(
                decode_post(req.content_type, req.body, cache.limits),
                req,
                now,
                cache,
            ),
            _ if is_get => Decision::ocsp_error(OcspStatus::MalformedRequest),
            _ => Decision::MethodNotAllowed {
                allow: OCSP_ROOT_ALLOW,
            },
        };
    }
    if let Some(segment) = req.path.strip_prefix("/ocsp/") {
        if !is_get {
            return Decision::MethodNotAllowed { allow: GET_ALLOW };
        }
        return ocsp(decode_get(segment, cache.limits), req, now, cache);
    }
    if let Some(rest) = req.path.strip_prefix("/crl/") {
        let Some((issuer, shard)) = parse_crl_path(rest) else {
            return Decision::NotFound;
        };
        if !is_get {
            return Decision::MethodNotAllowed { allow: GET_ALLOW };
        }
        let Some((tenant, issuer)) = cache.issuers.issuer(req.tenant, issuer) else {
            return Decision::NotFound;
        };
        return lookup(
            CacheKey::Crl {
                tenant,
                issuer,
                shard,
            },
            req,
            now,
            cache,
        );
    }
    Decision::NotFound
}

fn ocsp<S: ResponseSource + ?Sized>(
    decoded: Result<crate::DecodedRequest, Error>,
    req: &HttpRequestParts<'_>,
    now: SystemTime,
    cache: &Cache<'_, S>,
) -> Decision {
    let decoded = match decoded {
        Ok(r) => r,
        Err(e) => return Decision::from_error(&e),
    };
    match cache.issuers.key_for(req.tenant, &decoded.cert_ids) {
        Ok(key) => lookup(key, req, now, cache),
        Err(e) => Decision::from_error(&e),
    }
}

fn lookup<S: ResponseSource + ?Sized>(
    key: CacheKey,
    req: &HttpRequestParts<'_>,
    now: SystemTime,
    cache: &Cache<'_, S>,
) -> Decision {
    match cache.responses.get(&key) {
        Some(hit) if hit.is_fresh(now) => {
            let conditional = matches!(req.method, "GET" | "HEAD");
            match req.if_none_match {
                Some(inm) if conditional && etag_matches(inm, &hit.etag) => {
                    Decision::NotModified(hit)
                }
                _ => Decision::Serve(hit),
            }
        }
        _ => Decision::Miss(key),
    }
}

/// `If-None-Match` evaluation (RFC 9110 §13.1.2): `*`, or a list of entity tags compared weakly
/// (a `W/` prefix is ignored) with ours.
fn etag_matches(if_none_match: &str, etag: &[u8]) -> bool {
    if_none_match.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == etag
    })
}

/// Parses `{issuer-id}/{shard}.crl` or `{issuer-id}/full.crl` (the part after `/crl/`).
/// Issuer id: `[A-Za-z0-9._-]{1,128}`; shard: decimal `u32` without leading zeros.
pub fn parse_crl_path(rest: &str) -> Option<(&str, CrlShard)> {
    let (issuer, file) = rest.split_once('/')?;
    if !valid_issuer_id(issuer) {
        return None;
    }
    let name = file.strip_suffix(".crl")?;
    if name == "full" {
        return Some((issuer, CrlShard::Full));
    }
    if name.is_empty()
        || name.len() > 10
        || !name.bytes().all(|b| b.is_ascii_digit())
        || (name.len() > 1 && name.starts_with('0'))
    {
        return None;
    }
    name.parse::<u32>()
        .ok()
        .map(|n| (issuer, CrlShard::Shard(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_paths_parse_or_are_not_found() {
        assert_eq!(
            parse_crl_path("root-1/full.crl"),
            Some(("root-1", CrlShard::Full))
        );
        assert_eq!(
            parse_crl_path("a.b_c/0.crl"),
            Some(("a.b_c", CrlShard::Shard(0)))
        );
        assert_eq!(
            parse_crl_path("x/4294967295.crl"),
            Some(("x", CrlShard::Shard(u32::MAX)))
        );
        for bad in [
            "",
            "x",
            "x/",
            "/0.crl",
            "x/.crl",
            "x/01.crl",
            "x/-1.crl",
            "x/+1.crl",
            "x/4294967296.crl",
            "x/99999999999.crl",
            "x/1.crl/",
            "x/1.der",
            "x/y/1.crl",
            "x/Full.crl",
            "x%2F/1.crl",
            "é/1.crl",
            "x/١.crl",
        ] {
            assert_eq!(parse_crl_path(bad), None, "{bad:?}");
        }
        let long = format!("{}/full.crl", "a".repeat(129));
        assert_eq!(parse_crl_path(&long), None);
    }
}
