//! genm `id-it-crlStatusList` → genp `id-it-crls` (RFC 9483 §4.3.4): the core calls behind
//! `certgate_cmp::crl_status`, which decodes the request and decides what is newer.
//!
//! Each CRLStatus source is resolved within the request's tenant only (I-4): a distribution
//! point URL must name one of the tenant's issuers (`GetCaChain.issuer_ids`) and must appear in
//! the IssuingDistributionPoint of the CRL the core returns for it; an issuer name must equal the
//! subject of one of the tenant's issuing CAs. Anything else is `badRequest`, whether or not the
//! CRL exists for another tenant, so nothing about other tenants shows.

use certgate_cmp::crl_status::{
    CrlQuery, CrlRef, crl_facts, newer_than, parse_crl_status_list, unknown_source,
};
use certgate_cmp::{CmpError, FailInfo};
use certgate_proto::ErrorKind;
use certgate_proto::core::GetCrlRequest;
use der::Decode;
use x509_cert::Certificate;

use super::handler::core_fail;
use crate::router::EdgeContext;

/// The id-it-crls infoValue for a crlStatusList `value`: the DER CRLs newer than the client's,
/// each once, in request order; `None` (an absent infoValue) when every CRL given is current.
pub(super) async fn crls_for(
    ctx: &EdgeContext,
    tenant: &str,
    value: Option<&[u8]>,
) -> Result<Option<Vec<Vec<u8>>>, CmpError> {
    let queries = parse_crl_status_list(value)?;
    let chain = ctx
        .core
        .ca_chain(tenant, "")
        .await
        .map_err(|e| core_fail(&e, "crlStatusList"))?;
    let mut issuer_ids = chain.issuer_ids;
    if issuer_ids.is_empty() {
        issuer_ids.push(chain.issuer_id);
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for q in &queries {
        for crl in resolve(ctx, tenant, &issuer_ids, q).await? {
            let facts = crl_facts(&crl)?;
            if newer_than(facts.this_update_unix, q.this_update_unix) && !out.contains(&crl) {
                out.push(crl);
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The current CRLs a source names (one for a URL, the full CRL of each matching issuer).
async fn resolve(
    ctx: &EdgeContext,
    tenant: &str,
    issuer_ids: &[String],
    q: &CrlQuery,
) -> Result<Vec<Vec<u8>>, CmpError> {
    match &q.source {
        CrlRef::Url {
            uri,
            issuer_id,
            shard,
        } => {
            if !issuer_ids.contains(issuer_id) {
                return Err(unknown_source(uri));
            }
            let crl = get_crl(ctx, tenant, issuer_id, shard)
                .await?
                .ok_or_else(|| unknown_source(uri))?;
            // The URL must be one the CRL itself names (its IssuingDistributionPoint), so the
            // host and base path are compared too, not just the path's last segments.
            if !crl_facts(&crl)?.idp_uris.iter().any(|u| u == uri) {
                return Err(unknown_source(uri));
            }
            Ok(vec![crl])
        }
        CrlRef::Issuer(names) => {
            let mut crls = Vec::new();
            for id in issuer_ids {
                let der = match ctx.ca.get(&ctx.core, tenant, id).await {
                    Ok(d) => d,
                    Err(crate::error::EdgeError::NotFound) => continue,
                    Err(_) => {
                        return Err(CmpError::new(
                            FailInfo::SystemUnavail,
                            "crlStatusList: the CA is not reachable, try later",
                        ));
                    }
                };
                let Ok(cert) = Certificate::from_der(&der) else {
                    continue;
                };
                if names.contains(&cert.tbs_certificate.subject)
                    && let Some(crl) = get_crl(ctx, tenant, id, "full").await?
                {
                    crls.push(crl);
                }
            }
            if crls.is_empty() {
                return Err(unknown_source("no issuing CA of this tenant has that name"));
            }
            Ok(crls)
        }
    }
}

/// `Core.GetCrl` for the tenant; NOT_FOUND → `None`.
async fn get_crl(
    ctx: &EdgeContext,
    tenant: &str,
    issuer_id: &str,
    shard: &str,
) -> Result<Option<Vec<u8>>, CmpError> {
    match ctx
        .core
        .get_crl(GetCrlRequest {
            tenant: tenant.to_owned(),
            issuer_id: issuer_id.to_owned(),
            shard: shard.to_owned(),
        })
        .await
    {
        Ok(e) => Ok(Some(e.crl_der)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(core_fail(&e, "crlStatusList")),
    }
}
