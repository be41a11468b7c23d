//! Overload and per-tenant fairness on ONE edge (issue 8, "Overload and faults"): real signer,
//! core and edge processes on loopback, driven over real TLS + HTTP/2 by an in-test generator.
//!
//! Each test first measures what this machine can do (a short closed-loop run), then offers ~3×
//! that open-loop (arrivals on a clock, not waiting for answers) and checks the edge's answer to
//! overload (I-8): excess is refused at once with 503 + `Retry-After` (EST's "try later"), the
//! requests it admits keep a latency close to the unloaded one, the edge's memory does not grow,
//! and service is back as soon as the load drops. The fairness test floods from one tenant and
//! checks another tenant's success rate.
//!
//! Why the bounds are what they are (a shared 2-core machine, debug builds, generator and fleet
//! on the same cores): every bound is relative to a figure measured moments before in the same
//! test, latency bounds use p99 (robust to a handful of scheduler hiccups) with a small absolute
//! floor, and rates are judged on counts of hundreds of requests, not on timing of single ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certgate_e2e::Fleet;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// EST Basic credentials written into the test's edge.toml (a low PBKDF2 count: the test measures
/// issuance, not password hashing).
const USER: &str = "load";
const PASSWORD: &[u8] = b"load-test-password";
/// Requests the generator may have outstanding at once. An edge that queues instead of shedding
/// makes this fill up (counted as `overflow`, asserted zero).
const MAX_OUTSTANDING: usize = 4096;

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `pbkdf2-sha256$ITER$SALT$HASH` for [`PASSWORD`] (docs/est.md).
fn password_hash() -> String {
    let salt = b"certgate-overload";
    let iters = 1000;
    let mut out = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iters).expect("non-zero"),
        salt,
        PASSWORD,
        &mut out,
    );
    format!("pbkdf2-sha256${iters}${}${}", b64(salt), b64(&out))
}

/// A fleet with EST labels `default` (tenant `default`) and `flood` (tenant `flood`, own CA),
/// both with the test's Basic credentials; `edge_extra` is appended to edge.toml.
async fn est_fleet(edge_extra: &str) -> Fleet {
    let mut fleet = Fleet::init();
    let hash = password_hash();
    let written = std::fs::read_to_string(fleet.edge_config()).expect("edge.toml");
    // Replace whatever [est] section init wrote with the test's labels.
    let mut in_est = false;
    let mut toml = String::new();
    for line in written.lines() {
        if line.starts_with('[') {
            in_est = line.starts_with("[est");
        }
        if !in_est {
            toml.push_str(line);
            toml.push('\n');
        }
    }
    toml.push_str(&format!(
        "\n{edge_extra}\n[est]\n[est.labels.default]\nbasic_username = \"{USER}\"\n\
         basic_password_hash = \"{hash}\"\n[est.labels.flood]\ntenant = \"flood\"\n\
         profile = \"tls-server\"\nbasic_username = \"{USER}\"\nbasic_password_hash = \"{hash}\"\n"
    ));
    std::fs::write(fleet.edge_config(), toml).expect("write edge.toml");

    fleet.start_signer();
    fleet.start_core();
    // Tenant `flood`: its own profile and CA hierarchy, like any second customer.
    {
        use certgate_proto::admin::admin_client::AdminClient;
        let mut admin =
            AdminClient::new(certgate_proto::transport::unix_channel(fleet.core_socket()));
        admin
            .put_tenant(certgate_proto::admin::Tenant {
                name: "flood".into(),
                public_base_url: format!("http://{}", fleet.http),
                default_profile: String::new(),
                active_issuer_id: String::new(),
            })
            .await
            .expect("PutTenant flood");
    }
    let profile = fleet.scratch().join("tls-server.toml");
    std::fs::write(
        &profile,
        "key_algorithms = [\"ecdsa-p256\"]\nekus = [\"server_auth\"]\n\
         key_usages = [\"digital_signature\"]\nmax_validity_seconds = 7776000\n\
         default_validity_seconds = 7776000\nallowed_dns_suffixes = [\".\"]\nmax_sans = 10\n",
    )
    .expect("profile file");
    for args in [
        vec![
            "profile",
            "create",
            "--tenant",
            "flood",
            "--name",
            "tls-server",
            "--file",
            profile.to_str().expect("utf-8 path"),
        ],
        vec!["ca", "init", "--tenant", "flood"],
    ] {
        let (ok, out, err) = fleet.cli(&args);
        assert!(ok, "certgate {args:?}: {out}{err}\n{}", fleet.logs());
    }
    fleet.start_edge();
    fleet
}

/// HTTP/2 over TLS to the edge's HTTPS listener, a few connections used round robin.
#[derive(Clone)]
struct Client {
    conns: Arc<Vec<SendRequest<Full<Bytes>>>>,
    next: Arc<AtomicUsize>,
    authority: String,
}

