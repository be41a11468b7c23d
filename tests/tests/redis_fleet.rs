//! Two real edge processes sharing one real `redis-server` and one core (issue 8, "Scale-out"):
//!
//! - a nonce minted by edge A is accepted once at edge B and refused on replay at A (and B);
//! - one fleet-wide rate limit (new accounts per IP) is enforced across both edges;
//! - the OCSP tier: a miss answered by the core at A is found in Redis by B;
//! - Redis killed → ACME nonces fail closed (`badNonce`, counted) while OCSP keeps serving at both
//!   edges, from their caches and the core;
//! - Redis restarted on the same port → nonces and limits work again, without restarting edges.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certgate_acme::testkeys::TestKey;
use certgate_e2e::redis::RedisServer;
use certgate_e2e::{ChildGuard, Fleet, bin, free_port, http_get, openssl_csr, run};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// One HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    fn problem(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:ietf:params:acme:error:")
            .to_owned()
    }
}

/// HTTPS to one edge, one connection per request, trusting only the fleet's dev root.
struct Edge {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    dir: Value,
}

impl Edge {
    async fn new(fleet: &Fleet, addr: SocketAddr) -> Self {
        let pem = std::fs::read(fleet.root_pem()).expect("dev root");
        let mut roots = rustls::RootCertStore::empty();
        for c in certgate_proto::transport::certs_from_pem(&pem).expect("root pem") {
            roots.add(c).expect("add root");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut e = Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            dir: Value::Null,
        };
        let r = e
            .send(
                "GET",
                &format!("https://{addr}/acme/directory"),
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, 200, "directory at {addr}: {r:?}");
        e.dir = r.json();
        e
    }

    fn url(&self, name: &str) -> String {
        self.dir[name]
            .as_str()
            .expect("directory member")
            .to_owned()
    }

