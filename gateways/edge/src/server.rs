//! Listeners: HTTPS (rustls, aws-lc-rs provider, ALPN h2 + http/1.1) and plain HTTP, both served
//! by hyper-util's auto builder (HTTP/1.1 and HTTP/2), and the shared request pipeline.
//!
//! Bounds (I-8): a semaphore caps open connections per listener (acquired before `accept`, so
//! excess connections wait in the kernel backlog rather than in memory); TLS handshakes and
//! header reads have timeouts; bodies are read through `http_body_util::Limited`; a lock-free
//! counter ([`crate::permits`]) caps requests in service and sheds the rest with 503 +
//! Retry-After; per-protocol and per-tenant bulkheads ([`crate::bulkhead`]) then shed what one
//! protocol or tenant would take from the others; every request has a deadline and a
//! per-protocol body limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::bulkhead::Bulkheads;
use crate::config::Limits;
use crate::error::{EdgeError, EdgeResponse};
use crate::linger::{DrainOnDrop, LingerIo};
use crate::metrics;
use crate::permits::Permits;
use crate::router::{EdgeContext, EdgeRequest, Listener, Router};
use crate::tenant::{DEFAULT_TENANT, TenantConfig, TenantDirectory, split_tenant};

pub(crate) mod idle;

/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Everything the request pipeline needs, shared by all connections of one listener.
pub struct Pipeline {
    /// Routes.
    pub router: Router,
    /// Handler context.
    pub ctx: EdgeContext,
    /// Bounds.
    pub limits: Limits,
    /// Requests in service (all protocols); beyond, 503 before routing.
    pub in_flight: Permits,
    /// Bulkheads and tenant routing.
    pub guard: Guard,
}

/// The shared admission plumbing: per-protocol and per-tenant bulkheads, the Host → tenant map,
/// and the tenant-existence check. `Guard::default()` has default-sized pools and no existence
/// check (every syntactically valid tenant is passed to the handler, which asks the core).
#[derive(Default)]
pub struct Guard {
    /// Per-protocol and per-tenant pools.
    pub bulkheads: Bulkheads,
    /// Host routing.
    pub tenant_config: TenantConfig,
    /// Which tenants exist; `None` skips the check.
    pub tenants: Option<TenantDirectory>,
}

impl Pipeline {
    /// Serves one request end to end; never fails (errors become the protocol's error document
    /// here, the single rescue point).
    ///
    /// Generic over the body so HTTP/3 request streams ([`crate::h3`]) go through the same
    /// bounded read as hyper's `Incoming`.
    pub async fn serve<B>(
        &self,
        listener: Listener,
        peer: SocketAddr,
        req: Request<B>,
    ) -> EdgeResponse
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        // Path and tenant are borrowed from the request's URI (no copies per request).
        let path = parts.uri.path();
        let Some((mut tenant, rest)) = split_tenant(path) else {
            let e = EdgeError::Malformed("invalid tenant name".into());
            metrics::record("edge", "invalid", e.outcome(), start.elapsed());
            return e.into_response();
        };
        if tenant == DEFAULT_TENANT && !path.starts_with("/t/") {
            let host = parts
                .uri
                .host()
                .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok());
            if let Some(t) = self.guard.tenant_config.tenant_for_host(host) {
                tenant = t;
            }
        }
        let Some((handler, sub)) = self.router.route(listener, rest) else {
            metrics::record(
                "none",
                "unknown",
                EdgeError::NotFound.outcome(),
                start.elapsed(),
            );
            return EdgeError::NotFound.into_response();
        };
        let protocol = handler.protocol();

        let Some(_permit) = self.in_flight.try_acquire() else {
            metrics::record_shed(protocol, "unknown", "listener");
            metrics::record(protocol, "unknown", "shed", start.elapsed());
            return handler.render_error(tenant, EdgeError::Overloaded);
        };
        // An unknown tenant is a 404 that names nothing else; a core that cannot say lets the
        // request through (the handler's own core calls carry the tenant and fail the same way).
        if tenant != DEFAULT_TENANT
            && let Some(dir) = &self.guard.tenants
            // Boxed: the lookup's future (moka + a core RPC) is kilobytes, and inlined it would
            // make every request's future that large, copied by hyper on each request.
            && let Ok(None) = Box::pin(dir.lookup(tenant)).await
        {
            metrics::record(protocol, "unknown", "not_found", start.elapsed());
            return handler.render_error(tenant, EdgeError::NotFound);
        }
        let admitted_as = handler.admission_tenant(tenant, sub);
        let _admission = match self.guard.bulkheads.admit(protocol, admitted_as) {
            Ok(a) => a,
            Err(pool) => {
                metrics::record_shed(protocol, admitted_as, pool.label());
                metrics::record(protocol, admitted_as, "shed", start.elapsed());
                return handler.render_error(tenant, EdgeError::Overloaded);
            }
        };
        let max_body = self
            .limits
            .protocol_max_body_bytes
            .get(protocol)
            .copied()
            .unwrap_or(self.limits.max_body_bytes)
            .min(handler.max_body_bytes().unwrap_or(usize::MAX));
        // A declared length over the limit is refused before a byte of the body is read (and
        // without `100 Continue`): the client learns at once, the upload is never buffered.
        let declared_too_large =
            !body.is_end_stream() && declared_length(&parts.headers, &body) > max_body as u64;
        let deadline = Duration::from_millis(self.limits.request_timeout_ms);
        let peer_certs = parts.extensions.get::<PeerCerts>().map(|p| p.0.clone());
        let tls_exporter = parts.extensions.get::<TlsExporter>().map(|e| e.0);
        let mut edge_req = EdgeRequest {
            peer_certs,
            tls_exporter,
            tenant: tenant.to_owned(),
            method: parts.method,
            path: sub.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body: bytes::Bytes::new(),
            listener,
            peer,
        };
        let work = async {
            if declared_too_large {
                return Err(EdgeError::BodyTooLarge);
            }
            edge_req.body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|_| EdgeError::BodyTooLarge)?
                .to_bytes();
            handler.handle(&self.ctx, edge_req).await
        };
        tokio::pin!(work);
        // A request answered on its first poll (a cached OCSP GET, an AIA hit) never reaches
        // the timer: the deadline's clock read, runtime-handle lookup and timer entry are set up
        // only for work that actually waits.
        let result = match futures::poll!(work.as_mut()) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::time::timeout(deadline, work)
                .await
                .unwrap_or(Err(EdgeError::Timeout)),
        };
        match result {
            Ok(resp) => {
                let outcome = if resp.status().is_success() || resp.status().is_redirection() {
                    "ok"
                } else if resp.status().is_client_error() {
                    "client_error"
                } else {
                    "error"
                };
                let endpoint = resp
                    .extensions()
                    .get::<metrics::Endpoint>()
                    .map_or("other", |e| e.0);
                metrics::record_endpoint(protocol, tenant, endpoint, outcome, start.elapsed());
                resp
            }
            Err(e) => {
                debug!(protocol, tenant = %tenant, error = %e, "request refused");
                metrics::record(protocol, tenant, e.outcome(), start.elapsed());
                handler.render_error(tenant, e)
            }
        }
    }
}

