//! The embedded store: one SQLite file (rusqlite, bundled), WAL journal, `synchronous=FULL`.
//!
//! Why FULL (docs/core.md): in WAL mode NORMAL may lose the last committed transactions on power
//! loss; losing a recorded intent or a stored certificate after the client got it would break I-3
//! (a retry would mint a second certificate under a new serial). FULL fsyncs the WAL on every
//! commit; with WAL that is one sequential flush per transaction.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and every transaction here is
//! short (no network call is ever made while a transaction is open).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::{
    CaRec, CeremonyRec, CertRec, IntentOutcome, IntentRec, ProfileRec, RevokeOp, Store, TenantRec,
};
use crate::audit::{AuditEntry, AuditRecord, record_hash};
use crate::error::{CoreError, Result};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    public_base_url TEXT NOT NULL,
    default_profile TEXT NOT NULL,
    active_issuer_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS profiles (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    body_json TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
);
CREATE TABLE IF NOT EXISTS cas (
    ca_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent_ca_id TEXT NOT NULL,
    cert_der BLOB NOT NULL,
    signer_key_id TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    state TEXT NOT NULL,
    not_after_unix INTEGER NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    tenant TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    serial_hex TEXT NOT NULL,
    tbs_der BLOB NOT NULL,
    issuer_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, idem_key),
    UNIQUE (tenant, serial_hex)
);
CREATE TABLE IF NOT EXISTS certificates (
    tenant TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    cert_der BLOB NOT NULL,
    issuer_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    profile_version INTEGER NOT NULL,
    not_before_unix INTEGER NOT NULL,
    not_after_unix INTEGER NOT NULL,
    idem_key TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    revoked_at_unix INTEGER NOT NULL DEFAULT 0,
    revocation_reason INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, serial_hex),
    UNIQUE (tenant, idem_key)
);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    op TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    target TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (tenant, op, idem_key)
);
CREATE TABLE IF NOT EXISTS ceremonies (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '',
    action BLOB NOT NULL,
    digest BLOB NOT NULL,
    required INTEGER NOT NULL,
    approved_by TEXT NOT NULL,
    state INTEGER NOT NULL,
    result_ca_ids TEXT NOT NULL,
    created_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    prev BLOB NOT NULL,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    details TEXT NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB
);
-- The audit signer asks for unsigned records several times a second; without this partial index
-- that is a scan of the whole (ever-growing) audit table on the one reader connection, which
-- issuances wait behind (docs/performance.md, "Issuance (core)").
CREATE INDEX IF NOT EXISTS audit_unsigned ON audit(seq) WHERE signature IS NULL;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// An audit row as read, before its hashes are checked for length.
type RawAuditRow = (
    i64,
    String,
    Vec<u8>,
    String,
    String,
    String,
    String,
    Vec<u8>,
    Option<Vec<u8>>,
);

/// The SQLite store: a few reader connections and one writer thread doing group commit.
pub struct SqliteStore {
    /// Reader connections (WAL: readers do not block each other or the writer). One mutex per
    /// connection; a lookup takes a free one, so concurrent RPCs do not queue behind one lock.
    readers: Vec<Mutex<Connection>>,
    /// Where the next lookup starts looking for a free reader.
    next_reader: std::sync::atomic::AtomicUsize,
    writer: Option<std::sync::mpsc::SyncSender<Box<dyn WriteJob>>>,
    cleanup: Option<std::path::PathBuf>,
}

/// One write transaction submitted to the writer thread.
trait WriteJob: Send {
    /// Runs inside the batch's transaction (in its own savepoint); true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the outcome once the batch committed (or failed to).
    fn finish(self: Box<Self>, commit_error: Option<String>);
}

struct TypedJob<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: std::sync::mpsc::SyncSender<Result<T>>,
}

impl<T: Send, F: FnOnce(&Connection) -> Result<T> + Send> WriteJob for TypedJob<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = f(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit_error: Option<String>) {
        let result = match (self.out, commit_error) {
            (None, e) => Err(CoreError::Store(
                e.unwrap_or_else(|| "write transaction did not run".into()),
            )),
            (Some(Ok(_)), Some(e)) => Err(CoreError::Store(e)),
            (Some(out), _) => out,
        };
        let _ = self.reply.send(result);
    }
}

