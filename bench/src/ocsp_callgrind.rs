//! `certgate-bench ocsp --callgrind-requests N`: instructions per request in the edge, counted
//! by valgrind's callgrind over a fixed number of sequential keep-alive requests.
//!
//! Requests per second move by ±40% with whatever else the machine runs; instruction counts do
//! not. The first edge runs under `valgrind --tool=callgrind --instr-atstart=no`; after a
//! warm-up on each connection, instrumentation is switched on with `callgrind_control`, `N`
//! requests are sent one after the other, and the dump's total `Ir` divided by `N` is printed
//! for GET `/ocsp/{req}`, POST `/ocsp` and an unrouted path (the plumbing floor). The profiles
//! stay in the output directory for `callgrind_annotate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::ChildGuard;
use crate::ocsp::Conn;

/// Starts `certgate-edge --config cfg` under callgrind, instrumentation off, profiles in `out`.
pub(crate) fn spawn_edge(
    edge: &Path,
    cfg: &str,
    out: &Path,
    log: &Path,
) -> anyhow::Result<ChildGuard> {
    std::fs::create_dir_all(out)?;
    let edge = edge.to_string_lossy();
    let out_file = out.join("callgrind.out.%p");
    crate::ocsp::spawn(
        Path::new("valgrind"),
        &[
            "--tool=callgrind",
            "--instr-atstart=no",
            &format!("--callgrind-out-file={}", out_file.display()),
            &edge,
            "--config",
            cfg,
        ],
        log,
    )
}

fn control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("run callgrind_control")?;
    anyhow::ensure!(
        out.status.success(),
        "callgrind_control {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The newest dump file in `dir` whose name ends with `.{part}`; returns its total `Ir`.
fn total_ir(dir: &Path, pid: u32, part: u32) -> anyhow::Result<(u64, PathBuf)> {
    let path = dir.join(format!("callgrind.out.{pid}.{part}"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let ir = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no totals line in the callgrind dump")?;
    Ok((ir, path))
}

enum Req<'a> {
    Get(&'a str),
    Post(&'a [u8]),
}

async fn one(conn: &mut Conn, r: &Req<'_>) -> anyhow::Result<u16> {
    Ok(match r {
        Req::Get(p) => {
            let head = format!("GET {p} HTTP/1.1\r\nHost: bench\r\n\r\n");
            conn.exchange(head.as_bytes(), &[]).await?.0
        }
        Req::Post(b) => conn.post("/ocsp", b).await?.0,
    })
}

/// Counts instructions per request for the three request kinds; prints a table.
pub(crate) async fn measure(
    addr: SocketAddr,
    pid: u32,
    dir: &Path,
    n: usize,
    get_paths: &[String],
    post_bodies: &[Vec<u8>],
    floor_paths: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0 && !get_paths.is_empty(), "nothing to measure");
    let kinds: [(&str, Vec<Req<'_>>, u16); 3] = [
        (
            "GET /ocsp/{req}",
            get_paths.iter().map(|p| Req::Get(p)).collect(),
            200,
        ),
        (
            "POST /ocsp",
            post_bodies.iter().map(|b| Req::Post(b)).collect(),
            200,
        ),
        (
            "unrouted 404 (floor)",
            floor_paths.iter().map(|p| Req::Get(p)).collect(),
            404,
        ),
    ];
    let mut rows = Vec::new();
    for (part, (name, reqs, want)) in kinds.iter().enumerate() {
        let mut conn = Conn::open(addr).await?;
        // Warm-up: connection set-up, first-use registrations, lazily built state, and every
        // request once (steady state: a relying party asks the same question again).
        for r in reqs {
            anyhow::ensure!(
                one(&mut conn, r).await? == *want,
                "{name}: unexpected status"
            );
        }
        control(&["-z"], pid)?;
        control(&["-i", "on"], pid)?;
        for i in 0..n {
            let status = one(&mut conn, &reqs[i % reqs.len()]).await?;
            anyhow::ensure!(status == *want, "{name}: status {status}");
        }
        control(&["-i", "off"], pid)?;
        control(&["-d"], pid)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (ir, path) = total_ir(dir, pid, part as u32 + 1)?;
        rows.push((*name, ir, path));
    }
    println!();
    println!("certgate-bench ocsp --callgrind-requests {n}: edge instructions per request");
    println!();
    println!("| request | Ir / request | profile |");
    println!("|---|---:|---|");
    for (name, ir, path) in rows {
        println!("| {name} | {} | {} |", ir / n as u64, path.display());
    }
    Ok(())
}
