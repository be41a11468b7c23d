//! Edge state shared by a fleet of edges, in Redis (issue 8, "Scale-out").
//!
//! One edge keeps its nonces, rate limits and OCSP responses in process. Several edges behind a
//! load balancer must agree on three things, so with `[redis]` configured they keep them in one
//! Redis:
//!
//! - ACME nonce redemption ([`redis_nonce`]): `SET key NX EXAT expiry`, so any edge accepts any
//!   edge's nonce exactly once. Redis unreachable → the nonce is refused (`badNonce`, fail closed).
//! - Rate limits ([`redis_ratelimit`]): GCRA in a Lua script, one key per bucket holding the
//!   theoretical arrival time, so N edges together enforce one limit. Redis unreachable →
//!   `fallback = "closed"` (refuse with `rateLimited`) or `"local"` (the in-process limiter).
//! - An optional OCSP tier ([`redis_ocsp`]) between the edge's cache and the core. Redis
//!   unreachable → the edge keeps serving from its own cache and the core.
//!
//! Without `[redis]` none of this runs and the edge behaves as a single process (`certgate up`).
//!
//! Connections: a small bounded pool of multiplexed [`ConnectionManager`]s, created lazily (an
//! edge starts even if Redis is down) and rebuilt after errors, so a restarted Redis is picked up
//! without restarting the edge. Every operation has a deadline (`op_timeout_ms`); none waits
//! longer. The Redis password comes from a file, is held in `Zeroizing` and never logged.

pub mod redis_nonce;
pub mod redis_ocsp;
pub mod redis_ratelimit;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Redis operations, by `protocol` (`acme`, `ocsp`), `op` (`nonce_redeem`, `rate_limit`,
/// `rate_refund`, `ocsp_get`, `ocsp_put`) and `outcome` (`ok`, `replay`, `limited`, `hit`,
/// `miss`, `stale`, `oversize`, `error`, `timeout`).
pub const REDIS_OPS_TOTAL: &str = "certgate_edge_redis_ops_total";
/// Decisions taken without Redis because it failed, by `protocol`, `op` and `outcome`
/// (`closed`: refused; `local`: the in-process limiter decided; `core`: asked the core).
pub const REDIS_FALLBACKS_TOTAL: &str = "certgate_edge_redis_fallbacks_total";

/// What the rate limiter does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refuse with the protocol's rate-limit error (`rateLimited`, Retry-After). The default:
    /// with `[redis]` the ACME nonces fail closed during the outage anyway, so refusing costs no
    /// extra availability and never lets a client exceed a limit.
    #[default]
    Closed,
    /// Each edge enforces the limit alone with the in-process limiter: the fleet as a whole may
    /// then admit up to N times the limit (N edges) until Redis is back.
    Local,
}

/// `[redis]` in edge.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS, needs `tls_ca_file`) or
    /// `redis+unix:///path`. Must not carry a password: use `password_file`, so the secret
    /// stays out of the config text and logs.
    pub url: String,
    /// With `rediss://`: PEM CA certificate(s) the server's certificate must chain to (the
    /// system roots are not enough to pin the fleet's Redis). The server certificate must name
    /// the URL's host (DNS name or IP address).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: PEM client certificate chain (Redis `tls-auth-clients yes`).
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Its private key (PEM), read into a zeroizing buffer.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// A file holding the Redis password (`requirepass`/ACL), read once at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Prefix of every key, so several fleets (or tests) can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Multiplexed connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Commands in flight per connection; beyond, callers wait (then time out).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Deadline of every Redis operation, milliseconds (connecting included).
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// After a failed operation, a connection is rebuilt no sooner than this, milliseconds.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    /// Rate limits while Redis is unreachable: `closed` (default) or `local`.
    #[serde(default)]
    pub rate_limit_fallback: Fallback,
    /// Use Redis as a shared OCSP tier between the edge cache and the core.
    #[serde(default = "default_true")]
    pub ocsp_tier: bool,
    /// Largest OCSP response stored in or read from Redis, bytes.
    #[serde(default = "default_ocsp_max")]
    pub ocsp_max_value_bytes: usize,
    /// Longest time an OCSP response stays in Redis, seconds (never past its nextUpdate).
    #[serde(default = "default_ocsp_ttl")]
    pub ocsp_max_ttl_seconds: u64,
    /// Clock skew tolerated between edges and Redis for nonce expiry, seconds: a redeemed nonce
    /// is remembered this long after its expiry.
    #[serde(default = "default_skew")]
    pub nonce_clock_skew_seconds: u64,
}

