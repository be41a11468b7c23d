//! Start-up: open the key stores and the audit log, bind the listeners, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use certgate_proto::signer::decrypter_server::DecrypterServer;
use certgate_proto::signer::signer_server::SignerServer;
use certgate_proto::transport::{bind_unix, server_tls_config, tls_incoming, unix_incoming};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::keystore::pkcs11::Pkcs11Store;
use crate::keystore::sealed::SealedStore;
use crate::keystore::{KeyStore, Keyring};
use crate::service::SignerService;

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Longest any RPC may take (RSA-4096 generation on a slow machine included).
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// A running signer.
pub struct Running {
    /// The Unix socket it serves on.
    pub socket: PathBuf,
    /// The TCP + mTLS address it serves on, if configured (the real port when 0 was asked).
    pub tls_addr: Option<SocketAddr>,
    /// The keys it holds.
    pub keys: Arc<Keyring>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Running {
    /// Stops serving and waits for the listeners to close.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await.context("server task")??;
        }
        Ok(())
    }

    /// Waits until a listener fails (it never stops on its own).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let (res, _, rest) = futures::future::select_all(self.tasks.drain(..)).await;
        let _ = self.stop.send(true);
        for t in rest {
            t.abort();
        }
        res.context("server task")??;
        Ok(())
    }
}

/// Opens every key store named by the configuration.
pub fn open_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let mut stores: Vec<Box<dyn KeyStore>> = Vec::new();
    let sealed = SealedStore::open(&config.key_dir, config.kek()?)
        .with_context(|| format!("sealed key store {}", config.key_dir.display()))?;
    stores.push(Box::new(sealed));
    if let Some(p11) = &config.pkcs11 {
        let pin = config.pkcs11_pin()?.context("pkcs11 PIN")?;
        let store = Pkcs11Store::open(p11, &pin, &config.key_dir, config.kek()?)
            .with_context(|| format!("pkcs11 token {:?}", p11.token_label))?;
        stores.push(Box::new(store));
    }
    Ok(Keyring::new(stores)?)
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn builder() -> Server {
    Server::builder()
        .timeout(RPC_TIMEOUT)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .tcp_nodelay(true)
}

/// Opens the stores and the audit log, binds the listeners and starts serving in the
/// background. Only the signer's gRPC service is routed: there is no other HTTP route.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let keys = Arc::new(open_keyring(config)?);
    let audit = Arc::new(
        AuditLog::open(&config.audit_log)
            .with_context(|| format!("audit log {}", config.audit_log.display()))?,
    );
    let service = SignerService::new(
        keys.clone(),
        audit,
        config.allow_list()?,
        config.admin_allow_list()?,
        config.limits,
    );
    if config.allow_list()?.is_empty() {
        tracing::warn!("the allow-list is empty: every call will be refused");
    }
    let grpc = || {
        SignerServer::new(service.clone())
            .max_decoding_message_size(config.limits.max_request_bytes)
    };
    let decrypter = || {
        DecrypterServer::new(service.clone())
            .max_decoding_message_size(config.limits.max_request_bytes)
    };
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let listener = bind_unix(&config.socket)
        .with_context(|| format!("unix socket {}", config.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &config.socket,
            std::fs::Permissions::from_mode(config.socket_mode()?),
        )?;
    }
    let svc = grpc();
    let dec = decrypter();
    let signal = shutdown_signal(rx.clone());
    tasks.push(tokio::spawn(async move {
        builder()
            .add_service(svc)
            .add_service(dec)
            .serve_with_incoming_shutdown(unix_incoming(listener), signal)
            .await
    }));

    let mut tls_addr = None;
    if let Some(tls) = &config.tls {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| p.display().to_string());
        config.check_private(&tls.key)?;
        let key_pem = zeroize::Zeroizing::new(read(&tls.key)?);
        let server_config = server_tls_config(&read(&tls.cert)?, &key_pem, &read(&tls.client_ca)?)
            .context("TLS configuration")?;
        let listener = tokio::net::TcpListener::bind(tls.listen)
            .await
            .with_context(|| format!("TLS listener {}", tls.listen))?;
        tls_addr = Some(listener.local_addr()?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let svc = grpc();
        let dec = decrypter();
        let signal = shutdown_signal(rx.clone());
        tasks.push(tokio::spawn(async move {
            builder()
                .add_service(svc)
                .add_service(dec)
                .serve_with_incoming_shutdown(tls_incoming(listener, acceptor), signal)
                .await
        }));
    }
    tracing::info!(
        socket = %config.socket.display(),
        tls = ?tls_addr,
        keys = keys.list(None).len(),
        mode = ?config.mode,
        "certgate-signer ready"
    );
    Ok(Running {
        socket: config.socket.clone(),
        tls_addr,
        keys,
        stop,
        tasks,
    })
}
