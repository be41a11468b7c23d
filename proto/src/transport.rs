//! Authenticated transports for certgate's gRPC services.
//!
//! Two ways in, one notion of "who is calling":
//! - a Unix domain socket, where the kernel tells us the peer's uid (`SO_PEERCRED`);
//! - TCP with mutual TLS, where the client certificate's single SPIFFE URI SAN names the caller.
//!
//! Every accepted connection is wrapped in [`Identified`], whose [`Caller`] tonic copies into each
//! request's extensions; services read it with [`caller_of`] and check it against an
//! [`AllowList`]. A TLS client without a certificate is still accepted (as [`Caller::Anonymous`])
//! so the refusal happens inside the service, where it is answered with a stable
//! `PermissionDenied` and audited, instead of vanishing as a handshake error.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How many TLS handshakes may be in progress at once on one listener (I-8: bounded).
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The authenticated identity of a connection's peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    /// A local process, identified by the kernel.
    Uid(u32),
    /// A remote process, identified by the SPIFFE ID in its verified client certificate.
    Spiffe(String),
    /// No identity could be established (no client certificate, no peer credentials).
    Anonymous,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Uid(uid) => write!(f, "uid:{uid}"),
            Caller::Spiffe(id) => f.write_str(id),
            Caller::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The caller tonic attached to a request; `Anonymous` when the transport set none (for example an
/// in-memory test transport), so a forgotten transport fails closed.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}

/// Errors building an allow-list or TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An allow-list entry is neither `uid:N` nor a `spiffe://` URI.
    #[error("allow-list entry {0:?} is neither uid:N nor spiffe://…")]
    BadAllowListEntry(String),
    /// A PEM file held no certificate or key, or could not be parsed.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built (for example, no trust anchors).
    #[error("client verifier: {0}")]
    Verifier(String),
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Who may call. An empty list admits nobody (I-5); `Anonymous` is never admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    uids: BTreeSet<u32>,
    spiffe_ids: BTreeSet<String>,
}

impl AllowList {
    /// Parses entries of the form `uid:1000` or `spiffe://trust-domain/path`.
    pub fn parse<I, S>(entries: I) -> Result<Self, TransportError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if let Some(uid) = entry.strip_prefix("uid:") {
                let uid = uid
                    .parse()
                    .map_err(|_| TransportError::BadAllowListEntry(entry.to_owned()))?;
                list.uids.insert(uid);
            } else if entry.starts_with("spiffe://") && entry.len() > "spiffe://".len() {
                list.spiffe_ids.insert(entry.to_owned());
            } else {
                return Err(TransportError::BadAllowListEntry(entry.to_owned()));
            }
        }
        Ok(list)
    }

    /// Admits exactly one uid (the embedded setup: every process runs as the same user).
    pub fn uid(uid: u32) -> Self {
        let mut list = Self::default();
        list.uids.insert(uid);
        list
    }

    /// Whether this caller may call.
    pub fn admits(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Uid(uid) => self.uids.contains(uid),
            Caller::Spiffe(id) => self.spiffe_ids.contains(id),
            Caller::Anonymous => false,
        }
    }

    /// True when nobody is admitted.
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.spiffe_ids.is_empty()
    }

    /// The entries, in the syntax [`AllowList::parse`] reads.
    pub fn entries(&self) -> Vec<String> {
        self.uids
            .iter()
            .map(|u| format!("uid:{u}"))
            .chain(self.spiffe_ids.iter().cloned())
            .collect()
    }
}

/// The uid this process runs as (for the embedded default allow-lists): the owner of
/// `/proc/self`, which Linux sets to the process's effective uid. `u32::MAX` (nobody's uid) if it
/// cannot be read, so a failure fails closed.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// A connection together with the identity of its peer.
pub struct Identified<S> {
    io: S,
    caller: Caller,
}

impl<S> Identified<S> {
    /// Wraps a connection whose peer has been authenticated as `caller`.
    pub fn new(io: S, caller: Caller) -> Self {
        Self { io, caller }
    }

    /// The authenticated peer.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl<S> Connected for Identified<S> {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.caller.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Identified<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Identified<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket file left by a previous run, with
/// permissions 0600 so only the owner (and root) can even connect; the allow-list is checked
/// on top of that.
pub fn bind_unix(path: &Path) -> Result<UnixListener, TransportError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // A socket someone still accepts on is not stale: replacing it would silently cut
            // the running server off (two signers started on one path).
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                )));
            }
            std::fs::remove_file(path)?;
        } else {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            )));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The accepted connections of a Unix listener, each identified by its peer uid.
