//! Requests captured from OpenSSL 3.0's `openssl cmp -reqout` (against its mock server) and
//! malformed variants of them.

use certgate_cmp::parse::CertReqKind;
use certgate_cmp::{Body, FailInfo, Limits, Protection, parse};
use der::{DecodePem, Encode};
use x509_cert::Certificate;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("test vector present")
}

fn now_of(req: &certgate_cmp::Request) -> u64 {
    req.message_time.expect("OpenSSL sends messageTime")
}

#[test]
fn ir_with_mac_parses_and_round_trips() {
    let raw = data("ir_mac.der");
    let req = parse(&raw, &Limits::default()).expect("parses");
    assert_eq!(req.pvno, 2);
    assert_eq!(req.transaction_id.len(), 16);
    assert_eq!(req.sender_nonce.len(), 16);
    assert!(!req.implicit_confirm);
    let p = req
        .check_header(now_of(&req), &Limits::default())
        .expect("header ok");
    assert_eq!(
        p,
        Protection::Mac {
            sender_kid: b"ref123".to_vec()
        }
    );
    // The ProtectedPart is exactly header ‖ body as received: the message is
    // SEQUENCE { ProtectedPart content, [0] protection, ... }.
    let pp = &req.protected_part_der;
    let inner_len = pp.len()
        - if pp[1] & 0x80 != 0 {
            2 + (pp[1] & 0x7f) as usize
        } else {
            2
        };
    let pp_content = &pp[pp.len() - inner_len..];
    assert!(raw.windows(pp_content.len()).any(|w| w == pp_content));
    let Body::CertReq(cr) = &req.body else {
        panic!("ir expected, got {:?}", req.body);
    };
    assert_eq!(cr.kind, CertReqKind::Ir);
    assert_eq!(cr.sans, vec![("dns", "x.example".to_owned())]);
    assert!(cr.subject_der.len() > 2);
}

#[test]
fn implicit_confirm_is_seen() {
    let req = parse(&data("ir_mac_implicit.der"), &Limits::default()).expect("parses");
    assert!(req.implicit_confirm);
}

