//! The core pool against two fake cores on real Unix sockets, one of which "dies mid-request"
//! (its handler panics, so the connection drops with the request delivered): an idempotent call
//! is repeated on the OTHER core and succeeds; a non-idempotent one is not repeated and fails as
//! `Unavailable`; the dying core is ejected; the health probe re-admits it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use certgate_edge::core_client::CoreClient;
use certgate_edge::core_pool::{CoreEndpoint, CorePool, PoolSettings};
use certgate_proto::ErrorKind;
use certgate_proto::core::core_server::{Core, CoreServer};
use certgate_proto::core::{
    CertificateRecord, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest, IssueRequest,
    IssueResponse, RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest,
};
use tonic::{Request, Response, Status};

/// Counts calls; panics in the next call when `crash` is armed (then disarms).
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<AtomicUsize>,
    crash: Arc<AtomicBool>,
}

impl Fake {
    fn enter(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.crash.swap(false, Ordering::SeqCst) {
            panic!("fake core dies mid-request");
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

type Events = Pin<Box<dyn futures::Stream<Item = Result<StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Core for Fake {
    async fn issue(&self, r: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        self.enter();
        Ok(Response::new(IssueResponse {
            serial_hex: r.into_inner().idempotency_key,
            ..IssueResponse::default()
        }))
    }
    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        self.enter();
        Ok(Response::new(RevokeResponse::default()))
    }
    async fn get_certificate(
        &self,
        _: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        self.enter();
        Ok(Response::new(CertificateRecord::default()))
    }
    async fn get_ca_chain(
        &self,
        _: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        self.enter();
        Ok(Response::new(GetCaChainResponse::default()))
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

/// Serves `fake` (and the gRPC health service, SERVING) on a Unix socket at `path`.
async fn serve(fake: Fake, path: &std::path::Path) {
    let listener = certgate_proto::transport::bind_unix(path).expect("bind");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CoreServer<Fake>>().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(CoreServer::new(fake))
            .serve_with_incoming(certgate_proto::transport::unix_incoming(listener)),
    );
}

struct Two {
    _dir: tempfile::TempDir,
    fakes: [Fake; 2],
    pool: Arc<CorePool>,
    client: CoreClient,
}

async fn two(health_interval: Duration) -> Two {
    let dir = tempfile::tempdir().expect("tempdir");
    let fakes = [Fake::default(), Fake::default()];
    let mut eps = Vec::new();
    for (i, f) in fakes.iter().enumerate() {
        let p = dir.path().join(format!("core{i}.sock"));
        serve(f.clone(), &p).await;
        eps.push(CoreEndpoint::Unix(p));
    }
    let pool = CorePool::new(
        &eps,
        None,
        PoolSettings {
            health_interval,
            health_timeout: Duration::from_millis(500),
            max_attempts: 3,
        },
    )
    .expect("pool");
    let client = CoreClient::from_pool(pool.clone(), Duration::from_secs(5));
    Two {
        _dir: dir,
        fakes,
        pool,
        client,
    }
}

impl Two {
    /// Makes the next call go to core `i` first: the other one is ejected (a retry may still
    /// fall back to it, as to any untried member).
    fn steer_to(&self, i: usize) {
        self.pool.members()[i].admit();
        self.pool.members()[1 - i].eject("test");
    }
}

#[tokio::test]
async fn idempotent_calls_move_to_the_other_core_when_one_dies_mid_request() {
    let t = two(Duration::from_secs(60)).await;
    // Warm both connections.
    for _ in 0..4 {
        t.client
            .ca_chain("default", "")
            .await
            .expect("reads answer");
    }
    assert!(t.fakes.iter().all(|f| f.calls() > 0), "both cores served");

    let before = [t.fakes[0].calls(), t.fakes[1].calls()];
    t.steer_to(0);
    t.fakes[0].crash.store(true, Ordering::SeqCst);
    let resp = t
        .client
        .issue(IssueRequest {
            idempotency_key: "k-1".into(),
            ..IssueRequest::default()
        })
        .await
        .expect("an Issue with an idempotency key is repeated on the other core");
    assert_eq!(resp.serial_hex, "k-1");
    assert_eq!(t.fakes[0].calls(), before[0] + 1, "core 0 got it and died");
    assert_eq!(
        t.fakes[1].calls(),
        before[1] + 1,
        "core 1 answered the retry"
    );
    assert!(
        !t.pool.members()[0].is_healthy(),
        "a core that vanished mid-call is ejected"
    );

    // Reads the same way.
    t.steer_to(0);
    t.fakes[0].crash.store(true, Ordering::SeqCst);
    t.client
        .get_certificate("default", "01")
        .await
        .expect("a read is repeated on the other core");
}

#[tokio::test]
async fn non_idempotent_calls_are_not_repeated_when_a_core_dies_mid_request() {
    let t = two(Duration::from_secs(60)).await;
    t.client.ca_chain("default", "").await.expect("warm");
    t.client.ca_chain("default", "").await.expect("warm");
    let before = t.fakes[0].calls() + t.fakes[1].calls();
    t.steer_to(1);
    t.fakes[1].crash.store(true, Ordering::SeqCst);
    // Revoke without an idempotency key: not idempotent.
    let e = t
        .client
        .revoke(RevokeRequest::default())
        .await
        .expect_err("not repeated");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    assert_eq!(
        t.fakes[0].calls() + t.fakes[1].calls(),
        before + 1,
        "exactly one attempt reached a core"
    );
    // With a key, the same call is idempotent and moves on.
    t.steer_to(1);
    t.fakes[1].crash.store(true, Ordering::SeqCst);
    t.client
        .revoke(RevokeRequest {
            idempotency_key: "r-1".into(),
            ..RevokeRequest::default()
        })
        .await
        .expect("keyed revoke is repeated on the other core");
}

#[tokio::test]
async fn health_probes_readmit_an_ejected_core_and_calls_spread_again() {
    let t = two(Duration::from_millis(100)).await;
    t.pool.members()[0].eject("test");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(t.pool.clone().run_health_checks(stop_rx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !t.pool.members()[0].is_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe re-admits a serving core"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = [t.fakes[0].calls(), t.fakes[1].calls()];
    for _ in 0..20 {
        t.client.ca_chain("default", "").await.expect("answers");
    }
    assert!(
        t.fakes[0].calls() > before[0] + 2,
        "core 0 gets calls again"
    );
    assert!(
        t.fakes[1].calls() > before[1] + 2,
        "core 1 still gets calls"
    );
}

#[tokio::test]
async fn a_missing_core_is_skipped_for_any_call_since_nothing_was_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = Fake::default();
    let p = dir.path().join("live.sock");
    serve(live.clone(), &p).await;
    let pool = CorePool::new(
        &[
            CoreEndpoint::Unix(dir.path().join("gone.sock")),
            CoreEndpoint::Unix(p),
        ],
        None,
        PoolSettings::default(),
    )
    .expect("pool");
    let client = CoreClient::from_pool(pool.clone(), Duration::from_secs(5));
    pool.members()[1].eject("test"); // steer the first attempt to the missing core
    client
        .revoke(RevokeRequest::default())
        .await
        .expect("a refused connection never carried the request: the other core gets it");
    assert_eq!(live.calls(), 1);
    assert!(!pool.members()[0].is_healthy());
}
