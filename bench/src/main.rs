//! `certgate-bench`: load generators and side-by-side comparisons, reported as ratios measured in
//! one run on the same machine (DESIGN.md, testing tier 5). Benchmarks are not tests.
//!
//! `certgate-bench signer` measures ECDSA P-256 signing of OCSP ResponseData:
//! raw in-process aws-lc-rs (1 thread and all cores), `Sign` over the Unix socket with several
//! concurrent clients, and `SignBatch` over the Unix socket; the signer enforces its key policy
//! and writes its audit record on every call, as in production.
//!
//! `certgate-bench issue` measures `Core.Issue` with ECDSA P-256 CSRs through `certgate init` and
//! separate signer and core processes, next to the signer's rates from the same run (`issue.rs`).
//!
//! `certgate-bench ocsp` measures OCSP serving at the edge next to nginx (static file) and
//! `cfssl ocspserve` with wrk, the p99 at half the peak, and revocation propagation (`ocsp.rs`).
//!
//! `certgate-bench acme` measures complete ACME issuances per second under `certgate up` next to
//! Pebble in the same run, with the same client and http-01 responder (`acme.rs`).
//!
//! `certgate-bench cmp` measures MAC-protected CMP ir+certConf transactions per second under
//! `certgate up` next to OpenSSL's mock CMP server and the core's direct Issue rate (`cmp.rs`).
//!
//! `certgate-bench est` / `scep` measure EST simpleenroll / SCEP PKCSReq enrollments per second
//! under `certgate up` next to the core's direct Issue rate in the same run (`est.rs`, `scep.rs`).
//!
//! `certgate-bench h3` compares GET throughput and latency over HTTP/3 and HTTPS (HTTP/2) against
//! a running edge, same path and concurrency, in one run (`h3.rs`).
//!
//! `certgate-bench fleet` runs the ACME and OCSP scenarios against 1, 2 and 4 edges of
//! `certgate up --fleet N` and reports throughput per edge count and CPU per request for each
//! component (`fleet.rs`).
#![forbid(unsafe_code)]

mod acme;
mod cmp;
mod est;
mod fleet;
mod h3;
mod issue;
mod ocsp;
mod ocsp_callgrind;
mod scep;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use certgate_proto::signer::signer_client::SignerClient;
use certgate_proto::signer::{
    Algorithm, GenerateKeyRequest, KeyBackend, KeyRole, KeyType, SignBatchRequest, SignRequest,
};
use clap::{Parser, Subcommand};
use der::Encode;

#[derive(Parser, Debug)]
#[command(about = "certgate load generator and comparisons")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Signer throughput: raw aws-lc-rs vs Sign vs SignBatch over the Unix socket.
    Signer(SignerArgs),
    /// Issuance throughput and latency: Core.Issue with P-256 CSRs vs the signer's rates.
    Issue(issue::IssueArgs),
    /// OCSP serving: the edge vs nginx (static file) and cfssl ocspserve with wrk; propagation.
    Ocsp(ocsp::OcspArgs),
    /// Complete ACME issuances per second and latency: certgate up vs Pebble.
    Acme(acme::AcmeArgs),
    /// CMP ir+certConf transactions per second (MAC): certgate up vs OpenSSL's mock server vs
    /// the core's direct Issue rate.
    Cmp(cmp::CmpArgs),
    /// EST simpleenroll enrollments per second (HTTP Basic, keep-alive) vs the core's direct
    /// Issue rate in the same run.
    Est(est::EstArgs),
    /// SCEP PKCSReq enrollments per second (keep-alive) vs the core's direct Issue rate in the
    /// same run.
    Scep(scep::ScepArgs),
    /// GET throughput and latency against a running edge over HTTP/3 vs HTTPS (HTTP/2), same
    /// path and concurrency, in one run.
    H3(h3::H3Args),
    /// The ACME and OCSP scenarios against 1, 2 and 4 edges of `certgate up --fleet N` (Redis,
    /// PostgreSQL, two cores): throughput per edge count and CPU per request per component.
    Fleet(fleet::FleetArgs),
}