/// The body length the request declares: its `Content-Length` (HTTP/1.1, HTTP/2 and HTTP/3
/// alike), or the body's own lower size bound; 0 when neither says.
fn declared_length<B: hyper::body::Body>(headers: &http::HeaderMap, body: &B) -> u64 {
    let header = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    header.max(body.size_hint().lower())
}

/// The verified TLS client certificate chain of a connection (leaf first), when the client
/// sent one; a request extension between the listener and [`Pipeline::serve`].
#[derive(Clone, Debug)]
pub struct PeerCerts(pub Arc<Vec<rustls_pki_types::CertificateDer<'static>>>);

/// The connection's RFC 9266 `tls-exporter` channel binding (TLS 1.3 only: label
/// `EXPORTER-Channel-Binding`, empty context, 32 bytes); a request extension like [`PeerCerts`].
/// EST checks it against the CSR's challengePassword (RFC 7030 §3.5).
#[derive(Clone, Copy, Debug)]
pub struct TlsExporter(pub [u8; 32]);

/// RFC 9266 §2: the exporter label of `tls-exporter`.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The HTTPS server configuration: aws-lc-rs provider, TLS 1.2/1.3, ALPN h2 and http/1.1.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    tls_config_with_client_anchors(cert_pem, key_pem, &[])
}

