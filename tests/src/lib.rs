//! Harness for certgate's end-to-end tests: real binaries, real sockets, child processes owned by
//! guards that kill them on drop (so a failing test never leaves a process behind).
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`). The
//! README's test command builds them first; if one is missing, the harness builds it once with
//! cargo so `cargo nextest run -p certgate-e2e` also works on its own.

pub mod cmp;
pub mod h3client;
pub mod pg;
pub mod redis;
pub mod scep;
pub mod tls_stores;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cargo package that builds each binary.
fn package_of(bin: &str) -> &'static str {
    match bin {
        "certgate" => "certgate-cli",
        "certgate-signer" => "certgate-signer",
        "certgate-core" => "certgate-core",
        "certgate-edge" => "certgate-edge",
        "certgate-bench" => "certgate-bench",
        _ => "certgate-e2e",
    }
}

/// `target/<profile>`, found from the running test executable (`target/<profile>/deps/test-…`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Path of a certgate binary, building it if it is not there yet.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if path.exists() {
        return path;
    }
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let release = profile_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", package_of(name), "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
    }
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A child process that is killed (SIGKILL) and reaped when the guard drops.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open child log");
        let err = out.try_clone().expect("clone log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the child has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the child now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    /// SIGTERM first, so a supervisor (`certgate up`) stops its own children instead of leaving
    /// them orphaned, as a SIGKILL would; SIGKILL if it has not exited within a few seconds.
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(10));
    }
}

/// Waits until `needle` appears in `child`'s log; returns the log. Panics with the log after
/// `timeout` (the child's own output is the diagnosis).
pub fn wait_for_log(child: &ChildGuard, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = child.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not printed within {timeout:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `certgate up` on `fleet`'s data dir and ports (log in scratch/up.log), returned once it has
/// printed its banner; builds the sibling binaries `up` spawns first.
pub fn start_up(fleet: &Fleet) -> ChildGuard {
    for b in ["certgate-signer", "certgate-core", "certgate-edge"] {
        bin(b);
    }
    let mut cmd = Command::new(bin("certgate"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(fleet.data_dir())
        .args(fleet.port_args());
    let up = ChildGuard::spawn("certgate up", cmd, &fleet.scratch().join("up.log"));
    wait_for_log(&up, "Press Ctrl-C to stop.", Duration::from_secs(180));
    up
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Waits until `path` exists.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs a command to completion and returns (success, stdout, stderr).
pub fn run(command: &mut Command) -> (bool, String, String) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("certgate-e2e-")
        .tempdir()
        .expect("create temp dir")
}

/// `GET path` on a plain-HTTP `addr` (HTTP/1.1, `Connection: close`): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw[split + 4..].to_vec()))
}

/// Whether a process with `pid` still exists (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until something accepts connections on the Unix socket `path` (a stale socket file
/// left by a stopped process does not count).
pub fn wait_for_unix_socket(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Makes a P-256 key and a CSR for `dns_name` with OpenSSL; returns (key path, CSR path).
pub fn openssl_csr(dir: &Path, name: &str, dns_name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &csr.to_string_lossy(),
        "-subj",
        &format!("/CN={dns_name}"),
        "-addext",
        &format!("subjectAltName=DNS:{dns_name}"),
    ]));
    assert!(ok, "openssl req failed: {err}");
    (key, csr)
}

/// A whole certgate fleet in a temporary data dir on free loopback ports, for tests that start,
/// stop and kill the signer, core and edge individually, and run `certgate` commands against it.
///
/// ```no_run
/// let mut fleet = certgate_e2e::Fleet::init();
/// fleet.start_signer();
/// fleet.start_core();
/// let (ok, out, err) = fleet.cli(&["ca", "list"]);
/// fleet.kill_core(); // SIGKILL, e.g. for crash-and-retry tests
/// ```
pub struct Fleet {
    dir: tempfile::TempDir,
    /// Edge HTTPS address.
    pub https: SocketAddr,
    /// Edge plain HTTP address.
    pub http: SocketAddr,
    /// Edge admin address.
    pub admin: SocketAddr,
    signer: Option<ChildGuard>,
    core: Option<ChildGuard>,
    edge: Option<ChildGuard>,
}

