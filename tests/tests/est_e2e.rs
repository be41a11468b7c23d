//! EST end to end: strongSwan's real `pki --estca` / `pki --est` client and curl against
//! `certgate up` (real signer, core and edge processes on loopback, real TLS), with the dev HTTP
//! Basic credentials from dev-credentials.toml. Every certificate is checked with `openssl
//! verify` against the dev root and chain; refusals are checked to issue nothing (core audit).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certgate_e2e::{Fleet, openssl_csr, run, start_up};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `openssl verify` of `cert` against the dev root with the chain as untrusted intermediates.
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

fn x509_field(cert: &Path, flag: &str) -> String {
    let (ok, out, err) =
        run(Command::new("openssl").args(["x509", "-noout", flag, "-in", &s(cert)]));
    assert!(ok, "openssl x509 {flag}: {err}");
    out.trim().to_owned()
}

struct Est<'a> {
    fleet: &'a Fleet,
    url: String,
    user: String,
    password: String,
}

impl Est<'_> {
    fn p(&self, name: &str) -> PathBuf {
        self.fleet.scratch().join(name)
    }

    /// `pki` with `args`; (success, stdout as bytes, stderr).
    fn pki(&self, args: &[&str]) -> (bool, Vec<u8>, String) {
        let out = Command::new("pki")
            .args(args)
            .output()
            .expect("pki runs (apt-get install strongswan-pki libstrongswan-extra-plugins)");
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `pki --est` enrolling `csr`, with `extra` (credentials); writes `out` on success.
    fn enroll(&self, csr: &Path, extra: &[&str], out: &Path) -> (bool, String) {
        let root = s(&self.fleet.root_pem());
        let chain = s(&self.fleet.chain_pem());
        let csr = s(csr);
        let mut args = vec![
            "--est",
            "--url",
            &self.url,
            "--cacert",
            &root,
            "--cacert",
            &chain,
            "--in",
            &csr,
            "--outform",
            "pem",
            "--maxpolltime",
            "5",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = self.pki(&args);
        if ok {
            std::fs::write(out, &stdout).expect("write cert");
        }
        (ok, err)
    }

    /// curl against an EST path; (HTTP status, headers, body).
    fn curl(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&Path>,
    ) -> (u16, String, Vec<u8>) {
        let hdr = self.p("curl.headers");
        let out = self.p("curl.body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--cacert"])
            .arg(self.fleet.root_pem())
            .args(["-X", method, "-D"])
            .arg(&hdr)
            .arg("-o")
            .arg(&out)
            .args(["-w", "%{http_code}"]);
        if let Some(a) = auth {
            cmd.args(["-u", a]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
                .arg(format!("@{}", b.display()));
        }
        cmd.arg(format!("{}/.well-known/est/{path}", self.url));
        let (_, code, err) = run(&mut cmd);
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

    fn userpass(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
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

#[test]
fn strongswan_enrolls_and_reenrolls_curl_covers_csrattrs_serverkeygen_and_refusals() {
    let fleet = Fleet::uninitialised();
    let mut up = start_up(&fleet);
    let creds = fleet.credentials();
    let est = Est {
        fleet: &fleet,
        url: format!("https://{}", fleet.https),
        user: creds.get("est_username").expect("est_username").clone(),
        password: creds.get("est_password").expect("est_password").clone(),
    };
    // edge.toml holds the hash, never the password.
    let edge_toml = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    assert!(edge_toml.contains("pbkdf2-sha256$"), "{edge_toml}");
    assert!(!edge_toml.contains(&est.password));

    // cacerts with strongSwan: the chain it writes verifies up to the dev root.
    let caout = est.p("estca.pem");
    let (ok, _, err) = est.pki(&[
        "--estca",
        "--url",
        &est.url,
        "--cacert",
        &s(&fleet.root_pem()),
        "--caout",
        &s(&caout),
        "--outform",
        "pem",
        "--force",
    ]);
    assert!(ok, "pki --estca failed: {err}");
    let written: Vec<_> = std::fs::read_dir(fleet.scratch())
        .expect("scratch")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("estca"))
        .collect();
    assert!(!written.is_empty(), "pki --estca wrote nothing: {err}");

    // simpleenroll with HTTP Basic.
    let (key1, csr1) = openssl_csr(&fleet.scratch(), "dev1", "est1.example");
    let c1 = est.p("c1.pem");
    let (ok, err) = est.enroll(&csr1, &["--userpass", &est.userpass()], &c1);
    assert!(
        ok,
        "pki --est enroll failed: {err}\nedge log:\n{}",
        fleet.logs()
    );
    verify(&fleet, &c1);
    assert!(x509_field(&c1, "-subject").contains("est1.example"));
    let issued_after_enroll = fleet.issued_by("est");
    assert_eq!(issued_after_enroll, 1);

    // simplereenroll authenticated by the certificate being renewed (TLS client auth).
    let (_key2, csr2) = openssl_csr(&fleet.scratch(), "dev2", "est1.example");
    let c2 = est.p("c2.pem");
    let (ok, err) = est.enroll(&csr2, &["--cert", &s(&c1), "--key", &s(&key1)], &c2);
    assert!(
        ok,
        "pki --est re-enroll failed: {err}\nlogs:\n{}",
        fleet.logs()
    );
    verify(&fleet, &c2);
    assert_ne!(x509_field(&c1, "-serial"), x509_field(&c2, "-serial"));
    assert_eq!(x509_field(&c1, "-subject"), x509_field(&c2, "-subject"));
    assert_eq!(fleet.issued_by("est"), 2);
    // The core audited the re-enrollment under the TLS client certificate's identity, replacing c1.
    let audit = Command::new("sqlite3")
        .arg("-readonly")
        .arg(fleet.data_dir().join("core/core.db"))
        .arg("SELECT details FROM audit WHERE kind = 'issue.intent' AND details LIKE '%\"client\":\"cert:%'")
        .output()
        .expect("sqlite3 runs");
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("est1.example"), "{audit}");

    // Re-enrolling with a CSR naming another subject is refused; nothing issued.
    let (_k3, csr3) = openssl_csr(&fleet.scratch(), "dev3", "someone-else.example");
    let (ok, _) = est.enroll(
        &csr3,
        &["--cert", &s(&c1), "--key", &s(&key1)],
        &est.p("c3.pem"),
    );
    assert!(!ok, "re-enroll with another subject was accepted");
    // A certificate from another CA (same names, self-signed) does not even get through TLS.
    let foreign = est.p("foreign.pem");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-key",
        &s(&key1),
        "-subj",
        "/CN=est1.example",
        "-addext",
        "subjectAltName=DNS:est1.example",
        "-days",
        "1",
        "-out",
        &s(&foreign),
    ]));
    assert!(ok, "{err}");
    let (ok, _) = est.enroll(
        &csr2,
        &["--cert", &s(&foreign), "--key", &s(&key1)],
        &est.p("cf.pem"),
    );
    assert!(!ok, "re-enroll with a foreign certificate was accepted");
    // and without any client certificate, simplereenroll is 401.
    let b64_3 = csr_b64(&fleet, &csr3, "r3");
    let (code, hdrs, _) = est.curl(
        "POST",
        "simplereenroll",
        Some(&est.userpass()),
        Some(&b64_3),
    );
    assert_eq!(code, 401, "{hdrs}");
    assert_eq!(fleet.issued_by("est"), 2);

    // curl: authentication and bad input.
    let (_k4, csr4) = openssl_csr(&fleet.scratch(), "dev4", "est4.example");
    let b64_4 = csr_b64(&fleet, &csr4, "r4");
    let (code, hdrs, body) = est.curl("POST", "simpleenroll", None, Some(&b64_4));
    assert_eq!(code, 401);
    assert!(
        hdrs.to_ascii_lowercase()
            .contains("www-authenticate: basic realm="),
        "{hdrs}"
    );
    assert!(!String::from_utf8_lossy(&body).contains(&est.user));
    let wrong = format!("{}:not-the-password", est.user);
    let (code, _, _) = est.curl("POST", "simpleenroll", Some(&wrong), Some(&b64_4));
    assert_eq!(code, 401);
    let garbage = est.p("garbage.b64");
    std::fs::write(&garbage, "this is *not* base64 !!!\n").expect("write");
    let (code, _, _) = est.curl(
        "POST",
        "simpleenroll",
        Some(&est.userpass()),
        Some(&garbage),
    );
    assert_eq!(code, 400);
    let big = est.p("big.b64");
    std::fs::write(&big, "A".repeat(200 * 1024)).expect("write");
    // The edge refuses the declared length before reading the body and closes lingering
    // (gateways/edge/src/linger.rs), so curl reads the 413 every time, never a reset.
    let codes: Vec<u16> = (0..5)
        .map(|_| {
            est.curl("POST", "simpleenroll", Some(&est.userpass()), Some(&big))
                .0
        })
        .collect();
    assert!(
        codes.iter().all(|c| *c == 413),
        "oversize bodies: {codes:?}"
    );
    assert_eq!(
        fleet.issued_by("est"),
        2,
        "a refused request issued a certificate"
    );

    // Unknown label → 404; the CA chain over curl decodes as certs-only CMS.
    let (code, _, _) = est.curl("GET", "no-such-label/cacerts", None, None);
    assert_eq!(code, 404);
    let (code, hdrs, body) = est.curl("GET", "cacerts", None, None);
    assert_eq!(code, 200);
    assert!(hdrs.contains("application/pkcs7-mime"), "{hdrs}");
    assert!(
        !body.contains(&b'\n'),
        "cacerts base64 must not be line-wrapped"
    );

    // csrattrs: base64 of the configured attributes (P-256 EC key).
    let (code, hdrs, body) = est.curl("GET", "csrattrs", None, None);
    assert_eq!(code, 200);
    assert!(hdrs.contains("application/csrattrs"), "{hdrs}");
    let attrs = est.p("attrs.b64");
    std::fs::write(&attrs, &body).expect("write");
    let (ok, parsed, err) = run(Command::new("sh").arg("-c").arg(format!(
        "openssl base64 -d -A -in {} | openssl asn1parse -inform DER",
        attrs.display()
    )));
    assert!(ok, "{err}");
    assert!(
        parsed.contains("prime256v1") && parsed.contains("id-ecPublicKey"),
        "{parsed}"
    );

    // serverkeygen: a PKCS#8 key and its certificate; the key matches the certificate.
    let (_k5, csr5) = openssl_csr(&fleet.scratch(), "dev5", "skg.example");
    let b64_5 = csr_b64(&fleet, &csr5, "r5");
    let (code, hdrs, body) = est.curl("POST", "serverkeygen", Some(&est.userpass()), Some(&b64_5));
    assert_eq!(code, 200, "{hdrs}{}", String::from_utf8_lossy(&body));
    assert!(hdrs.contains("multipart/mixed; boundary="), "{hdrs}");
    let text = String::from_utf8_lossy(&body).into_owned();
    let part_b64 = |ct: &str| -> String {
        let start = text
            .find(ct)
            .unwrap_or_else(|| panic!("no {ct} part: {text}"));
        let rest = &text[start..];
        let body_start = rest.find("\r\n\r\n").expect("part headers end") + 4;
        let body = &rest[body_start..];
        body[..body.find("\r\n--").expect("part end")].to_owned()
    };
    let key_der = est.p("skg.key.b64");
    std::fs::write(&key_der, part_b64("application/pkcs8")).expect("write");
    let cms = est.p("skg.p7.b64");
    std::fs::write(&cms, part_b64("application/pkcs7-mime")).expect("write");
    let key_pem = est.p("skg.key.pem");
    let (ok, _, err) = run(Command::new("sh").arg("-c").arg(format!(
        "openssl base64 -d -A -in {} | openssl pkey -inform DER -out {}",
        key_der.display(),
        key_pem.display()
    )));
    assert!(ok, "PKCS#8 part: {err}");
    let c5 = est.p("c5.pem");
    let (ok, _, err) = run(Command::new("sh").arg("-c").arg(format!(
        "openssl base64 -d -A -in {} | openssl pkcs7 -inform DER -print_certs -out {}",
        cms.display(),
        c5.display()
    )));
    assert!(ok, "certs-only part: {err}");
    verify(&fleet, &c5);
    let (_, cert_pub, _) =
        run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in", &s(&c5)]));
    let (_, key_pub, _) =
        run(Command::new("openssl").args(["pkey", "-pubout", "-in", &s(&key_pem)]));
    assert!(
        !cert_pub.is_empty() && cert_pub == key_pub,
        "serverkeygen key does not match the certificate"
    );
    assert!(x509_field(&c5, "-subject").contains("skg.example"));
    assert_eq!(fleet.issued_by("est"), 3);

    // The private key never reached the core's store or audit.
    let key_b64 = part_b64("application/pkcs8");
    let db = std::fs::read(fleet.data_dir().join("core/core.db")).expect("db");
    assert!(!String::from_utf8_lossy(&db).contains(&key_b64[..40]));

    up.terminate(Duration::from_secs(30));
}

