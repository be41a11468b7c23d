//! Edges and cores across hosts, on loopback: two real `certgate-core` processes (one signer, each
//! core with its own SQLite store copied from the initialised one) serving gRPC over TCP + mTLS
//! with identities issued by certgate's own CA (`certgate fleet cert`, SPIFFE URI SANs), and a
//! real `certgate-edge` balancing EST enrollments (`Core.Issue` with an idempotency key) across
//! them.
//!
//! - Balancing: both cores serve calls (edge metrics per core).
//! - Failover: `kill -9` of one core under load; every enrollment still succeeds (via the other),
//!   the dead core is ejected (healthy gauge 0) and re-admitted after a restart (gauge 1, calls
//!   again).
//! - mTLS, fail closed: the allowed edge identity gets in; a certificate of our CA with another
//!   SPIFFE ID, no client certificate, and a certificate from another CA with the allowed SPIFFE
//!   ID are all refused by the core and counted by reason in its metrics; an edge expecting
//!   another core SPIFFE ID refuses the core (503 to clients, healthy gauge 0).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use certgate_e2e::{ChildGuard, Fleet, READY_TIMEOUT, bin, free_port, http_get, run};

const TD: &str = "spiffe://certgate.test";

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One core process of the pair: its config, addresses and guard.
struct CoreProc {
    name: String,
    config: PathBuf,
    tls: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    guard: Option<ChildGuard>,
}

impl CoreProc {
    fn start(&mut self) {
        let mut cmd = Command::new(bin("certgate-core"));
        cmd.arg("--config").arg(&self.config);
        let mut g = ChildGuard::spawn(&self.name, cmd, &self.log);
        let deadline = Instant::now() + READY_TIMEOUT;
        while http_get(self.metrics, "/healthz").map(|r| r.0) != Some(200)
            || std::net::TcpStream::connect(self.tls).is_err()
        {
            assert!(
                Instant::now() < deadline && g.is_running(),
                "{} not ready:\n{}",
                self.name,
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = Some(g);
    }

    fn kill9(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.tls)
    }

    fn metrics(&self) -> String {
        http_get(self.metrics, "/metrics")
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// The value of the first sample of `name` whose labels contain every `labels` fragment.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Setup {
    fleet: Fleet,
    pki: PathBuf,
    cores: Vec<CoreProc>,
}

/// `certgate fleet cert` for `spiffe` into `pki`, named `name` (with `dns` as a DNS SAN, or an
/// empty subject and only the URI SAN); checks the result with OpenSSL and pkilint.
fn fleet_cert(fleet: &Fleet, pki: &Path, spiffe: &str, name: &str, dns: Option<&str>) {
    let mut args = vec!["fleet", "cert", "--spiffe", spiffe, "--name", name];
    let out_dir = s(pki);
    args.extend(["--out", &out_dir]);
    if let Some(d) = dns {
        args.extend(["--dns", d]);
    }
    let (ok, out, err) = fleet.cli(&args);
    assert!(ok, "certgate fleet cert {spiffe}: {out}{err}");
    let leaf = pki.join(format!("{name}.leaf.pem"));
    let (ok, _, err) = run(Command::new("openssl").args([
        "x509",
        "-in",
        &s(&pki.join(format!("{name}.pem"))),
        "-out",
        &s(&leaf),
    ]));
    assert!(ok, "{err}");
    let (ok, text, err) = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
        "-in",
        &s(&leaf),
    ]));
    assert!(ok, "{err}");
    assert!(text.contains(&format!("URI:{spiffe}")), "{text}");
    assert!(
        text.contains("TLS Web Client Authentication") && text.contains("TLS Web Server"),
        "{text}"
    );
    // Chains to the issuing CA written as ca.pem (the fleet trust anchor).
    let (_, out, err) = run(Command::new("openssl").args([
        "verify",
        "-partial_chain",
        "-CAfile",
        &s(&pki.join("ca.pem")),
        &s(&leaf),
    ]));
    assert!(out.contains(": OK"), "openssl verify {name}: {out}{err}");
    // RFC 5280 lints: zero findings at ERROR or above, except pkilint's URI check, which accepts
    // only web schemes (python `validators.url`) and so flags every `spiffe://` URI although it
    // is valid RFC 3986 syntax.
    let (_, out, err) = run(Command::new("lint_pkix_cert")
        .args(["lint", "-s", "ERROR", "--document-format", "PEM"])
        .arg(&leaf));
    assert!(err.trim().is_empty(), "pkilint {name}: {err}");
    for finding in out.lines().filter(|l| l.contains("): ")) {
        assert!(
            finding.contains("pkix.invalid_uri_syntax")
                && finding.contains(&format!("\"{spiffe}\"")),
            "pkilint {name}:\n{out}"
        );
    }
}

