//! The request path: who is the user, which slot, which backend, and the exchange itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_core::{Bucket, ClientFault, Slot};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::{pick, ActivePool, AppProxy};
use crate::backend::Backend;
use crate::body::{client_fault_of, ClientBody, InFlight, ProxyBody, UpstreamRequestBody};
use crate::client::Upgraded;
use crate::config::{Forced, ListenerKind, ProxySettings};
use crate::http1::{self, authority, is_upgrade_request, BodyReader, ResponseHead};
use crate::upstream::{self, Conn, SendError};

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub peer: SocketAddr,
    pub kind: ListenerKind,
    pub tls: bool,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How the client's side of a protocol upgrade is obtained once the backend agreed to it.
pub(crate) enum ClientUpgrade {
    Hyper(OnUpgrade),
    /// From the proxy's own HTTP/1.1 server, once it has written the 101.
    Own(oneshot::Receiver<Upgraded>),
}

trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

impl ClientUpgrade {
    async fn connect(self) -> Result<Box<dyn ClientIo>, String> {
        match self {
            ClientUpgrade::Hyper(on) => match on.await {
                Ok(upgraded) => Ok(Box::new(TokioIo::new(upgraded))),
                Err(e) => Err(e.to_string()),
            },
            ClientUpgrade::Own(rx) => match rx.await {
                Ok(upgraded) => Ok(Box::new(upgraded)),
                Err(_) => Err("the client connection closed before the upgrade".to_string()),
            },
        }
    }
}

