//! The edge's OCSP/CRL path against an in-memory fake core (practice 10): a real tonic client
//! over `tokio::io::duplex` carrying a real `WatchStatus` stream, a real HTTP listener on a
//! loopback port, and OCSP requests, responses and CRLs made by the `openssl` command line (an
//! independent implementation), so nothing here is checked against itself.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use certgate_edge::ca::CaCerts;
use certgate_edge::config::Limits;
use certgate_edge::core_client::CoreClient;
use certgate_edge::permits::Permits;
use certgate_edge::router::{EdgeContext, Listener, Router};
use certgate_edge::server::{Pipeline, serve_listener};
use certgate_edge::status::watch::WatchSettings;
use certgate_edge::status::{StatusCache, StatusSettings};
use certgate_proto::RpcError;
use certgate_proto::core::core_server::{Core, CoreServer};
use certgate_proto::core::status_event::Event;
use certgate_proto::core::{
    CertificateRecord, CrlEntry, GetCaChainRequest, GetCaChainResponse, GetCertificateRequest,
    GetCrlRequest, GetOcspRequest, IssueRequest, IssueResponse, IssuerEntry, OcspEntry,
    RevokeRequest, RevokeResponse, StatusEvent, WatchStatusRequest,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// OpenSSL fixtures

/// A temporary CA made with the `openssl` command line.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(cn: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("fixture file")
    }

    /// Leaf `{name}.pem` with serial `0x{serial_hex}`.
    fn leaf(&self, name: &str, serial_hex: &str) {
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
                &format!("0x{serial_hex}"),
                "-days",
                "10",
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn ca_der(&self) -> Vec<u8> {
        openssl(
            self.dir.path(),
            &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"],
        );
        self.read("ca.der")
    }

    /// An OCSP request (SHA-1 CertIDs, no nonce) for the given leaves.
    fn request(&self, out: &str, leaves: &[&str]) -> Vec<u8> {
        let mut args = vec!["ocsp", "-issuer", "ca.pem", "-no_nonce"];
        let certs: Vec<String> = leaves.iter().map(|l| format!("{l}.pem")).collect();
        for c in &certs {
            args.extend_from_slice(&["-cert", c]);
        }
        args.extend_from_slice(&["-reqout", out]);
        openssl(self.dir.path(), &args);
        self.read(out)
    }

    /// OpenSSL's responder answering `req` from an index of `(serial_hex, 'V' | 'R')`.
    fn respond(&self, req: &str, out: &str, entries: &[(&str, char)]) -> Vec<u8> {
        let mut index = String::new();
        for (serial, status) in entries {
            let revoked = if *status == 'R' {
                "260101000000Z,keyCompromise"
            } else {
                ""
            };
            index.push_str(&format!(
                "{status}\t301231000000Z\t{revoked}\t{}\tunknown\t/CN=x{serial}\n",
                serial.to_uppercase()
            ));
        }
        std::fs::write(self.path("index.txt"), index).expect("index");
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

    fn crl(&self) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = CA_default\n[CA_default]\ndatabase = crlindex.txt\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n",
        )
        .expect("cnf");
        std::fs::write(d.join("crlindex.txt"), "").expect("index");
        std::fs::write(d.join("crlnumber"), "1000\n").expect("crlnumber");
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

// ---------------------------------------------------------------------------------------------
// The fake core

type StreamItem = Result<StatusEvent, Status>;

#[derive(Default)]
struct FakeState {
    ocsp_calls: AtomicUsize,
    crl_calls: AtomicUsize,
    ocsp_delay_ms: AtomicU64,
    /// When set, GetOcsp waits for a permit of this gate: the test decides when a lookup
    /// returns (a fixed delay races with a loaded machine's scheduling).
    ocsp_gate: Mutex<Option<Arc<Semaphore>>>,
    down: AtomicBool,
    /// GetOcsp answers by (tenant, sorted serials joined by ",").
    ocsp: Mutex<HashMap<(String, String), Vec<u8>>>,
    /// GetCrl answers by (tenant, issuer, shard).
    crl: Mutex<HashMap<(String, String, String), Vec<u8>>>,
    /// One receiver per WatchStatus call to come; none left → a stream that never yields.
    streams: Mutex<VecDeque<mpsc::Receiver<StreamItem>>>,
    /// The cursor of every WatchStatus call.
    cursors: Mutex<Vec<u64>>,
}

#[derive(Clone, Default)]
struct FakeCore(Arc<FakeState>);

impl FakeCore {
    /// Holds every GetOcsp answer until the returned gate gets a permit per answer.
    fn hold_ocsp(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.0.ocsp_gate.lock().expect("lock") = Some(gate.clone());
        gate
    }
    /// Queues the next WatchStatus stream; events sent on the returned sender reach the edge,
    /// dropping it ends the stream.
    fn next_stream(&self) -> mpsc::Sender<StreamItem> {
        let (tx, rx) = mpsc::channel(1024);
        self.0.streams.lock().expect("lock").push_back(rx);
        tx
    }
    fn answer_ocsp(&self, tenant: &str, serials: &[&str], der: Vec<u8>) {
        let mut s: Vec<&str> = serials.to_vec();
        s.sort_unstable();
        self.0
            .ocsp
            .lock()
            .expect("lock")
            .insert((tenant.into(), s.join(",")), der);
    }
    fn ocsp_calls(&self) -> usize {
        self.0.ocsp_calls.load(Ordering::SeqCst)
    }
    fn cursors(&self) -> Vec<u64> {
        self.0.cursors.lock().expect("lock").clone()
    }
}

type Events = Pin<Box<dyn futures::Stream<Item = StreamItem> + Send>>;

#[tonic::async_trait]
impl Core for FakeCore {
    async fn issue(&self, _: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        Err(RpcError::malformed("test", "not in this fake").into())
    }
    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        Err(RpcError::malformed("test", "not in this fake").into())
    }
    async fn get_certificate(
        &self,
        _: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        Err(RpcError::not_found("certificate.unknown", "no such certificate").into())
    }
    async fn get_ca_chain(
        &self,
        _: Request<GetCaChainRequest>,
    ) -> Result<Response<GetCaChainResponse>, Status> {
        Err(RpcError::not_found("issuer.unknown", "no such issuer").into())
    }
    async fn get_ocsp(&self, req: Request<GetOcspRequest>) -> Result<Response<OcspEntry>, Status> {
        self.0.ocsp_calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.0.ocsp_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let gate = self.0.ocsp_gate.lock().expect("lock").clone();
        if let Some(g) = gate {
            g.acquire().await.expect("gate open").forget();
        }
        if self.0.down.load(Ordering::SeqCst) {
            return Err(RpcError::unavailable("signer down", Duration::from_secs(3)).into());
        }
        let r = req.into_inner();
        let mut serials: Vec<String> = r.certs.iter().map(|c| c.serial_hex.clone()).collect();
        serials.sort_unstable();
        let found = self
            .0
            .ocsp
            .lock()
            .expect("lock")
            .get(&(r.tenant.clone(), serials.join(",")))
            .cloned();
        match found {
            Some(der) => Ok(Response::new(OcspEntry {
                tenant: r.tenant,
                response_der: der,
                certs: r.certs,
                ..Default::default()
            })),
            None => Err(RpcError::not_found("certificate.unknown", "no such certificate").into()),
        }
    }
    async fn get_crl(&self, req: Request<GetCrlRequest>) -> Result<Response<CrlEntry>, Status> {
        self.0.crl_calls.fetch_add(1, Ordering::SeqCst);
        if self.0.down.load(Ordering::SeqCst) {
            return Err(RpcError::unavailable("down", Duration::from_secs(2)).into());
        }
        let r = req.into_inner();
        let found = self
            .0
            .crl
            .lock()
            .expect("lock")
            .get(&(r.tenant.clone(), r.issuer_id.clone(), r.shard.clone()))
            .cloned();
        match found {
            Some(der) => Ok(Response::new(CrlEntry {
                tenant: r.tenant,
                issuer_id: r.issuer_id,
                shard: r.shard,
                crl_der: der,
                ..Default::default()
            })),
            None => Err(RpcError::not_found("crl.unknown", "no such CRL").into()),
        }
    }
    async fn get_next_ca_chain(
        &self,
        _: Request<certgate_proto::core::GetNextCaChainRequest>,
    ) -> Result<Response<certgate_proto::core::GetCaChainResponse>, Status> {
        Err(Status::not_found("no CA rollover is staged in this fake"))
    }
    async fn describe_profile(
        &self,
        _: Request<certgate_proto::core::DescribeProfileRequest>,
    ) -> Result<Response<certgate_proto::core::ProfileDescription>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    type WatchStatusStream = Events;
    async fn watch_status(
        &self,
        req: Request<WatchStatusRequest>,
    ) -> Result<Response<Events>, Status> {
        self.0
            .cursors
            .lock()
            .expect("lock")
            .push(req.into_inner().cursor);
        let rx = self.0.streams.lock().expect("lock").pop_front();
        match rx {
            Some(rx) => Ok(Response::new(Box::pin(futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
            )))),
            None => Ok(Response::new(Box::pin(futures::stream::pending()))),
        }
    }
}

