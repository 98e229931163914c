//! The `--ready-dependency` check: one plain HTTP/1.1 GET whose status decides.
//!
//! Written against a raw TCP stream because all it needs is a status line; a full
//! client (reqwest, or hyper's client stack) would cost more build time than this
//! whole app.

use std::fmt;

use axum::http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line must arrive within this many bytes; anything longer is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// A parsed `http://` URL to probe.
#[derive(Debug, Clone)]
pub struct Dependency {
    url: String,
    /// Host as given to the resolver: IPv6 literals without their brackets.
    host: String,
    port: u16,
    /// `Host` header value, exactly as written in the URL.
    authority: String,
    path_and_query: String,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Dependency {
    /// Parses `http://HOST[:PORT][/PATH]`; the error is worded for clap.
    pub fn parse(s: &str) -> Result<Self, String> {
        // Checked before parsing so a missing or wrong scheme gets a plain answer
        // instead of the URI parser's "invalid format".
        match s.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => {}
            Some((scheme, _)) => return Err(format!("only http:// is supported, not {scheme}://")),
            None => return Err("must be an http:// URL".into()),
        }
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        let authority = uri.authority().ok_or_else(|| "has no host".to_owned())?;
        let host = authority.host();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Self {
            url: s.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    /// GETs the URL; `Ok` if it answered 2xx. No timeout of its own: the caller
    /// bounds the whole exchange, connect included.
    pub async fn check(&self) -> Result<(), String> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cutover-example-app\r\nConnection: close\r\n\r\n",
            self.path_and_query, self.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;

        let mut head = Vec::with_capacity(128);
        let mut buf = [0u8; 512];
        let line_end = loop {
            if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if head.len() > MAX_STATUS_LINE {
                return Err("answered with an over-long status line".into());
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the response: {e}"))?;
            if n == 0 {
                return Err("closed the connection without answering".into());
            }
            head.extend_from_slice(&buf[..n]);
        };
        let status = parse_status_line(&head[..line_end])
            .ok_or_else(|| "did not answer with an HTTP status line".to_owned())?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// The code from `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let d = Dependency::parse("http://127.0.0.1:8080/health/live?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 8080));
        assert_eq!(d.authority, "127.0.0.1:8080");
        assert_eq!(d.path_and_query, "/health/live?x=1");

        let d = Dependency::parse("http://[::1]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.host.as_str(), d.port), ("::1", 80));
        assert_eq!(d.path_and_query, "/");
    }

    #[test]
    fn rejects_other_schemes_and_non_urls() {
        for (s, want) in [
            ("https://example.test/", "only http://"),
            ("localhost:80/health", "http://"),
            ("/health", "http://"),
            ("http://", "URL"),
        ] {
            let err = Dependency::parse(s)
                .err()
                .unwrap_or_else(|| panic!("{s} was accepted"));
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn reads_status_codes() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 x"), None);
    }
}
