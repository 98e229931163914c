//! HTTP/1.1 from clients on plaintext listeners, written for the proxy's one job instead of going
//! through hyper's server: the connection's task reads a head, runs the request and writes the
//! response, with no dispatcher between them, no timer armed per request, and the response head
//! and a body that is already there written with one `write`. Measured in `bench/proxy.sh`:
//! hyper's server side was most of what still separated cutover from nginx once the upstream
//! side was hand-written (see `bench/RESULTS.md`). TLS listeners and HTTP/2 stay on hyper: a
//! plaintext connection that opens with the HTTP/2 preface (h2c by prior knowledge) is handed
//! to hyper with the bytes read so far.
//!
//! What it implements of RFC 9112, as a server facing any client:
//! - request heads with exactly one `Host` (HTTP/1.1) and at most [`MAX_HEAD_BYTES`] and
//!   [`MAX_HEADERS`] headers (431 beyond), sent
//!   within [`HEAD_TIMEOUT`] of the previous response (or of the accept); invalid heads get a
//!   400 and the connection is closed;
//! - request bodies by `Transfer-Encoding: chunked` (last coding) or `Content-Length`; any
//!   other transfer coding, or a conflicting or invalid length, is a 400 (§6.3). A request with
//!   both headers is read as chunked and its connection is closed after the response, since
//!   such requests are how smuggling is attempted;
//! - `Expect: 100-continue` is answered at once: the proxy reads the body as it forwards it;
//! - pipelined requests are answered in order;
//! - responses are framed by the body's known length, else chunked (HTTP/1.1 clients) or by
//!   closing the connection (HTTP/1.0 clients); none after `HEAD` or for 1xx/204/304;
//! - keep-alive unless the client said `Connection: close` (HTTP/1.0: unless it did not say
//!   `keep-alive`), the request body was not read to its end (the rest is discarded for up to
//!   [`LINGER`] before closing so the client reads the response and not a reset), or the
//!   listener is stopping;
//! - `Upgrade` requests answered with 101 hand the raw connection, and any bytes read past the
//!   head, to the tunnel.

use std::future::Future;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::AppProxy;
use crate::body::{ClientBody, ProxyBody};
use crate::handler::{self, ClientUpgrade, Origin};
use crate::upstream::{
    content_length, has_token, header_map, header_spans, poll_fill_buf, BodyReader, Framing, Source,
    MAX_HEADERS, MAX_HEAD_BYTES,
};

/// Longest a client may take to send a request head, counted from the end of the previous
/// response or from the accept; an idle keep-alive connection is closed after it too.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unread request body is discarded before a connection that will not be reused is
/// closed.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// Writes are gathered up to this size before they go out.
const WRITE_BATCH: usize = 64 * 1024;
/// A client connection's read buffer: enough for most request heads, and kept at this size while
/// idle (see [`poll_fill_buf`]), since idle keep-alive connections are most connections.
const CLIENT_READ_CHUNK: usize = 4096;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CLIENT_REQUEST: &str = "the client's request";

/// A client's connection, with the bytes read from it and not used yet.
pub(crate) struct ClientConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Source for ClientConn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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

/// What became of a connection this module would not serve itself.
pub(crate) enum Handover {
    /// It opened with the HTTP/2 preface: hyper serves it from here.
    Http2(Prefixed<TcpStream>),
}

/// A request head as the client sent it, and what it says about the connection.
struct RequestHead {
    request: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

// Made once per request and taken apart at once: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Head(RequestHead),
    Bad(StatusCode, String),
}

enum Wait {
    Read(io::Result<usize>),
    TimedOut,
    Stopped,
}

