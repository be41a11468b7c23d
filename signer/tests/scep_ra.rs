//! SCEP_RA keys through the real gRPC service over its Unix socket: key-transport decryption of a
//! key that the `openssl` CLI encrypted to the public key (PKCS#1 v1.5 and OAEP), the signing
//! policy (CMS SignedAttributes only), refusal of Decrypt for every other role, and one audit
//! record per call.

mod common;

use std::process::Command;

use certgate_proto::signer::decrypter_client::DecrypterClient;
use certgate_proto::signer::{Algorithm, DecryptRequest, KeyRole, KeyTransport, KeyType};
use common::*;
use der::Encode;
use der::asn1::{Any, SetOfVec};
use tonic::transport::Channel;

fn decrypter(socket: &std::path::Path) -> DecrypterClient<Channel> {
    DecrypterClient::new(certgate_proto::transport::unix_channel(socket.to_owned()))
}

/// Encrypts `plain` to the SubjectPublicKeyInfo `spki` with `openssl pkeyutl`.
fn openssl_encrypt(dir: &std::path::Path, spki: &[u8], plain: &[u8], opts: &[&str]) -> Vec<u8> {
    let pubkey = dir.join("ra-pub.der");
    let input = dir.join("cek.bin");
    let out = dir.join("cek.enc");
    std::fs::write(&pubkey, spki).expect("write public key");
    std::fs::write(&input, plain).expect("write cek");
    let mut cmd = Command::new("openssl");
    cmd.args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(&pubkey)
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&out);
    for o in opts {
        cmd.args(["-pkeyopt", o]);
    }
    let status = cmd.status().expect("run openssl");
    assert!(status.success(), "openssl pkeyutl -encrypt failed");
    std::fs::read(&out).expect("read ciphertext")
}

fn decrypt_request(key_id: &str, scheme: KeyTransport, ciphertext: Vec<u8>) -> DecryptRequest {
    DecryptRequest {
        key_id: key_id.into(),
        scheme: scheme as i32,
        ciphertext,
    }
}

/// DER SignedAttributes: contentType id-data and a messageDigest, as a CMS signer writes them.
fn signed_attributes() -> Vec<u8> {
    let content_type = x509_cert::attr::Attribute {
        oid: const_oid::db::rfc5911::ID_CONTENT_TYPE,
        values: SetOfVec::try_from(vec![
            Any::encode_from(&const_oid::db::rfc5911::ID_DATA).expect("oid"),
        ])
        .expect("set"),
    };
    let digest = x509_cert::attr::Attribute {
        oid: const_oid::db::rfc5911::ID_MESSAGE_DIGEST,
        values: SetOfVec::try_from(vec![
            Any::encode_from(&der::asn1::OctetString::new([7u8; 32]).expect("octets"))
                .expect("any"),
        ])
        .expect("set"),
    };
    SetOfVec::try_from(vec![content_type, digest])
        .expect("attributes")
        .to_der()
        .expect("der")
}

