//! The CA hierarchy, built through the signer: the core builds every CA TBSCertificate and the
//! signer signs it with the parent's key; the core never holds a CA private key (I-1).
//!
//! Roots and intermediates are created or rotated only by a ceremony: `start` records the action
//! and the digest custodians sign, `approve` verifies one custodian's Ed25519 signature,
//! `execute` acts only with `quorum` distinct approvals (else POLICY_REFUSED `ceremony.quorum`,
//! audited). Issuing CAs are routine and need none.

use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use certgate_proto::Caller;
use certgate_proto::admin::{
    ActivateRolloverRequest, CaInfo, Ceremony, CeremonyAction, CreateIntermediate,
    CreateIssuingCaRequest, CreateRoot, RotateCa, StageRolloverRequest, ceremony, ceremony_action,
};
use certgate_proto::signer::{KeyRole, KeyType};
use der::{Decode, Encode};
use prost::Message;
use serde_json::json;
use spki::SubjectPublicKeyInfoOwned;

use crate::audit::AuditEntry;
use crate::config::Custodian;
use crate::error::{CoreError, Result};
use crate::issue::{chain_of, key_type_of, spki_of};
use crate::signer_client::Signer;
use crate::store::{CaRec, CeremonyRec, Store};
use crate::x509::{self, CaSpec, IssuerInfo};

const YEAR: u64 = 365 * 86_400;
/// Default validities (the signer's role maxima are 25 years for ROOT and 10 for INTERMEDIATE
/// keys; defaults stay below them, backdating included).
pub const DEFAULT_ROOT_VALIDITY: u64 = 20 * YEAR;
/// Intermediate default.
pub const DEFAULT_INTERMEDIATE_VALIDITY: u64 = 8 * YEAR;
/// Issuing CA default.
pub const DEFAULT_ISSUING_VALIDITY: u64 = 5 * YEAR;

/// The digest custodians sign: SHA-256 over `"CERTGATE-CEREMONY-V1\0"`, the id's length (u32 BE),
/// the id, and the protobuf encoding of the `CeremonyAction` as recorded.
pub fn ceremony_digest(id: &str, action: &[u8]) -> Vec<u8> {
    let mut buf = b"CERTGATE-CEREMONY-V1\0".to_vec();
    buf.extend_from_slice(&(id.len() as u32).to_be_bytes());
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(action);
    digest::digest(&digest::SHA256, &buf).as_ref().to_vec()
}

/// Checks a CA or tenant id: `[a-z0-9._-]{1,64}`, not starting with `.`.
pub fn check_id(rule: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::malformed(
            rule,
            format!("{id:?} is not a valid id ([a-z0-9._-]{{1,64}})"),
        ))
    }
}

fn check_cn(cn: &str) -> Result<()> {
    if cn.is_empty() || cn.len() > 64 {
        return Err(CoreError::malformed(
            "ca.common_name",
            "common name must be 1 to 64 bytes",
        ));
    }
    Ok(())
}

fn key_type(v: i32) -> Result<KeyType> {
    match KeyType::try_from(v) {
        Ok(KeyType::Unspecified) | Err(_) => Err(CoreError::malformed(
            "ca.key_type",
            "key type is unspecified or unknown",
        )),
        Ok(k) => Ok(k),
    }
}

/// The CA authority.
pub struct Authority {
    store: Arc<dyn Store>,
    signer: Signer,
    custodians: Vec<Custodian>,
    quorum: u32,
    /// Serialises rollover staging/activation in this process, so two concurrent `stage` calls
    /// cannot both pass the "nothing staged yet" check (across cores the activation itself is
    /// a compare-and-set on the staged state).
    rollover: tokio::sync::Mutex<()>,
    /// Bumped by every activated rollover in this process: caches of what the active issuer
    /// certified (the SCEP RA) drop entries from an older generation at once instead of at
    /// their TTL.
    generation: std::sync::atomic::AtomicU64,
}

