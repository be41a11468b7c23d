//! `certgate-core`: serves `Core` and `Admin` on a Unix socket (and optionally TCP + mTLS).
//!
//! ```text
//! certgate-core --config FILE                 serve
//! certgate-core audit-verify --config FILE    verify the audit chain offline (read-only)
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certgate_core::ca::Authority;
use certgate_core::config::{Config, Mode};
use certgate_core::issue::{Fault, Issuer};
use certgate_core::service::{AdminService, CoreService, State, verify_store};
use certgate_core::signer_client::Signer;
use certgate_core::store::status::StatusStore;
use certgate_core::store::{PgStore, SqliteStore, Store};
use certgate_proto::acme::acme_server::AcmeServer;
use certgate_proto::admin::admin_server::AdminServer;
use certgate_proto::cmp::cmp_admin_server::CmpAdminServer;
use certgate_proto::cmp::cmp_server::CmpServer;
use certgate_proto::core::core_server::CoreServer;
use certgate_proto::scep::scep_admin_server::ScepAdminServer;
use certgate_proto::scep::scep_server::ScepServer;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "certgate-core",
    about = "certgate core: issuance, profiles, CAs, audit"
)]
struct Cli {
    /// Configuration file (TOML, docs/core.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Verify the audit chain in the store, read-only; prints OK or the first bad record.
    AuditVerify,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Some(config_path) = cli.config else {
        eprintln!("certgate-core: --config FILE is required");
        return std::process::ExitCode::from(2);
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config_path),
        Command::AuditVerify => audit_verify(config_path),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certgate-core: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn audit_verify(path: PathBuf) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&path)?;
    let store: Box<dyn Store> = match &config.postgres {
        Some(pg) => Box::new(PgStore::connect(pg).context("connecting to PostgreSQL")?),
        None => Box::new(SqliteStore::open_read_only(&config.store).context("opening the store")?),
    };
    let v = verify_store(store.as_ref(), config.audit_key_sha256.as_deref())?;
    if v.ok {
        let key = store
            .meta_get(certgate_core::tasks::META_AUDIT_KEY)?
            .and_then(|h| hex::decode(h).ok())
            .map(|k| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k)))
            .unwrap_or_else(|| "none yet".into());
        println!("OK {} records (audit key sha256 {key})", v.records);
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("BAD record {}: {}", v.first_bad_seq, v.error);
        Ok(std::process::ExitCode::FAILURE)
    }
}