fn default_prefix() -> String {
    "certgate".into()
}
fn default_pool_size() -> usize {
    4
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_op_timeout_ms() -> u64 {
    250
}
fn default_reconnect_ms() -> u64 {
    200
}
fn default_true() -> bool {
    true
}
fn default_ocsp_max() -> usize {
    16 * 1024
}
fn default_ocsp_ttl() -> u64 {
    3600
}
fn default_skew() -> u64 {
    60
}

impl RedisConfig {
    /// Bounds must be positive; the URL must parse and carry no password.
    pub fn validate(&self) -> Result<(), String> {
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("[redis] url is not a Redis URL: {}", kind(&e)))?;
        if info.redis_settings().password().is_some() {
            return Err("[redis] url must not carry a password; use password_file".into());
        }
        match info.addr() {
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err("[redis] url: #insecure (no certificate check) is refused".into());
            }
            redis::ConnectionAddr::TcpTls { .. } => {
                if self.tls_ca_file.is_none() {
                    return Err("[redis] a rediss:// url needs tls_ca_file".into());
                }
                if self.tls_client_cert_file.is_some() != self.tls_client_key_file.is_some() {
                    return Err(
                        "[redis] set both tls_client_cert_file and tls_client_key_file, or neither"
                            .into(),
                    );
                }
            }
            _ => {
                // TLS files beside a plain URL mean TLS was intended: say so rather than
                // connect in the clear.
                if self.tls_ca_file.is_some()
                    || self.tls_client_cert_file.is_some()
                    || self.tls_client_key_file.is_some()
                {
                    return Err("[redis] tls_* files need a rediss:// url".into());
                }
            }
        }
        if self.pool_size == 0
            || self.pool_size > 64
            || self.max_in_flight == 0
            || self.op_timeout_ms == 0
            || self.reconnect_ms == 0
            || self.ocsp_max_value_bytes == 0
            || self.ocsp_max_ttl_seconds == 0
        {
            return Err("[redis] bounds must be positive (and pool_size at most 64)".into());
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("[redis] key_prefix must be 1-64 characters of [A-Za-z0-9._-]".into());
        }
        Ok(())
    }

    /// Makes `password_file` absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.password_file,
            &mut self.tls_ca_file,
            &mut self.tls_client_cert_file,
            &mut self.tls_client_key_file,
        ] {
            if let Some(p) = p.as_mut()
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
    }

    /// The client for `info`: over TLS with the configured CA (and client certificate) for a
    /// `rediss://` URL, plain otherwise.
    fn client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, SharedError> {
        let Some(ca) = &self.tls_ca_file else {
            return redis::Client::open(info).map_err(|e| SharedError::Config(kind(&e).to_owned()));
        };
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| SharedError::File {
                path: p.clone(),
                source,
            })
        };
        let root_cert = read(ca)?;
        // Checked here too: redis would otherwise fall back to the system roots for a file
        // without certificates.
        if !root_cert
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(SharedError::Config(format!(
                "no PEM certificate in {}",
                ca.display()
            )));
        }
        let client_tls = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(c), Some(k)) => {
                let key = Zeroizing::new(read(k)?);
                Some(redis::ClientTlsConfig {
                    client_cert: read(c)?,
                    // The redis client keeps its own copy for reconnecting (not zeroized by
                    // us, as with the password); ours is wiped when `key` drops.
                    client_key: key.to_vec(),
                })
            }
            _ => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert: Some(root_cert),
            },
        )
        .map_err(|e| SharedError::Config(format!("redis TLS: {}", kind(&e))))
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The configuration cannot be turned into a client.
    #[error("redis config: {0}")]
    Config(String),
    /// The password file could not be read.
    #[error("cannot read the redis password file {path}: {source}")]
    Password {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A TLS file (`tls_ca_file`, client certificate or key) could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The operation did not finish within `op_timeout_ms`.
    #[error("redis operation timed out")]
    Timeout,
    /// Redis refused or the connection failed (kind only: messages may echo arguments).
    #[error("redis error: {0}")]
    Redis(&'static str),
}

impl SharedError {
    /// The metric outcome for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            SharedError::Timeout => "timeout",
            _ => "error",
        }
    }
}

