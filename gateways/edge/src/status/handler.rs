//! The `/ocsp` and `/crl/` handlers: `certgate_ocsp::decide` against the cache, the decision
//! rendered to HTTP, misses resolved through [`StatusCache::miss`].
//!
//! Wire table (RFC 6960 Appendix A, RFC 5019 §§5–6):
//!
//! | decision | HTTP |
//! |---|---|
//! | hit / miss answered | 200, the DER, `Cache-Control: max-age=…, public, no-transform, must-revalidate`, `ETag`, `Last-Modified`, `Expires` |
//! | `If-None-Match` matches | 304, same headers, no body |
//! | malformed / unknown issuer / unknown serial | 200 `application/ocsp-response` with `malformedRequest` / `unauthorized`, `Cache-Control: no-store` |
//! | core down or miss shed (OCSP) | 200 with `tryLater`, `Retry-After` |
//! | core down or miss shed (CRL) | 503 problem+json, `Retry-After` |
//! | unknown CRL issuer or shard, unknown path | 404 problem+json |
//! | wrong method / content type / too large / URI too long | 405 + `Allow` / 415 / 413 / 414 |
//!
//! Nothing on this path answers 500: every failure is one of the rows above.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use certgate_ocsp::{CacheKey, CachedResponse, Decision, HttpRequestParts, OcspStatus, Transport};
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

use super::{MissError, STATUS_REQUEST_SECONDS, STATUS_REQUESTS_TOTAL, StatusCache};
use crate::error::{EdgeError, EdgeResponse, problem};
use crate::router::{EdgeContext, EdgeRequest, Handler, HandlerFuture, Listener, Mount, Router};

/// `POST /ocsp`, `GET /ocsp/{request}` (protocol label `ocsp`).
pub struct OcspHandler {
    /// The shared cache.
    pub cache: StatusCache,
}

/// `GET /crl/{issuer-id}/{shard}.crl` and `…/full.crl` (protocol label `crl`).
pub struct CrlHandler {
    /// The shared cache.
    pub cache: StatusCache,
}

/// Adds the status mounts (plain HTTP listener only, as the stable interfaces table says).
pub fn mount(router: Router, cache: &StatusCache) -> Router {
    router
        .mount(Mount {
            prefix: "/ocsp",
            listeners: &[Listener::Http],
            handler: std::sync::Arc::new(OcspHandler {
                cache: cache.clone(),
            }),
        })
        .mount(Mount {
            prefix: "/crl/",
            listeners: &[Listener::Http],
            handler: std::sync::Arc::new(CrlHandler {
                cache: cache.clone(),
            }),
        })
}

impl Handler for OcspHandler {
    fn protocol(&self) -> &'static str {
        "ocsp"
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let now = SystemTime::now();
            // A request whose exact bytes were answered before: one memo probe, prebuilt headers.
            let memo = memo_key(&req);
            if let Some((transport, raw)) = memo
                && let Some(entry) = self.cache.memo_hit(transport, &req.tenant, raw, now)
            {
                let resp = entry
                    .headers
                    .response(&entry.resp, now, false, StatusCode::OK);
                record(Proto::Ocsp.label(), &req.tenant, "hit", start);
                return Ok(resp);
            }
            // The mount prefix has no trailing slash so that `/ocsp` itself routes here; a path
            // like `/ocspx` reaches `decide` as such and is not found.
            let path = format!("/ocsp{}", req.path);
            Ok(serve(&self.cache, ctx, &req, &path, Proto::Ocsp, memo, start, now).await)
        })
    }

    /// The OCSP request limit (RFC 5019 requests are ~100 bytes; signed ones a few KiB).
    fn max_body_bytes(&self) -> Option<usize> {
        Some(self.cache.limits().max_body)
    }

    /// Shed, deadline and an unreachable core are OCSP `tryLater` (with `Retry-After`), so OCSP
    /// clients read an OCSP answer; an unknown tenant is `unauthorized`, as an unknown issuer is.
    fn render_error(&self, _tenant: &str, err: EdgeError) -> EdgeResponse {
        match err {
            EdgeError::Overloaded | EdgeError::Timeout => try_later(Proto::Ocsp, 1, "shed").0,
            EdgeError::Core(e) if e.kind == certgate_proto::ErrorKind::Unavailable => {
                try_later(
                    Proto::Ocsp,
                    e.retry_after.map_or(1, |d| d.as_secs()),
                    "shed",
                )
                .0
            }
            EdgeError::NotFound => {
                ocsp_error(OcspStatus::Unauthorized, OcspStatus::Unauthorized.bytes())
            }
            other => other.into_response(),
        }
    }
}

