//! HTTP/1.1 message syntax (RFC 9112), shared by both sides of the proxy: the server that reads
//! clients' requests and writes their responses (`downstream.rs`), and the client that writes
//! requests to backends and reads their responses (`upstream.rs`).
//!
//! # Layering
//!
//! This module is the bottom layer of the crate's HTTP code and depends on nothing else in the
//! crate: only std, `bytes`, `http`, `httparse` and tokio's I/O traits (a unit test in
//! `tests.rs` holds it to that). Above it, `downstream` and `upstream` use it and never each
//! other; above them, the handler decides what to do with a message (route it, count it,
//! forward it). It is the split pingora makes with its `protocols/http/v1`, for the same
//! reasons:
//! - both sides must frame messages by the same rules. A proxy whose two sides disagree about
//!   where a message ends is how request smuggling and response splitting happen, and one copy
//!   of the rules (a `Content-Length` is digits only, `Transfer-Encoding` wins over it, ...)
//!   cannot disagree with itself;
//! - parsing that cannot reach the proxy's state (routes, pools, metrics) can be tested alone,
//!   byte by byte: the property tests in `tests.rs` feed it arbitrary bytes and mutated messages
//!   and hold it to an independent reader of RFC 9112.
//!
//! # Contents
//! - [`head`]: request and response heads around httparse, within [`head::MAX_HEAD_BYTES`] and
//!   [`head::MAX_HEADERS`];
//! - [`framing`]: how a body is delimited: none, `Content-Length`, chunked, or until close;
//! - [`chunked`]: the chunked coding, decoded and encoded;
//! - [`body`]: a body read frame by frame from a connection's buffer;
//! - [`authority`]: the grammar of `Host` and of a target's authority (HTTP/2's `:authority`
//!   shares it, so the handler checks both with it).

pub(crate) mod authority;
pub(crate) mod body;
pub(crate) mod chunked;
pub(crate) mod framing;
pub(crate) mod head;
#[cfg(test)]
mod tests;

pub(crate) use body::{poll_fill_buf, BodyReader, Source};
pub(crate) use framing::Framing;
pub(crate) use head::{is_upgrade_request, ResponseHead};
