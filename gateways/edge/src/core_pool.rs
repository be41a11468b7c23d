//! The set of cores an edge talks to: endpoints, health, balancing, and mutual TLS with SPIFFE
//! identities (docs/operations.md, "Edges and cores across hosts").
//!
//! - **Endpoints** come from `cores = ["unix:/path", "https://host:port", …]` (or the single
//!   `core_socket`). Channels connect lazily and reconnect by themselves.
//! - **Balancing**: power of two choices over the healthy members, by calls in flight (so a slow
//!   core gets less work), ties broken round-robin.
//! - **Active health checks**: every `health_interval_ms` each member is asked
//!   `grpc.health.v1.Health/Check` (the core serves it, tonic-health) with a `health_timeout_ms`
//!   deadline; SERVING admits it, anything else ejects it.
//! - **Passive ejection**: a transport failure on a real call ejects the member at once; the next
//!   successful probe re-admits it.
//! - **mTLS**: `https://` members are reached over TLS 1.3 presenting the edge's certificate; the
//!   core's certificate must chain to `[core_tls] ca` (serverAuth EKU) and carry one of the
//!   `[core_tls] core_spiffe_ids` as its single SPIFFE URI SAN, otherwise the handshake fails
//!   (fail closed, I-5). The DNS name is not what is checked: the SPIFFE ID is the identity.
//!
//! Metrics per member (label `core` = the endpoint as configured, a bounded set):
//! `certgate_edge_core_healthy` (gauge 0/1), `certgate_edge_core_calls_total{core,outcome}`,
//! `certgate_edge_core_ejections_total{core,cause}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use certgate_proto::acme::acme_client::AcmeClient as GrpcAcme;
use certgate_proto::cmp::cmp_client::CmpClient as GrpcCmp;
use certgate_proto::core::core_client::CoreClient as GrpcCore;
use certgate_proto::core::pending_client::PendingClient as GrpcPending;
use certgate_proto::scep::scep_client::ScepClient as GrpcScep;
use certgate_proto::transport::{certs_from_pem, key_from_pem, spiffe_id_of, unix_channel};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Whether each member is admitted (1) or ejected (0), by core.
pub const CORE_HEALTHY: &str = "certgate_edge_core_healthy";
/// Calls per core by outcome (`ok`, an error kind, or `transport`).
pub const CORE_CALLS_TOTAL: &str = "certgate_edge_core_calls_total";
/// Ejections per core by cause (`probe`, `transport`).
pub const CORE_EJECTIONS_TOTAL: &str = "certgate_edge_core_ejections_total";

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// An endpoint string is neither `unix:PATH` nor `https://HOST:PORT`.
    #[error("core endpoint {0:?} is neither unix:PATH nor https://HOST:PORT")]
    BadEndpoint(String),
    /// An `https://` member without `[core_tls]`.
    #[error("core endpoint {0:?} needs [core_tls] (client certificate, CA, core SPIFFE IDs)")]
    NoTls(String),
    /// The TLS material could not be read or used.
    #[error("[core_tls]: {0}")]
    Tls(String),
}

/// One configured core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEndpoint {
    /// The core's Unix socket (same host; the kernel authenticates us by uid).
    Unix(PathBuf),
    /// TCP + mTLS to `host:port`.
    Tls {
        /// Host name or IP literal.
        host: String,
        /// Port.
        port: u16,
    },
}

impl CoreEndpoint {
    /// Parses `unix:PATH` (relative paths against `base`) or `https://HOST:PORT`
    /// (`[v6]:port` for IPv6 literals).
    pub fn parse(s: &str, base: &Path) -> Result<Self, PoolError> {
        let bad = || PoolError::BadEndpoint(s.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            let p = PathBuf::from(path);
            return Ok(Self::Unix(if p.is_relative() { base.join(p) } else { p }));
        }
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains('/') || host.contains('@') {
            return Err(bad());
        }
        Ok(Self::Tls {
            host: host.to_owned(),
            port,
        })
    }

    /// The endpoint as operators write it (the `core` metric label).
    pub fn label(&self) -> String {
        match self {
            Self::Unix(p) => format!("unix:{}", p.display()),
            Self::Tls { host, port } if host.contains(':') => format!("https://[{host}]:{port}"),
            Self::Tls { host, port } => format!("https://{host}:{port}"),
        }
    }
}