impl Handler for CrlHandler {
    fn protocol(&self) -> &'static str {
        "crl"
    }

    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            let path = format!("/crl/{}", req.path);
            let (start, now) = (Instant::now(), SystemTime::now());
            Ok(serve(&self.cache, ctx, &req, &path, Proto::Crl, None, start, now).await)
        })
    }

    /// CRLs are fetched with GET: no body is needed (a small one is tolerated, then 405).
    fn max_body_bytes(&self) -> Option<usize> {
        Some(4096)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Ocsp,
    Crl,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Ocsp => "ocsp",
            Proto::Crl => "crl",
        }
    }
}

/// The memo key of an OCSP request that may be answered from the memo: a GET (segment after
/// `/ocsp`, still encoded) or a POST to `/ocsp` with the OCSP request media type (the body).
/// Conditional requests (`If-None-Match`) and HEAD always take the full path.
fn memo_key(req: &EdgeRequest) -> Option<(Transport, &[u8])> {
    if req.headers.contains_key(header::IF_NONE_MATCH) {
        return None;
    }
    match req.method {
        http::Method::GET if req.path.len() > 1 && req.path.starts_with('/') => {
            Some((Transport::Get, req.path.as_bytes()))
        }
        http::Method::POST
            if (req.path.is_empty() || req.path == "/")
                && req
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(certgate_ocsp::request::is_ocsp_request_type) =>
        {
            Some((Transport::Post, &req.body[..]))
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    cache: &StatusCache,
    ctx: &EdgeContext,
    req: &EdgeRequest,
    path: &str,
    proto: Proto,
    memo: Option<(Transport, &[u8])>,
    start: Instant,
    now: SystemTime,
) -> EdgeResponse {
    let header_str = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let parts = HttpRequestParts {
        tenant: &req.tenant,
        method: req.method.as_str(),
        path,
        content_type: header_str(header::CONTENT_TYPE),
        if_none_match: header_str(header::IF_NONE_MATCH),
        body: &req.body,
    };
    let head = req.method == http::Method::HEAD;
    let (decision, entry) = cache.decide_entry(&parts, now);
    let (resp, outcome) = match decision {
        Decision::Serve(r) => {
            let resp = match &entry {
                Some(e) => e.headers.response(&e.resp, now, head, StatusCode::OK),
                None => cached(&r, now, head, StatusCode::OK),
            };
            // Only answers that decoded and resolved are memoized: malformed or unknown
            // requests are decoded (and counted) every time.
            if let (Some((transport, raw)), Some(e)) = (memo, entry) {
                cache.memoize(transport, &req.tenant, raw, e);
            }
            (resp, "hit")
        }
        Decision::NotModified(r) => (
            match &entry {
                Some(e) => e
                    .headers
                    .response(&e.resp, now, true, StatusCode::NOT_MODIFIED),
                None => cached(&r, now, true, StatusCode::NOT_MODIFIED),
            },
            "not_modified",
        ),
        Decision::Error { status, body, .. } => (ocsp_error(status, body), error_outcome(status)),
        Decision::Miss(key) => miss(cache, ctx, key, now, head, proto).await,
        Decision::NotFound => (EdgeError::NotFound.into_response(), "not_found"),
        Decision::MethodNotAllowed { allow } => {
            let mut r = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "method not allowed",
                None,
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            (r, "bad_method")
        }
        Decision::UnsupportedMediaType => (
            problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "POST needs Content-Type: application/ocsp-request",
                None,
            ),
            "bad_media_type",
        ),
        Decision::PayloadTooLarge => (
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                "OCSP request body too large",
                None,
            ),
            "too_large",
        ),
        Decision::UriTooLong => (
            problem(
                StatusCode::URI_TOO_LONG,
                "URI Too Long",
                "OCSP GET request too long",
                None,
            ),
            "uri_too_long",
        ),
    };
    record(proto.label(), &req.tenant, outcome, start);
    resp
}

async fn miss(
    cache: &StatusCache,
    ctx: &EdgeContext,
    key: CacheKey,
    now: SystemTime,
    head: bool,
    proto: Proto,
) -> (EdgeResponse, &'static str) {
    match cache.miss(&ctx.core, key, now).await {
        Ok(r) if r.is_fresh(now) => (cached(&r, now, head, StatusCode::OK), "miss"),
        // The core's own answer is already past nextUpdate: never serve it (RFC 5019 §2.2.4).
        Ok(_) => try_later(proto, 1, "stale"),
        Err(MissError::NotFound) => match proto {
            Proto::Ocsp => (
                ocsp_error(OcspStatus::Unauthorized, OcspStatus::Unauthorized.bytes()),
                "unknown",
            ),
            Proto::Crl => (EdgeError::NotFound.into_response(), "not_found"),
        },
        Err(MissError::Unavailable(secs)) => try_later(proto, secs, "try_later"),
        Err(MissError::Shed) => try_later(proto, 1, "shed"),
    }
}

