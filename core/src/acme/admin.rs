//! The Admin RPCs for ACME: EAB key provisioning and the tenant's ACME settings (served by
//! `AdminService`, so behind the admin allow-list; edges never reach them).

use certgate_proto::Caller;
use certgate_proto::admin::{AcmeSettings, CreateEabKeyRequest, EabKeyCreated};
use serde_json::json;
use zeroize::Zeroizing;

use super::random_id;
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};
use crate::service::State;
use crate::store::acme::{self, AcmeStore, EabKey};

/// Bytes of a new EAB HMAC key (HMAC-SHA256 wants at least 32).
pub const EAB_KEY_BYTES: usize = 32;
/// Most CAA identities a tenant lists.
const MAX_CAA: usize = 16;

fn acme_store(state: &State) -> Result<&dyn AcmeStore> {
    state
        .store
        .as_acme()
        .ok_or_else(|| CoreError::Internal("this store has no ACME tables".into()))
}

fn tenant_exists(state: &State, tenant: &str) -> Result<()> {
    state
        .store
        .get_tenant(tenant)?
        .map(|_| ())
        .ok_or_else(|| CoreError::not_found("tenant.unknown", "no such tenant"))
}

/// A new EAB key for the tenant. The key is drawn from the CSPRNG, stored, audited (its id,
/// never its value) and returned once.
pub fn create_eab_key(
    state: &State,
    caller: &Caller,
    r: &CreateEabKeyRequest,
) -> Result<EabKeyCreated> {
    tenant_exists(state, &r.tenant)?;
    let mut key = Zeroizing::new(vec![0u8; EAB_KEY_BYTES]);
    aws_lc_rs::rand::fill(key.as_mut_slice()).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
    let key_id = format!("eab-{}", random_id(12)?);
    let rec = EabKey {
        tenant: r.tenant.clone(),
        key_id: key_id.clone(),
        key,
        account_id: String::new(),
        created_unix: crate::now_unix(),
    };
    let audit = AuditEntry::new(
        "acme.eab.create",
        &r.tenant,
        caller,
        json!({"key_id": key_id}),
    );
    acme_store(state)?.insert_eab_key(&rec, &audit)?;
    Ok(EabKeyCreated {
        tenant: r.tenant.clone(),
        key_id,
        hmac_key_b64url: certgate_acme::base64url(&rec.key),
    })
}

fn check_url(field: &'static str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Ok(());
    }
    if !(v.starts_with("https://") || v.starts_with("http://"))
        || !v.is_ascii()
        || v.len() > 2048
        || v.chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err(CoreError::malformed(field, "must be an http(s) URL"));
    }
    Ok(())
}

/// Replaces the tenant's ACME settings.
pub fn set_acme_settings(state: &State, caller: &Caller, r: &AcmeSettings) -> Result<AcmeSettings> {
    tenant_exists(state, &r.tenant)?;
    check_url("acme.terms_of_service", &r.terms_of_service)?;
    check_url("acme.website", &r.website)?;
    if r.caa_identities.len() > MAX_CAA
        || r.caa_identities.iter().any(|c| {
            c.is_empty()
                || c.len() > 253
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-')
        })
    {
        return Err(CoreError::malformed(
            "acme.caa_identities",
            format!("at most {MAX_CAA} domain names"),
        ));
    }
    let rec = acme::AcmeSettings {
        tenant: r.tenant.clone(),
        terms_of_service: r.terms_of_service.clone(),
        website: r.website.clone(),
        caa_identities: r.caa_identities.clone(),
        external_account_required: r.external_account_required,
    };
    let audit = AuditEntry::new(
        "acme.settings",
        &r.tenant,
        caller,
        json!({"terms_of_service": rec.terms_of_service, "website": rec.website,
               "caa_identities": rec.caa_identities,
               "external_account_required": rec.external_account_required}),
    );
    acme_store(state)?.put_acme_settings(&rec, &audit)?;
    Ok(r.clone())
}
