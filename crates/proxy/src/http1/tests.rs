//! The layering of `http1`, and property tests of its parsers against an independent reader.

/// `http1` depends on nothing else in the crate, and `downstream` takes its framing from it,
/// not from `upstream`: see the module's doc.
#[test]
fn http1_is_the_bottom_layer() {
    let own = [
        ("mod.rs", include_str!("mod.rs")),
        ("head.rs", include_str!("head.rs")),
        ("framing.rs", include_str!("framing.rs")),
        ("chunked.rs", include_str!("chunked.rs")),
        ("body.rs", include_str!("body.rs")),
        ("authority.rs", include_str!("authority.rs")),
    ];
    for (file, text) in own {
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for line in code {
            assert!(
                !line.contains("crate::") && !line.contains("super::super"),
                "http1/{file} reaches above its layer: {line}"
            );
        }
    }
    for (file, text, other) in [
        ("downstream.rs", include_str!("../downstream.rs"), "upstream"),
        ("upstream.rs", include_str!("../upstream.rs"), "downstream"),
    ] {
        assert!(
            !text.contains(&format!("crate::{other}")),
            "{file} uses {other}: both sides take HTTP/1.1 from crate::http1"
        );
    }
}

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, Version};
use proptest::prelude::*;
use proptest::sample::Index;

use super::body::{read_all, Buffered};
use super::framing::Framing;
use super::head::{parse_request, parse_response, ParsedRequest, ResponseHead};

