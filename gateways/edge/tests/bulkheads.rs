//! The shared plumbing through a real HTTP listener with test handlers: a saturated protocol
//! pool sheds that protocol only (503 + Retry-After, rendered by the protocol's handler) while
//! another protocol keeps answering; tenant pools likewise; per-protocol body limits (413).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use certgate_edge::bulkhead::{BulkheadConfig, Bulkheads};
use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::error::{EdgeError, EdgeResponse};
use certgate_edge::permits::Permits;
use certgate_edge::router::{
    EdgeContext, EdgeRequest, Handler, HandlerFuture, Listener, Mount, Router,
};
use certgate_edge::server::{Guard, Pipeline, serve_listener};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

/// Answers 200 with the body length once `gate` lets it (the gate is closed for "slow" tests).
struct TestHandler {
    protocol: &'static str,
    gate: Arc<Semaphore>,
    /// Requests that reached the handler (past the bulkhead), counted before the gate.
    entered: Arc<AtomicUsize>,
}

impl Handler for TestHandler {
    fn protocol(&self) -> &'static str {
        self.protocol
    }
    fn handle<'a>(&'a self, _: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _p = self.gate.acquire().await.map_err(|_| EdgeError::Timeout)?;
            let body = format!("{} {} {}", self.protocol, req.tenant, req.body.len());
            Ok(http::Response::new(Full::new(Bytes::from(body))))
        })
    }
    fn render_error(&self, _tenant: &str, err: EdgeError) -> EdgeResponse {
        // A protocol-specific rendering: the pipeline must hand refusals to the handler.
        let mut r = err.into_response();
        r.headers_mut().insert(
            "x-rendered-by",
            http::HeaderValue::from_static(self.protocol),
        );
        r
    }
}

/// A [`TestHandler`] whose paths `routers/…` belong to tenant `acme-corp` (as an EST label
/// mapped to a tenant at the plain path).
struct LabelHandler(TestHandler);

impl Handler for LabelHandler {
    fn protocol(&self) -> &'static str {
        self.0.protocol()
    }
    fn handle<'a>(&'a self, ctx: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        self.0.handle(ctx, req)
    }
    fn admission_tenant<'s>(&'s self, tenant: &'s str, path: &str) -> &'s str {
        if path.starts_with("routers/") {
            "acme-corp"
        } else {
            tenant
        }
    }
}

struct Edge {
    addr: std::net::SocketAddr,
    slow_gate: Arc<Semaphore>,
    slow_entered: Arc<AtomicUsize>,
    _stop: watch::Sender<bool>,
}

