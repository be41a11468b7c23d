//! Small helpers shared by the SCEP end-to-end tests: run `openssl`, POST a PKIOperation with
//! curl, and turn paths into command-line strings.

use std::path::Path;
use std::process::Command;

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