/// A straightforward reader of RFC 9112, written apart from the proxy's (no httparse, no `http`
/// types): what the proxy accepts, this must accept too, and read the same way. It spells out
/// the two tolerances the proxy shares with common servers: a bare LF ends a line (RFC 9112
/// §2.2), and white space may follow a chunk size (nginx).
mod reference {
    /// A head as the reference reads it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Head {
        /// The method (requests) or the status code in ASCII (responses).
        pub first: Vec<u8>,
        /// The target (requests); empty for responses.
        pub target: Vec<u8>,
        pub minor: u8,
        /// Lower-cased names, values without surrounding white space.
        pub headers: Fields,
        /// Bytes up to and including the empty line.
        pub len: usize,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Framing {
        Empty,
        Length(u64),
        Chunked,
        Eof,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Read<T> {
        Partial,
        Invalid(&'static str),
        Ok(T),
    }

    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    fn is_field_vchar(b: u8) -> bool {
        b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
    }

    fn trim_ows(mut v: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = v {
            v = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = v {
            v = rest;
        }
        v
    }

    /// The lines of the head at the front of `input` (line ends removed), and its length; `None`
    /// when the empty line that ends it has not come yet. Empty lines before the start line are
    /// skipped (RFC 9112 §2.2).
    /// Field lines as (lower-cased name, trimmed value).
    pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;
    /// The lines of a head, and its length in bytes.
    type Lines<'a> = (Vec<&'a [u8]>, usize);

    fn head_lines(input: &[u8]) -> Result<Option<Lines<'_>>, &'static str> {
        let mut lines = Vec::new();
        let mut at = 0;
        loop {
            let Some(lf) = input[at..].iter().position(|b| *b == b'\n') else {
                return Ok(None);
            };
            let mut line = &input[at..at + lf];
            at += lf + 1;
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.contains(&b'\r') {
                return Err("a CR that does not end a line");
            }
            if line.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                return Ok(Some((lines, at)));
            }
            lines.push(line);
        }
    }

    fn field_lines(lines: &[&[u8]]) -> Result<Fields, &'static str> {
        let mut headers = Vec::new();
        for line in lines {
            if matches!(line.first(), Some(b' ' | b'\t')) {
                return Err("obs-fold or white space before a field name");
            }
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .ok_or("a field line without a colon")?;
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
                return Err("a field name that is not a token (white space before the colon?)");
            }
            if !value.iter().all(|b| is_field_vchar(*b)) {
                return Err("a control character in a field value");
            }
            headers.push((name.to_ascii_lowercase(), trim_ows(value).to_vec()));
        }
        Ok(headers)
    }

    fn minor_of(version: &[u8]) -> Option<u8> {
        match version {
            b"HTTP/1.0" => Some(0),
            b"HTTP/1.1" => Some(1),
            _ => None,
        }
    }

    /// `method SP request-target SP HTTP-version` and field lines.
    pub fn request(input: &[u8]) -> Read<Head> {
        let (lines, len) = match head_lines(input) {
            Ok(Some(found)) => found,
            Ok(None) => return Read::Partial,
            Err(e) => return Read::Invalid(e),
        };
        let parts: Vec<&[u8]> = lines[0].split(|b| *b == b' ').collect();
        let [method, target, version] = parts[..] else {
            return Read::Invalid("a request line is three parts split by single spaces");
        };
        if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
            return Read::Invalid("the method is not a token");
        }
        if target.is_empty() || !target.iter().all(|b| *b > b' ' && *b != 0x7f) {
            return Read::Invalid("the target is empty or has control characters");
        }
        if target.contains(&b'#') {
            return Read::Invalid("a fragment in a request target");
        }
        let Some(minor) = minor_of(version) else {
            return Read::Invalid("not HTTP/1.0 or HTTP/1.1");
        };
        match field_lines(&lines[1..]) {
            Ok(headers) => Read::Ok(Head {
                first: method.to_vec(),
                target: target.to_vec(),
                minor,
                headers,
                len,
            }),
            Err(e) => Read::Invalid(e),
        }
    }

    /// `HTTP-version SP 3DIGIT [SP reason]` and field lines.
    pub fn response(input: &[u8]) -> Read<Head> {
        let (lines, len) = match head_lines(input) {
            Ok(Some(found)) => found,
            Ok(None) => return Read::Partial,
            Err(e) => return Read::Invalid(e),
        };
        let line = lines[0];
        if line.len() < 12 || line[8] != b' ' {
            return Read::Invalid("a status line is version, space, three digits");
        }
        let (Some(minor), code) = (minor_of(&line[..8]), &line[9..12]) else {
            return Read::Invalid("not HTTP/1.0 or HTTP/1.1");
        };
        if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
            return Read::Invalid("the status is not three digits from 100");
        }
        match &line[12..] {
            [] => {}
            [b' ', reason @ ..] if reason.iter().all(|b| is_field_vchar(*b)) => {}
            _ => return Read::Invalid("the reason phrase"),
        }
        match field_lines(&lines[1..]) {
            Ok(headers) => Read::Ok(Head {
                first: code.to_vec(),
                target: Vec::new(),
                minor,
                headers,
                len,
            }),
            Err(e) => Read::Invalid(e),
        }
    }

    fn values<'h>(head: &'h Head, name: &'h [u8]) -> impl Iterator<Item = &'h [u8]> + 'h {
        head.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Elements of a comma-separated list field, trimmed, empty ones dropped (RFC 9110 §5.6.1).
    /// A value that is not ASCII is not a list of tokens: one element nothing matches.
    fn elements<'h>(head: &'h Head, name: &'h [u8]) -> Vec<&'h [u8]> {
        values(head, name)
            .flat_map(|v| -> Vec<&[u8]> {
                if v.is_ascii() {
                    v.split(|b| *b == b',')
                        .map(trim_ows)
                        .filter(|e| !e.is_empty())
                        .collect()
                } else {
                    vec![b"\xff"]
                }
            })
            .collect()
    }

    /// Whether `name` lists `token` (case-insensitive); values that are not ASCII are skipped.
    fn lists(head: &Head, name: &[u8], token: &[u8]) -> bool {
        values(head, name)
            .filter(|v| v.is_ascii())
            .flat_map(|v| v.split(|b| *b == b','))
            .any(|e| trim_ows(e).eq_ignore_ascii_case(token))
    }

    /// RFC 9110 §8.6: every element of every Content-Length is the same run of digits.
    fn content_length(head: &Head) -> Result<Option<u64>, &'static str> {
        let mut found = None;
        for value in values(head, b"content-length") {
            if !value.is_ascii() {
                return Err("a Content-Length that is not ASCII");
            }
            for element in value.split(|b| *b == b',') {
                let element = trim_ows(element);
                if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
                    return Err("a Content-Length element that is not digits");
                }
                let n = element
                    .iter()
                    .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
                    .ok_or("a Content-Length that overflows")?;
                if found.is_some_and(|f| f != n) {
                    return Err("conflicting Content-Length values");
                }
                found = Some(n);
            }
        }
        Ok(found)
    }

    fn has(head: &Head, name: &[u8]) -> bool {
        values(head, name).next().is_some()
    }

    fn last_coding_is_chunked(head: &Head) -> bool {
        elements(head, b"transfer-encoding")
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    }

    fn persistent(head: &Head) -> bool {
        if head.minor == 0 {
            lists(head, b"connection", b"keep-alive")
        } else {
            !lists(head, b"connection", b"close")
        }
    }

    /// What a message says once its framing is read: the framing, whether the connection may
    /// carry another message, and the header fields as an intermediary forwards them (RFC 9112
    /// §6.3: a message framed by Transfer-Encoding loses its Content-Length; a Content-Length
    /// list of one value becomes that value).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Framed {
        pub framing: Framing,
        pub keep_alive: bool,
        pub headers: Fields,
    }

    fn without(head: &Head, name: &[u8]) -> Fields {
        head.headers.iter().filter(|(n, _)| n != name).cloned().collect()
    }

    /// RFC 9112 §6.1 and §6.3 for a request. A server must find where a request ends, so a
    /// transfer coding other than chunked last (or any in HTTP/1.0) is refused; one with both
    /// headers is read as chunked and its connection closed.
    pub fn request_framing(head: &Head) -> Result<Framed, &'static str> {
        if has(head, b"transfer-encoding") {
            if !last_coding_is_chunked(head) || head.minor == 0 {
                return Err("a request coding other than chunked last");
            }
            let both = has(head, b"content-length");
            return Ok(Framed {
                framing: Framing::Chunked,
                keep_alive: persistent(head) && !both,
                headers: without(head, b"content-length"),
            });
        }
        let framing = match content_length(head)? {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        };
        Ok(Framed {
            framing,
            keep_alive: persistent(head),
            headers: head.headers.clone(),
        })
    }

    /// RFC 9112 §6.3 for the response to a `head_request` (HEAD) or another request.
    pub fn response_framing(head: &Head, head_request: bool) -> Result<Framed, &'static str> {
        let code = &head.first;
        let switching = code == b"101";
        let bodyless = head_request || code[0] == b'1' || code == b"204" || code == b"304";
        let keep = |close: bool| persistent(head) && !close && !switching;
        if bodyless {
            return Ok(Framed {
                framing: Framing::Empty,
                keep_alive: keep(false),
                headers: head.headers.clone(),
            });
        }
        if has(head, b"transfer-encoding") {
            let chunked = last_coding_is_chunked(head);
            let close = !chunked || has(head, b"content-length") || head.minor == 0;
            return Ok(Framed {
                framing: if chunked { Framing::Chunked } else { Framing::Eof },
                keep_alive: keep(close),
                headers: without(head, b"content-length"),
            });
        }
        match content_length(head)? {
            Some(n) => {
                let mut headers = without(head, b"content-length");
                headers.push((b"content-length".to_vec(), n.to_string().into_bytes()));
                Ok(Framed {
                    framing: Framing::Length(n),
                    keep_alive: keep(false),
                    headers,
                })
            }
            None => Ok(Framed {
                framing: Framing::Eof,
                keep_alive: keep(true),
                headers: head.headers.clone(),
            }),
        }
    }

    /// One line and what follows it; `None` without a LF.
    fn line(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let lf = input.iter().position(|b| *b == b'\n')?;
        let mut line = &input[..lf];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        Some((line, &input[lf + 1..]))
    }

    /// `chunk-size [BWS] [";" chunk-ext]`: hex digits, then nothing, white space, or extensions.
    fn chunk_size(line: &[u8]) -> Option<u64> {
        if line.iter().any(|b| (*b < b' ' && *b != b'\t') || *b == 0x7f) {
            return None;
        }
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return None;
        }
        let rest = &line[digits..];
        let after_bws = &rest[rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count()..];
        if !(after_bws.is_empty() || after_bws[0] == b';') {
            return None;
        }
        let mut size: u64 = 0;
        for b in &line[..digits] {
            let digit = (*b as char).to_digit(16)?;
            size = size.checked_mul(16)?.checked_add(u64::from(digit))?;
        }
        Some(size)
    }

    /// The body of `framing` at the front of `input`: its bytes and how much of `input` it takes.
    pub fn body(framing: Framing, input: &[u8]) -> Read<(Vec<u8>, usize)> {
        match framing {
            Framing::Empty => Read::Ok((Vec::new(), 0)),
            Framing::Eof => Read::Ok((input.to_vec(), input.len())),
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= input.len() => Read::Ok((input[..n].to_vec(), n)),
                _ => Read::Partial,
            },
            Framing::Chunked => {
                let mut out = Vec::new();
                let mut rest = input;
                loop {
                    let Some((size_line, after)) = line(rest) else {
                        return Read::Partial;
                    };
                    let Some(size) = chunk_size(size_line) else {
                        return Read::Invalid("chunk size");
                    };
                    rest = after;
                    if size == 0 {
                        // Trailer fields, read and dropped, up to the empty line.
                        loop {
                            let Some((trailer, after)) = line(rest) else {
                                return Read::Partial;
                            };
                            rest = after;
                            if trailer.is_empty() {
                                return Read::Ok((out, input.len() - rest.len()));
                            }
                        }
                    }
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    if rest.len() < size {
                        return Read::Partial;
                    }
                    out.extend_from_slice(&rest[..size]);
                    rest = &rest[size..];
                    // The line that ends the chunk's data: not known to be wrong until it ends.
                    match line(rest) {
                        None => return Read::Partial,
                        Some((end, _)) if !end.is_empty() => {
                            return Read::Invalid("a chunk longer than its size")
                        }
                        Some((_, after)) => rest = after,
                    }
                }
            }
        }
    }
}

