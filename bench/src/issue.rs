//! `certgate-bench issue`: `Core.Issue` calls per second with ECDSA P-256 CSRs through the real
//! fleet (`certgate init`, then `certgate-signer` and `certgate-core` as separate processes on the
//! embedded SQLite store), next to the signer's raw and `Sign` rates measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::{IssueRequest, issue_request};
use tonic::transport::Channel;

use crate::{ChildGuard, cpu_seconds, raw, response_data, sign_rate};

#[derive(clap::Args, Debug)]
pub(crate) struct IssueArgs {
    /// Seconds per measurement (full load, then half load).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent callers at full load.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Connections the callers share (HTTP/2 multiplexes their calls, as an edge's channel would).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Open-loop rate (calls/s) for the second measurement; default half the measured peak.
    #[arg(long)]
    open_rate: Option<f64>,
    /// Distinct pre-generated CSRs (distinct names); calls cycle through them, every call with
    /// its own idempotency key.
    #[arg(long, default_value_t = 20_000)]
    csrs: usize,
    /// Seconds for each of the signer comparison measurements (raw 1 thread, raw all cores, Sign).
    #[arg(long, default_value_t = 3)]
    signer_seconds: u64,
    /// Data directory to initialise (must not exist yet); default a fresh temporary directory
    /// (removed at the end). Give one on the disk you want measured: the store fsyncs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Experiment: set the core's `[audit] sign_interval_ms` (how often it batch-signs the audit
    /// chain; default 1000) in the generated core.toml before starting the core.
    #[arg(long)]
    audit_sign_interval_ms: Option<u64>,
    /// Directory with `certgate`, `certgate-signer` and `certgate-core` (default: next to this
    /// executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<ChildGuard> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok(ChildGuard(child))
}

fn wait_socket(path: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `n` DER CSRs for `h{i}.bench.example`, all under one P-256 key (only names must differ).
pub(crate) fn make_csrs(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    (0..n)
        .map(|i| {
            let name = format!("h{i}.bench.example");
            let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            Ok(params.serialize_request(&key)?.der().to_vec())
        })
        .collect()
}

pub(crate) struct Caller {
    pub(crate) channels: Vec<CoreClient<Channel>>,
    pub(crate) csrs: Vec<Vec<u8>>,
    pub(crate) run: String,
    pub(crate) next: AtomicU64,
    pub(crate) uid: String,
}

impl Caller {
    /// One Issue with the next CSR and a fresh idempotency key; whether it succeeded.
    async fn issue(&self, worker: usize) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let csr = self
            .csrs
            .get(i as usize % self.csrs.len().max(1))
            .cloned()
            .unwrap_or_default();
        let mut client = self.channels[worker % self.channels.len()].clone();
        let req = IssueRequest {
            tenant: "default".into(),
            profile: "tls-server".into(),
            request: Some(issue_request::Request::CsrDer(csr)),
            protocol: "bench".into(),
            client_identity: self.uid.clone(),
            idempotency_key: format!("bench-{}-{i}", self.run),
            ..Default::default()
        };
        match client.issue(req).await {
            Ok(_) => true,
            Err(e) => {
                static SHOWN: AtomicBool = AtomicBool::new(false);
                if !SHOWN.swap(true, Ordering::Relaxed) {
                    eprintln!("first failed Issue: {e}");
                }
                false
            }
        }
    }
}

/// Latencies in µs, sorted; the `q` quantile.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) lat_us: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
}

