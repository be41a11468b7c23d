//! Deferred issuance with manual approval, end to end: the default tenant's profile gets
//! `approval = "manual"` (a new version via `certgate profile create`), then real clients enroll
//! against `certgate up` (real signer, core and edge processes on loopback) and an operator
//! decides with `certgate request approve|deny` while they wait:
//! - EST with curl: 202 + Retry-After, the same re-POST stays 202 (one pending request), 200 with
//!   the certificate once approved (byte-identical on every later re-POST), 403 once denied;
//!   strongSwan's `pki --est` polls (`--interval`) and gets the certificate once approved.
//! - SCEP with strongSwan's `pki --scep`: PENDING, then CertPoll (GetCertInitial) every
//!   `--interval` until approved (SUCCESS), or denied (FAILURE: the client gives up).
//! - CMP with `openssl cmp`: ip with status waiting, pollReq/pollRep (checkAfter) until approved
//!   (ip with the certificate, then certConf/pkiConf), or denied (error, notAuthorized).
//!
//! Every certificate is checked with `openssl verify`; the audit log records exactly one
//! `approval.requested` per request and one decision each, and nothing denied is issued.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use certgate_e2e::{Fleet, openssl_csr, run, start_up};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A client running in the background (stdout and stderr to files), killed by its PID on drop.
struct Bg {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Bg {
    fn spawn(mut cmd: Command, out: PathBuf, err: PathBuf) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("client spawns");
        Self {
            child: Some(child),
            out,
            err,
        }
    }

    /// Waits for the exit; (status, stdout bytes, stderr text).
    fn wait(&mut self, timeout: Duration) -> (ExitStatus, Vec<u8>, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return (
                    st,
                    std::fs::read(&self.out).unwrap_or_default(),
                    std::fs::read_to_string(&self.err).unwrap_or_default(),
                );
            }
            assert!(
                Instant::now() < deadline,
                "client still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One row of `certgate request list`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    state: String,
    protocol: String,
    summary: String,
    serial: String,
}

fn list(fleet: &Fleet) -> Vec<Row> {
    let (ok, out, err) = fleet.cli(&["request", "list", "--tenant", "default"]);
    assert!(ok, "certgate request list: {out}{err}");
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 8).then(|| Row {
                id: f[0].to_owned(),
                state: f[1].to_owned(),
                protocol: f[2].to_owned(),
                summary: f[6].to_owned(),
                serial: f[7].to_owned(),
            })
        })
        .collect()
}

/// Waits until a pending `protocol` request not in `seen` appears; returns it.
fn wait_pending(fleet: &Fleet, protocol: &str, seen: &mut BTreeSet<String>) -> Row {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = list(fleet)
            .into_iter()
            .find(|r| r.protocol == protocol && r.state == "pending" && !seen.contains(&r.id))
        {
            seen.insert(r.id.clone());
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no pending {protocol} request appeared:\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn decide(fleet: &Fleet, verb: &str, id: &str) -> String {
    let (ok, out, err) = fleet.cli(&[
        "request", verb, "--tenant", "default", id, "--reason", "e2e",
    ]);
    assert!(ok, "certgate request {verb} {id}: {out}{err}");
    out
}

/// Audit records of `kind` (optionally whose details contain `needle`).
fn audit_count(fleet: &Fleet, kind: &str, needle: &str) -> usize {
    let db = fleet.data_dir().join("core/core.db");
    let sql = format!(
        "SELECT count(*) FROM audit WHERE kind = '{kind}' AND details LIKE '%{}%'",
        needle.replace('\'', "''")
    );
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(&db)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// Certificates issued under the manual-approval profile (version 2) for `protocol` (the SCEP
/// and CMP RA certificates are issued under internal profiles and do not count).
fn issued(fleet: &Fleet, protocol: &str) -> usize {
    audit_count(
        fleet,
        "issue.intent",
        &format!("\"profile\":\"tls-server\",\"profile_version\":2,\"protocol\":\"{protocol}\""),
    )
}

fn verify(fleet: &Fleet, cert: &Path) {
    let (ok, out, err) = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        &s(&fleet.root_pem()),
        "-untrusted",
        &s(&fleet.chain_pem()),
        &s(cert),
    ]));
    assert!(
        ok && out.contains(": OK"),
        "openssl verify failed: {out}{err}"
    );
}

