//! The core's TCP listener for edges on other hosts: mutual TLS (rustls, aws-lc-rs, TLS 1.3 only)
//! with a SPIFFE ID allow-list checked on every connection (docs/operations.md, "Edges and cores
//! across hosts").
//!
//! Fail closed (I-5), at the handshake, before a single RPC byte is read:
//! - no client certificate → refused (`no_certificate`);
//! - a certificate that does not chain to `client_ca` (another CA, expired, wrong EKU) → refused
//!   (`untrusted_certificate`);
//! - a certificate whose one `spiffe://` URI SAN is not in the listener's allow-list, or that has
//!   none or several → refused with an `access_denied` alert (`spiffe_not_allowed`).
//!
//! Each refusal is counted in `certgate_core_tls_refused_total{reason}` and logged with the
//! presented SPIFFE ID (never a key or anything secret). An admitted connection carries its
//! SPIFFE ID as the request's [`Caller`], so the per-RPC allow-lists (`allow`, `admin_allow`) still
//! apply on top (defence in depth: a connection gate that admits an edge does not make it an
//! admin).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certgate_proto::transport::{
    Identified, TransportError, certs_from_pem, key_from_pem, spiffe_id_of,
};
use certgate_proto::{AllowList, Caller};
use futures::Stream;
use rustls::DistinguishedName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

/// Handshakes in progress at once (I-8); further connections wait in the kernel backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused connections, by reason.
pub const TLS_REFUSED_TOTAL: &str = "certgate_core_tls_refused_total";
/// Admitted connections.
pub const TLS_ADMITTED_TOTAL: &str = "certgate_core_tls_admitted_total";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Checks the chain with webpki (client auth EKU, validity, signatures up to `client_ca`), then
/// the SPIFFE ID against the allow-list.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = spiffe_id_of(end_entity.as_ref());
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::warn!(
                spiffe_id = presented.as_deref().unwrap_or("none"),
                error = %e,
                "fleet mTLS: client certificate not trusted"
            );
            return Err(e);
        }
        let caller = presented
            .clone()
            .map(Caller::Spiffe)
            .unwrap_or(Caller::Anonymous);
        if !self.allow.admits(&caller) {
            tracing::warn!(
                spiffe_id = presented.as_deref().unwrap_or("none"),
                "fleet mTLS: SPIFFE ID not in the listener allow-list"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The listener's rustls configuration: our certificate chain and key, client certificates
/// required and chained to `client_ca_pem`, SPIFFE IDs checked against `allow` (which admits no
/// one when empty). TLS 1.3 only, ALPN `h2`.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    allow: AllowList,
) -> Result<rustls::ServerConfig, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(client_ca_pem)? {
        roots.add(cert)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier { inner, allow });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(cert_chain_pem)?, key_from_pem(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The metric label for a failed handshake.
fn refusal_reason(e: &io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(C::ApplicationVerificationFailure)) => "spiffe_not_allowed",
        Some(E::InvalidCertificate(_)) => "untrusted_certificate",
        _ => "handshake",
    }
}

/// The accepted, authenticated connections of `listener`: each carries the client's SPIFFE ID.
/// Handshakes run concurrently (bounded) so one slow client cannot stall the rest; the accept
/// loop stops when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = io::Result<Identified<tokio_rustls::server::TlsStream<TcpStream>>>>
+ Send
+ 'static {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => break,
            };
            let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "fleet mTLS: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        // The verifier admitted only allow-listed SPIFFE IDs; read it again for
                        // the request's Caller.
                        let caller = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|leaf| spiffe_id_of(leaf.as_ref()))
                            .map(Caller::Spiffe)
                            .unwrap_or(Caller::Anonymous);
                        tracing::debug!(%peer, %caller, "fleet mTLS: connection admitted");
                        metrics::counter!(TLS_ADMITTED_TOTAL).increment(1);
                        let _ = tx.send(Ok(Identified::new(tls, caller))).await;
                    }
                    Ok(Err(e)) => {
                        let reason = refusal_reason(&e);
                        metrics::counter!(TLS_REFUSED_TOTAL, "reason" => reason).increment(1);
                        tracing::warn!(%peer, reason, error = %e, "fleet mTLS: connection refused");
                    }
                    Err(_) => {
                        metrics::counter!(TLS_REFUSED_TOTAL, "reason" => "timeout").increment(1);
                        tracing::info!(%peer, "fleet mTLS: handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Pki {
        ca_pem: String,
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn pki(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(pki: &Pki, spiffe: Option<&str>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        if let Some(id) = spiffe {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(id.try_into().unwrap()));
        }
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &pki.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Handshakes a client presenting `client` (or nothing) against a listener; returns the
    /// server-side outcome reason ("ok" or the refusal label).
    async fn handshake(
        server: &rustls::ServerConfig,
        roots_pem: &str,
        client: Option<(String, String)>,
    ) -> &'static str {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server.clone()));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    // Keep reading until the client closes, like a real server.
                    let mut buf = [0u8; 16];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    "ok"
                }
                Err(e) => refusal_reason(&e),
            }
        });
        let cfg = certgate_proto::transport::client_tls_config(
            client.as_ref().map(|c| c.0.as_bytes()),
            client.as_ref().map(|c| c.1.as_bytes()),
            roots_pem.as_bytes(),
        )
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(addr).await.unwrap();
        if let Ok(mut tls) = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
        {
            // TLS 1.3: a refused client certificate is only noticed on the next read.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, b"x").await;
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
            drop(tls);
        }
        server_task.await.unwrap()
    }

    #[tokio::test]
    async fn only_allow_listed_spiffe_ids_from_our_ca_get_in() {
        let ours = pki("fleet CA");
        let theirs = pki("another CA");
        let (server_cert, server_key) = leaf(&ours, Some("spiffe://certgate.test/core/1"));
        let allow = AllowList::parse(["spiffe://certgate.test/edge/1"]).unwrap();
        let server = server_config(
            server_cert.as_bytes(),
            server_key.as_bytes(),
            ours.ca_pem.as_bytes(),
            allow,
        )
        .unwrap();
        let roots = &ours.ca_pem;
        let allowed = leaf(&ours, Some("spiffe://certgate.test/edge/1"));
        assert_eq!(handshake(&server, roots, Some(allowed)).await, "ok");
        let other_id = leaf(&ours, Some("spiffe://certgate.test/edge/2"));
        assert_eq!(
            handshake(&server, roots, Some(other_id)).await,
            "spiffe_not_allowed"
        );
        let no_id = leaf(&ours, None);
        assert_eq!(
            handshake(&server, roots, Some(no_id)).await,
            "spiffe_not_allowed"
        );
        assert_eq!(handshake(&server, roots, None).await, "no_certificate");
        let foreign = leaf(&theirs, Some("spiffe://certgate.test/edge/1"));
        assert_eq!(
            handshake(&server, roots, Some(foreign)).await,
            "untrusted_certificate"
        );
    }

    #[tokio::test]
    async fn an_empty_allow_list_admits_no_one() {
        let ours = pki("fleet CA");
        let (cert, key) = leaf(&ours, Some("spiffe://certgate.test/core/1"));
        let server = server_config(
            cert.as_bytes(),
            key.as_bytes(),
            ours.ca_pem.as_bytes(),
            AllowList::default(),
        )
        .unwrap();
        let client = leaf(&ours, Some("spiffe://certgate.test/edge/1"));
        assert_eq!(
            handshake(&server, &ours.ca_pem, Some(client)).await,
            "spiffe_not_allowed"
        );
    }
}
