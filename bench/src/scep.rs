//! `certgate-bench scep`: SCEP PKCSReq enrollments per second under `certgate up` with many
//! concurrent clients over keep-alive HTTP connections (POST PKIOperation), next to the core's
//! direct `Core.Issue` rate on the same fleet, in one run.
//!
//! The clients use a pool of RSA-2048 keys generated before the measurement (each with its
//! self-signed signer certificate), so client-side RSA key generation is not measured. Every
//! request is distinct: a fresh transactionID and senderNonce, its own CSR (subject
//! `s{i}-RUN.scep.bench.example`, challengePassword = the dev `scep_challenge`), encrypted to the
//! RA certificate from GetCACert and signed with the client key — the idempotency key
//! (transactionID, client key) is new every time, so the core really issues. Requests are built
//! before the measurement as far as `--messages` goes (they depend on no server state; a client
//! that runs out builds its next ones during the measurement, and that is reported).
//!
//! The load generator shares the fleet's cores, so inside the window it does no RSA work: an
//! enrollment counts when the CertRep's signed attributes say SUCCESS for this transaction
//! (transactionID and recipientNonce = our senderNonce, [`peek_reply`]). Every reply (beyond
//! 50,000: every 100th) is kept and, after the window, read as a client must — RA signature
//! verified, EnvelopedData decrypted with the client key, a certificate inside — and the run
//! fails if any does not pass.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use bytes::Bytes;
use certgate_scep::PkiStatus;
use certgate_scep::client::{Request, build_request, peek_reply, read_reply};
use der::Encode;
use http_body_util::{BodyExt, Full};

use crate::est::{
    LoadRun, Shed, certs_only, cpu_per_op, direct_issue, run_closed_loop, start_fleet,
};
use crate::issue::quantile;

