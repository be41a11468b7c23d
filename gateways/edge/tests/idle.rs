//! Slowloris and idle keep-alive protection on the TCP listeners (per-connection watchdog,
//! `server/idle.rs`, instead of hyper's per-request header timer): a client that never
//! completes a request head, and an idle keep-alive connection, are closed after
//! `header_timeout_ms` (at most 1.5 ×); a request in service keeps its connection open however
//! long it runs. Both the per-core runtimes (`workers`) and the shared-runtime listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::error::EdgeError;
use certgate_edge::permits::Permits;
use certgate_edge::router::{
    EdgeContext, EdgeRequest, Handler, HandlerFuture, Listener, Mount, Router,
};
use certgate_edge::server::Pipeline;
use certgate_edge::workers::HttpWorkers;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

const HEADER_TIMEOUT: Duration = Duration::from_millis(600);

/// Answers `ok`; `slow` waits for the gate first.
struct Gated {
    gate: Arc<Semaphore>,
}

impl Handler for Gated {
    fn protocol(&self) -> &'static str {
        "ocsp"
    }
    fn handle<'a>(&'a self, _: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            if req.path.starts_with("/slow") {
                let _p = self.gate.acquire().await.map_err(|_| EdgeError::Timeout)?;
            }
            Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    PerCoreRuntimes,
    SharedRuntime,
}

struct Edge {
    addr: std::net::SocketAddr,
    gate: Arc<Semaphore>,
    _stop: watch::Sender<bool>,
}

async fn edge(mode: Mode) -> Edge {
    let gate = Arc::new(Semaphore::new(0));
    let router = Router::new().mount(Mount {
        prefix: "/w",
        listeners: &[Listener::Http],
        handler: Arc::new(Gated { gate: gate.clone() }),
    });
    let pipeline = Arc::new(Pipeline {
        router,
        ctx: EdgeContext {
            // Never called by the test handler; the channel connects lazily.
            core: CoreClient::unix("/nonexistent/core.sock", Duration::from_secs(1)),
            ca: CaCerts::new(4, Duration::from_secs(1)),
        },
        limits: Limits {
            header_timeout_ms: HEADER_TIMEOUT.as_millis() as u64,
            // Far beyond the test: a slow request is bounded by the gate, not the deadline.
            request_timeout_ms: 120_000,
            ..Limits::default()
        },
        in_flight: Permits::new(100),
        guard: Default::default(),
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (stop, rx) = watch::channel(false);
    match mode {
        Mode::PerCoreRuntimes => {
            let workers = HttpWorkers::start(2).expect("start serving threads");
            tokio::spawn(async move {
                workers.serve(tcp, Listener::Http, pipeline, rx).await;
            });
        }
        Mode::SharedRuntime => {
            tokio::spawn(certgate_edge::server::serve_listener(
                tcp,
                Listener::Http,
                None,
                pipeline,
                rx,
            ));
        }
    }
    Edge {
        addr,
        gate,
        _stop: stop,
    }
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent. Panics
/// if it stays open for a minute.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
            Err(_) => panic!("still open after a minute; read so far: {got:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one whole response head + 2-byte body.
async fn response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
            .await
            .expect("a response within a minute")
            .expect("read");
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn slowloris_is_closed(mode: Mode) {
    let e = edge(mode).await;
    let mut s = TcpStream::connect(e.addr).await.expect("connect");
    let start = Instant::now();
    s.write_all(b"GET /w/x HTTP/1.1\r\nHo")
        .await
        .expect("write");
    // Trickle the head, a byte every 50 ms, never finishing it.
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await {
            Err(_) => panic!("{mode:?}: a trickled head kept the connection a minute"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
    trickle.abort();
    assert!(
        start.elapsed() >= HEADER_TIMEOUT,
        "{mode:?}: closed before the header timeout: {:?}",
        start.elapsed()
    );
}

async fn idle_keep_alive_is_closed_but_a_request_in_service_is_not(mode: Mode) {
    let e = edge(mode).await;
    let mut s = TcpStream::connect(e.addr).await.expect("connect");
    // A request in service for 5 header timeouts: the connection stays open, then answers.
    s.write_all(b"GET /w/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(HEADER_TIMEOUT * 5).await;
    e.gate.add_permits(1);
    let r = response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{mode:?}: {r}");
    // Idle afterwards (keep-alive, no next request): closed, not before the timeout.
    let idle_from = Instant::now();
    let rest = until_closed(&mut s).await;
    assert!(rest.is_empty(), "{mode:?}: nothing more was sent: {rest:?}");
    assert!(
        idle_from.elapsed() >= HEADER_TIMEOUT,
        "{mode:?}: closed an idle connection early: {:?}",
        idle_from.elapsed()
    );
    // A connection that never sends anything is closed as well.
    let mut silent = TcpStream::connect(e.addr).await.expect("connect");
    assert!(until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn per_core_runtimes_close_a_slowloris_head() {
    slowloris_is_closed(Mode::PerCoreRuntimes).await;
}

#[tokio::test]
async fn shared_runtime_closes_a_slowloris_head() {
    slowloris_is_closed(Mode::SharedRuntime).await;
}

#[tokio::test]
async fn per_core_runtimes_close_idle_keep_alive_but_not_a_request_in_service() {
    idle_keep_alive_is_closed_but_a_request_in_service_is_not(Mode::PerCoreRuntimes).await;
}

#[tokio::test]
async fn shared_runtime_closes_idle_keep_alive_but_not_a_request_in_service() {
    idle_keep_alive_is_closed_but_a_request_in_service_is_not(Mode::SharedRuntime).await;
}
