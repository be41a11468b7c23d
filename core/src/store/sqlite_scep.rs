//! [`ScepStore`] for the SQLite store: the SCEP tables, applied by `SqliteStore::open` beside the
//! main schema. Writes go through the writer thread with the audit record in the same
//! transaction (I-7).

use rusqlite::{OptionalExtension, params};

use super::cmp::RaRec;
use super::scep::{ChallengeMatch, ScepStore};
use super::sqlite::{SqliteStore, append};
use crate::audit::AuditEntry;
use crate::error::Result;

/// The SCEP tables. Every row carries its tenant. `digest` is the SHA-256 of the challenge
/// (`challenge_digest`), never the challenge itself.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS scep_ra (
    tenant TEXT PRIMARY KEY,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    cert_der BLOB NOT NULL,
    issuer_id TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS scep_static_challenges (
    tenant TEXT NOT NULL,
    profile TEXT NOT NULL,
    digest BLOB NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, profile)
);
CREATE TABLE IF NOT EXISTS scep_one_time_challenges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    profile TEXT NOT NULL,
    digest BLOB NOT NULL,
    expires_unix INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scep_one_time_by_tenant ON scep_one_time_challenges(tenant, expires_unix);
"#;

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

impl ScepStore for SqliteStore {
    fn put_scep_ra(&self, ra: &RaRec, audit: &AuditEntry) -> Result<()> {
        let ra = ra.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.execute(
                "INSERT INTO scep_ra (tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix)
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

    fn scep_ra(&self, tenant: &str) -> Result<Option<RaRec>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT tenant, signer_key_id, key_type, cert_der, issuer_id, created_unix
                 FROM scep_ra WHERE tenant = ?1",
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

    fn put_scep_static_challenge(
        &self,
        tenant: &str,
        profile: &str,
        digest: [u8; 32],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (tenant, profile) = (tenant.to_owned(), profile.to_owned());
        let audit = audit.clone();
        self.tx(move |tx| {
            let existed = tx
                .query_row(
                    "SELECT 1 FROM scep_static_challenges WHERE tenant = ?1 AND profile = ?2",
                    params![tenant, profile],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO scep_static_challenges (tenant, profile, digest, created_unix)
                 VALUES (?1,?2,?3,?4)
                 ON CONFLICT(tenant, profile) DO UPDATE SET digest = excluded.digest,
                   created_unix = excluded.created_unix",
                params![tenant, profile, digest.to_vec(), now],
            )?;
            append(tx, &audit)?;
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
        let (tenant, profile) = (tenant.to_owned(), profile.to_owned());
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.execute(
                "DELETE FROM scep_one_time_challenges WHERE tenant = ?1 AND expires_unix <= ?2",
                params![tenant, now],
            )?;
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM scep_one_time_challenges WHERE tenant = ?1",
                params![tenant],
                |r| r.get(0),
            )?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= max_outstanding {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO scep_one_time_challenges (tenant, profile, digest, expires_unix)
                 VALUES (?1,?2,?3,?4)",
                params![tenant, profile, digest.to_vec(), expires],
            )?;
            append(tx, &audit)?;
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
        // A static challenge (the common case: every PKCSReq of a device fleet) is only read:
        // check it on a reader connection, without a trip through the writer thread and its
        // group commit. Only a miss goes on to the one-time challenges below.
        let static_hit = self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT digest FROM scep_static_challenges
                 WHERE tenant = ?1 AND (profile = ?2 OR profile = '')",
            )?;
            let statics = stmt
                .query_map(params![tenant, profile], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut hit = false;
            for d in &statics {
                hit |= ct_eq(d, &digest);
            }
            Ok(hit)
        })?;
        if static_hit {
            return Ok(ChallengeMatch::Static);
        }
        let (tenant, profile) = (tenant.to_owned(), profile.to_owned());
        let audit = consumed_audit.clone();
        // In the writer transaction: the read and the delete of a one-time challenge are one
        // atomic step, so two concurrent checks cannot both consume it.
        self.tx(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT digest FROM scep_static_challenges
                 WHERE tenant = ?1 AND (profile = ?2 OR profile = '')",
            )?;
            let statics = stmt
                .query_map(params![tenant, profile], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // compare against every candidate (no early exit) so timing does not depend on
            // which one matched
            let mut hit = false;
            for d in &statics {
                hit |= ct_eq(d, &digest);
            }
            if hit {
                return Ok(ChallengeMatch::Static);
            }
            let mut stmt = tx.prepare_cached(
                "SELECT id, digest FROM scep_one_time_challenges
                 WHERE tenant = ?1 AND (profile = ?2 OR profile = '') AND expires_unix > ?3",
            )?;
            let rows = stmt
                .query_map(params![tenant, profile, now], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut found = None;
            for (id, d) in &rows {
                if ct_eq(d, &digest) && found.is_none() {
                    found = Some(*id);
                }
            }
            let Some(id) = found else {
                return Ok(ChallengeMatch::None);
            };
            tx.execute(
                "DELETE FROM scep_one_time_challenges WHERE id = ?1",
                params![id],
            )?;
            append(tx, &audit)?;
            Ok(ChallengeMatch::OneTime)
        })
    }
}
