//! The edge's client for the core (`certgate.core.v1.Core`) over the core's Unix socket.
//!
//! Every call carries a deadline (I-8) both as a `grpc-timeout` the core can see and as a local
//! timer, so a wedged core never holds an edge request longer than configured. A core that is
//! down surfaces as `Unavailable` (I-5: never a fallback).
//!
//! Retries: only idempotent calls — reads, and writes that carry an idempotency key (`Issue`, and
//! ACME `Finalize`, which the core keys by order id) — are retried, only when the core was
//! unavailable, at most [`MAX_RETRIES`] times with exponential backoff, and never past the
//! deadline. Everything else is tried once: a retried `NewOrder` could create two orders.

use std::path::PathBuf;
use std::time::Duration;

use certgate_proto::RpcError;
use certgate_proto::acme::acme_client::AcmeClient as GrpcAcme;
use certgate_proto::cmp::cmp_client::CmpClient as GrpcCmp;
use certgate_proto::core::core_client::CoreClient as GrpcCore;
use certgate_proto::core::{
    GetCaChainRequest, GetCaChainResponse, IssueRequest, IssueResponse, RevokeRequest,
    RevokeResponse,
};
use certgate_proto::scep::scep_client::ScepClient as GrpcScep;
use certgate_proto::transport::unix_channel;
use tonic::transport::Channel;

/// Most retries of one idempotent call (so at most 1 + this many attempts).
pub const MAX_RETRIES: u32 = 2;
/// First retry delay; doubled each time.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// A cheap-to-clone handle on the core.
#[derive(Clone)]
pub struct CoreClient {
    inner: GrpcCore<Channel>,
    acme: GrpcAcme<Channel>,
    cmp: GrpcCmp<Channel>,
    scep: GrpcScep<Channel>,
    deadline: Duration,
}

/// Whether a call may be repeated without changing the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

impl CoreClient {
    /// A lazily connecting client to the core's socket at `path`.
    pub fn unix(path: impl Into<PathBuf>, deadline: Duration) -> Self {
        Self::from_channel(unix_channel(path), deadline)
    }

