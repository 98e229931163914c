//! A small client of etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! ...): keys and values are base64, 64-bit numbers are strings. Synchronous for the
//! [`cutover_store::Store`] trait: requests run on a runtime thread of the client's own, so a
//! caller on an async runtime's thread blocks only itself, as it would on the SQLite file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Keys read per request when paging through a range.
pub(crate) const PAGE: usize = 500;

/// How long one request to one endpoint may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request to etcd failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd at {endpoints}: {reason}; is etcd running and reachable from here?")]
    Unreachable { endpoints: String, reason: String },
    /// An endpoint answered with an error.
    #[error("etcd: {0}")]
    Refused(String),
}

type Reply = Result<Value, EtcdError>;

struct Job {
    path: &'static str,
    body: Value,
    reply: mpsc::Sender<Reply>,
}

/// How to reach a cluster beyond its endpoints: TLS and authentication.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// PEM of the CA that signed the members' certificates (added to the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of a client certificate followed by its private key.
    pub identity_pem: Option<Vec<u8>>,
    /// User and password for clusters with authentication on. Never logged or shown.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("ca_pem", &self.ca_pem.is_some())
            .field("identity_pem", &self.identity_pem.is_some())
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// What every request to the cluster goes through: the HTTP client (with TLS settings) and the
/// authentication token, fetched on first use and again when etcd says it expired.
#[derive(Clone)]
pub struct Connection {
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Connection {
    fn new(
        endpoints: Vec<String>,
        options: &ClientOptions,
        timeout: Option<Duration>,
    ) -> Result<Self, EtcdError> {
        let unreachable = |reason: String| EtcdError::Unreachable {
            endpoints: endpoints.join(","),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .use_rustls_tls();
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(pem) = &options.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| EtcdError::Refused(format!("the CA file is not a PEM certificate: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        if let Some(pem) = &options.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                EtcdError::Refused(format!("the client certificate and key are not usable PEM: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| unreachable(e.to_string()))?;
        Ok(Connection {
            http,
            credentials: options.credentials.clone(),
            token: Default::default(),
        })
    }

    /// Drops the authentication token, so the next request authenticates again (etcd forgets
    /// simple tokens when it restarts, and a watch refused for its token says so in its body).
    pub(crate) fn forget_token(&self) {
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The `Authorization` header's value, authenticating first if needed.
    pub(crate) async fn token(&self, base: &str, renew: bool) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(None);
        };
        if !renew {
            if let Some(t) = self
                .token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
            {
                return Ok(Some(t));
            }
        }
        let url = format!("{base}/v3/auth/authenticate");
        let answer: Value = self
            .http
            .post(&url)
            .json(&json!({ "name": name, "password": password }))
            .send()
            .await
            .map_err(|e| EtcdError::Unreachable {
                endpoints: base.to_string(),
                reason: e.to_string(),
            })?
            .json()
            .await
            .map_err(|e| EtcdError::Refused(format!("{url}: unreadable answer: {e}")))?;
        let Some(token) = answer.get("token").and_then(Value::as_str) else {
            let why = answer
                .get("error")
                .or_else(|| answer.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no token in the answer");
            return Err(EtcdError::Refused(format!(
                "authenticating as etcd user {name:?} failed: {why}; check store.username and store.password_file"
            )));
        };
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.to_string());
        Ok(Some(token.to_string()))
    }

    /// A POST of `body` to `{base}{path}`, authenticated when the cluster wants it; renews an
    /// expired token once.
    pub(crate) async fn post(
        &self,
        base: &str,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, String> {
        let url = format!("{base}{path}");
        let mut renew = false;
        loop {
            let token = self.token(base, renew).await.map_err(|e| e.to_string())?;
            let mut request = self.http.post(&url).json(body);
            if let Some(t) = &token {
                request = request.header("Authorization", t);
            }
            let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            // etcd answers 401 for a missing or expired token (simple tokens last minutes).
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && token.is_some() && !renew {
                renew = true;
                continue;
            }
            return Ok(response);
        }
    }
}

/// A client of one etcd cluster; see the module docs. Clones share the runtime thread.
#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    connection: Connection,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Client {
    /// A client of the cluster at `endpoints` (`http://127.0.0.1:2379`, ...), tried in turn.
    pub fn new(endpoints: Vec<String>) -> Result<Client, EtcdError> {
        Client::with_options(endpoints, &ClientOptions::default())
    }

    /// A client with TLS settings and credentials.
    pub fn with_options(endpoints: Vec<String>, options: &ClientOptions) -> Result<Client, EtcdError> {
        let unreachable = |reason: String| EtcdError::Unreachable {
            endpoints: endpoints.join(","),
            reason,
        };
        if endpoints.is_empty() {
            return Err(unreachable("no endpoint given".into()));
        }
        let connection = Connection::new(endpoints.clone(), options, Some(REQUEST_TIMEOUT))?;
        let http = connection.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("starting the client's runtime: {e}")))?;
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let targets = std::sync::Arc::new(endpoints.clone());
        std::thread::Builder::new()
            .name("cutover-etcd".into())
            .spawn(move || {
                // The endpoint that answered last is tried first.
                let preferred = std::sync::Arc::new(AtomicUsize::new(0));
                runtime.block_on(async move {
                    // Each request on its own: a slow answer (a member without quorum, a lease
                    // renewal) never holds up the others. Each caller waits for its own.
                    while let Some(job) = queue.recv().await {
                        let (http, targets, preferred) = (http.clone(), targets.clone(), preferred.clone());
                        tokio::spawn(async move {
                            let reply = send(&http, &targets, &preferred, job.path, &job.body).await;
                            // The caller may have given up waiting; nothing to do then.
                            let _ = job.reply.send(reply);
                        });
                    }
                });
            })
            .map_err(|e| unreachable(format!("starting the client's thread: {e}")))?;
        // Long-lived requests (watches) need a client without the per-request timeout.
        let connection = Connection::new(endpoints.clone(), options, None)?;
        Ok(Client {
            endpoints,
            connection,
            jobs,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The connection settings, for streaming requests made outside the client's thread.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// `POST {endpoint}{path}` with `body`, on the first endpoint that answers.
    pub fn call(&self, path: &'static str, body: Value) -> Reply {
        let (reply, answer) = mpsc::channel();
        let gone = || EtcdError::Unreachable {
            endpoints: self.endpoints.join(","),
            reason: "the client's thread stopped".into(),
        };
        self.jobs.send(Job { path, body, reply }).map_err(|_| gone())?;
        let budget = REQUEST_TIMEOUT * u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX).max(1)
            + Duration::from_secs(1);
        match answer.recv_timeout(budget) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(EtcdError::Unreachable {
                endpoints: self.endpoints.join(","),
                reason: format!(
                    "no answer to {path} within {budget:?}; the request may still complete, so a write's outcome is unknown until read back"
                ),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    /// The value and mod revision of `key`.
    pub fn get(&self, key: &str) -> Result<Option<(String, i64)>, EtcdError> {
        let answer = self.call("/v3/kv/range", json!({ "key": b64(key) }))?;
        Ok(kvs(&answer)
            .into_iter()
            .next()
            .map(|kv| (kv.value, kv.mod_revision)))
    }

    /// Keys from `from` (inclusive) to the end of `prefix`, in key order (descending with
    /// `descend`), at most `limit` (0: all), at `revision` (0: now). Returns them and the
    /// revision they were read at.
    pub fn range(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        descend: bool,
        revision: i64,
    ) -> Result<(Vec<Kv>, i64), EtcdError> {
        let mut body = json!({
            "key": b64(from),
            "range_end": b64(&prefix_end(prefix)),
            "limit": limit.to_string(),
            "revision": revision.to_string(),
        });
        if descend {
            body["sort_order"] = json!("DESCEND");
            body["sort_target"] = json!("KEY");
        }
        let answer = self.call("/v3/kv/range", body)?;
        Ok((kvs(&answer), header_revision(&answer)))
    }

    /// Every key from the start of `prefix`, in key order, page by page, at `revision` (0: now);
    /// all pages are read at the revision of the first.
    pub fn range_all(&self, prefix: &str, revision: i64) -> Result<Vec<Kv>, EtcdError> {
        let mut all = Vec::new();
        let mut from = prefix.to_string();
        let mut at = revision;
        loop {
            let (page, read_at) = self.range(prefix, &from, PAGE, false, at)?;
            at = read_at;
            let full = page.len() == PAGE;
            if let (true, Some(last)) = (full, page.last()) {
                from = format!("{}\0", last.key);
            }
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// A transaction: when every comparison holds, the `success` operations run, all at once.
    /// Returns whether they did.
    pub fn txn(&self, compare: Vec<Value>, success: Vec<Value>) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/kv/txn", json!({ "compare": compare, "success": success }))?;
        Ok(answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// One key and value of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

/// A 64-bit number of a gateway answer (they come as strings).
pub fn number(value: Option<&Value>) -> i64 {
    match value {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

pub fn b64(text: &str) -> String {
    B64.encode(text.as_bytes())
}

pub(crate) fn unb64(text: &str) -> String {
    B64.decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

fn header_revision(answer: &Value) -> i64 {
    number(answer.pointer("/header/revision"))
}

fn kvs(answer: &Value) -> Vec<Kv> {
    answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|kv| Kv {
            key: unb64(kv.get("key").and_then(Value::as_str).unwrap_or("")),
            value: unb64(kv.get("value").and_then(Value::as_str).unwrap_or("")),
            mod_revision: number(kv.get("mod_revision")),
        })
        .collect()
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".into()
}

/// Compare: `key`'s mod revision is `revision` (0: the key does not exist).
pub fn mod_revision_is(key: &str, revision: i64) -> Value {
    json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()})
}

/// Compare: `key` holds `value`.
pub fn value_is(key: &str, value: &str) -> Value {
    json!({"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)})
}

pub fn put(key: &str, value: &str) -> Value {
    json!({"request_put": {"key": b64(key), "value": b64(value)}})
}

pub fn delete(key: &str) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

async fn send(
    http: &Connection,
    endpoints: &[String],
    preferred: &AtomicUsize,
    path: &str,
    body: &Value,
) -> Reply {
    let first = preferred.load(Ordering::Relaxed) % endpoints.len();
    let mut last_error = String::new();
    for i in 0..endpoints.len() {
        let index = (first + i) % endpoints.len();
        let base = endpoints[index].trim_end_matches('/');
        let url = format!("{base}{path}");
        match http.post(base, path, body).await {
            Ok(response) => {
                let status = response.status();
                let answer: Value = match response.json().await {
                    Ok(v) => v,
                    Err(e) => {
                        last_error = format!("{url}: unreadable answer: {e}");
                        continue;
                    }
                };
                if status.is_success() {
                    preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                let message = answer
                    .get("error")
                    .or_else(|| answer.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                // A member without a leader or a quorum: another member may have one.
                if status.is_server_error() || message.contains("leader") {
                    last_error = format!("{url}: {status} {message}");
                    continue;
                }
                return Err(EtcdError::Refused(format!("{url}: {status} {message}")));
            }
            Err(e) => last_error = e,
        }
    }
    Err(EtcdError::Unreachable {
        endpoints: endpoints.join(","),
        reason: last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_the_next_key_after_it() {
        assert_eq!(prefix_end("/cutover/apps/"), "/cutover/apps0");
        assert_eq!(prefix_end("a"), "b");
    }
}
