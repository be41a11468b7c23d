//! SCEP end to end: strongSwan's real `pki --scepca` / `pki --scep` client against
//! `certgate up` (real signer, core and edge processes on loopback): fetch the CA/RA
//! certificates, enroll with the dev challenge (`scep_challenge` in dev-credentials.toml), renew
//! with the issued certificate, and check every certificate with `openssl verify` against the
//! dev root and chain. A wrong challenge is refused (FAILURE) and issues nothing (core audit).

use std::path::{Path, PathBuf};
use std::process::Command;

use certgate_e2e::scep::{dev_challenge, post, s};
use certgate_e2e::{Fleet, run, start_up};

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

/// `pki` with `args`; (success, stdout, stderr).
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

fn rsa_key(path: &Path) {
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
    std::fs::write(path, out).expect("write key");
}

#[test]
fn strongswan_enrolls_renews_and_wrong_challenge_is_refused() {
    let fleet = Fleet::init();
    let up = start_up(&fleet);
    let challenge = dev_challenge(&fleet);
    let url = format!("http://{}/scep", fleet.http);
    let p = |n: &str| -> PathBuf { fleet.scratch().join(n) };

    // GetCACaps / GetCACert through the real client.
    let (ok, _, err) = pki(&[
        "--scepca",
        "--url",
        &url,
        "--caout",
        &s(&p("ca.pem")),
        "--raout",
        &s(&p("ra.pem")),
        "--outform",
        "pem",
        "--force",
    ]);
    assert!(ok, "pki --scepca: {err}");
    assert!(p("ra.pem").exists(), "no RA certificate written: {err}");
    let ra = s(&p("ra.pem"));

    // The RA certificate (created on first use) may be audited as an issuance of its own.
    let base = fleet.issued_by("scep");

    // PKCSReq with the dev challenge.
    rsa_key(&p("dev.key"));
    let (ok, cert, err) = pki(&[
        "--scep",
        "--url",
        &url,
        "--in",
        &s(&p("dev.key")),
        "--dn",
        "CN=scep-device",
        "--san",
        "scep-device.example",
        "--password",
        &challenge,
        "--cacert-enc",
        &ra,
        "--cacert-sig",
        &ra,
        "--cacert",
        &s(&fleet.root_pem()),
        "--cacert",
        &s(&fleet.chain_pem()),
        "--maxpolltime",
        "10",
        "--interval",
        "2",
        "--outform",
        "pem",
    ]);
    assert!(ok, "pki --scep enroll: {err}\n{}", up.log());
    std::fs::write(p("dev.pem"), cert).expect("write cert");
    verify(&fleet, &p("dev.pem"));
    assert!(x509_field(&p("dev.pem"), "-subject").contains("scep-device"));
    assert_eq!(fleet.issued_by("scep"), base + 1);

    // RenewalReq signed with the issued certificate and its key, for a new key.
    rsa_key(&p("dev2.key"));
    let (ok, cert, err) = pki(&[
        "--scep",
        "--url",
        &url,
        "--in",
        &s(&p("dev2.key")),
        "--dn",
        "CN=scep-device",
        "--san",
        "scep-device.example",
        "--cert",
        &s(&p("dev.pem")),
        "--key",
        &s(&p("dev.key")),
        "--cacert-enc",
        &ra,
        "--cacert-sig",
        &ra,
        "--cacert",
        &s(&fleet.root_pem()),
        "--cacert",
        &s(&fleet.chain_pem()),
        "--maxpolltime",
        "10",
        "--interval",
        "2",
        "--outform",
        "pem",
    ]);
    assert!(ok, "pki --scep renew: {err}\n{}", up.log());
    std::fs::write(p("dev2.pem"), cert).expect("write cert");
    verify(&fleet, &p("dev2.pem"));
    assert_ne!(
        x509_field(&p("dev.pem"), "-serial"),
        x509_field(&p("dev2.pem"), "-serial")
    );
    assert_eq!(fleet.issued_by("scep"), base + 2);

    // An old client's DES-EDE3-CBC content (strongSwan `--cipher des3`).
    rsa_key(&p("des.key"));
    let (ok, cert, err) = pki(&[
        "--scep",
        "--url",
        &url,
        "--in",
        &s(&p("des.key")),
        "--dn",
        "CN=scep-des3",
        "--password",
        &challenge,
        "--cipher",
        "des3",
        "--cacert-enc",
        &ra,
        "--cacert-sig",
        &ra,
        "--cacert",
        &s(&fleet.root_pem()),
        "--cacert",
        &s(&fleet.chain_pem()),
        "--maxpolltime",
        "10",
        "--interval",
        "2",
        "--outform",
        "pem",
    ]);
    assert!(ok, "pki --scep --cipher des3: {err}");
    std::fs::write(p("des.pem"), cert).expect("write cert");
    verify(&fleet, &p("des.pem"));
    assert_eq!(fleet.issued_by("scep"), base + 3);

    // A wrong challenge: FAILURE, nothing issued.
    rsa_key(&p("bad.key"));
    let (ok, _, err) = pki(&[
        "--scep",
        "--url",
        &url,
        "--in",
        &s(&p("bad.key")),
        "--dn",
        "CN=intruder",
        "--password",
        "not-the-challenge",
        "--cacert-enc",
        &ra,
        "--cacert-sig",
        &ra,
        "--cacert",
        &s(&fleet.root_pem()),
        "--cacert",
        &s(&fleet.chain_pem()),
        "--maxpolltime",
        "10",
        "--interval",
        "2",
        "--outform",
        "pem",
    ]);
    assert!(!ok, "a wrong challenge must be refused");
    assert!(err.to_lowercase().contains("fail"), "{err}");
    assert_eq!(fleet.issued_by("scep"), base + 3);

    get_cert_get_crl_and_malformed(&fleet, &url, &p("ra.pem"), &p("dev.pem"), &p("dev.key"));
}