#[tokio::test]
async fn scep_ra_key_decrypts_what_openssl_encrypted_and_audits_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let info = generate(&mut c, "scep-ra", KeyRole::ScepRa, KeyType::Rsa2048).await;
    let mut d = decrypter(&running.socket);
    let cek = [0x5au8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    let cases: [(KeyTransport, &[&str]); 3] = [
        (KeyTransport::RsaPkcs1V15, &[]),
        (KeyTransport::RsaOaepSha1, &["rsa_padding_mode:oaep"]),
        (
            KeyTransport::RsaOaepSha256,
            &[
                "rsa_padding_mode:oaep",
                "rsa_oaep_md:sha256",
                "rsa_mgf1_md:sha256",
            ],
        ),
    ];
    for (scheme, opts) in cases {
        let ct = openssl_encrypt(dir.path(), &info.public_key_der, &cek, opts);
        let plain = d
            .decrypt(decrypt_request("scep-ra", scheme, ct))
            .await
            .unwrap_or_else(|e| panic!("{scheme:?}: {e}"))
            .into_inner()
            .plaintext;
        assert_eq!(plain, cek, "{scheme:?} must unwrap the key openssl wrapped");
    }
    // OAEP-SHA256 ciphertext presented as PKCS#1 v1.5 does not decrypt
    let ct = openssl_encrypt(
        dir.path(),
        &info.public_key_der,
        &cek,
        &[
            "rsa_padding_mode:oaep",
            "rsa_oaep_md:sha256",
            "rsa_mgf1_md:sha256",
        ],
    );
    let err = d
        .decrypt(decrypt_request("scep-ra", KeyTransport::RsaOaepSha1, ct))
        .await
        .expect_err("wrong scheme must fail");
    assert_eq!(rule_of(&err), "signer.decrypt_failed");
    // oversized input is refused before any key operation
    let err = d
        .decrypt(decrypt_request(
            "scep-ra",
            KeyTransport::RsaPkcs1V15,
            vec![1u8; 4096],
        ))
        .await
        .expect_err("oversized");
    assert_eq!(rule_of(&err), "signer.ciphertext_size");

    let records = audit_records(&dir.path().join("audit.jsonl"));
    let dec: Vec<_> = records.iter().filter(|r| r["op"] == "Decrypt").collect();
    assert_eq!(
        dec.len(),
        5,
        "one audit record per Decrypt call: {records:?}"
    );
    assert!(
        dec[..3].iter().all(|r| r["decision"] == "granted"),
        "{dec:?}"
    );
    assert_eq!(dec[0]["key_id"], "scep-ra");
    assert_eq!(dec[0]["algorithm"], "RSA_PKCS1_V15");
    assert!(
        dec[3..].iter().all(|r| r["decision"] == "denied"),
        "{dec:?}"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn decrypt_is_refused_for_every_other_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let mut d = decrypter(&running.socket);
    for (i, role) in [
        KeyRole::Ra,
        KeyRole::Issuing,
        KeyRole::Root,
        KeyRole::Intermediate,
        KeyRole::Ocsp,
        KeyRole::Crl,
        KeyRole::Audit,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("k{i}");
        let info = generate(&mut c, &id, role, KeyType::Rsa2048).await;
        let ct = openssl_encrypt(dir.path(), &info.public_key_der, &[1u8; 16], &[]);
        let err = d
            .decrypt(decrypt_request(&id, KeyTransport::RsaPkcs1V15, ct))
            .await
            .expect_err("only SCEP_RA keys decrypt");
        assert_eq!(
            rule_of(&err),
            format!(
                "policy.{}.decrypt_not_allowed",
                certgate_signer::policy::role_name(role)
            )
        );
    }
    let records = audit_records(&dir.path().join("audit.jsonl"));
    let dec: Vec<_> = records.iter().filter(|r| r["op"] == "Decrypt").collect();
    assert_eq!(dec.len(), 7);
    assert!(dec.iter().all(|r| r["decision"] == "denied"), "{dec:?}");
    // SCEP_RA keys are RSA only
    let err = c
        .generate_key(generate_request(
            "scep-ec",
            KeyRole::ScepRa,
            KeyType::EcP256,
        ))
        .await
        .expect_err("EC SCEP_RA key");
    assert_eq!(rule_of(&err), "signer.key_type_invalid");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn scep_ra_key_signs_only_signed_attributes_with_pkcs1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let info = generate(&mut c, "scep-ra", KeyRole::ScepRa, KeyType::Rsa2048).await;
    let attrs = signed_attributes();
    let sig = c
        .sign(sign_request("scep-ra", Algorithm::RsaPkcs1Sha256, &attrs))
        .await
        .expect("sign signed attributes")
        .into_inner()
        .signature;
    openssl_verify(
        &info.public_key_der,
        Algorithm::RsaPkcs1Sha256,
        &attrs,
        &sig,
    )
    .expect("verifies with openssl");
    for (msg, alg, rule) in [
        (
            tbs_certificate(None, 30),
            Algorithm::RsaPkcs1Sha256,
            "policy.scep_ra.pki_object",
        ),
        (
            b"opaque bytes".to_vec(),
            Algorithm::RsaPkcs1Sha256,
            "policy.scep_ra.not_signed_attributes",
        ),
        (
            attrs.clone(),
            Algorithm::RsaPssSha256,
            "policy.scep_ra.algorithm_not_allowed",
        ),
    ] {
        let err = c
            .sign(sign_request("scep-ra", alg, &msg))
            .await
            .expect_err("refused");
        assert_eq!(rule_of(&err), rule);
    }
    running.shutdown().await.expect("shutdown");
}
