//! [`StatusStore`] on PostgreSQL, and the CRL generator lease.
//!
//! CRL numbers across cores (docs/postgres.md, "CRL numbers"): before a core allocates a CRL
//! number for (issuer, shard) it takes a PostgreSQL session advisory lock for that shard on a
//! dedicated connection of its own, and releases it once the CRL is stored. So only one core at
//! a time generates a shard; another waits (bounded by `lock_timeout`) and then numbers after
//! it. If the holder dies or its connection is cut, PostgreSQL drops the lock with the session
//! and the next core takes over, continuing from the stored counter; the old holder, on its
//! next call, finds its session gone and must take the lock again (it cannot store a CRL under
//! a lock it lost). The counter itself is `UPDATE ... + 1` on one row, and triggers refuse any
//! update that does not move a number or a stored CRL forward.

use std::time::Instant;

use tokio_postgres::Row;

use super::pg::{ALL, PgStore, col, db, in_tx, tenant_scope};
use super::status::{
    CrlRec, EventPage, OcspRec, PendingRec, RevokedRec, SnapshotPos, StatusItem, StatusStore,
};
use crate::error::{CoreError, Result};

const OCSP_COLS: &str = "tenant, issuer_id, serial_hex, hash_alg, response_der, this_update_unix, next_update_unix, cursor";
const CRL_COLS: &str =
    "tenant, issuer_id, shard, crl_der, crl_number, this_update_unix, next_update_unix, cursor";

/// The advisory lock class of CRL shards ("crl " in ASCII).
const CRL_LOCK_CLASS: i32 = 0x6372_6c20;

fn ocsp_row(r: &Row, at: usize) -> Result<OcspRec> {
    Ok(OcspRec {
        tenant: col(r, at)?,
        issuer_id: col(r, at + 1)?,
        serial_hex: col(r, at + 2)?,
        hash_alg: col(r, at + 3)?,
        response_der: col(r, at + 4)?,
        this_update_unix: col(r, at + 5)?,
        next_update_unix: col(r, at + 6)?,
        cursor: col::<i64>(r, at + 7)? as u64,
    })
}

fn crl_row(r: &Row, at: usize) -> Result<CrlRec> {
    Ok(CrlRec {
        tenant: col(r, at)?,
        issuer_id: col(r, at + 1)?,
        shard: col(r, at + 2)?,
        crl_der: col(r, at + 3)?,
        crl_number: col::<i64>(r, at + 4)? as u64,
        this_update_unix: col(r, at + 5)?,
        next_update_unix: col(r, at + 6)?,
        cursor: col::<i64>(r, at + 7)? as u64,
    })
}

/// Allocates `n` event cursors: locks the head row until commit, so cursors become visible in
/// the order they were allocated, whichever core writes. Returns the first.
async fn new_events<C: tokio_postgres::GenericClient + Sync>(
    tx: &C,
    tenants: &[(&str, &str)],
) -> Result<u64> {
    let n = tenants.len() as i64;
    let r = tx
        .query_one(
            "UPDATE status_head SET cursor = cursor + $1 WHERE id = 1 RETURNING cursor",
            &[&n],
        )
        .await
        .map_err(db)?;
    let last: i64 = col(&r, 0)?;
    let first = last - n + 1;
    let now = crate::now_unix();
    for (i, (tenant, kind)) in tenants.iter().enumerate() {
        tx.execute(
            "INSERT INTO status_events (cursor, tenant, kind, created_unix) VALUES ($1, $2, $3, $4)",
            &[&(first + i as i64), tenant, kind, &now],
        )
        .await
        .map_err(db)?;
    }
    Ok(first as u64)
}

