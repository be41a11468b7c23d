//! SCEP end to end with certmonger, the enrollment daemon of Fedora/RHEL/Debian, against
//! `certgate up` (real signer, core and edge processes on loopback).
//!
//! certmonger's `scep-submit` helper only transports messages its daemon built, so the real
//! daemon runs headless: `dbus-run-session -- certmonger -s -n -c SCRIPT` (a private session bus,
//! no system daemon, every state directory under the test's scratch dir), and the script drives it
//! with `getcert -s`: `add-scep-ca` (GetCACaps, GetCACert), `request` with the dev challenge
//! (PKCSReq signed by a throw-away certificate whose serial is 32 octets), and a second request
//! with a wrong challenge. The issued certificate must pass `openssl verify` against the dev root
//! and chain and hold the key certmonger generated; the wrong challenge must issue nothing.
//!
//! Needs the Debian package `certmonger` (plus `dbus`, `openssl`, `sqlite3`); without
//! certmonger the test says so and is skipped (.ci/run installs it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use certgate_e2e::scep::dev_challenge;
use certgate_e2e::{Fleet, http_get, run, start_up};

const CERTMONGER: &str = "/usr/sbin/certmonger";

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The SubjectPublicKeyInfo (PEM) of a certificate or of a private key.
fn public_key(path: &Path, cert: bool) -> String {
    let args: Vec<String> = if cert {
        vec!["x509".into(), "-noout".into(), "-pubkey".into()]
    } else {
        vec!["pkey".into(), "-pubout".into()]
    };
    let (ok, out, err) = run(Command::new("openssl").args(&args).arg("-in").arg(path));
    assert!(ok, "openssl {args:?} -in {}: {err}", path.display());
    out
}

#[test]
fn certmonger_enrolls_through_scep_and_a_wrong_challenge_issues_nothing() {
    if !Path::new(CERTMONGER).exists() {
        eprintln!(
            "SKIPPED: {CERTMONGER} is not installed (apt-get install -y certmonger; .ci/run \
             installs it) — certmonger SCEP interop not tested"
        );
        return;
    }
    let fleet = Fleet::init();
    let _up = start_up(&fleet);
    let challenge = dev_challenge(&fleet);
    let url = format!("http://{}/scep", fleet.http);
    let work = fleet.scratch().join("certmonger");
    let p = |n: &str| -> PathBuf { work.join(n) };
    for d in ["requests", "cas", "local", "config", "tmp", "out"] {
        std::fs::create_dir_all(p(d)).expect("certmonger state dir");
    }
    // The challenge goes in a file (`-l`), not on a command line.
    std::fs::write(p("challenge"), &challenge).expect("write challenge");
    std::fs::write(p("wrong-challenge"), "not-the-challenge").expect("write challenge");

    let script = format!(
        r#"#!/bin/sh
getcert add-scep-ca -s -c certgate -u {url} || exit 10
# add-scep-ca returns before the daemon has fetched GetCACaps/GetCACert: wait for the CA data.
i=0
until getcert list-cas -s -c certgate | grep -q 'SCEP CA certificate thumbprint'; do
  i=$((i + 1)); [ $i -gt 120 ] && exit 11; sleep 1
done
getcert list-cas -s -c certgate
getcert request -s -c certgate -I dev1 -f {out}/cert.pem -k {out}/key.pem \
  -N CN=certmonger-dev -D certmonger-dev.example -l {work}/challenge -w --wait-timeout 240 -v
echo "request-rc=$?"
getcert list -s -i dev1
getcert request -s -c certgate -I wrong -f {out}/wrong.pem -k {out}/wrong.key \
  -N CN=certmonger-wrong -D certmonger-wrong.example -l {work}/wrong-challenge -w --wait-timeout 120 -v
echo "wrong-rc=$?"
getcert list -s -i wrong
exit 0
"#,
        out = s(&p("out")),
        work = s(&work),
    );
    std::fs::write(p("run.sh"), script).expect("write script");
    std::fs::set_permissions(p("run.sh"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod script");
    // The RA certificate, created on first use, is audited as an issuance of its own: create it
    // before counting.
    let (status, _) = http_get(fleet.http, "/scep?operation=GetCACert").expect("GetCACert");
    assert_eq!(status, 200, "GetCACert");
    let base = fleet.issued_by("scep");

    let mut cmd = Command::new("timeout");
    cmd.args([
        "600",
        "dbus-run-session",
        "--",
        CERTMONGER,
        "-s",
        "-n",
        "-c",
    ])
    .arg(p("run.sh"));
    // Every piece of certmonger state under the scratch dir, never /var/lib/certmonger.
    for (var, dir) in [
        ("CERTMONGER_REQUESTS_DIR", "requests"),
        ("CERTMONGER_CAS_DIR", "cas"),
        ("CERTMONGER_LOCAL_CA_DIR", "local"),
        ("CERTMONGER_CONFIG_DIR", "config"),
        ("CERTMONGER_TMPDIR", "tmp"),
    ] {
        cmd.env(var, p(dir));
    }
    cmd.env("CERTMONGER_SYSTEM_LOCK_FILE", p("lock"));
    let (ok, out, err) = run(&mut cmd);
    let transcript = format!("stdout:\n{out}\nstderr:\n{err}\nlogs:\n{}", fleet.logs());
    assert!(ok, "certmonger session failed\n{transcript}");

    // The good challenge: issued, tracked, verifiable, for certmonger's own key.
    assert!(
        out.contains("request-rc=0"),
        "getcert request did not succeed\n{transcript}"
    );
    let dev1 = out
        .split("Request ID 'dev1':")
        .nth(1)
        .and_then(|t| t.split("Request ID").next())
        .unwrap_or_default();
    assert!(
        dev1.contains("status: MONITORING"),
        "dev1 is not MONITORING\n{transcript}"
    );
    let cert = p("out/cert.pem");
    let (ok, vout, verr) = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &s(&fleet.root_pem()),
        "-untrusted",
        &s(&fleet.chain_pem()),
        &s(&cert),
    ]));
    assert!(
        ok && vout.contains(": OK"),
        "openssl verify failed: {vout}{verr}\n{transcript}"
    );
    assert_eq!(
        public_key(&cert, true),
        public_key(&p("out/key.pem"), false),
        "the certificate is not for the key certmonger generated"
    );
    let (ok, san, err) = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &s(&cert),
    ]));
    assert!(ok, "openssl x509: {err}");
    assert!(
        san.contains("DNS:certmonger-dev.example"),
        "SAN missing: {san}"
    );

    // The wrong challenge: not tracked as issued, no certificate, nothing issued by the core.
    assert!(
        !out.contains("wrong-rc=0"),
        "a wrong challenge was accepted\n{transcript}"
    );
    assert!(
        !p("out/wrong.pem").exists(),
        "a certificate was written for the wrong challenge"
    );
    assert_eq!(
        fleet.issued_by("scep"),
        base + 1,
        "exactly one SCEP issuance (the good challenge)\n{transcript}"
    );
}