fn reference_framing(f: Framing) -> reference::Framing {
    match f {
        Framing::Empty => reference::Framing::Empty,
        Framing::Length(n) => reference::Framing::Length(n),
        Framing::Chunked => reference::Framing::Chunked,
        Framing::Eof => reference::Framing::Eof,
    }
}

/// A header map as (lower-case name, value) pairs in a fixed order.
fn pairs(map: &HeaderMap) -> reference::Fields {
    let mut pairs: Vec<_> = map
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    pairs.sort();
    pairs
}

fn sorted(mut pairs: reference::Fields) -> reference::Fields {
    pairs.sort();
    pairs
}

/// Exactly one framing: a message framed by `Transfer-Encoding` carries no `Content-Length`
/// onwards, and one framed by length carries that length alone.
fn one_framing(map: &HeaderMap, framing: Framing) -> Result<(), TestCaseError> {
    let lengths: Vec<_> = map.get_all(header::CONTENT_LENGTH).iter().collect();
    match framing {
        Framing::Chunked => prop_assert!(lengths.is_empty(), "chunked and a length: {lengths:?}"),
        Framing::Length(n) => {
            prop_assert!(
                !map.contains_key(header::TRANSFER_ENCODING),
                "a length and a coding"
            );
            prop_assert_eq!(super::framing::content_length(map), Ok(Some(n)));
        }
        Framing::Empty | Framing::Eof => {}
    }
    Ok(())
}

