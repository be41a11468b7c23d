//! The core client's retry policy against an in-memory fake core that is "unavailable" for the
//! first calls: idempotent calls (reads, `Issue` with an idempotency key) are retried a bounded
//! number of times; everything else is tried exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use certgate_edge::core_client::{CoreClient, MAX_RETRIES};
use certgate_proto::core::core_server::{Core, CoreServer};
use certgate_proto::core::{
    CertificateRecord, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest, IssueRequest,
    IssueResponse, RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest,
};
use certgate_proto::{ErrorKind, RpcError};
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

/// Fails with UNAVAILABLE until `fail_first` calls have been made, counting every call.
#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

impl Flaky {
    fn attempt(&self) -> Result<(), Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            Err(RpcError::unavailable("warming up", Duration::from_millis(10)).into())
        } else {
            Ok(())
        }
    }
}

type Events = Pin<Box<dyn futures::Stream<Item = Result<StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Core for Flaky {
    async fn issue(&self, _: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        self.attempt()?;
        Ok(Response::new(IssueResponse::default()))
    }
    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        self.attempt()?;
        Ok(Response::new(RevokeResponse::default()))
    }
    async fn get_certificate(
        &self,
        _: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        self.attempt()?;
        Ok(Response::new(CertificateRecord::default()))
    }
    async fn get_ca_chain(
        &self,
        _: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        self.attempt()?;
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

async fn client(fake: Flaky) -> CoreClient {
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

#[tokio::test]
async fn reads_are_retried_until_the_core_answers() {
    let fake = Flaky {
        fail_first: 2,
        ..Flaky::default()
    };
    let c = client(fake.clone()).await;
    c.ca_chain("default", "")
        .await
        .expect("third attempt answers");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_are_bounded() {
    let fake = Flaky {
        fail_first: 100,
        ..Flaky::default()
    };
    let c = client(fake.clone()).await;
    let e = c
        .get_certificate("default", "01")
        .await
        .expect_err("still unavailable");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1 + MAX_RETRIES as usize,
        "one attempt plus the bounded retries"
    );
}

#[tokio::test]
async fn non_idempotent_calls_are_tried_once() {
    let fake = Flaky {
        fail_first: 1,
        ..Flaky::default()
    };
    let c = client(fake.clone()).await;
    let e = c
        .revoke(RevokeRequest::default())
        .await
        .expect_err("revoke is not retried");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    // Issue without an idempotency key: once; with one: retried.
    let fake = Flaky {
        fail_first: 1,
        ..Flaky::default()
    };
    let c = client(fake.clone()).await;
    assert!(c.issue(IssueRequest::default()).await.is_err());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    let keyed = IssueRequest {
        idempotency_key: "k-1".into(),
        ..IssueRequest::default()
    };
    let fake = Flaky {
        fail_first: 1,
        ..Flaky::default()
    };
    let c = client(fake.clone()).await;
    c.issue(keyed).await.expect("retried once, then answered");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}
