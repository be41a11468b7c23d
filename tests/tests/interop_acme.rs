//! ACME interop: real third-party clients (certbot, lego, instant-acme) obtain, renew and revoke
//! certificates from `certgate up`, with no flags beyond trusting the dev root.
//!
//! Every test starts its own fleet (`certgate init`, then `certgate up` on free ports) and drives
//! one client to completion; a client failure fails the test with the client's output and the
//! fleet's log. Issued chains are checked with `openssl verify` against the dev root, and every
//! revocation is checked at the fleet's own OCSP responder.
//!
//! Dev validation follows Pebble's convention (http-01 at 127.0.0.1:5002, tls-alpn-01 at
//! 127.0.0.1:5001 for any name); those ports are fixed, so the client runs that bind them hold a
//! file lock (`dev_port_lock`) and never overlap, whatever runs the tests. dns-01 uses
//! `pebble-challtestsrv` on a free port as the resolver, configured in core.toml's `[acme]`.
//!
//! `CERTGATE_INTEROP_SERVER=pebble` runs the same client command lines against Pebble instead
//! (the reference server this harness was developed against).
//!
//! The clients are Debian packages (`certbot`, `lego`, `pebble` for `pebble-challtestsrv`,
//! plus `openssl` and `curl`): a missing one fails the test with a message, it is never skipped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certgate_e2e::{ChildGuard, Fleet, bin, free_port, run, temp_dir, wait_for_port};

/// Names of the Debian packages the tests need, for failure messages.
const PACKAGES: &str = "certbot lego pebble openssl curl";

/// The absolute path of `tool` on PATH; panics (never skips) when it is missing.
fn require(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed: the ACME interop tests need the Debian packages \
                 {PACKAGES} (.ci/run installs them)"
            )
        })
}

/// Serializes every client run that binds the fixed dev validation ports 5001/5002 (an exclusive
/// `flock` on a well-known file, so it holds across nextest's one-process-per-test model).
fn dev_port_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("certgate-acme-dev-ports-5001-5002.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the dev port lock file");
    file.lock().expect("lock the dev port lock file");
    file
}

/// `pebble-challtestsrv` as a DNS server on a free loopback port, its management API used to set
/// and clear the `_acme-challenge` TXT records (lego's `exec` provider calls it with curl).
struct ChallTestSrv {
    dns: SocketAddr,
    management: SocketAddr,
    _guard: ChildGuard,
}

impl ChallTestSrv {
    fn start(dir: &Path) -> Self {
        let exe = require("pebble-challtestsrv");
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(exe);
        cmd.args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &dns.to_string()])
            .args(["-management", &management.to_string()])
            // A records only: every name is 127.0.0.1 (Pebble resolves through it too).
            .args(["-defaultIPv6", ""]);
        let guard = ChildGuard::spawn("pebble-challtestsrv", cmd, &dir.join("challtestsrv.log"));
        assert!(
            wait_for_port(management, Duration::from_secs(20)),
            "pebble-challtestsrv did not start:\n{}",
            guard.log()
        );
        Self {
            dns,
            management,
            _guard: guard,
        }
    }

    /// A hook for lego's `exec` provider (`$1` present|cleanup, `$2` FQDN, `$3` TXT value).
    fn lego_exec_hook(&self, dir: &Path) -> PathBuf {
        let path = dir.join("lego-dns-hook.sh");
        let m = self.management;
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nset -e\ncase \"$1\" in\n  present) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" http://{m}/set-txt ;;\n  cleanup) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\"}}\" http://{m}/clear-txt ;;\nesac\n"
            ),
        )
        .expect("write the lego exec hook");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the lego exec hook");
        path
    }
}

enum Server {
    Certgate {
        fleet: Box<Fleet>,
        up: Option<ChildGuard>,
    },
    Pebble {
        management: SocketAddr,
        guard: ChildGuard,
    },
}