pub fn unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<Identified<UnixStream>>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let caller = match stream.peer_cred() {
                        Ok(cred) => Caller::Uid(cred.uid()),
                        Err(_) => Caller::Anonymous,
                    };
                    return Some((Ok(Identified::new(stream, caller)), listener));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays up.
                    tracing::warn!(error = %e, "unix accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// The accepted connections of a TLS listener, each identified by its client certificate's
/// SPIFFE ID. Handshakes run concurrently (bounded) so one slow client cannot stall the rest.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = io::Result<Identified<tokio_rustls::server::TlsStream<TcpStream>>>>
+ Send
+ 'static {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // Stop accepting (and close the listener) as soon as the server drops the stream.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let caller = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|leaf| spiffe_id_of(leaf.as_ref()))
                            .map(Caller::Spiffe)
                            .unwrap_or(Caller::Anonymous);
                        let _ = tx.send(Ok(Identified::new(tls, caller))).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The SPIFFE ID of a certificate: its one `spiffe://` URI SAN. A certificate with none, or with
/// more than one (which the SPIFFE X.509-SVID spec forbids), has no SPIFFE ID.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<String> {
    use der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let extensions = cert.tbs_certificate.extensions.as_ref()?;
    let san = extensions
        .iter()
        .find(|e| e.extn_id == const_oid_san())
        .and_then(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())?;
    let mut ids = san.0.iter().filter_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) if uri.as_str().starts_with("spiffe://") => {
            Some(uri.as_str().to_owned())
        }
        _ => None,
    });
    let first = ids.next()?;
    ids.next().is_none().then_some(first)
}

fn const_oid_san() -> der::asn1::ObjectIdentifier {
    // id-ce-subjectAltName, RFC 5280 §4.2.1.6
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate in a PEM bundle.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::Pem {
            what: "certificate PEM",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::Pem {
            what: "certificate PEM",
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads one private key (PKCS#8, SEC1 or PKCS#1) from PEM.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TransportError::Pem {
        what: "private key PEM",
        reason: e.to_string(),
    })
}

fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A server configuration that asks for (but does not require) a client certificate chained to
/// `client_roots_pem`, so that certificate-less callers reach the service and are refused there.
pub fn server_tls_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_roots_pem: &[u8],
) -> Result<rustls::ServerConfig, TransportError> {
    let roots = Arc::new(roots_from_pem(client_roots_pem)?);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(cert_chain_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration presenting `cert_chain_pem`/`key_pem` (if given) and trusting only
/// `server_roots_pem`.
pub fn client_tls_config(
    cert_chain_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
    server_roots_pem: &[u8],
) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots_from_pem(server_roots_pem)?);
    let mut config = match (cert_chain_pem, key_pem) {
        (Some(chain), Some(key)) => {
            builder.with_client_auth_cert(certs_from_pem(chain)?, key_from_pem(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A lazily connecting channel over a Unix socket: the first call connects, a peer that is down
/// makes calls fail with `Unavailable` (never a fallback, I-5).
pub fn unix_channel(path: impl Into<PathBuf>) -> Channel {
    let path: Arc<PathBuf> = Arc::new(path.into());
    // The URI is required by tonic but never resolved: the connector below ignores it.
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
        }))
}

/// A lazily connecting channel over TCP + mutual TLS to `addr`, verifying the server certificate
/// for `server_name`.
pub fn tls_channel(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: rustls::ClientConfig,
) -> Channel {
    let connector = TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_allow_list_admits_nobody() {
        let list = AllowList::parse(Vec::<String>::new()).expect("empty parses");
        assert!(list.is_empty());
        assert!(!list.admits(&Caller::Uid(0)));
        assert!(!list.admits(&Caller::Spiffe("spiffe://x/y".into())));
    }

    #[test]
    fn allow_list_parses_uids_and_spiffe_ids() {
        let list = AllowList::parse(["uid:1000", "spiffe://certgate/core"]).expect("parses");
        assert!(list.admits(&Caller::Uid(1000)));
        assert!(!list.admits(&Caller::Uid(1001)));
        assert!(list.admits(&Caller::Spiffe("spiffe://certgate/core".into())));
        assert!(!list.admits(&Caller::Spiffe("spiffe://certgate/edge".into())));
        assert!(!list.admits(&Caller::Anonymous));
        assert_eq!(list.entries(), vec!["uid:1000", "spiffe://certgate/core"]);
    }

    #[test]
    fn allow_list_rejects_garbage_entries() {
        assert!(AllowList::parse(["root"]).is_err());
        assert!(AllowList::parse(["uid:abc"]).is_err());
        assert!(AllowList::parse(["spiffe://"]).is_err());
    }

    #[test]
    fn spiffe_id_is_read_from_the_uri_san() {
        let mut params =
            rcgen::CertificateParams::new(vec!["core.local".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://certgate.test/core".try_into().expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            spiffe_id_of(cert.der()).as_deref(),
            Some("spiffe://certgate.test/core")
        );
    }

    #[tokio::test]
    async fn bind_unix_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let live = bind_unix(&path).expect("first bind");
        assert!(
            bind_unix(&path).is_err(),
            "a live socket must not be replaced"
        );
        drop(live);
        // the file is left behind by the closed listener: stale, so it is replaced
        bind_unix(&path).expect("stale socket replaced");
    }

    #[test]
    fn two_spiffe_ids_mean_none() {
        let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
        for uri in ["spiffe://a/x", "spiffe://a/y"] {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().expect("uri")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(spiffe_id_of(cert.der()), None);
        assert_eq!(spiffe_id_of(b"garbage"), None);
    }
}