async fn fake_core_client(fake: FakeCore) -> CoreClient {
    let channel = Endpoint::from_static("http://fake")
        .connect_with_connector(tower::service_fn(move |_| {
            let fake = fake.clone();
            async move {
                let (client, server) = tokio::io::duplex(256 * 1024);
                tokio::spawn(
                    Server::builder()
                        .add_service(CoreServer::new(fake))
                        .serve_with_incoming(futures::stream::once(async move {
                            Ok::<_, std::io::Error>(server)
                        })),
                );
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }))
        .await
        .expect("in-memory channel");
    CoreClient::from_channel(channel, Duration::from_secs(5))
}

// ---------------------------------------------------------------------------------------------
// The edge under test

struct Edge {
    addr: std::net::SocketAddr,
    cache: StatusCache,
    _stop: watch::Sender<bool>,
}

async fn start_edge(fake: &FakeCore) -> Edge {
    start_edge_with(fake, StatusSettings::default()).await
}

async fn start_edge_with(fake: &FakeCore, settings: StatusSettings) -> Edge {
    start_edge_guarded(fake, settings, Default::default()).await
}

async fn start_edge_guarded(
    fake: &FakeCore,
    settings: StatusSettings,
    guard: certgate_edge::server::Guard,
) -> Edge {
    let core = fake_core_client(fake.clone()).await;
    let cache = StatusCache::new(&settings);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(certgate_edge::status::watch::run(
        cache.clone(),
        core.clone(),
        WatchSettings {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
        },
        rx.clone(),
    ));
    let pipeline = Arc::new(Pipeline {
        router: certgate_edge::status::handler::mount(Router::standard(), &cache),
        ctx: EdgeContext {
            core,
            ca: CaCerts::new(16, Duration::from_secs(60)),
        },
        limits: Limits::default(),
        in_flight: Permits::new(512),
        guard,
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(serve_listener(tcp, Listener::Http, None, pipeline, rx));
    Edge {
        addr,
        cache,
        _stop: tx,
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading a huge body; a failed write is fine then.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let text = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn post_ocsp(addr: std::net::SocketAddr, path: &str, der: &[u8]) -> Reply {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/ocsp-request")],
        der,
    )
    .await
}

fn get_path(prefix: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    // Percent-encode as RFC 6960 Appendix A.1 asks.
    let enc = b64
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!("{prefix}/ocsp/{enc}")
}

fn ev(cursor: u64, event: Event) -> StreamItem {
    Ok(StatusEvent {
        cursor,
        event: Some(event),
    })
}

fn issuer(tenant: &str, id: &str, der: Vec<u8>) -> Event {
    Event::Issuer(IssuerEntry {
        tenant: tenant.into(),
        issuer_id: id.into(),
        cert_der: der,
    })
}

fn ocsp(tenant: &str, der: Vec<u8>) -> Event {
    Event::Ocsp(OcspEntry {
        tenant: tenant.into(),
        response_der: der,
        ..Default::default()
    })
}

/// Polls `f` every 10 ms until it holds; a generous real-time deadline (30 s) for loaded machines.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

const OCSP_ERR_MALFORMED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x01];
const OCSP_ERR_TRY_LATER: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x03];
const OCSP_ERR_UNAUTHORIZED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x06];

/// CA `issuing-a` of tenant `default` with leaves a (1001), b (1002), c (1003); the snapshot
/// carries the issuer, a good response for `a` and the full CRL.
struct World {
    pki: Pki,
    req_a: Vec<u8>,
    resp_a_good: Vec<u8>,
    crl: Vec<u8>,
    tx: mpsc::Sender<StreamItem>,
}

async fn world(fake: &FakeCore) -> World {
    let pki = Pki::new("issuing-a");
    for (n, s) in [("a", "1001"), ("b", "1002"), ("c", "1003")] {
        pki.leaf(n, s);
    }
    let req_a = pki.request("req-a.der", &["a"]);
    let resp_a_good = pki.respond("req-a.der", "resp-a.der", &[("1001", 'V')]);
    let crl = pki.crl();
    let tx = fake.next_stream();
    for e in [
        ev(1, issuer("default", "issuing-a", pki.ca_der())),
        ev(2, ocsp("default", resp_a_good.clone())),
        ev(
            3,
            Event::Crl(CrlEntry {
                tenant: "default".into(),
                issuer_id: "issuing-a".into(),
                shard: "full".into(),
                crl_der: crl.clone(),
                ..Default::default()
            }),
        ),
        ev(3, Event::SnapshotComplete(true)),
    ] {
        tx.send(e).await.expect("stream open");
    }
    World {
        pki,
        req_a,
        resp_a_good,
        crl,
        tx,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn snapshot_fills_the_cache_and_hits_are_served_with_rfc5019_headers_without_core_calls() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;

    for reply in [
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await,
        http(edge.addr, "GET", &get_path("", &w.req_a), &[], &[]).await,
    ] {
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body, w.resp_a_good,
            "the precomputed bytes, byte for byte"
        );
        assert_eq!(reply.headers["content-type"], "application/ocsp-response");
        let cc = &reply.headers["cache-control"];
        assert!(
            cc.ends_with(", public, no-transform, must-revalidate"),
            "{cc}"
        );
        // openssl -ndays 4: max-age runs to nextUpdate (4 days, minus the seconds elapsed).
        let max_age: u64 = cc
            .strip_prefix("max-age=")
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .expect("max-age");
        assert!((4 * 86400 - 600..=4 * 86400).contains(&max_age), "{cc}");
        assert!(reply.headers["etag"].starts_with('"'));
        assert!(reply.headers["last-modified"].ends_with(" GMT"));
        assert!(reply.headers["expires"].ends_with(" GMT"));
    }
    let crl = http(edge.addr, "GET", "/crl/issuing-a/full.crl", &[], &[]).await;
    assert_eq!(crl.status, 200);
    assert_eq!(crl.headers["content-type"], "application/pkix-crl");
    assert_eq!(crl.body, w.crl);
    assert!(crl.headers["cache-control"].starts_with("max-age="));
    assert_eq!(
        fake.ocsp_calls(),
        0,
        "every answer came from the pushed cache"
    );
    assert_eq!(fake.0.crl_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn conditional_get_with_the_etag_is_304_and_head_has_no_body() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let path = get_path("", &w.req_a);
    let first = http(edge.addr, "GET", &path, &[], &[]).await;
    let etag = first.headers["etag"].clone();
    let again = http(edge.addr, "GET", &path, &[("If-None-Match", &etag)], &[]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.headers["etag"], etag);
    let other = http(
        edge.addr,
        "GET",
        &path,
        &[("If-None-Match", "\"something-else\"")],
        &[],
    )
    .await;
    assert_eq!(other.status, 200);
    let head = http(edge.addr, "HEAD", &path, &[], &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        w.resp_a_good.len().to_string()
    );
    // CRLs too.
    let crl = http(edge.addr, "GET", "/crl/issuing-a/full.crl", &[], &[]).await;
    let crl304 = http(
        edge.addr,
        "GET",
        "/crl/issuing-a/full.crl",
        &[("If-None-Match", &crl.headers["etag"])],
        &[],
    )
    .await;
    assert_eq!(crl304.status, 304);
}

#[tokio::test]
async fn a_live_update_replaces_the_cached_response() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    assert_eq!(
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
        w.resp_a_good
    );
    let revoked = w
        .pki
        .respond("req-a.der", "resp-a-revoked.der", &[("1001", 'R')]);
    assert_ne!(revoked, w.resp_a_good);
    w.tx.send(ev(4, ocsp("default", revoked.clone())))
        .await
        .expect("stream open");
    let mut served = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        served = post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body;
        if served == revoked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        served, revoked,
        "the pushed revocation is what the edge serves"
    );
    assert_eq!(fake.ocsp_calls(), 0);
}