/// With the core down, EST answers 503 with Retry-After (and the edge keeps serving).
#[test]
fn core_down_gives_503_with_retry_after() {
    let mut fleet = Fleet::init();
    fleet.start_all();
    let creds = fleet.credentials();
    let est = Est {
        fleet: &fleet,
        url: format!("https://{}", fleet.https),
        user: creds.get("est_username").expect("est_username").clone(),
        password: creds.get("est_password").expect("est_password").clone(),
    };
    let (_k, csr) = openssl_csr(&fleet.scratch(), "down", "down.example");
    let b64 = csr_b64(&fleet, &csr, "down");
    let (code, _, _) = est.curl("GET", "cacerts", None, None);
    assert_eq!(code, 200);
    drop(est);
    fleet.stop_core();
    let est = Est {
        fleet: &fleet,
        url: format!("https://{}", fleet.https),
        user: creds.get("est_username").expect("est_username").clone(),
        password: creds.get("est_password").expect("est_password").clone(),
    };
    let (code, hdrs, body) = est.curl("POST", "simpleenroll", Some(&est.userpass()), Some(&b64));
    assert_eq!(code, 503, "{hdrs}{}", String::from_utf8_lossy(&body));
    assert!(hdrs.to_ascii_lowercase().contains("retry-after:"), "{hdrs}");
    let (code, hdrs, _) = est.curl("GET", "cacerts", None, None);
    assert_eq!(code, 503, "{hdrs}");
}
