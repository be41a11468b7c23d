//! A throwaway PostgreSQL server: the Debian `postgresql` package's own `initdb` and `postgres`,
//! in a private data directory, on a free loopback port, with its unix socket in that directory.
//!
//! Roles created (docs/postgres.md): `certgate_owner` owns the `certgate` database and applies
//! migrations; `certgate_app` is what cores connect as (no superuser, no BYPASSRLS, so row-level
//! security applies). Both authenticate over TCP with scram passwords kept in 0600 files; the
//! superuser `postgres` is reachable only through the unix socket in the private directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Dir, Error, Result, io, run};

/// A running PostgreSQL server; stopped (fast shutdown, then SIGKILL) when dropped.
pub struct PgServer {
    dir: Dir,
    child: Option<Child>,
    bin: PathBuf,
    as_postgres: bool,
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
    /// The superuser over the unix socket: `host=DIR port=PORT user=postgres dbname=certgate`.
    pub admin_url: String,
    /// Directory holding the server's unix socket.
    pub socket_dir: PathBuf,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `postgres` (never relies on PATH:
/// Debian keeps the server binaries out of it).
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

impl PgServer {
    /// Whether this machine can run one (Debian's `postgresql` package installed, and `setpriv`
    /// when running as root).
    pub fn available() -> bool {
        bin_dir().is_some() && (!crate::is_root() || Path::new("/usr/bin/setpriv").exists())
    }

    /// Starts one in a temporary directory removed when it is dropped.
    pub fn start() -> Result<Self> {
        Self::start_in(None)
    }

    /// initdb + postgres + roles + database, in `dir` (created; must not hold a cluster yet) or
    /// in a temporary directory.
    pub fn start_in(dir: Option<&Path>) -> Result<Self> {
        let bin = bin_dir().ok_or(Error::NotInstalled("PostgreSQL", "postgresql"))?;
        let as_postgres = crate::is_root();
        let dir = Dir::new(dir, "certgate-pg-")?;
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).map_err(io("creating the socket directory"))?;
        let log = dir.path().join("postgres.log");
        std::fs::File::create(&log).map_err(io("creating postgres.log"))?;
        if as_postgres {
            for p in [dir.path(), &sock, &log] {
                run(
                    "chown postgres",
                    Command::new("chown").arg("postgres:postgres").arg(p),
                )?;
            }
        }
        let cmd = |program: &str| server_command(&bin, as_postgres, program);
        run(
            "initdb",
            cmd("initdb")
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
        )?;
        let port = crate::free_port()?;
        let password_file = dir.path().join("app.password");
        let owner_password_file = dir.path().join("owner.password");
        let mut me = Self {
            admin_url: format!(
                "host={} port={port} user=postgres dbname=certgate",
                sock.display()
            ),
            url: format!("postgres://certgate_app@127.0.0.1:{port}/certgate"),
            owner_url: format!("postgres://certgate_owner@127.0.0.1:{port}/certgate"),
            dir,
            child: None,
            bin,
            as_postgres,
            port,
            password_file,
            owner_password_file,
            socket_dir: sock,
        };
        // From here on, a failure drops `me`, which stops the server.
        me.resume()?;
        let owner_pw = crate::random_hex()?;
        let app_pw = crate::random_hex()?;
        crate::write_secret(&me.password_file, &app_pw)?;
        crate::write_secret(&me.owner_password_file, &owner_pw)?;
        for stmt in [
            format!("CREATE ROLE certgate_owner LOGIN PASSWORD '{owner_pw}'"),
            format!(
                "CREATE ROLE certgate_app LOGIN PASSWORD '{app_pw}' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
            ),
            "CREATE DATABASE certgate OWNER certgate_owner".to_owned(),
        ] {
            me.psql("postgres", &stmt)?;
        }
        me.psql(
            "certgate",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO certgate_app;",
        )?;
        Ok(me)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(Error::Failed {
                    what: format!("postgres (exited {status})"),
                    detail: self.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Failed {
                    what: "waiting for postgres".into(),
                    detail: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL as the superuser over the unix socket in database `db`; the output rows
    /// (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        run("psql", &mut c)
    }

    /// The psql binary of this server's version.
    pub fn psql_bin(&self) -> PathBuf {
        self.bin.join("psql")
    }

    /// The `[store]` table of a core configuration using this server (`migrate` adds the owner
    /// role, so that core applies migrations at start).
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

    /// The server's private directory (data, socket, log, password files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's PID (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the server was started as the `postgres` user (we are root).
    pub fn runs_as_postgres(&self) -> bool {
        self.as_postgres
    }

    /// Starts the server on its port and data directory and waits until it accepts connections:
    /// the first start, and a restart with the same roles and passwords (what a database restart
    /// looks like to the cores). Does nothing while it runs.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = self.dir.path().join("postgres.log");
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(io("opening postgres.log"))?;
        let mut c = server_command(&self.bin, self.as_postgres, "postgres");
        let child = c
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
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
            .stdout(log_file.try_clone().map_err(io("postgres log handle"))?)
            .stderr(log_file)
            .spawn()
            .map_err(io("spawning postgres"))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// [`stop`](Self::stop) (fast shutdown) then [`resume`](Self::resume): a restart on the same
    /// port with the data kept.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.resume()
    }

    /// Stops the server: SIGINT (fast shutdown: in-flight transactions roll back), SIGKILL after
    /// 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::stop_child(&mut c, "-INT", Duration::from_secs(10));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` of the server's version, as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root).
fn server_command(bin: &Path, as_postgres: bool, program: &str) -> Command {
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}
