//! HTTP/1.1 to the backends, written for the proxy's one job instead of going through hyper's
//! client: the request's own task writes the request and reads the response on the connection,
//! with no per-connection task, no channel hand-offs and no second copy of the head. Measured in
//! `bench/proxy.sh`: hyper's client dispatch was a large part of what separated cutover from
//! nginx (see `bench/RESULTS.md`).
//!
//! What it implements of RFC 9112, as a client talking to backends the proxy trusts to speak
//! HTTP/1.1 or 1.0:
//! - request framing: no body, `Content-Length`, or `Transfer-Encoding: chunked` when the length
//!   is unknown;
//! - response framing (§6.3): no body after `HEAD` or for 1xx/204/304, chunked (trailers read and
//!   dropped), `Content-Length`, or until the connection closes. A response framed by
//!   `Transfer-Encoding` loses any `Content-Length` before it is forwarded (else the client
//!   would frame the decoded body by it), and its connection is not reused when it had both;
//! - 1xx interim responses other than 101 are skipped; 101 hands the connection over for a
//!   tunnel with whatever bytes were read past the head;
//! - a connection is kept for the next request only when the response was complete, framed, and
//!   neither side said `Connection: close` (HTTP/1.0 needs `keep-alive`).
//!
//! Heads larger than [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] headers are refused.
//!
//! The message syntax (heads, framing, the chunked coding, the body reader) is [`crate::http1`]'s,
//! shared with the server side; this module only drives an exchange on a connection.
//!
//! [`MAX_HEAD_BYTES`]: crate::http1::head::MAX_HEAD_BYTES
//! [`MAX_HEADERS`]: crate::http1::head::MAX_HEADERS

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http1::chunked::{chunk_header, CHUNK_END, LAST_CHUNK};
use crate::http1::head::parse_response;
use crate::http1::{poll_fill_buf, ResponseHead, Source};

/// How much is read from a backend at a time.
const READ_CHUNK: usize = 8 * 1024;

/// One keep-alive connection to a backend, with the bytes read from it and not used yet.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    /// The request head being written, kept to reuse its allocation.
    head: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "connect to {addr}: no answer within {} ms",
                    timeout.as_millis()
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
        })
    }

    /// Gives back its buffers while it waits in the pool (nginx's upstream keepalive cache does
    /// the same): an idle connection is its socket. The next exchange takes them again.
    pub(crate) fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        self.head = Vec::new();
    }

    /// Whether an idle connection can carry another request: the backend has not closed it and
    /// has sent nothing unasked.
    pub(crate) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

impl Source for Conn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill_buf(&mut self.stream, &mut self.buf, READ_CHUNK, cx)
    }
}

/// An error of the request body being sent: the handler tells whose fault it was.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange failed, and whether the request may have reached the backend.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing of the request was written: it may go to another connection.
    NotSent(String),
    /// The request (or part of it) was written: it must not be replayed.
    Failed(String),
    /// The request body failed to give its bytes (the client's side, a malformed or unfinished
    /// body, one over the limit).
    Body(BodyError),
}

/// Writes `parts` and `body` on `conn` (parts must already be the upstream form: origin-form
/// URI, hop-by-hop headers removed) and reads the response head.
pub(crate) async fn exchange<B>(
    conn: &mut Conn,
    parts: &http::request::Parts,
    body: &mut B,
) -> Result<ResponseHead, SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let bodyless = body.is_end_stream();
    let length = if bodyless {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let mut out = std::mem::take(&mut conn.head);
    out.clear();
    out.reserve(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::EXPECT {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = match length {
        Some(0) if bodyless && !method_implies_body(&parts.method, &parts.headers) => false,
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            false
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    let written = conn.stream.write_all(&out).await;
    conn.head = out;
    if let Err(e) = written {
        return Err(SendError::NotSent(format!("writing the request: {e}")));
    }
    if !bodyless {
        send_body(conn, body, chunked).await?;
    }
    read_head(conn, &parts.method).await
}

/// Requests whose method usually carries a body keep their `Content-Length: 0`.
fn method_implies_body(method: &Method, headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_LENGTH)
        || matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

async fn send_body<B>(conn: &mut Conn, body: &mut B, chunked: bool) -> Result<(), SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let write_error = |e: io::Error| SendError::Failed(format!("writing the request body: {e}"));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => return Err(SendError::Body(e.into())),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers of the client's request are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    conn.stream
                        .write_all(chunk_header(data.len()).as_ref())
                        .await
                        .map_err(write_error)?;
                    conn.stream.write_all(&data).await.map_err(write_error)?;
                    conn.stream.write_all(CHUNK_END).await.map_err(write_error)?;
                } else {
                    conn.stream.write_all(&data).await.map_err(write_error)?;
                }
            }
        }
    }
    if chunked {
        conn.stream.write_all(LAST_CHUNK).await.map_err(write_error)?;
    }
    Ok(())
}

async fn read_head(conn: &mut Conn, method: &Method) -> Result<ResponseHead, SendError> {
    loop {
        match parse_response(&mut conn.buf, method) {
            Ok(Some(head)) => {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                    continue; // 100 Continue and friends: the final response follows
                }
                return Ok(head);
            }
            Ok(None) => {}
            Err(e) => return Err(SendError::Failed(format!("the backend's response head: {e}"))),
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(SendError::Failed(
                    "the backend closed the connection before answering".to_string(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(SendError::Failed(format!("reading the response: {e}"))),
        }
    }
}
