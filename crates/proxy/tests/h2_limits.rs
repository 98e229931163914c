#![allow(clippy::unwrap_used, clippy::expect_used)]

//! HTTP/2 abuse is bounded (issue #11): rapid resets, CONTINUATION floods, streams the client
//! makes the server reset, too many concurrent streams, and a client that never opens its
//! flow-control window. Each is driven by a deliberately minimal h2c client written here (prior
//! knowledge, hand-built frames, HPACK literals without Huffman) so the tests can misbehave in
//! ways a real client library refuses to. An in-process HTTP/1.1 backend counts what reaches it.
//!
//! Every wait is bounded by a deadline, and every loop by a count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{Pool, RouteTable, Slot};
use cutover_proxy::listener::{
    H2_INITIAL_CONNECTION_WINDOW, H2_INITIAL_STREAM_WINDOW, H2_MAX_CONCURRENT_STREAMS, H2_MAX_FRAME_SIZE,
    H2_MAX_HEADER_LIST_SIZE, H2_MAX_LOCAL_ERROR_RESET_STREAMS,
};
use cutover_proxy::{AppProxy, ListenerKind, ProxySettings};
use cutover_test_support::{http_client, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest any single wait for the proxy may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

// ===== the backend =====

/// Body size of the backend's `/big`: far more than any buffer on the way could hold.
const BIG_BODY: u64 = 256 * 1024 * 1024;

/// What the backend saw.
struct BackendState {
    /// Requests whose head arrived.
    requests: AtomicUsize,
    /// Requests for `/hold` waiting for [`Backend::release`].
    held: AtomicUsize,
    /// Largest request head, in bytes.
    largest_head: AtomicUsize,
    /// Body bytes of `/big` the proxy has taken (written into the socket).
    big_written: AtomicU64,
    /// `/big` responses whose connection the proxy closed before the end.
    big_cut: AtomicUsize,
    release: watch::Sender<bool>,
}

/// A keep-alive HTTP/1.1 backend on loopback: `/hold` answers once released, `/big` sends
/// [`BIG_BODY`] bytes, everything else answers `200 ok` at once. Requests have no body.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            requests: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            largest_head: AtomicUsize::new(0),
            big_written: AtomicU64::new(0),
            big_cut: AtomicUsize::new(0),
            release: watch::channel(false).0,
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(backend_connection(conn, Arc::clone(&shared)));
            }
        });
        Backend { addr, state }
    }

    fn release(&self) {
        self.state.release.send_replace(true);
    }
}