    /// A client over any channel (tests use an in-memory one).
    pub fn from_channel(channel: Channel, deadline: Duration) -> Self {
        Self {
            inner: GrpcCore::new(channel.clone()),
            acme: GrpcAcme::new(channel.clone()),
            cmp: GrpcCmp::new(channel.clone()),
            scep: GrpcScep::new(channel),
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

    /// Runs `call` under the deadline; retries an idempotent call while the core is unavailable,
    /// with backoff, within the same overall deadline.
    async fn call<T, R, F, Fut>(
        &self,
        method: &'static str,
        idem: Idempotent,
        msg: T,
        call: F,
    ) -> Result<R, RpcError>
    where
        T: Clone,
        F: Fn(tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let give_up = std::time::Instant::now() + self.deadline;
        let mut attempt = 0u32;
        loop {
            let result = self.bounded(method, call(self.request(msg.clone()))).await;
            match result {
                Err(e)
                    if idem == Idempotent::Yes
                        && e.kind == certgate_proto::ErrorKind::Unavailable
                        && attempt < MAX_RETRIES =>
                {
                    let wait = RETRY_BASE * 2u32.pow(attempt);
                    if std::time::Instant::now() + wait >= give_up {
                        return Err(e);
                    }
                    attempt += 1;
                    ::metrics::counter!(crate::metrics::CORE_RETRIES_TOTAL, "method" => method)
                        .increment(1);
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// `Core.Issue` — the one issuance path (I-2). Retried: the request carries an idempotency
    /// key.
    pub async fn issue(&self, req: IssueRequest) -> Result<IssueResponse, RpcError> {
        let retry = if req.idempotency_key.is_empty() {
            Idempotent::No
        } else {
            Idempotent::Yes
        };
        let c = self.inner.clone();
        self.call("issue", retry, req, |r| {
            let mut c = c.clone();
            async move { c.issue(r).await }
        })
        .await
    }

    /// `Core.GetCertificate`: one certificate record of a tenant.
    pub async fn get_certificate(
        &self,
        tenant: &str,
        serial_hex: &str,
    ) -> Result<certgate_proto::core::CertificateRecord, RpcError> {
        let c = self.inner.clone();
        let req = certgate_proto::core::GetCertificateRequest {
            tenant: tenant.to_owned(),
            serial_hex: serial_hex.to_owned(),
        };
        self.call("get_certificate", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_certificate(r).await }
        })
        .await
    }

    /// `Acme.GetTenantMeta`: the tenant's ACME settings; NOT_FOUND for an unknown tenant.
    pub async fn tenant_meta(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::acme::TenantMeta, RpcError> {
        let c = self.acme.clone();
        let req = certgate_proto::acme::GetTenantMetaRequest {
            tenant: tenant.to_owned(),
        };
        self.call("acme_get_tenant_meta", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_tenant_meta(r).await }
        })
        .await
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
        let c = self.inner.clone();
        let req = GetCaChainRequest {
            tenant: tenant.to_owned(),
            issuer_id: issuer_id.to_owned(),
        };
        self.call("get_ca_chain", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_ca_chain(r).await }
        })
        .await
    }

    /// `Core.GetOcsp`: an OCSP cache miss (one certificate, or a set).
    pub async fn get_ocsp(
        &self,
        req: certgate_proto::core::GetOcspRequest,
    ) -> Result<certgate_proto::core::OcspEntry, RpcError> {
        let c = self.inner.clone();
        self.call("get_ocsp", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_ocsp(r).await }
        })
        .await
    }

    /// `Core.GetCrl`: a CRL cache miss.
    pub async fn get_crl(
        &self,
        req: certgate_proto::core::GetCrlRequest,
    ) -> Result<certgate_proto::core::CrlEntry, RpcError> {
        let c = self.inner.clone();
        self.call("get_crl", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_crl(r).await }
        })
        .await
    }

    /// `Acme.NewAccount` (not retried: creates).
    pub async fn acme_new_account(
        &self,
        req: certgate_proto::acme::NewAccountRequest,
    ) -> Result<certgate_proto::acme::NewAccountResponse, RpcError> {
        let c = self.acme.clone();
        self.call("acme_new_account", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.new_account(r).await }
        })
        .await
    }

    /// `Acme.GetAccount` by id or thumbprint.
    pub async fn acme_get_account(
        &self,
        req: certgate_proto::acme::GetAccountRequest,
    ) -> Result<certgate_proto::acme::Account, RpcError> {
        let c = self.acme.clone();
        self.call("acme_get_account", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_account(r).await }
        })
        .await
    }

    /// `Acme.UpdateAccount`.
    pub async fn acme_update_account(
        &self,
        req: certgate_proto::acme::UpdateAccountRequest,
    ) -> Result<certgate_proto::acme::Account, RpcError> {
        let c = self.acme.clone();
        self.call("acme_update_account", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.update_account(r).await }
        })
        .await
    }

    /// `Acme.KeyChange`.
    pub async fn acme_key_change(
        &self,
        req: certgate_proto::acme::KeyChangeRequest,
    ) -> Result<certgate_proto::acme::KeyChangeResponse, RpcError> {
        let c = self.acme.clone();
        self.call("acme_key_change", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.key_change(r).await }
        })
        .await
    }

    /// `Acme.ListOrders`.
    pub async fn acme_list_orders(
        &self,
        req: certgate_proto::acme::ListOrdersRequest,
    ) -> Result<certgate_proto::acme::ListOrdersResponse, RpcError> {
        let c = self.acme.clone();
        self.call("acme_list_orders", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.list_orders(r).await }
        })
        .await
    }

    /// `Acme.NewOrder` (not retried: creates).
    pub async fn acme_new_order(
        &self,
        req: certgate_proto::acme::NewOrderRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        let c = self.acme.clone();
        self.call("acme_new_order", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.new_order(r).await }
        })
        .await
    }

    /// `Acme.GetOrder`.
    pub async fn acme_get_order(
        &self,
        req: certgate_proto::acme::GetOrderRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        let c = self.acme.clone();
        self.call("acme_get_order", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_order(r).await }
        })
        .await
    }

    /// `Acme.GetAuthorization`.
    pub async fn acme_get_authorization(
        &self,
        req: certgate_proto::acme::GetAuthorizationRequest,
    ) -> Result<certgate_proto::acme::Authorization, RpcError> {
        let c = self.acme.clone();
        self.call("acme_get_authorization", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_authorization(r).await }
        })
        .await
    }

    /// `Acme.DeactivateAuthorization`.
    pub async fn acme_deactivate_authorization(
        &self,
        req: certgate_proto::acme::GetAuthorizationRequest,
    ) -> Result<certgate_proto::acme::Authorization, RpcError> {
        let c = self.acme.clone();
        self.call("acme_deactivate_authorization", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.deactivate_authorization(r).await }
        })
        .await
    }

    /// `Acme.RespondChallenge`; `wait_ms` must stay well under the core deadline.
    pub async fn acme_respond_challenge(
        &self,
        req: certgate_proto::acme::RespondChallengeRequest,
    ) -> Result<certgate_proto::acme::RespondChallengeResponse, RpcError> {
        let c = self.acme.clone();
        self.call("acme_respond_challenge", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.respond_challenge(r).await }
        })
        .await
    }

    /// `Acme.Finalize` (retried: the core keys issuance by the order id).
    pub async fn acme_finalize(
        &self,
        req: certgate_proto::acme::FinalizeRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        let c = self.acme.clone();
        self.call("acme_finalize", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.finalize(r).await }
        })
        .await
    }

    /// `Acme.GetOrderCertificate`.
    pub async fn acme_get_order_certificate(
        &self,
        req: certgate_proto::acme::GetOrderCertificateRequest,
    ) -> Result<certgate_proto::acme::CertificateChain, RpcError> {
        let c = self.acme.clone();
        self.call("acme_get_order_certificate", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_order_certificate(r).await }
        })
        .await
    }

    /// `Acme.RevokeCertificate`.
    pub async fn acme_revoke_certificate(
        &self,
        req: certgate_proto::acme::RevokeCertificateRequest,
    ) -> Result<certgate_proto::acme::RevokeCertificateResponse, RpcError> {
        let c = self.acme.clone();
        self.call("acme_revoke_certificate", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.revoke_certificate(r).await }
        })
        .await
    }

    /// `Cmp.ComputeMac` (a pure function of its input: retried).
    pub async fn cmp_compute_mac(
        &self,
        req: certgate_proto::cmp::ComputeMacRequest,
    ) -> Result<certgate_proto::cmp::ComputeMacResponse, RpcError> {
        let c = self.cmp.clone();
        self.call("cmp_compute_mac", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.compute_mac(r).await }
        })
        .await
    }

    /// `Cmp.SignProtection` (retried: signing the same bytes again changes nothing).
    pub async fn cmp_sign_protection(
        &self,
        req: certgate_proto::cmp::SignProtectionRequest,
    ) -> Result<certgate_proto::cmp::SignProtectionResponse, RpcError> {
        let c = self.cmp.clone();
        self.call("cmp_sign_protection", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.sign_protection(r).await }
        })
        .await
    }

    /// `Cmp.GetProtectionChain`.
    pub async fn cmp_protection_chain(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::cmp::GetProtectionChainResponse, RpcError> {
        let c = self.cmp.clone();
        let req = certgate_proto::cmp::GetProtectionChainRequest {
            tenant: tenant.to_owned(),
        };
        self.call("cmp_get_protection_chain", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_protection_chain(r).await }
        })
        .await
    }

    /// `Cmp.Confirm` (idempotent by contract: confirming twice answers `already`).
    pub async fn cmp_confirm(
        &self,
        req: certgate_proto::cmp::ConfirmRequest,
    ) -> Result<certgate_proto::cmp::ConfirmResponse, RpcError> {
        let c = self.cmp.clone();
        self.call("cmp_confirm", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.confirm(r).await }
        })
        .await
    }

    /// `Scep.GetRaChain`: the tenant's RA certificate, then its issuers up to the root.
    pub async fn scep_ra_chain(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::scep::GetRaChainResponse, RpcError> {
        let c = self.scep.clone();
        let req = certgate_proto::scep::GetRaChainRequest {
            tenant: tenant.to_owned(),
        };
        self.call("scep_get_ra_chain", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.get_ra_chain(r).await }
        })
        .await
    }

    /// `Scep.DecryptKey` (a pure function of its input: retried).
    pub async fn scep_decrypt_key(
        &self,
        req: certgate_proto::scep::DecryptKeyRequest,
    ) -> Result<certgate_proto::scep::DecryptKeyResponse, RpcError> {
        let c = self.scep.clone();
        self.call("scep_decrypt_key", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.decrypt_key(r).await }
        })
        .await
    }

    /// `Scep.SignAttributes` (retried: signing the same bytes again changes nothing).
    pub async fn scep_sign_attributes(
        &self,
        req: certgate_proto::scep::SignAttributesRequest,
    ) -> Result<certgate_proto::scep::SignAttributesResponse, RpcError> {
        let c = self.scep.clone();
        self.call("scep_sign_attributes", Idempotent::Yes, req, |r| {
            let mut c = c.clone();
            async move { c.sign_attributes(r).await }
        })
        .await
    }

    /// `Scep.CheckChallenge` (not retried: a one-time challenge is consumed).
    pub async fn scep_check_challenge(
        &self,
        req: certgate_proto::scep::CheckChallengeRequest,
    ) -> Result<certgate_proto::scep::CheckChallengeResponse, RpcError> {
        let c = self.scep.clone();
        self.call("scep_check_challenge", Idempotent::No, req, |r| {
            let mut c = c.clone();
            async move { c.check_challenge(r).await }
        })
        .await
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
