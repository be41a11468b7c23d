//! BER (indefinite-length, chunked) CMS from streaming encoders, and the signingTime window
//! (RFC 8894 §3.2.1.4.5 badTime), against keys, certificates, CSRs and CMS made by OpenSSL.

mod common;

use certgate_scep::client::{self, Request, RequestOptions};
use certgate_scep::{
    DEFAULT_SIGNING_TIME_SKEW, FailInfo, RequestContent, ber, parse_pki_message,
    parse_pki_message_at,
};
use common::{openssl, read};
use std::path::Path;
use std::time::{Duration, SystemTime};

struct Fixture {
    dir: tempfile::TempDir,
    ra_cert: Vec<u8>,
    ra_key: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    csr: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for (name, cn) in [("ra", "/CN=Test SCEP RA"), ("client", "/CN=device-ber")] {
        common::self_signed(d, name, cn);
    }
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "client.key",
            "-subj",
            "/CN=device-ber",
            "-outform",
            "DER",
            "-out",
            "csr.der",
        ],
    );
    Fixture {
        ra_cert: read(d, "ra.der"),
        ra_key: read(d, "ra.p8"),
        client_cert: read(d, "client.der"),
        client_key: read(d, "client.p8"),
        csr: read(d, "csr.der"),
        dir,
    }
}

fn request(f: &Fixture, o: &RequestOptions) -> Vec<u8> {
    client::build_request_with(
        &Request {
            message_type: "19",
            transaction_id: "tx-ber-time",
            sender_nonce: [9u8; 16],
            content_der: &f.csr,
            signer_cert_der: &f.client_cert,
            signer_key_pkcs8: &f.client_key,
            ra_cert_der: &f.ra_cert,
        },
        o,
    )
    .expect("build request")
}

/// The CSR inside a parsed request, decrypted with the RA key as the signer would.
fn decrypted_csr(f: &Fixture, msg: &certgate_scep::PkiMessage) -> Vec<u8> {
    let kt = msg.key_transport(&f.ra_cert).expect("addressed to the RA");
    let cek = client::rsa_decrypt_key(&f.ra_key, &kt.encrypted_key).expect("unwrap CEK");
    match msg.decrypt_content(&cek).expect("decrypts") {
        RequestContent::CertRequest { csr_der, .. } => csr_der,
        other => panic!("unexpected content {other:?}"),
    }
}

/// OpenSSL's own DER re-encoding (`cms -cmsout -outform DER`) of what it streamed as BER is
/// the oracle for the normaliser.
#[test]
fn openssl_streaming_cms_normalises_to_openssls_own_der() {
    let f = fixture();
    let d = f.dir.path();
    std::fs::write(d.join("data.bin"), vec![0x5au8; 5000]).expect("write data");
    openssl(
        d,
        &[
            "cms",
            "-sign",
            "-stream",
            "-binary",
            "-nodetach",
            "-in",
            "data.bin",
            "-signer",
            "client.pem",
            "-inkey",
            "client.key",
            "-outform",
            "DER",
            "-out",
            "signed.ber",
        ],
    );
    openssl(
        d,
        &[
            "cms",
            "-encrypt",
            "-stream",
            "-binary",
            "-aes-128-cbc",
            "-in",
            "data.bin",
            "-outform",
            "DER",
            "-out",
            "enveloped.ber",
            "ra.pem",
        ],
    );
    for (name, enveloped) in [("signed", false), ("enveloped", true)] {
        let ber_in = format!("{name}.ber");
        let der_out = format!("{name}.der");
        openssl(
            d,
            &[
                "cms", "-cmsout", "-inform", "DER", "-in", &ber_in, "-outform", "DER", "-out",
                &der_out,
            ],
        );
        let ber_bytes = read(d, &ber_in);
        let want = read(d, &der_out);
        assert_ne!(ber_bytes, want, "{name}: OpenSSL streamed BER, not DER");
        assert!(
            ber_bytes.windows(2).any(|w| w == [0x30, 0x80]),
            "{name}: indefinite"
        );
        let got = if enveloped {
            ber::normalise_enveloped(&ber_bytes)
        } else {
            ber::normalise(&ber_bytes)
        }
        .expect("normalises");
        assert_eq!(&*got, &want[..], "{name}: normalised = OpenSSL's DER");
        // DER stays as it is, borrowed.
        assert!(matches!(
            ber::normalise(&want),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
    }
}

/// A PKCSReq as a streaming client sends it: the pkcsPKIEnvelope from `openssl cms -encrypt
/// -stream` (BER, chunked encryptedContent) inside a SignedData streamed with indefinite
/// lengths and a chunked eContent. OpenSSL verifies it; the gateway parses, verifies and
/// decrypts it to the CSR.
#[test]
fn ber_pkcsreq_from_a_streaming_client_parses_and_decrypts() {
    let f = fixture();
    let d = f.dir.path();
    openssl(
        d,
        &[
            "cms",
            "-encrypt",
            "-stream",
            "-binary",
            "-aes-256-cbc",
            "-in",
            "csr.der",
            "-outform",
            "DER",
            "-out",
            "env.ber",
            "ra.pem",
        ],
    );
    let env_ber = read(d, "env.ber");
    assert!(
        env_ber.windows(2).any(|w| w == [0x30, 0x80]),
        "OpenSSL streamed BER"
    );
    let der_req = request(
        &f,
        &RequestOptions {
            envelope: Some(env_ber.clone()),
            ..RequestOptions::default()
        },
    );
    let ber_req = client::to_streaming_ber(&der_req, 100).expect("streaming BER");
    assert_ne!(ber_req, der_req);
    std::fs::write(d.join("req.ber"), &ber_req).expect("write");
    // Oracle: OpenSSL reads our BER and checks the signature and messageDigest.
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-noverify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "req.ber",
            "-out",
            "content.out",
        ],
    );
    assert_eq!(
        read(d, "content.out"),
        env_ber,
        "eContent is the BER envelope"
    );

    if let Some(dir) = std::env::var_os("SCEP_WRITE_SEEDS") {
        // Fuzz seed: a streamed BER PKCSReq with an OpenSSL-streamed envelope.
        std::fs::write(Path::new(&dir).join("pkcsreq_ber.der"), &ber_req).expect("seed");
    }
    for (what, bytes) in [("DER outer", &der_req), ("BER outer", &ber_req)] {
        let msg = parse_pki_message(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(msg.transaction_id, "tx-ber-time");
        assert_eq!(decrypted_csr(&f, &msg), f.csr, "{what}");
    }
}

#[test]
fn malformed_ber_is_http_400_and_a_tampered_ber_message_is_bad_message_check() {
    let f = fixture();
    let ber_req = client::to_streaming_ber(&request(&f, &RequestOptions::default()), 64)
        .expect("streaming BER");
    // Missing the final end-of-contents octets: nothing can be read → no reply address (400).
    let e = parse_pki_message(&ber_req[..ber_req.len() - 2]).expect_err("truncated BER");
    assert_eq!(e.fail_info, FailInfo::BadRequest);
    assert!(e.reply_to.is_none());
    // Indefinite length on a primitive, and absurd nesting.
    let mut prim = ber_req.clone();
    prim[1] = 0x80;
    prim[0] = 0x04;
    assert!(
        parse_pki_message(&prim)
            .expect_err("primitive")
            .reply_to
            .is_none()
    );
    let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 1000)
        .flatten()
        .collect();
    assert!(
        parse_pki_message(&deep)
            .expect_err("deep")
            .reply_to
            .is_none()
    );
    // A byte of the (chunked) content flipped: the messageDigest no longer matches, and the
    // ids are readable → CertRep FAILURE badMessageCheck.
    let mut tampered = ber_req.clone();
    let at = ber_req
        .windows(2)
        .position(|w| w == [0x24, 0x80])
        .expect("chunked eContent")
        + 6;
    tampered[at] ^= 0x01;
    let e = parse_pki_message(&tampered).expect_err("tampered");
    assert_eq!(e.fail_info, FailInfo::BadMessageCheck, "{e}");
    let to = e.reply_to.expect("ids readable from BER");
    assert_eq!(to.transaction_id, "tx-ber-time");
}

