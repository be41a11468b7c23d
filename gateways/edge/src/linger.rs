//! Lingering close (the Apache/nginx `lingering_close` idea) for the TCP listeners.
//!
//! Why: when the edge answers before it has read the whole request (413 for an oversized
//! upload, a shed or a 404 with a body still coming, a header timeout), hyper closes an HTTP/1.1
//! connection after the response. Closing a socket whose receive buffer still holds unread
//! bytes — or that receives more of the upload afterwards — makes the kernel send a TCP RST,
//! and a client that is still writing its body then sees "connection reset" and never reads the
//! 413 already waiting in its buffer. So instead of dropping the socket, [`LingerIo`] hands it
//! to a small task that half-closes the write side (the client reads the response and then
//! EOF) and reads and discards what the client still sends until the client closes its side,
//! for at most [`LINGER_TIME`] and [`LINGER_BYTES`].
//!
//! Bounds (I-8): a lingering socket keeps its listener's connection permit until it is
//! released, so lingering connections count against `[limits] max_connections` like open ones
//! (an abusive client cannot park more sockets than the cap), and each lingers at most
//! [`LINGER_TIME`] and reads at most [`LINGER_BYTES`] into one fixed buffer. A connection whose
//! client already closed (EOF seen) or failed (read error) is dropped at once, as before.
//!
//! HTTP/2 keeps the connection: an early answer concerns only its stream. The server may reset
//! the stream with `RST_STREAM(NO_ERROR)` right after the response (RFC 9113 §8.1), but clients
//! still uploading do not all read the response then (curl 7.88 fails with "Stream error in the
//! HTTP/2 framing layer"), so [`DrainOnDrop`] first reads and discards the rest of the request
//! body in the background, within the same bounds; a client that sends more, or for longer, gets
//! the `RST_STREAM(NO_ERROR)` then. A stream being drained is still open for HTTP/2 (half-closed
//! on our side), so it keeps counting against the connection's concurrent-stream limit (128),
//! and its connection against `[limits] max_connections`; a drain ends at once when its
//! connection does. HTTP/3 stops the stream with `STOP_SENDING(H3_NO_ERROR)`
//! ([`crate::h3`], RFC 9114 §4.1), which QUIC clients handle.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// Longest a closed connection keeps reading what its client still sends. Long enough for a
/// client on a slow link to see the response and stop (it reads the response, then EOF, then
/// closes), short enough that a client that never stops holds its permit only briefly.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes discarded while lingering: well above every protocol's body limit (the rest of
/// one refused upload), small enough that lingering is not a free upload sink.
pub const LINGER_BYTES: usize = 1 << 20;

/// Lingering closes, by how they ended: `eof` (the client closed: the response was read),
/// `timeout` ([`LINGER_TIME`] passed), `bytes` ([`LINGER_BYTES`] discarded), `error`.
pub const LINGERING_CLOSES_TOTAL: &str = "certgate_edge_lingering_closes_total";

/// A TCP connection that, when dropped before its client closed, closes lingering (see the
/// module docs) and carries the listener's connection permit until it is really closed.
pub struct LingerIo {
    inner: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    /// The client's side ended (EOF or a read error): nothing is left to drain.
    read_done: bool,
}

impl LingerIo {
    /// Wraps an accepted connection; `permit` is released when the connection is closed
    /// (after lingering, if it lingers).
    pub fn new(stream: TcpStream, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            inner: Some(stream),
            permit,
            read_done: false,
        }
    }
}

impl AsyncRead for LingerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let r = Pin::new(s).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if had_room && buf.filled().len() == before => {
                this.read_done = true;
            }
            Poll::Ready(Err(_)) => this.read_done = true,
            _ => {}
        }
        r
    }
}

impl AsyncWrite for LingerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for LingerIo {
    fn drop(&mut self) {
        let (Some(stream), false) = (self.inner.take(), self.read_done) else {
            return;
        };
        // Dropped outside a runtime (process teardown): a plain close.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream, self.permit.take()));
        }
    }
}

