//! Key policy (I-9) through the real service: each role refuses what it must not sign, with
//! POLICY_REFUSED and a rule name, and every refusal is audited.

mod common;

use certgate_proto::ErrorKind;
use certgate_proto::signer::{
    Algorithm, GenerateKeyRequest, KeyBackend, KeyPolicy, KeyRole, KeyType, SignBatchRequest,
};
use common::*;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

struct Fixture {
    _dir: tempfile::TempDir,
    audit: std::path::PathBuf,
    running: certgate_signer::server::Running,
    c: certgate_proto::signer::signer_client::SignerClient<tonic::transport::Channel>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    c.generate_key(GenerateKeyRequest {
        policy: Some(KeyPolicy {
            max_validity_seconds: 90 * 86_400,
            max_path_len: None,
        }),
        ..generate_request("issuing", KeyRole::Issuing, KeyType::EcP256)
    })
    .await
    .expect("generate");
    for (id, role) in [
        ("ocsp", KeyRole::Ocsp),
        ("crl", KeyRole::Crl),
        ("audit", KeyRole::Audit),
    ] {
        generate(&mut c, id, role, KeyType::EcP256).await;
    }
    c.generate_key(GenerateKeyRequest {
        backend: KeyBackend::SealedFile as i32,
        policy: Some(KeyPolicy {
            max_validity_seconds: 0,
            max_path_len: Some(0),
        }),
        ..generate_request("root", KeyRole::Root, KeyType::EcP256)
    })
    .await
    .expect("generate root");
    Fixture {
        audit: dir.path().join("audit.jsonl"),
        _dir: dir,
        running,
        c,
    }
}

impl Fixture {
    async fn refused(&mut self, key: &str, msg: &[u8], rule: &str) {
        let e = self
            .c
            .sign(sign_request(key, P256, msg))
            .await
            .expect_err("must be refused");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let err = certgate_proto::RpcError::from_status(&e);
        assert_eq!(err.kind, ErrorKind::PolicyRefused);
        assert_eq!(err.rule, rule);
        let last = audit_records(&self.audit).pop().expect("audited");
        assert_eq!(last["decision"], "denied");
        assert_eq!(last["rule"], rule);
        assert_eq!(last["key_id"], key);
        assert_eq!(
            last["digest"],
            hex::encode(certgate_signer::algo::sha256(msg)),
            "the audit names what was asked"
        );
    }

    async fn signs(&mut self, key: &str, msg: &[u8]) {
        self.c
            .sign(sign_request(key, P256, msg))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
    }
}

#[tokio::test]
async fn issuing_key_refuses_ca_certificate_and_overlong_validity() {
    let mut f = fixture().await;
    f.signs("issuing", &tbs_certificate(None, 90)).await;
    f.refused(
        "issuing",
        &tbs_certificate(Some(None), 30),
        "policy.issuing.ca_certificate",
    )
    .await;
    f.refused(
        "issuing",
        &tbs_certificate(Some(Some(0)), 30),
        "policy.issuing.ca_certificate",
    )
    .await;
    f.refused(
        "issuing",
        &tbs_certificate(None, 91),
        "policy.issuing.validity_too_long",
    )
    .await;
    f.signs("issuing", &tbs_cert_list()).await;
    f.signs("issuing", &response_data(1)).await;
    f.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ocsp_key_refuses_a_tbs_certificate() {
    let mut f = fixture().await;
    f.signs("ocsp", &response_data(1)).await;
    f.refused(
        "ocsp",
        &tbs_certificate(None, 90),
        "policy.ocsp.not_response_data",
    )
    .await;
    f.refused("ocsp", &tbs_cert_list(), "policy.ocsp.not_response_data")
        .await;
    f.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn crl_key_refuses_response_data_and_certificates() {
    let mut f = fixture().await;
    f.signs("crl", &tbs_cert_list()).await;
    f.refused("crl", &response_data(1), "policy.crl.not_tbs_cert_list")
        .await;
    f.refused(
        "crl",
        &tbs_certificate(None, 90),
        "policy.crl.not_tbs_cert_list",
    )
    .await;
    f.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn audit_key_refuses_anything_without_the_prefix() {
    let mut f = fixture().await;
    f.signs("audit", b"CERTGATE-AUDIT-V1\0{\"seq\":1}").await;
    f.refused("audit", b"{\"seq\":1}", "policy.audit.prefix_missing")
        .await;
    f.refused(
        "audit",
        &tbs_certificate(None, 90),
        "policy.audit.prefix_missing",
    )
    .await;
    f.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn root_key_enforces_path_length() {
    let mut f = fixture().await;
    f.signs("root", &tbs_certificate(Some(Some(0)), 3650)).await;
    f.refused(
        "root",
        &tbs_certificate(Some(Some(1)), 3650),
        "policy.root.path_len_exceeded",
    )
    .await;
    f.refused(
        "root",
        &tbs_certificate(Some(None), 3650),
        "policy.root.path_len_missing",
    )
    .await;
    f.refused(
        "root",
        &tbs_certificate(None, 90),
        "policy.root.end_entity_certificate",
    )
    .await;
    f.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn one_refused_message_refuses_the_whole_batch() {
    let mut f = fixture().await;
    let mut messages: Vec<Vec<u8>> = (0..50).map(response_data).collect();
    messages[37] = tbs_certificate(None, 90);
    let e =
        f.c.sign_batch(SignBatchRequest {
            key_id: "ocsp".into(),
            algorithm: P256 as i32,
            messages,
        })
        .await
        .expect_err("refused");
    assert_eq!(rule_of(&e), "policy.ocsp.not_response_data");
    assert!(e.message().contains("message 37"), "{}", e.message());
    let last = audit_records(&f.audit).pop().expect("audited");
    assert_eq!(last["op"], "SignBatch");
    assert_eq!(last["count"], 50);
    assert_eq!(last["decision"], "denied");
    f.running.shutdown().await.expect("shutdown");
}