async fn backend_connection(mut conn: TcpStream, state: Arc<BackendState>) {
    let mut buf = Vec::new();
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 1024 * 1024 {
                return;
            }
            let mut chunk = [0u8; 16 * 1024];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.largest_head.fetch_max(head_len, Ordering::SeqCst);
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        match head.split_whitespace().nth(1).unwrap_or("/") {
            "/hold" => {
                state.held.fetch_add(1, Ordering::SeqCst);
                let mut release = state.release.subscribe();
                if release.wait_for(|released| *released).await.is_err() {
                    return;
                }
                if conn.write_all(OK).await.is_err() {
                    return;
                }
            }
            "/big" => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG_BODY}\r\n\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let zeros = vec![0u8; 64 * 1024];
                let mut left = BIG_BODY;
                while left > 0 {
                    let n = zeros.len().min(usize::try_from(left).unwrap());
                    if conn.write_all(&zeros[..n]).await.is_err() {
                        state.big_cut.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    left -= n as u64;
                    state.big_written.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            _ => {
                if conn.write_all(OK).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ===== the proxy =====

struct Proxy {
    app: Arc<AppProxy>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Proxy {
    /// The proxy on a loopback port with `backend` as its only (live) backend.
    async fn start(backend: &Backend) -> Proxy {
        Proxy::start_with(backend, ProxySettings::default()).await
    }

    async fn start_with(backend: &Backend, mut settings: ProxySettings) -> Proxy {
        settings.health_check.enabled = false;
        let route = RouteTable {
            live: Slot::Blue,
            canary_weight_bp: 0,
            blue: Pool {
                version: "v1".into(),
                backends: vec![backend.addr],
            },
            green: Pool::default(),
        };
        let app = AppProxy::new("web", settings, route).unwrap();
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(cutover_proxy::serve(
            listener,
            Arc::clone(&app),
            ListenerKind::Public,
            None,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        Proxy { app, addr, shutdown }
    }

    /// A fresh, well-behaved client is served over HTTP/2 and over HTTP/1.1.
    async fn assert_still_serving(&self) {
        let mut client = H2::connect(self.addr, &[]).await;
        client.handshake().await;
        client.send(&get(1, "/")).await.unwrap();
        assert_eq!(client.status(1).await, 200, "a fresh HTTP/2 client is served");
        let r = http_client()
            .get(format!("http://{}/", self.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a fresh HTTP/1.1 client is served");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.app.retire_all();
    }
}

// ===== a minimal HTTP/2 client =====

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const FLOW_CONTROL_ERROR: u32 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    /// The window size increment of a WINDOW_UPDATE.
    fn increment(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }
}

#[derive(Debug)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

/// The encoding of one frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings_frame(settings: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// HPACK integer with an `prefix`-bit prefix, the first byte's other bits being `flags`.
fn hpack_int(out: &mut Vec<u8>, prefix: u8, flags: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | u8::try_from(value).unwrap());
        return;
    }
    out.push(flags | u8::try_from(max).unwrap());
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | u8::try_from(value & 0x7f).unwrap());
        value >>= 7;
    }
    out.push(u8::try_from(value).unwrap());
}

/// A header field as an HPACK literal with a literal name, no Huffman; `flags` 0x00 is "without
/// indexing", 0x10 "never indexed". Neither touches the dynamic table.
fn hpack_literal(out: &mut Vec<u8>, flags: u8, name: &str, value: &str) {
    out.push(flags);
    hpack_int(out, 7, 0, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 7, 0, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a GET of `path` with `extra` header fields.
fn request_block(path: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "cutover.test"),
        (":path", path),
    ] {
        hpack_literal(&mut block, 0x00, name, value);
    }
    for (name, value) in extra {
        hpack_literal(&mut block, 0x10, name, value);
    }
    block
}

/// A bodiless GET of `path` on `stream` in one HEADERS frame.
fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &request_block(path, &[]),
    )
}

/// A bodiless request on `stream` whose header block is split into a HEADERS frame and as many
/// CONTINUATION frames as [`H2_MAX_FRAME_SIZE`] requires.
fn get_split(stream: u32, block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(H2_MAX_FRAME_SIZE as usize).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, END_STREAM | last, stream, chunk));
        } else {
            out.extend(frame(CONTINUATION, last, stream, chunk));
        }
    }
    out
}

/// `count` header fields of `size`-byte values.
fn big_fields(count: usize, size: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-big-{i:02}"), "v".repeat(size)))
        .collect()
}

/// HPACK-decoded size of `fields` as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 §6.5.2).
fn list_size(fields: &[(String, String)]) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}

/// Decodes an HPACK integer with a `prefix`-bit prefix at `block[*at..]`.
fn decode_int(block: &[u8], at: &mut usize, prefix: u8) -> usize {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(block[*at]) & max;
    *at += 1;
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let b = block[*at];
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return value;
        }
    }
}

/// Decodes a Huffman-coded (RFC 7541 Appendix B) string of digits, enough for a status code.
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| bits[at..at + n].iter().fold(0u8, |acc, b| acc << 1 | b);
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        let rest = bits.len() - at;
        if rest < 8 && bits[at..].iter().all(|b| *b == 1) {
            break; // padding: a prefix of EOS
        }
        // '0'..'2' are 00000..00010; '3'..'9' are 011001..011111.
        if rest >= 5 && take(at, 5) <= 2 {
            out.push(char::from(b'0' + take(at, 5)));
            at += 5;
        } else if rest >= 6 && (0x19..=0x1f).contains(&take(at, 6)) {
            out.push(char::from(b'3' + take(at, 6) - 0x19));
            at += 6;
        } else {
            panic!("not a Huffman-coded digit string: {bytes:02x?}");
        }
    }
    out
}

