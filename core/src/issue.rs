//! The single issuance path (I-2): prepare → record intent → sign → store (docs/issuance-cycle.md).
//!
//! 1. **Prepare**: verify the CSR, resolve the tenant's profile (latest version) and enforce it
//!    (I-9), pick a random serial, build the exact TBSCertificate.
//! 2. **Record intent**: store (tenant, idempotency key) → request hash, serial, TBS DER in one
//!    transaction (UNIQUE on the pair).
//! 3. **Sign**: ask the signer for a signature over those exact bytes; verify it under the CA key.
//! 4. **Store**: assemble the certificate and store it under the same key; the stored record *is*
//!    the certificate, every later call with the key returns it byte for byte.
//!
//! A retry (same key, same request) finds the completed record, or an intent without a
//! certificate (a crash between 3 and 4) and re-signs the same TBS — same serial, same names,
//! same validity. Concurrent duplicates in one process wait on a per-key lock and then find the
//! record; across processes the UNIQUE constraints decide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use certgate_proto::Caller;
use certgate_proto::core::{IssueRequest, IssueResponse, identifier, issue_request};
use certgate_proto::signer::KeyType;
use der::{Decode, Encode};
use prost::Message;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::audit::AuditEntry;
use crate::csr::{self, Requested};
use crate::error::{CoreError, Result};
use crate::profile::{Profile, San};
use crate::signer_client::Signer;
use crate::store::{CaRec, CertRec, IntentOutcome, IntentRec, Store};
use crate::x509::{self, IssuerInfo, LeafSpec};

/// The fault hook for the kill-and-retry test (dev mode only, docs/core.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No fault.
    None,
    /// `std::process::abort()` right after the signer answered, before storing.
    CrashAfterSign,
}

impl Fault {
    /// Reads `CERTGATE_FAULT`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("CERTGATE_FAULT") {
            Err(_) => Ok(Fault::None),
            Ok(v) if v.is_empty() => Ok(Fault::None),
            Ok(v) if v == "crash_after_sign" => Ok(Fault::CrashAfterSign),
            Ok(v) => Err(format!("unknown CERTGATE_FAULT {v:?}")),
        }
    }
}

/// Per-(tenant, idempotency key) locks: the in-process single flight.
type KeyLocks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Runs store work (SQLite, fsync waits) and CSR verification without stalling the async
/// workers: on a multi-threaded runtime the worker hands its other tasks away first, so many
/// issuances can wait on one group commit at once.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The issuance service.
pub struct Issuer {
    store: Arc<dyn Store>,
    signer: Signer,
    in_flight: Semaphore,
    keys: Mutex<KeyLocks>,
    fault: Fault,
    /// The revocation-status engine, attached once at start-up (docs/status.md).
    status: std::sync::OnceLock<Arc<crate::status::StatusEngine>>,
    /// `[cmp] confirm_window_seconds`, attached at start-up (default 300 s): how long a
    /// certificate issued with `await_confirmation` may stay unconfirmed (docs/cmp.md).
    cmp_confirm_window: std::sync::OnceLock<i64>,
    /// `[approval]`, attached at start-up (defaults otherwise): bounds and timing of requests
    /// held for manual approval (crate::approval).
    approval: std::sync::OnceLock<crate::approval::ApprovalConfig>,
}

/// SHA-256 over the canonical request: everything that decides the certificate, without the
/// tenant and key (the record's address) and the audit-only fields (protocol, client identity).
pub fn request_hash(req: &IssueRequest) -> Vec<u8> {
    let mut canonical = req.clone();
    canonical.tenant.clear();
    canonical.idempotency_key.clear();
    canonical.protocol.clear();
    canonical.client_identity.clear();
    let mut buf = b"certgate-issue-request-v1\0".to_vec();
    buf.extend_from_slice(&canonical.encode_to_vec());
    digest::digest(&digest::SHA256, &buf).as_ref().to_vec()
}

