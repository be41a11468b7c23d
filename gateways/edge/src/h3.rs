//! HTTP/3 (RFC 9114) on the HTTPS listener's port number, over UDP: quinn for QUIC (RFC 9000,
//! TLS 1.3 from the same rustls configuration and certificate as HTTPS, aws-lc-rs provider) and
//! h3 for the HTTP/3 framing and QPACK. Every request goes through the same
//! [`Pipeline::serve`] as HTTP/1.1 and HTTP/2 on the HTTPS listener (the same `Pipeline`
//! instance: in-flight cap, bulkheads, tenant routing, per-protocol body limits, deadline and
//! metrics), so HTTP/3 is only a transport, never a second implementation of a protocol.
//! Routes: everything the HTTPS listener serves (ACME, EST, AIA) and, since an HTTP/3 client
//! has no plain-HTTP port to go to, the plain-HTTP routes too (OCSP, CRL, CMP, SCEP): a path
//! is routed as [`Listener::Https`] if that listener has it, otherwise as [`Listener::Http`].
//!
//! Bounds (I-8): concurrent QUIC connections are capped by a semaphore (an excess handshake is
//! refused with CONNECTION_REFUSED, not queued); streams per connection by the QUIC transport
//! parameters (the peer cannot open more); half-open handshakes, their buffered datagrams and
//! the per-stream and per-connection receive windows are bounded; idle connections close after
//! the idle timeout; request headers have the header timeout; bodies are read through the
//! pipeline's `Limited` while they stream, so an oversized upload is refused with 413 as soon
//! as it crosses the limit and the rest of the stream is stopped (`H3_NO_ERROR`, RFC 9114 §4.1).
//! Frames and QPACK are parsed by h3 and quinn; this module parses no bytes itself.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::h3::error::{Code, StreamError};
use ::h3::server::RequestStream;
use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::metrics;
use crate::router::Listener;
use crate::server::{DRAIN, PeerCerts, Pipeline, stopped};
use crate::tenant::split_tenant;

/// The `listener` label of HTTP/3 metrics (`certgate_edge_connections_open` and
/// `certgate_edge_http_requests_total`).
pub const LISTENER_LABEL: &str = "h3";

/// `[http3]`: bounds of the HTTP/3 listener (`[listen] http3 = false` turns it off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    /// QUIC connections open at once; beyond, new handshakes are refused (CONNECTION_REFUSED)
    /// and clients fall back to HTTPS over TCP. Default 1024.
    pub max_connections: usize,
    /// Request streams a client may have open at once on one connection (QUIC
    /// `initial_max_streams_bidi`). Default 64.
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long is closed (QUIC `max_idle_timeout`),
    /// milliseconds. Default 30000.
    pub idle_timeout_ms: u64,
    /// Time a client has to complete its QUIC handshake, milliseconds. Default 10000.
    pub handshake_timeout_ms: u64,
    /// Largest request header section (HTTP/3 SETTINGS_MAX_FIELD_SECTION_SIZE), bytes.
    /// Default 65536.
    pub max_header_bytes: u64,
    /// Bytes a client may have in flight on one stream (flow-control window). Default 256 KiB.
    pub stream_receive_window: u32,
    /// Bytes a client may have in flight on one connection, all streams. Default 1 MiB.
    pub connection_receive_window: u32,
    /// `ma` of the `Alt-Svc` header HTTPS responses carry, seconds. Default 86400.
    pub alt_svc_max_age_seconds: u32,
}

impl Default for Http3Config {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 64,
            idle_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_header_bytes: 64 * 1024,
            stream_receive_window: 256 * 1024,
            connection_receive_window: 1024 * 1024,
            alt_svc_max_age_seconds: 86_400,
        }
    }
}

/// Why the HTTP/3 listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    /// The TLS configuration cannot be used for QUIC (QUIC needs TLS 1.3).
    #[error("QUIC TLS configuration: {0}")]
    Tls(String),
    /// A bound is out of range.
    #[error("[http3] {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on udp {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The `Alt-Svc` value advertising HTTP/3 on `port` (RFC 7838, RFC 9114 §3.1.1).
