//! TLS to PostgreSQL (`[store.tls]`, docs/postgres.md): rustls with the aws-lc-rs provider, the
//! project's only crypto provider, plugged into tokio-postgres as a [`MakeTlsConnect`].
//!
//! Why it is built this way:
//! - Only libpq's `verify-full` is offered: the server's chain must end at the configured CA
//!   (`ca_file`, never the system roots) and its certificate must name the host of the URL (DNS
//!   name or IP address). An unverified `require` would stop passive listeners only, and a store
//!   that hands out certificates and audit records must not talk to a man in the middle.
//! - With `[store.tls]` every connection (pool, CRL lease, migrations) is made with
//!   `sslmode=require` whatever the URL says, so a server that does not speak TLS is refused,
//!   never silently used in the clear (fail closed).
//! - An optional client certificate (`cert` authentication in pg_hba.conf) is loaded once; its
//!   private key is read into a zeroizing buffer, turned into an aws-lc-rs signing key, and the
//!   decoded DER wiped at once. Nothing about keys is logged.
//! - The stream offers `tls-server-end-point` channel binding (RFC 5929), so SCRAM-SHA-256-PLUS
//!   ties the password exchange to this TLS session: a relay holding another certificate cannot
//!   forward the authentication.
//! - A connector crate (tokio-postgres-rustls) would do the same in ~the same amount of code but
//!   pulls its own rustls feature set; this file keeps the provider choice explicit.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CoreError, Result};

/// How the server is checked. Only `verify-full` exists (see the module docs for why there is
/// no unverified mode).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PgTlsMode {
    /// Chain to `ca_file` and the URL's host named in the server certificate (libpq's
    /// `sslmode=verify-full`).
    #[default]
    VerifyFull,
}

/// `[store.tls]`: TLS to PostgreSQL for the app role, the CRL lease and migrations.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTlsConfig {
    /// `verify-full` (the default and only mode).
    #[serde(default)]
    pub mode: PgTlsMode,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (required: the
    /// system roots are never trusted for the store).
    pub ca_file: PathBuf,
    /// PEM certificate chain presented to the server (pg_hba `cert` or `clientcert=verify-full`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file` (PKCS#8, SEC1 or PKCS#1).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Client certificate of the migration (owner) role, when it differs from the app role's.
    /// Unset: migrations use `client_cert_file`.
    #[serde(default)]
    pub migrate_client_cert_file: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub migrate_client_key_file: Option<PathBuf>,
}

impl PgTlsConfig {
    /// Checks what can be checked without reading files.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(
                "[store.tls] set both client_cert_file and client_key_file, or neither".into(),
            );
        }
        if self.migrate_client_cert_file.is_some() != self.migrate_client_key_file.is_some() {
            return Err(
                "[store.tls] set both migrate_client_cert_file and migrate_client_key_file, or neither"
                    .into(),
            );
        }
        Ok(())
    }

    /// Resolves relative paths against `base` (the config file's directory).
    pub fn resolve(mut self, base: &Path) -> Self {
        if self.ca_file.is_relative() {
            self.ca_file = base.join(&self.ca_file);
        }
        for p in [
            &mut self.client_cert_file,
            &mut self.client_key_file,
            &mut self.migrate_client_cert_file,
            &mut self.migrate_client_key_file,
        ] {
            if let Some(p) = p.as_mut()
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
        self
    }

    /// The connector of the app role (pool and CRL lease).
    pub(crate) fn app_connector(&self) -> Result<MakeRustls> {
        let client = match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        MakeRustls::new(&self.ca_file, client)
    }

    /// The connector of the migration role.
    pub(crate) fn migrate_connector(&self) -> Result<MakeRustls> {
        match (
            &self.migrate_client_cert_file,
            &self.migrate_client_key_file,
        ) {
            (Some(c), Some(k)) => MakeRustls::new(&self.ca_file, Some((c.as_path(), k.as_path()))),
            _ => self.app_connector(),
        }
    }
}

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CoreError {
    CoreError::Store(format!("[store.tls] {what} {}: {e}", path.display()))
}

/// Reads CA certificates from a PEM file; at least one is required.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let pem = std::fs::read(path).map_err(|e| tls_err("reading", path, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| tls_err("parsing", path, e))?;
        roots
            .add(c)
            .map_err(|e| tls_err("using CA certificate from", path, e))?;
    }
    if roots.is_empty() {
        return Err(tls_err("no CA certificate in", path, "empty"));
    }
    Ok(roots)
}

/// Loads a client certificate chain and its key. The key file's bytes and the decoded DER live
/// in zeroizing buffers; only the aws-lc-rs key object outlives this call.
fn read_client(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let pem = std::fs::read(cert).map_err(|e| tls_err("reading", cert, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err("parsing", cert, e))?;
    if chain.is_empty() {
        return Err(tls_err("no certificate in", cert, "empty"));
    }
    let key_pem = Zeroizing::new(std::fs::read(key).map_err(|e| tls_err("reading", key, e))?);
    // The error of a key parse names no key material.
    let mut der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls_err("parsing the private key", key, e))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der);
    der.zeroize();
    let signer = signer.map_err(|e| tls_err("loading the private key", key, e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Always offers the one configured client certificate.
#[derive(Debug)]
struct OneClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A tokio-postgres TLS maker over one rustls client configuration (aws-lc-rs, TLS 1.2/1.3).
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustls {
    /// Builds the client configuration: roots from `ca_file` only, optional client certificate.
    pub(crate) fn new(ca_file: &Path, client: Option<(&Path, &Path)>) -> Result<Self> {
        let roots = read_roots(ca_file)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CoreError::Store(format!("[store.tls] rustls: {e}")))?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                builder.with_client_cert_resolver(Arc::new(OneClientCert(read_client(cert, key)?)))
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            name: ServerName::try_from(domain.to_owned())?,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        })
    }
}