/// The exact validity window an Issue asks for with `not_before_unix` / `not_after_unix` (ACME
/// newOrder notBefore/notAfter, RFC 8555 §7.4), or None when it names neither (then
/// `validity_seconds` or the profile default applies from now, backdated as usual).
///
/// A missing notBefore is "now" backdated by [`x509::BACKDATE`]; a missing notAfter is notBefore
/// plus the profile's default validity. The span must fit the profile's maximum (refused with
/// `profile.max_validity`, never shortened), notAfter must lie after now and after notBefore, and
/// notBefore may not lie further ahead than the profile's maximum validity (a certificate that
/// starts months from now is a mistake, not a request).
pub fn requested_window(
    req: &IssueRequest,
    profile: &Profile,
    now: i64,
) -> Result<Option<(i64, i64)>> {
    let (nb, na) = (req.not_before_unix, req.not_after_unix);
    if nb == 0 && na == 0 {
        return Ok(None);
    }
    let bad = |m: &str| CoreError::malformed("request.validity", m.to_owned());
    if nb < 0 || na < 0 {
        return Err(bad("notBefore and notAfter must be after 1970"));
    }
    if req.validity_seconds != 0 {
        return Err(bad(
            "validity_seconds cannot be combined with notBefore / notAfter",
        ));
    }
    let max_ahead = i64::try_from(profile.max_validity_seconds).unwrap_or(i64::MAX);
    if nb != 0 && nb > now.saturating_add(max_ahead) {
        return Err(bad(
            "notBefore lies further ahead than the profile's maximum validity",
        ));
    }
    let not_before = if nb == 0 {
        now - x509::BACKDATE.as_secs() as i64
    } else {
        nb
    };
    let not_after = if na == 0 {
        let default = i64::try_from(profile.validity(0)?).unwrap_or(i64::MAX);
        not_before.saturating_add(default)
    } else {
        na
    };
    if not_after <= not_before {
        return Err(bad("notAfter is not after notBefore"));
    }
    if not_after <= now {
        return Err(bad("notAfter is in the past"));
    }
    // Without a requested notBefore the span counts from now (the backdating is a courtesy, as
    // for every other certificate); with one, it is the certificate's whole lifetime.
    let span = if nb == 0 {
        not_after - now
    } else {
        not_after - not_before
    };
    profile.validity(u64::try_from(span).unwrap_or(u64::MAX))?;
    Ok(Some((not_before, not_after)))
}

/// The chain of a CA from itself up to and including its root.
pub fn chain_of(store: &dyn Store, ca_id: &str) -> Result<Vec<CaRec>> {
    let mut out = Vec::new();
    let mut next = ca_id.to_owned();
    while !next.is_empty() {
        if out.len() > 8 {
            return Err(CoreError::Store("CA chain too long or cyclic".into()));
        }
        let ca = store
            .get_ca(&next)?
            .ok_or_else(|| CoreError::Store(format!("CA {next} missing from the chain")))?;
        next = ca.parent_ca_id.clone();
        out.push(ca);
    }
    Ok(out)
}

/// The key type of a stored CA.
pub fn key_type_of(ca: &CaRec) -> Result<KeyType> {
    KeyType::try_from(ca.key_type).map_err(|_| CoreError::Store("bad CA key type".into()))
}

/// The SubjectPublicKeyInfo DER of a stored CA certificate.
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    Ok(cert.tbs_certificate.subject_public_key_info.to_der()?)
}

