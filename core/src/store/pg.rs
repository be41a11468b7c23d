//! The PostgreSQL store (docs/postgres.md): several core processes share one database.
//!
//! Why it is built this way:
//! - The [`Store`] traits are synchronous (the core calls them from `block_in_place` or
//!   `spawn_blocking`, and in tests sometimes straight from a current-thread runtime). Calling
//!   `Handle::block_on` from those places panics in some of them, so the store owns a small
//!   runtime of its own: each call is spawned there and the caller waits on a channel, which is
//!   valid from any thread. The runtime is shut down in the background on drop, so dropping the
//!   store inside the core's async `main` does not panic either.
//! - Connections come from a bounded pool (`pool_size`); a call waits at most `timeout_ms` for a
//!   connection and for its statements (server-side `statement_timeout` too), then fails with a
//!   store error (UNAVAILABLE to the caller), never hangs (I-8).
//! - Every call is one transaction that first sets `certgate.tenant` for itself only
//!   (`set_config(..., true)`): the tenant for calls that name one, `*` for the cross-tenant
//!   maintenance calls that by contract span tenants (status worker, audit, CA hierarchy). The
//!   database's row-level security then hides every other tenant's rows; a transaction that sets
//!   nothing sees nothing.
//! - The core connects as an app role that is neither superuser nor BYPASSRLS (checked at start,
//!   refused otherwise); schema changes are applied by the owner role from `migrate_url`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{NoTls, Row};
use zeroize::Zeroizing;

use super::pg_schema::{MIGRATION_LOCK, MIGRATIONS, rls_sql};
use super::pg_tls::MakeRustls;
pub use super::pg_tls::{PgTlsConfig, PgTlsMode};
use super::{
    CaRec, CeremonyRec, CertRec, IntentOutcome, IntentRec, ProfileRec, RevokeOp, Store, TenantRec,
};
use crate::audit::{AuditEntry, AuditRecord, record_hash};
use crate::error::{CoreError, Result};

/// `[store]` with `backend = "postgres"` (docs/postgres.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgConfig {
    /// Connection URL of the app role, without a password
    /// (`postgres://certgate_app@127.0.0.1:5432/certgate`).
    pub url: String,
    /// File holding the app role's password (relative to the config file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Or: the environment variable holding it.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Connection URL of the schema owner role; when set, the core applies pending migrations
    /// at start. Without it the schema must already be current.
    #[serde(default)]
    pub migrate_url: Option<String>,
    /// File holding the owner role's password.
    #[serde(default)]
    pub migrate_password_file: Option<PathBuf>,
    /// Or: the environment variable holding it.
    #[serde(default)]
    pub migrate_password_env: Option<String>,
    /// Most pooled connections (I-8).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Bound on waiting for a connection, on each statement and on each whole call, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a core may hold a CRL shard's generator lock without storing its CRL, s.
    #[serde(default = "default_crl_lease_secs")]
    pub crl_lease_secs: u64,
    /// `application_name` of this core's connections (visible in `pg_stat_activity`).
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// `[store.tls]`: TLS (verify-full) for every connection to the server; unset, the URLs'
    /// hosts are reached in plain TCP (loopback or a trusted network only).
    #[serde(default)]
    pub tls: Option<PgTlsConfig>,
}

fn default_pool_size() -> usize {
    16
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_crl_lease_secs() -> u64 {
    60
}
fn default_application_name() -> String {
    "certgate-core".into()
}

impl PgConfig {
    /// Checks what can be checked without connecting.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (what, url) in [
            ("url", Some(&self.url)),
            ("migrate_url", self.migrate_url.as_ref()),
        ] {
            let Some(url) = url else { continue };
            let c = tokio_postgres::Config::from_str(url)
                .map_err(|e| format!("[store] {what}: {e}"))?;
            if c.get_password().is_some() {
                return Err(format!(
                    "[store] {what} must not contain a password; use password_file or password_env"
                ));
            }
            if c.get_user().is_none() {
                return Err(format!("[store] {what} must name a user"));
            }
            if self.tls.is_some()
                && c.get_hosts()
                    .iter()
                    .any(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)))
            {
                return Err(format!(
                    "[store] {what}: [store.tls] needs TCP hosts (a unix socket has no TLS)"
                ));
            }
            // Without [store.tls] there is no TLS implementation: a URL asking for TLS would
            // only fail at the first connection, so say why now.
            if self.tls.is_none() && c.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                return Err(format!(
                    "[store] {what} has sslmode=require: configure [store.tls] (ca_file) for TLS"
                ));
            }
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err("[store] pool_size must be between 1 and 1024".into());
        }
        if self.timeout_ms < 100 {
            return Err("[store] timeout_ms must be at least 100".into());
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err("[store] set at most one of password_file and password_env".into());
        }
        if let Some(t) = &self.tls {
            t.check()?;
        }
        Ok(())
    }

    /// Resolves relative password files against `base` (the config file's directory).
    pub fn resolve(mut self, base: &std::path::Path) -> Self {
        let fix = |p: Option<PathBuf>| p.map(|p| if p.is_absolute() { p } else { base.join(p) });
        self.password_file = fix(self.password_file.take());
        self.migrate_password_file = fix(self.migrate_password_file.take());
        self.tls = self.tls.take().map(|t| t.resolve(base));
        self
    }
}

