//! The edge's configuration file (TOML, schema in docs/operations.md).
//!
//! The edge holds no durable state: everything here is where to listen, where the core is, and
//! the bounds (I-8). Relative paths resolve against the configuration file's directory so a data
//! dir can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are errors).
    #[error("invalid edge config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range.
    #[error("invalid edge config: {0}")]
    Invalid(String),
}

/// Deployment mode; production refuses dev conveniences (I-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Local development (`certgate up`).
    #[default]
    Dev,
    /// Production.
    Production,
}

/// Listener addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// HTTPS (ACME, EST). Default 127.0.0.1:8443.
    #[serde(default = "default_https")]
    pub https: SocketAddr,
    /// Plain HTTP (OCSP, CRL, SCEP, CMP, AIA). Default 127.0.0.1:8080.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Admin: /healthz, /readyz, /metrics. Default 127.0.0.1:9090.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// HTTP/3 (QUIC) on UDP at the HTTPS port number, advertised with `Alt-Svc`. Default on;
    /// bounds in `[http3]`.
    #[serde(default = "default_http3")]
    pub http3: bool,
    /// Threads serving the plain HTTP listener, each its own single-threaded runtime
    /// ([`crate::workers`]): absent = one per CPU core, `0` = on the shared runtime with the
    /// other listeners.
    #[serde(default)]
    pub http_threads: Option<usize>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            https: default_https(),
            http: default_http(),
            admin: default_admin(),
            http3: default_http3(),
            http_threads: None,
        }
    }
}

fn default_http3() -> bool {
    true
}

fn default_https() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// The HTTPS listener's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8).
    pub key: PathBuf,
}

/// Bounds (I-8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Open connections per listener; beyond this, new connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Requests in service at once per listener; beyond this, 503 + Retry-After.
    pub max_in_flight: usize,
    /// Whole-request deadline, milliseconds.
    pub request_timeout_ms: u64,
    /// Deadline of each core RPC, milliseconds.
    pub core_deadline_ms: u64,
    /// Time to read a request's headers, milliseconds.
    pub header_timeout_ms: u64,
    /// Per-protocol body limits (`acme = 65536`), bytes; a protocol without an entry gets
    /// `max_body_bytes`. Beyond the limit: 413.
    pub protocol_max_body_bytes: std::collections::BTreeMap<String, usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_connections: 4096,
            max_in_flight: 1024,
            request_timeout_ms: 30_000,
            core_deadline_ms: 10_000,
            header_timeout_ms: 10_000,
            protocol_max_body_bytes: std::collections::BTreeMap::new(),
        }
    }
}

/// Edge-local caches (moka; bounded by entry count and time).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// How long a CA certificate fetched from the core is served from cache.
    pub ca_ttl_seconds: u64,
    /// Most CA certificates cached.
    pub ca_max_entries: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            ca_ttl_seconds: 300,
            ca_max_entries: 4096,
        }
    }
}

/// `[core_tls]`: mutual TLS towards cores on other hosts (docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreTlsConfig {
    /// The edge's certificate chain (PEM, leaf first) with its SPIFFE URI SAN.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA bundle cores' certificates chain to (PEM).
    pub ca: PathBuf,
    /// SPIFFE IDs a core may present; any other core is refused at the handshake. Never empty.
    pub core_spiffe_ids: Vec<String>,
}

/// `[core_pool]`: health checks and retries across cores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorePoolConfig {
    /// Between two health probes of one core, ms (100..=60000). Default 1000.
    pub health_interval_ms: u64,
    /// Deadline of one probe, ms (50..=10000). Default 1000.
    pub health_timeout_ms: u64,
    /// Most attempts of one idempotent call across cores (1..=3). Default 3.
    pub max_attempts: u32,
}

impl Default for CorePoolConfig {
    fn default() -> Self {
        Self {
            health_interval_ms: 1000,
            health_timeout_ms: 1000,
            max_attempts: 3,
        }
    }
}

