//! The core's optional Prometheus listener (`metrics_listen`): `GET /metrics` in the text format,
//! `GET /healthz` → 200. Plain HTTP/1.1 on an operator-chosen (loopback or private) address; it
//! carries counters and never secrets. Connections are bounded (I-8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most scrape connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Installs the global metrics recorder (once per process); its handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!(
        crate::tls_listener::TLS_REFUSED_TOTAL,
        "Fleet mTLS connections refused at the handshake, by reason"
    );
    metrics::describe_counter!(
        crate::tls_listener::TLS_ADMITTED_TOTAL,
        "Fleet mTLS connections admitted"
    );
    Ok(handle)
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let handle = Arc::new(handle);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // over the bound: drop the connection
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let handle = handle.clone();
                async move {
                    let (status, body) = match (req.method(), req.uri().path()) {
                        (&hyper::Method::GET, "/metrics") => (200, handle.render()),
                        (&hyper::Method::GET, "/healthz") => (200, "ok\n".to_owned()),
                        _ => (404, "not found\n".to_owned()),
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() =
                        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
