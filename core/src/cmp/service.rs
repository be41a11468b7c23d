//! The tonic `Cmp` (edges; Core allow-list) and `CmpAdmin` (CLI; Admin allow-list) services.
//! Every RPC checks the caller first (fail closed, I-5) and audits a denial. Shared secrets are
//! held in [`Zeroizing`] buffers, never logged and never audited.

use std::sync::Arc;
use std::time::Duration;

use certgate_proto::Caller;
use certgate_proto::cmp::cmp_admin_server::CmpAdmin;
use certgate_proto::cmp::cmp_server::Cmp;
use certgate_proto::cmp::{
    ComputeMacRequest, ComputeMacResponse, ConfirmRequest, ConfirmResponse, CreateRaRequest,
    CreateRaResponse, DeleteSharedSecretRequest, DeleteSharedSecretResponse,
    GetProtectionChainRequest, GetProtectionChainResponse, PutSharedSecretRequest,
    PutSharedSecretResponse, SignProtectionRequest, SignProtectionResponse,
};
use certgate_proto::signer::KeyType;
use certgate_proto::transport::caller_of;
use der::Encode;
use serde_json::json;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{CmpConfig, GENERATED_SECRET_BYTES, MAX_PROTECTED_PART, MAX_REFERENCE, MAX_SECRET};
use super::{mac, ra};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::service::State;
use crate::signer_client::Signer;
use crate::store::RevokeOp;
use crate::store::cmp::CmpStore;

/// RFC 5280 CRLReason used when a certificate is revoked for a missing or negative certConf:
/// cessationOfOperation (the certificate never went into service).
pub const UNCONFIRMED_REASON: u32 = 5;
/// Records one sweep pass handles.
const SWEEP_BATCH: usize = 256;

/// What the CMP services share.
pub struct CmpState {
    /// The core's state (store, issuer, allow-lists).
    pub core: Arc<State>,
    /// The signer (RA keys).
    pub signer: Signer,
    /// `[cmp]`.
    pub config: CmpConfig,
    /// Serialises RA creation in this process.
    pub(crate) ra_lock: tokio::sync::Mutex<()>,
}

impl CmpState {
    /// The CMP state over the core's.
    pub fn new(core: Arc<State>, signer: Signer, config: CmpConfig) -> Self {
        Self {
            core,
            signer,
            config,
            ra_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The CMP tables of the store.
    pub fn store(&self) -> Result<&dyn CmpStore> {
        self.core
            .store
            .as_cmp()
            .ok_or_else(|| CoreError::Internal("this store has no CMP tables".into()))
    }

    fn check(&self, admin: bool, caller: &Caller, rpc: &str) -> Result<()> {
        let (list, rule) = if admin {
            (&self.core.admin_allow, "admin.caller_not_allowed")
        } else {
            (&self.core.allow, "core.caller_not_allowed")
        };
        if list.admits(caller) {
            return Ok(());
        }
        let _ = self.core.store.append_audit(&AuditEntry::new(
            "auth.denied",
            "",
            caller,
            json!({"rpc": rpc, "rule": rule}),
        ));
        tracing::info!(%caller, rpc, "caller denied");
        Err(CoreError::Unauthorized { rule })
    }

    fn tenant_exists(&self, tenant: &str) -> Result<()> {
        blocking(|| self.core.store.get_tenant(tenant))?
            .map(|_| ())
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))
    }

