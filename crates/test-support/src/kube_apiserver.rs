//! A stand-in Kubernetes API server for tests, in process, on `127.0.0.1:0`, plain HTTP with a
//! bearer token. No real API server can run where these tests run (no container runtime), so
//! cutover's Kubernetes platform and routers are tested against this; it speaks the real wire
//! format well enough for the `kube` crate and for `kubectl` (1.32 and Debian bookworm's 1.20;
//! `tests/kube_apiserver.rs` drives both). The same port also speaks TLS with a certificate of
//! its own, because kubectl sends no credentials to a plain-HTTP server.
//!
//! # What is real
//! - Paths, verbs and JSON bodies of the core, `apps/v1`, `networking.k8s.io/v1`,
//!   `gateway.networking.k8s.io/v1` (HTTPRoute) and `networking.istio.io/v1` (VirtualService,
//!   DestinationRule) resources listed in `resources.rs`; discovery (`/version`, `/api`,
//!   `/apis`, the APIResourceLists with short names and subresources).
//! - Every error is a `Status` with the real `reason`, `code` and wording of the common ones
//!   (NotFound with details, AlreadyExists, Conflict, Invalid, Expired, Unauthorized, 413, 415).
//! - One global resource version; `uid`, `creationTimestamp`, `generation` bumped when anything
//!   but metadata and status changes; status subresources (deployments, pods, services,
//!   ingresses, namespaces, HTTPRoutes, Istio kinds) isolate `.status` from the main resource;
//!   the `autoscaling/v1` scale subresource of Deployments; pod logs.
//! - Label selectors (all set-based forms) and the field selectors the real server supports.
//! - Watches: history replay from a resource version, ADDED for current objects without one,
//!   `sendInitialEvents` with the `k8s.io/initial-events-end` bookmark, periodic bookmarks,
//!   `timeoutSeconds`, objects moving in and out of a selector, 410 `Expired` after
//!   [`ApiServer::compact`].
//! - Merge patch (RFC 7386), JSON patch (RFC 6902), optimistic concurrency on PUT and patches.
//! - Server-side apply with `FieldsV1` managed fields, conflicts (409 with
//!   `details.causes[]` of `{"reason": "FieldManagerConflict", "message": "conflict with
//!   \"argocd\" using apps/v1", "field": ".spec.replicas"}`: `reason` is the wire name of
//!   `metav1.StatusCause.Type`), `force`, shared ownership of equal values, removal of fields an applier stopped
//!   applying, keyed merging of the lists Kubernetes keys (containers, env, ports, volumes,
//!   volumeMounts, service ports, ...), atomic lists for the CRDs; Update operations (PUT,
//!   patches, create) recorded per manager, named by `fieldManager` or the User-Agent.
//!
//! # What is simplified (do not test cutover against these)
//! - No admission, no validation against schemas (only names and list keys are checked; the
//!   `fieldValidation` parameter is accepted and ignored), no RBAC (one token may do
//!   everything), no protobuf or CBOR (415: kubectl's `create service|deployment ...`
//!   generators send protobuf, `create -f` and `apply` send JSON), no Table output (kubectl
//!   falls back to NAME and AGE columns), no `limit`/`continue` paging (every list is one page).
//! - OpenAPI: `/openapi/v3` serves skeleton documents (one PATCH operation per resource with its
//!   group-version-kind and query parameters, no schemas), which is what kubectl 1.27+ reads to
//!   leave validation to the server; `/openapi/v2` is 404, so older kubectl (bookworm's 1.20)
//!   needs `--validate=false` for `apply` and `create`. Client-side `kubectl apply` (without
//!   `--server-side`), `kubectl explain` and anything else that needs schemas do not work.
//! - Defaulting only of what clients commonly read back (a Deployment's replicas, strategy and
//!   progress deadline; container ports' protocol; a Service's type, cluster IP, port protocol
//!   and target port).
//! - Strategic merge patch is approximated: a merge patch whose known keyed lists merge by key,
//!   understanding `$patch` and ignoring `$setElementOrder` and `$retainKeys`.
//! - In managed fields, maps are never owned themselves (no `"."` on maps, as in Apply sets;
//!   real Update sets also own the maps they created); `finalizers` and the other set-type
//!   lists are atomic; at most one entry per manager and operation, no cap of 10 Update
//!   entries; the simulated controllers write without recording managed fields.
//! - Deletion is immediate: no finalizers, no grace period, no `deletionTimestamp`; deleting a
//!   Namespace deletes what is in it at once; Pods of a deleted Deployment are collected on the
//!   next tick whatever the propagation policy.
//! - The simulated controllers (`controllers.rs`) collapse a rolling update to an instant, have
//!   no ReplicaSets (pods are owned by their Deployment), ignore `minReadySeconds`, `maxSurge`
//!   and `spec.paused`, and make pod statuses from [`PodBehaviour`]s, not from running anything.
//! - Pod logs are the [`PodBehaviour::CrashLoop`] lines (empty for other containers);
//!   `follow=true` does not stream. Kubelet Events are written once per pod and reason
//!   (`Unhealthy`, `BackOff`, `Failed`). At most 200 pods are simulated per Deployment.
//! - The server says it is v1.34.0 (kubectl 1.32 prints a version-skew warning on stderr).
//! - The Rust helpers [`ApiServer::create`] and [`ApiServer::apply_as`] create a missing
//!   namespace, as does [`ApiServer::write_kubeconfig`]; over HTTP a missing namespace is 404.