/// One pool slot: a connection manager and when it may next be rebuilt.
struct Slot {
    conn: RwLock<Option<ConnectionManager>>,
    /// Milliseconds since the pool's epoch before which no rebuild is attempted.
    retry_at_ms: AtomicU64,
}

/// A bounded pool of lazily created, self-healing multiplexed Redis connections.
pub struct RedisPool {
    client: redis::Client,
    manager_cfg: ConnectionManagerConfig,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    op_timeout: Duration,
    reconnect: Duration,
    epoch: Instant,
    prefix: String,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("slots", &self.slots.len())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisPool {
    /// A pool for `cfg`. Does not connect: the first operation does (so an edge starts while
    /// Redis is down, and its requests fail closed until Redis is there).
    pub fn new(cfg: &RedisConfig) -> Result<Arc<Self>, SharedError> {
        cfg.validate().map_err(SharedError::Config)?;
        metrics::describe_counter!(REDIS_OPS_TOTAL, "Redis operations of the fleet state");
        metrics::describe_counter!(
            REDIS_FALLBACKS_TOTAL,
            "Decisions taken without Redis because it failed"
        );
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| SharedError::Config(kind(&e).to_owned()))?;
        if let Some(path) = &cfg.password_file {
            let raw =
                Zeroizing::new(std::fs::read(path).map_err(|source| SharedError::Password {
                    path: path.clone(),
                    source,
                })?);
            // The redis client keeps its own copy for reconnecting (not zeroized by us); ours
            // is wiped when `raw` drops.
            let text = std::str::from_utf8(&raw)
                .map_err(|_| SharedError::Config("the redis password is not UTF-8".into()))?;
            let settings = info.redis_settings().clone().set_password(text.trim_end());
            info = info.set_redis_settings(settings);
        }
        let client = cfg.client(info)?;
        let op_timeout = Duration::from_millis(cfg.op_timeout_ms);
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(cfg.reconnect_ms))
            .set_concurrency_limit(cfg.max_in_flight);
        let slots = (0..cfg.pool_size)
            .map(|_| Slot {
                conn: RwLock::new(None),
                retry_at_ms: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Self {
            client,
            manager_cfg,
            slots,
            next: AtomicUsize::new(0),
            op_timeout,
            reconnect: Duration::from_millis(cfg.reconnect_ms),
            epoch: Instant::now(),
            prefix: cfg.key_prefix.clone(),
        }))
    }

    /// The key prefix (`certgate`): every key is `PREFIX:kind:…`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A connection of the next slot, created if absent (no network I/O here).
    fn conn(&self) -> Result<(usize, ConnectionManager), SharedError> {
        let n = self.slots.len();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let live = |j: usize| {
            self.slots[j]
                .conn
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        if let Some(c) = live(i) {
            return Ok((i, c));
        }
        let slot = &self.slots[i];
        if self.now_ms() < slot.retry_at_ms.load(Ordering::Relaxed) {
            // This slot failed a moment ago: borrow another slot's connection if one is up, so
            // one broken connection does not refuse a share of the requests.
            return (1..n)
                .map(|k| (i + k) % n)
                .find_map(|j| live(j).map(|c| (j, c)))
                .ok_or(SharedError::Redis("reconnect backoff"));
        }
        let mut w = slot.conn.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = w.as_ref() {
            return Ok((i, c.clone()));
        }
        let c =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_cfg.clone())
                .map_err(|e| SharedError::Redis(kind(&e)))?;
        *w = Some(c.clone());
        Ok((i, c))
    }

    /// Forgets slot `i`'s connection after a transport failure, so the next use builds a new
    /// one (after the backoff) — whatever state the old one's reconnect logic is in.
    fn discard(&self, i: usize, why: &'static str, detail: Option<String>) {
        let slot = &self.slots[i];
        let had = slot.conn.write().unwrap_or_else(|p| p.into_inner()).take();
        if had.is_some() {
            // Once per failure and backoff, not per request.
            tracing::warn!(
                slot = i,
                error = why,
                detail = detail.as_deref().unwrap_or(""),
                "Redis connection failed; rebuilding it after the backoff"
            );
        }
        let retry = self
            .now_ms()
            .saturating_add(u64::try_from(self.reconnect.as_millis()).unwrap_or(u64::MAX));
        slot.retry_at_ms.store(retry, Ordering::Relaxed);
    }

    /// Runs `op` on a pooled connection within the operation deadline. Transport failures and
    /// timeouts discard the connection; errors Redis answered with (a script error) do not.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (i, conn) = self.conn()?;
        match tokio::time::timeout(self.op_timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_unrecoverable_error() || e.is_timeout() {
                    self.discard(i, kind(&e), io_detail(&e));
                }
                Err(SharedError::Redis(kind(&e)))
            }
            Err(_) => {
                self.discard(i, "timeout", None);
                Err(SharedError::Timeout)
            }
        }
    }
}