pub fn alt_svc_value(port: u16, max_age_seconds: u32) -> http::HeaderValue {
    // Digits and ASCII only: always a valid header value.
    http::HeaderValue::try_from(format!("h3=\":{port}\"; ma={max_age_seconds}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("clear"))
}

/// The quinn server configuration: the HTTPS listener's rustls configuration (certificate,
/// optional client authentication) with ALPN `h3` and no 0-RTT, and the transport bounds.
pub fn server_config(
    mut tls: rustls::ServerConfig,
    cfg: &Http3Config,
) -> Result<quinn::ServerConfig, H3Error> {
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // 0-RTT requests are replayable; certgate's POSTs are not all idempotent.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(cfg.idle_timeout_ms))
        .map_err(|_| H3Error::Config("idle_timeout_ms out of range".into()))?;
    if cfg.max_streams_per_connection == 0 || cfg.max_connections == 0 {
        return Err(H3Error::Config(
            "max_streams_per_connection and max_connections must be at least 1".into(),
        ));
    }
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(cfg.max_streams_per_connection.into())
        // The client's control stream and its two QPACK streams, plus slack for grease.
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window(cfg.stream_receive_window.into())
        .receive_window(cfg.connection_receive_window.into())
        .send_window(u64::from(cfg.connection_receive_window) * 2)
        .datagram_receive_buffer_size(None);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(Arc::new(transport))
        // Handshakes not yet accepted and the datagrams they buffer are bounded too.
        .max_incoming(cfg.max_connections.clamp(1, 4096))
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(8 * 1024 * 1024);
    Ok(server)
}

/// Binds the UDP endpoint on `addr` (the HTTPS listener's bound address: same port number).
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> Result<quinn::Endpoint, H3Error> {
    quinn::Endpoint::server(config, addr).map_err(|source| H3Error::Bind { addr, source })
}

/// Accepts QUIC connections on `endpoint` until `shutdown` flips, serving each request through
/// `pipeline`; then drains like the TCP listeners: each connection sends GOAWAY, requests in
/// flight finish (up to [`DRAIN`]), and the endpoint closes.
pub async fn serve_h3(
    endpoint: quinn::Endpoint,
    cfg: Http3Config,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conns = Arc::new(Semaphore::new(cfg.max_connections));
    let cfg = Arc::new(cfg);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = stopped(&mut shutdown) => break,
        };
        // Under pressure (a quarter of the slots or fewer left), a client whose address is not
        // yet validated must first echo a Retry token (RFC 9000 §8.1.2): a spoofed-source flood
        // then costs one stateless packet each, not a handshake and a slot.
        if !incoming.remote_address_validated()
            && conns.available_permits().saturating_mul(4) <= cfg.max_connections
        {
            ::metrics::counter!(metrics::H3_REFUSED_TOTAL, "reason" => "retry").increment(1);
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            ::metrics::counter!(metrics::H3_REFUSED_TOTAL, "reason" => "max_connections")
                .increment(1);
            incoming.refuse();
            continue;
        };
        let pipeline = pipeline.clone();
        let cfg = cfg.clone();
        let conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => LISTENER_LABEL)
                .increment(1.0);
            if let Err(e) = serve_connection(incoming, &cfg, pipeline, conn_shutdown).await {
                debug!(listener = LISTENER_LABEL, %peer, error = %e, "QUIC connection ended with an error");
            }
            ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => LISTENER_LABEL)
                .decrement(1.0);
        });
    }
    // No new connections; open ones got GOAWAY from their own task and have DRAIN to finish.
    endpoint.set_server_config(None);
    let all = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, conns.acquire_many(all)).await;
    endpoint.close(h3_code(Code::H3_NO_ERROR), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

fn h3_code(code: Code) -> quinn::VarInt {
    quinn::VarInt::from_u64(code.value()).unwrap_or(quinn::VarInt::from_u32(0x100))
}

/// One QUIC connection: handshake (bounded in time), then one task per request stream (bounded
/// by the transport's stream limit).
async fn serve_connection(
    incoming: quinn::Incoming,
    cfg: &Http3Config,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let connecting = incoming.accept().map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_millis(cfg.handshake_timeout_ms), connecting)
        .await
        .map_err(|_| "QUIC handshake timed out".to_owned())?
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let peer = conn.remote_address();
    // The client certificate chain rustls verified (EST client authentication), as on TCP.
    let peer_certs = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .filter(|c| !c.is_empty())
        .map(|c| PeerCerts(Arc::new(*c)));
    let mut h3c: ::h3::server::Connection<h3_quinn::Connection, Bytes> = ::h3::server::builder()
        .max_field_section_size(cfg.max_header_bytes)
        .build(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| format!("HTTP/3 setup: {e}"))?;
    let header_timeout = Duration::from_millis(pipeline.limits.header_timeout_ms);
    // Request tasks of this connection (at most the stream limit run at once); on shutdown the
    // connection stays open until they finish.
    let mut requests = tokio::task::JoinSet::new();
    let spawn = |requests: &mut tokio::task::JoinSet<()>, resolver: Resolver| {
        let pipeline = pipeline.clone();
        let peer_certs = peer_certs.clone();
        requests.spawn(async move {
            match tokio::time::timeout(header_timeout, resolver.resolve_request()).await {
                Ok(Ok((req, stream))) => {
                    serve_request(&pipeline, peer, peer_certs, req, stream).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTP/3 request refused"),
                Err(_) => debug!(%peer, "HTTP/3 request headers timed out"),
            }
        });
    };
    loop {
        while requests.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = h3c.accept() => a,
            _ = stopped(&mut shutdown) => break,
        };
        match accepted {
            Ok(Some(resolver)) => spawn(&mut requests, resolver),
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    // Shutdown: GOAWAY (streams the client opens from now on are rejected by h3 and can be
    // retried elsewhere); requests already accepted finish (up to DRAIN), then the connection
    // closes with H3_NO_ERROR when `h3c` drops.
    let drain_until = tokio::time::Instant::now() + DRAIN;
    let _ = h3c.shutdown(0).await;
    let _ = tokio::time::timeout_at(drain_until, async {
        let mut accepting = true;
        loop {
            tokio::select! {
                a = h3c.accept(), if accepting => match a {
                    Ok(Some(resolver)) => spawn(&mut requests, resolver),
                    _ => accepting = false,
                },
                done = requests.join_next() => if done.is_none() { break },
            }
        }
    })
    .await;
    // A finished response may still sit in quinn's send buffer: closing now would discard it.
    // Give the client a moment to receive it and close (it has our GOAWAY), within DRAIN.
    let linger = tokio::time::Instant::now() + LINGER;
    let _ = tokio::time::timeout_at(linger.min(drain_until), conn.closed()).await;
    Ok(())
}

/// After the last response of a draining connection, how long it stays open for the client
/// to receive it and close.
const LINGER: Duration = Duration::from_secs(1);

/// A request stream whose headers have not been read yet.
type Resolver = ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// One request: the body streams into the pipeline (which bounds it), the answer goes back as
/// HEADERS + DATA.
async fn serve_request(
    pipeline: &Pipeline,
    peer: SocketAddr,
    peer_certs: Option<PeerCerts>,
    req: http::Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) {
    let (mut send, recv) = stream.split();
    let mut req = req.map(|()| H3Body {
        recv,
        finished: false,
    });
    if let Some(pc) = peer_certs {
        req.extensions_mut().insert(pc);
    }
    let listener = match split_tenant(req.uri().path()) {
        Some((_, rest))
            if pipeline.router.route(Listener::Https, rest).is_none()
                && pipeline.router.route(Listener::Http, rest).is_some() =>
        {
            Listener::Http
        }
        _ => Listener::Https,
    };
    let resp = pipeline.serve(listener, peer, req).await;
    metrics::record_http_version(http::Version::HTTP_3, LISTENER_LABEL, resp.status());
    let (mut parts, body) = resp.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 §4.2).
    for h in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ] {
        parts.headers.remove(h);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    let body = match http_body_util::BodyExt::collect(body).await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let result = async {
        send.send_response(http::Response::from_parts(parts, ()))
            .await?;
        if !body.is_empty() {
            send.send_data(body).await?;
        }
        send.finish().await
    }
    .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP/3 response not delivered");
    }
}

/// A request body read from an HTTP/3 request stream as it arrives (DATA frames), so the
/// pipeline's `Limited` sees every byte and refuses an oversized body while it is still being
/// sent. Trailers are not read (no certgate protocol uses them).
struct H3Body {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    finished: bool,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match this.recv.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut buf))) => {
                let n = buf.remaining();
                Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(n)))))
            }
            Poll::Ready(Ok(None)) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.finished = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for H3Body {
    fn drop(&mut self) {
        if !self.finished {
            // Answered before the whole body arrived (413, shed, not found): the rest is not
            // wanted (RFC 9114 §4.1 allows the response first, then H3_NO_ERROR).
            self.recv.stop_sending(Code::H3_NO_ERROR);
        }
    }
}