/// Reads a password from a file or an environment variable (zeroized when dropped).
fn read_password(
    file: Option<&PathBuf>,
    env: Option<&String>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if let Some(f) = file {
        let raw = Zeroizing::new(
            std::fs::read(f)
                .map_err(|e| CoreError::Store(format!("reading {}: {e}", f.display())))?,
        );
        let end = raw
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        return Ok(Some(Zeroizing::new(raw[..end].to_vec())));
    }
    if let Some(name) = env {
        let v = std::env::var_os(name)
            .ok_or_else(|| CoreError::Store(format!("environment variable {name} is not set")))?;
        return Ok(Some(Zeroizing::new(v.into_encoded_bytes())));
    }
    Ok(None)
}

/// A tokio-postgres error as a store error (UNAVAILABLE on the wire). Never carries a password:
/// the server's messages do not include one and the URL holds none.
pub(crate) fn db(e: tokio_postgres::Error) -> CoreError {
    match e.as_db_error() {
        Some(d) => CoreError::Store(format!("postgres: {} ({})", d.message(), d.code().code())),
        None => {
            // The causes say why a connection failed (a TLS certificate refused, a refused
            // TCP connection); tokio-postgres's own message is only "error performing TLS
            // handshake". None of them carries a password.
            let mut msg = format!("postgres: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            CoreError::Store(msg)
        }
    }
}

/// True for a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A serial already used by another request (tenant or issuer): the unique constraints refused it.
fn serial_taken(serial_hex: &str) -> CoreError {
    CoreError::Store(format!(
        "serial {serial_hex} is already used in this tenant or by this issuer (23505 unique_violation)"
    ))
}

/// One column of a row.
pub(crate) fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i).map_err(db)
}

fn u32_col(r: &Row, i: usize) -> Result<u32> {
    u32::try_from(col::<i64>(r, i)?)
        .map_err(|_| CoreError::Store(format!("column {i} out of range")))
}

fn hash32(v: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(v).map_err(|_| CoreError::Store("hash is not 32 bytes".into()))
}

/// The `certgate.tenant` value for a call naming a tenant. A tenant named `*` or "" gets the
/// empty scope, which matches no row (fail closed), rather than the cross-tenant scope.
pub(crate) fn tenant_scope(t: &str) -> String {
    if t == ALL {
        String::new()
    } else {
        t.to_owned()
    }
}

/// The cross-tenant scope of maintenance calls.
pub(crate) const ALL: &str = "*";

/// Opens a transaction on `client` scoped to `scope` (for this transaction only).
pub(crate) async fn begin<'a>(
    client: &'a mut deadpool_postgres::Object,
    scope: &str,
) -> Result<deadpool_postgres::Transaction<'a>> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT set_config('certgate.tenant', $1, true)", &[&scope])
        .await
        .map_err(db)?;
    Ok(tx)
}

/// Runs `$body` (which evaluates to `Result<T>` and may use `?`) inside one scoped transaction
/// on the store's runtime; commits when it is Ok, rolls back otherwise.
macro_rules! in_tx {
    ($self:ident, $scope:expr, |$tx:ident| $body:block) => {{
        let pool = $self.pool.clone();
        let scope: String = $scope;
        $self.run(async move {
            let mut client = pool.get().await.map_err($crate::store::pg::pool_err)?;
            let $tx = $crate::store::pg::begin(&mut client, &scope).await?;
            let out: $crate::error::Result<_> = async { $body }.await;
            let v = out?;
            $tx.commit().await.map_err($crate::store::pg::db)?;
            Ok(v)
        })
    }};
}
pub(crate) use in_tx;

/// A pool error as a store error.
pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> CoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        other => CoreError::Store(format!("postgres pool: {other}")),
    }
}

/// The CRL generator locks this core holds on its lease connection.
pub(crate) struct Lease {
    /// The dedicated session holding the advisory locks (None until first used or after loss).
    pub(crate) client: Option<tokio_postgres::Client>,
    /// (issuer, shard) -> when taken.
    pub(crate) held: HashMap<(String, String), Instant>,
}

/// The PostgreSQL store.
pub struct PgStore {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pub(crate) pool: Pool,
    pub(crate) lease: Arc<tokio::sync::Mutex<Lease>>,
    pub(crate) lease_cfg: tokio_postgres::Config,
    /// TLS of the app role's connections (`[store.tls]`), None for plain TCP.
    pub(crate) tls: Option<MakeRustls>,
    pub(crate) lease_ttl: Duration,
    timeout: Duration,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Double-quotes an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One connection outside the pool (migrations, the CRL lease), over TLS when `tls` is set
/// (the config then carries `sslmode=require`); its driver task logs how it ended as `what`.
pub(crate) async fn connect_one(
    cfg: &tokio_postgres::Config,
    tls: Option<&MakeRustls>,
    what: &'static str,
) -> Result<tokio_postgres::Client> {
    fn drive<F>(conn: F, what: &'static str)
    where
        F: Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres {what} connection ended");
            }
        });
    }
    match tls {
        Some(t) => {
            let (client, conn) = cfg.connect(t.clone()).await.map_err(db)?;
            drive(conn, what);
            Ok(client)
        }
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(db)?;
            drive(conn, what);
            Ok(client)
        }
    }
}

