//! `certgate-bench est`: EST `simpleenroll` enrollments per second under `certgate up` with many
//! concurrent clients over keep-alive HTTPS connections (HTTP Basic with the dev credentials),
//! next to the core's direct `Core.Issue` rate (the `issue` scenario's closed loop) on the same
//! fleet, in one run.
//!
//! Every enrollment is distinct: its own P-256 CSR (subject and SAN `e{i}-RUN.est.bench.example`),
//! so the EST idempotency key (hash of CSR and client identity) is new each time and the core
//! really issues. The CSRs are made before the measurement (client-side signing is not what is
//! measured); the server checks each CSR's signature, the Basic password (PBKDF2) and the
//! profile as always. The fleet helpers here are shared with the `scep` scenario.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use certgate_proto::core::core_client::CoreClient;
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::Decode;
use http_body_util::{BodyExt, Full};

use crate::acme::{Proc, free_addr, wait_until};
use crate::issue::{Caller, closed_loop, make_csrs, quantile};

#[derive(clap::Args, Debug)]
pub(crate) struct EstArgs {
    /// Seconds per measurement (EST, direct Issue).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Concurrent EST clients (each runs one enrollment at a time on a pooled keep-alive
    /// connection).
    #[arg(long, default_value_t = 64)]
    pub(crate) clients: usize,
    /// Concurrent callers of the direct `Core.Issue` measurement.
    #[arg(long, default_value_t = 32)]
    pub(crate) issue_clients: usize,
    /// Distinct CSRs made before the measurement (a client that runs out stops).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) csrs: usize,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core` and `certgate-edge`
    /// (default: next to this executable).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// A running `certgate up`: its listeners, data dir and per-process pids.
pub(crate) struct Fleet {
    pub(crate) https: std::net::SocketAddr,
    pub(crate) http: std::net::SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) pids: Vec<(String, String)>,
    pub(crate) up: Proc,
}

/// `certgate up` in `dir` on free ports.
pub(crate) fn start_fleet(dir: &Path, bin_dir: &Option<PathBuf>) -> anyhow::Result<Fleet> {
    let bin_dir = match bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no parent dir")?
            .to_path_buf(),
    };
    let (https, http, admin) = (free_addr()?, free_addr()?, free_addr()?);
    let data = dir.join("certgate");
    let mut cmd = Command::new(bin_dir.join("certgate"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--https", &https.to_string()])
        .args(["--http", &http.to_string()])
        .args(["--admin", &admin.to_string()])
        .env("RUST_LOG", "warn");
    let up = Proc::spawn(cmd, &dir.join("certgate-up.log"))?;
    wait_until("certgate up", Duration::from_secs(180), || {
        up.log().contains("Press Ctrl-C to stop.")
    })
    .with_context(|| up.log())?;
    let log = up.log();
    let pids = log
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("processes"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| {
                    let (name, pid) = kv.split_once('=')?;
                    Some((
                        name.trim_start_matches("certgate-").to_owned(),
                        pid.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Fleet {
        https,
        http,
        data,
        pids,
        up,
    })
}

impl Fleet {
    /// A value from `DIR/dev-credentials.toml`.
    pub(crate) fn credential(&self, key: &str) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.data.join("dev-credentials.toml"))?;
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
            .with_context(|| format!("{key} not in dev-credentials.toml"))
    }

    /// CPU seconds of each server process and of this bench process.
    pub(crate) fn cpu(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .pids
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), crate::cpu_seconds(p)?)))
            .collect();
        if let Some(s) = crate::cpu_seconds("self") {
            v.push(("bench".into(), s));
        }
        v
    }
}

