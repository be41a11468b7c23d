//! PKIOperation parsing and CertRep building against RSA keys, certificates and CSRs made by
//! OpenSSL, with OpenSSL checking the CertRep the crate builds.

mod common;

use certgate_scep::client::{self, Request};
use certgate_scep::{
    CertRep, FailInfo, MessageType, NextCaCert, PkiStatus, RequestContent, ca_caps,
    ca_caps_with_next_ca, ca_cert_response, parse_pki_message,
};
use common::{openssl, read};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fixture {
    dir: tempfile::TempDir,
    ra_cert: Vec<u8>,
    ra_key: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    csr: Vec<u8>,
    other_csr: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for (name, cn) in [("ra", "/CN=Test SCEP RA"), ("client", "/CN=device-1")] {
        common::self_signed(d, name, cn);
    }
    // A CSR with a challengePassword attribute, through a config file.
    std::fs::write(
        d.join("req.cnf"),
        "[req]\nprompt=no\ndistinguished_name=dn\nattributes=attrs\n[dn]\nCN=device-1\n[attrs]\nchallengePassword=s3cret-challenge\n",
    )
    .expect("write cnf");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "client.key",
            "-config",
            "req.cnf",
            "-outform",
            "DER",
            "-out",
            "csr.der",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "other.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "other.key",
            "-config",
            "req.cnf",
            "-outform",
            "DER",
            "-out",
            "other.der",
        ],
    );
    Fixture {
        ra_cert: read(d, "ra.der"),
        ra_key: read(d, "ra.p8"),
        client_cert: read(d, "client.der"),
        client_key: read(d, "client.p8"),
        csr: read(d, "csr.der"),
        other_csr: read(d, "other.der"),
        dir,
    }
}

fn request(f: &Fixture, mt: &'static str, content: &[u8]) -> Vec<u8> {
    client::build_request(&Request {
        message_type: mt,
        transaction_id: "tx-0001",
        sender_nonce: [7u8; 16],
        content_der: content,
        signer_cert_der: &f.client_cert,
        signer_key_pkcs8: &f.client_key,
        ra_cert_der: &f.ra_cert,
    })
    .expect("build request")
}

fn path(f: &Fixture, name: &str) -> PathBuf {
    f.dir.path().join(name)
}

#[test]
fn pkcsreq_round_trip_and_openssl_reads_the_certrep() {
    let f = fixture();
    let req = request(&f, "19", &f.csr);
    if let Some(dir) = std::env::var_os("SCEP_WRITE_SEEDS") {
        // Fuzz seeds: a PKCSReq, a GetCert and a CertPoll.
        std::fs::write(Path::new(&dir).join("pkcsreq.der"), &req).expect("seed");
        std::fs::write(
            Path::new(&dir).join("getcert.der"),
            request(&f, "21", b"\x30\x00"),
        )
        .expect("seed");
        std::fs::write(
            Path::new(&dir).join("certpoll.der"),
            request(&f, "20", b"\x30\x00"),
        )
        .expect("seed");
    }
    let msg = parse_pki_message(&req).expect("parse");
    assert_eq!(msg.message_type, MessageType::PkcsReq);
    assert_eq!(msg.transaction_id, "tx-0001");
    assert_eq!(msg.sender_nonce, vec![7u8; 16]);
    assert_eq!(msg.signer_cert_der, f.client_cert);
    let kt = msg.key_transport(&f.ra_cert).expect("ktri");
    let cek = client::rsa_decrypt_key(&f.ra_key, &kt.encrypted_key).expect("unwrap");
    let RequestContent::CertRequest { csr_der, challenge } =
        msg.decrypt_content(&cek).expect("decrypt")
    else {
        panic!("expected a certificate request");
    };
    assert_eq!(csr_der, f.csr);
    assert_eq!(
        challenge.as_deref().map(|c| c.as_slice()),
        Some(&b"s3cret-challenge"[..])
    );

    // Answer with SUCCESS carrying a certificate (the RA cert stands in for the issued one).
    let rep = CertRep::success(&msg, std::slice::from_ref(&f.ra_cert), &[]).expect("certrep");
    let sig = client::rsa_sign(&f.ra_key, rep.digest(), rep.signed_attributes_der()).expect("sign");
    let der = rep.finish(&sig, &f.ra_cert).expect("finish");
    let reply = client::read_reply(&der, &f.client_key).expect("read reply");
    assert_eq!(reply.status, PkiStatus::Success);
    assert_eq!(reply.transaction_id, "tx-0001");
    assert_eq!(reply.recipient_nonce, vec![7u8; 16]);
    assert_eq!(reply.certs, vec![f.ra_cert.clone()]);
    // The bench's cheap read of the same reply agrees (no signature check, no decryption).
    let head = client::peek_reply(&der).expect("peek reply");
    assert_eq!(head.status, PkiStatus::Success);
    assert_eq!(head.transaction_id, "tx-0001");
    assert_eq!(head.recipient_nonce, vec![7u8; 16]);

    // OpenSSL verifies the RA signature and decrypts the envelope with the client key.
    std::fs::write(path(&f, "rep.der"), &der).expect("write");
    openssl(
        f.dir.path(),
        &[
            "cms", "-verify", "-inform", "DER", "-in", "rep.der", "-CAfile", "ra.pem", "-out",
            "env.der", "-binary",
        ],
    );
    openssl(
        f.dir.path(),
        &[
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "env.der",
            "-recip",
            "client.pem",
            "-inkey",
            "client.key",
            "-out",
            "inner.der",
            "-binary",
        ],
    );
    openssl(
        f.dir.path(),
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "inner.der",
            "-print_certs",
            "-out",
            "certs.pem",
        ],
    );
    let certs = std::fs::read_to_string(path(&f, "certs.pem")).expect("certs");
    assert!(certs.contains("Test SCEP RA"), "{certs}");
}

