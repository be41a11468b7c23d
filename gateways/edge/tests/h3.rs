//! The HTTP/3 listener in process: a real quinn endpoint on loopback UDP with a certificate
//! made by OpenSSL, the real [`Pipeline`], a slow test handler, and the quinn + h3 test client
//! of `tests/src/h3client.rs`. Checks the bounds that the end-to-end tests cannot see: the
//! per-connection stream limit, the header timeout, and a drain that lets a request in flight
//! finish.

#[path = "../../../tests/src/h3client.rs"]
#[allow(dead_code)]
mod h3client;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::error::{EdgeError, EdgeResponse};
use certgate_edge::h3::{Http3Config, bind, serve_h3, server_config};
use certgate_edge::permits::Permits;
use certgate_edge::router::{
    EdgeContext, EdgeRequest, Handler, HandlerFuture, Listener, Mount, Router,
};
use certgate_edge::server::{Pipeline, tls_config};
use h3client::H3Client;
use tokio::sync::watch;

/// Sleeps `delay`, counting how many requests are inside at once.
struct Slow {
    delay: Duration,
    inside: AtomicUsize,
    peak: AtomicUsize,
}

impl Handler for Slow {
    fn protocol(&self) -> &'static str {
        "test"
    }
    fn handle<'a>(&'a self, _: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inside.fetch_sub(1, Ordering::SeqCst);
            if req.path == "fail" {
                return Err(EdgeError::NotFound);
            }
            let mut resp = EdgeResponse::new(http_body_util::Full::new(Bytes::from(format!(
                "{} {}",
                req.method, req.path
            ))));
            *resp.status_mut() = http::StatusCode::OK;
            Ok(resp)
        })
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a P-256 server certificate for 127.0.0.1 it issued, made by the openssl CLI;
/// (CA cert, server chain, server key) PEM.
fn cert(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(p256);
    ca.extend([
        "-subj",
        "/CN=h3 test CA",
        "-days",
        "1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new"];
    csr.extend(p256);
    csr.extend([
        "-subj",
        "/CN=h3 test",
        "-keyout",
        "key.pem",
        "-out",
        "srv.csr",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1",
            "-extfile", "ext.cnf", "-out", "cert.pem",
        ],
    );
    (
        std::fs::read(dir.join("ca.pem")).expect("ca"),
        std::fs::read(dir.join("cert.pem")).expect("cert"),
        std::fs::read(dir.join("key.pem")).expect("key"),
    )
}

struct Server {
    addr: SocketAddr,
    root: Vec<u8>,
    slow: Arc<Slow>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn server(cfg: Http3Config, delay: Duration, limits: Limits) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, cert_pem, key_pem) = cert(dir.path());
    let slow = Arc::new(Slow {
        delay,
        inside: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let pipeline = Arc::new(Pipeline {
        router: Router::new().mount(Mount {
            prefix: "/slow/",
            listeners: &[Listener::Https],
            handler: slow.clone(),
        }),
        ctx: EdgeContext {
            core: CoreClient::unix(dir.path().join("no-core.sock"), Duration::from_secs(1)),
            ca: CaCerts::new(4, Duration::from_secs(60)),
        },
        limits,
        in_flight: Permits::new(64),
        guard: Default::default(),
    });
    let tls = tls_config(&cert_pem, &key_pem).expect("tls config");
    let endpoint = bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        server_config(tls, &cfg).expect("quic config"),
    )
    .expect("bind udp");
    let addr = endpoint.local_addr().expect("addr");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve_h3(endpoint, cfg, pipeline, rx));
    Server {
        addr,
        root: ca_pem,
        slow,
        stop,
        task,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped_and_excess_requests_wait_for_a_slot() {
    let cfg = Http3Config {
        max_streams_per_connection: 2,
        ..Http3Config::default()
    };
    let s = server(cfg, Duration::from_millis(300), Limits::default()).await;
    let c = H3Client::connect(s.addr, "127.0.0.1", &s.root)
        .await
        .expect("connect");
    let start = Instant::now();
    let results = futures::future::join_all((0..6).map(|i| {
        let c = &c;
        async move { c.get(&format!("/slow/{i}")).await }
    }))
    .await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8_lossy(&r.body), format!("GET {i}"));
    }
    let peak = s.slow.peak.load(Ordering::SeqCst);
    assert_eq!(peak, 2, "requests in the handler at once on one connection");
    // Six 300 ms requests, two at a time: at least three rounds.
    assert!(
        start.elapsed() >= Duration::from_millis(850),
        "{:?}",
        start.elapsed()
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish_then_refuses_new_connections() {
    let s = server(
        Http3Config::default(),
        Duration::from_millis(800),
        Limits::default(),
    )
    .await;
    let c = H3Client::connect(s.addr, "127.0.0.1", &s.root)
        .await
        .expect("connect");
    let in_flight = tokio::spawn(async move {
        let r = c.get("/slow/last").await;
        (c, r)
    });
    // Wait until the request has reached the handler (it then sleeps 800 ms there) instead of a
    // fixed 200 ms, which a loaded machine may not give the request to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.slow.peak.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.slow.inside.load(Ordering::SeqCst), 1);
    let stopped_at = Instant::now();
    s.stop.send(true).expect("stop");
    let (c, r) = in_flight.await.expect("request task");
    let r = r.expect("the request in flight is answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"GET last");
    tokio::time::timeout(Duration::from_secs(8), s.task)
        .await
        .expect("listener stops within the drain time")
        .expect("listener task");
    assert!(stopped_at.elapsed() < Duration::from_secs(7));
    // The endpoint is closed: nothing answers (a timeout) or the connection is refused.
    let again = tokio::time::timeout(
        Duration::from_secs(3),
        H3Client::connect(s.addr, "127.0.0.1", &s.root),
    )
    .await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "a new connection after shutdown"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_finishes_its_headers_is_reset_after_the_header_timeout() {
    let limits = Limits {
        header_timeout_ms: 300,
        ..Limits::default()
    };
    let s = server(Http3Config::default(), Duration::from_millis(10), limits).await;
    // Raw QUIC with ALPN h3: a request stream carrying the start of a HEADERS frame that
    // announces 100 bytes and sends 2.
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("client endpoint");
    endpoint.set_default_client_config(h3client::client_config(&s.root).expect("client config"));
    let conn = endpoint
        .connect(s.addr, "127.0.0.1")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[0x01, 0x40, 0x64, 0x00, 0x00])
        .await
        .expect("partial HEADERS");
    let start = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
    let waited = start.elapsed();
    match outcome {
        Ok(Err(_)) | Ok(Ok(_)) => {}
        Err(_) => panic!("the server kept the stream open past its header timeout"),
    }
    assert!(
        waited >= Duration::from_millis(200),
        "closed before the timeout: {waited:?}"
    );
    // The connection itself still serves a real request afterwards.
    let c = H3Client::connect(s.addr, "127.0.0.1", &s.root)
        .await
        .expect("connect");
    assert_eq!(c.get("/slow/ok").await.expect("served").status, 200);
    c.close().await;
    conn.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_connection_cap_clients_validate_their_address_with_retry_then_the_cap_refuses() {
    let handle = certgate_edge::metrics::install().expect("metrics recorder");
    let cfg = Http3Config {
        max_connections: 4,
        ..Http3Config::default()
    };
    let s = server(cfg, Duration::from_millis(1), Limits::default()).await;
    let mut held = Vec::new();
    for i in 0..4 {
        // The fourth arrives with one slot left: it gets a Retry, echoes the token (quinn's
        // client does this by itself) and is served.
        let c = H3Client::connect(s.addr, "127.0.0.1", &s.root)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(c.get("/slow/x").await.expect("served").status, 200);
        held.push(c);
    }
    let text = handle.render();
    assert_eq!(refused(&text, "retry").as_deref(), Some("1"), "{text}");
    assert_eq!(refused(&text, "max_connections"), None, "{text}");
    // The fifth: Retry again, then refused at the cap.
    let fifth = H3Client::connect(s.addr, "127.0.0.1", &s.root).await;
    let err = fifth.err().expect("refused at the cap");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    let text = handle.render();
    assert_eq!(refused(&text, "retry").as_deref(), Some("2"), "{text}");
    assert_eq!(
        refused(&text, "max_connections").as_deref(),
        Some("1"),
        "{text}"
    );
    for c in held {
        c.close().await;
    }
}

/// The value of `certgate_edge_h3_refused_total{reason}` in a Prometheus rendering.
fn refused(text: &str, reason: &str) -> Option<String> {
    text.lines()
        .find(|l| {
            l.starts_with("certgate_edge_h3_refused_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
}