/// "signer 120 µs, core 900 µs, …" per operation between two [`Fleet::cpu`] samples.
pub(crate) fn cpu_per_op(before: &[(String, f64)], after: &[(String, f64)], ops: usize) -> String {
    after
        .iter()
        .filter_map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n)?.1;
            Some(format!("{n} {:.0} µs", (a - b) * 1e6 / (ops.max(1) as f64)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result of one closed-loop protocol measurement.
pub(crate) struct LoadRun {
    pub(crate) rate: f64,
    pub(crate) lat_us: Vec<u64>,
    pub(crate) errors: u64,
}

impl LoadRun {
    pub(crate) fn summary(&self, unit: &str) -> String {
        format!(
            "{:.0} {unit}/s, p50 {:.1} ms, p99 {:.1} ms, {} completed, {} failed",
            self.rate,
            quantile(&self.lat_us, 0.50),
            quantile(&self.lat_us, 0.99),
            self.lat_us.len(),
            self.errors
        )
    }
}

/// `workers` tasks calling `op(worker)` until `d` has passed (or `op` answers `None`: nothing
/// left to do); latencies of the successes.
pub(crate) async fn run_closed_loop<F, Fut>(workers: usize, d: Duration, op: F) -> LoadRun
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<anyhow::Result<()>>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (stop, op) = (stop.clone(), op.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match op(w).await {
                        None => break,
                        Some(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                        Some(Err(e)) => {
                            if errors == 0 {
                                eprintln!("worker {w}: failed: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let (mut lat_us, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat_us.extend(l);
            errors += e;
        }
    }
    lat_us.sort_unstable();
    LoadRun {
        rate: lat_us.len() as f64 / elapsed.as_secs_f64(),
        lat_us,
        errors,
    }
}

/// The core's direct `Core.Issue` rate on `fleet` (the `issue` scenario's closed loop: callers
/// over 2 connections to `DIR/run/core.sock`, 1 s warm-up, fresh idempotency key per call).
pub(crate) fn direct_issue(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<crate::issue::Run> {
    let socket = fleet.data.join("run/core.sock");
    let csrs = make_csrs(20_000)?;
    let _guard = rt.enter();
    let caller = Arc::new(Caller {
        channels: (0..2)
            .map(|_| CoreClient::new(certgate_proto::transport::unix_channel(socket.clone())))
            .collect(),
        csrs,
        run: format!("estscep{}", std::process::id()),
        next: AtomicU64::new(0),
        uid: format!("uid:{}", certgate_proto::transport::current_uid()),
    });
    Ok(rt.block_on(async {
        let _ = closed_loop(caller.clone(), clients, Duration::from_secs(1)).await;
        closed_loop(caller, clients, Duration::from_secs(seconds)).await
    }))
}

/// The certificates of a certs-only CMS SignedData, DER.
pub(crate) fn certs_only(der: &[u8]) -> anyhow::Result<Vec<x509_cert::Certificate>> {
    let ci = ContentInfo::from_der(der).context("not a CMS ContentInfo")?;
    let sd: SignedData = ci.content.decode_as().context("not SignedData")?;
    Ok(sd
        .certificates
        .map(|s| {
            s.0.iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(c) => Some(c.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTP/1.1 keep-alive HTTPS client trusting `ca` (as EST clients are).
fn https_client(ca: &Path) -> anyhow::Result<HttpsClient> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(https),
    )
}

/// Distinct P-256 CSRs with run-specific names (one key: the CSR, not the key, makes the EST
/// idempotency key distinct).
fn est_csrs(n: usize, run: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    (0..n)
        .map(|i| {
            let name = format!("e{i}-{run}.est.bench.example");
            let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            Ok(params.serialize_request(&key)?.der().to_vec())
        })
        .collect()
}

/// Counts 503 answers (the edge's adaptive bulkhead shedding load) and honours their
/// Retry-After as a well-behaved client does: the same request is sent again after the wait, and
/// the enrollment's latency includes it.
pub(crate) struct Shed(pub(crate) AtomicU64);

impl Shed {
    /// `Some(wait)` if `resp` is a 503 with Retry-After (seconds; 1 s if absent or unreadable).
    pub(crate) fn check<B>(&self, resp: &hyper::Response<B>) -> Option<Duration> {
        if resp.status() != hyper::StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        let secs = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1);
        Some(Duration::from_secs(secs.clamp(1, 60)))
    }
}

/// One simpleenroll: 200 with a certs-only CMS holding one certificate (after any 503 +
/// Retry-After rounds).
async fn enroll(
    http: &HttpsClient,
    url: &str,
    auth: &str,
    csr_der: &[u8],
    shed: &Shed,
) -> anyhow::Result<()> {
    let body = Bytes::from(base64::engine::general_purpose::STANDARD.encode(csr_der));
    let resp = loop {
        let req = hyper::Request::post(url)
            .header("content-type", "application/pkcs10")
            .header("authorization", auth)
            .body(Full::new(body.clone()))?;
        let resp = http.request(req).await?;
        match shed.check(&resp) {
            Some(wait) => {
                let _ = resp.into_body().collect().await;
                tokio::time::sleep(wait).await;
            }
            None => break resp,
        }
    };
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == hyper::StatusCode::OK,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(clean)?;
    let certs = certs_only(&der)?;
    anyhow::ensure!(certs.len() == 1, "{} certificates", certs.len());
    Ok(())
}

pub(crate) fn est(args: EstArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "certgate-bench est: simpleenroll with HTTP Basic, {} clients, {} s per measurement, {cores} cores",
        args.clients, args.seconds
    );
    let fleet = start_fleet(temp.path(), &args.bin_dir)?;
    let user = fleet.credential("est_username")?;
    let password = zeroize::Zeroizing::new(fleet.credential("est_password")?);
    let auth: Arc<str> = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", &*password))
    )
    .into();
    let run = format!("r{}", std::process::id());
    println!("  making {} CSRs …", args.csrs);
    let csrs = Arc::new(est_csrs(args.csrs, &run)?);
    let url: Arc<str> = format!("https://{}/.well-known/est/simpleenroll", fleet.https).into();
    let _guard = rt.enter();
    let http = https_client(&fleet.data.join("ca/root.pem"))?;
    let next = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(Shed(AtomicU64::new(0)));
    rt.block_on(enroll(&http, &url, &auth, &csrs[0], &shed))
        .with_context(|| fleet.up.log())
        .context("first enrollment")?;
    next.store(1, Ordering::Relaxed);
    let before = fleet.cpu();
    let load = {
        let (http, url, auth, csrs, next) = (http.clone(), url.clone(), auth, csrs.clone(), next);
        let shed = shed.clone();
        rt.block_on(run_closed_loop(
            args.clients,
            Duration::from_secs(args.seconds),
            move |_| {
                let (http, url, auth, csrs) =
                    (http.clone(), url.clone(), auth.clone(), csrs.clone());
                let shed = shed.clone();
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                async move {
                    let csr = csrs.get(i)?;
                    Some(enroll(&http, &url, &auth, csr, &shed).await)
                }
            },
        ))
    };
    let shed = shed.0.load(Ordering::Relaxed);
    let after = fleet.cpu();
    println!(
        "  certgate EST:      {}; {shed} × 503 + Retry-After (adaptive bulkhead), retried",
        load.summary("enrollments")
    );
    println!(
        "    CPU per enrollment: {}",
        cpu_per_op(&before, &after, load.lat_us.len())
    );
    if load.lat_us.len() + 1 >= csrs.len() {
        println!("    warning: all {} CSRs used; raise --csrs", csrs.len());
    }
    let before = fleet.cpu();
    let issue = direct_issue(&rt, &fleet, args.issue_clients, args.seconds)?;
    let after = fleet.cpu();
    println!(
        "  core Issue direct: {:.0} issuances/s, p50 {:.1} ms, p99 {:.1} ms, {} failed",
        issue.rate,
        quantile(&issue.lat_us, 0.50),
        quantile(&issue.lat_us, 0.99),
        issue.errors
    );
    println!(
        "    CPU per issuance (incl. 1 s warm-up): {}",
        cpu_per_op(&before, &after, issue.lat_us.len())
    );
    let ratio = load.rate / issue.rate.max(f64::MIN_POSITIVE);
    println!(
        "  EST / direct Issue = {:.0}% (target >= 70%: {})",
        100.0 * ratio,
        if ratio >= 0.70 { "met" } else { "NOT met" }
    );
    drop(fleet);
    Ok(())
}
