//! SoftHSMv2 end to end through the real `certgate-signer` binary: a token initialised in a
//! temporary directory (SOFTHSM2_CONF), keys generated on the token through GenerateKey, signed
//! through Sign, verified with OpenSSL; keys come back after a restart; an edited sidecar is
//! refused. CI installs softhsm2: when the module is missing this test FAILS, it never skips.

mod common;

use std::path::Path;
use std::process::Command;

use certgate_proto::signer::{
    Algorithm, GenerateKeyRequest, KeyBackend, KeyRole, KeyType, PublicKeyRequest,
};
use common::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn init_token(dir: &Path) -> String {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSMv2 is not installed ({MODULE} missing): apt-get install softhsm2 opensc (.ci/run does)"
    );
    std::fs::create_dir_all(dir.join("tokens")).expect("mkdir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .expect("conf");
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "certgate",
            "--so-pin",
            "1234",
            "--pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util must be installed (package softhsm2)");
    assert!(
        out.status.success(),
        "init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("pin"), "5678\n").expect("pin");
    conf.to_str().expect("utf8").to_owned()
}

const PKCS11: &str = "[pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"certgate\"\npin_file = \"pin\"\n";

fn p11_request(id: &str, role: KeyRole, kt: KeyType) -> GenerateKeyRequest {
    GenerateKeyRequest {
        backend: KeyBackend::Pkcs11 as i32,
        ..generate_request(id, role, kt)
    }
}

#[tokio::test]
async fn softhsm_key_is_generated_on_the_token_signs_and_verifies_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = init_token(dir.path());
    let config = write_config(dir.path(), PKCS11);
    let env = [("SOFTHSM2_CONF", conf.as_str())];
    let signer = SignerProcess::start(&config, &dir.path().join("signer.sock"), &env);
    let mut c = client(&signer.socket);

    let ec = c
        .generate_key(p11_request(
            "hsm-issuing",
            KeyRole::Issuing,
            KeyType::EcP256,
        ))
        .await
        .expect("generate EC on the token")
        .into_inner();
    assert_eq!(ec.backend, KeyBackend::Pkcs11 as i32);
    let tbs = tbs_certificate(None, 30);
    let sig = c
        .sign(sign_request(
            "hsm-issuing",
            Algorithm::EcdsaP256Sha256,
            &tbs,
        ))
        .await
        .expect("sign on the token")
        .into_inner()
        .signature;
    openssl_verify(&ec.public_key_der, Algorithm::EcdsaP256Sha256, &tbs, &sig)
        .expect("EC verifies");
    // the policy applies to token keys too
    let e = c
        .sign(sign_request(
            "hsm-issuing",
            Algorithm::EcdsaP256Sha256,
            &tbs_certificate(Some(None), 30),
        ))
        .await
        .expect_err("CA cert refused");
    assert_eq!(rule_of(&e), "policy.issuing.ca_certificate");

    let p384 = c
        .generate_key(p11_request("hsm-p384", KeyRole::Ra, KeyType::EcP384))
        .await
        .expect("generate P-384")
        .into_inner();
    let sig = c
        .sign(sign_request(
            "hsm-p384",
            Algorithm::EcdsaP384Sha384,
            b"protected part",
        ))
        .await
        .expect("sign")
        .into_inner()
        .signature;
    openssl_verify(
        &p384.public_key_der,
        Algorithm::EcdsaP384Sha384,
        b"protected part",
        &sig,
    )
    .expect("P-384 verifies");

    let rsa = c
        .generate_key(p11_request("hsm-rsa", KeyRole::Ra, KeyType::Rsa2048))
        .await
        .expect("generate RSA on the token")
        .into_inner();
    for alg in [
        Algorithm::RsaPkcs1Sha256,
        Algorithm::RsaPssSha256,
        Algorithm::RsaPssSha384,
    ] {
        let sig = c
            .sign(sign_request("hsm-rsa", alg, b"protected part"))
            .await
            .expect("sign RSA")
            .into_inner()
            .signature;
        openssl_verify(&rsa.public_key_der, alg, b"protected part", &sig)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    signer.stop();

    // the private key is on the token, not in the key directory
    let listing = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--module",
            MODULE,
            "--login",
            "--pin",
            "5678",
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .expect("pkcs11-tool (package opensc)");
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(text.contains("hsm-issuing"), "{text}");

    // restart: token keys are found again through their sidecars
    let signer = SignerProcess::start(&config, &dir.path().join("signer.sock"), &env);
    let mut c = client(&signer.socket);
    let again = c
        .public_key(PublicKeyRequest {
            key_id: "hsm-issuing".into(),
        })
        .await
        .expect("key is back")
        .into_inner();
    assert_eq!(again.public_key_der, ec.public_key_der);
    let sig = c
        .sign(sign_request(
            "hsm-issuing",
            Algorithm::EcdsaP256Sha256,
            &tbs,
        ))
        .await
        .expect("sign after restart")
        .into_inner()
        .signature;
    openssl_verify(&ec.public_key_der, Algorithm::EcdsaP256Sha256, &tbs, &sig)
        .expect("verifies after restart");
    signer.stop();

    // an edited sidecar (role raised to ROOT) is refused at start-up
    let sidecar = dir.path().join("keys/hsm-issuing.p11.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("read")).expect("json");
    v["role"] = serde_json::json!("ROOT");
    std::fs::write(&sidecar, serde_json::to_vec(&v).expect("json")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_certgate-signer"))
        .env("SOFTHSM2_CONF", &conf)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the signer started with an edited sidecar");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(stderr.contains("authentication failed"), "{stderr}");
}
