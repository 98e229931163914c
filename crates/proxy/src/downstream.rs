//! HTTP/1.1 from clients on plaintext listeners, written for the proxy's one job instead of going
//! through hyper's server: the connection's task reads a head, runs the request and writes the
//! response, with no dispatcher between them, no timer armed per request, and the response head
//! and a body that is already there written with one `write`. Measured in `bench/proxy.sh`:
//! hyper's server side was most of what still separated cutover from nginx once the upstream
//! side was hand-written (see `bench/RESULTS.md`). TLS listeners and HTTP/2 stay on hyper: a
//! plaintext connection that opens with the HTTP/2 preface (h2c by prior knowledge) is handed
//! to hyper with the bytes read so far.
//!
//! What it implements of RFC 9112, as a server facing any client (the message syntax is
//! [`crate::http1`]'s, shared with the client side; what a request says about its authority,
//! `Host` included, is checked by the handler for HTTP/1.1 and HTTP/2 alike):
//! - request heads of at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] headers (431 beyond), sent
//!   within `client_idle_timeout_ms` of the previous response (or of the accept); invalid heads get a
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
//!   head, to the tunnel;
//! - every write to the client is bounded by the app's `send_timeout_ms` (see [`crate::client`]):
//!   a client that stops reading its response is cut, its backend connection closed rather than
//!   pooled, and the cut counted as the client's fault ([`ClientFault::TooSlow`]).
//!
//! [`MAX_HEAD_BYTES`]: crate::http1::head::MAX_HEAD_BYTES
//! [`MAX_HEADERS`]: crate::http1::head::MAX_HEADERS

use std::future::Future;
use std::io::{self, Write as _};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use cutover_core::ClientFault;
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::AppProxy;
use crate::body::{ClientBody, ProxyBody};
use crate::client::{ClientConn, Prefixed, RequestBody, SendTimedOut, SendTimeout};
use crate::handler::{self, ClientUpgrade, Origin};
use crate::http1::chunked::{chunk_header, CHUNK_END, LAST_CHUNK};
use crate::http1::head::{has_token, parse_request, ParsedRequest, RequestHead};
use crate::http1::{BodyReader, Framing, Source};

/// Longest a client may take to send a request head, counted from the end of the previous
/// response or from the accept; an idle keep-alive connection is closed after it too.
/// How long an unread request body is discarded before a connection that will not be reused is
/// closed.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// How long an idle keep-alive connection of a stopping listener still waits for a request
/// (answered, with `connection: close`) before it is closed. Closing it at once would fail the
/// request a busy client is sending at that instant, which is what every idle connection of a
/// loaded server is about to do; waiting a moment lets those requests in. A client that sends
/// nothing meanwhile is closed, as before.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Writes are gathered up to this size before they go out.
const WRITE_BATCH: usize = 64 * 1024;
/// A response body streamed without ever waiting (a fast backend, a client whose socket always
/// takes more) would hold the worker until its end: 1 MiB responses to 256 clients on one worker
/// had a p99 of 1.3 s against a median of 134 ms. After this many bytes the connection's task
/// lets the others run, so large responses are served in turn.
const YIELD_EVERY: usize = 256 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CLIENT_REQUEST: &str = "the client's request";
/// Headers the handler adds to a request (the X-Forwarded-* trio): room is made for them when
/// the head is parsed, so the map is not grown per request.
const ADDED_HEADERS: usize = 3;

/// What became of a connection this module would not serve itself.
pub(crate) enum Handover {
    /// It opened with the HTTP/2 preface: hyper serves it from here, its writes bounded by the
    /// send timeout (see [`SendTimeout`] for what that covers on HTTP/2).
    Http2(SendTimeout<Prefixed<TcpStream>>),
}

enum Wait {
    Read(io::Result<usize>),
    TimedOut,
    Stopped,
}

