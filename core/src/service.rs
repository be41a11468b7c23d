//! The tonic services: `Core` (edges, CLI) and `Admin` (CLI). Every RPC checks the transport's
//! caller against the right allow-list first (fail closed, I-5) and audits a denial.

use std::pin::Pin;
use std::sync::Arc;

use certgate_proto::admin::admin_server::Admin;
use certgate_proto::admin::{
    ApproveCeremonyRequest, CaInfo, Ceremony, CreateIssuingCaRequest, ExecuteCeremonyRequest,
    GetProfileVersionsRequest, ListCasRequest, ListCasResponse, ListCeremoniesRequest,
    ListCeremoniesResponse, ListProfilesRequest, ListProfilesResponse, ListTenantsRequest,
    ListTenantsResponse, ProfileVersion, PutProfileRequest, StartCeremonyRequest, Tenant,
    VerifyAuditRequest, VerifyAuditResponse,
};
use certgate_proto::core::core_server::Core;
use certgate_proto::core::{
    CertificateRecord, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest, IssueRequest,
    IssueResponse, RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest, revoke_request,
};
use certgate_proto::transport::caller_of;
use certgate_proto::{AllowList, Caller};
use futures::Stream;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::audit::{AuditEntry, verify_chain};
use crate::ca::{Authority, check_id};
use crate::error::{CoreError, Result};
use crate::issue::{Issuer, chain_of};
use crate::profile::{BUILTIN_PROFILE_NAME, Profile};
use crate::store::{CertRec, ProfileRec, RevokeOp, Store, TenantRec};
use crate::tasks::META_AUDIT_KEY;
use crate::x509;

/// What both services share.
pub struct State {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The issuance path.
    pub issuer: Issuer,
    /// The CA authority.
    pub authority: Authority,
    /// Who may call Core.
    pub allow: AllowList,
    /// Who may call Admin.
    pub admin_allow: AllowList,
    /// The pinned audit key hash (`[audit] public_key_sha256`), if any.
    pub audit_key_sha256: Option<String>,
}

/// The `Core` service.
#[derive(Clone)]
pub struct CoreService(pub Arc<State>);

/// The `Admin` service.
#[derive(Clone)]
pub struct AdminService(pub Arc<State>);

fn check(
    state: &State,
    list: &AllowList,
    caller: &Caller,
    rpc: &str,
    rule: &'static str,
) -> Result<()> {
    if list.admits(caller) {
        return Ok(());
    }
    // A denial is audited; if even that fails the call is still refused.
    let _ = state.store.append_audit(&AuditEntry::new(
        "auth.denied",
        "",
        caller,
        json!({"rpc": rpc, "rule": rule}),
    ));
    tracing::info!(%caller, rpc, "caller denied");
    Err(CoreError::Unauthorized { rule })
}

/// Admits a caller of an edge-facing service (the Core allow-list), auditing a denial.
pub(crate) fn check_core_caller(state: &State, caller: &Caller, rpc: &str) -> Result<()> {
    check(state, &state.allow, caller, rpc, "core.caller_not_allowed")
}

/// Admits a caller of an operator service (the admin allow-list), auditing a denial.
pub(crate) fn check_admin_caller(state: &State, caller: &Caller, rpc: &str) -> Result<()> {
    check(
        state,
        &state.admin_allow,
        caller,
        rpc,
        "admin.caller_not_allowed",
    )
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("blocking task: {e}")))?
}

fn cert_record(c: &CertRec) -> CertificateRecord {
    CertificateRecord {
        tenant: c.tenant.clone(),
        serial_hex: c.serial_hex.clone(),
        certificate_der: c.cert_der.clone(),
        issuer_id: c.issuer_id.clone(),
        profile: c.profile.clone(),
        profile_version: c.profile_version,
        not_before_unix: c.not_before_unix,
        not_after_unix: c.not_after_unix,
        revoked: c.revoked,
        revoked_at_unix: c.revoked_at_unix,
        revocation_reason: c.revocation_reason,
    }
}

