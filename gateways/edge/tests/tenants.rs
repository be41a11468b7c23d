//! Tenant routing in the pipeline against an in-memory fake core: unknown tenants are a 404
//! problem (and remembered), known ones reach the handler, a burst for a new tenant makes one
//! `GetTenantMeta` call, and a core that cannot say is not cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::permits::Permits;
use certgate_edge::router::{
    EdgeContext, EdgeRequest, Handler, HandlerFuture, Listener, Mount, Router,
};
use certgate_edge::server::{Guard, Pipeline, serve_listener};
use certgate_edge::tenant::{TenantConfig, TenantDirectory};
use certgate_proto::RpcError;
use certgate_proto::acme as pb;
use certgate_proto::acme::acme_server::{Acme, AcmeServer};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

/// Knows tenants "default" and "corp"; "flaky" is unavailable; counts GetTenantMeta calls.
#[derive(Clone, Default)]
struct FakeAcme {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Acme for FakeAcme {
    async fn get_tenant_meta(
        &self,
        req: Request<pb::GetTenantMetaRequest>,
    ) -> Result<Response<pb::TenantMeta>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Slow enough that concurrent lookups overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = req.into_inner().tenant;
        match t.as_str() {
            "default" | "corp" => Ok(Response::new(pb::TenantMeta {
                tenant: t,
                ..Default::default()
            })),
            "flaky" => Err(RpcError::unavailable("down", Duration::from_secs(1)).into()),
            _ => Err(RpcError::not_found("tenant.unknown", "no such tenant").into()),
        }
    }
    async fn new_account(
        &self,
        _: Request<pb::NewAccountRequest>,
    ) -> Result<Response<pb::NewAccountResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_account(
        &self,
        _: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn update_account(
        &self,
        _: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn key_change(
        &self,
        _: Request<pb::KeyChangeRequest>,
    ) -> Result<Response<pb::KeyChangeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn list_orders(
        &self,
        _: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn new_order(
        &self,
        _: Request<pb::NewOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_order(
        &self,
        _: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_authorization(
        &self,
        _: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<pb::Authorization>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn deactivate_authorization(
        &self,
        _: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<pb::Authorization>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn respond_challenge(
        &self,
        _: Request<pb::RespondChallengeRequest>,
    ) -> Result<Response<pb::RespondChallengeResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn finalize(
        &self,
        _: Request<pb::FinalizeRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_order_certificate(
        &self,
        _: Request<pb::GetOrderCertificateRequest>,
    ) -> Result<Response<pb::CertificateChain>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn revoke_certificate(
        &self,
        _: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

async fn directory(fake: FakeAcme) -> TenantDirectory {
    let channel = Endpoint::from_static("http://fake")
        .connect_with_connector(tower::service_fn(move |_| {
            let fake = fake.clone();
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                tokio::spawn(
                    Server::builder()
                        .add_service(AcmeServer::new(fake))
                        .serve_with_incoming(futures::stream::once(async move {
                            Ok::<_, std::io::Error>(server)
                        })),
                );
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }))
        .await
        .expect("in-memory channel");
    TenantDirectory::new(
        CoreClient::from_channel(channel, Duration::from_secs(5)),
        &TenantConfig::default(),
    )
}

struct Echo;
impl Handler for Echo {
    fn protocol(&self) -> &'static str {
        "echo"
    }
    fn handle<'a>(&'a self, _: &'a EdgeContext, req: EdgeRequest) -> HandlerFuture<'a> {
        Box::pin(async move { Ok(http::Response::new(Full::new(Bytes::from(req.tenant)))) })
    }
}

async fn get(addr: std::net::SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

#[tokio::test]
async fn unknown_tenants_are_404_known_and_host_mapped_ones_reach_the_handler() {
    let fake = FakeAcme::default();
    let dir = directory(fake.clone()).await;
    let tenant_config = TenantConfig {
        hosts: std::collections::BTreeMap::from([("corp.example".to_owned(), "corp".to_owned())]),
        ..TenantConfig::default()
    };
    let pipeline = Arc::new(Pipeline {
        router: Router::new().mount(Mount {
            prefix: "/echo/",
            listeners: &[Listener::Http],
            handler: Arc::new(Echo),
        }),
        ctx: EdgeContext {
            core: CoreClient::unix("/nonexistent/core.sock", Duration::from_secs(1)),
            ca: CaCerts::new(4, Duration::from_secs(1)),
        },
        limits: Limits::default(),
        in_flight: Permits::new(64),
        guard: Guard {
            tenant_config,
            tenants: Some(dir),
            ..Guard::default()
        },
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (_tx, rx) = watch::channel(false);
    tokio::spawn(serve_listener(tcp, Listener::Http, None, pipeline, rx));

    assert_eq!(get(addr, "/echo/x", "h").await, (200, "default".to_owned()));
    assert_eq!(
        get(addr, "/t/corp/echo/x", "h").await,
        (200, "corp".to_owned())
    );
    assert_eq!(
        get(addr, "/echo/x", "corp.example:8443").await,
        (200, "corp".to_owned())
    );
    let (status, body) = get(addr, "/t/nosuch/echo/x", "h").await;
    assert_eq!(status, 404);
    assert!(
        !body.contains("corp") && !body.contains("default"),
        "{body}"
    );
    let before = fake.calls.load(Ordering::SeqCst);
    let (status, _) = get(addr, "/t/nosuch/echo/x", "h").await;
    assert_eq!(status, 404);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        before,
        "the unknown tenant is remembered"
    );
    // A core that cannot say lets the request through (the handler's own calls decide).
    assert_eq!(
        get(addr, "/t/flaky/echo/x", "h").await,
        (200, "flaky".to_owned())
    );
}

#[tokio::test]
async fn a_burst_for_a_new_tenant_makes_one_core_call_and_errors_are_not_cached() {
    let fake = FakeAcme::default();
    let dir = directory(fake.clone()).await;
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let d = dir.clone();
            tokio::spawn(async move { d.lookup("corp").await })
        })
        .collect();
    for l in lookups {
        let meta = l.await.expect("join").expect("core answered");
        assert_eq!(meta.expect("corp exists").tenant, "corp");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "single flight");
    assert!(dir.lookup("flaky").await.is_err());
    assert!(dir.lookup("flaky").await.is_err());
    // Each lookup of an unavailable core is one call plus the client's bounded retries.
    let per_lookup = 1 + certgate_edge::core_client::MAX_RETRIES as usize;
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1 + 2 * per_lookup,
        "errors are not cached: asked again"
    );
}