/// Serves one plaintext client connection until it closes, times out, upgrades, or `shutdown`
/// is cancelled (at once when idle, after the response in progress otherwise). A connection
/// that turns out to speak HTTP/2 is returned for hyper to serve.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    app: Arc<AppProxy>,
    origin: Origin,
    shutdown: CancellationToken,
) -> Option<Handover> {
    let mut conn = ClientConn {
        stream,
        buf: BytesMut::with_capacity(CLIENT_READ_CHUNK),
    };
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut stopping = pin!(shutdown.clone().cancelled_owned());
    let mut head_timer = pin!(tokio::time::sleep(HEAD_TIMEOUT));
    let mut first = true;
    loop {
        head_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
        let head = loop {
            if first && !conn.buf.is_empty() {
                let n = conn.buf.len().min(H2_PREFACE.len());
                if conn.buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        let prefix = conn.buf.split().freeze();
                        return Some(Handover::Http2(Prefixed::new(prefix, conn.stream)));
                    }
                } else {
                    first = false;
                }
            }
            if !first || conn.buf.is_empty() {
                match parse_head(&mut conn.buf) {
                    Parsed::Head(head) => break head,
                    Parsed::Bad(status, reason) => {
                        tracing::debug!(app = %app.name, peer = %origin.peer, %reason, "refused a request head");
                        let _ = refuse(&mut conn, &mut out, status, &reason).await;
                        return None;
                    }
                    Parsed::Partial => {}
                }
            }
            if conn.buf.len() >= MAX_HEAD_BYTES {
                let reason = format!("the request head is larger than {MAX_HEAD_BYTES} bytes");
                let _ = refuse(
                    &mut conn,
                    &mut out,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &reason,
                )
                .await;
                return None;
            }
            let idle = conn.buf.is_empty();
            let wait = std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = conn.poll_fill(cx) {
                    return Poll::Ready(Wait::Read(read));
                }
                if head_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::TimedOut);
                }
                // A stopping listener closes idle connections, and lets a head being read finish.
                if idle && stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Stopped);
                }
                Poll::Pending
            })
            .await;
            match wait {
                Wait::Read(Ok(0)) | Wait::Read(Err(_)) | Wait::TimedOut | Wait::Stopped => return None,
                Wait::Read(Ok(_)) => {}
            }
        };
        first = false;

        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        } = head;
        if expect_continue
            && framing != Framing::Empty
            && request.version() == Version::HTTP_11
            && conn
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return None;
        }
        let head_only = request.method() == Method::HEAD;
        let version = request.version();
        let (body, returned) = if framing == Framing::Empty {
            (ClientBody::Empty, Err(conn))
        } else {
            let (back, returned) = oneshot::channel();
            let body = RequestBody {
                conn: Some(conn),
                reader: BodyReader::of(framing, CLIENT_REQUEST),
                back: Some(back),
            };
            (ClientBody::Own(body), Ok(returned))
        };
        let (upgrade_tx, client_upgrade) = if upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(ClientUpgrade::Own(rx)))
        } else {
            (None, None)
        };
        let response =
            handler::handle(Arc::clone(&app), request.map(|()| body), origin, client_upgrade).await;
        let body_complete;
        (conn, body_complete) = match returned {
            Err(conn) => (conn, true),
            // The body is dropped by the time the handler returns; this only collects it.
            Ok(returned) => match returned.await {
                Ok(back) => back,
                Err(_) => return None,
            },
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let tx = upgrade_tx?;
            let (parts, _) = response.into_parts();
            out.clear();
            encode_head(&mut out, parts.status, &parts.headers, &[]);
            if conn.stream.write_all(&out).await.is_err() {
                return None;
            }
            let prefix = conn.buf.split().freeze();
            let _ = tx.send(Prefixed::new(prefix, conn.stream));
            return None;
        }

        let reuse = keep_alive && body_complete && !shutdown.is_cancelled();
        let kept = write_response(
            &mut conn.stream,
            &mut out,
            response,
            ResponseFraming {
                head_only,
                version,
                keep_alive: reuse,
            },
        )
        .await;
        match kept {
            Ok(true) => {}
            Ok(false) => {
                if !body_complete {
                    linger(&mut conn).await;
                }
                return None;
            }
            Err(_) => return None,
        }
    }
}

