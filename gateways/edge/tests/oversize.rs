//! Oversized request bodies against the real `certgate-edge` binary (its own process, real TLS,
//! every protocol's real route and limit; no core is needed: the refusal comes first):
//! - a `Content-Length` above the protocol's limit is answered 413 before a byte of the body is
//!   sent (even with `Expect: 100-continue`: no `100 Continue`);
//! - a chunked body that crosses the limit is answered 413 and the client, still writing its
//!   upload, reads that answer instead of a connection reset (lingering close, linger.rs);
//! - many attempts in a row are all answered, and counted in the metrics;
//! - over HTTP/2 only the stream ends: the complete 413 first; a client that finishes its
//!   upload then sees a clean end of the stream (the rest is drained), one that never does gets
//!   `RST_STREAM(NO_ERROR)` after the bounded drain (RFC 9113 §8.1); the connection serves the
//!   next request either way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the CI machine is slow and shared.
const WAIT: Duration = Duration::from_secs(60);

struct Edge {
    child: Child,
    https: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn openssl_cert(dir: &Path) {
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(st.success(), "openssl req failed");
}

async fn start() -> Edge {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_cert(dir.path());
    let (https, http, admin) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "mode = \"dev\"\ncore_socket = \"{}\"\n[listen]\nhttps = \"{https}\"\nhttp = \"{http}\"\n\
         admin = \"{admin}\"\nhttp3 = false\nhttp_threads = 2\n[tls]\ncert = \"tls.pem\"\n\
         key = \"tls.key\"\n[acme]\nbase_url = \"https://{https}\"\n",
        dir.path().join("no-core.sock").display()
    );
    let cfg_path = dir.path().join("edge.toml");
    std::fs::write(&cfg_path, cfg).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_certgate-edge"))
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn certgate-edge");
    let pem = std::fs::read(dir.path().join("tls.pem")).expect("read cert");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let edge = Edge {
        child,
        https,
        http,
        admin,
        tls: Arc::new(tls),
        _dir: dir,
    };
    let t0 = Instant::now();
    for addr in [https, http, admin] {
        while TcpStream::connect(addr).await.is_err() {
            assert!(t0.elapsed() < WAIT, "edge never listened on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    edge
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One protocol's POST route: listener, path, content type, body limit.
#[derive(Clone, Copy, Debug)]
struct Route {
    tls: bool,
    path: &'static str,
    content_type: &'static str,
    limit: usize,
}

const ROUTES: [Route; 5] = [
    Route {
        tls: true,
        path: "/acme/new-account",
        content_type: "application/jose+json",
        limit: 64 * 1024,
    },
    Route {
        tls: true,
        path: "/.well-known/est/simpleenroll",
        content_type: "application/pkcs10",
        limit: 64 * 1024,
    },
    Route {
        tls: false,
        path: "/scep?operation=PKIOperation",
        content_type: "application/x-pki-message",
        limit: 64 * 1024,
    },
    Route {
        tls: false,
        path: "/.well-known/cmp",
        content_type: "application/pkixcmp",
        limit: 64 * 1024,
    },
    Route {
        tls: false,
        path: "/ocsp",
        content_type: "application/ocsp-request",
        limit: 8 * 1024,
    },
];

impl Edge {
    async fn connect(&self, tls: bool, alpn: &[u8]) -> Box<dyn Io> {
        if !tls {
            return Box::new(TcpStream::connect(self.http).await.expect("connect http"));
        }
        let mut cfg = (*self.tls).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.https).await.expect("connect https");
        let name =
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Box::new(s)
    }

    /// Requests counted as `client_error` for `protocol` in the edge's metrics.
    async fn refused(&self, protocol: &str) -> u64 {
        let mut s = TcpStream::connect(self.admin).await.expect("connect admin");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read metrics");
        let p = format!("protocol=\"{protocol}\"");
        raw.lines()
            .filter(|l| l.starts_with("certgate_edge_requests_total{"))
            .filter(|l| l.contains(&p) && l.contains("outcome=\"client_error\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// Everything `s` still sends, to the end of the connection (an error here is the reset this
/// file is about).
async fn read_answer_bytes(s: &mut Box<dyn Io>) -> (usize, Vec<u8>) {
    let mut raw = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("answer read without a reset");
    (n, raw)
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// The status line's code of what `s` answers, read to the end of the connection.
async fn read_answer(s: &mut Box<dyn Io>) -> (u16, String) {
    let (_, raw) = read_answer_bytes(s).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    (status_of(&text), text)
}

/// Headers with a `Content-Length` far over the limit and `Expect: 100-continue`, no body.
async fn declared_too_large(edge: &Edge, r: Route) -> (u16, String) {
    let mut s = edge.connect(r.tls, b"http/1.1").await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        r.path,
        r.content_type,
        r.limit * 100
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    // No body is sent: the answer must come anyway, and be the refusal, not 100 Continue.
    read_answer(&mut s).await
}

/// A chunked body over the limit: twice the limit is written, the 413 is awaited (the server
/// has answered and closed its side), then the client goes on uploading another 256 KiB as a
/// client that does not read while it writes would, and finally reads the whole answer. Without
/// the lingering close, the later writes hit a closed socket and the kernel resets it.
async fn chunked_too_large(edge: &Edge, r: Route) -> (u16, String) {
    let mut s = edge.connect(r.tls, b"http/1.1").await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        r.path, r.content_type
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let chunk = vec![b'A'; 4096];
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend(&chunk);
    framed.extend(b"\r\n");
    let mut sent = 0;
    while sent < 2 * r.limit {
        s.write_all(&framed).await.expect("write chunk");
        sent += chunk.len();
    }
    s.flush().await.expect("flush");
    // The answer's head arrives while the upload is unfinished.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("answer head read");
        assert!(n > 0, "{r:?}: closed without an answer");
        raw.extend(&buf[..n]);
    }
    for _ in 0..64 {
        s.write_all(&framed)
            .await
            .expect("the upload goes on after the answer (no reset)");
    }
    s.write_all(b"0\r\n\r\n").await.expect("write last chunk");
    s.flush().await.expect("flush");
    let (_, rest) = read_answer_bytes(&mut s).await;
    raw.extend(rest);
    let text = String::from_utf8_lossy(&raw).to_string();
    (status_of(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_on_every_route() {
    let edge = start().await;
    for r in ROUTES {
        let (status, text) = declared_too_large(&edge, r).await;
        assert_eq!(status, 413, "{r:?}: {text}");
        assert!(!text.contains("100 Continue"), "{r:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_answered_413_and_the_client_reads_it() {
    let edge = start().await;
    for r in ROUTES {
        let (status, text) = chunked_too_large(&edge, r).await;
        assert_eq!(status, 413, "{r:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_oversized_attempts_in_a_row_are_all_answered_and_counted() {
    let edge = start().await;
    const N: u64 = 8;
    for (r, protocol) in ROUTES.iter().zip(["acme", "est", "scep", "cmp", "ocsp"]) {
        let before = edge.refused(protocol).await;
        let mut codes = Vec::new();
        for _ in 0..N {
            codes.push(chunked_too_large(&edge, *r).await.0);
            codes.push(declared_too_large(&edge, *r).await.0);
        }
        assert!(codes.iter().all(|c| *c == 413), "{r:?}: {codes:?}");
        assert_eq!(
            edge.refused(protocol).await - before,
            2 * N,
            "{protocol}: every refusal is counted"
        );
    }
}

// --- HTTP/2: a few raw frames, to see the RST_STREAM code (clients hide it). ---

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK "literal header field without indexing, new name" for each pair (no Huffman).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        out.push(0);
        out.push(u8::try_from(k.len()).expect("short name"));
        out.extend(k.as_bytes());
        out.push(u8::try_from(v.len()).expect("short value"));
        out.extend(v.as_bytes());
    }
    out
}

/// The next frame (type, flags, stream, payload); SETTINGS are acknowledged. `None` when the
/// connection ended.
async fn next_frame(s: &mut Box<dyn Io>) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("a frame in time")
        .ok()?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    if h[3] == SETTINGS && h[4] & 1 == 0 {
        s.write_all(&frame(SETTINGS, 1, 0, &[]))
            .await
            .expect("settings ack");
    }
    Some((h[3], h[4], id, payload))
}

/// Reads frames until `stream`'s response is complete (END_STREAM) or the stream is reset;
/// returns that stream's frames (type, flags, payload). GOAWAY or a closed connection fails.
async fn response_of(s: &mut Box<dyn Io>, stream: u32) -> Vec<(u8, u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let Some((kind, flags, id, payload)) = next_frame(s).await else {
            panic!("connection closed; stream {stream}: {seen:?}");
        };
        assert_ne!(kind, GOAWAY, "the connection was closed");
        if id == stream {
            seen.push((kind, flags, payload));
            if kind == RST_STREAM || flags & END_STREAM != 0 {
                return seen;
            }
        }
    }
}

fn h2_start_request(r: Route, stream: u32, declare: Option<usize>) -> Vec<u8> {
    let scheme = if r.tls { "https" } else { "http" };
    let len = declare.map(|n| n.to_string());
    let mut headers = vec![
        (":method", "POST"),
        (":scheme", scheme),
        (":authority", "127.0.0.1"),
        (":path", r.path),
        ("content-type", r.content_type),
    ];
    if let Some(l) = &len {
        headers.push(("content-length", l));
    }
    frame(HEADERS, END_HEADERS, stream, &hpack(&headers))
}

async fn h2_connect(edge: &Edge, r: Route) -> Box<dyn Io> {
    let mut s = edge.connect(r.tls, b"h2").await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s
}

/// A GET on `stream` is answered: the connection survived the refusal.
async fn h2_still_serves(s: &mut Box<dyn Io>, r: Route, stream: u32) {
    let scheme = if r.tls { "https" } else { "http" };
    let get = [
        (":method", "GET"),
        (":scheme", scheme),
        (":authority", "127.0.0.1"),
        (":path", "/no-such-route"),
    ];
    s.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &hpack(&get),
    ))
    .await
    .expect("next request");
    let frames = response_of(s, stream).await;
    assert_eq!(frames[0].0, HEADERS, "{r:?}: answered");
}

/// A declared length over the limit, and the client never sends the body: the complete 413
/// first, then, after the bounded drain, `RST_STREAM(NO_ERROR)`; the connection goes on.
async fn h2_declared_then_reset(edge: &Edge, r: Route) {
    let mut s = h2_connect(edge, r).await;
    s.write_all(&h2_start_request(r, 1, Some(r.limit * 100)))
        .await
        .expect("headers");
    let answer = response_of(&mut s, 1).await;
    assert_eq!(
        answer[0].0, HEADERS,
        "{r:?}: the answer comes first: {answer:?}"
    );
    assert!(
        answer.iter().all(|f| f.0 != RST_STREAM),
        "{r:?}: the answer is complete before any reset: {answer:?}"
    );
    let reset = response_of(&mut s, 1).await;
    assert_eq!(reset.len(), 1, "{r:?}: {reset:?}");
    assert_eq!(reset[0].0, RST_STREAM, "{r:?}");
    assert_eq!(
        reset[0].2.as_slice(),
        &[0, 0, 0, 0],
        "{r:?}: RST_STREAM(NO_ERROR)"
    );
    h2_still_serves(&mut s, r, 3).await;
}

/// A streamed body over the limit: the 413 arrives while the client still uploads; the client
/// finishes its upload and the stream closes cleanly (no reset); the connection goes on.
async fn h2_streamed_then_finished(edge: &Edge, r: Route) {
    let mut s = h2_connect(edge, r).await;
    s.write_all(&h2_start_request(r, 1, None))
        .await
        .expect("headers");
    // Over the limit, within the initial 65535-byte flow-control window, stream left open.
    let chunk = vec![b'A'; 16 * 1024 - 1];
    let mut sent = 0;
    while sent <= r.limit {
        s.write_all(&frame(DATA, 0, 1, &chunk)).await.expect("data");
        sent += chunk.len();
    }
    assert!(
        sent + chunk.len() < 65535,
        "{r:?}: the test stays within the window"
    );
    let answer = response_of(&mut s, 1).await;
    assert_eq!(answer[0].0, HEADERS, "{r:?}: {answer:?}");
    assert!(
        answer.iter().all(|f| f.0 != RST_STREAM),
        "{r:?}: {answer:?}"
    );
    // The rest of the upload, then its end: accepted and discarded, no reset.
    s.write_all(&frame(DATA, END_STREAM, 1, &chunk))
        .await
        .expect("last data");
    let scheme = if r.tls { "https" } else { "http" };
    let get = [
        (":method", "GET"),
        (":scheme", scheme),
        (":authority", "127.0.0.1"),
        (":path", "/no-such-route"),
    ];
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &hpack(&get)))
        .await
        .expect("next request");
    loop {
        let (kind, _, id, payload) = next_frame(&mut s).await.expect("connection open");
        assert_ne!(kind, GOAWAY, "{r:?}: the connection was closed");
        assert!(
            !(id == 1 && kind == RST_STREAM),
            "{r:?}: stream 1 reset ({payload:?}) although the upload finished"
        );
        if id == 3 && kind == HEADERS {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_only_the_stream_ends_answer_first_then_drained_or_reset_with_no_error() {
    let edge = start().await;
    for r in ROUTES {
        h2_declared_then_reset(&edge, r).await;
    }
    // Streamed DATA over the limit: OCSP's 8 KiB fits in the initial window (h2c), EST's
    // limit is set by the same plumbing over TLS.
    h2_streamed_then_finished(&edge, ROUTES[4]).await;
}
