//! [`StatusStore`] for the SQLite store: the status tables and the triggers that queue OCSP work
//! whenever a certificate is stored or revoked, applied by `SqliteStore::open` beside the main
//! schema. Writes go through the writer thread (group commit).

use rusqlite::{OptionalExtension, Row, params};

use super::sqlite::SqliteStore;
use super::status::{
    CrlRec, EventPage, OcspRec, PendingRec, RevokedRec, SnapshotPos, StatusItem, StatusStore,
};
use crate::error::Result;

/// The status tables. `status_events.cursor` is AUTOINCREMENT so a cursor is never reused even
/// after pruning; each current row remembers the cursor of the event that wrote it, so a page of
/// events joined to the rows yields each entry once, at its latest version.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS status_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    queued_unix INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS status_on_issue AFTER INSERT ON certificates BEGIN
    INSERT INTO status_pending (tenant, serial_hex, queued_unix)
    VALUES (NEW.tenant, NEW.serial_hex, CAST(strftime('%s','now') AS INTEGER));
END;
CREATE TRIGGER IF NOT EXISTS status_on_revoke AFTER UPDATE OF revoked ON certificates
WHEN NEW.revoked = 1 AND OLD.revoked = 0 BEGIN
    INSERT INTO status_pending (tenant, serial_hex, queued_unix)
    VALUES (NEW.tenant, NEW.serial_hex, CAST(strftime('%s','now') AS INTEGER));
END;
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates(issuer_id) WHERE revoked = 1;
CREATE TABLE IF NOT EXISTS status_events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ocsp_responses (
    tenant TEXT NOT NULL,
    issuer_id TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    hash_alg TEXT NOT NULL,
    response_der BLOB NOT NULL,
    this_update_unix INTEGER NOT NULL,
    next_update_unix INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (tenant, serial_hex, hash_alg)
);
CREATE INDEX IF NOT EXISTS ocsp_responses_cursor ON ocsp_responses(cursor);
CREATE INDEX IF NOT EXISTS ocsp_responses_this_update ON ocsp_responses(this_update_unix);
CREATE TABLE IF NOT EXISTS crls (
    tenant TEXT NOT NULL,
    issuer_id TEXT NOT NULL,
    shard TEXT NOT NULL,
    crl_der BLOB NOT NULL,
    crl_number INTEGER NOT NULL,
    this_update_unix INTEGER NOT NULL,
    next_update_unix INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);
CREATE INDEX IF NOT EXISTS crls_cursor ON crls(cursor);
CREATE TABLE IF NOT EXISTS crl_numbers (
    issuer_id TEXT NOT NULL,
    shard TEXT NOT NULL,
    last_number INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);