    async fn send(&self, method: &str, url: &str, ctype: Option<&str>, body: Vec<u8>) -> Resp {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("http1 handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("host", self.addr.to_string());
        if let Some(ct) = ctype {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn nonce(&self) -> String {
        let r = self
            .send("HEAD", &self.url("newNonce"), None, Vec::new())
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.header("replay-nonce").expect("Replay-Nonce")
    }

    /// POSTs a JWS by `key` (embedded JWK) with `nonce` to this edge's `newAccount`.
    async fn new_account(&self, key: &TestKey, nonce: &str) -> Resp {
        let url = self.url("newAccount");
        let payload = json!({"termsOfServiceAgreed": true}).to_string();
        let h = key.header(None, Some(nonce), &url);
        let body = key
            .sign_jws(&h, payload.as_bytes())
            .to_string()
            .into_bytes();
        self.send("POST", &url, Some("application/jose+json"), body)
            .await
    }
}

fn metric(admin: SocketAddr, name: &str, must_contain: &[&str]) -> f64 {
    let Some((_, body)) = http_get(admin, "/metrics") else {
        return 0.0;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Edge B: edge A's config with its own ports (and ACME base URL), next to it so relative paths
/// (core socket, TLS, nonce key) resolve to the same files.
fn second_edge(fleet: &Fleet) -> (ChildGuard, SocketAddr, SocketAddr, SocketAddr) {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    let text = text
        .replace(&fleet.https.to_string(), &https.to_string())
        .replace(&fleet.http.to_string(), &http.to_string())
        .replace(&fleet.admin.to_string(), &admin.to_string());
    let cfg = fleet.edge_config().with_file_name("edge-b.toml");
    std::fs::write(&cfg, text).expect("edge B config");
    let mut cmd = Command::new(bin("certgate-edge"));
    cmd.arg("--config").arg(&cfg);
    let g = ChildGuard::spawn("certgate-edge-b", cmd, &fleet.scratch().join("edge-b.log"));
    let deadline = Instant::now() + certgate_e2e::READY_TIMEOUT;
    while http_get(admin, "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "edge B not ready:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (g, https, http, admin)
}

/// Issues a certificate for `name` with the CLI; returns its PEM path.
fn issue(fleet: &Fleet, name: &str) -> PathBuf {
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
    pem
}

/// The issuing CA (first certificate of chain.pem) as its own PEM file.
fn issuing_pem(fleet: &Fleet) -> PathBuf {
    let out = fleet.scratch().join("issuing.pem");
    if !out.exists() {
        let (ok, _, err) = run(Command::new("openssl").args([
            "x509",
            "-in",
            &fleet.chain_pem().to_string_lossy(),
            "-out",
            &out.to_string_lossy(),
        ]));
        assert!(ok, "openssl x509: {err}");
    }
    out
}

/// `openssl ocsp` for `leaves` (one request, one CertID each) against `addr`, verified against
/// the dev root; true when every leaf is reported `good`.
fn ocsp_good(fleet: &Fleet, addr: SocketAddr, leaves: &[&Path]) -> (bool, String) {
    let issuer = issuing_pem(fleet);
    let mut cmd = Command::new("openssl");
    cmd.arg("ocsp").arg("-issuer").arg(&issuer);
    for l in leaves {
        cmd.arg("-cert").arg(l);
    }
    cmd.args([
        "-url",
        &format!("http://{addr}/ocsp"),
        "-no_nonce",
        "-timeout",
        "10",
    ])
    .arg("-CAfile")
    .arg(fleet.root_pem())
    .arg("-verify_other")
    .arg(fleet.chain_pem());
    let (_, out, err) = run(&mut cmd);
    let all = format!("{out}{err}");
    let good = all.contains("Response verify OK")
        && leaves
            .iter()
            .all(|l| all.contains(&format!("{}: good", l.to_string_lossy())));
    (good, all)
}

fn wait_ocsp_good(fleet: &Fleet, addr: SocketAddr, leaves: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (good, out) = ocsp_good(fleet, addr, leaves);
        if good {
            return;
        }
        assert!(Instant::now() < deadline, "OCSP at {addr} not good:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_share_nonces_limits_and_ocsp_through_redis_and_survive_its_restart() {
    let mut redis = RedisServer::start();
    let mut fleet = Fleet::init();
    let edge_toml = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    assert!(
        edge_toml.contains("nonce_key_file") && !edge_toml.contains("[rate_limits"),
        "{edge_toml}"
    );
    std::fs::write(
        fleet.edge_config(),
        format!(
            "{edge_toml}\n[rate_limits.default]\nacme_new_accounts_per_ip_per_hour = 3\n\n[redis]\nurl = \"{}\"\nkey_prefix = \"fleet-e2e\"\nop_timeout_ms = 300\nreconnect_ms = 100\n",
            redis.url()
        ),
    )
    .expect("edge.toml with [redis]");
    fleet.start_all();
    let (_edge_b, https_b, http_b, admin_b) = second_edge(&fleet);
    let a = Edge::new(&fleet, fleet.https).await;
    let b = Edge::new(&fleet, https_b).await;
    assert_ne!(a.url("newAccount"), b.url("newAccount"));

    // A nonce minted by A is accepted once at B, refused on replay at A and at B.
    let key1 = TestKey::es256();
    let n = a.nonce().await;
    let r = b.new_account(&key1, &n).await;
    assert_eq!(
        r.status,
        201,
        "A's nonce at B: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = a.new_account(&key1, &n).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "badNonce"),
        "replay at A: {r:?}"
    );
    let r = b.new_account(&key1, &n).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "badNonce"),
        "replay at B: {r:?}"
    );

    // One fleet-wide limit: 3 new accounts per IP per hour across both edges (one used above).
    let mut created = 1;
    let mut limited = 0;
    for i in 0..4 {
        let edge = if i % 2 == 0 { &a } else { &b };
        let r = edge
            .new_account(&TestKey::es256(), &edge.nonce().await)
            .await;
        match r.status {
            201 => created += 1,
            429 => {
                assert_eq!(r.problem(), "rateLimited", "{r:?}");
                assert!(r.header("retry-after").is_some(), "{r:?}");
                limited += 1;
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert_eq!((created, limited), (3, 2), "the two edges together admit 3");
    let bucket = redis.cli(&["--scan", "--pattern", "fleet-e2e:rl:*"]);
    assert_eq!(
        bucket.lines().count(),
        1,
        "one bucket for the fleet: {bucket}"
    );

    // OCSP: single responses come to both edges over WatchStatus; a two-CertID request is a
    // miss at A (answered by the core, written to Redis) and then a Redis hit at B.
    let leaf1 = issue(&fleet, "one");
    let leaf2 = issue(&fleet, "two");
    wait_ocsp_good(&fleet, fleet.http, &[&leaf1]);
    wait_ocsp_good(&fleet, http_b, &[&leaf1]);
    wait_ocsp_good(&fleet, fleet.http, &[&leaf1, &leaf2]);
    let stored = redis.cli(&["--scan", "--pattern", "fleet-e2e:ocsp:*"]);
    assert!(!stored.is_empty(), "A wrote the core's answer to Redis");
    wait_ocsp_good(&fleet, http_b, &[&leaf1, &leaf2]);
    assert!(
        metric(
            admin_b,
            "certgate_edge_redis_ops_total",
            &["ocsp_get", "outcome=\"hit\""]
        ) >= 1.0,
        "B answered the set from Redis"
    );

    // Redis goes away: nonces fail closed (badNonce, 503 + Retry-After) at both edges, counted.
    redis.stop();
    for edge in [&a, &b] {
        let r = edge
            .new_account(&TestKey::es256(), &edge.nonce().await)
            .await;
        assert_eq!(
            (r.status, r.problem().as_str()),
            (503, "badNonce"),
            "fail closed: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    assert!(
        metric(
            fleet.admin,
            "certgate_edge_redis_fallbacks_total",
            &["nonce_redeem", "outcome=\"closed\""]
        ) >= 1.0
    );
    // OCSP keeps serving: cached singles and sets, and a new set (a miss) from the core.
    let leaf3 = issue(&fleet, "three");
    for http in [fleet.http, http_b] {
        wait_ocsp_good(&fleet, http, &[&leaf1]);
        wait_ocsp_good(&fleet, http, &[&leaf1, &leaf2]);
        wait_ocsp_good(&fleet, http, &[&leaf2, &leaf3]);
    }
    assert!(
        metric(
            fleet.admin,
            "certgate_edge_redis_fallbacks_total",
            &["ocsp_get", "outcome=\"core\""]
        ) >= 1.0
    );

    // Redis back on the same port (empty): both edges recover without a restart.
    redis.restart();
    for edge in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = edge.new_account(&key1, &edge.nonce().await).await;
            // key1's account exists: 200 with its Location once the nonce is accepted again.
            if r.status == 200 {
                break;
            }
            assert_eq!(r.problem(), "badNonce", "{r:?}");
            assert!(
                Instant::now() < deadline,
                "edge {} did not recover",
                edge.addr
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Limits are enforced through Redis again (its buckets were lost with the restart).
    let mut created = 0;
    for i in 0..4 {
        let edge = if i % 2 == 0 { &a } else { &b };
        if edge
            .new_account(&TestKey::es256(), &edge.nonce().await)
            .await
            .status
            == 201
        {
            created += 1;
        }
    }
    assert_eq!(created, 3, "fleet-wide limit again after the restart");
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "fleet-e2e:rl:*"])
            .lines()
            .count(),
        1
    );
}

/// Two real edges on a `redis-server` that speaks TLS only and wants client certificates
/// (docs/operations.md, "Redis over TLS"): edge A, configured with the Redis CA and a client
/// certificate, redeems nonces there (201, then badNonce on replay); edge B, trusting another
/// CA, refuses every nonce exactly as with Redis unreachable — `badNonce` 503 + Retry-After,
/// counted — never accepting one it could not record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_over_rediss_redeem_nonces_and_a_foreign_ca_fails_closed() {
    use certgate_e2e::tls_stores::{RedisTlsServer, pki};
    let mut fleet = Fleet::init();
    let certs = fleet.scratch().join("redis-tls");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let good = pki(&certs, "good", &["127.0.0.1"], "edge");
    let other = pki(&certs, "other", &["127.0.0.1"], "edge");
    let redis = RedisTlsServer::start(&good.server_cert, &good.server_key, &good.ca_pem, true);
    let edge_toml = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    let with_ca = |ca: &Path| {
        format!(
            "{edge_toml}\n[redis]\nurl = \"{}\"\nkey_prefix = \"fleet-tls\"\nop_timeout_ms = 2000\nreconnect_ms = 100\ntls_ca_file = \"{}\"\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
            redis.url(),
            ca.display(),
            good.client_cert_file.display(),
            good.client_key_file.display()
        )
    };
    std::fs::write(fleet.edge_config(), with_ca(&good.ca_file)).expect("edge.toml A");
    fleet.start_all();
    // Edge B's config is edge A's with the other CA (written after A has read its own).
    std::fs::write(fleet.edge_config(), with_ca(&other.ca_file)).expect("edge.toml B");
    let (edge_b, https_b, _http_b, admin_b) = second_edge(&fleet);
    let a = Edge::new(&fleet, fleet.https).await;
    let b = Edge::new(&fleet, https_b).await;

    let key = TestKey::es256();
    let n = a.nonce().await;
    let r = a.new_account(&key, &n).await;
    assert_eq!(
        r.status,
        201,
        "nonce redeemed over rediss: {}\nredis log:\n{}",
        String::from_utf8_lossy(&r.body),
        redis.log()
    );
    let r = a.new_account(&key, &n).await;
    assert_eq!((r.status, r.problem().as_str()), (400, "badNonce"), "{r:?}");
    let (ok, keys) = redis.cli(
        Some((&good.client_cert_file, &good.client_key_file)),
        &["--scan", "--pattern", "fleet-tls:nonce:*"],
    );
    assert!(ok && keys.lines().count() == 1, "{keys}");

    // B cannot verify Redis: fail closed, even for A's nonce that was never redeemed.
    let n2 = a.nonce().await;
    for nonce in [b.nonce().await, n2] {
        let r = b.new_account(&TestKey::es256(), &nonce).await;
        assert_eq!(
            (r.status, r.problem().as_str()),
            (503, "badNonce"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    assert!(
        metric(
            admin_b,
            "certgate_edge_redis_fallbacks_total",
            &["nonce_redeem", "outcome=\"closed\""]
        ) >= 2.0
    );
    let (_, keys) = redis.cli(
        Some((&good.client_cert_file, &good.client_key_file)),
        &["--scan", "--pattern", "fleet-tls:nonce:*"],
    );
    assert_eq!(keys.lines().count(), 1, "B recorded nothing: {keys}");
    // The operator learns why from B's log: the refused certificate, not just "io".
    let log = edge_b.log();
    assert!(log.contains("UnknownIssuer"), "{log}");
}