#[derive(clap::Args, Debug)]
pub(crate) struct ScepArgs {
    /// Seconds per measurement (SCEP, direct Issue).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent SCEP clients (each runs one PKCSReq at a time on a pooled keep-alive
    /// connection).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// RSA-2048 client keys generated before the measurement (clients share them round-robin).
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// PKCSReq messages built before the measurement.
    #[arg(long, default_value_t = 4_000)]
    messages: usize,
    /// Concurrent callers of the direct `Core.Issue` measurement.
    #[arg(long, default_value_t = 32)]
    issue_clients: usize,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core` and `certgate-edge`
    /// (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

/// A client key: PKCS#8 and its self-signed signer certificate.
struct ClientKey {
    pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
    rcgen: rcgen::KeyPair,
}

fn client_key(i: usize, run: &str) -> anyhow::Result<ClientKey> {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA keygen"))?;
    let pkcs8 = kp
        .as_der()
        .map_err(|_| anyhow::anyhow!("PKCS#8"))?
        .as_ref()
        .to_vec();
    let rcgen = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.clone()),
        &rcgen::PKCS_RSA_SHA256,
    )?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("scep-bench-{run}-{i}"));
    let cert_der = params.self_signed(&rcgen)?.der().to_vec();
    Ok(ClientKey {
        pkcs8,
        cert_der,
        rcgen,
    })
}

/// One PKCSReq message, ready to POST, the index of the key that must read the reply, and the
/// transactionID and senderNonce the reply must echo.
struct Prepared {
    der: Bytes,
    key: usize,
    tid: String,
    nonce: [u8; 16],
}

/// CertReps kept for the full check after the window (RA signature, decryption with the client
/// key, the certificate inside): every reply up to [`KEEP_ALL`], then every 100th (bounded, I-8).
const KEEP_ALL: u64 = 50_000;

#[derive(Default)]
struct Kept {
    seen: AtomicU64,
    replies: Mutex<Vec<(Bytes, usize)>>,
}

impl Kept {
    fn keep(&self, body: Bytes, key: usize) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if (n < KEEP_ALL || n.is_multiple_of(100))
            && let Ok(mut v) = self.replies.lock()
        {
            v.push((body, key));
        }
    }
}

/// The full client-side check of a SUCCESS CertRep: RA signature, EnvelopedData decrypted with
/// the client key, a certificate inside.
fn check_fully(body: &[u8], key: &ClientKey) -> anyhow::Result<()> {
    let rep = read_reply(body, &key.pkcs8).map_err(|e| anyhow::anyhow!("CertRep: {e}"))?;
    anyhow::ensure!(
        rep.status == PkiStatus::Success,
        "status {:?} failInfo {:?}",
        rep.status,
        rep.fail_info
    );
    // The issued certificate first, then its chain.
    anyhow::ensure!(!rep.certs.is_empty(), "SUCCESS without a certificate");
    Ok(())
}

struct Maker {
    keys: Vec<ClientKey>,
    ra_cert_der: Vec<u8>,
    challenge: zeroize::Zeroizing<String>,
    run: String,
    next: AtomicU64,
    rng: SystemRandom,
}

impl Maker {
    fn make(&self, key: usize) -> anyhow::Result<Prepared> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let k = &self.keys[key % self.keys.len()];
        let name = format!("s{i}-{}.scep.bench.example", self.run);
        let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        // challengePassword: SET { PrintableString }.
        let pw = der::asn1::PrintableStringRef::new(self.challenge.as_bytes())?.to_der()?;
        let mut values = vec![0x31];
        anyhow::ensure!(pw.len() < 128, "challenge too long for the bench");
        values.push(pw.len() as u8);
        values.extend_from_slice(&pw);
        let csr = params
            .serialize_request_with_attributes(
                &k.rcgen,
                vec![rcgen::Attribute {
                    oid: &[1, 2, 840, 113549, 1, 9, 7],
                    values,
                }],
            )?
            .der()
            .to_vec();
        let mut tid = [0u8; 16];
        let mut nonce = [0u8; 16];
        self.rng
            .fill(&mut tid)
            .and_then(|()| self.rng.fill(&mut nonce))
            .map_err(|_| anyhow::anyhow!("rng"))?;
        let tid = hex_upper(&tid);
        let der = build_request(&Request {
            message_type: "19",
            transaction_id: &tid,
            sender_nonce: nonce,
            content_der: &csr,
            signer_cert_der: &k.cert_der,
            signer_key_pkcs8: &k.pkcs8,
            ra_cert_der: &self.ra_cert_der,
        })
        .map_err(|e| anyhow::anyhow!("build_request: {e}"))?;
        Ok(Prepared {
            der: Bytes::from(der),
            key: key % self.keys.len(),
            tid,
            nonce,
        })
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// POSTs one PKCSReq and checks, without any RSA work, that the CertRep is SUCCESS for this
/// transaction (transactionID and recipientNonce = our senderNonce, from the signed
/// attributes); the reply goes to `kept` for the full check after the window.
async fn pki_operation(
    http: &HttpClient,
    url: &str,
    msg: &Prepared,
    kept: &Kept,
    shed: &Shed,
) -> anyhow::Result<()> {
    let body = msg.der.clone();
    let resp = loop {
        let req = hyper::Request::post(url)
            .header("content-type", "application/x-pki-message")
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
    let head = peek_reply(&body).map_err(|e| anyhow::anyhow!("CertRep: {e}"))?;
    anyhow::ensure!(
        head.status == PkiStatus::Success,
        "status {:?} failInfo {:?}",
        head.status,
        head.fail_info
    );
    anyhow::ensure!(
        head.transaction_id == msg.tid && head.recipient_nonce == msg.nonce,
        "CertRep for another transaction"
    );
    kept.keep(body, msg.key);
    Ok(())
}

pub(crate) fn scep(args: ScepArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "certgate-bench scep: PKCSReq over POST, {} clients, {} RSA-2048 client keys, {} s per measurement, {cores} cores",
        args.clients, args.keys, args.seconds
    );
    let fleet = start_fleet(temp.path(), &args.bin_dir)?;
    let challenge = zeroize::Zeroizing::new(fleet.credential("scep_challenge")?);
    let url: Arc<str> = format!("http://{}/scep?operation=PKIOperation", fleet.http).into();
    let _guard = rt.enter();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(tcp);

    // GetCACert: the RA certificate is the certificate with keyEncipherment … simply the first.
    let ra_cert_der = rt.block_on(async {
        let resp = http
            .get(format!("http://{}/scep?operation=GetCACert", fleet.http).parse()?)
            .await?;
        anyhow::ensure!(resp.status().is_success(), "GetCACert {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        let certs = certs_only(&body)?;
        let ra = certs
            .iter()
            .find(|c| c.tbs_certificate.subject.to_string().contains("SCEP RA"))
            .or(certs.first())
            .context("GetCACert without certificates")?;
        Ok(ra.to_der()?)
    })?;

    let run = format!("r{}", std::process::id());
    println!(
        "  generating {} RSA keys and {} PKCSReq messages …",
        args.keys, args.messages
    );
    let keys: Vec<ClientKey> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..args.keys.max(1))
            .map(|i| {
                let run = run.clone();
                s.spawn(move || client_key(i, &run))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("keygen thread"))?)
            .collect::<anyhow::Result<_>>()
    })?;
    let maker = Arc::new(Maker {
        keys,
        ra_cert_der,
        challenge,
        run,
        next: AtomicU64::new(0),
        rng: SystemRandom::new(),
    });
    let clients = args.clients.max(1);
    let per_client = args.messages.div_ceil(clients);
    let queues: Vec<Mutex<VecDeque<Prepared>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let maker = &maker;
                s.spawn(move || {
                    (0..per_client)
                        .map(|_| maker.make(c))
                        .collect::<anyhow::Result<VecDeque<_>>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("build thread"))?
                    .map(Mutex::new)
            })
            .collect::<anyhow::Result<_>>()
    })?;
    let queues = Arc::new(queues);
    let built_live = Arc::new(AtomicU64::new(0));

    // Warm-up and a check that the fleet answers at all.
    let first = maker.make(0)?;
    let shed = Arc::new(Shed(AtomicU64::new(0)));
    let warm = Kept::default();
    rt.block_on(pki_operation(&http, &url, &first, &warm, &shed))
        .with_context(|| fleet.up.log())
        .context("first PKCSReq")?;
    for (body, key) in warm
        .replies
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .iter()
    {
        check_fully(body, maker.keys.get(*key).context("key index")?).context("first PKCSReq")?;
    }
    let kept = Arc::new(Kept::default());

    let before = fleet.cpu();
    let load: LoadRun = {
        let (http, url, maker, queues, built_live) = (
            http.clone(),
            url.clone(),
            maker.clone(),
            queues.clone(),
            built_live.clone(),
        );
        let shed = shed.clone();
        let kept = kept.clone();
        rt.block_on(run_closed_loop(
            clients,
            Duration::from_secs(args.seconds),
            move |w| {
                let (http, url, maker, queues, built_live) = (
                    http.clone(),
                    url.clone(),
                    maker.clone(),
                    queues.clone(),
                    built_live.clone(),
                );
                let shed = shed.clone();
                let kept = kept.clone();
                async move {
                    let pre = queues
                        .get(w)
                        .and_then(|q| q.lock().ok().and_then(|mut q| q.pop_front()));
                    let msg = match pre {
                        Some(m) => m,
                        None => {
                            built_live.fetch_add(1, Ordering::Relaxed);
                            match maker.make(w) {
                                Ok(m) => m,
                                Err(e) => return Some(Err(e)),
                            }
                        }
                    };
                    Some(pki_operation(&http, &url, &msg, &kept, &shed).await)
                }
            },
        ))
    };
    let after = fleet.cpu();
    let shed = shed.0.load(Ordering::Relaxed);
    println!(
        "  certgate SCEP:     {}; {shed} × 503 + Retry-After (adaptive bulkhead), retried",
        load.summary("enrollments")
    );
    println!(
        "    CPU per enrollment: {}",
        cpu_per_op(&before, &after, load.lat_us.len())
    );
    // Every counted enrollment was SUCCESS for its own transaction; now the full client check
    // (RSA on the same cores, so outside the window) of the kept replies.
    let kept = std::mem::take(&mut *kept.replies.lock().map_err(|_| anyhow::anyhow!("lock"))?);
    let mut bad = 0usize;
    for (body, key) in &kept {
        let key = maker.keys.get(*key).context("key index")?;
        if let Err(e) = check_fully(body, key) {
            bad += 1;
            eprintln!("  CertRep failed the full check: {e:#}");
        }
    }
    println!(
        "    full client check after the window (RA signature, decryption, certificate): {} of {} replies OK",
        kept.len() - bad,
        kept.len()
    );
    anyhow::ensure!(bad == 0, "{bad} CertReps failed the full client check");
    let live = built_live.load(Ordering::Relaxed);
    if live > 0 {
        println!("    note: {live} messages were built during the measurement (raise --messages)");
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
        "  SCEP / direct Issue = {:.0}% (target >= 50%: {})",
        100.0 * ratio,
        if ratio >= 0.50 { "met" } else { "NOT met" }
    );
    drop(fleet);
    Ok(())
}
