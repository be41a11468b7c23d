//! Slowloris and idle-connection protection for the TCP listeners, without a timer per request.
//!
//! hyper's own `header_read_timeout` arms a boxed `Sleep` in the timer wheel each time a
//! keep-alive HTTP/1.1 connection starts waiting for a request head, and drops it (taking it out
//! of the wheel) when the head has arrived: a clock read, an allocation, a timer insert and a
//! timer removal per request, ~1,000 instructions of a cached OCSP GET's ~20,000. The edge
//! switches it off and keeps the same protection per *connection* instead:
//!
//! - [`Activity`] counts the connection's requests started, requests in service and response
//!   writes that made progress (the counts are a few relaxed atomic adds per request);
//! - one timer per connection ([`serve`]) wakes every half `header_timeout_ms`; when it finds,
//!   twice in a row, no request in service, no request started and no byte written since the
//!   previous look, the connection is closed. So a connection that sends no complete request
//!   head for between 1 and 1.5 × `header_timeout_ms` is closed — a client trickling a head
//!   byte by byte (slowloris), one that opens and sends nothing, and an idle keep-alive
//!   connection alike (hyper's timer closed the last two after exactly `header_timeout_ms`).
//!   A request in service is bounded by the request deadline instead, and a large response
//!   being read slowly keeps the connection as long as its writes progress (as before).
//!   HTTP/2 connections get the same idle bound (hyper's timer never covered them). A
//!   connection that served requests is closed gracefully (HTTP/2 GOAWAY, so a client about to
//!   reuse it retries on a new one) and dropped half a period later if still open; one that
//!   never completed a request is dropped at once.
//!
//! The timer and the listener's shutdown signal are polled only when they fire (their own
//! waker, [`SideWake`]), not on every wake of the connection's task: before, each request paid
//! for polling both (a watch channel's `Notified` and the `Sleep`) on each of its wake-ups.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// What a connection did, as its idle watchdog sees it.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests whose head arrived (HTTP/1.1) or streams opened (HTTP/2).
    started: AtomicU64,
    /// Requests being served now.
    in_service: AtomicUsize,
    /// Writes that sent at least one byte (a response going out).
    written: AtomicU64,
}

impl Activity {
    /// Counts a request in; the guard counts it out when the request's future ends (answered
    /// or dropped).
    pub(crate) fn begin(self: &Arc<Self>) -> InService {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_service.fetch_add(1, Ordering::Relaxed);
        InService(self.clone())
    }

    /// (requests in service, a number that changes whenever anything progressed).
    fn look(&self) -> (usize, u64) {
        (
            self.in_service.load(Ordering::Relaxed),
            self.started
                .load(Ordering::Relaxed)
                .wrapping_add(self.written.load(Ordering::Relaxed)),
        )
    }
}

/// One request in service (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct InService(Arc<Activity>);

