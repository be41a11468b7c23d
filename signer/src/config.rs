//! The signer's TOML configuration (`certgate-signer --config FILE`; schema in docs/signer.md).
//!
//! Relative paths are resolved against the configuration file's directory. Unknown keys are
//! errors, so a typo never silently turns a protection off.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use certgate_proto::AllowList;
use zeroize::Zeroizing;

use crate::keystore::Kek;

/// `dev` or `production`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Local development and tests.
    Dev,
    /// Production: secret files must be private, the KEK must come from a file.
    Production,
}

/// Resource limits (invariant I-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most messages in one SignBatch.
    pub max_batch: usize,
    /// Largest message to sign, bytes.
    pub max_message_bytes: usize,
    /// Largest decoded gRPC request, bytes.
    pub max_request_bytes: usize,
    /// RPCs being served at once (beyond: RESOURCE_EXHAUSTED with a retry hint).
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 10_000,
            max_message_bytes: 64 * 1024,
            max_request_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 1024,
        }
    }
}

/// The optional TCP + mutual TLS listener.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address to listen on, e.g. `10.0.0.5:7443` (port 0 picks one).
    pub listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to, PEM.
    pub client_ca: PathBuf,
}

/// The optional PKCS#11 backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN.
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN.
    pub pin_env: Option<String>,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `dev` or `production`.
    pub mode: Mode,
    /// The Unix socket to serve on.
    pub socket: PathBuf,
    /// Permissions of the socket file, octal string (default `"0600"`: owner only). Use
    /// `"0660"` with a shared group when the core runs as another user; the allow-list still
    /// decides who may call.
    pub socket_mode: Option<String>,
    /// Who may call Sign, SignBatch, PublicKey, ListKeys: `uid:N` / `spiffe://…`. Empty = nobody.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Who may call GenerateKey. Empty = nobody.
    #[serde(default)]
    pub admin_allow: Vec<String>,
    /// The append-only audit file.
    pub audit_log: PathBuf,
    /// Directory of sealed key files (and PKCS#11 sidecars).
    pub key_dir: PathBuf,
    /// File holding the 32-byte KEK (raw or base64).
    pub kek_file: Option<PathBuf>,
    /// Environment variable holding the KEK (base64). Refused in production.
    pub kek_env: Option<String>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Optional mTLS listener.
    pub tls: Option<TlsConfig>,
    /// Optional PKCS#11 backend.
    pub pkcs11: Option<Pkcs11Config>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML or schema error.
    #[error("config: {0}")]
    Parse(String),
    /// A value is not acceptable.
    #[error("config: {0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let text = std::str::from_utf8(&text)
            .map_err(|_| ConfigError::Parse("the file is not UTF-8".into()))?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base).map_err(|source| ConfigError::Read {
            path: base.display().to_string(),
            source,
        })?;
        Self::parse(text, &base)
    }

    /// Parses TOML, resolving relative paths against `base`, and validates it.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.socket);
        abs(&mut c.audit_log);
        abs(&mut c.key_dir);
        if let Some(p) = c.kek_file.as_mut() {
            abs(p);
        }
        if let Some(t) = c.tls.as_mut() {
            abs(&mut t.cert);
            abs(&mut t.key);
            abs(&mut t.client_ca);
        }
        if let Some(f) = c.pkcs11.as_mut().and_then(|p| p.pin_file.as_mut()) {
            abs(f);
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.allow_list()?;
        self.admin_allow_list()?;
        self.socket_mode()?;
        match (&self.kek_file, &self.kek_env) {
            (Some(_), Some(_)) => {
                return invalid("set exactly one of kek_file and kek_env, not both");
            }
            (None, None) => return invalid("set kek_file or kek_env"),
            (None, Some(_)) if self.mode == Mode::Production => {
                return invalid(
                    "kek_env is a dev convenience (environment variables are inherited and readable in /proc); use kek_file in production",
                );
            }
            _ => {}
        }
        let l = &self.limits;
        if l.max_batch == 0 || l.max_message_bytes == 0 || l.max_concurrent_requests == 0 {
            return invalid("limits must be positive");
        }
        if l.max_request_bytes < l.max_message_bytes {
            return invalid("limits.max_request_bytes must be at least limits.max_message_bytes");
        }
        if let Some(p) = &self.pkcs11 {
            match (&p.pin_file, &p.pin_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return invalid("pkcs11: set exactly one of pin_file and pin_env"),
            }
            if p.pin_env.is_some() && self.mode == Mode::Production {
                return invalid("pkcs11.pin_env is a dev convenience; use pin_file in production");
            }
        }
        Ok(())
    }

    /// The socket file's permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let Some(text) = &self.socket_mode else {
            return Ok(0o600);
        };
        let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .map_err(|_| ConfigError::Invalid(format!("socket_mode {text:?} is not octal")))?;
        if mode & !0o770 != 0 {
            return Err(ConfigError::Invalid(
                "socket_mode may grant owner and group access only (at most 0770)".into(),
            ));
        }
        Ok(mode)
    }

    /// The caller allow-list.
    pub fn allow_list(&self) -> Result<AllowList, ConfigError> {
        AllowList::parse(&self.allow).map_err(|e| ConfigError::Invalid(format!("allow: {e}")))
    }

    /// The administrative allow-list (GenerateKey).
    pub fn admin_allow_list(&self) -> Result<AllowList, ConfigError> {
        AllowList::parse(&self.admin_allow)
            .map_err(|e| ConfigError::Invalid(format!("admin_allow: {e}")))
    }

    /// Reads the KEK. In production the KEK file must be readable by its owner only.
    pub fn kek(&self) -> Result<Kek, ConfigError> {
        let bytes = match (&self.kek_file, &self.kek_env) {
            (Some(path), _) => {
                self.check_private(path)?;
                read(path)?
            }
            (None, Some(var)) => Zeroizing::new(
                std::env::var(var)
                    .map_err(|_| ConfigError::Invalid(format!("kek_env: ${var} is not set")))?
                    .into_bytes(),
            ),
            (None, None) => return Err(ConfigError::Invalid("no KEK source".into())),
        };
        Kek::parse(&bytes).map_err(|e| ConfigError::Invalid(format!("KEK: {e}")))
    }

    /// Reads the PKCS#11 user PIN.
    pub fn pkcs11_pin(&self) -> Result<Option<Zeroizing<String>>, ConfigError> {
        let Some(p) = &self.pkcs11 else {
            return Ok(None);
        };
        let pin = match (&p.pin_file, &p.pin_env) {
            (Some(path), _) => {
                self.check_private(path)?;
                let bytes = read(path)?;
                Zeroizing::new(
                    std::str::from_utf8(&bytes)
                        .map_err(|_| ConfigError::Invalid("pkcs11 PIN is not UTF-8".into()))?
                        .trim()
                        .to_owned(),
                )
            }
            (None, Some(var)) => Zeroizing::new(
                std::env::var(var)
                    .map_err(|_| ConfigError::Invalid(format!("pin_env: ${var} is not set")))?,
            ),
            (None, None) => return Err(ConfigError::Invalid("pkcs11: no PIN source".into())),
        };
        Ok(Some(pin))
    }

    /// Refuses (production) or warns about (dev) a secret file readable by group or others.
    pub fn check_private(&self, path: &Path) -> Result<(), ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mode = meta.permissions().mode();
        if self.mode == Mode::Production && mode & 0o077 != 0 {
            return Err(ConfigError::Invalid(format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by group or others");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        mode = "dev"
        socket = "run/signer.sock"
        allow = ["uid:1000"]
        admin_allow = ["uid:1000"]
        audit_log = "audit/signer.jsonl"
        key_dir = "keys"
        kek_file = "kek"
    "#;

    #[test]
    fn minimal_config_resolves_relative_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/certgate")).expect("parses");
        assert_eq!(c.socket, Path::new("/etc/certgate/run/signer.sock"));
        assert_eq!(c.kek_file.as_deref(), Some(Path::new("/etc/certgate/kek")));
        assert_eq!(c.limits, Limits::default());
        assert!(c.tls.is_none() && c.pkcs11.is_none());
        assert_eq!(c.socket_mode().expect("mode"), 0o600);
    }

    #[test]
    fn socket_mode_never_opens_the_socket_to_others() {
        let with =
            |m: &str| Config::parse(&format!("socket_mode = \"{m}\"\n{MINIMAL}"), Path::new("/"));
        assert_eq!(
            with("0660").expect("group").socket_mode().expect("mode"),
            0o660
        );
        assert!(with("0666").is_err());
        assert!(with("rw").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_allow_entries_are_refused() {
        assert!(Config::parse(&format!("{MINIMAL}\nallow_all = true"), Path::new("/")).is_err());
        let bad = MINIMAL.replace("uid:1000\"]\n        admin", "root\"]\n        admin");
        assert!(Config::parse(&bad, Path::new("/")).is_err());
    }

    #[test]
    fn production_refuses_kek_from_environment() {
        let text = MINIMAL
            .replace("mode = \"dev\"", "mode = \"production\"")
            .replace("kek_file = \"kek\"", "kek_env = \"CERTGATE_KEK\"");
        let err = Config::parse(&text, Path::new("/")).expect_err("refused");
        assert!(err.to_string().contains("kek_env"), "{err}");
        let dev = MINIMAL.replace("kek_file = \"kek\"", "kek_env = \"CERTGATE_KEK\"");
        assert!(Config::parse(&dev, Path::new("/")).is_ok());
    }

    #[test]
    fn production_refuses_a_group_readable_kek_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = Kek::generate().expect("kek");
        std::fs::write(dir.path().join("kek"), kek.to_base64().as_bytes()).expect("write");
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        let prod = MINIMAL.replace("mode = \"dev\"", "mode = \"production\"");
        let c = Config::parse(&prod, dir.path()).expect("parses");
        assert!(c.kek().is_err());
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        assert!(c.kek().is_ok());
    }
}
