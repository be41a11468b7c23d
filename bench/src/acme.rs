//! `certgate-bench acme`: complete ACME issuances per second — new order → authorization →
//! http-01 challenge → finalize → download — with one pre-created account and many orders in
//! flight, against `certgate up` and against Pebble (the Debian package, `PEBBLE_VA_NOSLEEP=1`)
//! in the same run, with the same client (instant-acme) and the same in-process http-01
//! responder on 127.0.0.1:5002 (Pebble's dev convention, which certgate's dev mode mirrors).
//!
//! Every order names a fresh registered domain, so no authorization is reused: each issuance is
//! a real validation (the server connects to the responder) and a real signature. The client
//! polls without honouring Retry-After (5 ms, doubling to 100 ms) so that the servers' own
//! processing, not a client sleep, bounds the latency; both servers get the same client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub(crate) struct AcmeArgs {
    /// Seconds of measurement per server (after a warm-up issuance).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Issuances in flight at once (closed loop), for both servers. certgate's core validates at
    /// most `[acme] max_concurrent_validations` (64) at once.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Skip Pebble (certgate only).
    #[arg(long)]
    no_pebble: bool,
    /// Issuances in flight against Pebble. Pebble 2.4 (Debian) stops answering mid-run with 32
    /// or more orders in flight (a deadlock: no log line, no reply); 16 is its best stable rate
    /// here (latency-bound, ~0.2 s per issuance whatever the load).
    #[arg(long, default_value_t = 16)]
    pebble_concurrency: usize,
    /// Keep the data dirs and logs here (must not exist yet) instead of a removed temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core`, `certgate-edge` (default:
    /// next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// One issuance that takes longer counts as failed (a server that stops answering must not hang
/// the bench).
pub(crate) const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Tokens → key authorizations the responder serves (bounded: each issuance removes its own).
pub(crate) type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// A child process stopped with SIGTERM (then SIGKILL) on drop, so `certgate up` can stop its
/// own children.
pub(crate) struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the process has already exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The http-01 responder on 127.0.0.1:5002 (one request per connection, as validators do).
pub(crate) async fn responder(tokens: Tokens) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5002")
        .await
        .context("bind 127.0.0.1:5002 for http-01 (is another ACME test running?)")?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(512);
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let answer = head
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/.well-known/acme-challenge/"))
                    .and_then(|t| tokens.lock().ok()?.get(t).cloned());
                let rsp = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = s.write_all(rsp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    }))
}

/// Short client-side polling: 5 ms, doubling to 100 ms.
struct Backoff(Duration);
impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(5))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(100));
    }
}

/// One complete issuance for `name`; the PEM chain.
pub(crate) async fn issue_one(
    account: &Account,
    name: &str,
    key: &rcgen::KeyPair,
    tokens: &Tokens,
) -> anyhow::Result<(String, Steps)> {
    let mut steps = Steps::new();
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    steps.mark("newOrder");
    let mut mine = Vec::new();
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            steps.mark("authorization");
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut ch = authz
                .challenge(ChallengeType::Http01)
                .context("no http-01 challenge")?;
            let token = ch.token.clone();
            tokens
                .lock()
                .map_err(|_| anyhow::anyhow!("token map poisoned"))?
                .insert(token.clone(), ch.key_authorization().as_str().to_owned());
            mine.push(token);
            ch.set_ready().await?;
            steps.mark("challenge");
        }
    }
    let result = async {
        let mut backoff = Backoff::new();
        loop {
            match order.refresh().await?.status {
                OrderStatus::Ready => break,
                OrderStatus::Pending | OrderStatus::Processing => backoff.wait().await,
                other => anyhow::bail!("order became {other:?}: {:?}", order.state().error),
            }
        }
        steps.mark("poll until ready");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(key)?;
        order.finalize_csr(csr.der()).await?;
        steps.mark("finalize");
        let mut backoff = Backoff::new();
        loop {
            if let Some(pem) = order.certificate().await? {
                anyhow::ensure!(
                    pem.contains("-----BEGIN CERTIFICATE-----"),
                    "download is not a PEM chain"
                );
                steps.mark("poll + download");
                return Ok(pem);
            }
            backoff.wait().await;
        }
    }
    .await;
    if let Ok(mut t) = tokens.lock() {
        for token in &mine {
            t.remove(token);
        }
    }
    result.map(|pem| (pem, steps))
}

