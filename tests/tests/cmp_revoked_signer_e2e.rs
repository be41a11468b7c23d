//! CMP signature protection by a revoked certificate (RFC 9483 §3.5: revocation is part of the
//! protecting certificate's path validation), end to end: OpenSSL's real `openssl cmp` client
//! against `certgate up` (real signer, core and edge processes on loopback).
//!
//! An ir with the dev MAC credentials gives a certificate; a cr signed with it works; after
//! `certgate revoke` the same certificate's cr and kur are refused with an error message
//! carrying signerNotTrusted and nothing is issued; a cr signed by another, unrevoked
//! certificate of the same CA still works.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use certgate_e2e::{Fleet, http_get, run, start_up};

struct Cmp<'a> {
    fleet: &'a Fleet,
    server: String,
    reference: String,
    secret: String,
}

impl Cmp<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.fleet.scratch().join(name)
    }
    fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    fn key(&self, name: &str) -> String {
        let (ok, _, err) = run(Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &self.p(name),
        ]));
        assert!(ok, "genpkey: {err}");
        self.p(name)
    }

    /// Runs `openssl cmp` with the common arguments plus `args`; (success, stdout+stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let root = self.fleet.root_pem().to_string_lossy().into_owned();
        let mut cmd = Command::new("openssl");
        cmd.arg("cmp")
            .args(["-server", &self.server, "-trusted", &root])
            .args(["-unprotected_errors", "-msg_timeout", "30"])
            .args(args);
        let (ok, out, err) = run(&mut cmd);
        (ok, format!("{out}\n{err}"))
    }

    /// A request signature-protected by `cert`/`key`.
    fn signed(&self, cert: &str, key: &str, cmd: &str, newkey: &str, out: &str) -> (bool, String) {
        let chain = self.fleet.chain_pem().to_string_lossy().into_owned();
        let certout = self.p(out);
        let mut args = vec![
            "-cert",
            cert,
            "-key",
            key,
            "-extracerts",
            &chain,
            "-cmd",
            cmd,
            "-newkey",
            newkey,
            "-certout",
            &certout,
        ];
        if cmd == "cr" {
            args.extend(["-subject", "/CN=cmp-signed"]);
        }
        self.run(&args)
    }

    fn verify(&self, cert: &str) {
        let (ok, out, err) = run(Command::new("openssl").args([
            "verify",
            "-CAfile",
            &self.fleet.root_pem().to_string_lossy(),
            "-untrusted",
            &self.fleet.chain_pem().to_string_lossy(),
            cert,
        ]));
        assert!(ok, "openssl verify {cert}: {out}{err}");
    }

    /// The certificate's serial, hex (as `openssl x509 -serial` prints it).
    fn serial(&self, cert: &str) -> String {
        let (ok, out, err) =
            run(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", cert]));
        assert!(ok, "x509 -serial: {err}");
        out.trim()
            .strip_prefix("serial=")
            .expect("serial= line")
            .to_owned()
    }
}

/// The edge's count of successful Core.Issue calls (admin /metrics).
fn issued(fleet: &Fleet) -> u64 {
    let (status, body) = http_get(fleet.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("certgate_edge_core_call_duration_seconds_count")
                && l.contains("method=\"issue\"")
                && l.contains("outcome=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_revoked_protecting_certificate_is_signer_not_trusted() {
    let fleet = Fleet::uninitialised();
    let mut up = start_up(&fleet);
    let creds = fleet.credentials();
    let c = Cmp {
        fleet: &fleet,
        server: format!("http://{}/.well-known/cmp", fleet.http),
        reference: creds.get("cmp_reference").expect("cmp_reference").clone(),
        secret: format!("pass:{}", creds.get("cmp_secret").expect("cmp_secret")),
    };

    // Two certificates from MAC-protected irs.
    let mut certs = Vec::new();
    for name in ["a", "b"] {
        let key = c.key(&format!("{name}.key"));
        let certout = c.p(&format!("{name}.pem"));
        let (ok, out) = c.run(&[
            "-ref",
            &c.reference,
            "-secret",
            &c.secret,
            "-cmd",
            "ir",
            "-newkey",
            &key,
            "-subject",
            &format!("/CN=cmp-revoked-{name}"),
            "-implicit_confirm",
            "-certout",
            &certout,
        ]);
        assert!(ok, "ir {name}: {out}");
        c.verify(&certout);
        certs.push((certout, key));
    }
    let (a_cert, a_key) = &certs[0];
    let (b_cert, b_key) = &certs[1];

    // Before revocation: a cr signed by A is issued.
    let k = c.key("k1.pem");
    let (ok, out) = c.signed(a_cert, a_key, "cr", &k, "cr1.pem");
    assert!(ok, "cr signed by A before revocation: {out}");
    c.verify(&c.p("cr1.pem"));

    // Revoke A through the core (`certgate revoke`).
    let serial = c.serial(a_cert);
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", &serial, "--reason", "1"]);
    assert!(ok && out.contains("revoked"), "revoke: {out}{err}");

    // After: cr and kur signed by A are refused with signerNotTrusted, nothing issued.
    let before = issued(&fleet);
    for cmd in ["cr", "kur"] {
        let k = c.key(&format!("k-{cmd}.pem"));
        let (ok, out) = c.signed(a_cert, a_key, cmd, &k, &format!("{cmd}-revoked.pem"));
        assert!(
            !ok,
            "{cmd} signed by a revoked certificate must fail: {out}"
        );
        assert!(
            out.contains("signerNotTrusted") && out.contains("protecting certificate is revoked"),
            "{cmd} by a revoked signer → signerNotTrusted: {out}"
        );
        assert!(
            !c.path(&format!("{cmd}-revoked.pem")).exists(),
            "{cmd}: no certificate written"
        );
    }
    assert_eq!(
        issued(&fleet),
        before,
        "nothing issued for the revoked signer"
    );

    // Another certificate of the same CA, not revoked, still signs requests.
    let k = c.key("k2.pem");
    let (ok, out) = c.signed(b_cert, b_key, "cr", &k, "cr2.pem");
    assert!(ok, "cr signed by B: {out}");
    c.verify(&c.p("cr2.pem"));
    assert_eq!(issued(&fleet), before + 1);

    up.terminate(Duration::from_secs(20));
}
