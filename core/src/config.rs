//! The core's configuration file (TOML; schema in docs/core.md).
//!
//! Unknown keys are errors; relative paths resolve against the file's directory, so a generated
//! data directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use certgate_proto::AllowList;
use der::Decode;
use serde::Deserialize;
use spki::SubjectPublicKeyInfoOwned;

/// Dev or production (I-5: dev conveniences refuse to start in production).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Local development.
    Dev,
    /// Production.
    Production,
}

/// The raw file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Mode,
    socket: PathBuf,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    admin_allow: Vec<String>,
    /// A SQLite file path, or a `[store]` table (`backend = "sqlite" | "postgres"`).
    store: toml::Value,
    signer: RawSigner,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    custodians: Vec<RawCustodian>,
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default = "one")]
    quorum: u32,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    acme: crate::acme::AcmeConfig,
    #[serde(default)]
    status: crate::status::StatusConfig,
    #[serde(default)]
    cmp: crate::cmp::CmpConfig,
    #[serde(default)]
    approval: crate::approval::ApprovalConfig,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    socket: Option<PathBuf>,
    #[serde(default)]
    tls: Option<RawSignerTls>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignerTls {
    addr: SocketAddr,
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    /// SPIFFE IDs admitted at the handshake; default: the `spiffe://` entries of `allow` and
    /// `admin_allow`.
    #[serde(default)]
    allow: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustodian {
    name: String,
    public_key: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    signer_log: Option<PathBuf>,
    #[serde(default)]
    sign_interval_ms: Option<u64>,
    #[serde(default)]
    ingest_interval_ms: Option<u64>,
    #[serde(default)]
    public_key_sha256: Option<String>,
}

/// Bounds (I-8).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Issue calls in flight at once; beyond: RATE_LIMITED.
    pub max_in_flight_issue: usize,
    /// Concurrent requests per connection.
    pub max_concurrent_per_connection: usize,
    /// tonic's max decoded message size.
    pub max_message_bytes: usize,
    /// Deadline for each signer call, ms.
    pub signer_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight_issue: 256,
            max_concurrent_per_connection: 256,
            max_message_bytes: 256 * 1024,
            signer_timeout_ms: 10_000,
        }
    }
}

/// Where the signer is.
#[derive(Clone, Debug)]
pub enum SignerEndpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// TCP + mTLS.
    Tls {
        /// Address.
        addr: SocketAddr,
        /// Server name to verify.
        server_name: String,
        /// CA bundle for the signer's certificate.
        ca: PathBuf,
        /// Our client certificate.
        cert: PathBuf,
        /// Our client key.
        key: PathBuf,
    },
}

/// The TCP + mTLS listener.
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// Address.
    pub listen: SocketAddr,
    /// Server certificate chain PEM.
    pub cert: PathBuf,
    /// Server key PEM.
    pub key: PathBuf,
    /// Client CA bundle PEM.
    pub client_ca: PathBuf,
    /// SPIFFE IDs admitted at the handshake (`[tls] allow`; default: the `spiffe://` entries of
    /// `allow` and `admin_allow`). Never empty: a listener nobody may use is a config error.
    pub allow: AllowList,
}