/// Reader connections of a writable store.
const READERS: usize = 4;

/// Prepared statements kept per connection (more than the distinct statements of any hot path).
const STATEMENT_CACHE: usize = 256;

/// Most write transactions folded into one commit.
const MAX_BATCH: usize = 256;

/// The writer thread: takes every queued write, runs each in its own savepoint inside one
/// transaction, commits once (one WAL fsync for the whole batch: group commit), then answers
/// each caller. A job that fails is rolled back to its savepoint and does not affect the others.
fn writer_loop(conn: Connection, rx: std::sync::mpsc::Receiver<Box<dyn WriteJob>>) {
    // The transaction-control statements are prepared once (cached), not parsed per job: at a
    // few hundred ACME issuances per second SQL parsing was a tenth of the core's CPU.
    let exec = |sql: &str| -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = exec("BEGIN IMMEDIATE") {
            for j in jobs {
                j.finish(Some(e.to_string()));
            }
            continue;
        }
        for j in jobs.iter_mut() {
            let ok = exec("SAVEPOINT job").is_ok() && j.run(&conn);
            let end = if ok {
                exec("RELEASE job")
            } else {
                exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job"))
            };
            if let Err(e) = end {
                tracing::error!(error = %e, "savepoint");
            }
        }
        let commit_error = match exec("COMMIT") {
            Ok(()) => None,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Some(e.to_string())
            }
        };
        for j in jobs {
            j.finish(commit_error.clone());
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(path) = &self.cleanup {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn hash32(v: Vec<u8>) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| CoreError::Store("hash is not 32 bytes".into()))
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn append(tx: &Connection, e: &AuditEntry) -> Result<u64> {
    let last: Option<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s as u64 + 1, hash32(h)?),
        None => (1, [0u8; 32]),
    };
    let time = rfc3339_now();
    let hash = record_hash(seq, &time, &prev, &e.kind, &e.tenant, &e.actor, &e.details);
    tx.prepare_cached("INSERT INTO audit (seq, time, prev, kind, tenant, actor, details, hash) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)")?.execute(
        params![seq as i64, time, prev.to_vec(), e.kind, e.tenant, e.actor, e.details, hash.to_vec()],
    )?;
    Ok(seq)
}

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<TenantRec> {
    Ok(TenantRec {
        name: r.get(0)?,
        public_base_url: r.get(1)?,
        default_profile: r.get(2)?,
        active_issuer_id: r.get(3)?,
    })
}

fn profile_row(r: &Row<'_>) -> rusqlite::Result<ProfileRec> {
    Ok(ProfileRec {
        tenant: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        body_json: r.get(3)?,
        created_unix: r.get(4)?,
    })
}

const CA_COLS: &str = "ca_id, tenant, kind, parent_ca_id, cert_der, signer_key_id, key_type, state, not_after_unix, created_unix";

fn ca_row(r: &Row<'_>) -> rusqlite::Result<CaRec> {
    Ok(CaRec {
        ca_id: r.get(0)?,
        tenant: r.get(1)?,
        kind: r.get(2)?,
        parent_ca_id: r.get(3)?,
        cert_der: r.get(4)?,
        signer_key_id: r.get(5)?,
        key_type: r.get(6)?,
        state: r.get(7)?,
        not_after_unix: r.get(8)?,
        created_unix: r.get(9)?,
    })
}

const INTENT_COLS: &str = "tenant, idem_key, request_hash, serial_hex, tbs_der, issuer_id, profile, profile_version, created_unix";

fn intent_row(r: &Row<'_>) -> rusqlite::Result<IntentRec> {
    Ok(IntentRec {
        tenant: r.get(0)?,
        idem_key: r.get(1)?,
        request_hash: r.get(2)?,
        serial_hex: r.get(3)?,
        tbs_der: r.get(4)?,
        issuer_id: r.get(5)?,
        profile: r.get(6)?,
        profile_version: r.get(7)?,
        created_unix: r.get(8)?,
    })
}

const CERT_COLS: &str = "tenant, serial_hex, cert_der, issuer_id, profile, profile_version, not_before_unix, not_after_unix, idem_key, revoked, revoked_at_unix, revocation_reason";

