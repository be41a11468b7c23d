//! SCEP signingTime (RFC 8894 §3.2.1.4.5 badTime) and BER (indefinite-length) CMS end to end
//! against `certgate up` (real signer, core and edge processes on loopback):
//!
//! - a PKCSReq whose signingTime is an hour stale or an hour ahead gets a CertRep FAILURE
//!   badTime signed by the RA, nothing is issued, and the edge counts it
//!   (`certgate_scep_messages_total{outcome="badTime"}`);
//! - a PKCSReq as a streaming client sends it — the pkcsPKIEnvelope from `openssl cms -encrypt
//!   -stream` (BER) inside a SignedData with indefinite lengths and a chunked eContent, with a
//!   current signingTime — is issued, and the certificate passes `openssl verify`;
//! - malformed BER (no end-of-contents) is HTTP 400.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use certgate_e2e::scep::{Client, client, dev_challenge, openssl, post, s};
use certgate_e2e::{Fleet, http_get, start_up};
use certgate_scep::client::{self, Request, RequestOptions, read_reply};
use certgate_scep::{FailInfo, PkiStatus};

/// The RA certificate (DER): the GetCACert certificate whose subject names the SCEP RA.
fn ra_cert(url: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("cacert.p7");
    let st = Command::new("curl")
        .args(["-s", "-f", "-o", &s(&out)])
        .arg(format!("{url}?operation=GetCACert"))
        .status()
        .expect("curl runs");
    assert!(st.success(), "GetCACert");
    let pem = String::from_utf8(openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-print_certs",
        "-in",
        &s(&out),
    ]))
    .expect("PEM text");
    for block in pem.split("-----END CERTIFICATE-----") {
        let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
            continue;
        };
        let p = dir.join("one.pem");
        std::fs::write(
            &p,
            format!("{}-----END CERTIFICATE-----\n", &block[start..]),
        )
        .expect("write pem");
        let subject = openssl(&["x509", "-noout", "-subject", "-in", &s(&p)]);
        if String::from_utf8_lossy(&subject).contains("SCEP RA") {
            std::fs::copy(&p, dir.join("ra.pem")).expect("copy ra.pem");
            return openssl(&["x509", "-outform", "DER", "-in", &s(&p)]);
        }
    }
    panic!("no RA certificate in GetCACert");
}

