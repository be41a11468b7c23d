//! The edge's router: a table of path prefixes → protocol handlers, per listener.
//!
//! Protocol crates (`gateways/<proto>`) stay free of I/O (STYLE.md practice 1); each contributes a
//! thin [`Handler`] here that turns an [`EdgeRequest`] into the protocol's typed request, runs the
//! pure logic, executes the decision against the core and renders the answer. Adding a protocol
//! is one [`Mount`] in [`Router::standard`]. Everything shared — tenant split, bounded body, shed,
//! deadline, metrics, and the rescue of [`EdgeError`] into problem+json (practice 7) — happens
//! once in `server.rs`, around the router.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::ca::CaCerts;
use crate::core_client::CoreClient;
use crate::error::{EdgeError, EdgeResponse};

/// Which listener a request arrived on; routes are mounted per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The HTTPS listener (ACME, EST).
    Https,
    /// The plain HTTP listener (OCSP, CRL, SCEP, CMP, AIA).
    Http,
}

/// A request as handlers see it: tenant resolved, path relative to the mount, body collected
/// within the configured limit.
#[derive(Debug)]
pub struct EdgeRequest {
    /// The tenant (`default` unless the path began `/t/{tenant}/`).
    pub tenant: String,
    /// HTTP method.
    pub method: Method,
    /// The path after the tenant prefix and the mount prefix (starts with `/` or is empty).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The listener it arrived on.
    pub listener: Listener,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The TLS client certificate chain (leaf first) rustls verified against the configured
    /// client trust anchors (`[est] client_ca_files`); `None` without one (plain HTTP, or a
    /// client that sent no certificate).
    pub peer_certs: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    /// The TLS connection's RFC 9266 `tls-exporter` value (TLS 1.3 over TCP only; `None` on
    /// TLS 1.2, HTTP/3 and plain HTTP), for EST channel binding (RFC 7030 §3.5).
    pub tls_exporter: Option<[u8; 32]>,
}

/// Shared, cheap-to-clone state handlers use: the core client and edge-local caches. Holds no
/// durable state (the edge is stateless).
#[derive(Clone)]
pub struct EdgeContext {
    /// The core.
    pub core: CoreClient,
    /// CA certificates for AIA, cached.
    pub ca: CaCerts,
}

/// A boxed handler future.
pub type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<EdgeResponse, EdgeError>> + Send + 'a>>;

/// One protocol's HTTP glue.
pub trait Handler: Send + Sync + 'static {
    /// The protocol label used in metrics (`acme`, `est`, `scep`, `cmp`, `ocsp`, `crl`, `aia`).
    fn protocol(&self) -> &'static str;
    /// Serves one request.
    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a>;
    /// The protocol's own body limit, bytes (the pipeline applies the smaller of this and the
    /// configured one). `None`: only the configured limit.
    fn max_body_bytes(&self) -> Option<usize> {
        None
    }
    /// Renders an error the shared plumbing decided (unknown tenant, shed, body too large,
    /// deadline) or the handler returned, in the protocol's own error format. The default is
    /// RFC 9457 problem+json; ACME answers an ACME problem with a fresh `Replay-Nonce`.
    fn render_error(&self, tenant: &str, err: EdgeError) -> EdgeResponse {
        let _ = tenant;
        err.into_response()
    }
    /// The tenant whose bulkhead admits a request to `path` (after the prefix) arriving for
    /// `tenant`. The default is the URL's (or Host's) tenant; a handler whose paths name another
    /// tenant (an EST label mapped to a tenant at the plain path) answers that one, so the
    /// label's tenant is isolated like `/t/{tenant}/` is (I-8).
    fn admission_tenant<'s>(&'s self, tenant: &'s str, path: &str) -> &'s str {
        let _ = path;
        tenant
    }
}

/// A handler mounted at a path prefix on some listeners.
pub struct Mount {
    /// Path prefix after the tenant prefix, e.g. `/ca/`. Matched on a `/` boundary.
    pub prefix: &'static str,
    /// Listeners serving it.
    pub listeners: &'static [Listener],
    /// The handler.
    pub handler: Arc<dyn Handler>,
}

/// The route table.
#[derive(Default)]
pub struct Router {
    mounts: Vec<Mount>,
}

impl Router {
    /// An empty router (answers 404 problem+json everywhere).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a mount; the longest matching prefix wins.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self.mounts
            .sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        self
    }

    /// The routes this edge serves today. Protocol issues add their mounts here.
    pub fn standard() -> Self {
        Self::new().mount(Mount {
            prefix: "/ca/",
            listeners: &[Listener::Http, Listener::Https],
            handler: Arc::new(crate::ca::AiaHandler),
        })
    }

    /// The handler for `path` on `listener`, and the path relative to its prefix.
    pub fn route<'p>(
        &self,
        listener: Listener,
        path: &'p str,
    ) -> Option<(&Arc<dyn Handler>, &'p str)> {
        self.mounts.iter().find_map(|m| {
            if !m.listeners.contains(&listener) {
                return None;
            }
            let rest = path.strip_prefix(m.prefix)?;
            Some((&m.handler, rest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl Handler for Named {
        fn protocol(&self) -> &'static str {
            self.0
        }
        fn handle<'a>(&'a self, _: &'a EdgeContext, _: EdgeRequest) -> HandlerFuture<'a> {
            Box::pin(async { Err(EdgeError::NotFound) })
        }
    }

    #[test]
    fn longest_prefix_wins_and_listeners_are_respected() {
        let r = Router::new()
            .mount(Mount {
                prefix: "/a/",
                listeners: &[Listener::Http],
                handler: Arc::new(Named("short")),
            })
            .mount(Mount {
                prefix: "/a/b/",
                listeners: &[Listener::Http],
                handler: Arc::new(Named("long")),
            });
        let (h, rest) = r.route(Listener::Http, "/a/b/c").expect("routed");
        assert_eq!((h.protocol(), rest), ("long", "c"));
        let (h, rest) = r.route(Listener::Http, "/a/x").expect("routed");
        assert_eq!((h.protocol(), rest), ("short", "x"));
        assert!(r.route(Listener::Https, "/a/x").is_none());
        assert!(r.route(Listener::Http, "/other").is_none());
    }

    #[test]
    fn standard_router_serves_aia_on_both_listeners() {
        let r = Router::standard();
        assert!(r.route(Listener::Http, "/ca/x.der").is_some());
        assert!(r.route(Listener::Https, "/ca/x.der").is_some());
        assert!(r.route(Listener::Http, "/acme/directory").is_none());
    }
}