#[test]
fn every_captured_type_decodes() {
    let cases = [
        ("p10cr_mac.der", "p10cr"),
        ("certconf_mac.der", "certConf"),
        ("rr_mac.der", "rr"),
        ("genm_cacerts.der", "genm"),
        ("genm_plain.der", "genm"),
        ("cr_sig.der", "cr"),
        ("kur_sig.der", "kur"),
    ];
    for (file, label) in cases {
        let req =
            parse(&data(file), &Limits::default()).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        assert_eq!(req.body.label(), label, "{file}");
        req.check_header(now_of(&req), &Limits::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let req = parse(&data("genm_cacerts.der"), &Limits::default()).expect("parses");
    assert_eq!(
        req.body,
        Body::Genm(vec![certgate_cmp::parse::ID_IT_CA_CERTS])
    );
    let req = parse(&data("certconf_mac.der"), &Limits::default()).expect("parses");
    let Body::CertConf(cc) = &req.body else {
        panic!("certConf")
    };
    assert_eq!(cc.len(), 1);
    assert_eq!(cc[0].cert_hash.len(), 32);
    assert!(req.recip_nonce.is_some());
}

#[test]
fn signature_protection_verifies_against_the_right_anchor_only() {
    let raw = data("cr_sig.der");
    let req = parse(&raw, &Limits::default()).expect("parses");
    let now = now_of(&req);
    assert_eq!(
        req.check_header(now, &Limits::default()),
        Ok(Protection::Signature)
    );
    let ca = Certificate::from_pem(data("ca.pem")).expect("ca");
    let cert = req
        .verify_signature(std::slice::from_ref(&ca), now)
        .expect("verifies");
    assert_eq!(cert.tbs_certificate.subject.to_string(), "CN=ee");
    // Another anchor: signerNotTrusted.
    // Another CA with the same name but another key: signerNotTrusted; no anchors either.
    let other = Certificate::from_pem(data("other_ca.pem")).expect("other ca");
    let err = req.verify_signature(&[other], now).expect_err("untrusted");
    assert_eq!(err.fail, FailInfo::SignerNotTrusted);
    let err = req.verify_signature(&[], now).expect_err("no anchors");
    assert_eq!(err.fail, FailInfo::SignerNotTrusted);
    // A flipped byte in the body: badMessageCheck.
    let mut tampered = raw.clone();
    let pos = raw.len() / 2;
    tampered[pos] ^= 0x01;
    if let Ok(t) = parse(&tampered, &Limits::default()) {
        let err = t.verify_signature(&[ca], now).expect_err("tampered");
        assert!(matches!(
            err.fail,
            FailInfo::BadMessageCheck | FailInfo::SignerNotTrusted
        ));
    }
}

#[test]
fn pop_is_checked() {
    let raw = data("ir_mac.der");
    // Flip the last byte of the POP signature, which sits right before the protection
    // ([0] BIT STRING): find the body's end by parsing, then corrupt inside the POP.
    let req = parse(&raw, &Limits::default()).expect("parses");
    let pp = &req.protected_part_der;
    let body_end = raw
        .windows(pp.len() - 4)
        .position(|w| w == &pp[4..])
        .map(|p| p + pp.len() - 4)
        .expect("pp inside message");
    let mut bad = raw.clone();
    bad[body_end - 1] ^= 0x55;
    match parse(&bad, &Limits::default()) {
        Err((e, _)) => assert!(
            matches!(e.fail, FailInfo::BadPop | FailInfo::BadDataFormat),
            "{e}"
        ),
        Ok(r) => panic!("corrupted POP accepted: {:?}", r.body.label()),
    }
}

#[test]
fn malformed_inputs_get_the_right_fail_info() {
    let limits = Limits::default();
    let raw = data("ir_mac.der");
    // Garbage.
    let (e, _) = parse(b"\x01\x02garbage", &limits).expect_err("garbage");
    assert_eq!(e.fail, FailInfo::BadDataFormat);
    // Truncated.
    let (e, _) = parse(&raw[..raw.len() - 10], &limits).expect_err("truncated");
    assert_eq!(e.fail, FailInfo::BadDataFormat);
    // Oversized.
    let small = Limits {
        max_message_bytes: 100,
        ..Limits::default()
    };
    let (e, _) = parse(&raw, &small).expect_err("oversized");
    assert_eq!(e.fail, FailInfo::BadRequest);
    // Wrong pvno (1): header starts 30 len 02 01 02 after the outer SEQUENCE header.
    let mut v1 = raw.clone();
    let pos = v1
        .windows(3)
        .position(|w| w == [0x02, 0x01, 0x02])
        .expect("pvno");
    v1[pos + 2] = 1;
    let (e, salvage) = parse(&v1, &limits).expect_err("pvno 1");
    assert_eq!(e.fail, FailInfo::UnsupportedVersion);
    assert_eq!(salvage.transaction_id.map(|t| t.len()), Some(16));
    // pvno 3 is accepted (cmp2021) and kept.
    let mut v3 = raw.clone();
    v3[pos + 2] = 3;
    let r3 = parse(&v3, &limits).expect("pvno 3");
    assert_eq!(r3.pvno, 3);
    // Stale messageTime.
    let req = parse(&raw, &limits).expect("parses");
    let e = req
        .check_header(now_of(&req) + 3600, &limits)
        .expect_err("stale");
    assert_eq!(e.fail, FailInfo::BadTime);
    // Missing senderNonce.
    let mut no_nonce = req.clone();
    no_nonce.sender_nonce.clear();
    let e = no_nonce
        .check_header(now_of(&req), &limits)
        .expect_err("nonce");
    assert_eq!(e.fail, FailInfo::BadSenderNonce);
    // Unprotected.
    let mut unprot = req.clone();
    unprot.protection = None;
    let e = unprot
        .check_header(now_of(&req), &limits)
        .expect_err("unprotected");
    assert_eq!(e.fail, FailInfo::BadMessageCheck);
    // Every prefix of every vector: never a panic, always an error.
    for file in ["ir_mac.der", "cr_sig.der", "rr_mac.der", "certconf_mac.der"] {
        let raw = data(file);
        for n in 0..raw.len() {
            assert!(parse(&raw[..n], &limits).is_err(), "{file} prefix {n}");
        }
    }
}

#[test]
fn responses_decode_with_the_cmpv2_types() {
    use certgate_cmp::respond::*;
    use der::Decode;
    let req = parse(&data("ir_mac.der"), &Limits::default()).expect("parses");
    let ee = Certificate::from_pem(data("ee.pem")).expect("ee");
    let ee_der = ee.to_der().expect("der");
    let alg = req.protection_alg_der.clone().expect("alg");
    let fresh = mac_alg_with_salt(&alg, &[9u8; 16]).expect("PBM salt replaced");
    assert_ne!(fresh, alg);
    assert_eq!(fresh.len(), alg.len());
    let header = Header {
        pvno: 2,
        sender: req.recipient.clone(),
        recipient: req.sender.clone(),
        message_time_unix: now_of(&req),
        protection_alg_der: Some(fresh),
        sender_kid: req.sender_kid.clone(),
        transaction_id: req.transaction_id.clone(),
        sender_nonce: vec![1; 16],
        recip_nonce: Some(req.sender_nonce.clone()),
        implicit_confirm: true,
    }
    .to_der()
    .expect("header");
    for body in [
        cert_rep(CertRepKind::Ip, &ee_der, std::slice::from_ref(&ee_der)),
        rev_rep(Status::Accepted, None, None),
        pki_conf(),
        genp(&[(
            certgate_cmp::parse::ID_IT_CA_CERTS,
            Some(ca_certs_value(std::slice::from_ref(&ee_der))),
        )])
        .expect("genp"),
        error_body(&certgate_cmp::CmpError::new(FailInfo::BadTime, "late")),
    ] {
        let msg = assemble(
            &header,
            &body,
            Some(&[7u8; 32]),
            std::slice::from_ref(&ee_der),
        );
        let decoded = cmpv2::message::PkiMessage::from_der(&msg).expect("cmpv2 decodes ours");
        assert_eq!(decoded.to_der().expect("re-encodes"), msg, "DER round trip");
        let ours = parse(&msg, &Limits::default()).expect("our parser too");
        assert_eq!(ours.transaction_id, req.transaction_id);
        assert!(ours.implicit_confirm);
    }
}