#[tokio::test]
async fn n_concurrent_misses_for_one_certificate_make_exactly_one_core_call() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let req_c = w.pki.request("req-c.der", &["c"]);
    let resp_c = w.pki.respond("req-c.der", "resp-c.der", &[("1003", 'V')]);
    fake.answer_ocsp("default", &["1003"], resp_c.clone());
    fake.0.ocsp_delay_ms.store(300, Ordering::SeqCst);
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;

    let path = get_path("", &req_c);
    let replies = futures::future::join_all((0..40).map(|i| {
        let path = path.clone();
        let req = req_c.clone();
        async move {
            if i % 2 == 0 {
                http(edge.addr, "GET", &path, &[], &[]).await
            } else {
                post_ocsp(edge.addr, "/ocsp", &req).await
            }
        }
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, resp_c);
    }
    assert_eq!(
        fake.ocsp_calls(),
        1,
        "single-flight: one GetOcsp for 40 misses"
    );
    // And the answer is cached.
    assert_eq!(post_ocsp(edge.addr, "/ocsp", &req_c).await.body, resp_c);
    assert_eq!(fake.ocsp_calls(), 1);
}

#[tokio::test]
async fn unknown_serial_is_unauthorized_after_asking_the_core_and_unknown_issuer_without() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    // b is under a known issuer but the core does not know it.
    let req_b = w.pki.request("req-b.der", &["b"]);
    let r = post_ocsp(edge.addr, "/ocsp", &req_b).await;
    assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_UNAUTHORIZED));
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(fake.ocsp_calls(), 1);
    // A certificate of a CA this edge never heard of: unauthorized, no core call.
    let stranger = Pki::new("stranger");
    stranger.leaf("s", "1001");
    let req_s = stranger.request("req-s.der", &["s"]);
    let r = post_ocsp(edge.addr, "/ocsp", &req_s).await;
    assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_UNAUTHORIZED));
    assert_eq!(fake.ocsp_calls(), 1);
}

