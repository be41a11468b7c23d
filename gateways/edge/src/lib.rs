//! certgate-edge: the stateless front of the fleet.
//!
//! It terminates client protocols on an HTTPS and a plain HTTP listener, routes each request by
//! tenant and path to a protocol handler ([`router`]), and reaches the core — never the signer —
//! over gRPC ([`core_client`]). It holds no durable state: CA certificates (and later OCSP
//! responses and CRLs) are cached edge-locally and can always be fetched again. An admin listener
//! serves health and Prometheus metrics.

pub mod acme;
pub mod admin;
pub mod bulkhead;
pub mod ca;
pub mod cmp;
pub mod config;
pub mod core_client;
pub mod core_pool;
pub mod error;
pub mod est;
pub mod h3;
pub mod linger;
pub mod metrics;
pub mod permits;
pub mod profile_policy;
pub mod ratelimit;
pub mod router;
pub mod scep;
pub mod server;
pub mod shared;
pub mod status;
pub mod tenant;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::EdgeConfig;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The ACME nonce key.
    #[error(transparent)]
    NonceKey(#[from] acme::NonceKeyError),
    /// The ACME handler could not be built.
    #[error("ACME: {0}")]
    Acme(String),
    /// The CMP handler could not be built (trust anchors).
    #[error("CMP: {0}")]
    Cmp(String),
    /// Metrics recorder.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The HTTP/3 listener (`[listen] http3`).
    #[error(transparent)]
    Http3(#[from] crate::h3::H3Error),
    /// The Redis client for the fleet's shared state (`[redis]`).
    #[error(transparent)]
    Shared(#[from] shared::SharedError),
    /// The plain HTTP listener's serving threads (`[listen] http_threads`).
    #[error("cannot start the HTTP serving threads: {0}")]
    Workers(std::io::Error),
}

/// Binds every listener and serves until `shutdown` flips to true.
pub async fn run(cfg: EdgeConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), StartError> {
    let cert = std::fs::read(&cfg.tls.cert)
        .map_err(|e| StartError::Tls(format!("{}: {e}", cfg.tls.cert.display())))?;
    let key = std::fs::read(&cfg.tls.key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", cfg.tls.key.display())))?;
    let client_anchors = cfg.est.client_anchors().map_err(StartError::Tls)?;
    let tls = TlsAcceptor::from(Arc::new(
        server::tls_config_with_client_anchors(&cert, &key, &client_anchors)
            .map_err(StartError::Tls)?,
    ));
    let handle = metrics::install()?;

    // The cores: one Unix socket (the embedded default) or a balanced, health-checked list with
    // mTLS to remote cores (core_pool.rs).
    let core_tls = match &cfg.core_tls {
        Some(t) => Some(
            core_pool::CoreTls::from_files(&t.cert, &t.key, &t.ca, &t.core_spiffe_ids)
                .map_err(|e| StartError::Tls(e.to_string()))?,
        ),
        None => None,
    };
    let pool =
        core_pool::CorePool::new(cfg.core_endpoints(), core_tls.as_ref(), cfg.pool_settings())
            .map_err(|e| StartError::Tls(e.to_string()))?;
    tokio::spawn(pool.clone().run_health_checks(shutdown.clone()));
    let core = core_client::CoreClient::from_pool(pool, cfg.core_deadline());
    let ctx = router::EdgeContext {
        core: core.clone(),
        ca: ca::CaCerts::new(
            cfg.cache.ca_max_entries,
            Duration::from_secs(cfg.cache.ca_ttl_seconds),
        ),
    };
    let tenants = tenant::TenantDirectory::new(core.clone(), &cfg.tenants);
    let status_cache = status::StatusCache::new(&cfg.status_settings());
    let status_watch = tokio::spawn(status::watch::run(
        status_cache.clone(),
        core.clone(),
        cfg.watch_settings(),
        shutdown.clone(),
    ));
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let https = bind(cfg.listen.https).await?;
    // HTTP/3 on UDP at the HTTPS listener's (bound) port number, advertised by Alt-Svc.
    let quic = if cfg.listen.http3 {
        let addr = https.local_addr().unwrap_or(cfg.listen.https);
        let quic_tls = server::tls_config_with_client_anchors(&cert, &key, &client_anchors)
            .map_err(StartError::Tls)?;
        let endpoint = crate::h3::bind(addr, crate::h3::server_config(quic_tls, &cfg.http3)?)?;
        let alt_svc = crate::h3::alt_svc_value(addr.port(), cfg.http3.alt_svc_max_age_seconds);
        Some((endpoint, alt_svc))
    } else {
        None
    };
    let http = bind(cfg.listen.http).await?;
    let admin = bind(cfg.listen.admin).await?;

    let nonce_key = acme::load_nonce_key(&cfg.acme)?;
    // Fleet state in Redis when `[redis]` is configured; in process otherwise.
    let (limiter, nonce_store): (
        Arc<dyn ratelimit::RateLimiter>,
        Arc<dyn certgate_acme::nonce::NonceStore>,
    ) = match &cfg.redis {
        Some(rc) => {
            let pool = shared::RedisPool::new(rc)?;
            if rc.ocsp_tier {
                status_cache.set_shared_tier(shared::redis_ocsp::OcspTier::new(
                    pool.clone(),
                    rc.ocsp_max_value_bytes,
                    rc.ocsp_max_ttl_seconds,
                ));
            }
            info!(prefix = pool.prefix(), fallback = ?rc.rate_limit_fallback, ocsp_tier = rc.ocsp_tier, "shared edge state in Redis");
            (
                Arc::new(shared::redis_ratelimit::RedisLimiter::new(
                    pool.clone(),
                    cfg.rate_limits.clone(),
                    rc.rate_limit_fallback,
                )),
                Arc::new(shared::redis_nonce::RedisNonceStore::new(
                    pool,
                    rc.nonce_clock_skew_seconds,
                )),
            )
        }
        None => (
            Arc::new(ratelimit::GovernorLimiter::new(cfg.rate_limits.clone())),
            Arc::new(certgate_acme::nonce::MemoryNonceStore::new(
                cfg.acme.nonce_store_capacity,
            )),
        ),
    };
    let acme_handler = Arc::new(
        acme::AcmeHandler::new(
            cfg.acme.clone(),
            &nonce_key,
            nonce_store,
            tenants.clone(),
            limiter,
        )
        .map_err(|e| StartError::Acme(e.to_string()))?,
    );
    drop(nonce_key);
    let cmp_handler =
        Arc::new(cmp::CmpHandler::new(&cfg.cmp).map_err(|e| StartError::Cmp(e.to_string()))?);
    let est_handler = Arc::new(
        est::EstHandler::new(
            cfg.est
                .settings()
                .map_err(|e| StartError::Config(config::ConfigError::Invalid(e)))?,
        )
        .with_key_signer(est::key_signer(&cert, &key)),
    );
    let scep_handler = Arc::new(scep::ScepHandler::with_config(&cfg.scep));
    let pipeline = |_: ()| {
        Arc::new(server::Pipeline {
            router: scep::mount(
                est::mount(
                    cmp::mount(
                        acme::mount(
                            status::handler::mount(router::Router::standard(), &status_cache),
                            acme_handler.clone(),
                        ),
                        cmp_handler.clone(),
                    ),
                    est_handler.clone(),
                ),
                scep_handler.clone(),
            ),
            ctx: ctx.clone(),
            limits: cfg.limits.clone(),
            in_flight: permits::Permits::new(cfg.limits.max_in_flight),
            guard: server::Guard {
                bulkheads: bulkhead::Bulkheads::new(cfg.bulkheads.clone()),
                tenant_config: cfg.tenants.clone(),
                tenants: Some(tenants.clone()),
            },
        })
    };
    let alt_svc = quic.as_ref().map(|(_, v)| v.clone());
    let http_workers = match cfg.listen.http_threads {
        Some(0) => None,
        n => Some(Arc::new(
            workers::HttpWorkers::start(workers::thread_count(n)).map_err(StartError::Workers)?,
        )),
    };
    // HTTP/3 shares the HTTPS listener's pipeline: one set of in-flight cap and bulkheads for
    // the same routes, whichever transport a request came over.
    let https_pipeline = pipeline(());
    let mut tasks = vec![
        status_watch,
        tokio::spawn(metrics::upkeep(handle.clone(), shutdown.clone())),
        tokio::spawn(server::serve_listener_with(
            https,
            router::Listener::Https,
            Some(tls),
            https_pipeline.clone(),
            shutdown.clone(),
            alt_svc,
        )),
        match &http_workers {
            // One single-threaded runtime per core for the plain listener (workers.rs).
            Some(w) => {
                let (w, p, s) = (w.clone(), pipeline(()), shutdown.clone());
                tokio::spawn(async move { w.serve(http, router::Listener::Http, p, s).await })
            }
            None => tokio::spawn(server::serve_listener(
                http,
                router::Listener::Http,
                None,
                pipeline(()),
                shutdown.clone(),
            )),
        },
        tokio::spawn(admin::serve_admin(
            admin,
            Arc::new(admin::Admin {
                metrics: handle,
                core,
            }),
            shutdown.clone(),
        )),
    ];
    if let Some((endpoint, _)) = quic {
        tasks.push(tokio::spawn(crate::h3::serve_h3(
            endpoint,
            cfg.http3.clone(),
            https_pipeline,
            shutdown.clone(),
        )));
    }
    let http_threads = http_workers.as_ref().map_or(0, |w| w.threads());
    info!(
        https = %cfg.listen.https,
        http3 = cfg.listen.http3,
        http = %cfg.listen.http,
        http_threads = http_threads,
        admin = %cfg.listen.admin,
        cores = ?cfg
            .core_endpoints()
            .iter()
            .map(core_pool::CoreEndpoint::label)
            .collect::<Vec<_>>(),
        "certgate-edge ready"
    );
    let _ = crate::server::stopped(&mut shutdown).await;
    // Listeners stop accepting and drain their connections; the admin listener stops at once.
    let _ = tokio::time::timeout(
        server::DRAIN + Duration::from_secs(1),
        futures::future::join_all(tasks),
    )
    .await;
    // The serving threads end once every listener has drained (they may drive connections the
    // other listeners used).
    drop(http_workers);
    info!("certgate-edge stopped");
    Ok(())
}