/// `[store.tls]` applied to one role's connection config: TLS is required whatever the URL's
/// `sslmode` said, so a server without TLS is refused rather than used in the clear.
fn require_tls(c: &mut tokio_postgres::Config, tls: Option<&MakeRustls>) {
    if tls.is_some() {
        c.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
}

/// Applies pending migrations as the owner and grants the app role what it needs.
async fn migrate(
    owner: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    app_user: String,
) -> Result<i32> {
    let mut client = connect_one(&owner, tls.as_ref(), "migration").await?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
    )
    .await
    .map_err(db)?;
    // Checked first rather than CREATE ... IF NOT EXISTS, which logs a NOTICE at every start.
    let exists: bool = col(
        &tx.query_one("SELECT to_regclass('certgate_schema') IS NOT NULL", &[])
            .await
            .map_err(db)?,
        0,
    )?;
    if !exists {
        tx.batch_execute(
            "CREATE TABLE certgate_schema (
                version INTEGER PRIMARY KEY, applied_unix BIGINT NOT NULL)",
        )
        .await
        .map_err(db)?;
    }
    let current: i32 = col(
        &tx.query_one("SELECT COALESCE(MAX(version), 0) FROM certgate_schema", &[])
            .await
            .map_err(db)?,
        0,
    )?;
    let mut latest = current;
    for m in MIGRATIONS {
        let version = m.version;
        if version <= current {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(db)?;
        for (table, column) in m.tenant_tables {
            tx.batch_execute(&rls_sql(table, column))
                .await
                .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO certgate_schema (version, applied_unix) VALUES ($1, $2)",
            &[&version, &crate::now_unix()],
        )
        .await
        .map_err(db)?;
        tracing::info!(version, "postgres migration applied");
        latest = version;
    }
    let app = ident(&app_user);
    tx.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA public TO {app};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app};
         REVOKE DELETE, TRUNCATE ON audit, audit_head, status_head FROM {app};
         REVOKE INSERT, UPDATE, DELETE ON certgate_schema FROM {app};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app};"
    ))
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(latest)
}

