//! A small HTTP/3 client (quinn + h3, rustls with the aws-lc-rs provider) for tests: Debian's
//! curl has no HTTP/3, so the edge's HTTP/3 listener is exercised with this real, independent
//! client side of the same crates. It trusts only the PEM roots it is given (the fleet's dev
//! root), checks the server name, and negotiates ALPN `h3`.
//!
//! ```no_run
//! # async fn f(fleet: &certgate_e2e::Fleet) -> Result<(), String> {
//! let root = std::fs::read(fleet.root_pem()).map_err(|e| e.to_string())?;
//! let mut c = certgate_e2e::h3client::H3Client::connect(fleet.https, "127.0.0.1", &root).await?;
//! let r = c.get("/acme/directory").await?;
//! assert_eq!(r.status, 200);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A whole HTTP/3 response.
#[derive(Debug, Clone)]
pub struct H3Response {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl H3Response {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// One QUIC connection speaking HTTP/3; each request is a fresh stream, and requests may run
/// concurrently (`&self`), up to the server's stream limit.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    authority: String,
}

/// Time a request (or the handshake) may take before the client gives up.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The rustls client configuration for HTTP/3: aws-lc-rs, TLS 1.3, ALPN `h3`, trusting only the
/// certificates in `roots_pem`.
pub fn client_config(roots_pem: &[u8]) -> Result<quinn::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem) {
        let c = c.map_err(|e| format!("root PEM: {e}"))?;
        roots.add(c).map_err(|e| format!("root: {e}"))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

impl H3Client {
    /// Connects to `addr` (UDP) and sets up HTTP/3; `server_name` is checked against the
    /// server's certificate (`127.0.0.1` for the dev edge).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        roots_pem: &[u8],
    ) -> Result<Self, String> {
        let bind = if addr.is_ipv4() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(client_config(roots_pem)?);
        let connecting = endpoint
            .connect(addr, server_name)
            .map_err(|e| format!("connect: {e}"))?;
        let conn = tokio::time::timeout(TIMEOUT, connecting)
            .await
            .map_err(|_| "QUIC handshake timed out".to_owned())?
            .map_err(|e| format!("QUIC handshake: {e}"))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| format!("HTTP/3 setup: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            endpoint,
            conn,
            send,
            driver,
            authority: format!("{server_name}:{}", addr.port()),
        })
    }

    /// The underlying QUIC connection (for tests that inspect or abuse it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// GET `path` (`/acme/directory`, may carry a query).
    pub async fn get(&self, path: &str) -> Result<H3Response, String> {
        self.request(http::Method::GET, path, &[], &[]).await
    }

    /// POST `body` to `path` with `content_type`.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<H3Response, String> {
        self.request(
            http::Method::POST,
            path,
            &[("content-type", content_type)],
            body,
        )
        .await
    }

    /// Sends one request and reads the whole response. The body goes out in 16 KiB DATA
    /// frames; if the server answers early and stops the stream (413 for an oversized upload),
    /// the send error is tolerated and the response is still read.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<H3Response, String> {
        tokio::time::timeout(TIMEOUT, self.request_inner(method, path, headers, body))
            .await
            .map_err(|_| format!("HTTP/3 request to {path} timed out"))?
    }

    async fn request_inner(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<H3Response, String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-length", body.len().to_string());
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        // SendRequest is a cheap handle: requests may run concurrently on one connection.
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(req)
            .await
            .map_err(|e| format!("send request: {e}"))?;
        let mut send_error = None;
        for chunk in body.chunks(16 * 1024) {
            if let Err(e) = stream.send_data(Bytes::copy_from_slice(chunk)).await {
                send_error = Some(e.to_string());
                break;
            }
        }
        if send_error.is_none()
            && let Err(e) = stream.finish().await
        {
            send_error = Some(e.to_string());
        }
        let resp = stream.recv_response().await.map_err(|e| {
            format!(
                "receive response: {e}{}",
                send_error
                    .as_deref()
                    .map(|s| format!(" (after send error: {s})"))
                    .unwrap_or_default()
            )
        })?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream
            .recv_data()
            .await
            .map_err(|e| format!("receive body: {e}"))?
        {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(H3Response {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: out,
        })
    }

    /// Closes the connection cleanly (H3_NO_ERROR) and waits briefly for the close to go out.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"done");
        self.driver.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
