#![allow(clippy::unwrap_used, missing_docs)]
//! The core's SCEP support (proto/scep.proto) driven over real Unix-socket gRPC against a real
//! core with the in-process fake signer (tests/common): the RA chain against `openssl verify`
//! and pkilint, DecryptKey against keys `openssl pkeyutl` encrypted to the RA certificate,
//! SignAttributes against `openssl dgst -verify` with the RA certificate's key, and the challenge
//! store (static, one-time, wrong, other tenant, other profile), and `Scep.Enroll` (PKCSReq and
//! RenewalReq answered with an RA-signed CertRep read back as a client reads it).

mod common;

use std::process::Command;

use certgate_core::store::Store;
use certgate_proto::ErrorKind;
use certgate_proto::scep::{
    CheckChallengeRequest, DecryptKeyRequest, EnrollRequest, EnrollResponse, GetRaChainRequest,
    PutChallengeRequest, SignAttributesRequest,
};
use certgate_scep::client::{Request as ScepRequest, build_request, read_reply};
use certgate_scep::{FailInfo, PkiStatus};
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

/// A SCEP client: an RSA-2048 key and its self-signed signer certificate.
struct ScepClient {
    pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
    rcgen: rcgen::KeyPair,
}

fn scep_client(cn: &str) -> ScepClient {
    use aws_lc_rs::encoding::AsDer as _;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("keygen");
    let pkcs8 = kp.as_der().expect("pkcs8").as_ref().to_vec();
    let rcgen = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.clone()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .expect("rcgen key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert_der = params
        .self_signed(&rcgen)
        .expect("self-signed")
        .der()
        .to_vec();
    ScepClient {
        pkcs8,
        cert_der,
        rcgen,
    }
}

/// A PKCS#10 request for `name` with the client's key and, if given, a challengePassword.
fn csr(c: &ScepClient, name: &str, challenge: Option<&str>) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let attrs = challenge
        .map(|pw| {
            let pw = der::Encode::to_der(&der::asn1::Utf8StringRef::new(pw).expect("utf8"))
                .expect("der");
            let mut values = vec![0x31, u8::try_from(pw.len()).expect("short")];
            values.extend_from_slice(&pw);
            vec![rcgen::Attribute {
                oid: &[1, 2, 840, 113549, 1, 9, 7],
                values,
            }]
        })
        .unwrap_or_default();
    params
        .serialize_request_with_attributes(&c.rcgen, attrs)
        .expect("csr")
        .der()
        .to_vec()
}

/// The EnrollRequest an edge sends for a message signed by `signer_cert`/`signer_key`: built
/// and parsed (signature checked) with certgate-scep, as the edge does.
#[allow(clippy::too_many_arguments)]
fn enroll_request(
    tenant: &str,
    ra_cert: &[u8],
    message_type: &'static str,
    tid: &str,
    content: &[u8],
    signer_cert: &[u8],
    signer_key: &[u8],
) -> (EnrollRequest, [u8; 16]) {
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).expect("rng");
    let der = build_request(&ScepRequest {
        message_type,
        transaction_id: tid,
        sender_nonce: nonce,
        content_der: content,
        signer_cert_der: signer_cert,
        signer_key_pkcs8: signer_key,
        ra_cert_der: ra_cert,
    })
    .expect("request");
    let msg = certgate_scep::parse_pki_message(&der).expect("parses and verifies");
    (
        EnrollRequest {
            tenant: tenant.into(),
            message_type: msg.message_type.code().into(),
            transaction_id: msg.transaction_id.clone(),
            sender_nonce: msg.sender_nonce.clone(),
            signer_cert_der: msg.signer_cert_der.clone(),
            digest: msg.digest.name().into(),
            enveloped_data_der: msg.enveloped_der().to_vec(),
        },
        nonce,
    )
}

async fn enroll(f: &Fleet, r: EnrollRequest) -> EnrollResponse {
    f.scep
        .clone()
        .enroll(r)
        .await
        .expect("Enroll answers")
        .into_inner()
}

fn issued(f: &Fleet) -> usize {
    f.store
        .audit_records()
        .expect("audit")
        .iter()
        .filter(|r| r.kind == "issue.intent" && r.details.contains("\"protocol\":\"scep\""))
        .count()
}