/// One handshake towards `name` (the URL's host, checked against the server certificate).
pub(crate) struct RustlsConnect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS session to the server.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c.as_ref()))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929 §4.1 `tls-server-end-point`: the server certificate hashed with its signature's hash
/// (SHA-256 for MD5 and SHA-1). None for signatures without one hash (Ed25519, RSA-PSS): the
/// session then authenticates without channel binding, as libpq does.
fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest;
    use const_oid::db::rfc5912 as oids;
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let alg = cert.signature_algorithm.oid;
    let hash = if [
        oids::SHA_256_WITH_RSA_ENCRYPTION,
        oids::ECDSA_WITH_SHA_256,
        oids::SHA_1_WITH_RSA_ENCRYPTION,
        oids::MD_5_WITH_RSA_ENCRYPTION,
    ]
    .contains(&alg)
    {
        &digest::SHA256
    } else if [oids::SHA_384_WITH_RSA_ENCRYPTION, oids::ECDSA_WITH_SHA_384].contains(&alg) {
        &digest::SHA384
    } else if [oids::SHA_512_WITH_RSA_ENCRYPTION, oids::ECDSA_WITH_SHA_512].contains(&alg) {
        &digest::SHA512
    } else {
        return None;
    };
    Some(digest::digest(hash, cert_der).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).expect("ca"), key)
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let (c, _) = ca();
        let der = c.der().to_vec();
        // rcgen's default key is P-256 with ecdsa-with-SHA256.
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        assert_eq!(server_end_point(&der).as_deref(), Some(want.as_ref()));
        assert_eq!(server_end_point(b"not a certificate"), None);
    }

    #[test]
    fn store_table_with_a_tls_subtable_parses_resolves_and_is_checked() {
        let parse = |url: &str, tls: &str| -> crate::store::PgConfig {
            toml::from_str(&format!("url = {url:?}\n[tls]\n{tls}")).expect("parses")
        };
        let c = parse(
            "postgres://app@db.internal/certgate",
            "ca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\nclient_key_file = \"c.key\"",
        );
        assert!(c.check().is_ok());
        let c = c.resolve(Path::new("/etc/certgate"));
        let t = c.tls.expect("tls");
        assert_eq!(t.mode, PgTlsMode::VerifyFull);
        assert_eq!(t.ca_file, Path::new("/etc/certgate/ca.pem"));
        assert_eq!(
            t.client_key_file.as_deref(),
            Some(Path::new("/etc/certgate/c.key"))
        );
        // A unix socket has no TLS: refused rather than silently plain.
        let unix = parse(
            "postgresql://app@%2Frun%2Fpostgresql/certgate",
            "ca_file = \"ca.pem\"",
        );
        assert!(
            unix.check().expect_err("unix").contains("unix socket"),
            "refused for the socket, not another reason"
        );
        // sslmode=require without [store.tls] cannot be honoured: refused at start.
        let no_tls: crate::store::PgConfig =
            toml::from_str("url = \"postgres://app@db/certgate?sslmode=require\"").expect("parses");
        assert!(
            no_tls
                .check()
                .expect_err("sslmode")
                .contains("sslmode=require")
        );
        // With [store.tls] the URL's sslmode does not matter (TLS is forced).
        assert!(
            parse(
                "postgres://app@db/certgate?sslmode=disable",
                "ca_file = \"ca.pem\""
            )
            .check()
            .is_ok()
        );
    }

    #[test]
    fn config_needs_both_client_files_and_a_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t: PgTlsConfig =
            toml::from_str("ca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"").expect("parses");
        assert!(t.check().is_err());
        assert!(toml::from_str::<PgTlsConfig>("mode = \"require\"\nca_file = \"x\"").is_err());
        let t: PgTlsConfig = toml::from_str("ca_file = \"ca.pem\"").expect("parses");
        let t = t.resolve(dir.path());
        assert_eq!(t.ca_file, dir.path().join("ca.pem"));
        // Missing and empty CA files are refused, not treated as "no roots".
        assert!(t.app_connector().is_err());
        std::fs::write(&t.ca_file, b"").expect("write");
        assert!(t.app_connector().is_err());
        let (c, key) = ca();
        std::fs::write(&t.ca_file, c.pem()).expect("write");
        assert!(t.app_connector().is_ok());
        // A client key that is not a key is refused.
        let cert = dir.path().join("c.pem");
        let bad = dir.path().join("k.pem");
        std::fs::write(&cert, c.pem()).expect("write");
        std::fs::write(&bad, c.pem()).expect("write");
        assert!(MakeRustls::new(&t.ca_file, Some((&cert, &bad))).is_err());
        std::fs::write(&bad, key.serialize_pem()).expect("write");
        assert!(MakeRustls::new(&t.ca_file, Some((&cert, &bad))).is_ok());
    }
}
