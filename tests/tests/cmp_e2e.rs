//! CMP end to end: OpenSSL's real `openssl cmp` client against `certgate up` (real signer, core
//! and edge processes on loopback), with the dev MAC credentials from dev-credentials.toml.
//! Every certificate is checked with `openssl verify` against the dev root and chain.

use std::process::Command;
use std::time::Duration;

use certgate_e2e::cmp::{Cmp, issued};
use certgate_e2e::{Fleet, run, start_up};
use der::{Decode, Encode};

/// PasswordBasedMac (RFC 4210 §5.1.3.1), to re-protect a modified request.
fn pbm(alg_der: &[u8], secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let alg = spki::AlgorithmIdentifierOwned::from_der(alg_der).expect("alg");
    let params =
        crmf::pop::PbmParameter::from_der(&alg.parameters.expect("params").to_der().expect("der"))
            .expect("PBMParameter");
    assert_eq!(
        params.owf.oid.to_string(),
        "2.16.840.1.101.3.4.2.1",
        "OWF sha256"
    );
    let mut k = [secret, params.salt.as_bytes()].concat();
    for _ in 0..params.iteration_count {
        k = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k)
            .as_ref()
            .to_vec();
    }
    let alg = match params.mac.oid.to_string().as_str() {
        "1.3.6.1.5.5.8.1.2" => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "1.2.840.113549.2.9" => aws_lc_rs::hmac::HMAC_SHA256,
        other => panic!("unexpected MAC {other}"),
    };
    aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(alg, &k), msg)
        .as_ref()
        .to_vec()
}

fn post_cmp(addr: std::net::SocketAddr, body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "POST /.well-known/cmp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/pkixcmp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    raw[split + 4..].to_vec()
}

fn has_fail(resp: &[u8], fail: certgate_cmp::FailInfo) -> bool {
    let bits = fail.bit_string_der();
    resp.windows(bits.len()).any(|w| w == bits.as_slice())
}