#[test]
fn signing_time_outside_the_window_is_bad_time() {
    let f = fixture();
    let now = SystemTime::now();
    let skew = DEFAULT_SIGNING_TIME_SKEW;
    let at = |t: SystemTime, generalized: bool| {
        request(
            &f,
            &RequestOptions {
                signing_time: Some(t),
                signing_time_generalized: generalized,
                ..RequestOptions::default()
            },
        )
    };
    // Stale (an hour ago) and future (an hour ahead), in both encodings.
    for (what, t) in [
        ("stale", now - Duration::from_secs(3600)),
        ("future", now + Duration::from_secs(3600)),
    ] {
        for generalized in [false, true] {
            let req = at(t, generalized);
            // Without a clock the message is fine: the time is the only fault.
            parse_pki_message(&req).expect("valid apart from the time");
            let e = parse_pki_message_at(&req, now, skew).expect_err(what);
            assert_eq!(e.fail_info, FailInfo::BadTime, "{what} {generalized}: {e}");
            let to = e.reply_to.expect("a badTime FAILURE is addressed");
            assert_eq!(to.transaction_id, "tx-ber-time");
            assert_eq!(to.sender_nonce, vec![9u8; 16]);
        }
    }
    // Within the window (2 minutes slow, 2 minutes fast), either encoding, and streamed BER.
    for t in [
        now - Duration::from_secs(120),
        now + Duration::from_secs(120),
    ] {
        for generalized in [false, true] {
            let req = at(t, generalized);
            parse_pki_message_at(&req, now, skew).expect("within the window");
            let ber_req = client::to_streaming_ber(&req, 200).expect("BER");
            parse_pki_message_at(&ber_req, now, skew).expect("BER within the window");
        }
    }
    // The window is the configured one: 2 minutes off fails a 60 s window.
    let req = at(now - Duration::from_secs(120), false);
    let e = parse_pki_message_at(&req, now, Duration::from_secs(60)).expect_err("60 s window");
    assert_eq!(e.fail_info, FailInfo::BadTime);
    // No signingTime: accepted (RFC 8894 does not require it).
    let req = request(&f, &RequestOptions::default());
    let msg = parse_pki_message_at(&req, now, Duration::from_secs(1)).expect("no signingTime");
    assert_eq!(decrypted_csr(&f, &msg), f.csr);
    // A tampered stale message is badMessageCheck, not badTime: the signature is checked
    // before the time is believed.
    let mut req = at(now - Duration::from_secs(3600), false);
    let last = req.len() - 1;
    req[last] ^= 0x01; // inside the signature value
    let e = parse_pki_message_at(&req, now, skew).expect_err("tampered");
    assert_eq!(e.fail_info, FailInfo::BadMessageCheck, "{e}");
}