#[tokio::test]
async fn i4_another_tenants_issuer_is_unauthorized() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    // Tenant `other` has its own CA; its response is pushed too.
    let other = Pki::new("issuing-o");
    other.leaf("o", "2001");
    let req_o = other.request("req-o.der", &["o"]);
    let resp_o = other.respond("req-o.der", "resp-o.der", &[("2001", 'V')]);
    w.tx.send(ev(5, issuer("other", "issuing-o", other.ca_der())))
        .await
        .expect("open");
    w.tx.send(ev(6, ocsp("other", resp_o.clone())))
        .await
        .expect("open");
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    wait_until("other's response cached", || edge.cache.size().0 >= 3).await;
    let r = post_ocsp(edge.addr, "/t/other/ocsp", &req_o).await;
    assert_eq!(r.body, resp_o, "tenant other is served under its prefix");
    // Default's certificate asked under tenant other, and other's under default.
    let r = post_ocsp(edge.addr, "/t/other/ocsp", &w.req_a).await;
    assert_eq!(r.body, OCSP_ERR_UNAUTHORIZED);
    let r = post_ocsp(edge.addr, "/ocsp", &req_o).await;
    assert_eq!(r.body, OCSP_ERR_UNAUTHORIZED);
    let r = http(
        edge.addr,
        "GET",
        "/t/other/crl/issuing-a/full.crl",
        &[],
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        fake.ocsp_calls(),
        0,
        "no core call for another tenant's issuer"
    );
}

#[tokio::test]
async fn a_multi_certid_request_is_answered_from_one_core_response_for_the_set() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let req_ab = w.pki.request("req-ab.der", &["a", "b"]);
    let resp_ab = w
        .pki
        .respond("req-ab.der", "resp-ab.der", &[("1001", 'V'), ("1002", 'V')]);
    fake.answer_ocsp("default", &["1001", "1002"], resp_ab.clone());
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    for _ in 0..3 {
        let r = post_ocsp(edge.addr, "/ocsp", &req_ab).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, resp_ab);
    }
    assert_eq!(fake.ocsp_calls(), 1, "the set response is cached");
    // A set including an unknown certificate: the core cannot sign it → unauthorized.
    let req_ac = w.pki.request("req-ac.der", &["a", "c"]);
    let r = post_ocsp(edge.addr, "/ocsp", &req_ac).await;
    assert_eq!(r.body, OCSP_ERR_UNAUTHORIZED);
}