impl Authority {
    /// A new authority.
    pub fn new(
        store: Arc<dyn Store>,
        signer: Signer,
        custodians: Vec<Custodian>,
        quorum: u32,
    ) -> Self {
        Self {
            store,
            signer,
            custodians,
            quorum,
            rollover: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The wire form of a CA, with its chain.
    pub fn ca_info(&self, ca: &CaRec) -> Result<CaInfo> {
        let chain = chain_of(self.store.as_ref(), &ca.ca_id)?;
        Ok(CaInfo {
            ca_id: ca.ca_id.clone(),
            tenant: ca.tenant.clone(),
            kind: ca.kind.clone(),
            parent_ca_id: ca.parent_ca_id.clone(),
            certificate_der: ca.cert_der.clone(),
            signer_key_id: ca.signer_key_id.clone(),
            state: ca.state.clone(),
            not_after_unix: ca.not_after_unix,
            chain_der: chain.into_iter().map(|c| c.cert_der).collect(),
        })
    }

    fn ceremony_wire(c: &CeremonyRec) -> Result<Ceremony> {
        Ok(Ceremony {
            id: c.id.clone(),
            action: Some(
                CeremonyAction::decode(c.action.as_slice())
                    .map_err(|e| CoreError::Store(format!("stored ceremony action: {e}")))?,
            ),
            digest: c.digest.clone(),
            required: c.required,
            approved_by: c.approved_by.clone(),
            state: c.state,
            result_ca_ids: c.result_ca_ids.clone(),
            created_unix: c.created_unix,
        })
    }

    fn new_ca_id_free(&self, id: &str) -> Result<()> {
        check_id("ca.id", id)?;
        if self.store.get_ca(id)?.is_some() {
            return Err(CoreError::exists(
                "ca.exists",
                format!("CA {id:?} already exists"),
            ));
        }
        Ok(())
    }

    fn signing_parent(&self, id: &str) -> Result<CaRec> {
        let parent = self
            .store
            .get_ca(id)?
            .filter(|p| p.kind == "root" || p.kind == "intermediate")
            .ok_or_else(|| {
                CoreError::not_found(
                    "ca.parent_unknown",
                    format!("no root or intermediate {id:?}"),
                )
            })?;
        if parent.state != "active" {
            return Err(CoreError::policy(
                "ca.parent_retiring",
                "the parent CA is retiring",
            ));
        }
        // RFC 5280 §4.2.1.9: below a CA with pathLenConstraint 0 no further CA may follow; a CA
        // made there would yield chains every verifier rejects.
        let cert = x509_cert::Certificate::from_der(&parent.cert_der)?;
        if let Ok(Some((_, bc))) = cert
            .tbs_certificate
            .get::<x509_cert::ext::pkix::BasicConstraints>()
            && bc.path_len_constraint == Some(0)
        {
            return Err(CoreError::policy(
                "ca.parent_path_len",
                format!("CA {id:?} has pathLenConstraint 0: no CA can be created under it"),
            ));
        }
        Ok(parent)
    }

    fn validate_action(&self, action: &CeremonyAction) -> Result<()> {
        match &action.action {
            Some(ceremony_action::Action::CreateRoot(r)) => {
                self.new_ca_id_free(&r.ca_id)?;
                key_type(r.key_type)?;
                check_cn(&r.common_name)
            }
            Some(ceremony_action::Action::CreateIntermediate(i)) => {
                self.new_ca_id_free(&i.ca_id)?;
                key_type(i.key_type)?;
                check_cn(&i.common_name)?;
                self.signing_parent(&i.parent_ca_id).map(|_| ())
            }
            Some(ceremony_action::Action::Rotate(r)) => {
                self.new_ca_id_free(&r.new_ca_id)?;
                key_type(r.key_type)?;
                self.store
                    .get_ca(&r.old_ca_id)?
                    .filter(|c| c.kind != "issuing" && c.state == "active")
                    .ok_or_else(|| {
                        CoreError::not_found(
                            "ca.unknown",
                            "no active root or intermediate to rotate",
                        )
                    })?;
                Ok(())
            }
            None => Err(CoreError::malformed(
                "ceremony.action",
                "the ceremony names no action",
            )),
        }
    }

    /// Admin.StartCeremony.
    pub fn start(&self, action: CeremonyAction, caller: &Caller) -> Result<Ceremony> {
        self.validate_action(&action)?;
        let mut id_bytes = [0u8; 12];
        aws_lc_rs::rand::fill(&mut id_bytes).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
        let id = format!("cer-{}", hex::encode(id_bytes));
        let action_bytes = action.encode_to_vec();
        let rec = CeremonyRec {
            digest: ceremony_digest(&id, &action_bytes),
            id: id.clone(),
            action: action_bytes,
            required: self.quorum,
            approved_by: Vec::new(),
            state: ceremony::State::Open as i32,
            result_ca_ids: Vec::new(),
            created_unix: crate::now_unix(),
        };
        self.store.insert_ceremony(
            &rec,
            &AuditEntry::new(
                "ceremony.started",
                "",
                caller,
                json!({"id": id, "digest": hex::encode(&rec.digest), "required": rec.required}),
            ),
        )?;
        Self::ceremony_wire(&rec)
    }

    fn open_ceremony(&self, id: &str) -> Result<CeremonyRec> {
        let c = self
            .store
            .get_ceremony(id)?
            .ok_or_else(|| CoreError::not_found("ceremony.unknown", "no such ceremony"))?;
        if c.state != ceremony::State::Open as i32 {
            return Err(CoreError::policy(
                "ceremony.closed",
                "the ceremony is no longer open",
            ));
        }
        Ok(c)
    }

    /// Admin.ApproveCeremony.
    pub fn approve(
        &self,
        id: &str,
        custodian: &str,
        signature: &[u8],
        caller: &Caller,
    ) -> Result<Ceremony> {
        let mut c = self.open_ceremony(id)?;
        let refuse = |rule: &'static str, msg: &str| -> Result<Ceremony> {
            self.store.append_audit(&AuditEntry::new(
                "ceremony.approval_refused",
                "",
                caller,
                json!({"id": id, "custodian": custodian, "rule": rule}),
            ))?;
            Err(CoreError::policy(rule, msg))
        };
        let Some(known) = self.custodians.iter().find(|k| k.name == custodian) else {
            return refuse("ceremony.unknown_custodian", "no custodian of that name");
        };
        if UnparsedPublicKey::new(&ED25519, &known.ed25519)
            .verify(&c.digest, signature)
            .is_err()
        {
            return refuse(
                "ceremony.bad_signature",
                "the approval signature does not verify",
            );
        }
        if !c.approved_by.iter().any(|n| n == custodian) {
            c.approved_by.push(custodian.to_owned());
            self.store.update_ceremony(
                &c,
                &AuditEntry::new(
                    "ceremony.approved",
                    "",
                    caller,
                    json!({"id": id, "custodian": custodian, "approvals": c.approved_by.len()}),
                ),
            )?;
        }
        Self::ceremony_wire(&c)
    }

    /// Admin.ExecuteCeremony.
    pub async fn execute(&self, id: &str, caller: &Caller) -> Result<Ceremony> {
        let mut c = self.open_ceremony(id)?;
        if (c.approved_by.len() as u32) < c.required {
            self.store.append_audit(&AuditEntry::new(
                "ceremony.refused",
                "",
                caller,
                json!({"id": id, "rule": "ceremony.quorum", "approvals": c.approved_by.len(), "required": c.required}),
            ))?;
            return Err(CoreError::policy(
                "ceremony.quorum",
                format!(
                    "{} of {} required approvals",
                    c.approved_by.len(),
                    c.required
                ),
            ));
        }
        let action = CeremonyAction::decode(c.action.as_slice())
            .map_err(|e| CoreError::Store(format!("stored ceremony action: {e}")))?;
        self.validate_action(&action)?;
        let created = match action.action {
            Some(ceremony_action::Action::CreateRoot(r)) => self.create_root(&r, caller).await?,
            Some(ceremony_action::Action::CreateIntermediate(i)) => {
                self.create_intermediate(&i, caller).await?
            }
            Some(ceremony_action::Action::Rotate(r)) => self.rotate(&r, caller).await?,
            None => return Err(CoreError::malformed("ceremony.action", "no action")),
        };
        c.state = ceremony::State::Executed as i32;
        c.result_ca_ids = vec![created.ca_id.clone()];
        self.store.update_ceremony(
            &c,
            &AuditEntry::new(
                "ceremony.executed",
                "",
                caller,
                json!({"id": id, "approved_by": c.approved_by, "created": created.ca_id}),
            ),
        )?;
        Self::ceremony_wire(&c)
    }

    /// Admin.ListCeremonies.
    pub fn list_ceremonies(&self) -> Result<Vec<Ceremony>> {
        self.store
            .list_ceremonies()?
            .iter()
            .map(Self::ceremony_wire)
            .collect()
    }

    /// Builds, signs (with the parent's key, or the new key for a root), verifies and stores a CA.
    #[allow(clippy::too_many_arguments)]
    async fn make_ca(
        &self,
        ca_id: &str,
        tenant: &str,
        kind: &str,
        role: KeyRole,
        kt: KeyType,
        common_name: &str,
        parent: Option<&CaRec>,
        path_len: Option<u8>,
        validity: u64,
        activate: bool,
        state: &str,
        caller: &Caller,
    ) -> Result<CaRec> {
        let key = self
            .signer
            .ensure_key(ca_id, tenant, role, kt, None)
            .await?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&key.public_key_der)
            .map_err(|_| CoreError::SignerUnavailable("signer returned a bad public key".into()))?;
        let now = crate::now_unix();
        let mut validity = validity;
        let issuer = match parent {
            Some(p) => {
                // A CA never outlives its parent.
                let remaining = (p.not_after_unix - now).max(0) as u64;
                validity = validity.min(remaining);
                Some(IssuerInfo::from_cert(
                    &p.ca_id,
                    &p.cert_der,
                    key_type_of(p)?,
                )?)
            }
            None => None,
        };
        let serial = x509::random_serial()?;
        let tbs = x509::build_ca_tbs(&CaSpec {
            issuer: issuer.as_ref(),
            common_name,
            spki: &spki,
            self_key_type: kt,
            path_len,
            serial: &serial,
            now_unix: now,
            validity_seconds: validity,
        })?
        .to_der()?;
        let (sign_key, sign_type, verify_spki) = match parent {
            Some(p) => (
                p.signer_key_id.clone(),
                key_type_of(p)?,
                spki_of(&p.cert_der)?,
            ),
            None => (ca_id.to_owned(), kt, key.public_key_der.clone()),
        };
        let (alg, _) = x509::signing_algorithm(sign_type)?;
        let signature = self.signer.sign(&sign_key, alg, tbs.clone()).await?;
        x509::verify_signature(&verify_spki, alg, &tbs, &signature)?;
        let cert_der = x509::assemble(&tbs, &signature)?;
        let (_, not_after) = x509::validity_of(&cert_der)?;
        let rec = CaRec {
            ca_id: ca_id.to_owned(),
            tenant: tenant.to_owned(),
            kind: kind.to_owned(),
            parent_ca_id: parent.map(|p| p.ca_id.clone()).unwrap_or_default(),
            cert_der,
            signer_key_id: ca_id.to_owned(),
            key_type: kt as i32,
            state: state.to_owned(),
            not_after_unix: not_after,
            created_unix: now,
        };
        self.store.put_ca(
            &rec,
            activate,
            &AuditEntry::new(
                "ca.created",
                tenant,
                caller,
                json!({"ca_id": ca_id, "kind": kind, "parent": rec.parent_ca_id,
                       "serial": x509::serial_hex(&serial), "activate": activate,
                       "state": state}),
            ),
        )?;
        Ok(rec)
    }

