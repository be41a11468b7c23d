//! A throwaway `redis-server` (the Debian package's binary) on a free loopback port: no
//! persistence, stopped by PID, and restartable on the same port so fault tests can take Redis
//! away and bring it back under running edges.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Dir, Error, Result, io};

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

/// A running (or stopped, restartable) `redis-server`; killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: Dir,
    child: Option<Child>,
    starts: u32,
}

impl RedisServer {
    /// Starts one in a temporary directory on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_in(None)
    }

    /// Starts one with its logs in `dir` (or a temporary directory) and waits until it accepts
    /// connections.
    pub fn start_in(dir: Option<&Path>) -> Result<Self> {
        let mut s = Self {
            port: crate::free_port()?,
            dir: Dir::new(dir, "certgate-redis-")?,
            child: None,
            starts: 0,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let log = self.log_path();
        let out = std::fs::File::create(&log).map_err(io("creating the redis log"))?;
        let err = out.try_clone().map_err(io("redis log handle"))?;
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
        .arg(self.dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInstalled("redis-server", "redis-server"));
            }
            Err(e) => return Err(io("spawning redis-server")(e)),
        };
        self.child = Some(child);
        if !crate::wait_for_port(self.addr(), Duration::from_secs(20)) {
            self.stop();
            return Err(Error::Failed {
                what: "waiting for redis-server".into(),
                detail: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
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
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL, by PID) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port (an empty data set: nothing is persisted).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