#[tokio::test]
async fn core_down_is_try_later_for_ocsp_and_503_for_crl_and_cached_answers_still_serve() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    fake.0.down.store(true, Ordering::SeqCst);
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let req_c = w.pki.request("req-c.der", &["c"]);
    let r = post_ocsp(edge.addr, "/ocsp", &req_c).await;
    assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_TRY_LATER));
    assert_eq!(r.headers["retry-after"], "3");
    let r = http(edge.addr, "GET", "/crl/issuing-a/7.crl", &[], &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "2");
    // What is cached is still served.
    let r = post_ocsp(edge.addr, "/ocsp", &w.req_a).await;
    assert_eq!(r.body, w.resp_a_good);
}

#[tokio::test]
async fn bad_input_gets_the_right_ocsp_status_or_http_error_never_a_500() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let a = edge.addr;
    // Truncated DER at several lengths.
    for cut in [1, 2, 10, w.req_a.len() / 2, w.req_a.len() - 1] {
        let r = post_ocsp(a, "/ocsp", &w.req_a[..cut]).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, OCSP_ERR_MALFORMED),
            "cut at {cut}"
        );
    }
    // Wrong content type.
    let r = http(
        a,
        "POST",
        "/ocsp",
        &[("Content-Type", "application/octet-stream")],
        &w.req_a,
    )
    .await;
    assert_eq!(r.status, 415);
    // A body over the OCSP limit (8 KiB) and one over the edge's body limit (1 MiB).
    let r = post_ocsp(a, "/ocsp", &vec![0x30; 9 * 1024]).await;
    assert_eq!(r.status, 413);
    let r = post_ocsp(a, "/ocsp", &vec![0x30; 2 << 20]).await;
    assert_eq!(r.status, 413);
    // Garbage base64 in the GET path, and a GET without a request.
    for path in ["/ocsp/!!!notbase64!!!", "/ocsp/%zz", "/ocsp/MAo%3D"] {
        let r = http(a, "GET", path, &[], &[]).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, OCSP_ERR_MALFORMED),
            "{path}"
        );
    }
    let r = http(a, "GET", "/ocsp", &[], &[]).await;
    assert_eq!(r.body, OCSP_ERR_MALFORMED);
    // An overlong GET segment.
    let r = http(a, "GET", &format!("/ocsp/{}", "A".repeat(5000)), &[], &[]).await;
    assert_eq!(r.status, 414);
    // Methods and paths.
    let r = http(a, "PUT", "/ocsp", &[], b"x").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
    let r = http(a, "POST", "/crl/issuing-a/full.crl", &[], b"x").await;
    assert_eq!(r.status, 405);
    for path in [
        "/crl/issuing-a/abc.crl",
        "/crl/issuing-a/01.crl",
        "/crl/unknown-issuer/full.crl",
        "/crl/",
        "/ocspx",
    ] {
        let r = http(a, "GET", path, &[], &[]).await;
        assert_eq!(r.status, 404, "{path}");
    }
    // Still serving after all that.
    assert_eq!(post_ocsp(a, "/ocsp", &w.req_a).await.body, w.resp_a_good);
    assert_eq!(
        fake.ocsp_calls(),
        0,
        "no malformed request reached the core"
    );
}

#[tokio::test]
async fn reset_keeps_serving_old_entries_until_the_new_snapshot_completes_then_sweeps_them() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let req_b = w.pki.request("req-b.der", &["b"]);
    let resp_b = w.pki.respond("req-b.der", "resp-b.der", &[("1002", 'V')]);
    // Reset: the new snapshot holds b, not a.
    w.tx.send(ev(100, Event::Reset(true))).await.expect("open");
    w.tx.send(ev(101, issuer("default", "issuing-a", w.pki.ca_der())))
        .await
        .expect("open");
    w.tx.send(ev(102, ocsp("default", resp_b.clone())))
        .await
        .expect("open");
    wait_until("b cached", || edge.cache.size().0 >= 3).await;
    // Mid-snapshot: a is still served from cache.
    assert_eq!(
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
        w.resp_a_good
    );
    assert_eq!(post_ocsp(edge.addr, "/ocsp", &req_b).await.body, resp_b);
    assert_eq!(fake.ocsp_calls(), 0);
    w.tx.send(ev(103, Event::SnapshotComplete(true)))
        .await
        .expect("open");
    // After completion, a (absent from the new snapshot) is gone: the edge asks the core.
    wait_until("a swept", || edge.cache.size().0 == 1).await;
    let r = post_ocsp(edge.addr, "/ocsp", &w.req_a).await;
    assert_eq!(
        r.body, OCSP_ERR_UNAUTHORIZED,
        "the fake core does not know a"
    );
    assert_eq!(fake.ocsp_calls(), 1);
    assert_eq!(post_ocsp(edge.addr, "/ocsp", &req_b).await.body, resp_b);
}

