//! HTTP/3 end to end (issue 8, Transport): a real fleet (signer, core, edge processes) and the
//! quinn + h3 client of `certgate_e2e::h3client` (Debian's curl has no HTTP/3) over UDP on the
//! HTTPS listener's port number, trusting only the fleet's dev root. Answers are checked by
//! third parties where one exists: `openssl ocsp -respin` on the OCSP bytes, `openssl crl` on
//! the CRL, `openssl pkcs7` on EST `/cacerts`, curl (TCP HTTPS) for the `Alt-Svc` header.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use certgate_e2e::h3client::H3Client;
use certgate_e2e::{Fleet, http_get, openssl_csr, run};

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("openssl").args(args).current_dir(dir));
    (ok, format!("{out}{err}"))
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = openssl(dir, args);
    assert!(ok, "openssl {args:?}:\n{out}");
    out
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn h3(fleet: &Fleet) -> H3Client {
    let root = std::fs::read(fleet.root_pem()).expect("dev root");
    H3Client::connect(fleet.https, "127.0.0.1", &root)
        .await
        .unwrap_or_else(|e| panic!("HTTP/3 connect: {e}\n{}", fleet.logs()))
}

/// Issues a certificate for `name` with the CLI; returns its PEM path.
fn issue(fleet: &Fleet, name: &str) -> PathBuf {
    let scratch = fleet.scratch();
    let (_key, csr) = openssl_csr(&scratch, name, &format!("{name}.example.test"));
    let pem = scratch.join(format!("{name}.pem"));
    let (ok, out, err) = fleet.cli(&["cert", "issue", "--csr", &s(&csr), "--out", &s(&pem)]);
    assert!(ok, "cert issue: {out}{err}\n{}", fleet.logs());
    pem
}

/// The issuing CA (first certificate of chain.pem) as its own PEM file.
fn issuing_pem(fleet: &Fleet) -> PathBuf {
    let out = fleet.scratch().join("issuing.pem");
    openssl_ok(
        &fleet.scratch(),
        &["x509", "-in", &s(&fleet.chain_pem()), "-out", &s(&out)],
    );
    out
}

/// A DER OCSP request (SHA-1 CertID, no nonce) for `leaf`, made by OpenSSL.
fn ocsp_request(fleet: &Fleet, leaf: &Path) -> Vec<u8> {
    let out = leaf.with_extension("req.der");
    openssl_ok(
        &fleet.scratch(),
        &[
            "ocsp",
            "-issuer",
            &s(&issuing_pem(fleet)),
            "-cert",
            &s(leaf),
            "-no_nonce",
            "-reqout",
            &s(&out),
        ],
    );
    std::fs::read(out).expect("request")
}

/// `openssl ocsp -respin` on response bytes: must verify against the dev root; returns the
/// status OpenSSL printed for `leaf`.
fn respin_status(fleet: &Fleet, leaf: &Path, der: &[u8], tag: &str) -> String {
    let path = fleet.scratch().join(format!("resp-{tag}.der"));
    std::fs::write(&path, der).expect("write response");
    let (_, out) = openssl(
        &fleet.scratch(),
        &[
            "ocsp",
            "-respin",
            &s(&path),
            "-issuer",
            &s(&issuing_pem(fleet)),
            "-cert",
            &s(leaf),
            "-CAfile",
            &s(&fleet.root_pem()),
            "-verify_other",
            &s(&fleet.chain_pem()),
            "-no_nonce",
        ],
    );
    assert!(out.contains("Response verify OK"), "{tag}: {out}");
    let prefix = format!("{}: ", s(leaf));
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or("none", str::trim)
        .to_owned()
}

