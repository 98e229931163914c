//! Active health checks: one task per backend, a fresh connection per probe, so a probe tests what
//! a new request would meet.

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
        loop {
            tokio::select! {
                _ = backend.retired.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = match tokio::time::timeout(timeout, probe(backend.addr, &hc.path)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", hc.timeout_ms)),
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

/// One HTTP GET of `path` on a fresh connection to `addr`; Ok for 2xx and 3xx, else why not.
/// The caller bounds the time it may take.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "cutover-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"));
    drop(sender);
    conn.abort();
    let status = response?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}
