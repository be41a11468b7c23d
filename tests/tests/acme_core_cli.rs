//! The ACME side of the core as real processes: `certgate init` writes the dev `[acme]` section,
//! `certgate acme settings` / `certgate acme eab create` (CLI → Admin over the core's Unix socket)
//! change what the core's `Acme` service answers, and an EAB key printed by the CLI binds exactly
//! one account when presented to the real `certgate-core` (real signer behind it). The HMAC key
//! never reaches the audit log.
#![allow(clippy::unwrap_used, missing_docs)]

use certgate_e2e::Fleet;
use certgate_proto::acme::acme_client::AcmeClient;
use certgate_proto::acme::{GetTenantMetaRequest, NewAccountRequest};
use certgate_proto::transport::unix_channel;

fn line_value(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {label:?} in\n{out}"))
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A fresh P-256 account key as a JWK JSON string.
fn account_jwk() -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let pk = key.public_key().as_ref();
    serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64url(&pk[1..33]), "y": b64url(&pk[33..65])})
        .to_string()
}

/// An RFC 8555 §7.3.4 binding: HS256 over the account JWK, `kid` and `url` protected.
fn eab(kid: &str, mac_key: &[u8], jwk: &str, url: &str) -> Vec<u8> {
    let protected = b64url(
        serde_json::json!({"alg": "HS256", "kid": kid, "url": url})
            .to_string()
            .as_bytes(),
    );
    let payload = b64url(jwk.as_bytes());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, mac_key);
    let sig = aws_lc_rs::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    serde_json::json!({"protected": protected, "payload": payload, "signature": b64url(sig.as_ref())})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_settings_and_eab_keys_from_the_cli_drive_the_core() {
    let mut fleet = Fleet::init();
    let core_toml = std::fs::read_to_string(fleet.core_config()).unwrap();
    assert!(
        core_toml.contains("[acme]\ndev_validate_on_localhost = true"),
        "{core_toml}"
    );
    fleet.start_signer();
    fleet.start_core();
    let mut acme = AcmeClient::new(unix_channel(fleet.core_socket()));

    let before = acme
        .get_tenant_meta(GetTenantMetaRequest {
            tenant: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!before.external_account_required);
    assert!(before.profiles.contains_key(&before.default_profile));

    let (ok, out, err) = fleet.cli(&[
        "acme",
        "settings",
        "--eab-required",
        "--tos",
        "https://example.org/tos",
        "--website",
        "https://example.org/",
        "--caa",
        "ca.example",
    ]);
    assert!(ok, "{out}{err}");
    let meta = acme
        .get_tenant_meta(GetTenantMetaRequest {
            tenant: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(meta.external_account_required);
    assert_eq!(meta.terms_of_service, "https://example.org/tos");
    assert_eq!(meta.website, "https://example.org/");
    assert_eq!(meta.caa_identities, ["ca.example"]);

    let (ok, _, err) = fleet.cli(&["acme", "settings", "--tenant", "no-such-tenant"]);
    assert!(!ok);
    assert!(err.contains("tenant.unknown"), "{err}");
    let (ok, _, err) = fleet.cli(&["acme", "settings", "--tos", "ftp://example.org/"]);
    assert!(!ok);
    assert!(err.contains("acme.terms_of_service"), "{err}");

    let (ok, out, err) = fleet.cli(&["acme", "eab", "create"]);
    assert!(ok, "{out}{err}");
    let kid = line_value(&out, "key id");
    let hmac_b64 = line_value(&out, "hmac key");
    let mac = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&hmac_b64)
            .unwrap()
    };
    assert_eq!(mac.len(), 32);
    let (ok, out2, _) = fleet.cli(&["acme", "eab", "create"]);
    assert!(ok);
    assert_ne!(line_value(&out2, "key id"), kid, "every key is new");

    let url = format!("https://{}/acme/new-acct", fleet.https);
    let new_account = |jwk: String, binding: Vec<u8>| NewAccountRequest {
        tenant: "default".into(),
        jwk_json: jwk,
        terms_agreed: true,
        external_account_binding_json: binding,
        new_account_url: url.clone(),
        ..Default::default()
    };
    let jwk = account_jwk();
    let s = acme
        .new_account(new_account(jwk.clone(), Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(
        certgate_proto::RpcError::from_status(&s).rule,
        "externalAccountRequired"
    );
    let created = acme
        .new_account(new_account(jwk.clone(), eab(&kid, &mac, &jwk, &url)))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    assert_eq!(created.account.unwrap().eab_key_id, kid);
    let other = account_jwk();
    let s = acme
        .new_account(new_account(other.clone(), eab(&kid, &mac, &other, &url)))
        .await
        .unwrap_err();
    assert_eq!(
        certgate_proto::RpcError::from_status(&s).rule,
        "unauthorized"
    );

    // The audit log names the key id, never the key.
    let db = fleet.data_dir().join("core/core.db");
    let out = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(&db)
        .arg("SELECT kind, details FROM audit WHERE kind LIKE 'acme.%'")
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("acme.eab.create"), "{audit}");
    assert!(audit.contains(&kid), "{audit}");
    assert!(
        !audit.contains(&hmac_b64),
        "the HMAC key leaked into the audit log"
    );
}
