//! CAA again at finalize (RFC 8659 §3; CA/B Forum Baseline Requirements 3.2.2.8).
//!
//! CAA is checked when a name is proven ([`super::service`] after a successful validation), but
//! a valid authorization is reused for `authz_valid_secs` (30 days by default), while the
//! Baseline Requirements let a CA rely on a CAA check for 8 hours only. So finalize checks CAA
//! again for every DNS identifier whose validation is at least `[acme] caa_recheck_secs` old
//! (default 8 h), with the same inputs as at validation: the tenant's CAA identities, the
//! ordering account (RFC 8657 `accounturi`) and the challenge type that proved the name
//! (`validationmethods`). A refusal fails finalize with a `caa` problem before the order moves
//! to processing, so nothing is issued; the order stays ready and a later finalize checks again
//! (the domain holder may fix the records).

use super::service::AcmeState;
use super::validate::CaaRequest;
use crate::error::{CoreError, Result};
use crate::store::acme::AuthzRec;

/// When `validated_unix` (the proof of the name) is old enough at `now` that CAA must be asked
/// again: at least `window` seconds. A missing time (0) is always old.
pub fn needs_recheck(validated_unix: i64, now: i64, window: i64) -> bool {
    validated_unix <= 0 || now.saturating_sub(validated_unix) >= window
}

/// The challenge that made the authorization valid: (type, validation time). None when the
/// authorization holds no valid challenge.
fn proof(a: &AuthzRec) -> Option<(&str, i64)> {
    a.challenges
        .iter()
        .find(|c| c.status == "valid")
        .map(|c| (c.kind.as_str(), c.validated_unix))
}

/// Checks CAA again for the order's DNS identifiers whose validation is older than the
/// configured window (module docs). Runs before finalize's blocking section, so it reads the
/// order itself; an order that is not this account's, not pending/ready, or an authorization
/// that is not valid is left to finalize to refuse. `Err` is a `caa` policy error naming the
/// record; nothing is looked up when the tenant lists no CAA identities (as at validation).
pub async fn recheck_at_finalize(
    state: &AcmeState,
    tenant: &str,
    account_id: &str,
    order_id: &str,
    now: i64,
) -> Result<()> {
    let store = state
        .core
        .store
        .as_acme()
        .ok_or_else(|| CoreError::Internal("this store has no ACME tables".into()))?;
    // The proven names and how each was proven; store reads off the async workers.
    let proofs = super::service::blocking(|| -> Result<Option<(Vec<String>, Vec<Proof>)>> {
        let identities = store
            .acme_settings(tenant)?
            .map(|s| s.caa_identities)
            .unwrap_or_default();
        if identities.is_empty() {
            return Ok(None);
        }
        let Some(o) = store.order(tenant, account_id, order_id)? else {
            return Ok(None);
        };
        if o.status != "pending" && o.status != "ready" {
            return Ok(None);
        }
        let mut proofs = Vec::with_capacity(o.authz_ids.len());
        for id in &o.authz_ids {
            let Some(a) = store.authz(tenant, account_id, id)? else {
                continue;
            };
            if a.identifier.kind != "dns" {
                continue;
            }
            if let Some((method, validated)) = proof(&a)
                && needs_recheck(validated, now, state.config.caa_recheck_secs)
            {
                proofs.push(Proof {
                    name: a.identifier.value.clone(),
                    wildcard: a.wildcard,
                    method: method.to_owned(),
                });
            }
        }
        Ok(Some((identities, proofs)))
    })?;
    let Some((identities, proofs)) = proofs else {
        return Ok(());
    };
    for p in proofs {
        let req = CaaRequest {
            identities: &identities,
            wildcard: p.wildcard,
            tenant,
            account_id,
            method: &p.method,
        };
        if let Err(f) = state.validator.check_caa(&p.name, &req).await {
            metrics::counter!("certgate_acme_caa_refusals_total",
                "protocol" => "acme", "tenant" => tenant.to_owned(), "stage" => "finalize")
            .increment(1);
            tracing::warn!(%tenant, order = %order_id, identifier = %p.name,
                detail = %f.detail, "CAA re-check at finalize refused issuance");
            return Err(CoreError::policy("caa", f.detail));
        }
    }
    Ok(())
}

/// One proven DNS name due for a CAA re-check.
struct Proof {
    name: String,
    wildcard: bool,
    method: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recheck_window_is_inclusive_and_missing_times_are_old() {
        let h8 = 8 * 3600;
        assert!(!needs_recheck(1_000_000, 1_000_000 + h8 - 1, h8));
        assert!(needs_recheck(1_000_000, 1_000_000 + h8, h8));
        assert!(needs_recheck(0, 5, h8));
        assert!(needs_recheck(1_000_000, 1_000_000, 0));
    }
}