impl Drop for InService {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's stream, counting writes that progressed into its [`Activity`].
pub(crate) struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r
            && *n > 0
        {
            // Only this connection's task writes: a load and a store, no locked add.
            let w = &self.activity.written;
            w.store(w.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The waker handed to the side futures (shutdown signal, idle timer): records that one of
/// them fired and wakes the connection's task, which then polls them.
#[derive(Default)]
struct SideWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// How a connection served by [`serve`] ended.
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// The connection future finished (the client closed, or after a graceful shutdown).
    Done(Result<(), E>),
    /// Closed by the idle watchdog (no complete request head in time, or idle keep-alive).
    Idle,
}

/// Drives `conn` to its end, calling `graceful` once when `shutdown` flips (finish the requests
/// in flight, accept no new ones) and closing it when [`Activity`] shows nothing for
/// `idle_after` (see the module docs; at most 1.5 × `idle_after`, plus half of it when a
/// connection that served requests does not end on its graceful close).
///
/// The shutdown is checked before the connection in the same poll, so a handler finishing in
/// the poll that sees the shutdown still answers with `connection: close` / after GOAWAY.
pub(crate) async fn serve<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl FnOnce(Pin<&mut C>),
    shutdown: &mut watch::Receiver<bool>,
    activity: &Activity,
    idle_after: Duration,
) -> Ended<E>
where
    C: Future<Output = Result<(), E>> + ?Sized,
{
    let period = (idle_after / 2).max(Duration::from_millis(1));
    let side = Arc::new(SideWake::default());
    // Poll both side futures once to register their waker.
    side.fired.store(true, Ordering::Relaxed);
    let side_waker = Waker::from(side.clone());
    let mut stop = Box::pin(crate::server::stopped(shutdown));
    let mut stopping = false;
    let mut graceful = Some(graceful);
    let mut tick = Box::pin(tokio::time::sleep(period));
    let mut watchdog = Watchdog::default();
    let mut closing = false;
    std::future::poll_fn(move |cx| {
        side.task.register(cx.waker());
        if side.fired.swap(false, Ordering::AcqRel) {
            let mut scx = Context::from_waker(&side_waker);
            if !stopping && stop.as_mut().poll(&mut scx).is_ready() {
                stopping = true;
                if let Some(g) = graceful.take() {
                    g(conn.as_mut());
                }
            }
            while tick.as_mut().poll(&mut scx).is_ready() {
                if closing {
                    // Asked to close a period ago and still open: drop it.
                    return Poll::Ready(Ended::Idle);
                }
                if watchdog.idle(activity.look()) {
                    match graceful.take() {
                        // A connection that served requests is closed politely (HTTP/2
                        // GOAWAY, so a client about to reuse it retries elsewhere; an idle
                        // HTTP/1.1 connection closes at once), then dropped if still open one
                        // period later (a head trickling in on a kept-alive connection).
                        Some(g) if activity.started.load(Ordering::Relaxed) > 0 => {
                            g(conn.as_mut());
                            closing = true;
                        }
                        // Never a request (slowloris on a fresh connection), or already
                        // shutting down: nothing to be polite to.
                        _ => return Poll::Ready(Ended::Idle),
                    }
                }
                // From now, not from the deadline: looks stay a period apart even after the
                // task was late (two looks in a row after a stall would see no progress).
                tick.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
        conn.as_mut().poll(cx).map(Ended::Done)
    })
    .await
}

/// The idle decision, one look per timer period (separate from the timer so a test can drive it).
#[derive(Debug, Default)]
struct Watchdog {
    last: u64,
    quiet: u32,
}

impl Watchdog {
    /// Takes one look at (requests in service, progress count); true once two looks in a row
    /// saw nothing in service and no progress since the look before.
    fn idle(&mut self, (in_service, progress): (usize, u64)) -> bool {
        if in_service == 0 && progress == self.last {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        self.last = progress;
        self.quiet >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_quiet_looks_in_a_row_close_and_any_progress_or_service_resets() {
        let a = Arc::new(Activity::default());
        let mut w = Watchdog::default();
        // A connection that never sends a head: closed on the second look.
        assert!(!w.idle(a.look()));
        assert!(w.idle(a.look()));

        let mut w = Watchdog::default();
        assert!(!w.idle(a.look()));
        // A request started and still in service: never idle, however long it runs.
        let req = a.begin();
        for _ in 0..5 {
            assert!(!w.idle(a.look()), "a request in service");
        }
        drop(req);
        // Answered: the next two quiet looks close (no new head arrived).
        assert!(!w.idle(a.look()));
        assert!(w.idle(a.look()));

        // Writes progressing (a large response read slowly) keep it open.
        let mut w = Watchdog::default();
        let io = Watched::new(tokio::io::sink(), a.clone());
        for _ in 0..5 {
            io.wrote(&Poll::Ready(Ok(10)));
            assert!(!w.idle(a.look()), "writes progressed");
        }
        // A write that sent nothing, or failed, is no progress.
        io.wrote(&Poll::Ready(Ok(0)));
        io.wrote(&Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())));
        assert!(!w.idle(a.look()));
        assert!(w.idle(a.look()));
    }

    /// A connection future that never finishes, counting its polls.
    struct Forever(Arc<AtomicUsize>);

    impl Future for Forever {
        type Output = Result<(), ()>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_between_one_and_one_and_a_half_timeouts() {
        let (_tx, mut rx) = watch::channel(false);
        let a = Arc::new(Activity::default());
        let polls = Arc::new(AtomicUsize::new(0));
        let mut conn = Forever(polls.clone());
        let start = tokio::time::Instant::now();
        let ended = serve(
            Pin::new(&mut conn),
            |_| panic!("no shutdown"),
            &mut rx,
            &a,
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(ended, Ended::Idle));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_secs(15),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_that_served_requests_is_closed_gracefully_first() {
        let (_tx, mut rx) = watch::channel(false);
        let a = Arc::new(Activity::default());
        drop(a.begin());
        let mut conn = Forever(Arc::new(AtomicUsize::new(0)));
        let graceful = Arc::new(AtomicBool::new(false));
        let g = graceful.clone();
        let start = tokio::time::Instant::now();
        let run = serve(
            Pin::new(&mut conn),
            move |_| g.store(true, Ordering::Relaxed),
            &mut rx,
            &a,
            Duration::from_secs(10),
        );
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("dropped before the graceful close had a chance"),
            _ = tokio::time::sleep(Duration::from_millis(15_500)) => {}
        }
        // The request counted as activity in the first period: idle from 5 s, closed at 15 s.
        assert!(
            graceful.load(Ordering::Relaxed),
            "graceful close within 1.5 timeouts"
        );
        // This connection ignores it: dropped one period later.
        assert!(matches!(run.await, Ended::Idle));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(15) && took <= Duration::from_millis(22_500),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_not_closed_and_shutdown_is_graceful() {
        let (tx, mut rx) = watch::channel(false);
        let a = Arc::new(Activity::default());
        let polls = Arc::new(AtomicUsize::new(0));
        let mut conn = Forever(polls.clone());
        let graceful = Arc::new(AtomicBool::new(false));
        let g = graceful.clone();
        let busy = a.begin();
        let run = serve(
            Pin::new(&mut conn),
            move |_| g.store(true, Ordering::Relaxed),
            &mut rx,
            &a,
            Duration::from_secs(10),
        );
        tokio::pin!(run);
        // A request in service for a minute: still open.
        tokio::select! {
            _ = &mut run => panic!("closed while a request is in service"),
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        assert!(!graceful.load(Ordering::Relaxed));
        tx.send(true).expect("receiver alive");
        tokio::select! {
            _ = &mut run => panic!("a graceful shutdown waits for the connection"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        assert!(graceful.load(Ordering::Relaxed), "graceful shutdown called");
        // The request ends; nothing else happens: the watchdog closes it.
        drop(busy);
        assert!(matches!(run.await, Ended::Idle));
    }
}