#[derive(clap::Args, Debug)]
struct SignerArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients (tasks) for single Sign calls.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Connections the Sign clients share (HTTP/2 multiplexes their calls, as the core's one
    /// tonic channel would).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Messages per SignBatch call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent SignBatch clients.
    #[arg(long, default_value_t = 2)]
    batch_clients: usize,
    /// Run this `certgate-signer` binary as a separate process instead of an in-process server
    /// (default: the `certgate-signer` next to this executable, if present).
    #[arg(long)]
    signer_bin: Option<PathBuf>,
    /// Use an already running signer on this socket (it must admit this uid, also for
    /// GenerateKey).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Force the in-process server even if a signer binary is available.
    #[arg(long)]
    in_process: bool,
}

fn response_data(serial: u32) -> anyhow::Result<Vec<u8>> {
    let name = x509_cert::name::Name::from_str("CN=Bench CA")?;
    let t = |s: u64| -> anyhow::Result<x509_ocsp::OcspGeneralizedTime> {
        Ok(x509_ocsp::OcspGeneralizedTime(
            der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(s))?,
        ))
    };
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_1,
            parameters: None,
        },
        issuer_name_hash: der::asn1::OctetString::new(vec![1u8; 20])?,
        issuer_key_hash: der::asn1::OctetString::new(vec![2u8; 20])?,
        serial_number: x509_cert::serial_number::SerialNumber::from(serial),
    };
    Ok(x509_ocsp::ResponseData {
        version: x509_ocsp::Version::V1,
        responder_id: x509_ocsp::ResponderId::ByName(name),
        produced_at: t(1_800_000_000)?,
        responses: vec![x509_ocsp::SingleResponse {
            cert_id,
            cert_status: x509_ocsp::CertStatus::good(),
            this_update: t(1_800_000_000)?,
            next_update: Some(t(1_800_604_800)?),
            single_extensions: None,
        }],
        response_extensions: None,
    }
    .to_der()?)
}

/// Raw in-process signing on `threads` threads for `d`; ops/s.
fn raw(threads: usize, d: Duration, msg: &[u8]) -> anyhow::Result<f64> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = Arc::new(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("key"))?,
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let key = key.clone();
            let msg = msg.to_vec();
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                let mut n = 0u64;
                while start.elapsed() < d {
                    for _ in 0..64 {
                        let _ = key.sign(&rng, &msg);
                    }
                    n += 64;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) a process has used, from /proc (Linux; clock ticks of 1/100 s).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let kek = certgate_signer::keystore::Kek::generate()?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("kek"))?
            .write_all(kek.to_base64().as_bytes())?;
    }
    let me = format!("uid:{}", certgate_proto::transport::current_uid());
    let path = dir.join("signer.toml");
    std::fs::write(
        &path,
        format!(
            "mode = \"dev\"\nsocket = \"signer.sock\"\nallow = [\"{me}\"]\nadmin_allow = [\"{me}\"]\naudit_log = \"audit.jsonl\"\nkey_dir = \"keys\"\nkek_file = \"kek\"\n"
        ),
    )?;
    Ok(path)
}