/// The edge's `certgate_scep_messages_total` samples with `outcome`, summed.
fn scep_messages(fleet: &Fleet, outcome: &str) -> u64 {
    let (status, body) = http_get(fleet.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("certgate_scep_messages_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn stale_and_future_signing_time_are_bad_time_and_streamed_ber_enrolls() {
    let fleet = Fleet::init();
    let up = start_up(&fleet);
    let challenge = dev_challenge(&fleet);
    let url = format!("http://{}/scep", fleet.http);
    let dir = fleet.scratch();
    let ra = ra_cert(&url, &dir);

    // Client key, self-signed certificate, CSR with the challenge.
    let Client {
        key_pkcs8,
        cert_der,
        csr_der,
    } = client(&dir, "/CN=scep-ber-client", "ber.scep.example", &challenge);
    let build = |tid: &str, o: &RequestOptions| {
        client::build_request_with(
            &Request {
                message_type: "19",
                transaction_id: tid,
                sender_nonce: [5u8; 16],
                content_der: &csr_der,
                signer_cert_der: &cert_der,
                signer_key_pkcs8: &key_pkcs8,
                ra_cert_der: &ra,
            },
            o,
        )
        .expect("build request")
    };
    let issued_before = fleet.issued_by("scep");
    let bad_time_before = scep_messages(&fleet, "badTime");

    // Stale and future signingTime: CertRep FAILURE badTime, signed by the RA, nothing issued.
    let now = SystemTime::now();
    for (tid, t) in [
        ("time-stale", now - Duration::from_secs(3600)),
        ("time-future", now + Duration::from_secs(3600)),
    ] {
        let msg = build(
            tid,
            &RequestOptions {
                signing_time: Some(t),
                ..RequestOptions::default()
            },
        );
        let (code, body) = post(&url, &msg, &dir, tid);
        assert_eq!(code, 200, "{tid}: HTTP {code}\n{}", up.log());
        let reply = read_reply(&body, &key_pkcs8).expect("CertRep verifies");
        assert_eq!(reply.status, PkiStatus::Failure, "{tid}");
        assert_eq!(reply.fail_info, Some(FailInfo::BadTime), "{tid}");
        assert_eq!(reply.transaction_id, tid);
        assert_eq!(reply.recipient_nonce, vec![5u8; 16]);
        assert!(reply.certs.is_empty(), "{tid}: nothing issued");
        assert_eq!(reply.ra_cert_der, ra, "{tid}: signed by the tenant's RA");
    }
    assert_eq!(
        fleet.issued_by("scep"),
        issued_before,
        "badTime issues nothing"
    );
    assert_eq!(
        scep_messages(&fleet, "badTime"),
        bad_time_before + 2,
        "each badTime counted"
    );

    // Malformed BER: the end-of-contents octets cut off → nothing to address → 400.
    let streamed = client::to_streaming_ber(&build("ber-cut", &RequestOptions::default()), 512)
        .expect("streaming BER");
    let (code, _) = post(&url, &streamed[..streamed.len() - 4], &dir, "ber-cut");
    assert_eq!(code, 400, "truncated BER");

    // A streaming client: OpenSSL-made BER envelope, BER outer SignedData, current signingTime.
    let env = dir.join("env.ber");
    openssl(&[
        "cms",
        "-encrypt",
        "-stream",
        "-binary",
        "-aes-128-cbc",
        "-in",
        &s(&dir.join("client.csr")),
        "-outform",
        "DER",
        "-out",
        &s(&env),
        &s(&dir.join("ra.pem")),
    ]);
    let env_ber = std::fs::read(&env).expect("envelope");
    assert!(
        env_ber.windows(2).any(|w| w == [0x30, 0x80]),
        "OpenSSL streamed BER"
    );
    let der_msg = build(
        "ber-ok",
        &RequestOptions {
            signing_time: Some(SystemTime::now() - Duration::from_secs(30)),
            envelope: Some(env_ber),
            ..RequestOptions::default()
        },
    );
    let ber_msg = client::to_streaming_ber(&der_msg, 256).expect("streaming BER");
    let (code, body) = post(&url, &ber_msg, &dir, "ber-ok");
    assert_eq!(code, 200, "BER PKCSReq: HTTP {code}\n{}", up.log());
    let reply = read_reply(&body, &key_pkcs8).expect("CertRep verifies");
    assert_eq!(
        reply.status,
        PkiStatus::Success,
        "{:?}\n{}",
        reply.fail_info,
        up.log()
    );
    assert_eq!(fleet.issued_by("scep"), issued_before + 1, "one issuance");
    // The issued certificate (the one with the CSR's subject) verifies against the root.
    let mut verified = false;
    for der in &reply.certs {
        let f = dir.join("issued.der");
        std::fs::write(&f, der).expect("write cert");
        let pem = openssl(&["x509", "-inform", "DER", "-in", &s(&f)]);
        let subject = openssl(&[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-subject",
            "-in",
            &s(&f),
        ]);
        if !String::from_utf8_lossy(&subject).contains("ber.scep.example") {
            continue;
        }
        std::fs::write(dir.join("issued.pem"), pem).expect("write pem");
        openssl(&[
            "verify",
            "-CAfile",
            &s(&fleet.root_pem()),
            "-untrusted",
            &s(&fleet.chain_pem()),
            &s(&dir.join("issued.pem")),
        ]);
        verified = true;
    }
    assert!(
        verified,
        "no certificate for ber.scep.example in the SUCCESS"
    );
}
