//! `certgate-bench cmp`: complete CMP transactions (ir → ip, certConf → pkiConf) per second with
//! PasswordBasedMac protection under `certgate up`, next to OpenSSL's mock CMP server
//! (`openssl cmp -port`) answering the same load generator, and next to the core's direct
//! `Core.Issue` rate (the `issue` scenario's measurement) on the same fleet, in one run.
//!
//! Every transaction is distinct: a fresh transactionID and senderNonce, its own subject and SAN,
//! a signature proof of possession, and a MAC over the exact ProtectedPart. The client derives the
//! PasswordBasedMac base key once per salt (it is the client's choice); the server derives it for
//! every message, as it must.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use certgate_cmp::der_util::{bits, int, octets, seq, tlv, utf8};
use certgate_proto::core::core_client::CoreClient;
use cmpv2::body::PkiBody;
use cmpv2::message::PkiMessage;
use der::{Decode, Encode};
use http_body_util::{BodyExt, Full};

use crate::acme::{Proc, free_addr, wait_until};
use crate::issue::{Caller, closed_loop, make_csrs, quantile};

#[derive(clap::Args, Debug)]
pub(crate) struct CmpArgs {
    /// Seconds per measurement (certgate CMP, OpenSSL mock, direct Issue).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent CMP clients (each runs one transaction at a time).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Concurrent clients against OpenSSL's mock server. Its mock keeps the state of one
    /// transaction only: with more than one client, interleaved transactions are rejected
    /// ("transactionid unmatched", "unexpected pkibody"), so the default is 1, its best.
    #[arg(long, default_value_t = 1)]
    openssl_clients: usize,
    /// Concurrent callers of the direct `Core.Issue` measurement.
    #[arg(long, default_value_t = 32)]
    issue_clients: usize,
    /// PasswordBasedMac iteration count the clients send (OpenSSL's client default is 500).
    #[arg(long, default_value_t = 500)]
    iterations: u64,
    /// Directory with `certgate`, `certgate-signer`, `certgate-core` and `certgate-edge`
    /// (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const PBM_OID: &str = "1.2.840.113533.7.66.13";
const SHA256_OID: &str = "2.16.840.1.101.3.4.2.1";
const HMAC_SHA256_OID: &str = "1.2.840.113549.2.9";
const ECDSA_SHA256_OID: &str = "1.2.840.10045.4.3.2";
const SAN_OID: &str = "2.5.29.17";

fn oid(s: &str) -> Vec<u8> {
    const_oid::ObjectIdentifier::new_unwrap(s)
        .to_der()
        .unwrap_or_default()
}

/// One CMP client identity: the MAC reference and key, and a P-256 key for the requests.
struct Client {
    reference: Vec<u8>,
    /// protectionAlg DER (PasswordBasedMac with this client's salt).
    alg: Vec<u8>,
    mac_key: hmac::Key,
    key: EcdsaKeyPair,
    spki: Vec<u8>,
    rng: SystemRandom,
    next: AtomicU64,
    run: String,
}

impl Client {
    fn new(reference: &str, secret: &[u8], iterations: u64, run: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| anyhow::anyhow!("rng failed"))?;
        let sha256 = seq(&[&oid(SHA256_OID)]);
        let hmac_alg = seq(&[&oid(HMAC_SHA256_OID)]);
        let params = seq(&[&octets(&salt), &sha256, &int(iterations), &hmac_alg]);
        let alg = seq(&[&oid(PBM_OID), &params]);
        // RFC 4210 §5.1.3.1: BASEKEY = OWF^iterationCount(secret ‖ salt).
        let mut k = digest::digest(&digest::SHA256, &[secret, &salt].concat())
            .as_ref()
            .to_vec();
        for _ in 1..iterations {
            k = digest::digest(&digest::SHA256, &k).as_ref().to_vec();
        }
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("key"))?;
        let point = key.public_key().as_ref().to_vec();
        let spki = seq(&[
            &seq(&[&oid("1.2.840.10045.2.1"), &oid("1.2.840.10045.3.1.7")]),
            &bits(&point),
        ]);
        Ok(Self {
            reference: reference.as_bytes().to_vec(),
            alg,
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &k),
            key,
            spki,
            rng,
            next: AtomicU64::new(0),
            run: run.to_owned(),
        })
    }

    fn random16(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let _ = self.rng.fill(&mut b);
        b
    }

    fn header(&self, tid: &[u8], nonce: &[u8], recip_nonce: Option<&[u8]>) -> Vec<u8> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let time =
            der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(now.as_secs()))
                .and_then(|t| t.to_der())
                .unwrap_or_default();
        let null_dn = tlv(0xa4, &seq(&[]));
        let mut parts = vec![
            int(2),
            null_dn.clone(),
            null_dn,
            tlv(0xa0, &time),
            tlv(0xa1, &self.alg),
            tlv(0xa2, &octets(&self.reference)),
            tlv(0xa4, &octets(tid)),
            tlv(0xa5, &octets(nonce)),
        ];
        if let Some(r) = recip_nonce {
            parts.push(tlv(0xa6, &octets(r)));
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        seq(&refs)
    }

    /// header ‖ body, MAC-protected.
    fn message(&self, header: &[u8], body: &[u8]) -> Vec<u8> {
        let pp = seq(&[header, body]);
        let mac = hmac::sign(&self.mac_key, &pp);
        seq(&[header, body, &tlv(0xa0, &bits(mac.as_ref()))])
    }

    /// A fresh ir: (transactionID, senderNonce, message).
    fn ir(&self) -> anyhow::Result<([u8; 16], [u8; 16], Vec<u8>)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("c{i}-{}.cmp.bench.example", self.run);
        let cn = seq(&[&oid("2.5.4.3"), &utf8(&name)]);
        let subject = seq(&[&tlv(0x31, &cn)]);
        let san = seq(&[&tlv(0x82, name.as_bytes())]);
        let ext = seq(&[&oid(SAN_OID), &octets(&san)]);
        // CertTemplate (IMPLICIT tags; subject [5] is a CHOICE, so explicit).
        let template = seq(&[
            &tlv(0xa5, &subject),
            &tlv(0xa6, content(&self.spki)),
            &tlv(0xa9, &ext),
        ]);
        let cert_req = seq(&[&int(0), &template]);
        let sig = self
            .key
            .sign(&self.rng, &cert_req)
            .map_err(|_| anyhow::anyhow!("sign"))?;
        let popo = tlv(
            0xa1,
            &[seq(&[&oid(ECDSA_SHA256_OID)]), bits(sig.as_ref())].concat(),
        );
        let msg = seq(&[&cert_req, &popo]);
        let body = tlv(0xa0, &seq(&[&msg]));
        let (tid, nonce) = (self.random16(), self.random16());
        let header = self.header(&tid, &nonce, None);
        Ok((tid, nonce, self.message(&header, &body)))
    }

    /// certConf accepting `cert_der` for certReqId 0.
    fn cert_conf(&self, tid: &[u8], recip_nonce: &[u8], cert_der: &[u8]) -> Vec<u8> {
        let hash = certgate_cmp::crypto::cert_hash(cert_der).unwrap_or_default();
        let status = seq(&[&octets(&hash), &int(0)]);
        let body = tlv(0xb8, &seq(&[&status]));
        let nonce = self.random16();
        let header = self.header(tid, &nonce, Some(recip_nonce));
        self.message(&header, &body)
    }
}