/// A fixed name for a Redis error (messages may echo arguments, so they are not used).
fn kind(e: &redis::RedisError) -> &'static str {
    use redis::ErrorKind as K;
    match e.kind() {
        K::Parse => "parse",
        K::AuthenticationFailed => "authentication failed",
        K::UnexpectedReturnType => "unexpected return type",
        K::InvalidClientConfig => "invalid client config",
        K::Io => "io",
        K::Client => "client",
        K::Server(_) => "server",
        _ => "other",
    }
}

/// The message of a transport error (a refused connection, a TLS certificate the CA check
/// refused: what an operator needs to fix it). Only I/O errors: they come from the OS or rustls,
/// never echo command arguments.
fn io_detail(e: &redis::RedisError) -> Option<String> {
    (e.kind() == redis::ErrorKind::Io).then(|| e.to_string())
}

/// Counts one Redis operation.
pub(crate) fn count_op(protocol: &'static str, op: &'static str, outcome: &'static str) {
    metrics::counter!(REDIS_OPS_TOTAL, "protocol" => protocol, "op" => op, "outcome" => outcome)
        .increment(1);
}

/// Counts one decision taken without Redis.
pub(crate) fn count_fallback(protocol: &'static str, op: &'static str, outcome: &'static str) {
    metrics::counter!(REDIS_FALLBACKS_TOTAL, "protocol" => protocol, "op" => op, "outcome" => outcome)
        .increment(1);
}