fn serial_of(cert: &Path) -> String {
    let (ok, out, err) =
        run(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", &s(cert)]));
    assert!(ok, "openssl x509: {err}");
    out.trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_ascii_lowercase()
}

/// curl POST of a base64 CSR to EST simpleenroll; (status, headers, body).
fn est_post(fleet: &Fleet, userpass: &str, b64: &Path, tag: &str) -> (u16, String, Vec<u8>) {
    let hdr = fleet.scratch().join(format!("{tag}.headers"));
    let out = fleet.scratch().join(format!("{tag}.body"));
    let (_, code, err) = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(fleet.root_pem())
        .args(["-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}", "-u", userpass])
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", b64.display()))
        .arg(format!(
            "https://{}/.well-known/est/simpleenroll",
            fleet.https
        )));
    let code: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {err}"));
    (
        code,
        std::fs::read_to_string(&hdr).unwrap_or_default(),
        std::fs::read(&out).unwrap_or_default(),
    )
}

/// base64 of a PEM CSR's DER (what EST clients send).
fn csr_b64(fleet: &Fleet, csr_pem: &Path, name: &str) -> PathBuf {
    let der = fleet.scratch().join(format!("{name}.der"));
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-in",
        &s(csr_pem),
        "-outform",
        "DER",
        "-out",
        &s(&der),
    ]));
    assert!(ok, "{err}");
    let b64 = fleet.scratch().join(format!("{name}.b64"));
    let (ok, _, err) =
        run(Command::new("openssl").args(["base64", "-in", &s(&der), "-out", &s(&b64)]));
    assert!(ok, "{err}");
    b64
}

/// The certificate of an EST certs-only response body (base64 PKCS#7) as PEM at `pem`.
fn est_cert(fleet: &Fleet, body: &[u8], pem: &Path) {
    let b64 = fleet.scratch().join("est-resp.b64");
    std::fs::write(&b64, body).expect("write");
    let der = fleet.scratch().join("est-resp.der");
    let (ok, _, err) = run(Command::new("openssl").args([
        "base64",
        "-d",
        "-A",
        "-in",
        &s(&b64),
        "-out",
        &s(&der),
    ]));
    assert!(ok, "{err}");
    let (ok, _, err) = run(Command::new("openssl").args([
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &s(&der),
        "-print_certs",
        "-out",
        &s(pem),
    ]));
    assert!(ok, "openssl pkcs7: {err}");
}

fn rsa_key(path: &Path) {
    let out = Command::new("pki")
        .args([
            "--gen",
            "--type",
            "rsa",
            "--size",
            "2048",
            "--outform",
            "pem",
        ])
        .output()
        .expect("pki runs (apt-get install strongswan-pki libstrongswan-extra-plugins)");
    assert!(out.status.success(), "pki --gen");
    std::fs::write(path, out.stdout).expect("write key");
}

fn scep_enroll(fleet: &Fleet, ra: &Path, key: &Path, cn: &str, challenge: &str) -> Bg {
    let mut cmd = Command::new("pki");
    cmd.args(["--scep", "--url"])
        .arg(format!("http://{}/scep", fleet.http))
        .arg("--in")
        .arg(key)
        .args(["--dn", &format!("CN={cn}"), "--san", cn])
        .args(["--password", challenge])
        .arg("--cacert-enc")
        .arg(ra)
        .arg("--cacert-sig")
        .arg(ra)
        .arg("--cacert")
        .arg(fleet.root_pem())
        .arg("--cacert")
        .arg(fleet.chain_pem())
        .args([
            "--interval",
            "2",
            "--maxpolltime",
            "120",
            "--outform",
            "pem",
        ]);
    Bg::spawn(
        cmd,
        fleet.scratch().join(format!("{cn}.pem")),
        fleet.scratch().join(format!("{cn}.err")),
    )
}