#[test]
fn openssl_made_envelope_decrypts() {
    let f = fixture();
    // OpenSSL encrypts the CSR to the RA (AES-256-CBC); the crate unwraps it like the RA would.
    openssl(
        f.dir.path(),
        &[
            "cms", "-encrypt", "-binary", "-aes256", "-in", "csr.der", "-outform", "DER", "-out",
            "env.der", "ra.pem",
        ],
    );
    let env = std::fs::read(path(&f, "env.der")).expect("env");
    let plain = client::decrypt_enveloped(&env, &f.ra_key).expect("decrypt");
    assert_eq!(plain, f.csr);
}

#[test]
fn failure_and_pending_replies_carry_status_and_fail_info() {
    let f = fixture();
    let msg = parse_pki_message(&request(&f, "19", &f.csr)).expect("parse");
    for (rep, status, fi) in [
        (
            CertRep::failure(&msg, FailInfo::BadRequest),
            PkiStatus::Failure,
            Some(FailInfo::BadRequest),
        ),
        (
            CertRep::failure(&msg, FailInfo::BadCertId),
            PkiStatus::Failure,
            Some(FailInfo::BadCertId),
        ),
        (CertRep::pending(&msg), PkiStatus::Pending, None),
    ] {
        let rep = rep.expect("certrep");
        let sig =
            client::rsa_sign(&f.ra_key, rep.digest(), rep.signed_attributes_der()).expect("sign");
        let der = rep.finish(&sig, &f.ra_cert).expect("finish");
        let reply = client::read_reply(&der, &f.client_key).expect("read");
        assert_eq!(reply.status, status);
        assert_eq!(reply.fail_info, fi);
        assert!(reply.certs.is_empty());
        let head = client::peek_reply(&der).expect("peek");
        assert_eq!((head.status, head.fail_info), (status, fi));
    }
}

#[test]
fn malformed_inputs_get_the_right_fail_info() {
    let f = fixture();
    let good = request(&f, "19", &f.csr);

    assert_eq!(
        parse_pki_message(b"garbage")
            .expect_err("garbage")
            .fail_info,
        FailInfo::BadRequest
    );
    assert_eq!(
        parse_pki_message(&vec![0x30; certgate_scep::MAX_MESSAGE_LEN + 1])
            .expect_err("big")
            .fail_info,
        FailInfo::BadRequest
    );
    // Flip one byte of the signature (it sits at the end of the message).
    let mut bad_sig = good.clone();
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 0x55;
    assert_eq!(
        parse_pki_message(&bad_sig).expect_err("bad sig").fail_info,
        FailInfo::BadMessageCheck
    );

    // Encrypted to someone else: the RA is not a recipient.
    let msg = parse_pki_message(&good).expect("parse");
    assert_eq!(
        msg.key_transport(&f.client_cert)
            .expect_err("wrong ra")
            .fail_info,
        FailInfo::BadMessageCheck
    );
    // A wrong content-encryption key.
    assert_eq!(
        msg.decrypt_content(&[0u8; 16])
            .expect_err("wrong cek")
            .fail_info,
        FailInfo::BadMessageCheck
    );
    assert_eq!(
        msg.decrypt_content(&[0u8; 5])
            .expect_err("short cek")
            .fail_info,
        FailInfo::BadMessageCheck
    );

    // PKCSReq whose CSR key is not the signer's key.
    let msg = parse_pki_message(&request(&f, "19", &f.other_csr)).expect("parse");
    let kt = msg.key_transport(&f.ra_cert).expect("ktri");
    let cek = client::rsa_decrypt_key(&f.ra_key, &kt.encrypted_key).expect("unwrap");
    assert_eq!(
        msg.decrypt_content(&cek)
            .expect_err("key mismatch")
            .fail_info,
        FailInfo::BadMessageCheck
    );

    // Unknown messageType, and a CertRep sent as a request.
    for mt in ["99", "3"] {
        assert_eq!(
            parse_pki_message(&request(&f, mt, &f.csr))
                .expect_err("type")
                .fail_info,
            FailInfo::BadRequest
        );
    }
    // GetCert whose content is not an IssuerAndSerialNumber.
    let msg = parse_pki_message(&request(&f, "21", b"\x04\x01x")).expect("parse");
    let kt = msg.key_transport(&f.ra_cert).expect("ktri");
    let cek = client::rsa_decrypt_key(&f.ra_key, &kt.encrypted_key).expect("unwrap");
    assert_eq!(
        msg.decrypt_content(&cek).expect_err("content").fail_info,
        FailInfo::BadRequest
    );
}

