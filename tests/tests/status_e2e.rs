//! Revocation status end to end (issue 5): real signer, core and edge processes; OpenSSL's
//! `ocsp`, `crl` and `verify` as the relying party. Certificates come from `certgate cert issue`
//! and are revoked with `certgate revoke`; the edges learn about it over `WatchStatus`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certgate_e2e::{ChildGuard, Fleet, bin, free_port, http_get, openssl_csr, run};

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("openssl").args(args).current_dir(dir));
    (ok, format!("{out}{err}"))
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = openssl(dir, args);
    assert!(ok, "openssl {args:?}:\n{out}");
    out
}

/// Issues a certificate for `name` with the CLI; returns (PEM path, serial hex).
fn issue(fleet: &Fleet, name: &str) -> (PathBuf, String) {
    let scratch = fleet.scratch();
    let (_key, csr) = openssl_csr(&scratch, name, &format!("{name}.example.test"));
    let pem = scratch.join(format!("{name}.pem"));
    let (ok, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &csr.to_string_lossy(),
        "--out",
        &pem.to_string_lossy(),
    ]);
    assert!(ok, "cert issue: {out}{err}\n{}", fleet.logs());
    let serial = out
        .split_whitespace()
        .nth(1)
        .expect("serial in the output")
        .to_owned();
    (pem, serial)
}

fn revoke(fleet: &Fleet, serial: &str, reason: &str) {
    let (ok, out, err) = fleet.cli(&["revoke", "--serial", serial, "--reason", reason]);
    assert!(ok && out.contains("revoked"), "revoke: {out}{err}");
}

/// The issuing CA (first certificate of chain.pem) as its own PEM file.
fn issuing_pem(fleet: &Fleet) -> PathBuf {
    let out = fleet.scratch().join("issuing.pem");
    openssl_ok(
        &fleet.scratch(),
        &[
            "x509",
            "-in",
            &fleet.chain_pem().to_string_lossy(),
            "-out",
            &out.to_string_lossy(),
        ],
    );
    out
}

/// `openssl ocsp` against `addr`, verifying the response against root.pem (+ chain); returns
/// the combined output.
fn ocsp(fleet: &Fleet, addr: SocketAddr, leaf: &Path) -> String {
    let (_, out) = openssl(
        &fleet.scratch(),
        &[
            "ocsp",
            "-issuer",
            &issuing_pem(fleet).to_string_lossy(),
            "-cert",
            &leaf.to_string_lossy(),
            "-url",
            &format!("http://{addr}/ocsp"),
            "-CAfile",
            &fleet.root_pem().to_string_lossy(),
            "-verify_other",
            &fleet.chain_pem().to_string_lossy(),
            "-no_nonce",
        ],
    );
    out
}

/// The status OpenSSL printed for `leaf` (`good`, `revoked`, `unknown`), if any.
fn status_of<'a>(out: &'a str, leaf: &Path) -> Option<&'a str> {
    let prefix = format!("{}: ", leaf.to_string_lossy());
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
}

/// A DER OCSP request (SHA-1 CertID, no nonce) for `leaf`.
fn ocsp_request(fleet: &Fleet, leaf: &Path) -> Vec<u8> {
    let out = leaf.with_extension("req.der");
    openssl_ok(
        &fleet.scratch(),
        &[
            "ocsp",
            "-issuer",
            &issuing_pem(fleet).to_string_lossy(),
            "-cert",
            &leaf.to_string_lossy(),
            "-no_nonce",
            "-reqout",
            &out.to_string_lossy(),
        ],
    );
    std::fs::read(out).expect("request")
}

fn post_ocsp(addr: SocketAddr, der: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST /ocsp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        der.len()
    )
    .ok()?;
    s.write_all(der).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&raw[..split])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, raw[split + 4..].to_vec()))
}

/// Whether `der` is a successful OCSP response (responseStatus 0), not an error constant.
fn is_successful(der: &[u8]) -> bool {
    der.len() > 5 && der.windows(3).take(8).any(|w| w == [0x0a, 0x01, 0x00])
}

/// `openssl ocsp -respin` on a response body: verifies it and returns the status of `leaf`.
fn respin_status(fleet: &Fleet, leaf: &Path, der: &[u8], tag: &str) -> String {
    let path = fleet.scratch().join(format!("resp-{tag}.der"));
    std::fs::write(&path, der).expect("write response");
    let (_, out) = openssl(
        &fleet.scratch(),
        &[
            "ocsp",
            "-respin",
            &path.to_string_lossy(),
            "-issuer",
            &issuing_pem(fleet).to_string_lossy(),
            "-cert",
            &leaf.to_string_lossy(),
            "-CAfile",
            &fleet.root_pem().to_string_lossy(),
            "-verify_other",
            &fleet.chain_pem().to_string_lossy(),
            "-no_nonce",
        ],
    );
    assert!(out.contains("Response verify OK"), "{out}");
    status_of(&out, leaf).unwrap_or("none").to_owned()
}

