//! `certgate up` end to end: real signer, core and edge processes on free loopback ports.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::{
    ChildGuard, Fleet, bin, http_get, openssl_csr, run, wait_for_log, wait_pid_gone,
};

/// Waits until the `up` log contains `needle`; panics with the log after `timeout`.
/// The value after `label` on its banner line.
fn banner_value(log: &str, label: &str) -> String {
    log.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(label)
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{log}"))
}

/// DER of the first certificate in a PEM file, via OpenSSL (an independent parser).
fn first_cert_der(pem: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("first.der");
    let (ok, _, err) = run(Command::new("openssl").args([
        "x509",
        "-in",
        &pem.to_string_lossy(),
        "-outform",
        "DER",
        "-out",
        &out.to_string_lossy(),
    ]));
    assert!(ok, "openssl x509: {err}");
    std::fs::read(out).expect("read DER")
}

fn start_up(fleet: &Fleet) -> ChildGuard {
    let mut cmd = Command::new(bin("certgate"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(fleet.data_dir())
        .args(fleet.port_args());
    ChildGuard::spawn("certgate up", cmd, &fleet.scratch().join("up.log"))
}

#[test]
fn up_serves_health_metrics_aia_and_issues_then_stops_every_child_on_sigterm() {
    // Make sure every sibling exists before `up` looks for them next to `certgate`.
    for b in ["certgate-signer", "certgate-core", "certgate-edge"] {
        bin(b);
    }
    let fleet = Fleet::uninitialised();
    let scratch = fleet.scratch();
    let mut up = start_up(&fleet);
    let log = wait_for_log(&up, "Press Ctrl-C to stop.", Duration::from_secs(180));

    // The banner: the stable interfaces on our ports.
    assert!(
        log.contains(&format!("https://{}/acme/directory", fleet.https)),
        "{log}"
    );
    assert!(
        log.contains(&format!("http://{}/scep", fleet.http)),
        "{log}"
    );
    assert!(
        log.contains(&format!("http://{}/.well-known/cmp", fleet.http)),
        "{log}"
    );
    assert!(
        log.contains(&format!("http://{}/ocsp", fleet.http)),
        "{log}"
    );
    assert!(
        log.contains(&format!("http://{}/metrics", fleet.admin)),
        "{log}"
    );
    assert!(
        log.contains(&fleet.root_pem().to_string_lossy().to_string()),
        "{log}"
    );

    // Trust files and dev credentials.
    for f in [fleet.root_pem(), fleet.chain_pem()] {
        let text = std::fs::read_to_string(&f).expect("trust file");
        assert!(text.contains("BEGIN CERTIFICATE"), "{}", f.display());
    }
    let creds = fleet.credentials();
    for k in [
        "est_username",
        "est_password",
        "scep_challenge",
        "cmp_reference",
        "cmp_secret",
    ] {
        assert!(
            creds.get(k).is_some_and(|v| !v.is_empty()),
            "{k} missing: {creds:?}"
        );
    }

    // Admin endpoints.
    let (status, body) = http_get(fleet.admin, "/healthz").expect("healthz");
    assert_eq!(status, 200);
    assert_eq!(body, b"ok\n");
    assert_eq!(http_get(fleet.admin, "/readyz").expect("readyz").0, 200);

    // AIA: the issuing CA served at /ca/{id}.der is chain.pem's first certificate.
    let issuer = banner_value(&log, "issuing CA");
    let (status, der) = http_get(fleet.http, &format!("/ca/{issuer}.der")).expect("AIA");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&der));
    assert_eq!(der, first_cert_der(&fleet.chain_pem(), &scratch));
    // Anything else: a problem+json 404.
    let (status, body) = http_get(fleet.http, "/no/such/thing").expect("404");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("\"status\":404"));

    let (status, metrics) = http_get(fleet.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    // Label order and extra labels (endpoint, …) are the exporter's business: look for one
    // sample of the request counter carrying these three labels.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("certgate_edge_requests_total{")
                && ["protocol=\"aia\"", "tenant=\"default\"", "outcome=\"ok\""]
                    .iter()
                    .all(|label| l.contains(label))),
        "{metrics}"
    );
    assert!(
        metrics.contains("certgate_edge_request_duration_seconds_bucket"),
        "{metrics}"
    );

    // The HTTPS listener presents a certificate for `localhost` that chains to root.pem.
    let (ok, out, err) = run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &fleet.https.to_string(),
        "-CAfile",
        &fleet.root_pem().to_string_lossy(),
        "-verify_return_error",
        "-verify_hostname",
        "localhost",
        "-brief",
    ]));
    assert!(ok, "TLS to the edge failed:\n{out}\n{err}");

    // Issue through the CLI with an OpenSSL-made CSR; OpenSSL accepts the chain.
    let (_key, csr) = openssl_csr(&scratch, "leaf", "app.example.test");
    let leaf = scratch.join("leaf.pem");
    let (ok, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &csr.to_string_lossy(),
        "--out",
        &leaf.to_string_lossy(),
    ]);
    assert!(ok, "cert issue failed:\n{out}\n{err}");
    let (ok, out, err) = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &fleet.root_pem().to_string_lossy(),
        "-untrusted",
        &fleet.chain_pem().to_string_lossy(),
        &leaf.to_string_lossy(),
    ]));
    assert!(ok, "openssl verify refused the leaf:\n{out}\n{err}");

    // A rerun of the same command returns the same certificate, byte for byte (I-3).
    let again = scratch.join("leaf-again.pem");
    let (ok, _, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &csr.to_string_lossy(),
        "--out",
        &again.to_string_lossy(),
    ]);
    assert!(ok, "rerun failed: {err}");
    assert_eq!(
        std::fs::read(&leaf).expect("leaf"),
        std::fs::read(&again).expect("again")
    );

    // SIGTERM to `up` stops all three children.
    let pids: Vec<u32> = banner_value(&log, "processes")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "{log}");
    let status = up
        .terminate(Duration::from_secs(40))
        .expect("up exit status");
    assert!(status.success(), "up exited with {status}:\n{}", up.log());
    for pid in pids {
        assert!(
            wait_pid_gone(pid, Duration::from_secs(5)),
            "child {pid} still running"
        );
    }
}