impl Client {
    async fn connect(fleet: &Fleet, n: usize) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(fleet.root_pem()).expect("root.pem");
        for c in certgate_proto::transport::certs_from_pem(&pem).expect("root pem") {
            roots.add(c).expect("root anchor");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let mut conns = Vec::new();
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(fleet.https)
                .await
                .expect("connect edge");
            tcp.set_nodelay(true).expect("nodelay");
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            conns.push(send);
        }
        Self {
            conns: Arc::new(conns),
            next: Arc::new(AtomicUsize::new(0)),
            authority: fleet.https.to_string(),
        }
    }

    /// Sends one request; (status, has Retry-After, latency). Status 0: transport failure.
    async fn send(&self, req: &Req) -> (u16, bool, Duration) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut sender = self.conns[i].clone();
        let mut b = http::Request::builder()
            .method(req.method.clone())
            .uri(format!("https://{}{}", self.authority, req.path));
        for (k, v) in &req.headers {
            b = b.header(*k, v.as_str());
        }
        let request = b.body(Full::new(req.body.clone())).expect("request");
        let start = Instant::now();
        let resp = match sender.send_request(request).await {
            Ok(r) => r,
            Err(_) => return (0, false, start.elapsed()),
        };
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key(http::header::RETRY_AFTER);
        let ok_body = resp.into_body().collect().await.is_ok();
        let took = start.elapsed();
        (if ok_body { status } else { 0 }, retry_after, took)
    }
}

/// A request template.
#[derive(Clone)]
struct Req {
    method: http::Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

/// Distinct CSRs (each admitted EST request is a real issuance, not an idempotent replay).
struct Csrs {
    bodies: Vec<Bytes>,
    next: AtomicUsize,
}

impl Csrs {
    fn new(n: usize) -> Arc<Self> {
        let bodies = (0..n)
            .map(|i| {
                let key = rcgen::KeyPair::generate().expect("P-256 key");
                let params = rcgen::CertificateParams::new(vec![format!("load-{i}.example.test")])
                    .expect("params");
                let csr = params.serialize_request(&key).expect("CSR");
                Bytes::from(b64(csr.der()))
            })
            .collect();
        Arc::new(Self {
            bodies,
            next: AtomicUsize::new(0),
        })
    }

    fn enroll(&self, path: &str) -> Req {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bodies.len();
        Req {
            method: http::Method::POST,
            path: path.to_owned(),
            headers: vec![
                ("content-type", "application/pkcs10".into()),
                (
                    "authorization",
                    format!(
                        "Basic {}",
                        b64(format!("{USER}:{}", String::from_utf8_lossy(PASSWORD)).as_bytes())
                    ),
                ),
            ],
            body: self.bodies[i].clone(),
        }
    }
}

/// What one run saw.
#[derive(Default, Debug)]
struct Stats {
    sent: usize,
    ok: usize,
    /// 503 with Retry-After.
    shed: usize,
    /// Anything else (other statuses, 503 without Retry-After, transport errors).
    other: Vec<u16>,
    /// Generator could not send because MAX_OUTSTANDING were outstanding.
    overflow: usize,
    ok_latency: Vec<Duration>,
    shed_latency: Vec<Duration>,
    elapsed: Duration,
}

impl Stats {
    fn add(&mut self, (status, retry_after, took): (u16, bool, Duration)) {
        self.sent += 1;
        match status {
            200..=299 => {
                self.ok += 1;
                self.ok_latency.push(took);
            }
            503 if retry_after => {
                self.shed += 1;
                self.shed_latency.push(took);
            }
            s => self.other.push(s),
        }
    }

    fn ok_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn success_ratio(&self) -> f64 {
        self.ok as f64 / self.sent.max(1) as f64
    }

    fn p99(&self) -> Duration {
        quantile(&self.ok_latency, 99)
    }

    fn summary(&self) -> String {
        let mut others = self.other.clone();
        others.sort();
        others.dedup();
        format!(
            "sent {} ok {} ({:.0}/s) p50 {:?} shed {} (p50 {:?} p99 {:?}) other {} {:?} overflow {} p99 {:?} in {:?}",
            self.sent,
            self.ok,
            self.ok_rate(),
            quantile(&self.ok_latency, 50),
            self.shed,
            quantile(&self.shed_latency, 50),
            quantile(&self.shed_latency, 99),
            self.other.len(),
            others,
            self.overflow,
            self.p99(),
            self.elapsed
        )
    }
}

/// The `q`th percentile of `v`.
fn quantile(v: &[Duration], q: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() * q).div_ceil(100)).saturating_sub(1)]
}

