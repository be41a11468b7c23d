//! Deferred issuance with manual approval (docs/profiles.md `approval = "manual"`).
//!
//! A request that passes a manual-approval profile is not signed: the issuance path records it as
//! a pending request (store: [`crate::store::pending`], audited `approval.requested`) and answers
//! `IssueResponse.status = PENDING` with a retry-after; the edges turn that into their protocol's
//! "later" (EST 202 + Retry-After, SCEP PENDING, CMP waiting/pollRep). Only an operator decides,
//! through `RequestAdmin` on the admin allow-list ([`RequestAdminService`]): an edge can only
//! poll ([`PendingService`]). Approving issues the held request at once through the one issuance
//! path (I-2) under its own idempotency key (I-3), so every later poll — EST re-POST, SCEP
//! CertPoll, CMP pollReq — returns the same certificate byte for byte. A denied or expired
//! request is refused on every poll. Each tenant holds at most `max_open_per_tenant` open requests
//! (I-8); beyond that a new request is refused (`approval.queue_full`), never queued.

use std::sync::Arc;

use certgate_proto::admin::request_admin_server::RequestAdmin;
use certgate_proto::admin::{
    DecideRequest, ListRequestsRequest, ListRequestsResponse, PendingRequest,
};
use certgate_proto::core::pending_server::Pending;
use certgate_proto::core::{IssueResponse, PollRequest, issue_response};
use certgate_proto::transport::caller_of;
use der::Decode;
use serde::Deserialize;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::service::State;
use crate::store::pending::{
    Decision, PendingRec, PendingStore, STATE_APPROVED, STATE_DENIED, STATE_EXPIRED, STATE_PENDING,
};

fn decision(to: &str, by: &str, reason: &str, now: i64) -> Decision {
    Decision {
        to: to.to_owned(),
        by: by.to_owned(),
        reason: reason.to_owned(),
        now,
    }
}

/// `[approval]` in core.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// Most open (pending, unexpired) requests one tenant may hold (I-8).
    pub max_open_per_tenant: usize,
    /// How long a request may wait for a decision before it expires.
    pub ttl_seconds: i64,
    /// The retry-after handed to clients while a request is pending.
    pub retry_after_seconds: u32,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            max_open_per_tenant: 1000,
            ttl_seconds: 7 * 86_400,
            retry_after_seconds: 5,
        }
    }
}

impl ApprovalConfig {
    /// Checks the bounds.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.max_open_per_tenant == 0 || self.max_open_per_tenant > 1_000_000 {
            return Err("[approval] max_open_per_tenant must be 1..=1000000".into());
        }
        if self.ttl_seconds < 60 {
            return Err("[approval] ttl_seconds must be at least 60".into());
        }
        if self.retry_after_seconds == 0 || self.retry_after_seconds > 86_400 {
            return Err("[approval] retry_after_seconds must be 1..=86400".into());
        }
        Ok(())
    }
}

/// The pending store, or the refusal when the backend has none (fail closed, I-5: a request
/// that needs approval is never issued without it).
pub fn pending_store(store: &dyn crate::store::Store) -> Result<&dyn PendingStore> {
    store.as_pending().ok_or_else(|| {
        CoreError::policy(
            "approval.unsupported",
            "this store backend cannot hold requests for manual approval",
        )
    })
}

/// A new request id: `r` + 10 hex digits (never starts with `-`, so it is a safe CLI argument).
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 5];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
    Ok(format!("r{}", hex::encode(b)))
}

/// What the operator sees: subject and SANs of the TBS that would be signed.
pub fn summary_of(tbs_der: &[u8]) -> String {
    let Ok(tbs) = x509_cert::TbsCertificate::from_der(tbs_der) else {
        return String::new();
    };
    let mut out = format!("subject={}", tbs.subject);
    let san_oid = const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME;
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != san_oid {
            continue;
        }
        if let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(ext.extn_value.as_bytes()) {
            let names: Vec<String> = san
                .0
                .iter()
                .map(|n| match n {
                    x509_cert::ext::pkix::name::GeneralName::DnsName(d) => {
                        format!("DNS:{}", d.as_str())
                    }
                    x509_cert::ext::pkix::name::GeneralName::IpAddress(ip) => {
                        let b = ip.as_bytes();
                        match b.len() {
                            4 => <[u8; 4]>::try_from(b)
                                .map(|a| format!("IP:{}", std::net::Ipv4Addr::from(a)))
                                .unwrap_or_default(),
                            16 => <[u8; 16]>::try_from(b)
                                .map(|a| format!("IP:{}", std::net::Ipv6Addr::from(a)))
                                .unwrap_or_default(),
                            _ => "IP:?".into(),
                        }
                    }
                    other => format!("{other:?}"),
                })
                .collect();
            out.push_str(&format!(" san={}", names.join(",")));
        }
    }
    out
}

