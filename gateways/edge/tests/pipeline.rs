//! The edge's request pipeline against an in-memory fake core (practice 10): a real tonic client
//! over `tokio::io::duplex`, a real HTTP listener on a loopback port.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::permits::Permits;
use certgate_edge::router::{EdgeContext, Listener, Router};
use certgate_edge::server::{Pipeline, serve_listener};
use certgate_proto::RpcError;
use certgate_proto::core::core_server::{Core, CoreServer};
use certgate_proto::core::{
    CertificateRecord, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest, IssueRequest,
    IssueResponse, RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

const ISSUER_DER: &[u8] = b"\x30\x03\x02\x01\x01";

#[derive(Default)]
struct FakeState {
    chain_calls: AtomicUsize,
}

/// The fake core; clones share the call counter.
#[derive(Clone, Default)]
struct FakeCore(Arc<FakeState>);

type Events = Pin<Box<dyn futures::Stream<Item = Result<StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Core for FakeCore {
    async fn issue(&self, _: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        Err(RpcError::malformed("test", "not in this fake").into())
    }
    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        Err(RpcError::malformed("test", "not in this fake").into())
    }
    async fn get_certificate(
        &self,
        _: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        Err(RpcError::not_found("certificate.unknown", "no such certificate").into())
    }
    async fn get_ca_chain(
        &self,
        req: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        self.0.chain_calls.fetch_add(1, Ordering::SeqCst);
        let r = req.into_inner();
        if r.tenant == "default" && r.issuer_id == "issuing-1" {
            Ok(Response::new(GetCaChainResponse {
                issuer_id: r.issuer_id,
                chain_der: vec![ISSUER_DER.to_vec(), b"root".to_vec()],
                issuer_ids: vec!["issuing-1".into()],
            }))
        } else if r.tenant == "down" {
            Err(RpcError::unavailable("signer down", Duration::from_secs(2)).into())
        } else {
            Err(RpcError::not_found("issuer.unknown", "no such issuer").into())
        }
    }
    async fn get_ocsp(
        &self,
        _: Request<certgate_proto::core::GetOcspRequest>,
    ) -> Result<Response<certgate_proto::core::OcspEntry>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_crl(
        &self,
        _: Request<certgate_proto::core::GetCrlRequest>,
    ) -> Result<Response<certgate_proto::core::CrlEntry>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_next_ca_chain(
        &self,
        _: Request<certgate_proto::core::GetNextCaChainRequest>,
    ) -> Result<Response<certgate_proto::core::GetCaChainResponse>, Status> {
        Err(Status::not_found("no CA rollover is staged in this fake"))
    }
    async fn describe_profile(
        &self,
        _: Request<certgate_proto::core::DescribeProfileRequest>,
    ) -> Result<Response<certgate_proto::core::ProfileDescription>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    type WatchStatusStream = Events;
    async fn watch_status(
        &self,
        _: Request<WatchStatusRequest>,
    ) -> Result<Response<Events>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}

async fn fake_core_client(fake: FakeCore) -> CoreClient {
    let channel = Endpoint::from_static("http://fake")
        .connect_with_connector(tower::service_fn(move |_| {
            let fake = fake.clone();
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                tokio::spawn(
                    Server::builder()
                        .add_service(CoreServer::new(fake))
                        .serve_with_incoming(futures::stream::once(async move {
                            Ok::<_, std::io::Error>(server)
                        })),
                );
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }))
        .await
        .expect("in-memory channel");
    CoreClient::from_channel(channel, Duration::from_secs(5))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, raw[split + 4..].to_vec())
}

async fn edge(fake: FakeCore) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let (addr, tx, _task) = edge_task(fake).await;
    (addr, tx)
}

async fn edge_task(
    fake: FakeCore,
) -> (
    std::net::SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let core = fake_core_client(fake).await;
    let pipeline = Arc::new(Pipeline {
        router: Router::standard(),
        ctx: EdgeContext {
            core,
            ca: CaCerts::new(16, Duration::from_secs(60)),
        },
        limits: Limits::default(),
        in_flight: Permits::new(8),
        guard: Default::default(),
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve_listener(tcp, Listener::Http, None, pipeline, rx));
    (addr, tx, task)
}

#[tokio::test]
async fn aia_serves_the_issuer_from_the_core_then_from_cache() {
    let fake = FakeCore::default();
    let (addr, _stop) = edge(fake.clone()).await;
    for _ in 0..3 {
        let (status, head, body) = get(addr, "/ca/issuing-1.der").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("application/pkix-cert"),
            "{head}"
        );
        assert_eq!(body, ISSUER_DER);
    }
    assert_eq!(
        fake.0.chain_calls.load(Ordering::SeqCst),
        1,
        "later calls hit the cache"
    );
}

#[tokio::test]
async fn unknown_issuer_and_unknown_path_are_problem_json_404() {
    let (addr, _stop) = edge(FakeCore::default()).await;
    for path in ["/ca/nope.der", "/ca/issuing-1.pem", "/acme/directory", "/"] {
        let (status, head, body) = get(addr, path).await;
        assert_eq!(status, 404, "{path}: {head}");
        assert!(head.contains("application/problem+json"), "{path}: {head}");
        assert!(String::from_utf8_lossy(&body).contains("\"status\":404"));
    }
}

#[tokio::test]
async fn core_unavailable_is_503_with_retry_after() {
    let (addr, _stop) = edge(FakeCore::default()).await;
    let (status, head, _) = get(addr, "/t/down/ca/issuing-1.der").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2"),
        "{head}"
    );
}

#[tokio::test]
async fn tenant_prefix_reaches_the_core_as_that_tenant() {
    let (addr, _stop) = edge(FakeCore::default()).await;
    // The fake knows issuing-1 only for `default`: another tenant must not see it (I-4).
    let (status, _, _) = get(addr, "/t/other/ca/issuing-1.der").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(addr, "/t/Bad_Name/ca/issuing-1.der").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_returns_promptly() {
    let (addr, stop, task) = edge_task(FakeCore::default()).await;
    // An idle HTTP/1.1 keep-alive connection after one answered request.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ca/issuing-1.der HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    stop.send(true).expect("signal");
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("listener drained within 3 s")
        .expect("listener task");
    // The idle connection was closed by the server.
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