/// `concurrency` workers, each sending the next request when the previous one is answered.
async fn closed_loop(
    client: &Client,
    make: impl Fn() -> Req + Send + Sync + 'static,
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let make = Arc::new(make);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::default();
            while start.elapsed() < duration {
                let r = client.send(&make()).await;
                if r.0 == 503 {
                    // A closed-loop client backs off when told to (not for the full
                    // Retry-After: this run measures capacity, not client patience).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                s.add(r);
            }
            s
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        let s = t.await.expect("worker");
        all.sent += s.sent;
        all.ok += s.ok;
        all.shed += s.shed;
        all.other.extend(s.other);
        all.ok_latency.extend(s.ok_latency);
        all.shed_latency.extend(s.shed_latency);
    }
    all.elapsed = start.elapsed();
    all
}

/// Arrivals at `rate` per second for `duration` regardless of answers (open loop); waits for
/// every answer before returning.
async fn open_loop(
    client: &Client,
    make: impl Fn() -> Req + Send + Sync + 'static,
    rate: f64,
    duration: Duration,
) -> Stats {
    let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let mut due = 0u64;
    let mut overflow = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < duration {
        tick.tick().await;
        let want = (start.elapsed().as_secs_f64() * rate) as u64;
        while due < want {
            due += 1;
            let Ok(permit) = outstanding.clone().try_acquire_owned() else {
                overflow += 1;
                continue;
            };
            let client = client.clone();
            let req = make();
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = client.send(&req).await;
                drop(permit);
                let _ = tx.send(r);
            });
        }
    }
    drop(tx);
    let mut s = Stats::default();
    while let Some(r) = rx.recv().await {
        s.add(r);
    }
    s.overflow = overflow;
    s.elapsed = start.elapsed();
    s
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The edge's own view: adaptive limits and the EST request-duration summary.
fn edge_metrics(fleet: &Fleet) -> String {
    let (_, body) = certgate_e2e::http_get(fleet.admin, "/metrics").unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("certgate_edge_bulkhead_limit")
                || l.starts_with("certgate_edge_shed_total")
                || (l.starts_with("certgate_edge_request_duration_seconds_")
                    && l.contains("protocol=\"est\"")
                    && !l.contains("_bucket"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn edge_log(fleet: &Fleet) -> String {
    let log = fleet.logs();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Sequential requests right after the load stops: how long until one succeeds, and whether the
/// next five all do.
async fn recovery(client: &Client, make: &(impl Fn() -> Req + Sync)) -> (Duration, bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let (status, _, _) = client.send(&make()).await;
        if status == 200 {
            let first = start.elapsed();
            let mut all = true;
            for _ in 0..5 {
                all &= client.send(&make()).await.0 == 200;
            }
            return (first, all);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (start.elapsed(), false)
}

/// Lower bound for an unloaded p99 used as a base for the 5x ratio. On the shared 2-core machine
/// (generator, fleet and other builds on the same cores) the unloaded p99 of a ~15 ms enrollment
/// measured 26-94 ms across runs: at that scale a p99 is scheduler noise, not service time. The
/// bound still fails by far an edge that queues (a fixed 512-slot pool measured 4.4 s).
const P99_FLOOR: Duration = Duration::from_millis(50);

fn check_overload(
    what: &str,
    capacity: f64,
    unloaded_p99: Duration,
    phases: &[&Stats],
    fleet: &Fleet,
) {
    let base = unloaded_p99.max(P99_FLOOR);
    for (i, s) in phases.iter().enumerate() {
        let ctx = format!(
            "{what} phase {i}: {}\ncapacity {capacity:.0}/s, unloaded p99 {unloaded_p99:?}\n{}",
            s.summary(),
            edge_log(fleet)
        );
        assert!(s.other.is_empty(), "only 200 or 503+Retry-After: {ctx}");
        assert_eq!(s.overflow, 0, "the edge queued instead of shedding: {ctx}");
        assert!(s.shed > 0, "3x capacity was not shed: {ctx}");
        assert!(
            s.ok_rate() >= 0.4 * capacity,
            "goodput collapsed under overload: {ctx}"
        );
        assert!(
            s.p99() <= base * 5,
            "admitted p99 beyond 5x the unloaded p99: {ctx}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_overload_is_shed_with_bounded_latency_memory_and_instant_recovery() {
    // The adaptive limit's floor is the core fleet's parallelism: here one core process on a
    // 2-core machine shared with the generator (the default, 4, suits a real core host).
    let mut fleet = est_fleet("[bulkheads]\nadaptive_min = 2\n").await;
    let pid = fleet.edge().expect("edge").pid();
    let client = Client::connect(&fleet, 4).await;
    let csrs = Csrs::new(6000);
    let make = {
        let csrs = csrs.clone();
        move || csrs.enroll("/.well-known/est/simpleenroll")
    };
    // Warm-up, then unloaded latency (one at a time) and capacity (closed loop, 8 workers).
    let warm = closed_loop(&client, make.clone(), 2, Duration::from_millis(500)).await;
    assert!(warm.ok > 0, "warm-up: {}\n{}", warm.summary(), fleet.logs());
    let unloaded = closed_loop(&client, make.clone(), 1, Duration::from_secs(2)).await;
    let cap = closed_loop(&client, make.clone(), 8, Duration::from_secs(3)).await;
    let capacity = cap.ok_rate();
    eprintln!("unloaded: {}", unloaded.summary());
    eprintln!("capacity: {}", cap.summary());
    assert!(
        unloaded.other.is_empty() && cap.other.is_empty(),
        "{}",
        cap.summary()
    );

    let rss_before = rss_kib(pid);
    let p1 = open_loop(
        &client,
        make.clone(),
        3.0 * capacity,
        Duration::from_secs(6),
    )
    .await;
    let (rec1, rec1_ok) = recovery(&client, &make).await;
    let rss1 = rss_kib(pid);
    let p2 = open_loop(
        &client,
        make.clone(),
        3.0 * capacity,
        Duration::from_secs(6),
    )
    .await;
    let (rec2, rec2_ok) = recovery(&client, &make).await;
    let rss2 = rss_kib(pid);
    eprintln!("overload 1: {}\noverload 2: {}", p1.summary(), p2.summary());
    eprintln!("edge metrics:\n{}", edge_metrics(&fleet));
    eprintln!(
        "rss KiB before {rss_before} after 1 {rss1} after 2 {rss2}; recovery {rec1:?} {rec2:?}"
    );
    check_overload(
        "EST simpleenroll",
        capacity,
        unloaded.p99(),
        &[&p1, &p2],
        &fleet,
    );
    assert!(
        rec1_ok && rec2_ok && rec1 <= Duration::from_secs(1) && rec2 <= Duration::from_secs(1),
        "recovery {rec1:?}/{rec2:?} ok {rec1_ok}/{rec2_ok}"
    );
    // Memory: bounded, and a second identical overload does not add to it (allowance: allocator
    // noise and the status cache's periodic refresh).
    assert!(rss2 < 512 * 1024, "edge RSS {rss2} KiB");
    assert!(
        rss2 <= rss1 + rss1 / 10 + 8 * 1024,
        "edge RSS grew between two overloads: {rss1} → {rss2} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_take_another_tenants_issuance() {
    let fleet = est_fleet("").await;
    let flood_client = Client::connect(&fleet, 4).await;
    let quiet_client = Client::connect(&fleet, 1).await;
    let csrs = Csrs::new(6000);
    let quiet = {
        let csrs = csrs.clone();
        move || csrs.enroll("/.well-known/est/simpleenroll")
    };
    let flood = {
        let csrs = csrs.clone();
        move || csrs.enroll("/t/flood/.well-known/est/flood/simpleenroll")
    };
    let warm = closed_loop(&flood_client, flood.clone(), 2, Duration::from_millis(500)).await;
    assert!(
        warm.ok > 0,
        "flood tenant enrolls: {}\n{}",
        warm.summary(),
        fleet.logs()
    );
    let cap = closed_loop(&flood_client, flood.clone(), 8, Duration::from_secs(3)).await;
    let capacity = cap.ok_rate();
    // The quiet tenant alone at a tenth of capacity, then the same beside a 3x flood.
    let quiet_rate = (capacity / 10.0).max(2.0);
    let alone = open_loop(
        &quiet_client,
        quiet.clone(),
        quiet_rate,
        Duration::from_secs(4),
    )
    .await;
    let flooding = tokio::spawn({
        let c = flood_client.clone();
        async move { open_loop(&c, flood, 3.0 * capacity, Duration::from_secs(8)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beside = open_loop(&quiet_client, quiet, quiet_rate, Duration::from_secs(6)).await;
    let flooded = flooding.await.expect("flood");
    let ctx = format!(
        "capacity {capacity:.0}/s\nquiet alone: {}\nquiet beside the flood: {}\nflood: {}\n{}\n{}",
        alone.summary(),
        beside.summary(),
        flooded.summary(),
        edge_metrics(&fleet),
        edge_log(&fleet)
    );
    eprintln!("{ctx}");
    assert!(
        alone.success_ratio() >= 0.95,
        "unloaded quiet tenant: {ctx}"
    );
    assert!(flooded.shed > 0, "the flood was not shed: {ctx}");
    assert!(
        beside.success_ratio() >= 0.95 * alone.success_ratio(),
        "the flood took the quiet tenant's service: {ctx}"
    );
}