    /// Revokes through the store's one revocation path (it queues the OCSP re-signing in the
    /// same transaction) and wakes the status worker. Idempotent under `idem_key`.
    pub(crate) fn revoke(
        &self,
        tenant: &str,
        serial_hex: &str,
        reason: u32,
        idem_key: &str,
        caller: &str,
        why: &str,
    ) -> Result<bool> {
        let mut hashed = b"certgate-revoke-request-v1\0".to_vec();
        hashed.extend_from_slice(serial_hex.as_bytes());
        hashed.push(0);
        hashed.extend_from_slice(&reason.to_be_bytes());
        let op = RevokeOp {
            serial_hex: serial_hex.to_owned(),
            reason,
            now: crate::now_unix(),
            idem_key: idem_key.to_owned(),
            request_hash: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &hashed)
                .as_ref()
                .to_vec(),
        };
        let audit = AuditEntry::new(
            "revoke",
            tenant,
            caller,
            json!({"serial": serial_hex, "reason": reason, "idempotency_key": idem_key,
                   "protocol": "cmp", "client": why}),
        );
        let out = blocking(|| self.core.store.revoke(tenant, &op, &audit))?;
        if let Some(engine) = self.core.issuer.status() {
            engine.poke();
        }
        Ok(out.is_some())
    }

    /// One sweep pass: revokes certificates still pending past their deadline and finishes
    /// rejections/expiries whose revocation did not complete. Returns how many it revoked.
    pub fn sweep_once(&self, now: i64) -> Result<usize> {
        let store = self.store()?;
        let due = blocking(|| store.confirm_sweep_due(now, SWEEP_BATCH))?;
        let mut revoked = 0;
        for p in due {
            if p.state == "pending" {
                let audit = AuditEntry::new(
                    "cmp.confirm.expired",
                    &p.tenant,
                    "core",
                    json!({"idempotency_key": p.idem_key, "deadline": p.deadline_unix}),
                );
                let before = blocking(|| {
                    store.transition_confirm(&p.tenant, &p.idem_key, "expired", &audit)
                })?;
                // Confirmed meanwhile: nothing to do.
                if before.is_none_or(|b| b.state != "pending") {
                    continue;
                }
            }
            if let Some(cert) = blocking(|| self.core.store.cert_by_key(&p.tenant, &p.idem_key))? {
                let key = format!("cmp-unconfirmed:{}", cert.serial_hex);
                let why = if p.state == "rejected" {
                    "certConf rejected"
                } else {
                    "certConf missing past the confirmation window"
                };
                if self.revoke(
                    &p.tenant,
                    &cert.serial_hex,
                    UNCONFIRMED_REASON,
                    &key,
                    "core",
                    why,
                )? {
                    revoked += 1;
                    metrics::counter!("certgate_cmp_unconfirmed_revoked_total",
                        "protocol" => "cmp", "tenant" => p.tenant.clone(), "outcome" => "revoked")
                    .increment(1);
                }
            }
            blocking(|| store.confirm_done(&p.tenant, &p.idem_key))?;
        }
        Ok(revoked)
    }

    /// Runs the sweep forever at `[cmp] sweep_interval_ms`.
    pub async fn run_sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.sweep_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.sweep_once(crate::now_unix())).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(revoked = n, "CMP confirmation sweep"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "CMP confirmation sweep failed"),
                Err(e) => tracing::warn!(error = %e, "CMP confirmation sweep panicked"),
            }
        }
    }

    /// Records, before issuing, that the certificate issued under (tenant, key) awaits certConf
    /// (called by `Core.Issue` when `await_confirmation` is set).
    pub fn await_confirmation(&self, tenant: &str, idem_key: &str) -> Result<()> {
        let deadline = crate::now_unix().saturating_add(self.config.confirm_window_seconds);
        blocking(|| self.store()?.await_confirm(tenant, idem_key, deadline))
    }
}

/// Runs store or CPU work without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn count(rpc: &'static str, tenant: &str, outcome: &'static str) {
    metrics::counter!("certgate_cmp_core_requests_total",
        "protocol" => "cmp", "rpc" => rpc, "tenant" => tenant.to_owned(), "outcome" => outcome)
    .increment(1);
}

fn outcome_of<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(CoreError::NotFound { .. }) => "not_found",
        Err(CoreError::Malformed { .. }) => "malformed",
        Err(CoreError::Policy { .. }) => "refused",
        Err(_) => "error",
    }
}

/// A serial in the store's wire-hex form (same rules as `Core.GetCertificate`).
fn normalise_serial(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_start_matches("0x");
    let padded = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    };
    let bytes = hex::decode(padded)
        .map_err(|_| CoreError::malformed("request.serial", "serial is not hex"))?;
    if bytes.is_empty() || bytes.len() > 21 {
        return Err(CoreError::malformed("request.serial", "serial length"));
    }
    Ok(crate::x509::serial_hex(&bytes))
}

fn check_reference(reference: &[u8]) -> Result<()> {
    if reference.is_empty() || reference.len() > MAX_REFERENCE {
        return Err(CoreError::malformed(
            "cmp.reference",
            format!("the reference must be 1 to {MAX_REFERENCE} bytes"),
        ));
    }
    Ok(())
}

/// The `Cmp` service (edges).
#[derive(Clone)]
pub struct CmpService(pub Arc<CmpState>);

/// The `CmpAdmin` service (CLI).
#[derive(Clone)]
pub struct CmpAdminService(pub Arc<CmpState>);