/// How long a fleet process gets to become ready (debug builds on a busy 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Fleet {
    /// A data dir prepared by `certgate init` on free ports; nothing left running.
    pub fn init() -> Self {
        let fleet = Self::uninitialised();
        let (ok, out, err) = fleet.cli(&["init"]);
        assert!(ok, "certgate init failed\nstdout:\n{out}\nstderr:\n{err}");
        fleet
    }

    /// A fresh empty data dir with free ports chosen (for tests of `init`/`up` themselves).
    pub fn uninitialised() -> Self {
        let dir = temp_dir();
        Self {
            https: loopback(free_port()),
            http: loopback(free_port()),
            admin: loopback(free_port()),
            dir,
            signer: None,
            core: None,
            edge: None,
        }
    }

    /// Issuances the core recorded for `protocol` (`issue.intent` audit entries), read from the
    /// core's SQLite store with the `sqlite3` CLI (read-only, beside the running core).
    pub fn issued_by(&self, protocol: &str) -> usize {
        let out = std::process::Command::new("sqlite3")
            .arg("-readonly")
            .arg(self.data_dir().join("core/core.db"))
            .arg(format!(
                "SELECT count(*) FROM audit WHERE kind = 'issue.intent' \
                 AND details LIKE '%\"protocol\":\"{protocol}\"%'"
            ))
            .output()
            .expect("sqlite3 runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count")
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory next to the data dir (CSRs, outputs).
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// The signer's config file.
    pub fn signer_config(&self) -> PathBuf {
        self.data_dir().join("signer/signer.toml")
    }
    /// The core's config file.
    pub fn core_config(&self) -> PathBuf {
        self.data_dir().join("core/core.toml")
    }
    /// The edge's config file.
    pub fn edge_config(&self) -> PathBuf {
        self.data_dir().join("edge/edge.toml")
    }
    /// The signer's socket.
    pub fn signer_socket(&self) -> PathBuf {
        self.data_dir().join("run/signer.sock")
    }
    /// The core's socket.
    pub fn core_socket(&self) -> PathBuf {
        self.data_dir().join("run/core.sock")
    }
    /// The dev root certificate.
    pub fn root_pem(&self) -> PathBuf {
        self.data_dir().join("ca/root.pem")
    }
    /// Issuing CA + intermediate.
    pub fn chain_pem(&self) -> PathBuf {
        self.data_dir().join("ca/chain.pem")
    }
    /// The dev custodian key.
    pub fn dev_custodian_key(&self) -> PathBuf {
        self.data_dir().join("custodians/dev.pem")
    }

    /// `dev-credentials.toml` as key → value.
    pub fn credentials(&self) -> std::collections::BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.data_dir().join("dev-credentials.toml"))
            .unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            })
            .collect()
    }

    /// The `--https/--http/--admin` flags of this fleet.
    pub fn port_args(&self) -> Vec<String> {
        vec![
            "--https".into(),
            self.https.to_string(),
            "--http".into(),
            self.http.to_string(),
            "--admin".into(),
            self.admin.to_string(),
        ]
    }

    /// Runs `certgate ARGS --data-dir DIR` (plus the port flags for `init`); returns (success,
    /// stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(bin("certgate"));
        cmd.args(args).arg("--data-dir").arg(self.data_dir());
        if args.first() == Some(&"init") {
            cmd.args(self.port_args());
        }
        run(&mut cmd)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts the signer and waits for its socket.
    pub fn start_signer(&mut self) {
        let mut cmd = Command::new(bin("certgate-signer"));
        cmd.arg("--config").arg(self.signer_config());
        let g = ChildGuard::spawn("certgate-signer", cmd, &self.log("signer"));
        assert!(
            wait_for_unix_socket(&self.signer_socket(), READY_TIMEOUT),
            "signer not ready:\n{}",
            g.log()
        );
        self.signer = Some(g);
    }

    /// Starts the core (with extra environment, e.g. `CERTGATE_FAULT`) and waits for its socket.
    pub fn start_core_with_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(bin("certgate-core"));
        cmd.arg("--config").arg(self.core_config());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let g = ChildGuard::spawn("certgate-core", cmd, &self.log("core"));
        assert!(
            wait_for_unix_socket(&self.core_socket(), READY_TIMEOUT),
            "core not ready:\n{}",
            g.log()
        );
        self.core = Some(g);
    }

    /// Starts the core and waits for its socket.
    pub fn start_core(&mut self) {
        self.start_core_with_env(&[]);
    }

    /// Starts the edge and waits until its admin `/healthz` answers 200.
    pub fn start_edge(&mut self) {
        let mut cmd = Command::new(bin("certgate-edge"));
        cmd.arg("--config").arg(self.edge_config());
        let g = ChildGuard::spawn("certgate-edge", cmd, &self.log("edge"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while http_get(self.admin, "/healthz").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "edge not ready:\n{}", g.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.edge = Some(g);
    }

    /// Starts signer, core and edge.
    pub fn start_all(&mut self) {
        self.start_signer();
        self.start_core();
        self.start_edge();
    }

    /// The signer's guard, if running.
    pub fn signer(&mut self) -> Option<&mut ChildGuard> {
        self.signer.as_mut()
    }
    /// The core's guard, if running.
    pub fn core(&mut self) -> Option<&mut ChildGuard> {
        self.core.as_mut()
    }
    /// The edge's guard, if running.
    pub fn edge(&mut self) -> Option<&mut ChildGuard> {
        self.edge.as_mut()
    }

    /// SIGTERM the signer and wait.
    pub fn stop_signer(&mut self) {
        if let Some(mut g) = self.signer.take() {
            g.terminate(Duration::from_secs(10));
        }
    }
    /// SIGTERM the core and wait.
    pub fn stop_core(&mut self) {
        if let Some(mut g) = self.core.take() {
            g.terminate(Duration::from_secs(10));
        }
    }
    /// SIGTERM the edge and wait.
    pub fn stop_edge(&mut self) {
        if let Some(mut g) = self.edge.take() {
            g.terminate(Duration::from_secs(10));
        }
    }
    /// SIGKILL the signer.
    pub fn kill_signer(&mut self) {
        if let Some(mut g) = self.signer.take() {
            g.kill();
        }
    }
    /// SIGKILL the core (crash tests).
    pub fn kill_core(&mut self) {
        if let Some(mut g) = self.core.take() {
            g.kill();
        }
    }
    /// SIGKILL the edge.
    pub fn kill_edge(&mut self) {
        if let Some(mut g) = self.edge.take() {
            g.kill();
        }
    }

    /// Logs of every process started so far (for assertion messages).
    pub fn logs(&self) -> String {
        ["signer", "core", "edge"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n} ---\n{}\n",
                    std::fs::read_to_string(self.log(n)).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Front to back, like `certgate up`.
        self.kill_edge();
        self.kill_core();
        self.kill_signer();
    }
}
