//! A throwaway PostgreSQL server for tests: [`certgate_devservers::pg::PgServer`] (Debian's
//! `initdb`/`postgres` as the `postgres` user, free loopback port, private directory, stopped by
//! PID) with panicking constructors and the SQL helpers tests want.
//!
//! Roles (docs/postgres.md): `certgate_owner` owns the `certgate` database and applies
//! migrations; `certgate_app` is what cores connect as (no superuser, no BYPASSRLS, so row-level
//! security applies).
//!
//! ```no_run
//! let pg = certgate_e2e::pg::PgServer::start();
//! let core_config_fragment = pg.store_toml(true, "core-a");
//! ```

use std::process::Command;

pub use certgate_devservers::pg::bin_dir;

/// A running PostgreSQL server; stopped when dropped.
pub struct PgServer(certgate_devservers::pg::PgServer);

impl PgServer {
    /// Whether this machine can run one (Debian's `postgresql` package installed, `setpriv`).
    pub fn available() -> bool {
        certgate_devservers::pg::PgServer::available()
    }

    /// initdb + postgres + roles + database; panics with the reason on failure.
    pub fn start() -> Self {
        Self(certgate_devservers::pg::PgServer::start().unwrap_or_else(|e| panic!("postgres: {e}")))
    }

    /// Runs SQL as the superuser in the `certgate` database; panics on failure; the output rows
    /// (unaligned, tuples only).
    pub fn psql_admin(&self, sql: &str) -> String {
        self.0
            .psql("certgate", sql)
            .unwrap_or_else(|e| panic!("psql as postgres: {e}\nSQL: {sql}"))
    }

    /// Runs SQL as the app role over TCP with its password (what a core connects as):
    /// (success, stdout, stderr).
    pub fn psql_as_app(&self, sql: &str) -> (bool, String, String) {
        let pw = std::fs::read_to_string(&self.0.password_file).expect("app password");
        crate::run(
            Command::new(self.0.psql_bin())
                .env("PGPASSWORD", pw.trim())
                .args(["-h", "127.0.0.1", "-p", &self.0.port.to_string()])
                .args(["-U", "certgate_app", "-d", "certgate"])
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )
    }

    /// Ends every backend whose `application_name` is `name` (a core's connections, or its CRL
    /// lease with `-crl-lease`); returns how many.
    pub fn terminate_backends(&self, name: &str) -> usize {
        let out = self.psql_admin(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{}'",
            name.replace('\'', "''")
        ));
        out.trim().parse().unwrap_or(0)
    }
}

impl std::ops::Deref for PgServer {
    type Target = certgate_devservers::pg::PgServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PgServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