#[test]
fn openssl_cmp_against_certgate_up() {
    let fleet = Fleet::uninitialised();
    let mut up = start_up(&fleet);
    let c = Cmp::dev(&fleet, 20);

    // ir with MAC, no implicitConfirm: ip, certConf → pkiConf.
    let k1 = c.key("k1.pem");
    let (ok, out) = c.run(&c.mac(&[
        "-cmd",
        "ir",
        "-newkey",
        &k1,
        "-subject",
        "/CN=cmp-ir",
        "-sans",
        "ir.example",
        "-certout",
        &c.p("ir.pem"),
        "-reqout",
        &c.p("ir.der"),
    ]));
    assert!(ok, "ir: {out}");
    assert!(
        out.contains("PKICONF") || out.contains("pkiConf") || out.contains("received PKICONF"),
        "certConf answered: {out}"
    );
    c.verify(&c.p("ir.pem"));
    let (ok, text, _) =
        run(Command::new("openssl").args(["x509", "-noout", "-text", "-in", &c.p("ir.pem")]));
    assert!(ok && text.contains("DNS:ir.example"), "{text}");

    // ir with implicitConfirm: no certConf.
    let k2 = c.key("k2.pem");
    let (ok, out) = c.run(&c.mac(&[
        "-cmd",
        "ir",
        "-newkey",
        &k2,
        "-subject",
        "/CN=cmp-implicit",
        "-implicit_confirm",
        "-certout",
        &c.p("implicit.pem"),
    ]));
    assert!(ok, "ir implicitConfirm: {out}");
    assert!(
        !out.contains("sending CERTCONF"),
        "implicitConfirm granted: {out}"
    );
    c.verify(&c.p("implicit.pem"));

    // p10cr with MAC.
    let k3 = c.key("k3.pem");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-new",
        "-key",
        &k3,
        "-subj",
        "/CN=cmp-p10",
        "-addext",
        "subjectAltName=DNS:p10.example",
        "-out",
        &c.p("p10.csr"),
    ]));
    assert!(ok, "csr: {err}");
    let (ok, out) = c.run(&c.mac(&[
        "-cmd",
        "p10cr",
        "-csr",
        &c.p("p10.csr"),
        "-certout",
        &c.p("p10.pem"),
    ]));
    assert!(ok, "p10cr: {out}");
    c.verify(&c.p("p10.pem"));

    // genm caCerts.
    let (ok, out) = c.run(&c.mac(&["-cmd", "genm", "-infotype", "caCerts"]));
    assert!(ok && out.contains("caCerts"), "genm caCerts: {out}");

    // Bad input: nothing issued.
    let before = issued(&fleet);
    let k4 = c.key("k4.pem");
    let (ok, out) = c.run(&[
        "-ref",
        &c.reference,
        "-secret",
        "pass:not-the-secret",
        "-cmd",
        "ir",
        "-newkey",
        &k4,
        "-subject",
        "/CN=bad",
        "-certout",
        &c.p("bad.pem"),
    ]);
    assert!(!ok, "wrong secret accepted: {out}");
    assert!(
        out.contains("badMessageCheck"),
        "wrong secret → badMessageCheck: {out}"
    );
    let (ok, out) = c.run(&[
        "-ref",
        "no-such-reference",
        "-secret",
        &c.secret,
        "-cmd",
        "ir",
        "-newkey",
        &k4,
        "-subject",
        "/CN=bad",
        "-certout",
        &c.p("bad.pem"),
    ]);
    assert!(!ok, "unknown sender accepted: {out}");
    assert!(
        out.contains("signerNotTrusted"),
        "unknown sender → signerNotTrusted: {out}"
    );
    // Replayed transactionID with a different request: the p10cr of earlier, re-protected
    // with the ir's transactionID.
    let ir = std::fs::read(c.path("ir.der")).expect("ir request");
    let ir = certgate_cmp::parse(&ir, &certgate_cmp::Limits::default()).expect("ir parses");
    let (ok, out) = c.run(&c.mac(&[
        "-cmd",
        "p10cr",
        "-csr",
        &c.p("p10.csr"),
        "-reqout",
        &c.p("p10.der"),
        "-certout",
        &c.p("p10b.pem"),
    ]));
    assert!(ok, "second p10cr: {out}");
    let p10 = std::fs::read(c.path("p10.der")).expect("p10 request");
    let p10req = certgate_cmp::parse(&p10, &certgate_cmp::Limits::default()).expect("p10 parses");
    let mut forged = p10.clone();
    let pos = forged
        .windows(p10req.transaction_id.len())
        .position(|w| w == p10req.transaction_id.as_slice())
        .expect("tid");
    forged[pos..pos + 16].copy_from_slice(&ir.transaction_id[..16]);
    let fr = certgate_cmp::parse(&forged, &certgate_cmp::Limits::default()).expect("forged parses");
    let secret = c.secret.trim_start_matches("pass:").as_bytes();
    let mac = pbm(
        fr.protection_alg_der.as_deref().expect("alg"),
        secret,
        &fr.protected_part_der,
    );
    let old = p10req.protection.clone().expect("protection");
    let mpos = forged
        .windows(old.len())
        .rposition(|w| w == old.as_slice())
        .expect("mac");
    forged[mpos..mpos + old.len()].copy_from_slice(&mac);
    // Fresh messageTime is not needed: the capture is seconds old.
    let resp = post_cmp(fleet.http, &forged);
    assert!(
        has_fail(&resp, certgate_cmp::FailInfo::TransactionIdInUse),
        "replayed transactionID → transactionIdInUse"
    );
    assert_eq!(
        issued(&fleet),
        before + 1,
        "only the second genuine p10cr issued"
    );

    // rr with MAC of the implicit-confirm certificate.
    let (ok, out) = c.run(&c.mac(&["-cmd", "rr", "-oldcert", &c.p("implicit.pem")]));
    assert!(ok, "rr: {out}");

    // A signature-protected cr by a certificate of no trusted CA: signerNotTrusted, nothing issued.
    let stranger_key = c.key("stranger.key");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-key",
        &stranger_key,
        "-subj",
        "/CN=stranger",
        "-days",
        "1",
        "-out",
        &c.p("stranger.pem"),
    ]));
    assert!(ok, "self-signed: {err}");
    let before = issued(&fleet);
    let (ok, out) = c.run(&[
        "-cert",
        &c.p("stranger.pem"),
        "-key",
        &stranger_key,
        // OpenSSL leaves a self-signed -cert out of extraCerts; name it explicitly.
        "-extracerts",
        &c.p("stranger.pem"),
        "-cmd",
        "cr",
        "-newkey",
        &k4,
        "-subject",
        "/CN=stranger-cr",
        "-certout",
        &c.p("bad.pem"),
    ]);
    assert!(!ok, "untrusted signer accepted: {out}");
    assert!(
        out.contains("signerNotTrusted"),
        "untrusted signer → signerNotTrusted: {out}"
    );
    assert_eq!(issued(&fleet), before, "nothing issued for the stranger");

    // certConf rejecting: the client cannot validate the new certificate (wrong -out_trusted),
    // answers certConf with rejection; the core revokes it (OCSP says revoked).
    let k7 = c.key("k7.pem");
    let (ok, out) = c.run(&c.mac(&[
        "-cmd",
        "ir",
        "-newkey",
        &k7,
        "-subject",
        "/CN=cmp-rejected",
        "-out_trusted",
        &c.p("stranger.pem"),
        "-certout",
        &c.p("rejected.pem"),
        "-rspout",
        // Both paths absolute: a bare second name would land in the test's working directory.
        &format!("{},{}", c.p("rejected-ip.der"), c.p("rejected-pkiconf.der")),
    ]));
    assert!(!ok, "client rejected the certificate: {out}");
    assert!(out.contains("sending CERTCONF"), "{out}");
    assert!(out.contains("received PKICONF"), "{out}");
    let ip = std::fs::read(c.path("rejected-ip.der")).expect("ip captured");
    let ip = certgate_cmp::parse(&ip, &certgate_cmp::Limits::default()).expect("ip parses");
    let serial = hex::encode(&ip.sender_nonce[16..]);
    let mut status = String::new();
    for _ in 0..50 {
        let (_, out, err) = run(Command::new("openssl").args([
            "ocsp",
            "-issuer",
            &fleet.chain_pem().to_string_lossy(),
            "-serial",
            &format!("0x{serial}"),
            "-url",
            &format!("http://{}/ocsp", fleet.http),
            "-CAfile",
            &fleet.root_pem().to_string_lossy(),
            "-verify_other",
            &fleet.chain_pem().to_string_lossy(),
        ]));
        status = format!("{out}{err}");
        if status.contains("revoked") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        status.contains(": revoked"),
        "a rejected certificate is revoked: {status}"
    );

    // cr and kur signature-protected by the ir certificate (RA-signed responses).
    let k5 = c.key("k5.pem");
    let (ok, out) = c.run(&[
        "-cert",
        &c.p("ir.pem"),
        "-key",
        &k1,
        "-extracerts",
        &fleet.chain_pem().to_string_lossy(),
        "-cmd",
        "cr",
        "-newkey",
        &k5,
        "-subject",
        "/CN=cmp-cr",
        "-certout",
        &c.p("cr.pem"),
    ]);
    assert!(ok, "cr: {out}");
    c.verify(&c.p("cr.pem"));
    let k6 = c.key("k6.pem");
    let (ok, out) = c.run(&[
        "-cert",
        &c.p("ir.pem"),
        "-key",
        &k1,
        "-extracerts",
        &fleet.chain_pem().to_string_lossy(),
        "-cmd",
        "kur",
        "-newkey",
        &k6,
        "-certout",
        &c.p("kur.pem"),
    ]);
    assert!(ok, "kur: {out}");
    c.verify(&c.p("kur.pem"));

    up.terminate(Duration::from_secs(20));
}