/// [`tls_config`] with OPTIONAL client authentication when `client_anchors_pem` (PEM bundles)
/// is not empty: a client certificate, if sent, must chain to one of the anchors (EST: an
/// IDevID CA, this CA's root for re-enrollment); clients that send none (ACME, curl) are served
/// as before.
pub fn tls_config_with_client_anchors(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_anchors_pem: &[Vec<u8>],
) -> Result<rustls::ServerConfig, String> {
    let certs = certgate_proto::transport::certs_from_pem(cert_pem).map_err(|e| e.to_string())?;
    let key = certgate_proto::transport::key_from_pem(key_pem).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if client_anchors_pem.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for pem in client_anchors_pem {
            for c in certgate_proto::transport::certs_from_pem(pem).map_err(|e| e.to_string())? {
                roots
                    .add(c)
                    .map_err(|e| format!("client trust anchor: {e}"))?;
            }
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client verifier: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

pub(crate) fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let _ = limits;
    // No per-request header timer: the connection's idle watchdog ([`idle`]) bounds the time
    // to a complete request head (and idle keep-alive) per connection, `header_timeout_ms`.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024);
    b
}

/// Accepts connections on `listener` until `shutdown` flips, serving each through `pipeline`,
/// then drains: open connections finish their requests (up to [`DRAIN`]). With `tls`,
/// connections are TLS-terminated first.
pub async fn serve_listener(
    tcp: TcpListener,
    which: Listener,
    tls: Option<TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    shutdown: watch::Receiver<bool>,
) {
    serve_listener_with(tcp, which, tls, pipeline, shutdown, None).await;
}

/// [`serve_listener`] that adds `alt_svc` as an `Alt-Svc` header to every response (the HTTPS
/// listener advertising HTTP/3 on the same port, [`crate::h3`]).
pub async fn serve_listener_with(
    tcp: TcpListener,
    which: Listener,
    tls: Option<TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
    alt_svc: Option<http::HeaderValue>,
) {
    let conns = Arc::new(Semaphore::new(pipeline.limits.max_connections));
    let label = match which {
        Listener::Https => "https",
        Listener::Http => "http",
    };
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(listener = label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let pipeline = pipeline.clone();
        let tls = tls.clone();
        let alt_svc = alt_svc.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The permit travels with the socket: a connection closed while its client is still
            // sending lingers (linger.rs) and keeps counting against the cap until really closed.
            let stream = LingerIo::new(stream, Some(permit));
            ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => label).increment(1.0);
            let b = builder(&pipeline.limits);
            // The client certificate chain rustls verified (optional client auth, EST), handed
            // to every request of the connection as an extension.
            let mut peer_certs: Option<PeerCerts> = None;
            let mut tls_exporter: Option<TlsExporter> = None;
            let io: Result<Box<dyn Io>, String> = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            peer_certs = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .filter(|c| !c.is_empty())
                                .map(|c| PeerCerts(Arc::new(c.to_vec())));
                            // TLS 1.2 has no tls-exporter binding without extended master
                            // secret checks (RFC 9266 §3) and rustls offers no tls-unique:
                            // those connections carry none.
                            let conn = s.get_ref().1;
                            if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                                tls_exporter = conn
                                    .export_keying_material(
                                        [0u8; 32],
                                        TLS_EXPORTER_LABEL,
                                        Some(&[]),
                                    )
                                    .ok()
                                    .map(TlsExporter);
                            }
                            Ok(Box::new(s))
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
                None => Ok(Box::new(stream)),
            };
            let activity = Arc::new(idle::Activity::default());
            let idle_after = Duration::from_millis(pipeline.limits.header_timeout_ms);
            let act = activity.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let busy = act.begin();
                let pipeline = pipeline.clone();
                if let Some(pc) = &peer_certs {
                    req.extensions_mut().insert(pc.clone());
                }
                if let Some(e) = tls_exporter {
                    req.extensions_mut().insert(e);
                }
                let alt_svc = alt_svc.clone();
                async move {
                    let _busy = busy;
                    let version = req.version();
                    // HTTP/2 bodies left unread by an early answer are drained (linger.rs).
                    let h2 = version == http::Version::HTTP_2;
                    let req = req.map(|b| DrainOnDrop::new(b, h2));
                    let mut resp = pipeline.serve(which, peer, req).await;
                    metrics::record_http_version(version, label, resp.status());
                    if let Some(v) = alt_svc {
                        resp.headers_mut().insert(http::header::ALT_SVC, v);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let result = match io {
                Ok(io) => {
                    let io = idle::Watched::new(io, activity.clone());
                    let conn = b.serve_connection(TokioIo::new(io), svc);
                    tokio::pin!(conn);
                    // Shutdown first: a handler finishing in the same poll as the shutdown
                    // still answers with `connection: close` / after GOAWAY. On shutdown:
                    // finish the requests in flight, accept no new ones on this connection
                    // (HTTP/2 GOAWAY, HTTP/1.1 close after the response).
                    match idle::serve(
                        conn.as_mut(),
                        |c| c.graceful_shutdown(),
                        &mut conn_shutdown,
                        &activity,
                        idle_after,
                    )
                    .await
                    {
                        idle::Ended::Done(r) => r.map_err(|e| e.to_string()),
                        idle::Ended::Idle => {
                            debug!(listener = label, %peer, "closed: no request head in time");
                            Ok(())
                        }
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                debug!(listener = label, %peer, error = %e, "connection ended with an error");
            }
            ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => label).decrement(1.0);
        });
    }
    // Stop accepting (the listener closes here), then give open connections DRAIN to finish.
    drop(tcp);
    let all = u32::try_from(pipeline.limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, conns.acquire_many(all)).await;
}

/// Any connection the servers accept (TCP or TLS over TCP).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Resolves once `shutdown` is true (at once if it already is).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
