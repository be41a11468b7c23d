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
use serde_json::json;

use super::service::{ScepState, blocking};
use crate::audit::AuditEntry;
use crate::error::Result;
use crate::profile::{KeyAlgorithm, Ku};
use crate::store::cmp::RaRec;

/// How long a tenant's RA record is served from memory.
const RA_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Most tenants whose RA record is held in memory (I-8); beyond, the cache starts over.
const RA_CACHE_MAX: usize = 1024;

fn remember(st: &ScepState, ra: &RaRec) {
    if let Ok(mut cache) = st.ra_cache.lock() {
        if cache.len() >= RA_CACHE_MAX && !cache.contains_key(&ra.tenant) {
            cache.clear();
        }
        cache.insert(
            ra.tenant.clone(),
            (
                ra.clone(),
                std::time::Instant::now(),
                st.core.authority.generation(),
            ),
        );
    }
}

/// The profile name recorded on SCEP RA certificates (internal; not a tenant profile).
pub const RA_PROFILE: &str = "certgate-scep-ra";
/// Validity of an RA certificate (one year, capped by the issuing CA's own notAfter).
pub const RA_VALIDITY_SECONDS: u64 = 365 * 24 * 3600;

/// The tenant's SCEP RA, created now when absent. Returns the record and whether it was created
/// by this call.
///
/// Every SCEP enrollment needs the RA three times (GetRaChain, DecryptKey, SignAttributes), so a
/// record read from the store is kept in memory for [`RA_CACHE_TTL`] (at most
/// [`RA_CACHE_MAX`] tenants): the RA record only ever changes by being created, and the TTL
/// bounds how long another core process's view can lag.
pub async fn ensure_ra(st: &ScepState, tenant: &str, caller: &Caller) -> Result<(RaRec, bool)> {
    if let Ok(cache) = st.ra_cache.lock()
        && let Some((ra, at, generation)) = cache.get(tenant)
        && at.elapsed() < RA_CACHE_TTL
        && *generation == st.core.authority.generation()
    {
        return Ok((ra.clone(), false));
    }
    let store = st.store()?;
    let found = blocking(|| store.scep_ra(tenant))?;
    if let Some(ra) = &found
        && !recertify_needed(st, ra)?
    {
        remember(st, ra);
        return Ok((ra.clone(), false));
    }
    // One creation per process at a time; re-check under the lock so concurrent first uses
    // converge on one RA.
    let _g = st.ra_lock.lock().await;
    let found = blocking(|| store.scep_ra(tenant))?;
    let reuse_key = match found {
        Some(ra) if !recertify_needed(st, &ra)? => {
            remember(st, &ra);
            return Ok((ra, false));
        }
        // The tenant's issuing CA was rolled over: certify the same RA key under the new one
        // (clients that fetched the old RA certificate still encrypt to a key we hold).
        Some(ra) => Some(ra.signer_key_id),
        None => None,
    };
    let recertified = reuse_key.is_some();
    let c = crate::ra::certify(
        &st.core,
        &st.signer,
        tenant,
        caller,
        crate::ra::RaSpec {
            kind: "scep",
            label: "SCEP",
            no_issuer_rule: "scep.no_issuer",
            role: KeyRole::ScepRa,
            key_type: KeyType::Rsa2048,
            key_alg: KeyAlgorithm::Rsa,
            key_usages: &[Ku::DigitalSignature, Ku::KeyEncipherment],
            extra_extensions: Vec::new(),
            profile: RA_PROFILE,
            validity_seconds: RA_VALIDITY_SECONDS,
            reuse_key,
        },
    )
    .await?;
    let (key_id, ca, now, serial_hex) = (c.key_id, c.ca, c.now, c.cert.serial_hex);
    let stored_cert_der = c.cert.cert_der;
    let ra = RaRec {
        tenant: tenant.to_owned(),
        signer_key_id: key_id.clone(),
        key_type: KeyType::Rsa2048 as i32,
        cert_der: stored_cert_der,
        issuer_id: ca.ca_id.clone(),
        created_unix: now,
    };
    let audit = AuditEntry::new(
        if recertified {
            "scep.ra.recertified"
        } else {
            "scep.ra.created"
        },
        tenant,
        caller,
        json!({"signer_key_id": key_id, "serial": serial_hex, "issuer": ca.ca_id}),
    );
    blocking(|| store.put_scep_ra(&ra, &audit))?;
    tracing::info!(tenant, serial = %serial_hex, recertified, "SCEP RA certified");
    remember(st, &ra);
    Ok((ra, true))
}

/// Whether the RA certificate comes from an issuing CA that is no longer the tenant's active
/// one (an activated rollover): then it is re-certified under the active CA so GetCACert shows
/// the CA that now issues. Checked only when the record is read from the store (at most once
/// per [`RA_CACHE_TTL`] per tenant and process), so the switch shows within that time.
fn recertify_needed(st: &ScepState, ra: &RaRec) -> Result<bool> {
    let t = blocking(|| st.core.store.get_tenant(&ra.tenant))?;
    Ok(matches!(t, Some(t) if !t.active_issuer_id.is_empty() && t.active_issuer_id != ra.issuer_id))
}

/// The RA certificate, then its issuers up to and including the root.
pub fn ra_chain(st: &ScepState, ra: &RaRec) -> Result<Vec<Vec<u8>>> {
    crate::ra::chain(&st.core, &ra.cert_der, &ra.issuer_id)
}