/// The ACME server under test plus what the clients need to talk to it.
struct Target {
    server: Server,
    /// The directory URL.
    directory: String,
    /// What the clients trust for the directory's HTTPS (certgate: the dev root).
    client_ca: PathBuf,
    /// The trust anchor of issued chains.
    issuer_root: PathBuf,
    dns: Option<ChallTestSrv>,
    work: tempfile::TempDir,
}

fn write_core_dns_resolver(core_toml: &Path, resolver: SocketAddr) {
    let text = std::fs::read_to_string(core_toml).expect("read core.toml");
    let line = format!("dns_resolver = \"{resolver}\"");
    let text = match text.find("\n[acme]\n") {
        Some(at) => {
            let after = at + "\n[acme]\n".len();
            format!("{}{line}\n{}", &text[..after], &text[after..])
        }
        None => format!("{text}\n[acme]\n{line}\n"),
    };
    std::fs::write(core_toml, text).expect("write core.toml");
}

impl Target {
    /// Starts the server (and, with `dns`, a challtestsrv it uses as its dns-01 resolver).
    fn start(dns: bool) -> Self {
        require("openssl");
        require("curl");
        let work = temp_dir();
        match std::env::var("CERTGATE_INTEROP_SERVER").as_deref() {
            Ok("pebble") => Self::pebble(work),
            Ok("certgate") | Err(_) => Self::certgate(work, dns),
            Ok(other) => panic!("CERTGATE_INTEROP_SERVER={other}: expected certgate or pebble"),
        }
    }