#[tokio::test]
async fn a_broken_stream_reconnects_and_resumes_from_the_last_live_cursor() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let second = fake.next_stream();
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let revoked = w
        .pki
        .respond("req-a.der", "resp-a-revoked.der", &[("1001", 'R')]);
    w.tx.send(ev(7, Event::Heartbeat(true)))
        .await
        .expect("open");
    w.tx.send(ev(9, ocsp("default", revoked.clone())))
        .await
        .expect("open");
    wait_until("cursor 9", || edge.cache.cursor() == 9).await;
    // The core goes away mid-stream.
    w.tx.send(Err(Status::unavailable("core restarting")))
        .await
        .expect("open");
    drop(w.tx);
    wait_until("reconnected", || fake.cursors().len() >= 2).await;
    assert_eq!(
        fake.cursors()[..2],
        [0, 9],
        "first from scratch, then from cursor 9"
    );
    // Nothing forgotten across the reconnect, and the new stream's events apply.
    assert_eq!(post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body, revoked);
    second
        .send(ev(10, ocsp("default", w.resp_a_good.clone())))
        .await
        .expect("open");
    wait_until("cursor 10", || edge.cache.cursor() == 10).await;
    assert_eq!(
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
        w.resp_a_good
    );
}

#[tokio::test]
async fn a_stream_broken_mid_snapshot_resumes_from_before_the_snapshot() {
    let fake = FakeCore::default();
    let pki = Pki::new("issuing-a");
    let tx = fake.next_stream();
    tx.send(ev(5, issuer("default", "issuing-a", pki.ca_der())))
        .await
        .expect("open");
    tx.send(Err(Status::unavailable("gone")))
        .await
        .expect("open");
    drop(tx);
    let edge = start_edge(&fake).await;
    wait_until("reconnected", || fake.cursors().len() >= 2).await;
    assert_eq!(
        fake.cursors()[..2],
        [0, 0],
        "half a snapshot is not resumed"
    );
    assert!(!edge.cache.snapshot_complete());
}

#[tokio::test]
async fn misses_beyond_the_in_flight_bound_are_shed_with_try_later() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let req_b = w.pki.request("req-b.der", &["b"]);
    let req_c = w.pki.request("req-c.der", &["c"]);
    let resp_b = w.pki.respond("req-b.der", "resp-b.der", &[("1002", 'V')]);
    fake.answer_ocsp("default", &["1002"], resp_b.clone());
    let gate = fake.hold_ocsp();
    let edge = start_edge_with(
        &fake,
        StatusSettings {
            max_miss_in_flight: 1,
            ..StatusSettings::default()
        },
    )
    .await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let addr = edge.addr;
    let slow = tokio::spawn(async move { post_ocsp(addr, "/ocsp", &req_b).await });
    wait_until("first miss in flight", || fake.ocsp_calls() == 1).await;
    // A miss for another key while the only slot is taken: shed at once, not queued.
    let r = post_ocsp(addr, "/ocsp", &req_c).await;
    assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_TRY_LATER));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(fake.ocsp_calls(), 1, "the shed miss never reached the core");
    gate.add_permits(1);
    assert_eq!(slow.await.expect("task").body, resp_b);
    // Hits are never shed.
    assert_eq!(post_ocsp(addr, "/ocsp", &w.req_a).await.body, w.resp_a_good);
}

#[tokio::test]
async fn a_core_answer_for_other_certificates_is_not_served() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    // The (buggy) core answers a question about c with a's response.
    fake.answer_ocsp("default", &["1003"], w.resp_a_good.clone());
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let req_c = w.pki.request("req-c.der", &["c"]);
    let r = post_ocsp(edge.addr, "/ocsp", &req_c).await;
    assert_eq!(r.body, OCSP_ERR_TRY_LATER);
    // And nothing was cached under c's key.
    let r = post_ocsp(edge.addr, "/ocsp", &req_c).await;
    assert_eq!(r.body, OCSP_ERR_TRY_LATER);
    assert_eq!(fake.ocsp_calls(), 2);
}

#[tokio::test]
async fn a_saturated_ocsp_bulkhead_answers_try_later_while_crls_keep_being_served() {
    use certgate_edge::bulkhead::{BulkheadConfig, Bulkheads};
    let fake = FakeCore::default();
    let w = world(&fake).await;
    for (n, s) in [("d", "1004"), ("e", "1005")] {
        w.pki.leaf(n, s);
    }
    let slow: Vec<Vec<u8>> = ["d", "e"]
        .iter()
        .map(|n| w.pki.request(&format!("req-{n}.der"), &[n]))
        .collect();
    let gate = fake.hold_ocsp();
    let guard = certgate_edge::server::Guard {
        bulkheads: Bulkheads::new(BulkheadConfig {
            per_protocol: 50,
            protocols: std::collections::BTreeMap::from([("ocsp".to_owned(), 2)]),
            per_tenant: 50,
            max_tenant_pools: 16,
            ..BulkheadConfig::default()
        }),
        ..Default::default()
    };
    let edge = start_edge_guarded(&fake, StatusSettings::default(), guard).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let addr = edge.addr;
    // Two slow misses fill the OCSP pool.
    let held: Vec<_> = slow
        .into_iter()
        .map(|req| tokio::spawn(async move { post_ocsp(addr, "/ocsp", &req).await }))
        .collect();
    wait_until("both misses in flight", || fake.ocsp_calls() == 2).await;
    // Even a cache hit is shed now, with OCSP's own "try later"…
    let r = post_ocsp(addr, "/ocsp", &w.req_a).await;
    assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_TRY_LATER));
    assert_eq!(r.headers["retry-after"], "1");
    // …while the CRL path, another protocol, keeps answering.
    let crl = http(addr, "GET", "/crl/issuing-a/full.crl", &[], &[]).await;
    assert_eq!(crl.status, 200);
    assert_eq!(crl.body, w.crl);
    gate.add_permits(2);
    for h in held {
        // The fake does not know d and e: unauthorized, once the slow lookups finish.
        assert_eq!(h.await.expect("task").body, OCSP_ERR_UNAUTHORIZED);
    }
    assert_eq!(post_ocsp(addr, "/ocsp", &w.req_a).await.body, w.resp_a_good);
}

