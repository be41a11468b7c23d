//! The checked-in OpenSSL requests (tests/vectors/README.md) decode, and their CertIDs resolve
//! against the issuer index built from the checked-in issuer certificate.

// Test helpers unwrap: a failing unwrap is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use certgate_ocsp::{CacheKey, HashAlg, IssuerIndex, Limits, decode_der};
use der::{DecodePem, Encode};
use x509_cert::Certificate;

fn vector(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn cert(name: &str) -> Certificate {
    Certificate::from_pem(vector(name)).unwrap()
}

fn index() -> IssuerIndex {
    let mut idx = IssuerIndex::new();
    idx.insert("default", "vector-ca", &cert("ca.pem").to_der().unwrap())
        .unwrap();
    idx
}

fn single(name: &str) -> (HashAlg, Vec<u8>) {
    let req = decode_der(&vector(name), &Limits::default()).unwrap();
    match index().key_for("default", &req.cert_ids).unwrap() {
        CacheKey::Ocsp { cert, .. } => {
            assert_eq!(&*cert.issuer, "vector-ca");
            (cert.alg, cert.serial.as_bytes().to_vec())
        }
        other => panic!("{other:?}"),
    }
}

fn serial(name: &str) -> Vec<u8> {
    let c = cert(name);
    let b = c.tbs_certificate.serial_number.as_bytes();
    b[b.iter().position(|&x| x != 0).unwrap()..].to_vec()
}

#[test]
fn sha1_vector_resolves_to_the_leaf_serial() {
    assert_eq!(single("req-sha1.der"), (HashAlg::Sha1, serial("a.pem")));
    assert_eq!(serial("a.pem")[0], 0x80);
}

#[test]
fn sha256_vector_resolves_to_the_leaf_serial() {
    assert_eq!(single("req-sha256.der"), (HashAlg::Sha256, serial("a.pem")));
}

#[test]
fn nonce_vector_carries_a_16_octet_nonce() {
    let req = decode_der(&vector("req-nonce.der"), &Limits::default()).unwrap();
    assert_eq!(req.nonce.map(|n| n.len()), Some(16));
    assert_eq!(single("req-nonce.der"), (HashAlg::Sha1, serial("a.pem")));
}

#[test]
fn two_cert_vector_is_a_set_of_both_leaves() {
    let req = decode_der(&vector("req-two.der"), &Limits::default()).unwrap();
    let CacheKey::OcspSet { certs, .. } = index().key_for("default", &req.cert_ids).unwrap() else {
        panic!("two CertIDs")
    };
    let mut got: Vec<Vec<u8>> = certs.iter().map(|c| c.serial.as_bytes().to_vec()).collect();
    got.sort();
    let mut want = vec![serial("a.pem"), serial("b.pem")];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn signed_vector_is_accepted_and_marked_signed() {
    let req = decode_der(&vector("req-signed.der"), &Limits::default()).unwrap();
    assert!(req.signed);
    assert_eq!(single("req-signed.der"), (HashAlg::Sha1, serial("a.pem")));
    let refuse = Limits {
        refuse_signed: true,
        ..Limits::default()
    };
    assert_eq!(
        decode_der(&vector("req-signed.der"), &refuse),
        Err(certgate_ocsp::Error::SignedRequestRefused)
    );
}

#[test]
fn vectors_are_unknown_to_another_tenant() {
    let req = decode_der(&vector("req-sha1.der"), &Limits::default()).unwrap();
    assert_eq!(
        index().key_for("tenant-b", &req.cert_ids),
        Err(certgate_ocsp::Error::UnknownIssuer)
    );
}

#[test]
fn fuzz_seeds_are_the_vectors() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ocsp_request");
    for name in [
        "req-sha1.der",
        "req-sha256.der",
        "req-nonce.der",
        "req-two.der",
        "req-signed.der",
    ] {
        assert_eq!(
            std::fs::read(corpus.join(name)).unwrap(),
            vector(name),
            "fuzz/corpus/ocsp_request/{name} differs from tests/vectors/{name}"
        );
    }
    // The GET seeds decode to the same requests as their DER vectors.
    let get = |f: &str| std::fs::read_to_string(corpus.join(f)).unwrap();
    assert_eq!(
        certgate_ocsp::decode_get(get("get-sha1-percent.txt").trim(), &Limits::default()),
        decode_der(&vector("req-sha1.der"), &Limits::default())
    );
    assert_eq!(
        certgate_ocsp::decode_get(get("get-two-base64url.txt").trim(), &Limits::default()),
        decode_der(&vector("req-two.der"), &Limits::default())
    );
}