fn normalise_serial(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_start_matches("0x");
    let bytes = hex::decode(if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    })
    .map_err(|_| CoreError::malformed("request.serial", "serial is not hex"))?;
    if bytes.is_empty() || bytes.len() > 21 {
        return Err(CoreError::malformed("request.serial", "serial length"));
    }
    Ok(x509::serial_hex(&bytes))
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Core for CoreService {
    async fn issue(&self, req: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "Issue",
            "core.caller_not_allowed",
        )?;
        let resp = self.0.issuer.issue(req.into_inner(), &caller).await?;
        Ok(Response::new(resp))
    }

    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "Revoke",
            "core.caller_not_allowed",
        )?;
        let r = req.into_inner();
        if r.idempotency_key.is_empty()
            || r.idempotency_key.len() > crate::issue::MAX_IDEMPOTENCY_KEY
        {
            return Err(CoreError::malformed(
                "request.idempotency_key",
                "an idempotency key is required",
            )
            .into());
        }
        if r.reason > 10 || r.reason == 7 {
            return Err(CoreError::malformed("revoke.reason", "not an RFC 5280 CRLReason").into());
        }
        let serial = match &r.target {
            Some(revoke_request::Target::SerialHex(s)) => normalise_serial(s)?,
            Some(revoke_request::Target::CertificateDer(d)) => {
                x509::serial_hex(&x509::serial_of(d)?)
            }
            None => {
                return Err(
                    CoreError::malformed("revoke.target", "no serial or certificate").into(),
                );
            }
        };
        let store = self.0.store.clone();
        let now = crate::now_unix();
        let audit = AuditEntry::new(
            "revoke",
            &r.tenant,
            &caller,
            json!({"serial": serial, "reason": r.reason, "idempotency_key": r.idempotency_key,
                   "protocol": r.protocol, "client": r.client_identity}),
        );
        let tenant = r.tenant.clone();
        let mut hashed = b"certgate-revoke-request-v1\0".to_vec();
        hashed.extend_from_slice(serial.as_bytes());
        hashed.push(0);
        hashed.extend_from_slice(&r.reason.to_be_bytes());
        let op = RevokeOp {
            serial_hex: serial.clone(),
            reason: r.reason,
            now,
            idem_key: r.idempotency_key.clone(),
            request_hash: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &hashed)
                .as_ref()
                .to_vec(),
        };
        let out = blocking(move || store.revoke(&tenant, &op, &audit)).await?;
        // The revocation queued its OCSP re-signing in the same transaction; wake the worker.
        if let Some(engine) = self.0.issuer.status() {
            engine.poke();
        }
        let Some((rec, already)) = out else {
            return Err(CoreError::not_found("certificate.unknown", "no such certificate").into());
        };
        // A certificate given by value must be the stored one, not merely share its serial.
        if let Some(revoke_request::Target::CertificateDer(d)) = &r.target
            && *d != rec.cert_der
        {
            return Err(CoreError::not_found("certificate.unknown", "no such certificate").into());
        }
        Ok(Response::new(RevokeResponse {
            serial_hex: rec.serial_hex,
            revoked_at_unix: rec.revoked_at_unix,
            reason: rec.revocation_reason,
            already_revoked: already,
        }))
    }

    async fn get_certificate(
        &self,
        req: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "GetCertificate",
            "core.caller_not_allowed",
        )?;
        let r = req.into_inner();
        let serial = normalise_serial(&r.serial_hex)?;
        let cert =
            self.0.store.get_cert(&r.tenant, &serial)?.ok_or_else(|| {
                CoreError::not_found("certificate.unknown", "no such certificate")
            })?;
        Ok(Response::new(cert_record(&cert)))
    }

    async fn get_ca_chain(
        &self,
        req: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "GetCaChain",
            "core.caller_not_allowed",
        )?;
        let r = req.into_inner();
        let store = self.0.store.as_ref();
        let tenant = store
            .get_tenant(&r.tenant)?
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
        let issuer = if r.issuer_id.is_empty() {
            tenant.active_issuer_id.clone()
        } else {
            r.issuer_id
        };
        let ca = store
            .get_ca(&issuer)?
            .filter(|c| c.tenant == tenant.name)
            .ok_or_else(|| CoreError::not_found("issuer.unknown", "no such issuing CA"))?;
        let chain = chain_of(store, &ca.ca_id)?;
        let issuer_ids = store
            .list_cas(Some(&tenant.name))?
            .into_iter()
            .filter(|c| c.kind == "issuing")
            .map(|c| c.ca_id)
            .collect();
        Ok(Response::new(GetCaChainResponse {
            issuer_id: ca.ca_id,
            chain_der: chain.into_iter().map(|c| c.cert_der).collect(),
            issuer_ids,
        }))
    }

    async fn get_ocsp(
        &self,
        req: Request<certgate_proto::core::GetOcspRequest>,
    ) -> Result<Response<certgate_proto::core::OcspEntry>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "GetOcsp",
            "core.caller_not_allowed",
        )?;
        let engine = status_engine(&self.0)?;
        let r = req.into_inner();
        let out = engine.get_ocsp(&r).await;
        metrics::counter!("certgate_core_status_requests_total", "rpc" => "GetOcsp",
            "tenant" => r.tenant.clone(), "outcome" => if out.is_ok() { "ok" } else { "error" })
        .increment(1);
        Ok(Response::new(out?))
    }

    async fn get_crl(
        &self,
        req: Request<certgate_proto::core::GetCrlRequest>,
    ) -> Result<Response<certgate_proto::core::CrlEntry>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "GetCrl",
            "core.caller_not_allowed",
        )?;
        let engine = status_engine(&self.0)?;
        let r = req.into_inner();
        let out = engine.get_crl(&r).await;
        metrics::counter!("certgate_core_status_requests_total", "rpc" => "GetCrl",
            "tenant" => r.tenant.clone(), "outcome" => if out.is_ok() { "ok" } else { "error" })
        .increment(1);
        Ok(Response::new(out?))
    }

    async fn describe_profile(
        &self,
        req: Request<certgate_proto::core::DescribeProfileRequest>,
    ) -> Result<Response<certgate_proto::core::ProfileDescription>, Status> {
        let caller = caller_of(&req);
        check_core_caller(&self.0, &caller, "DescribeProfile")?;
        let r = req.into_inner();
        let store = self.0.store.clone();
        let out = blocking(move || {
            // I-4: looked up under the request's tenant only; an unknown tenant and another
            // tenant's profile answer alike, so nothing about other tenants shows.
            let unknown = || CoreError::not_found("profile.unknown", "no such profile");
            let tenant = store.get_tenant(&r.tenant)?.ok_or_else(unknown)?;
            let name = if r.profile.is_empty() {
                tenant.default_profile.clone()
            } else {
                r.profile.clone()
            };
            let rec = store
                .latest_profile(&tenant.name, &name)?
                .ok_or_else(unknown)?;
            let profile = Profile::from_json(&rec.body_json)?;
            Ok(profile.describe(&tenant.name, &rec.name, rec.version))
        })
        .await;
        metrics::counter!("certgate_core_describe_profile_total",
            "outcome" => if out.is_ok() { "ok" } else { "error" })
        .increment(1);
        Ok(Response::new(out?))
    }

    /// The staged next issuing CA (rollover) with its chain; NOT_FOUND when none is staged.
    async fn get_next_ca_chain(
        &self,
        req: Request<certgate_proto::core::GetNextCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        let caller = caller_of(&req);
        check_core_caller(&self.0, &caller, "GetNextCaChain")?;
        let r = req.into_inner();
        let state = self.0.clone();
        let out = blocking(move || {
            let store = state.store.as_ref();
            store
                .get_tenant(&r.tenant)?
                .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
            let staged = state.authority.staged(&r.tenant)?.ok_or_else(|| {
                CoreError::not_found("ca.rollover_none", "no CA is staged for rollover")
            })?;
            let chain = chain_of(store, &staged.ca_id)?;
            Ok(GetCaChainResponse {
                issuer_id: staged.ca_id,
                chain_der: chain.into_iter().map(|c| c.cert_der).collect(),
                issuer_ids: Vec::new(),
            })
        })
        .await;
        Ok(Response::new(out?))
    }

    type WatchStatusStream = StatusStream;

    /// Issuers, a snapshot (or a resume from the cursor), live events, heartbeats
    /// (crate::status::watch).
    async fn watch_status(
        &self,
        req: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let caller = caller_of(&req);
        check(
            &self.0,
            &self.0.allow,
            &caller,
            "WatchStatus",
            "core.caller_not_allowed",
        )?;
        let engine = status_engine(&self.0)?.clone();
        Ok(Response::new(Box::pin(crate::status::watch::watch(
            engine,
            req.into_inner(),
        ))))
    }
}