    async fn create_root(&self, r: &CreateRoot, caller: &Caller) -> Result<CaRec> {
        let validity = if r.validity_seconds == 0 {
            DEFAULT_ROOT_VALIDITY
        } else {
            r.validity_seconds
        };
        self.make_ca(
            &r.ca_id,
            "",
            "root",
            KeyRole::Root,
            key_type(r.key_type)?,
            &r.common_name,
            None,
            None,
            validity,
            false,
            "active",
            caller,
        )
        .await
    }

    async fn create_intermediate(&self, i: &CreateIntermediate, caller: &Caller) -> Result<CaRec> {
        let parent = self.signing_parent(&i.parent_ca_id)?;
        let validity = if i.validity_seconds == 0 {
            DEFAULT_INTERMEDIATE_VALIDITY
        } else {
            i.validity_seconds
        };
        let path_len = i
            .path_len
            .map(|p| {
                u8::try_from(p)
                    .map_err(|_| CoreError::malformed("ca.path_len", "path_len too large"))
            })
            .transpose()?;
        self.make_ca(
            &i.ca_id,
            "",
            "intermediate",
            KeyRole::Intermediate,
            key_type(i.key_type)?,
            &i.common_name,
            Some(&parent),
            path_len,
            validity,
            false,
            "active",
            caller,
        )
        .await
    }