/// Hex of SHA-256 over the parts, NUL-separated: fixed-length key material whatever a client
/// sent (domain names, account ids), so keys are bounded and never need escaping.
pub(crate) fn digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..20])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RedisConfig {
        toml::from_str(&format!("url = {url:?}")).expect("parses")
    }

    #[test]
    fn defaults_and_validation() {
        let c = cfg("redis://127.0.0.1:6379/0");
        assert!(c.validate().is_ok());
        assert_eq!(c.rate_limit_fallback, Fallback::Closed);
        assert!(c.ocsp_tier);
        assert!(cfg("redis://:secret@127.0.0.1:6379").validate().is_err());
        assert!(cfg("http://nope").validate().is_err());
        let mut bad = c.clone();
        bad.key_prefix = "a b".into();
        assert!(bad.validate().is_err());
        bad = c;
        bad.op_timeout_ms = 0;
        assert!(bad.validate().is_err());
        let local: RedisConfig =
            toml::from_str("url = \"redis://h\"\nrate_limit_fallback = \"local\"").expect("parses");
        assert_eq!(local.rate_limit_fallback, Fallback::Local);
        assert!(
            toml::from_str::<RedisConfig>("url = \"redis://h\"\nrate_limit_fallback = \"open\"")
                .is_err()
        );
    }

    #[test]
    fn rediss_needs_a_ca_file_and_never_skips_the_check() {
        let tls = |extra: &str| -> RedisConfig {
            toml::from_str(&format!("url = \"rediss://127.0.0.1:6380/0\"\n{extra}"))
                .expect("parses")
        };
        assert!(tls("tls_ca_file = \"ca.pem\"").validate().is_ok());
        assert!(tls("").validate().is_err(), "no CA: refused");
        assert!(
            tls("tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"c.pem\"")
                .validate()
                .is_err(),
            "certificate without key"
        );
        let insecure: RedisConfig = toml::from_str(
            "url = \"rediss://127.0.0.1:6380/0#insecure\"\ntls_ca_file = \"ca.pem\"",
        )
        .expect("parses");
        assert!(insecure.validate().is_err());
        let plain_with_ca: RedisConfig =
            toml::from_str("url = \"redis://127.0.0.1:6379/0\"\ntls_ca_file = \"ca.pem\"")
                .expect("parses");
        assert!(
            plain_with_ca.validate().is_err(),
            "TLS files need rediss://"
        );
        // Relative TLS paths resolve against the config directory.
        let mut c = tls(
            "tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"c.pem\"\ntls_client_key_file = \"c.key\"",
        );
        c.resolve_paths(Path::new("/etc/certgate"));
        assert_eq!(
            c.tls_ca_file.as_deref(),
            Some(Path::new("/etc/certgate/ca.pem"))
        );
        assert_eq!(
            c.tls_client_key_file.as_deref(),
            Some(Path::new("/etc/certgate/c.key"))
        );
        // A CA file without certificates is refused when the client is built, not trusted as
        // "no roots" (redis would fall back to the system roots).
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"not a certificate").expect("write");
        let mut c = tls(&format!("tls_ca_file = {:?}", ca.display().to_string()));
        c.resolve_paths(dir.path());
        assert!(matches!(RedisPool::new(&c), Err(SharedError::Config(_))));
        let missing = tls("tls_ca_file = \"/nonexistent/ca.pem\"");
        assert!(matches!(
            RedisPool::new(&missing),
            Err(SharedError::File { .. })
        ));
    }

    #[test]
    fn edge_config_needs_a_shared_nonce_key_with_redis() {
        let base = "core_socket = \"c\"\n[tls]\ncert = \"a\"\nkey = \"b\"\n";
        let redis = "[redis]\nurl = \"redis://127.0.0.1:6379\"\npassword_file = \"redis.pass\"\n";
        let err = crate::config::EdgeConfig::parse(&format!("{base}{redis}"), Path::new("/d"));
        assert!(
            matches!(err, Err(crate::config::ConfigError::Invalid(ref m)) if m.contains("nonce_key_file")),
            "{err:?}"
        );
        let cfg = crate::config::EdgeConfig::parse(
            &format!("{base}[acme]\nnonce_key_file = \"nonce.key\"\n{redis}"),
            Path::new("/d"),
        )
        .expect("parses");
        let r = cfg.redis.expect("[redis]");
        assert_eq!(r.password_file.as_deref(), Some(Path::new("/d/redis.pass")));
        // Absent section: the in-process behaviour.
        let plain = crate::config::EdgeConfig::parse(base, Path::new("/d")).expect("parses");
        assert!(plain.redis.is_none());
    }

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"x"]).len(), 40);
    }

    #[tokio::test]
    async fn unreachable_redis_fails_within_the_deadline() {
        // Port 1 on loopback: nothing listens, connecting is refused at once.
        let mut c = cfg("redis://127.0.0.1:1/0");
        c.op_timeout_ms = 200;
        let pool = RedisPool::new(&c).expect("pool");
        let start = Instant::now();
        let r: Result<Option<String>, _> = pool
            .run(|mut con| async move { redis::cmd("GET").arg("k").query_async(&mut con).await })
            .await;
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(2));
        // Within the backoff the next call fails without trying.
        let r: Result<Option<String>, _> = pool
            .run(|mut con| async move { redis::cmd("GET").arg("k").query_async(&mut con).await })
            .await;
        assert!(matches!(
            r,
            Err(SharedError::Redis(_)) | Err(SharedError::Timeout)
        ));
    }
}
