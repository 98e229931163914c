//! A client's plaintext connection as the proxy's own HTTP/1.1 server holds it, and what is
//! handed on from it: a request body read straight from it while the request is forwarded, and
//! the raw stream after an upgrade. Kept apart from the server (`downstream`) so that the body
//! and handler modules can name these types without depending on the server, which depends on
//! them.
//!
//! Writes to a client are bounded by the app's `send_timeout_ms`, as nginx's `send_timeout`: a
//! client that reads nothing of its response for that long is cut, and the backend connection
//! feeding the response is closed with it, instead of both being held forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::http1::{poll_fill_buf, BodyReader, Source};

/// A client connection's read buffer: enough for most request heads. It is taken when the socket
/// has something to read and given back when the connection goes idle ([`ClientConn::release`]),
/// so an idle keep-alive connection, the most common kind, holds no buffer at all (nginx does the
/// same with its `client_header_buffer_size`).
pub(crate) const CLIENT_READ_CHUNK: usize = 4096;

/// A write to a client made no progress for the app's `send_timeout_ms`: the client is not
/// reading its response. The error inside the `io::Error` (of kind `TimedOut`) such a write fails
/// with.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing of its response for {} ms", limit.as_millis())]
pub(crate) struct SendTimedOut {
    pub limit: Duration,
}

impl SendTimedOut {
    fn error(limit: Duration) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, SendTimedOut { limit })
    }

    /// Whether `e` is a send timeout.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>())
    }
}

/// A client's connection, with the bytes read from it and not used yet.
pub(crate) struct ClientConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    send_timeout: Duration,
}

impl ClientConn {
    pub(crate) fn new(stream: TcpStream, send_timeout: Duration) -> Self {
        ClientConn {
            stream,
            buf: BytesMut::new(),
            send_timeout,
        }
    }

    /// Gives back the read buffer if it holds nothing: called when the connection waits for its
    /// next request, so that waiting costs no memory. The next [`Source::poll_fill`] takes a new
    /// one once the socket is readable.
    pub(crate) fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    /// Writes all of `bytes`, failing with [`SendTimedOut`] once the socket has taken nothing
    /// for the send timeout. The timer runs only while the socket's buffer is full, between two
    /// writes that make progress, not over the whole response: a slow reader is served, one that
    /// stopped reading is not (nginx's `send_timeout` has the same meaning).
    pub(crate) async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let mut deadline: Option<Instant> = None;
        while !bytes.is_empty() {
            match self.stream.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    deadline = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let at = *deadline.get_or_insert_with(|| Instant::now() + self.send_timeout);
                    match tokio::time::timeout_at(at, self.stream.writable()).await {
                        Ok(ready) => ready?,
                        Err(_) => return Err(SendTimedOut::error(self.send_timeout)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Source for ClientConn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // Released while idle: wait for bytes before taking a buffer to read them into.
            if let Err(e) = std::task::ready!(self.stream.poll_read_ready(cx)) {
                return Poll::Ready(Err(e));
            }
        }
        poll_fill_buf(&mut self.stream, &mut self.buf, CLIENT_READ_CHUNK, cx)
    }
}

/// A request body read straight from the client's connection while the request is forwarded.
/// Dropping it gives the connection back to its loop, saying whether the body was read to its end.
pub(crate) struct RequestBody {
    conn: Option<ClientConn>,
    reader: BodyReader,
    back: Option<oneshot::Sender<(ClientConn, bool)>>,
}

impl RequestBody {
    pub(crate) fn new(
        conn: ClientConn,
        reader: BodyReader,
        back: oneshot::Sender<(ClientConn, bool)>,
    ) -> Self {
        RequestBody {
            conn: Some(conn),
            reader,
            back: Some(back),
        }
    }

    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match self.conn.as_mut() {
            Some(conn) => self.reader.poll_data(conn, cx),
            None => Poll::Ready(None),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.reader.is_done()
    }

    pub(crate) fn exact_length(&self) -> Option<u64> {
        self.reader.exact_length()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            let _ = back.send((conn, self.reader.is_done()));
        }
    }
}

/// A client's connection after a 101, with the bytes it sent past its request head.
pub(crate) type Upgraded = Prefixed<TcpStream>;

/// A stream that first yields bytes already read from it.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A client stream whose writes fail with [`SendTimedOut`] once one has waited the send timeout
/// without progress: the send timeout of connections hyper serves, since hyper writes through
/// it. `downstream` wraps the h2c connections it hands over; TLS connections are accepted in
/// `listener.rs` and get the same bound once wrapped there. Reads pass through untouched, so an
/// idle connection is never timed out by it.
///
/// On HTTP/2 this bounds the connection, as nginx's `send_timeout` does there: a client that
/// stops reading the socket loses the connection and every stream on it, and each stream's
/// backend connection is closed as its response body is dropped. A client that keeps reading the
/// socket but stops granting one stream flow-control window is not caught by it; that stream's
/// buffered response is bounded by the window (64 KiB unless the client grants more), but its
/// backend connection stays held until the client resets the stream or the connection ends.
pub(crate) struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Made on the first write that waits, and rearmed at each stall after progress.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> SendTimeout<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Runs `op` (a write or a flush of `inner`), timing the waits. Only a write that returns
    /// counts as progress: flushing a TCP stream is always ready, so a flush between two stalled
    /// writes must not restart the timer.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        is_write: bool,
        op: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(&mut self.inner, cx) {
            Poll::Ready(result) => {
                if is_write {
                    self.armed = false;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !self.armed {
                    timer.as_mut().reset(Instant::now() + limit);
                    self.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(SendTimedOut::error(limit))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, true, |inner, cx| Pin::new(inner).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, false, |inner, cx| Pin::new(inner).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, true, |inner, cx| {
            Pin::new(inner).poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
