//! `certgate-bench fleet`: the ACME and OCSP scenarios against 1, 2 and 4 edges of a real fleet —
//! `certgate up --fleet N`: one signer, two cores on PostgreSQL, N edges on Redis (Debian's
//! `postgres` and `redis-server` on loopback) — reported as throughput per edge count in one run,
//! with the CPU each component spent per request so that a bigger cluster can be planned.
//!
//! CPU is read from `/proc/<pid>/stat` (utime + stime, plus cutime + cstime and the live
//! children for PostgreSQL, whose work happens in per-connection backends) before and after each
//! phase and divided by the requests completed in it. On a machine with fewer CPU cores than
//! processes the throughput cannot grow with the edge count: every process competes for the same
//! cores, so the per-request CPU figures are the ones to extrapolate from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use certgate_proto::core::core_client::CoreClient;
use instant_acme::{Account, NewAccount};

use crate::acme::{Proc, Tokens, free_addr, wait_until};

#[derive(clap::Args, Debug)]
pub(crate) struct FleetArgs {
    /// Edge counts to measure, in one run (a fresh fleet for each).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    edges: Vec<usize>,
    /// Seconds of ACME measurement per edge count.
    #[arg(long, default_value_t = 10)]
    acme_seconds: u64,
    /// ACME issuances in flight in total, spread evenly over the edges (one account per edge).
    #[arg(long, default_value_t = 16)]
    acme_concurrency: usize,
    /// Seconds of OCSP measurement per edge count.
    #[arg(long, default_value_t = 10)]
    ocsp_seconds: u64,
    /// Certificates issued for the OCSP phase (their responses are fetched once per edge first).
    #[arg(long, default_value_t = 500)]
    ocsp_certs: usize,
    /// wrk keep-alive connections in total, spread over the edges (one wrk per edge).
    #[arg(long, default_value_t = 32)]
    ocsp_connections: usize,
    /// Keep the fleet data dirs and logs here (must not exist yet).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core`, `certgate-edge` (default:
    /// next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// CPU ms per request by component kind: (kind, ms summed over its processes, processes).
type CpuCost = Vec<(&'static str, f64, usize)>;

/// A process to account CPU for.
#[derive(Clone, Debug)]
struct Component {
    /// signer, core, edge, postgres, redis, bench client.
    kind: &'static str,
    pid: String,
}

/// utime + stime + cutime + cstime of `pid` (seconds), plus the same for its live children when
/// `tree` (PostgreSQL backends); `None` when the process is gone.
fn cpu_of(pid: &str, tree: bool) -> Option<f64> {
    let fields = |pid: &str| -> Option<(u32, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid: u32 = f.get(1)?.parse().ok()?;
        let ticks: f64 = (11..=14)
            .map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
            .sum();
        Some((ppid, ticks / 100.0))
    };
    let (_, own) = fields(pid)?;
    if !tree {
        return Some(own);
    }
    let me: u32 = pid.parse().ok()?;
    let children: f64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| fields(&p.to_string()))
        .filter(|(ppid, _)| *ppid == me)
        .map(|(_, s)| s)
        .sum();
    Some(own + children)
}

fn snapshot(procs: &[Component]) -> Vec<Option<f64>> {
    procs
        .iter()
        .map(|c| cpu_of(&c.pid, c.kind == "postgres"))
        .collect()
}

/// CPU ms per request by component kind (summed over the processes of a kind), and per process
/// for kinds with several.
fn cpu_per_request(
    procs: &[Component],
    before: &[Option<f64>],
    after: &[Option<f64>],
    requests: u64,
) -> CpuCost {
    let mut by_kind: CpuCost = Vec::new();
    for ((c, b), a) in procs.iter().zip(before).zip(after) {
        let used = match (b, a) {
            (Some(b), Some(a)) => a - b,
            _ => continue,
        };
        let ms = used * 1000.0 / requests.max(1) as f64;
        match by_kind.iter_mut().find(|(k, _, _)| *k == c.kind) {
            Some(e) => {
                e.1 += ms;
                e.2 += 1;
            }
            None => by_kind.push((c.kind, ms, 1)),
        }
    }
    by_kind
}

/// A running `certgate up --fleet N`: its edges' addresses and processes.
struct Running {
    _up: Proc,
    /// (ACME directory URL, OCSP plain-HTTP address) per edge.
    edges: Vec<(String, SocketAddr)>,
    root: PathBuf,
    chain: PathBuf,
    core_socket: PathBuf,
    procs: Vec<Component>,
}

fn start_fleet(bin_dir: &Path, dir: &Path, n: usize) -> anyhow::Result<Running> {
    let (https, http, admin) = (free_addr()?, free_addr()?, free_addr()?);
    let data = dir.join("data");
    let mut cmd = Command::new(bin_dir.join("certgate"));
    cmd.arg("up")
        .arg("--fleet")
        .arg(n.to_string())
        .arg("--data-dir")
        .arg(&data)
        .args(["--https", &https.to_string()])
        .args(["--http", &http.to_string()])
        .args(["--admin", &admin.to_string()])
        .env("RUST_LOG", "warn");
    let up = Proc::spawn(cmd, &dir.join(format!("up-fleet-{n}.log")))?;
    wait_until("certgate up --fleet", Duration::from_secs(300), || {
        up.log().contains("Press Ctrl-C to stop.")
    })
    .with_context(|| up.log())?;
    let log = up.log();
    let value = |line: &str, label: &str| -> Option<String> {
        line.trim_start()
            .strip_prefix(label)
            .map(|v| v.trim().to_owned())
    };
    let dirs: Vec<String> = log
        .lines()
        .filter_map(|l| value(l, "ACME directory"))
        .collect();
    let ocsp: Vec<SocketAddr> = log
        .lines()
        .filter_map(|l| value(l, "OCSP"))
        .filter_map(|u| {
            u.strip_prefix("http://")?
                .strip_suffix("/ocsp")?
                .parse()
                .ok()
        })
        .collect();
    anyhow::ensure!(
        dirs.len() == n && ocsp.len() == n,
        "banner lists {} ACME and {} OCSP endpoints for {n} edges:\n{log}",
        dirs.len(),
        ocsp.len()
    );
    let fleet = data.join("fleet");
    let pids = std::fs::read_to_string(fleet.join("run/pids")).context("fleet pids file")?;
    let procs = pids
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once('=')?;
            let kind = match name {
                "certgate-signer" => "signer",
                "certgate-core" => "core",
                "certgate-edge" => "edge",
                "postgres" => "postgres",
                "redis-server" => "redis",
                _ => return None,
            };
            Some(Component {
                kind,
                pid: pid.trim().to_owned(),
            })
        })
        .chain([Component {
            kind: "bench client",
            pid: "self".into(),
        }])
        .collect();
    Ok(Running {
        _up: up,
        edges: dirs.into_iter().zip(ocsp).collect(),
        root: fleet.join("ca/root.pem"),
        chain: fleet.join("ca/chain.pem"),
        core_socket: fleet.join("run/core.sock"),
        procs,
    })
}