/// The whole edge configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// `dev` or `production`.
    #[serde(default)]
    pub mode: Mode,
    /// The core's Unix socket: shorthand for `cores = ["unix:PATH"]`.
    #[serde(default)]
    pub core_socket: Option<PathBuf>,
    /// The cores, balanced and health-checked: `unix:PATH` or `https://HOST:PORT` (mTLS, needs
    /// `[core_tls]`). Exactly one of `core_socket` and `cores` is given.
    #[serde(default)]
    pub cores: Vec<String>,
    /// The edge's mTLS identity towards `https://` cores and the SPIFFE IDs cores may present.
    #[serde(default)]
    pub core_tls: Option<CoreTlsConfig>,
    /// Health checking and retry bounds of the core pool.
    #[serde(default)]
    pub core_pool: CorePoolConfig,
    /// `cores` / `core_socket` parsed, paths resolved (filled by [`EdgeConfig::parse`]).
    #[serde(skip)]
    resolved_cores: Vec<crate::core_pool::CoreEndpoint>,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// The HTTPS listener's certificate and key.
    pub tls: Tls,
    /// Bounds.
    #[serde(default)]
    pub limits: Limits,
    /// HTTP/3 listener bounds (`[listen] http3` turns it on or off).
    #[serde(default)]
    pub http3: crate::h3::Http3Config,
    /// Caches.
    #[serde(default)]
    pub cache: Cache,
    /// OCSP/CRL serving (issue 5).
    #[serde(default)]
    pub status: Status,
    /// Bounded concurrency pools per protocol and per tenant.
    #[serde(default)]
    pub bulkheads: crate::bulkhead::BulkheadConfig,
    /// Tenant routing: Host map and the unknown-tenant cache.
    #[serde(default)]
    pub tenants: crate::tenant::TenantConfig,
    /// Rate limits (per tenant overrides).
    #[serde(default)]
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    /// The ACME server.
    #[serde(default)]
    pub acme: crate::acme::AcmeConfig,
    /// The CMP gateway (issue 7).
    #[serde(default)]
    pub cmp: crate::cmp::CmpConfig,
    /// The EST gateway (issue 6): labels, Basic credentials, TLS client-certificate anchors.
    #[serde(default)]
    pub est: crate::est::EstConfig,
    /// The SCEP gateway (issue 6): the signingTime window.
    #[serde(default)]
    pub scep: crate::scep::ScepConfig,
    /// Fleet state shared through Redis (nonces, rate limits, OCSP tier); absent = in process.
    #[serde(default)]
    pub redis: Option<crate::shared::RedisConfig>,
}

/// OCSP and CRL serving: the status cache, its miss path and the `WatchStatus` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    /// Bytes the OCSP/CRL cache may hold (DER plus prebuilt headers per entry). Default 256 MiB.
    pub cache_max_bytes: u64,
    /// Core lookups for cache misses in flight at once; beyond, `tryLater` / 503. Default 256.
    pub max_miss_in_flight: usize,
    /// Largest OCSP POST body, bytes. Default 8192.
    pub max_request_bytes: usize,
    /// Most CertIDs in one OCSP request. Default 16.
    pub max_cert_ids: usize,
    /// Answer signed OCSP requests `unauthorized` instead of ignoring the signature.
    pub refuse_signed_requests: bool,
    /// First `WatchStatus` reconnect delay, milliseconds. Default 100.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay, milliseconds. Default 5000.
    pub reconnect_max_ms: u64,
    /// A stream silent (no heartbeat) this long is reopened, seconds. Default 60.
    pub idle_timeout_seconds: u64,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            cache_max_bytes: 256 << 20,
            max_miss_in_flight: 256,
            max_request_bytes: 8 * 1024,
            max_cert_ids: 16,
            refuse_signed_requests: false,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5000,
            idle_timeout_seconds: 60,
        }
    }
}

