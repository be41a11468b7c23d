//! certgate's OCSP (RFC 6960, RFC 5019 profile) and CRL (RFC 5280) serving logic, free of I/O.
//!
//! The edge glue hands this crate an HTTP request's parts and `now`, and gets back a
//! [`Decision`] (STYLE.md practice 1): serve these cached bytes with these headers, send this
//! constant OCSP error, or ask the core for this key. Nothing here opens a socket or reads the
//! clock. Issue 5's status path is: the core precomputes and signs every response, pushes it to
//! every edge over `WatchStatus`; the edge caches [`CachedResponse`]s and answers from them.
//!
//! Modules, in the order a request meets them:
//! - [`request`]: POST and GET decoding into a [`DecodedRequest`] (CertIDs, nonce, signed);
//! - [`index`]: the [`IssuerIndex`] (CertID issuer hashes → issuer id, per tenant) and the
//!   tenant-carrying [`CacheKey`];
//! - [`decide`](mod@decide): the front function [`decide()`] and the [`ResponseSource`] trait;
//! - [`cached`]: [`CachedResponse`] built from the core's DER (OCSP response or CRL), with
//!   `Cache-Control`, `Last-Modified`, `Expires` and `ETag`;
//! - [`memo`]: the bounded exact-request-bytes memo ([`RequestMemo`]) the glue checks before
//!   decoding, so a repeated request costs one hash probe;
//! - [`status`]: the constant error responses; [`error`]: the error enum and its one table to
//!   the OCSP `responseStatus`.
//!
//! # Policies
//!
//! - **Unknown certificate.** A CertID whose issuer hashes match no issuer of the requesting
//!   tenant is `unauthorized` (RFC 5019 §2.2.3), whatever other tenants hold (I-4). A known
//!   issuer with a serial not in the cache is a [`Decision::Miss`]: the glue asks the core once;
//!   if the core has no such certificate the answer is `unauthorized` too.
//! - **Several CertIDs.** RFC 5019 §2.1.1 clients send one CertID; RFC 6960 allows several.
//!   Every CertID must resolve to an issuer of the tenant (else `unauthorized`). The distinct
//!   certificates (deduplicated, sorted) form one [`CacheKey::OcspSet`]: a response is served
//!   only if the cache holds one signed for exactly that set; otherwise the decision is
//!   `Miss(OcspSet)`, and the glue asks the core to sign a combined response for that set (all
//!   certificates known) or answers `unauthorized` when the core cannot (some unknown, or the
//!   core does not sign combined responses yet). Single responses are never stitched together at
//!   the edge: the edge holds no key, and a response must be signed over all its
//!   SingleResponses. The number of CertIDs is bounded ([`Limits::max_cert_ids`]).
//! - **Hash algorithms.** SHA-1 and SHA-256 CertIDs. The key carries the algorithm, because
//!   clients match the response's CertID (algorithm included) against their request: the core
//!   must precompute one response per algorithm it expects, or sign on the miss.
//! - **Nonce** (RFC 9654). Noted, not echoed: precomputed responses carry none (RFC 5019 §4).
//!   An empty nonce is `malformedRequest`.
//! - **Signed requests.** The signature is ignored (RFC 5019 §2.1.2) unless
//!   [`Limits::refuse_signed`], then `unauthorized`.
//! - **Expiry.** A cached response at or past its nextUpdate is never served: it becomes a
//!   `Miss`. HTTP `max-age` runs to nextUpdate.

//!
//! # What the edge glue calls
//!
//! ```text
//! on WatchStatus OCSP push (tenant, der):
//!     let (resp, ids) = CachedResponse::ocsp_with_cert_ids(der)?;
//!     moka.insert(issuers.key_for(tenant, &ids)?, resp)          // weigher: resp.weight()
//! on WatchStatus CRL push (tenant, issuer, shard, der):
//!     let (tenant, issuer) = issuers.issuer(tenant, issuer)?;      // shared Arc<str>s
//!     moka.insert(CacheKey::Crl { tenant, issuer, shard }, CachedResponse::crl(der)?)
//! on issuer certificates (tenant, issuer id, DER):  issuers.insert(tenant, id, der)?
//! per request:  match decide(&HttpRequestParts { .. }, now, &Cache { .. }) {
//!     Serve(r)        => 200, r.der, r.content_type, r.cache_control(now), r.etag,
//!                        r.last_modified_header, r.expires_header
//!     NotModified(r)  => 304, same headers, no body
//!     Error{body,..}  => 200, application/ocsp-response, body
//!     Miss(key)       => single-flight core lookup on key → cache → Serve; not found →
//!                        OcspStatus::Unauthorized (OCSP) / 404 (CRL); core down → TryLater / 503
//!     NotFound | MethodNotAllowed{allow} | UnsupportedMediaType | PayloadTooLarge | UriTooLong
//!                     => 404 | 405 + Allow | 415 | 413 | 414
//! }
//! ```
//!
//! The path handed to [`decide()`] is the raw request path (percent-escapes intact, `//` not
//! collapsed: a base64 request may contain both) after the tenant prefix, without the query.

#![forbid(unsafe_code)]

pub mod cached;
pub mod decide;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod memo;
pub mod request;
pub mod status;

pub use cached::{CRL_CONTENT_TYPE, CacheControl, CachedResponse, OCSP_RESPONSE_CONTENT_TYPE};
pub use decide::{Cache, Decision, HttpRequestParts, ResponseSource, decide, parse_crl_path};
pub use error::Error;
pub use index::{CacheKey, CertKey, CrlShard, HashAlg, IssuerIndex, Serial};
pub use memo::{RequestMemo, Transport};
pub use request::{
    DecodedRequest, Limits, REQUEST_CONTENT_TYPE, decode_der, decode_get, decode_post,
};
pub use status::OcspStatus;