/// Reads `rep` as the client `c` does (RA signature, decryption with the client key) and
/// checks the echoed transactionID and nonce.
fn reply(
    rep: &EnrollResponse,
    c: &ScepClient,
    tid: &str,
    nonce: &[u8; 16],
) -> certgate_scep::client::Reply {
    let r = read_reply(&rep.cert_rep_der, &c.pkcs8).expect("a CertRep the client can read");
    assert_eq!(r.transaction_id, tid);
    assert_eq!(r.recipient_nonce, nonce);
    assert_eq!(rep.pki_status, r.status.name());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_pkcsreq_renewalreq_failures_and_one_time_challenges() {
    let mut f = setup().await;
    f.bootstrap(OTHER).await;
    let ra = ra_chain(&f, T).await.remove(0);
    let other_ra = ra_chain(&f, OTHER).await.remove(0);
    // The RA certificates are issued (and audited) like any other: count from here.
    let base = issued(&f);
    let issued = |f: &Fleet| issued(f) - base;
    let c = scep_client("enroll-client");
    let req = |tid: &str, name: &str, pw: Option<&str>| {
        enroll_request(T, &ra, "19", tid, &csr(&c, name, pw), &c.cert_der, &c.pkcs8)
    };

    // No challenge configured yet, then a wrong one, then none at all: FAILURE badRequest,
    // nothing issued.
    let (r, n) = req("tx-nochal", "a.scep.test", Some("s3cret"));
    let rep = enroll(&f, r).await;
    assert_eq!(
        reply(&rep, &c, "tx-nochal", &n).fail_info,
        Some(FailInfo::BadRequest)
    );
    put(&f, T, "", b"s3cret", false).await;
    let (r, n) = req("tx-wrong", "a.scep.test", Some("s3cret!"));
    let rep = enroll(&f, r).await;
    assert_eq!(
        (rep.pki_status.as_str(), rep.fail_info.as_str()),
        ("FAILURE", "badRequest")
    );
    assert_eq!(reply(&rep, &c, "tx-wrong", &n).status, PkiStatus::Failure);
    let (r, _) = req("tx-none", "a.scep.test", None);
    assert_eq!(enroll(&f, r).await.fail_info, "badRequest");
    assert_eq!(issued(&f), 0, "nothing issued on bad input");

    // The right challenge: SUCCESS with the certificate for the client's key, encrypted to it.
    let (r, n_ok) = req("tx-ok", "a.scep.test", Some("s3cret"));
    let first = r.clone();
    let rep = enroll(&f, r).await;
    assert_eq!(
        (rep.pki_status.as_str(), rep.fail_info.as_str()),
        ("SUCCESS", "")
    );
    let got = reply(&rep, &c, "tx-ok", &n_ok);
    assert_eq!(got.status, PkiStatus::Success);
    assert_eq!(got.ra_cert_der, ra, "signed by the tenant's RA");
    let cert = certifying(&got.certs, &c).expect("the certificate certifies the client's key");
    assert_eq!(issued(&f), 1);
    // The same transaction again (a client retry): the same certificate, not a second one.
    let again = enroll(&f, first).await;
    let again = reply(&again, &c, "tx-ok", &n_ok);
    assert_eq!(certifying(&again.certs, &c), Some(cert.clone()));
    assert_eq!(issued(&f), 1, "idempotent per transactionID and client key");

    // Tenant isolation: a message encrypted to T's RA sent for OTHER does not decrypt there
    // (badMessageCheck); one encrypted to OTHER's RA with T's challenge is refused (badRequest).
    let (mut r, _) = req("tx-cross", "b.scep.test", Some("s3cret"));
    r.tenant = OTHER.into();
    assert_eq!(enroll(&f, r).await.fail_info, "badMessageCheck");
    let (r, _) = enroll_request(
        OTHER,
        &other_ra,
        "19",
        "tx-other",
        &csr(&c, "b.scep.test", Some("s3cret")),
        &c.cert_der,
        &c.pkcs8,
    );
    assert_eq!(enroll(&f, r).await.fail_info, "badRequest");
    assert_eq!(issued(&f), 1);

    // A one-time challenge is good for exactly one enrollment.
    let otp = String::from_utf8(put(&f, T, "", b"", true).await).expect("ascii");
    let (r, _) = req("tx-otp-1", "c.scep.test", Some(&otp));
    assert_eq!(enroll(&f, r).await.pki_status, "SUCCESS");
    let (r, _) = req("tx-otp-2", "c.scep.test", Some(&otp));
    assert_eq!(enroll(&f, r).await.fail_info, "badRequest", "consumed");
    assert_eq!(issued(&f), 2);

    // RenewalReq signed by the issued certificate: a new certificate for a new key.
    let next = scep_client("enroll-client-next");
    let (r, n) = enroll_request(
        T,
        &ra,
        "17",
        "tx-renew",
        &csr(&next, "a.scep.test", None),
        &cert,
        &c.pkcs8,
    );
    let rep = enroll(&f, r).await;
    assert_eq!(rep.pki_status, "SUCCESS", "{}", rep.fail_info);
    let renewed = read_reply(&rep.cert_rep_der, &c.pkcs8).expect("encrypted to the old cert");
    assert_eq!(renewed.recipient_nonce, n);
    assert!(
        certifying(&renewed.certs, &next).is_some(),
        "certifies the new key"
    );
    assert_eq!(issued(&f), 3);
    // RenewalReq signed by a certificate this CA never issued: badCertId, nothing issued.
    let (r, _) = enroll_request(
        T,
        &ra,
        "17",
        "tx-renew-bad",
        &csr(&next, "a.scep.test", None),
        &c.cert_der,
        &c.pkcs8,
    );
    assert_eq!(enroll(&f, r).await.fail_info, "badCertId");
    assert_eq!(issued(&f), 3);

    // Enroll answers enrollment messages only; a CertPoll is the edge's to route elsewhere.
    let (r, _) = enroll_request(T, &ra, "20", "tx-poll", b"\x30\x00", &c.cert_der, &c.pkcs8);
    let e = err(f.scep.clone().enroll(r).await.unwrap_err());
    assert_eq!(e.rule, "scep.enroll");
}

/// The certificate among `certs` (a degenerate SignedData's SET OF, in DER order) that certifies
/// the client's key.
fn certifying(certs: &[Vec<u8>], c: &ScepClient) -> Option<Vec<u8>> {
    let spki = |der: &[u8]| {
        der::Encode::to_der(
            &x509_cert::Certificate::from_der(der)
                .expect("certificate")
                .tbs_certificate
                .subject_public_key_info,
        )
        .expect("spki")
    };
    let want = spki(&c.cert_der);
    certs.iter().find(|d| spki(d) == want).cloned()
}