/// Half-closes `stream` and discards what its client still sends, within the bounds; then
/// closes it and releases `permit`.
async fn linger(mut stream: TcpStream, permit: Option<OwnedSemaphorePermit>) {
    let _permit = permit;
    // Already done by hyper after the response was flushed (its shutdown); again is harmless
    // and covers connections that ended without one (a header timeout, a handshake failure).
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 8192];
    let mut left = LINGER_BYTES;
    let drain = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return "eof",
                Ok(n) if n >= left => return "bytes",
                Ok(n) => left -= n,
                Err(_) => return "error",
            }
        }
    };
    let end = tokio::time::timeout(LINGER_TIME, drain)
        .await
        .unwrap_or("timeout");
    ::metrics::counter!(LINGERING_CLOSES_TOTAL, "end" => end).increment(1);
    tracing::trace!(end, "lingering close done");
}

/// A request body that, dropped before its end (an early answer: 413, shed, not found), drains
/// the rest in a background task, at most [`LINGER_BYTES`] for at most [`LINGER_TIME`], when
/// `drain` is set (HTTP/2: the stream then ends cleanly instead of being reset while the client
/// still uploads). Unset, it is a plain pass-through.
pub struct DrainOnDrop<B: Body<Data = Bytes> + Unpin + Send + 'static> {
    inner: Option<B>,
    drain: bool,
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> DrainOnDrop<B> {
    /// Wraps `body`; `drain` for HTTP/2 request bodies.
    pub fn new(body: B, drain: bool) -> Self {
        Self {
            inner: Some(body),
            drain,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> Body for DrainOnDrop<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if !self.drain || body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain_body(body));
        }
    }
}

/// Reads `body` to its end and discards it, within the bounds; dropping it then (past the
/// bounds) resets an HTTP/2 stream with NO_ERROR.
async fn drain_body<B: Body<Data = Bytes> + Unpin>(mut body: B) {
    let mut left = LINGER_BYTES;
    let drain = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return "error";
            };
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n >= left {
                return "bytes";
            }
            left -= n;
        }
        "eof"
    };
    let end = tokio::time::timeout(LINGER_TIME, drain)
        .await
        .unwrap_or("timeout");
    ::metrics::counter!(DRAINED_BODIES_TOTAL, "end" => end).increment(1);
}

/// HTTP/2 request bodies drained after an early answer, by how the drain ended (`eof`: the
/// client finished its upload, the stream closed cleanly; `timeout`, `bytes`: reset with
/// NO_ERROR; `error`).
pub const DRAINED_BODIES_TOTAL: &str = "certgate_edge_drained_bodies_total";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn a_dropped_connection_with_unread_data_lets_the_client_read_the_answer() {
        let (mut client, server) = pair().await;
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().expect("permit");
        let mut io = LingerIo::new(server, Some(permit));
        // The client sends more than the server reads; the server answers and drops.
        client.write_all(&[b'x'; 64 * 1024]).await.expect("write");
        let mut head = [0u8; 10];
        io.read_exact(&mut head).await.expect("read some");
        io.write_all(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
            .await
            .expect("answer");
        io.flush().await.expect("flush");
        drop(io);
        // The permit is still held while the connection lingers.
        assert_eq!(sem.available_permits(), 0);
        // The client keeps writing (no reset while the server drains), then reads the answer.
        client.write_all(&[b'y'; 256 * 1024]).await.expect("write");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("no reset");
        assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
        drop(client);
        // The client closed: the linger ends and the permit comes back.
        let p = tokio::time::timeout(Duration::from_secs(30), sem.acquire())
            .await
            .expect("permit released");
        drop(p.expect("semaphore open"));
    }

    #[tokio::test]
    async fn a_connection_whose_client_closed_is_closed_at_once() {
        let (client, server) = pair().await;
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().expect("permit");
        let mut io = LingerIo::new(server, Some(permit));
        drop(client);
        let mut b = Vec::new();
        io.read_to_end(&mut b).await.expect("eof");
        drop(io);
        assert_eq!(sem.available_permits(), 1, "no linger after EOF");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_stops_is_cut_off_after_the_linger_time() {
        let (client, server) = pair().await;
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().expect("permit");
        drop(LingerIo::new(server, Some(permit)));
        // The client neither sends nor closes: the permit comes back after LINGER_TIME.
        let p = tokio::time::timeout(LINGER_TIME * 2, sem.acquire())
            .await
            .expect("released after the linger time");
        drop(p.expect("semaphore open"));
        drop(client);
    }
}