/// Wall time of each step of one issuance, in order.
pub(crate) struct Steps {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            done: Vec::new(),
        }
    }
    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, now - self.last));
        self.last = now;
    }
}

struct Outcome {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    errors: u64,
    /// CPU ms per issued certificate, per server process and for this client.
    cpu_ms: Vec<(String, f64)>,
    /// Mean ms per step of a serial issuance (nothing else in flight).
    serial: Vec<(&'static str, f64)>,
}

impl Outcome {
    fn summary(&self) -> String {
        let cpu: Vec<String> = self
            .cpu_ms
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.2}"))
            .collect();
        let serial: Vec<String> = self
            .serial
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.1}"))
            .collect();
        format!(
            "{:.1} issuances/s, p50 {:.1} ms, p99 {:.1} ms, {} issued, {} failed\n    CPU ms per issuance: {}\n    one issuance alone, ms per step: {}",
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.ok,
            self.errors,
            cpu.join(", "),
            serial.join(", ")
        )
    }
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// instant-acme's HTTPS client, but with TCP_NODELAY: its default connector leaves Nagle on, and
/// Nagle with delayed ACKs adds ~40 ms to every request (TLS writes a request in several
/// segments), which would measure the client, not the server.
pub(crate) fn https_client(
    ca: &Path,
) -> anyhow::Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
> {
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
        .enable_http2()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// A pre-created account, a warm-up issuance, then `concurrency` workers in a closed loop.
async fn measure(
    label: &str,
    directory: &str,
    client_ca: &Path,
    tokens: &Tokens,
    concurrency: usize,
    seconds: u64,
    pids: &[(String, u32)],
) -> anyhow::Result<Outcome> {
    let (account, _) = Account::builder_with_http(Box::new(https_client(client_ca)?))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .with_context(|| format!("{label}: newAccount"))?;
    let account = Arc::new(account);
    let key = Arc::new(rcgen::KeyPair::generate()?);
    let run = std::process::id();
    issue_one(
        &account,
        &format!("warmup-{label}-{run}.test"),
        &key,
        tokens,
    )
    .await
    .with_context(|| format!("{label}: warm-up issuance"))?;

    println!(
        "measuring {label}: {} issuances in flight for {} s …",
        concurrency, seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let shown = Arc::new(AtomicBool::new(false));
    let mut procs: Vec<(String, String)> = pids
        .iter()
        .map(|(n, p)| (n.clone(), p.to_string()))
        .collect();
    procs.push(("bench client".into(), "self".into()));
    let cpu0: Vec<Option<f64>> = procs.iter().map(|(_, p)| crate::cpu_seconds(p)).collect();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (account, key, tokens) = (account.clone(), key.clone(), tokens.clone());
            let (stop, next, shown) = (stop.clone(), next.clone(), shown.clone());
            let label = label.to_owned();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    // A fresh registered domain per order: no authorization reuse.
                    let name = format!(
                        "n{}-{run}-{label}.test",
                        next.fetch_add(1, Ordering::Relaxed)
                    );
                    let t = Instant::now();
                    let one = tokio::time::timeout(
                        ISSUANCE_TIMEOUT,
                        issue_one(&account, &name, &key, &tokens),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("no result within {ISSUANCE_TIMEOUT:?}"))
                    });
                    match one {
                        Ok(_) => lat.push((t.elapsed(), start.elapsed())),
                        Err(e) => {
                            errors += 1;
                            if !shown.swap(true, Ordering::Relaxed) {
                                eprintln!("{label}: first failed issuance: {e:#}");
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await?;
        lat.extend(l);
        errors += e;
    }
    // The rate counts issuances completed inside the window; latencies include the drain.
    let window = Duration::from_secs(seconds);
    let in_window = lat.iter().filter(|(_, done)| *done <= window).count();
    let mut lat: Vec<Duration> = lat.into_iter().map(|(l, _)| l).collect();
    lat.sort();
    let cpu_ms = procs
        .iter()
        .zip(cpu0)
        .filter_map(|((name, pid), before)| {
            let used = crate::cpu_seconds(pid)? - before?;
            Some((name.clone(), used * 1000.0 / lat.len().max(1) as f64))
        })
        .collect();
    // Where one issuance's time goes when nothing else is in flight (5 serial issuances).
    let mut serial: Vec<(&'static str, f64)> = Vec::new();
    for i in 0..5 {
        let name = format!("serial{i}-{run}-{label}.test");
        let Ok(Ok((_, steps))) =
            tokio::time::timeout(ISSUANCE_TIMEOUT, issue_one(&account, &name, &key, tokens)).await
        else {
            eprintln!("{label}: a serial issuance failed; no per-step times");
            serial.clear();
            break;
        };
        for (j, (step, d)) in steps.done.into_iter().enumerate() {
            match serial.get_mut(j) {
                Some(s) => s.1 += d.as_secs_f64() * 200.0,
                None => serial.push((step, d.as_secs_f64() * 200.0)),
            }
        }
    }
    Ok(Outcome {
        serial,
        cpu_ms,
        rate: in_window as f64 / window.as_secs_f64(),
        p50_ms: quantile_ms(&lat, 0.50),
        p99_ms: quantile_ms(&lat, 0.99),
        ok: lat.len(),
        errors,
    })
}

/// Named server processes (name, pid), for CPU accounting.
type Pids = Vec<(String, u32)>;

/// `certgate up` in a fresh data dir on free ports: (directory URL, dev root, process).
pub(crate) fn start_certgate(
    dir: &Path,
    bin_dir: &Path,
) -> anyhow::Result<(String, PathBuf, Proc, Pids)> {
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
    // "  processes        certgate-signer=PID certgate-core=PID certgate-edge=PID"
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
                        pid.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((
        format!("https://{https}/acme/directory"),
        data.join("ca/root.pem"),
        up,
        pids,
    ))
}

/// Pebble (with `pebble-challtestsrv` as its DNS: every name → 127.0.0.1) on free ports:
/// (directory URL, the CA of its listener certificate, processes).
fn start_pebble(dir: &Path) -> anyhow::Result<(String, PathBuf, Vec<Proc>)> {
    let (dns, cts_mgmt) = (free_addr()?, free_addr()?);
    let mut cts = Command::new("pebble-challtestsrv");
    cts.args([
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-defaultIPv6",
        "",
    ])
    .args([
        "-dns01",
        &dns.to_string(),
        "-management",
        &cts_mgmt.to_string(),
    ]);
    let cts = Proc::spawn(cts, &dir.join("challtestsrv.log"))?;
    wait_until("pebble-challtestsrv", Duration::from_secs(20), || {
        std::net::TcpStream::connect(cts_mgmt).is_ok()
    })
    .with_context(|| cts.log())?;
    let openssl = |args: &[&str]| {
        run_ok(
            Command::new("openssl")
                .current_dir(dir)
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
                .args(args),
        )
    };
    openssl(&[
        "-keyout",
        "tls-ca.key",
        "-out",
        "tls-ca.pem",
        "-subj",
        "/CN=bench CA",
    ])?;
    openssl(&[
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-CA",
        "tls-ca.pem",
        "-CAkey",
        "tls-ca.key",
        "-subj",
        "/CN=localhost",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ])?;
    let (listen, mgmt) = (free_addr()?, free_addr()?);
    std::fs::write(
        dir.join("pebble.json"),
        format!(
            r#"{{"pebble":{{"listenAddress":"{listen}","managementListenAddress":"{mgmt}",
 "certificate":"cert.pem","privateKey":"key.pem","httpPort":5002,"tlsPort":5001,
 "ocspResponderURL":"","externalAccountBindingRequired":false}}}}"#
        ),
    )?;
    let mut cmd = Command::new("pebble");
    cmd.current_dir(dir)
        .args(["-config", "pebble.json", "-dnsserver", &dns.to_string()])
        .env("PEBBLE_VA_NOSLEEP", "1")
        // Pebble rejects 5% of good nonces by default to exercise clients; off, so both servers
        // are measured on the same successful path.
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    let pebble = Proc::spawn(cmd, &dir.join("pebble.log"))?;
    wait_until("pebble", Duration::from_secs(20), || {
        std::net::TcpStream::connect(listen).is_ok()
    })
    .with_context(|| pebble.log())?;
    Ok((
        format!("https://{listen}/dir"),
        dir.join("tls-ca.pem"),
        vec![pebble, cts],
    ))
}

