//! A throwaway `redis-server` (the Debian package's binary) on a free loopback port, for the
//! fleet tests: no persistence, stopped by PID when dropped, and restartable on the same port so
//! tests can take Redis away and bring it back under running edges.
//!
//! ```no_run
//! let mut redis = certgate_e2e::redis::RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:PORT/0
//! redis.stop();          // SIGKILL: the edges see connection failures
//! redis.restart();       // same port, empty data set
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{ChildGuard, free_port, run, temp_dir, wait_for_port};

/// The `redis-server` binary: `$REDIS_SERVER`, else the Debian path, else `PATH`.
pub fn redis_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/bin/redis-server");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("redis-server")
}

/// A running (or stopped, restartable) `redis-server`.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    guard: Option<ChildGuard>,
    starts: u32,
}

impl RedisServer {
    /// Starts one on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: temp_dir(),
            guard: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.guard.is_none(), "redis-server already running");
        let mut cmd = Command::new(redis_server_bin());
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let g = ChildGuard::spawn("redis-server", cmd, &log);
        assert!(
            wait_for_port(self.addr(), Duration::from_secs(20)),
            "redis-server not ready:\n{}",
            g.log()
        );
        self.guard = Some(g);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's PID (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, ChildGuard::pid)
    }

    /// Kills the server (SIGKILL, by PID) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "redis port still open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port (an empty data set: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `redis-cli -p PORT ARGS` and returns its stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = run(Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args));
        assert!(ok, "redis-cli {args:?} failed: {err}");
        out.trim().to_owned()
    }
}
