//! A message body read frame by frame from a connection's buffer, as bytes arrive: a backend's
//! response or a client's request, by the same code.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::chunked::{ChunkError, ChunkedDecoder};
use super::framing::Framing;

/// A connection a message body is read from: its unread bytes and a way to read more.
pub(crate) trait Source {
    fn buf(&mut self) -> &mut BytesMut;
    /// Reads more into `buf`; `Ready(Ok(0))` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

/// Reads from `stream` into `buf`, first making room for `chunk` bytes when less than 1 KiB is
/// left. Once what was read has been consumed, `BytesMut` reuses its buffer from the start
/// instead of allocating, as long as `chunk` fits in it: the buffer stays the size it was
/// created with unless a message needs more.
pub(crate) fn poll_fill_buf<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Why a body could not be read: the error inside the `io::Error`s a [`BodyReader`] returns
/// (of kind `InvalidData` for a broken framing, `UnexpectedEof` for a cut one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("{source} in {message}")]
    Chunked {
        message: &'static str,
        source: ChunkError,
    },
    #[error("the connection closed before the body of {message} was complete")]
    Truncated { message: &'static str },
}

/// Reads a message body frame by frame.
#[derive(Debug)]
pub(crate) struct BodyReader {
    framing: Framing,
    /// Whose message it is, for errors: "the backend's response", "the client's request".
    message: &'static str,
    /// Bytes left of a Content-Length body.
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyReader {
    pub(crate) fn of(framing: Framing, message: &'static str) -> Self {
        BodyReader {
            framing,
            message,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::default(),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    pub(crate) fn exact_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(_) => Some(self.remaining),
            _ => None,
        }
    }

    /// The next piece of the body; `None` once it is complete.
    pub(crate) fn poll_data(
        &mut self,
        conn: &mut impl Source,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.framing {
                Framing::Empty => {
                    self.done = true;
                }
                Framing::Length(_) => {
                    if !conn.buf().is_empty() {
                        let n = conn
                            .buf()
                            .len()
                            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                        let data = conn.buf().split_to(n).freeze();
                        self.remaining -= n as u64;
                        self.done = self.remaining == 0;
                        return Poll::Ready(Some(Ok(data)));
                    }
                    match ready_fill(conn, cx)? {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(0) => return Poll::Ready(Some(Err(self.truncated()))),
                        Poll::Ready(_) => {}
                    }
                }
                Framing::Eof => {
                    if !conn.buf().is_empty() {
                        let data = conn.buf().split().freeze();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    match ready_fill(conn, cx)? {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(0) => self.done = true,
                        Poll::Ready(_) => {}
                    }
                }
                Framing::Chunked => match self.chunked.decode(conn.buf()) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(None) if self.chunked.is_done() => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Ok(None) => match ready_fill(conn, cx)? {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(0) => return Poll::Ready(Some(Err(self.truncated()))),
                        Poll::Ready(_) => {}
                    },
                    Err(source) => {
                        let error = BodyError::Chunked {
                            message: self.message,
                            source,
                        };
                        return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, error))));
                    }
                },
            }
        }
    }

    fn truncated(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            BodyError::Truncated {
                message: self.message,
            },
        )
    }
}

fn ready_fill(conn: &mut impl Source, cx: &mut Context<'_>) -> io::Result<Poll<usize>> {
    match conn.poll_fill(cx) {
        Poll::Ready(Ok(n)) => Ok(Poll::Ready(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(Poll::Pending),
    }
}

/// A source whose bytes are all in its buffer: the end of the stream follows them. For tests.
#[cfg(test)]
pub(crate) struct Buffered(pub BytesMut);

#[cfg(test)]
impl Source for Buffered {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.0
    }
    fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
}

/// Reads the whole body of `framing` from `source`; the error's kind on failure. For tests.
#[cfg(test)]
pub(crate) fn read_all(framing: Framing, source: &mut Buffered) -> Result<Vec<u8>, io::ErrorKind> {
    let mut reader = BodyReader::of(framing, "a test");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match reader.poll_data(source, &mut cx) {
            Poll::Ready(Some(Ok(data))) => out.extend_from_slice(&data),
            Poll::Ready(Some(Err(e))) => return Err(e.kind()),
            Poll::Ready(None) => return Ok(out),
            Poll::Pending => return Err(io::ErrorKind::WouldBlock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_by_their_framing() {
        let read = |framing, body: &str| read_all(framing, &mut Buffered(BytesMut::from(body.as_bytes())));
        assert_eq!(
            read(Framing::Chunked, "5\r\nhello\r\n0\r\n\r\n"),
            Ok(b"hello".to_vec())
        );
        assert_eq!(
            read(Framing::Chunked, "+5\r\nhello\r\n0\r\n\r\n"),
            Err(io::ErrorKind::InvalidData)
        );
        assert_eq!(
            read(Framing::Chunked, "-5\r\nhello\r\n0\r\n\r\n"),
            Err(io::ErrorKind::InvalidData)
        );
        assert_eq!(
            read(Framing::Chunked, "5\r\nhel"),
            Err(io::ErrorKind::UnexpectedEof)
        );
        assert_eq!(read(Framing::Length(3), "abcdef"), Ok(b"abc".to_vec()));
        assert_eq!(read(Framing::Length(9), "abc"), Err(io::ErrorKind::UnexpectedEof));
        assert_eq!(read(Framing::Eof, "abc"), Ok(b"abc".to_vec()));
        assert_eq!(read(Framing::Empty, "abc"), Ok(Vec::new()));
    }
}