/// Serves one request. `upgrade` is how to reach the client's connection should the request be
/// an HTTP/1.1 upgrade the backend accepts.
pub(crate) async fn handle(
    app: Arc<AppProxy>,
    req: Request<ClientBody>,
    origin: Origin,
    upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let mut req = req;
    let forwarding = app.flag_forwarding();
    // The user's key, read once: its hash routes the request, and as text it is the targeting
    // key of the forwarded flags. A client without one gets a new key in a bucket cookie.
    let (user, issued_key, targeting_key) = match user_key(&app, req.headers()) {
        Some(key) => {
            let text = forwarding
                .as_ref()
                .map(|_| String::from_utf8_lossy(key).into_owned());
            (app.bucketer.hash(key), None, text)
        }
        None => {
            let key = new_user_key();
            let text = forwarding.as_ref().map(|_| key.clone());
            (app.bucketer.hash(key.as_bytes()), Some(key), text)
        }
    };
    let flags = forwarding
        .map(|forwarding| forwarding.assign(req.headers_mut(), targeting_key.as_deref().unwrap_or_default()));
    let bucket = cutover_core::Bucketer::bucket_of(user);
    let forced = match origin.kind {
        ListenerKind::Preview => Some(Forced::PreviewListener),
        ListenerKind::Public => preview_override(&app, req.headers_mut()).map(Forced::PreviewHeader),
    };
    let who = Who { bucket, user };
    let mut response = route(&app, req, origin, who, forced, started, upgrade).await;
    if let Some(flags) = flags {
        // What the user got counts for the variants they were given; a client's own fault does
        // not count against a variant any more than against a slot.
        if response.extensions().get::<ClientFaulted>().is_none() {
            flags.record(response.status().as_u16(), started.elapsed(), user);
        }
    }
    if let Some(key) = issued_key {
        if let Ok(value) = HeaderValue::from_maybe_shared(bucket_cookie(&app, &key, origin.tls)) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// hyper's entry point: [`handle`] with hyper's body and upgrade.
pub(crate) async fn handle_hyper(
    app: Arc<AppProxy>,
    mut req: Request<hyper::body::Incoming>,
    origin: Origin,
) -> Result<Response<ProxyBody>, Infallible> {
    let upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .map(ClientUpgrade::Hyper);
    Ok(handle(app, req.map(ClientBody::Hyper), origin, upgrade).await)
}

/// The user a request belongs to: its bucket, and the hash of its key (for counting users).
#[derive(Debug, Clone, Copy)]
struct Who {
    bucket: Bucket,
    user: u64,
}

async fn route(
    app: &Arc<AppProxy>,
    req: Request<ClientBody>,
    origin: Origin,
    who: Who,
    forced: Option<Forced>,
    started: Instant,
    upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    let table = app.table();
    let slot = match forced {
        Some(Forced::PreviewListener) => table.route.canary(),
        Some(Forced::PreviewHeader(slot)) => slot,
        None => table.route.slot_for(who.bucket),
    };
    let user = who.user;
    let mut pool = table.pool(slot);
    if forced.is_none() && !pool.can_take_requests() {
        // Better a user on the other slot than an error: stickiness bends, availability does not.
        let other = table.pool(slot.other());
        if other.can_take_requests() {
            pool = other;
        }
    }

    if let Err(e) = check_target(req.method(), req.uri(), req.version(), req.headers()) {
        return client_fault(app, pool, ClientFault::Malformed, &e.to_string());
    }
    let limit = app.settings.max_request_body_bytes;
    // An invalid length is the server's to refuse (hyper's, or `downstream`'s); here only a
    // valid one that is too large matters.
    if let Some(len) = http1::framing::content_length(req.headers()).ok().flatten() {
        if len > limit {
            return client_fault(
                app,
                pool,
                ClientFault::TooLarge,
                &format!("request body of {len} bytes exceeds the limit of {limit} bytes"),
            );
        }
    }

    let (mut parts, body) = req.into_parts();
    let client_upgrade = if is_upgrade_request(&parts.headers) && parts.version == Version::HTTP_11 {
        upgrade
    } else {
        None
    };
    prepare_upstream_request(&mut parts, origin, client_upgrade.is_some(), &app.name);
    let mut upstream_body = UpstreamRequestBody::client(body, limit, Arc::clone(&pool.metrics));
    let mut excluded = 0u64;
    let mut failed_connects = 0u32;
    let mut failed_over = false;
    // Whether the request came without a body, known before any of it is read: once a body was
    // sent it looks finished, and a retry would go out without it.
    let bodyless = http_body::Body::is_end_stream(&upstream_body);
    // When the attempt on the current slot began: a slot's latency is its own, not the time the
    // request spent on the other slot first.
    let mut attempt_started = started;
    loop {
        let picked = pick(&pool.backends, excluded);
        let exhausted = picked.is_none() || failed_connects > app.settings.connect_retries;
        if exhausted && failed_connects > 0 && forced.is_none() && !failed_over {
            // Nothing of the request reached a backend of this slot (a crashed canary, say): the
            // other slot serves it rather than the user seeing the machinery fail.
            if table.pool(pool.slot.other()).can_take_requests() {
                tracing::warn!(app = %app.name, from = %pool.slot, failed_connects,
                    "no backend of the slot could be connected to; serving the request from the other slot");
                pool = to_the_other_slot(&table, pool, &mut upstream_body);
                (excluded, failed_connects, failed_over, attempt_started) = (0, 0, true, Instant::now());
                continue;
            }
        }
        let Some((index, backend)) = picked.filter(|_| failed_connects <= app.settings.connect_retries)
        else {
            let reason = if failed_connects > 0 {
                format!(
                    "could not connect to any backend of slot {} ({failed_connects} tried)",
                    pool.slot
                )
            } else if pool.backends.is_empty() {
                format!("slot {} has no backends", pool.slot)
            } else {
                format!("no healthy backend in slot {}", pool.slot)
            };
            let status = if failed_connects > 0 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return local(app, Some(pool), attempt_started, status, &reason, user);
        };
        let in_flight = InFlight::start(Arc::clone(backend), Arc::clone(&pool.metrics));
        let stop = backend.stop_token();
        let result = exchange(backend, &parts, &mut upstream_body, &app.settings, &stop).await;
        // What the canary failed with, if it failed in a way the live slot may make good.
        let failed_with = match &result {
            Ok((head, _)) if head.status.is_client_error() || head.status.is_server_error() => {
                Some(head.status)
            }
            Err(ExchangeError::Failed(_)) => Some(StatusCode::BAD_GATEWAY),
            Err(ExchangeError::Timeout) if !upstream_body.waiting_on_client() => {
                Some(StatusCode::GATEWAY_TIMEOUT)
            }
            Err(ExchangeError::Cut) => Some(StatusCode::SERVICE_UNAVAILABLE),
            _ => None,
        };
        if let Some(status) = failed_with {
            let retry = !failed_over
                && forced.is_none()
                && client_upgrade.is_none()
                && bodyless
                && safe_on_the_canary(app, &table, pool, &parts);
            if retry {
                // The canary's failure counts against it; the user gets the live slot's answer.
                if result.is_ok() {
                    backend.record_connect_success();
                }
                pool.metrics
                    .record(status.as_u16(), attempt_started.elapsed(), user);
                tracing::debug!(app = %app.name, slot = %pool.slot, status = status.as_u16(),
                    "the canary failed a safe request; asking the live slot");
                // A failed answer's body is not wanted: its connection closes rather than drains.
                drop(result);
                drop(in_flight);
                pool = to_the_other_slot(&table, pool, &mut upstream_body);
                (excluded, failed_connects, failed_over, attempt_started) = (0, 0, true, Instant::now());
                continue;
            }
        }
        match result {
            Ok((head, conn)) => {
                backend.record_connect_success();
                return respond(
                    app,
                    pool,
                    head,
                    conn,
                    in_flight,
                    stop,
                    client_upgrade,
                    attempt_started,
                    user,
                );
            }
            Err(ExchangeError::NotSent { cause }) => {
                let ejected_for = backend.record_connect_failure(
                    Duration::from_millis(app.settings.eject_base_ms),
                    Duration::from_millis(app.settings.eject_max_ms),
                );
                pool.metrics.connect_failed();
                tracing::warn!(app = %app.name, slot = %pool.slot, backend = %backend.addr,
                    cause = %cause, ejected_ms = ejected_for.as_millis() as u64,
                    "could not reach backend; ejected, trying another");
                drop(in_flight);
                failed_connects += 1;
                if index < 64 {
                    excluded |= 1 << index;
                }
                pool.metrics.retried();
            }
            Err(ExchangeError::Timeout) if upstream_body.waiting_on_client() => {
                return client_fault(
                    app,
                    pool,
                    ClientFault::TooSlow,
                    &format!(
                        "the client sent its request body too slowly to finish within {} ms",
                        app.settings.response_timeout_ms
                    ),
                );
            }
            Err(ExchangeError::Timeout) => {
                let ms = app.settings.response_timeout_ms;
                return local(
                    app,
                    Some(pool),
                    attempt_started,
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "backend {} of slot {} did not start its response within {ms} ms",
                        backend.addr, pool.slot
                    ),
                    user,
                );
            }
            Err(ExchangeError::Cut) => {
                return local(
                    app,
                    Some(pool),
                    attempt_started,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("slot {} lost its traffic and its drain timeout passed", pool.slot),
                    user,
                );
            }
            Err(ExchangeError::Client(fault, reason)) => {
                return client_fault(app, pool, fault, &reason);
            }
            Err(ExchangeError::Failed(reason)) => {
                // The request reached the backend; replaying it could run it twice.
                return local(
                    app,
                    Some(pool),
                    attempt_started,
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "backend {} of slot {} failed after the request was sent (not retried): {reason}",
                        backend.addr, pool.slot,
                    ),
                    user,
                );
            }
        }
    }
}

