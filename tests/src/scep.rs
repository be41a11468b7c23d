//! Small helpers shared by the SCEP end-to-end tests: run `openssl`, POST a PKIOperation with
//! curl, and turn paths into command-line strings.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Fleet;

/// `p` as a string, for command lines.
pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs `openssl args`, asserts it succeeded, and returns its stdout.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// curl POST of a PKIOperation to `url`, with the request and reply files named `name` in
/// `dir`: (HTTP status, body).
pub fn post(url: &str, msg: &[u8], dir: &Path, name: &str) -> (u16, Vec<u8>) {
    let req = dir.join(format!("{name}.req"));
    let rep = dir.join(format!("{name}.rep"));
    std::fs::write(&req, msg).expect("write request");
    let o = Command::new("curl")
        .args(["-s", "-o", &s(&rep), "-w", "%{http_code}"])
        .args([
            "-H",
            "Content-Type: application/x-pki-message",
            "--data-binary",
        ])
        .arg(format!("@{}", s(&req)))
        .arg(format!("{url}?operation=PKIOperation"))
        .output()
        .expect("curl runs");
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("http code");
    (code, std::fs::read(&rep).unwrap_or_default())
}

/// A SCEP client's material, DER: PKCS#8 key, self-signed certificate, CSR.
pub struct Client {
    /// The RSA-2048 private key, PKCS#8.
    pub key_pkcs8: Vec<u8>,
    /// The self-signed certificate that signs the client's requests.
    pub cert_der: Vec<u8>,
    /// A CSR for `CN=<csr_cn>` with the challengePassword.
    pub csr_der: Vec<u8>,
}

/// An RSA-2048 client key (`client.key` in `dir`), its self-signed certificate for `subject`
/// (`client.der`) and a CSR for `CN=<csr_cn>` with `challenge` (`client.csr`), made by OpenSSL.
pub fn client(dir: &Path, subject: &str, csr_cn: &str, challenge: &str) -> Client {
    let key = dir.join("client.key");
    let p = |n: &str| -> PathBuf { dir.join(n) };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &s(&key),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &s(&key),
        "-subj",
        subject,
        "-days",
        "1",
        "-outform",
        "DER",
        "-out",
        &s(&p("client.der")),
    ]);
    std::fs::write(
        p("req.cnf"),
        format!(
            "[req]\nprompt=no\ndistinguished_name=dn\nattributes=attrs\n[dn]\nCN={csr_cn}\n[attrs]\nchallengePassword={challenge}\n"
        ),
    )
    .expect("write req.cnf");
    openssl(&[
        "req",
        "-new",
        "-key",
        &s(&key),
        "-config",
        &s(&p("req.cnf")),
        "-outform",
        "DER",
        "-out",
        &s(&p("client.csr")),
    ]);
    Client {
        key_pkcs8: openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-outform",
            "DER",
            "-in",
            &s(&key),
        ]),
        cert_der: std::fs::read(p("client.der")).expect("client cert"),
        csr_der: std::fs::read(p("client.csr")).expect("client csr"),
    }
}

/// The fleet's dev SCEP challenge password (`scep_challenge` in dev-credentials.toml).
pub fn dev_challenge(fleet: &Fleet) -> String {
    fleet
        .credentials()
        .get("scep_challenge")
        .cloned()
        .expect("scep_challenge in dev-credentials.toml")
}