// Paused tokio clock: the idle timeout is a tokio timer, so "no reconnect before 300 ms of
// silence" holds however slowly a loaded machine runs the test (time only moves when idle).
#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_reopened_after_the_idle_timeout_from_its_cursor() {
    let fake = FakeCore::default();
    let pki = Pki::new("issuing-a");
    let tx = fake.next_stream();
    tx.send(ev(4, issuer("default", "issuing-a", pki.ca_der())))
        .await
        .expect("open");
    tx.send(ev(4, Event::SnapshotComplete(true)))
        .await
        .expect("open");
    tx.send(ev(6, Event::Heartbeat(true))).await.expect("open");
    // `tx` stays open but silent: no heartbeat, no end of stream.
    let cache = StatusCache::new(&StatusSettings::default());
    let (_stop, rx) = watch::channel(false);
    tokio::spawn(certgate_edge::status::watch::run(
        cache.clone(),
        fake_core_client(fake.clone()).await,
        WatchSettings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(300),
        },
        rx,
    ));
    wait_until("snapshot applied", || cache.cursor() == 6).await;
    assert_eq!(
        fake.cursors(),
        [0],
        "no reconnect while the stream is alive"
    );
    wait_until("reopened", || fake.cursors().len() >= 2).await;
    assert_eq!(fake.cursors()[1], 6, "resumed from the last cursor");
    drop(tx);
}

#[tokio::test]
async fn a_push_racing_a_miss_wins_over_the_miss_answer() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let req_c = w.pki.request("req-c.der", &["c"]);
    let good = w
        .pki
        .respond("req-c.der", "resp-c-good.der", &[("1003", 'V')]);
    let revoked = w
        .pki
        .respond("req-c.der", "resp-c-revoked.der", &[("1003", 'R')]);
    fake.answer_ocsp("default", &["1003"], good.clone());
    let gate = fake.hold_ocsp();
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let addr = edge.addr;
    let req = req_c.clone();
    let miss = tokio::spawn(async move { post_ocsp(addr, "/ocsp", &req).await });
    wait_until("miss in flight", || fake.ocsp_calls() == 1).await;
    // The revocation is pushed while the (older) lookup is still on its way back.
    w.tx.send(ev(4, ocsp("default", revoked.clone())))
        .await
        .expect("open");
    wait_until("push applied", || edge.cache.cursor() >= 4).await;
    // Only now does the lookup's (older) answer come back.
    gate.add_permits(1);
    // The waiting client gets the pushed revocation, not the lookup's older answer…
    assert_eq!(miss.await.expect("task").body, revoked);
    assert_ne!(good, revoked);
    // …and the cache keeps it.
    assert_eq!(post_ocsp(addr, "/ocsp", &req_c).await.body, revoked);
    assert_eq!(fake.ocsp_calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// The exact-request-bytes memo (the fast path for repeated requests)

/// Headers that must match between two answers (`date` and `cache-control`'s max-age move with
/// the clock).
fn stable_headers(r: &Reply) -> Vec<(String, String)> {
    let mut h: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "date" && k.as_str() != "cache-control")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    h.sort();
    h
}

fn max_age(r: &Reply) -> i64 {
    r.headers["cache-control"]
        .strip_prefix("max-age=")
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("max-age")
}

#[tokio::test]
async fn a_memo_hit_sends_the_same_bytes_and_headers_as_the_full_path() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let memo = start_edge(&fake).await;
    let _w2 = {
        // A second edge with the memo off: every answer takes the full path (its own stream).
        let tx = fake.next_stream();
        for e in [
            ev(1, issuer("default", "issuing-a", w.pki.ca_der())),
            ev(2, ocsp("default", w.resp_a_good.clone())),
            ev(3, Event::SnapshotComplete(true)),
        ] {
            tx.send(e).await.expect("stream open");
        }
        tx
    };
    let plain = start_edge_with(
        &fake,
        StatusSettings {
            memo_entries: 0,
            ..StatusSettings::default()
        },
    )
    .await;
    wait_until("snapshots complete", || {
        memo.cache.snapshot_complete() && plain.cache.snapshot_complete()
    })
    .await;
    let get = get_path("", &w.req_a);
    let requests: [(&str, &[u8]); 2] = [("GET", &[]), ("POST", &w.req_a)];
    for (i, (method, body)) in requests.into_iter().enumerate() {
        let get = get.as_str();
        let ask = move |addr| async move {
            match method {
                "GET" => http(addr, "GET", get, &[], &[]).await,
                _ => post_ocsp(addr, "/ocsp", body).await,
            }
        };
        let full = ask(plain.addr).await;
        let first = ask(memo.addr).await;
        assert_eq!(
            memo.cache.memo_len(),
            i + 1,
            "{method}: memoized once served"
        );
        let hit = ask(memo.addr).await;
        assert_eq!(memo.cache.memo_len(), i + 1);
        assert_eq!(plain.cache.memo_len(), 0, "memo_entries = 0 disables it");
        for r in [&first, &hit] {
            assert_eq!(r.status, full.status, "{method}");
            assert_eq!(r.body, full.body, "{method}: byte for byte");
            assert_eq!(r.body, w.resp_a_good);
            assert_eq!(stable_headers(r), stable_headers(&full), "{method}");
            assert!((max_age(r) - max_age(&full)).abs() <= 1, "{method}");
            assert_eq!(
                r.headers["cache-control"]
                    .split_once(',')
                    .map(|(_, rest)| rest),
                full.headers["cache-control"]
                    .split_once(',')
                    .map(|(_, rest)| rest)
            );
        }
    }
    // HEAD and conditional requests take the full path and stay correct.
    let head = http(memo.addr, "HEAD", &get, &[], &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(
        head.headers["content-length"],
        w.resp_a_good.len().to_string()
    );
    let etag = head.headers["etag"].clone();
    let cond = http(memo.addr, "GET", &get, &[("If-None-Match", &etag)], &[]).await;
    assert_eq!(cond.status, 304);
    assert_eq!(fake.ocsp_calls(), 0);
}

