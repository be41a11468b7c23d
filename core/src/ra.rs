//! RA certificates the core certifies for its own protocol front ends: the CMP key that protects
//! responses and the SCEP key that clients encrypt to and that signs CertReps.
//!
//! Both go through the one issuance discipline of `issue.rs` (I-2, I-3): the exact TBS is
//! recorded as an intent before the signer is asked, the signature is checked under the CA key,
//! and the certificate is stored like any other so OCSP and CRLs cover it. The protocols differ
//! only in key role, key type, key usages and extensions, which [`RaSpec`] carries; keeping the
//! sequence in one place keeps those guarantees identical for both.

use certgate_proto::Caller;
use certgate_proto::signer::{KeyRole, KeyType};
use der::{Decode, Encode};
use serde_json::json;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;

use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::issue::{key_type_of, spki_of};
use crate::profile::{KeyAlgorithm, Ku};
use crate::service::State;
use crate::signer_client::Signer;
use crate::store::{CaRec, CertRec, IntentOutcome, IntentRec};
use crate::x509::{self, IssuerInfo, LeafSpec};

/// Runs store work off the async workers.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What distinguishes one protocol's RA certificate.
pub(crate) struct RaSpec<'a> {
    /// `cmp` or `scep`: prefixes key ids and idempotency keys, names the protocol in audit.
    pub kind: &'static str,
    /// `CMP` or `SCEP`, for the subject CN and the audited client.
    pub label: &'static str,
    /// Refusal rule when the tenant has no active issuing CA.
    pub no_issuer_rule: &'static str,
    /// The signer key role (I-9: an RA key never signs certificates).
    pub role: KeyRole,
    /// The signer key type.
    pub key_type: KeyType,
    /// The matching profile key algorithm.
    pub key_alg: KeyAlgorithm,
    /// keyUsage bits.
    pub key_usages: &'a [Ku],
    /// Extensions beyond the leaf builder's (e.g. the CMC RA EKU).
    pub extra_extensions: Vec<Extension>,
    /// Internal profile name recorded with the certificate.
    pub profile: &'static str,
    /// Requested lifetime, capped by the issuing CA's.
    pub validity_seconds: u64,
    /// Certify this existing signer key (same role and type) instead of generating one: an RA
    /// re-certified under a new issuing CA after a rollover keeps the key clients encrypt to.
    pub reuse_key: Option<String>,
}

/// A freshly certified RA key.
pub(crate) struct Certified {
    /// The signer key id.
    pub key_id: String,
    /// The stored certificate.
    pub cert: CertRec,
    /// The issuing CA that certified it.
    pub ca: CaRec,
    /// When.
    pub now: i64,
}

