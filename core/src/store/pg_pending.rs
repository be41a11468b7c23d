//! [`PendingStore`] on PostgreSQL (migration 5): requests held for manual approval. Inserts of
//! one tenant queue on a transaction-level advisory lock, so the open-request bound holds across
//! cores (I-8); a request is recorded once per (tenant, idempotency key) by the unique key; a
//! decision is a compare-and-set from `pending`, so two operators (or an expiry) on two cores
//! decide once.

use tokio_postgres::Row;

use super::pending::{Decision, PendingInsert, PendingRec, PendingStore, STATE_PENDING};
use super::pg::{PgStore, append, col, db, in_tx, tenant_scope};
use crate::audit::AuditEntry;
use crate::error::{CoreError, Result};

const COLS: &str = "tenant, id, idem_key, request_hash, request_pb, protocol, client_identity, \
                    profile, summary, state, created_unix, expires_unix, decided_by, decided_unix, reason";

fn row(r: &Row) -> Result<PendingRec> {
    Ok(PendingRec {
        tenant: col(r, 0)?,
        id: col(r, 1)?,
        idem_key: col(r, 2)?,
        request_hash: col(r, 3)?,
        request_pb: col(r, 4)?,
        protocol: col(r, 5)?,
        client_identity: col(r, 6)?,
        profile: col(r, 7)?,
        summary: col(r, 8)?,
        state: col(r, 9)?,
        created_unix: col(r, 10)?,
        expires_unix: col(r, 11)?,
        decided_by: col(r, 12)?,
        decided_unix: col(r, 13)?,
        reason: col(r, 14)?,
    })
}

async fn by(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    column: &str,
    value: &str,
) -> Result<Option<PendingRec>> {
    tx.query_opt(
        &format!("SELECT {COLS} FROM pending_requests WHERE tenant = $1 AND {column} = $2"),
        &[&tenant, &value],
    )
    .await
    .map_err(db)?
    .as_ref()
    .map(row)
    .transpose()
}

impl PendingStore for PgStore {
    fn insert_pending(
        &self,
        rec: &PendingRec,
        max_open: usize,
        audit: &AuditEntry,
    ) -> Result<PendingInsert> {
        let (rec, audit) = (rec.clone(), audit.clone());
        in_tx!(self, tenant_scope(&rec.tenant), |tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('certgate.pending'), hashtext($1))",
                &[&rec.tenant],
            )
            .await
            .map_err(db)?;
            if let Some(existing) = by(&tx, &rec.tenant, "idem_key", &rec.idem_key).await? {
                return Ok(PendingInsert::Exists(Box::new(existing)));
            }
            let open: i64 = col(
                &tx.query_one(
                    "SELECT count(*) FROM pending_requests
                     WHERE tenant = $1 AND state = 'pending' AND expires_unix > $2",
                    &[&rec.tenant, &rec.created_unix],
                )
                .await
                .map_err(db)?,
                0,
            )?;
            if usize::try_from(open).unwrap_or(usize::MAX) >= max_open {
                return Ok(PendingInsert::Full);
            }
            let inserted = tx
                .query_opt(
                    &format!(
                        "INSERT INTO pending_requests ({COLS})
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,'',0,'')
                         ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    &[
                        &rec.tenant,
                        &rec.id,
                        &rec.idem_key,
                        &rec.request_hash,
                        &rec.request_pb,
                        &rec.protocol,
                        &rec.client_identity,
                        &rec.profile,
                        &rec.summary,
                        &STATE_PENDING,
                        &rec.created_unix,
                        &rec.expires_unix,
                    ],
                )
                .await
                .map_err(db)?;
            if inserted.is_none() {
                // Under the tenant lock the key was free, so this is an id collision.
                return Err(CoreError::Store(format!(
                    "pending request id {} already used in this tenant",
                    rec.id
                )));
            }
            append(&tx, &audit).await?;
            Ok(PendingInsert::Inserted)
        })
    }

    fn pending_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingRec>> {
        let (tenant, key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            by(&tx, &tenant, "idem_key", &key).await
        })
    }

    fn pending_by_id(&self, tenant: &str, id: &str) -> Result<Option<PendingRec>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            by(&tx, &tenant, "id", &id).await
        })
    }

    fn list_pending(
        &self,
        tenant: &str,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingRec>> {
        let (tenant, state) = (tenant.to_owned(), state.map(str::to_owned));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query(
                &format!(
                    "SELECT {COLS} FROM pending_requests
                     WHERE tenant = $1 AND ($2::text IS NULL OR state = $2)
                     ORDER BY created_unix, id LIMIT $3"
                ),
                &[&tenant, &state, &limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(row)
            .collect()
        })
    }

    fn decide_pending(
        &self,
        tenant: &str,
        id: &str,
        decision: &Decision,
        audit: &AuditEntry,
    ) -> Result<Option<PendingRec>> {
        let (tenant, id, d, audit) = (
            tenant.to_owned(),
            id.to_owned(),
            decision.clone(),
            audit.clone(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let n = tx
                .execute(
                    "UPDATE pending_requests
                     SET state = $3, decided_by = $4, decided_unix = $5, reason = $6
                     WHERE tenant = $1 AND id = $2 AND state = 'pending'",
                    &[&tenant, &id, &d.to, &d.by, &d.now, &d.reason],
                )
                .await
                .map_err(db)?;
            if n > 0 {
                append(&tx, &audit).await?;
            }
            by(&tx, &tenant, "id", &id).await
        })
    }
}