/// Timing of health checks and the per-call attempt bound.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Between two probes of one member.
    pub health_interval: Duration,
    /// Deadline of one probe.
    pub health_timeout: Duration,
    /// Most attempts of one idempotent call across members (1 = no retry).
    pub max_attempts: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_millis(1000),
            health_timeout: Duration::from_millis(1000),
            max_attempts: 3,
        }
    }
}

/// The edge's TLS identity towards cores and what it expects of them.
pub struct CoreTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for CoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreTls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl CoreTls {
    /// From PEM: our certificate chain and key, the CA bundle cores chain to, and the SPIFFE IDs
    /// a core may present (empty admits no core, I-5).
    pub fn new(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
        core_spiffe_ids: &[String],
    ) -> Result<Self, PoolError> {
        let tls = |e: &dyn std::fmt::Display| PoolError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs_from_pem(ca_pem).map_err(|e| tls(&e))? {
            roots.add(cert).map_err(|e| tls(&e))?;
        }
        let provider = provider();
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: Arc::new(roots),
            allowed: core_spiffe_ids.to_vec(),
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                certs_from_pem(cert_chain_pem).map_err(|e| tls(&e))?,
                key_from_pem(key_pem).map_err(|e| tls(&e))?,
            )
            .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Reads the PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        core_spiffe_ids: &[String],
    ) -> Result<Self, PoolError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| PoolError::Tls(format!("{}: {e}", p.display())))
        };
        let key = zeroize::Zeroizing::new(read(key)?);
        Self::new(&read(cert)?, &key, &read(ca)?, core_spiffe_ids)
    }
}

/// Verifies a core: chain to our CA with the serverAuth EKU (webpki), then the SPIFFE ID against
/// the expected list. The TLS server name is not compared: cores are named by SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<rustls::RootCertStore>,
    allowed: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = spiffe_id_of(end_entity.as_ref());
        match presented {
            Some(id) if self.allowed.contains(&id) => Ok(ServerCertVerified::assertion()),
            other => {
                tracing::warn!(
                    spiffe_id = other.as_deref().unwrap_or("none"),
                    "core presented a SPIFFE ID not in [core_tls] core_spiffe_ids"
                );
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A lazily connecting channel to `host:port` over TCP + mTLS.
fn tls_channel(host: String, port: u16, config: Arc<rustls::ClientConfig>) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(config);
    // SNI: the host when it is a DNS name; the name is not what the verifier checks.
    let server_name = ServerName::try_from(host.clone()).unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::from([127, 0, 0, 1]).into(),
    ));
    Endpoint::from_static("http://certgate-core")
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let host = host.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                // A refused handshake (wrong core identity, untrusted chain) means no request
                // was sent on this connection: marked so any call may go to another core.
                let tls = connector
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| std::io::Error::other(HandshakeFailed(e.to_string())))?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

/// The TLS handshake with a core failed: the connection never carried a request.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the core failed: {0}")]
pub struct HandshakeFailed(String);

/// One core: its clients, health and load.
pub struct Member {
    /// The endpoint as configured (the `core` metric label).
    pub label: String,
    /// `certgate.core.v1.Core`.
    pub core: GrpcCore<Channel>,
    /// `certgate.acme.v1.Acme`.
    pub acme: GrpcAcme<Channel>,
    /// `certgate.cmp.v1.Cmp`.
    pub cmp: GrpcCmp<Channel>,
    /// `certgate.scep.v1.Scep`.
    pub scep: GrpcScep<Channel>,
    /// `certgate.core.v1.Pending`.
    pub pending: GrpcPending<Channel>,
    health: HealthClient<Channel>,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl Member {
    fn new(label: String, channel: Channel) -> Self {
        let m = Self {
            label,
            core: GrpcCore::new(channel.clone()),
            acme: GrpcAcme::new(channel.clone()),
            cmp: GrpcCmp::new(channel.clone()),
            scep: GrpcScep::new(channel.clone()),
            pending: GrpcPending::new(channel.clone()),
            health: HealthClient::new(channel),
            // Optimistic until the first probe, so an edge starting beside its cores serves at
            // once; a dead core is ejected by that probe or by the first failed call.
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        };
        ::metrics::gauge!(CORE_HEALTHY, "core" => m.label.clone()).set(1.0);
        m
    }

    /// Whether the member is admitted.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejects the member (a transport failure or a failed probe).
    pub fn eject(&self, cause: &'static str) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(core = %self.label, cause, "core ejected");
            ::metrics::counter!(CORE_EJECTIONS_TOTAL, "core" => self.label.clone(), "cause" => cause)
                .increment(1);
            ::metrics::gauge!(CORE_HEALTHY, "core" => self.label.clone()).set(0.0);
        }
    }

