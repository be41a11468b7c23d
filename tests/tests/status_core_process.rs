//! The core's status engine with the REAL signer process (issue 5, core side): a tenant set to a
//! delegated OCSP responder gets responses signed by a signer key of role OCSP whose certificate
//! the issuing CA key signed (the signer's key policy accepts both), verified by `openssl ocsp`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::{Fleet, openssl_csr, run};
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::{CertRef, GetCaChainRequest, GetCrlRequest, GetOcspRequest};

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("openssl").args(args).current_dir(dir));
    (ok, format!("{out}{err}"))
}

#[test]
fn delegated_responder_and_crls_with_the_real_signer() {
    let mut fleet = Fleet::init();
    let core_toml = fleet.core_config();
    let mut text = std::fs::read_to_string(&core_toml).expect("core.toml");
    text.push_str("\n[status]\ndefault_responder = \"delegated\"\n");
    std::fs::write(&core_toml, text).expect("write core.toml");
    fleet.start_signer();
    fleet.start_core();

    let scratch = fleet.scratch();
    let (_key, csr) = openssl_csr(&scratch, "leaf", "leaf.example.test");
    let leaf = scratch.join("leaf.pem");
    let (ok, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &csr.to_string_lossy(),
        "--out",
        &leaf.to_string_lossy(),
    ]);
    assert!(ok, "cert issue: {out}{err}");
    let serial = out
        .split_whitespace()
        .nth(1)
        .expect("serial in the output")
        .to_owned();
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", &serial, "--reason", "1"]);
    assert!(ok, "revoke: {out}{err}");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (chain, issuer_id, resp, crl) = rt.block_on(async {
        let mut core =
            CoreClient::new(certgate_proto::transport::unix_channel(fleet.core_socket()));
        let chain = core
            .get_ca_chain(GetCaChainRequest {
                tenant: "default".into(),
                issuer_id: String::new(),
            })
            .await
            .expect("GetCaChain")
            .into_inner();
        let deadline = Instant::now() + Duration::from_secs(20);
        let resp = loop {
            let r = core
                .get_ocsp(GetOcspRequest {
                    tenant: "default".into(),
                    certs: vec![CertRef {
                        issuer_id: chain.issuer_id.clone(),
                        hash_alg: "sha1".into(),
                        serial_hex: serial.clone(),
                    }],
                })
                .await;
            match r {
                Ok(r) => break r.into_inner(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "GetOcsp: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let crl = core
            .get_crl(GetCrlRequest {
                tenant: "default".into(),
                issuer_id: chain.issuer_id.clone(),
                shard: "full".into(),
            })
            .await
            .expect("GetCrl")
            .into_inner();
        (chain.chain_der, chain.issuer_id, resp, crl)
    });
    assert_eq!(resp.issuer_id, issuer_id);
    std::fs::write(scratch.join("issuing.pem"), pem("CERTIFICATE", &chain[0])).expect("write");
    let others: String = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(scratch.join("chain-all.pem"), others).expect("write");
    std::fs::write(scratch.join("resp.der"), &resp.response_der).expect("write");
    let root = fleet.root_pem();
    let (ok, out) = openssl(
        &scratch,
        &[
            "ocsp",
            "-respin",
            "resp.der",
            "-issuer",
            "issuing.pem",
            "-sha1",
            "-cert",
            "leaf.pem",
            "-CAfile",
            &root.to_string_lossy(),
            "-verify_other",
            "chain-all.pem",
            "-no_nonce",
            "-resp_text",
        ],
    );
    assert!(ok && out.contains("Response verify OK"), "{out}");
    // Either the precomputed revoked response or one signed on demand: never a stale "good".
    assert!(out.contains("leaf.pem: revoked"), "{out}");
    assert!(
        out.contains("OCSP responder"),
        "the delegated responder's certificate: {out}"
    );
    assert!(
        out.contains("OCSP Signing") && out.contains("OCSP No Check"),
        "{out}"
    );

    // The full CRL, signed by the issuing key in the real signer.
    std::fs::write(scratch.join("full.der"), &crl.crl_der).expect("write");
    let (ok, out) = openssl(
        &scratch,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "full.der",
            "-CAfile",
            "issuing.pem",
            "-noout",
        ],
    );
    assert!(ok && out.contains("verify OK"), "{out}");
}
