#![allow(clippy::unwrap_used, missing_docs)]
//! The core's SCEP support (proto/scep.proto) driven over real Unix-socket gRPC against a real
//! core with the in-process fake signer (tests/common): the RA chain against `openssl verify`
//! and pkilint, DecryptKey against keys `openssl pkeyutl` encrypted to the RA certificate,
//! SignAttributes against `openssl dgst -verify` with the RA certificate's key, and the challenge
//! store (static, one-time, wrong, other tenant, other profile).

mod common;

use std::process::Command;

use certgate_core::store::Store;
use certgate_proto::ErrorKind;
use certgate_proto::scep::{
    CheckChallengeRequest, DecryptKeyRequest, GetRaChainRequest, PutChallengeRequest,
    SignAttributesRequest,
};
use common::{Fleet, err, fleet, pem};
use der::Decode;

const T: &str = "scep-t";
const OTHER: &str = "scep-other";

async fn setup() -> Fleet {
    let mut f = fleet(certgate_core::acme::AcmeConfig::default()).await;
    f.bootstrap(T).await;
    f
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

async fn ra_chain(f: &Fleet, tenant: &str) -> Vec<Vec<u8>> {
    f.scep
        .clone()
        .get_ra_chain(GetRaChainRequest {
            tenant: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .chain_der
}

/// Writes the chain as ra.pem / issuing.pem / root.pem in the fleet's dir.
fn write_chain(f: &Fleet, chain: &[Vec<u8>]) {
    for (name, der) in ["ra.pem", "issuing.pem", "root.pem"].iter().zip(chain) {
        std::fs::write(f.dir.join(name), pem("CERTIFICATE", der)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ra_chain_verifies_with_openssl_and_passes_pkilint() {
    let f = setup().await;
    let chain = ra_chain(&f, T).await;
    assert_eq!(chain.len(), 3, "RA, issuing CA, root");
    assert_eq!(chain[2], f.root_der(T));
    write_chain(&f, &chain);
    run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(f.dir.join("root.pem"))
        .arg("-untrusted")
        .arg(f.dir.join("issuing.pem"))
        .arg(f.dir.join("ra.pem")));
    let out = Command::new("lint_pkix_cert")
        .args(["lint", "-s", "ERROR", "--document-format", "PEM"])
        .arg(f.dir.join("ra.pem"))
        .output()
        .expect("pkilint (lint_pkix_cert) is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.lines().all(|l| l.trim().is_empty()),
        "pkilint findings:\n{text}"
    );
    let ra = x509_cert::Certificate::from_der(&chain[0]).unwrap();
    let ku = ra
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_KEY_USAGE)
        .map(|e| x509_cert::ext::pkix::KeyUsage::from_der(e.extn_value.as_bytes()).unwrap())
        .expect("keyUsage");
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert_eq!(
        ra.tbs_certificate
            .subject_public_key_info
            .algorithm
            .oid
            .to_string(),
        "1.2.840.113549.1.1.1",
        "the RA key is RSA"
    );
    // the RA certificate is a stored certificate of the tenant; a second call returns the same
    let serial = certgate_core::x509::serial_hex(ra.tbs_certificate.serial_number.as_bytes());
    assert!(f.store.get_cert(T, &serial).unwrap().is_some());
    assert_eq!(ra_chain(&f, T).await, chain);
    // a tenant that does not exist has no RA
    let e = err(f
        .scep
        .clone()
        .get_ra_chain(GetRaChainRequest {
            tenant: "nobody".into(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_key_unwraps_what_openssl_encrypted_to_the_ra_certificate() {
    let f = setup().await;
    let chain = ra_chain(&f, T).await;
    write_chain(&f, &chain);
    let cek = f.dir.join("cek.bin");
    let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(7) ^ 0x5a).collect();
    std::fs::write(&cek, &key).unwrap();
    // (openssl -pkeyopt, keyEncryptionAlgorithm DER)
    let cases: [(&[&str], &str); 3] = [
        (&[], "300d06092a864886f70d0101010500"),
        (&["rsa_padding_mode:oaep"], "300b06092a864886f70d010107"),
        (
            &[
                "rsa_padding_mode:oaep",
                "rsa_oaep_md:sha256",
                "rsa_mgf1_md:sha256",
            ],
            "303806092a864886f70d010107302ba00d300b0609608648016503040201a11a301806092a864886f70d010108300b0609608648016503040201",
        ),
    ];
    for (opts, alg_hex) in cases {
        let out = f.dir.join("cek.enc");
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-encrypt", "-certin", "-inkey"])
            .arg(f.dir.join("ra.pem"))
            .arg("-in")
            .arg(&cek)
            .arg("-out")
            .arg(&out);
        for o in opts {
            cmd.args(["-pkeyopt", o]);
        }
        run(&mut cmd);
        let encrypted = std::fs::read(&out).unwrap();
        let got = f
            .scep
            .clone()
            .decrypt_key(DecryptKeyRequest {
                tenant: T.into(),
                encrypted_key: encrypted.clone(),
                key_encryption_alg_der: hex::decode(alg_hex).unwrap(),
            })
            .await
            .unwrap_or_else(|e| panic!("{opts:?}: {e}"))
            .into_inner()
            .content_encryption_key;
        assert_eq!(got, key, "{opts:?}");
        // the same ciphertext under another tenant's RA does not decrypt
        if opts.is_empty() {
            f.admin
                .clone()
                .put_tenant(certgate_proto::admin::Tenant {
                    name: OTHER.into(),
                    public_base_url: "http://127.0.0.1:8080".into(),
                    default_profile: String::new(),
                    active_issuer_id: String::new(),
                })
                .await
                .unwrap();
            let e = err(f
                .scep
                .clone()
                .decrypt_key(DecryptKeyRequest {
                    tenant: OTHER.into(),
                    encrypted_key: encrypted,
                    key_encryption_alg_der: hex::decode(alg_hex).unwrap(),
                })
                .await
                .unwrap_err());
            // OTHER has no issuing CA, hence no RA at all
            assert_eq!(e.rule, "scep.no_issuer");
        }
    }
    // tampered ciphertext → scep.decrypt_failed (badMessageCheck)
    let mut bad = vec![0x42u8; 256];
    bad[0] = 0;
    let e = err(f
        .scep
        .clone()
        .decrypt_key(DecryptKeyRequest {
            tenant: T.into(),
            encrypted_key: bad,
            key_encryption_alg_der: hex::decode("300d06092a864886f70d0101010500").unwrap(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "scep.decrypt_failed");
    // an EC "key transport" algorithm → scep.unsupported_alg (badAlg)
    let e = err(f
        .scep
        .clone()
        .decrypt_key(DecryptKeyRequest {
            tenant: T.into(),
            encrypted_key: vec![1; 256],
            key_encryption_alg_der: hex::decode("301306072a8648ce3d020106082a8648ce3d030107")
                .unwrap(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "scep.unsupported_alg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_attributes_verifies_with_the_ra_certificate_key() {
    let f = setup().await;
    // SET OF { contentType id-data }
    let attrs = hex::decode("311a301806092a864886f70d010903310b06092a864886f70d010701").unwrap();
    for (digest, flag) in [
        ("sha256", "-sha256"),
        ("", "-sha256"),
        ("sha512", "-sha512"),
    ] {
        let r = f
            .scep
            .clone()
            .sign_attributes(SignAttributesRequest {
                tenant: T.into(),
                signed_attributes_der: attrs.clone(),
                digest: digest.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.ra_cert_der, ra_chain(&f, T).await[0]);
        std::fs::write(f.dir.join("ra.pem"), pem("CERTIFICATE", &r.ra_cert_der)).unwrap();
        let pubkey = run(Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(f.dir.join("ra.pem")));
        std::fs::write(f.dir.join("ra-pub.pem"), pubkey).unwrap();
        std::fs::write(f.dir.join("attrs.der"), &attrs).unwrap();
        std::fs::write(f.dir.join("attrs.sig"), &r.signature).unwrap();
        run(Command::new("openssl")
            .args(["dgst", flag, "-verify"])
            .arg(f.dir.join("ra-pub.pem"))
            .arg("-signature")
            .arg(f.dir.join("attrs.sig"))
            .arg(f.dir.join("attrs.der")));
        // and not over other bytes
        std::fs::write(f.dir.join("attrs.der"), b"other bytes").unwrap();
        let out = Command::new("openssl")
            .args(["dgst", flag, "-verify"])
            .arg(f.dir.join("ra-pub.pem"))
            .arg("-signature")
            .arg(f.dir.join("attrs.sig"))
            .arg(f.dir.join("attrs.der"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "a signature over other bytes");
    }
    let e = err(f
        .scep
        .clone()
        .sign_attributes(SignAttributesRequest {
            tenant: T.into(),
            signed_attributes_der: attrs,
            digest: "md5".into(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "scep.unsupported_alg");
}

async fn check(f: &Fleet, tenant: &str, profile: &str, challenge: &[u8]) -> bool {
    f.scep
        .clone()
        .check_challenge(CheckChallengeRequest {
            tenant: tenant.into(),
            profile: profile.into(),
            challenge: challenge.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .ok
}

async fn put(f: &Fleet, tenant: &str, profile: &str, secret: &[u8], one_time: bool) -> Vec<u8> {
    f.scep_admin
        .clone()
        .put_challenge(PutChallengeRequest {
            tenant: tenant.into(),
            profile: profile.into(),
            secret: secret.to_vec(),
            one_time,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_static_one_time_wrong_and_other_tenant() {
    let mut f = setup().await;
    f.bootstrap(OTHER).await;
    assert!(!check(&f, T, "", b"s3cret").await, "no challenge yet");
    // static: accepted every time, for every profile of the tenant, never for another tenant
    assert!(put(&f, T, "", b"s3cret", false).await.is_empty());
    assert!(check(&f, T, "", b"s3cret").await);
    assert!(check(&f, T, "", b"s3cret").await);
    assert!(check(&f, T, "routers", b"s3cret").await);
    assert!(!check(&f, T, "", b"s3cret ").await);
    assert!(!check(&f, T, "", b"").await);
    assert!(!check(&f, OTHER, "", b"s3cret").await);
    // replacing it retires the old one
    put(&f, T, "", b"newer", false).await;
    assert!(!check(&f, T, "", b"s3cret").await);
    assert!(check(&f, T, "", b"newer").await);
    // a profile's own static challenge works for that profile only
    put(&f, T, "phones", b"phone-pass", false).await;
    assert!(check(&f, T, "phones", b"phone-pass").await);
    assert!(!check(&f, T, "routers", b"phone-pass").await);
    // one-time, generated: printed once, accepted exactly once
    let otp = put(&f, T, "", b"", true).await;
    assert!(otp.len() >= 32, "a generated challenge");
    assert!(!check(&f, OTHER, "", &otp).await);
    assert!(check(&f, T, "", &otp).await);
    assert!(!check(&f, T, "", &otp).await, "consumed");
    // one-time, given; two concurrent checks consume it once
    put(&f, T, "", b"given-once", true).await;
    let (a, b) = tokio::join!(
        check(&f, T, "", b"given-once"),
        check(&f, T, "", b"given-once")
    );
    assert!(
        a ^ b,
        "exactly one of two concurrent uses succeeds: {a} {b}"
    );
    // static challenges need a secret; an unknown tenant is refused
    let e = err(f
        .scep_admin
        .clone()
        .put_challenge(PutChallengeRequest {
            tenant: T.into(),
            profile: String::new(),
            secret: Vec::new(),
            one_time: false,
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "scep.challenge");
    let e = err(f
        .scep_admin
        .clone()
        .put_challenge(PutChallengeRequest {
            tenant: "nobody".into(),
            profile: String::new(),
            secret: b"x".to_vec(),
            one_time: false,
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);
    // the audit trail never carries a challenge
    let audit = f.store.audit_records().unwrap();
    let text = format!("{audit:?}");
    assert!(text.contains("scep.challenge.put") && text.contains("scep.challenge.consumed"));
    for secret in ["s3cret", "newer", "phone-pass", "given-once"] {
        assert!(!text.contains(secret), "audit must not carry {secret}");
    }
    assert!(!text.contains(std::str::from_utf8(&otp).unwrap()));
}
