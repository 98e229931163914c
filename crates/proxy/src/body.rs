//! Bodies flowing through the proxy, in both directions, streamed frame by frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::backend::Backend;
use crate::client::RequestBody;
use crate::http1::BodyReader;
use crate::metrics::PoolMetrics;
use crate::upstream::Conn;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body was larger than the app allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// A request in flight was cut because its slot's drain timeout passed.
#[derive(Debug, thiserror::Error)]
#[error("cut by cutover: the slot lost its traffic and the drain timeout passed")]
pub struct DrainCut;

/// A client's request body: read by hyper (HTTP/2, TLS), by the proxy's own HTTP/1.1 server, or
/// none at all.
pub(crate) enum ClientBody {
    Empty,
    Hyper(Incoming),
    Own(RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            ClientBody::Own(inner) => inner
                .poll_data(cx)
                .map(|data| data.map(|d| d.map(Frame::data).map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(inner) => inner.is_end_stream(),
            ClientBody::Own(inner) => inner.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(inner) => inner.size_hint(),
            ClientBody::Own(inner) => match inner.exact_length() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

/// What the proxy sends upstream: the client's body, counted and limited.
pub(crate) struct UpstreamRequestBody {
    inner: ClientBody,
    seen: u64,
    limit: u64,
    metrics: Arc<PoolMetrics>,
    /// The last poll waited for the client (not for the backend to take what was read): a
    /// timeout now is the client's fault.
    waiting_on_client: bool,
}

impl UpstreamRequestBody {
    pub(crate) fn client(inner: ClientBody, limit: u64, metrics: Arc<PoolMetrics>) -> Self {
        UpstreamRequestBody {
            inner,
            seen: 0,
            limit,
            metrics,
            waiting_on_client: false,
        }
    }

    /// Counts the body's bytes for another pool (the request went to the other slot).
    pub(crate) fn count_for(&mut self, metrics: Arc<PoolMetrics>) {
        self.metrics = metrics;
    }

    pub(crate) fn waiting_on_client(&self) -> bool {
        self.waiting_on_client
    }
}

/// Whose failure a client body error is: a framing the proxy could not read is malformed, one
/// over the limit too large, and anything else (a reset, an early end) an aborted upload.
pub(crate) fn client_fault_of(e: &(dyn std::error::Error + 'static)) -> cutover_core::ClientFault {
    use cutover_core::ClientFault;
    if e.is::<BodyTooLarge>() {
        return ClientFault::TooLarge;
    }
    // hyper wraps what it could not decode (an invalid chunk size) in a body error whose source
    // is an `InvalidInput` or `InvalidData` I/O error; the proxy's own reader returns the latter.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) {
                return ClientFault::Malformed;
            }
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return ClientFault::Malformed;
        }
        cause = err.source();
    }
    ClientFault::Aborted
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.waiting_on_client = polled.is_pending();
        let frame = std::task::ready!(polled);
        if let Some(data) = frame
            .as_ref()
            .and_then(|f| f.as_ref().ok())
            .and_then(Frame::data_ref)
        {
            let n = data.len() as u64;
            this.seen += n;
            this.metrics.add_bytes_in(n);
            if this.seen > this.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds a request's claim on its backend and pool until the response is done. Dropping it ends
/// the request: counters go down and a connection whose exchange completed goes back to the pool.
pub(crate) struct InFlight {
    pub backend: Arc<Backend>,
    pub metrics: Arc<PoolMetrics>,
    pub connection: Option<Conn>,
    pub completed: bool,
}

impl InFlight {
    pub(crate) fn start(backend: Arc<Backend>, metrics: Arc<PoolMetrics>) -> Self {
        backend
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.request_started();
        InFlight {
            backend,
            metrics,
            connection: None,
            completed: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.request_finished();
        if self.completed {
            if let Some(conn) = self.connection.take() {
                self.backend.put_idle(conn);
            }
        }
    }
}

/// What the proxy sends the client: a short local response, or the backend's response streamed
/// through unbuffered.
pub struct ProxyBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamResponse>),
}

struct UpstreamResponse {
    /// `None` once handed back (through `in_flight`) for the next request.
    conn: Option<Conn>,
    reader: BodyReader,
    /// May the connection serve another request once the body is complete?
    keep_alive: bool,
    in_flight: InFlight,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl UpstreamResponse {
    /// The body is complete: the exchange is done and its connection may be reused.
    fn finish(&mut self) {
        self.in_flight.completed = true;
        if self.keep_alive {
            self.in_flight.connection = self.conn.take();
        }
    }
}

impl ProxyBody {
    /// Counts a failure of the client's while this body was being sent (it stopped reading) on
    /// the pool of the backend the body comes from. A body the proxy made has no pool: nothing
    /// is counted for it.
    pub(crate) fn record_client_fault(&self, fault: cutover_core::ClientFault) {
        if let Kind::Upstream(up) = &self.0 {
            up.in_flight.metrics.record_client_fault(fault);
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody(Kind::Full(Some(bytes.into())))
    }

    pub fn empty() -> Self {
        ProxyBody(Kind::Full(None))
    }

    pub(crate) fn upstream(
        conn: Conn,
        reader: BodyReader,
        keep_alive: bool,
        in_flight: InFlight,
        stop: WaitForCancellationFutureOwned,
    ) -> Self {
        let mut up = UpstreamResponse {
            conn: Some(conn),
            reader,
            keep_alive,
            in_flight,
            stop: Box::pin(stop),
        };
        if up.reader.is_done() {
            up.finish();
        }
        ProxyBody(Kind::Upstream(Box::new(up)))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => {
                if up.in_flight.completed {
                    return Poll::Ready(None);
                }
                let Some(conn) = up.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                match up.reader.poll_data(conn, cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        up.in_flight.metrics.add_bytes_out(data.len() as u64);
                        if up.reader.is_done() {
                            up.finish();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Ready(None) => {
                        up.finish();
                        Poll::Ready(None)
                    }
                    // Only a body that waits can outlive a drain: the cut is checked (and its
                    // waker registered) then, not on every frame of a busy response.
                    Poll::Pending => match up.stop.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(DrainCut)))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.in_flight.completed || up.reader.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => match up.reader.exact_length() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}