fn try_later(proto: Proto, secs: u64, outcome: &'static str) -> (EdgeResponse, &'static str) {
    let secs = secs.max(1);
    let mut r = match proto {
        Proto::Ocsp => ocsp_error(OcspStatus::TryLater, OcspStatus::TryLater.bytes()),
        Proto::Crl => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the CRL is not available right now",
            None,
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    (r, outcome)
}

fn error_outcome(status: OcspStatus) -> &'static str {
    match status {
        OcspStatus::MalformedRequest => "malformed",
        OcspStatus::Unauthorized => "unknown",
        OcspStatus::TryLater => "try_later",
        OcspStatus::InternalError => "internal_error",
    }
}

/// An entry's response headers, built once when the entry is stored: serving clones
/// `HeaderValue`s (reference counts) and `Cache-Control` is rendered once per second per entry.
#[derive(Debug)]
pub(super) struct Prebuilt {
    content_type: HeaderValue,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    expires: Option<HeaderValue>,
    content_length: HeaderValue,
    /// (max-age seconds, its `Cache-Control` value): max-age falls by one each second.
    cache_control: std::sync::Mutex<Option<(u64, HeaderValue)>>,
    /// (max-age seconds, the whole header set of a GET/POST 200 at that max-age): cloning a
    /// built map is cheaper than five inserts (each hashes the name and probes the table).
    ok_headers: std::sync::Mutex<Option<(u64, http::HeaderMap)>>,
}

impl Prebuilt {
    pub(super) fn new(r: &CachedResponse) -> Self {
        let v = |b: &Bytes| HeaderValue::from_maybe_shared(b.clone()).ok();
        Prebuilt {
            content_type: HeaderValue::from_static(r.content_type),
            etag: v(&r.etag),
            last_modified: v(&r.last_modified_header),
            expires: v(&r.expires_header),
            content_length: HeaderValue::from(r.der.len()),
            cache_control: std::sync::Mutex::new(None),
            ok_headers: std::sync::Mutex::new(None),
        }
    }

    fn cache_control(&self, r: &CachedResponse, now: SystemTime) -> Option<HeaderValue> {
        let max_age = r.max_age(now);
        // `try_lock`: a request never waits for another; on contention it renders its own.
        let mut slot = self.cache_control.try_lock().ok();
        if let Some(Some((age, v))) = slot.as_deref()
            && *age == max_age
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(r.cache_control(now).as_str()).ok()?;
        if let Some(slot) = slot.as_deref_mut() {
            *slot = Some((max_age, v.clone()));
        }
        Some(v)
    }

    /// A 200/304 with the entry's bytes and the RFC 5019 §6 headers (same bytes and headers as
    /// [`cached`], without building any header value).
    pub(super) fn response(
        &self,
        r: &CachedResponse,
        now: SystemTime,
        no_body: bool,
        status: StatusCode,
    ) -> EdgeResponse {
        let body = if no_body { Bytes::new() } else { r.der.clone() };
        let mut resp = http::Response::new(Full::new(body));
        *resp.status_mut() = status;
        if no_body || status != StatusCode::OK {
            self.fill_headers(resp.headers_mut(), r, now, no_body, status);
            return resp;
        }
        // The hot path (GET/POST 200): the entry's header set, built once; from one second to
        // the next only `Cache-Control`'s max-age changes, and is replaced in place.
        let max_age = r.max_age(now);
        // `try_lock`: a request never waits for another; on contention it builds its own.
        match self.ok_headers.try_lock().as_deref_mut() {
            Ok(Some((age, h))) => {
                if *age != max_age {
                    match self.cache_control(r, now) {
                        Some(v) => h.insert(header::CACHE_CONTROL, v),
                        None => h.remove(header::CACHE_CONTROL),
                    };
                    *age = max_age;
                }
                *resp.headers_mut() = h.clone();
            }
            Ok(slot) => {
                self.fill_headers(resp.headers_mut(), r, now, no_body, status);
                *slot = Some((max_age, resp.headers().clone()));
            }
            Err(_) => self.fill_headers(resp.headers_mut(), r, now, no_body, status),
        }
        resp
    }

