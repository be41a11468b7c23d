//! EST/SCEP protocol gaps end to end against `certgate up` (real signer, core and edge processes
//! on loopback):
//!
//! - SCEP (RFC 8894 §3.3.2.2): a PKIOperation that cannot be verified but names a transactionID
//!   and senderNonce is answered with a CertRep FAILURE signed by the RA (badMessageCheck for a
//!   broken signature or a message encrypted to someone else, badAlg for an unsupported digest,
//!   badRequest for an unknown messageType); only bytes without those fields get HTTP 400.
//! - SCEP §3.5.2: GetNextCACert is not offered in GetCACaps and answers 404 with a reason (the
//!   core stages no CA rollover).
//!
//! Every reply is read with `certgate_scep::client::read_reply`, which verifies the RA signature
//! with the RA certificate inside the reply; the RA certificate is compared with GetCACert's.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::scep::{client, dev_challenge, openssl, s};
use certgate_e2e::{ChildGuard, Fleet, bin};
use certgate_scep::client::{Request, build_request, read_reply};
use certgate_scep::{FailInfo, PkiStatus};

fn start_up(fleet: &Fleet) -> ChildGuard {
    for b in ["certgate-signer", "certgate-core", "certgate-edge"] {
        bin(b);
    }
    let mut cmd = Command::new(bin("certgate"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(fleet.data_dir())
        .args(fleet.port_args());
    let up = ChildGuard::spawn("certgate up", cmd, &fleet.scratch().join("up.log"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !up.log().contains("Press Ctrl-C to stop.") {
        assert!(
            Instant::now() < deadline,
            "certgate up did not start:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    up
}

/// curl: (HTTP status, content type, body). `post` = body file for a PKIOperation POST.
fn curl(url: &str, post: Option<&Path>, out: &Path) -> (u16, String, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", &s(out), "-w", "%{http_code} %{content_type}"]);
    if let Some(p) = post {
        cmd.args([
            "-H",
            "Content-Type: application/x-pki-message",
            "--data-binary",
        ])
        .arg(format!("@{}", s(p)));
    }
    let o = cmd.arg(url).output().expect("curl runs");
    let w = String::from_utf8_lossy(&o.stdout).into_owned();
    let (code, ctype) = w.split_once(' ').unwrap_or((&w, ""));
    (
        code.trim().parse().expect("http code"),
        ctype.to_owned(),
        std::fs::read(out).unwrap_or_default(),
    )
}

/// The RA certificate (DER) from GetCACert: the one whose subject names the SCEP RA.
fn ra_cert(fleet: &Fleet, url: &str) -> Vec<u8> {
    let out = fleet.scratch().join("cacert.p7");
    let (code, ctype, _) = curl(&format!("{url}?operation=GetCACert"), None, &out);
    assert_eq!(code, 200, "GetCACert");
    assert_eq!(ctype, "application/x-x509-ca-ra-cert");
    let pem = String::from_utf8(openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-print_certs",
        "-in",
        &s(&out),
    ]))
    .expect("PEM text");
    let blocks: Vec<String> = pem
        .split("-----END CERTIFICATE-----")
        .filter_map(|b| {
            let start = b.find("-----BEGIN CERTIFICATE-----")?;
            Some(format!("{}-----END CERTIFICATE-----\n", &b[start..]))
        })
        .collect();
    let ra = blocks
        .iter()
        .find(|b| {
            let p = fleet.scratch().join("one.pem");
            std::fs::write(&p, b).expect("write pem");
            String::from_utf8_lossy(&openssl(&["x509", "-noout", "-subject", "-in", &s(&p)]))
                .contains("SCEP RA")
        })
        .expect("an RA certificate in GetCACert");
    let p = fleet.scratch().join("ra.pem");
    std::fs::write(&p, ra).expect("write ra");
    openssl(&["x509", "-outform", "DER", "-in", &s(&p)])
}

/// Replaces every occurrence of `from` with `to` (same length) in `der`.
fn patch(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = der.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "pattern not in message");
    out
}

#[test]
fn scep_unverifiable_messages_get_cert_rep_failures_and_get_next_ca_cert_is_refused() {
    let fleet = Fleet::init();
    let up = start_up(&fleet);
    let challenge = dev_challenge(&fleet);
    let url = format!("http://{}/scep", fleet.http);
    let ra = ra_cert(&fleet, &url);
    let c = client(
        &fleet.scratch(),
        "/CN=scep-gaps-client",
        "gaps.scep.example",
        &challenge,
    );
    let build = |mt: &'static str, tid: &str, recipient: &[u8]| {
        build_request(&Request {
            message_type: mt,
            transaction_id: tid,
            sender_nonce: [7u8; 16],
            content_der: &c.csr_der,
            signer_cert_der: &c.cert_der,
            signer_key_pkcs8: &c.key_pkcs8,
            ra_cert_der: recipient,
        })
        .expect("build request")
    };
    let counter = std::cell::Cell::new(0);
    let post = |msg: &[u8]| {
        counter.set(counter.get() + 1);
        let n = counter.get();
        let req = fleet.scratch().join(format!("m{n}.req"));
        std::fs::write(&req, msg).expect("write request");
        curl(
            &format!("{url}?operation=PKIOperation"),
            Some(&req),
            &fleet.scratch().join(format!("m{n}.rep")),
        )
    };
    let expect_failure = |what: &str, msg: &[u8], tid: &str, fail: FailInfo| {
        let (code, ctype, body) = post(msg);
        assert_eq!(code, 200, "{what}: HTTP {code}\n{}", up.log());
        assert_eq!(ctype, "application/x-pki-message", "{what}");
        let reply = read_reply(&body, &c.key_pkcs8)
            .unwrap_or_else(|e| panic!("{what}: CertRep does not verify: {e}"));
        assert_eq!(reply.status, PkiStatus::Failure, "{what}");
        assert_eq!(reply.fail_info, Some(fail), "{what}");
        assert_eq!(reply.transaction_id, tid, "{what}: transactionID echoed");
        assert_eq!(reply.recipient_nonce, vec![7u8; 16], "{what}: nonce echoed");
        assert!(reply.certs.is_empty(), "{what}: nothing issued");
        assert_eq!(reply.ra_cert_der, ra, "{what}: signed by the tenant's RA");
    };

    // Signature broken (last bytes of the message are the signature value).
    let mut bad_sig = build("19", "gaps-sig", &ra);
    let len = bad_sig.len();
    bad_sig[len - 3] ^= 0x5a;
    expect_failure(
        "tampered signature",
        &bad_sig,
        "gaps-sig",
        FailInfo::BadMessageCheck,
    );

    // Encrypted content altered after signing: messageDigest no longer matches.
    let good = build("19", "gaps-digest", &ra);
    let mid = good.len() / 2;
    let mut bad_digest = good.clone();
    bad_digest[mid] ^= 0x01;
    let (code, _, body) = post(&bad_digest);
    // Flipping a byte in the middle may hit the DER structure (then 400 or a FAILURE) or the
    // content (FAILURE badMessageCheck); it is never a SUCCESS.
    if code == 200 {
        let reply = read_reply(&body, &c.key_pkcs8).expect("CertRep verifies");
        assert_eq!(reply.status, PkiStatus::Failure, "altered content");
    } else {
        assert_eq!(code, 400, "altered content");
    }

    // SHA-224 as the digest algorithm (same OID length as SHA-256, so the DER stays valid):
    // badAlg, answered with SHA-256.
    let sha256 = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    ];
    let sha224 = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
    ];
    let bad_alg = patch(&build("19", "gaps-alg", &ra), &sha256, &sha224);
    expect_failure("SHA-224 digest", &bad_alg, "gaps-alg", FailInfo::BadAlg);

    // An unknown messageType, properly signed.
    expect_failure(
        "messageType 99",
        &build("99", "gaps-type", &ra),
        "gaps-type",
        FailInfo::BadRequest,
    );

    // Encrypted to another certificate (the client's own), not the RA.
    expect_failure(
        "wrong recipient",
        &build("19", "gaps-recipient", &c.cert_der),
        "gaps-recipient",
        FailInfo::BadMessageCheck,
    );

    // Nothing to address a CertRep to: HTTP 400.
    for (what, msg) in [
        ("garbage", b"not a SCEP message".to_vec()),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("empty", Vec::new()),
    ] {
        let (code, _, _) = post(&msg);
        assert_eq!(code, 400, "{what}");
    }

    // The same request unaltered still enrolls (the failures above changed no state).
    let (code, _, body) = post(&build("19", "gaps-ok", &ra));
    assert_eq!(code, 200);
    let reply = read_reply(&body, &c.key_pkcs8).expect("SUCCESS reply");
    assert_eq!(
        reply.status,
        PkiStatus::Success,
        "{:?}\n{}",
        reply.fail_info,
        up.log()
    );
    // The issued certificate (with its chain; a CMS SET OF has no order) names the CSR's subject.
    assert!(!reply.certs.is_empty(), "SUCCESS without certificates");
    let subjects: Vec<String> = reply
        .certs
        .iter()
        .map(|der| {
            let f = fleet.scratch().join("issued.der");
            std::fs::write(&f, der).expect("write cert");
            String::from_utf8_lossy(&openssl(&[
                "x509",
                "-inform",
                "DER",
                "-noout",
                "-subject",
                "-in",
                &s(&f),
            ]))
            .into_owned()
        })
        .collect();
    assert!(
        subjects.iter().any(|x| x.contains("gaps.scep.example")),
        "{subjects:?}"
    );

    // GetNextCACert: not offered, and refused with a reason.
    let (code, _, caps) = curl(
        &format!("{url}?operation=GetCACaps"),
        None,
        &fleet.scratch().join("caps"),
    );
    assert_eq!(code, 200);
    assert!(
        !String::from_utf8_lossy(&caps).contains("GetNextCACert"),
        "GetCACaps must not offer GetNextCACert"
    );
    let (code, ctype, body) = curl(
        &format!("{url}?operation=GetNextCACert"),
        None,
        &fleet.scratch().join("next"),
    );
    assert_eq!(code, 404);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    assert!(
        String::from_utf8_lossy(&body).contains("no CA rollover"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
