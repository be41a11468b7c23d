//! The plain HTTP listener on one single-threaded runtime per core (`[listen] http_threads`,
//! `certgate_edge::workers`): both runtimes accept and serve, a connection stays on its runtime,
//! shutdown drains the requests in flight on every runtime, and the connection cap is shared.

use std::sync::Arc;
use std::time::Duration;

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

/// Answers with the name of the thread that served the request, once `gate` lets it.
struct ThreadName {
    gate: Arc<Semaphore>,
}

impl Handler for ThreadName {
    fn protocol(&self) -> &'static str {
        "ocsp"
    }
    fn handle<'a>(&'a self, _: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            if req.path.starts_with("slow") {
                let _p = self.gate.acquire().await.map_err(|_| EdgeError::Timeout)?;
            }
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            Ok(http::Response::new(Full::new(Bytes::from(name))))
        })
    }
}

struct Edge {
    addr: std::net::SocketAddr,
    gate: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn edge(threads: usize, max_connections: usize) -> Edge {
    let gate = Arc::new(Semaphore::new(0));
    let router = Router::new().mount(Mount {
        prefix: "/w/",
        listeners: &[Listener::Http],
        handler: Arc::new(ThreadName { gate: gate.clone() }),
    });
    let pipeline = Arc::new(Pipeline {
        router,
        ctx: EdgeContext {
            // Never called by the test handler; the channel connects lazily.
            core: CoreClient::unix("/nonexistent/core.sock", Duration::from_secs(1)),
            ca: CaCerts::new(4, Duration::from_secs(1)),
        },
        limits: Limits {
            max_connections,
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
    let workers = HttpWorkers::start(threads).expect("start serving threads");
    assert_eq!(workers.threads(), threads);
    let task = tokio::spawn(async move {
        workers.serve(tcp, Listener::Http, pipeline, rx).await;
    });
    Edge {
        addr,
        gate,
        stop,
        task,
    }
}

/// Sends one keep-alive GET (the path is under the test mount) without reading the answer.
async fn send(s: &mut TcpStream, path: &str) {
    s.write_all(format!("GET /w/{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
}

/// Reads one response (headers and a `Content-Length` body); returns (head, body).
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if raw.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).to_string();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("response within 20 s")
            .expect("read");
        assert!(n > 0, "connection closed before a whole response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
}

async fn get(s: &mut TcpStream, path: &str) -> (String, String) {
    send(s, path).await;
    read_response(s).await
}

#[tokio::test]
async fn two_runtimes_both_accept_and_serve_and_a_connection_stays_on_its_runtime() {
    let e = edge(2, 64).await;
    let mut a = TcpStream::connect(e.addr).await.expect("connect a");
    let (head, first_a) = get(&mut a, "fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // `a` is open, so the fewest-connections choice puts `b` on the other runtime.
    let mut b = TcpStream::connect(e.addr).await.expect("connect b");
    let (head, first_b) = get(&mut b, "fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(first_a.starts_with("certgate-http-"), "{first_a}");
    assert!(first_b.starts_with("certgate-http-"), "{first_b}");
    assert_ne!(first_a, first_b, "both runtimes serve");
    for _ in 0..5 {
        assert_eq!(get(&mut a, "fast").await.1, first_a);
        assert_eq!(get(&mut b, "fast").await.1, first_b);
    }
    e.stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(20), e.task)
        .await
        .expect("listener drained")
        .expect("listener task");
}

#[tokio::test]
async fn shutdown_drains_the_requests_in_flight_on_both_runtimes() {
    let e = edge(2, 64).await;
    let mut a = TcpStream::connect(e.addr).await.expect("connect a");
    let (_, name_a) = get(&mut a, "fast").await;
    let mut b = TcpStream::connect(e.addr).await.expect("connect b");
    let (_, name_b) = get(&mut b, "fast").await;
    assert_ne!(name_a, name_b, "one connection per runtime");
    // One request held in each runtime's handler.
    send(&mut a, "slow").await;
    send(&mut b, "slow").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.stop.send(true).expect("stop");
    // The listener stops accepting: new connections are refused once the acceptor has left.
    let refused = async {
        loop {
            match TcpStream::connect(e.addr).await {
                Err(_) => return,
                Ok(c) => drop(c),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), refused)
        .await
        .expect("listener closed after shutdown");
    assert!(!e.task.is_finished(), "still draining two requests");
    e.gate.add_permits(2);
    for (s, name) in [(&mut a, &name_a), (&mut b, &name_b)] {
        let (head, body) = read_response(s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(&body, name, "answered on the runtime that held it");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .await
            .expect("closed after the answer");
        assert!(rest.is_empty());
    }
    tokio::time::timeout(Duration::from_secs(20), e.task)
        .await
        .expect("listener drained")
        .expect("listener task");
}

#[tokio::test]
async fn the_connection_cap_is_shared_by_the_runtimes() {
    let e = edge(2, 1).await;
    let mut a = TcpStream::connect(e.addr).await.expect("connect a");
    send(&mut a, "slow").await;
    // The second connection waits in the kernel backlog while the first is open, whichever
    // runtime would serve it.
    let mut b = TcpStream::connect(e.addr).await.expect("connect b");
    send(&mut b, "fast").await;
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.read(&mut buf))
            .await
            .is_err(),
        "no answer beyond the cap"
    );
    e.gate.add_permits(1);
    let (head, _) = read_response(&mut a).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    drop(a);
    let (head, _) = read_response(&mut b).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    e.stop.send(true).expect("stop");
}