/// Polls until OpenSSL sees `want` for `leaf` at `addr`.
fn wait_status(
    fleet: &Fleet,
    addr: SocketAddr,
    leaf: &Path,
    want: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = ocsp(fleet, addr, leaf);
        if status_of(&out, leaf) == Some(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{} never {want} at {addr}; last answer:\n{out}\n{}",
            leaf.display(),
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The path part of the certificate's CRL distribution point (`/crl/{issuer}/{shard}.crl`).
fn crl_dp_path(fleet: &Fleet, leaf: &Path) -> String {
    let out = openssl_ok(
        &fleet.scratch(),
        &[
            "x509",
            "-in",
            &leaf.to_string_lossy(),
            "-noout",
            "-ext",
            "crlDistributionPoints",
        ],
    );
    let uri = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("URI:"))
        .unwrap_or_else(|| panic!("no CRL DP URI in {out}"));
    let after_scheme = uri.split_once("://").map_or(uri, |(_, r)| r);
    let path = &after_scheme[after_scheme.find('/').expect("a path")..];
    assert!(
        path.starts_with("/crl/") && path.ends_with(".crl"),
        "{path}"
    );
    path.to_owned()
}

/// Fetches a CRL over HTTP, checks it with `openssl crl -CAfile issuing.pem` and writes it as
/// PEM; returns the PEM path.
fn fetch_crl(fleet: &Fleet, addr: SocketAddr, path: &str, tag: &str) -> PathBuf {
    let (status, der) = http_get(addr, path).expect("CRL fetched");
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&der));
    let scratch = fleet.scratch();
    let der_path = scratch.join(format!("{tag}.crl"));
    std::fs::write(&der_path, der).expect("write");
    let out = openssl_ok(
        &scratch,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &der_path.to_string_lossy(),
            "-CAfile",
            &issuing_pem(fleet).to_string_lossy(),
            "-noout",
        ],
    );
    assert!(out.contains("verify OK"), "{path}: {out}");
    let pem = scratch.join(format!("{tag}.crl.pem"));
    openssl_ok(
        &scratch,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &der_path.to_string_lossy(),
            "-out",
            &pem.to_string_lossy(),
        ],
    );
    pem
}

fn verify_crl_check(fleet: &Fleet, crl_pem: &Path, leaf: &Path) -> (bool, String) {
    openssl(
        &fleet.scratch(),
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            &crl_pem.to_string_lossy(),
            "-CAfile",
            &fleet.root_pem().to_string_lossy(),
            "-untrusted",
            &fleet.chain_pem().to_string_lossy(),
            &leaf.to_string_lossy(),
        ],
    )
}