/// Compares the body the proxy reads after a head with the reference's, and what is left.
fn same_body(framing: Framing, rest: BytesMut, raw_rest: &[u8]) -> Result<(), TestCaseError> {
    let mut source = Buffered(rest);
    let ours = read_all(framing, &mut source);
    let theirs = reference::body(reference_framing(framing), raw_rest);
    match (ours, theirs) {
        (Ok(body), reference::Read::Ok((expected, used))) => {
            prop_assert_eq!(body, expected);
            prop_assert_eq!(&source.0[..], &raw_rest[used..], "what follows the body");
        }
        (Err(std::io::ErrorKind::UnexpectedEof), reference::Read::Partial) => {}
        (Err(std::io::ErrorKind::InvalidData), reference::Read::Invalid(_)) => {}
        (ours, theirs) => prop_assert!(false, "body: ours {:?}, reference {:?}", ours, theirs),
    }
    Ok(())
}

/// The proxy's request parser against the reference on `input`.
fn check_request(input: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    let ours = parse_request(&mut buf, 0);
    let theirs = reference::request(input);
    let head = match ours {
        ParsedRequest::Bad(_) => return Ok(()),
        ParsedRequest::Partial => {
            prop_assert!(
                !matches!(theirs, reference::Read::Ok(_)),
                "ours waits, the reference read {theirs:?}"
            );
            return Ok(());
        }
        ParsedRequest::Head(head) => head,
    };
    let reference::Read::Ok(expected) = theirs else {
        return Err(TestCaseError::fail(format!(
            "accepted what the reference refuses: {theirs:?}"
        )));
    };
    let framed = reference::request_framing(&expected)
        .map_err(|e| TestCaseError::fail(format!("accepted a framing the reference refuses: {e}")))?;
    let request = &head.request;
    one_framing(request.headers(), head.framing)?;
    prop_assert_eq!(request.method().as_str().as_bytes(), &expected.first[..]);
    if expected.target.starts_with(b"/") {
        let target = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        prop_assert_eq!(target.as_bytes(), &expected.target[..]);
    }
    let version = if expected.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    prop_assert_eq!(request.version(), version);
    prop_assert_eq!(pairs(request.headers()), sorted(framed.headers));
    prop_assert_eq!(reference_framing(head.framing), framed.framing);
    prop_assert_eq!(head.keep_alive, framed.keep_alive);
    prop_assert_eq!(input.len() - buf.len(), expected.len, "head length");
    same_body(head.framing, buf, &input[expected.len..])
}