/// The status engine, or UNAVAILABLE when this core runs without one (a test harness that did
/// not attach it).
fn status_engine(state: &State) -> Result<&Arc<crate::status::StatusEngine>> {
    state.issuer.status().ok_or(CoreError::Busy(
        "revocation status is not running in this core",
    ))
}

fn tenant_wire(t: TenantRec) -> Tenant {
    Tenant {
        name: t.name,
        public_base_url: t.public_base_url,
        default_profile: t.default_profile,
        active_issuer_id: t.active_issuer_id,
    }
}

fn profile_wire(p: ProfileRec) -> ProfileVersion {
    ProfileVersion {
        tenant: p.tenant,
        name: p.name,
        version: p.version,
        body_json: p.body_json,
        created_unix: p.created_unix,
    }
}

impl AdminService {
    fn admit<T>(&self, req: &Request<T>, rpc: &str) -> Result<Caller> {
        let caller = caller_of(req);
        check(
            &self.0,
            &self.0.admin_allow,
            &caller,
            rpc,
            "admin.caller_not_allowed",
        )?;
        Ok(caller)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put_tenant(&self, req: Request<Tenant>) -> Result<Response<Tenant>, Status> {
        let caller = self.admit(&req, "PutTenant")?;
        let t = req.into_inner();
        check_id("tenant.name", &t.name)?;
        if !(t.public_base_url.starts_with("http://") || t.public_base_url.starts_with("https://"))
            || !t.public_base_url.is_ascii()
        {
            return Err(CoreError::malformed(
                "tenant.public_base_url",
                "public_base_url must be an http(s) URL",
            )
            .into());
        }
        let store = self.0.store.as_ref();
        if !t.active_issuer_id.is_empty() {
            let ca = store
                .get_ca(&t.active_issuer_id)?
                .filter(|c| c.tenant == t.name && c.kind == "issuing")
                .ok_or_else(|| {
                    CoreError::not_found("issuer.unknown", "no such issuing CA for this tenant")
                })?;
            // A staged rollover CA becomes the issuer only through ActivateRollover, which also
            // retires the previous one in the same transaction.
            if ca.state == crate::ca::STATE_STAGED {
                return Err(CoreError::policy(
                    "ca.rollover_staged",
                    "this CA is staged for rollover: activate it with ActivateRollover",
                )
                .into());
            }
        }
        let rec = TenantRec {
            name: t.name.clone(),
            public_base_url: t.public_base_url.trim_end_matches('/').to_owned(),
            default_profile: if t.default_profile.is_empty() {
                BUILTIN_PROFILE_NAME.to_owned()
            } else {
                t.default_profile.clone()
            },
            active_issuer_id: t.active_issuer_id.clone(),
        };
        store.put_tenant(
            &rec,
            &AuditEntry::new("tenant.put", &rec.name, &caller, json!({"public_base_url": rec.public_base_url, "default_profile": rec.default_profile})),
        )?;
        // Every tenant has the built-in profile from the start (docs/profiles.md).
        if store
            .latest_profile(&rec.name, BUILTIN_PROFILE_NAME)?
            .is_none()
        {
            store.put_profile(
                &rec.name,
                BUILTIN_PROFILE_NAME,
                &Profile::builtin_tls_server().to_json(),
                crate::now_unix(),
                &AuditEntry::new(
                    "profile.put",
                    &rec.name,
                    "core",
                    json!({"name": BUILTIN_PROFILE_NAME, "builtin": true}),
                ),
            )?;
        }
        let stored = store
            .get_tenant(&rec.name)?
            .ok_or_else(|| CoreError::Store("tenant vanished".into()))?;
        Ok(Response::new(tenant_wire(stored)))
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        self.admit(&req, "ListTenants")?;
        let tenants = self
            .0
            .store
            .list_tenants()?
            .into_iter()
            .map(tenant_wire)
            .collect();
        Ok(Response::new(ListTenantsResponse { tenants }))
    }

    async fn put_profile(
        &self,
        req: Request<PutProfileRequest>,
    ) -> Result<Response<ProfileVersion>, Status> {
        let caller = self.admit(&req, "PutProfile")?;
        let r = req.into_inner();
        check_id("profile.name", &r.name)?;
        if r.body.len() > 64 * 1024 {
            return Err(
                CoreError::malformed("profile.too_large", "profile larger than 64 KiB").into(),
            );
        }
        if self.0.store.get_tenant(&r.tenant)?.is_none() {
            return Err(CoreError::not_found("tenant.unknown", "no such tenant").into());
        }
        let profile = Profile::parse(&r.body, &r.format)?;
        let rec = self.0.store.put_profile(
            &r.tenant,
            &r.name,
            &profile.to_json(),
            crate::now_unix(),
            &AuditEntry::new("profile.put", &r.tenant, &caller, json!({"name": r.name})),
        )?;
        Ok(Response::new(profile_wire(rec)))
    }

    async fn list_profiles(
        &self,
        req: Request<ListProfilesRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        self.admit(&req, "ListProfiles")?;
        let r = req.into_inner();
        let profiles = self
            .0
            .store
            .latest_profiles(&r.tenant)?
            .into_iter()
            .map(profile_wire)
            .collect();
        Ok(Response::new(ListProfilesResponse { profiles }))
    }

    async fn get_profile_versions(
        &self,
        req: Request<GetProfileVersionsRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        self.admit(&req, "GetProfileVersions")?;
        let r = req.into_inner();
        let profiles = self
            .0
            .store
            .profile_versions(&r.tenant, &r.name)?
            .into_iter()
            .map(profile_wire)
            .collect();
        Ok(Response::new(ListProfilesResponse { profiles }))
    }

    async fn start_ceremony(
        &self,
        req: Request<StartCeremonyRequest>,
    ) -> Result<Response<Ceremony>, Status> {
        let caller = self.admit(&req, "StartCeremony")?;
        let action = req
            .into_inner()
            .action
            .ok_or_else(|| CoreError::malformed("ceremony.action", "no action"))?;
        Ok(Response::new(self.0.authority.start(action, &caller)?))
    }

    async fn approve_ceremony(
        &self,
        req: Request<ApproveCeremonyRequest>,
    ) -> Result<Response<Ceremony>, Status> {
        let caller = self.admit(&req, "ApproveCeremony")?;
        let r = req.into_inner();
        Ok(Response::new(self.0.authority.approve(
            &r.id,
            &r.custodian,
            &r.signature,
            &caller,
        )?))
    }

    async fn execute_ceremony(
        &self,
        req: Request<ExecuteCeremonyRequest>,
    ) -> Result<Response<Ceremony>, Status> {
        let caller = self.admit(&req, "ExecuteCeremony")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.0.authority.execute(&r.id, &caller).await?,
        ))
    }

    async fn list_ceremonies(
        &self,
        req: Request<ListCeremoniesRequest>,
    ) -> Result<Response<ListCeremoniesResponse>, Status> {
        self.admit(&req, "ListCeremonies")?;
        Ok(Response::new(ListCeremoniesResponse {
            ceremonies: self.0.authority.list_ceremonies()?,
        }))
    }

    async fn create_issuing_ca(
        &self,
        req: Request<CreateIssuingCaRequest>,
    ) -> Result<Response<CaInfo>, Status> {
        let caller = self.admit(&req, "CreateIssuingCa")?;
        let r = req.into_inner();
        let info = self.0.authority.create_issuing(&r, &caller).await?;
        // Its CRLs (full and every shard) are built right away, not at the next sweep.
        if let Some(engine) = self.0.issuer.status() {
            engine.issuer_added(&info.ca_id);
        }
        Ok(Response::new(info))
    }

    async fn list_cas(
        &self,
        req: Request<ListCasRequest>,
    ) -> Result<Response<ListCasResponse>, Status> {
        self.admit(&req, "ListCas")?;
        let r = req.into_inner();
        let filter = (!r.tenant.is_empty()).then_some(r.tenant.as_str());
        let cas = self
            .0
            .store
            .list_cas(filter)?
            .iter()
            .map(|c| self.0.authority.ca_info(c))
            .collect::<Result<_>>()?;
        Ok(Response::new(ListCasResponse { cas }))
    }

    async fn create_eab_key(
        &self,
        req: Request<certgate_proto::admin::CreateEabKeyRequest>,
    ) -> Result<Response<certgate_proto::admin::EabKeyCreated>, Status> {
        let caller = self.admit(&req, "CreateEabKey")?;
        let out = crate::acme::admin::create_eab_key(&self.0, &caller, req.get_ref())?;
        Ok(Response::new(out))
    }

    async fn set_acme_settings(
        &self,
        req: Request<certgate_proto::admin::AcmeSettings>,
    ) -> Result<Response<certgate_proto::admin::AcmeSettings>, Status> {
        let caller = self.admit(&req, "SetAcmeSettings")?;
        let out = crate::acme::admin::set_acme_settings(&self.0, &caller, req.get_ref())?;
        Ok(Response::new(out))
    }

    async fn stage_rollover(
        &self,
        req: Request<certgate_proto::admin::StageRolloverRequest>,
    ) -> Result<Response<CaInfo>, Status> {
        let caller = self.admit(&req, "StageRollover")?;
        let info = self
            .0
            .authority
            .stage_rollover(req.get_ref(), &caller)
            .await?;
        // Its CRLs exist before activation, so relying parties can fetch them from day one.
        if let Some(engine) = self.0.issuer.status() {
            engine.issuer_added(&info.ca_id);
        }
        Ok(Response::new(info))
    }

    async fn activate_rollover(
        &self,
        req: Request<certgate_proto::admin::ActivateRolloverRequest>,
    ) -> Result<Response<CaInfo>, Status> {
        let caller = self.admit(&req, "ActivateRollover")?;
        let info = self
            .0
            .authority
            .activate_rollover(req.get_ref(), &caller)
            .await?;
        Ok(Response::new(info))
    }

    async fn verify_audit(
        &self,
        req: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.admit(&req, "VerifyAudit")?;
        let store = self.0.store.clone();
        let pin = self.0.audit_key_sha256.clone();
        let v = blocking(move || verify_store(store.as_ref(), pin.as_deref())).await?;
        Ok(Response::new(v))
    }
}

/// Verifies the store's audit chain against the audit key recorded in the store, which must
/// match `pin` (hex SHA-256 of its SPKI) when one is configured.
pub fn verify_store(store: &dyn Store, pin: Option<&str>) -> Result<VerifyAuditResponse> {
    let key = store
        .meta_get(META_AUDIT_KEY)?
        .map(|h| hex::decode(h).map_err(|_| CoreError::Store("bad pinned audit key".into())))
        .transpose()?;
    if let Some(pin) = pin {
        let actual = key
            .as_deref()
            .map(|k| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k)));
        if actual.as_deref() != Some(pin) {
            return Ok(VerifyAuditResponse {
                ok: false,
                records: 0,
                error: "the audit key in the store is not the one pinned in the configuration"
                    .into(),
                first_bad_seq: 0,
            });
        }
    }
    let records = store.audit_records()?;
    let v = verify_chain(&records, key.as_deref());
    Ok(match v.error {
        None => VerifyAuditResponse {
            ok: true,
            records: v.records,
            error: String::new(),
            first_bad_seq: 0,
        },
        Some((seq, why)) => VerifyAuditResponse {
            ok: false,
            records: v.records,
            error: why,
            first_bad_seq: seq,
        },
    })
}