mod controllers;
mod error;
mod fields;
mod http;
mod ops;
mod patch;
mod resources;
mod selector;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::ops::{PatchKind, WriteOptions};
use self::store::State;

/// How a pod's containers behave, chosen by container image with
/// [`ApiServer::set_pod_behaviour`].
#[derive(Clone, Debug)]
pub enum PodBehaviour {
    /// Running and Ready at once (after [`ApiServer::set_ready_delay`], 0 by default).
    Ready,
    /// Running, Ready only after this long.
    ReadyAfter(Duration),
    /// Restarts forever: waiting reason `CrashLoopBackOff`, `lastState.terminated.exitCode`,
    /// a growing `restartCount`, never Ready. `logs` is what `/log` returns.
    CrashLoop { exit_code: i32, logs: Vec<String> },
    /// Running with a failing readiness probe: Ready=False with this message on the pod's
    /// Ready condition and in an `Unhealthy` Event, e.g. "Readiness probe failed: HTTP probe
    /// failed with statuscode: 503".
    NeverReady { message: String },
    /// The image cannot be pulled: waiting reason `ErrImagePull`, then `ImagePullBackOff`,
    /// with a message naming the image; the pod stays Pending.
    ImagePullError,
}

/// One request the server answered, for tests that check how a client talked to it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, still percent-encoded.
    pub query: String,
    pub content_type: Option<String>,
    /// The `fieldManager` query parameter, decoded.
    pub field_manager: Option<String>,
    pub status: u16,
}