/// The `:status` of a response header block from an encoder that may not use the dynamic table
/// (the client sends SETTINGS_HEADER_TABLE_SIZE = 0): h2 puts it first.
fn status_of(block: &[u8]) -> u16 {
    let mut at = 0;
    // Dynamic table size updates (001xxxxx).
    while block[at] & 0xe0 == 0x20 {
        decode_int(block, &mut at, 5);
    }
    if block[at] & 0x80 != 0 {
        return match decode_int(block, &mut at, 7) {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            other => panic!("header block starts with static entry {other}, not a :status"),
        };
    }
    let prefix = if block[at] & 0xc0 == 0x40 { 6 } else { 4 };
    let name = decode_int(block, &mut at, prefix);
    assert!(
        (8..=14).contains(&name),
        "header block starts with name {name}, not :status"
    );
    let huffman = block[at] & 0x80 != 0;
    let len = decode_int(block, &mut at, 7);
    let value = &block[at..at + len];
    let text = if huffman {
        huffman_digits(value)
    } else {
        String::from_utf8(value.to_vec()).unwrap()
    };
    text.parse().unwrap()
}

/// One h2c connection by prior knowledge. It answers SETTINGS and PING on its own and remembers a
/// GOAWAY; everything else is the test's to send and check.
struct H2 {
    sock: TcpStream,
    buf: Vec<u8>,
    /// The server closed (or reset) the connection.
    closed: bool,
    goaway: Option<GoAway>,
    /// Every RST_STREAM received: stream and error code.
    resets: Vec<(u32, u32)>,
    /// Sum of the connection-level WINDOW_UPDATEs received.
    connection_window_updates: u64,
    /// Payloads of the PING ACKs received.
    pongs: Vec<[u8; 8]>,
    /// ACKs owed to the server.
    owed: Vec<u8>,
}