/// The advisory lock key of one CRL shard: the first four bytes of SHA-256(issuer NUL shard).
fn crl_lock_key(issuer_id: &str, shard: &str) -> i32 {
    let mut msg = Vec::with_capacity(issuer_id.len() + shard.len() + 1);
    msg.extend_from_slice(issuer_id.as_bytes());
    msg.push(0);
    msg.extend_from_slice(shard.as_bytes());
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &msg);
    let b = d.as_ref();
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl PgStore {
    /// The backend pid of this store's CRL lease session, if connected (tests cut it).
    #[doc(hidden)]
    pub fn crl_lease_pid(&self) -> Result<Option<i32>> {
        let lease = self.lease.clone();
        self.run(async move {
            let l = lease.lock().await;
            match &l.client {
                Some(c) if !c.is_closed() => {
                    let r = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .map_err(db)?;
                    Ok(Some(col(&r, 0)?))
                }
                _ => Ok(None),
            }
        })
    }
}

impl StatusStore for PgStore {
    fn pending(&self, limit: usize) -> Result<Vec<PendingRec>> {
        let limit = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT id, tenant, serial_hex FROM status_pending ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(PendingRec {
                    id: col(r, 0)?,
                    tenant: col(r, 1)?,
                    serial_hex: col(r, 2)?,
                })
            })
            .collect()
        })
    }

    fn enqueue(&self, certs: &[(String, String)], now: i64) -> Result<()> {
        let certs = certs.to_vec();
        in_tx!(self, ALL.to_owned(), |tx| {
            for (t, s) in &certs {
                tx.execute(
                    "INSERT INTO status_pending (tenant, serial_hex, queued_unix) VALUES ($1, $2, $3)",
                    &[t, s, &now],
                )
                .await
                .map_err(db)?;
            }
            Ok(())
        })
    }

    fn put_ocsp(&self, recs: &[OcspRec], done: &[i64]) -> Result<u64> {
        let (recs, done) = (recs.to_vec(), done.to_vec());
        in_tx!(self, ALL.to_owned(), |tx| {
            let mut last = 0;
            if !recs.is_empty() {
                let kinds: Vec<(&str, &str)> =
                    recs.iter().map(|r| (r.tenant.as_str(), "ocsp")).collect();
                let first = new_events(&*tx, &kinds).await?;
                for (i, r) in recs.iter().enumerate() {
                    let cursor = (first + i as u64) as i64;
                    tx.execute(
                        &format!(
                            "INSERT INTO ocsp_responses ({OCSP_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)
                             ON CONFLICT (tenant, serial_hex, hash_alg) DO UPDATE SET
                               issuer_id = excluded.issuer_id, response_der = excluded.response_der,
                               this_update_unix = excluded.this_update_unix,
                               next_update_unix = excluded.next_update_unix, cursor = excluded.cursor"
                        ),
                        &[
                            &r.tenant,
                            &r.issuer_id,
                            &r.serial_hex,
                            &r.hash_alg,
                            &r.response_der,
                            &r.this_update_unix,
                            &r.next_update_unix,
                            &cursor,
                        ],
                    )
                    .await
                    .map_err(db)?;
                    last = cursor as u64;
                }
            }
            if !done.is_empty() {
                tx.execute("DELETE FROM status_pending WHERE id = ANY($1)", &[&done])
                    .await
                    .map_err(db)?;
            }
            Ok(last)
        })
    }

    fn drop_pending(&self, done: &[i64]) -> Result<()> {
        self.put_ocsp(&[], done).map(|_| ())
    }

    fn get_ocsp(&self, tenant: &str, serial_hex: &str, hash_alg: &str) -> Result<Option<OcspRec>> {
        let (tenant, serial, alg) = (
            tenant.to_owned(),
            serial_hex.to_owned(),
            hash_alg.to_owned(),
        );
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {OCSP_COLS} FROM ocsp_responses
                     WHERE tenant = $1 AND serial_hex = $2 AND hash_alg = $3"
                ),
                &[&tenant, &serial, &alg],
            )
            .await
            .map_err(db)?
            .map(|r| ocsp_row(&r, 0))
            .transpose()
        })
    }

    fn ocsp_due(
        &self,
        this_update_before: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let limit = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT DISTINCT o.tenant, o.serial_hex FROM ocsp_responses o
                 JOIN certificates c ON c.tenant = o.tenant AND c.serial_hex = o.serial_hex
                 WHERE o.this_update_unix <= $1 AND c.not_after_unix > $2
                   AND NOT EXISTS (SELECT 1 FROM status_pending p
                                   WHERE p.tenant = o.tenant AND p.serial_hex = o.serial_hex)
                 LIMIT $3",
                &[&this_update_before, &now, &limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect()
        })
    }

    fn ocsp_missing(&self, now: i64, limit: usize) -> Result<Vec<(String, String)>> {
        let limit = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT c.tenant, c.serial_hex FROM certificates c
                 WHERE c.not_after_unix > $1
                   AND NOT EXISTS (SELECT 1 FROM ocsp_responses o
                                   WHERE o.tenant = c.tenant AND o.serial_hex = c.serial_hex)
                   AND NOT EXISTS (SELECT 1 FROM status_pending p
                                   WHERE p.tenant = c.tenant AND p.serial_hex = c.serial_hex)
                 LIMIT $2",
                &[&now, &limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect()
        })
    }

    fn next_crl_number(&self, issuer_id: &str, shard: &str) -> Result<u64> {
        let (issuer, shard) = (issuer_id.to_owned(), shard.to_owned());
        let lease = self.lease.clone();
        let cfg = self.lease_cfg.clone();
        let tls = self.tls.clone();
        let ttl = self.lease_ttl;
        self.run(async move {
            let mut l = lease.lock().await;
            let key = crl_lock_key(&issuer, &shard);
            // A session that died took its locks with it.
            if l.client.as_ref().is_none_or(|c| c.is_closed()) {
                l.held.clear();
                let client = super::pg::connect_one(&cfg, tls.as_ref(), "CRL lease").await?;
                l.client = Some(client);
            }
            // Split borrows: the session and the set of locks it holds, updated as each step
            // completes (a call cut short never leaves a granted lock untracked).
            let super::pg::Lease { client, held } = &mut *l;
            let Some(client) = client.as_ref() else {
                return Err(CoreError::Store("no CRL lease connection".into()));
            };
            // Locks held past the lease time without a stored CRL (a build that failed) are
            // released so another core can generate those shards.
            let stale: Vec<(String, String)> = held
                .iter()
                .filter(|(_, at)| at.elapsed() > ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for (i, s) in stale {
                let k = crl_lock_key(&i, &s);
                let _ = client
                    .execute("SELECT pg_advisory_unlock($1, $2)", &[&CRL_LOCK_CLASS, &k])
                    .await;
                held.remove(&(i, s));
            }
            let id = (issuer.clone(), shard.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = held.entry(id) {
                // Waits for another core's generation of this shard, up to lock_timeout.
                client
                    .execute("SELECT pg_advisory_lock($1, $2)", &[&CRL_LOCK_CLASS, &key])
                    .await
                    .map_err(|e| {
                        CoreError::Store(format!(
                            "CRL {issuer}/{shard} is being generated by another core: {}",
                            db(e)
                        ))
                    })?;
                slot.insert(Instant::now());
            }
            let r = client
                .query_one(
                    "INSERT INTO crl_numbers (issuer_id, shard, last_number) VALUES ($1, $2, 1)
                     ON CONFLICT (issuer_id, shard)
                     DO UPDATE SET last_number = crl_numbers.last_number + 1
                     RETURNING last_number",
                    &[&issuer, &shard],
                )
                .await
                .map_err(db)?;
            Ok(col::<i64>(&r, 0)? as u64)
        })
    }

    fn put_crl(&self, rec: &CrlRec) -> Result<u64> {
        let r = rec.clone();
        let lease = self.lease.clone();
        self.run(async move {
            let mut l = lease.lock().await;
            let k = (r.issuer_id.clone(), r.shard.clone());
            let live = l.client.as_ref().is_some_and(|c| !c.is_closed());
            if !live || !l.held.contains_key(&k) {
                l.held.remove(&k);
                return Err(CoreError::Store(format!(
                    "CRL {}/{}: this core no longer holds the generator lock; not stored",
                    r.issuer_id, r.shard
                )));
            }
            let Some(client) = l.client.as_mut() else {
                return Err(CoreError::Store("no CRL lease connection".into()));
            };
            // Stored on the lease session itself: if that session is gone, so is the lock, and
            // the store fails instead of writing under a lock another core may now hold.
            let tx = client.transaction().await.map_err(db)?;
            tx.execute("SELECT set_config('certgate.tenant', '*', true)", &[])
                .await
                .map_err(db)?;
            let cursor = new_events(&tx, &[(r.tenant.as_str(), "crl")]).await? as i64;
            let number = r.crl_number as i64;
            tx.execute(
                &format!(
                    "INSERT INTO crls ({CRL_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)
                     ON CONFLICT (issuer_id, shard) DO UPDATE SET
                       tenant = excluded.tenant, crl_der = excluded.crl_der,
                       crl_number = excluded.crl_number,
                       this_update_unix = excluded.this_update_unix,
                       next_update_unix = excluded.next_update_unix, cursor = excluded.cursor"
                ),
                &[
                    &r.tenant,
                    &r.issuer_id,
                    &r.shard,
                    &r.crl_der,
                    &number,
                    &r.this_update_unix,
                    &r.next_update_unix,
                    &cursor,
                ],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            let key = crl_lock_key(&r.issuer_id, &r.shard);
            let _ = client
                .execute(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&CRL_LOCK_CLASS, &key],
                )
                .await;
            l.held.remove(&k);
            Ok(cursor as u64)
        })
    }

    fn get_crl(&self, issuer_id: &str, shard: &str) -> Result<Option<CrlRec>> {
        let (issuer, shard) = (issuer_id.to_owned(), shard.to_owned());
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query_opt(
                &format!("SELECT {CRL_COLS} FROM crls WHERE issuer_id = $1 AND shard = $2"),
                &[&issuer, &shard],
            )
            .await
            .map_err(db)?
            .map(|r| crl_row(&r, 0))
            .transpose()
        })
    }

    fn crl_times(&self) -> Result<Vec<(String, String, i64, i64)>> {
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT issuer_id, shard, this_update_unix, next_update_unix FROM crls",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)))
            .collect()
        })
    }

    fn revoked_of(&self, issuer_id: &str, now: i64) -> Result<Vec<RevokedRec>> {
        let issuer = issuer_id.to_owned();
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT serial_hex, revoked_at_unix, revocation_reason FROM certificates
                 WHERE issuer_id = $1 AND revoked AND not_after_unix > $2
                 ORDER BY serial_hex",
                &[&issuer, &now],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(RevokedRec {
                    serial_hex: col(r, 0)?,
                    revoked_at_unix: col(r, 1)?,
                    reason: u32::try_from(col::<i64>(r, 2)?)
                        .map_err(|_| CoreError::Store("bad revocation reason".into()))?,
                })
            })
            .collect()
        })
    }

    fn latest_cursor(&self) -> Result<u64> {
        in_tx!(self, ALL.to_owned(), |tx| {
            let r = tx
                .query_one("SELECT cursor FROM status_head WHERE id = 1", &[])
                .await
                .map_err(db)?;
            Ok(col::<i64>(&r, 0)?.max(0) as u64)
        })
    }

    fn resumable_from(&self) -> Result<u64> {
        in_tx!(self, ALL.to_owned(), |tx| {
            let r = tx
                .query_one("SELECT pruned_upto FROM status_head WHERE id = 1", &[])
                .await
                .map_err(db)?;
            Ok(col::<i64>(&r, 0)?.max(0) as u64)
        })
    }

    fn events_after(&self, cursor: u64, limit: usize) -> Result<EventPage> {
        let (after, limit) = (cursor as i64, limit as i64);
        in_tx!(self, ALL.to_owned(), |tx| {
            let rows = tx
                .query(
                    &format!(
                        "SELECT e.cursor, e.kind, o.{o}, c.{c}
                         FROM status_events e
                         LEFT JOIN ocsp_responses o ON e.kind = 'ocsp' AND o.cursor = e.cursor
                         LEFT JOIN crls c ON e.kind = 'crl' AND c.cursor = e.cursor
                         WHERE e.cursor > $1 ORDER BY e.cursor LIMIT $2",
                        o = OCSP_COLS.replace(", ", ", o."),
                        c = CRL_COLS.replace(", ", ", c."),
                    ),
                    &[&after, &limit],
                )
                .await
                .map_err(db)?;
            let mut page = EventPage {
                items: Vec::new(),
                last_cursor: cursor,
            };
            for r in &rows {
                let at = col::<i64>(r, 0)? as u64;
                page.last_cursor = at;
                let kind: String = col(r, 1)?;
                // A superseded event joins nothing: a later event carries the entry.
                if kind == "ocsp" && col::<Option<String>>(r, 2)?.is_some() {
                    page.items.push((at, StatusItem::Ocsp(ocsp_row(r, 2)?)));
                } else if kind == "crl" && col::<Option<String>>(r, 10)?.is_some() {
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
        let lim = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            match pos {
                SnapshotPos::Ocsp(after) => {
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT id, {OCSP_COLS} FROM ocsp_responses WHERE id > $1
                                 ORDER BY id LIMIT $2"
                            ),
                            &[&after, &lim],
                        )
                        .await
                        .map_err(db)?;
                    let mut out = Vec::new();
                    let mut last = after;
                    for r in &rows {
                        last = col(r, 0)?;
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
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT id, {CRL_COLS} FROM crls WHERE id > $1 ORDER BY id LIMIT $2"
                            ),
                            &[&after, &lim],
                        )
                        .await
                        .map_err(db)?;
                    let mut out = Vec::new();
                    let mut last = after;
                    for r in &rows {
                        last = col(r, 0)?;
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
            }
        })
    }

    fn get_responder(&self, issuer_id: &str) -> Result<Option<Vec<u8>>> {
        let issuer = issuer_id.to_owned();
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query_opt(
                "SELECT cert_der FROM ocsp_responders WHERE issuer_id = $1",
                &[&issuer],
            )
            .await
            .map_err(db)?
            .map(|r| col(&r, 0))
            .transpose()
        })
    }

    fn put_responder(&self, issuer_id: &str, key_id: &str, cert_der: &[u8]) -> Result<()> {
        let (i, k, d) = (issuer_id.to_owned(), key_id.to_owned(), cert_der.to_vec());
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.execute(
                "INSERT INTO ocsp_responders (issuer_id, key_id, cert_der, created_unix)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (issuer_id) DO UPDATE SET key_id = excluded.key_id,
                   cert_der = excluded.cert_der, created_unix = excluded.created_unix",
                &[&i, &k, &d, &crate::now_unix()],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn prune_events(&self, keep: u64) -> Result<u64> {
        let keep = keep as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            let head = tx
                .query_one(
                    "SELECT cursor, pruned_upto FROM status_head WHERE id = 1",
                    &[],
                )
                .await
                .map_err(db)?;
            let (latest, pruned): (i64, i64) = (col(&head, 0)?, col(&head, 1)?);
            let upto = (latest - keep).max(0);
            if upto == 0 || upto <= pruned {
                return Ok(0);
            }
            let n = tx
                .execute("DELETE FROM status_events WHERE cursor <= $1", &[&upto])
                .await
                .map_err(db)?;
            tx.execute(
                "UPDATE status_head SET pruned_upto = GREATEST(pruned_upto, $1) WHERE id = 1",
                &[&upto],
            )
            .await
            .map_err(db)?;
            Ok(n)
        })
    }
}
