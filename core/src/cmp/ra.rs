//! The tenant's CMP RA: a signer key with role RA (it signs protocol messages only, never
//! certificates, CRLs or OCSP responses — the signer enforces that) and an end-entity
//! certificate for it from the tenant's active issuing CA with digitalSignature and EKU
//! id-kp-cmcRA (RFC 6402 §2.10; RFC 9483 §3.1 names it for CMP RAs).
//!
//! The RA certificate goes through the store like every certificate (intent, then the signed
//! record), so it is covered by OCSP and CRLs and can be revoked like any other.

use certgate_proto::Caller;
use certgate_proto::signer::{KeyRole, KeyType};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280;
use der::{Decode, Encode};
use serde_json::json;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use super::service::CmpState;
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::issue::{key_type_of, spki_of};
use crate::profile::{KeyAlgorithm, Ku};
use crate::store::cmp::RaRec;
use crate::store::{CertRec, IntentOutcome, IntentRec};
use crate::x509::{self, IssuerInfo, LeafSpec};

/// id-kp-cmcRA (RFC 6402 §2.10).
pub const ID_KP_CMC_RA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.28");
/// The profile name recorded on RA certificates (internal; not a tenant profile).
pub const RA_PROFILE: &str = "certgate-cmp-ra";
/// RFC 5280 CRLReason superseded, for a rotated RA certificate.
const SUPERSEDED: u32 = 4;
/// Validity of an RA certificate (one year; rotate with `certgate cmp ra create --rotate`).
pub const RA_VALIDITY_SECONDS: u64 = 365 * 24 * 3600;

/// Runs store work off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The tenant's RA, created now when absent (or when `rotate`). Returns the record and whether
/// it was created by this call.
pub async fn ensure_ra(
    st: &CmpState,
    tenant: &str,
    rotate: bool,
    caller: &Caller,
) -> Result<(RaRec, bool)> {
    let store = st.store()?;
    if !rotate && let Some(ra) = blocking(|| store.cmp_ra(tenant))? {
        return Ok((ra, false));
    }
    // One creation per process at a time; re-check under the lock so concurrent first uses
    // converge on one RA.
    let _g = st.ra_lock.lock().await;
    let old = blocking(|| store.cmp_ra(tenant))?;
    if !rotate && let Some(ra) = old {
        return Ok((ra, false));
    }
    let t = blocking(|| st.core.store.get_tenant(tenant))?
        .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))?;
    if t.active_issuer_id.is_empty() {
        return Err(CoreError::policy(
            "cmp.no_issuer",
            "the tenant has no active issuing CA to certify a CMP RA key",
        ));
    }
    let ca = blocking(|| st.core.store.get_ca(&t.active_issuer_id))?
        .ok_or_else(|| CoreError::Store("active issuing CA missing".into()))?;

    let key_id = format!("cmp-ra-{tenant}-{}", crate::acme::random_id(6)?);
    let info = st
        .signer
        .ensure_key(&key_id, tenant, KeyRole::Ra, KeyType::EcP256, None)
        .await?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&info.public_key_der)
        .map_err(|e| CoreError::Internal(format!("signer public key: {e}")))?;

    let issuer = IssuerInfo::from_cert(&ca.ca_id, &ca.cert_der, key_type_of(&ca)?)?;
    let serial = x509::random_serial()?;
    let now = crate::now_unix();
    let cn = format!("certgate CMP RA {tenant}");
    let mut tbs = x509::build_leaf_tbs(&LeafSpec {
        issuer: &issuer,
        serial: &serial,
        spki: &spki,
        key_alg: KeyAlgorithm::EcdsaP256,
        common_name: Some(&cn),
        sans: &[],
        ekus: &[],
        key_usages: &[Ku::DigitalSignature],
        now_unix: now,
        validity_seconds: RA_VALIDITY_SECONDS.min(
            u64::try_from(ca.not_after_unix.saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        ),
        base_url: &t.public_base_url,
    })?;
    let eku = x509_cert::ext::Extension {
        extn_id: rfc5280::ID_CE_EXT_KEY_USAGE,
        critical: false,
        extn_value: der::asn1::OctetString::new(ExtendedKeyUsage(vec![ID_KP_CMC_RA]).to_der()?)?,
    };
    tbs.extensions.get_or_insert_with(Vec::new).push(eku);
    let tbs_der = tbs.to_der()?;
    let serial_hex = x509::serial_hex(&serial);
    let idem_key = format!("cmp-ra:{key_id}");

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
               "profile": RA_PROFILE, "profile_version": 1, "protocol": "cmp",
               "client": "certgate-core (CMP RA)"}),
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
        key_type: KeyType::EcP256 as i32,
        cert_der: stored.cert_der,
        issuer_id: ca.ca_id.clone(),
        created_unix: now,
    };
    let audit = AuditEntry::new(
        "cmp.ra.created",
        tenant,
        caller,
        json!({"signer_key_id": key_id, "serial": serial_hex, "issuer": ca.ca_id,
               "rotated": rotate}),
    );
    blocking(|| store.put_cmp_ra(&ra, &audit))?;
    // The replaced RA certificate is revoked (superseded) so relying clients stop trusting it.
    if let Some(old) = old {
        let old_serial = x509::serial_hex(&x509::serial_of(&old.cert_der)?);
        st.revoke(
            tenant,
            &old_serial,
            SUPERSEDED,
            &format!("cmp-ra-rotated:{old_serial}"),
            &caller.to_string(),
            "CMP RA rotated",
        )?;
    }
    tracing::info!(tenant, serial = %serial_hex, "CMP RA created");
    Ok((ra, true))
}

/// The RA certificate, then its issuers up to and including the root.
pub fn protection_chain(st: &CmpState, ra: &RaRec) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![ra.cert_der.clone()];
    for ca in blocking(|| crate::issue::chain_of(st.core.store.as_ref(), &ra.issuer_id))? {
        out.push(ca.cert_der);
    }
    Ok(out)
}
