#![allow(clippy::unwrap_used, missing_docs)]
//! The core's CMP support (proto/cmp.proto) driven over real Unix-socket gRPC: MACs checked
//! against OpenSSL's own CMP client (`openssl cmp -reqout`) and OpenSSL's PBKDF2/HMAC, the RA
//! certificate against `openssl verify` and pkilint, RA signatures against the RA certificate's
//! key, and the certConf bookkeeping (confirm, reject, sweep) against the store's revocation
//! state.

mod common;

use std::path::Path;
use std::process::Command;

use certgate_core::store::Store;
use certgate_proto::ErrorKind;
use certgate_proto::cmp::{
    ComputeMacRequest, ConfirmRequest, CreateRaRequest, DeleteSharedSecretRequest,
    GetProtectionChainRequest, PutSharedSecretRequest, SignProtectionRequest,
};
use certgate_proto::core::{
    GetCertificateRequest, Identifier, IssueRequest, KeyRequest, identifier, issue_request,
};
use common::{Fleet, err, fleet, pem};
use der::{Decode, Encode};

const T: &str = "cmp-t";

async fn setup() -> Fleet {
    let mut f = fleet(certgate_core::acme::AcmeConfig::default()).await;
    f.bootstrap(T).await;
    f
}

async fn put_secret(f: &Fleet, tenant: &str, reference: &str, secret: &[u8]) -> Vec<u8> {
    f.cmp_admin
        .clone()
        .put_shared_secret(PutSharedSecretRequest {
            tenant: tenant.into(),
            reference: reference.into(),
            secret: secret.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// (header length, content length) of the DER TLV at the start of `b`.
fn tlv(b: &[u8]) -> (usize, usize) {
    let first = b[1] as usize;
    if first < 0x80 {
        (2, first)
    } else {
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | b[2 + i] as usize;
        }
        (2 + n, len)
    }
}

/// Splits an OpenSSL-written PKIMessage into (protectionAlg DER, ProtectedPart DER, protection).
fn split_message(msg: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (h, _) = tlv(msg);
    let mut rest = &msg[h..];
    let (hh, hl) = tlv(rest);
    let header = &rest[..hh + hl];
    rest = &rest[hh + hl..];
    let (bh, bl) = tlv(rest);
    let body = &rest[..bh + bl];
    rest = &rest[bh + bl..];
    // protection [0] EXPLICIT BIT STRING
    assert_eq!(rest[0], 0xa0, "protection present");
    let (ph, _) = tlv(rest);
    let bits = &rest[ph..];
    assert_eq!(bits[0], 0x03);
    let (bsh, bsl) = tlv(bits);
    let protection = bits[bsh + 1..bsh + bsl].to_vec(); // skip the unused-bits octet
    let mut inner = header.to_vec();
    inner.extend_from_slice(body);
    let protected = der::asn1::AnyRef::new(der::Tag::Sequence, &inner)
        .unwrap()
        .to_der()
        .unwrap();
    let hdr = cmpv2::header::PkiHeader::from_der(header).unwrap();
    let alg = hdr.protection_alg.expect("protectionAlg").to_der().unwrap();
    (alg, protected, protection)
}

/// An `ir` written by OpenSSL's CMP client with MAC protection (the server hangs up, so the
/// client stops after saving the request).
fn openssl_ir(dir: &Path, reference: &str, secret: &str, mac: &str, owf: &str) -> Vec<u8> {
    let key = dir.join("k.pem");
    if !key.exists() {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key)
            .output()
            .expect("openssl runs");
        assert!(out.status.success());
    }
    let req = dir.join(format!("req-{mac}-{owf}.der"));
    // A "server" that takes the request and hangs up: the client has saved it by then.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
        }
    });
    let _ = Command::new("openssl")
        .args(["cmp", "-cmd", "ir", "-server"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-ref", reference, "-secret"])
        .arg(format!("pass:{secret}"))
        .args(["-mac", mac, "-digest", owf, "-newkey"])
        .arg(&key)
        .args(["-subject", "/CN=kat", "-msg_timeout", "2", "-certout"])
        .arg(dir.join("c.pem"))
        .arg("-reqout")
        .arg(&req)
        .output()
        .expect("openssl runs");
    std::fs::read(&req).expect("openssl cmp wrote the request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_mac_matches_openssl_cmp_password_based_mac() {
    let f = setup().await;
    put_secret(&f, T, "kat-ref", b"s3cret-kat").await;
    for (mac, owf) in [
        ("hmac-sha1", "sha256"),
        ("hmacWithSHA256", "sha256"),
        ("hmacWithSHA256", "sha1"),
    ] {
        let msg = openssl_ir(&f.dir, "kat-ref", "s3cret-kat", mac, owf);
        let (alg, protected, protection) = split_message(&msg);
        let got = f
            .cmp
            .clone()
            .compute_mac(ComputeMacRequest {
                tenant: T.into(),
                sender_kid: b"kat-ref".to_vec(),
                protection_alg_der: alg.clone(),
                protected_part_der: protected.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .mac;
        assert_eq!(
            got, protection,
            "{mac}/{owf}: the core's MAC equals OpenSSL's protection"
        );
        // a one-bit change in the message changes the MAC
        let mut tampered = protected.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let other = f
            .cmp
            .clone()
            .compute_mac(ComputeMacRequest {
                tenant: T.into(),
                sender_kid: b"kat-ref".to_vec(),
                protection_alg_der: alg,
                protected_part_der: tampered,
            })
            .await
            .unwrap()
            .into_inner()
            .mac;
        assert_ne!(other, protection);
    }
    // A generated secret is printable and OpenSSL's client computes the same MAC with it.
    let generated = put_secret(&f, T, "gen-ref", b"").await;
    assert!(generated.len() >= 24 && generated.iter().all(|c| c.is_ascii_graphic()));
    let secret = String::from_utf8(generated).unwrap();
    let msg = openssl_ir(&f.dir, "gen-ref", &secret, "hmacWithSHA256", "sha256");
    let (alg, protected, protection) = split_message(&msg);
    let got = f
        .cmp
        .clone()
        .compute_mac(ComputeMacRequest {
            tenant: T.into(),
            sender_kid: b"gen-ref".to_vec(),
            protection_alg_der: alg,
            protected_part_der: protected,
        })
        .await
        .unwrap()
        .into_inner()
        .mac;
    assert_eq!(got, protection);
    // Secrets are never in the audit chain.
    for r in f.store.audit_records().unwrap() {
        assert!(!r.details.contains("s3cret-kat") && !r.details.contains(&secret));
    }
    assert!(
        f.store
            .audit_records()
            .unwrap()
            .iter()
            .any(|r| r.kind == "cmp.secret.put" && r.details.contains("kat-ref"))
    );
}

fn oid(s: &str) -> const_oid::ObjectIdentifier {
    const_oid::ObjectIdentifier::new_unwrap(s)
}

fn alg_id(o: &str, params: Option<Vec<u8>>) -> spki::AlgorithmIdentifierOwned {
    spki::AlgorithmIdentifierOwned {
        oid: oid(o),
        parameters: params.map(|p| der::Any::from_der(&p).unwrap()),
    }
}

/// PBMAC1 AlgorithmIdentifier with PBKDF2(HMAC-SHA256) and the given MAC.
fn pbmac1_alg(salt: &[u8], iterations: u64, key_len: u64, mac_oid: &str) -> Vec<u8> {
    #[derive(der::Sequence)]
    struct Pbkdf2 {
        salt: der::asn1::OctetString,
        iteration_count: u64,
        key_length: u64,
        prf: spki::AlgorithmIdentifierOwned,
    }
    #[derive(der::Sequence)]
    struct Pbmac1 {
        kdf: spki::AlgorithmIdentifierOwned,
        mac: spki::AlgorithmIdentifierOwned,
    }
    let kdf = Pbkdf2 {
        salt: der::asn1::OctetString::new(salt.to_vec()).unwrap(),
        iteration_count: iterations,
        key_length: key_len,
        prf: alg_id("1.2.840.113549.2.9", None),
    };
    let p = Pbmac1 {
        kdf: alg_id("1.2.840.113549.1.5.12", Some(kdf.to_der().unwrap())),
        mac: alg_id(mac_oid, None),
    };
    alg_id("1.2.840.113549.1.5.14", Some(p.to_der().unwrap()))
        .to_der()
        .unwrap()
}

fn hexcolons(s: &str) -> Vec<u8> {
    hex::decode(s.trim().replace(':', "").to_ascii_lowercase()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_mac_pbmac1_matches_openssl_pbkdf2_and_hmac() {
    let f = setup().await;
    put_secret(&f, T, "pb-ref", b"pbmac1-secret").await;
    let salt = b"0123456789abcdef";
    let data = b"\x30\x03\x02\x01\x07 any ProtectedPart bytes";
    let data_path = f.dir.join("data.bin");
    std::fs::write(&data_path, data).unwrap();
    for (mac_oid, digest, key_len) in [
        ("1.2.840.113549.2.9", "SHA256", 32u64),
        ("1.2.840.113549.2.11", "SHA512", 64),
    ] {
        let out = Command::new("openssl")
            .args(["kdf", "-keylen", &key_len.to_string()])
            .args(["-kdfopt", "digest:SHA256", "-kdfopt", "pass:pbmac1-secret"])
            .args(["-kdfopt", &format!("hexsalt:{}", hex::encode(salt))])
            .args(["-kdfopt", "iter:1000", "PBKDF2"])
            .output()
            .expect("openssl kdf runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = hexcolons(&String::from_utf8_lossy(&out.stdout));
        let out = Command::new("openssl")
            .args(["mac", "-digest", digest, "-macopt"])
            .arg(format!("hexkey:{}", hex::encode(&key)))
            .arg("-in")
            .arg(&data_path)
            .arg("HMAC")
            .output()
            .expect("openssl mac runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = hexcolons(&String::from_utf8_lossy(&out.stdout));
        let got = f
            .cmp
            .clone()
            .compute_mac(ComputeMacRequest {
                tenant: T.into(),
                sender_kid: b"pb-ref".to_vec(),
                protection_alg_der: pbmac1_alg(salt, 1000, key_len, mac_oid),
                protected_part_der: data.to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .mac;
        assert_eq!(got, expected, "PBMAC1 with {digest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_mac_refuses_unbounded_params_unknown_senders_and_other_tenants() {
    let f = setup().await;
    put_secret(&f, T, "ref-a", b"secret-a").await;
    // tenant B exists but has no reference "ref-a"
    f.admin
        .clone()
        .put_tenant(certgate_proto::admin::Tenant {
            name: "cmp-b".into(),
            public_base_url: "http://127.0.0.1:8080".into(),
            default_profile: String::new(),
            active_issuer_id: String::new(),
        })
        .await
        .unwrap();
    let ok_alg = pbmac1_alg(b"saltsaltsalt", 1000, 32, "1.2.840.113549.2.9");
    let call = |tenant: &str, kid: &[u8], alg: Vec<u8>| {
        let mut c = f.cmp.clone();
        let r = ComputeMacRequest {
            tenant: tenant.into(),
            sender_kid: kid.to_vec(),
            protection_alg_der: alg,
            protected_part_der: b"data".to_vec(),
        };
        async move { c.compute_mac(r).await }
    };
    assert!(call(T, b"ref-a", ok_alg.clone()).await.is_ok());
    // iteration count beyond the bound: refused before any work
    let started = std::time::Instant::now();
    let e = err(call(
        T,
        b"ref-a",
        pbmac1_alg(b"saltsaltsalt", 50_000_000, 32, "1.2.840.113549.2.9"),
    )
    .await
    .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::Malformed, "cmp.bad_mac_params")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // PasswordBasedMac beyond the bound too
    let pbm = cmpv2::parameter::PbmParameter {
        salt: der::asn1::OctetString::new(b"saltsaltsalt".to_vec()).unwrap(),
        owf: alg_id("2.16.840.1.101.3.4.2.1", None),
        iteration_count: 10_000_000,
        mac: alg_id("1.2.840.113549.2.9", None),
    };
    let pbm_alg = alg_id("1.2.840.113533.7.66.13", Some(pbm.to_der().unwrap()))
        .to_der()
        .unwrap();
    let e = err(call(T, b"ref-a", pbm_alg).await.unwrap_err());
    assert_eq!(e.rule, "cmp.bad_mac_params");
    // a signature algorithm is not a MAC
    let e = err(call(
        T,
        b"ref-a",
        alg_id("1.2.840.10045.4.3.2", None).to_der().unwrap(),
    )
    .await
    .unwrap_err());
    assert_eq!(e.rule, "cmp.bad_mac_params");
    // unknown sender
    let e = err(call(T, b"nobody", ok_alg.clone()).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "cmp.unknown_sender")
    );
    // tenant isolation: tenant A's reference does not exist for tenant B
    let e = err(call("cmp-b", b"ref-a", ok_alg.clone()).await.unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "cmp.unknown_sender")
    );
    // delete: existed once, then the sender is unknown
    let del = |reference: &str| {
        let mut c = f.cmp_admin.clone();
        let r = DeleteSharedSecretRequest {
            tenant: T.into(),
            reference: reference.into(),
        };
        async move {
            c.delete_shared_secret(r)
                .await
                .unwrap()
                .into_inner()
                .existed
        }
    };
    assert!(del("ref-a").await);
    assert!(!del("ref-a").await);
    let e = err(call(T, b"ref-a", ok_alg).await.unwrap_err());
    assert_eq!(e.rule, "cmp.unknown_sender");
    assert!(
        f.store
            .audit_records()
            .unwrap()
            .iter()
            .any(|r| r.kind == "cmp.secret.delete" && r.tenant == T)
    );
    // secrets for an unknown tenant are refused
    let e = err(f
        .cmp_admin
        .clone()
        .put_shared_secret(PutSharedSecretRequest {
            tenant: "nope".into(),
            reference: "r".into(),
            secret: b"x".to_vec(),
        })
        .await
        .unwrap_err());
    assert_eq!(e.kind, ErrorKind::NotFound);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ra_certificate_verifies_passes_pkilint_and_signs_protection() {
    let f = setup().await;
    let created = f
        .cmp_admin
        .clone()
        .create_ra(CreateRaRequest {
            tenant: T.into(),
            rotate: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    assert_eq!(created.chain_der.len(), 3, "RA, issuing CA, root");
    assert_eq!(*created.chain_der.last().unwrap(), f.root_der(T));
    // the signer key has role RA
    let signer = certgate_core::signer_client::Signer::new(
        certgate_proto::transport::unix_channel(f.dir.join("signer.sock")),
        std::time::Duration::from_secs(5),
    );
    let info = signer
        .public_key(&created.signer_key_id)
        .await
        .unwrap()
        .expect("RA key exists");
    assert_eq!(info.role, certgate_proto::signer::KeyRole::Ra as i32);
    // the certificate: digitalSignature, EKU id-kp-cmcRA, chains to the root
    let ra = x509_cert::Certificate::from_der(&created.chain_der[0]).unwrap();
    let (_, eku) = ra
        .tbs_certificate
        .get::<x509_cert::ext::pkix::ExtendedKeyUsage>()
        .unwrap()
        .expect("EKU present");
    assert_eq!(eku.0, vec![oid("1.3.6.1.5.5.7.3.28")]);
    let (_, ku) = ra
        .tbs_certificate
        .get::<x509_cert::ext::pkix::KeyUsage>()
        .unwrap()
        .unwrap();
    assert!(ku.digital_signature());
    std::fs::write(
        f.dir.join("root.pem"),
        pem("CERTIFICATE", &created.chain_der[2]),
    )
    .unwrap();
    std::fs::write(
        f.dir.join("issuing.pem"),
        pem("CERTIFICATE", &created.chain_der[1]),
    )
    .unwrap();
    std::fs::write(
        f.dir.join("ra.pem"),
        pem("CERTIFICATE", &created.chain_der[0]),
    )
    .unwrap();
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
    // the RA certificate is a stored certificate of the tenant (OCSP/CRL cover it)
    let serial = certgate_core::x509::serial_hex(ra.tbs_certificate.serial_number.as_bytes());
    assert!(f.store.get_cert(T, &serial).unwrap().is_some());

    // SignProtection: verifies with the RA certificate's key, algorithm as announced
    let protected = b"\x30\x05\x04\x03abc".to_vec();
    let s = f
        .cmp
        .clone()
        .sign_protection(SignProtectionRequest {
            tenant: T.into(),
            protected_part_der: protected.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.chain_der, created.chain_der);
    let alg = spki::AlgorithmIdentifierOwned::from_der(&s.algorithm_der).unwrap();
    assert_eq!(alg.oid, oid("1.2.840.10045.4.3.2"), "ecdsa-with-SHA256");
    let pk = ra
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        &pk,
    );
    key.verify(&protected, &s.signature)
        .expect("the RA signature verifies");
    assert!(key.verify(b"other", &s.signature).is_err());
    // a second CreateRa returns the same RA; GetProtectionChain agrees
    let again = f
        .cmp_admin
        .clone()
        .create_ra(CreateRaRequest {
            tenant: T.into(),
            rotate: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.chain_der, created.chain_der);
    let chain = f
        .cmp
        .clone()
        .get_protection_chain(GetProtectionChainRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner()
        .chain_der;
    assert_eq!(chain, created.chain_der);
    // rotation: a new key and certificate; the old certificate is revoked (superseded)
    let rotated = f
        .cmp_admin
        .clone()
        .create_ra(CreateRaRequest {
            tenant: T.into(),
            rotate: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.created);
    assert_ne!(rotated.signer_key_id, created.signer_key_id);
    assert_ne!(rotated.chain_der[0], created.chain_der[0]);
    let old = f.store.get_cert(T, &serial).unwrap().unwrap();
    assert!(old.revoked && old.revocation_reason == 4);
    let chain = f
        .cmp
        .clone()
        .get_protection_chain(GetProtectionChainRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner()
        .chain_der;
    assert_eq!(chain, rotated.chain_der);
    assert!(
        f.store
            .audit_records()
            .unwrap()
            .iter()
            .any(|r| r.kind == "cmp.ra.created" && r.tenant == T)
    );
    // a tenant without an issuing CA gets a clear refusal
    f.admin
        .clone()
        .put_tenant(certgate_proto::admin::Tenant {
            name: "cmp-noca".into(),
            public_base_url: "http://127.0.0.1:8080".into(),
            default_profile: String::new(),
            active_issuer_id: String::new(),
        })
        .await
        .unwrap();
    let e = err(f
        .cmp
        .clone()
        .sign_protection(SignProtectionRequest {
            tenant: "cmp-noca".into(),
            protected_part_der: protected,
        })
        .await
        .unwrap_err());
    assert_eq!(e.rule, "cmp.no_issuer");
}

async fn issue_awaiting(f: &Fleet, key: &str, await_confirmation: bool) -> String {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    f.core
        .clone()
        .issue(IssueRequest {
            tenant: T.into(),
            request: Some(issue_request::Request::KeyRequest(KeyRequest {
                public_key_der: rcgen::PublicKeyData::subject_public_key_info(&kp),
                subject_der: vec![],
                sans: vec![Identifier {
                    r#type: identifier::Type::Dns as i32,
                    value: format!("{}.cmp.example.com", key.replace(':', "-")),
                }],
            })),
            protocol: "cmp".into(),
            idempotency_key: key.into(),
            await_confirmation,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .serial_hex
}

async fn confirm(f: &Fleet, serial: &str, accepted: bool) -> (bool, bool) {
    let r = f
        .cmp
        .clone()
        .confirm(ConfirmRequest {
            tenant: T.into(),
            serial_hex: serial.into(),
            accepted,
            client_identity: "kat-ref".into(),
            reason: if accepted {
                String::new()
            } else {
                "bad cert".into()
            },
        })
        .await
        .unwrap()
        .into_inner();
    (r.already, r.revoked)
}

async fn revoked(f: &Fleet, serial: &str) -> bool {
    f.core
        .clone()
        .get_certificate(GetCertificateRequest {
            tenant: T.into(),
            serial_hex: serial.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_accepts_rejects_is_idempotent_and_the_sweep_revokes_the_unconfirmed() {
    let f = setup().await;
    // accepted once, then idempotent
    let a = issue_awaiting(&f, "cmp:a", true).await;
    assert_eq!(confirm(&f, &a, true).await, (false, false));
    assert_eq!(confirm(&f, &a, true).await, (true, false));
    assert!(!revoked(&f, &a).await);
    // rejected: revoked at once (through the store's revocation path), idempotent
    let r = issue_awaiting(&f, "cmp:r", true).await;
    assert_eq!(confirm(&f, &r, false).await, (false, true));
    assert!(revoked(&f, &r).await);
    assert_eq!(confirm(&f, &r, false).await, (true, true));
    // accepting after rejecting does not resurrect it
    assert_eq!(confirm(&f, &r, true).await, (true, true));
    assert!(revoked(&f, &r).await);
    // never confirmed: the sweep revokes it once the window has passed, not before
    let u = issue_awaiting(&f, "cmp:u", true).await;
    // issued with implicitConfirm: never swept
    let i = issue_awaiting(&f, "cmp:i", false).await;
    let now = certgate_core::now_unix();
    assert_eq!(f.cmp_state.sweep_once(now).unwrap(), 0);
    assert!(!revoked(&f, &u).await);
    let window = certgate_core::cmp::CmpConfig::default().confirm_window_seconds;
    assert_eq!(f.cmp_state.sweep_once(now + window + 1).unwrap(), 1);
    assert!(revoked(&f, &u).await);
    assert!(
        !revoked(&f, &a).await,
        "a confirmed certificate is not swept"
    );
    assert!(
        !revoked(&f, &i).await,
        "an implicitly confirmed certificate is not swept"
    );
    assert_eq!(f.cmp_state.sweep_once(now + window + 1).unwrap(), 0);
    // a late certConf for the swept certificate cannot confirm it
    assert_eq!(confirm(&f, &u, true).await, (true, true));
    // an implicitly confirmed certificate's certConf is a no-op
    assert_eq!(confirm(&f, &i, true).await, (true, false));
    // unknown serial
    let e = err(f
        .cmp
        .clone()
        .confirm(ConfirmRequest {
            tenant: T.into(),
            serial_hex: "0badc0de".into(),
            accepted: true,
            ..Default::default()
        })
        .await
        .unwrap_err());
    assert_eq!(
        (e.kind, e.rule.as_str()),
        (ErrorKind::NotFound, "cmp.unknown_certificate")
    );
    let kinds: Vec<String> = f
        .store
        .audit_records()
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    for k in [
        "cmp.confirm.accepted",
        "cmp.confirm.rejected",
        "cmp.confirm.expired",
    ] {
        assert!(kinds.iter().any(|x| x == k), "audit has {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_task_revokes_after_a_short_window() {
    let f = setup().await;
    // A 3 s window and a 100 ms sweep, as `[cmp]` in core.toml would set them.
    let config: certgate_core::cmp::CmpConfig =
        toml::from_str("confirm_window_seconds = 3\nsweep_interval_ms = 100").unwrap();
    config.check().unwrap();
    f.cmp_state
        .core
        .issuer
        .attach_cmp_confirm_window(config.confirm_window_seconds);
    let state = std::sync::Arc::new(certgate_core::cmp::CmpState::new(
        f.cmp_state.core.clone(),
        f.cmp_state.signer.clone(),
        config,
    ));
    let sweeper = tokio::spawn(state.run_sweep());
    // Each check right after its issuance: the 3 s window runs on the wall clock, so nothing
    // slow (another issuance) sits between an issuance and what must happen inside its window.
    let unconfirmed = issue_awaiting(&f, "cmp:late", true).await;
    assert!(!revoked(&f, &unconfirmed).await);
    let confirmed = issue_awaiting(&f, "cmp:ontime", true).await;
    assert_eq!(confirm(&f, &confirmed, true).await, (false, false));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !revoked(&f, &unconfirmed).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep did not revoke the unconfirmed certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!revoked(&f, &confirmed).await);
    let rec = f.store.get_cert(T, &unconfirmed).unwrap().unwrap();
    assert_eq!(rec.revocation_reason, 5, "cessationOfOperation");
    sweeper.abort();
    // bad settings are refused
    let bad: certgate_core::cmp::CmpConfig = toml::from_str("confirm_window_seconds = 0").unwrap();
    assert!(bad.check().is_err());
}