/// Moves a request from `from` to the other slot of `table`: `from` counts a failover, and the
/// request's body bytes count for the other slot from now on.
fn to_the_other_slot<'t>(
    table: &'t crate::app::ActiveTable,
    from: &ActivePool,
    body: &mut UpstreamRequestBody,
) -> &'t ActivePool {
    from.metrics.failed_over();
    let other = table.pool(from.slot.other());
    body.count_for(Arc::clone(&other.metrics));
    other
}

/// Whether a failure of the canary on this request may be made good by the live slot: a safe
/// method (the caller checks it came without a body), served by the canary (not the live slot), and a live slot that can
/// take it.
fn safe_on_the_canary(
    app: &AppProxy,
    table: &crate::app::ActiveTable,
    pool: &ActivePool,
    parts: &http::request::Parts,
) -> bool {
    use http::Method;
    app.settings.retry_canary_failures
        && pool.slot != table.route.live
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && table.pool(table.route.live).can_take_requests()
}

#[allow(clippy::too_many_arguments)]
fn respond(
    app: &Arc<AppProxy>,
    pool: &ActivePool,
    head: ResponseHead,
    mut conn: Conn,
    in_flight: InFlight,
    stop: CancellationToken,
    client_upgrade: Option<ClientUpgrade>,
    started: Instant,
    user: u64,
) -> Response<ProxyBody> {
    let status = head.status;
    pool.metrics.record(status.as_u16(), started.elapsed(), user);
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        *response.headers_mut() = head.headers;
        if let Some(client_upgrade) = client_upgrade {
            let app_name = app.name.clone();
            tokio::spawn(async move {
                // The tunnel owns the in-flight claim: a WebSocket counts as a request until it closes.
                let _in_flight = in_flight;
                let mut client = match client_upgrade.connect().await {
                    Ok(client) => client,
                    Err(e) => {
                        tracing::warn!(app = %app_name, error = %e, "protocol upgrade failed");
                        return;
                    }
                };
                let tunnel = async {
                    use tokio::io::AsyncWriteExt as _;
                    // Bytes the backend sent right after its 101 belong to the tunnel.
                    if !conn.buf.is_empty() {
                        client.write_all(&conn.buf).await?;
                    }
                    tokio::io::copy_bidirectional(&mut client, &mut conn.stream).await
                };
                tokio::select! {
                    _ = tunnel => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        return response;
    }
    let mut headers = head.headers;
    strip_hop_by_hop(&mut headers, false);
    *response.headers_mut() = headers;
    *response.body_mut() = ProxyBody::upstream(
        conn,
        BodyReader::of(head.framing, "the backend's response"),
        head.keep_alive,
        in_flight,
        stop.cancelled_owned(),
    );
    response
}

pub(crate) enum ExchangeError {
    /// Nothing reached the backend; the request may go to another one.
    NotSent {
        cause: String,
    },
    Timeout,
    Cut,
    /// The client's side failed: its fault, not the backend's.
    Client(ClientFault, String),
    Failed(String),
}

/// One request on one backend: a warm connection if there is one, a new one otherwise. A pooled
/// connection that turns out closed before the request could be written is replaced without
/// counting as a failure, since the request never left.
async fn exchange(
    backend: &Backend,
    parts: &http::request::Parts,
    body: &mut UpstreamRequestBody,
    settings: &ProxySettings,
    stop: &CancellationToken,
) -> Result<(ResponseHead, Conn), ExchangeError> {
    let mut last_cause = String::new();
    for _ in 0..3 {
        let mut conn = match backend.take_idle(settings.upstream_idle_timeout()) {
            Some(c) => c,
            None => Conn::connect(backend.addr, settings.connect_timeout())
                .await
                .map_err(|cause| ExchangeError::NotSent { cause })?,
        };
        let send = tokio::time::timeout(
            settings.response_timeout(),
            upstream::exchange(&mut conn, parts, body),
        );
        let result = tokio::select! {
            r = send => r,
            _ = stop.cancelled() => return Err(ExchangeError::Cut),
        };
        match result {
            Err(_) => return Err(ExchangeError::Timeout),
            Ok(Ok(head)) => return Ok((head, conn)),
            Ok(Err(SendError::NotSent(cause))) => last_cause = cause,
            Ok(Err(SendError::Body(e))) => {
                let fault = client_fault_of(&*e);
                return Err(ExchangeError::Client(
                    fault,
                    format!("reading the client's request body: {e}"),
                ));
            }
            Ok(Err(SendError::Failed(reason))) => return Err(ExchangeError::Failed(reason)),
        }
    }
    Err(ExchangeError::NotSent { cause: last_cause })
}

/// Rewrites a client's request headers into the ones the backend gets: no hop-by-hop headers,
/// and the X-Forwarded-* trio.
fn prepare_upstream_request(parts: &mut http::request::Parts, origin: Origin, upgrade: bool, app: &str) {
    // The authority of an absolute-form target, or HTTP/2's `:authority`, is the request's: a
    // Host header that says otherwise is replaced (RFC 9112 §3.2.2, RFC 9113 §8.3.1), so the
    // backend sees the site the proxy checked.
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // An HTTP/1.0 request may name no host, but the backend is spoken to in HTTP/1.1, which
    // needs one: the app's name, as nginx sends its upstream's name.
    let host = host.or_else(|| {
        let name = if http1::authority::is_valid(app.as_bytes()) {
            app
        } else {
            "localhost"
        };
        HeaderValue::from_str(name).ok()
    });
    // The request line is written from the URI's path and query (origin form) and as HTTP/1.1
    // by the upstream writer, whatever form and version the client used.
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(host) = host {
        parts.headers.insert(X_FORWARDED_HOST, host.clone());
        parts.headers.insert(header::HOST, host);
    }
    let mut forwarded_for = bytes::BytesMut::with_capacity(64);
    if let Some(prior) = parts.headers.get(X_FORWARDED_FOR) {
        if !prior.as_bytes().trim_ascii().is_empty() {
            forwarded_for.extend_from_slice(prior.as_bytes());
            forwarded_for.extend_from_slice(b", ");
        }
    }
    let _ = std::fmt::Write::write_fmt(&mut forwarded_for, format_args!("{}", origin.peer.ip()));
    if let Ok(v) = HeaderValue::from_maybe_shared(forwarded_for.freeze()) {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if origin.tls { "https" } else { "http" }),
    );
}

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any named in `Connection`. An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names is cheaper than a lookup each.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The headers that describe a connection, not the message: never forwarded as they are.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Why a request is refused before it is routed: what it names as its target or authority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("CONNECT is not served: cutover is a reverse proxy, not a tunnel")]
    Connect,
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    HostCount,
    #[error("the request names no authority (neither :authority nor Host)")]
    NoAuthority,
    #[error("invalid Host {0:?}")]
    Host(String),
    #[error("invalid authority {0:?} in the request target")]
    Authority(String),
    #[error("a target in authority form is for CONNECT only")]
    AuthorityForm,
    #[error("a target in asterisk form is for OPTIONS only")]
    Asterisk,
}