impl EdgeConfig {
    /// Reads and validates `path`; relative paths inside resolve against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: EdgeConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = cfg.core_socket.as_mut() {
            abs(p);
        }
        if let Some(t) = cfg.core_tls.as_mut() {
            abs(&mut t.cert);
            abs(&mut t.key);
            abs(&mut t.ca);
            if t.core_spiffe_ids.is_empty()
                || t.core_spiffe_ids
                    .iter()
                    .any(|id| !id.starts_with("spiffe://") || id.len() <= "spiffe://".len())
            {
                return Err(ConfigError::Invalid(
                    "[core_tls] core_spiffe_ids must list at least one spiffe:// ID".into(),
                ));
            }
        }
        let endpoints = cfg.parse_core_endpoints(base)?;
        if endpoints.len() > 64 {
            return Err(ConfigError::Invalid("at most 64 cores".into()));
        }
        if cfg.core_tls.is_none()
            && endpoints
                .iter()
                .any(|e| matches!(e, crate::core_pool::CoreEndpoint::Tls { .. }))
        {
            return Err(ConfigError::Invalid(
                "https:// cores need [core_tls] (cert, key, ca, core_spiffe_ids)".into(),
            ));
        }
        let p = &cfg.core_pool;
        if !(100..=60_000).contains(&p.health_interval_ms)
            || !(50..=10_000).contains(&p.health_timeout_ms)
            || !(1..=3).contains(&p.max_attempts)
        {
            return Err(ConfigError::Invalid(
                "[core_pool] health_interval_ms 100..=60000, health_timeout_ms 50..=10000, max_attempts 1..=3".into(),
            ));
        }
        cfg.resolved_cores = endpoints;
        abs(&mut cfg.tls.cert);
        abs(&mut cfg.tls.key);
        let l = &cfg.limits;
        if l.max_body_bytes == 0 || l.max_connections == 0 || l.max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "limits must be positive (an empty bound admits nothing)".into(),
            ));
        }
        if l.request_timeout_ms == 0 || l.core_deadline_ms == 0 || l.header_timeout_ms == 0 {
            return Err(ConfigError::Invalid("timeouts must be positive".into()));
        }
        if l.protocol_max_body_bytes.values().any(|v| *v == 0) {
            return Err(ConfigError::Invalid(
                "protocol_max_body_bytes must be positive".into(),
            ));
        }
        cfg.bulkheads.validate().map_err(ConfigError::Invalid)?;
        cfg.tenants.validate().map_err(ConfigError::Invalid)?;
        cfg.rate_limits.validate().map_err(ConfigError::Invalid)?;
        if let Some(k) = cfg.acme.nonce_key_file.as_mut() {
            abs(k);
        }
        cfg.acme.validate().map_err(ConfigError::Invalid)?;
        if let Some(r) = cfg.redis.as_mut() {
            r.resolve_paths(base);
            r.validate().map_err(ConfigError::Invalid)?;
            // Edges sharing Redis must share the nonce key, or one edge's nonces are badNonce
            // at every other.
            if cfg.acme.nonce_key_file.is_none() {
                return Err(ConfigError::Invalid(
                    "[redis] needs [acme] nonce_key_file: every edge of the fleet must share the nonce key"
                        .into(),
                ));
            }
        }
        for p in &mut cfg.cmp.trust_anchors {
            abs(p);
        }
        for p in &mut cfg.est.client_ca_files {
            abs(p);
        }
        for l in cfg.est.labels.values_mut() {
            for p in l.decrypt_key_files.values_mut() {
                abs(p);
            }
        }
        cfg.est.settings().map_err(ConfigError::Invalid)?;
        cfg.scep.validate().map_err(ConfigError::Invalid)?;
        let st = &cfg.status;
        if st.cache_max_bytes == 0
            || st.max_miss_in_flight == 0
            || st.max_request_bytes == 0
            || st.max_cert_ids == 0
            || st.reconnect_initial_ms == 0
            || st.reconnect_max_ms < st.reconnect_initial_ms
            || st.idle_timeout_seconds == 0
        {
            return Err(ConfigError::Invalid(
                "[status] bounds must be positive (and reconnect_max_ms >= reconnect_initial_ms)"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    /// The cores (`cores`, or the one `core_socket`), paths resolved.
    pub fn core_endpoints(&self) -> &[crate::core_pool::CoreEndpoint] {
        &self.resolved_cores
    }

    /// The cores: `cores`, or the one `core_socket`; exactly one of the two must be given.
    /// Relative `unix:` paths resolve against `base` (the config file's directory).
    fn parse_core_endpoints(
        &self,
        base: &Path,
    ) -> Result<Vec<crate::core_pool::CoreEndpoint>, ConfigError> {
        match (&self.core_socket, self.cores.is_empty()) {
            (Some(p), true) => Ok(vec![crate::core_pool::CoreEndpoint::Unix(p.clone())]),
            (None, false) => self
                .cores
                .iter()
                .map(|s| {
                    crate::core_pool::CoreEndpoint::parse(s, base)
                        .map_err(|e| ConfigError::Invalid(e.to_string()))
                })
                .collect(),
            _ => Err(ConfigError::Invalid(
                "give exactly one of core_socket and cores".into(),
            )),
        }
    }

    /// The pool settings from `[core_pool]`.
    pub fn pool_settings(&self) -> crate::core_pool::PoolSettings {
        crate::core_pool::PoolSettings {
            health_interval: Duration::from_millis(self.core_pool.health_interval_ms),
            health_timeout: Duration::from_millis(self.core_pool.health_timeout_ms),
            max_attempts: self.core_pool.max_attempts,
        }
    }

    /// Core RPC deadline.
    pub fn core_deadline(&self) -> Duration {
        Duration::from_millis(self.limits.core_deadline_ms)
    }

    /// The status cache settings from `[status]`.
    pub fn status_settings(&self) -> crate::status::StatusSettings {
        let s = &self.status;
        crate::status::StatusSettings {
            cache_max_bytes: s.cache_max_bytes,
            max_miss_in_flight: s.max_miss_in_flight,
            limits: certgate_ocsp::Limits {
                max_body: s.max_request_bytes,
                max_cert_ids: s.max_cert_ids,
                refuse_signed: s.refuse_signed_requests,
                ..certgate_ocsp::Limits::default()
            },
            ..crate::status::StatusSettings::default()
        }
    }

    /// The `WatchStatus` task timing from `[status]`.
    pub fn watch_settings(&self) -> crate::status::watch::WatchSettings {
        let s = &self.status;
        crate::status::watch::WatchSettings {
            backoff_initial: Duration::from_millis(s.reconnect_initial_ms),
            backoff_max: Duration::from_millis(s.reconnect_max_ms),
            idle_timeout: Duration::from_secs(s.idle_timeout_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_default_ports_and_absolute_paths() {
        let cfg = EdgeConfig::parse(
            "core_socket = \"../run/core.sock\"\n[tls]\ncert = \"tls.pem\"\nkey = \"tls.key\"\n",
            Path::new("/data/edge"),
        )
        .expect("parses");
        assert_eq!(cfg.listen.https.port(), 8443);
        assert_eq!(cfg.listen.http.port(), 8080);
        assert_eq!(cfg.listen.admin.port(), 9090);
        assert_eq!(
            cfg.core_socket.as_deref(),
            Some(Path::new("/data/edge/../run/core.sock"))
        );
        assert_eq!(
            cfg.core_endpoints(),
            [crate::core_pool::CoreEndpoint::Unix(PathBuf::from(
                "/data/edge/../run/core.sock"
            ))]
        );
        assert_eq!(cfg.tls.key, Path::new("/data/edge/tls.key"));
        assert_eq!(cfg.mode, Mode::Dev);
    }

    #[test]
    fn cores_list_needs_tls_for_https_and_excludes_core_socket() {
        let tls = "[tls]\ncert = \"a\"\nkey = \"b\"\n";
        let core_tls = "[core_tls]\ncert = \"e.pem\"\nkey = \"e.key\"\nca = \"ca.pem\"\ncore_spiffe_ids = [\"spiffe://certgate.test/core/1\"]\n";
        let two = "cores = [\"unix:core.sock\", \"https://127.0.0.1:7443\"]\n";
        let cfg =
            EdgeConfig::parse(&format!("{two}{tls}{core_tls}"), Path::new("/d")).expect("parses");
        assert_eq!(cfg.core_endpoints().len(), 2);
        assert_eq!(
            cfg.core_tls.as_ref().map(|t| t.ca.clone()),
            Some(PathBuf::from("/d/ca.pem"))
        );
        // https without [core_tls]
        assert!(EdgeConfig::parse(&format!("{two}{tls}"), Path::new("/d")).is_err());
        // both core_socket and cores, or neither
        let both = format!("core_socket = \"c\"\n{two}{tls}{core_tls}");
        assert!(EdgeConfig::parse(&both, Path::new("/d")).is_err());
        assert!(EdgeConfig::parse(tls, Path::new("/d")).is_err());
        // an empty SPIFFE list admits no core: refused as a config error
        let empty = core_tls.replace("[\"spiffe://certgate.test/core/1\"]", "[]");
        assert!(EdgeConfig::parse(&format!("{two}{tls}{empty}"), Path::new("/d")).is_err());
        let bad_pool = format!("{two}{tls}{core_tls}[core_pool]\nhealth_interval_ms = 1\n");
        assert!(EdgeConfig::parse(&bad_pool, Path::new("/d")).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = EdgeConfig::parse(
            "core_socket = \"c\"\nsurprise = 1\n[tls]\ncert = \"a\"\nkey = \"b\"\n",
            Path::new("/"),
        );
        assert!(matches!(err, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn zero_bounds_are_refused() {
        let err = EdgeConfig::parse(
            "core_socket = \"c\"\n[tls]\ncert = \"a\"\nkey = \"b\"\n[limits]\nmax_body_bytes = 0\n",
            Path::new("/"),
        );
        assert!(matches!(err, Err(ConfigError::Invalid(_))));
    }
}