#[test]
fn init_twice_changes_nothing_and_cli_errors_exit_non_zero() {
    let fleet = Fleet::init();
    let root = std::fs::read(fleet.root_pem()).expect("root.pem");
    let creds = fleet.credentials();
    let (ok, out, err) = fleet.cli(&["init"]);
    assert!(ok, "second init failed:\n{out}\n{err}");
    assert_eq!(std::fs::read(fleet.root_pem()).expect("root.pem"), root);
    assert_eq!(fleet.credentials(), creds);

    // With no core running, a command that needs it fails with a message and a non-zero exit.
    let (ok, _, err) = fleet.cli(&["ca", "list"]);
    assert!(!ok);
    assert!(err.starts_with("certgate: "), "{err}");
}

#[test]
fn fleet_started_piecewise_issues_and_refuses_garbage_csr() {
    let mut fleet = Fleet::init();
    fleet.start_signer();
    fleet.start_core();
    let scratch = fleet.scratch();

    let (ok, out, err) = fleet.cli(&["ca", "list"]);
    assert!(ok, "{out}{err}");
    for kind in ["root", "intermediate", "issuing"] {
        assert!(out.contains(kind), "no {kind} CA in:\n{out}");
    }

    let garbage = scratch.join("garbage.csr");
    std::fs::write(&garbage, b"\x30\x03\x02\x01\x00").expect("write");
    let (ok, _, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &garbage.to_string_lossy(),
        "--out",
        &scratch.join("x.pem").to_string_lossy(),
    ]);
    assert!(!ok, "a garbage CSR was accepted");
    assert!(err.contains("Malformed"), "{err}");

    // The core keeps serving after the refusal.
    let (_key, csr) = openssl_csr(&scratch, "ok", "ok.example.test");
    let out_pem = scratch.join("ok.pem");
    let (ok, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &csr.to_string_lossy(),
        "--out",
        &out_pem.to_string_lossy(),
    ]);
    assert!(ok, "{out}{err}\n{}", fleet.logs());
    let serial = out
        .split_whitespace()
        .nth(1)
        .expect("serial in output")
        .to_owned();
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", &serial, "--reason", "4"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("revoked"), "{out}");
    // Revoking again (same or another reason) reports the existing revocation.
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", &serial, "--reason", "1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("already revoked"), "{out}");

    let (ok, out, err) = fleet.cli(&["audit", "verify"]);
    assert!(ok, "audit verify failed:\n{out}\n{err}");
}

