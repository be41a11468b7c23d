//! The edge's client for the cores (`certgate.core.v1.Core`, `Acme`, `Cmp`, `Scep`): one or more
//! cores over Unix sockets or TCP + mTLS, balanced and health-checked by [`CorePool`].
//!
//! Every call carries a deadline (I-8) both as a `grpc-timeout` the core can see and as a local
//! timer, so a wedged core never holds an edge request longer than configured. No core answering
//! surfaces as `Unavailable` (I-5: never a fallback), which each protocol maps to its own "try
//! later" answer.
//!
//! Retries are a per-method property, [`idempotency`] (documented in docs/operations.md):
//! - a call that never left the edge (connection refused, socket missing) goes to another core,
//!   whatever the method;
//! - a core that vanished mid-call (connection reset, EOF, timeout of the transport) is ejected,
//!   and the call is repeated on ANOTHER core only if the method is idempotent;
//! - a core that answered "unavailable" itself (its signer or store is down) is retried, for
//!   idempotent methods only, with backoff;
//! - at most [`MAX_RETRIES`] retries, never past the call's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certgate_proto::core::{
    DescribeProfileRequest, GetCaChainRequest, GetCaChainResponse, IssueRequest, IssueResponse,
    ProfileDescription, RevokeRequest, RevokeResponse,
};
use certgate_proto::{ErrorKind, RpcError};
use tonic::transport::Channel;

use crate::core_pool::{CORE_CALLS_TOTAL, CorePool, Failure, Member, classify};

/// Most retries of one call (so at most 1 + this many attempts).
pub const MAX_RETRIES: u32 = 2;
/// First retry delay after a core answered "unavailable"; doubled each time.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// Whether a call may be repeated without changing the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Repeating it returns the same result and changes nothing more: retried on another core.
    Idempotent,
    /// Only when the request carries an idempotency key (`Issue`, `Revoke`).
    WithKey,
    /// Creates or consumes something: tried once; a core lost mid-call is the client's
    /// "unavailable".
    No,
}

/// Every core RPC the edge calls, with its retry property (the per-method table of
/// docs/operations.md; a unit test checks each method the client calls is listed).
pub const METHODS: &[(&str, Idempotency)] = {
    use Idempotency::*;
    &[
        // certgate.core.v1.Core
        ("issue", WithKey),  // I-3: same key → same certificate
        ("revoke", WithKey), // revoking a revoked certificate returns its record
        ("get_certificate", Idempotent),
        ("get_ca_chain", Idempotent),
        ("get_ocsp", Idempotent),
        ("get_crl", Idempotent),
        ("watch_status", Idempotent), // a stream; reopening resumes from the cursor
        ("describe_profile", Idempotent), // read-only
        ("get_next_ca_chain", Idempotent), // read-only: the staged rollover CA
        // certgate.core.v1.Pending
        ("poll_issue", Idempotent), // the outcome under (tenant, key); issues at most once
        // certgate.acme.v1.Acme
        ("acme_get_tenant_meta", Idempotent),
        ("acme_new_account", No), // creates an account
        ("acme_get_account", Idempotent),
        ("acme_update_account", No), // deactivation is final; contacts are replaced
        ("acme_key_change", No),
        ("acme_list_orders", Idempotent),
        ("acme_new_order", No), // creates an order
        ("acme_get_order", Idempotent),
        ("acme_get_authorization", Idempotent),
        ("acme_deactivate_authorization", No),
        ("acme_respond_challenge", No), // starts a validation
        ("acme_finalize", Idempotent),  // CAS ready→processing once, key "acme-order:{id}"
        ("acme_get_order_certificate", Idempotent),
        ("acme_revoke_certificate", No), // a second attempt answers alreadyRevoked
        // certgate.cmp.v1.Cmp
        ("cmp_compute_mac", Idempotent), // a pure function of its input
        ("cmp_sign_protection", Idempotent), // signing the same bytes again changes nothing
        ("cmp_get_protection_chain", Idempotent),
        ("cmp_confirm", Idempotent), // confirming twice answers `already`
        // certgate.scep.v1.Scep
        ("scep_get_ra_chain", Idempotent),
        ("scep_decrypt_key", Idempotent),
        ("scep_sign_attributes", Idempotent),
        ("scep_enroll", No), // consumes a one-time challenge, then issues
    ]
};

