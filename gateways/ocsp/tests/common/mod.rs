//! OpenSSL-driven fixtures: a CA, leaves and OCSP requests/responses made by the `openssl`
//! command line in a temporary directory, so the crate is checked against an independent
//! implementation rather than against itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::{Decode, DecodePem};
use x509_cert::Certificate;

/// A temporary PKI made with OpenSSL.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// Runs `openssl args…` in `dir`, panicking with stderr on failure; returns stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pki {
    /// A P-256 CA `ca.pem`/`ca.key` named `cn`, and no leaves yet.
    pub fn new(cn: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                &format!("/O=certgate test/CN={cn}"),
            ],
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A leaf `{name}.pem` with serial `serial_hex` (e.g. `0x8001…`), signed by the CA.
    pub fn leaf(&self, name: &str, serial_hex: &str) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}.example"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial_hex,
                "-days",
                "10",
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    pub fn cert(&self, name: &str) -> Certificate {
        Certificate::from_pem(self.read(&format!("{name}.pem"))).unwrap()
    }

    pub fn cert_der(&self, name: &str) -> Vec<u8> {
        use der::Encode;
        self.cert(name).to_der().unwrap()
    }

    /// `openssl ocsp -issuer ca.pem <extra…> -reqout {out}`; returns the DER.
    pub fn request(&self, out: &str, extra: &[&str]) -> Vec<u8> {
        let mut args = vec!["ocsp", "-issuer", "ca.pem"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-reqout", out]);
        openssl(self.dir.path(), &args);
        self.read(out)
    }

    /// Writes `index.txt` with every `(serial_hex_without_0x, status)` as valid (`V`) or revoked
    /// (`R`) and runs the OpenSSL responder on `req`, with `-ndays 4`; returns the DER response.
    pub fn respond(&self, req: &str, out: &str, entries: &[(&str, char)]) -> Vec<u8> {
        let mut index = String::new();
        for (serial, status) in entries {
            let revoked = if *status == 'R' { "260101000000Z" } else { "" };
            index.push_str(&format!(
                "{status}\t301231000000Z\t{revoked}\t{serial}\tunknown\t/CN=x\n"
            ));
        }
        std::fs::write(self.path("index.txt"), index).unwrap();
        openssl(
            self.dir.path(),
            &[
                "ocsp",
                "-index",
                "index.txt",
                "-CA",
                "ca.pem",
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-reqin",
                req,
                "-respout",
                out,
                "-ndays",
                "4",
            ],
        );
        self.read(out)
    }

    /// A CRL from `openssl ca -gencrl` (7 days), as DER.
    pub fn crl(&self) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = CA_default\n[CA_default]\ndatabase = crlindex.txt\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n",
        )
        .unwrap();
        std::fs::write(d.join("crlindex.txt"), "").unwrap();
        std::fs::write(d.join("crlnumber"), "1000\n").unwrap();
        openssl(
            d,
            &[
                "ca", "-gencrl", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
                "-out", "crl.pem",
            ],
        );
        openssl(
            d,
            &[
                "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
            ],
        );
        self.read("crl.der")
    }
}

/// Parses OpenSSL's `Nov 25 09:05:00 2026 GMT` (day space-padded).
pub fn openssl_time(s: &str) -> SystemTime {
    let fmt = time::format_description::parse_borrowed::<1>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )
    .unwrap();
    let t = time::PrimitiveDateTime::parse(s.trim(), &fmt)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .assume_utc();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap())
}

/// The value after `label` on the first line of `text` containing it.
pub fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("{label} not in {text}"))
        .trim()
}

/// A certificate's serial content octets.
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    Certificate::from_der(der)
        .unwrap()
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec()
}
