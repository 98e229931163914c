//! Accept loops: plain or TLS, HTTP/1.1 and HTTP/2 (h2c by prior knowledge or ALPN), graceful stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppProxy;
use crate::config::ListenerKind;
use crate::downstream::{self, Handover};
use crate::handler::{handle_hyper, Origin};
use crate::watch::{Check, ConnWatch};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}; check the path and its permissions")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate; give a PEM file with the certificate chain")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1); give the key of the certificate")]
    NoKey { path: String },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Client connections closed since the process started, on every listener: the binary gives
/// freed memory back to the system after many have closed (see `crates/cli/src/main.rs`).
static CLOSED_CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many client connections have closed since the process started.
pub fn closed_connections() -> u64 {
    CLOSED_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a connection as closed when dropped with its task, however the task ends.
pub(crate) struct CountClosed;

impl Drop for CountClosed {
    fn drop(&mut self) {
        CLOSED_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TLS acceptor from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.display().to_string(),
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.display().to_string(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops accepting and waits up to
/// `drain` for open connections to finish their requests. Idle connections close at once; busy
/// ones after their response.
///
/// Plaintext HTTP/1.1 is served by the proxy's own server ([`crate::downstream`]); TLS and
/// HTTP/2 (by ALPN, or h2c by prior knowledge) by hyper.
pub async fn serve(
    listener: TcpListener,
    app: Arc<AppProxy>,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.client_idle_timeout());
    configure_http2(&mut builder);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(app = %app.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let origin = Origin {
            peer,
            kind,
            tls: tls.is_some(),
        };
        let app = Arc::clone(&app);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        match &tls {
            None => {
                let http2 = move |Handover::Http2(stream), app, origin, shutdown: CancellationToken| {
                    Box::pin(async move { serve_hyper(stream, &builder, app, origin, &shutdown).await })
                };
                // Spawned as it is, not inside another async block: that would hold the future
                // twice (before and after it is first polled) in every connection's task.
                connections.spawn(downstream::serve_connection(
                    stream,
                    app,
                    origin,
                    shutdown,
                    http2,
                    CountClosed,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let _closed = CountClosed;
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    // Clients that stop reading are cut here as on plain connections.
                    let send_timeout = app.settings.send_timeout();
                    let stream = crate::client::SendTimeout::new(stream, send_timeout);
                    serve_hyper(stream, &builder, app, origin, &shutdown).await;
                });
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        tracing::warn!(app = %app.name, "connections still open after the drain timeout; closing them");
    }
}

// HTTP/2 bounds. hyper and h2 have defaults for most of these, but they are "not considered
// stable" and some are looser than a proxy facing the internet wants, so each one is set here on
// purpose. Everything below is per connection; what a client can make the proxy hold is bounded by
// these times the number of connections it may open.

/// `SETTINGS_MAX_CONCURRENT_STREAMS`: requests one connection may have in flight. Each one is an
/// upstream HTTP/1.1 connection and a task, so this bounds the work one client connection can
/// start. 128, like nginx (hyper's default: 200); browsers open far fewer at once. Streams beyond
/// it are refused with `REFUSED_STREAM`, which clients retry.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// `SETTINGS_MAX_HEADER_LIST_SIZE`: largest request header block, HPACK-decoded and counted as the
/// RFC does (name + value + 32 per field). 64 KiB, the head limit of the proxy's HTTP/1.1 server
/// (`MAX_HEAD_BYTES`; keep the two equal), so a request does not pass on one protocol and fail on
/// the other (hyper's default: 16 KiB). A block over it gets a 431 on its stream; h2 cuts the
/// connection (`GOAWAY`) once one is 4 times over it, and caps the `CONTINUATION` frames of one
/// block at 1.25 times this over [`H2_MAX_FRAME_SIZE`] (at least 5), so a `CONTINUATION` flood is
/// never buffered whether its frames are full or empty.
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
const _: () = assert!(
    H2_MAX_HEADER_LIST_SIZE as usize == crate::http1::head::MAX_HEAD_BYTES,
    "HTTP/2 and HTTP/1.1 heads have the same limit"
);

/// Streams a client may reset before the proxy has even accepted them, at any one time, before
/// the connection gets `GOAWAY ENHANCE_YOUR_CALM`: the rapid-reset attack (CVE-2023-44487)
/// opens and cancels streams in a loop so the server does work for requests nobody waits for.
/// 20 is h2's default, set here so it cannot silently change.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the proxy may reset because the client broke the protocol on them (or opened one over
/// [`H2_MAX_CONCURRENT_STREAMS`]), over the connection's life, before it gets `GOAWAY
/// ENHANCE_YOUR_CALM`: the reset flood of RUSTSEC-2024-0003 and "MadeYouReset" (CVE-2025-8671),
/// where the client makes the server do the resetting. A well-behaved client causes none; 256 is
/// room for a burst of refusals sent before our SETTINGS arrived (hyper's default: 1024).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// `SETTINGS_INITIAL_WINDOW_SIZE`: request body bytes a client may send on one stream ahead of
/// the backend reading them. 512 KiB keeps one upload near 80 Mbit/s at 50 ms round trip
/// (hyper's default: 1 MiB).
pub const H2_INITIAL_STREAM_WINDOW: u32 = 512 * 1024;

/// Connection flow-control window: request body bytes one connection may have buffered in the
/// proxy across all its streams, the memory bound for uploads. Four stream windows, so one upload
/// the backend does not read cannot stall the connection's other uploads (hyper's default: 1 MiB,
/// the same as its stream window).
pub const H2_INITIAL_CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// `SETTINGS_MAX_FRAME_SIZE`: largest frame a client may send, so the largest single read buffer
/// a frame needs. 16 KiB is the protocol's minimum and default (and hyper's); larger frames save
/// little.
pub const H2_MAX_FRAME_SIZE: u32 = 16 * 1024;

/// Response bytes queued per stream beyond what the client's flow-control window lets out. A
/// client that never opens its window (or reads slowly) holds at most about this much (plus one
/// chunk of the backend's body) in the proxy; past it the proxy stops reading the backend, which
/// then sees backpressure. 128 KiB still keeps fast clients' sockets busy (hyper's default: 400 KiB).
pub const H2_MAX_SEND_BUF_SIZE: usize = 128 * 1024;

/// A connection on which no new request nor request body data has arrived for this long is sent a
/// PING...
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// ...and is closed if the PING is not answered within this (hyper's default), so dead peers (a
/// vanished client, a NAT that forgot the flow) are dropped within 40 s, even while their requests
/// are still running (hyper's default is no PINGs: such a connection lives until TCP gives up).
/// It is also hyper's only read timeout for HTTP/2, which has no header read timeout: a client
/// that stops midway through a header block cannot answer a PING (nothing but `CONTINUATION` may
/// follow it), so it is cut after 40 s too.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Applies the HTTP/2 bounds above to `builder`.
fn configure_http2(builder: &mut auto::Builder<TokioExecutor>) {
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        // Adaptive (BDP) windows would grow past the bounds below on their own.
        .adaptive_window(false)
        .initial_stream_window_size(H2_INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(H2_INITIAL_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME_SIZE)
        .max_send_buf_size(H2_MAX_SEND_BUF_SIZE)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
}

/// Serves a connection with hyper until it ends; once `shutdown` is cancelled, hyper finishes
/// what is in flight and closes it.
async fn serve_hyper<S>(
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    app: Arc<AppProxy>,
    origin: Origin,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let watch = ConnWatch::new();
    let send_timeout = app.settings.send_timeout();
    let idle_timeout = app.settings.client_idle_timeout();
    let service = {
        let watch = Arc::clone(&watch);
        service_fn(move |req| {
            let (app, watch) = (Arc::clone(&app), Arc::clone(&watch));
            async move {
                let response = handle_hyper(app, req, origin).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| watch.watch(body)))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    // Often enough that a stall is cut within a quarter of the send timeout of its due time.
    let every = (send_timeout.min(idle_timeout) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once the connection was told to close: it then gets one more idle timeout to finish
    // what is open before it is dropped.
    let mut closing_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.cancelled(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = ticker.tick() => {
                let idle = watch.check(send_timeout, idle_timeout) == Check::Idle;
                match closing_since {
                    None if idle => {
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(tokio::time::Instant::now());
                    }
                    Some(since) if since.elapsed() >= idle_timeout => return,
                    _ => {}
                }
            }
        }
    }
}
