//! Issuing-CA rollover end to end under `certgate up` (real signer, core and edge processes):
//! strongSwan `pki --scep` enrolls under the current CA; `certgate ca rollover stage` stages the
//! next CA (listed as "staged" by `certgate ca list`); SCEP GetCACaps then offers GetNextCACert
//! and GetNextCACert answers `application/x-x509-next-ca-cert`, a SignedData that
//! `openssl cms -verify` checks against the RA certificate `pki --scepca` fetched, carrying the
//! staged CA certificate, which `openssl verify` accepts under the dev root. After
//! `certgate ca rollover activate`, strongSwan enrolls again and the certificate chains to the new
//! CA, while the certificate of the old CA still gets a verified "good" from the edge's OCSP
//! responder; GetNextCACert is 404 again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::scep::dev_challenge;
use certgate_e2e::{Fleet, http_get, run, start_up};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn pki(args: &[&str]) -> (bool, Vec<u8>, String) {
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

fn openssl(args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new("openssl").args(args));
    assert!(ok, "openssl {args:?}: {out}{err}");
    out + &err
}

fn x509_field(cert: &Path, flag: &str) -> String {
    openssl(&["x509", "-noout", flag, "-in", &s(cert)])
        .trim()
        .to_owned()
}

/// strongSwan `pki --scep` enrollment of a fresh RSA key; returns the certificate path.
fn enroll(fleet: &Fleet, url: &str, name: &str, challenge: &str, ra: &Path) -> PathBuf {
    let key = fleet.scratch().join(format!("{name}.key"));
    let (ok, out, err) = pki(&[
        "--gen",
        "--type",
        "rsa",
        "--size",
        "2048",
        "--outform",
        "pem",
    ]);
    assert!(ok, "pki --gen: {err}");
    std::fs::write(&key, out).expect("write key");
    let (ok, cert, err) = pki(&[
        "--scep",
        "--url",
        url,
        "--in",
        &s(&key),
        "--dn",
        &format!("CN={name}"),
        "--san",
        &format!("{name}.example"),
        "--password",
        challenge,
        "--cacert-enc",
        &s(ra),
        "--cacert-sig",
        &s(ra),
        "--cacert",
        &s(&fleet.root_pem()),
        "--cacert",
        &s(&fleet.chain_pem()),
        "--maxpolltime",
        "30",
        "--interval",
        "2",
        "--outform",
        "pem",
    ]);
    assert!(ok, "pki --scep {name}: {err}");
    let path = fleet.scratch().join(format!("{name}.pem"));
    std::fs::write(&path, cert).expect("write cert");
    path
}

fn scepca(url: &str, dir: &Path, tag: &str) -> PathBuf {
    let ra = dir.join(format!("ra-{tag}.pem"));
    let (ok, _, err) = pki(&[
        "--scepca",
        "--url",
        url,
        "--caout",
        &s(&dir.join(format!("ca-{tag}.pem"))),
        "--raout",
        &s(&ra),
        "--outform",
        "pem",
        "--force",
    ]);
    assert!(ok, "pki --scepca: {err}");
    assert!(ra.exists(), "no RA certificate written: {err}");
    ra
}

/// The certificates of a PEM text (as printed by `openssl pkcs7 -print_certs`), base64 only.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|b| b.split("-----END CERTIFICATE-----").next())
        .map(|b| b.split_whitespace().collect())
        .collect()
}

