//! Active health checks: one task per backend, its probes sent over one kept-alive connection
//! (as the proxy's own requests are), so that checking a fleet does not open a connection per
//! backend per interval and fill the backends' and the proxy's ports with TIME_WAIT. A kept
//! connection the backend closed between two probes is replaced at once, within the same probe,
//! so a backend that closes idle connections early is not taken for a dead one; a probe that
//! fails on a fresh connection counts as failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::Backend;
use crate::config::ProxySettings;

pub(crate) fn spawn_checks(backend: Arc<Backend>, settings: ProxySettings, app: String) {
    tokio::spawn(async move {
        let hc = &settings.health_check;
        let interval = Duration::from_millis(hc.interval_ms);
        let timeout = Duration::from_millis(hc.timeout_ms);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prober = Prober::new(backend.addr, hc.path.clone());
        loop {
            tokio::select! {
                _ = backend.retired.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = match tokio::time::timeout(timeout, prober.probe()).await {
                Ok(r) => r,
                Err(_) => {
                    // Whatever the connection was doing, it is not trusted again.
                    prober.reset();
                    Err(format!("no answer within {} ms", hc.timeout_ms))
                }
            };
            let ok = result.is_ok();
            if let Some(now_healthy) = backend.record_check(ok, hc.healthy_threshold, hc.unhealthy_threshold)
            {
                if now_healthy {
                    tracing::info!(app = %app, slot = %backend.slot, backend = %backend.addr,
                        "backend passed its health checks: back in rotation");
                } else {
                    tracing::warn!(app = %app, slot = %backend.slot, backend = %backend.addr,
                        reason = %result.err().unwrap_or_default(),
                        "backend failed its health checks: out of rotation");
                }
            }
        }
    });
}

/// A backend's health probes over one kept-alive HTTP/1.1 connection.
pub struct Prober {
    addr: SocketAddr,
    path: String,
    conn: Option<KeptConn>,
}

struct KeptConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeptConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    pub fn new(addr: SocketAddr, path: String) -> Self {
        Prober {
            addr,
            path,
            conn: None,
        }
    }

    /// Drops the kept connection; the next probe opens a new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// One GET of the path: Ok for 2xx and 3xx, else why not. On the kept connection if it is
    /// still open, else (or if it turns out closed before answering) on a new one. The caller
    /// bounds the time it may take.
    pub async fn probe(&mut self) -> Result<(), String> {
        if let Some(mut kept) = self.conn.take() {
            if kept.sender.ready().await.is_ok() {
                match self.send(&mut kept.sender).await {
                    Ok((status, reusable)) => {
                        if reusable {
                            self.conn = Some(kept);
                        }
                        return judge(status);
                    }
                    // Closed by the backend since the last probe (an idle timeout, a restart
                    // that kept the port): not a verdict on the backend; try a new connection.
                    Err(e) if e.is_canceled() || e.is_incomplete_message() || e.is_closed() => {}
                    Err(e) => return Err(format!("request: {e}")),
                }
            }
        }
        let mut fresh = connect(self.addr).await?;
        let (status, reusable) = self
            .send(&mut fresh.sender)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if reusable {
            self.conn = Some(fresh);
        }
        judge(status)
    }

    /// Sends the probe; the status, and whether the connection may carry the next one.
    async fn send(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    ) -> Result<(http::StatusCode, bool), hyper::Error> {
        let Ok(request) = request(self.addr, &self.path, false) else {
            // The path was validated with the configuration; a request that cannot be built
            // from it fails every probe, which is what the operator sees.
            return Ok((http::StatusCode::BAD_REQUEST, false));
        };
        let response = sender.send_request(request).await?;
        let status = response.status();
        let closing = response
            .headers()
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        // The body is read to its end so the connection can carry the next probe; one larger
        // than a health answer has any need to be is not kept in memory, nor the connection.
        let body =
            http_body_util::BodyExt::collect(http_body_util::Limited::new(response.into_body(), 64 * 1024))
                .await;
        Ok((status, body.is_ok() && !closing))
    }
}

/// A new HTTP/1.1 connection to `addr`, its hyper task aborted when dropped.
async fn connect(addr: SocketAddr) -> Result<KeptConn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(KeptConn { sender, task })
}

/// The probe's request; `close` asks the backend to close the connection after answering.
fn request(addr: SocketAddr, path: &str, close: bool) -> Result<Request<Empty<Bytes>>, http::Error> {
    let mut request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "cutover-health-check");
    if close {
        request = request.header(http::header::CONNECTION, "close");
    }
    request.body(Empty::new())
}

fn judge(status: http::StatusCode) -> Result<(), String> {
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// One HTTP GET of `path` on a fresh connection to `addr`; Ok for 2xx and 3xx, else why not.
/// The caller bounds the time it may take.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    // Dropped (its task aborted) once the answer's head is in: the body is not waited for.
    let mut conn = connect(addr).await?;
    let request = request(addr, path, true).map_err(|e| format!("request: {e}"))?;
    let response = conn
        .sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    judge(response.status())
}
