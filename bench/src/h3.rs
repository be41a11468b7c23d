//! `certgate-bench h3`: GET throughput and latency against a running edge over HTTP/3 (quinn +
//! h3, the e2e tests' client) and over HTTPS with HTTP/2 (hyper-rustls) to the same path with
//! the same concurrency, in one run, so the two transports are compared as a ratio on the same
//! machine. Start a fleet first (`certgate up`) and pass its `root.pem`.

#[path = "../../tests/src/h3client.rs"]
#[allow(dead_code)]
mod h3client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::issue::quantile;

/// Arguments of `certgate-bench h3`.
#[derive(clap::Args, Debug)]
pub struct H3Args {
    /// The edge's HTTPS address; the same port number serves HTTP/3 over UDP.
    #[arg(long, default_value = "127.0.0.1:8443")]
    addr: SocketAddr,
    /// PEM trust anchor for the edge's certificate (the data dir's `ca/root.pem`).
    #[arg(long)]
    ca: PathBuf,
    /// Path to GET (an OCSP GET path, `/acme/directory`, …).
    #[arg(long, default_value = "/acme/directory")]
    path: String,
    /// Seconds per transport.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections per transport.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection (streams).
    #[arg(long, default_value_t = 16)]
    streams: usize,
}

struct Outcome {
    rate: f64,
    lat_us: Vec<u64>,
    errors: u64,
}

fn report(label: &str, o: &Outcome) {
    println!(
        "{label}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        o.rate,
        quantile(&o.lat_us, 0.50),
        quantile(&o.lat_us, 0.99),
        o.errors
    );
}

/// Runs the comparison.
pub fn h3(args: H3Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: H3Args) -> anyhow::Result<()> {
    let root = std::fs::read(&args.ca).with_context(|| args.ca.display().to_string())?;
    let name = args.addr.ip().to_string();
    let dur = Duration::from_secs(args.seconds);

    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let c = h3client::H3Client::connect(args.addr, &name, &root)
            .await
            .map_err(|e| anyhow::anyhow!("HTTP/3 connect: {e}"))?;
        clients.push(Arc::new(c));
    }
    let h3 = measure(
        &clients,
        args.streams,
        dur,
        |c: Arc<h3client::H3Client>, path| async move {
            c.get(&path)
                .await
                .map(|r| r.status)
                .map_err(|e| e.to_string())
        },
        &args.path,
    )
    .await;

    let h2 = h2_client(&root)?;
    let h2s: Vec<_> = (0..args.connections.max(1)).map(|_| h2.clone()).collect();
    let base = format!("https://{}", args.addr);
    let h2 = measure(
        &h2s,
        args.streams,
        dur,
        move |c: H2Client, path| {
            let uri = format!("{base}{path}");
            async move {
                let req = http::Request::get(uri)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let resp = c.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(status)
            }
        },
        &args.path,
    )
    .await;

    println!(
        "GET {} on {} ({} connections x {} streams, {} s each)",
        args.path, args.addr, args.connections, args.streams, args.seconds
    );
    report("HTTP/3 (QUIC, UDP)", &h3);
    report("HTTP/2 (TLS, TCP) ", &h2);
    if h2.rate > 0.0 {
        println!("HTTP/3 / HTTP/2 throughput: {:.2}", h3.rate / h2.rate);
    }
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    Ok(())
}

type H2Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// HTTPS with HTTP/2 only, trusting `root` (one pooled connection per host; HTTP/2 multiplexes
/// the streams on it).
fn h2_client(root: &[u8]) -> anyhow::Result<H2Client> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(root) {
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
        .enable_http2()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(https),
    )
}

/// `streams` closed-loop workers per client for `dur`; a non-200 answer counts as an error.
async fn measure<C, F, Fut>(
    clients: &[C],
    streams: usize,
    dur: Duration,
    get: F,
    path: &str,
) -> Outcome
where
    C: Clone + Send + 'static,
    F: Fn(C, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u16, String>> + Send,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..streams.max(1) {
            let (c, get, path) = (c.clone(), get.clone(), path.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match get(c.clone(), path.clone()).await {
                        Ok(200) => {
                            lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
    }
    let mut lat_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat_us.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    Outcome {
        rate: lat_us.len() as f64 / secs,
        lat_us,
        errors,
    }
}
