//! [`PendingStore`] for the SQLite store: the `pending_requests` table, applied by
//! `SqliteStore::open` beside the main schema. Writes go through the writer thread with the
//! audit record in the same transaction (I-7); the per-tenant bound is checked in that same
//! transaction, so concurrent inserts cannot overshoot it (I-8).

use rusqlite::{OptionalExtension, params};

use super::pending::{Decision, PendingInsert, PendingRec, PendingStore, STATE_PENDING};
use super::sqlite::{SqliteStore, append};
use crate::audit::AuditEntry;
use crate::error::Result;

/// The pending-request table. Every row carries its tenant.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pending_requests (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    request_pb BLOB NOT NULL,
    protocol TEXT NOT NULL,
    client_identity TEXT NOT NULL,
    profile TEXT NOT NULL,
    summary TEXT NOT NULL,
    state TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    expires_unix INTEGER NOT NULL,
    decided_by TEXT NOT NULL DEFAULT '',
    decided_unix INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, idem_key)
);
CREATE INDEX IF NOT EXISTS pending_requests_open ON pending_requests(tenant, state, expires_unix);
"#;

const COLS: &str = "tenant, id, idem_key, request_hash, request_pb, protocol, client_identity, \
                    profile, summary, state, created_unix, expires_unix, decided_by, decided_unix, reason";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingRec> {
    Ok(PendingRec {
        tenant: r.get(0)?,
        id: r.get(1)?,
        idem_key: r.get(2)?,
        request_hash: r.get(3)?,
        request_pb: r.get(4)?,
        protocol: r.get(5)?,
        client_identity: r.get(6)?,
        profile: r.get(7)?,
        summary: r.get(8)?,
        state: r.get(9)?,
        created_unix: r.get(10)?,
        expires_unix: r.get(11)?,
        decided_by: r.get(12)?,
        decided_unix: r.get(13)?,
        reason: r.get(14)?,
    })
}

fn by_key(
    c: &rusqlite::Connection,
    tenant: &str,
    key: &str,
) -> rusqlite::Result<Option<PendingRec>> {
    c.query_row(
        &format!("SELECT {COLS} FROM pending_requests WHERE tenant = ?1 AND idem_key = ?2"),
        params![tenant, key],
        row,
    )
    .optional()
}

fn by_id(c: &rusqlite::Connection, tenant: &str, id: &str) -> rusqlite::Result<Option<PendingRec>> {
    c.query_row(
        &format!("SELECT {COLS} FROM pending_requests WHERE tenant = ?1 AND id = ?2"),
        params![tenant, id],
        row,
    )
    .optional()
}

impl PendingStore for SqliteStore {
    fn insert_pending(
        &self,
        rec: &PendingRec,
        max_open: usize,
        audit: &AuditEntry,
    ) -> Result<PendingInsert> {
        let rec = rec.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            if let Some(existing) = by_key(tx, &rec.tenant, &rec.idem_key)? {
                return Ok(PendingInsert::Exists(Box::new(existing)));
            }
            let open: i64 = tx.query_row(
                "SELECT count(*) FROM pending_requests
                 WHERE tenant = ?1 AND state = 'pending' AND expires_unix > ?2",
                params![rec.tenant, rec.created_unix],
                |r| r.get(0),
            )?;
            if usize::try_from(open).unwrap_or(usize::MAX) >= max_open {
                return Ok(PendingInsert::Full);
            }
            tx.execute(
                &format!("INSERT INTO pending_requests ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,'',0,'')"),
                params![
                    rec.tenant,
                    rec.id,
                    rec.idem_key,
                    rec.request_hash,
                    rec.request_pb,
                    rec.protocol,
                    rec.client_identity,
                    rec.profile,
                    rec.summary,
                    STATE_PENDING,
                    rec.created_unix,
                    rec.expires_unix
                ],
            )?;
            append(tx, &audit)?;
            Ok(PendingInsert::Inserted)
        })
    }

    fn pending_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingRec>> {
        self.with(|c| Ok(by_key(c, tenant, idem_key)?))
    }

    fn pending_by_id(&self, tenant: &str, id: &str) -> Result<Option<PendingRec>> {
        self.with(|c| Ok(by_id(c, tenant, id)?))
    }

    fn list_pending(
        &self,
        tenant: &str,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingRec>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM pending_requests WHERE tenant = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY created_unix, id LIMIT ?3"
            ))?;
            let rows = st
                .query_map(
                    params![tenant, state, i64::try_from(limit).unwrap_or(i64::MAX)],
                    row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn decide_pending(
        &self,
        tenant: &str,
        id: &str,
        decision: &Decision,
        audit: &AuditEntry,
    ) -> Result<Option<PendingRec>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let Decision {
            to,
            by,
            reason,
            now,
        } = decision.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE pending_requests SET state = ?3, decided_by = ?4, decided_unix = ?5, reason = ?6
                 WHERE tenant = ?1 AND id = ?2 AND state = 'pending'",
                params![tenant, id, to, by, now, reason],
            )?;
            if n > 0 {
                append(tx, &audit)?;
            }
            Ok(by_id(tx, &tenant, &id)?)
        })
    }
}