#[test]
fn up_reports_a_dead_child_stops_the_rest_and_exits_non_zero() {
    for b in ["certgate-signer", "certgate-core", "certgate-edge"] {
        bin(b);
    }
    // An initialised dir and `up` without port flags: the ports come from the edge config that
    // `init --https/--http/--admin` wrote.
    let fleet = Fleet::init();
    let mut cmd = Command::new(bin("certgate"));
    cmd.arg("up").arg("--data-dir").arg(fleet.data_dir());
    let mut up = ChildGuard::spawn("certgate up", cmd, &fleet.scratch().join("up.log"));
    let log = wait_for_log(&up, "Press Ctrl-C to stop.", Duration::from_secs(180));
    assert!(
        log.contains(&format!("http://{}/scep", fleet.http)),
        "{log}"
    );
    assert_eq!(http_get(fleet.admin, "/healthz").expect("healthz").0, 200);
    let pids: Vec<(String, u32)> = banner_value(&log, "processes")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    let core = pids
        .iter()
        .find(|(n, _)| n == "certgate-core")
        .map(|(_, p)| *p)
        .expect("core pid");
    // We started `up`, and `up` started this core: killing it is killing our own process.
    let (ok, _, err) = run(Command::new("kill").args(["-KILL", &core.to_string()]));
    assert!(ok, "kill: {err}");

    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "up kept running:\n{}", up.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "up exited 0 after a child died");
    assert!(
        up.log().contains("certgate-core exited unexpectedly"),
        "{}",
        up.log()
    );
    for (name, pid) in pids {
        assert!(
            wait_pid_gone(pid, Duration::from_secs(5)),
            "{name} ({pid}) still running"
        );
    }
}

#[test]
fn edge_stays_healthy_but_not_ready_and_answers_503_while_the_core_is_down() {
    let mut fleet = Fleet::init();
    fleet.start_all();
    assert_eq!(http_get(fleet.admin, "/readyz").expect("readyz").0, 200);

    fleet.stop_core();
    assert_eq!(http_get(fleet.admin, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(fleet.admin, "/readyz").expect("readyz").0, 503);
    // Never a fallback (I-5): the AIA fetch fails with "try later", not with stale or made-up bytes.
    let (status, body) = http_get(fleet.http, "/ca/never-cached.der").expect("AIA");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));

    // The core comes back: the edge reconnects without a restart.
    fleet.start_core();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(fleet.admin, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "edge never became ready again\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn init_after_an_interruption_finishes_without_recreating_what_exists() {
    let fleet = Fleet::init();
    let root = std::fs::read(fleet.root_pem()).expect("root.pem");
    let edge_cert = std::fs::read(fleet.data_dir().join("edge/tls.pem")).expect("edge cert");
    // As if init had stopped before its last steps.
    std::fs::remove_file(fleet.data_dir().join(".initialized")).expect("marker");
    std::fs::remove_file(fleet.data_dir().join("dev-credentials.toml")).expect("creds");
    let (ok, out, err) = fleet.cli(&["init"]);
    assert!(ok, "{out}\n{err}");
    assert!(!out.contains("ceremony"), "CAs were created again:\n{out}");
    assert_eq!(std::fs::read(fleet.root_pem()).expect("root.pem"), root);
    assert_eq!(
        std::fs::read(fleet.data_dir().join("edge/tls.pem")).expect("edge cert"),
        edge_cert
    );
    assert_eq!(fleet.credentials().len(), 5, "{:?}", fleet.credentials());
}
