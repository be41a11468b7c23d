//! SCEP core side with real processes: `certgate init` (which provisions the dev
//! `scep_challenge`), then the real `certgate-signer` and `certgate-core` on their Unix sockets.
//! The core's Scep service creates the RA (a SCEP_RA key in the real signer), unwraps a key that
//! `openssl pkeyutl` encrypted to the RA certificate through the signer's Decrypter service, and
//! checks the dev challenge.

use std::process::Command;

use certgate_e2e::{Fleet, run};
use certgate_proto::scep::scep_client::ScepClient;
use certgate_proto::scep::{CheckChallengeRequest, DecryptKeyRequest, GetRaChainRequest};
use certgate_proto::transport::unix_channel;

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = "-----BEGIN CERTIFICATE-----\n".to_owned();
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn core_and_signer_processes_serve_the_scep_ra_and_the_dev_challenge() {
    let mut f = Fleet::init();
    f.start_signer();
    f.start_core();
    let mut scep = ScepClient::new(unix_channel(f.core_socket()));
    let chain = scep
        .get_ra_chain(GetRaChainRequest {
            tenant: "default".into(),
        })
        .await
        .expect("GetRaChain")
        .into_inner()
        .chain_der;
    assert!(chain.len() >= 2, "RA certificate and its issuers");
    let ra = f.scratch().join("scep-ra.pem");
    let untrusted = f.scratch().join("scep-untrusted.pem");
    std::fs::write(&ra, pem(&chain[0])).expect("write");
    let issuers: String = chain[1..].iter().map(|d| pem(d)).collect();
    std::fs::write(&untrusted, issuers).expect("write");
    let (ok, out, err) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(f.root_pem())
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&ra));
    assert!(ok, "openssl verify of the RA certificate: {out}{err}");

    // a content-encryption key wrapped by openssl to the RA certificate, unwrapped by the signer
    let cek: Vec<u8> = (1u8..=16).collect();
    let cek_path = f.scratch().join("cek.bin");
    let enc_path = f.scratch().join("cek.enc");
    std::fs::write(&cek_path, &cek).expect("write");
    let (ok, out, err) = run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-certin", "-inkey"])
        .arg(&ra)
        .arg("-in")
        .arg(&cek_path)
        .arg("-out")
        .arg(&enc_path));
    assert!(ok, "openssl pkeyutl: {out}{err}");
    let got = scep
        .decrypt_key(DecryptKeyRequest {
            tenant: "default".into(),
            encrypted_key: std::fs::read(&enc_path).expect("read"),
            key_encryption_alg_der: hex::decode("300d06092a864886f70d0101010500").expect("hex"),
        })
        .await
        .expect("DecryptKey through the real signer")
        .into_inner()
        .content_encryption_key;
    assert_eq!(got, cek);

    // the dev challenge from dev-credentials.toml is the default tenant's static challenge
    let creds = f.credentials();
    let challenge = creds.get("scep_challenge").expect("scep_challenge");
    for (c, want) in [(challenge.as_bytes(), true), (b"not-it".as_slice(), false)] {
        let ok = scep
            .check_challenge(CheckChallengeRequest {
                tenant: "default".into(),
                profile: String::new(),
                challenge: c.to_vec(),
            })
            .await
            .expect("CheckChallenge")
            .into_inner()
            .ok;
        assert_eq!(ok, want);
    }
}