    /// Re-admits the member (a probe answered SERVING).
    pub fn admit(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(core = %self.label, "core admitted");
            ::metrics::gauge!(CORE_HEALTHY, "core" => self.label.clone()).set(1.0);
        }
    }

    /// Marks one call in flight until the guard drops (the balancing load signal).
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// One health probe: SERVING within `timeout` admits, anything else ejects.
    async fn probe(&self, timeout: Duration) {
        let mut h = self.health.clone();
        let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(timeout);
        let serving = matches!(
            tokio::time::timeout(timeout, h.check(req)).await,
            Ok(Ok(resp)) if resp.get_ref().status == ServingStatus::Serving as i32
        );
        if serving {
            self.admit();
        } else {
            self.eject("probe");
        }
    }
}

/// Decrements the member's in-flight count on drop.
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cores of this edge.
pub struct CorePool {
    members: Vec<Arc<Member>>,
    next: AtomicUsize,
    settings: PoolSettings,
}

impl CorePool {
    /// A pool over `endpoints`; `tls` is required when any is `https://`.
    pub fn new(
        endpoints: &[CoreEndpoint],
        tls: Option<&CoreTls>,
        settings: PoolSettings,
    ) -> Result<Arc<Self>, PoolError> {
        let mut members = Vec::new();
        for ep in endpoints {
            let channel = match ep {
                CoreEndpoint::Unix(p) => unix_channel(p.clone()),
                CoreEndpoint::Tls { host, port } => {
                    let tls = tls.ok_or_else(|| PoolError::NoTls(ep.label()))?;
                    tls_channel(host.clone(), *port, tls.config.clone())
                }
            };
            members.push(Arc::new(Member::new(ep.label(), channel)));
        }
        if members.is_empty() {
            return Err(PoolError::BadEndpoint(String::new()));
        }
        Ok(Arc::new(Self {
            members,
            next: AtomicUsize::new(0),
            settings,
        }))
    }

    /// A pool of one member over an existing channel (tests use in-memory channels).
    pub fn single(label: &str, channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            members: vec![Arc::new(Member::new(label.to_owned(), channel))],
            next: AtomicUsize::new(0),
            settings: PoolSettings::default(),
        })
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// The settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Picks a member for the next attempt, avoiding `tried` where possible: power of two
    /// choices among healthy untried members (fewer calls in flight wins); else any untried
    /// member (a probe may not have re-admitted it yet); else round-robin over all.
    pub fn pick(&self, tried: &[usize]) -> (usize, Arc<Member>) {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let healthy: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !tried.contains(i) && self.members[*i].is_healthy())
            .collect();
        let chosen = match healthy.as_slice() {
            [] => (0..n)
                .map(|i| (start + i) % n)
                .find(|i| !tried.contains(i))
                .unwrap_or(start % n),
            [only] => *only,
            [a, rest @ ..] => {
                // Two candidates: the round-robin head and a pseudo-random other one.
                let b = rest[start.wrapping_mul(2_654_435_761) % rest.len()];
                let load = |i: usize| self.members[i].in_flight.load(Ordering::Relaxed);
                if load(b) < load(*a) { b } else { *a }
            }
        };
        (chosen, self.members[chosen].clone())
    }

    /// Runs the active health checks until `shutdown` flips (one task for all members; probes
    /// of one round run concurrently, each bounded by `health_timeout`).
    pub async fn run_health_checks(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let round = futures::future::join_all(
                self.members
                    .iter()
                    .map(|m| m.probe(self.settings.health_timeout)),
            );
            tokio::select! {
                _ = round => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.health_interval) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// How a failed call ended, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the request never left the edge, so any call may be
    /// sent to another core.
    NotSent,
    /// The connection broke or the core vanished with the request possibly delivered: only an
    /// idempotent call may be repeated.
    Transport,
    /// The core answered with an error (its own verdict).
    Answered,
}