pub(crate) fn acme(args: AcmeArgs) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no parent dir")?
            .to_path_buf(),
    };
    anyhow::ensure!(
        bin_dir.join("certgate").exists(),
        "no certgate binary in {} (build the workspace binaries, or pass --bin-dir)",
        bin_dir.display()
    );
    // Port 5002 is the dev convention's fixed http-01 port: hold the same lock the e2e tests do.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("certgate-acme-dev-ports-5001-5002.lock"))?;
    lock.lock()?;
    let temp = tempfile::tempdir()?;
    let dir = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "certgate-bench acme: complete http-01 issuances (new order → authorization → challenge → finalize → download), one account, {} in flight, {} s per server, {cores} cores",
        args.concurrency, args.seconds
    );
    let tokens: Tokens = Arc::new(Mutex::new(HashMap::new()));
    let _responder = rt.block_on(responder(tokens.clone()))?;

    let (directory, root, up, pids) = start_certgate(dir.as_path(), &bin_dir)?;
    let certgate = rt
        .block_on(measure(
            "certgate",
            &directory,
            &root,
            &tokens,
            args.concurrency,
            args.seconds,
            &pids,
        ))
        .with_context(|| up.log())?;
    drop(up);
    println!("  certgate: {}", certgate.summary());

    let pebble = if args.no_pebble {
        None
    } else {
        let pdir = dir.as_path().join("pebble");
        std::fs::create_dir_all(&pdir)?;
        let (directory, ca, mut procs) = start_pebble(&pdir)?;
        let out = rt
            .block_on(measure(
                "pebble",
                &directory,
                &ca,
                &tokens,
                args.pebble_concurrency,
                args.seconds,
                &[("pebble".to_owned(), procs[0].child.id())],
            ))
            .with_context(|| procs.iter().map(Proc::log).collect::<String>())?;
        println!("  pebble: {}", out.summary());
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                eprintln!(
                    "warning: a pebble process exited during the run ({status}):\n{}",
                    p.log().lines().rev().take(5).collect::<Vec<_>>().join("\n")
                );
            }
        }
        drop(procs);
        Some(out)
    };

    println!();
    println!("| server | issuances/s | p50 ms | p99 ms | issued | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, o: &Outcome| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {} |",
            o.rate, o.p50_ms, o.p99_ms, o.ok, o.errors
        );
    };
    row("certgate up (signer + core + edge)", &certgate);
    if let Some(p) = &pebble {
        row("pebble (PEBBLE_VA_NOSLEEP=1)", p);
    }
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if let Some(p) = &pebble {
        let ratio = certgate.rate / p.rate;
        println!(
            "certgate / pebble: {ratio:.1}× (target ≥ 10×: {})",
            verdict(ratio >= 10.0)
        );
    }
    println!(
        "certgate: {:.0} issuances/s (target ≥ 400: {})",
        certgate.rate,
        verdict(certgate.rate >= 400.0)
    );
    drop(lock);
    Ok(())
}
