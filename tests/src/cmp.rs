//! A driver for OpenSSL's real `openssl cmp` client against a running fleet, shared by the CMP
//! end-to-end tests so each test states only its requests and checks.

use std::path::PathBuf;
use std::process::Command;

use crate::{Fleet, http_get, run};

/// One `openssl cmp` client configuration: the fleet it talks to, the server URL and the MAC
/// credentials (`-ref`/`-secret`) used by [`Cmp::mac`].
pub struct Cmp<'a> {
    /// The fleet whose dev root and chain the client trusts; files go in its scratch dir.
    pub fleet: &'a Fleet,
    /// The CMP server URL (`-server`).
    pub server: String,
    /// The MAC sender reference (`-ref`).
    pub reference: String,
    /// The MAC secret as an OpenSSL password argument (`pass:...`).
    pub secret: String,
    /// `-msg_timeout` in seconds (generous: the CI machine is slow).
    pub msg_timeout: u32,
}

impl<'a> Cmp<'a> {
    /// A client for `fleet`'s `/.well-known/cmp` with the dev MAC credentials
    /// (`cmp_reference`, `cmp_secret` in dev-credentials.toml).
    pub fn dev(fleet: &'a Fleet, msg_timeout: u32) -> Self {
        let creds = fleet.credentials();
        Cmp {
            fleet,
            server: format!("http://{}/.well-known/cmp", fleet.http),
            reference: creds.get("cmp_reference").expect("cmp_reference").clone(),
            secret: format!("pass:{}", creds.get("cmp_secret").expect("cmp_secret")),
            msg_timeout,
        }
    }
}

impl Cmp<'_> {
    /// The path of `name` in the fleet's scratch dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.fleet.scratch().join(name)
    }

    /// [`Cmp::path`] as a string, for command lines.
    pub fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A fresh P-256 key written to `name` in the scratch dir; returns its path.
    pub fn key(&self, name: &str) -> String {
        let (ok, _, err) = run(Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &self.p(name),
        ]));
        assert!(ok, "genpkey: {err}");
        self.p(name)
    }

    /// Runs `openssl cmp` with the common arguments plus `args`; (success, stdout+stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let root = self.fleet.root_pem().to_string_lossy().into_owned();
        let timeout = self.msg_timeout.to_string();
        let mut cmd = Command::new("openssl");
        cmd.arg("cmp")
            .args(["-server", &self.server, "-trusted", &root])
            .args(["-unprotected_errors", "-msg_timeout", &timeout])
            .args(args);
        let (ok, out, err) = run(&mut cmd);
        (ok, format!("{out}\n{err}"))
    }

    /// `args` prefixed with the MAC credentials (`-ref`, `-secret`).
    pub fn mac<'b>(&'b self, args: &[&'b str]) -> Vec<&'b str> {
        let mut v = vec![
            "-ref",
            self.reference.as_str(),
            "-secret",
            self.secret.as_str(),
        ];
        v.extend_from_slice(args);
        v
    }

    /// A request signature-protected by `cert`/`key`.
    pub fn signed(
        &self,
        cert: &str,
        key: &str,
        cmd: &str,
        newkey: &str,
        out: &str,
    ) -> (bool, String) {
        let chain = self.fleet.chain_pem().to_string_lossy().into_owned();
        let certout = self.p(out);
        let mut args = vec![
            "-cert",
            cert,
            "-key",
            key,
            "-extracerts",
            &chain,
            "-cmd",
            cmd,
            "-newkey",
            newkey,
            "-certout",
            &certout,
        ];
        if cmd == "cr" {
            args.extend(["-subject", "/CN=cmp-signed"]);
        }
        self.run(&args)
    }

    /// Asserts `openssl verify` accepts `cert` against the dev root and chain.
    pub fn verify(&self, cert: &str) {
        let (ok, out, err) = run(Command::new("openssl").args([
            "verify",
            "-CAfile",
            &self.fleet.root_pem().to_string_lossy(),
            "-untrusted",
            &self.fleet.chain_pem().to_string_lossy(),
            cert,
        ]));
        assert!(ok, "openssl verify {cert}: {out}{err}");
    }

    /// The certificate's serial, hex (as `openssl x509 -serial` prints it).
    pub fn serial(&self, cert: &str) -> String {
        let (ok, out, err) =
            run(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", cert]));
        assert!(ok, "x509 -serial: {err}");
        out.trim()
            .strip_prefix("serial=")
            .expect("serial= line")
            .to_owned()
    }
}

/// The edge's count of successful Core.Issue calls (admin /metrics).
pub fn issued(fleet: &Fleet) -> u64 {
    let (status, body) = http_get(fleet.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("certgate_edge_core_call_duration_seconds_count")
                && l.contains("method=\"issue\"")
                && l.contains("outcome=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