/// What a request names as its site must be one site, named one way, before it is routed: the
/// one place this is checked, for HTTP/1.1 (the proxy's own server and hyper's) and HTTP/2
/// alike, since all of them come through [`handle`]. As nginx does, a request that fails is a
/// 400 (the client's fault, counted as such).
///
/// - `Host` and the target's authority (absolute form, or HTTP/2's `:authority`) must be valid
///   authorities ([`authority::is_valid`]): no space, `/`, `\`, `?`, `#`, `@`, nothing empty. A
///   backend reading `Host: evil.com/../x` into a URL, or a cache keying on it, would be misled.
/// - HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); HTTP/2 needs an `:authority` or a
///   `Host` (nginx refuses one with neither); HTTP/1.0 may name none.
/// - `CONNECT` is refused with 400 rather than nginx's 405: cutover is a reverse proxy and
///   tunnels to nowhere, a 405 would have to list in `Allow` the methods of an app the proxy
///   does not know, and a 400 is what the client fault it is counted as ([`ClientFault::Malformed`])
///   stands for, so what is logged is what was sent. Forwarding it would turn
///   `CONNECT host:443` into `CONNECT /` for the backend.
/// - The authority form is `CONNECT`'s only, the asterisk form `OPTIONS`'s (RFC 9112 §3.2.3-4):
///   any other method with them would be forwarded as `/`.
pub(crate) fn check_target(
    method: &http::Method,
    uri: &http::Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), TargetError> {
    if method == http::Method::CONNECT {
        return Err(TargetError::Connect);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() || (host.is_none() && version == Version::HTTP_11) {
        return Err(TargetError::HostCount);
    }
    if let Some(host) = host {
        if !authority::is_valid(host.as_bytes()) {
            return Err(TargetError::Host(
                String::from_utf8_lossy(host.as_bytes()).into_owned(),
            ));
        }
    }
    match uri.authority() {
        Some(_) if uri.scheme().is_none() => return Err(TargetError::AuthorityForm),
        Some(a) if !authority::is_valid(a.as_str().as_bytes()) => {
            return Err(TargetError::Authority(a.as_str().to_string()))
        }
        Some(_) => {}
        None if host.is_none() && version >= Version::HTTP_2 => return Err(TargetError::NoAuthority),
        None => {}
    }
    if uri.path() == "*" && method != http::Method::OPTIONS {
        return Err(TargetError::Asterisk);
    }
    Ok(())
}

/// The user key a request carries: the configured header, else the configured cookie, else the
/// bucket cookie the proxy issued.
fn user_key<'h>(app: &AppProxy, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    if let Some(name) = &app.names.user_key {
        if let Some(v) = headers.get(name) {
            if !v.is_empty() {
                return Some(v.as_bytes());
            }
        }
    }
    let sticky = &app.settings.sticky;
    if let Some(name) = &sticky.user_key_cookie {
        if let Some(v) = cookie(headers, name) {
            return Some(v.as_bytes());
        }
    }
    cookie(headers, &sticky.bucket_cookie).map(str::as_bytes)
}