    fn certgate(work: tempfile::TempDir, dns: bool) -> Self {
        for b in ["certgate-signer", "certgate-core", "certgate-edge"] {
            bin(b);
        }
        let dns = dns.then(|| ChallTestSrv::start(work.path()));
        let fleet = Fleet::init();
        if let Some(d) = &dns {
            write_core_dns_resolver(&fleet.core_config(), d.dns);
        }
        let mut cmd = Command::new(bin("certgate"));
        cmd.arg("up")
            .arg("--data-dir")
            .arg(fleet.data_dir())
            .args(fleet.port_args());
        let up = ChildGuard::spawn("certgate up", cmd, &work.path().join("up.log"));
        let deadline = Instant::now() + Duration::from_secs(180);
        while !up.log().contains("Press Ctrl-C to stop.") {
            assert!(
                Instant::now() < deadline,
                "certgate up not ready:\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            directory: format!("https://{}/acme/directory", fleet.https),
            client_ca: fleet.root_pem(),
            issuer_root: fleet.root_pem(),
            server: Server::Certgate {
                fleet: Box::new(fleet),
                up: Some(up),
            },
            dns,
            work,
        }
    }

    fn pebble(work: tempfile::TempDir) -> Self {
        let exe = require("pebble");
        let dir = work.path();
        let dns = ChallTestSrv::start(dir);
        // Pebble's listener certificate, issued by a throwaway CA (webpki, under instant-acme,
        // refuses a self-signed CA certificate as a server certificate).
        let (ok, _, err) = run(Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-keyout",
                "tls-ca.key",
                "-out",
                "tls-ca.pem",
                "-days",
                "30",
            ])
            .args(["-subj", "/CN=pebble listener CA"]));
        assert!(ok, "openssl req (CA): {err}");
        let (ok, _, err) = run(Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "30",
            ])
            .args([
                "-CA",
                "tls-ca.pem",
                "-CAkey",
                "tls-ca.key",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]));
        assert!(ok, "openssl req (listener): {err}");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(
            dir.join("pebble.json"),
            format!(
                r#"{{"pebble":{{"listenAddress":"{listen}","managementListenAddress":"{management}",
 "certificate":"cert.pem","privateKey":"key.pem","httpPort":5002,"tlsPort":5001,
 "ocspResponderURL":"","externalAccountBindingRequired":false,
 "certificateValidityPeriod":7776000}}}}"#
            ),
        )
        .expect("write pebble.json");
        let mut cmd = Command::new(exe);
        cmd.current_dir(dir)
            .args(["-config", "pebble.json", "-dnsserver", &dns.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        let guard = ChildGuard::spawn("pebble", cmd, &dir.join("pebble.log"));
        assert!(
            wait_for_port(listen, Duration::from_secs(20)),
            "pebble did not start:\n{}",
            guard.log()
        );
        let root = dir.join("pebble-root.pem");
        let (ok, _, err) = run(Command::new("curl")
            .args(["-sfk", "-o"])
            .arg(&root)
            .arg(format!("https://{management}/roots/0")));
        assert!(ok, "fetch pebble's root: {err}");
        Self {
            directory: format!("https://{listen}/dir"),
            client_ca: dir.join("tls-ca.pem"),
            issuer_root: root,
            server: Server::Pebble { management, guard },
            dns: Some(dns),
            work,
        }
    }

    /// A fresh directory for one client's state.
    fn client_dir(&self, name: &str) -> PathBuf {
        let p = self.work.path().join(name);
        std::fs::create_dir_all(&p).expect("client dir");
        p
    }

    /// The server's log, for failure messages.
    fn log(&self) -> String {
        match &self.server {
            Server::Certgate { up, fleet } => format!(
                "--- certgate up ---\n{}\n{}",
                up.as_ref().map(|u| u.log()).unwrap_or_default(),
                fleet.logs()
            ),
            Server::Pebble { guard, .. } => format!("--- pebble ---\n{}", guard.log()),
        }
    }

    /// Runs a client command; panics with its output and the server log if it fails.
    fn client(&self, what: &str, cmd: &mut Command) -> String {
        let started = Instant::now();
        let (ok, out, err) = run(cmd);
        assert!(
            ok,
            "{what} failed after {:?}: {cmd:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n{}",
            started.elapsed(),
            self.log()
        );
        eprintln!("{what}: {:?}", started.elapsed());
        format!("{out}{err}")
    }

    /// `openssl verify` of `leaf` against the trust anchor, with the chain the client received as
    /// untrusted intermediates (and, for certgate, also with the fleet's own chain.pem).
    fn verify_chain(&self, leaf: &Path, client_chain: &Path) {
        let mut chains = vec![client_chain.to_path_buf()];
        if let Server::Certgate { fleet, .. } = &self.server {
            chains.push(fleet.chain_pem());
        }
        for chain in chains {
            let (ok, out, err) = run(Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&self.issuer_root)
                .arg("-untrusted")
                .arg(&chain)
                .arg(leaf));
            assert!(
                ok && out.contains(": OK"),
                "openssl verify of {} with {} failed:\n{out}{err}",
                leaf.display(),
                chain.display()
            );
        }
    }

    /// Waits (up to 20 s) until the server reports `leaf` revoked: certgate through OCSP at the
    /// edge (`openssl ocsp`), Pebble through its management API.
    fn assert_revoked(&self, leaf: &Path, issuer: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (revoked, detail) = match &self.server {
                Server::Certgate { fleet, .. } => {
                    let (_, out, err) = run(Command::new("openssl")
                        .arg("ocsp")
                        .arg("-issuer")
                        .arg(issuer)
                        .arg("-cert")
                        .arg(leaf)
                        .arg("-url")
                        .arg(format!("http://{}/ocsp", fleet.http))
                        .arg("-CAfile")
                        .arg(&self.issuer_root)
                        .arg("-no_nonce"));
                    (out.contains(": revoked"), format!("{out}{err}"))
                }
                Server::Pebble { management, .. } => {
                    let serial = cert_serial(leaf).to_lowercase();
                    let serial = serial.trim_start_matches('0');
                    let (_, out, err) = run(Command::new("curl").arg("-sk").arg(format!(
                        "https://{management}/cert-status-by-serial/{serial}"
                    )));
                    (out.contains("\"Revoked\""), format!("{out}{err}"))
                }
            };
            if revoked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} is not reported revoked:\n{detail}\n{}",
                leaf.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // `certgate up` stops its children on SIGTERM; a SIGKILL would orphan them.
        if let Server::Certgate { up, .. } = &mut self.server
            && let Some(mut up) = up.take()
        {
            up.terminate(Duration::from_secs(15));
        }
    }
}