impl H2 {
    /// Connects and sends the preface and a SETTINGS frame with `settings`, plus
    /// HEADER_TABLE_SIZE = 0 so that the server's response headers are easy to decode.
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> H2 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let mut all = vec![(SETTINGS_HEADER_TABLE_SIZE, 0)];
        all.extend_from_slice(settings);
        let mut hello = PREFACE.to_vec();
        hello.extend(settings_frame(&all));
        sock.write_all(&hello).await.unwrap();
        H2 {
            sock,
            buf: Vec::new(),
            closed: false,
            goaway: None,
            resets: Vec::new(),
            connection_window_updates: 0,
            pongs: Vec::new(),
            owed: Vec::new(),
        }
    }

    /// Writes `bytes`; an error means the server closed the connection. A server that neither
    /// reads nor closes fails the test.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(PATIENCE, self.sock.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => panic!(
                "the server neither read {} bytes nor closed in {PATIENCE:?}",
                bytes.len()
            ),
        }
    }

    /// Whether the server has sent GOAWAY or closed the connection.
    fn cut(&self) -> bool {
        self.closed || self.goaway.is_some()
    }

    /// A complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = usize::from(self.buf[0]) << 16 | usize::from(self.buf[1]) << 8 | usize::from(self.buf[2]);
        if self.buf.len() < 9 + len {
            return None;
        }
        let head: Vec<u8> = self.buf.drain(..9).collect();
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload: self.buf.drain(..len).collect(),
        };
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => self.owed.extend(frame(SETTINGS, ACK, 0, &[])),
            PING if f.flags & ACK == 0 => self.owed.extend(frame(PING, ACK, 0, &f.payload)),
            PING => self.pongs.push(f.payload[..8].try_into().unwrap()),
            RST_STREAM => self.resets.push((f.stream, f.error_code())),
            WINDOW_UPDATE if f.stream == 0 => {
                self.connection_window_updates += u64::from(f.increment());
            }
            GOAWAY => {
                self.goaway = Some(GoAway {
                    last_stream: u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff,
                    code: f.error_code(),
                    debug: String::from_utf8_lossy(&f.payload[8..]).into_owned(),
                })
            }
            _ => {}
        }
        Some(f)
    }

    async fn pay_acks(&mut self) {
        if !self.owed.is_empty() && !self.closed {
            let owed = std::mem::take(&mut self.owed);
            let _ = self.sock.write_all(&owed).await;
        }
    }

    /// The frames that have arrived, without waiting for more.
    async fn ready_frames(&mut self) -> Vec<Frame> {
        let mut chunk = vec![0u8; 64 * 1024];
        while !self.closed {
            match self.sock.try_read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        let frames = std::iter::from_fn(|| self.parse()).collect();
        self.pay_acks().await;
        frames
    }

    /// The next frame, or `None` once the server closed the connection; fails the test if
    /// neither comes by `deadline`.
    async fn next_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse() {
                self.pay_acks().await;
                return Some(frame);
            }
            if self.closed {
                return None;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!(
                    "no frame from the server in time; GOAWAY so far: {:?}",
                    self.goaway
                ),
            }
        }
    }

    /// Waits for the server's SETTINGS (acknowledging them) and returns them.
    async fn handshake(&mut self) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let frame = self
                .next_frame(deadline)
                .await
                .expect("closed before its SETTINGS");
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                return frame
                    .payload
                    .chunks(6)
                    .map(|s| {
                        (
                            u16::from_be_bytes([s[0], s[1]]),
                            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                        )
                    })
                    .collect();
            }
        }
    }

    /// The status of the response on `stream` (skipping frames of other streams).
    async fn status(&mut self, stream: u32) -> u16 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let Some(frame) = self.next_frame(deadline).await else {
                panic!(
                    "connection closed before a response on stream {stream}; GOAWAY: {:?}",
                    self.goaway
                );
            };
            if frame.stream != stream {
                continue;
            }
            match frame.kind {
                HEADERS => {
                    assert!(frame.flags & END_HEADERS != 0, "response headers in one frame");
                    return status_of(&frame.payload);
                }
                RST_STREAM => panic!("stream {stream} reset with code {}", frame.error_code()),
                _ => {}
            }
        }
    }

    /// Sends a PING and reads until its ACK, which the server sends once it has handled every
    /// frame sent before. False if the connection was closed first.
    async fn ping(&mut self, payload: u64) -> bool {
        let payload = payload.to_be_bytes();
        if self.send(&frame(PING, 0, 0, &payload)).await.is_err() {
            return false;
        }
        let deadline = Instant::now() + PATIENCE;
        while !self.pongs.contains(&payload) {
            if self.next_frame(deadline).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Reads until the server has closed the connection (after a GOAWAY, if it sends one).
    async fn until_closed(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while self.next_frame(deadline).await.is_some() {}
    }
}

/// Asserts that the connection was cut for abuse: closed, and if the GOAWAY arrived before the
/// close (it normally does), with one of `codes`.
fn assert_cut_with(client: &H2, codes: &[u32], what: &str) {
    assert!(client.closed, "{what}: the connection must be closed");
    if let Some(goaway) = &client.goaway {
        assert!(
            codes.contains(&goaway.code),
            "{what}: GOAWAY with code {:#x} (expected one of {codes:x?}), debug data {:?}",
            goaway.code,
            goaway.debug
        );
    }
}

// ===== the tests =====

/// CVE-2023-44487: HEADERS then RST_STREAM(CANCEL) at once, thousands of times. The proxy cuts the
/// connection after a handful (h2: 20 reset before they were accepted) and keeps serving others.
#[tokio::test]
async fn h2_rapid_reset_is_cut_early_and_others_are_still_served() {
    const BATCH: u32 = 100;
    const MAX_STREAMS: u32 = 10_000;
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    client.handshake().await;

    let mut opened = 0u32;
    while opened < MAX_STREAMS {
        client.ready_frames().await;
        if client.cut() {
            break;
        }
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            let stream = 2 * opened + 1;
            batch.extend(get(stream, "/"));
            batch.extend(rst_stream(stream, CANCEL));
            opened += 1;
        }
        if client.send(&batch).await.is_err() {
            break;
        }
    }
    client.until_closed().await;
    assert_cut_with(&client, &[ENHANCE_YOUR_CALM], "rapid reset");
    // How far the server got is the GOAWAY's last stream id: the client wrote everything into
    // socket buffers long before. (Without a GOAWAY, the close alone shows a bound: this client
    // never closes.)
    if let Some(goaway) = &client.goaway {
        assert!(
            goaway.last_stream < 2 * 1000,
            "the server should give up within the first thousand streams: {goaway:?}"
        );
    }
    proxy.assert_still_serving().await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames full of
/// header fields. The proxy must cut the connection at its header-list bound, not buffer: since
/// END_HEADERS never comes, only a bound can end it, and the flood stops at 1 MiB.
#[tokio::test]
async fn h2_continuation_flood_of_header_bytes_is_cut() {
    const FLOOD_CAP: usize = 1024 * 1024;
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    client.handshake().await;

    client
        .send(&frame(HEADERS, END_STREAM, 1, &request_block("/", &[])))
        .await
        .unwrap();
    let mut sent = 0;
    let mut i = 0;
    while sent < FLOOD_CAP {
        client.ready_frames().await;
        if client.cut() {
            break;
        }
        // Whole header fields filling a maximal frame.
        let mut block = Vec::new();
        while block.len() + 1100 < H2_MAX_FRAME_SIZE as usize {
            hpack_literal(&mut block, 0x00, &format!("x-flood-{i}"), &"f".repeat(1024));
            i += 1;
        }
        if client.send(&frame(CONTINUATION, 0, 1, &block)).await.is_err() {
            break;
        }
        sent += block.len();
    }
    client.until_closed().await;
    assert_cut_with(
        &client,
        &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR],
        "CONTINUATION flood",
    );
    if let Some(goaway) = &client.goaway {
        assert_eq!(goaway.last_stream, 0, "the request was never opened: {goaway:?}");
    }
    assert_eq!(
        backend.state.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    proxy.assert_still_serving().await;
}

/// The same flood with empty CONTINUATION frames: no header bytes to count, so what bounds it is
/// h2's cap on the number of CONTINUATION frames of one block.
#[tokio::test]
async fn h2_continuation_flood_of_empty_frames_is_cut() {
    const BATCH: usize = 1000;
    const MAX_FRAMES: usize = 100_000;
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    client.handshake().await;

    client
        .send(&frame(HEADERS, END_STREAM, 1, &request_block("/", &[])))
        .await
        .unwrap();
    let batch: Vec<u8> = (0..BATCH).flat_map(|_| frame(CONTINUATION, 0, 1, &[])).collect();
    let mut sent = 0;
    while sent < MAX_FRAMES {
        client.ready_frames().await;
        if client.cut() || client.send(&batch).await.is_err() {
            break;
        }
        sent += BATCH;
    }
    client.until_closed().await;
    assert_cut_with(&client, &[ENHANCE_YOUR_CALM], "empty CONTINUATION flood");
    assert_eq!(backend.state.requests.load(Ordering::SeqCst), 0);
    proxy.assert_still_serving().await;
}

/// "MadeYouReset" (CVE-2025-8671): the client makes the *server* reset streams (here with a
/// WINDOW_UPDATE that overflows the stream's window), which the rapid-reset bound does not
/// count. The proxy cuts the connection after H2_MAX_LOCAL_ERROR_RESET_STREAMS of them.
#[tokio::test]
async fn h2_streams_the_client_makes_the_proxy_reset_are_bounded() {
    let streams = u32::try_from(H2_MAX_LOCAL_ERROR_RESET_STREAMS).unwrap() + 100;
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    client.handshake().await;

    let mut opened = 0u32;
    let mut batches = 0;
    while opened < streams && !client.cut() {
        let mut batch = Vec::new();
        for _ in 0..32 {
            let stream = 2 * opened + 1;
            // `/hold` keeps the stream open until the WINDOW_UPDATE is seen.
            batch.extend(get(stream, "/hold"));
            batch.extend(window_update(stream, 0x7fff_ffff));
            opened += 1;
        }
        // Waiting for a PING's ACK after each batch lets the server be done with one batch
        // before the next: else streams it reset but has not released yet would count against
        // the concurrency limit, and further ones be refused instead (refusals count too).
        batches += 1;
        if client.send(&batch).await.is_err() || !client.ping(batches).await {
            break;
        }
    }
    client.until_closed().await;
    assert_cut_with(&client, &[ENHANCE_YOUR_CALM], "server-side reset flood");
    let resets = |code| client.resets.iter().filter(|(_, c)| *c == code).count();
    let (overflowed, refused) = (resets(FLOW_CONTROL_ERROR), resets(REFUSED_STREAM));
    if let Some(goaway) = &client.goaway {
        assert!(
            goaway.last_stream < 2 * streams - 1,
            "cut before the last stream: {goaway:?}"
        );
    }
    // The one over the limit may get its RST_STREAM before the GOAWAY; those of the last batch
    // may be dropped with the connection.
    assert!(
        overflowed + refused <= H2_MAX_LOCAL_ERROR_RESET_STREAMS + 1,
        "{overflowed} + {refused} streams reset by the server before the GOAWAY"
    );
    assert!(
        overflowed + refused >= H2_MAX_LOCAL_ERROR_RESET_STREAMS / 2,
        "only {overflowed} + {refused} streams reset by the server before the GOAWAY"
    );
    backend.release();
    proxy.assert_still_serving().await;
}

/// The advertised SETTINGS carry the limits, and streams over SETTINGS_MAX_CONCURRENT_STREAMS are
/// refused (REFUSED_STREAM) without reaching the backend, while those within it are served and
/// the connection stays usable.
#[tokio::test]
async fn h2_streams_over_the_advertised_limit_are_refused() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    let settings = client.handshake().await;
    let advertised = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        advertised(SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(H2_MAX_CONCURRENT_STREAMS),
        "{settings:?}"
    );
    assert_eq!(
        advertised(SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(H2_MAX_HEADER_LIST_SIZE),
        "{settings:?}"
    );
    assert_eq!(
        advertised(SETTINGS_INITIAL_WINDOW_SIZE),
        Some(H2_INITIAL_STREAM_WINDOW),
        "{settings:?}"
    );
    // 16 KiB is the protocol's default, which a server need not repeat.
    assert!(
        matches!(
            advertised(SETTINGS_MAX_FRAME_SIZE),
            None | Some(H2_MAX_FRAME_SIZE)
        ),
        "{settings:?}"
    );

    let limit = H2_MAX_CONCURRENT_STREAMS;
    let all: Vec<u8> = (0..limit).flat_map(|i| get(2 * i + 1, "/hold")).collect();
    client.send(&all).await.unwrap();
    let held = Arc::clone(&backend.state);
    wait_until("every allowed stream to reach the backend", PATIENCE, || {
        let held = Arc::clone(&held);
        async move { held.held.load(Ordering::SeqCst) == limit as usize }
    })
    .await;

    // One too many, while all the others are still open.
    let over = 2 * limit + 1;
    client.send(&get(over, "/hold")).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let frame = client.next_frame(deadline).await.expect("connection closed");
        assert!(
            !(frame.kind == HEADERS && frame.stream != over),
            "no held stream was answered yet: {frame:?}"
        );
        if frame.kind == RST_STREAM && frame.stream == over {
            assert_eq!(frame.error_code(), REFUSED_STREAM, "{frame:?}");
            break;
        }
    }

    backend.release();
    let mut done = 0;
    let deadline = Instant::now() + PATIENCE;
    while done < limit {
        let frame = client.next_frame(deadline).await.expect("connection closed");
        match frame.kind {
            HEADERS => assert_eq!(status_of(&frame.payload), 200, "stream {}", frame.stream),
            RST_STREAM => panic!("stream {} reset: {frame:?}", frame.stream),
            _ => {}
        }
        if matches!(frame.kind, HEADERS | DATA) && frame.flags & END_STREAM != 0 {
            done += 1;
        }
    }
    assert_eq!(
        backend.state.held.load(Ordering::SeqCst),
        limit as usize,
        "the refused stream never reached the backend"
    );
    // The connection window is opened from the protocol's 65 535 bytes to the configured size
    // (no request had a body to take any of it back).
    assert_eq!(
        client.connection_window_updates,
        u64::from(H2_INITIAL_CONNECTION_WINDOW) - 65_535
    );
    // The limit is on streams at once, not in total.
    let next = over + 2;
    client.send(&get(next, "/")).await.unwrap();
    assert_eq!(client.status(next).await, 200);
    assert!(client.goaway.is_none(), "{:?}", client.goaway);
}