/// Marks a response the proxy made for a request that failed by its client's fault.
#[derive(Debug, Clone, Copy)]
struct ClientFaulted;

/// Value of the first non-empty cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

fn bucket_cookie(app: &AppProxy, key: &str, tls: bool) -> Bytes {
    let name = &app.settings.sticky.bucket_cookie;
    let attributes =
        &app.names.cookie_attributes[usize::from(tls || app.settings.sticky.bucket_cookie_secure)];
    let mut cookie = Vec::with_capacity(name.len() + 1 + key.len() + attributes.len());
    cookie.extend_from_slice(name.as_bytes());
    cookie.push(b'=');
    cookie.extend_from_slice(key.as_bytes());
    cookie.extend_from_slice(attributes.as_bytes());
    Bytes::from(cookie)
}

/// A new user key: 128 random bits in hex.
fn new_user_key() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    (0..32)
        .rev()
        .map(|nibble| char::from(HEX[((bits >> (nibble * 4)) & 0xf) as usize]))
        .collect()
}

/// The slot named by a valid preview header. The header is removed whatever it says, so a guess
/// at the token neither routes nor reaches the app.
fn preview_override(app: &AppProxy, headers: &mut HeaderMap) -> Option<Slot> {
    let value = headers.remove(&app.names.preview)?;
    let token = app.settings.preview.token.as_deref()?;
    let (slot, given) = value.to_str().ok()?.split_once(':')?;
    let slot: Slot = slot.parse().ok()?;
    constant_time_eq::constant_time_eq(given.trim().as_bytes(), token.as_bytes()).then_some(slot)
}