fn dedup(sans: Vec<San>) -> Vec<San> {
    let mut out: Vec<San> = Vec::new();
    for s in sans {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn identifiers(ids: &[certgate_proto::core::Identifier]) -> Result<Vec<San>> {
    ids.iter()
        .map(|id| match identifier::Type::try_from(id.r#type) {
            Ok(identifier::Type::Dns) => San::dns(&id.value),
            Ok(identifier::Type::Ip) => id.value.parse().map(San::Ip).map_err(|_| {
                CoreError::malformed("request.ip", format!("{:?} is not an IP address", id.value))
            }),
            Ok(identifier::Type::Uri) => San::spiffe(&id.value),
            _ => Err(CoreError::policy(
                "profile.san_types",
                "only DNS, IP and SPIFFE URI identifiers are issued",
            )),
        })
        .collect()
}

impl Issuer {
    /// A new issuer.
    pub fn new(store: Arc<dyn Store>, signer: Signer, max_in_flight: usize, fault: Fault) -> Self {
        Self {
            store,
            signer,
            in_flight: Semaphore::new(max_in_flight),
            keys: Mutex::new(HashMap::new()),
            fault,
            status: std::sync::OnceLock::new(),
            cmp_confirm_window: std::sync::OnceLock::new(),
            approval: std::sync::OnceLock::new(),
        }
    }

    /// Sets the manual-approval settings (once); later calls are ignored.
    pub fn attach_approval(&self, config: crate::approval::ApprovalConfig) {
        let _ = self.approval.set(config);
    }

    fn approval_config(&self) -> crate::approval::ApprovalConfig {
        self.approval.get().cloned().unwrap_or_default()
    }

    /// Sets the CMP confirmation window (once); later calls are ignored.
    pub fn attach_cmp_confirm_window(&self, seconds: i64) {
        let _ = self.cmp_confirm_window.set(seconds);
    }

    /// Attaches the status engine (once); later calls are ignored.
    pub fn attach_status(&self, engine: Arc<crate::status::StatusEngine>) {
        let _ = self.status.set(engine);
    }

    /// The status engine, when one is attached (the Core's OCSP/CRL RPCs need it).
    pub fn status(&self) -> Option<&Arc<crate::status::StatusEngine>> {
        self.status.get()
    }

    fn key_lock(&self, tenant: &str, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.keys.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        // Drop locks nobody holds so the map stays bounded by what is in flight (I-8).
        if map.len() > 4096 {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        map.entry((tenant.to_owned(), key.to_owned()))
            .or_default()
            .clone()
    }

    /// Issues one certificate (Core.Issue).
    pub async fn issue(&self, req: IssueRequest, caller: &Caller) -> Result<IssueResponse> {
        if req.idempotency_key.is_empty() || req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(CoreError::malformed(
                "request.idempotency_key",
                format!("an idempotency key of 1 to {MAX_IDEMPOTENCY_KEY} bytes is required"),
            ));
        }
        if let Some(issue_request::Request::CsrDer(csr)) = &req.request
            && csr.len() > csr::MAX_CSR_BYTES
        {
            return Err(CoreError::malformed(
                "csr.too_large",
                format!("CSR larger than {} bytes", csr::MAX_CSR_BYTES),
            ));
        }
        let tenant = blocking(|| self.store.get_tenant(&req.tenant))?
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| CoreError::Overloaded)?;
        let hash = request_hash(&req);
        let lock = self.key_lock(&req.tenant, &req.idempotency_key);
        let _guard = lock.lock().await;

        if let Some(intent) = blocking(|| self.store.get_intent(&req.tenant, &req.idempotency_key))?
        {
            return self.resume(intent, &hash, caller, &req).await;
        }

        // A request held for approval: its decision, not the profile, says what happens now.
        let mut approved = false;
        if let Some(ps) = self.store.as_pending()
            && let Some(rec) = blocking(|| ps.pending_by_key(&req.tenant, &req.idempotency_key))?
        {
            if rec.request_hash != hash {
                return Err(self.key_reused(&req, caller)?);
            }
            let rec = blocking(|| crate::approval::expire_if_due(self.store.as_ref(), rec))?;
            match rec.state.as_str() {
                crate::store::pending::STATE_PENDING => {
                    return Ok(crate::approval::pending_response(
                        &rec,
                        self.approval_config().retry_after_seconds,
                    ));
                }
                crate::store::pending::STATE_APPROVED => approved = true,
                _ => return Err(crate::approval::refusal(&rec)),
            }
        }

        let prepared = match blocking(|| self.prepare(&req, &tenant, caller)) {
            Ok(p) => p,
            Err(e) => {
                if let CoreError::Policy { rule, message }
                | CoreError::Malformed { rule, message } = &e
                {
                    self.store.append_audit(&AuditEntry::new(
                        "issue.refused",
                        &req.tenant,
                        caller,
                        json!({"idempotency_key": req.idempotency_key, "rule": rule, "reason": message,
                               "protocol": req.protocol, "client": req.client_identity}),
                    ))?;
                }
                return Err(e);
            }
        };
        let (intent, issuer, approval) = prepared;
        if approval == crate::profile::Approval::Manual && !approved {
            return blocking(|| self.hold(&req, &hash, &intent, caller));
        }
        let audit = AuditEntry::new(
            "issue.intent",
            &req.tenant,
            caller,
            json!({"idempotency_key": intent.idem_key, "serial": intent.serial_hex,
                   "issuer": intent.issuer_id, "profile": intent.profile,
                   "profile_version": intent.profile_version,
                   "protocol": req.protocol, "client": req.client_identity}),
        );
        if req.await_confirmation {
            // Recorded before the intent (and so before signing): a crash after signing cannot
            // leave an unconfirmed certificate the confirmation sweep does not know about.
            let cmp = self.store.as_cmp().ok_or_else(|| {
                CoreError::Internal("this store cannot track CMP confirmations".into())
            })?;
            let window = self.cmp_confirm_window.get().copied().unwrap_or(300);
            let deadline = crate::now_unix().saturating_add(window);
            blocking(|| cmp.await_confirm(&req.tenant, &intent.idem_key, deadline))?;
        }
        match blocking(|| self.store.insert_intent(&intent, &audit))? {
            IntentOutcome::Inserted => self.sign_and_store(intent, issuer, caller).await,
            IntentOutcome::Exists(existing) => self.resume(existing, &hash, caller, &req).await,
        }
    }

    async fn resume(
        &self,
        intent: IntentRec,
        hash: &[u8],
        caller: &Caller,
        req: &IssueRequest,
    ) -> Result<IssueResponse> {
        if intent.request_hash != hash {
            return Err(self.key_reused(req, caller)?);
        }
        if let Some(cert) = blocking(|| self.store.cert_by_key(&intent.tenant, &intent.idem_key))? {
            return blocking(|| self.respond(&cert));
        }
        let ca = self
            .store
            .get_ca(&intent.issuer_id)?
            .ok_or_else(|| CoreError::Store("intent names an unknown issuer".into()))?;
        self.sign_and_store(intent, ca, caller).await
    }

    /// Audits and builds the refusal of a key used for a different request (I-3).
    fn key_reused(&self, req: &IssueRequest, caller: &Caller) -> Result<CoreError> {
        self.store.append_audit(&AuditEntry::new(
            "issue.refused",
            &req.tenant,
            caller,
            json!({"idempotency_key": req.idempotency_key, "rule": "idempotency.key_reused"}),
        ))?;
        Ok(CoreError::exists(
            "idempotency.key_reused",
            "this idempotency key was already used for a different request",
        ))
    }

    /// Records a request that passed its manual-approval profile as pending (nothing signed)
    /// and answers PENDING; refuses it when the tenant's bound of open requests is reached.
    fn hold(
        &self,
        req: &IssueRequest,
        hash: &[u8],
        intent: &IntentRec,
        caller: &Caller,
    ) -> Result<IssueResponse> {
        use crate::store::pending::{PendingInsert, PendingRec};
        let ps = crate::approval::pending_store(self.store.as_ref())?;
        let cfg = self.approval_config();
        let now = crate::now_unix();
        let rec = PendingRec {
            tenant: req.tenant.clone(),
            id: crate::approval::new_id()?,
            idem_key: req.idempotency_key.clone(),
            request_hash: hash.to_vec(),
            request_pb: req.encode_to_vec(),
            protocol: req.protocol.clone(),
            client_identity: req.client_identity.clone(),
            profile: intent.profile.clone(),
            summary: crate::approval::summary_of(&intent.tbs_der),
            state: crate::store::pending::STATE_PENDING.to_owned(),
            created_unix: now,
            expires_unix: now.saturating_add(cfg.ttl_seconds),
            decided_by: String::new(),
            decided_unix: 0,
            reason: String::new(),
        };
        let audit = AuditEntry::new(
            "approval.requested",
            &req.tenant,
            caller,
            json!({"id": rec.id, "idempotency_key": rec.idem_key, "profile": rec.profile,
                   "profile_version": intent.profile_version, "summary": rec.summary,
                   "protocol": req.protocol, "client": req.client_identity}),
        );
        match ps.insert_pending(&rec, cfg.max_open_per_tenant, &audit)? {
            PendingInsert::Inserted => {
                tracing::info!(tenant = %rec.tenant, id = %rec.id, protocol = %rec.protocol, "request held for approval");
                Ok(crate::approval::pending_response(
                    &rec,
                    cfg.retry_after_seconds,
                ))
            }
            PendingInsert::Exists(existing) if existing.request_hash != hash => {
                Err(self.key_reused(req, caller)?)
            }
            PendingInsert::Exists(existing) => match existing.state.as_str() {
                crate::store::pending::STATE_PENDING => Ok(crate::approval::pending_response(
                    &existing,
                    cfg.retry_after_seconds,
                )),
                // Decided between our look-up and now: the client's next poll sees it.
                crate::store::pending::STATE_APPROVED => {
                    Ok(crate::approval::pending_response(&existing, 1))
                }
                _ => Err(crate::approval::refusal(&existing)),
            },
            PendingInsert::Full => {
                self.store.append_audit(&AuditEntry::new(
                    "issue.refused",
                    &req.tenant,
                    caller,
                    json!({"idempotency_key": req.idempotency_key, "rule": "approval.queue_full",
                           "protocol": req.protocol, "client": req.client_identity}),
                ))?;
                Err(CoreError::policy(
                    "approval.queue_full",
                    format!(
                        "the tenant already holds {} requests awaiting approval; ask an operator",
                        cfg.max_open_per_tenant
                    ),
                ))
            }
        }
    }

    /// Issues a request an operator approved (RequestAdmin.ApproveRequest): the held request,
    /// through the one path, under its own key.
    pub async fn issue_held(
        &self,
        rec: &crate::store::pending::PendingRec,
        caller: &Caller,
    ) -> Result<IssueResponse> {
        let req = IssueRequest::decode(rec.request_pb.as_slice())
            .map_err(|e| CoreError::Store(format!("held request: {e}")))?;
        if req.tenant != rec.tenant || req.idempotency_key != rec.idem_key {
            return Err(CoreError::Store("held request names another key".into()));
        }
        self.issue(req, caller).await
    }

    /// Pending.Poll: the outcome of the Issue made under (tenant, key), for polls that do not
    /// repeat the request (SCEP CertPoll, CMP pollReq).
    pub async fn poll(
        &self,
        p: &certgate_proto::core::PollRequest,
        caller: &Caller,
    ) -> Result<IssueResponse> {
        if p.idempotency_key.is_empty() || p.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(CoreError::malformed(
                "request.idempotency_key",
                format!("an idempotency key of 1 to {MAX_IDEMPOTENCY_KEY} bytes is required"),
            ));
        }
        let unknown =
            || CoreError::not_found("approval.unknown", "nothing was requested under this key");
        let held = {
            let lock = self.key_lock(&p.tenant, &p.idempotency_key);
            let _guard = lock.lock().await;
            if let Some(intent) = blocking(|| self.store.get_intent(&p.tenant, &p.idempotency_key))?
            {
                let hash = intent.request_hash.clone();
                let stub = IssueRequest {
                    tenant: p.tenant.clone(),
                    idempotency_key: p.idempotency_key.clone(),
                    ..Default::default()
                };
                let mut out = self.resume(intent, &hash, caller, &stub).await?;
                out.awaits_confirmation =
                    self.awaits_confirmation(&p.tenant, &p.idempotency_key)?;
                return Ok(out);
            }
            let Some(ps) = self.store.as_pending() else {
                return Err(unknown());
            };
            let rec = blocking(|| ps.pending_by_key(&p.tenant, &p.idempotency_key))?
                .ok_or_else(unknown)?;
            let rec = blocking(|| crate::approval::expire_if_due(self.store.as_ref(), rec))?;
            match rec.state.as_str() {
                crate::store::pending::STATE_PENDING => {
                    return Ok(crate::approval::pending_response(
                        &rec,
                        self.approval_config().retry_after_seconds,
                    ));
                }
                crate::store::pending::STATE_APPROVED => rec,
                _ => return Err(crate::approval::refusal(&rec)),
            }
        };
        // Approved but not issued yet (the approval's own attempt failed): issue it now, once.
        let mut out = self.issue_held(&held, caller).await?;
        out.awaits_confirmation = self.awaits_confirmation(&p.tenant, &p.idempotency_key)?;
        Ok(out)
    }

    /// Whether the certificate under (tenant, key) was issued awaiting CMP confirmation.
    fn awaits_confirmation(&self, tenant: &str, key: &str) -> Result<bool> {
        match self.store.as_cmp() {
            Some(cmp) => Ok(blocking(|| cmp.pending_confirm(tenant, key))?.is_some()),
            None => Ok(false),
        }
    }

    fn prepare(
        &self,
        req: &IssueRequest,
        tenant: &crate::store::TenantRec,
        _caller: &Caller,
    ) -> Result<(IntentRec, CaRec, crate::profile::Approval)> {
        let requested: Requested = match &req.request {
            Some(issue_request::Request::CsrDer(der)) => csr::parse_csr(der)?,
            Some(issue_request::Request::KeyRequest(k)) => {
                csr::parse_key_request(&k.public_key_der, &k.subject_der, identifiers(&k.sans)?)?
            }
            None => {
                return Err(CoreError::malformed(
                    "request.missing",
                    "the request carries neither a CSR nor a key request",
                ));
            }
        };
        let profile_name = if req.profile.is_empty() {
            tenant.default_profile.clone()
        } else {
            req.profile.clone()
        };
        let profile_rec = self
            .store
            .latest_profile(&req.tenant, &profile_name)?
            .ok_or_else(|| {
                CoreError::not_found("profile.unknown", format!("no profile {profile_name:?}"))
            })?;
        let profile = Profile::from_json(&profile_rec.body_json)?;
        profile.check_key(requested.key.alg, requested.key.rsa_bits)?;

        let mut sans = dedup(requested.sans.clone());
        if !req.validated_identifiers.is_empty() {
            let validated = dedup(identifiers(&req.validated_identifiers)?);
            if let Some(extra) = sans.iter().find(|s| !validated.contains(s)) {
                return Err(CoreError::policy(
                    "request.unvalidated_name",
                    format!("the request names {extra:?}, which was not validated"),
                ));
            }
            sans = validated;
        }
        if sans.is_empty() {
            // A CN-only request (SCEP/EST devices): a CN that is a DNS name becomes the SAN, so
            // the profile's name rules apply to it; anything else is refused.
            match requested.common_name.as_deref().map(San::dns) {
                Some(Ok(san)) => sans.push(san),
                _ => {
                    return Err(CoreError::malformed(
                        "request.names",
                        "the request names no DNS or IP identifier",
                    ));
                }
            }
        }
        profile.check_sans(&sans)?;
        let ekus = profile.ekus_for(&requested.ekus)?;
        let common_name = requested
            .common_name
            .as_deref()
            .map(str::to_ascii_lowercase)
            .filter(|cn| {
                sans.iter().any(|s| match s {
                    San::Dns(d) => d == cn,
                    San::Ip(ip) => ip.to_string() == *cn,
                    San::Uri(_) => false,
                })
            })
            .or_else(|| {
                sans.iter().find_map(|s| match s {
                    San::Dns(d) if d.len() <= 64 => Some(d.clone()),
                    _ => None,
                })
            });

        let issuer_id = if req.issuer_id.is_empty() {
            tenant.active_issuer_id.clone()
        } else {
            req.issuer_id.clone()
        };
        if issuer_id.is_empty() {
            return Err(CoreError::policy(
                "tenant.no_issuer",
                "the tenant has no active issuing CA",
            ));
        }
        let ca = self
            .store
            .get_ca(&issuer_id)?
            .filter(|ca| ca.tenant == req.tenant && ca.kind == "issuing")
            .ok_or_else(|| CoreError::not_found("issuer.unknown", "no such issuing CA"))?;
        if ca.state != "active" {
            return Err(CoreError::policy(
                "issuer.not_active",
                "the issuing CA is retiring and issues nothing new",
            ));
        }
        let issuer = IssuerInfo::from_cert(&ca.ca_id, &ca.cert_der, key_type_of(&ca)?)?;
        let serial = x509::random_serial()?;
        let now = crate::now_unix();
        let window = requested_window(req, &profile, now)?;
        let validity = match window {
            Some((_, not_after)) => u64::try_from(not_after.saturating_sub(now)).unwrap_or(0),
            None => profile.validity(req.validity_seconds)?,
        };
        let (_, ca_not_after) = x509::validity_of(&ca.cert_der)?;
        if now.saturating_add(validity as i64) > ca_not_after {
            return Err(CoreError::policy(
                "issuer.expires_first",
                "the requested validity outlives the issuing CA",
            ));
        }
        let spec = LeafSpec {
            issuer: &issuer,
            serial: &serial,
            spki: &requested.key.spki,
            key_alg: requested.key.alg,
            common_name: common_name.as_deref(),
            sans: &sans,
            ekus: &ekus,
            key_usages: &profile.key_usages,
            now_unix: now,
            validity_seconds: validity,
            base_url: tenant.public_base_url.trim_end_matches('/'),
        };
        let tbs = match window {
            Some((not_before, not_after)) => {
                x509::build_leaf_tbs_between(&spec, not_before, not_after)?
            }
            None => x509::build_leaf_tbs(&spec)?,
        };
        Ok((
            IntentRec {
                tenant: req.tenant.clone(),
                idem_key: req.idempotency_key.clone(),
                request_hash: request_hash(req),
                serial_hex: x509::serial_hex(&serial),
                tbs_der: tbs.to_der()?,
                issuer_id: ca.ca_id.clone(),
                profile: profile_rec.name,
                profile_version: profile_rec.version,
                created_unix: now,
            },
            ca,
            profile.approval,
        ))
    }

    async fn sign_and_store(
        &self,
        intent: IntentRec,
        ca: CaRec,
        caller: &Caller,
    ) -> Result<IssueResponse> {
        let key_type = key_type_of(&ca)?;
        let (alg, _) = x509::signing_algorithm(key_type)?;
        let signature = self
            .signer
            .sign(&ca.signer_key_id, alg, intent.tbs_der.clone())
            .await?;
        if self.fault == Fault::CrashAfterSign {
            tracing::error!("CERTGATE_FAULT=crash_after_sign: aborting after the signature");
            std::process::abort();
        }
        x509::verify_signature(&spki_of(&ca.cert_der)?, alg, &intent.tbs_der, &signature)?;
        let cert_der = x509::assemble(&intent.tbs_der, &signature)?;
        let (not_before, not_after) = x509::validity_of(&cert_der)?;
        let rec = CertRec {
            tenant: intent.tenant.clone(),
            serial_hex: intent.serial_hex.clone(),
            cert_der,
            issuer_id: intent.issuer_id.clone(),
            profile: intent.profile.clone(),
            profile_version: intent.profile_version,
            not_before_unix: not_before,
            not_after_unix: not_after,
            idem_key: intent.idem_key.clone(),
            revoked: false,
            revoked_at_unix: 0,
            revocation_reason: 0,
        };
        let audit = AuditEntry::new(
            "issue.stored",
            &intent.tenant,
            caller,
            json!({"idempotency_key": intent.idem_key, "serial": intent.serial_hex,
                   "issuer": intent.issuer_id, "profile": intent.profile,
                   "profile_version": intent.profile_version,
                   "sha256": hex::encode(digest::digest(&digest::SHA256, &rec.cert_der))}),
        );
        let out = blocking(|| {
            let stored = self.store.complete_issue(&rec, &audit)?;
            self.respond(&stored)
        });
        // The stored certificate is already queued for its OCSP responses (a trigger, same
        // transaction); wake the worker instead of waiting for its poll.
        if let Some(s) = self.status.get() {
            s.poke();
        }
        out
    }

    fn respond(&self, cert: &CertRec) -> Result<IssueResponse> {
        let chain = chain_of(self.store.as_ref(), &cert.issuer_id)?;
        let n = chain.len();
        Ok(IssueResponse {
            certificate_der: cert.cert_der.clone(),
            // issuing CA first, up to (not including) the root
            chain_der: chain
                .into_iter()
                .take(n.saturating_sub(1).max(1))
                .map(|c| c.cert_der)
                .collect(),
            serial_hex: cert.serial_hex.clone(),
            profile: cert.profile.clone(),
            profile_version: cert.profile_version,
            issuer_id: cert.issuer_id.clone(),
            ..Default::default()
        })
    }
}