/// Adds the DATA of stream 1 in `frames` to `received`, checking it stays within `allowed`.
fn count_data(frames: Vec<Frame>, received: &mut usize, allowed: usize) {
    for frame in frames {
        assert!(frame.kind != RST_STREAM && frame.kind != GOAWAY, "{frame:?}");
        if frame.kind == DATA && frame.stream == 1 {
            *received += frame.payload.len();
            assert!(
                *received <= allowed,
                "{received} bytes sent through a {allowed}-byte window"
            );
        }
    }
}

/// A client that advertises a 1-byte window and never opens it, asking for a huge response: the
/// proxy sends it at most 1 byte and stops reading the backend, which sees backpressure, instead
/// of buffering the response. Opening the window lets exactly that much more through.
#[tokio::test]
async fn h2_a_client_that_never_opens_its_window_backpressures_the_backend() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1)]).await;
    client.handshake().await;
    client.send(&get(1, "/big")).await.unwrap();
    assert_eq!(client.status(1).await, 200);

    let mut received = 0usize;
    let mut allowed = 1usize;

    // Wait until the backend cannot write any more: no progress for a second. Whether it stalled
    // for good or just paused, what it wrote by then is what the proxy took.
    let written = &backend.state.big_written;
    let deadline = Instant::now() + PATIENCE;
    let mut last = written.load(Ordering::SeqCst);
    let mut since = Instant::now();
    let stalled_at = loop {
        let frames = client.ready_frames().await;
        count_data(frames, &mut received, allowed);
        assert!(!client.cut(), "connection cut: {:?}", client.goaway);
        let now = written.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_secs(1) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the backend never stalled: {now} of {BIG_BODY} bytes written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Socket buffers on both sides of the upstream connection hold a few MiB at most; the proxy
    // itself about one send buffer and a chunk.
    assert!(
        stalled_at < 64 * 1024 * 1024,
        "the proxy read {stalled_at} bytes of the backend's response for a client that took 1 byte"
    );

    // Opening the window lets exactly that much through.
    const MORE: u32 = 1024 * 1024;
    let mut update = window_update(1, MORE);
    update.extend(window_update(0, MORE));
    client.send(&update).await.unwrap();
    allowed += MORE as usize;
    let deadline = Instant::now() + PATIENCE;
    while received < allowed {
        let frame = client.next_frame(deadline).await.expect("connection closed");
        count_data(vec![frame], &mut received, allowed);
    }
}