/// A ceremony custodian.
#[derive(Clone, Debug)]
pub struct Custodian {
    /// Name.
    pub name: String,
    /// Raw 32-byte Ed25519 public key.
    pub ed25519: Vec<u8>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Mode.
    pub mode: Mode,
    /// Unix socket for Core + Admin.
    pub socket: PathBuf,
    /// Who may call Core.
    pub allow: AllowList,
    /// Who may call Admin.
    pub admin_allow: AllowList,
    /// SQLite file.
    pub store: PathBuf,
    /// `[store] backend = "postgres"`: the PostgreSQL store instead of the SQLite file
    /// (docs/postgres.md); `store` is then empty.
    pub postgres: Option<crate::store::PgConfig>,
    /// Signer endpoint.
    pub signer: SignerEndpoint,
    /// Optional TLS listener.
    pub tls: Option<TlsListener>,
    /// Optional plain-HTTP Prometheus `/metrics` listener (`metrics_listen`; loopback or a
    /// private network: it carries counters, never secrets).
    pub metrics_listen: Option<SocketAddr>,
    /// Custodians.
    pub custodians: Vec<Custodian>,
    /// Approvals needed.
    pub quorum: u32,
    /// The signer key id of the audit key.
    pub audit_key_id: String,
    /// The signer's audit log to ingest.
    pub signer_audit_log: Option<PathBuf>,
    /// How often unsigned audit records are signed, ms.
    pub audit_sign_interval_ms: u64,
    /// Lower-case hex SHA-256 of the audit key's SubjectPublicKeyInfo DER, if pinned: the key in
    /// the store must match it, so rewriting the store cannot swap the key.
    pub audit_key_sha256: Option<String>,
    /// How often the signer's log is ingested, ms (each ingestion is itself a record the signer
    /// then logs a signature for, so this sets the idle growth of both logs).
    pub audit_ingest_interval_ms: u64,
    /// Bounds.
    pub limits: Limits,
    /// `[acme]`: the ACME state service's validation and lifetime settings.
    pub acme: crate::acme::AcmeConfig,
    /// `[status]`: OCSP precomputation, CRLs and the status stream (docs/status.md).
    pub status: crate::status::StatusConfig,
    /// `[cmp]`: the CMP support's confirmation window (docs/cmp.md).
    pub cmp: crate::cmp::CmpConfig,
    /// `[approval]`: bounds and timing of requests held for manual approval (docs/profiles.md).
    pub approval: crate::approval::ApprovalConfig,
}

/// A configuration error, shown to the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `[store]` as a table: which backend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqliteStore {
    #[allow(dead_code)]
    backend: String,
    path: PathBuf,
}

fn store_err(e: toml::de::Error) -> ConfigError {
    ConfigError(format!("[store]: {}", e.message()))
}

/// `store = "file.db"` (SQLite, the default), `[store] backend = "sqlite"` + `path`, or
/// `[store] backend = "postgres"` + the [`crate::store::PgConfig`] keys.
fn store_backend(
    v: &toml::Value,
    base: &Path,
) -> Result<(PathBuf, Option<crate::store::PgConfig>), ConfigError> {
    match v {
        toml::Value::String(p) => Ok((resolve(base, Path::new(p)), None)),
        toml::Value::Table(t) => match t.get("backend").and_then(toml::Value::as_str) {
            Some("sqlite") => {
                let raw: RawSqliteStore = v.clone().try_into().map_err(store_err)?;
                Ok((resolve(base, &raw.path), None))
            }
            Some("postgres") => {
                let mut t = t.clone();
                t.remove("backend");
                let pg: crate::store::PgConfig =
                    toml::Value::Table(t).try_into().map_err(store_err)?;
                pg.check().map_err(ConfigError)?;
                Ok((PathBuf::new(), Some(pg.resolve(base))))
            }
            other => Err(ConfigError(format!(
                "[store] backend must be \"sqlite\" or \"postgres\", not {other:?}"
            ))),
        },
        _ => Err(ConfigError(
            "store must be a SQLite file path or a [store] table".into(),
        )),
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Reads an Ed25519 public key from an SPKI PEM (or a file holding one).
fn ed25519_key(base: &Path, value: &str) -> Result<Vec<u8>, String> {
    let pem_text = if value.contains("-----BEGIN") {
        value.to_owned()
    } else {
        std::fs::read_to_string(resolve(base, Path::new(value)))
            .map_err(|e| format!("reading {value}: {e}"))?
    };
    let (label, der) =
        der::pem::decode_vec(pem_text.trim().as_bytes()).map_err(|e| format!("PEM: {e}"))?;
    if label != "PUBLIC KEY" {
        return Err(format!("expected a PUBLIC KEY PEM block, found {label}"));
    }
    let spki = SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| format!("SPKI: {e}"))?;
    if spki.algorithm.oid != const_oid::db::rfc8410::ID_ED_25519 {
        return Err("not an Ed25519 key".into());
    }
    spki.subject_public_key
        .as_bytes()
        .filter(|b| b.len() == 32)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "bad Ed25519 key".into())
}

