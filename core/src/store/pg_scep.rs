//! [`ScepStore`] on PostgreSQL (migration 4): the tenant's SCEP RA and challenge passwords (as
//! digests). A one-time challenge is consumed by `DELETE ... RETURNING`: when two cores check the
//! same challenge at once, the second's delete finds nothing and it does not match. Adding
//! one-time challenges takes a per-tenant transaction lock so the outstanding bound holds across
//! cores.

use super::cmp::RaRec;
use super::pg::{PgStore, append, col, db, in_tx, tenant_scope};
use super::pg_cmp::RaTable;
use super::scep::{ChallengeMatch, ScepStore};
use crate::audit::AuditEntry;
use crate::error::Result;

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

impl ScepStore for PgStore {
    fn put_scep_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()> {
        self.put_ra(RaTable::Scep, ra, audit)
    }

    fn scep_ra(&self, tenant: &str) -> Result<Option<RaRec>> {
        self.ra(RaTable::Scep, tenant)
    }

    fn put_scep_static_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, profile, audit) = (tenant.to_owned(), profile.to_owned(), audit.clone());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let existed = tx
                .query_opt(
                    "SELECT 1 FROM scep_static_challenges
                     WHERE tenant = $1 AND profile = $2 FOR UPDATE",
                    &[&tenant, &profile],
                )
                .await
                .map_err(db)?
                .is_some();
            tx.execute(
                "INSERT INTO scep_static_challenges (tenant, profile, digest, created_unix)
                 VALUES ($1,$2,$3,$4)
                 ON CONFLICT (tenant, profile) DO UPDATE SET digest = excluded.digest,
                   created_unix = excluded.created_unix",
                &[&tenant, &profile, &digest.as_slice(), &now],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(existed)
        })
    }

    #[allow(clippy::too_many_arguments)] // one transaction, its inputs and its audit entry
    fn add_scep_one_time_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        expires: i64,
        max_outstanding: usize,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, profile, audit) = (tenant.to_owned(), profile.to_owned(), audit.clone());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            // Adds of one tenant queue here, so N cores together keep the bound.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('certgate.scep-otp'), hashtext($1))",
                &[&tenant],
            )
            .await
            .map_err(db)?;
            tx.execute(
                "DELETE FROM scep_one_time_challenges WHERE tenant = $1 AND expires_unix <= $2",
                &[&tenant, &now],
            )
            .await
            .map_err(db)?;
            let n: i64 = col(
                &tx.query_one(
                    "SELECT count(*) FROM scep_one_time_challenges WHERE tenant = $1",
                    &[&tenant],
                )
                .await
                .map_err(db)?,
                0,
            )?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= max_outstanding {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO scep_one_time_challenges (tenant, profile, digest, expires_unix)
                 VALUES ($1,$2,$3,$4)",
                &[&tenant, &profile, &digest.as_slice(), &expires],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(true)
        })
    }

    fn check_scep_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        consumed_audit: &AuditEntry,
    ) -> Result<ChallengeMatch> {
        let (tenant, profile, audit) = (
            tenant.to_owned(),
            profile.to_owned(),
            consumed_audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let statics = tx
                .query(
                    "SELECT digest FROM scep_static_challenges
                     WHERE tenant = $1 AND (profile = $2 OR profile = '')",
                    &[&tenant, &profile],
                )
                .await
                .map_err(db)?;
            // Compare against every candidate (no early exit): timing does not tell which.
            let mut hit = false;
            for r in &statics {
                hit |= ct_eq(col::<&[u8]>(r, 0)?, &digest);
            }
            if hit {
                return Ok(ChallengeMatch::Static);
            }
            let rows = tx
                .query(
                    "SELECT id, digest FROM scep_one_time_challenges
                     WHERE tenant = $1 AND (profile = $2 OR profile = '') AND expires_unix > $3",
                    &[&tenant, &profile, &now],
                )
                .await
                .map_err(db)?;
            let mut found = None;
            for r in &rows {
                if ct_eq(col::<&[u8]>(r, 1)?, &digest) && found.is_none() {
                    found = Some(col::<i64>(r, 0)?);
                }
            }
            let Some(id) = found else {
                return Ok(ChallengeMatch::None);
            };
            // Consumed once: a concurrent check on another core that deleted it first leaves
            // nothing to delete here.
            let consumed = tx
                .query_opt(
                    "DELETE FROM scep_one_time_challenges WHERE id = $1 RETURNING id",
                    &[&id],
                )
                .await
                .map_err(db)?;
            if consumed.is_none() {
                return Ok(ChallengeMatch::None);
            }
            append(&tx, &audit).await?;
            Ok(ChallengeMatch::OneTime)
        })
    }
}
