//! Helpers shared by the SCEP crate's integration tests: OpenSSL makes the keys, certificates
//! and CSRs the tests feed the crate, so the crate is checked against an independent encoder.

use std::path::Path;
use std::process::Command;

/// Runs `openssl args` in `dir` and asserts it succeeded.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bytes of fixture file `name` in `dir`.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read fixture")
}

/// A 2048-bit RSA key and a self-signed certificate for `subject` in `dir`: `{name}.key` (PEM),
/// `{name}.p8` (PKCS#8 DER), `{name}.der` and `{name}.pem` (the certificate).
pub fn self_signed(dir: &Path, name: &str, subject: &str) {
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key,
        ],
    );
    let p8 = format!("{name}.p8");
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &p8,
        ],
    );
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req", "-x509", "-new", "-key", &key, "-subj", subject, "-days", "2", "-out", &pem,
        ],
    );
    let der = format!("{name}.der");
    openssl(dir, &["x509", "-in", &pem, "-outform", "DER", "-out", &der]);
}
