//! Caller authentication through real sockets (I-5): a uid that is not on the allow-list, an
//! empty allow-list, and a TLS client without a certificate are refused with PermissionDenied and
//! the stable message, and every refusal is audited.

mod common;

use certgate_proto::signer::signer_client::SignerClient;
use certgate_proto::signer::{KeyRole, KeyType, ListKeysRequest, PublicKeyRequest};
use certgate_proto::transport::{client_tls_config, tls_channel};
use certgate_signer::service::{NOT_ADMIN, NOT_ALLOWED};
use common::*;
use rustls::pki_types::ServerName;
use tonic::Code;

fn assert_denied(status: &tonic::Status, message: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn uid_not_on_allow_list_is_refused_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = vec![format!("uid:{}", uid().wrapping_add(1))];
    let running = certgate_signer::server::start(&config(dir.path(), &other, &other))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    let e = c
        .sign(sign_request(
            "k1",
            certgate_proto::signer::Algorithm::EcdsaP256Sha256,
            b"x",
        ))
        .await
        .expect_err("denied");
    assert_denied(&e, NOT_ALLOWED);
    assert_eq!(rule_of(&e), "signer.caller_not_allowed");
    let e = c
        .list_keys(ListKeysRequest::default())
        .await
        .expect_err("denied");
    assert_denied(&e, NOT_ALLOWED);
    let e = c
        .generate_key(generate_request("k1", KeyRole::Issuing, KeyType::EcP256))
        .await
        .expect_err("denied");
    assert_denied(&e, NOT_ADMIN);

    let records = audit_records(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 3, "one record per RPC: {records:?}");
    for (r, op) in records.iter().zip(["Sign", "ListKeys", "GenerateKey"]) {
        assert_eq!(r["op"], op);
        assert_eq!(r["decision"], "denied");
        assert_eq!(r["kind"], "UNAUTHORIZED");
        assert_eq!(r["caller"], format!("uid:{}", uid()));
    }
    assert_eq!(records[0]["key_id"], "k1");
    assert_eq!(records[2]["rule"], "signer.caller_not_admin");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn empty_allow_list_admits_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = certgate_signer::server::start(&config(dir.path(), &[], &[]))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    assert_denied(
        &c.list_keys(ListKeysRequest::default())
            .await
            .expect_err("denied"),
        NOT_ALLOWED,
    );
    assert_denied(
        &c.public_key(PublicKeyRequest { key_id: "k".into() })
            .await
            .expect_err("denied"),
        NOT_ALLOWED,
    );
    assert_denied(
        &c.generate_key(generate_request("k", KeyRole::Audit, KeyType::EcP256))
            .await
            .expect_err("denied"),
        NOT_ADMIN,
    );
    let records = audit_records(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["decision"] == "denied"));
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn allowed_caller_who_is_not_admin_cannot_generate_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = vec![format!("uid:{}", uid())];
    let running = certgate_signer::server::start(&config(dir.path(), &me, &[]))
        .await
        .expect("start");
    let mut c = client(&running.socket);
    c.list_keys(ListKeysRequest::default())
        .await
        .expect("allowed caller lists keys");
    let e = c
        .generate_key(generate_request("k", KeyRole::Issuing, KeyType::EcP256))
        .await
        .expect_err("not admin");
    assert_denied(&e, NOT_ADMIN);
    let records = audit_records(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["decision"], "granted");
    assert_eq!(records[1]["decision"], "denied");
    running.shutdown().await.expect("shutdown");
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn pki() -> Pki {
    let mut ca = rcgen::CertificateParams::new(vec![]).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "certgate test CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    server
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        issuer,
    }
}

fn client_cert(pki: &Pki, spiffe: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(spiffe.try_into().expect("uri")));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &pki.issuer).expect("client cert");
    (cert.pem(), key.serialize_pem())
}