/// The path of the certificate's CRL distribution point (`/crl/{issuer}/{shard}.crl`).
fn crl_dp_path(fleet: &Fleet, leaf: &Path) -> String {
    let out = openssl_ok(
        &fleet.scratch(),
        &[
            "x509",
            "-in",
            &s(leaf),
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
    after_scheme[after_scheme.find('/').expect("a path")..].to_owned()
}

/// Response headers of a TCP HTTPS GET by curl (HTTP/1.1 or h2), trusting the dev root.
fn curl_headers(fleet: &Fleet, path: &str) -> String {
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--max-time",
        "20",
        "--cacert",
        &s(&fleet.root_pem()),
        &format!("https://{}{path}", fleet.https),
    ]));
    assert!(ok, "curl https {path}: {err}");
    out.to_ascii_lowercase()
}

fn metrics(fleet: &Fleet) -> String {
    let (status, body) = http_get(fleet.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// The path of an absolute URL from the ACME directory.
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..].to_owned()
}

#[test]
fn acme_est_ocsp_crl_over_http3_with_alt_svc_404_and_413() {
    let mut fleet = Fleet::init();
    fleet.start_all();
    let scratch = fleet.scratch();
    let leaf = issue(&fleet, "h3leaf");
    let rt = runtime();
    rt.block_on(async {
        // Alt-Svc on the TCP HTTPS answer names the same port number.
        let hdrs = curl_headers(&fleet, "/acme/directory");
        let want = format!("alt-svc: h3=\":{}\"; ma=86400", fleet.https.port());
        assert!(hdrs.contains(&want), "no `{want}` in:\n{hdrs}");

        let c = h3(&fleet).await;

        // ACME directory and newNonce over HTTP/3.
        let dir = c.get("/acme/directory").await.expect("directory over h3");
        assert_eq!(dir.status, 200, "{}", String::from_utf8_lossy(&dir.body));
        let json: serde_json::Value = serde_json::from_slice(&dir.body).expect("directory JSON");
        let new_nonce = json["newNonce"].as_str().expect("newNonce URL");
        assert!(json["newOrder"].is_string(), "{json}");
        let nonce = c
            .request(http::Method::HEAD, &url_path(new_nonce), &[], &[])
            .await
            .expect("newNonce over h3");
        assert_eq!(nonce.status, 200);
        let n = nonce.header("replay-nonce").expect("Replay-Nonce");
        assert!(n.len() >= 16, "{n}");
        let nonce2 = c
            .request(http::Method::HEAD, &url_path(new_nonce), &[], &[])
            .await
            .expect("second newNonce");
        assert_ne!(nonce2.header("replay-nonce"), Some(n), "nonces must differ");
        // Over HTTP/3 too, responses carry no connection-specific fields.
        assert!(dir.header("connection").is_none());

        // EST /cacerts: base64 PKCS#7 certs-only that OpenSSL reads, chaining to the root.
        let est = c
            .get("/.well-known/est/cacerts")
            .await
            .expect("EST cacerts over h3");
        assert_eq!(est.status, 200, "{}", String::from_utf8_lossy(&est.body));
        let text: String = String::from_utf8_lossy(&est.body)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let p7 = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64 cacerts");
        let p7_path = scratch.join("cacerts.p7");
        std::fs::write(&p7_path, p7).expect("write p7");
        let certs = openssl_ok(
            &scratch,
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                &s(&p7_path),
                "-print_certs",
            ],
        );
        assert!(certs.contains("BEGIN CERTIFICATE"), "{certs}");

        // OCSP POST and GET over HTTP/3; OpenSSL verifies the bytes and reads `good`.
        let req = ocsp_request(&fleet, &leaf);
        let deadline = Instant::now() + Duration::from_secs(20);
        let post = loop {
            let r = c
                .post("/ocsp", "application/ocsp-request", &req)
                .await
                .expect("OCSP POST over h3");
            if r.status == 200 && r.body.windows(3).take(8).any(|w| w == [0x0a, 0x01, 0x00]) {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "no successful OCSP answer: {} {:02x?}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            post.header("content-type"),
            Some("application/ocsp-response")
        );
        assert_eq!(respin_status(&fleet, &leaf, &post.body, "post"), "good");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&req);
        let seg = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let get = c
            .get(&format!("/ocsp/{seg}"))
            .await
            .expect("OCSP GET over h3");
        assert_eq!(get.status, 200, "{:02x?}", get.body);
        assert_eq!(respin_status(&fleet, &leaf, &get.body, "get"), "good");

        // CRL over HTTP/3, checked by openssl crl against the issuing CA.
        let crl = c
            .get(&crl_dp_path(&fleet, &leaf))
            .await
            .expect("CRL over h3");
        assert_eq!(crl.status, 200, "{}", String::from_utf8_lossy(&crl.body));
        let crl_path = scratch.join("h3.crl");
        std::fs::write(&crl_path, &crl.body).expect("write crl");
        let out = openssl_ok(
            &scratch,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &s(&crl_path),
                "-CAfile",
                &s(&issuing_pem(&fleet)),
                "-noout",
            ],
        );
        assert!(out.contains("verify OK"), "{out}");

        // Unknown path: 404 problem document, as on TCP.
        let nf = c.get("/no/such/path").await.expect("404 over h3");
        assert_eq!(nf.status, 404);

        // An oversized upload (2 MiB, far past the OCSP limit and past the stream's flow
        // window, so the edge must refuse while it streams) is answered 413; the connection
        // keeps serving.
        let big = vec![0x30u8; 2 * 1024 * 1024];
        let r = c
            .post("/ocsp", "application/ocsp-request", &big)
            .await
            .expect("413 answer");
        assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
        let again = c.get("/acme/directory").await.expect("same connection");
        assert_eq!(again.status, 200);

        // Tenant routing works the same way over HTTP/3: an unknown tenant is a 404.
        let t = c
            .get("/t/no-such-tenant/acme/directory")
            .await
            .expect("tenant");
        assert_eq!(t.status, 404, "{}", String::from_utf8_lossy(&t.body));
        c.close().await;
    });

    // Metrics label the transport.
    let m = metrics(&fleet);
    let h3_lines: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("certgate_edge_http_requests_total") && l.contains("http_version=\"3\"")
        })
        .collect();
    assert!(h3_lines.iter().any(|l| l.contains("status=\"2xx\"")), "{m}");
    assert!(h3_lines.iter().any(|l| l.contains("status=\"4xx\"")), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("certgate_edge_http_requests_total")
                && l.contains("listener=\"https\"")
                && (l.contains("http_version=\"2\"") || l.contains("http_version=\"1.1\""))),
        "{m}"
    );
}