/// One edge count's results.
struct Row {
    edges: usize,
    acme_rate: f64,
    acme_ok: u64,
    acme_failed: u64,
    acme_cpu: CpuCost,
    ocsp_rate: f64,
    ocsp_non_2xx: u64,
    ocsp_cpu: CpuCost,
}

async fn acme_phase(
    f: &Running,
    tokens: &Tokens,
    concurrency: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<(f64, u64, u64, CpuCost)> {
    // One account per edge, each made through its own edge (accounts live in PostgreSQL).
    let mut accounts = Vec::new();
    for (i, (dir, _)) in f.edges.iter().enumerate() {
        let (account, _) =
            Account::builder_with_http(Box::new(crate::acme::https_client(&f.root)?))
                .create(
                    &NewAccount {
                        contact: &[],
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    dir.clone(),
                    None,
                )
                .await
                .with_context(|| format!("newAccount at edge {}", i + 1))?;
        accounts.push(Arc::new(account));
    }
    let key = Arc::new(rcgen::KeyPair::generate()?);
    let run = std::process::id();
    for (i, a) in accounts.iter().enumerate() {
        crate::acme::issue_one(a, &format!("warm{i}-{label}-{run}.test"), &key, tokens)
            .await
            .with_context(|| format!("warm-up issuance at edge {}", i + 1))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let done_in_window = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let shown = Arc::new(AtomicBool::new(false));
    let before = snapshot(&f.procs);
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let account = accounts[w % accounts.len()].clone();
            let (key, tokens) = (key.clone(), tokens.clone());
            let (stop, next, done, failed, shown) = (
                stop.clone(),
                next.clone(),
                done_in_window.clone(),
                failed.clone(),
                shown.clone(),
            );
            let label = label.to_owned();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let name = format!(
                        "f{}-{run}-{label}.test",
                        next.fetch_add(1, Ordering::Relaxed)
                    );
                    let one = tokio::time::timeout(
                        crate::acme::ISSUANCE_TIMEOUT,
                        crate::acme::issue_one(&account, &name, &key, &tokens),
                    )
                    .await;
                    match one {
                        Ok(Ok(_)) if start.elapsed() <= window => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if !shown.swap(true, Ordering::Relaxed) {
                                eprintln!("{label}: first failed issuance: {e:#}");
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    // CPU over exactly the window (the drain after it is not counted either way).
    let after = snapshot(&f.procs);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let ok = done_in_window.load(Ordering::Relaxed);
    Ok((
        ok as f64 / window.as_secs_f64(),
        ok,
        failed.load(Ordering::Relaxed),
        cpu_per_request(&f.procs, &before, &after, ok),
    ))
}

fn ocsp_phase(
    f: &Running,
    rt: &tokio::runtime::Runtime,
    args: &FleetArgs,
    scripts: &Path,
) -> anyhow::Result<(f64, u64, CpuCost)> {
    let issuer = {
        let pem = std::fs::read(&f.chain)?;
        let chain = x509_cert::Certificate::load_pem_chain(&pem)?;
        chain.into_iter().next().context("empty chain.pem")?
    };
    let _entered = rt.enter();
    let core = CoreClient::new(certgate_proto::transport::unix_channel(
        f.core_socket.clone(),
    ));
    let uid = format!("uid:{}", certgate_proto::transport::current_uid());
    let serials = rt.block_on(crate::ocsp::issue_many(core, args.ocsp_certs, &uid))?;
    let serial_bytes: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| {
            let mut v = crate::ocsp::hex_decode(s)?;
            if v.first().is_some_and(|b| b & 0x80 != 0) {
                v.insert(0, 0);
            }
            Ok(v)
        })
        .collect::<anyhow::Result<_>>()?;
    let requests = crate::ocsp::ocsp_requests(&issuer, &serial_bytes)?;
    for (_, addr) in &f.edges {
        rt.block_on(crate::ocsp::fetch_all(*addr, requests.clone()))?;
    }
    let paths: Vec<String> = requests
        .iter()
        .map(|r| format!("{:?}", crate::ocsp::get_path(r)))
        .collect();
    let lua =
        crate::ocsp::wrk_script(scripts, &format!("get-{}.lua", f.edges.len()), &paths, None)?;
    let per_edge = (args.ocsp_connections / f.edges.len()).max(1);
    // At least as many wrk threads in total as CPU cores, so one edge is not bounded by a
    // single client thread.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cpus / f.edges.len()).max(1);
    let before = snapshot(&f.procs);
    let runs: Vec<_> = f
        .edges
        .iter()
        .map(|(_, addr)| {
            let (url, lua, secs) = (format!("http://{addr}"), lua.clone(), args.ocsp_seconds);
            std::thread::spawn(move || crate::ocsp::wrk(&url, Some(&lua), threads, per_edge, secs))
        })
        .collect();
    let mut rate = 0.0;
    let mut bad = 0;
    for r in runs {
        let w = r
            .join()
            .map_err(|_| anyhow::anyhow!("wrk thread panicked"))??;
        rate += w.rps;
        bad += w.non_2xx;
    }
    let after = snapshot(&f.procs);
    let total = (rate * args.ocsp_seconds as f64) as u64;
    Ok((rate, bad, cpu_per_request(&f.procs, &before, &after, total)))
}

fn cpu_cell(cpu: &CpuCost, kind: &str) -> String {
    cpu.iter()
        .find(|(k, _, _)| *k == kind)
        .map_or("–".into(), |(_, ms, n)| {
            if *n > 1 {
                format!("{ms:.4} ({n}×)")
            } else {
                format!("{ms:.4}")
            }
        })
}

fn ms_of(cpu: &CpuCost, kind: &str) -> Option<f64> {
    cpu.iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, ms, _)| *ms)
}

pub(crate) fn fleet(args: FleetArgs) -> anyhow::Result<()> {
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
    anyhow::ensure!(!args.edges.is_empty(), "--edges lists no edge count");
    // The fixed http-01 port: the same lock as the acme scenario and the e2e tests.
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "certgate-bench fleet: edges {:?}, ACME {} in flight for {} s, OCSP wrk {} connections for {} s over {} certificates, {cpus} CPU cores",
        args.edges,
        args.acme_concurrency,
        args.acme_seconds,
        args.ocsp_connections,
        args.ocsp_seconds,
        args.ocsp_certs
    );
    let tokens: Tokens = Arc::new(Mutex::new(HashMap::new()));
    let _responder = rt.block_on(crate::acme::responder(tokens.clone()))?;
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let mut rows = Vec::new();
    for &n in &args.edges {
        let fdir = dir.join(format!("fleet-{n}"));
        std::fs::create_dir_all(&fdir)?;
        println!("starting certgate up --fleet {n} …");
        let f = start_fleet(&bin_dir, &fdir, n)?;
        println!(
            "  ACME: {} issuances in flight over {n} edge(s) …",
            args.acme_concurrency
        );
        let (acme_rate, acme_ok, acme_failed, acme_cpu) = rt.block_on(acme_phase(
            &f,
            &tokens,
            args.acme_concurrency,
            args.acme_seconds,
            &format!("e{n}"),
        ))?;
        println!("    {acme_rate:.1} issuances/s ({acme_ok} in the window, {acme_failed} failed)");
        println!(
            "  OCSP: issuing {} certificates, warming every edge, wrk …",
            args.ocsp_certs
        );
        let (ocsp_rate, ocsp_non_2xx, ocsp_cpu) = ocsp_phase(&f, &rt, &args, &scripts)?;
        println!("    {ocsp_rate:.0} responses/s ({ocsp_non_2xx} non-2xx)");
        rows.push(Row {
            edges: n,
            acme_rate,
            acme_ok,
            acme_failed,
            acme_cpu,
            ocsp_rate,
            ocsp_non_2xx,
            ocsp_cpu,
        });
        drop(f);
    }

    println!();
    println!(
        "| edges | ACME issuances/s | per edge | failed | OCSP responses/s | per edge | non-2xx |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {} |",
            r.edges,
            r.acme_rate,
            r.acme_rate / r.edges as f64,
            r.acme_failed,
            r.ocsp_rate,
            r.ocsp_rate / r.edges as f64,
            r.ocsp_non_2xx
        );
    }
    let kinds = [
        "signer",
        "core",
        "edge",
        "postgres",
        "redis",
        "bench client",
    ];
    for (what, pick) in [("ACME issuance", 0usize), ("OCSP response", 1usize)] {
        println!();
        println!("CPU ms per {what}, by component (summed over its processes; (n×) = processes):");
        println!("| edges | {} |", kinds.join(" | "));
        println!("|---:|{}", "---:|".repeat(kinds.len()));
        for r in &rows {
            let cpu = if pick == 0 { &r.acme_cpu } else { &r.ocsp_cpu };
            let cells: Vec<String> = kinds.iter().map(|k| cpu_cell(cpu, k)).collect();
            println!("| {} | {} |", r.edges, cells.join(" | "));
        }
    }
    // Capacity: requests per second one fully used CPU core gives each component (from the
    // largest fleet measured, whose per-request costs include the fleet's coordination).
    if let Some(r) = rows.last() {
        println!();
        println!(
            "capacity per CPU core (from the {}-edge run): requests/s one core of each component sustains",
            r.edges
        );
        println!(
            "| component | ACME certificates/s per CPU core | OCSP responses/s per CPU core |"
        );
        println!("|---|---:|---:|");
        for k in ["signer", "core", "edge", "postgres", "redis"] {
            let cap = |ms: Option<f64>| {
                ms.filter(|m| *m > 0.0).map_or("–".into(), |m| {
                    if m < 0.0005 {
                        "> 100000 (off the path)".to_owned()
                    } else {
                        format!("{:.0}", 1000.0 / m)
                    }
                })
            };
            println!(
                "| {k} (all processes) | {} | {} |",
                cap(ms_of(&r.acme_cpu, k)),
                cap(ms_of(&r.ocsp_cpu, k))
            );
        }
    }
    let acme_total: u64 = rows.iter().map(|r| r.acme_ok).sum();
    println!();
    println!("{acme_total} ACME certificates issued in the measurement windows");
    drop(lock);
    Ok(())
}
