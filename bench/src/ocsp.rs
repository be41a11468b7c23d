//! `certgate-bench ocsp`: OCSP serving at the edge, side by side in one run with nginx serving a
//! static file of the same size (the ceiling for "serve bytes") and `cfssl ocspserve` serving
//! the same responses, all driven by wrk (`-t2 -c32`, keep-alive, a Lua script cycling through
//! the requests); then open-loop latency at fractions of the edge's GET peak (25/50/75% by
//! default; [`open_loop`], latency from the scheduled send time), the edge and nginx driven by
//! the same generator at the same rate in alternating slices, so that nginx is the control for
//! the machine's and the generator's own share of the tail; and the revocation propagation
//! latency to two edges.
//!
//! The fleet is real: `certgate init`, then `certgate-signer`, `certgate-core` and two
//! `certgate-edge` processes; `--certs` certificates are issued through `Core.Issue`, their
//! responses reach the edges over `WatchStatus` (or a miss), and revocations go through
//! `Core.Revoke`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::core::{IssueRequest, RevokeRequest, issue_request, revoke_request};
use der::{Decode, Encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::{ChildGuard, cpu_seconds};

#[derive(clap::Args, Debug)]
pub(crate) struct OcspArgs {
    /// Certificates to issue and query.
    #[arg(long, default_value_t = 10_000)]
    certs: usize,
    /// Seconds per wrk measurement (and for the half-rate run).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// wrk connections (keep-alive).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Revocations whose propagation to both edges is timed.
    #[arg(long, default_value_t = 50)]
    revocations: usize,
    /// Skip nginx and cfssl (edge only).
    #[arg(long)]
    no_peers: bool,
    /// Open-loop rates as fractions of the edge's measured GET peak; each rate drives the edge
    /// and then nginx (the control) with the same generator.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    open_fractions: Vec<f64>,
    /// Open-loop connections (one generator thread each).
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    /// Open-loop slices per target and rate, alternating between the targets.
    #[arg(long, default_value_t = 5)]
    open_slices: usize,
    /// Run the second edge from this binary instead (same config as before) and drive it with
    /// the open loop too, after the first edge at each rate: an A/B of two edge builds in one
    /// run, on the same machine state.
    #[arg(long)]
    compare_edge: Option<PathBuf>,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core`, `certgate-edge` (default:
    /// next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Instead of the wrk runs: run the first edge under `valgrind --tool=callgrind` and count
    /// the edge's instructions per request over this many sequential keep-alive GETs, POSTs and
    /// unrouted requests (repeatable on a loaded machine, unlike req/s). Use with `--certs 1000`.
    #[arg(long)]
    callgrind_requests: Option<usize>,
    /// Where the callgrind profiles go (default: the temporary work directory, deleted).
    #[arg(long)]
    callgrind_dir: Option<PathBuf>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<ChildGuard> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok(ChildGuard(child))
}

/// A child stopped with SIGTERM (nginx's master then stops its workers; SIGKILL would orphan
/// them), then killed if it has not exited within 5 s.
struct TermGuard(ChildGuard);

impl Drop for TermGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
pub(crate) struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `head` + `body`; returns (status, body).
    pub(crate) async fn exchange(
        &mut self,
        head: &[u8],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(head).await?;
        if !body.is_empty() {
            self.stream.write_all(body).await?;
        }
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).await?;
                    anyhow::ensure!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(crate) async fn post(&mut self, path: &str, der: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
            der.len()
        );
        self.exchange(head.as_bytes(), der).await
    }
}

/// OCSP requests (SHA-1 CertID, no nonce, as `openssl ocsp -no_nonce` sends) for `serials`
/// under `issuer`.
pub(crate) fn ocsp_requests(
    issuer: &x509_cert::Certificate,
    serials: &[Vec<u8>],
) -> anyhow::Result<Vec<Vec<u8>>> {
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
    let name = issuer.tbs_certificate.subject.to_der()?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let name_hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, &name);
    let key_hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, key);
    serials
        .iter()
        .map(|serial| {
            let req = x509_ocsp::OcspRequest {
                tbs_request: x509_ocsp::TbsRequest {
                    version: x509_ocsp::Version::V1,
                    requestor_name: None,
                    request_list: vec![x509_ocsp::Request {
                        req_cert: x509_ocsp::CertId {
                            hash_algorithm: spki::AlgorithmIdentifierOwned {
                                oid: const_oid::db::rfc5912::ID_SHA_1,
                                parameters: Some(der::Any::null()),
                            },
                            issuer_name_hash: der::asn1::OctetString::new(name_hash.as_ref())?,
                            issuer_key_hash: der::asn1::OctetString::new(key_hash.as_ref())?,
                            serial_number: x509_cert::serial_number::SerialNumber::new(serial)?,
                        },
                        single_request_extensions: None,
                    }],
                    request_extensions: None,
                },
                optional_signature: None,
            };
            Ok(req.to_der()?)
        })
        .collect()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `/ocsp/{percent-encoded base64}` (RFC 6960 Appendix A.1).
pub(crate) fn get_path(der: &[u8]) -> String {
    let enc = b64(der)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!("/ocsp/{enc}")
}

/// A Lua string literal with every byte as a decimal escape.
fn lua_bytes(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 4 + 2);
    s.push('"');
    for b in data {
        s.push_str(&format!("\\{b}"));
    }
    s.push('"');
    s
}

/// A wrk script cycling through `items`: GET paths, or POST bodies to `post_path`.
pub(crate) fn wrk_script(
    dir: &Path,
    name: &str,
    items: &[String],
    post_path: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let mut s = String::from("local items = {\n");
    for i in items {
        s.push_str(i);
        s.push_str(",\n");
    }
    s.push_str("}\nlocal n = #items\nlocal i = 0\n");
    s.push_str("function init(args) i = math.random(n) - 1 end\n");
    match post_path {
        Some(p) => s.push_str(&format!(
            "local headers = {{ [\"Content-Type\"] = \"application/ocsp-request\" }}\n\
             function request()\n  i = (i % n) + 1\n  return wrk.format(\"POST\", \"{p}\", headers, items[i])\nend\n"
        )),
        None => s.push_str(
            "function request()\n  i = (i % n) + 1\n  return wrk.format(\"GET\", items[i])\nend\n",
        ),
    }
    // Count non-200 answers so a run of errors is not reported as throughput.
    s.push_str(
        "local bad = 0\nfunction response(status, headers, body)\n  if status ~= 200 then bad = bad + 1 end\nend\n",
    );
    let path = dir.join(name);
    std::fs::write(&path, s)?;
    Ok(path)
}

pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    pub(crate) non_2xx: u64,
}

fn wrk_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    if let Some(x) = v.strip_suffix("us") {
        return x.parse::<f64>().ok().map(|x| x / 1000.0);
    }
    if let Some(x) = v.strip_suffix("ms") {
        return x.parse().ok();
    }
    if let Some(x) = v.strip_suffix('s') {
        return x.parse::<f64>().ok().map(|x| x * 1000.0);
    }
    None
}

pub(crate) fn wrk(
    url: &str,
    script: Option<&Path>,
    threads: usize,
    conns: usize,
    secs: u64,
) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let out = cmd.stdin(Stdio::null()).output().context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::to_owned))
    };
    let rps = find("Requests/sec:")
        .and_then(|v| v.trim().parse().ok())
        .context(format!("no Requests/sec in {text}"))?;
    let p50_ms = find("50%").and_then(|v| wrk_ms(&v)).unwrap_or(f64::NAN);
    let p99_ms = find("99%").and_then(|v| wrk_ms(&v)).unwrap_or(f64::NAN);
    let non_2xx = find("Non-2xx or 3xx responses:")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(WrkResult {
        rps,
        p50_ms,
        p99_ms,
        non_2xx,
    })
}

fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    sorted_us[idx.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// One request of an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    /// Scheduled send time, µs from the run's start.
    sched_us: u64,
    /// From the scheduled send time to the response's last byte, µs (what a user waits: a
    /// request that left late because the generator was late counts its lateness).
    lat_us: u64,
    /// From the scheduled send time to the actual send, µs: the generator's own lateness (timer
    /// wake-up, or no free connection).
    late_us: u64,
}

/// The result of [`open_loop`].
struct OpenLoop {
    rate: f64,
    samples: Vec<Sample>,
    errors: u64,
    /// Whether every thread's timer slack could be set to 1 µs.
    fine_timers: bool,
}

/// Parses one complete HTTP/1.1 response (Content-Length framed) at the front of `buf`:
/// `Some((status, its length in bytes))` once all of it is there.
fn parse_response(buf: &[u8]) -> anyhow::Result<Option<(u16, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let total = end + 4 + len;
    Ok((buf.len() >= total).then_some((status, total)))
}

/// A connection's slot when no request is in flight on it.
const IDLE: u64 = u64::MAX;

/// Sets this thread's timer slack to 1 µs (default 50 µs: `nanosleep` may overshoot by that
/// much on purpose). `/proc/<tid>/timerslack_ns`, the tid read from `/proc/thread-self` (no
/// `prctl` without unsafe code).
fn fine_timer_slack() -> bool {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| l.file_name().map(|t| t.to_string_lossy().into_owned()))
        .is_some_and(|tid| std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1000").is_ok())
}

/// Scheduled send time of request `i` at `rate`/s, ns from the start.
fn sched_ns(i: u64, rate: f64) -> u64 {
    (i as f64 * 1e9 / rate) as u64
}

/// Reads responses on connection `c` until it is shut down; for each, takes the request index
/// out of the connection's slot, records (index, latency from its scheduled time) and puts the
/// connection back on the free list.
async fn open_loop_reader(
    c: usize,
    mut stream: tokio::net::TcpStream,
    slots: Arc<Vec<std::sync::atomic::AtomicU64>>,
    free: Arc<std::sync::Mutex<std::collections::VecDeque<usize>>>,
    start: Instant,
    rate: f64,
) -> Vec<(u64, u64)> {
    use std::sync::atomic::Ordering;
    let (mut out, mut buf, mut chunk) = (Vec::new(), Vec::with_capacity(4096), [0u8; 4096]);
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return out;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (status, total) = match parse_response(&buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                // Garbage: the connection is out of service (its request counts as an error).
                Err(_) => return out,
            };
            let now = Instant::now();
            buf.drain(..total);
            let i = slots[c].swap(IDLE, Ordering::AcqRel);
            if i == IDLE {
                return out;
            }
            if status == 200 {
                let at = start + Duration::from_nanos(sched_ns(i, rate));
                out.push((i, now.saturating_duration_since(at).as_micros() as u64));
            }
            if let Ok(mut f) = free.lock() {
                f.push_back(c);
            }
        }
    }
}

/// Open-loop load: `rate` requests/s in total for `d`, request `i` scheduled at exactly
/// `i / rate` s after the start and sent on whichever of `conns` keep-alive connections is free
/// (one request in flight per connection, as HTTP/1.1 without pipelining): one slow response
/// delays no other request's schedule; only when every connection is busy does a send wait, and
/// then the wait is counted. Latency runs from the scheduled time to the response's last byte,
/// never from the actual send (no coordinated omission); a request never answered with 200
/// counts as an error.
///
/// Two threads, so that the generator costs little next to the server on a 2-core machine: a
/// sender that sleeps with `nanosleep` and a 1 µs timer slack until each send time (not tokio's
/// 1 ms timer wheel, which would release a millisecond's requests at once, in bursts) and
/// writes the request, and a reader (a `current_thread` tokio runtime, one task per connection)
/// that timestamps each response. The lateness of every send is recorded and reported: the
/// generator's own granularity is measured, not assumed.
fn open_loop(
    addr: SocketAddr,
    heads: Arc<Vec<Vec<u8>>>,
    rate: f64,
    conns: usize,
    d: Duration,
) -> anyhow::Result<OpenLoop> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let rate = rate.max(1.0);
    let total = (rate * d.as_secs_f64()) as u64;
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..conns.max(1) {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        writers.push(s.try_clone()?);
        readers.push(s);
    }
    let n = writers.len();
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(IDLE)).collect());
    let free = Arc::new(std::sync::Mutex::new(
        (0..n).collect::<std::collections::VecDeque<usize>>(),
    ));
    let start = Instant::now() + Duration::from_millis(100);
    let reader = {
        let (slots, free) = (slots.clone(), free.clone());
        std::thread::Builder::new()
            .name("open-loop-rx".into())
            .spawn(move || -> anyhow::Result<Vec<(u64, u64)>> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (c, s) in readers.into_iter().enumerate() {
                        let stream = tokio::net::TcpStream::from_std(s)?;
                        tasks.spawn(open_loop_reader(
                            c,
                            stream,
                            slots.clone(),
                            free.clone(),
                            start,
                            rate,
                        ));
                    }
                    let mut all = Vec::new();
                    while let Some(r) = tasks.join_next().await {
                        all.extend(r?);
                    }
                    anyhow::Ok(all)
                })
            })?
    };
    let sender = std::thread::Builder::new()
        .name("open-loop-tx".into())
        .spawn(move || -> (Vec<u32>, bool) {
            let fine = fine_timer_slack();
            let mut late = vec![u32::MAX; total as usize];
            for i in 0..total {
                let at = start + Duration::from_nanos(sched_ns(i, rate));
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let c = loop {
                    if let Some(c) = free.lock().ok().and_then(|mut f| f.pop_front()) {
                        break c;
                    }
                    // Every connection busy: wait (the delay counts in the latency).
                    std::thread::sleep(Duration::from_micros(20));
                };
                let sent = Instant::now();
                late[i as usize] = sent.saturating_duration_since(at).as_micros() as u32;
                slots[c].store(i, Ordering::Release);
                let head = &heads[(i as usize).wrapping_mul(7919) % heads.len()];
                let mut off = 0;
                while off < head.len() {
                    match writers[c].write(&head[off..]) {
                        Ok(k) if k > 0 => off += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_micros(10));
                        }
                        // A broken connection stays out of the free list; its request is lost.
                        _ => {
                            slots[c].store(IDLE, Ordering::Release);
                            break;
                        }
                    }
                }
            }
            // Let the requests in flight finish (bounded), then end the readers.
            let deadline = Instant::now() + Duration::from_secs(10);
            while slots.iter().any(|s| s.load(Ordering::Acquire) != IDLE)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            for w in &writers {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            (late, fine)
        })?;
    let (late, fine) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the open-loop sender panicked"))?;
    let answered = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the open-loop reader panicked"))??;
    let mut samples: Vec<Sample> = answered
        .into_iter()
        .map(|(i, lat_us)| Sample {
            sched_us: sched_ns(i, rate) / 1000,
            lat_us,
            late_us: late.get(i as usize).copied().unwrap_or(0).into(),
        })
        .collect();
    samples.sort_unstable_by_key(|s| s.sched_us);
    Ok(OpenLoop {
        rate,
        errors: total.saturating_sub(samples.len() as u64),
        samples,
        fine_timers: fine,
    })
}

/// One open-loop target at one rate (all its slices) with what the bench reports about it.
struct OpenRun {
    name: &'static str,
    frac: f64,
    stats: OpenStats,
    per_second: Vec<f64>,
    /// Server threads by name: CPU seconds, voluntary and involuntary context switches.
    threads: std::collections::BTreeMap<String, (f64, u64, u64)>,
    /// The bench process's CPU seconds during the target's slices (the generator's cost).
    gen_cpu_s: f64,
    run: OpenLoop,
}

/// Quantiles of an open-loop run.
#[derive(Clone, Copy, Debug, Default)]
struct OpenStats {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    late_p50: f64,
    late_p99: f64,
    /// Share of requests sent more than 1 ms late.
    late_1ms: f64,
}

fn open_stats(r: &OpenLoop) -> OpenStats {
    let mut lat: Vec<u64> = r.samples.iter().map(|s| s.lat_us).collect();
    let mut late: Vec<u64> = r.samples.iter().map(|s| s.late_us).collect();
    lat.sort_unstable();
    late.sort_unstable();
    OpenStats {
        p50: quantile_ms(&lat, 0.5),
        p99: quantile_ms(&lat, 0.99),
        p999: quantile_ms(&lat, 0.999),
        max: quantile_ms(&lat, 1.0),
        late_p50: quantile_ms(&late, 0.5),
        late_p99: quantile_ms(&late, 0.99),
        late_1ms: late.iter().filter(|&&l| l > 1000).count() as f64 / late.len().max(1) as f64,
    }
}

/// p99 (ms) per `window` of scheduled time: where in the run the tail happens.
fn windowed_p99(samples: &[Sample], window: Duration) -> Vec<f64> {
    let w = window.as_micros().max(1) as u64;
    let mut out: Vec<f64> = Vec::new();
    let mut cur: Vec<u64> = Vec::new();
    let mut idx = 0;
    for s in samples {
        let k = s.sched_us / w;
        while k > idx {
            cur.sort_unstable();
            out.push(quantile_ms(&cur, 0.99));
            cur.clear();
            idx += 1;
        }
        cur.push(s.lat_us);
    }
    cur.sort_unstable();
    out.push(quantile_ms(&cur, 0.99));
    out
}

/// (thread name, CPU seconds, voluntary, involuntary context switches) of every thread of `pid`.
fn thread_stats(pid: u32) -> Vec<(String, f64, u64, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let p = e.path();
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(p.join("stat")),
            std::fs::read_to_string(p.join("status")),
        ) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_owned())
            .unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((
            name,
            cpu,
            field("voluntary_ctxt_switches:"),
            field("nonvoluntary_ctxt_switches:"),
        ));
    }
    out
}

/// Per thread name (threads of one name summed): CPU seconds and context switches between two
/// [`thread_stats`] snapshots, busiest first.
fn thread_delta(
    before: &[(String, f64, u64, u64)],
    after: &[(String, f64, u64, u64)],
) -> Vec<(String, f64, u64, u64)> {
    let mut sum: std::collections::BTreeMap<String, (f64, u64, u64)> = Default::default();
    for (n, c, v, i) in after {
        let e = sum.entry(n.clone()).or_default();
        e.0 += c;
        e.1 += v;
        e.2 += i;
    }
    for (n, c, v, i) in before {
        if let Some(e) = sum.get_mut(n) {
            e.0 -= c;
            e.1 = e.1.saturating_sub(*v);
            e.2 = e.2.saturating_sub(*i);
        }
    }
    let mut v: Vec<_> = sum
        .into_iter()
        .map(|(n, (c, vo, i))| (n, c, vo, i))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn nginx_conf(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let conf = format!(
        "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    default_type application/ocsp-response;\n    location / {{ try_files /resp.der =404; }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::create_dir_all(dir.join("tmp"))?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

pub(crate) fn ocsp(args: OcspArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bin_dir = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bench executable has no directory")?
            .to_path_buf(),
    };
    let tmp = tempfile::tempdir()?;
    // nginx workers may run as another user: let them read the static file.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let work = tmp.path().to_path_buf();
    let dir = work.join("data");
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let port = |_| free_port();
    let (https, http, admin) = (port(0)?, port(1)?, port(2)?);
    println!("certgate-bench ocsp: initialising {}", dir.display());
    let out = Command::new(bin_dir.join("certgate"))
        .args(["init", "--data-dir"])
        .arg(&dir)
        .args([
            "--https",
            &format!("127.0.0.1:{https}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
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
    let cfg = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let _signer = spawn(
        &bin_dir.join("certgate-signer"),
        &["--config", &cfg("signer/signer.toml")],
        &logs.join("signer.log"),
    )?;
    let signer_sock = dir.join("run/signer.sock");
    wait_until("signer", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&signer_sock).is_ok()
    })?;
    let core_child = spawn(
        &bin_dir.join("certgate-core"),
        &["--config", &cfg("core/core.toml")],
        &logs.join("core.log"),
    )?;
    let core_sock = dir.join("run/core.sock");
    wait_until("core", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&core_sock).is_ok()
    })?;
    let edge_cfg = cfg("edge/edge.toml");
    let callgrind_out = args
        .callgrind_dir
        .clone()
        .unwrap_or_else(|| work.join("callgrind"));
    let edge_child = match args.callgrind_requests {
        None => spawn(
            &bin_dir.join("certgate-edge"),
            &["--config", &edge_cfg],
            &logs.join("edge.log"),
        )?,
        Some(_) => crate::ocsp_callgrind::spawn_edge(
            &bin_dir.join("certgate-edge"),
            &edge_cfg,
            &callgrind_out,
            &logs.join("edge.log"),
        )?,
    };
    // A second edge on other ports: the first one's config (next to it) with its own addresses,
    // so that an A/B against `--compare-edge` differs in the binary only.
    let (https2, http2, admin2) = (free_port()?, free_port()?, free_port()?);
    let edge2_cfg = dir.join("edge/edge2.toml");
    let edge1_text = std::fs::read_to_string(&edge_cfg)?;
    for p in [https, http, admin] {
        anyhow::ensure!(
            edge1_text.contains(&format!("127.0.0.1:{p}\"")),
            "edge.toml does not name 127.0.0.1:{p}"
        );
    }
    std::fs::write(
        &edge2_cfg,
        edge1_text
            .replace(
                &format!("127.0.0.1:{https}\""),
                &format!("127.0.0.1:{https2}\""),
            )
            .replace(
                &format!("127.0.0.1:{http}\""),
                &format!("127.0.0.1:{http2}\""),
            )
            .replace(
                &format!("127.0.0.1:{admin}\""),
                &format!("127.0.0.1:{admin2}\""),
            ),
    )?;
    let edge2 = spawn(
        args.compare_edge
            .as_deref()
            .unwrap_or(&bin_dir.join("certgate-edge")),
        &["--config", &edge2_cfg.to_string_lossy()],
        &logs.join("edge2.log"),
    )?;
    let edge_addr = SocketAddr::from(([127, 0, 0, 1], http));
    let edge2_addr = SocketAddr::from(([127, 0, 0, 1], http2));
    for a in [edge_addr, edge2_addr] {
        wait_until("edge", Duration::from_secs(30), || {
            std::net::TcpStream::connect(a).is_ok()
        })?;
    }

    let issuer = {
        let pem = std::fs::read(dir.join("ca/chain.pem"))?;
        let chain = x509_cert::Certificate::load_pem_chain(&pem)?;
        chain.into_iter().next().context("empty chain.pem")?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let core = CoreClient::new(certgate_proto::transport::unix_channel(core_sock.clone()));
    let uid = format!("uid:{}", certgate_proto::transport::current_uid());

    println!("issuing {} certificates through Core.Issue …", args.certs);
    let t0 = Instant::now();
    let serials = rt.block_on(issue_many(core.clone(), args.certs, &uid))?;
    println!("  {:.1} s", t0.elapsed().as_secs_f64());
    let serial_bytes: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| {
            let mut v = hex_decode(s)?;
            if v.first().is_some_and(|b| b & 0x80 != 0) {
                v.insert(0, 0);
            }
            Ok(v)
        })
        .collect::<anyhow::Result<_>>()?;
    let requests = ocsp_requests(&issuer, &serial_bytes)?;

    println!("fetching every response from both edges (cache warm-up) …");
    let t0 = Instant::now();
    let responses = rt.block_on(fetch_all(edge_addr, requests.clone()))?;
    rt.block_on(fetch_all(edge2_addr, requests.clone()))?;
    println!("  {:.1} s", t0.elapsed().as_secs_f64());
    let sizes: Vec<usize> = responses.iter().map(Vec::len).collect();
    let mean_size = sizes.iter().sum::<usize>() / sizes.len().max(1);

    let scripts = work.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let paths: Vec<String> = requests.iter().map(|r| get_path(r)).collect();
    let get_lua = wrk_script(
        &scripts,
        "get.lua",
        &paths.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>(),
        None,
    )?;
    let bodies: Vec<String> = requests.iter().map(|r| lua_bytes(r)).collect();
    let post_lua = wrk_script(&scripts, "post.lua", &bodies, Some("/ocsp"))?;
    let cfssl_lua = wrk_script(&scripts, "cfssl.lua", &bodies, Some("/"))?;
    // Unrouted paths of the same length: the edge's shared plumbing alone (accept, HTTP/1.1,
    // tenant split, routing miss, 404 problem+json), the floor under any handler.
    let floor_paths: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.replacen("/ocsp/", "/none/", 1)))
        .collect();
    let floor_lua = wrk_script(&scripts, "floor.lua", &floor_paths, None)?;

    let mut peers: Vec<TermGuard> = Vec::new();
    if let Some(n) = args.callgrind_requests {
        let floor: Vec<String> = paths
            .iter()
            .map(|p| p.replacen("/ocsp/", "/none/", 1))
            .collect();
        return rt.block_on(crate::ocsp_callgrind::measure(
            edge_addr,
            edge_child.0.id(),
            &callgrind_out,
            n,
            &paths,
            &requests,
            &floor,
        ));
    }
    let (nginx_port, cfssl_port) = (free_port()?, free_port()?);
    if !args.no_peers {
        std::fs::create_dir_all(work.join("www"))?;
        // A real response's bytes, padded or cut to the mean size.
        let mut file = responses[0].clone();
        file.resize(mean_size, 0);
        std::fs::write(work.join("www/resp.der"), file)?;
        let conf = nginx_conf(&work, nginx_port)?;
        peers.push(TermGuard(spawn(
            Path::new("nginx"),
            &["-p", &work.to_string_lossy(), "-c", &conf.to_string_lossy()],
            &logs.join("nginx.log"),
        )?));
        let lines: String = responses.iter().map(|r| b64(r) + "\n").collect();
        std::fs::write(work.join("responses.txt"), lines)?;
        peers.push(TermGuard(spawn(
            Path::new("cfssl"),
            &[
                "ocspserve",
                "-port",
                &cfssl_port.to_string(),
                "-address",
                "127.0.0.1",
                "-responses",
                &work.join("responses.txt").to_string_lossy(),
            ],
            &logs.join("cfssl.log"),
        )?));
        for p in [nginx_port, cfssl_port] {
            wait_until("peer", Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            })?;
        }
    }

    let (t, c, s) = (args.threads, args.connections, args.seconds);
    let edge_pid = edge_child.0.id().to_string();
    println!("wrk -t{t} -c{c} -d{s}s: edge GET …");
    let cpu0 = cpu_seconds(&edge_pid);
    let edge_get = wrk(&format!("http://{edge_addr}"), Some(&get_lua), t, c, s)?;
    let cpu1 = cpu_seconds(&edge_pid);
    println!("wrk: edge POST …");
    let edge_post = wrk(&format!("http://{edge_addr}"), Some(&post_lua), t, c, s)?;
    println!("wrk: edge unrouted path (plumbing floor) …");
    let edge_floor = wrk(&format!("http://{edge_addr}"), Some(&floor_lua), t, c, s)?;
    let (nginx, cfssl) = if args.no_peers {
        (None, None)
    } else {
        // The same Lua script (and request paths) as the edge's GET run, so the client does the
        // same work per request; nginx answers every path with the one static file.
        println!("wrk: nginx static file of {mean_size} bytes …");
        let n = wrk(
            &format!("http://127.0.0.1:{nginx_port}"),
            Some(&get_lua),
            t,
            c,
            s,
        )?;
        println!("wrk: cfssl ocspserve POST …");
        let f = wrk(
            &format!("http://127.0.0.1:{cfssl_port}"),
            Some(&cfssl_lua),
            t,
            c,
            s,
        )?;
        (Some(n), Some(f))
    };
    // Open loop at fractions of the edge's GET peak: the edge, then nginx (the control) at the
    // same rate with the same generator and paths. If nginx shows the same tail, the tail is
    // the machine and the generator, not the edge.
    let heads: Arc<Vec<Vec<u8>>> = Arc::new(
        paths
            .iter()
            .map(|p| format!("GET {p} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes())
            .collect(),
    );
    let nginx_pids: Vec<u32> = match peers.first() {
        Some(master) if !args.no_peers => {
            let m = master.0.0.id();
            let kids =
                std::fs::read_to_string(format!("/proc/{m}/task/{m}/children")).unwrap_or_default();
            std::iter::once(m)
                .chain(kids.split_whitespace().filter_map(|k| k.parse().ok()))
                .collect()
        }
        _ => Vec::new(),
    };
    let oc = args.open_connections;
    // Each target gets `open_slices` slices of `seconds / open_slices`, alternating with the
    // others, so that a change in the machine's other load during the run falls on all of them.
    let slices = args.open_slices.max(1);
    let slice = Duration::from_secs(s).div_f64(slices as f64);
    let mut open_runs: Vec<OpenRun> = Vec::new();
    for &frac in &args.open_fractions {
        let rate = edge_get.rps * frac;
        let mut targets = vec![("certgate-edge GET", edge_addr, vec![edge_child.0.id()])];
        if args.compare_edge.is_some() {
            targets.push(("compare edge GET", edge2_addr, vec![edge2.0.id()]));
        }
        if !args.no_peers {
            targets.push((
                "nginx static file",
                SocketAddr::from(([127, 0, 0, 1], nginx_port)),
                nginx_pids.clone(),
            ));
        }
        let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
        println!(
            "open loop at {rate:.0}/s ({:.0}% of the edge GET peak), {oc} connections, {slices} alternating slices of {:.1} s: {} …",
            frac * 100.0,
            slice.as_secs_f64(),
            names.join(", ")
        );
        let mut acc: Vec<OpenRun> = targets
            .iter()
            .map(|t| OpenRun {
                name: t.0,
                frac,
                stats: OpenStats::default(),
                per_second: Vec::new(),
                threads: Default::default(),
                gen_cpu_s: 0.0,
                run: OpenLoop {
                    rate,
                    samples: Vec::new(),
                    errors: 0,
                    fine_timers: true,
                },
            })
            .collect();
        for k in 0..slices {
            for (run, (_, addr, pids)) in acc.iter_mut().zip(&targets) {
                let before: Vec<_> = pids.iter().flat_map(|&p| thread_stats(p)).collect();
                let gen0 = cpu_seconds(&std::process::id().to_string());
                let r = open_loop(*addr, heads.clone(), rate, oc, slice)?;
                let gen1 = cpu_seconds(&std::process::id().to_string());
                let after: Vec<_> = pids.iter().flat_map(|&p| thread_stats(p)).collect();
                if let (Some(a), Some(b)) = (gen0, gen1) {
                    run.gen_cpu_s += b - a;
                }
                for (name, cpu, vol, inv) in thread_delta(&before, &after) {
                    let e = run.threads.entry(name).or_default();
                    e.0 += cpu;
                    e.1 += vol;
                    e.2 += inv;
                }
                let shift = (slice * k as u32).as_micros() as u64;
                run.run.samples.extend(r.samples.into_iter().map(|mut x| {
                    x.sched_us += shift;
                    x
                }));
                run.run.errors += r.errors;
                run.run.fine_timers &= r.fine_timers;
            }
        }
        for mut run in acc {
            run.stats = open_stats(&run.run);
            run.per_second = windowed_p99(&run.run.samples, Duration::from_secs(1));
            open_runs.push(run);
        }
    }
    let half = open_runs
        .iter()
        .filter(|r| r.name.starts_with("certgate-edge"))
        .min_by(|a, b| (a.frac - 0.5).abs().total_cmp(&(b.frac - 0.5).abs()))
        .map(|r| (r.run.rate, r.stats));

    println!("timing {} revocations to both edges …", args.revocations);
    let prop = rt.block_on(propagation(
        core.clone(),
        &uid,
        [edge_addr, edge2_addr],
        &serials,
        &requests,
        &responses,
        args.revocations,
    ))?;
    drop(core_child);

    println!();
    println!(
        "certgate-bench ocsp: {} certificates, {mean_size}-byte responses (mean), wrk -t{t} -c{c} -d{s}s keep-alive, {cores} cores shared by server and client",
        args.certs
    );
    println!();
    println!("| server | req/s | p50 ms | p99 ms | non-2xx | edge vs this |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, r: &WrkResult, base: f64| {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.2}× |",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx,
            base / r.rps
        );
    };
    row("certgate-edge GET /ocsp/{req}", &edge_get, edge_get.rps);
    row("certgate-edge POST /ocsp", &edge_post, edge_post.rps);
    println!(
        "| certgate-edge unrouted path, 404 (plumbing floor) | {:.0} | {:.2} | {:.2} | (all 404) | {:.2}× |",
        edge_floor.rps,
        edge_floor.p50_ms,
        edge_floor.p99_ms,
        edge_get.rps / edge_floor.rps
    );
    if let Some(n) = &nginx {
        row("nginx static file (ceiling)", n, edge_get.rps);
    }
    if let Some(f) = &cfssl {
        row("cfssl ocspserve POST", f, edge_post.rps);
    }
    println!();
    println!(
        "open loop (own generator: {oc} keep-alive connections, one sender thread with 1 µs timer slack, one reader thread; latency from the scheduled send time; send lateness = the generator's own delay, timer wake-up or no free connection; targets alternate in {slices} slices):"
    );
    println!();
    println!(
        "| rate req/s | of edge GET peak | server | p50 ms | p99 ms | p99.9 ms | max ms | send late p50/p99 ms | sent > 1 ms late | errors | generator CPU µs/req |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &open_runs {
        let st = r.stats;
        println!(
            "| {:.0} | {:.0}% | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3}/{:.3} | {:.2}% | {} | {:.1} |",
            r.run.rate,
            r.frac * 100.0,
            r.name,
            st.p50,
            st.p99,
            st.p999,
            st.max,
            st.late_p50,
            st.late_p99,
            st.late_1ms * 100.0,
            r.run.errors,
            r.gen_cpu_s * 1e6 / (r.run.samples.len().max(1) as f64)
        );
    }
    println!();
    for r in &open_runs {
        let secs: Vec<String> = r.per_second.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "{} at {:.0}%: p99 per second (ms): {}{}",
            r.name,
            r.frac * 100.0,
            secs.join(" "),
            if r.run.fine_timers {
                ""
            } else {
                " (timer slack not settable: coarser sends)"
            }
        );
        let mut threads: Vec<_> = r.threads.iter().filter(|(_, t)| t.0 > 0.0).collect();
        threads.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        let threads: Vec<String> = threads
            .into_iter()
            .map(|(n, (cpu, vol, inv))| {
                format!("{n} {cpu:.2} s ({vol} vol / {inv} invol switches)")
            })
            .collect();
        println!("    server threads: {}", threads.join("; "));
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        println!(
            "edge CPU per GET at peak: {:.1} µs",
            (b - a) * 1e6 / (edge_get.rps * s as f64).max(1.0)
        );
    }
    let mut p = prop;
    p.sort_unstable();
    println!(
        "revocation → both edges answer revoked ({} revocations, from the Revoke call): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p.len(),
        quantile_ms(&p, 0.5),
        quantile_ms(&p, 0.9),
        quantile_ms(&p, 0.99),
        quantile_ms(&p, 1.0)
    );
    if let (Some(n), Some(f)) = (&nginx, &cfssl) {
        println!(
            "targets: GET ≥ 80% of nginx → {:.0}% {}; POST ≥ 5× cfssl → {:.1}× {}; p99 < 5 ms at half peak (open loop nearest 50%) → {:.2} ms {}; propagation p99 < 1 s → {:.0} ms {}",
            100.0 * edge_get.rps / n.rps,
            if edge_get.rps >= 0.8 * n.rps {
                "met"
            } else {
                "NOT met"
            },
            edge_post.rps / f.rps,
            if edge_post.rps >= 5.0 * f.rps {
                "met"
            } else {
                "NOT met"
            },
            half.map_or(f64::NAN, |h| h.1.p99),
            if half.is_some_and(|h| h.1.p99 < 5.0) {
                "met"
            } else {
                "NOT met"
            },
            quantile_ms(&p, 0.99),
            if quantile_ms(&p, 0.99) < 1000.0 {
                "met"
            } else {
                "NOT met"
            },
        );
    }
    drop(peers);
    Ok(())
}

pub(crate) fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

pub(crate) async fn issue_many(
    core: CoreClient<Channel>,
    n: usize,
    uid: &str,
) -> anyhow::Result<Vec<String>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let run = std::process::id();
    let csr = |i: usize| -> anyhow::Result<Vec<u8>> {
        let name = format!("o{i}.bench.example");
        let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ok(params.serialize_request(&key)?.der().to_vec())
    };
    let csrs: Vec<Vec<u8>> = (0..n).map(csr).collect::<anyhow::Result<_>>()?;
    let csrs = Arc::new(csrs);
    // Wait until the core issues (it may still be connecting to the signer).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = core.clone();
        let r = c
            .issue(IssueRequest {
                tenant: "default".into(),
                profile: "tls-server".into(),
                request: Some(issue_request::Request::CsrDer(csrs[0].clone())),
                protocol: "bench".into(),
                client_identity: uid.to_owned(),
                idempotency_key: format!("ocsp-bench-{run}-0"),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the core does not issue: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers = 32;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (core, csrs, uid) = (core.clone(), csrs.clone(), uid.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < csrs.len() {
                let mut c = core.clone();
                let r = c
                    .issue(IssueRequest {
                        tenant: "default".into(),
                        profile: "tls-server".into(),
                        request: Some(issue_request::Request::CsrDer(csrs[i].clone())),
                        protocol: "bench".into(),
                        client_identity: uid.clone(),
                        idempotency_key: format!("ocsp-bench-{run}-{i}"),
                        ..Default::default()
                    })
                    .await?;
                out.push((i, r.into_inner().serial_hex));
                i += workers;
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// POSTs every request (16 connections) until each is answered with a successful response;
/// returns the responses in request order.
pub(crate) async fn fetch_all(
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let requests = Arc::new(requests);
    let conns = 16;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut out = Vec::new();
            let mut i = c;
            while i < requests.len() {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (status, body) = conn.post("/ocsp", &requests[i]).await?;
                    // A successful OCSPResponse: responseStatus ENUMERATED 0 right after the
                    // outer SEQUENCE header.
                    if status == 200
                        && body.len() > 5
                        && body.windows(3).take(8).any(|w| w == [0x0a, 0x01, 0x00])
                    {
                        out.push((i, body));
                        break;
                    }
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "request {i} never answered: {status} {body:02x?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += conns;
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, b)| b).collect())
}

/// Revokes `n` certificates one at a time; for each, the time from the `Revoke` call until
/// both edges serve a different (revoked) response, in µs.
async fn propagation(
    core: CoreClient<Channel>,
    uid: &str,
    edges: [SocketAddr; 2],
    serials: &[String],
    requests: &[Vec<u8>],
    before: &[Vec<u8>],
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut conns = [Conn::open(edges[0]).await?, Conn::open(edges[1]).await?];
    let mut out = Vec::new();
    // The last certificates (not the ones wrk's scripts start with).
    for k in 0..n.min(serials.len()) {
        let i = serials.len() - 1 - k;
        let start = Instant::now();
        let mut c = core.clone();
        c.revoke(RevokeRequest {
            tenant: "default".into(),
            target: Some(revoke_request::Target::SerialHex(serials[i].clone())),
            reason: 1,
            idempotency_key: format!("ocsp-bench-revoke-{}-{i}", std::process::id()),
            protocol: "bench".into(),
            client_identity: uid.to_owned(),
        })
        .await?;
        let mut done = [false, false];
        while done.iter().any(|d| !d) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "revocation {k} never reached the edges"
            );
            for e in 0..2 {
                if !done[e] {
                    let (status, body) = conns[e].post("/ocsp", &requests[i]).await?;
                    if status == 200 && body != before[i] {
                        done[e] = true;
                    }
                }
            }
            if done.iter().any(|d| !d) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        out.push(start.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Checked decode of one revoked answer: it must parse as a BasicOCSPResponse saying revoked.
    if let Some(k) = out.first().map(|_| serials.len() - 1) {
        let (_, body) = conns[0].post("/ocsp", &requests[k]).await?;
        let resp = x509_ocsp::OcspResponse::from_der(&body)?;
        let basic = x509_ocsp::BasicOcspResponse::from_der(
            resp.response_bytes
                .context("no responseBytes")?
                .response
                .as_bytes(),
        )?;
        let status = &basic.tbs_response_data.responses[0].cert_status;
        anyhow::ensure!(
            matches!(status, x509_ocsp::CertStatus::Revoked(_)),
            "the changed answer is not `revoked`: {status:?}"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_response_waits_for_the_whole_body() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1";
        assert_eq!(parse_response(&full[..10]).expect("partial head"), None);
        assert_eq!(parse_response(&full[..40]).expect("partial body"), None);
        assert_eq!(
            parse_response(full).expect("complete"),
            Some((200, full.len() - "HTTP/1.1".len()))
        );
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn windowed_p99_splits_by_scheduled_time() {
        let s = |sched_us, lat_us| Sample {
            sched_us,
            lat_us,
            late_us: 0,
        };
        // Window 1 is empty; window 2 has one slow request.
        let samples = [s(0, 1000), s(10, 2000), s(2_000_100, 9000)];
        let w = windowed_p99(&samples, Duration::from_secs(1));
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], 2.0);
        assert!(w[1].is_nan());
        assert_eq!(w[2], 9.0);
    }

    /// Every scheduled request is sent and answered exactly once against a real (tiny) keep-alive
    /// server, whatever the timing: the schedule is complete and no request is counted twice.
    #[test]
    fn open_loop_sends_each_scheduled_request_once() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if conn.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let heads = Arc::new(vec![b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()]);
        let r = open_loop(addr, heads, 2000.0, 4, Duration::from_millis(250)).expect("open loop");
        assert_eq!(r.errors, 0);
        assert_eq!(r.samples.len(), 500);
        let mut sched: Vec<u64> = r.samples.iter().map(|s| s.sched_us).collect();
        sched.dedup();
        assert_eq!(sched.len(), 500, "each scheduled send answered once");
        assert!(r.samples.iter().all(|s| s.lat_us >= s.late_us));
    }
}