CREATE TABLE IF NOT EXISTS ocsp_responders (
    issuer_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    cert_der BLOB NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS status_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

const OCSP_COLS: &str = "tenant, issuer_id, serial_hex, hash_alg, response_der, this_update_unix, next_update_unix, cursor";
const CRL_COLS: &str =
    "tenant, issuer_id, shard, crl_der, crl_number, this_update_unix, next_update_unix, cursor";

fn ocsp_row(r: &Row<'_>, at: usize) -> rusqlite::Result<OcspRec> {
    Ok(OcspRec {
        tenant: r.get(at)?,
        issuer_id: r.get(at + 1)?,
        serial_hex: r.get(at + 2)?,
        hash_alg: r.get(at + 3)?,
        response_der: r.get(at + 4)?,
        this_update_unix: r.get(at + 5)?,
        next_update_unix: r.get(at + 6)?,
        cursor: r.get::<_, i64>(at + 7)? as u64,
    })
}

fn crl_row(r: &Row<'_>, at: usize) -> rusqlite::Result<CrlRec> {
    Ok(CrlRec {
        tenant: r.get(at)?,
        issuer_id: r.get(at + 1)?,
        shard: r.get(at + 2)?,
        crl_der: r.get(at + 3)?,
        crl_number: r.get::<_, i64>(at + 4)? as u64,
        this_update_unix: r.get(at + 5)?,
        next_update_unix: r.get(at + 6)?,
        cursor: r.get::<_, i64>(at + 7)? as u64,
    })
}

fn new_event(tx: &rusqlite::Connection, tenant: &str, kind: &str) -> Result<u64> {
    tx.prepare_cached(
        "INSERT INTO status_events (tenant, kind, created_unix) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![tenant, kind, crate::now_unix()])?;
    Ok(tx.last_insert_rowid() as u64)
}

impl StatusStore for SqliteStore {
    fn pending(&self, limit: usize) -> Result<Vec<PendingRec>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, tenant, serial_hex FROM status_pending ORDER BY id LIMIT ?1",
            )?;
            let rows = st.query_map(params![limit as i64], |r| {
                Ok(PendingRec {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    serial_hex: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn enqueue(&self, certs: &[(String, String)], now: i64) -> Result<()> {
        let certs = certs.to_vec();
        self.tx(move |tx| {
            let mut st = tx.prepare_cached(
                "INSERT INTO status_pending (tenant, serial_hex, queued_unix) VALUES (?1, ?2, ?3)",
            )?;
            for (t, s) in &certs {
                st.execute(params![t, s, now])?;
            }
            Ok(())
        })
    }

    fn put_ocsp(&self, recs: &[OcspRec], done: &[i64]) -> Result<u64> {
        let (recs, done) = (recs.to_vec(), done.to_vec());
        self.tx(move |tx| {
            let mut last = 0;
            for r in &recs {
                let cursor = new_event(tx, &r.tenant, "ocsp")?;
                tx.prepare_cached(&format!(
                        "INSERT INTO ocsp_responses ({OCSP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (tenant, serial_hex, hash_alg) DO UPDATE SET
                           issuer_id = excluded.issuer_id, response_der = excluded.response_der,
                           this_update_unix = excluded.this_update_unix,
                           next_update_unix = excluded.next_update_unix, cursor = excluded.cursor"
                    ))?.execute(
                    params![
                        r.tenant,
                        r.issuer_id,
                        r.serial_hex,
                        r.hash_alg,
                        r.response_der,
                        r.this_update_unix,
                        r.next_update_unix,
                        cursor as i64
                    ],
                )?;
                last = cursor;
            }
            for id in &done {
                tx.prepare_cached("DELETE FROM status_pending WHERE id = ?1")?.execute( params![id])?;
            }
            Ok(last)
        })
    }

    fn drop_pending(&self, done: &[i64]) -> Result<()> {
        self.put_ocsp(&[], done).map(|_| ())
    }

    fn get_ocsp(&self, tenant: &str, serial_hex: &str, hash_alg: &str) -> Result<Option<OcspRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {OCSP_COLS} FROM ocsp_responses
                     WHERE tenant = ?1 AND serial_hex = ?2 AND hash_alg = ?3"
            ))?
            .query_row(params![tenant, serial_hex, hash_alg], |r| ocsp_row(r, 0))
            .optional()?)
        })
    }

    fn ocsp_due(
        &self,
        this_update_before: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT o.tenant, o.serial_hex FROM ocsp_responses o
                 JOIN certificates c ON c.tenant = o.tenant AND c.serial_hex = o.serial_hex
                 WHERE o.this_update_unix <= ?1 AND c.not_after_unix > ?2
                   AND NOT EXISTS (SELECT 1 FROM status_pending p
                                   WHERE p.tenant = o.tenant AND p.serial_hex = o.serial_hex)
                 LIMIT ?3",
            )?;
            let rows = st.query_map(params![this_update_before, now, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn ocsp_missing(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT c.tenant, c.serial_hex FROM certificates c
                 WHERE c.not_after_unix > ?1
                   AND NOT EXISTS (SELECT 1 FROM ocsp_responses o
                                   WHERE o.tenant = c.tenant AND o.serial_hex = c.serial_hex)
                   AND NOT EXISTS (SELECT 1 FROM status_pending p
                                   WHERE p.tenant = c.tenant AND p.serial_hex = c.serial_hex)
                 LIMIT ?2",
            )?;
            let rows = st.query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn next_crl_number(&self, issuer_id: &str, shard: &str) -> Result<u64> {
        let (issuer_id, shard) = (issuer_id.to_owned(), shard.to_owned());
        self.tx(move |tx| {
            tx.prepare_cached(
                "INSERT INTO crl_numbers (issuer_id, shard, last_number) VALUES (?1, ?2, 1)
                 ON CONFLICT (issuer_id, shard) DO UPDATE SET last_number = last_number + 1",
            )?
            .execute(params![issuer_id, shard])?;
            let n: i64 = tx
                .prepare_cached(
                    "SELECT last_number FROM crl_numbers WHERE issuer_id = ?1 AND shard = ?2",
                )?
                .query_row(params![issuer_id, shard], |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    fn put_crl(&self, rec: &CrlRec) -> Result<u64> {
        let r = rec.clone();
        self.tx(move |tx| {
            let cursor = new_event(tx, &r.tenant, "crl")?;
            tx.prepare_cached(&format!(
                "INSERT INTO crls ({CRL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (issuer_id, shard) DO UPDATE SET
                       tenant = excluded.tenant, crl_der = excluded.crl_der,
                       crl_number = excluded.crl_number,
                       this_update_unix = excluded.this_update_unix,
                       next_update_unix = excluded.next_update_unix, cursor = excluded.cursor"
            ))?
            .execute(params![
                r.tenant,
                r.issuer_id,
                r.shard,
                r.crl_der,
                r.crl_number as i64,
                r.this_update_unix,
                r.next_update_unix,
                cursor as i64
            ])?;
            Ok(cursor)
        })
    }

    fn get_crl(&self, issuer_id: &str, shard: &str) -> Result<Option<CrlRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {CRL_COLS} FROM crls WHERE issuer_id = ?1 AND shard = ?2"
            ))?
            .query_row(params![issuer_id, shard], |r| crl_row(r, 0))
            .optional()?)
        })
    }

    fn crl_times(&self) -> Result<Vec<(String, String, i64, i64)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT issuer_id, shard, this_update_unix, next_update_unix FROM crls",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn revoked_of(&self, issuer_id: &str, now: i64) -> Result<Vec<RevokedRec>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT serial_hex, revoked_at_unix, revocation_reason FROM certificates
                 WHERE issuer_id = ?1 AND revoked = 1 AND not_after_unix > ?2
                 ORDER BY serial_hex",
            )?;
            let rows = st.query_map(params![issuer_id, now], |r| {
                Ok(RevokedRec {
                    serial_hex: r.get(0)?,
                    revoked_at_unix: r.get(1)?,
                    reason: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn latest_cursor(&self) -> Result<u64> {
        self.with(|c| {
            // sqlite_sequence keeps the AUTOINCREMENT high-water mark even when every event has
            // been pruned.
            let v: Option<i64> = c
                .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'status_events'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }

    fn resumable_from(&self) -> Result<u64> {
        self.with(|c| {
            let v: Option<i64> = c
                .prepare_cached("SELECT value FROM status_meta WHERE key = 'pruned_upto'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }

    fn events_after(&self, cursor: u64, limit: usize) -> Result<EventPage> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT e.cursor, e.kind,
                        o.{o}, c.{c}
                 FROM status_events e
                 LEFT JOIN ocsp_responses o ON e.kind = 'ocsp' AND o.cursor = e.cursor
                 LEFT JOIN crls c ON e.kind = 'crl' AND c.cursor = e.cursor
                 WHERE e.cursor > ?1 ORDER BY e.cursor LIMIT ?2",
                o = OCSP_COLS.replace(", ", ", o."),
                c = CRL_COLS.replace(", ", ", c."),
            ))?;
            let mut page = EventPage {
                items: Vec::new(),
                last_cursor: cursor,
            };
            let mut rows = st.query(params![cursor as i64, limit as i64])?;
            while let Some(r) = rows.next()? {
                let at = r.get::<_, i64>(0)? as u64;
                page.last_cursor = at;
                let kind: String = r.get(1)?;
                // A superseded event joins nothing: a later event carries the entry.
                if kind == "ocsp" && r.get::<_, Option<String>>(2)?.is_some() {
                    page.items.push((at, StatusItem::Ocsp(ocsp_row(r, 2)?)));
                } else if kind == "crl" && r.get::<_, Option<String>>(10)?.is_some() {
                    page.items.push((at, StatusItem::Crl(crl_row(r, 10)?)));
                }
            }
            Ok(page)
        })
    }

    fn snapshot_page(
        &self,
        pos: SnapshotPos,
        limit: usize,
    ) -> Result<(Vec<StatusItem>, SnapshotPos)> {
        self.with(|c| match pos {
            SnapshotPos::Ocsp(after) => {
                let mut st = c.prepare_cached(&format!(
                    "SELECT rowid, {OCSP_COLS} FROM ocsp_responses WHERE rowid > ?1
                     ORDER BY rowid LIMIT ?2"
                ))?;
                let mut out = Vec::new();
                let mut last = after;
                let mut rows = st.query(params![after, limit as i64])?;
                while let Some(r) = rows.next()? {
                    last = r.get(0)?;
                    out.push(StatusItem::Ocsp(ocsp_row(r, 1)?));
                }
                let next = if out.len() < limit {
                    SnapshotPos::Crl(0)
                } else {
                    SnapshotPos::Ocsp(last)
                };
                Ok((out, next))
            }
            SnapshotPos::Crl(after) => {
                let mut st = c.prepare_cached(&format!(
                    "SELECT rowid, {CRL_COLS} FROM crls WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
                ))?;
                let mut out = Vec::new();
                let mut last = after;
                let mut rows = st.query(params![after, limit as i64])?;
                while let Some(r) = rows.next()? {
                    last = r.get(0)?;
                    out.push(StatusItem::Crl(crl_row(r, 1)?));
                }
                let next = if out.len() < limit {
                    SnapshotPos::Done
                } else {
                    SnapshotPos::Crl(last)
                };
                Ok((out, next))
            }
            SnapshotPos::Done => Ok((Vec::new(), SnapshotPos::Done)),
        })
    }

    fn get_responder(&self, issuer_id: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT cert_der FROM ocsp_responders WHERE issuer_id = ?1")?
                    .query_row(params![issuer_id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    fn put_responder(&self, issuer_id: &str, key_id: &str, cert_der: &[u8]) -> Result<()> {
        let (i, k, d) = (issuer_id.to_owned(), key_id.to_owned(), cert_der.to_vec());
        self.tx(move |tx| {
            tx.prepare_cached(
                "INSERT INTO ocsp_responders (issuer_id, key_id, cert_der, created_unix)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (issuer_id) DO UPDATE SET key_id = excluded.key_id,
                   cert_der = excluded.cert_der, created_unix = excluded.created_unix",
            )?
            .execute(params![i, k, d, crate::now_unix()])?;
            Ok(())
        })
    }

    fn prune_events(&self, keep: u64) -> Result<u64> {
        let latest = self.latest_cursor()?;
        let upto = latest.saturating_sub(keep);
        if upto == 0 || upto <= self.resumable_from()? {
            return Ok(0);
        }
        self.tx(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM status_events WHERE cursor <= ?1")?
                .execute(params![upto as i64])?;
            tx.prepare_cached(
                "INSERT INTO status_meta (key, value) VALUES ('pruned_upto', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
            )?
            .execute(params![upto as i64])?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(serial: &str, alg: &str, der: u8) -> OcspRec {
        OcspRec {
            tenant: "t".into(),
            issuer_id: "i".into(),
            serial_hex: serial.into(),
            hash_alg: alg.into(),
            response_der: vec![der],
            this_update_unix: 1,
            next_update_unix: 2,
            cursor: 0,
        }
    }

    #[test]
    fn events_yield_each_entry_once_at_its_latest_version() {
        let s = SqliteStore::in_memory().unwrap();
        let c1 = s
            .put_ocsp(&[rec("01", "sha1", 1), rec("02", "sha1", 1)], &[])
            .unwrap();
        let c2 = s.put_ocsp(&[rec("01", "sha1", 2)], &[]).unwrap();
        assert!(c2 > c1);
        assert_eq!(s.latest_cursor().unwrap(), c2);
        let page = s.events_after(0, 100).unwrap();
        assert_eq!(page.last_cursor, c2);
        let got: Vec<(String, Vec<u8>)> = page
            .items
            .iter()
            .map(|(_, i)| match i {
                StatusItem::Ocsp(o) => (o.serial_hex.clone(), o.response_der.clone()),
                StatusItem::Crl(_) => panic!("no CRL stored"),
            })
            .collect();
        assert_eq!(got, vec![("02".into(), vec![1]), ("01".into(), vec![2])]);
        // A page that only covers superseded events still advances the cursor.
        let first = s.events_after(0, 1).unwrap();
        assert!(first.items.is_empty());
        assert_eq!(first.last_cursor, 1);
        // The snapshot pages through the current rows only.
        let (items, next) = s.snapshot_page(SnapshotPos::Ocsp(0), 1).unwrap();
        assert_eq!(items.len(), 1);
        let (items2, _) = s.snapshot_page(next, 10).unwrap();
        assert_eq!(items2.len(), 1);
    }

    #[test]
    fn crl_numbers_are_monotonic_and_pruning_raises_the_resume_mark() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.next_crl_number("i", "full").unwrap(), 1);
        assert_eq!(s.next_crl_number("i", "full").unwrap(), 2);
        assert_eq!(s.next_crl_number("i", "3").unwrap(), 1);
        let recs: Vec<OcspRec> = (0..150)
            .map(|n| rec(&format!("{n:02x}"), "sha1", 0))
            .collect();
        let last = s.put_ocsp(&recs, &[]).unwrap();
        assert_eq!(s.resumable_from().unwrap(), 0);
        assert_eq!(s.prune_events(100).unwrap(), 50);
        assert_eq!(s.resumable_from().unwrap(), last - 100);
        assert_eq!(
            s.latest_cursor().unwrap(),
            last,
            "the high-water mark survives pruning"
        );
        // Pruning everything keeps the cursor sequence: new events continue above it.
        s.prune_events(0).unwrap_or_default();
        let next = s.put_ocsp(&[rec("aa", "sha256", 0)], &[]).unwrap();
        assert!(next > last);
    }
}