async fn tls_signer(dir: &std::path::Path, pki: &Pki) -> certgate_signer::server::Running {
    for (name, body) in [
        ("ca.pem", &pki.ca_pem),
        ("server.pem", &pki.server_cert),
        ("server.key", &pki.server_key),
    ] {
        std::fs::write(dir.join(name), body).expect("write");
    }
    let mut cfg = config(
        dir,
        &["spiffe://certgate.test/core".to_owned()],
        &[format!("uid:{}", uid())],
    );
    cfg.tls = Some(certgate_signer::config::TlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: dir.join("ca.pem"),
    });
    certgate_signer::server::start(&cfg).await.expect("start")
}

fn tls_client(
    running: &certgate_signer::server::Running,
    pki: &Pki,
    cert: Option<&(String, String)>,
) -> SignerClient<tonic::transport::Channel> {
    let config = client_tls_config(
        cert.map(|c| c.0.as_bytes()),
        cert.map(|c| c.1.as_bytes()),
        pki.ca_pem.as_bytes(),
    )
    .expect("client config");
    let addr = running.tls_addr.expect("tls addr");
    SignerClient::new(tls_channel(
        addr,
        ServerName::try_from("localhost").expect("name"),
        config,
    ))
}

#[tokio::test]
async fn tls_client_without_certificate_is_refused_and_audited() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let running = tls_signer(dir.path(), &pki).await;
    let mut anonymous = tls_client(&running, &pki, None);
    let e = anonymous
        .list_keys(ListKeysRequest::default())
        .await
        .expect_err("denied");
    assert_denied(&e, NOT_ALLOWED);
    let records = audit_records(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["caller"], "anonymous");
    assert_eq!(records[0]["decision"], "denied");
    let addr = running.tls_addr.expect("addr");
    running.shutdown().await.expect("shutdown");
    // the listener is closed with the server, not left accepting the next connection
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the TLS listener must close on shutdown"
    );
}

#[tokio::test]
async fn tls_client_is_admitted_by_its_spiffe_id_only() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let running = tls_signer(dir.path(), &pki).await;
    // the admin generates a key over the Unix socket
    let info = generate(
        &mut client(&running.socket),
        "iss-1",
        KeyRole::Issuing,
        KeyType::EcP256,
    )
    .await;

    let core = client_cert(&pki, "spiffe://certgate.test/core");
    let mut c = tls_client(&running, &pki, Some(&core));
    let keys = c
        .list_keys(ListKeysRequest::default())
        .await
        .expect("core is allowed")
        .into_inner();
    assert_eq!(keys.keys.len(), 1);
    let tbs = tbs_certificate(None, 90);
    let sig = c
        .sign(sign_request(
            "iss-1",
            certgate_proto::signer::Algorithm::EcdsaP256Sha256,
            &tbs,
        ))
        .await
        .expect("core signs over mTLS")
        .into_inner()
        .signature;
    openssl_verify(
        &info.public_key_der,
        certgate_proto::signer::Algorithm::EcdsaP256Sha256,
        &tbs,
        &sig,
    )
    .expect("verifies");
    // the SPIFFE admin list is separate: the core may not generate keys
    let e = c
        .generate_key(generate_request("k2", KeyRole::Issuing, KeyType::EcP256))
        .await
        .expect_err("not admin");
    assert_denied(&e, NOT_ADMIN);

    let edge = client_cert(&pki, "spiffe://certgate.test/edge");
    let mut e_client = tls_client(&running, &pki, Some(&edge));
    assert_denied(
        &e_client
            .list_keys(ListKeysRequest::default())
            .await
            .expect_err("edge denied"),
        NOT_ALLOWED,
    );
    let records = audit_records(&dir.path().join("audit.jsonl"));
    let callers: Vec<_> = records
        .iter()
        .map(|r| r["caller"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(callers.contains(&"spiffe://certgate.test/core".to_owned()));
    assert!(callers.contains(&"spiffe://certgate.test/edge".to_owned()));
    assert_eq!(records.len(), 5, "{records:#?}");
    running.shutdown().await.expect("shutdown");
}