/// The leaf's serial number as OpenSSL prints it (upper-case hex).
fn cert_serial(leaf: &Path) -> String {
    let (ok, out, err) = run(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(leaf));
    assert!(ok, "openssl x509 -serial {}: {err}", leaf.display());
    out.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("no serial in {out}"))
        .to_owned()
}

/// Asserts the leaf names exactly `names` (as `DNS:` entries of its subjectAltName).
fn assert_sans(leaf: &Path, names: &[&str]) {
    let (ok, out, err) = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(leaf));
    assert!(ok, "openssl x509 -ext {}: {err}", leaf.display());
    let mut got: Vec<String> = out
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    want.sort();
    assert_eq!(got, want, "subjectAltName of {}", leaf.display());
}

/// Writes the first certificate of a PEM file (the leaf's issuer, in a chain file) to `out`.
fn first_cert(pem: &Path, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(pem).expect("read PEM");
    let end = "-----END CERTIFICATE-----";
    let first = text
        .find(end)
        .map(|i| &text[..i + end.len()])
        .unwrap_or_else(|| panic!("no certificate in {}", pem.display()));
    std::fs::write(out, format!("{}\n", first.trim_start())).expect("write first cert");
    out.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// certbot

#[test]
fn certbot_standalone_http01_issues_renews_and_revokes() {
    require("certbot");
    let t = Target::start(false);
    let dir = t.client_dir("certbot");
    let name = "certbot.example";
    let certbot = |args: &[&str]| {
        let mut cmd = Command::new("certbot");
        cmd.args(args)
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg("--work-dir")
            .arg(dir.join("work"))
            .arg("--logs-dir")
            .arg(dir.join("logs"))
            .arg("--non-interactive")
            .env("REQUESTS_CA_BUNDLE", &t.client_ca);
        cmd
    };
    let live = dir.join("config/live").join(name);
    let (leaf, chain) = (live.join("cert.pem"), live.join("chain.pem"));

    let _ports = dev_port_lock();
    t.client(
        "certbot certonly",
        &mut certbot(&[
            "certonly",
            "--standalone",
            "--http-01-port",
            "5002",
            "--http-01-address",
            "127.0.0.1",
            "--server",
            &t.directory,
            "-d",
            name,
            "--register-unsafely-without-email",
            "--agree-tos",
        ]),
    );
    t.verify_chain(&leaf, &chain);
    assert_sans(&leaf, &[name]);
    let first = cert_serial(&leaf);

    // The renewal reads the server and the authenticator from certbot's renewal config.
    t.client(
        "certbot renew",
        &mut certbot(&["renew", "--force-renewal", "--no-random-sleep-on-renew"]),
    );
    t.verify_chain(&leaf, &chain);
    assert_sans(&leaf, &[name]);
    let renewed = cert_serial(&leaf);
    assert_ne!(
        first, renewed,
        "certbot renew did not install a new certificate"
    );
    drop(_ports);

    let cert_path = leaf.to_string_lossy().into_owned();
    t.client(
        "certbot revoke",
        &mut certbot(&[
            "revoke",
            "--cert-path",
            &cert_path,
            "--server",
            &t.directory,
            "--reason",
            "keycompromise",
            "--no-delete-after-revoke",
        ]),
    );
    let issuer = first_cert(&chain, &dir.join("issuer.pem"));
    t.assert_revoked(&leaf, &issuer);
}

// ---------------------------------------------------------------------------------------------
// lego

/// One lego identity (account + certificates under `--path`) for `domains` with one solver.
struct Lego<'a> {
    t: &'a Target,
    path: PathBuf,
    domains: Vec<String>,
    solver: Vec<String>,
    env: Vec<(String, String)>,
}