#[tokio::test]
async fn a_revocation_push_replaces_a_memoized_response_at_once() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let get = get_path("", &w.req_a);
    for _ in 0..3 {
        assert_eq!(
            http(edge.addr, "GET", &get, &[], &[]).await.body,
            w.resp_a_good
        );
        assert_eq!(
            post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
            w.resp_a_good
        );
    }
    assert_eq!(edge.cache.memo_len(), 2, "GET and POST bytes memoized");
    let revoked = w
        .pki
        .respond("req-a.der", "resp-a-revoked.der", &[("1001", 'R')]);
    assert_ne!(revoked, w.resp_a_good);
    w.tx.send(ev(4, ocsp("default", revoked.clone())))
        .await
        .expect("stream open");
    wait_until("revocation applied", || edge.cache.cursor() >= 4).await;
    // Once the push is applied, neither memoized request is answered with the old bytes again.
    for _ in 0..5 {
        assert_eq!(http(edge.addr, "GET", &get, &[], &[]).await.body, revoked);
        assert_eq!(post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body, revoked);
    }
    assert_eq!(edge.cache.memo_len(), 2, "re-memoized with the new entry");
    assert_eq!(fake.ocsp_calls(), 0);
}

#[tokio::test]
async fn the_memo_stays_bounded_under_many_distinct_requests() {
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge_with(
        &fake,
        StatusSettings {
            memo_entries: 16,
            ..StatusSettings::default()
        },
    )
    .await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    // openssl puts a fresh random nonce in every request: 60 distinct byte strings, all for a.
    let mut distinct = std::collections::HashSet::new();
    for i in 0..60 {
        let out = format!("nonce-{i}.der");
        openssl(
            w.pki.dir.path(),
            &[
                "ocsp", "-issuer", "ca.pem", "-cert", "a.pem", "-reqout", &out,
            ],
        );
        let req = w.pki.read(&out);
        assert!(
            distinct.insert(req.clone()),
            "openssl sent the same nonce twice"
        );
        let r = post_ocsp(edge.addr, "/ocsp", &req).await;
        assert_eq!(r.body, w.resp_a_good, "a nonce is ignored, not refused");
        assert!(
            edge.cache.memo_len() <= 16,
            "{} entries",
            edge.cache.memo_len()
        );
    }
    assert!(edge.cache.memo_len() > 0);
    // Still answering from it and from the full path.
    assert_eq!(
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
        w.resp_a_good
    );
    assert!(edge.cache.memo_len() <= 16);
}

#[tokio::test]
async fn malformed_requests_are_never_memoized_and_every_one_is_counted() {
    // Under nextest every test is its own process; elsewhere the recorder may already be in.
    static PROM: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    let prom = PROM
        .get_or_init(|| certgate_edge::metrics::install().ok())
        .as_ref()
        .expect("metrics recorder installed");
    let malformed = |text: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("certgate_edge_status_requests_total{")
                    && l.contains("protocol=\"ocsp\"")
                    && l.contains("outcome=\"malformed\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let fake = FakeCore::default();
    let w = world(&fake).await;
    let edge = start_edge(&fake).await;
    wait_until("snapshot complete", || edge.cache.snapshot_complete()).await;
    let before = malformed(&prom.render());
    let truncated = &w.req_a[..w.req_a.len() - 1];
    for _ in 0..3 {
        let r = http(edge.addr, "GET", "/ocsp/!!!notbase64!!!", &[], &[]).await;
        assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_MALFORMED));
        let r = post_ocsp(edge.addr, "/ocsp", truncated).await;
        assert_eq!((r.status, r.body.as_slice()), (200, OCSP_ERR_MALFORMED));
    }
    assert_eq!(edge.cache.memo_len(), 0, "nothing malformed is memoized");
    let counted = malformed(&prom.render()) - before;
    assert!(counted >= 6, "6 malformed requests sent, {counted} counted");
    // A good request still is memoized, and a malformed one after it is still malformed.
    assert_eq!(
        post_ocsp(edge.addr, "/ocsp", &w.req_a).await.body,
        w.resp_a_good
    );
    assert_eq!(edge.cache.memo_len(), 1);
    let r = post_ocsp(edge.addr, "/ocsp", truncated).await;
    assert_eq!(r.body, OCSP_ERR_MALFORMED);
}
