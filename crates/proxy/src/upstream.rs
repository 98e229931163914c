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
//!   dropped), `Content-Length`, or until the connection closes;
//! - 1xx interim responses other than 101 are skipped; 101 hands the connection over for a
//!   tunnel with whatever bytes were read past the head;
//! - a connection is kept for the next request only when the response was complete, framed, and
//!   neither side said `Connection: close` (HTTP/1.0 needs `keep-alive`).
//!
//! Heads larger than [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] headers are refused.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::UpstreamRequestBody;

/// Largest response head accepted from a backend.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers accepted in a response head.
pub(crate) const MAX_HEADERS: usize = 128;
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
pub(crate) fn poll_fill_buf(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

impl Source for Conn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill_buf(&mut self.stream, &mut self.buf, READ_CHUNK, cx)
    }
}

/// Why an exchange failed, and whether the request may have reached the backend.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing of the request was written: it may go to another connection.
    NotSent(String),
    /// The request (or part of it) was written: it must not be replayed.
    Failed(String),
    /// The client's side failed (a malformed or unfinished body, one over the limit): its fault.
    Client(cutover_core::ClientFault, String),
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Eof,
}

/// A response head read from a backend.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// May the connection carry another request once the body is read?
    pub keep_alive: bool,
}

/// Writes `parts` and `body` on `conn` (parts must already be the upstream form: origin-form
/// URI, hop-by-hop headers removed) and reads the response head.
pub(crate) async fn exchange(
    conn: &mut Conn,
    parts: &http::request::Parts,
    body: &mut UpstreamRequestBody,
) -> Result<Head, SendError> {
    let bodyless = body.is_end_stream();
    let length = if bodyless {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let mut out = std::mem::take(&mut conn.head);
    out.clear();
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

async fn send_body(conn: &mut Conn, body: &mut UpstreamRequestBody, chunked: bool) -> Result<(), SendError> {
    let write_error = |e: io::Error| SendError::Failed(format!("writing the request body: {e}"));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => {
                let fault = crate::body::client_fault_of(&*e);
                return Err(SendError::Client(
                    fault,
                    format!("reading the client's request body: {e}"),
                ));
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers of the client's request are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let size = format!("{:x}\r\n", data.len());
                    conn.stream
                        .write_all(size.as_bytes())
                        .await
                        .map_err(write_error)?;
                    conn.stream.write_all(&data).await.map_err(write_error)?;
                    conn.stream.write_all(b"\r\n").await.map_err(write_error)?;
                } else {
                    conn.stream.write_all(&data).await.map_err(write_error)?;
                }
            }
        }
    }
    if chunked {
        conn.stream.write_all(b"0\r\n\r\n").await.map_err(write_error)?;
    }
    Ok(())
}

