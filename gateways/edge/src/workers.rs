//! The plain HTTP listener's connections served on one single-threaded (`current_thread`) tokio
//! runtime per CPU core (`[listen] http_threads`), instead of the shared work-stealing runtime.
//!
//! Why: OCSP GETs are tiny keep-alive requests, so per request the work-stealing scheduler's
//! overhead dominates — an I/O event is picked up by whichever worker is parked in the driver, the
//! connection's task may run on the other core, idle workers are unparked with a futex syscall.
//! With one runtime per core a connection lives on one thread from accept to close: the thread
//! that reads the request writes the response, with no cross-thread wake-up (nginx's model: one
//! event loop per core).
//!
//! Why one acceptor instead of one `SO_REUSEPORT` socket per runtime: the connection cap stays
//! exactly what [`crate::server`] enforces (one shared semaphore, acquired *before* `accept`, so
//! excess connections wait in the kernel backlog); with a socket per runtime the permit would be
//! held by one runtime's accept loop while the kernel queues a connection on another's, and a
//! second edge started on the same port by mistake would silently take half the traffic instead
//! of failing to bind. Accepting costs nothing per request on keep-alive connections: the
//! acceptor (on the caller's runtime) hands each accepted socket to the runtime holding the
//! fewest open connections, over a bounded channel.
//!
//! Shutdown is the listener's: the acceptor stops accepting, every connection finishes its
//! requests (HTTP/1.1 closes after the response, HTTP/2 sends GOAWAY) for up to
//! [`crate::server::DRAIN`]; the runtimes stay up until [`HttpWorkers`] is dropped (after the
//! whole edge has drained), because tasks or connections they created (a Redis connection's
//! driver, a cache-miss fetch) may serve the other listeners too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, warn};

use crate::metrics;
use crate::router::Listener;
use crate::server::{DRAIN, Pipeline, idle, stopped};

/// Accepted connections queued per runtime before the acceptor waits (each already holds a
/// connection permit, so this only bounds the hand-off, I-8).
const HANDOFF_QUEUE: usize = 64;

/// One accepted connection on its way to a runtime.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    pipeline: Arc<Pipeline>,
    which: Listener,
    shutdown: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
}

struct Worker {
    tx: mpsc::Sender<Handoff>,
    /// Connections this runtime serves now (the acceptor picks the smallest).
    open: Arc<AtomicUsize>,
}

/// The serving threads: one `current_thread` runtime each. Dropping this lets them end (after
/// their connections have ended).
pub struct HttpWorkers {
    workers: Vec<Worker>,
    release: watch::Sender<bool>,
}

/// How many serving threads `[listen] http_threads` asks for: `None` = one per CPU core.
pub fn thread_count(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl HttpWorkers {
    /// Starts `threads` (at least one) serving threads, named `certgate-http-{i}`.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (release, released) = watch::channel(false);
        let mut workers = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::channel::<Handoff>(HANDOFF_QUEUE);
            let mut released = released.clone();
            std::thread::Builder::new()
                .name(format!("certgate-http-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        while let Some(h) = rx.recv().await {
                            serve(h);
                        }
                        let _ = released.wait_for(|r| *r).await;
                    });
                })?;
            workers.push(Worker {
                tx,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Self { workers, release })
    }

    /// Accepts connections on `tcp` until `shutdown` flips, each served on the runtime with the
    /// fewest open connections, then drains like [`crate::server::serve_listener`]: open
    /// connections get [`DRAIN`] to finish. Plain HTTP only (HTTP/1.1 and h2c).
    pub async fn serve(
        &self,
        tcp: TcpListener,
        which: Listener,
        pipeline: Arc<Pipeline>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let conns = Arc::new(Semaphore::new(pipeline.limits.max_connections));
        let mut next = 0usize;
        loop {
            let permit = tokio::select! {
                p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stopped(&mut shutdown) => break,
            };
            let (stream, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(listener = "http", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            let _ = stream.set_nodelay(true);
            // Out of this runtime's reactor, into the chosen one's (`from_std` over there).
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "cannot hand the connection over");
                    continue;
                }
            };
            // Fewest open connections; ties go round-robin.
            let n = self.workers.len();
            let w = (0..n)
                .map(|k| &self.workers[(next + k) % n])
                .min_by_key(|w| w.open.load(Ordering::Relaxed))
                .unwrap_or(&self.workers[0]);
            next = next.wrapping_add(1);
            w.open.fetch_add(1, Ordering::Relaxed);
            let h = Handoff {
                stream,
                peer,
                permit,
                pipeline: pipeline.clone(),
                which,
                shutdown: shutdown.clone(),
                open: w.open.clone(),
            };
            if let Err(mpsc::error::SendError(h)) = w.tx.send(h).await {
                // The thread is gone (it panicked): the connection is closed here.
                h.open.fetch_sub(1, Ordering::Relaxed);
                warn!(%peer, "HTTP serving thread gone; connection dropped");
            }
        }
        // Stop accepting (the listener closes here), then give open connections DRAIN to finish.
        drop(tcp);
        let all = u32::try_from(pipeline.limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(DRAIN, conns.acquire_many(all)).await;
    }

    /// Serving threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }
}

impl Drop for HttpWorkers {
    fn drop(&mut self) {
        let _ = self.release.send(true);
    }
}

/// Serves one handed-over connection on the current (worker) runtime.
fn serve(h: Handoff) {
    let Handoff {
        stream,
        peer,
        permit,
        pipeline,
        which,
        mut shutdown,
        open,
    } = h;
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            open.fetch_sub(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let label = match which {
        Listener::Https => "https",
        Listener::Http => "http",
    };
    tokio::spawn(async move {
        // The permit travels with the socket (a lingering close keeps it, linger.rs).
        let stream = crate::linger::LingerIo::new(stream, Some(permit));
        let _open = OpenGuard(open);
        ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => label).increment(1.0);
        let b = crate::server::builder(&pipeline.limits);
        let activity = Arc::new(idle::Activity::default());
        let idle_after = Duration::from_millis(pipeline.limits.header_timeout_ms);
        let act = activity.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = act.begin();
            let pipeline = pipeline.clone();
            async move {
                let _busy = busy;
                let version = req.version();
                // HTTP/2 bodies left unread by an early answer are drained (linger.rs).
                let h2 = version == http::Version::HTTP_2;
                let req = req.map(|b| crate::linger::DrainOnDrop::new(b, h2));
                let resp = pipeline.serve(which, peer, req).await;
                metrics::record_http_version(version, label, resp.status());
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let stream = idle::Watched::new(stream, activity.clone());
        let conn = b.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        // Shutdown first: when the shutdown and a finished handler wake this task in the same
        // poll, the response must still go out with `connection: close`. On shutdown: finish
        // the requests in flight, accept no new ones on this connection. Idle (no request head
        // within `header_timeout_ms`): closed.
        match idle::serve(
            conn.as_mut(),
            |c| c.graceful_shutdown(),
            &mut shutdown,
            &activity,
            idle_after,
        )
        .await
        {
            idle::Ended::Done(Err(e)) => {
                debug!(listener = label, %peer, error = %e, "connection ended with an error");
            }
            idle::Ended::Done(Ok(())) => {}
            idle::Ended::Idle => debug!(listener = label, %peer, "closed: no request head in time"),
        }
        ::metrics::gauge!(metrics::CONNECTIONS_OPEN, "listener" => label).decrement(1.0);
    });
}

/// Counts a connection out of its runtime's open count however its task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