/// The retry property of `method`; unknown methods are not idempotent (fail closed).
pub fn idempotency(method: &str) -> Idempotency {
    METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, i)| *i)
        .unwrap_or(Idempotency::No)
}

/// How long an edge reuses a `Core.DescribeProfile` answer: EST `csrattrs` and CMP
/// `certReqTemplate` are asked before every enrollment by some devices, and a profile change may
/// show up this much later (docs/profiles.md).
pub const PROFILE_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most (tenant, profile) descriptions cached (I-8).
pub const PROFILE_CACHE_CAPACITY: u64 = 1024;

/// Bounded, short-lived cache of profile descriptions by (tenant, profile name as asked).
type ProfileCache = moka::future::Cache<(String, String), Arc<ProfileDescription>>;

fn profile_cache() -> ProfileCache {
    moka::future::Cache::builder()
        .max_capacity(PROFILE_CACHE_CAPACITY)
        .time_to_live(PROFILE_CACHE_TTL)
        .build()
}

/// A cheap-to-clone handle on the cores.
#[derive(Clone)]
pub struct CoreClient {
    pool: Arc<CorePool>,
    deadline: Duration,
    profiles: ProfileCache,
}

impl CoreClient {
    /// A lazily connecting client to one core's socket at `path`.
    pub fn unix(path: impl Into<std::path::PathBuf>, deadline: Duration) -> Self {
        let path = path.into();
        Self::from_channel_labelled(
            &format!("unix:{}", path.display()),
            certgate_proto::transport::unix_channel(path),
            deadline,
        )
    }

    /// A client over any channel (tests use an in-memory one).
    pub fn from_channel(channel: Channel, deadline: Duration) -> Self {
        Self::from_channel_labelled("channel", channel, deadline)
    }

    fn from_channel_labelled(label: &str, channel: Channel, deadline: Duration) -> Self {
        Self {
            pool: CorePool::single(label, channel),
            deadline,
            profiles: profile_cache(),
        }
    }

    /// A client over a pool of cores.
    pub fn from_pool(pool: Arc<CorePool>, deadline: Duration) -> Self {
        Self {
            pool,
            deadline,
            profiles: profile_cache(),
        }
    }

    /// The pool (health checks, metrics).
    pub fn pool(&self) -> &Arc<CorePool> {
        &self.pool
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        req
    }

