//! Child processes of `init` and `up`: the signer, the core and the edge, found next to this
//! executable (binaries are leaves; `up` spawns them, never links them — STYLE.md practice 8).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::error::{CliError, Result, io};

/// A sibling binary of the running `certgate`.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io("locating the certgate executable"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| CliError::Process("the certgate executable has no directory".into()))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(CliError::Process(format!(
            "{name} not found next to certgate in {} — build every binary first: \
             cargo build --release --workspace --bins",
            dir.display()
        )))
    }
}

/// A running child, killed if dropped while still running (so an error path never leaks one).
pub struct Proc {
    /// Which binary.
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `name` (a sibling binary) with `args`, stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, args: &[&std::ffi::OsStr], log: &Path) -> Result<Self> {
        let exe = sibling(name)?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(log.display()))?;
        let err = out.try_clone().map_err(io(log.display()))?;
        let child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // The children exit by themselves if this process dies without stopping them
            // (SIGKILL, crash): see certgate_proto::parent.
            .env(
                certgate_proto::parent::PARENT_PID_ENV,
                std::process::id().to_string(),
            )
            // Own process group: a terminal's Ctrl-C reaches only `certgate up`, which then
            // stops the children in order (edge, core, signer) instead of all racing at once.
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", exe.display())))?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// The child's pid (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the child has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An error saying the child died, with its log tail.
    pub fn died(&mut self) -> CliError {
        let status = self
            .exited()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "running".into());
        CliError::Process(format!(
            "{} exited ({status}); last log lines ({}):\n{}",
            self.name,
            self.log.display(),
            self.log_tail(20)
        ))
    }

    /// Stops the child: SIGTERM, wait up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Waits until `ready` returns true, failing early if the child exits.
    pub async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited().is_some() {
                return Err(self.died());
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CliError::Process(format!(
                    "{} did not become ready ({what}) within {}s; last log lines ({}):\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display(),
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether something accepts connections on the Unix socket `path`.
pub async fn socket_accepts(path: &Path) -> bool {
    tokio::net::UnixStream::connect(path).await.is_ok()
}

/// Status code of `GET path` on a plain-HTTP `addr` (HTTP/1.1, Connection: close), if any.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let m = s.read(&mut buf[n..]).await.ok()?;
            if m == 0 {
                break;
            }
            n += m;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}