fn cert_row(r: &Row<'_>) -> rusqlite::Result<CertRec> {
    Ok(CertRec {
        tenant: r.get(0)?,
        serial_hex: r.get(1)?,
        cert_der: r.get(2)?,
        issuer_id: r.get(3)?,
        profile: r.get(4)?,
        profile_version: r.get(5)?,
        not_before_unix: r.get(6)?,
        not_after_unix: r.get(7)?,
        idem_key: r.get(8)?,
        revoked: r.get::<_, i64>(9)? != 0,
        revoked_at_unix: r.get(10)?,
        revocation_reason: r.get(11)?,
    })
}

fn ceremony_row(r: &Row<'_>) -> rusqlite::Result<(CeremonyRec, String, String)> {
    Ok((
        CeremonyRec {
            id: r.get(0)?,
            action: r.get(1)?,
            digest: r.get(2)?,
            required: r.get(3)?,
            approved_by: Vec::new(),
            state: r.get(5)?,
            result_ca_ids: Vec::new(),
            created_unix: r.get(7)?,
        },
        r.get(4)?,
        r.get(6)?,
    ))
}

fn finish_ceremony(
    (mut c, approved, results): (CeremonyRec, String, String),
) -> Result<CeremonyRec> {
    c.approved_by = serde_json::from_str(&approved).map_err(|e| CoreError::Store(e.to_string()))?;
    c.result_ca_ids =
        serde_json::from_str(&results).map_err(|e| CoreError::Store(e.to_string()))?;
    Ok(c)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CoreError::Store(e.to_string()))?;
        }
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of the hot paths is prepared once per connection (prepare_cached); the
        // cache (an LRU of prepared statements, bounded: I-8) must hold them all or it thrashes.
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        writer.execute_batch(SCHEMA)?;
        writer.execute_batch(super::sqlite_acme::SCHEMA)?;
        writer.execute_batch(super::sqlite_status::SCHEMA)?;
        writer.execute_batch(super::sqlite_cmp::SCHEMA)?;
        writer.execute_batch(super::sqlite_scep::SCHEMA)?;
        writer.execute_batch(super::sqlite_pending::SCHEMA)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            // 64 MiB page cache in all (negative = KiB) over the readers: lookups of recent
            // certificates and intents otherwise go to pread on every call. Bounded (I-8).
            reader.pragma_update(None, "cache_size", -(65536 / READERS as i64))?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(Mutex::new(reader));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<dyn WriteJob>>(4096);
        std::thread::Builder::new()
            .name("certgate-store-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| CoreError::Store(format!("writer thread: {e}")))?;
        Ok(Self {
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            writer: Some(tx),
            cleanup: None,
        })
    }

    /// Opens an existing store read-only (offline audit verification); writes fail.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            readers: vec![Mutex::new(conn)],
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            writer: None,
            cleanup: None,
        })
    }

    /// A throwaway store in a temporary file, removed on drop (tests).
    pub fn in_memory() -> Result<Self> {
        let mut name = [0u8; 8];
        aws_lc_rs::rand::fill(&mut name).map_err(|_| CoreError::Internal("CSPRNG".into()))?;
        let path = std::env::temp_dir().join(format!("certgate-core-{}.db", hex::encode(name)));
        let mut store = Self::open(&path)?;
        store.cleanup = Some(path);
        Ok(store)
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let n = self.readers.len();
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Some(r) = self.readers.get((start + i) % n)
                && let Ok(mut guard) = r.try_lock()
            {
                return f(&mut guard);
            }
        }
        let mut guard = self
            .readers
            .get(start % n.max(1))
            .ok_or_else(|| CoreError::Store("no reader connection".into()))?
            .lock()
            .map_err(|_| CoreError::Store("store mutex poisoned".into()))?;
        f(&mut guard)
    }

    /// Runs `f` as one write transaction through the writer thread (group commit) and waits
    /// until it is durable.
    pub(crate) fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| CoreError::Store("the store is open read-only".into()))?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        writer
            .send(Box::new(TypedJob {
                f: Some(f),
                out: None,
                reply,
            }))
            .map_err(|_| CoreError::Store("store writer stopped".into()))?;
        answer
            .recv()
            .map_err(|_| CoreError::Store("store writer stopped".into()))?
    }

    /// Test hook: runs raw SQL (tamper tests).
    #[doc(hidden)]
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        self.tx(move |c| Ok(c.execute_batch(&sql)?))
    }
}

