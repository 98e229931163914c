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
        .header_read_timeout(downstream::HEAD_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
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
                connections.spawn(async move {
                    let handover =
                        downstream::serve_connection(stream, Arc::clone(&app), origin, shutdown.clone())
                            .await;
                    if let Some(Handover::Http2(stream)) = handover {
                        serve_hyper(stream, &builder, app, origin, &shutdown).await;
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
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
    let service = service_fn(move |req| handle_hyper(Arc::clone(&app), req, origin));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