/// Serves one plaintext client connection until it closes, times out, upgrades, or `shutdown`
/// is cancelled (at once when idle, after the response in progress otherwise). A connection
/// that turns out to speak HTTP/2 is given to `http2` (hyper, boxed: its state would make every
/// connection's task as large as an HTTP/2 one). This future is the connection's whole task, so
/// its size is what an idle connection costs: nothing is kept across an await that need not be.
pub(crate) fn serve_connection<H, F>(
    stream: TcpStream,
    app: Arc<AppProxy>,
    origin: Origin,
    shutdown: CancellationToken,
    http2: H,
    closed: crate::listener::CountClosed,
) -> impl Future<Output = ()>
where
    H: FnOnce(Handover, Arc<AppProxy>, Origin, CancellationToken) -> F,
    F: Future<Output = ()>,
{
    // An async block over moved-in values rather than an `async fn`: an async fn keeps its
    // arguments and their rebound copies side by side for the whole connection.
    let mut conn = ClientConn::new(stream, app.settings.send_timeout());
    async move {
        let _closed = closed;
        // The response head is encoded here; like the read buffer, it is given back while the
        // connection is idle.
        let mut out: Vec<u8> = Vec::new();
        let mut stopping = pin!(shutdown.clone().cancelled_owned());
        let head_timeout = app.settings.client_idle_timeout();
        let mut head_timer = pin!(tokio::time::sleep(head_timeout));
        let mut first = true;
        // Once the listener stops: the idle connection's last moment to send a request.
        let mut stop_at: Option<tokio::time::Instant> = None;
        loop {
            let deadline = tokio::time::Instant::now() + head_timeout;
            head_timer
                .as_mut()
                .reset(stop_at.map_or(deadline, |at| at.min(deadline)));
            let head = loop {
                if first && !conn.buf.is_empty() {
                    let n = conn.buf.len().min(H2_PREFACE.len());
                    if conn.buf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            let prefix = conn.buf.split().freeze();
                            let send_timeout = conn.send_timeout();
                            let stream = Prefixed::new(prefix, conn.stream);
                            let handover = Handover::Http2(SendTimeout::new(stream, send_timeout));
                            return http2(handover, app, origin, shutdown).await;
                        }
                    } else {
                        first = false;
                    }
                }
                if !first || conn.buf.is_empty() {
                    // The refusal is sent outside the match, so that the parse result (large) is not
                    // kept across the await and in every connection's future.
                    let refusal = match parse_request(&mut conn.buf, ADDED_HEADERS) {
                        ParsedRequest::Head(head) => break head,
                        ParsedRequest::Bad(e) => Some((e.status(), format!("the request head: {e}"))),
                        ParsedRequest::Partial => None,
                    };
                    if let Some((status, reason)) = refusal {
                        tracing::debug!(app = %app.name, peer = %origin.peer, %reason, "refused a request head");
                        let _ = Box::pin(refuse(&mut conn, &mut out, status, &reason)).await;
                        return;
                    }
                }
                let idle = conn.buf.is_empty();
                if idle {
                    // Waiting for the next request, perhaps for long: hold no buffer meanwhile.
                    conn.release();
                    out = Vec::new();
                }
                let wait = std::future::poll_fn(|cx| {
                    if let Poll::Ready(read) = conn.poll_fill(cx) {
                        return Poll::Ready(Wait::Read(read));
                    }
                    if head_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::TimedOut);
                    }
                    // A stopping listener closes idle connections (after a grace), and lets a head
                    // being read finish.
                    if idle && stop_at.is_none() && stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::Stopped);
                    }
                    Poll::Pending
                })
                .await;
                match wait {
                    Wait::Read(Ok(0)) | Wait::Read(Err(_)) | Wait::TimedOut => return,
                    Wait::Stopped => {
                        let at = tokio::time::Instant::now() + STOP_GRACE;
                        stop_at = Some(at);
                        if at < head_timer.deadline() {
                            head_timer.as_mut().reset(at);
                        }
                    }
                    Wait::Read(Ok(_)) => {}
                }
            };
            first = false;
            // Boxed: a request's state is large and lives only while the request does; unboxed, it
            // would make every connection, idle or not, as large as it.
            match Box::pin(exchange(conn, &mut out, head, &app, origin, &shutdown)).await {
                Next::Again(back) => conn = back,
                Next::Close => return,
            }
        }
    }
}

/// What becomes of a connection after a request.
enum Next {
    Again(ClientConn),
    Close,
}