/// Parses the head at the front of `buf` and, once complete, takes its bytes out of `buf`.
fn parse_head(buf: &mut BytesMut) -> Parsed {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Parsed::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
            )
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request has more than {MAX_HEADERS} headers"),
            )
        }
        Err(e) => {
            return Parsed::Bad(
                StatusCode::BAD_REQUEST,
                format!("the request head is not valid HTTP/1.1: {e}"),
            )
        }
    };
    // The head's bytes become one shared buffer the header values and the target point into,
    // instead of one copy each.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
    let count = header_spans(buf, parsed.headers, &mut spans);
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes());
    let target = parsed.path.unwrap_or("");
    let target_span = {
        let start = target.as_ptr() as usize - base;
        (start, start + target.len())
    };
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let bytes = buf.split_to(len).freeze();
    let Ok(method) = method else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "invalid method".to_string());
    };
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(target_span.0..target_span.1)) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "invalid request target".to_string());
    };
    // Room for the X-Forwarded-* headers the handler adds, so the map is not grown per request.
    let map = match header_map(&bytes, &spans[..count], 3, "the client") {
        Ok(map) => map,
        Err(reason) => return Parsed::Bad(StatusCode::BAD_REQUEST, reason),
    };
    let mut keep_alive = match version {
        Version::HTTP_10 => has_token(&map, header::CONNECTION, "keep-alive"),
        _ => !has_token(&map, header::CONNECTION, "close"),
    };
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; two would let the proxy and the backend
    // disagree on which site was asked for.
    let hosts = map.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Parsed::Bad(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs exactly one Host header".to_string(),
        );
    }
    let upgrade = handler::is_upgrade_request(&map);
    let expect_continue = has_token(&map, header::EXPECT, "100-continue");
    let framing = if map.contains_key(header::TRANSFER_ENCODING) {
        let last = map
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) || version == Version::HTTP_10 {
            return Parsed::Bad(
                StatusCode::BAD_REQUEST,
                "a request's Transfer-Encoding must end in chunked (HTTP/1.1 only)".to_string(),
            );
        }
        if map.contains_key(header::CONTENT_LENGTH) {
            keep_alive = false;
        }
        Framing::Chunked
    } else {
        match content_length(&map, "the client") {
            Ok(None | Some(0)) => Framing::Empty,
            Ok(Some(n)) => Framing::Length(n),
            Err(reason) => return Parsed::Bad(StatusCode::BAD_REQUEST, reason),
        }
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Parsed::Head(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    })
}

/// What the request says about how its response may be framed.
struct ResponseFraming {
    head_only: bool,
    version: Version,
    keep_alive: bool,
}

enum Step {
    Frame(Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>),
    Flush,
}

/// Writes `response` and streams its body; returns whether the connection may carry another
/// request. What is ready is gathered into one write: a small response goes out with one
/// syscall, and a streaming one is flushed whenever its body waits.
async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    framing: ResponseFraming,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = framing.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();
    let mut keep_alive = framing.keep_alive;
    let mut chunked = false;
    let mut extra: [&[u8]; 3] = [b"", b"", b""];
    let mut length_text = [0u8; 40];
    let mut length_len = 0;
    // A HEAD response keeps the length the backend gave (that of the GET) and gets none made up.
    if !bodyless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match length {
            Some(n) => {
                let mut cursor = io::Cursor::new(&mut length_text[..]);
                let _ = write!(cursor, "content-length: {n}\r\n");
                length_len = cursor.position() as usize;
            }
            None if framing.version == Version::HTTP_11 => chunked = true,
            None => keep_alive = false,
        }
    }
    if chunked {
        extra[0] = b"transfer-encoding: chunked\r\n";
    }
    extra[1] = &length_text[..length_len];
    extra[2] = match (keep_alive, framing.version) {
        (false, _) => b"connection: close\r\n",
        (true, Version::HTTP_10) => b"connection: keep-alive\r\n",
        (true, _) => b"",
    };
    out.clear();
    encode_head(out, status, &parts.headers, &extra);
    if bodyless {
        stream.write_all(out).await?;
        return Ok(keep_alive);
    }
    loop {
        let step = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match step {
            Step::Flush => {
                stream.write_all(out).await?;
                out.clear();
            }
            Step::Frame(None) => {
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                stream.write_all(out).await?;
                out.clear();
                return Ok(keep_alive);
            }
            Step::Frame(Some(Err(e))) => {
                // The response cannot be finished: only closing tells the client it is cut.
                stream.write_all(out).await?;
                out.clear();
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                return Ok(false);
            }
            Step::Frame(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let _ = write!(out, "{:x}\r\n", data.len());
                }
                if data.len() >= WRITE_BATCH / 4 {
                    stream.write_all(out).await?;
                    out.clear();
                    stream.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= WRITE_BATCH {
                    stream.write_all(out).await?;
                    out.clear();
                }
            }
        }
    }
}

