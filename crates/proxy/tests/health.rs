#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Active health checks over kept-alive connections, against a backend written here so that it
//! can count connections and close them in the ways real servers do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{Pool, RouteTable, Slot};
use cutover_proxy::{AppProxy, ProxySettings};
use cutover_test_support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the backend ends a connection after an answer.
#[derive(Clone, Copy, PartialEq)]
enum Closing {
    /// Keeps it open for the next request.
    Never,
    /// Says `connection: close` and closes it.
    Announced,
    /// Closes it without a word (an idle timeout shorter than the check interval).
    Silently,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

async fn backend(closing: Closing) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        c.requests.fetch_add(1, Ordering::SeqCst);
                        let answer: &[u8] = match closing {
                            Closing::Announced => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            }
                            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        };
                        if stream.write_all(answer).await.is_err() || closing != Closing::Never {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, counts)
}

fn app_with(addr: SocketAddr) -> Arc<AppProxy> {
    let mut settings = ProxySettings::default();
    settings.health_check.interval_ms = 20;
    settings.health_check.timeout_ms = 1000;
    settings.health_check.healthy_threshold = 1;
    settings.health_check.unhealthy_threshold = 1;
    let route = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".into(),
            backends: vec![addr],
        },
        green: Pool::default(),
    };
    AppProxy::new("web", settings, route).unwrap()
}

fn healthy(app: &AppProxy) -> bool {
    app.table()
        .pool(Slot::Blue)
        .backends
        .iter()
        .all(|b| b.is_healthy())
}

#[tokio::test]
async fn probes_share_one_kept_alive_connection() {
    let (addr, counts) = backend(Closing::Never).await;
    let app = app_with(addr);
    wait_until("ten probes", Duration::from_secs(20), || {
        std::future::ready(counts.requests.load(Ordering::SeqCst) >= 10)
    })
    .await;
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "every probe went over the first connection"
    );
    assert!(healthy(&app));
    app.retire_all();
}

/// A backend that closes its connections (saying so or not) is not taken for a dead one: the
/// probe opens a new connection at once, and the backend stays in rotation.
#[tokio::test]
async fn a_backend_that_closes_connections_stays_healthy() {
    for closing in [Closing::Announced, Closing::Silently] {
        let (addr, counts) = backend(closing).await;
        let app = app_with(addr);
        wait_until("ten probes", Duration::from_secs(20), || {
            std::future::ready(counts.requests.load(Ordering::SeqCst) >= 10)
        })
        .await;
        assert!(healthy(&app), "a closed connection is no failed probe");
        assert!(counts.connections.load(Ordering::SeqCst) >= 10);
        app.retire_all();
    }
}

/// Health flips still happen on a kept connection: a backend that starts failing is taken out.
#[tokio::test]
async fn a_backend_that_stops_answering_is_taken_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let app = app_with(addr);
    wait_until("the backend is out of rotation", Duration::from_secs(20), || {
        std::future::ready(!healthy(&app))
    })
    .await;
    app.retire_all();
}