    /// Runs `call` against one member for at most `timeout`; records metrics; passes the raw
    /// status back for classification.
    async fn attempt<F, T>(
        &self,
        method: &'static str,
        member: &Arc<Member>,
        timeout: Duration,
        fut: F,
    ) -> Result<T, (RpcError, Failure)>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let _in_flight = member.start_call();
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                let failure = classify(&status);
                let err = match failure {
                    Failure::Answered => RpcError::from_status(&status),
                    Failure::NotSent | Failure::Transport => {
                        tracing::warn!(core = %member.label, method, status = %status.message(), "core transport failure");
                        member.eject("transport");
                        RpcError::unavailable("the core is unreachable", Duration::from_secs(1))
                    }
                };
                Err((err, failure))
            }
            Err(_) => Err((
                RpcError::unavailable("the core did not answer in time", Duration::from_secs(1)),
                Failure::Transport,
            )),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err((_, Failure::NotSent | Failure::Transport)) => "transport",
            Err((e, Failure::Answered)) => kind_label(e.kind),
        };
        crate::metrics::record_core_call(method, outcome, start.elapsed());
        ::metrics::counter!(CORE_CALLS_TOTAL, "core" => member.label.clone(), "outcome" => outcome)
            .increment(1);
        result
    }

    /// Runs `call` under the deadline on a member the pool picks, retrying per the method's
    /// [`Idempotency`] (see the module docs), on another member where there is one.
    async fn call<T, R, F, Fut>(&self, method: &'static str, msg: T, call: F) -> Result<R, RpcError>
    where
        T: Clone,
        F: Fn(&Member, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.call_with(method, idempotency(method), msg, call).await
    }

    async fn call_with<T, R, F, Fut>(
        &self,
        method: &'static str,
        idem: Idempotency,
        msg: T,
        call: F,
    ) -> Result<R, RpcError>
    where
        T: Clone,
        F: Fn(&Member, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let idempotent = idem == Idempotency::Idempotent;
        let give_up = Instant::now() + self.deadline;
        let max_attempts = (MAX_RETRIES + 1).min(self.pool.settings().max_attempts.max(1));
        let mut tried: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let (index, member) = self.pool.pick(&tried);
            let remaining = give_up.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RpcError::unavailable(
                    "no core answered in time",
                    Duration::from_secs(1),
                ));
            }
            let result = self
                .attempt(
                    method,
                    &member,
                    remaining,
                    call(&member, self.request(msg.clone(), remaining)),
                )
                .await;
            attempt += 1;
            let (err, failure) = match result {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let retry = attempt < max_attempts
                && match failure {
                    Failure::NotSent => true,
                    Failure::Transport => idempotent,
                    Failure::Answered => idempotent && err.kind == ErrorKind::Unavailable,
                };
            if !retry {
                return Err(err);
            }
            if !tried.contains(&index) {
                tried.push(index);
            }
            if tried.len() >= self.pool.members().len() {
                // Every member tried once: start over (a single core retries itself).
                tried.clear();
            }
            if failure == Failure::Answered {
                let wait = RETRY_BASE * 2u32.pow(attempt - 1);
                if Instant::now() + wait >= give_up {
                    return Err(err);
                }
                tokio::time::sleep(wait).await;
            }
            ::metrics::counter!(crate::metrics::CORE_RETRIES_TOTAL, "method" => method)
                .increment(1);
        }
    }

    /// `Core.Issue` — the one issuance path (I-2). Retried: the request carries an idempotency
    /// key.
    pub async fn issue(&self, req: IssueRequest) -> Result<IssueResponse, RpcError> {
        let idem = if req.idempotency_key.is_empty() {
            Idempotency::No
        } else {
            Idempotency::Idempotent
        };
        self.call_with("issue", idem, req, |m, r| {
            let mut c = m.core.clone();
            async move { c.issue(r).await }
        })
        .await
    }

    /// `Pending.Poll`: the outcome of an Issue made under (tenant, idempotency key) that was
    /// held for approval (SCEP CertPoll, CMP pollReq). Retried: the core issues at most once
    /// per key.
    pub async fn poll_issue(
        &self,
        req: certgate_proto::core::PollRequest,
    ) -> Result<IssueResponse, RpcError> {
        self.call("poll_issue", req, |m, r| {
            let mut c = m.pending.clone();
            async move { c.poll(r).await }
        })
        .await
    }

    /// `Core.GetCertificate`: one certificate record of a tenant.
    pub async fn get_certificate(
        &self,
        tenant: &str,
        serial_hex: &str,
    ) -> Result<certgate_proto::core::CertificateRecord, RpcError> {
        let req = certgate_proto::core::GetCertificateRequest {
            tenant: tenant.to_owned(),
            serial_hex: serial_hex.to_owned(),
        };
        self.call("get_certificate", req, |m, r| {
            let mut c = m.core.clone();
            async move { c.get_certificate(r).await }
        })
        .await
    }

    /// `Acme.GetTenantMeta`: the tenant's ACME settings; NOT_FOUND for an unknown tenant.
    pub async fn tenant_meta(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::acme::TenantMeta, RpcError> {
        let req = certgate_proto::acme::GetTenantMetaRequest {
            tenant: tenant.to_owned(),
        };
        self.call("acme_get_tenant_meta", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.get_tenant_meta(r).await }
        })
        .await
    }

    /// `Core.Revoke`. Retried only with an idempotency key: the core returns the existing
    /// record for a repeated revocation under the same key.
    pub async fn revoke(&self, req: RevokeRequest) -> Result<RevokeResponse, RpcError> {
        let idem = if req.idempotency_key.is_empty() {
            Idempotency::No
        } else {
            Idempotency::Idempotent
        };
        self.call_with("revoke", idem, req, |m, r| {
            let mut c = m.core.clone();
            async move { c.revoke(r).await }
        })
        .await
    }

    /// `Core.GetCaChain` for a tenant (and optionally one issuer).
    pub async fn ca_chain(
        &self,
        tenant: &str,
        issuer_id: &str,
    ) -> Result<GetCaChainResponse, RpcError> {
        let req = GetCaChainRequest {
            tenant: tenant.to_owned(),
            issuer_id: issuer_id.to_owned(),
        };
        self.call("get_ca_chain", req, |m, r| {
            let mut c = m.core.clone();
            async move { c.get_ca_chain(r).await }
        })
        .await
    }

    /// `Core.GetNextCaChain`: the tenant's staged next issuing CA and its chain (NOT_FOUND
    /// `ca.rollover_none` when nothing is staged).
    pub async fn next_ca_chain(&self, tenant: &str) -> Result<GetCaChainResponse, RpcError> {
        let req = certgate_proto::core::GetNextCaChainRequest {
            tenant: tenant.to_owned(),
        };
        self.call("get_next_ca_chain", req, |m, r| {
            let mut c = m.core.clone();
            async move { c.get_next_ca_chain(r).await }
        })
        .await
    }

    /// `Core.DescribeProfile`: the tenant's profile (`""` = its default) as policy to publish,
    /// from a bounded cache of [`PROFILE_CACHE_TTL`]; only successful answers are cached (a
    /// NOT_FOUND is asked again next time, so a newly created profile shows at once).
    pub async fn describe_profile(
        &self,
        tenant: &str,
        profile: &str,
    ) -> Result<Arc<ProfileDescription>, RpcError> {
        let key = (tenant.to_owned(), profile.to_owned());
        if let Some(hit) = self.profiles.get(&key).await {
            ::metrics::counter!("certgate_edge_profile_cache_total", "outcome" => "hit")
                .increment(1);
            return Ok(hit);
        }
        ::metrics::counter!("certgate_edge_profile_cache_total", "outcome" => "miss").increment(1);
        let req = DescribeProfileRequest {
            tenant: key.0.clone(),
            profile: key.1.clone(),
        };
        let desc = Arc::new(
            self.call("describe_profile", req, |m, r| {
                let mut c = m.core.clone();
                async move { c.describe_profile(r).await }
            })
            .await?,
        );
        self.profiles.insert(key, desc.clone()).await;
        Ok(desc)
    }

    /// `Core.GetOcsp`: an OCSP cache miss (one certificate, or a set).
    pub async fn get_ocsp(
        &self,
        req: certgate_proto::core::GetOcspRequest,
    ) -> Result<certgate_proto::core::OcspEntry, RpcError> {
        self.call("get_ocsp", req, |m, r| {
            let mut c = m.core.clone();
            async move { c.get_ocsp(r).await }
        })
        .await
    }

    /// `Core.GetCrl`: a CRL cache miss.
    pub async fn get_crl(
        &self,
        req: certgate_proto::core::GetCrlRequest,
    ) -> Result<certgate_proto::core::CrlEntry, RpcError> {
        self.call("get_crl", req, |m, r| {
            let mut c = m.core.clone();
            async move { c.get_crl(r).await }
        })
        .await
    }

    /// `Acme.NewAccount` (not retried: creates).
    pub async fn acme_new_account(
        &self,
        req: certgate_proto::acme::NewAccountRequest,
    ) -> Result<certgate_proto::acme::NewAccountResponse, RpcError> {
        self.call("acme_new_account", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.new_account(r).await }
        })
        .await
    }

    /// `Acme.GetAccount` by id or thumbprint.
    pub async fn acme_get_account(
        &self,
        req: certgate_proto::acme::GetAccountRequest,
    ) -> Result<certgate_proto::acme::Account, RpcError> {
        self.call("acme_get_account", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.get_account(r).await }
        })
        .await
    }

    /// `Acme.UpdateAccount`.
    pub async fn acme_update_account(
        &self,
        req: certgate_proto::acme::UpdateAccountRequest,
    ) -> Result<certgate_proto::acme::Account, RpcError> {
        self.call("acme_update_account", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.update_account(r).await }
        })
        .await
    }

    /// `Acme.KeyChange`.
    pub async fn acme_key_change(
        &self,
        req: certgate_proto::acme::KeyChangeRequest,
    ) -> Result<certgate_proto::acme::KeyChangeResponse, RpcError> {
        self.call("acme_key_change", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.key_change(r).await }
        })
        .await
    }

    /// `Acme.ListOrders`.
    pub async fn acme_list_orders(
        &self,
        req: certgate_proto::acme::ListOrdersRequest,
    ) -> Result<certgate_proto::acme::ListOrdersResponse, RpcError> {
        self.call("acme_list_orders", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.list_orders(r).await }
        })
        .await
    }

    /// `Acme.NewOrder` (not retried: creates).
    pub async fn acme_new_order(
        &self,
        req: certgate_proto::acme::NewOrderRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        self.call("acme_new_order", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.new_order(r).await }
        })
        .await
    }

    /// `Acme.GetOrder`.
    pub async fn acme_get_order(
        &self,
        req: certgate_proto::acme::GetOrderRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        self.call("acme_get_order", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.get_order(r).await }
        })
        .await
    }

    /// `Acme.GetAuthorization`.
    pub async fn acme_get_authorization(
        &self,
        req: certgate_proto::acme::GetAuthorizationRequest,
    ) -> Result<certgate_proto::acme::Authorization, RpcError> {
        self.call("acme_get_authorization", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.get_authorization(r).await }
        })
        .await
    }

    /// `Acme.DeactivateAuthorization`.
    pub async fn acme_deactivate_authorization(
        &self,
        req: certgate_proto::acme::GetAuthorizationRequest,
    ) -> Result<certgate_proto::acme::Authorization, RpcError> {
        self.call("acme_deactivate_authorization", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.deactivate_authorization(r).await }
        })
        .await
    }

    /// `Acme.RespondChallenge`; `wait_ms` must stay well under the core deadline.
    pub async fn acme_respond_challenge(
        &self,
        req: certgate_proto::acme::RespondChallengeRequest,
    ) -> Result<certgate_proto::acme::RespondChallengeResponse, RpcError> {
        self.call("acme_respond_challenge", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.respond_challenge(r).await }
        })
        .await
    }

    /// `Acme.Finalize` (retried: the core keys issuance by the order id).
    pub async fn acme_finalize(
        &self,
        req: certgate_proto::acme::FinalizeRequest,
    ) -> Result<certgate_proto::acme::Order, RpcError> {
        self.call("acme_finalize", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.finalize(r).await }
        })
        .await
    }

    /// `Acme.GetOrderCertificate`.
    pub async fn acme_get_order_certificate(
        &self,
        req: certgate_proto::acme::GetOrderCertificateRequest,
    ) -> Result<certgate_proto::acme::CertificateChain, RpcError> {
        self.call("acme_get_order_certificate", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.get_order_certificate(r).await }
        })
        .await
    }

    /// `Acme.RevokeCertificate`.
    pub async fn acme_revoke_certificate(
        &self,
        req: certgate_proto::acme::RevokeCertificateRequest,
    ) -> Result<certgate_proto::acme::RevokeCertificateResponse, RpcError> {
        self.call("acme_revoke_certificate", req, |m, r| {
            let mut c = m.acme.clone();
            async move { c.revoke_certificate(r).await }
        })
        .await
    }

    /// `Cmp.ComputeMac` (a pure function of its input: retried).
    pub async fn cmp_compute_mac(
        &self,
        req: certgate_proto::cmp::ComputeMacRequest,
    ) -> Result<certgate_proto::cmp::ComputeMacResponse, RpcError> {
        self.call("cmp_compute_mac", req, |m, r| {
            let mut c = m.cmp.clone();
            async move { c.compute_mac(r).await }
        })
        .await
    }

    /// `Cmp.SignProtection` (retried: signing the same bytes again changes nothing).
    pub async fn cmp_sign_protection(
        &self,
        req: certgate_proto::cmp::SignProtectionRequest,
    ) -> Result<certgate_proto::cmp::SignProtectionResponse, RpcError> {
        self.call("cmp_sign_protection", req, |m, r| {
            let mut c = m.cmp.clone();
            async move { c.sign_protection(r).await }
        })
        .await
    }

    /// `Cmp.GetProtectionChain`.
    pub async fn cmp_protection_chain(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::cmp::GetProtectionChainResponse, RpcError> {
        let req = certgate_proto::cmp::GetProtectionChainRequest {
            tenant: tenant.to_owned(),
        };
        self.call("cmp_get_protection_chain", req, |m, r| {
            let mut c = m.cmp.clone();
            async move { c.get_protection_chain(r).await }
        })
        .await
    }

    /// `Cmp.Confirm` (idempotent by contract: confirming twice answers `already`).
    pub async fn cmp_confirm(
        &self,
        req: certgate_proto::cmp::ConfirmRequest,
    ) -> Result<certgate_proto::cmp::ConfirmResponse, RpcError> {
        self.call("cmp_confirm", req, |m, r| {
            let mut c = m.cmp.clone();
            async move { c.confirm(r).await }
        })
        .await
    }

    /// `Scep.GetRaChain`: the tenant's RA certificate, then its issuers up to the root.
    pub async fn scep_ra_chain(
        &self,
        tenant: &str,
    ) -> Result<certgate_proto::scep::GetRaChainResponse, RpcError> {
        let req = certgate_proto::scep::GetRaChainRequest {
            tenant: tenant.to_owned(),
        };
        self.call("scep_get_ra_chain", req, |m, r| {
            let mut c = m.scep.clone();
            async move { c.get_ra_chain(r).await }
        })
        .await
    }

    /// `Scep.DecryptKey` (a pure function of its input: retried).
    pub async fn scep_decrypt_key(
        &self,
        req: certgate_proto::scep::DecryptKeyRequest,
    ) -> Result<certgate_proto::scep::DecryptKeyResponse, RpcError> {
        self.call("scep_decrypt_key", req, |m, r| {
            let mut c = m.scep.clone();
            async move { c.decrypt_key(r).await }
        })
        .await
    }

    /// `Scep.SignAttributes` (retried: signing the same bytes again changes nothing).
    pub async fn scep_sign_attributes(
        &self,
        req: certgate_proto::scep::SignAttributesRequest,
    ) -> Result<certgate_proto::scep::SignAttributesResponse, RpcError> {
        self.call("scep_sign_attributes", req, |m, r| {
            let mut c = m.scep.clone();
            async move { c.sign_attributes(r).await }
        })
        .await
    }

    /// `Scep.Enroll`: one PKCSReq/RenewalReq answered by the core (decrypt, challenge or
    /// renewal check, Issue, RA-signed CertRep). Not retried: a one-time challenge is consumed
    /// before the issuance.
    pub async fn scep_enroll(
        &self,
        req: certgate_proto::scep::EnrollRequest,
    ) -> Result<certgate_proto::scep::EnrollResponse, RpcError> {
        self.call("scep_enroll", req, |m, r| {
            let mut c = m.scep.clone();
            async move { c.enroll(r).await }
        })
        .await
    }

    /// `Core.WatchStatus`: opens the status stream. Only opening it is bounded by the deadline;
    /// the stream itself lives as long as the core keeps it (the watch task bounds idleness).
    pub async fn watch_status(
        &self,
        req: certgate_proto::core::WatchStatusRequest,
    ) -> Result<tonic::Streaming<certgate_proto::core::StatusEvent>, RpcError> {
        // Opened on one healthy core; the watch task reopens (on whichever core the pool picks)
        // when the stream ends or goes idle.
        let (_, member) = self.pool.pick(&[]);
        let mut c = member.core.clone();
        self.attempt(
            "watch_status",
            &member,
            self.deadline,
            c.watch_status(tonic::Request::new(req)),
        )
        .await
        .map_err(|(e, _)| e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_the_client_calls_has_an_idempotency_entry() {
        let src = include_str!("core_client.rs");
        let mut called = 0;
        for chunk in src
            .split("self.call(\"")
            .skip(1)
            .chain(src.split("self.call_with(\"").skip(1))
        {
            let name = chunk.split('"').next().unwrap_or_default();
            if name.is_empty() || name.contains(' ') {
                continue;
            }
            called += 1;
            assert!(
                METHODS.iter().any(|(m, _)| *m == name),
                "{name} has no entry in METHODS"
            );
        }
        assert!(called > 20, "found {called} call sites");
        assert_eq!(idempotency("acme_new_order"), Idempotency::No);
        assert_eq!(idempotency("get_ocsp"), Idempotency::Idempotent);
        assert_eq!(idempotency("issue"), Idempotency::WithKey);
        assert_eq!(idempotency("no_such_method"), Idempotency::No);
    }
}
