//! The edge's client for the core (`certgate.core.v1.Core`) over the core's Unix socket.
//!
//! Every call carries a deadline (I-8) both as a `grpc-timeout` the core can see and as a local
//! timer, so a wedged core never holds an edge request longer than configured. A core that is
//! down surfaces as `Unavailable` (I-5: never a fallback).

use std::path::PathBuf;
use std::time::Duration;

use certgate_proto::RpcError;
use certgate_proto::core::core_client::CoreClient as GrpcCore;
use certgate_proto::core::{
    GetCaChainRequest, GetCaChainResponse, IssueRequest, IssueResponse, RevokeRequest,
    RevokeResponse,
};
use certgate_proto::transport::unix_channel;
use tonic::transport::Channel;

/// A cheap-to-clone handle on the core.
#[derive(Clone)]
pub struct CoreClient {
    inner: GrpcCore<Channel>,
    deadline: Duration,
}

impl CoreClient {
    /// A lazily connecting client to the core's socket at `path`.
    pub fn unix(path: impl Into<PathBuf>, deadline: Duration) -> Self {
        Self::from_channel(unix_channel(path), deadline)
    }

    /// A client over any channel (tests use an in-memory one).
    pub fn from_channel(channel: Channel, deadline: Duration) -> Self {
        Self {
            inner: GrpcCore::new(channel),
            deadline,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.deadline);
        req
    }

    async fn bounded<F, T>(&self, method: &'static str, fut: F) -> Result<T, RpcError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = std::time::Instant::now();
        let result = match tokio::time::timeout(self.deadline, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(RpcError::from_status(&status)),
            Err(_) => Err(RpcError::unavailable(
                "the core did not answer in time",
                Duration::from_secs(1),
            )),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => kind_label(e.kind),
        };
        crate::metrics::record_core_call(method, outcome, start.elapsed());
        result
    }

    /// `Core.Issue` — the one issuance path (I-2).
    pub async fn issue(&self, req: IssueRequest) -> Result<IssueResponse, RpcError> {
        let mut c = self.inner.clone();
        let r = self.request(req);
        self.bounded("issue", c.issue(r)).await
    }

    /// `Core.Revoke`.
    pub async fn revoke(&self, req: RevokeRequest) -> Result<RevokeResponse, RpcError> {
        let mut c = self.inner.clone();
        let r = self.request(req);
        self.bounded("revoke", c.revoke(r)).await
    }

    /// `Core.GetCaChain` for a tenant (and optionally one issuer).
    pub async fn ca_chain(
        &self,
        tenant: &str,
        issuer_id: &str,
    ) -> Result<GetCaChainResponse, RpcError> {
        let mut c = self.inner.clone();
        let r = self.request(GetCaChainRequest {
            tenant: tenant.to_owned(),
            issuer_id: issuer_id.to_owned(),
        });
        self.bounded("get_ca_chain", c.get_ca_chain(r)).await
    }

    /// `Core.GetOcsp`: an OCSP cache miss (one certificate, or a set).
    pub async fn get_ocsp(
        &self,
        req: certgate_proto::core::GetOcspRequest,
    ) -> Result<certgate_proto::core::OcspEntry, RpcError> {
        let mut c = self.inner.clone();
        let r = self.request(req);
        self.bounded("get_ocsp", c.get_ocsp(r)).await
    }

    /// `Core.GetCrl`: a CRL cache miss.
    pub async fn get_crl(
        &self,
        req: certgate_proto::core::GetCrlRequest,
    ) -> Result<certgate_proto::core::CrlEntry, RpcError> {
        let mut c = self.inner.clone();
        let r = self.request(req);
        self.bounded("get_crl", c.get_crl(r)).await
    }

    /// `Core.WatchStatus`: opens the status stream. Only opening it is bounded by the deadline;
    /// the stream itself lives as long as the core keeps it (the watch task bounds idleness).
    pub async fn watch_status(
        &self,
        req: certgate_proto::core::WatchStatusRequest,
    ) -> Result<tonic::Streaming<certgate_proto::core::StatusEvent>, RpcError> {
        let mut c = self.inner.clone();
        self.bounded("watch_status", c.watch_status(tonic::Request::new(req)))
            .await
    }
}

/// A fixed label per error kind (bounded metric cardinality).
fn kind_label(kind: certgate_proto::ErrorKind) -> &'static str {
    use certgate_proto::ErrorKind as K;
    match kind {
        K::Malformed => "malformed",
        K::Unauthorized => "unauthorized",
        K::RateLimited => "rate_limited",
        K::PolicyRefused => "policy_refused",
        K::AlreadyExists => "already_exists",
        K::NotFound => "not_found",
        K::Unavailable => "unavailable",
        K::Unspecified => "error",
    }
}
