//! HTTP: the accept loop, authentication, routing of the Kubernetes paths, body decoding, and
//! turning results and errors into responses. Handlers never panic on input; a panic anyway
//! (a bug) becomes a 500 Status, and the server keeps serving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::controllers::pod_logs;
use super::error::ApiError;
use super::ops::{self, PatchKind, WriteOptions};
use super::resources::{self, ResourceType, NAMESPACES, RESOURCES};
use super::selector::{parse_query, percent_decode, FieldSelector, LabelSelector};
use super::store::uid_of;
use super::watch::{self, WatchRequest};
use super::{RequestRecord, Shared};

/// Larger request bodies get 413, as a real server's limit (3 MiB) does.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// A response body: all at once, or the lines of a watch as they come.
pub(crate) enum ResponseBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Stream(rx) => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        }
    }
}

type Reply = Response<ResponseBody>;

fn reply(code: u16, content_type: &str, body: Bytes) -> Reply {
    let mut response = Response::new(ResponseBody::Full(Some(body)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, v);
    }
    response
}

fn json_reply(code: u16, value: &Value) -> Reply {
    reply(code, "application/json", Bytes::from(value.to_string()))
}

fn error_reply(e: &ApiError) -> Reply {
    json_reply(e.code, &e.status())
}

/// Accepts connections until the task is aborted; dropping the task drops the connections.
///
/// One port speaks both plain HTTP and TLS (told apart by the first byte, 0x16 being a TLS
/// handshake): the `kube` crate may use either, but kubectl (client-go) never sends
/// credentials over plain HTTP, so its kubeconfig points at `https://` with the server's own
/// CA.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, tls: TlsAcceptor) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == 0x16 => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(shared, stream).await;
                    }
                }
                Ok(1) => serve_connection(shared, stream).await,
                _ => {}
            }
        });
    }
}

async fn serve_connection<I>(shared: Arc<Shared>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that hangs up mid-request is its own business.
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let field_manager = parse_query(&query).remove("fieldManager");
    let response = match AssertUnwindSafe(route(&shared, req)).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => error_reply(&e),
        Err(_) => error_reply(&ApiError::new(
            500,
            "InternalError",
            "the stand-in API server panicked handling this request (a bug in kube_apiserver.rs)",
        )),
    };
    shared.lock().requests.push(RequestRecord {
        method,
        path,
        query,
        content_type,
        field_manager,
        status: response.status().as_u16(),
    });
    response
}

/// What a request addresses below `/api/v1` or `/apis/{group}/{version}`.
struct Target {
    res: usize,
    /// `None`: all namespaces (or a cluster-scoped type).
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let open = matches!(segs[..], ["healthz" | "livez" | "readyz", ..] | ["version"]);
    if !open && !authorized(shared, &req) {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let get_only = |reply: Reply| {
        if req.method() == Method::GET {
            Ok(reply)
        } else {
            Err(method_not_allowed(req.method()))
        }
    };
    match segs[..] {
        ["healthz" | "livez" | "readyz", ..] => get_only(reply(200, "text/plain", Bytes::from("ok"))),
        ["version"] => get_only(json_reply(200, &version())),
        ["api"] => get_only(json_reply(
            200,
            &resources::core_versions(&shared.address.to_string()),
        )),
        ["apis"] => get_only(json_reply(200, &resources::group_list())),
        ["apis", group] => match resources::group(group) {
            Some(g) => get_only(json_reply(200, &g)),
            None => Err(not_found_path(&path)),
        },
        ["openapi", "v3"] => get_only(json_reply(200, &resources::openapi_v3_index())),
        ["openapi", "v3", ..] => match resources::openapi_v3_document(&segs[2..].join("/")) {
            Some(doc) => get_only(json_reply(200, &doc)),
            None => Err(not_found_path(&path)),
        },
        ["api", "v1", ..] => resource_request(shared, req, "", "v1", &segs[2..]).await,
        ["apis", group, version, ..] => {
            if !resources::group_served(group, version) {
                return Err(not_found_path(&path));
            }
            let (group, version) = (group.to_string(), version.to_string());
            resource_request(shared, req, &group, &version, &segs[3..]).await
        }
        _ => Err(not_found_path(&path)),
    }
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let expected = format!("Bearer {}", shared.token);
    req.headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let target = |res: usize, namespace: Option<&str>, name: Option<&&str>, sub: Option<&&str>| Target {
        res,
        namespace: namespace.map(str::to_string),
        name: name.map(|s| s.to_string()),
        subresource: sub.map(|s| s.to_string()),
    };
    let core = group.is_empty();
    match rest {
        ["namespaces"] if core => Some(target(NAMESPACES, None, None, None)),
        ["namespaces", name] if core => Some(target(NAMESPACES, None, Some(name), None)),
        ["namespaces", name, sub @ ("status" | "finalize")] if core => {
            Some(target(NAMESPACES, None, Some(name), Some(sub)))
        }
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let res = resources::by_plural(group, version, plural)?;
            RESOURCES[res]
                .namespaced
                .then(|| target(res, Some(ns), tail.first(), tail.get(1)))
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = resources::by_plural(group, version, plural)?;
            if RESOURCES[res].namespaced && !tail.is_empty() {
                return None;
            }
            Some(target(res, None, tail.first(), tail.get(1)))
        }
        _ => None,
    }
}

