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
use der::Encode;
use serde_json::json;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use super::service::CmpState;
use crate::audit::AuditEntry;
use crate::error::Result;
use crate::profile::{KeyAlgorithm, Ku};
use crate::ra::blocking;
use crate::store::cmp::RaRec;
use crate::x509;

/// id-kp-cmcRA (RFC 6402 §2.10).
pub const ID_KP_CMC_RA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.28");
/// The profile name recorded on RA certificates (internal; not a tenant profile).
pub const RA_PROFILE: &str = "certgate-cmp-ra";
/// RFC 5280 CRLReason superseded, for a rotated RA certificate.
const SUPERSEDED: u32 = 4;
/// Validity of an RA certificate (one year; rotate with `certgate cmp ra create --rotate`).
pub const RA_VALIDITY_SECONDS: u64 = 365 * 24 * 3600;

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
    let eku = x509_cert::ext::Extension {
        extn_id: rfc5280::ID_CE_EXT_KEY_USAGE,
        critical: false,
        extn_value: der::asn1::OctetString::new(ExtendedKeyUsage(vec![ID_KP_CMC_RA]).to_der()?)?,
    };
    let c = crate::ra::certify(
        &st.core,
        &st.signer,
        tenant,
        caller,
        crate::ra::RaSpec {
            kind: "cmp",
            label: "CMP",
            no_issuer_rule: "cmp.no_issuer",
            role: KeyRole::Ra,
            key_type: KeyType::EcP256,
            key_alg: KeyAlgorithm::EcdsaP256,
            key_usages: &[Ku::DigitalSignature],
            extra_extensions: vec![eku],
            profile: RA_PROFILE,
            validity_seconds: RA_VALIDITY_SECONDS,
            reuse_key: None,
        },
    )
    .await?;
    let (key_id, ca, now, serial_hex) = (c.key_id, c.ca, c.now, c.cert.serial_hex);
    let stored_cert_der = c.cert.cert_der;
    let ra = RaRec {
        tenant: tenant.to_owned(),
        signer_key_id: key_id.clone(),
        key_type: KeyType::EcP256 as i32,
        cert_der: stored_cert_der,
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
    crate::ra::chain(&st.core, &ra.cert_der, &ra.issuer_id)
}