/// The TLS listener's SPIFFE allow-list: `[tls] allow` if given (SPIFFE IDs only), else the
/// SPIFFE entries of the per-RPC allow-lists; empty is refused (I-5: it would admit no one, which
/// is never what an operator who configured the listener meant).
fn tls_allow(
    explicit: Option<Vec<String>>,
    allow: &AllowList,
    admin_allow: &AllowList,
) -> Result<AllowList, ConfigError> {
    let entries: Vec<String> = match explicit {
        Some(list) => {
            if let Some(bad) = list.iter().find(|e| !e.trim().starts_with("spiffe://")) {
                return Err(ConfigError(format!(
                    "[tls] allow: {bad:?} is not a spiffe:// ID"
                )));
            }
            list
        }
        None => allow
            .entries()
            .into_iter()
            .chain(admin_allow.entries())
            .filter(|e| e.starts_with("spiffe://"))
            .collect(),
    };
    let list = AllowList::parse(&entries).map_err(|e| ConfigError(format!("[tls] allow: {e}")))?;
    if list.is_empty() {
        return Err(ConfigError(
            "[tls] needs at least one SPIFFE ID in [tls] allow (or in allow/admin_allow)".into(),
        ));
    }
    Ok(list)
}

impl Config {
    /// Loads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base)
    }

    /// Parses configuration text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError(format!("config: {}", e.message())))?;
        let allow = AllowList::parse(&raw.allow).map_err(|e| ConfigError(format!("allow: {e}")))?;
        let admin_allow = AllowList::parse(&raw.admin_allow)
            .map_err(|e| ConfigError(format!("admin_allow: {e}")))?;
        let signer = match (raw.signer.socket, raw.signer.tls) {
            (Some(p), None) => SignerEndpoint::Unix(resolve(base, &p)),
            (None, Some(t)) => SignerEndpoint::Tls {
                addr: t.addr,
                server_name: t.server_name,
                ca: resolve(base, &t.ca),
                cert: resolve(base, &t.cert),
                key: resolve(base, &t.key),
            },
            _ => {
                return Err(ConfigError(
                    "[signer] needs exactly one of socket and [signer.tls]".into(),
                ));
            }
        };
        let mut custodians = Vec::new();
        for c in raw.custodians {
            if c.name.is_empty() || custodians.iter().any(|x: &Custodian| x.name == c.name) {
                return Err(ConfigError(format!(
                    "custodian name {:?} empty or repeated",
                    c.name
                )));
            }
            let key = ed25519_key(base, &c.public_key)
                .map_err(|e| ConfigError(format!("custodian {}: {e}", c.name)))?;
            custodians.push(Custodian {
                name: c.name,
                ed25519: key,
            });
        }
        if raw.quorum == 0 || raw.quorum as usize > custodians.len().max(1) {
            return Err(ConfigError(format!(
                "quorum {} must be between 1 and the number of custodians ({})",
                raw.quorum,
                custodians.len()
            )));
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => Some(TlsListener {
                listen: t.listen,
                cert: resolve(base, &t.cert),
                key: resolve(base, &t.key),
                client_ca: resolve(base, &t.client_ca),
                allow: tls_allow(t.allow, &allow, &admin_allow)?,
            }),
        };
        let (store, postgres) = store_backend(&raw.store, base)?;
        raw.acme.check(raw.mode).map_err(ConfigError)?;
        raw.status.check().map_err(ConfigError)?;
        raw.cmp.check().map_err(ConfigError)?;
        raw.approval.check().map_err(ConfigError)?;
        Ok(Self {
            mode: raw.mode,
            socket: resolve(base, &raw.socket),
            allow,
            admin_allow,
            store,
            postgres,
            signer,
            tls,
            metrics_listen: raw.metrics_listen,
            custodians,
            quorum: raw.quorum,
            audit_key_id: raw.audit.key_id.unwrap_or_else(|| "core-audit".into()),
            signer_audit_log: raw.audit.signer_log.map(|p| resolve(base, &p)),
            audit_sign_interval_ms: raw.audit.sign_interval_ms.unwrap_or(1000),
            audit_ingest_interval_ms: raw.audit.ingest_interval_ms.unwrap_or(30_000),
            audit_key_sha256: raw.audit.public_key_sha256.map(|h| h.to_ascii_lowercase()),
            limits: raw.limits,
            acme: raw.acme,
            status: raw.status,
            cmp: raw.cmp,
            approval: raw.approval,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIN: &str = r#"
mode = "dev"
socket = "core.sock"
allow = ["uid:1000"]
admin_allow = ["uid:1000"]
store = "core.db"
[signer]
socket = "../signer/signer.sock"
"#;

    #[test]
    fn minimal_config_parses_with_relative_paths() {
        let c = Config::parse(MIN, Path::new("/data/core")).expect("parses");
        assert_eq!(c.socket, PathBuf::from("/data/core/core.sock"));
        assert!(
            matches!(c.signer, SignerEndpoint::Unix(ref p) if p == Path::new("/data/core/../signer/signer.sock"))
        );
        assert_eq!(c.audit_key_id, "core-audit");
    }

    #[test]
    fn tls_listener_allow_list_is_spiffe_only_and_never_empty() {
        let tls = "\n[tls]\nlisten = \"127.0.0.1:7443\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n";
        // No SPIFFE entry anywhere: refused.
        assert!(Config::parse(&format!("{MIN}{tls}"), Path::new("/")).is_err());
        // Default: the SPIFFE entries of allow/admin_allow.
        let with_edge = MIN.replace(
            "allow = [\"uid:1000\"]\nadmin",
            "allow = [\"uid:1000\", \"spiffe://certgate.test/edge/1\"]\nadmin",
        );
        let c = Config::parse(&format!("{with_edge}{tls}"), Path::new("/")).expect("parses");
        let l = c.tls.expect("tls");
        assert_eq!(l.allow.entries(), vec!["spiffe://certgate.test/edge/1"]);
        assert_eq!(l.cert, PathBuf::from("/c.pem"));
        // Explicit list: uid entries are refused there.
        let explicit = format!("{MIN}{tls}allow = [\"uid:1\"]\n");
        assert!(Config::parse(&explicit, Path::new("/")).is_err());
        let explicit = format!("{MIN}{tls}allow = [\"spiffe://certgate.test/edge/2\"]\n");
        let c = Config::parse(&explicit, Path::new("/")).expect("parses");
        assert_eq!(
            c.tls.expect("tls").allow.entries(),
            vec!["spiffe://certgate.test/edge/2"]
        );
    }

    #[test]
    fn unknown_keys_and_bad_quorum_are_refused() {
        assert!(Config::parse(&format!("{MIN}\nbogus = 1"), Path::new("/")).is_err());
        let text = MIN.replace("store = \"core.db\"", "store = \"core.db\"\nquorum = 2");
        assert!(Config::parse(&text, Path::new("/")).is_err());
    }

    #[test]
    fn store_backend_table_selects_postgres_and_refuses_passwords_in_urls() {
        let pg = MIN.replace("store = \"core.db\"", "")
            + "[store]\nbackend = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/certgate\"\npassword_file = \"pw\"\n";
        let c = Config::parse(&pg, Path::new("/data/core")).expect("parses");
        let p = c.postgres.expect("postgres selected");
        assert_eq!(p.password_file, Some(PathBuf::from("/data/core/pw")));
        assert_eq!(p.pool_size, 16);
        let bad = pg.replace("app@", "app:secret@");
        let e = Config::parse(&bad, Path::new("/")).expect_err("password in URL refused");
        assert!(e.0.contains("must not contain a password"), "{}", e.0);
        let sqlite = MIN.replace("store = \"core.db\"", "")
            + "[store]\nbackend = \"sqlite\"\npath = \"x.db\"\n";
        let c = Config::parse(&sqlite, Path::new("/d")).expect("parses");
        assert_eq!(c.store, PathBuf::from("/d/x.db"));
        assert!(c.postgres.is_none());
        let c = Config::parse(MIN, Path::new("/d")).expect("default");
        assert!(c.postgres.is_none());
    }
}
