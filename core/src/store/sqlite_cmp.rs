//! [`CmpStore`] for the SQLite store: the CMP tables, applied by `SqliteStore::open` beside the
//! main schema. Writes go through the writer thread with the audit record in the same
//! transaction (I-7).

use rusqlite::{OptionalExtension, params};
use zeroize::Zeroizing;

use super::cmp::{CmpStore, PendingConfirm, RaRec};
use super::sqlite::{SqliteStore, append};
use crate::audit::AuditEntry;
use crate::error::Result;

/// The CMP tables. Every row carries its tenant.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cmp_secrets (
    tenant TEXT NOT NULL,
    reference BLOB NOT NULL,
    secret BLOB NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, reference)
);
CREATE TABLE IF NOT EXISTS cmp_ra (
    tenant TEXT PRIMARY KEY,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    cert_der BLOB NOT NULL,
    issuer_id TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cmp_confirm (
    tenant TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline_unix INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, idem_key)
);
CREATE INDEX IF NOT EXISTS cmp_confirm_due ON cmp_confirm(state, deadline_unix);
"#;

const CONFIRM_COLS: &str = "tenant, idem_key, state, deadline_unix, done";

fn confirm_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingConfirm> {
    Ok(PendingConfirm {
        tenant: r.get(0)?,
        idem_key: r.get(1)?,
        state: r.get(2)?,
        deadline_unix: r.get(3)?,
        done: r.get::<_, i64>(4)? != 0,
    })
}

impl CmpStore for SqliteStore {
    fn put_cmp_secret(
        &self,
        tenant: &str,
        reference: &[u8],
        secret: &Zeroizing<Vec<u8>>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, reference, secret) = (tenant.to_owned(), reference.to_vec(), secret.clone());
        let audit = audit.clone();
        self.tx(move |tx| {
            let existed = tx
                .query_row(
                    "SELECT 1 FROM cmp_secrets WHERE tenant = ?1 AND reference = ?2",
                    params![tenant, reference],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO cmp_secrets (tenant, reference, secret, created_unix) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(tenant, reference) DO UPDATE SET secret = excluded.secret,
                   created_unix = excluded.created_unix",
                params![tenant, reference, secret.as_slice(), now],
            )?;
            append(tx, &audit)?;
            Ok(existed)
        })
    }

    fn delete_cmp_secret(
        &self,
        tenant: &str,
        reference: &[u8],
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, reference) = (tenant.to_owned(), reference.to_vec());
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM cmp_secrets WHERE tenant = ?1 AND reference = ?2",
                params![tenant, reference],
            )?;
            append(tx, &audit)?;
            Ok(n > 0)
        })
    }

    fn cmp_secret(&self, tenant: &str, reference: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT secret FROM cmp_secrets WHERE tenant = ?1 AND reference = ?2",
                params![tenant, reference],
                |r| r.get::<_, Vec<u8>>(0).map(Zeroizing::new),
            )
            .optional()?)
        })
    }

    fn put_cmp_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()> {
        let ra = ra.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.execute(
                "INSERT INTO cmp_ra (tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix)
                 VALUES (?1,?2,?3,?4,?5,?6)
                 ON CONFLICT(tenant) DO UPDATE SET signer_key_id = excluded.signer_key_id,
                   key_type = excluded.key_type, cert_der = excluded.cert_der,
                   issuer_id = excluded.issuer_id, created_unix = excluded.created_unix",
                params![
                    ra.tenant,
                    ra.signer_key_id,
                    ra.key_type,
                    ra.cert_der,
                    ra.issuer_id,
                    ra.created_unix
                ],
            )?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn cmp_ra(&self, tenant: &str) -> Result<Option<RaRec>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix
                 FROM cmp_ra WHERE tenant = ?1",
                params![tenant],
                |r| {
                    Ok(RaRec {
                        tenant: r.get(0)?,
                        signer_key_id: r.get(1)?,
                        key_type: r.get(2)?,
                        cert_der: r.get(3)?,
                        issuer_id: r.get(4)?,
                        created_unix: r.get(5)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn await_confirm(&self, tenant: &str, idem_key: &str, deadline: i64) -> Result<()> {
        let (tenant, idem_key) = (tenant.to_owned(), idem_key.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO cmp_confirm (tenant, idem_key, state, deadline_unix, done)
                 VALUES (?1,?2,'pending',?3,0)",
                params![tenant, idem_key, deadline],
            )?;
            Ok(())
        })
    }

    fn pending_confirm(&self, tenant: &str, idem_key: &str) -> Result<Option<PendingConfirm>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {CONFIRM_COLS} FROM cmp_confirm WHERE tenant = ?1 AND idem_key = ?2"
                ),
                params![tenant, idem_key],
                confirm_row,
            )
            .optional()?)
        })
    }

    fn transition_confirm(
        &self,
        tenant: &str,
        idem_key: &str,
        to: &str,
        audit: &AuditEntry,
    ) -> Result<Option<PendingConfirm>> {
        let (tenant, idem_key, to) = (tenant.to_owned(), idem_key.to_owned(), to.to_owned());
        let audit = audit.clone();
        self.tx(move |tx| {
            let before = tx
                .query_row(
                    &format!(
                        "SELECT {CONFIRM_COLS} FROM cmp_confirm WHERE tenant = ?1 AND idem_key = ?2"
                    ),
                    params![tenant, idem_key],
                    confirm_row,
                )
                .optional()?;
            if let Some(b) = &before
                && b.state == "pending"
            {
                tx.execute(
                    "UPDATE cmp_confirm SET state = ?3 WHERE tenant = ?1 AND idem_key = ?2 AND state = 'pending'",
                    params![tenant, idem_key, to],
                )?;
                append(tx, &audit)?;
            }
            Ok(before)
        })
    }

    fn confirm_done(&self, tenant: &str, idem_key: &str) -> Result<()> {
        let (tenant, idem_key) = (tenant.to_owned(), idem_key.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "UPDATE cmp_confirm SET done = 1 WHERE tenant = ?1 AND idem_key = ?2",
                params![tenant, idem_key],
            )?;
            Ok(())
        })
    }

    fn confirm_sweep_due(&self, now: i64, limit: usize) -> Result<Vec<PendingConfirm>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {CONFIRM_COLS} FROM cmp_confirm
                 WHERE (state = 'pending' AND deadline_unix < ?1)
                    OR (state IN ('rejected','expired') AND done = 0)
                 ORDER BY deadline_unix LIMIT ?2"
            ))?;
            let rows = st
                .query_map(params![now, limit as i64], confirm_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}
