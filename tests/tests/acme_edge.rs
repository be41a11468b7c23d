//! ACME at the edge against real processes (signer, core, edge from `certgate init`), driven by a
//! small ACME client written here on `certgate_acme::testkeys` (aws-lc-rs keys, flattened JWS)
//! over real TLS (trusting only the dev root).
//!
//! - `issuance_end_to_end`: account, order, http-01 (a responder on 127.0.0.1:5002, the dev
//!   convention), finalize, download, ARI, orders list, keyChange, revocation.
//! - `bad_inputs_get_the_right_problem_and_nothing_is_issued`: the bad-input list, each
//!   followed by a check that the edge still serves, and at the end that nothing was issued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use certgate_acme::jwk::Jwk;
use certgate_acme::testkeys::TestKey;
use certgate_e2e::Fleet;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

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
    fn links(&self) -> Vec<String> {
        self.headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
    /// The ACME problem type suffix.
    fn problem(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:ietf:params:acme:error:")
            .to_owned()
    }
}

/// HTTPS to the edge, one connection per request, trusting only the fleet's dev root.
struct Https {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(fleet: &Fleet) -> Self {
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
        Self {
            addr: fleet.https,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
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
}

/// A minimal ACME client.
struct Client {
    http: Https,
    dir: Value,
    key: TestKey,
    kid: Option<String>,
    nonce: Option<String>,
}

impl Client {
    async fn new(fleet: &Fleet, directory_url: &str) -> Self {
        let http = Https::new(fleet);
        let r = http.send("GET", directory_url, None, Vec::new()).await;
        assert_eq!(r.status, 200, "directory: {r:?}");
        Self {
            http,
            dir: r.json(),
            key: TestKey::es256(),
            kid: None,
            nonce: None,
        }
    }

    fn url(&self, name: &str) -> String {
        self.dir[name]
            .as_str()
            .expect("directory member")
            .to_owned()
    }

    async fn fresh_nonce(&self) -> String {
        let r = self
            .http
            .send("HEAD", &self.url("newNonce"), None, Vec::new())
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        r.header("replay-nonce")
            .expect("Replay-Nonce on HEAD newNonce")
    }

    async fn nonce(&mut self) -> String {
        match self.nonce.take() {
            Some(n) => n,
            None => self.fresh_nonce().await,
        }
    }

    fn jws(&self, nonce: &str, url: &str, payload: Option<&Value>) -> Vec<u8> {
        let body = payload
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default();
        let h = self.key.header(self.kid.as_deref(), Some(nonce), url);
        self.key.sign_jws(&h, &body).to_string().into_bytes()
    }

    async fn raw(&mut self, url: &str, ctype: &str, body: Vec<u8>) -> Resp {
        let r = self.http.send("POST", url, Some(ctype), body).await;
        self.nonce = r.header("replay-nonce");
        r
    }

    /// A signed POST (`payload` None = POST-as-GET). Like real clients, retries once on
    /// `badNonce` with the fresh nonce that came with it (RFC 8555 §6.5).
    async fn post(&mut self, url: &str, payload: Option<&Value>) -> Resp {
        let nonce = self.nonce().await;
        let body = self.jws(&nonce, url, payload);
        let mut r = self.raw(url, "application/jose+json", body).await;
        if r.problem() == "badNonce" {
            let nonce = self.nonce().await;
            let body = self.jws(&nonce, url, payload);
            r = self.raw(url, "application/jose+json", body).await;
        }
        assert!(
            r.header("replay-nonce").is_some(),
            "Replay-Nonce on every response: {r:?}"
        );
        r
    }

