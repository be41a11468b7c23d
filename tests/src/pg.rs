//! A throwaway PostgreSQL server for tests and `certgate up --fleet`: the Debian `postgresql`
//! package's own `initdb` and `postgres`, run as the `postgres` user (PostgreSQL refuses root),
//! in a temporary data directory, on a free loopback port, with its unix socket in that
//! directory. Stopped by PID (fast shutdown, then SIGKILL) when dropped.
//!
//! Roles created (docs/postgres.md): `certgate_owner` owns the `certgate` database and applies
//! migrations; `certgate_app` is what cores connect as (no superuser, no BYPASSRLS, so row-level
//! security applies). Both authenticate with scram passwords kept in 0600 files; the superuser
//! `postgres` is reachable only through the unix socket (peer-less trust inside the temp dir).
//!
//! ```no_run
//! let pg = certgate_e2e::pg::PgServer::start();
//! let core_config_fragment = pg.store_toml(true, "core-a");
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server.
pub struct PgServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    /// Loopback TCP port.
    pub port: u16,
    /// The app role's URL (no password): `postgres://certgate_app@127.0.0.1:PORT/certgate`.
    pub url: String,
    /// File with the app role's password.
    pub password_file: PathBuf,
    /// The owner role's URL (no password), for `migrate_url`.
    pub owner_url: String,
    /// File with the owner role's password.
    pub owner_password_file: PathBuf,
    /// The superuser over the unix socket (trust): `host=DIR port=PORT user=postgres dbname=certgate`.
    pub admin_url: String,
    /// Directory holding the server's unix socket.
    pub socket_dir: PathBuf,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `postgres` (never relies on PATH).
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn as_postgres(bin: &Path, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--reset-env",
    ])
    .arg(bin.join(program));
    c
}

fn write_secret(path: &Path, value: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("create password file");
    std::io::Write::write_all(&mut f, value.as_bytes()).expect("write password file");
}

impl PgServer {
    /// Whether this machine can run one (Debian's `postgresql` package installed, `setpriv`).
    pub fn available() -> bool {
        bin_dir().is_some() && Path::new("/usr/bin/setpriv").exists()
    }

    /// initdb + postgres + roles + database; panics with the server log on failure.
    pub fn start() -> Self {
        let bin = bin_dir().expect("PostgreSQL binaries (apt-get install postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("certgate-pg-")
            .tempdir()
            .expect("temp dir");
        let (ok, _, err) = crate::run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
        );
        assert!(ok, "chown the pg dir: {err}");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        let (ok, _, err) = crate::run(Command::new("chown").arg("postgres:postgres").arg(&sock));
        assert!(ok, "chown the socket dir: {err}");
        let (ok, out, err) = crate::run(
            as_postgres(&bin, "initdb")
                .current_dir(dir.path())
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        );
        assert!(ok, "initdb failed:\n{out}\n{err}");
        let port = crate::free_port();
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).expect("pg log");
        let (ok, _, _) = crate::run(Command::new("chown").arg("postgres:postgres").arg(&log));
        assert!(ok, "chown the pg log");
        let child = as_postgres(&bin, "postgres")
            .current_dir(dir.path())
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn postgres");
        let owner_pw = random_hex();
        let app_pw = random_hex();
        let password_file = dir.path().join("app.password");
        let owner_password_file = dir.path().join("owner.password");
        write_secret(&password_file, &app_pw);
        write_secret(&owner_password_file, &owner_pw);
        let mut me = Self {
            admin_url: format!(
                "host={} port={port} user=postgres dbname=certgate",
                sock.display()
            ),
            url: format!("postgres://certgate_app@127.0.0.1:{port}/certgate"),
            owner_url: format!("postgres://certgate_owner@127.0.0.1:{port}/certgate"),
            dir,
            child: Some(child),
            bin,
            port,
            password_file,
            owner_password_file,
            socket_dir: sock,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, _, _) = me.psql_db("postgres", "SELECT 1");
            if ok {
                break;
            }
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("postgres exited ({status}):\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready in time:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let setup = format!(
            "CREATE ROLE certgate_owner LOGIN PASSWORD '{owner_pw}';
             CREATE ROLE certgate_app LOGIN PASSWORD '{app_pw}' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
             CREATE DATABASE certgate OWNER certgate_owner;"
        );
        for stmt in setup.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (ok, _, err) = me.psql_db("postgres", stmt);
            assert!(ok, "setup failed: {err}");
        }
        let (ok, _, err) = me.psql_db(
            "certgate",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO certgate_app;",
        );
        assert!(ok, "schema grants failed: {err}");
        me
    }

    fn psql_db(&self, db: &str, sql: &str) -> (bool, String, String) {
        crate::run(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )
    }

    /// Runs SQL as the superuser in the `certgate` database; panics on failure; the output rows
    /// (unaligned, tuples only).
    pub fn psql_admin(&self, sql: &str) -> String {
        let (ok, out, err) = self.psql_db("certgate", sql);
        assert!(ok, "psql as postgres failed: {err}\nSQL: {sql}");
        out
    }

    /// Runs SQL as the app role over TCP with its password (what a core connects as):
    /// (success, stdout, stderr).
    pub fn psql_as_app(&self, sql: &str) -> (bool, String, String) {
        let pw = std::fs::read_to_string(&self.password_file).expect("app password");
        crate::run(
            Command::new(self.bin.join("psql"))
                .env("PGPASSWORD", pw.trim())
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
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

    /// The `[store]` table of a core configuration using this server (`migrate` adds the owner
    /// role so that core applies migrations at start).
    pub fn store_toml(&self, migrate: bool, application_name: &str) -> String {
        let mut s = format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\napplication_name = \"{application_name}\"\npool_size = 8\n",
            self.url,
            self.password_file.display()
        );
        if migrate {
            s.push_str(&format!(
                "migrate_url = \"{}\"\nmigrate_password_file = \"{}\"\n",
                self.owner_url,
                self.owner_password_file.display()
            ));
        }
        s
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops the server: SIGINT (fast shutdown), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
