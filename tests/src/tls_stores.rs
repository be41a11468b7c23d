//! TLS variants of the throwaway store servers (docs/postgres.md, docs/operations.md "TLS to the
//! stores"): PostgreSQL switched to `ssl=on` with `hostssl`-only rules, and a `redis-server`
//! listening on a TLS port only. The certificates come from the test (rcgen at test time); this
//! file only installs them where each server wants them.
//!
//! ```no_run
//! let pg = certgate_e2e::pg::PgServer::start();
//! # let (cert, key, ca) = (String::new(), String::new(), String::new());
//! certgate_e2e::tls_stores::enable_pg_tls(&pg, &cert, &key, &ca, "hostssl all all 127.0.0.1/32 scram-sha-256\n");
//! let redis = certgate_e2e::tls_stores::RedisTlsServer::start(&cert, &key, &ca, false);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ChildGuard, free_port, run, wait_for_port};

fn write_mode(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Turns TLS on in a running [`crate::pg::PgServer`]: the server certificate and key (key 0600,
/// owned by the server's user, as PostgreSQL demands), `ssl_ca_file` for client certificates,
/// and `hba` as the whole of pg_hba.conf's TCP rules (the superuser's unix-socket `trust` rule
/// is kept so the harness can still administer it). Reloads and waits until new sessions see
/// `ssl = on`; panics with the server log otherwise.
pub fn enable_pg_tls(
    pg: &crate::pg::PgServer,
    server_cert_pem: &str,
    server_key_pem: &str,
    client_ca_pem: &str,
    hba: &str,
) {
    let data = pg.dir().join("data");
    let files = [
        ("server.crt", server_cert_pem, 0o644),
        ("server.key", server_key_pem, 0o600),
        ("client-ca.crt", client_ca_pem, 0o644),
    ];
    for (name, pem, mode) in files {
        let p = data.join(name);
        write_mode(&p, pem, mode);
        if pg.runs_as_postgres() {
            let (ok, _, err) = run(Command::new("chown").arg("postgres:postgres").arg(&p));
            assert!(ok, "chown {}: {err}", p.display());
        }
    }
    write_mode(
        &data.join("pg_hba.conf"),
        &format!("local all all trust\n{hba}"),
        0o600,
    );
    if pg.runs_as_postgres() {
        let (ok, _, err) = run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(data.join("pg_hba.conf")));
        assert!(ok, "chown pg_hba.conf: {err}");
    }
    for stmt in [
        "ALTER SYSTEM SET ssl = on".to_owned(),
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            data.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            data.join("server.key").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_ca_file = '{}'",
            data.join("client-ca.crt").display()
        ),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        pg.psql_admin(&stmt);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql_admin("SHOW ssl").trim() != "on" {
        assert!(
            Instant::now() < deadline,
            "postgres did not turn ssl on:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sessions of `application_name` prefix `app` and whether each is encrypted, from
/// `pg_stat_ssl` (what the server says, not what the client thinks).
pub fn pg_sessions_ssl(pg: &crate::pg::PgServer, app: &str) -> Vec<bool> {
    pg.psql_admin(&format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name LIKE '{}%'",
        app.replace('\'', "''")
    ))
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| l.trim() == "t")
    .collect()
}

/// A `redis-server` with TLS on a free loopback port and no plain port; killed on drop.
pub struct RedisTlsServer {
    _dir: tempfile::TempDir,
    child: ChildGuard,
    port: u16,
    ca_file: PathBuf,
}

impl RedisTlsServer {
    /// Starts one with this certificate and key; `ca_pem` verifies client certificates, which
    /// are required when `auth_clients` (Redis `tls-auth-clients yes`).
    pub fn start(cert_pem: &str, key_pem: &str, ca_pem: &str, auth_clients: bool) -> Self {
        let dir = crate::temp_dir();
        let (cert, key, ca) = (
            dir.path().join("redis.crt"),
            dir.path().join("redis.key"),
            dir.path().join("ca.crt"),
        );
        write_mode(&cert, cert_pem, 0o644);
        write_mode(&key, key_pem, 0o600);
        write_mode(&ca, ca_pem, 0o644);
        let port = free_port();
        let mut cmd = Command::new(crate::redis::redis_server_bin());
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .arg("--dir")
            .arg(dir.path());
        let mut child = ChildGuard::spawn("redis-server-tls", cmd, &dir.path().join("redis.log"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !wait_for_port(addr, Duration::from_secs(20)) {
            let log = child.log();
            child.kill();
            panic!("redis-server with TLS did not listen on {addr}:\n{log}");
        }
        Self {
            _dir: dir,
            child,
            port,
            ca_file: ca,
        }
    }

    /// `rediss://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Runs `redis-cli --tls` against it with `args` (client certificate files optional) and
    /// returns (success, stdout).
    pub fn cli(&self, client: Option<(&Path, &Path)>, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--tls"])
            .arg("--cacert")
            .arg(&self.ca_file);
        if let Some((cert, key)) = client {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let (ok, out, _) = run(c.args(args));
        (ok, out.trim().to_owned())
    }
}

/// A test CA and what it issued (rcgen, P-256): PEM strings for the server side, files for the
/// client side (what `[store.tls]` and `[redis] tls_*` name).
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The same, as a file.
    pub ca_file: PathBuf,
    /// The server certificate (serverAuth, the SANs asked for), PEM.
    pub server_cert: String,
    /// Its key, PEM (PKCS#8).
    pub server_key: String,
    /// The client certificate (clientAuth, CN as asked), file.
    pub client_cert_file: PathBuf,
    /// Its key, file.
    pub client_key_file: PathBuf,
}

/// A leaf certificate signed by `issuer`: (certificate PEM, key PEM).
fn issue(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    sans: &[&str],
    cn: &str,
    client: bool,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// A CA named `name`, a server certificate for `server_sans`, and a client certificate whose CN
/// is `client_cn` (PostgreSQL maps it to the role), written under `dir/name-*`.
pub fn pki(dir: &Path, name: &str, server_sans: &[&str], client_cn: &str) -> Pki {
    let key = rcgen::KeyPair::generate().expect("ca key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} store CA"));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(p, key).expect("ca");
    let (server_cert, server_key) = issue(&ca, server_sans, server_sans[0], false);
    let (client_cert, client_key) = issue(&ca, &[], client_cn, true);
    let ca_file = dir.join(format!("{name}-ca.pem"));
    let client_cert_file = dir.join(format!("{name}-client.pem"));
    let client_key_file = dir.join(format!("{name}-client.key"));
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    std::fs::write(&client_cert_file, client_cert).expect("write client cert");
    std::fs::write(&client_key_file, client_key).expect("write client key");
    Pki {
        ca_pem: ca.pem(),
        ca_file,
        server_cert,
        server_key,
        client_cert_file,
        client_key_file,
    }
}