/// A small xorshift generator: reproducible garbage without a rand dependency.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Garbage at the QUIC port: random datagrams, QUIC-looking Initial packets that cannot be
/// decrypted, unknown-version long headers (version negotiation), short-header packets for
/// connections that do not exist.
fn spray_garbage(to: SocketAddr, count: usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..count {
        let len = match i % 4 {
            0 => 1 + (rng.next() % 1400) as usize,
            _ => 1200 + (rng.next() % 150) as usize,
        };
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        match i % 4 {
            1 if len > 6 => {
                // Long header, QUIC v1 Initial, random DCID/SCID/payload.
                d[0] = 0xc0 | (d[0] & 0x0f);
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
                d[5] = 8;
            }
            2 if len > 6 => {
                // Long header with an unknown version.
                d[0] |= 0x80;
                d[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
            }
            3 => d[0] = 0x40 | (d[0] & 0x3f),
            _ => {}
        }
        let _ = sock.send_to(&d, to);
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn garbage_udp_and_the_connection_cap_leave_https_and_http3_serving() {
    let mut fleet = Fleet::init();
    // A tiny QUIC connection cap so the test can reach it.
    let cfg = fleet.edge_config();
    let mut text = std::fs::read_to_string(&cfg).expect("edge config");
    assert!(!text.contains("[http3]"), "{text}");
    text.push_str("\n[http3]\nmax_connections = 2\nidle_timeout_ms = 5000\n");
    std::fs::write(&cfg, text).expect("edge config");
    fleet.start_all();
    let rt = runtime();
    rt.block_on(async {
        spray_garbage(fleet.https, 4000);
        assert!(
            fleet.edge().expect("edge").is_running(),
            "edge died:\n{}",
            fleet.logs()
        );
        // Both transports still serve.
        let hdrs = curl_headers(&fleet, "/acme/directory");
        assert!(hdrs.starts_with("http/"), "{hdrs}");
        assert!(hdrs.contains(" 200"), "{hdrs}");
        let a = h3(&fleet).await;
        assert_eq!(a.get("/acme/directory").await.expect("h3 a").status, 200);

        // Garbage while a real connection is open does not disturb it.
        spray_garbage(fleet.https, 2000);
        assert_eq!(
            a.get("/acme/directory").await.expect("h3 a again").status,
            200
        );

        // The cap: a second connection is admitted, a third refused (the client falls back to
        // TCP, which still serves), and a slot frees when a client leaves.
        let b = h3(&fleet).await;
        assert_eq!(b.get("/acme/directory").await.expect("h3 b").status, 200);
        let root = std::fs::read(fleet.root_pem()).expect("dev root");
        let third = H3Client::connect(fleet.https, "127.0.0.1", &root).await;
        let refused = match third {
            Err(e) => e,
            Ok(c) => match c.get("/acme/directory").await {
                Err(e) => e,
                Ok(r) => panic!("third connection served past the cap: {}", r.status),
            },
        };
        assert!(
            refused.to_lowercase().contains("refused"),
            "unexpected error: {refused}"
        );
        let hdrs = curl_headers(&fleet, "/acme/directory");
        assert!(hdrs.contains(" 200"), "{hdrs}");
        a.close().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            let err = match H3Client::connect(fleet.https, "127.0.0.1", &root).await {
                Ok(c) => match c.get("/acme/directory").await {
                    Ok(r) if r.status == 200 => break c,
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "no slot after a client left: {err}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            b.get("/acme/directory").await.expect("h3 b again").status,
            200
        );
        c.close().await;
        b.close().await;
    });
    assert!(
        fleet.edge().expect("edge").is_running(),
        "edge died:\n{}",
        fleet.logs()
    );
    let m = metrics(&fleet);
    assert!(
        m.lines()
            .any(|l| l.starts_with("certgate_edge_h3_refused_total") && !l.ends_with(" 0")),
        "{m}"
    );

    // Graceful shutdown with the rest of the edge: SIGTERM with an HTTP/3 client connected;
    // the edge sends GOAWAY, closes the QUIC endpoint and exits cleanly within its drain time.
    rt.block_on(async {
        let d = h3(&fleet).await;
        assert_eq!(d.get("/acme/directory").await.expect("h3 d").status, 200);
        let start = Instant::now();
        let status = fleet
            .edge()
            .expect("edge")
            .terminate(Duration::from_secs(20))
            .expect("edge exit status");
        let took = start.elapsed();
        assert!(status.success(), "edge exit {status:?}:\n{}", fleet.logs());
        assert!(took < Duration::from_secs(10), "edge took {took:?} to stop");
        assert!(
            d.get("/acme/directory").await.is_err(),
            "served after the edge stopped"
        );
    });
}

#[test]
fn http3_off_means_no_alt_svc_and_no_quic() {
    let mut fleet = Fleet::init();
    let cfg = fleet.edge_config();
    let text = std::fs::read_to_string(&cfg).expect("edge config");
    assert!(text.contains("[listen]\n"), "{text}");
    std::fs::write(
        &cfg,
        text.replacen("[listen]\n", "[listen]\nhttp3 = false\n", 1),
    )
    .expect("edge config");
    fleet.start_all();
    let hdrs = curl_headers(&fleet, "/acme/directory");
    assert!(hdrs.contains(" 200"), "{hdrs}");
    assert!(!hdrs.contains("alt-svc"), "{hdrs}");
    let rt = runtime();
    rt.block_on(async {
        let root = std::fs::read(fleet.root_pem()).expect("dev root");
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            H3Client::connect(fleet.https, "127.0.0.1", &root),
        )
        .await;
        assert!(!matches!(r, Ok(Ok(_))), "HTTP/3 served with http3 = false");
    });
}
