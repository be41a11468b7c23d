//! CMP signature protection by a revoked certificate (RFC 9483 §3.5: revocation is part of the
//! protecting certificate's path validation), end to end: OpenSSL's real `openssl cmp` client
//! against `certgate up` (real signer, core and edge processes on loopback).
//!
//! An ir with the dev MAC credentials gives a certificate; a cr signed with it works; after
//! `certgate revoke` the same certificate's cr and kur are refused with an error message
//! carrying signerNotTrusted and nothing is issued; a cr signed by another, unrevoked
//! certificate of the same CA still works.

use std::time::Duration;

use certgate_e2e::cmp::{Cmp, issued};
use certgate_e2e::{Fleet, start_up};

#[test]
fn a_revoked_protecting_certificate_is_signer_not_trusted() {
    let fleet = Fleet::uninitialised();
    let mut up = start_up(&fleet);
    let c = Cmp::dev(&fleet, 30);

    // Two certificates from MAC-protected irs.
    let mut certs = Vec::new();
    for name in ["a", "b"] {
        let key = c.key(&format!("{name}.key"));
        let certout = c.p(&format!("{name}.pem"));
        let (ok, out) = c.run(&[
            "-ref",
            &c.reference,
            "-secret",
            &c.secret,
            "-cmd",
            "ir",
            "-newkey",
            &key,
            "-subject",
            &format!("/CN=cmp-revoked-{name}"),
            "-implicit_confirm",
            "-certout",
            &certout,
        ]);
        assert!(ok, "ir {name}: {out}");
        c.verify(&certout);
        certs.push((certout, key));
    }
    let (a_cert, a_key) = &certs[0];
    let (b_cert, b_key) = &certs[1];

    // Before revocation: a cr signed by A is issued.
    let k = c.key("k1.pem");
    let (ok, out) = c.signed(a_cert, a_key, "cr", &k, "cr1.pem");
    assert!(ok, "cr signed by A before revocation: {out}");
    c.verify(&c.p("cr1.pem"));

    // Revoke A through the core (`certgate revoke`).
    let serial = c.serial(a_cert);
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", &serial, "--reason", "1"]);
    assert!(ok && out.contains("revoked"), "revoke: {out}{err}");

    // After: cr and kur signed by A are refused with signerNotTrusted, nothing issued.
    let before = issued(&fleet);
    for cmd in ["cr", "kur"] {
        let k = c.key(&format!("k-{cmd}.pem"));
        let (ok, out) = c.signed(a_cert, a_key, cmd, &k, &format!("{cmd}-revoked.pem"));
        assert!(
            !ok,
            "{cmd} signed by a revoked certificate must fail: {out}"
        );
        assert!(
            out.contains("signerNotTrusted") && out.contains("protecting certificate is revoked"),
            "{cmd} by a revoked signer → signerNotTrusted: {out}"
        );
        assert!(
            !c.path(&format!("{cmd}-revoked.pem")).exists(),
            "{cmd}: no certificate written"
        );
    }
    assert_eq!(
        issued(&fleet),
        before,
        "nothing issued for the revoked signer"
    );

    // Another certificate of the same CA, not revoked, still signs requests.
    let k = c.key("k2.pem");
    let (ok, out) = c.signed(b_cert, b_key, "cr", &k, "cr2.pem");
    assert!(ok, "cr signed by B: {out}");
    c.verify(&c.p("cr2.pem"));
    assert_eq!(issued(&fleet), before + 1);

    up.terminate(Duration::from_secs(20));
}