impl Lego<'_> {
    fn cmd(&self, action: &[&str], with_solver: bool, all_domains: bool) -> Command {
        let mut cmd = Command::new("lego");
        cmd.env("LEGO_CA_CERTIFICATES", &self.t.client_ca)
            .args(["--server", &self.t.directory])
            .args(["--email", "interop@example.com", "--accept-tos"])
            .arg("--path")
            .arg(&self.path);
        let domains = if all_domains {
            &self.domains[..]
        } else {
            &self.domains[..1]
        };
        for d in domains {
            cmd.args(["--domains", d]);
        }
        if with_solver {
            cmd.args(&self.solver);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(action);
        cmd
    }

    fn leaf(&self) -> PathBuf {
        // lego names the files after the first domain, with `*` as `_`.
        let file = self.domains[0].replace('*', "_");
        self.path.join("certificates").join(format!("{file}.crt"))
    }

    fn issuer(&self) -> PathBuf {
        let file = self.domains[0].replace('*', "_");
        self.path
            .join("certificates")
            .join(format!("{file}.issuer.crt"))
    }

    /// `run`, `renew --days 400` (always due), `revoke`: each must succeed, the chains verify, the
    /// renewal is a new certificate and the revocation is visible at the server.
    fn issue_renew_revoke(&self, ports: bool) {
        let names: Vec<&str> = self.domains.iter().map(String::as_str).collect();
        let lock = ports.then(dev_port_lock);
        self.t
            .client("lego run", &mut self.cmd(&["run"], true, true));
        let (leaf, issuer) = (self.leaf(), self.issuer());
        self.t.verify_chain(&leaf, &issuer);
        assert_sans(&leaf, &names);
        let first = cert_serial(&leaf);

        let out = self.t.client(
            "lego renew",
            &mut self.cmd(&["renew", "--days", "400", "--no-random-sleep"], true, true),
        );
        assert!(
            !out.contains("no renewal"),
            "lego did not renew (certificate lifetime over 400 days?):\n{out}"
        );
        self.t.verify_chain(&leaf, &issuer);
        assert_sans(&leaf, &names);
        let renewed = cert_serial(&leaf);
        assert_ne!(first, renewed, "lego renew did not write a new certificate");
        drop(lock);

        // lego archives the files on revoke: keep copies for the OCSP check.
        let kept_leaf = self.path.join("revoked.crt");
        let kept_issuer = self.path.join("revoked-issuer.crt");
        std::fs::copy(&leaf, &kept_leaf).expect("copy leaf");
        first_cert(&issuer, &kept_issuer);
        // `revoke` revokes the certificate of each `--domains`: name only the one lego holds.
        let mut revoke = self.cmd(&["revoke", "--reason", "4"], false, false);
        self.t.client("lego revoke", &mut revoke);
        self.t.assert_revoked(&kept_leaf, &kept_issuer);
    }
}

#[test]
fn lego_http01_issues_renews_and_revokes() {
    require("lego");
    let t = Target::start(false);
    Lego {
        path: t.client_dir("lego-http"),
        t: &t,
        domains: vec!["lego-http.example".into()],
        solver: vec![
            "--http".into(),
            "--http.port".into(),
            "127.0.0.1:5002".into(),
        ],
        env: vec![],
    }
    .issue_renew_revoke(true);
}

#[test]
fn lego_tls_alpn01_issues_renews_and_revokes() {
    require("lego");
    let t = Target::start(false);
    Lego {
        path: t.client_dir("lego-tls"),
        t: &t,
        domains: vec!["lego-tls.example".into()],
        solver: vec!["--tls".into(), "--tls.port".into(), "127.0.0.1:5001".into()],
        env: vec![],
    }
    .issue_renew_revoke(true);
}

#[test]
fn lego_dns01_with_a_wildcard_issues_renews_and_revokes() {
    require("lego");
    require("pebble-challtestsrv");
    let t = Target::start(true);
    let dns = t.dns.as_ref().expect("dns responder started");
    let hook = dns.lego_exec_hook(t.work.path());
    Lego {
        path: t.client_dir("lego-dns"),
        t: &t,
        domains: vec!["lego-dns.example".into(), "*.lego-dns.example".into()],
        solver: vec![
            "--dns".into(),
            "exec".into(),
            "--dns.resolvers".into(),
            dns.dns.to_string(),
            // No authoritative-nameserver propagation check: the responder is the only server.
            "--dns.disable-cp".into(),
        ],
        env: vec![
            ("EXEC_PATH".into(), hook.to_string_lossy().into_owned()),
            ("EXEC_PROPAGATION_TIMEOUT".into(), "20".into()),
            ("EXEC_POLLING_INTERVAL".into(), "1".into()),
            // lego waits this long between the two TXT records of one name (default 60 s).
            ("EXEC_SEQUENCE_INTERVAL".into(), "1".into()),
        ],
    }
    .issue_renew_revoke(false);
}