    fn fill_headers(
        &self,
        h: &mut http::HeaderMap,
        r: &CachedResponse,
        now: SystemTime,
        no_body: bool,
        status: StatusCode,
    ) {
        h.reserve(6);
        h.insert(header::CONTENT_TYPE, self.content_type.clone());
        if let Some(v) = self.cache_control(r, now) {
            h.insert(header::CACHE_CONTROL, v);
        }
        for (name, value) in [
            (header::ETAG, &self.etag),
            (header::LAST_MODIFIED, &self.last_modified),
            (header::EXPIRES, &self.expires),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        if no_body && status == StatusCode::OK {
            // HEAD: the length of what GET would send.
            h.insert(header::CONTENT_LENGTH, self.content_length.clone());
        }
    }
}

/// A 200/304 with the cached bytes and the RFC 5019 §6 headers, for an answer that is not a
/// cache entry (a miss answered by the core). Header values are the response's `Bytes` (no
/// copy); only `Cache-Control` is rendered per request.
fn cached(r: &CachedResponse, now: SystemTime, no_body: bool, status: StatusCode) -> EdgeResponse {
    let body = if no_body { Bytes::new() } else { r.der.clone() };
    let mut resp = http::Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    if let Ok(v) = HeaderValue::from_str(r.cache_control(now).as_str()) {
        h.insert(header::CACHE_CONTROL, v);
    }
    for (name, value) in [
        (header::ETAG, &r.etag),
        (header::LAST_MODIFIED, &r.last_modified_header),
        (header::EXPIRES, &r.expires_header),
    ] {
        if let Ok(v) = HeaderValue::from_maybe_shared(value.clone()) {
            h.insert(name, v);
        }
    }
    if no_body && status == StatusCode::OK {
        // HEAD: the length of what GET would send.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.der.len()));
    }
    resp
}

/// An unsigned OCSP error response (constant bytes), never cached by intermediaries.
fn ocsp_error(_status: OcspStatus, body: Bytes) -> EdgeResponse {
    let mut resp = http::Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(certgate_ocsp::OCSP_RESPONSE_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn record(protocol: &'static str, tenant: &str, outcome: &'static str, start: Instant) {
    // Registered handles are cached per label set: no label copies, no registry lookup.
    static HANDLES: crate::metrics::HandleCache = crate::metrics::HandleCache::new();
    HANDLES.with(
        [protocol, outcome, ""],
        tenant,
        || {
            (
                metrics::counter!(
                    STATUS_REQUESTS_TOTAL,
                    "protocol" => protocol,
                    "tenant" => tenant.to_owned(),
                    "outcome" => outcome
                ),
                crate::metrics::latency_histogram(
                    STATUS_REQUEST_SECONDS,
                    "Status (OCSP, CRL) request latency",
                    &[("protocol", protocol), ("outcome", outcome)],
                ),
            )
        },
        |counter, histogram| {
            counter.increment(1);
            histogram.record(start.elapsed());
        },
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn entry(next_update: SystemTime) -> CachedResponse {
        CachedResponse {
            der: Bytes::from_static(b"\x30\x03\x0a\x01\x00"),
            content_type: "application/ocsp-response",
            this_update: UNIX_EPOCH,
            next_update,
            etag: Bytes::from_static(b"\"e\""),
            last_modified_header: Bytes::from_static(b"Thu, 01 Jan 1970 00:00:00 GMT"),
            expires_header: Bytes::from_static(b"Thu, 01 Jan 1970 01:00:00 GMT"),
        }
    }

    /// The stored GET header set follows `Cache-Control`'s max-age second by second and is
    /// otherwise exactly what a freshly built response carries (HEAD and 304 are built apart).
    #[test]
    fn prebuilt_ok_headers_follow_max_age_and_match_a_fresh_build() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let r = entry(t0 + Duration::from_secs(100));
        let p = Prebuilt::new(&r);
        for (i, secs) in [0u64, 0, 1, 1, 30, 99, 100, 150].into_iter().enumerate() {
            let now = t0 + Duration::from_secs(secs) + Duration::from_millis(250);
            let resp = p.response(&r, now, false, StatusCode::OK);
            let want = cached(&r, now, false, StatusCode::OK);
            assert_eq!(resp.headers(), want.headers(), "request {i} at +{secs}s");
            let cc = resp
                .headers()
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .expect("cache-control");
            assert!(
                cc.starts_with(&format!("max-age={}, ", 99u64.saturating_sub(secs))),
                "{cc} at +{secs}s"
            );
            let head = p.response(&r, now, true, StatusCode::OK);
            assert_eq!(
                head.headers(),
                cached(&r, now, true, StatusCode::OK).headers()
            );
            assert!(head.headers().contains_key(header::CONTENT_LENGTH));
        }
    }
}