/// Generates an RA key in the signer and certifies it with the tenant's active issuing CA.
pub(crate) async fn certify(
    core: &State,
    signer: &Signer,
    tenant: &str,
    caller: &Caller,
    spec: RaSpec<'_>,
) -> Result<Certified> {
    let t = blocking(|| core.store.get_tenant(tenant))?
        .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
    if t.active_issuer_id.is_empty() {
        return Err(CoreError::policy(
            spec.no_issuer_rule,
            format!(
                "the tenant has no active issuing CA to certify a {} RA key",
                spec.label
            ),
        ));
    }
    let ca = blocking(|| core.store.get_ca(&t.active_issuer_id))?
        .ok_or_else(|| CoreError::Store("active issuing CA missing".into()))?;

    let key_id = match &spec.reuse_key {
        Some(k) => k.clone(),
        None => format!("{}-ra-{tenant}-{}", spec.kind, crate::acme::random_id(6)?),
    };
    let info = signer
        .ensure_key(&key_id, tenant, spec.role, spec.key_type, None)
        .await?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&info.public_key_der)
        .map_err(|e| CoreError::Internal(format!("signer public key: {e}")))?;

    let issuer = IssuerInfo::from_cert(&ca.ca_id, &ca.cert_der, key_type_of(&ca)?)?;
    let serial = x509::random_serial()?;
    let now = crate::now_unix();
    let cn = format!("certgate {} RA {tenant}", spec.label);
    let mut tbs = x509::build_leaf_tbs(&LeafSpec {
        issuer: &issuer,
        serial: &serial,
        spki: &spki,
        key_alg: spec.key_alg,
        common_name: Some(&cn),
        sans: &[],
        ekus: &[],
        key_usages: spec.key_usages,
        now_unix: now,
        validity_seconds: spec.validity_seconds.min(
            u64::try_from(ca.not_after_unix.saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        ),
        base_url: &t.public_base_url,
    })?;
    if !spec.extra_extensions.is_empty() {
        tbs.extensions
            .get_or_insert_with(Vec::new)
            .extend(spec.extra_extensions);
    }
    let tbs_der = tbs.to_der()?;
    let serial_hex = x509::serial_hex(&serial);
    // One certificate per (key, issuing CA): a re-certification after a rollover gets its own
    // idempotency key (the first certificate of a key keeps the historical form).
    let idem_key = if spec.reuse_key.is_some() {
        format!("{}-ra:{key_id}:{}", spec.kind, ca.ca_id)
    } else {
        format!("{}-ra:{key_id}", spec.kind)
    };
    let client = format!("certgate-core ({} RA)", spec.label);

    let intent = IntentRec {
        tenant: tenant.to_owned(),
        idem_key: idem_key.clone(),
        request_hash: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tbs_der)
            .as_ref()
            .to_vec(),
        serial_hex: serial_hex.clone(),
        tbs_der: tbs_der.clone(),
        issuer_id: ca.ca_id.clone(),
        profile: spec.profile.to_owned(),
        profile_version: 1,
        created_unix: now,
    };
    let audit = AuditEntry::new(
        "issue.intent",
        tenant,
        caller,
        json!({"idempotency_key": idem_key, "serial": serial_hex, "issuer": ca.ca_id,
               "profile": spec.profile, "profile_version": 1, "protocol": spec.kind,
               "client": client}),
    );
    if let IntentOutcome::Exists(_) = blocking(|| core.store.insert_intent(&intent, &audit))? {
        return Err(CoreError::Internal("RA intent key collision".into()));
    }
    let (alg, _) = x509::signing_algorithm(key_type_of(&ca)?)?;
    let sig = signer.sign(&ca.signer_key_id, alg, tbs_der.clone()).await?;
    x509::verify_signature(&spki_of(&ca.cert_der)?, alg, &tbs_der, &sig)?;
    let cert_der = x509::assemble(&tbs_der, &sig)?;
    let (not_before, not_after) = x509::validity_of(&cert_der)?;
    let rec = CertRec {
        tenant: tenant.to_owned(),
        serial_hex: serial_hex.clone(),
        cert_der: cert_der.clone(),
        issuer_id: ca.ca_id.clone(),
        profile: spec.profile.to_owned(),
        profile_version: 1,
        not_before_unix: not_before,
        not_after_unix: not_after,
        idem_key: idem_key.clone(),
        revoked: false,
        revoked_at_unix: 0,
        revocation_reason: 0,
    };
    let audit = AuditEntry::new(
        "issue.stored",
        tenant,
        caller,
        json!({"idempotency_key": idem_key, "serial": serial_hex, "issuer": ca.ca_id,
               "profile": spec.profile, "profile_version": 1,
               "sha256": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert_der))}),
    );
    let cert = blocking(|| core.store.complete_issue(&rec, &audit))?;
    if let Some(s) = core.issuer.status() {
        s.poke();
    }
    Ok(Certified {
        key_id,
        cert,
        ca,
        now,
    })
}

/// An RA certificate followed by its issuers up to and including the root.
pub(crate) fn chain(core: &State, ra_cert_der: &[u8], issuer_id: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![ra_cert_der.to_vec()];
    for ca in blocking(|| crate::issue::chain_of(core.store.as_ref(), issuer_id))? {
        out.push(ca.cert_der);
    }
    Ok(out)
}
