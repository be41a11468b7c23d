//! Throwaway PostgreSQL and Redis servers, started from the Debian packages' own binaries on free
//! loopback ports with private data directories, and stopped by PID.
//!
//! Two users: `certgate up --fleet N`, which runs a whole fleet on one machine for development
//! and demos, and the fleet tests, which need real servers they can kill and restart. Both must
//! work as root (CI) and as an ordinary user, so PostgreSQL — which refuses to run as root — is
//! started as the `postgres` user through `setpriv` when we are root.

pub mod pg;
pub mod redis;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Why a server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Debian package providing the server is missing.
    #[error("{0} is not installed (apt-get install -y {1})")]
    NotInstalled(&'static str, &'static str),
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A command ran and reported failure.
    #[error("{what} failed: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// Its output (stderr, or the server log).
        detail: String,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("reading the free port"))?.port())
}

/// Whether this process runs as root (PostgreSQL must then be started as `postgres`).
fn is_root() -> bool {
    // `id -u` avoids a libc dependency for one call; it is in coreutils on every Debian.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command to completion: Ok(stdout) on success, else [`Error::Failed`] with stderr.
fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(io(format!("running {what}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            what: what.to_owned(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_owned(),
        })
    }
}

/// Waits until `addr` accepts TCP connections.
fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A directory owned by this crate: a temporary one (removed on drop) or one the caller named.
enum Dir {
    Temp(tempfile::TempDir),
    Named(PathBuf),
}

impl Dir {
    fn new(dir: Option<&Path>, prefix: &str) -> Result<Self> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
                Ok(Dir::Named(d.to_path_buf()))
            }
            None => tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map(Dir::Temp)
                .map_err(io("creating a temporary directory")),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Named(p) => p,
        }
    }
}

/// 16 random bytes from the kernel, hex: passwords of throwaway roles.
fn random_hex() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("reading /dev/urandom"))?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret file readable by its owner only.
fn write_secret(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))
}

/// SIGTERM/SIGINT by PID through kill(1), then SIGKILL after `grace`; reaps the child.
fn stop_child(child: &mut std::process::Child, signal: &str, grace: Duration) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