    async fn rotate(&self, r: &RotateCa, caller: &Caller) -> Result<CaRec> {
        let old = self
            .store
            .get_ca(&r.old_ca_id)?
            .ok_or_else(|| CoreError::not_found("ca.unknown", "no such CA"))?;
        let cert = x509_cert::Certificate::from_der(&old.cert_der)?;
        let cn = crate::csr::common_name(&cert.tbs_certificate.subject)
            .unwrap_or_else(|| r.new_ca_id.clone());
        let path_len = cert
            .tbs_certificate
            .get::<x509_cert::ext::pkix::BasicConstraints>()
            .ok()
            .flatten()
            .and_then(|(_, bc)| bc.path_len_constraint);
        let kt = key_type(r.key_type)?;
        let new = if old.kind == "root" {
            let v = if r.validity_seconds == 0 {
                DEFAULT_ROOT_VALIDITY
            } else {
                r.validity_seconds
            };
            self.make_ca(
                &r.new_ca_id,
                "",
                "root",
                KeyRole::Root,
                kt,
                &cn,
                None,
                None,
                v,
                false,
                "active",
                caller,
            )
            .await?
        } else {
            let parent = self.signing_parent(&old.parent_ca_id)?;
            let v = if r.validity_seconds == 0 {
                DEFAULT_INTERMEDIATE_VALIDITY
            } else {
                r.validity_seconds
            };
            self.make_ca(
                &r.new_ca_id,
                "",
                "intermediate",
                KeyRole::Intermediate,
                kt,
                &cn,
                Some(&parent),
                path_len,
                v,
                false,
                "active",
                caller,
            )
            .await?
        };
        self.store.set_ca_state(
            &old.ca_id,
            "retiring",
            &AuditEntry::new(
                "ca.retiring",
                "",
                caller,
                json!({"ca_id": old.ca_id, "replaced_by": new.ca_id}),
            ),
        )?;
        Ok(new)
    }