/// The proxy's response parser against the reference on `input`, read as the answer to `method`.
fn check_response(input: &[u8], method: &Method) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    let ours = parse_response(&mut buf, method);
    let theirs = reference::response(input);
    let head: ResponseHead = match ours {
        Err(_) => return Ok(()),
        Ok(None) => {
            prop_assert!(
                !matches!(theirs, reference::Read::Ok(_)),
                "ours waits, the reference read {theirs:?}"
            );
            return Ok(());
        }
        Ok(Some(head)) => head,
    };
    let reference::Read::Ok(expected) = theirs else {
        return Err(TestCaseError::fail(format!(
            "accepted what the reference refuses: {theirs:?}"
        )));
    };
    let framed = reference::response_framing(&expected, *method == Method::HEAD)
        .map_err(|e| TestCaseError::fail(format!("accepted a framing the reference refuses: {e}")))?;
    one_framing(&head.headers, head.framing)?;
    prop_assert_eq!(head.status.as_str().as_bytes(), &expected.first[..]);
    prop_assert_eq!(pairs(&head.headers), sorted(framed.headers));
    prop_assert_eq!(reference_framing(head.framing), framed.framing);
    prop_assert_eq!(head.keep_alive, framed.keep_alive);
    prop_assert_eq!(input.len() - buf.len(), expected.len, "head length");
    same_body(head.framing, buf, &input[expected.len..])
}