    async fn new_account(&mut self) -> Resp {
        let url = self.url("newAccount");
        let r = self
            .post(
                &url,
                Some(&json!({"termsOfServiceAgreed": true, "contact": ["mailto:e2e@example.org"]})),
            )
            .await;
        assert_eq!(
            r.status,
            201,
            "newAccount: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        self.kid = Some(r.header("location").expect("account Location"));
        r
    }

    fn key_authorization(&self, token: &str) -> String {
        Jwk::from_value(&self.key.jwk())
            .expect("own jwk")
            .key_authorization(token)
    }
}

fn csr(names: &[&str]) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    let der = p.serialize_request(&key).expect("csr").der().to_vec();
    (key, der)
}

/// Serializes every use of the fixed dev validation ports 5001/5002 with the interop tests (the
/// same lock file as tests/tests/interop_acme.rs).
fn dev_port_lock() -> std::fs::File {
    let path = std::env::temp_dir().join("certgate-acme-dev-ports-5001-5002.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the dev port lock file");
    file.lock().expect("lock the dev port lock file");
    file
}

/// Answers http-01 on 127.0.0.1:5002 with `key_auth` for `token`, 404 otherwise.
async fn http01_responder(token: String, key_auth: String) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:5002")
        .await
        .expect("bind 127.0.0.1:5002 (dev http-01 port)");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (token, key_auth) = (token.clone(), key_auth.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let want = format!("GET /.well-known/acme-challenge/{token} ");
                let resp = if req.starts_with(&want) {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{key_auth}",
                        key_auth.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

fn fleet() -> Fleet {
    let mut f = Fleet::init();
    f.start_all();
    f
}

async fn poll(c: &mut Client, url: &str, until: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.post(url, None).await;
        assert_eq!(
            r.status,
            200,
            "{url}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        if until.contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "{url} stuck at {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_end_to_end() {
    // The dev http-01 port is shared with the interop tests: hold it for the whole test.
    let _lock = dev_port_lock();
    let fleet = fleet();
    let base = format!("https://{}", fleet.https);
    let mut c = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    for m in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
        "renewalInfo",
    ] {
        assert!(
            c.dir[m].as_str().is_some_and(|u| u.starts_with(&base)),
            "{m}: {}",
            c.dir
        );
    }
    // GET newNonce is 204.
    let r = c
        .http
        .send("GET", &c.url("newNonce"), None, Vec::new())
        .await;
    assert_eq!(r.status, 204);
    assert!(r.header("replay-nonce").is_some());
    assert!(
        r.links().iter().any(|l| l.contains("rel=\"index\"")),
        "{r:?}"
    );

    c.new_account().await;
    let kid = c.kid.clone().expect("kid");
    // The same key again: 200 with the same Location.
    let url = c.url("newAccount");
    let saved = c.kid.take();
    let r = c
        .post(&url, Some(&json!({"onlyReturnExisting": true})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("location").as_deref(), Some(kid.as_str()));
    c.kid = saved;

    // Contact update.
    let r = c
        .post(&kid, Some(&json!({"contact": ["mailto:new@example.org"]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["contact"][0], "mailto:new@example.org");

    let name = "e2e-acme.example.org";
    let url = c.url("newOrder");
    let r = c
        .post(
            &url,
            Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "newOrder: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let order_url = r.header("location").expect("order Location");
    let order = r.json();
    assert_eq!(order["status"], "pending");
    let authz_url = order["authorizations"][0]
        .as_str()
        .expect("authz")
        .to_owned();
    let finalize_url = order["finalize"].as_str().expect("finalize").to_owned();

    // Finalize before ready: orderNotReady.
    let (cert_key, csr_der) = csr(&[name]);
    let r = c
        .post(&finalize_url, Some(&json!({"csr": b64(&csr_der)})))
        .await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "orderNotReady"),
        "{r:?}"
    );

    let r = c.post(&authz_url, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let authz = r.json();
    assert_eq!(authz["identifier"]["value"], name);
    let ch = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .expect("http-01 offered")
        .clone();
    let token = ch["token"].as_str().expect("token").to_owned();
    let ch_url = ch["url"].as_str().expect("url").to_owned();

    let responder = http01_responder(token.clone(), c.key_authorization(&token)).await;
    let r = c.post(&ch_url, Some(&json!({}))).await;
    assert_eq!(
        r.status,
        200,
        "challenge: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.links()
            .iter()
            .any(|l| l.contains(&authz_url) && l.contains("rel=\"up\"")),
        "{r:?}"
    );
    let authz = poll(&mut c, &authz_url, &["valid", "invalid"]).await;
    responder.abort();
    assert_eq!(authz["status"], "valid", "{authz}");
    // POST-as-GET on the challenge shows it valid.
    let r = c.post(&ch_url, None).await;
    assert_eq!(r.json()["status"], "valid", "{r:?}");

    // A CSR with an extra name: badCSR, and the order stays ready.
    let (_, bad_csr) = csr(&[name, "extra.example.org"]);
    let r = c
        .post(&finalize_url, Some(&json!({"csr": b64(&bad_csr)})))
        .await;
    assert_eq!((r.status, r.problem().as_str()), (400, "badCSR"), "{r:?}");

    let order = poll(&mut c, &order_url, &["ready"]).await;
    assert_eq!(order["status"], "ready");
    let r = c
        .post(&finalize_url, Some(&json!({"csr": b64(&csr_der)})))
        .await;
    assert_eq!(
        r.status,
        200,
        "finalize: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let order = poll(&mut c, &order_url, &["valid"]).await;
    let cert_url = order["certificate"]
        .as_str()
        .expect("certificate url")
        .to_owned();

    let r = c.post(&cert_url, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/pem-certificate-chain")
    );
    let pem = String::from_utf8(r.body.clone()).expect("pem");
    assert!(
        pem.matches("BEGIN CERTIFICATE").count() >= 2,
        "leaf + chain: {pem}"
    );
    let leaf_b64: String = pem
        .split("-----END CERTIFICATE-----")
        .next()
        .expect("first block")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let leaf = base64::engine::general_purpose::STANDARD
        .decode(leaf_b64.trim())
        .expect("leaf der");

    // Orders list.
    let r = c.post(&format!("{kid}/orders"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json()["orders"]
            .as_array()
            .is_some_and(|o| o.iter().any(|u| u == &json!(order_url))),
        "{r:?}"
    );

    // ARI: the window lies in the last third of the certificate's life.
    let id = certgate_acme::ari::CertId::from_certificate(&leaf).expect("ARI id");
    let r = c
        .http
        .send(
            "GET",
            &format!("{}/{id}", c.url("renewalInfo")),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert!(r.json()["suggestedWindow"]["start"].is_string(), "{r:?}");
    // A renewal names the certificate it replaces.
    let url = c.url("newOrder");
    let r = c
        .post(
            &url,
            Some(&json!({"identifiers": [{"type": "dns", "value": name}], "replaces": id.to_string()})),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "renewal order: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["replaces"], json!(id.to_string()));

    // Revocation signed by the certificate's own key (jwk = the certificate key); then a second
    // time, by the account: alreadyRevoked.
    let url = c.url("revokeCert");
    let cert_key = TestKey::Es256(
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &cert_key.serialize_der(),
        )
        .expect("the CSR key as a JWS key"),
    );
    let nonce = c.nonce().await;
    let body = cert_key
        .sign_jws(
            &cert_key.header(None, Some(&nonce), &url),
            json!({"certificate": b64(&leaf), "reason": 4})
                .to_string()
                .as_bytes(),
        )
        .to_string()
        .into_bytes();
    let r = c.raw(&url, "application/jose+json", body).await;
    assert_eq!(
        r.status,
        200,
        "revoke by certificate key: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = c
        .post(&url, Some(&json!({"certificate": b64(&leaf), "reason": 4})))
        .await;
    assert_eq!(r.problem(), "alreadyRevoked", "{r:?}");

    // keyChange to a key another account holds: 409 + that account's Location.
    let mut c2 = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    c2.new_account().await;
    let kc_url = c.url("keyChange");
    let inner = c2.key.sign_jws(
        &c2.key.header(None, None, &kc_url),
        json!({"account": kid, "oldKey": c.key.jwk()})
            .to_string()
            .as_bytes(),
    );
    let r = c.post(&kc_url, Some(&inner)).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.header("location"), c2.kid.clone(), "{r:?}");

    // keyChange: roll to a new key; the old key no longer works.
    let new_key = TestKey::eddsa();
    let kc_url = c.url("keyChange");
    let inner = new_key.sign_jws(
        &new_key.header(None, None, &kc_url),
        json!({"account": kid, "oldKey": c.key.jwk()})
            .to_string()
            .as_bytes(),
    );
    let r = c.post(&kc_url, Some(&inner)).await;
    assert_eq!(
        r.status,
        200,
        "keyChange: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = c.post(&kid, None).await;
    // The old key (ES256) no longer verifies: the account key is now an EdDSA key.
    assert_eq!(r.status, 400, "old key no longer verifies: {r:?}");
    assert!(
        ["malformed", "badPublicKey"].contains(&r.problem().as_str()),
        "{r:?}"
    );
    c.key = new_key;
    let r = c.post(&kid, None).await;
    assert_eq!(r.status, 200, "new key works: {r:?}");

    // Deactivation; afterwards the account is refused.
    let r = c.post(&kid, Some(&json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "deactivated");
    let r = c.post(&kid, None).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "unauthorized"),
        "{r:?}"
    );
}

/// Core gRPC admin client over the fleet's socket (to make a second tenant).
async fn put_tenant(fleet: &Fleet, name: &str) {
    use certgate_proto::admin::admin_client::AdminClient;
    let ch = certgate_proto::transport::unix_channel(fleet.core_socket());
    let mut admin = AdminClient::new(ch);
    admin
        .put_tenant(certgate_proto::admin::Tenant {
            name: name.into(),
            public_base_url: format!("http://{}", fleet.http),
            default_profile: String::new(),
            active_issuer_id: String::new(),
        })
        .await
        .expect("PutTenant");
}

fn metric(fleet: &Fleet, name: &str, must_contain: &[&str]) -> f64 {
    let (_, body) = certgate_e2e::http_get(fleet.admin, "/metrics").expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_problem_and_nothing_is_issued() {
    let mut fleet = Fleet::init();
    // `certgate init` made the fleet nonce key: 32 bytes, owner-only.
    let key = fleet.data_dir().join("edge/nonce.key");
    let meta = std::fs::metadata(&key).expect("edge/nonce.key");
    assert_eq!(meta.len(), 32);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let edge_toml = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    assert!(
        edge_toml.contains("nonce_key_file = \"nonce.key\""),
        "{edge_toml}"
    );
    assert!(
        edge_toml.contains(&format!("base_url = \"https://{}\"", fleet.https)),
        "{edge_toml}"
    );
    // A small new-accounts-per-IP quota, to see the rate limit answer (edge.toml, per tenant).
    let cfg = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    std::fs::write(
        fleet.edge_config(),
        format!("{cfg}\n[rate_limits.default]\nacme_new_accounts_per_ip_per_hour = 3\n"),
    )
    .expect("write edge.toml");
    fleet.start_all();
    let base = format!("https://{}", fleet.https);
    let mut c = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    c.new_account().await;
    let kid = c.kid.clone().expect("kid");
    let new_order = c.url("newOrder");

    // Still serving: a directory GET and a POST-as-GET of the account answer.
    async fn alive(c: &mut Client, kid: &str) {
        let r = c.post(kid, None).await;
        assert_eq!(r.status, 200, "still serving: {r:?}");
    }

    // Replayed nonce → badNonce with a fresh nonce.
    let nonce = c.nonce().await;
    let body = c.jws(&nonce, &kid, None);
    let r = c.raw(&kid, "application/jose+json", body.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.raw(&kid, "application/jose+json", body).await;
    assert_eq!((r.status, r.problem().as_str()), (400, "badNonce"), "{r:?}");
    let fresh = r.header("replay-nonce").expect("fresh nonce with badNonce");
    assert_ne!(fresh, nonce);
    alive(&mut c, &kid).await;

    // Wrong url → unauthorized.
    let nonce = c.nonce().await;
    let body = c.jws(&nonce, &format!("{base}/acme/somewhere-else"), None);
    let r = c.raw(&kid, "application/jose+json", body).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "unauthorized"),
        "{r:?}"
    );
    alive(&mut c, &kid).await;

    // Unknown kid → accountDoesNotExist.
    let saved = c.kid.replace(format!("{base}/acme/acct/doesnotexist"));
    let r = c
        .post(
            &new_order,
            Some(&json!({"identifiers": [{"type": "dns", "value": "x.example.org"}]})),
        )
        .await;
    assert_eq!(r.problem(), "accountDoesNotExist", "{r:?}");
    c.kid = saved;
    alive(&mut c, &kid).await;

    // Oversize body → 413 (the ACME limit is 64 KiB).
    let r = c
        .raw(&new_order, "application/jose+json", vec![b'x'; 200 * 1024])
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.problem(), "malformed");
    assert!(r.header("replay-nonce").is_some());
    alive(&mut c, &kid).await;

    // Invalid JSON → malformed.
    let r = c
        .raw(&new_order, "application/jose+json", b"{not json".to_vec())
        .await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "malformed"),
        "{r:?}"
    );
    // A valid JWS whose payload is not JSON → malformed.
    let nonce = c.nonce().await;
    let h = c.key.header(c.kid.as_deref(), Some(&nonce), &new_order);
    let body = c.key.sign_jws(&h, b"{oops").to_string().into_bytes();
    let r = c.raw(&new_order, "application/jose+json", body).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "malformed"),
        "{r:?}"
    );
    alive(&mut c, &kid).await;

    // Wrong content type → 415.
    let nonce = c.nonce().await;
    let body = c.jws(&nonce, &kid, None);
    let r = c.raw(&kid, "application/json", body).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (415, "malformed"),
        "{r:?}"
    );
    alive(&mut c, &kid).await;

    // Finalize before ready → orderNotReady; a CSR with an extra name on a not-ready order is
    // refused too (nothing is issued either way).
    let r = c
        .post(
            &new_order,
            Some(&json!({"identifiers": [{"type": "dns", "value": "bad-input.example.org"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let finalize = r.json()["finalize"].as_str().expect("finalize").to_owned();
    let (_, csr_der) = csr(&["bad-input.example.org"]);
    let r = c
        .post(&finalize, Some(&json!({"csr": b64(&csr_der)})))
        .await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "orderNotReady"),
        "{r:?}"
    );
    let (_, bad) = csr(&["bad-input.example.org", "extra.example.org"]);
    let r = c.post(&finalize, Some(&json!({"csr": b64(&bad)}))).await;
    assert!(r.status >= 400, "{r:?}");
    alive(&mut c, &kid).await;

    // jwk where kid is required → malformed.
    let saved = c.kid.take();
    let r = c
        .post(
            &new_order,
            Some(&json!({"identifiers": [{"type": "dns", "value": "x.example.org"}]})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "malformed"),
        "{r:?}"
    );
    c.kid = saved;

    // Unknown tenant → 404 problem, naming nothing.
    let r = c
        .http
        .send(
            "GET",
            &format!("{base}/t/nosuch/acme/directory"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("default"),
        "{r:?}"
    );

    // An account of tenant `default` used at /t/other/ → accountDoesNotExist.
    put_tenant(&fleet, "other").await;
    let other = Client::new(&fleet, &format!("{base}/t/other/acme/directory")).await;
    let other_new_order = other.url("newOrder");
    assert!(
        other_new_order.contains("/t/other/acme/"),
        "{other_new_order}"
    );
    let r = c
        .post(
            &other_new_order,
            Some(&json!({"identifiers": [{"type": "dns", "value": "x.example.org"}]})),
        )
        .await;
    assert_eq!(r.problem(), "accountDoesNotExist", "{r:?}");
    alive(&mut c, &kid).await;

    // Rate limit: the fourth new account from this IP within the hour is refused with
    // rateLimited and a Retry-After of about an hour / 3 (+0–3 % jitter); lookups are not counted.
    for _ in 0..2 {
        let mut more = Client::new(&fleet, &format!("{base}/acme/directory")).await;
        more.new_account().await;
    }
    let mut more = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    let url = more.url("newAccount");
    let r = more
        .post(&url, Some(&json!({"termsOfServiceAgreed": true})))
        .await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (429, "rateLimited"),
        "{r:?}"
    );
    let after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1100..=1240).contains(&after), "Retry-After {after}");
    assert!(
        metric(
            &fleet,
            "certgate_edge_rate_limited_total",
            &["rule=\"acme_new_accounts\""]
        ) >= 1.0
    );
    alive(&mut c, &kid).await;

    // The edge kept serving throughout and nothing was issued: no ACME order became valid, and
    // the core counted no issuance.
    assert!(fleet_edge_alive(&fleet));
    let r = c.post(&format!("{kid}/orders"), None).await;
    for o in r.json()["orders"].as_array().cloned().unwrap_or_default() {
        let o = c.post(o.as_str().expect("url"), None).await.json();
        assert_ne!(o["status"], "valid", "{o}");
    }
    assert!(
        metric(
            &fleet,
            "certgate_edge_requests_total",
            &["protocol=\"acme\"", "outcome=\"client_error\""]
        ) >= 8.0,
        "bad input is counted"
    );
    assert!(
        metric(
            &fleet,
            "certgate_edge_requests_total",
            &[
                "protocol=\"acme\"",
                "endpoint=\"new-order\"",
                "outcome=\"client_error\""
            ]
        ) >= 1.0,
        "requests are labelled by endpoint"
    );
    assert!(
        metric(
            &fleet,
            "certgate_edge_request_duration_seconds_count",
            &["protocol=\"acme\"", "endpoint=\"directory\""]
        ) >= 1.0,
        "latency histogram per endpoint"
    );
}

fn fleet_edge_alive(fleet: &Fleet) -> bool {
    certgate_e2e::http_get(fleet.admin, "/healthz").map(|r| r.0) == Some(200)
}

/// RFC 3339 (UTC, seconds) of a Unix time, as a client sends it.
fn rfc3339(unix: i64) -> String {
    der::DateTime::from_unix_duration(Duration::from_secs(
        u64::try_from(unix).expect("after 1970"),
    ))
    .expect("representable")
    .to_string()
}

/// newOrder notBefore/notAfter (RFC 8555 §7.4) through the real edge and core: a window inside
/// the profile is echoed by the order and is exactly the issued certificate's validity; asking
/// finalize again returns the same certificate; windows beyond the profile's maximum, in the
/// past or inverted are `malformed` problems that say why, and the edge keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_order_validity_window_end_to_end() {
    let _lock = dev_port_lock();
    let fleet = fleet();
    let base = format!("https://{}", fleet.https);
    let mut c = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    c.new_account().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let day = 86_400;
    let url = c.url("newOrder");
    let name = "window.example.org";
    let ident = json!([{"type": "dns", "value": name}]);

    for (nb, na, needle) in [
        (Some(now), now + 400 * day, "profile"),
        (None, now + 400 * day, "profile"),
        (Some(now - 3_600), now + day, "in the past"),
        (Some(now + 2 * day), now + day, "notBefore"),
        (None, now - 60, "in the past"),
    ] {
        let mut req = json!({"identifiers": ident, "notAfter": rfc3339(na)});
        if let Some(nb) = nb {
            req["notBefore"] = json!(rfc3339(nb));
        }
        let r = c.post(&url, Some(&req)).await;
        assert_eq!(
            (r.status, r.problem().as_str()),
            (400, "malformed"),
            "{req}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let detail = r.json()["detail"].as_str().unwrap_or("").to_owned();
        assert!(detail.contains(needle), "{req}: {detail}");
    }

    let (nb, na) = (now + 3_600, now + 3_600 + 10 * day);
    let r = c
        .post(
            &url,
            Some(&json!({"identifiers": ident, "notBefore": rfc3339(nb), "notAfter": rfc3339(na)})),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "newOrder: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let order_url = r.header("location").expect("order Location");
    let order = r.json();
    assert_eq!(order["notBefore"], rfc3339(nb), "{order}");
    assert_eq!(order["notAfter"], rfc3339(na), "{order}");
    let authz_url = order["authorizations"][0]
        .as_str()
        .expect("authz")
        .to_owned();
    let finalize_url = order["finalize"].as_str().expect("finalize").to_owned();
    let authz = c.post(&authz_url, None).await.json();
    let ch = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .expect("http-01 offered")
        .clone();
    let token = ch["token"].as_str().expect("token").to_owned();
    let responder = http01_responder(token.clone(), c.key_authorization(&token)).await;
    let r = c
        .post(ch["url"].as_str().expect("challenge url"), Some(&json!({})))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let authz = poll(&mut c, &authz_url, &["valid", "invalid"]).await;
    responder.abort();
    assert_eq!(authz["status"], "valid", "{authz}");
    let (_, csr_der) = csr(&[name]);
    let r = c
        .post(&finalize_url, Some(&json!({"csr": b64(&csr_der)})))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let order = poll(&mut c, &order_url, &["valid", "invalid"]).await;
    assert_eq!(order["status"], "valid", "{order}");
    assert_eq!(order["notBefore"], rfc3339(nb), "{order}");
    let cert_url = order["certificate"]
        .as_str()
        .expect("certificate")
        .to_owned();
    let pem = String::from_utf8(c.post(&cert_url, None).await.body).expect("pem");
    let leaf_b64: String = pem
        .split("-----END CERTIFICATE-----")
        .next()
        .expect("first block")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let leaf = base64::engine::general_purpose::STANDARD
        .decode(leaf_b64.trim())
        .expect("leaf der");
    assert_eq!(
        certgate_core::x509::validity_of(&leaf).expect("validity"),
        (nb, na),
        "the certificate has exactly the requested dates"
    );
    // Finalize again: the same certificate.
    let r = c
        .post(&finalize_url, Some(&json!({"csr": b64(&csr_der)})))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["certificate"], cert_url.as_str());
}

/// Edges cache account keys (`[acme] account_cache_capacity`), yet a change made through one
/// edge is honoured at once by another edge that cached the account before it: a deactivated
/// account and a rolled-over key are refused there on the very next request (the core checks
/// the key each edge states), and the new key works there without any wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edges_cached_account_sees_deactivation_and_key_rollover_at_once() {
    let fleet = fleet();
    let base = format!("https://{}", fleet.https);
    // A second edge on the same core, same base URL and nonce key (as behind a load balancer).
    let (https2, http2, admin2) = (
        certgate_e2e::free_port(),
        certgate_e2e::free_port(),
        certgate_e2e::free_port(),
    );
    let cfg = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    let listen = format!(
        "[listen]\nhttps = \"127.0.0.1:{https2}\"\nhttp = \"127.0.0.1:{http2}\"\nadmin = \"127.0.0.1:{admin2}\"\n"
    );
    let start = cfg.find("[listen]").expect("[listen]");
    let end = cfg[start..]
        .find("\n\n")
        .map_or(cfg.len(), |e| start + e + 1);
    let cfg2 = format!("{}{listen}{}", &cfg[..start], &cfg[end..]);
    let path2 = fleet.edge_config().with_file_name("edge2.toml");
    std::fs::write(&path2, cfg2).expect("edge2.toml");
    let mut cmd = std::process::Command::new(certgate_e2e::bin("certgate-edge"));
    cmd.arg("--config").arg(&path2);
    let _edge2 =
        certgate_e2e::ChildGuard::spawn("certgate-edge-2", cmd, &fleet.scratch().join("edge2.log"));
    let admin2: SocketAddr = ([127, 0, 0, 1], admin2).into();
    let deadline = Instant::now() + certgate_e2e::READY_TIMEOUT;
    while certgate_e2e::http_get(admin2, "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "second edge not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let edge1 = fleet.https;
    let edge2: SocketAddr = ([127, 0, 0, 1], https2).into();

    // Deactivation through edge 1 after edge 2 cached the account.
    let mut c = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    c.new_account().await;
    let kid = c.kid.clone().expect("kid");
    let orders = format!("{kid}/orders");
    c.http.addr = edge2;
    let r = c.post(&orders, None).await;
    assert_eq!(
        r.status, 200,
        "edge 2 serves (and caches) the account: {r:?}"
    );
    c.http.addr = edge1;
    let r = c.post(&kid, Some(&json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.http.addr = edge2;
    let r = c.post(&orders, None).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "unauthorized"),
        "edge 2 refuses the deactivated account at once: {r:?}"
    );

    // Key rollover through edge 1 after edge 2 cached the old key.
    let mut c = Client::new(&fleet, &format!("{base}/acme/directory")).await;
    c.new_account().await;
    let kid = c.kid.clone().expect("kid");
    let orders = format!("{kid}/orders");
    c.http.addr = edge2;
    let r = c.post(&orders, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.http.addr = edge1;
    let new_key = TestKey::es256();
    let kc_url = c.url("keyChange");
    let inner = new_key.sign_jws(
        &new_key.header(None, None, &kc_url),
        json!({"account": kid, "oldKey": c.key.jwk()})
            .to_string()
            .as_bytes(),
    );
    let r = c.post(&kc_url, Some(&inner)).await;
    assert_eq!(r.status, 200, "keyChange: {r:?}");
    c.http.addr = edge2;
    let r = c.post(&orders, None).await;
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "unauthorized"),
        "edge 2 refuses the rolled-over key at once: {r:?}"
    );
    c.key = new_key;
    let r = c.post(&orders, None).await;
    assert_eq!(r.status, 200, "edge 2 takes the new key at once: {r:?}");
}
