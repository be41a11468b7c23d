//! [`CmpStore`] on PostgreSQL (migration 3): MAC secrets, the tenant's RA, certificates awaiting
//! certConf. Scoped to the tenant like every call (row-level security); the confirmation
//! transition locks its row, so two cores deciding the same certConf/expiry serialise and the
//! second sees the first's result.

use tokio_postgres::Row;
use zeroize::Zeroizing;

use super::cmp::{CmpStore, PendingConfirm, RaRec};
use super::pg::{ALL, PgStore, append, col, db, in_tx, tenant_scope};
use crate::audit::AuditEntry;
use crate::error::Result;

const CONFIRM_COLS: &str = "tenant, idem_key, state, deadline_unix, done";

fn confirm_row(r: &Row) -> Result<PendingConfirm> {
    Ok(PendingConfirm {
        tenant: col(r, 0)?,
        idem_key: col(r, 1)?,
        state: col(r, 2)?,
        deadline_unix: col(r, 3)?,
        done: col(r, 4)?,
    })
}

impl CmpStore for PgStore {
    fn put_cmp_secret(
        &self,
        tenant: &str,
        reference: &[u8],
        secret: &Zeroizing<Vec<u8>>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, reference, secret, audit) = (
            tenant.to_owned(),
            reference.to_vec(),
            secret.clone(),
            audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let existed = tx
                .query_opt(
                    "SELECT 1 FROM cmp_secrets WHERE tenant = $1 AND reference = $2 FOR UPDATE",
                    &[&tenant, &reference],
                )
                .await
                .map_err(db)?
                .is_some();
            tx.execute(
                "INSERT INTO cmp_secrets (tenant, reference, secret, created_unix) VALUES ($1,$2,$3,$4)
                 ON CONFLICT (tenant, reference) DO UPDATE SET secret = excluded.secret,
                   created_unix = excluded.created_unix",
                &[&tenant, &reference, &secret.as_slice(), &now],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(existed)
        })
    }

    fn delete_cmp_secret(
        &self,
        tenant: &str,
        reference: &[u8],
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, reference, audit) = (tenant.to_owned(), reference.to_vec(), audit.clone());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let n = tx
                .execute(
                    "DELETE FROM cmp_secrets WHERE tenant = $1 AND reference = $2",
                    &[&tenant, &reference],
                )
                .await
                .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(n > 0)
        })
    }

    fn cmp_secret(&self, tenant: &str, reference: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let (tenant, reference) = (tenant.to_owned(), reference.to_vec());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                "SELECT secret FROM cmp_secrets WHERE tenant = $1 AND reference = $2",
                &[&tenant, &reference],
            )
            .await
            .map_err(db)?
            .map(|r| col::<Vec<u8>>(&r, 0).map(Zeroizing::new))
            .transpose()
        })
    }

    fn put_cmp_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()> {
        self.put_ra(RaTable::Cmp, ra, audit)
    }

    fn cmp_ra(&self, tenant: &str) -> Result<Option<RaRec>> {
        self.ra(RaTable::Cmp, tenant)
    }

    fn await_confirm(&self, tenant: &str, idem_key: &str, deadline: i64) -> Result<()> {
        let (tenant, idem_key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.execute(
                "INSERT INTO cmp_confirm (tenant, idem_key, state, deadline_unix, done)
                 VALUES ($1,$2,'pending',$3,false) ON CONFLICT DO NOTHING",
                &[&tenant, &idem_key, &deadline],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn pending_confirm(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingConfirm>> {
        let (tenant, idem_key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {CONFIRM_COLS} FROM cmp_confirm WHERE tenant = $1 AND idem_key = $2"
                ),
                &[&tenant, &idem_key],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(confirm_row)
            .transpose()
        })
    }

    fn transition_confirm(
        &self,
        tenant: &str,
        idem_key: &str,
        to: &str,
        audit: &AuditEntry,
    ) -> Result<Option<PendingConfirm>> {
        let (tenant, idem_key, to, audit) = (
            tenant.to_owned(),
            idem_key.to_owned(),
            to.to_owned(),
            audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let before = tx
                .query_opt(
                    &format!(
                        "SELECT {CONFIRM_COLS} FROM cmp_confirm
                         WHERE tenant = $1 AND idem_key = $2 FOR UPDATE"
                    ),
                    &[&tenant, &idem_key],
                )
                .await
                .map_err(db)?
                .as_ref()
                .map(confirm_row)
                .transpose()?;
            if let Some(b) = &before
                && b.state == "pending"
            {
                tx.execute(
                    "UPDATE cmp_confirm SET state = $3
                     WHERE tenant = $1 AND idem_key = $2 AND state = 'pending'",
                    &[&tenant, &idem_key, &to],
                )
                .await
                .map_err(db)?;
                append(&tx, &audit).await?;
            }
            Ok(before)
        })
    }

    fn confirm_done(&self, tenant: &str, idem_key: &str) -> Result<()> {
        let (tenant, idem_key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.execute(
                "UPDATE cmp_confirm SET done = true WHERE tenant = $1 AND idem_key = $2",
                &[&tenant, &idem_key],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn confirm_sweep_due(&self, now: i64, limit: usize) -> Result<Vec<PendingConfirm>> {
        let limit = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                &format!(
                    "SELECT {CONFIRM_COLS} FROM cmp_confirm
                     WHERE (state = 'pending' AND deadline_unix < $1)
                        OR (state IN ('rejected', 'expired') AND NOT done)
                     ORDER BY deadline_unix LIMIT $2"
                ),
                &[&now, &limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(confirm_row)
            .collect()
        })
    }
}

/// The two RA tables (CMP and SCEP RAs are separate keys with separate roles in the signer, but
/// the same record shape), so one pair of queries serves both.
#[derive(Clone, Copy)]
pub(super) enum RaTable {
    Cmp,
    Scep,
}

impl RaTable {
    fn name(self) -> &'static str {
        match self {
            RaTable::Cmp => "cmp_ra",
            RaTable::Scep => "scep_ra",
        }
    }
}

impl PgStore {
    /// Inserts or replaces the tenant's RA in `table`, with its audit record in the transaction.
    pub(super) fn put_ra(&self, table: RaTable, ra: &RaRec, audit: &AuditEntry) -> Result<()> {
        let (ra, audit) = (ra.clone(), audit.clone());
        let sql = format!(
            "INSERT INTO {} (tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix)
             VALUES ($1,$2,$3,$4,$5,$6)
             ON CONFLICT (tenant) DO UPDATE SET signer_key_id = excluded.signer_key_id,
               key_type = excluded.key_type, cert_der = excluded.cert_der,
               issuer_id = excluded.issuer_id, created_unix = excluded.created_unix",
            table.name()
        );
        in_tx!(self, tenant_scope(&ra.tenant), |tx| {
            tx.execute(
                &sql,
                &[
                    &ra.tenant,
                    &ra.signer_key_id,
                    &ra.key_type,
                    &ra.cert_der,
                    &ra.issuer_id,
                    &ra.created_unix,
                ],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    /// The tenant's RA in `table`, if any.
    pub(super) fn ra(&self, table: RaTable, tenant: &str) -> Result<Option<RaRec>> {
        let tenant = tenant.to_owned();
        let sql = format!(
            "SELECT tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix
             FROM {} WHERE tenant = $1",
            table.name()
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let Some(r) = tx.query_opt(&sql, &[&tenant]).await.map_err(db)? else {
                return Ok(None);
            };
            Ok(Some(RaRec {
                tenant: col(&r, 0)?,
                signer_key_id: col(&r, 1)?,
                key_type: col(&r, 2)?,
                cert_der: col(&r, 3)?,
                issuer_id: col(&r, 4)?,
                created_unix: col(&r, 5)?,
            }))
        })
    }
}