async fn read_head(conn: &mut Conn, method: &Method) -> Result<Head, SendError> {
    loop {
        let parsed = {
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let config = httparse::ParserConfig::default();
            match config.parse_response_with_uninit_headers(&mut response, &conn.buf, &mut headers) {
                Ok(httparse::Status::Complete(len)) => {
                    // The head's bytes become one shared buffer the header values point into,
                    // instead of one copy per value.
                    let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
                    let count = header_spans(&conn.buf, response.headers, &mut spans);
                    let (code, version) = (response.code, response.version);
                    let bytes = conn.buf.split_to(len).freeze();
                    Some(head_from(code, version, &bytes, &spans[..count], method))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => Some(Err(format!(
                    "the backend's response head is not valid HTTP/1.1: {e}"
                ))),
            }
        };
        match parsed {
            Some(Ok(head)) => {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                    continue; // 100 Continue and friends: the final response follows
                }
                return Ok(head);
            }
            Some(Err(reason)) => return Err(SendError::Failed(reason)),
            None => {}
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(SendError::Failed(format!(
                "the backend's response head is larger than {MAX_HEAD_BYTES} bytes"
            )));
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

/// Where a header's name and value are in its head: (name start, name end, value start, value
/// end) as byte offsets. Heads are at most [`MAX_HEAD_BYTES`] long.
pub(crate) type Span = (u32, u32, u32, u32);

/// Records where each parsed header of `head` is, so the head can become one shared buffer the
/// header values point into; returns how many there are.
pub(crate) fn header_spans(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    spans: &mut [Span; MAX_HEADERS],
) -> usize {
    let base = head.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
    for (span, h) in spans.iter_mut().zip(headers) {
        let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
        *span = (
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        );
    }
    headers.len().min(MAX_HEADERS)
}

/// The headers `spans` locate in `head`, their values sharing `head`'s buffer, with room for
/// `room` more. `sender` ("the backend", "the client") is who is blamed in the error.
pub(crate) fn header_map(
    head: &Bytes,
    spans: &[Span],
    room: usize,
    sender: &str,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    for &(name_start, name_end, value_start, value_end) in spans {
        let name_bytes = &head[name_start as usize..name_end as usize];
        let name = HeaderName::from_bytes(name_bytes).map_err(|_| {
            format!(
                "{sender} sent an invalid header name {:?}",
                String::from_utf8_lossy(name_bytes)
            )
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
            .map_err(|_| format!("{sender} sent an invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Whether the comma-separated header `name` (`Connection`, `Expect`, ...) lists `token`, in
/// any case.
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The head of a response from its parsed parts: `spans` locate the headers in `bytes`, the
/// whole head.
fn head_from(
    code: Option<u16>,
    version: Option<u8>,
    bytes: &Bytes,
    spans: &[Span],
    method: &Method,
) -> Result<Head, String> {
    let code = code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| format!("the backend answered with status {code}, which is not valid"))?;
    let version = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let headers = header_map(bytes, spans, 0, "the backend")?;
    let mut keep_alive = match version {
        Version::HTTP_10 => has_token(&headers, header::CONNECTION, "keep-alive"),
        _ => !has_token(&headers, header::CONNECTION, "close"),
    };
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // A coding other than chunked last: the body runs to the end of the connection.
        keep_alive = false;
        Framing::Eof
    } else if let Some(length) = content_length(&headers, "the backend")? {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::Eof
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
    }
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// A message's `Content-Length`, from every such header and every comma-separated value in them
/// (RFC 9110 §8.6: repeats of one value are one length, different values are an error).
/// `sender` ("the backend", "the client") is who is blamed in the error.
pub(crate) fn content_length(headers: &HeaderMap, sender: &str) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("").split(',') {
            // Digits only (RFC 9110 §8.6): `+5` or `-0` would be read differently by a peer.
            let part = part.trim();
            let n: u64 = part
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
                .ok_or_else(|| format!("{sender} sent an invalid Content-Length {value:?}"))?;
            if found.is_some_and(|f| f != n) {
                return Err(format!("{sender} sent conflicting Content-Length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Reads a message body frame by frame, as bytes arrive: a backend's response, or a client's
/// request.
#[derive(Debug)]
pub(crate) struct BodyReader {
    framing: Framing,
    /// Whose message it is, for errors: "the backend's response" or "the client's request".
    message: &'static str,
    /// Bytes left of a Content-Length body.
    remaining: u64,
    chunk: Chunk,
    done: bool,
}

impl BodyReader {
    /// The body of a backend's response.
    pub(crate) fn new(framing: Framing) -> Self {
        Self::of(framing, "the backend's response")
    }

    pub(crate) fn of(framing: Framing, message: &'static str) -> Self {
        BodyReader {
            framing,
            message,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size,
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
                        Poll::Ready(0) => return Poll::Ready(Some(Err(truncated(self.message)))),
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
                Framing::Chunked => match self.step_chunked(conn) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(None) if self.done => return Poll::Ready(None),
                    Ok(None) => match ready_fill(conn, cx)? {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(0) => return Poll::Ready(Some(Err(truncated(self.message)))),
                        Poll::Ready(_) => {}
                    },
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
        }
    }

    /// Advances the chunked decoder over the buffered bytes: data to hand on, or `None` when it
    /// needs more bytes (or is done).
    fn step_chunked(&mut self, conn: &mut impl Source) -> io::Result<Option<Bytes>> {
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(line) = take_line(conn.buf(), self.message)? else {
                        return Ok(None);
                    };
                    let hex: &[u8] = line[..].split(|b| *b == b';').next().unwrap_or(&[]);
                    let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                    // Hex digits only: `from_str_radix` would also take a sign (`+5`).
                    let size = hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit())
                        .then(|| u64::from_str_radix(hex, 16).ok())
                        .flatten()
                        .ok_or_else(|| invalid(format!("invalid chunk size {hex:?} in {}", self.message)))?;
                    self.chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if conn.buf().is_empty() {
                        return Ok(None);
                    }
                    let n = conn.buf().len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = conn.buf().split_to(n).freeze();
                    let left = left - n as u64;
                    self.chunk = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(Some(data));
                }
                Chunk::DataEnd => {
                    let Some(line) = take_line(conn.buf(), self.message)? else {
                        return Ok(None);
                    };
                    if !line.is_empty() {
                        return Err(invalid(format!(
                            "a chunk of {} is longer than its size",
                            self.message
                        )));
                    }
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line) = take_line(conn.buf(), self.message)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// One CRLF-terminated line from the front of `buf`, without its CRLF.
fn take_line(buf: &mut BytesMut, message: &str) -> io::Result<Option<BytesMut>> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > 16 * 1024 => {
            Err(invalid(format!("a chunk header line of {message} is too long")))
        }
        None => Ok(None),
    }
}

fn ready_fill(conn: &mut impl Source, cx: &mut Context<'_>) -> io::Result<Poll<usize>> {
    match conn.poll_fill(cx) {
        Poll::Ready(Ok(n)) => Ok(Poll::Ready(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(Poll::Pending),
    }
}

fn truncated(message: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the connection closed before the body of {message} was complete"),
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_without_their_crlf() {
        let mut buf = BytesMut::from(&b"1a;ext=1\r\nrest"[..]);
        assert_eq!(take_line(&mut buf, "a test").unwrap().unwrap(), &b"1a;ext=1"[..]);
        assert_eq!(&buf[..], b"rest");
        assert!(take_line(&mut buf, "a test").unwrap().is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let parse = |text: &str, method: Method| {
            let bytes = Bytes::copy_from_slice(text.as_bytes());
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            r.parse(&bytes).unwrap();
            let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
            let count = header_spans(&bytes, r.headers, &mut spans);
            head_from(r.code, r.version, &bytes, &spans[..count], &method).unwrap()
        };
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET);
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = parse("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET);
        assert!(!h.keep_alive);
        let h = parse(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            Method::GET,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn lengths_and_chunk_sizes_are_digits_only() {
        let length = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_str(value).unwrap());
            content_length(&headers, "a test")
        };
        assert_eq!(length("5"), Ok(Some(5)));
        assert_eq!(length(" 7 "), Ok(Some(7)));
        assert_eq!(length("5, 5"), Ok(Some(5)));
        for bad in ["+5", "-0", "0x5", "5 5", "", "5,6"] {
            assert!(length(bad).is_err(), "{bad:?} accepted");
        }
        struct Buffered(BytesMut);
        impl Source for Buffered {
            fn buf(&mut self) -> &mut BytesMut {
                &mut self.0
            }
            fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
        }
        let read = |body: &str| {
            let mut reader = BodyReader::of(Framing::Chunked, "a test");
            let mut source = Buffered(BytesMut::from(body.as_bytes()));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut out = Vec::new();
            loop {
                match reader.poll_data(&mut source, &mut cx) {
                    Poll::Ready(Some(Ok(data))) => out.extend_from_slice(&data),
                    Poll::Ready(Some(Err(e))) => return Err(e.kind()),
                    Poll::Ready(None) => return Ok(out),
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock),
                }
            }
        };
        assert_eq!(read("5\r\nhello\r\n0\r\n\r\n"), Ok(b"hello".to_vec()));
        assert_eq!(read("+5\r\nhello\r\n0\r\n\r\n"), Err(io::ErrorKind::InvalidData));
        assert_eq!(read("-5\r\nhello\r\n0\r\n\r\n"), Err(io::ErrorKind::InvalidData));
    }
}