async fn measure<F, Fut>(workers: usize, d: Duration, per_call: u64, f: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (stop, count, errors, f) = (stop.clone(), count.clone(), errors.clone(), f.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if f(w).await {
                        count.fetch_add(per_call, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("warning: {e} failed calls");
    }
    count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Creates the bench's OCSP signing key (ECDSA P-256) on the signer at `socket` if missing.
async fn ensure_ocsp_key(socket: &std::path::Path) -> anyhow::Result<()> {
    let mut admin = SignerClient::new(certgate_proto::transport::unix_channel(socket.to_owned()));
    admin
        .generate_key(GenerateKeyRequest {
            key_id: "bench-ocsp".into(),
            tenant: "bench".into(),
            role: KeyRole::Ocsp as i32,
            key_type: KeyType::EcP256 as i32,
            backend: KeyBackend::SealedFile as i32,
            policy: None,
        })
        .await
        .or_else(|e| {
            if e.code() == tonic::Code::AlreadyExists {
                Ok(tonic::Response::new(Default::default()))
            } else {
                Err(e)
            }
        })?;
    Ok(())
}

/// Single `Sign` calls per second of an OCSP ResponseData with `clients` concurrent callers over
/// `connections` channels to the signer at `socket`, for `d`.
async fn sign_rate(
    socket: &std::path::Path,
    clients: usize,
    connections: usize,
    d: Duration,
) -> anyhow::Result<f64> {
    ensure_ocsp_key(socket).await?;
    let channels: Vec<_> = (0..connections.max(1))
        .map(|_| SignerClient::new(certgate_proto::transport::unix_channel(socket.to_owned())))
        .collect();
    let clients_v: Arc<Vec<_>> = Arc::new(
        (0..clients)
            .map(|i| channels[i % channels.len()].clone())
            .collect(),
    );
    let m = response_data(4242)?;
    Ok(measure(clients, d, 1, move |w| {
        let mut c = clients_v[w].clone();
        let req = SignRequest {
            key_id: "bench-ocsp".into(),
            algorithm: Algorithm::EcdsaP256Sha256 as i32,
            message: m.clone(),
        };
        async move { c.sign(req).await.is_ok() }
    })
    .await)
}

fn signer(args: SignerArgs) -> anyhow::Result<()> {
    let d = Duration::from_secs(args.seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let msg = response_data(4242)?;
    let dir = tempfile::tempdir()?;
    let config_path = write_config(dir.path())?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| dir.path().join("signer.sock"));

    let bin = args.signer_bin.clone().or_else(|| {
        let sibling = std::env::current_exe()
            .ok()?
            .with_file_name("certgate-signer");
        sibling.exists().then_some(sibling)
    });
    let mut _child: Option<ChildGuard> = None;
    let mut signer_pid: Option<String> = None;
    let mut _server_rt = None;
    let mode = match (&bin, args.in_process) {
        _ if args.socket.is_some() => format!("running signer at {}", socket.display()),
        (Some(bin), false) => {
            let child = Command::new(bin)
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            signer_pid = Some(child.id().to_string());
            _child = Some(ChildGuard(child));
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "signer did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            format!("separate process ({})", bin.display())
        }
        _ => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let config = certgate_signer::config::Config::load(&config_path)?;
            let running = rt.block_on(certgate_signer::server::start(&config))?;
            rt.spawn(running.wait());
            _server_rt = Some(rt);
            "in-process server (own runtime)".to_owned()
        }
    };

    println!(
        "certgate-bench signer: ECDSA P-256, OCSP ResponseData of {} bytes, {} cores, {mode}",
        msg.len(),
        cores
    );
    println!("measuring raw aws-lc-rs …");
    let raw1 = raw(1, d, &msg)?;
    let rawn = raw(cores, d, &msg)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (single, batched, rpc_only) = rt.block_on(async {
        ensure_ocsp_key(&socket).await?;
        println!(
            "measuring Sign with {} concurrent clients over {} connections …",
            args.clients, args.connections
        );
        let channels: Vec<_> = (0..args.connections.max(1))
            .map(|_| SignerClient::new(certgate_proto::transport::unix_channel(socket.clone())))
            .collect();
        let clients: Arc<Vec<_>> = Arc::new(
            (0..args.clients)
                .map(|i| channels[i % channels.len()].clone())
                .collect(),
        );
        let m = msg.clone();
        let cpu = |pid: &Option<String>| pid.as_deref().and_then(cpu_seconds);
        let (s0, c0) = (cpu(&signer_pid), cpu_seconds("self"));
        let single = measure(args.clients, d, 1, move |w| {
            let mut c = clients[w].clone();
            let req = SignRequest {
                key_id: "bench-ocsp".into(),
                algorithm: Algorithm::EcdsaP256Sha256 as i32,
                message: m.clone(),
            };
            async move { c.sign(req).await.is_ok() }
        })
        .await;
        if let (Some(s0), Some(s1), Some(c0), Some(c1)) =
            (s0, cpu(&signer_pid), c0, cpu_seconds("self"))
        {
            println!(
                "  CPU per Sign call: signer {:.1} µs, bench client {:.1} µs",
                (s1 - s0) * 1e6 / (single * d.as_secs_f64()),
                (c1 - c0) * 1e6 / (single * d.as_secs_f64())
            );
        }
        println!("measuring PublicKey (the same path without signing) …");
        let pk_clients: Arc<Vec<_>> = Arc::new(
            (0..args.clients)
                .map(|i| channels[i % channels.len()].clone())
                .collect(),
        );
        let rpc_only = measure(args.clients, d, 1, move |w| {
            let mut c = pk_clients[w].clone();
            async move {
                c.public_key(certgate_proto::signer::PublicKeyRequest {
                    key_id: "bench-ocsp".into(),
                })
                .await
                .is_ok()
            }
        })
        .await;
        println!(
            "measuring SignBatch ({} messages) with {} clients …",
            args.batch, args.batch_clients
        );
        let clients: Arc<Vec<_>> = Arc::new(
            (0..args.batch_clients)
                .map(|_| {
                    SignerClient::new(certgate_proto::transport::unix_channel(socket.clone()))
                        .max_decoding_message_size(256 * 1024 * 1024)
                })
                .collect(),
        );
        let messages: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..args.batch as u32)
                .map(response_data)
                .collect::<Result<_, _>>()?,
        );
        let batched = measure(args.batch_clients, d, args.batch as u64, move |w| {
            let mut c = clients[w].clone();
            let req = SignBatchRequest {
                key_id: "bench-ocsp".into(),
                algorithm: Algorithm::EcdsaP256Sha256 as i32,
                messages: messages.as_ref().clone(),
            };
            async move { c.sign_batch(req).await.is_ok() }
        })
        .await;
        anyhow::Ok((single, batched, rpc_only))
    })?;

    let audit = std::fs::read(dir.path().join("audit.jsonl")).unwrap_or_default();
    let records = certgate_signer::audit::verify(&audit).map_err(|e| anyhow::anyhow!(e))?;

    println!();
    println!("| measurement | ops/s | vs raw 1 thread | vs raw {cores} threads |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, v: f64| {
        println!(
            "| {name} | {v:.0} | {:.0}% | {:.0}% |",
            100.0 * v / raw1,
            100.0 * v / rawn
        );
    };
    row("raw aws-lc-rs, 1 thread", raw1);
    row(&format!("raw aws-lc-rs, {cores} threads"), rawn);
    row(
        &format!(
            "Sign over Unix socket, {} clients / {} connections",
            args.clients, args.connections
        ),
        single,
    );
    row(
        &format!(
            "PublicKey over Unix socket (no signature), {} clients",
            args.clients
        ),
        rpc_only,
    );
    row(
        &format!(
            "SignBatch over Unix socket, {} × {}",
            args.batch_clients, args.batch
        ),
        batched,
    );
    println!();
    println!(
        "targets (vs raw on all {cores} cores): SignBatch ≥ 70% → {:.0}% {}; Sign ≥ 35% → {:.0}% {}",
        100.0 * batched / rawn,
        if batched / rawn >= 0.70 {
            "met"
        } else {
            "NOT met"
        },
        100.0 * single / rawn,
        if single / rawn >= 0.35 {
            "met"
        } else {
            "NOT met"
        },
    );
    println!("audit: {records} hash-linked records written and verified");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Signer(args) => signer(args),
        Cmd::Issue(args) => issue::issue(args),
        Cmd::Ocsp(args) => ocsp::ocsp(args),
        Cmd::Acme(args) => acme::acme(args),
        Cmd::Cmp(args) => cmp::cmp(args),
        Cmd::Est(args) => est::est(args),
        Cmd::Scep(args) => scep::scep(args),
        Cmd::H3(args) => h3::h3(args),
        Cmd::Fleet(args) => fleet::fleet(args),
    }
}
