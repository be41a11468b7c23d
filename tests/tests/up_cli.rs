//! The administrative `certgate` subcommands against a real signer and core: custodian keys,
//! profiles (versions), ceremonies (quorum), issuance under a named profile.

use certgate_e2e::{Fleet, openssl_csr};

fn ok(fleet: &Fleet, args: &[&str]) -> String {
    let (ok, out, err) = fleet.cli(args);
    assert!(
        ok,
        "certgate {args:?} failed:\n{out}\n{err}\n{}",
        fleet.logs()
    );
    out
}

#[test]
fn profiles_are_versioned_and_enforced_through_the_cli() {
    let mut fleet = Fleet::init();
    fleet.start_signer();
    fleet.start_core();
    let scratch = fleet.scratch();

    let profile = scratch.join("internal.toml");
    std::fs::write(
        &profile,
        r#"key_algorithms = ["ecdsa-p256"]
ekus = ["server_auth"]
key_usages = ["digital_signature"]
max_validity_seconds = 864000
default_validity_seconds = 86400
allowed_dns_suffixes = ["internal.test"]
max_sans = 5
"#,
    )
    .expect("write profile");
    let p = profile.to_string_lossy().to_string();
    assert!(
        ok(
            &fleet,
            &["profile", "create", "--name", "internal", "--file", &p]
        )
        .contains("version 1")
    );
    assert!(
        ok(
            &fleet,
            &["profile", "create", "--name", "internal", "--file", &p]
        )
        .contains("version 2")
    );
    let versions = ok(&fleet, &["profile", "versions", "--name", "internal"]);
    assert_eq!(versions.lines().count(), 2, "{versions}");
    let list = ok(&fleet, &["profile", "list"]);
    assert!(
        list.contains("internal") && list.contains("tls-server"),
        "{list}"
    );

    // A name outside the profile's suffixes is refused with the rule named.
    let (_k, outside) = openssl_csr(&scratch, "outside", "www.example.test");
    let (good, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--profile",
        "internal",
        "--csr",
        &outside.to_string_lossy(),
        "--out",
        &scratch.join("outside.pem").to_string_lossy(),
    ]);
    assert!(!good, "issued outside the profile: {out}");
    assert!(err.contains("profile.allowed_suffixes"), "{err}");

    let (_k, inside) = openssl_csr(&scratch, "inside", "db.internal.test");
    let out = ok(
        &fleet,
        &[
            "cert",
            "issue",
            "--profile",
            "internal",
            "--csr",
            &inside.to_string_lossy(),
            "--out",
            &scratch.join("inside.pem").to_string_lossy(),
        ],
    );
    assert!(out.contains("profile internal v2"), "{out}");
}

#[test]
fn ceremony_needs_its_quorum_before_execution() {
    let mut fleet = Fleet::init();
    fleet.start_signer();
    fleet.start_core();
    let scratch = fleet.scratch();

    // A custodian key the core does not know cannot approve.
    let stranger = scratch.join("stranger.pem");
    let out = ok(
        &fleet,
        &["custodian", "keygen", "--out", &stranger.to_string_lossy()],
    );
    assert!(out.contains("[[custodians]]"), "{out}");
    assert!(scratch.join("stranger.pem.pub.pem").exists());

    let out = ok(
        &fleet,
        &[
            "ca",
            "ceremony",
            "start",
            "--ca-id",
            "second-root",
            "--common-name",
            "certgate test root 2",
        ],
    );
    let id = out
        .split_whitespace()
        .next()
        .expect("ceremony id")
        .to_owned();

    let (good, _, err) = fleet.cli(&["ca", "ceremony", "execute", "--id", &id]);
    assert!(!good, "executed without approvals");
    assert!(err.contains("ceremony.quorum"), "{err}");

    let (good, _, err) = fleet.cli(&[
        "ca",
        "ceremony",
        "approve",
        "--id",
        &id,
        "--custodian",
        "dev",
        "--key",
        &stranger.to_string_lossy(),
    ]);
    assert!(!good, "a stranger's signature counted");
    assert!(err.contains("ceremony.bad_signature"), "{err}");

    let key = fleet.dev_custodian_key().to_string_lossy().to_string();
    ok(
        &fleet,
        &[
            "ca",
            "ceremony",
            "approve",
            "--id",
            &id,
            "--custodian",
            "dev",
            "--key",
            &key,
        ],
    );
    let out = ok(&fleet, &["ca", "ceremony", "execute", "--id", &id]);
    assert!(out.contains("EXECUTED"), "{out}");
    assert!(ok(&fleet, &["ca", "list"]).contains("second-root"));
    assert!(ok(&fleet, &["ca", "ceremony", "list"]).contains(&id));
    ok(&fleet, &["audit", "verify"]);
}