/// `workers` callers in a closed loop for `d`.
pub(crate) async fn closed_loop(caller: Arc<Caller>, workers: usize, d: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (stop, caller) = (stop.clone(), caller.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if caller.issue(w).await {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
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
    Run {
        rate: lat_us.len() as f64 / elapsed.as_secs_f64(),
        lat_us,
        errors,
        elapsed,
    }
}

/// Open loop: one call started every 1/`rate` s for `d`, whatever the answers do; latency is
/// measured from the scheduled start (no coordinated omission).
async fn open_loop(caller: Arc<Caller>, rate: f64, d: Duration) -> Run {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let (mut lat_us, mut errors) = (Vec::new(), 0u64);
    let mut reap = |r: Result<(bool, Duration), tokio::task::JoinError>| match r {
        Ok((true, l)) => lat_us.push(l.as_micros() as u64),
        _ => errors += 1,
    };
    for i in 0u32.. {
        let at = start + interval * i;
        if at - start >= d {
            break;
        }
        tokio::time::sleep_until(at).await;
        let caller = caller.clone();
        set.spawn(async move {
            let ok = caller.issue(i as usize).await;
            (ok, at.elapsed())
        });
        while let Some(r) = set.try_join_next() {
            reap(r);
        }
    }
    while let Some(r) = set.join_next().await {
        reap(r);
    }
    let elapsed = start.elapsed();
    lat_us.sort_unstable();
    Run {
        rate: lat_us.len() as f64 / elapsed.as_secs_f64(),
        lat_us,
        errors,
        elapsed,
    }
}

/// fdatasync'd 4 KiB appends per second in `dir` for `d` (the disk's flush rate).
fn fsync_rate(dir: &Path, d: Duration) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Single-thread µs per `parse_csr` (DER parse + P-256 signature verification) of `csr`.
fn csr_verify_us(csr: &[u8]) -> anyhow::Result<f64> {
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        certgate_core::csr::parse_csr(csr).map_err(|e| anyhow::anyhow!("parse_csr: {e}"))?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn cpu_pids(pids: &[(String, Option<String>)]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|(_, p)| p.as_deref().and_then(cpu_seconds))
        .collect()
}

pub(crate) fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let d = Duration::from_secs(args.seconds);
    let sd = Duration::from_secs(args.signer_seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bin_dir = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bench executable has no directory")?
            .to_path_buf(),
    };
    let _tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            _tmp = tempfile::tempdir()?;
            _tmp.path().join("data")
        }
    };
    anyhow::ensure!(
        !dir.exists(),
        "{} exists; give a fresh data dir",
        dir.display()
    );

    println!("certgate-bench issue: initialising {}", dir.display());
    let out = Command::new(bin_dir.join("certgate"))
        .arg("init")
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .context("run certgate init")?;
    anyhow::ensure!(
        out.status.success(),
        "certgate init failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = dir.canonicalize()?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    if let Some(ms) = args.audit_sign_interval_ms {
        // core.toml ends with its [audit] table (`certgate init`), so this line lands in it.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("core/core.toml"))?
            .write_all(format!("sign_interval_ms = {ms}\n").as_bytes())?;
    }
    // As `certgate up` does: the signer first, then the core (which connects to it).
    let signer_child = spawn(
        &bin_dir.join("certgate-signer"),
        &dir.join("signer/signer.toml"),
        &logs.join("bench-signer.log"),
    )?;
    let signer_socket = dir.join("run/signer.sock");
    wait_socket(&signer_socket, "certgate-signer")?;
    let core_child = spawn(
        &bin_dir.join("certgate-core"),
        &dir.join("core/core.toml"),
        &logs.join("bench-core.log"),
    )?;
    let core_socket = dir.join("run/core.sock");
    wait_socket(&core_socket, "certgate-core")?;
    let pids = vec![
        ("signer".to_owned(), Some(signer_child.0.id().to_string())),
        ("core".to_owned(), Some(core_child.0.id().to_string())),
        ("bench".to_owned(), Some("self".to_owned())),
    ];

    println!("generating {} P-256 CSRs …", args.csrs);
    let csrs = make_csrs(args.csrs.max(1))?;
    let csr_us = csr_verify_us(&csrs[0])?;
    println!("measuring the disk's fdatasync rate …");
    let fsyncs = fsync_rate(&dir, Duration::from_secs(2))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // tonic channels spawn their connection tasks on the current runtime.
    let _entered = rt.enter();
    let caller = Arc::new(Caller {
        channels: (0..args.connections.max(1))
            .map(|_| CoreClient::new(certgate_proto::transport::unix_channel(core_socket.clone())))
            .collect(),
        csrs,
        run: std::process::id().to_string(),
        next: AtomicU64::new(0),
        uid: format!("uid:{}", certgate_proto::transport::current_uid()),
    });

    let (full, half, cpu) = rt.block_on(async {
        // Wait until the core issues (it may still be connecting to the signer).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !caller.issue(0).await {
            anyhow::ensure!(Instant::now() < deadline, "the core does not issue");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("warming up (1 s) …");
        closed_loop(caller.clone(), args.clients, Duration::from_secs(1)).await;
        println!(
            "measuring Issue with {} concurrent callers over {} connections for {} s …",
            args.clients,
            args.connections,
            d.as_secs()
        );
        let c0 = cpu_pids(&pids);
        let full = closed_loop(caller.clone(), args.clients, d).await;
        let c1 = cpu_pids(&pids);
        let cpu: Vec<Option<f64>> = c0
            .iter()
            .zip(&c1)
            .map(|(a, b)| Some((b.as_ref()? - a.as_ref()?) * 1e6 / full.lat_us.len().max(1) as f64))
            .collect();
        let target = args.open_rate.unwrap_or(full.rate / 2.0);
        println!(
            "measuring Issue open-loop at {target:.0}/s (half the peak) for {} s …",
            d.as_secs()
        );
        let half = open_loop(caller.clone(), target, d).await;
        anyhow::Ok((full, half, cpu))
    })?;

    println!("measuring raw aws-lc-rs and the signer's Sign on the same signer …");
    let msg = response_data(4242)?;
    let raw1 = raw(1, sd, &msg)?;
    let rawn = raw(cores, sd, &msg)?;
    let sign = rt.block_on(sign_rate(
        &signer_socket,
        args.clients,
        args.connections,
        sd,
    ))?;

    drop(core_child);
    drop(signer_child);

    let total_errors = full.errors + half.errors;
    println!();
    println!(
        "certgate-bench issue: ECDSA P-256 CSRs, embedded store (SQLite WAL, synchronous=FULL), {cores} cores"
    );
    println!();
    println!(
        "| measurement | ops/s | p50 ms | p99 ms | vs raw 1 thread | vs raw {cores} threads | vs Sign |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, v: f64, lat: Option<&Run>| {
        let (p50, p99) = lat.map_or((String::from("–"), String::from("–")), |r| {
            (
                format!("{:.2}", quantile(&r.lat_us, 0.50)),
                format!("{:.2}", quantile(&r.lat_us, 0.99)),
            )
        });
        println!(
            "| {name} | {v:.0} | {p50} | {p99} | {:.1}% | {:.1}% | {:.1}% |",
            100.0 * v / raw1,
            100.0 * v / rawn,
            100.0 * v / sign
        );
    };
    row(
        &format!("Issue, {} callers (full load)", args.clients),
        full.rate,
        Some(&full),
    );
    row(
        &format!(
            "Issue, open loop at {:.0}/s ({})",
            args.open_rate.unwrap_or(full.rate / 2.0),
            if args.open_rate.is_some() {
                "given"
            } else {
                "half"
            }
        ),
        half.rate,
        Some(&half),
    );
    row(
        &format!(
            "signer Sign, {} clients / {} connections",
            args.clients, args.connections
        ),
        sign,
        None,
    );
    row("raw aws-lc-rs P-256 sign, 1 thread", raw1, None);
    row(
        &format!("raw aws-lc-rs P-256 sign, {cores} threads"),
        rawn,
        None,
    );
    println!();
    println!(
        "calls: {} full ({:.1} s), {} half ({:.1} s), {total_errors} failed",
        full.lat_us.len(),
        full.elapsed.as_secs_f64(),
        half.lat_us.len(),
        half.elapsed.as_secs_f64()
    );
    let show = |v: &Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} µs"));
    println!(
        "CPU per issuance at full load: signer {}, core {}, bench client {} (of {} µs wall per issuance on {cores} cores)",
        show(&cpu[0]),
        show(&cpu[1]),
        show(&cpu[2]),
        (1e6 * cores as f64 / full.rate.max(1.0)) as u64
    );
    println!(
        "in-process costs: CSR parse + verify {csr_us:.1} µs, raw P-256 signature {:.1} µs; disk: {fsyncs:.0} fdatasync/s",
        1e6 / raw1
    );
    let p99_half = quantile(&half.lat_us, 0.99);
    let p99_half = if args.open_rate.is_some() {
        f64::NAN
    } else {
        p99_half
    };
    println!(
        "targets: ≥ 1,500 issuances/s → {:.0} {}; p99 < 20 ms at half load → {p99_half:.2} ms {}",
        full.rate,
        if full.rate >= 1500.0 {
            "met"
        } else {
            "NOT met"
        },
        if p99_half < 20.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