/// Serves one request whose head was read: runs it and writes the response.
async fn exchange(
    conn: ClientConn,
    out: &mut Vec<u8>,
    head: RequestHead,
    app: &Arc<AppProxy>,
    origin: Origin,
    shutdown: &CancellationToken,
) -> Next {
    let mut conn = conn;
    let RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    // A body already known to be too large gets its 413 without a 100 Continue first, so a
    // client that waits for the go-ahead never sends it.
    let too_large = matches!(framing, Framing::Length(n) if n > app.settings.max_request_body_bytes);
    if expect_continue
        && framing != Framing::Empty
        && !too_large
        && request.version() == Version::HTTP_11
        && conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
    {
        return Next::Close;
    }
    let head_only = request.method() == Method::HEAD;
    let version = request.version();
    let (body, returned) = if framing == Framing::Empty {
        (ClientBody::Empty, Err(conn))
    } else {
        let (back, returned) = oneshot::channel();
        let body = RequestBody::new(conn, BodyReader::of(framing, CLIENT_REQUEST), back);
        (ClientBody::Own(body), Ok(returned))
    };
    let (upgrade_tx, client_upgrade) = if upgrade {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(ClientUpgrade::Own(rx)))
    } else {
        (None, None)
    };
    let response = handler::handle(Arc::clone(app), request.map(|()| body), origin, client_upgrade).await;
    let body_complete;
    (conn, body_complete) = match returned {
        Err(conn) => (conn, true),
        // The body is dropped by the time the handler returns; this only collects it.
        Ok(returned) => match returned.await {
            Ok(back) => back,
            Err(_) => return Next::Close,
        },
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(tx) = upgrade_tx else {
            return Next::Close;
        };
        let (parts, _) = response.into_parts();
        out.clear();
        encode_head(out, parts.status, &parts.headers, &[]);
        if conn.write_all(out).await.is_err() {
            return Next::Close;
        }
        let prefix = conn.buf.split().freeze();
        let _ = tx.send(Prefixed::new(prefix, conn.stream));
        return Next::Close;
    }

    let reuse = keep_alive && body_complete && !shutdown.is_cancelled();
    let kept = write_response(
        &mut conn,
        out,
        response,
        ResponseFraming {
            head_only,
            version,
            keep_alive: reuse,
        },
    )
    .await;
    match kept {
        Ok(true) => Next::Again(conn),
        Ok(false) => {
            if !body_complete {
                linger(&mut conn).await;
            }
            Next::Close
        }
        Err(_) => Next::Close,
    }
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
/// request. A client that stops reading is cut by the send timeout: counted as its fault, and
/// the response body dropped unfinished, which closes its backend connection instead of pooling
/// it.
async fn write_response(
    conn: &mut ClientConn,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    framing: ResponseFraming,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let written = write_parts(conn, out, parts, &mut body, framing).await;
    if let Err(e) = &written {
        if SendTimedOut::is(e) {
            // The status was counted when the backend answered, and stays: the release did its
            // part. What failed is the client's reading, counted apart as its fault.
            body.record_client_fault(ClientFault::TooSlow);
            tracing::info!(peer = %conn.stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                error = %e, "client stopped reading its response; closing its connection and the backend's");
        }
    }
    written
}

/// [`write_response`]'s work. What is ready is gathered into one write: a small response goes
/// out with one syscall, and a streaming one is flushed whenever its body waits.
async fn write_parts(
    conn: &mut ClientConn,
    out: &mut Vec<u8>,
    mut parts: http::response::Parts,
    body: &mut ProxyBody,
    framing: ResponseFraming,
) -> io::Result<bool> {
    let status = parts.status;
    // A response the proxy made to end the connection (a refused request, whose framing or
    // target cannot be trusted) says so; the header is written once, below, with the others
    // this server decides.
    let ends_connection = has_token(&parts.headers, header::CONNECTION, "close");
    if ends_connection {
        parts.headers.remove(header::CONNECTION);
    }
    let bodyless = framing.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();
    let mut keep_alive = framing.keep_alive && !ends_connection;
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
    out.reserve(1024);
    encode_head(out, status, &parts.headers, &extra);
    if bodyless {
        conn.write_all(out).await?;
        return Ok(keep_alive);
    }
    let mut since_yield = 0usize;
    loop {
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let step = std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match step {
            Step::Flush => {
                conn.write_all(out).await?;
                out.clear();
            }
            Step::Frame(None) => {
                if chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                conn.write_all(out).await?;
                out.clear();
                return Ok(keep_alive);
            }
            Step::Frame(Some(Err(e))) => {
                // The response cannot be finished: only closing tells the client it is cut.
                conn.write_all(out).await?;
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
                since_yield += data.len();
                if chunked {
                    out.extend_from_slice(chunk_header(data.len()).as_ref());
                }
                if data.len() >= WRITE_BATCH / 4 {
                    conn.write_all(out).await?;
                    out.clear();
                    conn.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if chunked {
                    out.extend_from_slice(CHUNK_END);
                }
                if out.len() >= WRITE_BATCH {
                    conn.write_all(out).await?;
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
    conn.write_all(out).await?;
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

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::config::{ListenerKind, ProxySettings};
    use cutover_core::{RouteTable, Slot};

    /// An idle keep-alive connection costs its task, and the task is this future: it must stay
    /// small (the request's state is boxed and lives only while a request does, the buffers are
    /// given back while idle). It was 4 KiB before issue 16; `bench/proxy.sh` measures what an
    /// idle connection costs in all (task header, socket registration, allocator).
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let app = AppProxy::new("web", ProxySettings::default(), RouteTable::empty(Slot::Blue)).unwrap();
        let origin = Origin {
            peer: stream.peer_addr().unwrap(),
            kind: ListenerKind::Public,
            tls: false,
        };
        let future = serve_connection(
            stream,
            app,
            origin,
            CancellationToken::new(),
            |_, _, _, _| async {},
            crate::listener::CountClosed,
        );
        let size = std::mem::size_of_val(&future);
        assert!(size <= 640, "a client connection's future is {size} bytes");
    }
}