/// A CA that is not certgate's, and a leaf from it claiming the allowed edge SPIFFE ID.
fn foreign_identity(pki: &Path) {
    let mut ca = rcgen::CertificateParams::new(vec![]).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "not certgate");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let _ = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names.push(rcgen::SanType::URI(
        format!("{TD}/edge/1").as_str().try_into().expect("uri"),
    ));
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    std::fs::write(pki.join("foreign.pem"), cert.pem()).expect("write");
    std::fs::write(pki.join("foreign.key"), key.serialize_pem()).expect("write");
}

/// Signer up, identities issued through the fleet's core, then two core configs (own store,
/// own socket, TLS listener admitting `edge/1` only, metrics listener) from the initialised one.
fn setup() -> Setup {
    for b in [
        "certgate",
        "certgate-signer",
        "certgate-core",
        "certgate-edge",
    ] {
        bin(b);
    }
    let mut fleet = Fleet::init();
    fleet.start_signer();
    fleet.start_core();
    let pki = fleet.scratch().join("pki");
    for (id, name, dns) in [
        ("core/a", "core-a", Some("core-a.fleet.test")),
        ("core/b", "core-b", Some("core-b.fleet.test")),
        ("edge/1", "edge-1", None),
        ("edge/2", "edge-2", None),
    ] {
        fleet_cert(&fleet, &pki, &format!("{TD}/{id}"), name, dns);
    }
    // Only the fleet profile issues SPIFFE IDs: the tenant's default profile refuses a CSR with one.
    let csr = pki.join("spiffe.csr");
    let (ok, _, err) = run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&pki.join("spiffe.key")),
        "-out",
        &s(&csr),
        "-subj",
        "/CN=a.example",
        "-addext",
        &format!("subjectAltName=DNS:a.example,URI:{TD}/edge/9"),
    ]));
    assert!(ok, "{err}");
    let (ok, out, err) = fleet.cli(&[
        "cert",
        "issue",
        "--csr",
        &s(&csr),
        "--out",
        &s(&pki.join("spiffe.pem")),
    ]);
    assert!(
        !ok && format!("{out}{err}").contains("allowed_uri_prefixes"),
        "the default profile must refuse a SPIFFE ID: {out}{err}"
    );
    foreign_identity(&pki);
    fleet.stop_core();

    let core_dir = fleet.data_dir().join("core");
    let base = std::fs::read_to_string(fleet.core_config()).expect("core.toml");
    let mut cores = Vec::new();
    for name in ["a", "b"] {
        for suffix in ["", "-wal", "-shm"] {
            let from = core_dir.join(format!("core.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, core_dir.join(format!("core-{name}.db{suffix}")))
                    .expect("copy store");
            }
        }
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut text = String::new();
        let mut in_table = false;
        for line in base.lines() {
            in_table |= line.starts_with('[');
            let line = match line {
                l if in_table => l.to_owned(),
                l if l.starts_with("socket = ") => {
                    format!("socket = \"../run/core-{name}.sock\"\nmetrics_listen = \"{metrics}\"")
                }
                l if l.starts_with("store = ") => format!("store = \"core-{name}.db\""),
                l if l.starts_with("allow = [") => {
                    l.replacen("allow = [", &format!("allow = [\"{TD}/edge/1\", "), 1)
                }
                l => l.to_owned(),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[tls]\nlisten = \"{tls}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallow = [\"{TD}/edge/1\"]\n",
            s(&pki.join(format!("core-{name}.pem"))),
            s(&pki.join(format!("core-{name}.key"))),
            s(&pki.join("ca.pem")),
        ));
        let config = core_dir.join(format!("core-{name}.toml"));
        std::fs::write(&config, text).expect("write core config");
        cores.push(CoreProc {
            name: format!("core-{name}"),
            config,
            tls,
            metrics,
            log: fleet.scratch().join(format!("core-{name}.log")),
            guard: None,
        });
    }
    Setup { fleet, pki, cores }
}

impl Setup {
    /// Points the fleet's edge at `cores` over mTLS as `edge/1`, expecting `core_ids`.
    fn write_edge_config(&self, core_ids: &[&str]) {
        let path = self.fleet.edge_config();
        let text = std::fs::read_to_string(&path).expect("edge.toml");
        let urls = self
            .cores
            .iter()
            .map(|c| format!("{:?}", c.url()))
            .collect::<Vec<_>>()
            .join(", ");
        let ids = core_ids
            .iter()
            .map(|id| format!("\"{TD}/{id}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("core_socket = ") || line.starts_with("cores = ") {
                out.push_str(&format!("cores = [{urls}]\n"));
            } else if line.starts_with("[core_tls]") {
                break; // rewritten below
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "[core_tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\ncore_spiffe_ids = [{ids}]\n\n[core_pool]\nhealth_interval_ms = 200\nhealth_timeout_ms = 500\n",
            s(&self.pki.join("edge-1.pem")),
            s(&self.pki.join("edge-1.key")),
            s(&self.pki.join("ca.pem")),
        ));
        std::fs::write(&path, out).expect("write edge.toml");
    }

