//! A throwaway `redis-server` for the fleet tests: [`certgate_devservers::redis::RedisServer`]
//! (free loopback port, no persistence, killed by PID, restartable on the same port) with the
//! panicking constructors and the `redis-cli` helper tests want.
//!
//! ```no_run
//! let mut redis = certgate_e2e::redis::RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:PORT/0
//! redis.stop();          // SIGKILL: the edges see connection failures
//! redis.restart();       // same port, empty data set
//! ```

use std::process::Command;

use crate::run;

pub use certgate_devservers::redis::redis_server_bin;

/// A running (or stopped, restartable) `redis-server`.
pub struct RedisServer(certgate_devservers::redis::RedisServer);

impl RedisServer {
    /// Starts one on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self(
            certgate_devservers::redis::RedisServer::start()
                .unwrap_or_else(|e| panic!("redis-server: {e}")),
        )
    }

    /// Starts it again on the same port (an empty data set: nothing is persisted).
    pub fn restart(&mut self) {
        if let Err(e) = self.0.restart() {
            panic!("restarting redis-server: {e}");
        }
    }

    /// Runs `redis-cli -p PORT ARGS` and returns its stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = run(Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.0.port().to_string()])
            .args(args));
        assert!(ok, "redis-cli {args:?} failed: {err}");
        out.trim().to_owned()
    }
}

impl std::ops::Deref for RedisServer {
    type Target = certgate_devservers::redis::RedisServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