/// The answer while a request waits.
pub fn pending_response(rec: &PendingRec, retry_after: u32) -> IssueResponse {
    IssueResponse {
        status: issue_response::Status::Pending as i32,
        pending_id: rec.id.clone(),
        retry_after_seconds: retry_after,
        profile: rec.profile.clone(),
        ..Default::default()
    }
}

/// The refusal for a request that was decided against (or never decided in time).
pub fn refusal(rec: &PendingRec) -> CoreError {
    match rec.state.as_str() {
        STATE_DENIED => CoreError::policy(
            "approval.denied",
            "an operator denied this certificate request",
        ),
        _ => CoreError::policy(
            "approval.expired",
            "this certificate request was not approved in time",
        ),
    }
}

/// Marks a still pending request past its expiry as expired (audited); returns the current
/// record.
pub fn expire_if_due(store: &dyn crate::store::Store, rec: PendingRec) -> Result<PendingRec> {
    let now = crate::now_unix();
    if rec.state != STATE_PENDING || now <= rec.expires_unix {
        return Ok(rec);
    }
    let ps = pending_store(store)?;
    let audit = AuditEntry::new(
        "approval.expired",
        &rec.tenant,
        "core",
        json!({"id": rec.id, "idempotency_key": rec.idem_key}),
    );
    Ok(ps
        .decide_pending(
            &rec.tenant,
            &rec.id,
            &decision(STATE_EXPIRED, "core", "expired", now),
            &audit,
        )?
        .unwrap_or(rec))
}

fn wire(rec: &PendingRec) -> PendingRequest {
    PendingRequest {
        tenant: rec.tenant.clone(),
        id: rec.id.clone(),
        state: rec.state.clone(),
        protocol: rec.protocol.clone(),
        client_identity: rec.client_identity.clone(),
        profile: rec.profile.clone(),
        summary: rec.summary.clone(),
        created_unix: rec.created_unix,
        expires_unix: rec.expires_unix,
        decided_by: rec.decided_by.clone(),
        decided_unix: rec.decided_unix,
        reason: rec.reason.clone(),
        idempotency_key: rec.idem_key.clone(),
        ..Default::default()
    }
}

/// `certgate.core.v1.Pending` (edges: the Core allow-list).
#[derive(Clone)]
pub struct PendingService(pub Arc<State>);

#[tonic::async_trait]
impl Pending for PendingService {
    async fn poll(&self, req: Request<PollRequest>) -> Result<Response<IssueResponse>, Status> {
        let caller = caller_of(&req);
        crate::service::check_core_caller(&self.0, &caller, "Poll")?;
        let r = req.into_inner();
        let out = self.0.issuer.poll(&r, &caller).await?;
        Ok(Response::new(out))
    }
}

/// `certgate.admin.v1.RequestAdmin` (operators: the admin allow-list).
#[derive(Clone)]
pub struct RequestAdminService(pub Arc<State>);

impl RequestAdminService {
    fn admit<T>(&self, req: &Request<T>, rpc: &str) -> Result<certgate_proto::Caller> {
        let caller = caller_of(req);
        crate::service::check_admin_caller(&self.0, &caller, rpc)?;
        Ok(caller)
    }

    fn find(&self, tenant: &str, id: &str) -> Result<PendingRec> {
        let ps = pending_store(self.0.store.as_ref())?;
        let rec = crate::ra::blocking(|| ps.pending_by_id(tenant, id))?
            .ok_or_else(|| CoreError::not_found("approval.unknown", "no such request"))?;
        crate::ra::blocking(|| expire_if_due(self.0.store.as_ref(), rec))
    }
}

fn not_pending(rec: &PendingRec) -> CoreError {
    CoreError::policy(
        "approval.not_pending",
        format!("request {} is {}, not pending", rec.id, rec.state),
    )
}