async fn resource_request(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Reply, ApiError> {
    if rest.is_empty() {
        if req.method() != Method::GET {
            return Err(method_not_allowed(req.method()));
        }
        return resources::resource_list(group, version)
            .map(|list| json_reply(200, &list))
            .ok_or_else(|| not_found_path(req.uri().path()));
    }
    let target = parse_target(group, version, rest).ok_or_else(|| not_found_path(req.uri().path()))?;
    let rt = &RESOURCES[target.res];
    if let Some(sub) = &target.subresource {
        let known = match sub.as_str() {
            "status" => rt.status_subresource,
            "scale" => rt.has_scale(),
            "log" => rt.has_log(),
            _ => false,
        };
        if !known {
            return Err(not_found_path(req.uri().path()));
        }
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().clone();
    let body = read_body(req).await?;
    let manager_for_update = query
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| manager_from_user_agent(&user_agent));
    if let Some(m) = query.get("fieldManager") {
        if m.len() > 128 || m.chars().any(char::is_control) {
            return Err(ApiError::new(
                422,
                "Invalid",
                "fieldManager: Invalid value: must be at most 128 printable characters",
            ));
        }
    }
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let namespace = target.namespace.clone().unwrap_or_default();
    let sub = target.subresource.as_deref().unwrap_or("");
    let options = |manager| WriteOptions {
        manager,
        dry_run,
        force: query.get("force").is_some_and(|v| v == "true"),
    };

    match (&method, &target.name) {
        (&Method::GET, None) => list_or_watch(shared, &target, &query),
        (&Method::GET, Some(name)) => {
            let state = shared.lock();
            let object = state
                .get(target.res, &namespace, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            match sub {
                "scale" => Ok(json_reply(200, &ops::scale_of(object))),
                "log" => {
                    let previous = query.get("previous").is_some_and(|v| v == "true");
                    let mut text = pod_logs(
                        &state,
                        object,
                        query.get("container").map(String::as_str),
                        previous,
                    )?;
                    if let Some(n) = query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
                        let lines: Vec<&str> = text.lines().collect();
                        let kept = lines[lines.len().saturating_sub(n)..].join("\n");
                        text = if kept.is_empty() { kept } else { kept + "\n" };
                    }
                    Ok(reply(200, "text/plain", Bytes::from(text)))
                }
                _ => Ok(json_reply(200, object)),
            }
        }
        (&Method::POST, None) => {
            if target.namespace.is_none() && rt.namespaced {
                return Err(method_not_allowed(&method));
            }
            let object = decode(&content_type, &body, false)?;
            let mut state = shared.lock();
            state.writes.push((manager_for_update.clone(), object.clone()));
            let written = ops::create(
                &mut state,
                target.res,
                &namespace,
                object,
                options(&manager_for_update),
            )?;
            Ok(json_reply(201, &written.object))
        }
        (&Method::PUT, Some(name)) => {
            let object = decode(&content_type, &body, false)?;
            let mut state = shared.lock();
            state.writes.push((manager_for_update.clone(), object.clone()));
            if sub == "scale" {
                let scale = ops::write_scale(
                    &mut state,
                    target.res,
                    &namespace,
                    name,
                    None,
                    &object,
                    options(&manager_for_update),
                )?;
                return Ok(json_reply(200, &scale));
            }
            let written = ops::update(
                &mut state,
                target.res,
                &namespace,
                name,
                object,
                sub,
                options(&manager_for_update),
            )?;
            Ok(json_reply(200, &written.object))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchKind::from_content_type(&content_type).ok_or_else(|| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types \
                     include: application/json-patch+json, application/merge-patch+json, \
                     application/apply-patch+yaml (got {content_type:?})"
                    ),
                )
            })?;
            let patch = decode(&content_type, &body, kind == PatchKind::Apply)?;
            let manager = if kind == PatchKind::Apply {
                query.get("fieldManager").cloned().unwrap_or_default()
            } else {
                manager_for_update.clone()
            };
            let mut state = shared.lock();
            if !manager.is_empty() {
                state.writes.push((manager.clone(), patch.clone()));
            }
            if sub == "scale" {
                if kind == PatchKind::Apply {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "apply is not supported on the scale subresource of this stand-in",
                    ));
                }
                let scale = ops::write_scale(
                    &mut state,
                    target.res,
                    &namespace,
                    name,
                    Some(kind),
                    &patch,
                    options(&manager),
                )?;
                return Ok(json_reply(200, &scale));
            }
            let written = ops::patch(
                &mut state,
                target.res,
                &namespace,
                name,
                kind,
                &patch,
                sub,
                options(&manager),
            )?;
            Ok(json_reply(
                if written.created { 201 } else { 200 },
                &written.object,
            ))
        }
        (&Method::DELETE, Some(name)) if sub.is_empty() => {
            let delete_options = if body.is_empty() {
                json!({})
            } else {
                decode("application/json", &body, false)?
            };
            let mut state = shared.lock();
            let deleted = ops::delete(&mut state, target.res, &namespace, name, &delete_options, dry_run)?;
            Ok(json_reply(
                200,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid_of(&deleted)},
                }),
            ))
        }
        (&Method::DELETE, None) => {
            let (labels, fields) = selectors(rt, &query)?;
            let mut state = shared.lock();
            let doomed: Vec<(String, String)> = state
                .list(target.res, target.namespace.as_deref())
                .into_iter()
                .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
                .map(|o| {
                    (
                        o["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                        super::store::name_of(o).to_string(),
                    )
                })
                .collect();
            let mut items = Vec::new();
            for (ns, name) in doomed {
                if dry_run {
                    items.extend(state.get(target.res, &ns, &name).cloned());
                } else {
                    items.extend(state.remove(target.res, &ns, &name));
                }
            }
            Ok(json_reply(200, &list_object(rt, state.rv, items)))
        }
        _ => Err(method_not_allowed(&method)),
    }
}