/// Classifies a status: a core's own error always carries certgate's `ErrorDetail`; a status
/// without one and with a transport cause (or `UNAVAILABLE`) came from the connection.
pub fn classify(status: &tonic::Status) -> Failure {
    use prost::Message;
    let has_detail = certgate_proto::ErrorDetail::decode(status.details())
        .map(|d| d.kind != certgate_proto::ErrorKind::Unspecified as i32)
        .unwrap_or(false);
    if has_detail {
        return Failure::Answered;
    }
    let mut source = std::error::Error::source(status);
    let mut transport = false;
    while let Some(e) = source {
        transport = true;
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
            ) || io
                .get_ref()
                .is_some_and(|inner| inner.is::<HandshakeFailed>()))
        {
            return Failure::NotSent;
        }
        source = e.source();
    }
    if transport || status.code() == tonic::Code::Unavailable {
        Failure::Transport
    } else {
        Failure::Answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let base = Path::new("/data/edge");
        assert_eq!(
            CoreEndpoint::parse("unix:../run/core.sock", base).expect("unix"),
            CoreEndpoint::Unix(PathBuf::from("/data/edge/../run/core.sock"))
        );
        assert_eq!(
            CoreEndpoint::parse("https://127.0.0.1:7443", base).expect("tls"),
            CoreEndpoint::Tls {
                host: "127.0.0.1".into(),
                port: 7443
            }
        );
        let v6 = CoreEndpoint::parse("https://[::1]:7443/", base).expect("v6");
        assert_eq!(v6.label(), "https://[::1]:7443");
        for bad in [
            "http://127.0.0.1:7443",
            "https://127.0.0.1",
            "https://127.0.0.1:0",
            "https://:7443",
            "unix:",
            "core.sock",
            "https://u@h:1",
        ] {
            assert!(CoreEndpoint::parse(bad, base).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn pick_prefers_healthy_untried_members_and_spreads_load() {
        let eps: Vec<CoreEndpoint> = (0..3)
            .map(|i| CoreEndpoint::Unix(PathBuf::from(format!("/nonexistent/{i}.sock"))))
            .collect();
        let pool = CorePool::new(&eps, None, PoolSettings::default()).expect("pool");
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[pool.pick(&[]).0] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "spread: {seen:?}");
        pool.members()[1].eject("transport");
        for _ in 0..50 {
            let (i, _) = pool.pick(&[]);
            assert_ne!(
                i, 1,
                "an ejected member is not picked while others are healthy"
            );
            let (j, _) = pool.pick(&[i]);
            assert_ne!(j, i, "a retry goes to another member");
            assert_ne!(j, 1);
        }
        // Everything tried or ejected: still an answer (the call then fails as unavailable).
        pool.members()[0].eject("transport");
        pool.members()[2].eject("transport");
        let (k, _) = pool.pick(&[]);
        assert!(k < 3);
        // Load: a member with calls in flight loses the two-choice comparison.
        let pool = CorePool::new(&eps[..2], None, PoolSettings::default()).expect("pool");
        let _busy: Vec<InFlight> = (0..10).map(|_| pool.members()[0].start_call()).collect();
        let picks_of_1 = (0..100).filter(|_| pool.pick(&[]).0 == 1).count();
        assert_eq!(
            picks_of_1, 100,
            "the idle member wins every two-choice draw"
        );
    }

    #[test]
    fn statuses_are_classified() {
        let answered: tonic::Status =
            certgate_proto::RpcError::unavailable("signer down", Duration::from_secs(1)).into();
        assert_eq!(classify(&answered), Failure::Answered);
        assert_eq!(
            classify(&tonic::Status::unavailable("connection reset")),
            Failure::Transport
        );
        assert_eq!(
            classify(&tonic::Status::invalid_argument("bad")),
            Failure::Answered
        );
        let refused = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(classify(&refused), Failure::NotSent);
        let handshake = tonic::Status::from_error(Box::new(std::io::Error::other(
            HandshakeFailed("bad SPIFFE ID".into()),
        )));
        assert_eq!(classify(&handshake), Failure::NotSent);
    }
}