fn der_of(pem: &Path, kind: &str) -> Vec<u8> {
    let args: Vec<String> = match kind {
        "cert" => ["x509", "-outform", "DER", "-in"]
            .map(String::from)
            .to_vec(),
        _ => ["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"]
            .map(String::from)
            .to_vec(),
    };
    let out = Command::new("openssl")
        .args(&args)
        .arg(pem)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {kind} to DER");
    out.stdout
}

/// GetCert and GetCRL built with the crate's client side (signed by the enrolled device),
/// GetCACaps text, and a tampered message.
fn get_cert_get_crl_and_malformed(fleet: &Fleet, url: &str, ra: &Path, cert: &Path, key: &Path) {
    use certgate_scep::client::{
        Request, build_request, issuer_and_serial, issuer_and_subject, read_reply,
    };
    let ra = der_of(ra, "cert");
    let cert = der_of(cert, "cert");
    let key = der_of(key, "key");
    let ias = issuer_and_serial(&cert).expect("IssuerAndSerialNumber");
    let iasub = issuer_and_subject(&cert).expect("IssuerAndSubject");
    let msg = |mt: &'static str, tid: &str| {
        build_request(&Request {
            message_type: mt,
            transaction_id: tid,
            sender_nonce: [9u8; 16],
            content_der: if mt == "20" { &iasub } else { &ias },
            signer_cert_der: &cert,
            signer_key_pkcs8: &key,
            ra_cert_der: &ra,
        })
        .expect("build request")
    };

    let (code, body) = post(url, &msg("21", "getcert-1"), &fleet.scratch(), "getcert");
    assert_eq!(code, 200);
    let reply = read_reply(&body, &key).expect("GetCert reply");
    assert_eq!(reply.status, certgate_scep::PkiStatus::Success);
    assert_eq!(reply.recipient_nonce, vec![9u8; 16]);
    assert_eq!(reply.certs, vec![cert.clone()]);

    let (code, body) = post(url, &msg("22", "getcrl-1"), &fleet.scratch(), "getcrl");
    assert_eq!(code, 200);
    let reply = read_reply(&body, &key).expect("GetCRL reply");
    assert_eq!(
        reply.status,
        certgate_scep::PkiStatus::Success,
        "GetCRL: {:?}\n{}",
        reply.fail_info,
        std::fs::read_to_string(fleet.data_dir().join("logs/edge.log")).unwrap_or_default()
    );
    assert_eq!(reply.crls.len(), 1);
    let crl = fleet.scratch().join("scep.crl");
    std::fs::write(&crl, &reply.crls[0]).expect("write crl");
    let (ok, _, err) = run(Command::new("openssl").args([
        "crl",
        "-inform",
        "DER",
        "-noout",
        "-in",
        &s(&crl),
        "-CAfile",
        &s(&fleet.chain_pem()),
    ]));
    assert!(ok, "openssl crl: {err}");

    // CertPoll: no pending state → FAILURE badCertId.
    let (code, body) = post(url, &msg("20", "poll-1"), &fleet.scratch(), "poll");
    assert_eq!(code, 200);
    let reply = read_reply(&body, &key).expect("CertPoll reply");
    assert_eq!(reply.status, certgate_scep::PkiStatus::Failure);
    assert_eq!(reply.fail_info, Some(certgate_scep::FailInfo::BadCertId));

    // A tampered signature: RFC 8894 §3.3.2.2 CertRep FAILURE badMessageCheck, addressed with the
    // (unverified) transactionID and senderNonce; no certificate in it.
    let mut bad = msg("21", "getcert-2");
    let n = bad.len();
    bad[n - 5] ^= 0x55;
    let (code, body) = post(url, &bad, &fleet.scratch(), "tampered");
    assert_eq!(code, 200);
    let reply = read_reply(&body, &key).expect("FAILURE reply to a tampered message");
    assert_eq!(reply.status, certgate_scep::PkiStatus::Failure);
    assert_eq!(
        reply.fail_info,
        Some(certgate_scep::FailInfo::BadMessageCheck)
    );
    assert_eq!(reply.transaction_id, "getcert-2");
    assert!(reply.certs.is_empty());

    let (ok, caps, err) =
        run(Command::new("curl").args(["-s", "-f", &format!("{url}?operation=GetCACaps")]));
    assert!(ok, "GetCACaps: {err}");
    assert_eq!(
        caps,
        "AES\nDES3\nSHA-256\nSHA-384\nSHA-512\nPOSTPKIOperation\nRenewal\nSCEPStandard\n"
    );
}