    /// Admin.CreateIssuingCa.
    pub async fn create_issuing(
        &self,
        req: &CreateIssuingCaRequest,
        caller: &Caller,
    ) -> Result<CaInfo> {
        if self.store.get_tenant(&req.tenant)?.is_none() {
            return Err(CoreError::not_found("tenant.unknown", "no such tenant"));
        }
        self.new_ca_id_free(&req.ca_id)?;
        check_cn(&req.common_name)?;
        let parent = self.signing_parent(&req.parent_ca_id)?;
        let validity = if req.validity_seconds == 0 {
            DEFAULT_ISSUING_VALIDITY
        } else {
            req.validity_seconds
        };
        let rec = self
            .make_ca(
                &req.ca_id,
                &req.tenant,
                "issuing",
                KeyRole::Issuing,
                key_type(req.key_type)?,
                &req.common_name,
                Some(&parent),
                Some(0),
                validity,
                req.activate,
                "active",
                caller,
            )
            .await?;
        self.ca_info(&rec)
    }

    /// How many rollovers this process has activated (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The tenant's issuing CA staged for rollover, if any (the newest, should a race between
    /// cores have staged two).
    pub fn staged(&self, tenant: &str) -> Result<Option<CaRec>> {
        Ok(self
            .store
            .list_cas(Some(tenant))?
            .into_iter()
            .filter(|c| c.kind == "issuing" && c.state == STATE_STAGED && c.tenant == tenant)
            .max_by_key(|c| c.created_unix))
    }

    fn rollover_refused(
        &self,
        tenant: &str,
        caller: &Caller,
        step: &str,
        err: CoreError,
    ) -> CoreError {
        let rule = err.to_rpc().rule;
        if let Err(e) = self.store.append_audit(&AuditEntry::new(
            "ca.rollover_refused",
            tenant,
            caller,
            json!({"step": step, "rule": rule}),
        )) {
            tracing::warn!(error = %e, "could not audit a refused rollover");
        }
        err
    }

    fn active_issuer(&self, tenant: &str) -> Result<CaRec> {
        let t = self
            .store
            .get_tenant(tenant)?
            .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
        if t.active_issuer_id.is_empty() {
            return Err(CoreError::policy(
                "tenant.no_issuer",
                "the tenant has no active issuing CA to roll over",
            ));
        }
        self.store
            .get_ca(&t.active_issuer_id)?
            .filter(|c| c.tenant == tenant && c.kind == "issuing")
            .ok_or_else(|| CoreError::Store("active issuing CA missing".into()))
    }

    /// Admin.StageRollover: a new ISSUING key in the signer and a certificate for it from the
    /// current issuer's parent (same subject CN unless told otherwise), stored as "staged".
    pub async fn stage_rollover(
        &self,
        req: &StageRolloverRequest,
        caller: &Caller,
    ) -> Result<CaInfo> {
        let _g = self.rollover.lock().await;
        match self.stage_inner(req, caller).await {
            Ok(rec) => self.ca_info(&rec),
            Err(e) => Err(self.rollover_refused(&req.tenant, caller, "stage", e)),
        }
    }

