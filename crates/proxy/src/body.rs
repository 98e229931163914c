//! Bodies flowing through the proxy, in both directions, streamed frame by frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::backend::{Backend, Sender};
use crate::metrics::PoolMetrics;

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

/// What the proxy sends upstream: the client's body, counted and limited, or nothing.
pub enum UpstreamRequestBody {
    Empty,
    Client {
        inner: Incoming,
        seen: u64,
        limit: u64,
        metrics: Arc<PoolMetrics>,
    },
}

impl UpstreamRequestBody {
    pub(crate) fn client(inner: Incoming, limit: u64, metrics: Arc<PoolMetrics>) -> Self {
        UpstreamRequestBody::Client {
            inner,
            seen: 0,
            limit,
            metrics,
        }
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamRequestBody::Empty => Poll::Ready(None),
            UpstreamRequestBody::Client {
                inner,
                seen,
                limit,
                metrics,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        *seen += n;
                        metrics.add_bytes_in(n);
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Empty => true,
            UpstreamRequestBody::Client { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Empty => SizeHint::with_exact(0),
            UpstreamRequestBody::Client { inner, .. } => inner.size_hint(),
        }
    }
}

/// Holds a request's claim on its backend and pool until the response is done. Dropping it ends
/// the request: counters go down and a connection whose exchange completed goes back to the pool.
pub(crate) struct InFlight {
    pub backend: Arc<Backend>,
    pub metrics: Arc<PoolMetrics>,
    pub connection: Option<Sender>,
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
            if let Some(sender) = self.connection.take() {
                self.backend.put_idle(sender);
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
    inner: Incoming,
    in_flight: InFlight,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody(Kind::Full(Some(bytes.into())))
    }

    pub fn empty() -> Self {
        ProxyBody(Kind::Full(None))
    }

    pub(crate) fn upstream(
        inner: Incoming,
        mut in_flight: InFlight,
        stop: WaitForCancellationFutureOwned,
    ) -> Self {
        in_flight.completed = inner.is_end_stream();
        ProxyBody(Kind::Upstream(Box::new(UpstreamResponse {
            inner,
            in_flight,
            stop: Box::pin(stop),
        })))
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
                match Pin::new(&mut up.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            up.in_flight.metrics.add_bytes_out(data.len() as u64);
                        }
                        if up.inner.is_end_stream() {
                            up.in_flight.completed = true;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Ready(None) => {
                        up.in_flight.completed = true;
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
            Kind::Upstream(up) => up.in_flight.completed || up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.inner.size_hint(),
        }
    }
}