/// The manager an update without `fieldManager` is recorded under: the User-Agent up to its
/// first `/`, as the real server does (`kubectl-edit/v1.32.4 (linux/amd64) ...`).
fn manager_from_user_agent(user_agent: &str) -> String {
    let prefix: String = user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .take(128)
        .collect();
    if prefix.is_empty() {
        "unknown".into()
    } else {
        prefix
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    // Past the limit the rest is still read (up to a bound) and thrown away, so the client,
    // still sending, gets the 413 rather than a connection reset.
    const DISCARD_UP_TO: usize = 64 * 1024 * 1024;
    let mut body = req.into_body();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        } else if total > DISCARD_UP_TO {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(kept))
}

/// A request body as JSON; apply bodies may also be YAML (JSON is YAML too).
fn decode(content_type: &str, body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.contains("protobuf") || essence.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the stand-in API server only speaks JSON, not {essence}"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let looks_like_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    if yaml && !looks_like_json {
        return serde_yaml_ng::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
}

fn selectors(
    rt: &ResourceType,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or(""),
        rt.kind,
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list_object(rt: &ResourceType, rv: u64, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn list_or_watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let rt = &RESOURCES[target.res];
    let (labels, fields) = selectors(rt, query)?;
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    if flag("watch") {
        if flag("sendInitialEvents")
            && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
        {
            return Err(ApiError::new(422, "Invalid", "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        }
        // 0, like none, means the server's own choice: here, until the client hangs up.
        let timeout = match query.get("timeoutSeconds") {
            None => None,
            Some(t) => {
                let seconds = t
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?;
                (seconds > 0).then(|| Duration::from_secs(seconds))
            }
        };
        let rx = watch::start(
            shared,
            WatchRequest {
                res: target.res,
                namespace: target.namespace.clone(),
                labels,
                fields,
                resource_version: query.get("resourceVersion").cloned(),
                bookmarks: flag("allowWatchBookmarks"),
                send_initial_events: flag("sendInitialEvents"),
                timeout,
            },
        )?;
        let mut response = Response::new(ResponseBody::Stream(rx));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(response);
    }
    let state = shared.lock();
    let items: Vec<Value> = state
        .list(target.res, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
        .cloned()
        .collect();
    Ok(json_reply(200, &list_object(rt, state.rv, items)))
}