impl CmpService {
    fn compute_mac(&self, r: &ComputeMacRequest) -> Result<ComputeMacResponse> {
        check_reference(&r.sender_kid).map_err(|_| {
            CoreError::not_found("cmp.unknown_sender", "no shared secret for this sender")
        })?;
        if r.protected_part_der.len() > MAX_PROTECTED_PART {
            return Err(CoreError::malformed(
                "cmp.too_large",
                "ProtectedPart too large",
            ));
        }
        let store = self.0.store()?;
        let secret = blocking(|| store.cmp_secret(&r.tenant, &r.sender_kid))?.ok_or_else(|| {
            CoreError::not_found("cmp.unknown_sender", "no shared secret for this sender")
        })?;
        let mac = blocking(|| {
            mac::compute_mac(
                &r.protection_alg_der,
                secret.as_slice(),
                &r.protected_part_der,
            )
        })
        .map_err(|e| match e {
            mac::MacError::BadParams(why) => CoreError::malformed("cmp.bad_mac_params", why),
        })?;
        Ok(ComputeMacResponse { mac })
    }

    async fn sign_protection(
        &self,
        r: &SignProtectionRequest,
        caller: &Caller,
    ) -> Result<SignProtectionResponse> {
        if r.protected_part_der.len() > MAX_PROTECTED_PART {
            return Err(CoreError::malformed(
                "cmp.too_large",
                "ProtectedPart too large",
            ));
        }
        let (ra, _) = ra::ensure_ra(&self.0, &r.tenant, false, caller).await?;
        let key_type = KeyType::try_from(ra.key_type)
            .map_err(|_| CoreError::Store("bad RA key type".into()))?;
        let (alg, alg_id) = crate::x509::signing_algorithm(key_type)?;
        let signature = self
            .0
            .signer
            .sign(&ra.signer_key_id, alg, r.protected_part_der.clone())
            .await?;
        crate::x509::verify_signature(
            &crate::issue::spki_of(&ra.cert_der)?,
            alg,
            &r.protected_part_der,
            &signature,
        )?;
        Ok(SignProtectionResponse {
            signature,
            algorithm_der: alg_id.to_der()?,
            chain_der: ra::protection_chain(&self.0, &ra)?,
        })
    }

    fn confirm(&self, r: &ConfirmRequest, caller: &Caller) -> Result<ConfirmResponse> {
        let serial = normalise_serial(&r.serial_hex)?;
        let cert =
            blocking(|| self.0.core.store.get_cert(&r.tenant, &serial))?.ok_or_else(|| {
                CoreError::not_found("cmp.unknown_certificate", "no such certificate")
            })?;
        let store = self.0.store()?;
        let to = if r.accepted { "accepted" } else { "rejected" };
        let audit = AuditEntry::new(
            if r.accepted {
                "cmp.confirm.accepted"
            } else {
                "cmp.confirm.rejected"
            },
            &r.tenant,
            caller,
            json!({"serial": serial, "client": r.client_identity,
                   "reason": r.reason.chars().take(512).collect::<String>()}),
        );
        let before = blocking(|| store.transition_confirm(&r.tenant, &cert.idem_key, to, &audit))?;
        let Some(before) = before else {
            // Issued without await_confirmation (implicitConfirm): nothing to confirm.
            return Ok(ConfirmResponse {
                already: true,
                revoked: cert.revoked,
            });
        };
        if before.state != "pending" {
            return Ok(ConfirmResponse {
                already: true,
                revoked: before.state != "accepted" || cert.revoked,
            });
        }
        if r.accepted {
            return Ok(ConfirmResponse {
                already: false,
                revoked: false,
            });
        }
        let key = format!("cmp-unconfirmed:{serial}");
        self.0.revoke(
            &r.tenant,
            &serial,
            UNCONFIRMED_REASON,
            &key,
            &caller.to_string(),
            "certConf rejected",
        )?;
        blocking(|| store.confirm_done(&r.tenant, &cert.idem_key))?;
        Ok(ConfirmResponse {
            already: false,
            revoked: true,
        })
    }
}