    async fn stage_inner(&self, req: &StageRolloverRequest, caller: &Caller) -> Result<CaRec> {
        check_id("tenant.name", &req.tenant)?;
        let current = self.active_issuer(&req.tenant)?;
        if let Some(s) = self.staged(&req.tenant)? {
            return Err(CoreError::exists(
                "ca.rollover_staged",
                format!(
                    "CA {:?} is already staged for this tenant: activate it first",
                    s.ca_id
                ),
            ));
        }
        let ca_id = if req.ca_id.is_empty() {
            default_next_id(&current.ca_id, crate::now_unix())
        } else {
            req.ca_id.clone()
        };
        self.new_ca_id_free(&ca_id)?;
        let common_name = if req.common_name.is_empty() {
            let cert = x509_cert::Certificate::from_der(&current.cert_der)?;
            crate::csr::common_name(&cert.tbs_certificate.subject)
                .unwrap_or_else(|| current.ca_id.clone())
        } else {
            req.common_name.clone()
        };
        check_cn(&common_name)?;
        let parent_id = if req.parent_ca_id.is_empty() {
            current.parent_ca_id.clone()
        } else {
            req.parent_ca_id.clone()
        };
        let parent = self.signing_parent(&parent_id)?;
        let validity = if req.validity_seconds == 0 {
            DEFAULT_ISSUING_VALIDITY
        } else {
            req.validity_seconds
        };
        let kt = key_type(current.key_type)?;
        self.make_ca(
            &ca_id,
            &req.tenant,
            "issuing",
            KeyRole::Issuing,
            kt,
            &common_name,
            Some(&parent),
            Some(0),
            validity,
            false,
            STATE_STAGED,
            caller,
        )
        .await
    }

    /// Admin.ActivateRollover: the staged CA becomes the tenant's active issuer, the previous
    /// one retiring (it keeps its OCSP responses and CRLs, issues nothing new).
    pub async fn activate_rollover(
        &self,
        req: &ActivateRolloverRequest,
        caller: &Caller,
    ) -> Result<CaInfo> {
        let _g = self.rollover.lock().await;
        let out = (|| {
            check_id("tenant.name", &req.tenant)?;
            let current = self.active_issuer(&req.tenant)?;
            let staged = self.staged(&req.tenant)?.ok_or_else(|| {
                CoreError::not_found("ca.rollover_none", "no CA is staged for rollover")
            })?;
            let (not_before, not_after) = x509::validity_of(&staged.cert_der)?;
            let now = crate::now_unix();
            if now < not_before || now >= not_after {
                return Err(CoreError::policy(
                    "ca.rollover_not_valid",
                    "the staged CA certificate is not valid now",
                ));
            }
            self.store.activate_staged_ca(
                &req.tenant,
                &staged.ca_id,
                &current.ca_id,
                &AuditEntry::new(
                    "ca.rollover_activated",
                    &req.tenant,
                    caller,
                    json!({"ca_id": staged.ca_id, "previous": current.ca_id}),
                ),
            )?;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            tracing::info!(tenant = %req.tenant, new = %staged.ca_id, previous = %current.ca_id,
                "issuing CA rollover activated");
            self.store
                .get_ca(&staged.ca_id)?
                .ok_or_else(|| CoreError::Store("activated CA vanished".into()))
        })();
        match out {
            Ok(rec) => self.ca_info(&rec),
            Err(e) => Err(self.rollover_refused(&req.tenant, caller, "activate", e)),
        }
    }
}

/// The state of an issuing CA staged for rollover: certified, published, issues nothing.
pub const STATE_STAGED: &str = "staged";

/// The default id of a staged CA: the current issuer's id, "-r" and the time, within 64 bytes.
fn default_next_id(current: &str, now: i64) -> String {
    let suffix = format!("-r{now}");
    let keep = 64usize.saturating_sub(suffix.len());
    let mut base: String = current.chars().take(keep).collect();
    // Ids never end up starting with '.', and stay in the id alphabet (the current one is).
    if base.is_empty() {
        base.push_str("issuing");
    }
    format!("{base}{suffix}")
}

#[cfg(test)]
mod rollover_tests {
    use super::*;

    #[test]
    fn default_next_id_is_a_valid_id_within_64_bytes() {
        let id = default_next_id("tenant-issuing-1", 1_700_000_000);
        assert_eq!(id, "tenant-issuing-1-r1700000000");
        check_id("ca.id", &id).expect("valid id");
        let long = "a".repeat(64);
        let id = default_next_id(&long, 1_700_000_000);
        assert_eq!(id.len(), 64);
        assert!(id.ends_with("-r1700000000"));
        check_id("ca.id", &id).expect("valid id");
    }
}
