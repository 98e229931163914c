//! The chunked transfer coding (RFC 9112 §7.1), read and written.
//!
//! Reading is as strict as the grammar where a lax reader could be misled: a chunk size is hex
//! digits and nothing else (no sign, no `0x`, no leading white space, no overflow), followed by
//! nothing or by extensions after `;`. Two tolerances are kept because common servers send them
//! and they cannot be read two ways: white space between the size and the end of the line (as
//! nginx accepts), and a bare LF ending a line (RFC 9112 §2.2 allows it). Extensions and
//! trailers are read and dropped.

use bytes::{Bytes, BytesMut};

/// Ends a chunked body: the last chunk, no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// Ends a chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";
/// Longest line (a chunk size with its extensions, or a trailer) accepted.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("invalid chunk size line {0:?}")]
    Size(String),
    #[error("a chunk is longer than its size")]
    Overrun,
    #[error("a chunk header or trailer line is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// The line that opens a chunk: its size in hex, then CRLF. At most 16 digits and CRLF.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkHeader {
    bytes: [u8; 18],
    len: usize,
}

impl AsRef<[u8]> for ChunkHeader {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The line that opens a chunk of `len` bytes.
pub(crate) fn chunk_header(len: usize) -> ChunkHeader {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 18];
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, byte) in bytes[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *byte = HEX[(len >> shift) & 0xf];
    }
    bytes[digits] = b'\r';
    bytes[digits + 1] = b'\n';
    ChunkHeader {
        bytes,
        len: digits + 2,
    }
}

/// The size of a chunk from its line (without the line's end).
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let invalid = || ChunkError::Size(String::from_utf8_lossy(line).into_owned());
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at(digits);
    let after_space = rest.trim_ascii_start_sp_htab();
    let well_formed = !hex.is_empty()
        && (after_space.is_empty() || after_space[0] == b';')
        // No control character but HTAB anywhere, extensions included: a CR inside the line
        // could end it for another reader.
        && !line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
    if !well_formed {
        return Err(invalid());
    }
    hex.iter()
        .try_fold(0u64, |size, &b| {
            let digit = char::from(b).to_digit(16)?;
            size.checked_mul(16)?.checked_add(u64::from(digit))
        })
        .ok_or_else(invalid)
}

trait TrimSpHtab {
    fn trim_ascii_start_sp_htab(&self) -> &Self;
}

impl TrimSpHtab for [u8] {
    fn trim_ascii_start_sp_htab(&self) -> &[u8] {
        let start = self.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        &self[start..]
    }
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances over the bytes at the front of `buf`, taking what it reads out of `buf`: data to
    /// hand on, or `None` when it needs more bytes (or is done). Bytes past the end of the body
    /// stay in `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(data));
                }
                State::DataEnd => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    if !line.is_empty() {
                        return Err(ChunkError::Overrun);
                    }
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(None),
            }
        }
    }
}

/// One line from the front of `buf`, without its CRLF (or bare LF).
pub(crate) fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ChunkError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_without_their_crlf() {
        let mut buf = BytesMut::from(&b"1a;ext=1\r\nrest"[..]);
        assert_eq!(take_line(&mut buf).unwrap().unwrap(), &b"1a;ext=1"[..]);
        assert_eq!(&buf[..], b"rest");
        assert!(take_line(&mut buf).unwrap().is_none());
    }

    #[test]
    fn chunk_sizes_are_hex_digits_only() {
        for (line, size) in [
            ("5", 5),
            ("1A", 26),
            ("5;ext=1", 5),
            ("5 ;ext", 5),
            ("5 ", 5),
            ("0000000000000000005", 5),
            ("ffffffffffffffff", u64::MAX),
        ] {
            assert_eq!(parse_chunk_size(line.as_bytes()), Ok(size), "{line:?}");
        }
        for bad in [
            "",
            "+5",
            "-5",
            "0x5",
            " 5",
            "\t5",
            "5 x",
            "5\r",
            "5;a\rb",
            "10000000000000000",
            "g",
        ] {
            assert!(parse_chunk_size(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn chunk_headers_are_minimal_hex() {
        for (len, text) in [(0, "0\r\n"), (5, "5\r\n"), (26, "1a\r\n"), (0x1000, "1000\r\n")] {
            assert_eq!(chunk_header(len).as_ref(), text.as_bytes());
        }
        let max = chunk_header(usize::MAX);
        assert_eq!(
            parse_chunk_size(&max.as_ref()[..max.as_ref().len() - 2]),
            Ok(usize::MAX as u64)
        );
    }

    #[test]
    fn a_body_decodes_whole_and_leaves_what_follows() {
        let mut buf = BytesMut::from(&b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..]);
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        while let Some(data) = decoder.decode(&mut buf).unwrap() {
            out.extend_from_slice(&data);
        }
        assert!(decoder.is_done());
        assert_eq!(out, b"hello world");
        assert_eq!(&buf[..], b"NEXT");
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"2\r\nhello\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), &b"he"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ChunkError::Overrun));
    }
}
