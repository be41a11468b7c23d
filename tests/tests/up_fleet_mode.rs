//! `certgate up --fleet 2` end to end: the command starts postgres and redis-server from the
//! Debian packages, one signer, two cores on PostgreSQL and two edges on Redis; a certificate
//! enrolled over EST at edge 2 is "good" over OCSP at edge 1 (both cores answer from the one
//! database), and SIGTERM stops every process it started, PostgreSQL and Redis included.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::{
    ChildGuard, bin, free_port, openssl_csr, pid_alive, run, temp_dir, wait_for_log,
};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The address in the banner line of edge `n` that starts with `label`.
fn banner_addr(banner: &str, n: usize, label: &str) -> SocketAddr {
    let section = banner
        .split(&format!("  edge #{n}  pid"))
        .nth(1)
        .unwrap_or_else(|| panic!("no edge #{n} in the banner:\n{banner}"));
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line for edge #{n}:\n{banner}"));
    let url = line.split_whitespace().last().expect("a URL");
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("host:port");
    host.parse().expect("a socket address")
}

/// Every `name=pid` and `(pid N)` in the banner.
fn banner_pids(banner: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in banner.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("processes") {
            pids.extend(
                rest.split_whitespace()
                    .filter_map(|kv| kv.split('=').nth(1)?.parse::<u32>().ok()),
            );
        } else if l.starts_with("edge #") {
            pids.extend(
                l.split_whitespace()
                    .last()
                    .and_then(|p| p.parse::<u32>().ok()),
            );
        } else if let Some(i) = l.find("(pid ") {
            pids.extend(l[i + 5..].trim_end_matches(')').parse::<u32>().ok());
        }
    }
    pids
}

fn credential(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{key} missing from dev-credentials.toml"))
}

#[test]
fn fleet_mode_serves_from_every_edge_and_stops_everything() {
    if !certgate_devservers::pg::PgServer::available() {
        panic!("PostgreSQL is not installed: apt-get install -y postgresql (CI installs it)");
    }
    for b in [
        "certgate",
        "certgate-signer",
        "certgate-core",
        "certgate-edge",
    ] {
        bin(b);
    }
    let dir = temp_dir();
    let data = dir.path().join("data");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut cmd = Command::new(bin("certgate"));
    cmd.args(["up", "--fleet", "2", "--data-dir"])
        .arg(&data)
        .args(["--https", &addr(free_port())])
        .args(["--http", &addr(free_port())])
        .args(["--admin", &addr(free_port())]);
    let mut up = ChildGuard::spawn("certgate up --fleet", cmd, &scratch.join("up.log"));
    let banner = wait_for_log(&up, "Press Ctrl-C to stop.", Duration::from_secs(240));
    assert!(
        banner.contains("2 edge(s), 2 cores, 1 signer"),
        "banner:\n{banner}"
    );
    let pids = banner_pids(&banner);
    // signer, 2 cores, 2 edges, postgres, redis
    assert_eq!(pids.len(), 7, "pids {pids:?} in banner:\n{banner}");
    assert!(pids.iter().all(|p| pid_alive(*p)), "all running: {pids:?}");

    let fleet = data.join("fleet");
    let root = fleet.join("ca/root.pem");
    let chain = fleet.join("ca/chain.pem");
    let creds = std::fs::read_to_string(fleet.join("dev-credentials.toml")).expect("creds");
    let userpass = format!(
        "{}:{}",
        credential(&creds, "est_username"),
        credential(&creds, "est_password")
    );

    // Enroll over EST at edge 2.
    let est2 = banner_addr(&banner, 2, "EST");
    let (_key, csr) = openssl_csr(&scratch, "fleet", "fleet.example.test");
    let der = scratch.join("fleet.csr.der");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-in",
        &s(&csr),
        "-outform",
        "DER",
        "-out",
        &s(&der),
    ]));
    assert!(ok, "{err}");
    let b64 = scratch.join("fleet.csr.b64");
    let (ok, _, err) =
        run(Command::new("openssl").args(["base64", "-in", &s(&der), "-out", &s(&b64)]));
    assert!(ok, "{err}");
    let p7 = scratch.join("fleet.p7.b64");
    let (ok, code, err) = run(Command::new("curl")
        .args(["-sS", "--cacert", &s(&root), "-u", &userpass])
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", b64.display()))
        .args(["-o", &s(&p7), "-w", "%{http_code}"])
        .arg(format!("https://{est2}/.well-known/est/simpleenroll")));
    assert!(ok && code.trim() == "200", "EST at edge 2: {code} {err}");
    let p7der = scratch.join("fleet.p7.der");
    // EST answers unwrapped base64 (one line): -A.
    let (ok, _, err) = run(Command::new("openssl").args([
        "base64",
        "-d",
        "-A",
        "-in",
        &s(&p7),
        "-out",
        &s(&p7der),
    ]));
    assert!(ok, "{err}");
    let cert = scratch.join("fleet.pem");
    let (ok, _, err) = run(Command::new("openssl").args([
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &s(&p7der),
        "-print_certs",
        "-out",
        &s(&cert),
    ]));
    assert!(ok, "{err}");
    let (ok, out, err) = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &s(&root),
        "-untrusted",
        &s(&chain),
        &s(&cert),
    ]));
    assert!(ok && out.contains(": OK"), "verify: {out}{err}");

    // Its status at edge 1 (and edge 2): good, signed by the fleet's CA.
    // The issuing CA is the first certificate of chain.pem.
    let issuer = scratch.join("issuer.pem");
    let (ok, _, err) =
        run(Command::new("openssl").args(["x509", "-in", &s(&chain), "-out", &s(&issuer)]));
    assert!(ok, "{err}");
    for n in [1, 2] {
        let ocsp = banner_addr(&banner, n, "OCSP");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out, err) = run(Command::new("openssl").args([
                "ocsp",
                "-issuer",
                &s(&issuer),
                "-cert",
                &s(&cert),
                "-CAfile",
                &s(&root),
                "-verify_other",
                &s(&chain),
                "-no_nonce",
                "-url",
                &format!("http://{ocsp}/ocsp"),
            ]));
            if ok && out.contains(": good") && err.contains("Response verify OK") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "OCSP at edge {n} not good in time: {out}{err}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // SIGTERM: every process the command started is gone, PostgreSQL and Redis included.
    let status = up.terminate(Duration::from_secs(60)).expect("exit status");
    assert!(status.success(), "up --fleet exit: {status}\n{}", up.log());
    for p in &pids {
        assert!(
            certgate_e2e::wait_pid_gone(*p, Duration::from_secs(15)),
            "pid {p} still running after stop"
        );
    }
}
