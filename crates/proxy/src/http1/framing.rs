//! How a message's body is delimited (RFC 9112 §6.3): by nothing (no body), by `Content-Length`,
//! by the chunked coding, or by the end of the connection, and by exactly one of them. A message
//! whose framing two readers could see differently is how request smuggling and response
//! splitting start, so what is ambiguous is refused or, where RFC 9112 allows reading it, read one
//! way with the other header removed and the connection closed after it.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Eof,
}

/// A message's framing, and whether the connection must close after the message whatever the
/// `Connection` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delimited {
    pub framing: Framing,
    pub close: bool,
}

/// Why a message's framing cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("invalid Content-Length {0:?}")]
    InvalidLength(String),
    #[error("conflicting Content-Length values")]
    ConflictingLengths,
    #[error("a request's Transfer-Encoding must end in chunked (HTTP/1.1 only)")]
    RequestCoding,
}

/// A `Content-Length` element: ASCII digits only. `u64::from_str` alone would also take a sign
/// (`+5`), which a peer may read differently (RFC 9110 §8.6).
pub(crate) fn parse_length(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A message's `Content-Length`, from every such header and every comma-separated value in them
/// (RFC 9110 §8.6: repeats of one value are one length, different values are an error).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().unwrap_or("");
        for part in text.split(',') {
            // Optional white space around elements (RFC 9110 §5.6.1); a header value holds no
            // white space other than SP and HTAB, so `trim` removes exactly those.
            let n = parse_length(part.trim()).ok_or_else(|| {
                FramingError::InvalidLength(String::from_utf8_lossy(value.as_bytes()).into())
            })?;
            if found.is_some_and(|f| f != n) {
                return Err(FramingError::ConflictingLengths);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The last transfer coding the message lists, ignoring empty list elements (RFC 9110 §5.6.1):
/// the one that delimits the body when it is `chunked`.
fn last_transfer_coding(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        // A value that is not text is a coding nobody knows: never mistaken for chunked.
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|t| !t.is_empty())
}

fn ends_in_chunked(headers: &HeaderMap) -> bool {
    last_transfer_coding(headers).is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
}

/// How a request's body is delimited (RFC 9112 §6.3). A server must know where a request ends
/// to find the next one, so there is no read-until-close: a transfer coding other than chunked
/// last, or in HTTP/1.0, is refused, and so is an invalid or conflicting length. A request with
/// both `Transfer-Encoding` and `Content-Length` is read as chunked, its `Content-Length` is
/// removed (nothing downstream may act on it) and its connection closes after the response,
/// since such requests are how smuggling is attempted (§6.1).
pub(crate) fn request_framing(version: Version, headers: &mut HeaderMap) -> Result<Delimited, FramingError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if !ends_in_chunked(headers) || version == Version::HTTP_10 {
            return Err(FramingError::RequestCoding);
        }
        let close = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(Delimited {
            framing: Framing::Chunked,
            close,
        });
    }
    let framing = match content_length(headers)? {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    };
    Ok(Delimited {
        framing,
        close: false,
    })
}

/// Whether a response to `method` with `status` has no body whatever its headers say.
pub(crate) fn is_bodyless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// How a response to `method` is delimited (RFC 9112 §6.3), and `headers` made to say only that:
/// a response framed by `Transfer-Encoding` loses its `Content-Length` (an intermediary must
/// remove it before forwarding, §6.3 item 3, or the client would frame the body by it), and a
/// `Content-Length` given as a list of one value, or with leading zeros, becomes that value once.
///
/// A transfer coding other than chunked last runs to the end of the connection; so does a
/// response with neither header. One with `Transfer-Encoding` in HTTP/1.0, or with both
/// headers, is read as chunked but its connection is not reused (§6.1: "treat the message as if
/// the framing is faulty").
pub(crate) fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<Delimited, FramingError> {
    if is_bodyless(method, status) {
        // A HEAD response keeps the length of the GET it stands for.
        return Ok(Delimited {
            framing: Framing::Empty,
            close: false,
        });
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
        let chunked = ends_in_chunked(headers);
        return Ok(Delimited {
            framing: if chunked { Framing::Chunked } else { Framing::Eof },
            close: !chunked || had_length || version == Version::HTTP_10,
        });
    }
    match content_length(headers)? {
        Some(n) => {
            // Forwarded as one value in its shortest form: a list (`5, 5`), a repeat, or leading
            // zeros are valid to read but need not be to every client.
            let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
            let canonical = match (values.next(), values.next()) {
                (Some(v), None) => {
                    let digits = v.as_bytes();
                    digits.iter().all(u8::is_ascii_digit) && (digits.len() == 1 || digits[0] != b'0')
                }
                _ => false,
            };
            if !canonical {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok(Delimited {
                framing: Framing::Length(n),
                close: false,
            })
        }
        None => Ok(Delimited {
            framing: Framing::Eof,
            close: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn lengths_are_digits_only() {
        let length = |value: &str| content_length(&headers(&[("content-length", value)]));
        assert_eq!(length("5"), Ok(Some(5)));
        assert_eq!(length(" 7 "), Ok(Some(7)));
        assert_eq!(length("5, 5"), Ok(Some(5)));
        for bad in ["+5", "-0", "0x5", "5 5", "", "5,6", "5,", "18446744073709551616"] {
            assert!(length(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_response_says_only_what_frames_it() {
        let frame = |pairs: &[(&str, &str)]| {
            let mut map = headers(pairs);
            let d = response_framing(&Method::GET, StatusCode::OK, Version::HTTP_11, &mut map).unwrap();
            (d, map)
        };
        // Both headers: chunked, no Content-Length forwarded, the connection not reused.
        let (d, map) = frame(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        assert_eq!((d.framing, d.close), (Framing::Chunked, true));
        assert!(!map.contains_key(header::CONTENT_LENGTH));
        // An empty list element is not a coding: `chunked,` is chunked.
        let (d, _) = frame(&[("transfer-encoding", "chunked,")]);
        assert_eq!((d.framing, d.close), (Framing::Chunked, false));
        let (d, map) = frame(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(d.framing, Framing::Length(5));
        assert_eq!(map.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        for (given, forwarded) in [("05", "5"), ("5,5", "5"), ("0", "0"), ("10", "10")] {
            let (_, map) = frame(&[("content-length", given)]);
            assert_eq!(map[header::CONTENT_LENGTH], forwarded, "{given:?}");
        }
        let (d, _) = frame(&[("transfer-encoding", "gzip")]);
        assert_eq!((d.framing, d.close), (Framing::Eof, true));
    }
}