impl PgStore {
    /// Connects (applying migrations first when `migrate_url` is set) and checks that the app
    /// role is subject to row-level security and the schema is current.
    pub fn connect(cfg: &PgConfig) -> Result<Self> {
        cfg.check().map_err(CoreError::Store)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("certgate-pg")
            .enable_all()
            .build()
            .map_err(|e| CoreError::Store(format!("postgres runtime: {e}")))?;
        let handle = rt.handle().clone();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let options = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={idle}",
            ms = cfg.timeout_ms,
            idle = cfg.timeout_ms.saturating_mul(4)
        );
        let tls = cfg
            .tls
            .as_ref()
            .map(PgTlsConfig::app_connector)
            .transpose()?;
        let migrate_tls = match (&cfg.tls, &cfg.migrate_url) {
            (Some(t), Some(_)) => Some(t.migrate_connector()?),
            _ => None,
        };
        let mut app = tokio_postgres::Config::from_str(&cfg.url)
            .map_err(|e| CoreError::Store(format!("[store] url: {e}")))?;
        require_tls(&mut app, tls.as_ref());
        app.options(&options)
            .application_name(&cfg.application_name)
            .connect_timeout(timeout);
        if let Some(pw) = read_password(cfg.password_file.as_ref(), cfg.password_env.as_ref())? {
            app.password(&*pw);
        }
        let app_user = app.get_user().unwrap_or_default().to_owned();
        let owner = match &cfg.migrate_url {
            Some(u) => {
                let mut o = tokio_postgres::Config::from_str(u)
                    .map_err(|e| CoreError::Store(format!("[store] migrate_url: {e}")))?;
                require_tls(&mut o, migrate_tls.as_ref());
                o.application_name(format!("{}-migrate", cfg.application_name))
                    .connect_timeout(timeout);
                if let Some(pw) = read_password(
                    cfg.migrate_password_file.as_ref(),
                    cfg.migrate_password_env.as_ref(),
                )? {
                    o.password(&*pw);
                }
                Some(o)
            }
            None => None,
        };
        let mut lease_cfg = app.clone();
        // The lease session waits for another core's shard lock at most half the call bound:
        // a wait cut short by the call timeout could still be granted afterwards, leaving a
        // lock this core does not know it holds.
        let half = (cfg.timeout_ms / 2).max(50);
        lease_cfg
            .application_name(format!("{}-crl-lease", cfg.application_name))
            .options(format!(
                "-c statement_timeout={half} -c lock_timeout={half} -c idle_in_transaction_session_timeout={idle}",
                idle = cfg.timeout_ms.saturating_mul(4)
            ));
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &tls {
            Some(t) => Manager::from_config(app, t.clone(), mgr_cfg),
            None => Manager::from_config(app, NoTls, mgr_cfg),
        };
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| CoreError::Store(format!("postgres pool: {e}")))?;
        let store = Self {
            rt: Some(rt),
            handle,
            pool,
            lease: Arc::new(tokio::sync::Mutex::new(Lease {
                client: None,
                held: HashMap::new(),
            })),
            lease_cfg,
            tls,
            lease_ttl: Duration::from_secs(cfg.crl_lease_secs.max(1)),
            // Migrations may take longer than one call; the per-call bound applies after.
            timeout: Duration::from_secs(120),
        };
        if let Some(owner) = owner {
            let user = app_user.clone();
            store.run(migrate(owner, migrate_tls, user))?;
        }
        let pool = store.pool.clone();
        let (version, privileged): (i32, bool) = store.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let r = client
                .query_one(
                    "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
                    &[],
                )
                .await
                .map_err(db)?;
            let privileged: bool = col(&r, 0)?;
            let v = client
                .query_one("SELECT COALESCE(MAX(version), 0) FROM certgate_schema", &[])
                .await
                .map_err(|e| {
                    CoreError::Store(format!(
                        "no certgate schema in the database (set [store] migrate_url): {}",
                        db(e)
                    ))
                })?;
            Ok((col(&v, 0)?, privileged))
        })?;
        if privileged {
            return Err(CoreError::Store(format!(
                "postgres role {app_user:?} is a superuser or has BYPASSRLS; row-level security \
                 would not apply. Connect as an ordinary app role (docs/postgres.md)"
            )));
        }
        let want = MIGRATIONS.last().map_or(0, |m| m.version);
        if version != want {
            return Err(CoreError::Store(format!(
                "postgres schema is at version {version}, this core needs {want} \
                 (set [store] migrate_url to apply migrations)"
            )));
        }
        let mut store = store;
        store.timeout = timeout;
        tracing::info!(
            pool_size = cfg.pool_size,
            schema = version,
            "postgres store ready"
        );
        Ok(store)
    }

    /// Runs a future on the store's runtime and waits for it, bounded by the call timeout.
    /// Valid from any thread: async workers inside `block_in_place`, blocking threads, or
    /// threads with no runtime at all.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(CoreError::Store(format!(
                    "postgres call exceeded {} ms",
                    timeout.as_millis()
                ))),
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| CoreError::Store("postgres runtime stopped".into()))?
    }

    /// Test and operations hook: runs SQL under a scope (`*` for all tenants) and returns the
    /// rows' first columns as text. Used by the tests to look at what the database holds.
    #[doc(hidden)]
    pub fn query_text(&self, scope: &str, sql: &str) -> Result<Vec<String>> {
        let sql = sql.to_owned();
        in_tx!(self, scope.to_owned(), |tx| {
            let rows = tx.simple_query(&sql).await.map_err(db)?;
            let mut out = Vec::new();
            for m in rows {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    out.push(r.get(0).unwrap_or_default().to_owned());
                }
            }
            Ok(out)
        })
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Appends an audit record inside the caller's transaction. The chain head row is locked until
/// that transaction ends, so concurrent appends (from any core) queue and each links to the
/// previous committed record; if the transaction rolls back, so does its record.
pub(crate) async fn append(tx: &deadpool_postgres::Transaction<'_>, e: &AuditEntry) -> Result<u64> {
    let head = tx
        .query_one(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(db)?;
    let last: i64 = col(&head, 0)?;
    let prev = hash32(col::<&[u8]>(&head, 1)?)?;
    let seq = last as u64 + 1;
    let time = rfc3339_now();
    let hash = record_hash(seq, &time, &prev, &e.kind, &e.tenant, &e.actor, &e.details);
    let seq_i = seq as i64;
    tx.execute(
        "INSERT INTO audit (seq, time, prev, kind, tenant, actor, details, hash)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        &[
            &seq_i,
            &time,
            &prev.as_slice(),
            &e.kind,
            &e.tenant,
            &e.actor,
            &e.details,
            &hash.as_slice(),
        ],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&seq_i, &hash.as_slice()],
    )
    .await
    .map_err(db)?;
    Ok(seq)
}

const TENANT_COLS: &str = "name, public_base_url, default_profile, active_issuer_id";

fn tenant_row(r: &Row) -> Result<TenantRec> {
    Ok(TenantRec {
        name: col(r, 0)?,
        public_base_url: col(r, 1)?,
        default_profile: col(r, 2)?,
        active_issuer_id: col(r, 3)?,
    })
}

const PROFILE_COLS: &str = "tenant, name, version, body_json, created_unix";

fn profile_row(r: &Row) -> Result<ProfileRec> {
    Ok(ProfileRec {
        tenant: col(r, 0)?,
        name: col(r, 1)?,
        version: u32_col(r, 2)?,
        body_json: col(r, 3)?,
        created_unix: col(r, 4)?,
    })
}

const CA_COLS: &str = "ca_id, tenant, kind, parent_ca_id, cert_der, signer_key_id, key_type, state, not_after_unix, created_unix";

fn ca_row(r: &Row) -> Result<CaRec> {
    Ok(CaRec {
        ca_id: col(r, 0)?,
        tenant: col(r, 1)?,
        kind: col(r, 2)?,
        parent_ca_id: col(r, 3)?,
        cert_der: col(r, 4)?,
        signer_key_id: col(r, 5)?,
        key_type: col(r, 6)?,
        state: col(r, 7)?,
        not_after_unix: col(r, 8)?,
        created_unix: col(r, 9)?,
    })
}

