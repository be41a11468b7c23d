//! Every algorithm signs through the real gRPC service and the signature verifies with the
//! `openssl` CLI in a separate process (and a tampered message does not).

mod common;

use certgate_proto::signer::{Algorithm, KeyRole, KeyType};
use certgate_signer::algo::algorithms_for;
use common::*;

async fn round_trip(key_type: KeyType) {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    // an RA key signs opaque protocol messages, so any bytes will do
    let id = format!("ra-{}", key_type.as_str_name().to_lowercase());
    let info = generate(&mut c, &id, KeyRole::Ra, key_type).await;
    let msg = b"CMP ProtectedPart stand-in: certgate round trip".to_vec();
    let algs = algorithms_for(key_type);
    assert!(!algs.is_empty());
    for alg in algs {
        let sig = c
            .sign(sign_request(&id, alg, &msg))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"))
            .into_inner()
            .signature;
        openssl_verify(&info.public_key_der, alg, &msg, &sig)
            .unwrap_or_else(|e| panic!("{alg:?} must verify with openssl: {e}"));
        let mut tampered = msg.clone();
        tampered[0] ^= 1;
        assert!(
            openssl_verify(&info.public_key_der, alg, &tampered, &sig).is_err(),
            "{alg:?}: openssl must reject a signature over other bytes"
        );
    }
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ecdsa_p256_sha256_verifies_with_openssl() {
    round_trip(KeyType::EcP256).await;
}

#[tokio::test]
async fn ecdsa_p384_sha384_verifies_with_openssl() {
    round_trip(KeyType::EcP384).await;
}

#[tokio::test]
async fn rsa_2048_pkcs1_and_pss_verify_with_openssl() {
    round_trip(KeyType::Rsa2048).await;
}

#[tokio::test]
async fn rsa_3072_pkcs1_and_pss_verify_with_openssl() {
    round_trip(KeyType::Rsa3072).await;
}

#[tokio::test]
async fn rsa_4096_pkcs1_and_pss_verify_with_openssl() {
    round_trip(KeyType::Rsa4096).await;
}

#[tokio::test]
async fn ed25519_verifies_with_openssl() {
    round_trip(KeyType::Ed25519Key).await;
}

#[tokio::test]
async fn batch_signatures_verify_with_openssl_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let info = generate(&mut c, "ocsp-1", KeyRole::Ocsp, KeyType::EcP256).await;
    // more than the inline threshold, so the batch is spread over the blocking pool
    let messages: Vec<Vec<u8>> = (0..100).map(response_data).collect();
    let sigs = c
        .sign_batch(certgate_proto::signer::SignBatchRequest {
            key_id: "ocsp-1".into(),
            algorithm: Algorithm::EcdsaP256Sha256 as i32,
            messages: messages.clone(),
        })
        .await
        .expect("batch")
        .into_inner()
        .signatures;
    assert_eq!(sigs.len(), messages.len());
    for i in [0usize, 1, 49, 50, 99] {
        openssl_verify(
            &info.public_key_der,
            Algorithm::EcdsaP256Sha256,
            &messages[i],
            &sigs[i],
        )
        .unwrap_or_else(|e| panic!("batch item {i}: {e}"));
    }
    assert!(
        openssl_verify(
            &info.public_key_der,
            Algorithm::EcdsaP256Sha256,
            &messages[0],
            &sigs[1]
        )
        .is_err()
    );
    let records = audit_records(&dir.path().join("audit.jsonl"));
    let batch = records
        .iter()
        .find(|r| r["op"] == "SignBatch")
        .expect("batch audited");
    assert_eq!(batch["count"], 100);
    assert_eq!(batch["decision"], "granted");
    running.shutdown().await.expect("shutdown");
}