/// Status line and headers, with `extra` header lines (each ending in CRLF) and a `date` when the
/// response has none.
fn encode_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, extra: &[&[u8]]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for line in extra {
        out.extend_from_slice(line);
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Answers a request the proxy will not forward, and leaves the connection to be closed.
async fn refuse(
    conn: &mut ClientConn,
    out: &mut Vec<u8>,
    status: StatusCode,
    reason: &str,
) -> io::Result<()> {
    let body = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    out.clear();
    let length = format!("content-length: {}\r\n", body.len());
    encode_head(
        out,
        status,
        &HeaderMap::new(),
        &[
            b"content-type: text/plain; charset=utf-8\r\n",
            length.as_bytes(),
            b"connection: close\r\n",
        ],
    );
    out.extend_from_slice(body.as_bytes());
    conn.stream.write_all(out).await?;
    linger(conn).await;
    Ok(())
}

/// Closes our side and discards what the client still sends for a while, so that closing with
/// unread bytes does not reset the connection before the client has read the response.
async fn linger(conn: &mut ClientConn) {
    let _ = conn.stream.shutdown().await;
    let mut discarded = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < 1 << 20 {
            conn.buf.clear();
            match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// The `Date` header's value, formatted once a second per thread.
mod http_date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second || cached.1.is_empty() {
                *cached = (second, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(cached.1.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// Parses `text`, given a Host header if it is HTTP/1.1 and has none.
    fn parse(text: &str) -> Parsed {
        let text = if text.contains("HTTP/1.1\r\n") && !text.contains("host:") {
            text.replacen("HTTP/1.1\r\n", "HTTP/1.1\r\nhost: x\r\n", 1)
        } else {
            text.to_string()
        };
        parse_head(&mut BytesMut::from(text.as_bytes()))
    }

    fn head(text: &str) -> RequestHead {
        match parse(text) {
            Parsed::Head(h) => h,
            Parsed::Partial => panic!("partial: {text:?}"),
            Parsed::Bad(s, r) => panic!("refused with {s}: {r}"),
        }
    }

    fn refused(text: &str) -> StatusCode {
        match parse(text) {
            Parsed::Bad(s, _) => s,
            _ => panic!("accepted: {text:?}"),
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = head("GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(h.request.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head("POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert_eq!(
            refused("POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        let h = head("GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n");
        assert!(h.upgrade);
        assert!(head("PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n").expect_continue);
        assert!(matches!(parse("GET / HTTP/1.1\r\nhost: x\r\n"), Parsed::Partial));
        let missing_host = parse_head(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]));
        assert!(matches!(missing_host, Parsed::Bad(StatusCode::BAD_REQUEST, _)));
        assert_eq!(
            refused("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert!(head("GET / HTTP/1.0\r\n\r\n")
            .request
            .headers()
            .get("host")
            .is_none());
        assert_eq!(refused("GET / HTTP/2.0\r\n\r\n"), StatusCode::BAD_REQUEST);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_parsed_head_leaves_the_next_request_in_the_buffer() {
        let mut buf =
            BytesMut::from(&b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut buf), Parsed::Head(_)));
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[test]
    fn heads_carry_a_date_unless_they_have_one() {
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            &[b"content-length: 0\r\n"],
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let mut headers = HeaderMap::new();
        headers.insert(header::DATE, HeaderValue::from_static("yesterday"));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::NOT_FOUND, &headers, &[]);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\ndate: yesterday\r\n\r\n");
    }
}