async fn edge() -> Edge {
    let slow_gate = Arc::new(Semaphore::new(0));
    let slow_entered = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .mount(Mount {
            prefix: "/slow/",
            listeners: &[Listener::Http],
            handler: Arc::new(TestHandler {
                protocol: "ocsp",
                gate: slow_gate.clone(),
                entered: slow_entered.clone(),
            }),
        })
        .mount(Mount {
            prefix: "/slow2/",
            listeners: &[Listener::Http],
            handler: Arc::new(TestHandler {
                protocol: "est",
                gate: slow_gate.clone(),
                entered: slow_entered.clone(),
            }),
        })
        .mount(Mount {
            prefix: "/lab/",
            listeners: &[Listener::Http],
            handler: Arc::new(LabelHandler(TestHandler {
                protocol: "est",
                gate: slow_gate.clone(),
                entered: slow_entered.clone(),
            })),
        })
        .mount(Mount {
            prefix: "/fast/",
            listeners: &[Listener::Http],
            handler: Arc::new(TestHandler {
                protocol: "acme",
                gate: Arc::new(Semaphore::new(1000)),
                entered: Arc::new(AtomicUsize::new(0)),
            }),
        });
    let limits = Limits {
        protocol_max_body_bytes: BTreeMap::from([("acme".to_owned(), 100)]),
        ..Limits::default()
    };
    let pipeline = Arc::new(Pipeline {
        router,
        ctx: EdgeContext {
            // Never called by the test handlers; the channel connects lazily.
            core: CoreClient::unix("/nonexistent/core.sock", Duration::from_secs(1)),
            ca: CaCerts::new(4, Duration::from_secs(1)),
        },
        limits,
        in_flight: Permits::new(100),
        guard: Guard {
            bulkheads: Bulkheads::new(BulkheadConfig {
                per_protocol: 50,
                protocols: BTreeMap::from([("ocsp".to_owned(), 3)]),
                per_tenant: 5,
                max_tenant_pools: 16,
                ..BulkheadConfig::default()
            }),
            ..Guard::default()
        },
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_listener(tcp, Listener::Http, None, pipeline, rx));
    Edge {
        addr,
        slow_gate,
        slow_entered,
        _stop: tx,
    }
}

async fn request(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Starts `n` slow requests and waits until they are all inside the handler.
async fn occupy(
    e: &Edge,
    path: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, String, String)>> {
    let before = e.slow_entered.load(Ordering::SeqCst);
    let mut held = Vec::new();
    for _ in 0..n {
        let addr = e.addr;
        held.push(tokio::spawn(async move { request(addr, path, b"").await }));
    }
    // The handler blocks on the gate; wait for all of them to be waiting there (counted, not
    // slept for: a loaded machine may take long to schedule them).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e.slow_entered.load(Ordering::SeqCst) < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} requests never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held
}

#[tokio::test]
async fn a_saturated_protocol_pool_sheds_only_that_protocol() {
    let e = edge().await;
    let held = occupy(&e, "/slow/x", 3).await;

    let (status, head, _) = request(e.addr, "/slow/x", b"").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("x-rendered-by: ocsp"), "{head}");

    // Another protocol keeps answering, at once, many times.
    for _ in 0..10 {
        let (status, head, body) = request(e.addr, "/fast/x", b"abc").await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(body, "acme default 3");
    }

    // Releasing the held requests lets them finish with 200 and frees the pool.
    e.slow_gate.add_permits(100);
    for h in held {
        let (status, head, _) = h.await.expect("join");
        assert_eq!(status, 200, "{head}");
    }
    let (status, _, _) = request(e.addr, "/slow/x", b"").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_saturated_tenant_pool_sheds_only_that_tenant() {
    let e = edge().await;
    // Tenant "busy" holds 3 ocsp (that protocol's whole pool) and 2 est: its pool of 5 is full.
    let mut held = occupy(&e, "/t/busy/slow/x", 3).await;
    held.extend(occupy(&e, "/t/busy/slow2/x", 2).await);
    let (status, head, _) = request(e.addr, "/t/busy/fast/x", b"").await;
    assert_eq!(
        status, 503,
        "busy's acme is refused by its tenant pool: {head}"
    );
    assert!(head.contains("retry-after"), "{head}");
    // Another tenant's acme and est still pass (ocsp is full for everyone: its protocol pool).
    let (status, _, body) = request(e.addr, "/t/quiet/fast/x", b"").await;
    assert_eq!((status, body.as_str()), (200, "acme quiet 0"));
    let (status, _, _) = request(e.addr, "/t/quiet/slow/x", b"").await;
    assert_eq!(status, 503, "the ocsp protocol pool is full");
    e.slow_gate.add_permits(1000);
    for h in held {
        assert_eq!(h.await.expect("join").0, 200);
    }
    let (status, _, _) = request(e.addr, "/t/busy/fast/x", b"").await;
    assert_eq!(status, 200, "busy's pool is free again");
}

#[tokio::test]
async fn per_protocol_body_limit_answers_413() {
    let e = edge().await;
    let (status, head, _) = request(e.addr, "/fast/x", &[b'a'; 100]).await;
    assert_eq!(status, 200, "{head}");
    let (status, head, _) = request(e.addr, "/fast/x", &[b'a'; 101]).await;
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("x-rendered-by: acme"), "{head}");
    // The other protocol has the global limit (1 MiB).
    e.slow_gate.add_permits(10);
    let (status, head, _) = request(e.addr, "/slow/x", &[b'a'; 5000]).await;
    assert_eq!(status, 200, "{head}");
}

#[tokio::test]
async fn a_label_mapped_to_a_tenant_at_the_plain_path_fills_that_tenants_pool_not_the_default() {
    let e = edge().await;
    // per_tenant is 5: five held requests fill acme-corp's pool, not the default tenant's.
    let held = occupy(&e, "/lab/routers/x", 5).await;
    let (status, head, _) = request(e.addr, "/lab/routers/x", b"").await;
    assert_eq!(status, 503, "acme-corp's pool is full: {head}");
    // The default tenant (same plain path, no label) still has its whole pool.
    for _ in 0..5 {
        let (status, head, body) = request(e.addr, "/fast/x", b"abc").await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(body, "acme default 3");
    }
    e.slow_gate.add_permits(100);
    for h in held {
        let (status, head, body) = h.await.expect("join");
        assert_eq!(status, 200, "{head}");
        assert_eq!(
            body, "est default 0",
            "the handler still sees the URL's tenant"
        );
    }
}