const INTENT_COLS: &str = "tenant, idem_key, request_hash, serial_hex, tbs_der, issuer_id, profile, profile_version, created_unix";

fn intent_row(r: &Row) -> Result<IntentRec> {
    Ok(IntentRec {
        tenant: col(r, 0)?,
        idem_key: col(r, 1)?,
        request_hash: col(r, 2)?,
        serial_hex: col(r, 3)?,
        tbs_der: col(r, 4)?,
        issuer_id: col(r, 5)?,
        profile: col(r, 6)?,
        profile_version: u32_col(r, 7)?,
        created_unix: col(r, 8)?,
    })
}

pub(crate) const CERT_COLS: &str = "tenant, serial_hex, cert_der, issuer_id, profile, profile_version, not_before_unix, not_after_unix, idem_key, revoked, revoked_at_unix, revocation_reason";

pub(crate) fn cert_row(r: &Row) -> Result<CertRec> {
    Ok(CertRec {
        tenant: col(r, 0)?,
        serial_hex: col(r, 1)?,
        cert_der: col(r, 2)?,
        issuer_id: col(r, 3)?,
        profile: col(r, 4)?,
        profile_version: u32_col(r, 5)?,
        not_before_unix: col(r, 6)?,
        not_after_unix: col(r, 7)?,
        idem_key: col(r, 8)?,
        revoked: col(r, 9)?,
        revoked_at_unix: col(r, 10)?,
        revocation_reason: u32_col(r, 11)?,
    })
}

const CEREMONY_COLS: &str =
    "id, action, digest, required, approved_by, state, result_ca_ids, created_unix";

fn ceremony_row(r: &Row) -> Result<CeremonyRec> {
    let approved: String = col(r, 4)?;
    let results: String = col(r, 6)?;
    Ok(CeremonyRec {
        id: col(r, 0)?,
        action: col(r, 1)?,
        digest: col(r, 2)?,
        required: u32_col(r, 3)?,
        approved_by: serde_json::from_str(&approved)
            .map_err(|e| CoreError::Store(e.to_string()))?,
        state: col(r, 5)?,
        result_ca_ids: serde_json::from_str(&results)
            .map_err(|e| CoreError::Store(e.to_string()))?,
        created_unix: col(r, 7)?,
    })
}

/// Parameters as the slice tokio-postgres takes.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

