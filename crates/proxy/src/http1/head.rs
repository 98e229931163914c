//! Request and response heads, parsed by httparse within the proxy's limits, into `http` types
//! whose header values share the head's buffer instead of one copy each.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::framing::{self, Framing, FramingError};

/// Largest head accepted, request or response.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers accepted in a head.
pub(crate) const MAX_HEADERS: usize = 128;

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("the head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the head has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the head is not valid HTTP/1.1: {0}")]
    Syntax(httparse::Error),
    #[error("invalid method")]
    Method,
    #[error("invalid request target")]
    Target,
    #[error("status {0} is not valid")]
    Status(u16),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid value for header {0}")]
    HeaderValue(HeaderName),
    #[error(transparent)]
    Framing(#[from] FramingError),
}

impl HeadError {
    /// The status a server answers a request head refused for this reason with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

fn syntax(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        e => HeadError::Syntax(e),
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
/// `room` more.
pub(crate) fn header_map(head: &Bytes, spans: &[Span], room: usize) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    for &(name_start, name_end, value_start, value_end) in spans {
        let name_bytes = &head[name_start as usize..name_end as usize];
        let name = HeaderName::from_bytes(name_bytes)
            .map_err(|_| HeadError::HeaderName(String::from_utf8_lossy(name_bytes).into_owned()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
            .map_err(|_| HeadError::HeaderValue(name.clone()))?;
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

/// Whether a request asks to switch protocols (`Upgrade` named in `Connection`).
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, header::CONNECTION, "upgrade")
}

/// Whether a message of `version` with `headers` lets its connection carry another message, as
/// far as it says: HTTP/1.0 only with `keep-alive`, HTTP/1.1 unless `close`.
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    match version {
        Version::HTTP_10 => has_token(headers, header::CONNECTION, "keep-alive"),
        _ => !has_token(headers, header::CONNECTION, "close"),
    }
}

fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// A request head as the client sent it, and what it says about the connection.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub request: Request<()>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
}

/// What the bytes at the front of a buffer hold.
// Made once per request and taken apart at once: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum ParsedRequest {
    Partial,
    Head(RequestHead),
    Bad(HeadError),
}

/// Parses the request head at the front of `buf` and, once complete, takes its bytes out of
/// `buf`. `room` is how many headers the caller will add, so the map is not grown for them.
///
/// What the request says about its authority (`Host`, an absolute-form target, `CONNECT`) is
/// checked above this layer, in one place for HTTP/1.1 and HTTP/2 alike.
pub(crate) fn parse_request(buf: &mut BytesMut, room: usize) -> ParsedRequest {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return ParsedRequest::Bad(HeadError::TooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return ParsedRequest::Bad(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(e) => return ParsedRequest::Bad(syntax(e)),
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
    let version = version_of(parsed.version);
    let bytes = buf.split_to(len).freeze();
    let Ok(method) = method else {
        return ParsedRequest::Bad(HeadError::Method);
    };
    // No fragment in a request target (RFC 9112 §3.2): `Uri` would drop `#...` without a word,
    // and the backend would get another target than the client sent.
    let target = bytes.slice(target_span.0..target_span.1);
    if target.contains(&b'#') {
        return ParsedRequest::Bad(HeadError::Target);
    }
    let Ok(uri) = Uri::from_maybe_shared(target) else {
        return ParsedRequest::Bad(HeadError::Target);
    };
    let mut map = match header_map(&bytes, &spans[..count], room) {
        Ok(map) => map,
        Err(e) => return ParsedRequest::Bad(e),
    };
    let delimited = match framing::request_framing(version, &mut map) {
        Ok(d) => d,
        Err(e) => return ParsedRequest::Bad(e.into()),
    };
    let keep_alive = persistent(version, &map) && !delimited.close;
    let upgrade = is_upgrade_request(&map);
    let expect_continue = has_token(&map, header::EXPECT, "100-continue");
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    ParsedRequest::Head(RequestHead {
        request,
        framing: delimited.framing,
        keep_alive,
        expect_continue,
        upgrade,
    })
}

/// A response head read from a backend.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// May the connection carry another request once the body is read?
    pub keep_alive: bool,
}

/// Parses the response to a `method` request at the front of `buf` and, once complete, takes
/// its bytes out of `buf`; `None` while the head is incomplete. 1xx heads are returned like any
/// other (the caller skips those it does not forward).
pub(crate) fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    match config.parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => {
            // The head's bytes become one shared buffer the header values point into, instead
            // of one copy per value.
            let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
            let count = header_spans(buf, response.headers, &mut spans);
            let (code, version) = (response.code.unwrap_or(0), version_of(response.version));
            let bytes = buf.split_to(len).freeze();
            let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
            let mut headers = header_map(&bytes, &spans[..count], 0)?;
            let delimited = framing::response_framing(method, status, version, &mut headers)?;
            let keep_alive = persistent(version, &headers)
                && !delimited.close
                && status != StatusCode::SWITCHING_PROTOCOLS;
            Ok(Some(ResponseHead {
                status,
                headers,
                framing: delimited.framing,
                keep_alive,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(syntax(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ParsedRequest {
        parse_request(&mut BytesMut::from(text.as_bytes()), 0)
    }

    fn head(text: &str) -> RequestHead {
        match request(text) {
            ParsedRequest::Head(h) => h,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn refused(text: &str) -> StatusCode {
        match request(text) {
            ParsedRequest::Bad(e) => e.status(),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = head("GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(h.request.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(!h.request.headers().contains_key(header::CONTENT_LENGTH));
        for bad in [
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1\r\nhost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n folded\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nhost: x\r\n\r\n",
        ] {
            assert_eq!(refused(bad), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").keep_alive);
        let h = head("GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n");
        assert!(h.upgrade);
        assert!(head("PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n").expect_continue);
        assert!(matches!(
            request("GET / HTTP/1.1\r\nhost: x\r\n"),
            ParsedRequest::Partial
        ));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let big = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn a_parsed_head_leaves_the_next_request_in_the_buffer() {
        let mut buf =
            BytesMut::from(&b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n"[..]);
        assert!(matches!(parse_request(&mut buf, 0), ParsedRequest::Head(_)));
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let parse = |text: &str, method: Method| {
            parse_response(&mut BytesMut::from(text.as_bytes()), &method)
                .unwrap()
                .unwrap()
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
        let h = parse(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            Method::GET,
        );
        assert!(!h.keep_alive);
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(
            parse_response(&mut partial, &Method::GET)
                .unwrap()
                .map(|h| h.status),
            None
        );
        let mut bad = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n"[..]);
        assert!(parse_response(&mut bad, &Method::GET).is_err());
    }
}