fn caps(fleet: &Fleet) -> String {
    let (status, body) =
        http_get(fleet.http, "/scep?operation=GetCACaps").expect("GetCACaps answers");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn staged_rollover_is_served_as_get_next_ca_cert_and_activation_switches_issuance() {
    let fleet = Fleet::init();
    let up = start_up(&fleet);
    let challenge = dev_challenge(&fleet);
    let url = format!("http://{}/scep", fleet.http);
    let p = |n: &str| -> PathBuf { fleet.scratch().join(n) };

    // Before: nothing staged.
    let (status, _) =
        http_get(fleet.http, "/scep?operation=GetNextCACert").expect("GetNextCACert answers");
    assert_eq!(status, 404);
    let ra_old = scepca(&url, &fleet.scratch(), "old");
    let old_cert = enroll(&fleet, &url, "before-rollover", &challenge, &ra_old);
    std::fs::copy(fleet.chain_pem(), p("chain-old.pem")).expect("keep the old chain");
    let old_issuer = x509_field(&old_cert, "-issuer");

    // Stage through the CLI.
    let (ok, out, err) = fleet.cli(&[
        "ca",
        "rollover",
        "stage",
        "--tenant",
        "default",
        "--out",
        &s(&p("next-chain.pem")),
    ]);
    assert!(ok, "ca rollover stage: {out}{err}");
    assert!(out.contains("state=staged"), "{out}");
    let (ok, list, err) = fleet.cli(&["ca", "list", "--tenant", "default"]);
    assert!(ok, "ca list: {err}");
    assert!(
        list.lines().any(|l| l.contains("\tissuing\tstaged\t")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.contains("\tissuing\tactive\t")),
        "{list}"
    );

    // GetCACaps offers GetNextCACert once the edge's short cache has seen the rollover.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caps(&fleet).contains("GetNextCACert") {
        assert!(
            Instant::now() < deadline,
            "GetCACaps never offered GetNextCACert"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(caps(&fleet).contains("SCEPStandard"));

    // GetNextCACert: the content type, then the signature and the certificate.
    let (ok, headers, err) = run(Command::new("curl").args([
        "-s",
        "-D",
        "-",
        "-o",
        &s(&p("next.p7")),
        &format!("{url}?operation=GetNextCACert"),
    ]));
    assert!(ok, "curl: {err}");
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/x-x509-next-ca-cert"),
        "{headers}"
    );
    // The signer is the RA certificate the client has; `openssl cms -verify` looks only for the
    // signer in -certfile and builds the rest of the path from the trusted store, so that holds
    // the dev root and the current chain (the answer itself carries only the next hierarchy).
    let mut trusted = std::fs::read(fleet.root_pem()).expect("root");
    trusted.extend(std::fs::read(fleet.chain_pem()).expect("chain"));
    std::fs::write(p("trusted.pem"), trusted).expect("write");
    let verified = openssl(&[
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        &s(&p("next.p7")),
        "-content",
        "/dev/null",
        "-certfile",
        &s(&ra_old),
        "-CAfile",
        &s(&p("trusted.pem")),
        "-out",
        &s(&p("next.content")),
    ]);
    assert!(verified.contains("Verification successful"), "{verified}");
    // A tampered copy does not verify.
    let mut bad = std::fs::read(p("next.p7")).expect("read");
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    std::fs::write(p("next-bad.p7"), bad).expect("write");
    let (ok, _, _) = run(Command::new("openssl").args([
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        &s(&p("next-bad.p7")),
        "-content",
        "/dev/null",
        "-certfile",
        &s(&ra_old),
        "-CAfile",
        &s(&p("trusted.pem")),
    ]));
    assert!(!ok, "a tampered GetNextCACert answer verified");
    let certs = openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &s(&p("next.p7")),
        "-print_certs",
    ]);
    // Exactly the staged chain (new CA, intermediate, root; a SET, so in DER order), and not
    // the CA it replaces.
    let mut carried = pem_blocks(&certs);
    carried.sort();
    let mut expected = pem_blocks(&std::fs::read_to_string(p("next-chain.pem")).expect("read"));
    let staged_block = expected.first().cloned().expect("staged CA");
    expected.sort();
    assert_eq!(carried, expected, "GetNextCACert carries the staged chain");
    let old_block = pem_blocks(&std::fs::read_to_string(p("chain-old.pem")).expect("read"))
        .first()
        .cloned()
        .expect("old CA");
    assert_ne!(staged_block, old_block);
    assert!(!carried.contains(&old_block));
    let staged = openssl(&[
        "x509",
        "-in",
        &s(&p("next-chain.pem")),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    let out = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        &s(&fleet.root_pem()),
        "-untrusted",
        &s(&p("next-chain.pem")),
        &s(&p("next-chain.pem")),
    ]);
    assert!(out.contains(": OK"), "{out}");
    // Same subject as the CA it replaces (RFC 8894 §4.7).
    assert_eq!(
        x509_field(&p("next-chain.pem"), "-subject").replace("subject=", ""),
        old_issuer.replace("issuer=", "")
    );

    // Activate; then issuance chains to the new CA (and ca/chain.pem now holds it).
    let (ok, out, err) = fleet.cli(&["ca", "rollover", "activate", "--tenant", "default"]);
    assert!(ok, "ca rollover activate: {out}{err}\n{}", up.log());
    assert!(out.contains("state=active"), "{out}");
    let new_chain_fp = openssl(&[
        "x509",
        "-in",
        &s(&fleet.chain_pem()),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    assert_eq!(
        new_chain_fp, staged,
        "ca/chain.pem now starts with the new CA"
    );
    let (ok, list, _) = fleet.cli(&["ca", "list", "--tenant", "default"]);
    assert!(ok);
    assert!(
        list.lines().any(|l| l.contains("\tissuing\tretiring\t")),
        "{list}"
    );
    assert!(!list.contains("\tstaged\t"), "{list}");

    let ra_new = scepca(&url, &fleet.scratch(), "new");
    // Same RA key, new certificate under the new CA.
    assert_eq!(
        x509_field(&ra_new, "-pubkey"),
        x509_field(&ra_old, "-pubkey")
    );
    assert_ne!(
        x509_field(&ra_new, "-serial"),
        x509_field(&ra_old, "-serial")
    );
    let new_cert = enroll(&fleet, &url, "after-rollover", &challenge, &ra_new);
    let out = openssl(&[
        "verify",
        "-CAfile",
        &s(&fleet.root_pem()),
        "-untrusted",
        &s(&p("next-chain.pem")),
        &s(&new_cert),
    ]);
    assert!(out.contains(": OK"), "{out}");
    // Not under the old CA.
    let (ok, _, _) = run(Command::new("openssl").args([
        "verify",
        "-partial_chain",
        "-CAfile",
        &s(&p("chain-old.pem")),
        &s(&new_cert),
    ]));
    assert!(!ok, "the new certificate must not chain to the old CA");

    // The old CA's certificate keeps its OCSP service at the edge.
    let ocsp_url = format!("http://{}/ocsp", fleet.http);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ok, out, err) = run(Command::new("openssl").args([
            "ocsp",
            "-url",
            &ocsp_url,
            "-issuer",
            &s(&p("chain-old.pem")),
            "-cert",
            &s(&old_cert),
            "-CAfile",
            &s(&fleet.root_pem()),
            "-verify_other",
            &s(&p("chain-old.pem")),
        ]));
        if ok && out.contains(": good") && err.contains("Response verify OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no good OCSP answer for the old CA's certificate: {out}{err}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Nothing is staged any more.
    let (status, _) =
        http_get(fleet.http, "/scep?operation=GetNextCACert").expect("GetNextCACert answers");
    assert_eq!(status, 404);
}