/// A second edge process on fresh ports, sharing the fleet's core (config next to the first
/// one's, so its relative paths resolve the same way).
fn second_edge(fleet: &Fleet) -> (ChildGuard, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = fleet.edge_config().with_file_name("edge2.toml");
    std::fs::write(
        &cfg,
        format!(
            "mode = \"dev\"\ncore_socket = \"../run/core.sock\"\n[listen]\nhttps = \"{https}\"\nhttp = \"{http}\"\nadmin = \"{admin}\"\n[tls]\ncert = \"tls.pem\"\nkey = \"tls.key\"\n"
        ),
    )
    .expect("edge2 config");
    let mut cmd = Command::new(bin("certgate-edge"));
    cmd.arg("--config").arg(&cfg);
    let g = ChildGuard::spawn("certgate-edge-2", cmd, &fleet.scratch().join("edge2.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(admin, "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "edge 2 not ready:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (g, http)
}

#[test]
fn openssl_gets_good_revoked_and_unauthorized_and_crls_verify_and_revocation_reaches_two_edges() {
    let mut fleet = Fleet::init();
    fleet.start_all();
    let scratch = fleet.scratch();
    let (leaf, _) = issue(&fleet, "good");
    let (other, other_serial) = issue(&fleet, "other");

    // good, with a response that verifies against the root.
    let out = wait_status(&fleet, fleet.http, &leaf, "good", Duration::from_secs(20));
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains("This Update:") && out.contains("Next Update:"),
        "{out}"
    );

    // A certificate from a CA this fleet never heard of: unauthorized (RFC 5019 §2.2.3).
    openssl_ok(
        &scratch,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.pem",
            "-days",
            "3",
            "-subj",
            "/CN=stranger CA",
        ],
    );
    let (_, out) = openssl(
        &scratch,
        &[
            "ocsp",
            "-issuer",
            "stranger.pem",
            "-cert",
            "stranger.pem",
            "-url",
            &format!("http://{}/ocsp", fleet.http),
            "-no_nonce",
        ],
    );
    assert!(out.contains("unauthorized"), "{out}");
    // A serial our issuer never issued: the core does not know it → unauthorized.
    let (_, out) = openssl(
        &scratch,
        &[
            "ocsp",
            "-issuer",
            &issuing_pem(&fleet).to_string_lossy(),
            "-serial",
            "0x7e57",
            "-url",
            &format!("http://{}/ocsp", fleet.http),
            "-no_nonce",
        ],
    );
    assert!(out.contains("unauthorized"), "{out}");

    // CRLs: the certificate's shard and the full CRL verify under the issuer.
    let shard_path = crl_dp_path(&fleet, &leaf);
    let full_path = format!(
        "{}/full.crl",
        &shard_path[..shard_path.rfind('/').expect("issuer segment")]
    );
    let crl = fetch_crl(&fleet, fleet.http, &full_path, "full-before");
    let (ok, out) = verify_crl_check(&fleet, &crl, &leaf);
    assert!(ok, "a good certificate passes -crl_check:\n{out}");
    fetch_crl(&fleet, fleet.http, &shard_path, "shard-before");

    // Two edges; revoke; both answer "revoked" within a generous bound.
    let (_edge2, http2) = second_edge(&fleet);
    wait_status(&fleet, http2, &other, "good", Duration::from_secs(20));
    let req = ocsp_request(&fleet, &other);
    let before: Vec<Vec<u8>> = [fleet.http, http2]
        .iter()
        .map(|a| post_ocsp(*a, &req).expect("answer").1)
        .collect();
    assert!(before.iter().all(|b| is_successful(b)));
    revoke(&fleet, &other_serial, "1");
    let revoked_at = Instant::now();
    let mut seen = [None, None];
    while seen.iter().any(Option::is_none) && revoked_at.elapsed() < Duration::from_secs(5) {
        for (i, addr) in [fleet.http, http2].iter().enumerate() {
            if seen[i].is_none()
                && let Some((200, body)) = post_ocsp(*addr, &req)
                && body != before[i]
                && is_successful(&body)
            {
                seen[i] = Some((revoked_at.elapsed(), body));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, s) in seen.iter().enumerate() {
        let (after, body) = s
            .as_ref()
            .unwrap_or_else(|| panic!("edge {i} never changed its answer\n{}", fleet.logs()));
        eprintln!("edge {i} answered revoked {after:?} after `certgate revoke` returned");
        assert!(
            *after < Duration::from_secs(1),
            "edge {i} took {after:?} to see the revocation"
        );
        assert_eq!(
            respin_status(&fleet, &other, body, &format!("e{i}")),
            "revoked"
        );
    }
    let out = ocsp(&fleet, fleet.http, &other);
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    assert!(out.contains("Revocation Time:"), "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    // The other certificate is still good.
    assert_eq!(status_of(&ocsp(&fleet, http2, &leaf), &leaf), Some("good"));

    // The CRLs are regenerated (debounced): the revoked certificate fails -crl_check.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crl = fetch_crl(&fleet, fleet.http, &full_path, "full-after");
        let (ok, out) = verify_crl_check(&fleet, &crl, &other);
        if !ok {
            assert!(out.contains("revoked"), "{out}");
            let (ok, out) = verify_crl_check(&fleet, &crl, &leaf);
            assert!(ok, "the good certificate still passes:\n{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full CRL never listed the revoked certificate\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let other_shard = crl_dp_path(&fleet, &other);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crl = fetch_crl(&fleet, http2, &other_shard, "shard-after");
        if !verify_crl_check(&fleet, &crl, &other).0 {
            break;
        }
        assert!(Instant::now() < deadline, "the shard CRL never listed it");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_restarted_edge_serves_the_current_state_and_a_core_restart_does_not_empty_the_edge() {
    let mut fleet = Fleet::init();
    fleet.start_all();
    let (a, a_serial) = issue(&fleet, "a");
    let (b, b_serial) = issue(&fleet, "b");
    wait_status(&fleet, fleet.http, &a, "good", Duration::from_secs(20));
    wait_status(&fleet, fleet.http, &b, "good", Duration::from_secs(20));

    // The edge is down while b is revoked; restarted, it serves the current state.
    fleet.stop_edge();
    revoke(&fleet, &b_serial, "4");
    fleet.start_edge();
    let out = wait_status(&fleet, fleet.http, &b, "revoked", Duration::from_secs(10));
    assert!(out.contains("Reason: superseded"), "{out}");

    // The core goes away: the edge keeps answering from its cache, with no core to ask.
    let req_a = ocsp_request(&fleet, &a);
    let before = post_ocsp(fleet.http, &req_a).expect("answer").1;
    assert!(is_successful(&before));
    fleet.stop_core();
    for _ in 0..5 {
        assert_eq!(post_ocsp(fleet.http, &req_a).expect("answer").1, before);
        assert_eq!(
            status_of(&ocsp(&fleet, fleet.http, &b), &b),
            Some("revoked")
        );
    }
    // The core comes back; the edge reconnects and what it serves is still right, and a new
    // revocation reaches it.
    fleet.start_core();
    assert_eq!(status_of(&ocsp(&fleet, fleet.http, &a), &a), Some("good"));
    revoke(&fleet, &a_serial, "5");
    let out = wait_status(&fleet, fleet.http, &a, "revoked", Duration::from_secs(15));
    assert!(out.contains("Reason: cessationOfOperation"), "{out}");
}