/// Content bytes of a DER TLV (after tag and length).
fn content(der: &[u8]) -> &[u8] {
    certgate_cmp::der_util::read_tlv(der).map_or(&[][..], |(t, _)| t.content)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn post(http: &HttpClient, url: &str, der: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/pkixcmp")
        .body(Full::new(Bytes::from(der)))?;
    let resp = http.request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    Ok(resp.into_body().collect().await?.to_bytes().to_vec())
}

/// One ir + certConf transaction; Ok when the ip carried a certificate and certConf got pkiConf.
async fn transaction(client: &Client, http: &HttpClient, url: &str) -> anyhow::Result<()> {
    let (tid, _nonce, ir) = client.ir()?;
    let ip_der = post(http, url, ir).await?;
    let ip = PkiMessage::from_der(&ip_der)?;
    let PkiBody::Ip(rep) = &ip.body else {
        anyhow::bail!("expected ip, got {:?}", ip.body);
    };
    let resp = rep.response.first().context("ip without a response")?;
    let cert = resp
        .certified_key_pair
        .as_ref()
        .context("ip without a certificate")?;
    let cert_der = match &cert.cert_or_enc_cert {
        cmpv2::certified_key_pair::CertOrEncCert::Certificate(c) => c.to_der()?,
        _ => anyhow::bail!("encrypted certificate"),
    };
    let recip = ip
        .header
        .sender_nonce
        .as_ref()
        .context("ip without senderNonce")?
        .as_bytes()
        .to_vec();
    let conf = client.cert_conf(&tid, &recip, &cert_der);
    let conf_der = post(http, url, conf).await?;
    let pki_conf = PkiMessage::from_der(&conf_der)?;
    anyhow::ensure!(
        matches!(pki_conf.body, PkiBody::PkiConf(_)),
        "expected pkiConf, got {:?}",
        pki_conf.body
    );
    Ok(())
}

struct CmpRun {
    rate: f64,
    lat_us: Vec<u64>,
    errors: u64,
}

impl CmpRun {
    fn summary(&self) -> String {
        format!(
            "{:.0} transactions/s, p50 {:.1} ms, p99 {:.1} ms, {} completed, {} failed",
            self.rate,
            quantile(&self.lat_us, 0.50),
            quantile(&self.lat_us, 0.99),
            self.lat_us.len(),
            self.errors
        )
    }
}

async fn load(
    label: &str,
    url: &str,
    reference: &str,
    secret: &[u8],
    args: &CmpArgs,
    concurrency: usize,
) -> anyhow::Result<CmpRun> {
    let run = format!("{label}{}", std::process::id());
    let clients: Vec<Arc<Client>> = (0..concurrency.max(1))
        .map(|i| {
            Client::new(reference, secret, args.iterations, &format!("{run}-{i}")).map(Arc::new)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    let fresh = label == "openssl";
    let new_client = move || -> HttpClient {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(tcp.clone())
    };
    let http = new_client();
    // Warm-up, and a check that the peer answers this client at all.
    transaction(&clients[0], &http, url)
        .await
        .with_context(|| format!("{label}: first transaction"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, http, url, stop) = (c.clone(), http.clone(), url.to_owned(), stop.clone());
            let label = label.to_owned();
            let new_client = new_client.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    // OpenSSL's mock server keeps one transaction per connection and closes it
                    // after pkiConf: a new connection per transaction, as its own client does.
                    let http = if fresh { new_client() } else { http.clone() };
                    match transaction(&c, &http, &url).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("{label}: failed transaction: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
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
    Ok(CmpRun {
        rate: lat_us.len() as f64 / elapsed.as_secs_f64(),
        lat_us,
        errors,
    })
}

fn toml_str(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

pub(crate) fn cmp(args: CmpArgs) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no parent dir")?
            .to_path_buf(),
    };
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "certgate-bench cmp: ir+certConf transactions, PasswordBasedMac ({} iterations), {} clients, {} s per measurement, {cores} cores",
        args.iterations, args.clients, args.seconds
    );

    // certgate up.
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
    let creds = std::fs::read_to_string(data.join("dev-credentials.toml"))?;
    let reference = toml_str(&creds, "cmp_reference").context("cmp_reference")?;
    let secret = toml_str(&creds, "cmp_secret").context("cmp_secret")?;
    let url = format!("http://{http}/.well-known/cmp");
    let certgate = rt
        .block_on(load(
            "certgate",
            &url,
            &reference,
            secret.as_bytes(),
            &args,
            args.clients,
        ))
        .with_context(|| up.log())?;
    println!("  certgate CMP:      {}", certgate.summary());

    // The core's direct Issue rate on the same fleet (the issue scenario's measurement).
    let socket = data.join("run/core.sock");
    let csrs = make_csrs(20_000)?;
    let _rt_guard = rt.enter();
    let caller = Arc::new(Caller {
        channels: (0..2)
            .map(|_| CoreClient::new(certgate_proto::transport::unix_channel(socket.clone())))
            .collect(),
        csrs,
        run: format!("cmpbench{}", std::process::id()),
        next: AtomicU64::new(0),
        uid: format!("uid:{}", certgate_proto::transport::current_uid()),
    });
    let issue = rt.block_on(async {
        let _ = closed_loop(caller.clone(), args.issue_clients, Duration::from_secs(1)).await;
        closed_loop(
            caller,
            args.issue_clients,
            Duration::from_secs(args.seconds),
        )
        .await
    });
    println!(
        "  core Issue direct: {:.0} issuances/s, p50 {:.1} ms, p99 {:.1} ms, {} failed",
        issue.rate,
        quantile(&issue.lat_us, 0.50),
        quantile(&issue.lat_us, 0.99),
        issue.errors
    );
    drop(up);

    // OpenSSL's mock CMP server with the same reference and secret.
    let port = free_addr()?.port();
    let root = data.join("ca/root.pem");
    let mut cmd = Command::new("openssl");
    cmd.args(["cmp", "-port", &port.to_string()])
        .args(["-srv_ref", &reference])
        .arg("-srv_secret")
        .arg(format!("pass:{secret}"))
        .arg("-rsp_cert")
        .arg(&root)
        .arg("-rsp_capubs")
        .arg(&root);
    let mock = Proc::spawn(cmd, &dir.join("openssl-mock.log"))?;
    wait_until("openssl mock server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .with_context(|| mock.log())?;
    let mock_url = format!("http://127.0.0.1:{port}/pkix/");
    let openssl = rt
        .block_on(load(
            "openssl",
            &mock_url,
            &reference,
            secret.as_bytes(),
            &args,
            args.openssl_clients,
        ))
        .with_context(|| mock.log())?;
    println!(
        "  OpenSSL mock ({} client(s)): {}",
        args.openssl_clients,
        openssl.summary()
    );
    drop(mock);

    println!(
        "  certgate / OpenSSL mock = {:.2}x (target >= 5x); certgate CMP / direct Issue = {:.0}% (target >= 50%)",
        certgate.rate / openssl.rate.max(f64::MIN_POSITIVE),
        100.0 * certgate.rate / issue.rate.max(f64::MIN_POSITIVE)
    );
    Ok(())
}
