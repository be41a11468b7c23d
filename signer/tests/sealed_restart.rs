//! The sealed key store through the real `certgate-signer` binary: keys survive a restart; the
//! signer refuses to start with a wrong KEK, or when a key file's tenant or role was edited.

mod common;

use std::process::{Command, Stdio};

use certgate_proto::signer::{Algorithm, KeyRole, KeyType, PublicKeyRequest};
use common::*;

fn start_fails(config: &std::path::Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_certgate-signer"))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run certgate-signer");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "the signer must refuse to start");
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the signer started (and kept serving) when it must refuse to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    stderr
}

async fn make_key(dir: &std::path::Path) -> Vec<u8> {
    let config = write_config(dir, "");
    let signer = SignerProcess::start(&config, &dir.join("signer.sock"), &[]);
    let mut c = client(&signer.socket);
    let info = generate(&mut c, "issuing-1", KeyRole::Issuing, KeyType::EcP256).await;
    signer.stop();
    info.public_key_der
}

#[tokio::test]
async fn sealed_keys_survive_a_signer_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spki = make_key(dir.path()).await;
    let config = write_config(dir.path(), "");
    let signer = SignerProcess::start(&config, &dir.path().join("signer.sock"), &[]);
    let mut c = client(&signer.socket);
    let info = c
        .public_key(PublicKeyRequest {
            key_id: "issuing-1".into(),
        })
        .await
        .expect("key is back")
        .into_inner();
    assert_eq!(info.public_key_der, spki);
    assert_eq!(info.tenant, "acme");
    assert_eq!(info.role, KeyRole::Issuing as i32);
    let tbs = tbs_certificate(None, 30);
    let sig = c
        .sign(sign_request("issuing-1", Algorithm::EcdsaP256Sha256, &tbs))
        .await
        .expect("signs after restart")
        .into_inner()
        .signature;
    openssl_verify(&spki, Algorithm::EcdsaP256Sha256, &tbs, &sig).expect("verifies");
    // the audit chain continued across the restart
    let audit = dir.path().join("audit.jsonl");
    let records = audit_records(&audit);
    assert_eq!(records.len(), 3);
    signer.stop();
    let verify = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_certgate-signer"))
            .arg("verify-audit")
            .arg(path)
            .output()
            .expect("run")
            .status
            .success()
    };
    assert!(verify(&audit), "verify-audit accepts the intact log");
    let text = std::fs::read_to_string(&audit).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let dropped = format!("{}\n{}\n", lines[0], lines[2]);
    let edited = text.replacen("\"granted\"", "\"denied\"", 1);
    for (name, body) in [("dropped", dropped), ("edited", edited)] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        assert!(!verify(&p), "verify-audit must reject the {name} log");
    }
}

#[tokio::test]
async fn signer_refuses_to_start_with_a_wrong_kek() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_key(dir.path()).await;
    let other = certgate_signer::keystore::Kek::generate().expect("kek");
    std::fs::write(dir.path().join("kek"), other.to_base64().as_bytes()).expect("write");
    let stderr = start_fails(&write_config(dir.path(), ""));
    assert!(stderr.contains("authentication failed"), "{stderr}");
}

#[tokio::test]
async fn signer_refuses_a_key_file_whose_tenant_or_role_was_edited() {
    for (field, value) in [("tenant", "evil-tenant"), ("role", "ROOT")] {
        let dir = tempfile::tempdir().expect("tempdir");
        make_key(dir.path()).await;
        let path = dir.path().join("keys/issuing-1.key.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        v[field] = serde_json::json!(value);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
        let stderr = start_fails(&write_config(dir.path(), ""));
        assert!(
            stderr.contains("authentication failed"),
            "{field}: {stderr}"
        );
    }
}

#[test]
fn init_kek_writes_a_private_32_byte_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/kek");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_certgate-signer"))
            .arg("init-kek")
            .arg(&path)
            .output()
            .expect("run")
    };
    assert!(run().status.success());
    let meta = std::fs::metadata(&path).expect("kek written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let kek = certgate_signer::keystore::Kek::parse(&std::fs::read(&path).expect("read"));
    assert!(kek.is_ok());
    let before = std::fs::read(&path).expect("read");
    assert!(!run().status.success(), "must not overwrite");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}