/// Limits must not break real clients: a header block just under SETTINGS_MAX_HEADER_LIST_SIZE,
/// split over CONTINUATION frames, is served; one over it gets 431 without reaching the backend,
/// and the connection goes on.
#[tokio::test]
async fn h2_large_header_blocks_within_the_limit_are_served() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend).await;
    let mut client = H2::connect(proxy.addr, &[]).await;
    client.handshake().await;
    let limit = H2_MAX_HEADER_LIST_SIZE as usize;

    let fields = big_fields(15, 4000);
    assert!(list_size(&fields) + 200 < limit && list_size(&fields) > limit * 9 / 10);
    let block = request_block("/", &fields);
    assert!(
        block.len() > 3 * H2_MAX_FRAME_SIZE as usize,
        "spans CONTINUATION frames"
    );
    client.send(&get_split(1, &block)).await.unwrap();
    assert_eq!(client.status(1).await, 200);
    assert!(
        backend.state.largest_head.load(Ordering::SeqCst) > 60_000,
        "the headers reached the backend"
    );

    let fields = big_fields(20, 4000);
    assert!(list_size(&fields) > limit);
    client
        .send(&get_split(3, &request_block("/", &fields)))
        .await
        .unwrap();
    assert_eq!(client.status(3).await, 431);
    assert_eq!(backend.state.requests.load(Ordering::SeqCst), 1);

    client.send(&get(5, "/")).await.unwrap();
    assert_eq!(client.status(5).await, 200);
    assert!(client.goaway.is_none(), "{:?}", client.goaway);
}