/// A response made by the proxy itself, logged with its reason.
fn local(
    app: &AppProxy,
    pool: Option<&ActivePool>,
    started: Instant,
    status: StatusCode,
    reason: &str,
    user: u64,
) -> Response<ProxyBody> {
    if let Some(pool) = pool {
        pool.metrics.record(status.as_u16(), started.elapsed(), user);
    }
    tracing::warn!(app = %app.name, slot = pool.map(|p| p.slot.as_str()).unwrap_or("-"),
        status = status.as_u16(), reason, "proxy answered with an error");
    error_response(status)
}

/// The answer to a request that failed by its client's fault: counted as such and in nothing
/// else, so it never counts against the slot's release.
fn client_fault(app: &AppProxy, pool: &ActivePool, fault: ClientFault, reason: &str) -> Response<ProxyBody> {
    pool.metrics.record_client_fault(fault);
    tracing::info!(app = %app.name, slot = %pool.slot, status = fault.status(), reason,
        "request failed by the client's fault; not counted against the release");
    let status = StatusCode::from_u16(fault.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = error_response(status);
    response.extensions_mut().insert(ClientFaulted);
    // The request's framing is broken or unfinished: the connection cannot carry another one.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("error")
    );
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_authority_is_routed() {
        let check = |method: &str, target: &str, version: Version, hosts: &[&str]| {
            let mut headers = HeaderMap::new();
            for h in hosts {
                headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            check_target(&method, &target.parse().unwrap(), version, &headers)
        };
        let v11 = Version::HTTP_11;
        for host in ["example.com", "example.com:8080", "127.0.0.1:1", "[::1]:80"] {
            assert_eq!(check("GET", "/", v11, &[host]), Ok(()), "{host}");
        }
        for host in ["a b", "", "evil.com/../x", "a@b", "a\\b", "a?b", "a#b"] {
            assert!(
                matches!(check("GET", "/", v11, &[host]), Err(TargetError::Host(_))),
                "{host:?}"
            );
        }
        assert_eq!(check("GET", "/", v11, &[]), Err(TargetError::HostCount));
        assert_eq!(check("GET", "/", v11, &["a", "b"]), Err(TargetError::HostCount));
        assert_eq!(check("GET", "/", Version::HTTP_10, &[]), Ok(()));
        assert_eq!(
            check("CONNECT", "example.com:443", v11, &["example.com:443"]),
            Err(TargetError::Connect)
        );
        assert_eq!(
            check("GET", "example.com:443", v11, &["x"]),
            Err(TargetError::AuthorityForm)
        );
        assert_eq!(check("GET", "http://example.com/a", v11, &["x"]), Ok(()));
        assert!(matches!(
            check("GET", "http://a@b/", v11, &["x"]),
            Err(TargetError::Authority(_))
        ));
        assert_eq!(check("OPTIONS", "*", v11, &["x"]), Ok(()));
        assert_eq!(check("GET", "*", v11, &["x"]), Err(TargetError::Asterisk));
        // HTTP/2: the :authority is in the URI; a request with no authority at all is refused.
        assert_eq!(check("GET", "http://example.com/", Version::HTTP_2, &[]), Ok(()));
        assert_eq!(
            check("GET", "/", Version::HTTP_2, &[]),
            Err(TargetError::NoAuthority)
        );
        assert_eq!(check("GET", "/", Version::HTTP_2, &["example.com"]), Ok(()));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; cutover_bucket=abc; b=2"),
        );
        assert_eq!(cookie(&h, "cutover_bucket"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