impl Store for SqliteStore {
    fn reads_are_local(&self) -> bool {
        true
    }

    fn as_acme(&self) -> Option<&dyn super::acme::AcmeStore> {
        Some(self)
    }

    fn as_cmp(&self) -> Option<&dyn super::cmp::CmpStore> {
        Some(self)
    }

    fn as_scep(&self) -> Option<&dyn super::scep::ScepStore> {
        Some(self)
    }

    fn as_pending(&self) -> Option<&dyn super::pending::PendingStore> {
        Some(self)
    }

    fn put_tenant(&self, t: &TenantRec, audit: &AuditEntry) -> Result<bool> {
        let t = t.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let existed: bool = tx
                .prepare_cached("SELECT 1 FROM tenants WHERE name = ?1")?.query_row( [&t.name], |_| Ok(()))
                .optional()?
                .is_some();
            tx.prepare_cached("INSERT INTO tenants (name, public_base_url, default_profile, active_issuer_id) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(name) DO UPDATE SET public_base_url = excluded.public_base_url,
                   default_profile = excluded.default_profile,
                   active_issuer_id = CASE WHEN excluded.active_issuer_id = '' THEN tenants.active_issuer_id ELSE excluded.active_issuer_id END")?.execute(
                params![t.name, t.public_base_url, t.default_profile, t.active_issuer_id],
            )?;
            append(tx, &audit)?;
            Ok(!existed)
        })
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRec>> {
        self.with(|c| {
            Ok(c.prepare_cached("SELECT name, public_base_url, default_profile, active_issuer_id FROM tenants WHERE name = ?1")?.query_row(
                [name],
                tenant_row,
            )
            .optional()?)
        })
    }

    fn list_tenants(&self) -> Result<Vec<TenantRec>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, public_base_url, default_profile, active_issuer_id FROM tenants ORDER BY name",
            )?;
            let rows = st.query_map([], tenant_row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    fn put_profile(
        &self,
        tenant: &str,
        name: &str,
        body_json: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<ProfileRec> {
        let (tenant, name, body_json, audit) = (
            tenant.to_owned(),
            name.to_owned(),
            body_json.to_owned(),
            audit.clone(),
        );
        self.tx(move |tx| {
            let version: u32 = tx.prepare_cached("SELECT COALESCE(MAX(version), 0) + 1 FROM profiles WHERE tenant = ?1 AND name = ?2")?.query_row(
                params![tenant, name],
                |r| r.get(0),
            )?;
            tx.prepare_cached("INSERT INTO profiles (tenant, name, version, body_json, created_unix) VALUES (?1,?2,?3,?4,?5)")?.execute(
                params![tenant, name, version, body_json, now],
            )?;
            let mut audit = audit.clone();
            if let Ok(serde_json::Value::Object(mut m)) =
                serde_json::from_str::<serde_json::Value>(&audit.details)
            {
                m.insert("version".into(), version.into());
                audit.details = serde_json::Value::Object(m).to_string();
            }
            append(tx, &audit)?;
            Ok(ProfileRec {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                version,
                body_json: body_json.to_owned(),
                created_unix: now,
            })
        })
    }

    fn latest_profile(&self, tenant: &str, name: &str) -> Result<Option<ProfileRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT tenant, name, version, body_json, created_unix FROM profiles
                 WHERE tenant = ?1 AND name = ?2 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(params![tenant, name], profile_row)
            .optional()?)
        })
    }

    fn profile_versions(&self, tenant: &str, name: &str) -> Result<Vec<ProfileRec>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT tenant, name, version, body_json, created_unix FROM profiles
                 WHERE tenant = ?1 AND name = ?2 ORDER BY version",
            )?;
            let rows = st
                .query_map(params![tenant, name], profile_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    fn latest_profiles(&self, tenant: &str) -> Result<Vec<ProfileRec>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT p.tenant, p.name, p.version, p.body_json, p.created_unix FROM profiles p
                 WHERE p.tenant = ?1 AND p.version = (SELECT MAX(version) FROM profiles q
                   WHERE q.tenant = p.tenant AND q.name = p.name) ORDER BY p.name",
            )?;
            let rows = st
                .query_map([tenant], profile_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    fn put_ca(&self, ca: &CaRec, activate: bool, audit: &AuditEntry) -> Result<()> {
        let ca = ca.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO cas ({CA_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
            ))?
            .execute(params![
                ca.ca_id,
                ca.tenant,
                ca.kind,
                ca.parent_ca_id,
                ca.cert_der,
                ca.signer_key_id,
                ca.key_type,
                ca.state,
                ca.not_after_unix,
                ca.created_unix
            ])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    CoreError::exists("ca.exists", format!("CA {:?} already exists", ca.ca_id))
                }
                other => other.into(),
            })?;
            if activate {
                let n = tx
                    .prepare_cached("UPDATE tenants SET active_issuer_id = ?1 WHERE name = ?2")?
                    .execute(params![ca.ca_id, ca.tenant])?;
                if n != 1 {
                    return Err(CoreError::not_found("tenant.unknown", "no such tenant"));
                }
            }
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn get_ca(&self, ca_id: &str) -> Result<Option<CaRec>> {
        self.with(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {CA_COLS} FROM cas WHERE ca_id = ?1"))?
                    .query_row([ca_id], ca_row)
                    .optional()?,
            )
        })
    }

    fn list_cas(&self, tenant: Option<&str>) -> Result<Vec<CaRec>> {
        self.with(|c| {
            let rows = match tenant {
                Some(t) => {
                    let mut st = c.prepare(&format!(
                        "SELECT {CA_COLS} FROM cas WHERE tenant = ?1 ORDER BY created_unix, ca_id"
                    ))?;
                    st.query_map([t], ca_row)?
                        .collect::<rusqlite::Result<_>>()?
                }
                None => {
                    let mut st = c.prepare(&format!(
                        "SELECT {CA_COLS} FROM cas ORDER BY created_unix, ca_id"
                    ))?;
                    st.query_map([], ca_row)?.collect::<rusqlite::Result<_>>()?
                }
            };
            Ok(rows)
        })
    }

    fn set_ca_state(&self, ca_id: &str, state: &str, audit: &AuditEntry) -> Result<()> {
        let (ca_id, state, audit) = (ca_id.to_owned(), state.to_owned(), audit.clone());
        self.tx(move |tx| {
            tx.prepare_cached("UPDATE cas SET state = ?1 WHERE ca_id = ?2")?
                .execute(params![state, ca_id])?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn activate_staged_ca(
        &self,
        tenant: &str,
        staged_id: &str,
        previous_id: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let (tenant, staged, previous, audit) = (
            tenant.to_owned(),
            staged_id.to_owned(),
            previous_id.to_owned(),
            audit.clone(),
        );
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE cas SET state = 'active' WHERE ca_id = ?1 AND tenant = ?2 AND state = 'staged'",
                params![staged, tenant],
            )?;
            if n != 1 {
                return Err(CoreError::not_found(
                    "ca.rollover_none",
                    "no CA is staged for rollover",
                ));
            }
            if !previous.is_empty() {
                tx.execute(
                    "UPDATE cas SET state = 'retiring' WHERE ca_id = ?1 AND tenant = ?2",
                    params![previous, tenant],
                )?;
            }
            let n = tx.execute(
                "UPDATE tenants SET active_issuer_id = ?1 WHERE name = ?2",
                params![staged, tenant],
            )?;
            if n != 1 {
                return Err(CoreError::not_found("tenant.unknown", "no such tenant"));
            }
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn get_intent(&self, tenant: &str, idem_key: &str) -> Result<Option<IntentRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {INTENT_COLS} FROM intents WHERE tenant = ?1 AND idem_key = ?2"
            ))?
            .query_row(params![tenant, idem_key], intent_row)
            .optional()?)
        })
    }

    fn insert_intent(&self, i: &IntentRec, audit: &AuditEntry) -> Result<IntentOutcome> {
        let i = i.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            if let Some(existing) = tx
                .prepare_cached(&format!(
                    "SELECT {INTENT_COLS} FROM intents WHERE tenant = ?1 AND idem_key = ?2"
                ))?
                .query_row(params![i.tenant, i.idem_key], intent_row)
                .optional()?
            {
                return Ok(IntentOutcome::Exists(existing));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO intents ({INTENT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"
            ))?
            .execute(params![
                i.tenant,
                i.idem_key,
                i.request_hash,
                i.serial_hex,
                i.tbs_der,
                i.issuer_id,
                i.profile,
                i.profile_version,
                i.created_unix
            ])?;
            append(tx, &audit)?;
            Ok(IntentOutcome::Inserted)
        })
    }

    fn complete_issue(&self, cert: &CertRec, audit: &AuditEntry) -> Result<CertRec> {
        let cert = cert.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            if let Some(existing) = tx
                .prepare_cached(&format!(
                    "SELECT {CERT_COLS} FROM certificates WHERE tenant = ?1 AND idem_key = ?2"
                ))?
                .query_row(params![cert.tenant, cert.idem_key], cert_row)
                .optional()?
            {
                return Ok(existing);
            }
            tx.prepare_cached(&format!(
                "INSERT INTO certificates ({CERT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,0,0,0)"
            ))?
            .execute(params![
                cert.tenant,
                cert.serial_hex,
                cert.cert_der,
                cert.issuer_id,
                cert.profile,
                cert.profile_version,
                cert.not_before_unix,
                cert.not_after_unix,
                cert.idem_key
            ])?;
            append(tx, &audit)?;
            Ok(cert.clone())
        })
    }

    fn cert_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<CertRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {CERT_COLS} FROM certificates WHERE tenant = ?1 AND idem_key = ?2"
            ))?
            .query_row(params![tenant, idem_key], cert_row)
            .optional()?)
        })
    }

    fn get_cert(&self, tenant: &str, serial_hex: &str) -> Result<Option<CertRec>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {CERT_COLS} FROM certificates WHERE tenant = ?1 AND serial_hex = ?2"
            ))?
            .query_row(params![tenant, serial_hex], cert_row)
            .optional()?)
        })
    }

    fn revoke(
        &self,
        tenant: &str,
        op: &RevokeOp,
        audit: &AuditEntry,
    ) -> Result<Option<(CertRec, bool)>> {
        let (tenant, op, audit) = (tenant.to_owned(), op.clone(), audit.clone());
        self.tx(move |tx| {
            let (serial_hex, reason, now) = (&op.serial_hex, op.reason, op.now);
            let used: Option<Vec<u8>> = tx
                .prepare_cached("SELECT request_hash FROM idempotency WHERE tenant = ?1 AND op = 'revoke' AND idem_key = ?2")?.query_row(
                    params![tenant, op.idem_key],
                    |r| r.get(0),
                )
                .optional()?;
            if used.as_ref().is_some_and(|h| *h != op.request_hash) {
                return Err(CoreError::exists(
                    "idempotency.key_reused",
                    "this idempotency key was already used for a different request",
                ));
            }
            let Some(cert) = tx
                .prepare_cached(&format!(
                        "SELECT {CERT_COLS} FROM certificates WHERE tenant = ?1 AND serial_hex = ?2"
                    ))?.query_row(
                    params![tenant, serial_hex],
                    cert_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            if used.is_none() {
                tx.prepare_cached("INSERT INTO idempotency (tenant, op, idem_key, request_hash, target, created_unix)
                     VALUES (?1, 'revoke', ?2, ?3, ?4, ?5)")?.execute(
                    params![tenant, op.idem_key, op.request_hash, serial_hex, now],
                )?;
            }
            if cert.revoked {
                return Ok(Some((cert, true)));
            }
            tx.prepare_cached("UPDATE certificates SET revoked = 1, revoked_at_unix = ?1, revocation_reason = ?2
                 WHERE tenant = ?3 AND serial_hex = ?4")?.execute(
                params![now, reason, tenant, serial_hex],
            )?;
            append(tx, &audit)?;
            Ok(Some((
                CertRec {
                    revoked: true,
                    revoked_at_unix: now,
                    revocation_reason: reason,
                    ..cert
                },
                false,
            )))
        })
    }

    fn insert_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()> {
        let c = c.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.prepare_cached("INSERT INTO ceremonies (id, action, digest, required, approved_by, state, result_ca_ids, created_unix)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8)")?.execute(
                params![
                    c.id,
                    c.action,
                    c.digest,
                    c.required,
                    serde_json::to_string(&c.approved_by).unwrap_or_default(),
                    c.state,
                    serde_json::to_string(&c.result_ca_ids).unwrap_or_default(),
                    c.created_unix
                ],
            )?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn update_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()> {
        let c = c.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            tx.prepare_cached("UPDATE ceremonies SET approved_by = ?1, state = ?2, result_ca_ids = ?3 WHERE id = ?4")?.execute(
                params![
                    serde_json::to_string(&c.approved_by).unwrap_or_default(),
                    c.state,
                    serde_json::to_string(&c.result_ca_ids).unwrap_or_default(),
                    c.id
                ],
            )?;
            append(tx, &audit)?;
            Ok(())
        })
    }

    fn get_ceremony(&self, id: &str) -> Result<Option<CeremonyRec>> {
        let row = self.with(|c| {
            Ok(c.prepare_cached("SELECT id, action, digest, required, approved_by, state, result_ca_ids, created_unix
                 FROM ceremonies WHERE id = ?1")?.query_row(
                [id],
                ceremony_row,
            )
            .optional()?)
        })?;
        row.map(finish_ceremony).transpose()
    }

    fn list_ceremonies(&self) -> Result<Vec<CeremonyRec>> {
        let rows: Vec<_> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, action, digest, required, approved_by, state, result_ca_ids, created_unix
                 FROM ceremonies ORDER BY created_unix, id",
            )?;
            let rows = st.query_map([], ceremony_row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(finish_ceremony).collect()
    }

    fn append_audit(&self, audit: &AuditEntry) -> Result<u64> {
        let audit = audit.clone();
        self.tx(move |tx| append(tx, &audit))
    }

    fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        let rows: Vec<RawAuditRow> =
            self.with(|c| {
                let mut st = c.prepare(
                    "SELECT seq, time, prev, kind, tenant, actor, details, hash, signature FROM audit ORDER BY rowid",
                )?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            })?;
        rows.into_iter()
            .map(
                |(seq, time, prev, kind, tenant, actor, details, hash, signature)| {
                    Ok(AuditRecord {
                        seq: seq as u64,
                        time,
                        prev: hash32(prev)?,
                        kind,
                        tenant,
                        actor,
                        details,
                        hash: hash32(hash)?,
                        signature,
                    })
                },
            )
            .collect()
    }

    fn unsigned_audit(&self, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        let rows: Vec<(i64, Vec<u8>)> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT seq, hash FROM audit WHERE signature IS NULL ORDER BY seq LIMIT ?1",
            )?;
            let rows = st
                .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(s, h)| Ok((s as u64, hash32(h)?)))
            .collect()
    }

    fn set_audit_signatures(&self, sigs: &[(u64, Vec<u8>)]) -> Result<()> {
        let sigs = sigs.to_vec();
        self.tx(move |tx| {
            for (seq, sig) in sigs {
                tx.prepare_cached("UPDATE audit SET signature = ?1 WHERE seq = ?2")?
                    .execute(params![sig, seq as i64])?;
            }
            Ok(())
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.tx(move |c| {
            c.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?.execute(
                params![key, value],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::verify_chain;

    #[test]
    fn unsigned_audit_lookup_uses_the_partial_index_not_a_scan() {
        let store = SqliteStore::in_memory().unwrap();
        let plan: Vec<String> = store
            .with(|c| {
                let mut st = c.prepare(
                    "EXPLAIN QUERY PLAN SELECT seq, hash FROM audit \
                     WHERE signature IS NULL ORDER BY seq LIMIT 10",
                )?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(3))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            })
            .unwrap();
        assert!(
            plan.iter().any(|row| row.contains("audit_unsigned")),
            "query plan does not use the partial index: {plan:?}"
        );
    }

    fn op(serial: &str, reason: u32, key: &str) -> RevokeOp {
        RevokeOp {
            serial_hex: serial.into(),
            reason,
            now: 5,
            idem_key: key.into(),
            request_hash: vec![reason as u8],
        }
    }

    fn audit() -> AuditEntry {
        AuditEntry::new("test", "t", "uid:1", serde_json::json!({}))
    }

    fn cert(tenant: &str, serial: &str, key: &str) -> CertRec {
        CertRec {
            tenant: tenant.into(),
            serial_hex: serial.into(),
            cert_der: vec![1, 2, 3],
            issuer_id: "i".into(),
            profile: "p".into(),
            profile_version: 1,
            not_before_unix: 0,
            not_after_unix: 10,
            idem_key: key.into(),
            revoked: false,
            revoked_at_unix: 0,
            revocation_reason: 0,
        }
    }

    #[test]
    fn i4_tenant_a_cannot_read_or_revoke_tenant_b_certificates() {
        let s = SqliteStore::in_memory().expect("store");
        s.complete_issue(&cert("b", "0a", "k"), &audit())
            .expect("store b");
        assert_eq!(s.get_cert("a", "0a").expect("get"), None);
        assert_eq!(s.cert_by_key("a", "k").expect("get"), None);
        assert_eq!(
            s.revoke("a", &op("0a", 1, "r"), &audit()).expect("revoke"),
            None
        );
        let b = s.get_cert("b", "0a").expect("get").expect("b sees it");
        assert!(
            !b.revoked,
            "tenant a's revoke must not touch b's certificate"
        );
        let (r, already) = s
            .revoke("b", &op("0a", 1, "r"), &audit())
            .expect("revoke")
            .expect("found");
        assert!(r.revoked && !already);
        let (_, already) = s
            .revoke("b", &op("0a", 1, "r2"), &audit())
            .expect("revoke")
            .expect("found");
        assert!(already);
        // the same key for another revocation is refused; the same request replays
        assert!(matches!(
            s.revoke("b", &op("0a", 5, "r"), &audit()),
            Err(CoreError::AlreadyExists { .. })
        ));
        let (_, already) = s
            .revoke("b", &op("0a", 1, "r"), &audit())
            .expect("revoke")
            .expect("found");
        assert!(already);
    }

    #[test]
    fn same_idempotency_key_in_two_tenants_is_two_records() {
        let s = SqliteStore::in_memory().expect("store");
        s.complete_issue(&cert("a", "01", "k"), &audit())
            .expect("a");
        s.complete_issue(&cert("b", "02", "k"), &audit())
            .expect("b");
        assert_eq!(
            s.cert_by_key("a", "k").expect("a").expect("a").serial_hex,
            "01"
        );
        assert_eq!(
            s.cert_by_key("b", "k").expect("b").expect("b").serial_hex,
            "02"
        );
    }

    #[test]
    fn complete_issue_returns_the_stored_certificate_on_a_second_store() {
        let s = SqliteStore::in_memory().expect("store");
        let first = s
            .complete_issue(&cert("a", "01", "k"), &audit())
            .expect("a");
        let mut other = cert("a", "01", "k");
        other.cert_der = vec![9, 9];
        let second = s.complete_issue(&other, &audit()).expect("again");
        assert_eq!(first, second, "the stored record is the certificate");
    }

    #[test]
    fn profiles_are_versioned_per_tenant() {
        let s = SqliteStore::in_memory().expect("store");
        assert_eq!(
            s.put_profile("a", "p", "{}", 1, &audit())
                .expect("v1")
                .version,
            1
        );
        assert_eq!(
            s.put_profile("a", "p", "{}", 2, &audit())
                .expect("v2")
                .version,
            2
        );
        assert_eq!(
            s.put_profile("b", "p", "{}", 2, &audit())
                .expect("b v1")
                .version,
            1
        );
        assert_eq!(
            s.latest_profile("a", "p")
                .expect("latest")
                .expect("some")
                .version,
            2
        );
        assert_eq!(s.profile_versions("a", "p").expect("versions").len(), 2);
        assert_eq!(s.latest_profiles("b").expect("latest").len(), 1);
    }

    #[test]
    fn stored_audit_chain_detects_edit_delete_and_reorder() {
        for tamper in [
            "UPDATE audit SET details = '{\"x\":1}' WHERE seq = 2",
            "DELETE FROM audit WHERE seq = 2",
            "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 100",
        ] {
            let s = SqliteStore::in_memory().expect("store");
            for _ in 0..4 {
                s.append_audit(&audit()).expect("append");
            }
            assert_eq!(
                verify_chain(&s.audit_records().expect("records"), None).error,
                None
            );
            s.execute_raw(tamper).expect("tamper");
            let v = verify_chain(&s.audit_records().expect("records"), None);
            assert!(v.error.is_some(), "not detected: {tamper}");
        }
    }
}