/// A client that keeps its connection alive (it answers pings) but never opens a stream's window
/// again stalls that response: after the send timeout the stream is cut, its backend connection
/// freed at once and the cut counted as the client's fault, as nginx's `send_timeout` does.
#[tokio::test]
async fn a_stream_whose_window_the_client_never_opens_is_cut_after_the_send_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(
        &backend,
        ProxySettings {
            send_timeout_ms: 300,
            ..ProxySettings::default()
        },
    )
    .await;
    let mut client = H2::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1)]).await;
    client.handshake().await;
    client.send(&get(1, "/big")).await.unwrap();
    // Bounded: reads (answering pings) until the backend saw its connection closed.
    let deadline = Instant::now() + PATIENCE;
    while backend.state.big_cut.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled stream still holds its backend"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), client.next_frame(deadline + PATIENCE)).await;
        assert!(!client.closed, "the connection itself is not the one cut");
    }
    let faults = proxy
        .app
        .table()
        .pool(Slot::Blue)
        .metrics
        .snapshot()
        .client_fault_counts();
    assert!(faults.get("too_slow").copied().unwrap_or(0) >= 1, "{faults:?}");
    // The connection and the proxy still serve.
    client.send(&get(3, "/")).await.unwrap();
    assert_eq!(client.status(3).await, 200);
    proxy.assert_still_serving().await;
}

/// A connection with no stream open is closed after the idle timeout even though it answers
/// every ping; one with a stream open is not.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(
        &backend,
        ProxySettings {
            client_idle_timeout_ms: 500,
            ..ProxySettings::default()
        },
    )
    .await;

    let mut busy = H2::connect(proxy.addr, &[]).await;
    busy.handshake().await;
    busy.send(&get(1, "/hold")).await.unwrap();
    wait_until("the held request reached the backend", PATIENCE, || {
        let held = backend.state.held.load(Ordering::SeqCst);
        async move { held == 1 }
    })
    .await;

    let mut idle = H2::connect(proxy.addr, &[]).await;
    idle.handshake().await;
    idle.send(&get(1, "/")).await.unwrap();
    assert_eq!(idle.status(1).await, 200);
    let deadline = Instant::now() + PATIENCE;
    while !idle.cut() {
        assert!(
            Instant::now() < deadline,
            "an idle connection answering pings stays open"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), idle.next_frame(deadline + PATIENCE)).await;
    }
    // The busy one outlived several idle timeouts with its request open, and is served.
    assert!(!busy.cut(), "a connection with an open stream is not idle");
    backend.release();
    assert_eq!(busy.status(1).await, 200);
}
