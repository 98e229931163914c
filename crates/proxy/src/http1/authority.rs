//! The grammar of an authority as a request names it (RFC 9110 §7.2 and §4.2, RFC 3986 §3.2):
//! `Host`, an absolute-form target's authority, and HTTP/2's `:authority` share it.
//!
//! An authority is `host [":" port]` where host is a reg-name (letters, digits and
//! `-._~!$&'()*+,;=`), an IPv4 address (which that covers), or an IPv6 address in brackets, and
//! port is 1 to 5 digits up to 65535. Stricter than RFC 3986 in three ways that no real client
//! needs and that only serve to confuse what is behind the proxy: the host is never empty
//! (RFC 9110 §4.2.1 forbids an empty host for `http` URIs), there is no userinfo (`user@`, which
//! RFC 9110 §4.2.4 says to treat as an error), and no percent-encoding (a backend that decodes
//! it would see the `/`, `@` or space refused here in the clear).

use std::net::Ipv6Addr;

/// Whether `text` is a valid authority for a request.
pub(crate) fn is_valid(text: &[u8]) -> bool {
    let (host, port) = match text.first() {
        Some(b'[') => {
            let Some(close) = text.iter().position(|b| *b == b']') else {
                return false;
            };
            let literal = &text[1..close];
            let is_ipv6 = std::str::from_utf8(literal).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok());
            if !is_ipv6 {
                return false;
            }
            match &text[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (None, Some(port)),
                _ => return false,
            }
        }
        _ => match text.iter().rposition(|b| *b == b':') {
            Some(colon) => (Some(&text[..colon]), Some(&text[colon + 1..])),
            None => (Some(text), None),
        },
    };
    let host_ok = host.is_none_or(|h| !h.is_empty() && h.iter().all(|&b| is_reg_name_byte(b)));
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|s| s.parse::<u16>().is_ok())
    });
    host_ok && port_ok
}

/// unreserved / sub-delims of RFC 3986 (percent-encoding left out, see the module's doc).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_host_and_optional_port() {
        for good in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "[2001:db8::7]:65535",
            "xn--bcher-kva.example",
            "a_b-c~d",
        ] {
            assert!(is_valid(good.as_bytes()), "{good:?} refused");
        }
        for bad in [
            "",
            "a b",
            "evil.com/../x",
            "a@b",
            "user:pw@example.com",
            "a\\b",
            "a?b",
            "a#b",
            "a%2fb",
            ":80",
            "example.com:",
            "example.com:65536",
            "example.com:+80",
            "example.com:80:80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[zz]",
            "[fe80::1%25eth0]",
            "::1",
            "a\tb",
            "caf\u{e9}.example",
        ] {
            assert!(!is_valid(bad.as_bytes()), "{bad:?} accepted");
        }
    }
}