/// What the HTTP tasks, the watches and the controllers share.
pub(crate) struct Shared {
    state: Mutex<State>,
    token: String,
    address: SocketAddr,
    certificate_pem: String,
    /// Set when the server is dropped; ends the watches.
    shutdown: tokio::sync::watch::Sender<bool>,
    wake: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in API server; dropping it stops serving.
pub struct ApiServer {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often the simulated controllers run without being woken by a change.
const TICK: Duration = Duration::from_millis(50);

/// The manager [`ApiServer::create`] writes as.
const TEST_MANAGER: &str = "test";

impl ApiServer {
    /// Binds `127.0.0.1:0` and starts serving, with the simulated controllers running.
    pub async fn start() -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 for the stand-in API server");
        let address = listener.local_addr().expect("the listener's address");
        let wake = Arc::new(Notify::new());
        let token = format!("{:016x}{:016x}", store::random_u64(), store::random_u64());
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let (tls, certificate_pem) = tls_identity();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(wake.clone())),
            token,
            address,
            certificate_pem,
            shutdown,
            wake,
        });
        let server = tokio::spawn(http::serve(shared.clone(), listener, tls));
        let controllers = tokio::spawn(run_controllers(shared.clone()));
        ApiServer {
            shared,
            tasks: vec![server, controllers],
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// `https://127.0.0.1:PORT`: the same server over TLS, with a certificate signed by
    /// [`ApiServer::certificate_pem`] (valid for 127.0.0.1 and localhost).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.shared.address)
    }

    /// The server's self-signed certificate (PEM), to trust for [`ApiServer::https_url`].
    pub fn certificate_pem(&self) -> String {
        self.shared.certificate_pem.clone()
    }

    /// The bearer token every request but `/version` and the health checks needs.
    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    /// Writes a kubeconfig whose current context is this server with its token and
    /// `namespace` (created if missing), mode 0600. The server is [`ApiServer::https_url`] with
    /// the server's certificate as `certificate-authority-data`: kubectl (client-go) sends no
    /// token to a plain `http://` server, so a plain one would leave it unauthenticated. (A
    /// `kube` client reading it needs a TLS feature, e.g. `rustls-tls`; see
    /// [`ApiServer::write_kubeconfig_plain`] otherwise.)
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) {
        let cluster = format!(
            "    server: {}\n    certificate-authority-data: {}\n",
            self.https_url(),
            base64(self.shared.certificate_pem.as_bytes())
        );
        self.write_kubeconfig_with(path, namespace, &cluster);
    }

    /// Like [`ApiServer::write_kubeconfig`], but for `http://` ([`ApiServer::url`]): for
    /// clients without TLS, such as a `kube` client built without a TLS feature. kubectl does
    /// not authenticate with it.
    pub fn write_kubeconfig_plain(&self, path: &Path, namespace: &str) {
        let cluster = format!("    server: {}\n", self.url());
        self.write_kubeconfig_with(path, namespace, &cluster);
    }

    fn write_kubeconfig_with(&self, path: &Path, namespace: &str, cluster: &str) {
        self.create_namespace(namespace);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cutover-test\n  cluster:\n\
             {cluster}users:\n- name: cutover-test\n  user:\n    token: {}\ncontexts:\n- \
             name: cutover-test\n  context:\n    cluster: cutover-test\n    user: cutover-test\n\
             \x20   namespace: {namespace}\ncurrent-context: cutover-test\npreferences: {{}}\n",
            self.shared.token,
        );
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap_or_else(|e| panic!("creating kubeconfig {}: {e}", path.display()));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing kubeconfig {}: {e}", path.display()));
    }

    /// Creates a namespace if it does not exist.
    pub fn create_namespace(&self, name: &str) {
        self.shared.lock().ensure_namespace(name);
    }

    /// How containers running `image` (exact match) behave from now on; unknown images are
    /// [`PodBehaviour::Ready`].
    pub fn set_pod_behaviour(&self, image: &str, behaviour: PodBehaviour) {
        self.shared.lock().behaviours.insert(image.to_string(), behaviour);
        self.shared.wake.notify_one();
    }

    /// How long [`PodBehaviour::Ready`] containers take to become Ready (default 0).
    pub fn set_ready_delay(&self, delay: Duration) {
        self.shared.lock().ready_delay = delay;
    }

    fn resource(api_version: &str, kind: &str) -> usize {
        resources::by_kind(api_version, kind)
            .unwrap_or_else(|| panic!("the stand-in API server does not serve {api_version} {kind}"))
    }

    /// The stored object, if any. `namespace` is ignored for cluster-scoped kinds.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = Self::resource(api_version, kind);
        let ns = if resources::RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        self.shared.lock().get(res, ns, name).cloned()
    }

    /// The stored objects of a kind in `namespace` ("" for all namespaces).
    pub fn list(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let res = Self::resource(api_version, kind);
        let ns = (resources::RESOURCES[res].namespaced && !namespace.is_empty()).then_some(namespace);
        self.shared.lock().list(res, ns).into_iter().cloned().collect()
    }

    fn locate(object: &Value) -> (usize, String) {
        let api_version = object["apiVersion"].as_str().unwrap_or("");
        let kind = object["kind"].as_str().unwrap_or("");
        let res = Self::resource(api_version, kind);
        let ns = if resources::RESOURCES[res].namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        (res, ns)
    }

    /// Creates `object` as `kubectl create` would, as manager "test"; the namespace is created
    /// if missing. Panics if the object exists or is refused.
    pub fn create(&self, object: Value) {
        let (res, ns) = Self::locate(&object);
        let mut state = self.shared.lock();
        if !ns.is_empty() {
            state.ensure_namespace(&ns);
        }
        state.writes.push((TEST_MANAGER.into(), object.clone()));
        let options = WriteOptions {
            manager: TEST_MANAGER,
            dry_run: false,
            force: false,
        };
        if let Err(e) = ops::create(&mut state, res, &ns, object, options) {
            panic!("ApiServer::create: {} ({})", e.message, e.reason);
        }
    }

    /// Server-side apply as `manager` (e.g. a GitOps tool), with the same semantics as over
    /// HTTP; the namespace is created if missing. `Err` carries the Status message, e.g. the
    /// conflicts.
    pub fn apply_as(&self, manager: &str, object: Value, force: bool) -> Result<Value, String> {
        let (res, ns) = Self::locate(&object);
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut state = self.shared.lock();
        if !ns.is_empty() {
            state.ensure_namespace(&ns);
        }
        state.writes.push((manager.to_string(), object.clone()));
        let options = WriteOptions {
            manager,
            dry_run: false,
            force,
        };
        ops::patch(
            &mut state,
            res,
            &ns,
            &name,
            PatchKind::Apply,
            &object,
            "",
            options,
        )
        .map(|w| w.object)
        .map_err(|e| e.message)
    }

    /// A JSON merge patch as `manager` (like `kubectl patch --type merge --field-manager`).
    /// Panics if the object is missing or the patch refused.
    pub fn merge_patch_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: Value,
    ) {
        let res = Self::resource(api_version, kind);
        let ns = if resources::RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        let mut state = self.shared.lock();
        state.writes.push((manager.to_string(), patch.clone()));
        let options = WriteOptions {
            manager,
            dry_run: false,
            force: false,
        };
        if let Err(e) = ops::patch(&mut state, res, ns, name, PatchKind::Merge, &patch, "", options) {
            panic!("ApiServer::merge_patch_as: {} ({})", e.message, e.reason);
        }
    }

    /// Deletes an object at once; false if it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let res = Self::resource(api_version, kind);
        let ns = if resources::RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        self.shared.lock().remove(res, ns, name).is_some()
    }

    /// Forgets the watch history: a watch from an older resource version gets 410 Gone.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// The current (last handed out) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Every body `manager` sent in create, update, patch and apply requests, as sent (YAML
    /// converted to JSON), in order, whether or not the request succeeded.
    pub fn writes(&self, manager: &str) -> Vec<Value> {
        self.shared
            .lock()
            .writes
            .iter()
            .filter(|(m, _)| m == manager)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// While paused, the simulated deployment controller does nothing (so
    /// `status.observedGeneration` lags `metadata.generation`); pods' statuses still move.
    pub fn pause_deployments(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.wake.notify_one();
    }
}

/// A fresh self-signed certificate for 127.0.0.1 and localhost: the TLS acceptor and the
/// certificate's PEM.
fn tls_identity() -> (tokio_rustls::TlsAcceptor, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generating the stand-in API server's certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        generated.key_pair.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("the stand-in API server's certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        generated.cert.pem(),
    )
}

/// Standard base64 with padding (kubeconfig's `*-data` fields).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs the simulated controllers every [`TICK`], and soon after any change.
async fn run_controllers(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shared.wake.notified() => {
                // Let a burst of changes land before reacting to it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut state = shared.lock();
        // Objects are whatever clients wrote; a bug they trigger must not stop the cluster.
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| controllers::tick(&mut state)));
        drop(state);
        if ticked.is_err() {
            eprintln!("kube_apiserver: a simulated controller panicked (a bug); carrying on");
        }
    }
}