#[tonic::async_trait]
impl RequestAdmin for RequestAdminService {
    async fn list_requests(
        &self,
        req: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        self.admit(&req, "ListRequests")?;
        let r = req.into_inner();
        let state = match r.state.as_str() {
            "" => None,
            s @ (STATE_PENDING | STATE_APPROVED | STATE_DENIED | STATE_EXPIRED) => Some(s),
            _ => {
                return Err(CoreError::malformed(
                    "request.state",
                    "state is one of pending, approved, denied, expired",
                )
                .into());
            }
        };
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let store = self.0.store.as_ref();
        let ps = pending_store(store)?;
        let recs = crate::ra::blocking(|| ps.list_pending(&r.tenant, state, limit))?;
        let mut requests = Vec::with_capacity(recs.len());
        for rec in recs {
            let rec = crate::ra::blocking(|| expire_if_due(store, rec))?;
            let mut w = wire(&rec);
            if rec.state == STATE_APPROVED
                && let Some(c) =
                    crate::ra::blocking(|| store.cert_by_key(&rec.tenant, &rec.idem_key))?
            {
                w.serial_hex = c.serial_hex;
            }
            requests.push(w);
        }
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    async fn approve_request(
        &self,
        req: Request<DecideRequest>,
    ) -> Result<Response<PendingRequest>, Status> {
        let caller = self.admit(&req, "ApproveRequest")?;
        let r = req.into_inner();
        let rec = self.find(&r.tenant, &r.id)?;
        if rec.state != STATE_PENDING {
            return Err(not_pending(&rec).into());
        }
        let ps = pending_store(self.0.store.as_ref())?;
        let audit = AuditEntry::new(
            "approval.approved",
            &rec.tenant,
            &caller,
            json!({"id": rec.id, "idempotency_key": rec.idem_key, "reason": r.reason}),
        );
        let now = crate::now_unix();
        let who = caller.to_string();
        let rec = crate::ra::blocking(|| {
            ps.decide_pending(
                &rec.tenant,
                &rec.id,
                &decision(STATE_APPROVED, &who, &r.reason, now),
                &audit,
            )
        })?
        .ok_or_else(|| CoreError::Store("pending request vanished".into()))?;
        if rec.state != STATE_APPROVED {
            return Err(not_pending(&rec).into());
        }
        let mut w = wire(&rec);
        // Sign now, once; a failure (signer down) leaves the approval standing and the client's
        // next poll retries the same issuance.
        match self.0.issuer.issue_held(&rec, &caller).await {
            Ok(resp) => w.serial_hex = resp.serial_hex,
            Err(e) => {
                tracing::warn!(tenant = %rec.tenant, id = %rec.id, error = %e, "approved request not issued yet");
                w.issue_error = e.to_string();
            }
        }
        Ok(Response::new(w))
    }

    async fn deny_request(
        &self,
        req: Request<DecideRequest>,
    ) -> Result<Response<PendingRequest>, Status> {
        let caller = self.admit(&req, "DenyRequest")?;
        let r = req.into_inner();
        let rec = self.find(&r.tenant, &r.id)?;
        if rec.state != STATE_PENDING {
            return Err(not_pending(&rec).into());
        }
        let ps = pending_store(self.0.store.as_ref())?;
        let audit = AuditEntry::new(
            "approval.denied",
            &rec.tenant,
            &caller,
            json!({"id": rec.id, "idempotency_key": rec.idem_key, "reason": r.reason}),
        );
        let who = caller.to_string();
        let rec = crate::ra::blocking(|| {
            ps.decide_pending(
                &rec.tenant,
                &rec.id,
                &decision(STATE_DENIED, &who, &r.reason, crate::now_unix()),
                &audit,
            )
        })?
        .ok_or_else(|| CoreError::Store("pending request vanished".into()))?;
        if rec.state != STATE_DENIED {
            return Err(not_pending(&rec).into());
        }
        Ok(Response::new(wire(&rec)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_are_checked() {
        ApprovalConfig::default()
            .check()
            .expect("defaults are valid");
        let parsed: ApprovalConfig =
            toml::from_str("max_open_per_tenant = 3\nretry_after_seconds = 2").expect("parses");
        assert_eq!(parsed.max_open_per_tenant, 3);
        assert_eq!(parsed.ttl_seconds, ApprovalConfig::default().ttl_seconds);
        for bad in [
            "max_open_per_tenant = 0",
            "ttl_seconds = 10",
            "retry_after_seconds = 0",
        ] {
            let c: ApprovalConfig = toml::from_str(bad).expect("parses");
            assert!(c.check().is_err(), "{bad}");
        }
        assert!(toml::from_str::<ApprovalConfig>("unknown = 1").is_err());
    }

    #[test]
    fn ids_are_safe_cli_arguments() {
        let id = new_id().expect("id");
        assert_eq!(id.len(), 11);
        assert!(id.starts_with('r'));
        assert!(id[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_id().expect("id"));
    }

    #[test]
    fn summary_of_garbage_is_empty() {
        assert_eq!(summary_of(b"not a tbs"), "");
    }
}