// ---------------------------------------------------------------------------------------------
// instant-acme

/// Serves http-01 answers on 127.0.0.1:5002 from `tokens`; counts the requests it answered.
async fn http01_responder(
    tokens: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5002")
        .await
        .expect("bind 127.0.0.1:5002 for http-01");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let (tokens, hits) = (tokens.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split(' ').nth(1).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| tokens.lock().ok()?.get(token).cloned());
                let response = match answer {
                    Some(body) => {
                        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// One complete instant-acme issuance for `name` over http-01: (leaf PEM, chain PEM).
async fn instant_acme_issue(
    account: &instant_acme::Account,
    name: &str,
    tokens: &Arc<Mutex<HashMap<String, String>>>,
) -> Result<(String, String), String> {
    use instant_acme::{
        AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
    };
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("newOrder: {e}"))?;
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue, // reused within its validity
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or("no http-01 challenge offered")?;
        tokens.lock().map_err(|e| e.to_string())?.insert(
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        );
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .timeout(Duration::from_secs(30));
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("poll order: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("order is {status:?}: {:?}", order.state()));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let end = "-----END CERTIFICATE-----";
    let split = pem.find(end).ok_or("no certificate in the download")? + end.len();
    Ok((
        format!("{}\n", pem[..split].trim()),
        pem[split..].trim_start().to_owned(),
    ))
}

#[test]
fn instant_acme_http01_issues_renews_and_revokes() {
    use instant_acme::{Account, NewAccount, RevocationReason, RevocationRequest};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let t = Target::start(false);
    let dir = t.client_dir("instant-acme");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _ports = dev_port_lock();
    rt.block_on(async {
        let tokens = Arc::new(Mutex::new(HashMap::new()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let responder = http01_responder(tokens.clone(), hits.clone()).await;
        let (account, _credentials) = Account::builder_with_root(&t.client_ca)
            .expect("HTTP client trusting the dev root")
            .create(
                &NewAccount {
                    contact: &["mailto:instant-acme@example.com"],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                t.directory.clone(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("newAccount: {e}\n{}", t.log()));

        let name = "instant-acme.example";
        let mut serials = Vec::new();
        let mut last = None;
        for round in ["issue", "renew"] {
            let (leaf, chain) = instant_acme_issue(&account, name, &tokens)
                .await
                .unwrap_or_else(|e| panic!("instant-acme {round}: {e}\n{}", t.log()));
            let (leaf_path, chain_path) = (
                dir.join(format!("{round}.crt")),
                dir.join(format!("{round}-chain.pem")),
            );
            std::fs::write(&leaf_path, &leaf).expect("write leaf");
            std::fs::write(&chain_path, &chain).expect("write chain");
            t.verify_chain(&leaf_path, &chain_path);
            assert_sans(&leaf_path, &[name]);
            serials.push(cert_serial(&leaf_path));
            last = Some((leaf, leaf_path, chain_path));
        }
        assert!(
            hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the server never fetched the http-01 answer"
        );
        assert_ne!(
            serials[0], serials[1],
            "renewal returned the same certificate"
        );
        responder.abort();

        let (leaf, leaf_path, chain_path) = last.expect("two rounds ran");
        let der = CertificateDer::from_pem_slice(leaf.as_bytes()).expect("leaf PEM");
        account
            .revoke(&RevocationRequest {
                certificate: &der,
                reason: Some(RevocationReason::Superseded),
            })
            .await
            .unwrap_or_else(|e| panic!("revokeCert: {e}\n{}", t.log()));
        let issuer = first_cert(&chain_path, &dir.join("issuer.pem"));
        t.assert_revoked(&leaf_path, &issuer);
    });
}
