//! The tenant's SCEP RA: a signer key with role SCEP_RA (RSA-2048: SCEP clients encrypt to it
//! and expect rsaEncryption signatures; the signer lets it only decrypt key transport and sign
//! CMS SignedAttributes) and an end-entity certificate for it from the tenant's active issuing
//! CA with keyUsage digitalSignature + keyEncipherment (RFC 8894 §2.1 and §3.5.1: the RA
//! certificate is the encryption recipient and the response signer).
//!
//! The RA certificate goes through the store like every certificate (intent, then the signed
//! record), so it is covered by OCSP and CRLs and can be revoked like any other.

use certgate_proto::Caller;
use certgate_proto::signer::{KeyRole, KeyType};
use der::{Decode, Encode};
use serde_json::json;
use spki::SubjectPublicKeyInfoOwned;

use super::service::{ScepState, blocking};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::issue::{key_type_of, spki_of};
use crate::profile::{KeyAlgorithm, Ku};
use crate::store::cmp::RaRec;
use crate::store::{CertRec, IntentOutcome, IntentRec};
use crate::x509::{self, IssuerInfo, LeafSpec};

/// The profile name recorded on SCEP RA certificates (internal; not a tenant profile).
pub const RA_PROFILE: &str = "certgate-scep-ra";
/// Validity of an RA certificate (one year, capped by the issuing CA's own notAfter).
pub const RA_VALIDITY_SECONDS: u64 = 365 * 24 * 3600;

/// The tenant's SCEP RA, created now when absent. Returns the record and whether it was created
/// by this call.
pub async fn ensure_ra(st: &ScepState, tenant: &str, caller: &Caller) -> Result<(RaRec, bool)> {
    let store = st.store()?;
    if let Some(ra) = blocking(|| store.scep_ra(tenant))? {
        return Ok((ra, false));
    }
    // One creation per process at a time; re-check under the lock so concurrent first uses
    // converge on one RA.
    let _g = st.ra_lock.lock().await;
    if let Some(ra) = blocking(|| store.scep_ra(tenant))? {
        return Ok((ra, false));
    }
    let t = blocking(|| st.core.store.get_tenant(tenant))?
        .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
    if t.active_issuer_id.is_empty() {
        return Err(CoreError::policy(
            "scep.no_issuer",
            "the tenant has no active issuing CA to certify a SCEP RA key",
        ));
    }
    let ca = blocking(|| st.core.store.get_ca(&t.active_issuer_id))?
        .ok_or_else(|| CoreError::Store("active issuing CA missing".into()))?;

    let key_id = format!("scep-ra-{tenant}-{}", crate::acme::random_id(6)?);
    let info = st
        .signer
        .ensure_key(&key_id, tenant, KeyRole::ScepRa, KeyType::Rsa2048, None)
        .await?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&info.public_key_der)
        .map_err(|e| CoreError::Internal(format!("signer public key: {e}")))?;

    let issuer = IssuerInfo::from_cert(&ca.ca_id, &ca.cert_der, key_type_of(&ca)?)?;
    let serial = x509::random_serial()?;
    let now = crate::now_unix();
    let cn = format!("certgate SCEP RA {tenant}");
    let tbs = x509::build_leaf_tbs(&LeafSpec {
        issuer: &issuer,
        serial: &serial,
        spki: &spki,
        key_alg: KeyAlgorithm::Rsa,
        common_name: Some(&cn),
        sans: &[],
        ekus: &[],
        key_usages: &[Ku::DigitalSignature, Ku::KeyEncipherment],
        now_unix: now,
        validity_seconds: RA_VALIDITY_SECONDS.min(
            u64::try_from(ca.not_after_unix.saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        ),
        base_url: &t.public_base_url,
    })?;
    let tbs_der = tbs.to_der()?;
    let serial_hex = x509::serial_hex(&serial);
    let idem_key = format!("scep-ra:{key_id}");

    let intent = IntentRec {
        tenant: tenant.to_owned(),
        idem_key: idem_key.clone(),
        request_hash: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tbs_der)
            .as_ref()
            .to_vec(),
        serial_hex: serial_hex.clone(),
        tbs_der: tbs_der.clone(),
        issuer_id: ca.ca_id.clone(),
        profile: RA_PROFILE.to_owned(),
        profile_version: 1,
        created_unix: now,
    };
    let audit = AuditEntry::new(
        "issue.intent",
        tenant,
        caller,
        json!({"idempotency_key": idem_key, "serial": serial_hex, "issuer": ca.ca_id,
               "profile": RA_PROFILE, "profile_version": 1, "protocol": "scep",
               "client": "certgate-core (SCEP RA)"}),
    );
    if let IntentOutcome::Exists(_) = blocking(|| st.core.store.insert_intent(&intent, &audit))? {
        return Err(CoreError::Internal("RA intent key collision".into()));
    }
    let (alg, _) = x509::signing_algorithm(key_type_of(&ca)?)?;
    let sig = st
        .signer
        .sign(&ca.signer_key_id, alg, tbs_der.clone())
        .await?;
    x509::verify_signature(&spki_of(&ca.cert_der)?, alg, &tbs_der, &sig)?;
    let cert_der = x509::assemble(&tbs_der, &sig)?;
    let (not_before, not_after) = x509::validity_of(&cert_der)?;
    let rec = CertRec {
        tenant: tenant.to_owned(),
        serial_hex: serial_hex.clone(),
        cert_der: cert_der.clone(),
        issuer_id: ca.ca_id.clone(),
        profile: RA_PROFILE.to_owned(),
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
               "profile": RA_PROFILE, "profile_version": 1,
               "sha256": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert_der))}),
    );
    let stored = blocking(|| st.core.store.complete_issue(&rec, &audit))?;
    if let Some(s) = st.core.issuer.status() {
        s.poke();
    }
    let ra = RaRec {
        tenant: tenant.to_owned(),
        signer_key_id: key_id.clone(),
        key_type: KeyType::Rsa2048 as i32,
        cert_der: stored.cert_der,
        issuer_id: ca.ca_id.clone(),
        created_unix: now,
    };
    let audit = AuditEntry::new(
        "scep.ra.created",
        tenant,
        caller,
        json!({"signer_key_id": key_id, "serial": serial_hex, "issuer": ca.ca_id}),
    );
    blocking(|| store.put_scep_ra(&ra, &audit))?;
    tracing::info!(tenant, serial = %serial_hex, "SCEP RA created");
    Ok((ra, true))
}

/// The RA certificate, then its issuers up to and including the root.
pub fn ra_chain(st: &ScepState, ra: &RaRec) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![ra.cert_der.clone()];
    for ca in blocking(|| crate::issue::chain_of(st.core.store.as_ref(), &ra.issuer_id))? {
        out.push(ca.cert_der);
    }
    Ok(out)
}
