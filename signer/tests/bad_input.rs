//! Bad input gets a clear gRPC error and the signer keeps serving: garbage to sign, unknown key
//! id, unknown/unspecified/mismatched algorithm, oversized batch and message, an oversized request
//! and garbage bytes on the socket itself.

mod common;

use std::io::Write;

use certgate_proto::signer::{
    Algorithm, KeyRole, KeyType, ListKeysRequest, SignBatchRequest, SignRequest,
};
use common::*;
use tonic::Code;

const P256: Algorithm = Algorithm::EcdsaP256Sha256;

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_signer_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = own_config(dir.path());
    cfg.limits.max_batch = 8;
    cfg.limits.max_message_bytes = 4096;
    cfg.limits.max_request_bytes = 64 * 1024;
    let running = certgate_signer::server::start(&cfg).await.expect("start");
    let mut c = client(&running.socket);
    generate(&mut c, "iss", KeyRole::Issuing, KeyType::EcP256).await;
    let good = tbs_certificate(None, 30);
    let mut rpcs = 1; // the GenerateKey above

    let cases: Vec<(SignRequest, Code, &str)> = vec![
        (
            sign_request("iss", P256, b"\x30\x03garbage"),
            Code::FailedPrecondition,
            "policy.issuing.unknown_structure",
        ),
        (
            sign_request("no-such-key", P256, &good),
            Code::NotFound,
            "signer.key_unknown",
        ),
        (
            SignRequest {
                key_id: "iss".into(),
                algorithm: 99,
                message: good.clone(),
            },
            Code::InvalidArgument,
            "signer.algorithm_unknown",
        ),
        (
            sign_request("iss", Algorithm::Unspecified, &good),
            Code::InvalidArgument,
            "signer.algorithm_unspecified",
        ),
        (
            sign_request("iss", Algorithm::RsaPssSha256, &good),
            Code::InvalidArgument,
            "signer.algorithm_mismatch",
        ),
        (
            sign_request("iss", Algorithm::EcdsaP384Sha384, &good),
            Code::InvalidArgument,
            "signer.algorithm_mismatch",
        ),
        (
            sign_request("iss", P256, &[]),
            Code::InvalidArgument,
            "signer.message_empty",
        ),
        (
            sign_request("iss", P256, &vec![0x30; 5000]),
            Code::InvalidArgument,
            "signer.message_too_large",
        ),
    ];
    for (req, code, rule) in cases {
        let e = c.sign(req).await.expect_err(rule);
        assert_eq!(e.code(), code, "{rule}: {e:?}");
        assert_eq!(rule_of(&e), rule);
        assert!(!e.message().is_empty());
        rpcs += 1;
        // still serving
        c.sign(sign_request("iss", P256, &good))
            .await
            .expect("next call succeeds");
        rpcs += 1;
    }

    let e = c
        .sign_batch(SignBatchRequest {
            key_id: "iss".into(),
            algorithm: P256 as i32,
            messages: vec![good.clone(); 9],
        })
        .await
        .expect_err("batch too large");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(rule_of(&e), "signer.batch_too_large");
    rpcs += 1;
    let e = c
        .sign_batch(SignBatchRequest {
            key_id: "iss".into(),
            algorithm: P256 as i32,
            messages: vec![],
        })
        .await
        .expect_err("empty batch");
    assert_eq!(rule_of(&e), "signer.batch_empty");
    rpcs += 1;
    let ok = c
        .sign_batch(SignBatchRequest {
            key_id: "iss".into(),
            algorithm: P256 as i32,
            messages: vec![good.clone(); 8],
        })
        .await
        .expect("a full batch is fine");
    assert_eq!(ok.into_inner().signatures.len(), 8);
    rpcs += 1;

    // a request above the decoding limit is cut off by tonic before the service sees it
    let e = c
        .sign(sign_request("iss", P256, &vec![0u8; 100 * 1024]))
        .await
        .expect_err("request too large");
    assert!(
        matches!(
            e.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::Internal
        ),
        "{e:?}"
    );

    // raw garbage on the socket: the connection dies, the server does not
    {
        let mut raw = std::os::unix::net::UnixStream::connect(&running.socket).expect("connect");
        let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage");
    }
    c.list_keys(ListKeysRequest::default())
        .await
        .expect("still serving after garbage");
    rpcs += 1;
    let mut fresh = client(&running.socket);
    fresh
        .sign(sign_request("iss", P256, &good))
        .await
        .expect("a new client is served");
    rpcs += 1;

    let records = audit_records(&dir.path().join("audit.jsonl"));
    assert_eq!(
        records.len(),
        rpcs,
        "exactly one audit record per RPC that reached the service"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn generate_key_validates_its_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let mut bad_id = generate_request("../escape", KeyRole::Issuing, KeyType::EcP256);
    let e = c.generate_key(bad_id.clone()).await.expect_err("bad id");
    assert_eq!(rule_of(&e), "signer.key_id_invalid");
    bad_id.key_id = "ok".into();
    bad_id.role = 0;
    assert_eq!(
        rule_of(&c.generate_key(bad_id.clone()).await.expect_err("no role")),
        "signer.role_invalid"
    );
    bad_id.role = KeyRole::Issuing as i32;
    bad_id.key_type = 42;
    assert_eq!(
        rule_of(&c.generate_key(bad_id.clone()).await.expect_err("bad type")),
        "signer.key_type_invalid"
    );
    bad_id.key_type = KeyType::EcP256 as i32;
    bad_id.backend = certgate_proto::signer::KeyBackend::Pkcs11 as i32;
    assert_eq!(
        rule_of(&c.generate_key(bad_id.clone()).await.expect_err("no pkcs11")),
        "signer.backend_unavailable"
    );
    generate(&mut c, "dup", KeyRole::Issuing, KeyType::EcP256).await;
    let e = c
        .generate_key(generate_request("dup", KeyRole::Issuing, KeyType::EcP256))
        .await
        .expect_err("duplicate");
    assert_eq!(e.code(), Code::AlreadyExists);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_call_abandoned_mid_signature_is_still_audited_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&own_config(dir.path()))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    generate(&mut c, "ra-rsa", KeyRole::Ra, KeyType::Rsa4096).await;
    // RSA-4096 signing takes milliseconds on the blocking pool; a 1 ms deadline makes tonic drop
    // the handler while it waits for the signature
    let mut abandoned = 0;
    for _ in 0..20 {
        let mut req = tonic::Request::new(sign_request(
            "ra-rsa",
            Algorithm::RsaPssSha512,
            b"abandon me",
        ));
        req.set_timeout(std::time::Duration::from_millis(1));
        if c.sign(req).await.is_err() {
            abandoned += 1;
        }
    }
    assert!(
        abandoned > 0,
        "at least one call must have been abandoned for this test to mean anything"
    );
    // The abandoned signatures finish on the blocking pool and are audited then: wait for them
    // (a loaded machine may take seconds) instead of sleeping a fixed time, then check the count.
    let audit = dir.path().join("audit.jsonl");
    let signed = || {
        std::fs::read(&audit)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .filter(|r| r["op"] == "Sign")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while signed() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 20 Sign calls audited",
            signed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let records = audit_records(&audit);
    let signs = records.iter().filter(|r| r["op"] == "Sign").count();
    assert_eq!(signs, 20, "every Sign call is audited, abandoned or not");
    running.shutdown().await.expect("shutdown");
}