#[tonic::async_trait]
impl Cmp for CmpService {
    async fn compute_mac(
        &self,
        req: Request<ComputeMacRequest>,
    ) -> Result<Response<ComputeMacResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "ComputeMac")?;
        let r = req.into_inner();
        let out = CmpService::compute_mac(self, &r);
        count("ComputeMac", &r.tenant, outcome_of(&out));
        Ok(Response::new(out?))
    }

    async fn sign_protection(
        &self,
        req: Request<SignProtectionRequest>,
    ) -> Result<Response<SignProtectionResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "SignProtection")?;
        let r = req.into_inner();
        let out = CmpService::sign_protection(self, &r, &caller).await;
        count("SignProtection", &r.tenant, outcome_of(&out));
        Ok(Response::new(out?))
    }

    async fn get_protection_chain(
        &self,
        req: Request<GetProtectionChainRequest>,
    ) -> Result<Response<GetProtectionChainResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "GetProtectionChain")?;
        let r = req.into_inner();
        let (ra, _) = ra::ensure_ra(&self.0, &r.tenant, false, &caller).await?;
        Ok(Response::new(GetProtectionChainResponse {
            chain_der: ra::protection_chain(&self.0, &ra)?,
        }))
    }

    async fn confirm(
        &self,
        req: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(false, &caller, "Confirm")?;
        let r = req.into_inner();
        let out = CmpService::confirm(self, &r, &caller);
        count("Confirm", &r.tenant, outcome_of(&out));
        Ok(Response::new(out?))
    }
}

#[tonic::async_trait]
impl CmpAdmin for CmpAdminService {
    async fn put_shared_secret(
        &self,
        req: Request<PutSharedSecretRequest>,
    ) -> Result<Response<PutSharedSecretResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(true, &caller, "PutSharedSecret")?;
        let mut r = req.into_inner();
        // Take the secret out of the request at once so it is wiped on every path.
        let given = Zeroizing::new(std::mem::take(&mut r.secret));
        self.0.tenant_exists(&r.tenant)?;
        check_reference(r.reference.as_bytes())?;
        let generated = given.is_empty();
        let secret = if generated {
            let mut raw = Zeroizing::new(vec![0u8; GENERATED_SECRET_BYTES]);
            aws_lc_rs::rand::fill(raw.as_mut_slice())
                .map_err(|_| CoreError::Internal("CSPRNG".into()))?;
            // Printable, so it works as `openssl cmp -secret pass:…`.
            Zeroizing::new(certgate_acme::base64url(&raw).into_bytes())
        } else {
            if given.len() > MAX_SECRET {
                return Err(CoreError::malformed(
                    "cmp.secret",
                    format!("the secret must be at most {MAX_SECRET} bytes"),
                )
                .into());
            }
            given
        };
        let audit = AuditEntry::new(
            "cmp.secret.put",
            &r.tenant,
            &caller,
            json!({"reference": r.reference, "generated": generated}),
        );
        let store = self.0.store()?;
        let replaced = blocking(|| {
            store.put_cmp_secret(
                &r.tenant,
                r.reference.as_bytes(),
                &secret,
                crate::now_unix(),
                &audit,
            )
        })?;
        tracing::info!(tenant = %r.tenant, reference = %r.reference, replaced, "CMP shared secret stored");
        Ok(Response::new(PutSharedSecretResponse {
            secret: if generated {
                secret.to_vec()
            } else {
                Vec::new()
            },
        }))
    }

    async fn delete_shared_secret(
        &self,
        req: Request<DeleteSharedSecretRequest>,
    ) -> Result<Response<DeleteSharedSecretResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(true, &caller, "DeleteSharedSecret")?;
        let r = req.into_inner();
        check_reference(r.reference.as_bytes())?;
        let audit = AuditEntry::new(
            "cmp.secret.delete",
            &r.tenant,
            &caller,
            json!({"reference": r.reference}),
        );
        let store = self.0.store()?;
        let existed =
            blocking(|| store.delete_cmp_secret(&r.tenant, r.reference.as_bytes(), &audit))?;
        Ok(Response::new(DeleteSharedSecretResponse { existed }))
    }

    async fn create_ra(
        &self,
        req: Request<CreateRaRequest>,
    ) -> Result<Response<CreateRaResponse>, Status> {
        let caller = caller_of(&req);
        self.0.check(true, &caller, "CreateRa")?;
        let r = req.into_inner();
        let (ra, created) = ra::ensure_ra(&self.0, &r.tenant, r.rotate, &caller).await?;
        Ok(Response::new(CreateRaResponse {
            chain_der: ra::protection_chain(&self.0, &ra)?,
            signer_key_id: ra.signer_key_id,
            created,
        }))
    }
}
