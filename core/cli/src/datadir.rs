//! The data directory layout (docs/operations.md). Every path the command line, `init` and `up`
//! use comes from here, so the layout is written down once.

use std::path::{Path, PathBuf};

use crate::error::{Result, io};

/// A data directory, absolute.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Uses `root` (created if missing), made absolute so child processes and configs agree.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io(root.display()))?;
        let root = root.canonicalize().map_err(io(root.display()))?;
        Ok(Self { root })
    }

    /// Uses `root` without creating it (commands that need an initialised directory).
    pub fn existing(root: &Path) -> Result<Self> {
        let abs = root.canonicalize().map_err(io(format!(
            "data dir {} (run `certgate init` first)",
            root.display()
        )))?;
        Ok(Self { root: abs })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Sockets of the running processes.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// Child process logs.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The signer's directory (config, KEK, sealed keys, audit log).
    pub fn signer_dir(&self) -> PathBuf {
        self.root.join("signer")
    }
    /// The signer's KEK file.
    pub fn kek(&self) -> PathBuf {
        self.signer_dir().join("kek")
    }
    /// The signer's configuration.
    pub fn signer_config(&self) -> PathBuf {
        self.signer_dir().join("signer.toml")
    }
    /// The signer's socket.
    pub fn signer_socket(&self) -> PathBuf {
        self.run_dir().join("signer.sock")
    }
    /// The core's directory (config, store).
    pub fn core_dir(&self) -> PathBuf {
        self.root.join("core")
    }
    /// The core's configuration.
    pub fn core_config(&self) -> PathBuf {
        self.core_dir().join("core.toml")
    }
    /// The core's socket.
    pub fn core_socket(&self) -> PathBuf {
        self.run_dir().join("core.sock")
    }
    /// The edge's directory (config, TLS certificate and key).
    pub fn edge_dir(&self) -> PathBuf {
        self.root.join("edge")
    }
    /// The edge's configuration.
    pub fn edge_config(&self) -> PathBuf {
        self.edge_dir().join("edge.toml")
    }
    /// The edge's TLS certificate chain.
    pub fn edge_cert(&self) -> PathBuf {
        self.edge_dir().join("tls.pem")
    }
    /// The edge's TLS key.
    pub fn edge_key(&self) -> PathBuf {
        self.edge_dir().join("tls.key")
    }
    /// Ceremony custodian keys (dev).
    pub fn custodian_dir(&self) -> PathBuf {
        self.root.join("custodians")
    }
    /// The dev custodian's private key (PKCS#8 PEM).
    pub fn dev_custodian_key(&self) -> PathBuf {
        self.custodian_dir().join("dev.pem")
    }
    /// The dev custodian's public key (SPKI PEM), named in the core config.
    pub fn dev_custodian_pub(&self) -> PathBuf {
        self.custodian_dir().join("dev.pub.pem")
    }
    /// The dev root certificate.
    pub fn root_pem(&self) -> PathBuf {
        self.root.join("ca").join("root.pem")
    }
    /// Issuing CA + intermediate(s), PEM.
    pub fn chain_pem(&self) -> PathBuf {
        self.root.join("ca").join("chain.pem")
    }
    /// Protocol dev credentials.
    pub fn dev_credentials(&self) -> PathBuf {
        self.root.join("dev-credentials.toml")
    }
    /// Written last by `init`: the directory is complete.
    pub fn initialized_marker(&self) -> PathBuf {
        self.root.join(".initialized")
    }
    /// Whether `init` completed here.
    pub fn is_initialized(&self) -> bool {
        self.initialized_marker().exists()
    }

    /// The core socket named in the core config (operators may have moved it), falling back to
    /// the default layout.
    pub fn core_socket_from_config(&self) -> PathBuf {
        let cfg = self.core_config();
        let socket = std::fs::read_to_string(&cfg)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("socket").and_then(|v| v.as_str()).map(PathBuf::from));
        match socket {
            Some(p) if p.is_absolute() => p,
            Some(p) => self.core_dir().join(p),
            None => self.core_socket(),
        }
    }
}

/// Writes `contents` to `path` with `mode`, creating parents; refuses nothing (callers check
/// existence first where overwriting matters).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(tmp.display()))?;
    f.write_all(contents).map_err(io(tmp.display()))?;
    f.sync_all().map_err(io(tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(io(path.display()))?;
    Ok(())
}
