//! The admin listener: `/healthz` (the process is up), `/readyz` (the core answers), `/metrics`
//! (Prometheus text). Plain HTTP on loopback by default; it serves nothing a client could use to
//! change state.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certgate_proto::ErrorKind;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::core_client::CoreClient;
use crate::error::{EdgeError, EdgeResponse};
use crate::tenant::DEFAULT_TENANT;

/// Admin connections at once (it is for probes and scrapers, not clients).
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// State behind the admin endpoints.
pub struct Admin {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Probed by `/readyz`.
    pub core: CoreClient,
}

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> EdgeResponse {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

impl Admin {
    /// Whether the core answers at all: any answer except "unavailable" means it is reachable
    /// (a fresh fleet may have no CA yet and answer NOT_FOUND, which is still ready).
    pub async fn core_ready(&self) -> bool {
        match self.core.ca_chain(DEFAULT_TENANT, "").await {
            Ok(_) => true,
            Err(e) => e.kind != ErrorKind::Unavailable,
        }
    }

    async fn serve(&self, req: Request<Incoming>) -> EdgeResponse {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return EdgeError::MethodNotAllowed.into_response();
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
            "/readyz" => {
                if self.core_ready().await {
                    text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "core unreachable\n",
                        "text/plain; charset=utf-8",
                    )
                }
            }
            "/metrics" => text(
                StatusCode::OK,
                crate::metrics::render(&self.metrics),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            _ => EdgeError::NotFound.into_response(),
        }
    }
}

/// Serves the admin endpoints on `tcp` until `shutdown` flips.
pub async fn serve_admin(tcp: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    let conns = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let stream = tokio::select! {
            r = tcp.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.serve(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