/// A message as lines, to mutate the way attacks and broken peers do.
#[derive(Debug, Clone)]
struct Message {
    start: Vec<u8>,
    fields: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl Message {
    fn new(start: &str, fields: &[&str], body: &str) -> Self {
        Message {
            start: start.into(),
            fields: fields.iter().map(|f| f.as_bytes().to_vec()).collect(),
            body: body.into(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.start.clone();
        out.extend_from_slice(b"\r\n");
        for field in &self.fields {
            out.extend_from_slice(field);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

const CHUNKED_BODY: &str = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";

fn requests() -> Vec<Message> {
    vec![
        Message::new("GET / HTTP/1.1", &["Host: example.com", "Accept: */*"], ""),
        Message::new(
            "POST /upload?x=1 HTTP/1.1",
            &["Host: example.com", "Content-Length: 5"],
            "hello",
        ),
        Message::new(
            "POST /chunked HTTP/1.1",
            &["Host: example.com", "Transfer-Encoding: chunked"],
            CHUNKED_BODY,
        ),
        Message::new(
            "GET http://example.com/a HTTP/1.0",
            &["Connection: keep-alive"],
            "",
        ),
        Message::new(
            "PUT /p HTTP/1.1",
            &[
                "Host: h",
                "Expect: 100-continue",
                "Content-Length: 0",
                "Connection: close",
            ],
            "NEXT",
        ),
    ]
}

fn responses() -> Vec<Message> {
    vec![
        Message::new(
            "HTTP/1.1 200 OK",
            &["Content-Length: 5", "Content-Type: text/plain"],
            "hello",
        ),
        Message::new("HTTP/1.1 200 OK", &["Transfer-Encoding: chunked"], CHUNKED_BODY),
        Message::new("HTTP/1.0 200 OK", &["Server: x"], "until the connection closes"),
        Message::new("HTTP/1.1 204 No Content", &["Connection: keep-alive"], ""),
        Message::new("HTTP/1.1 304 Not Modified", &["Content-Length: 10"], ""),
        Message::new(
            "HTTP/1.1 101 Switching Protocols",
            &["Upgrade: websocket", "Connection: upgrade"],
            "",
        ),
        Message::new("HTTP/1.1 100 Continue", &[], "HTTP/1.1 200 OK\r\n\r\n"),
    ]
}

const LENGTHS: &[&str] = &[
    "5",
    "+5",
    "0x5",
    " 5",
    "5 ",
    "-0",
    "05",
    "5, 5",
    "5,6",
    "5,",
    "",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "5\t",
    "5 5",
    "1e3",
];
const CODINGS: &[&str] = &[
    "chunked",
    "Chunked",
    "gzip, chunked",
    "chunked, gzip",
    "chunked,",
    ",chunked",
    " chunked ",
    "identity",
    "",
    "chunked;q=1",
    "x\u{ff}",
];
const SIZES: &[&str] = &[
    "5",
    "5;ext=1",
    "5 ;x",
    "5 ",
    " 5",
    "\t5",
    "+5",
    "-5",
    "0x5",
    "ffffffffffffffffff",
    "00000005",
    "5 x",
    "5\t",
    "5;a\u{1}b",
    "6",
    "4",
    "",
    "5\r",
];

/// A change to a message. Indices pick a line, a byte or a value, modulo what there is.
#[derive(Debug, Clone)]
enum Mutation {
    DuplicateField(Index),
    FieldCase(Index, u32),
    SpaceBeforeColon(Index, bool),
    ObsFold(Index),
    SetLength(Index, bool),
    AddCoding(Index),
    ChunkSize(Index),
    Version(bool),
    FlipByte(Index, u8),
    InsertByte(Index, u8),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(&b" \t\r\n:,;0 5aXx\x00\x7f\x80+-\""[..]);
    prop_oneof![
        any::<Index>().prop_map(Mutation::DuplicateField),
        (any::<Index>(), any::<u32>()).prop_map(|(i, bits)| Mutation::FieldCase(i, bits)),
        (any::<Index>(), any::<bool>()).prop_map(|(i, tab)| Mutation::SpaceBeforeColon(i, tab)),
        any::<Index>().prop_map(Mutation::ObsFold),
        (any::<Index>(), any::<bool>()).prop_map(|(i, add)| Mutation::SetLength(i, add)),
        any::<Index>().prop_map(Mutation::AddCoding),
        any::<Index>().prop_map(Mutation::ChunkSize),
        any::<bool>().prop_map(Mutation::Version),
        (any::<Index>(), 1u8..=255).prop_map(|(i, mask)| Mutation::FlipByte(i, mask)),
        (any::<Index>(), prop_oneof![interesting, any::<u8>()]).prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// Applies the line mutations to `message` and returns its bytes with the byte mutations.
fn mutate(mut message: Message, mutations: &[Mutation]) -> Vec<u8> {
    let mut byte_level = Vec::new();
    for m in mutations {
        let fields = message.fields.len();
        match m {
            Mutation::DuplicateField(i) if fields > 0 => {
                let field = message.fields[i.index(fields)].clone();
                message.fields.push(field);
            }
            Mutation::FieldCase(i, bits) if fields > 0 => {
                let field = &mut message.fields[i.index(fields)];
                let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
                for (k, b) in field[..colon].iter_mut().enumerate() {
                    if bits >> (k % 32) & 1 == 1 {
                        *b = if b.is_ascii_lowercase() {
                            b.to_ascii_uppercase()
                        } else {
                            b.to_ascii_lowercase()
                        };
                    }
                }
            }
            Mutation::SpaceBeforeColon(i, tab) if fields > 0 => {
                let field = &mut message.fields[i.index(fields)];
                if let Some(colon) = field.iter().position(|b| *b == b':') {
                    field.insert(colon, if *tab { b'\t' } else { b' ' });
                }
            }
            Mutation::ObsFold(i) if fields > 0 => {
                let field = &mut message.fields[i.index(fields)];
                let at = field.len();
                field.splice(at..at, b"\r\n folded".iter().copied());
            }
            Mutation::SetLength(i, add) => {
                if !add {
                    message
                        .fields
                        .retain(|f| !f.to_ascii_lowercase().starts_with(b"content-length:"));
                }
                let value = LENGTHS[i.index(LENGTHS.len())];
                message
                    .fields
                    .push(format!("Content-Length: {value}").into_bytes());
            }
            Mutation::AddCoding(i) => {
                let value = CODINGS[i.index(CODINGS.len())];
                message
                    .fields
                    .push(format!("Transfer-Encoding: {value}").into_bytes());
            }
            Mutation::ChunkSize(i) => {
                let size = SIZES[i.index(SIZES.len())];
                let first_line = message
                    .body
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(0, |lf| lf + 1);
                let end = first_line.saturating_sub(2);
                message.body.splice(0..end, size.bytes());
            }
            Mutation::Version(one) => {
                let text = if *one { &b"HTTP/1.1"[..] } else { &b"HTTP/1.0"[..] };
                let start = &mut message.start;
                if start.starts_with(b"HTTP/1.") {
                    start.splice(0..8, text.iter().copied());
                } else if start.len() >= 8 {
                    let at = start.len() - 8;
                    start.splice(at.., text.iter().copied());
                }
            }
            other => byte_level.push(other.clone()),
        }
    }
    let mut bytes = message.bytes();
    for m in byte_level {
        match m {
            Mutation::FlipByte(i, mask) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] ^= mask;
            }
            Mutation::InsertByte(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, b);
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

/// `cases` each, kept modest so the suite stays fast; `PROPTEST_CASES=100000` runs a deeper
/// search on demand.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        // Failures are reported with the case; nothing to persist across runs.
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Requests as clients (and attackers) send them, mutated: accepted only as the reference
    /// reads them, and framed one way.
    #[test]
    fn mutated_requests_are_read_as_rfc_9112_reads_them(
        template in prop::sample::select(requests()),
        mutations in prop::collection::vec(mutation(), 0..5),
    ) {
        check_request(&mutate(template, &mutations))?;
    }

    /// Responses as backends send them, mutated, read as answers to GET or HEAD.
    #[test]
    fn mutated_responses_are_read_as_rfc_9112_reads_them(
        template in prop::sample::select(responses()),
        mutations in prop::collection::vec(mutation(), 0..5),
        head in any::<bool>(),
    ) {
        let method = if head { Method::HEAD } else { Method::GET };
        check_response(&mutate(template, &mutations), &method)?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes: no panic, and whatever is accepted agrees with the reference.
    #[test]
    fn arbitrary_bytes_never_panic_and_agree(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_request(&bytes)?;
        check_response(&bytes, &Method::GET)?;
        same_body(Framing::Chunked, BytesMut::from(&bytes[..]), &bytes)?;
    }

    /// Arbitrary bytes after a valid start line, from an alphabet that makes fields and framing.
    #[test]
    fn arbitrary_fields_never_panic_and_agree(
        fields in prop::collection::vec(prop::sample::select(&b"aZ-:;, \t\r\n05fx"[..]), 0..200),
    ) {
        let mut request = b"POST / HTTP/1.1\r\n".to_vec();
        request.extend_from_slice(&fields);
        check_request(&request)?;
        let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
        response.extend_from_slice(&fields);
        check_response(&response, &Method::GET)?;
    }

    /// Chunked bodies from the bytes chunk lines are made of: decoded as the reference decodes.
    #[test]
    fn chunked_bodies_decode_as_the_reference_decodes(
        body in prop::collection::vec(prop::sample::select(&b"0123456789abcdefABCDEF;= \t\r\nxX+-"[..]), 0..200),
    ) {
        same_body(Framing::Chunked, BytesMut::from(&body[..]), &body)?;
    }
}