fn cmp_ir(fleet: &Fleet, cn: &str) -> Bg {
    let creds = fleet.credentials();
    let key = fleet.scratch().join(format!("{cn}.key"));
    let (ok, _, err) = run(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &s(&key),
    ]));
    assert!(ok, "genpkey: {err}");
    let mut cmd = Command::new("openssl");
    cmd.args(["cmp", "-cmd", "ir", "-server"])
        .arg(format!("http://{}/.well-known/cmp", fleet.http))
        .arg("-trusted")
        .arg(fleet.root_pem())
        .args(["-ref", creds.get("cmp_reference").expect("cmp_reference")])
        .args([
            "-secret",
            &format!("pass:{}", creds.get("cmp_secret").expect("cmp_secret")),
        ])
        .arg("-newkey")
        .arg(&key)
        .args(["-subject", &format!("/CN={cn}"), "-sans", cn])
        .args([
            "-unprotected_errors",
            "-msg_timeout",
            "20",
            "-total_timeout",
            "150",
        ])
        .arg("-certout")
        .arg(fleet.scratch().join(format!("{cn}.pem")));
    Bg::spawn(
        cmd,
        fleet.scratch().join(format!("{cn}.out")),
        fleet.scratch().join(format!("{cn}.err")),
    )
}

#[test]
fn manual_approval_with_est_scep_and_cmp_clients() {
    let fleet = Fleet::uninitialised();
    let up = start_up(&fleet);
    let creds = fleet.credentials();
    let userpass = format!(
        "{}:{}",
        creds.get("est_username").expect("est_username"),
        creds.get("est_password").expect("est_password")
    );
    let challenge = creds
        .get("scep_challenge")
        .cloned()
        .expect("scep_challenge");

    // The SCEP RA certificate is issued outside the profile path; fetch it before the switch.
    let ra = fleet.scratch().join("ra.pem");
    let out = Command::new("pki")
        .args(["--scepca", "--url"])
        .arg(format!("http://{}/scep", fleet.http))
        .arg("--caout")
        .arg(fleet.scratch().join("ca.pem"))
        .arg("--raout")
        .arg(&ra)
        .args(["--outform", "pem", "--force"])
        .output()
        .expect("pki runs");
    assert!(ra.exists(), "pki --scepca: {:?}", out);

    // The default profile, version 2: the built-in one plus manual approval.
    let profile = fleet.scratch().join("manual.toml");
    std::fs::write(
        &profile,
        format!(
            "{}\napproval = \"manual\"\n",
            certgate_core::profile::BUILTIN_TLS_SERVER_TOML
        ),
    )
    .expect("write profile");
    let (ok, out, err) = fleet.cli(&[
        "profile",
        "create",
        "--tenant",
        "default",
        "--name",
        "tls-server",
        "--file",
        &s(&profile),
    ]);
    assert!(ok, "profile create: {out}{err}");
    let mut seen = BTreeSet::new();

    // --- EST with curl: 202 + Retry-After until approved, then 200 with the certificate.
    let (_k, csr) = openssl_csr(&fleet.scratch(), "appr-est", "appr-est.example");
    let b64 = csr_b64(&fleet, &csr, "appr-est");
    let (code, headers, body) = est_post(&fleet, &userpass, &b64, "est1");
    assert_eq!(code, 202, "{headers}{}", String::from_utf8_lossy(&body));
    assert!(
        headers.to_ascii_lowercase().contains("retry-after: 5"),
        "{headers}"
    );
    let row = wait_pending(&fleet, "est", &mut seen);
    assert!(row.summary.contains("DNS:appr-est.example"), "{row:?}");
    assert!(
        String::from_utf8_lossy(&body).contains(&row.id),
        "the 202 names the request id"
    );
    let (code, _, _) = est_post(&fleet, &userpass, &b64, "est2");
    assert_eq!(code, 202, "still pending");
    assert_eq!(
        list(&fleet).iter().filter(|r| r.protocol == "est").count(),
        1,
        "a re-POST holds no second request"
    );
    assert_eq!(issued(&fleet, "est"), 0);
    let approved = decide(&fleet, "approve", &row.id);
    assert!(approved.contains("state      approved"), "{approved}");
    assert!(
        approved.contains("serial"),
        "issued at approval: {approved}"
    );
    let (code, headers, body) = est_post(&fleet, &userpass, &b64, "est3");
    assert_eq!(code, 200, "{headers}");
    let est_pem = fleet.scratch().join("appr-est.pem");
    est_cert(&fleet, &body, &est_pem);
    verify(&fleet, &est_pem);
    let (code, _, body2) = est_post(&fleet, &userpass, &b64, "est4");
    assert_eq!(code, 200);
    assert_eq!(body, body2, "the same certificate, byte for byte");
    assert_eq!(issued(&fleet, "est"), 1, "signed once");
    let listed = list(&fleet);
    let r = listed.iter().find(|r| r.id == row.id).expect("listed");
    assert_eq!(r.state, "approved");
    assert_eq!(r.serial, serial_of(&est_pem));
    // Approving twice is refused.
    let (ok, _, _) = fleet.cli(&["request", "approve", "--tenant", "default", &row.id]);
    assert!(!ok, "a decided request cannot be approved again");

    // EST deny: 403 from then on, nothing issued.
    let (_k, csr) = openssl_csr(&fleet.scratch(), "deny-est", "deny-est.example");
    let b64 = csr_b64(&fleet, &csr, "deny-est");
    let (code, _, _) = est_post(&fleet, &userpass, &b64, "est5");
    assert_eq!(code, 202);
    let row = wait_pending(&fleet, "est", &mut seen);
    assert!(decide(&fleet, "deny", &row.id).contains("state      denied"));
    let (code, _, body) = est_post(&fleet, &userpass, &b64, "est6");
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(issued(&fleet, "est"), 1);

    // strongSwan pki --est polls while the request waits.
    let (_k, csr) = openssl_csr(&fleet.scratch(), "appr-sw", "appr-sw.example");
    let mut cmd = Command::new("pki");
    cmd.args(["--est", "--url"])
        .arg(format!("https://{}", fleet.https))
        .arg("--cacert")
        .arg(fleet.root_pem())
        .arg("--cacert")
        .arg(fleet.chain_pem())
        .arg("--in")
        .arg(&csr)
        .args(["--userpass", &userpass])
        .args([
            "--interval",
            "2",
            "--maxpolltime",
            "120",
            "--outform",
            "pem",
        ]);
    let mut sw = Bg::spawn(
        cmd,
        fleet.scratch().join("appr-sw.pem"),
        fleet.scratch().join("appr-sw.err"),
    );
    let row = wait_pending(&fleet, "est", &mut seen);
    std::thread::sleep(Duration::from_secs(3));
    assert!(sw.running(), "pki --est keeps polling while pending");
    decide(&fleet, "approve", &row.id);
    let (st, _, err) = sw.wait(Duration::from_secs(90));
    assert!(st.success(), "pki --est after approval: {err}");
    verify(&fleet, &fleet.scratch().join("appr-sw.pem"));

    // --- SCEP with pki --scep: PENDING, CertPoll until approved.
    let key = fleet.scratch().join("scep1.key");
    rsa_key(&key);
    let mut sc = scep_enroll(&fleet, &ra, &key, "appr-scep.example", &challenge);
    let row = wait_pending(&fleet, "scep", &mut seen);
    std::thread::sleep(Duration::from_secs(5));
    assert!(sc.running(), "pki --scep keeps polling while pending");
    decide(&fleet, "approve", &row.id);
    let (st, _, err) = sc.wait(Duration::from_secs(90));
    assert!(
        st.success(),
        "pki --scep after approval: {err}\n{}",
        up.log()
    );
    let scep_pem = fleet.scratch().join("appr-scep.example.pem");
    verify(&fleet, &scep_pem);
    assert_eq!(issued(&fleet, "scep"), 1);

    // SCEP deny: the client gets FAILURE and gives up; nothing issued.
    let key = fleet.scratch().join("scep2.key");
    rsa_key(&key);
    let mut sc = scep_enroll(&fleet, &ra, &key, "deny-scep.example", &challenge);
    let row = wait_pending(&fleet, "scep", &mut seen);
    decide(&fleet, "deny", &row.id);
    let (st, _, err) = sc.wait(Duration::from_secs(90));
    assert!(!st.success(), "pki --scep must fail once denied: {err}");
    assert_eq!(issued(&fleet, "scep"), 1);

    // --- CMP with openssl cmp: waiting, pollReq/pollRep until approved.
    let mut c = cmp_ir(&fleet, "appr-cmp.example");
    let row = wait_pending(&fleet, "cmp", &mut seen);
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.running(), "openssl cmp keeps polling while pending");
    decide(&fleet, "approve", &row.id);
    let (st, out, err) = c.wait(Duration::from_secs(90));
    let err = format!("{}{err}", String::from_utf8_lossy(&out));
    assert!(
        st.success(),
        "openssl cmp after approval: {err}\n{}",
        up.log()
    );
    assert!(err.contains("checkAfter"), "polled: {err}");
    assert!(
        err.contains("CERTCONF"),
        "certConf sent (no implicitConfirm asked): {err}"
    );
    verify(&fleet, &fleet.scratch().join("appr-cmp.example.pem"));
    assert_eq!(issued(&fleet, "cmp"), 1);

    // p10cr with implicitConfirm: the certReqId OpenSSL polls for is the waiting one's, and the
    // delivery after polling grants implicitConfirm because the held request asked for it.
    let (_k, csr) = openssl_csr(&fleet.scratch(), "appr-p10", "appr-p10.example");
    let creds = fleet.credentials();
    let mut cmd = Command::new("openssl");
    cmd.args(["cmp", "-cmd", "p10cr", "-server"])
        .arg(format!("http://{}/.well-known/cmp", fleet.http))
        .arg("-trusted")
        .arg(fleet.root_pem())
        .args(["-ref", creds.get("cmp_reference").expect("cmp_reference")])
        .args([
            "-secret",
            &format!("pass:{}", creds.get("cmp_secret").expect("cmp_secret")),
        ])
        .arg("-csr")
        .arg(&csr)
        .args([
            "-implicit_confirm",
            "-unprotected_errors",
            "-msg_timeout",
            "20",
        ])
        .args(["-total_timeout", "150", "-certout"])
        .arg(fleet.scratch().join("appr-p10.pem"));
    let mut c = Bg::spawn(
        cmd,
        fleet.scratch().join("appr-p10.out"),
        fleet.scratch().join("appr-p10.err"),
    );
    let row = wait_pending(&fleet, "cmp", &mut seen);
    decide(&fleet, "approve", &row.id);
    let (st, out, err) = c.wait(Duration::from_secs(90));
    let err = format!("{}{err}", String::from_utf8_lossy(&out));
    assert!(st.success(), "openssl cmp p10cr after approval: {err}");
    // It polled: whether the first pollReq already found the approval (an IP) or got a
    // pollRep with checkAfter first depends on scheduling, so the check is on the pollReq.
    assert!(
        err.contains("'waiting' PKIStatus") && err.contains("sending POLLREQ"),
        "polled: {err}"
    );
    assert!(!err.contains("CERTCONF"), "implicitConfirm granted: {err}");
    verify(&fleet, &fleet.scratch().join("appr-p10.pem"));
    assert_eq!(issued(&fleet, "cmp"), 2);

    // CMP deny: rejected with notAuthorized; nothing issued.
    let mut c = cmp_ir(&fleet, "deny-cmp.example");
    let row = wait_pending(&fleet, "cmp", &mut seen);
    decide(&fleet, "deny", &row.id);
    let (st, out, err) = c.wait(Duration::from_secs(90));
    let err = format!("{}{err}", String::from_utf8_lossy(&out));
    assert!(!st.success(), "openssl cmp must fail once denied: {err}");
    assert!(
        err.contains("notAuthorized") || err.contains("rejection"),
        "{err}"
    );
    assert_eq!(issued(&fleet, "cmp"), 2);

    // The audit trail: one request record per request, one decision each.
    assert_eq!(audit_count(&fleet, "approval.requested", ""), 8);
    assert_eq!(audit_count(&fleet, "approval.approved", ""), 5);
    assert_eq!(audit_count(&fleet, "approval.denied", ""), 3);
    let (ok, out, err) = fleet.cli(&["audit", "verify"]);
    assert!(ok, "audit verify: {out}{err}");
}