#[test]
fn ca_caps_and_ca_cert() {
    assert_eq!(
        ca_caps(),
        "AES\nDES3\nSHA-256\nSHA-384\nSHA-512\nPOSTPKIOperation\nRenewal\nSCEPStandard\n"
    );
    let f = fixture();
    let der = ca_cert_response(&[f.ra_cert.clone(), f.client_cert.clone()]).expect("cacert");
    std::fs::write(path(&f, "cacert.der"), &der).expect("write");
    openssl(
        f.dir.path(),
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "cacert.der",
            "-print_certs",
            "-out",
            "ca.pem",
        ],
    );
    let text = std::fs::read_to_string(path(&f, "ca.pem")).expect("read");
    assert!(
        text.contains("Test SCEP RA") && text.contains("device-1"),
        "{text}"
    );
}

/// GetNextCACert (RFC 8894 §3.5.2 / §4.7.1): the next CA certificates (the client certificate
/// stands in for the next CA) in a SignedData signed by the RA that `openssl cms -verify`
/// accepts with the RA certificate, detached over empty content, with exactly the given
/// certificates (not the RA's); a tampered signature fails; GetCACaps adds GetNextCACert last.
#[test]
fn next_ca_cert_is_signed_by_the_ra_and_carries_only_the_next_certificates() {
    assert_eq!(
        ca_caps_with_next_ca(),
        format!("{}GetNextCACert\n", ca_caps())
    );
    assert!(NextCaCert::new(&[], 1_700_000_000).is_err());
    assert!(NextCaCert::new(&[b"not a certificate".to_vec()], 1_700_000_000).is_err());
    let f = fixture();
    let msg = NextCaCert::new(std::slice::from_ref(&f.client_cert), 1_700_000_000).expect("build");
    let sig = client::rsa_sign(&f.ra_key, msg.digest(), msg.signed_attributes_der()).expect("sign");
    let der = msg.finish(&sig, &f.ra_cert).expect("finish");
    std::fs::write(path(&f, "next.der"), &der).expect("write");
    std::fs::write(path(&f, "empty"), b"").expect("write");
    openssl(
        f.dir.path(),
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "next.der",
            "-content",
            "empty",
            "-certfile",
            "ra.pem",
            "-CAfile",
            "ra.pem",
            "-out",
            "content.bin",
        ],
    );
    openssl(
        f.dir.path(),
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "next.der",
            "-print_certs",
            "-out",
            "next.pem",
        ],
    );
    let text = std::fs::read_to_string(path(&f, "next.pem")).expect("read");
    assert!(text.contains("device-1"), "{text}");
    assert!(
        !text.contains("Test SCEP RA"),
        "the RA certificate is not a next CA: {text}"
    );

    // Signed by someone else's key (the client's): refused.
    let msg = NextCaCert::new(std::slice::from_ref(&f.client_cert), 1_700_000_000).expect("build");
    let sig =
        client::rsa_sign(&f.client_key, msg.digest(), msg.signed_attributes_der()).expect("sign");
    let der = msg.finish(&sig, &f.ra_cert).expect("finish");
    std::fs::write(path(&f, "forged.der"), &der).expect("write");
    let out = Command::new("openssl")
        .current_dir(f.dir.path())
        .args([
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "forged.der",
            "-content",
            "empty",
            "-certfile",
            "ra.pem",
            "-CAfile",
            "ra.pem",
        ])
        .output()
        .expect("run openssl");
    assert!(
        !out.status.success(),
        "a forged GetNextCACert answer verified"
    );
}