impl Store for PgStore {
    // Every sub-store is implemented on PostgreSQL (pg_acme, pg_cmp, pg_scep, pg_pending).

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
        let (t, audit) = (t.clone(), audit.clone());
        in_tx!(self, tenant_scope(&t.name), |tx| {
            let r = tx
                .query_one(
                    "INSERT INTO tenants (name, public_base_url, default_profile, active_issuer_id)
                     VALUES ($1,$2,$3,$4)
                     ON CONFLICT (name) DO UPDATE SET public_base_url = excluded.public_base_url,
                       default_profile = excluded.default_profile,
                       active_issuer_id = CASE WHEN excluded.active_issuer_id = ''
                         THEN tenants.active_issuer_id ELSE excluded.active_issuer_id END
                     RETURNING (xmax = 0)",
                    &[
                        &t.name,
                        &t.public_base_url,
                        &t.default_profile,
                        &t.active_issuer_id,
                    ],
                )
                .await
                .map_err(db)?;
            let created: bool = col(&r, 0)?;
            append(&tx, &audit).await?;
            Ok(created)
        })
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRec>> {
        let name = name.to_owned();
        in_tx!(self, tenant_scope(&name), |tx| {
            tx.query_opt(
                &format!("SELECT {TENANT_COLS} FROM tenants WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(tenant_row)
            .transpose()
        })
    }

    fn list_tenants(&self) -> Result<Vec<TenantRec>> {
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                &format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name"),
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(tenant_row)
            .collect()
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
        in_tx!(self, tenant_scope(&tenant), |tx| {
            // Two cores adding a version at once: the second waits here, then numbers after.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('certgate.profile'), hashtext($1 || '/' || $2))",
                &[&tenant, &name],
            )
            .await
            .map_err(db)?;
            let r = tx
                .query_one(
                    "INSERT INTO profiles (tenant, name, version, body_json, created_unix)
                     SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4 FROM profiles
                     WHERE tenant = $1 AND name = $2
                     RETURNING version",
                    &[&tenant, &name, &body_json, &now],
                )
                .await
                .map_err(db)?;
            let version = u32_col(&r, 0)?;
            let mut audit = audit.clone();
            if let Ok(serde_json::Value::Object(mut m)) =
                serde_json::from_str::<serde_json::Value>(&audit.details)
            {
                m.insert("version".into(), version.into());
                audit.details = serde_json::Value::Object(m).to_string();
            }
            append(&tx, &audit).await?;
            Ok(ProfileRec {
                tenant: tenant.clone(),
                name: name.clone(),
                version,
                body_json: body_json.clone(),
                created_unix: now,
            })
        })
    }

    fn latest_profile(&self, tenant: &str, name: &str) -> Result<Option<ProfileRec>> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {PROFILE_COLS} FROM profiles WHERE tenant = $1 AND name = $2
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant, &name],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(profile_row)
            .transpose()
        })
    }

    fn profile_versions(&self, tenant: &str, name: &str) -> Result<Vec<ProfileRec>> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query(
                &format!(
                    "SELECT {PROFILE_COLS} FROM profiles WHERE tenant = $1 AND name = $2
                     ORDER BY version"
                ),
                &[&tenant, &name],
            )
            .await
            .map_err(db)?
            .iter()
            .map(profile_row)
            .collect()
        })
    }

    fn latest_profiles(&self, tenant: &str) -> Result<Vec<ProfileRec>> {
        let tenant = tenant.to_owned();
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query(
                "SELECT DISTINCT ON (name) tenant, name, version, body_json, created_unix
                 FROM profiles WHERE tenant = $1 ORDER BY name, version DESC",
                &[&tenant],
            )
            .await
            .map_err(db)?
            .iter()
            .map(profile_row)
            .collect()
        })
    }

    fn put_ca(&self, ca: &CaRec, activate: bool, audit: &AuditEntry) -> Result<()> {
        let (ca, audit) = (ca.clone(), audit.clone());
        in_tx!(self, ALL.to_owned(), |tx| {
            let params: Params = vec![
                &ca.ca_id,
                &ca.tenant,
                &ca.kind,
                &ca.parent_ca_id,
                &ca.cert_der,
                &ca.signer_key_id,
                &ca.key_type,
                &ca.state,
                &ca.not_after_unix,
                &ca.created_unix,
            ];
            tx.execute(
                &format!("INSERT INTO cas ({CA_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"),
                &params,
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CoreError::exists("ca.exists", format!("CA {:?} already exists", ca.ca_id))
                } else {
                    db(e)
                }
            })?;
            if activate {
                let n = tx
                    .execute(
                        "UPDATE tenants SET active_issuer_id = $1 WHERE name = $2",
                        &[&ca.ca_id, &ca.tenant],
                    )
                    .await
                    .map_err(db)?;
                if n != 1 {
                    return Err(CoreError::not_found("tenant.unknown", "no such tenant"));
                }
            }
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn get_ca(&self, ca_id: &str) -> Result<Option<CaRec>> {
        let ca_id = ca_id.to_owned();
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query_opt(
                &format!("SELECT {CA_COLS} FROM cas WHERE ca_id = $1"),
                &[&ca_id],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(ca_row)
            .transpose()
        })
    }

    fn list_cas(&self, tenant: Option<&str>) -> Result<Vec<CaRec>> {
        let tenant = tenant.map(str::to_owned);
        in_tx!(self, ALL.to_owned(), |tx| {
            let rows = match &tenant {
                Some(t) => tx
                    .query(
                        &format!(
                            "SELECT {CA_COLS} FROM cas WHERE tenant = $1 ORDER BY created_unix, ca_id"
                        ),
                        &[t],
                    )
                    .await
                    .map_err(db)?,
                None => tx
                    .query(
                        &format!("SELECT {CA_COLS} FROM cas ORDER BY created_unix, ca_id"),
                        &[],
                    )
                    .await
                    .map_err(db)?,
            };
            rows.iter().map(ca_row).collect()
        })
    }

    fn set_ca_state(&self, ca_id: &str, state: &str, audit: &AuditEntry) -> Result<()> {
        let (ca_id, state, audit) = (ca_id.to_owned(), state.to_owned(), audit.clone());
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.execute(
                "UPDATE cas SET state = $1 WHERE ca_id = $2",
                &[&state, &ca_id],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
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
        in_tx!(self, ALL.to_owned(), |tx| {
            let n = tx
                .execute(
                    "UPDATE cas SET state = 'active' WHERE ca_id = $1 AND tenant = $2 AND state = 'staged'",
                    &[&staged, &tenant],
                )
                .await
                .map_err(db)?;
            if n != 1 {
                return Err(CoreError::not_found(
                    "ca.rollover_none",
                    "no CA is staged for rollover",
                ));
            }
            if !previous.is_empty() {
                tx.execute(
                    "UPDATE cas SET state = 'retiring' WHERE ca_id = $1 AND tenant = $2",
                    &[&previous, &tenant],
                )
                .await
                .map_err(db)?;
            }
            let n = tx
                .execute(
                    "UPDATE tenants SET active_issuer_id = $1 WHERE name = $2",
                    &[&staged, &tenant],
                )
                .await
                .map_err(db)?;
            if n != 1 {
                return Err(CoreError::not_found("tenant.unknown", "no such tenant"));
            }
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn get_intent(&self, tenant: &str, idem_key: &str) -> Result<Option<IntentRec>> {
        let (tenant, key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!("SELECT {INTENT_COLS} FROM intents WHERE tenant = $1 AND idem_key = $2"),
                &[&tenant, &key],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(intent_row)
            .transpose()
        })
    }

    fn insert_intent(&self, i: &IntentRec, audit: &AuditEntry) -> Result<IntentOutcome> {
        let (i, audit) = (i.clone(), audit.clone());
        in_tx!(self, tenant_scope(&i.tenant), |tx| {
            let version = i64::from(i.profile_version);
            let params: Params = vec![
                &i.tenant,
                &i.idem_key,
                &i.request_hash,
                &i.serial_hex,
                &i.tbs_der,
                &i.issuer_id,
                &i.profile,
                &version,
                &i.created_unix,
            ];
            // The unique keys decide between cores: a concurrent insert of the same key (or
            // serial) waits for the other transaction, then does nothing; the row read next is
            // the winner's. Without a conflict target, a duplicate that collides on the serial
            // index first is handled the same way as one colliding on the key.
            let inserted = tx
                .query_opt(
                    &format!(
                        "INSERT INTO intents ({INTENT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)
                         ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    &params,
                )
                .await
                .map_err(db)?;
            if inserted.is_none() {
                // The conflict may be on the key (a duplicate request: answer with its intent)
                // or only on the serial (a different request reusing a serial: refused).
                let existing = tx
                    .query_opt(
                        &format!(
                            "SELECT {INTENT_COLS} FROM intents WHERE tenant = $1 AND idem_key = $2"
                        ),
                        &[&i.tenant, &i.idem_key],
                    )
                    .await
                    .map_err(db)?
                    .ok_or_else(|| serial_taken(&i.serial_hex))?;
                return Ok(IntentOutcome::Exists(intent_row(&existing)?));
            }
            append(&tx, &audit).await?;
            Ok(IntentOutcome::Inserted)
        })
    }

    fn complete_issue(&self, cert: &CertRec, audit: &AuditEntry) -> Result<CertRec> {
        let (cert, audit) = (cert.clone(), audit.clone());
        in_tx!(self, tenant_scope(&cert.tenant), |tx| {
            let version = i64::from(cert.profile_version);
            let params: Params = vec![
                &cert.tenant,
                &cert.serial_hex,
                &cert.cert_der,
                &cert.issuer_id,
                &cert.profile,
                &version,
                &cert.not_before_unix,
                &cert.not_after_unix,
                &cert.idem_key,
            ];
            let inserted = tx
                .query_opt(
                    &format!(
                        "INSERT INTO certificates ({CERT_COLS})
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,false,0,0)
                         ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    &params,
                )
                .await
                .map_err(db)?;
            if inserted.is_none() {
                // Another call (on this core or another) stored it first: that is the
                // certificate. No row under the key: the conflict was a serial reused by a
                // different request, which is refused.
                let existing = tx
                    .query_opt(
                        &format!(
                            "SELECT {CERT_COLS} FROM certificates WHERE tenant = $1 AND idem_key = $2"
                        ),
                        &[&cert.tenant, &cert.idem_key],
                    )
                    .await
                    .map_err(db)?
                    .ok_or_else(|| serial_taken(&cert.serial_hex))?;
                return cert_row(&existing);
            }
            append(&tx, &audit).await?;
            Ok(cert.clone())
        })
    }

    fn cert_by_key(&self, tenant: &str, idem_key: &str) -> Result<Option<CertRec>> {
        let (tenant, key) = (tenant.to_owned(), idem_key.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {CERT_COLS} FROM certificates WHERE tenant = $1 AND idem_key = $2"
                ),
                &[&tenant, &key],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(cert_row)
            .transpose()
        })
    }

    fn get_cert(&self, tenant: &str, serial_hex: &str) -> Result<Option<CertRec>> {
        let (tenant, serial) = (tenant.to_owned(), serial_hex.to_owned());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            tx.query_opt(
                &format!(
                    "SELECT {CERT_COLS} FROM certificates WHERE tenant = $1 AND serial_hex = $2"
                ),
                &[&tenant, &serial],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(cert_row)
            .transpose()
        })
    }

    fn revoke(
        &self,
        tenant: &str,
        op: &RevokeOp,
        audit: &AuditEntry,
    ) -> Result<Option<(CertRec, bool)>> {
        let (tenant, op, audit) = (tenant.to_owned(), op.clone(), audit.clone());
        in_tx!(self, tenant_scope(&tenant), |tx| {
            let reused = || {
                CoreError::exists(
                    "idempotency.key_reused",
                    "this idempotency key was already used for a different request",
                )
            };
            let used: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT request_hash FROM idempotency
                     WHERE tenant = $1 AND op = 'revoke' AND idem_key = $2",
                    &[&tenant, &op.idem_key],
                )
                .await
                .map_err(db)?
                .map(|r| col(&r, 0))
                .transpose()?;
            if used.as_ref().is_some_and(|h| *h != op.request_hash) {
                return Err(reused());
            }
            // The row lock serialises revocations of one certificate across cores.
            let Some(row) = tx
                .query_opt(
                    &format!(
                        "SELECT {CERT_COLS} FROM certificates
                         WHERE tenant = $1 AND serial_hex = $2 FOR UPDATE"
                    ),
                    &[&tenant, &op.serial_hex],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let cert = cert_row(&row)?;
            if used.is_none() {
                let fresh = tx
                    .query_opt(
                        "INSERT INTO idempotency (tenant, op, idem_key, request_hash, target, created_unix)
                         VALUES ($1, 'revoke', $2, $3, $4, $5)
                         ON CONFLICT (tenant, op, idem_key) DO NOTHING RETURNING 1",
                        &[&tenant, &op.idem_key, &op.request_hash, &op.serial_hex, &op.now],
                    )
                    .await
                    .map_err(db)?;
                if fresh.is_none() {
                    let h: Vec<u8> = col(
                        &tx.query_one(
                            "SELECT request_hash FROM idempotency
                             WHERE tenant = $1 AND op = 'revoke' AND idem_key = $2",
                            &[&tenant, &op.idem_key],
                        )
                        .await
                        .map_err(db)?,
                        0,
                    )?;
                    if h != op.request_hash {
                        return Err(reused());
                    }
                }
            }
            if cert.revoked {
                return Ok(Some((cert, true)));
            }
            let reason = i64::from(op.reason);
            tx.execute(
                "UPDATE certificates SET revoked = true, revoked_at_unix = $1, revocation_reason = $2
                 WHERE tenant = $3 AND serial_hex = $4",
                &[&op.now, &reason, &tenant, &op.serial_hex],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(Some((
                CertRec {
                    revoked: true,
                    revoked_at_unix: op.now,
                    revocation_reason: op.reason,
                    ..cert
                },
                false,
            )))
        })
    }

    fn insert_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()> {
        let (c, audit) = (c.clone(), audit.clone());
        in_tx!(self, ALL.to_owned(), |tx| {
            let approved = serde_json::to_string(&c.approved_by).unwrap_or_default();
            let results = serde_json::to_string(&c.result_ca_ids).unwrap_or_default();
            let required = i64::from(c.required);
            let params: Params = vec![
                &c.id,
                &c.action,
                &c.digest,
                &required,
                &approved,
                &c.state,
                &results,
                &c.created_unix,
            ];
            tx.execute(
                &format!(
                    "INSERT INTO ceremonies ({CEREMONY_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
                ),
                &params,
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn update_ceremony(&self, c: &CeremonyRec, audit: &AuditEntry) -> Result<()> {
        let (c, audit) = (c.clone(), audit.clone());
        in_tx!(self, ALL.to_owned(), |tx| {
            let approved = serde_json::to_string(&c.approved_by).unwrap_or_default();
            let results = serde_json::to_string(&c.result_ca_ids).unwrap_or_default();
            tx.execute(
                "UPDATE ceremonies SET approved_by = $1, state = $2, result_ca_ids = $3 WHERE id = $4",
                &[&approved, &c.state, &results, &c.id],
            )
            .await
            .map_err(db)?;
            append(&tx, &audit).await?;
            Ok(())
        })
    }

    fn get_ceremony(&self, id: &str) -> Result<Option<CeremonyRec>> {
        let id = id.to_owned();
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query_opt(
                &format!("SELECT {CEREMONY_COLS} FROM ceremonies WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(ceremony_row)
            .transpose()
        })
    }

    fn list_ceremonies(&self) -> Result<Vec<CeremonyRec>> {
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                &format!("SELECT {CEREMONY_COLS} FROM ceremonies ORDER BY created_unix, id"),
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(ceremony_row)
            .collect()
        })
    }

    fn append_audit(&self, audit: &AuditEntry) -> Result<u64> {
        let audit = audit.clone();
        in_tx!(self, ALL.to_owned(), |tx| { append(&tx, &audit).await })
    }

    fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        in_tx!(self, ALL.to_owned(), |tx| {
            let rows = tx
                .query(
                    "SELECT seq, time, prev, kind, tenant, actor, details, hash, signature
                     FROM audit ORDER BY seq",
                    &[],
                )
                .await
                .map_err(db)?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRecord {
                        seq: col::<i64>(r, 0)? as u64,
                        time: col(r, 1)?,
                        prev: hash32(col::<&[u8]>(r, 2)?)?,
                        kind: col(r, 3)?,
                        tenant: col(r, 4)?,
                        actor: col(r, 5)?,
                        details: col(r, 6)?,
                        hash: hash32(col::<&[u8]>(r, 7)?)?,
                        signature: col(r, 8)?,
                    })
                })
                .collect()
        })
    }

    fn unsigned_audit(&self, limit: usize) -> Result<Vec<(u64, [u8; 32])>> {
        let limit = limit as i64;
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query(
                "SELECT seq, hash FROM audit WHERE signature IS NULL ORDER BY seq LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((col::<i64>(r, 0)? as u64, hash32(col::<&[u8]>(r, 1)?)?)))
            .collect()
        })
    }

    fn set_audit_signatures(&self, sigs: &[(u64, Vec<u8>)]) -> Result<()> {
        let sigs = sigs.to_vec();
        in_tx!(self, ALL.to_owned(), |tx| {
            for (seq, sig) in &sigs {
                // Two cores may sign the same record; the first signature stays (the trigger
                // refuses to replace one), the second is skipped.
                tx.execute(
                    "UPDATE audit SET signature = $1 WHERE seq = $2 AND signature IS NULL",
                    &[sig, &(*seq as i64)],
                )
                .await
                .map_err(db)?;
            }
            Ok(())
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                .await
                .map_err(db)?
                .map(|r| col(&r, 0))
                .transpose()
        })
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        in_tx!(self, ALL.to_owned(), |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }
}