fn serve(path: PathBuf) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&path)?;
    let fault = Fault::from_env().map_err(anyhow::Error::msg)?;
    if fault != Fault::None && config.mode == Mode::Production {
        anyhow::bail!(
            "CERTGATE_FAULT is a dev-only test hook; refusing to start in production mode"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config, fault))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(config: Config, fault: Fault) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // SQLite by default; `[store] backend = "postgres"` shares one database between cores
    // (docs/postgres.md).
    let (store, status_store): (Arc<dyn Store>, Arc<dyn StatusStore>) = match &config.postgres {
        Some(pg) => {
            let pg = Arc::new(PgStore::connect(pg).context("connecting to PostgreSQL")?);
            (pg.clone(), pg)
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&config.store).context("opening the store")?);
            (sqlite.clone(), sqlite)
        }
    };
    let signer = Signer::connect(
        &config.signer,
        Duration::from_millis(config.limits.signer_timeout_ms),
    )?;
    let state = Arc::new(State {
        store: store.clone(),
        issuer: Issuer::new(
            store.clone(),
            signer.clone(),
            config.limits.max_in_flight_issue,
            fault,
        ),
        authority: Authority::new(
            store.clone(),
            signer.clone(),
            config.custodians.clone(),
            config.quorum,
        ),
        allow: config.allow.clone(),
        admin_allow: config.admin_allow.clone(),
        audit_key_sha256: config.audit_key_sha256.clone(),
    });
    let status = certgate_core::status::StatusEngine::new(
        store.clone(),
        status_store,
        signer.clone(),
        config.status.clone(),
    )?;
    status.spawn();
    state.issuer.attach_status(status);
    tokio::spawn(certgate_core::tasks::run_audit_loop(
        store.clone(),
        signer.clone(),
        config.audit_key_id.clone(),
        config.signer_audit_log.clone(),
        Duration::from_millis(config.audit_sign_interval_ms),
        Duration::from_millis(config.audit_ingest_interval_ms),
    ));

    let acme = Arc::new(certgate_core::acme::service::AcmeState::new(
        state.clone(),
        config.acme.clone(),
    ));
    state
        .issuer
        .attach_cmp_confirm_window(config.cmp.confirm_window_seconds);
    state.issuer.attach_approval(config.approval.clone());
    let cmp = Arc::new(certgate_core::cmp::CmpState::new(
        state.clone(),
        signer.clone(),
        config.cmp.clone(),
    ));
    tokio::spawn(cmp.clone().run_sweep());
    let scep = Arc::new(certgate_core::scep::ScepState::new(
        state.clone(),
        signer.clone(),
    ));
    let max = config.limits.max_message_bytes;
    // gRPC health (grpc.health.v1): edges probe it to balance across cores and eject dead ones;
    // Kubernetes grpc probes can use it too. SERVING once every service is mounted.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoreServer<CoreService>>()
        .await;
    let router = |state: &Arc<State>| {
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.limits.max_concurrent_per_connection)
            .max_concurrent_streams(Some(256))
            .timeout(Duration::from_secs(120))
            .add_service(health_service.clone())
            .add_service(
                CoreServer::new(CoreService(state.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                AdminServer::new(AdminService(state.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(64 * 1024 * 1024),
            )
            .add_service(
                AcmeServer::new(certgate_core::acme::AcmeService(acme.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                CmpServer::new(certgate_core::cmp::CmpService(cmp.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                CmpAdminServer::new(certgate_core::cmp::CmpAdminService(cmp.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                ScepServer::new(certgate_core::scep::ScepService(scep.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                ScepAdminServer::new(certgate_core::scep::ScepAdminService(scep.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                certgate_proto::core::pending_server::PendingServer::new(
                    certgate_core::approval::PendingService(state.clone()),
                )
                .max_decoding_message_size(max)
                .max_encoding_message_size(16 * 1024 * 1024),
            )
            .add_service(
                certgate_proto::admin::request_admin_server::RequestAdminServer::new(
                    certgate_core::approval::RequestAdminService(state.clone()),
                )
                .max_decoding_message_size(max)
                .max_encoding_message_size(16 * 1024 * 1024),
            )
    };

    let listener = certgate_proto::transport::bind_unix(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    {
        let mut rx = stop_rx.clone();
        let server = router(&state).serve_with_incoming_shutdown(
            certgate_proto::transport::unix_incoming(listener),
            async move {
                let _ = rx.changed().await;
            },
        );
        servers.push(tokio::spawn(server));
    }
    let mut tls_addr = None;
    if let Some(tls) = &config.tls {
        // Fleet mTLS: client certificates required, chained to client_ca, SPIFFE ID allow-listed
        // at the handshake (core/src/tls_listener.rs).
        let server_config = certgate_core::tls_listener::server_config(
            &std::fs::read(&tls.cert).context("TLS cert")?,
            &zeroize::Zeroizing::new(std::fs::read(&tls.key).context("TLS key")?),
            &std::fs::read(&tls.client_ca).context("TLS client CA")?,
            tls.allow.clone(),
        )?;
        let tcp = tokio::net::TcpListener::bind(tls.listen).await?;
        tls_addr = Some(tcp.local_addr()?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let mut rx = stop_rx.clone();
        let server = router(&state).serve_with_incoming_shutdown(
            certgate_core::tls_listener::incoming(tcp, acceptor),
            async move {
                let _ = rx.changed().await;
            },
        );
        servers.push(tokio::spawn(server));
    }
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics_listen {
        let handle = certgate_core::metrics_http::install().map_err(anyhow::Error::msg)?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics_listen {addr}"))?;
        metrics_addr = Some(tcp.local_addr()?);
        tokio::spawn(certgate_core::metrics_http::serve(
            tcp,
            handle,
            stop_rx.clone(),
        ));
    }
    tracing::info!(
        socket = %config.socket.display(),
        tls = ?tls_addr,
        metrics = ?metrics_addr,
        mode = ?config.mode,
        "certgate-core ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        // Opt-in (CERTGATE_PARENT_PID): a SIGKILLed `certgate up` must not leave us running.
        _ = certgate_proto::parent::parent_gone() => {},
    }
    tracing::info!("certgate-core stopping");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    // Sign what is pending so a clean stop leaves a fully signed chain (best effort).
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        certgate_core::tasks::sign_pending(store.as_ref(), &signer, &config.audit_key_id),
    )
    .await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