    fn edge_metrics(&self) -> String {
        http_get(self.fleet.admin, "/metrics")
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the edge's healthy gauge for `core` reads `want`.
    fn wait_healthy(&self, core: usize, want: f64) {
        let label = format!("core=\"{}\"", self.cores[core].url());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.edge_metrics();
            if sample(&m, "certgate_edge_core_healthy", &[&label]) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "core {core} healthy != {want}:\n{m}\n{}",
                self.fleet.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn calls_ok(&self, core: usize) -> f64 {
        let label = format!("core=\"{}\"", self.cores[core].url());
        sample(
            &self.edge_metrics(),
            "certgate_edge_core_calls_total",
            &[&label, "outcome=\"ok\""],
        )
        .unwrap_or(0.0)
    }
}

/// EST CSRs (base64 DER bodies), made in-process.
fn csr_bodies(dir: &Path, n: usize) -> Vec<PathBuf> {
    use base64::Engine;
    (0..n)
        .map(|i| {
            let params =
                rcgen::CertificateParams::new(vec![format!("dev{i}.fleet.test")]).expect("params");
            let key = rcgen::KeyPair::generate().expect("key");
            let csr = params.serialize_request(&key).expect("csr");
            let b64 = base64::engine::general_purpose::STANDARD.encode(csr.der());
            let p = dir.join(format!("dev{i}.b64"));
            std::fs::write(&p, b64).expect("write csr");
            p
        })
        .collect()
}

/// One EST simpleenroll through the edge; returns the HTTP status.
fn enroll(fleet: &Fleet, body: &Path, out: &Path) -> u16 {
    let creds = fleet.credentials();
    let userpass = format!(
        "{}:{}",
        creds.get("est_username").map(String::as_str).unwrap_or(""),
        creds.get("est_password").map(String::as_str).unwrap_or("")
    );
    let (_, code, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(fleet.root_pem())
        .args(["-u", &userpass, "-o"])
        .arg(out)
        .args([
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "https://{}/.well-known/est/simpleenroll",
            fleet.https
        )));
    code.trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl gave no status: {err}"))
}

#[test]
fn edge_balances_two_mtls_cores_and_survives_kill_9_of_one() {
    let mut st = setup();
    for c in &mut st.cores {
        c.start();
    }
    st.write_edge_config(&["core/a", "core/b"]);
    st.fleet.start_edge();
    st.wait_healthy(0, 1.0);
    st.wait_healthy(1, 1.0);

    let scratch = st.fleet.scratch();
    let bodies = csr_bodies(&scratch, 60);
    // Balancing: a handful of enrollments reach both cores.
    for (i, b) in bodies[..10].iter().enumerate() {
        let code = enroll(&st.fleet, b, &scratch.join(format!("warm{i}.p7")));
        assert_eq!(code, 200, "enrollment {i}:\n{}", st.fleet.logs());
    }
    assert!(
        st.calls_ok(0) >= 1.0 && st.calls_ok(1) >= 1.0,
        "both cores served calls:\n{}",
        st.edge_metrics()
    );

    // Load from 4 clients; core A is killed -9 while they run.
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = Arc::new(bodies[10..].to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for w in 0..4 {
            let (ok, failed, bodies, next) =
                (ok.clone(), failed.clone(), bodies.clone(), next.clone());
            let fleet = &st.fleet;
            let scratch = scratch.clone();
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(b) = bodies.get(i) else { break };
                    let code = enroll(fleet, b, &scratch.join(format!("load{w}-{i}.p7")));
                    if code == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.lock().expect("lock").push((i, code));
                    }
                }
            });
        }
        // Mid-load.
        while next.load(Ordering::SeqCst) < 12 {
            std::thread::sleep(Duration::from_millis(10));
        }
        st.cores[0].kill9();
    });
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "idempotent Issue calls failed after kill -9 of one core: {failed:?}\n{}",
        st.fleet.logs()
    );
    assert_eq!(ok.load(Ordering::SeqCst), 50);

    // The dead core is ejected...
    st.wait_healthy(0, 0.0);
    let m = st.edge_metrics();
    eprintln!(
        "after kill -9: transport failures on core A {:?}, retries {:?}",
        sample(
            &m,
            "certgate_edge_core_calls_total",
            &[
                &format!("core=\"{}\"", st.cores[0].url()),
                "outcome=\"transport\""
            ]
        ),
        sample(
            &m,
            "certgate_edge_core_retries_total",
            &["method=\"issue\""]
        )
    );
    let m = st.edge_metrics();
    assert!(
        sample(
            &m,
            "certgate_edge_core_ejections_total",
            &[&format!("core=\"{}\"", st.cores[0].url())]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // ...and re-admitted after a restart, then gets calls again.
    st.cores[0].start();
    st.wait_healthy(0, 1.0);
    let before = st.calls_ok(0);
    let more_dir = scratch.join("after");
    std::fs::create_dir_all(&more_dir).expect("dir");
    let more = csr_bodies(&more_dir, 20);
    let mut reached = false;
    for (i, body) in more.iter().enumerate() {
        assert_eq!(
            enroll(&st.fleet, body, &more_dir.join(format!("after{i}.p7"))),
            200,
            "{}",
            st.fleet.logs()
        );
        if st.calls_ok(0) > before {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "the restarted core gets calls again:\n{}",
        st.edge_metrics()
    );
}

/// A gRPC client of core `addr` over TLS presenting `identity` (cert, key) or nothing.
async fn ca_chain_over_mtls(
    addr: SocketAddr,
    roots: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(), tonic::Status> {
    let read = |p: &Path| std::fs::read(p).expect("read PEM");
    let (cert, key) = match identity {
        Some((c, k)) => (Some(read(c)), Some(read(k))),
        None => (None, None),
    };
    let config =
        certgate_proto::transport::client_tls_config(cert.as_deref(), key.as_deref(), &read(roots))
            .expect("client config");
    let channel = certgate_proto::transport::tls_channel(
        addr,
        rustls_pki_types::ServerName::try_from("core-a.fleet.test").expect("name"),
        config,
    );
    let mut core = certgate_proto::core::core_client::CoreClient::new(channel);
    let mut req = tonic::Request::new(certgate_proto::core::GetCaChainRequest {
        tenant: "default".into(),
        issuer_id: String::new(),
    });
    req.set_timeout(Duration::from_secs(10));
    core.get_ca_chain(req).await.map(|_| ())
}

#[test]
fn mtls_admits_only_allowed_spiffe_ids_from_our_ca_and_edges_refuse_unexpected_cores() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut st = setup();
    st.cores[0].start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = st.pki.clone();
    let addr = st.cores[0].tls;
    let roots = pki.join("ca.pem");

    rt.block_on(ca_chain_over_mtls(
        addr,
        &roots,
        Some((&pki.join("edge-1.pem"), &pki.join("edge-1.key"))),
    ))
    .expect("the allowed edge identity is served");
    let refused = [
        ("another SPIFFE ID", Some(("edge-2.pem", "edge-2.key"))),
        ("no client certificate", None),
        ("another CA", Some(("foreign.pem", "foreign.key"))),
    ];
    for (what, id) in refused {
        let id = id.map(|(c, k)| (pki.join(c), pki.join(k)));
        let r = rt.block_on(ca_chain_over_mtls(
            addr,
            &roots,
            id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        ));
        assert!(r.is_err(), "{what} must be refused");
    }
    let m = st.cores[0].metrics();
    for reason in [
        "spiffe_not_allowed",
        "no_certificate",
        "untrusted_certificate",
    ] {
        assert!(
            sample(
                &m,
                "certgate_core_tls_refused_total",
                &[&format!("reason=\"{reason}\"")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{reason} not counted:\n{m}"
        );
    }
    let log = std::fs::read_to_string(&st.cores[0].log).unwrap_or_default();
    assert!(
        log.contains(&format!("{TD}/edge/2")),
        "the presented SPIFFE ID is logged:\n{log}"
    );

    // An edge that expects another core identity refuses core A: no call reaches it, clients get
    // 503, the core is never admitted.
    st.cores.truncate(1);
    st.write_edge_config(&["core/other"]);
    st.fleet.start_edge();
    st.wait_healthy(0, 0.0);
    let bodies = csr_bodies(&st.fleet.scratch(), 1);
    let code = enroll(
        &st.fleet,
        &bodies[0],
        &st.fleet.scratch().join("refused.p7"),
    );
    assert_eq!(code, 503, "{}", st.fleet.logs());
    let admitted_before = sample(
        &st.cores[0].metrics(),
        "certgate_core_tls_admitted_total",
        &[],
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        sample(
            &st.cores[0].metrics(),
            "certgate_core_tls_admitted_total",
            &[]
        ),
        admitted_before,
        "the edge completed no connection to the core it does not trust"
    );
    let edge_log = st.fleet.logs();
    assert!(
        edge_log.contains("core presented a SPIFFE ID not in"),
        "{edge_log}"
    );
}
