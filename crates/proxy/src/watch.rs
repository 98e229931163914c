//! A watch over each connection hyper serves (TLS and HTTP/2): what its own server does for
//! plaintext HTTP/1.1 and hyper does not.
//!
//! - **Idle timeout.** A connection with no request open for `client_idle_timeout_ms` is closed (GOAWAY on
//!   HTTP/2), as a keep-alive HTTP/1.1 connection is. hyper's HTTP/2 keep-alive pings only find
//!   dead peers: a client that answers them could hold a connection, and its memory, forever.
//! - **Send timeout per stream.** On HTTP/2 a client can stop taking one response by never
//!   opening its stream's flow-control window again while it keeps the connection alive; the
//!   socket never blocks, so the socket-level send timeout ([`crate::client::SendTimeout`]) never
//!   fires. A response body that handed hyper a frame and was not asked for the next one within
//!   the send timeout is stalled by the client: the watch takes the body away, which frees its
//!   backend connection at once and counts a client fault (`too_slow`); hyper resets the stream
//!   when it next asks. nginx does the same with `send_timeout` on HTTP/2 streams.
//!
//! A body that waits for its backend (an idle event stream) is not stalled: only the time since
//! a frame was handed over, unasked for, counts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

/// `handed_at_ms` while the body is not waiting for hyper to take a frame.
const NOT_HANDED: u64 = u64::MAX;

/// One connection's open requests and when it last had one.
pub(crate) struct ConnWatch {
    epoch: Instant,
    open: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    idle_since_ms: AtomicU64,
    streams: Mutex<Vec<Weak<StreamWatch>>>,
}

struct StreamWatch {
    /// Milliseconds since the connection's epoch when the body handed hyper its last frame,
    /// or [`NOT_HANDED`].
    handed_at_ms: AtomicU64,
    /// Taken by the watch when the client stalls the stream: dropping it frees the backend.
    body: Mutex<Option<ProxyBody>>,
    /// Counted out of the connection's open requests already (taken, or ended).
    closed: AtomicBool,
}

/// What [`ConnWatch::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Busy,
    /// No request for longer than the idle timeout: close the connection.
    Idle,
}

impl ConnWatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ConnWatch {
            epoch: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The response body of a request on this connection, watched.
    pub(crate) fn watch(self: &Arc<Self>, body: ProxyBody) -> WatchedBody {
        self.open.fetch_add(1, Ordering::AcqRel);
        let stream = Arc::new(StreamWatch {
            handed_at_ms: AtomicU64::new(NOT_HANDED),
            body: Mutex::new(Some(body)),
            closed: AtomicBool::new(false),
        });
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|s| s.strong_count() > 0);
        streams.push(Arc::downgrade(&stream));
        drop(streams);
        WatchedBody {
            stream,
            conn: Arc::clone(self),
        }
    }

    fn close_stream(&self, stream: &StreamWatch) {
        if !stream.closed.swap(true, Ordering::AcqRel) {
            self.idle_since_ms.store(self.now_ms(), Ordering::Release);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Cuts the streams the client stalled for longer than `send_timeout` and says whether the
    /// connection has been idle for longer than `idle_timeout`.
    pub(crate) fn check(&self, send_timeout: Duration, idle_timeout: Duration) -> Check {
        let now = self.now_ms();
        let send_ms = u64::try_from(send_timeout.as_millis()).unwrap_or(u64::MAX);
        let streams: Vec<Arc<StreamWatch>> = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for stream in streams {
            let handed = stream.handed_at_ms.load(Ordering::Acquire);
            if handed != NOT_HANDED && now.saturating_sub(handed) >= send_ms {
                let body = stream.body.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(body) = body {
                    body.record_client_fault(cutover_core::ClientFault::TooSlow);
                    tracing::debug!("a client stopped taking a response for the send timeout: stream cut");
                    drop(body);
                }
                self.close_stream(&stream);
            }
        }
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        if self.open.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.idle_since_ms.load(Ordering::Acquire)) >= idle_ms
        {
            Check::Idle
        } else {
            Check::Busy
        }
    }
}

/// A response body whose stalls the connection's watch can see and cut.
pub(crate) struct WatchedBody {
    stream: Arc<StreamWatch>,
    conn: Arc<ConnWatch>,
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.conn.close_stream(&self.stream);
    }
}

/// The error a stream cut by the watch ends with (hyper resets the stream).
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of the response for the send timeout")]
struct Stalled;

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut body = this.stream.body.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let handed = match &polled {
            Poll::Ready(Some(Ok(_))) => this.conn.now_ms(),
            _ => NOT_HANDED,
        };
        this.stream.handed_at_ms.store(handed, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stream
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.stream
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connection_without_requests_is_idle_after_the_timeout_and_not_before() {
        let conn = ConnWatch::new();
        assert_eq!(
            conn.check(Duration::from_secs(60), Duration::from_secs(3600)),
            Check::Busy
        );
        assert_eq!(conn.check(Duration::from_secs(60), Duration::ZERO), Check::Idle);
        let body = conn.watch(ProxyBody::full("x"));
        assert_eq!(
            conn.check(Duration::from_secs(60), Duration::ZERO),
            Check::Busy,
            "a request is open"
        );
        drop(body);
        assert_eq!(conn.check(Duration::from_secs(60), Duration::ZERO), Check::Idle);
    }

    #[test]
    fn a_body_that_waits_to_be_asked_is_cut_after_the_send_timeout() {
        let conn = ConnWatch::new();
        let mut body = conn.watch(ProxyBody::full("first frame"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // Handed a frame just now: not stalled within a long send timeout.
        assert_eq!(conn.check(Duration::from_secs(60), Duration::ZERO), Check::Busy);
        // Not asked again for the (zero) send timeout: cut, and the connection counts it out.
        assert_eq!(conn.check(Duration::ZERO, Duration::ZERO), Check::Idle);
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
    }
}
