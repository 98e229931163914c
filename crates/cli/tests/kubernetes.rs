//! Whole rollouts on Kubernetes through each router, with `cutover serve` and the `cutover` CLI as
//! users run them, against the stand-in API server (test-support's `kube_apiserver`), judged by a
//! real Prometheus.
//!
//! No data plane runs here (no Envoy, no ingress-nginx), so the test plays one: every 50 ms it
//! reads the route object the way the data plane would (the Service's selector, the HTTPRoute's
//! or VirtualService's weights, the canary Ingress), sends 20 simulated requests by those weights
//! to the slots' pods, and exports what they answered as Istio's `istio_requests_total`, which
//! Prometheus scrapes and the judge queries. A version named `*bad*` answers a third of its
//! requests 500. A request sent to a slot with no available pod is what users would see as an
//! outage; the test counts those and requires none.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_test_support::kube_apiserver::{ApiServer, PodBehaviour};
use cutover_test_support::monitoring::Prometheus;
use cutover_test_support::{get_json, wait_until, ChildProcess};
use serde_json::Value;

const TOKEN: &str = "kubernetes-test-token";
const NS: &str = "shop";

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: {app: shop}
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: web
          image: registry.test/shop:placeholder
          ports: [{containerPort: 8080}]
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Gateway,
    Istio,
    IngressNginx,
}

impl Kind {
    fn router_toml(self) -> &'static str {
        match self {
            Kind::Service => "kind = \"kubernetes_service\"\nservice = \"shop\"",
            Kind::Gateway => "kind = \"gateway_api\"\nhttp_route = \"shop\"",
            Kind::Istio => "kind = \"istio\"\nvirtual_service = \"shop\"",
            Kind::IngressNginx => "kind = \"ingress_nginx\"\ningress = \"shop\"\nservice = \"shop\"",
        }
    }

    /// Blue-green is judged in the rollback window alone: long enough for two failed windows.
    fn rollback_window_ms(self) -> u64 {
        if self == Kind::Service {
            6_000
        } else {
            3_000
        }
    }

    fn steps(self) -> &'static str {
        match self {
            // Blue-green: the switch is the only step; the rollback window judges the release.
            Kind::Service => "[{ weight_bp = 10000 }]",
            _ => "[{ weight_bp = 2000, duration_ms = 3000 }, { weight_bp = 10000 }]",
        }
    }

    /// The user's own objects, applied by a GitOps tool before cutover runs.
    fn user_objects(self) -> Vec<Value> {
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": NS},
            "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
        });
        match self {
            Kind::Service => vec![service],
            Kind::Gateway => vec![serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "shop", "namespace": NS},
                "spec": {"parentRefs": [{"name": "public"}], "rules": [
                    {"backendRefs": [{"name": "shop-blue", "port": 8080}]}]},
            })],
            Kind::Istio => vec![serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "shop", "namespace": NS},
                "spec": {"hosts": ["shop.example.com"], "http": [
                    {"route": [{"destination": {"host": "shop-blue"}}]}]},
            })],
            Kind::IngressNginx => vec![
                service,
                serde_json::json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "shop", "namespace": NS},
                    "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]},
                }),
            ],
        }
    }
}

/// The share `[blue, green]` in basis points the cluster's objects send to each slot, read the
/// way the data plane reads them; `None` before cutover wrote them (before the first release
/// the objects are the user's, and may send to Services that do not exist yet).
fn shares(server: &ApiServer, kind: Kind) -> Option<[u32; 2]> {
    let (api, k) = match kind {
        Kind::Service | Kind::IngressNginx => ("v1", "Service"),
        Kind::Gateway => ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        Kind::Istio => ("networking.istio.io/v1", "VirtualService"),
    };
    server.get(api, k, NS, "shop")?["metadata"]["annotations"]["cutover.dev/route-table"].as_str()?;
    let index = |name: &str| match name.split('.').next() {
        Some("shop-blue") => Some(0),
        Some("shop-green") => Some(1),
        _ => None,
    };
    match kind {
        Kind::Service | Kind::IngressNginx => {
            let service = server.get("v1", "Service", NS, "shop")?;
            let live = match service["spec"]["selector"]["cutover.dev/slot"].as_str()? {
                "blue" => 0,
                _ => 1,
            };
            let mut shares = [0, 0];
            shares[live] = 10_000;
            if kind == Kind::IngressNginx {
                if let Some(canary) = server.get("networking.k8s.io/v1", "Ingress", NS, "shop-canary") {
                    let weight: u32 = canary["metadata"]["annotations"]
                        ["nginx.ingress.kubernetes.io/canary-weight"]
                        .as_str()?
                        .parse()
                        .ok()?;
                    let to = index(
                        canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
                            .as_str()?,
                    )?;
                    shares[live] -= weight;
                    shares[to] += weight;
                }
            }
            Some(shares)
        }
        Kind::Gateway | Kind::Istio => {
            let (api, k, rules, refs, unit) = if kind == Kind::Gateway {
                (
                    "gateway.networking.k8s.io/v1",
                    "HTTPRoute",
                    "rules",
                    "backendRefs",
                    1u32,
                )
            } else {
                (
                    "networking.istio.io/v1",
                    "VirtualService",
                    "http",
                    "route",
                    100u32,
                )
            };
            let object = server.get(api, k, NS, "shop")?;
            let list = object["spec"][rules][0][refs].as_array()?;
            let mut shares = [0, 0];
            for r in list {
                let name = if kind == Kind::Gateway {
                    r["name"].as_str()?
                } else {
                    r["destination"]["host"].as_str()?
                };
                let default = if list.len() == 1 {
                    u64::from(10_000 / unit)
                } else {
                    0
                };
                shares[index(name)?] += r["weight"].as_u64().unwrap_or(default) as u32 * unit;
            }
            Some(shares)
        }
    }
}

/// Requests answered, by workload, version and status code.
type Counts = BTreeMap<(String, String, u16), u64>;

/// The test's data plane: see the module docs.
struct Mesh {
    _counts: Arc<Mutex<Counts>>,
    /// Requests sent to a slot that had no available pod: an outage users would see.
    outage: Arc<AtomicU64>,
    /// Shares seen, in order, without repeats.
    seen: Arc<Mutex<Vec<[u32; 2]>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Mesh {
    async fn start(server: Arc<ApiServer>, kind: Kind) -> Mesh {
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let outage = Arc::new(AtomicU64::new(0));
        let seen: Arc<Mutex<Vec<[u32; 2]>>> = Arc::default();
        let traffic = {
            let (counts, outage, seen) = (counts.clone(), outage.clone(), seen.clone());
            tokio::spawn(async move {
                let mut tick: u64 = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    tick += 1;
                    let Some(shares) = shares(&server, kind) else {
                        continue;
                    };
                    {
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&shares) {
                            seen.push(shares);
                        }
                    }
                    for i in 0..20u64 {
                        let bucket = (i * 500 + tick * 37) % 10_000;
                        let slot = if bucket < u64::from(shares[0]) { 0 } else { 1 };
                        let name = ["shop-blue", "shop-green"][slot];
                        let Some(d) = server.get("apps/v1", "Deployment", NS, name) else {
                            outage.fetch_add(1, Ordering::SeqCst);
                            continue;
                        };
                        if d["status"]["availableReplicas"].as_u64().unwrap_or(0) == 0 {
                            if outage.fetch_add(1, Ordering::SeqCst) == 0 {
                                eprintln!(
                                    "mesh: first request to {name} without an available pod, shares {shares:?}: {}",
                                    d["status"]
                                );
                            }
                            continue;
                        }
                        let version = d["spec"]["template"]["metadata"]["labels"]
                            ["app.kubernetes.io/version"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        let code = if version.contains("bad") && (tick * 20 + i).is_multiple_of(3) {
                            500
                        } else {
                            200
                        };
                        *counts
                            .lock()
                            .unwrap()
                            .entry((name.to_string(), version, code))
                            .or_default() += 1;
                    }
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exporter = {
            let counts = counts.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let counts = counts.clone();
                    async move {
                        let mut text = String::from("# TYPE istio_requests_total counter\n");
                        for ((workload, version, code), n) in counts.lock().unwrap().iter() {
                            text.push_str(&format!(
                                "istio_requests_total{{reporter=\"destination\",destination_workload=\"{workload}\",destination_workload_namespace=\"{NS}\",destination_version=\"{version}\",response_code=\"{code}\"}} {n}\n"
                            ));
                        }
                        text
                    }
                }),
            );
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            })
        };
        Mesh {
            _counts: counts,
            outage,
            seen,
            tasks: vec![traffic, exporter],
            addr,
        }
    }
}

const QUERY_SELECTOR: &str =
    r#"reporter="destination",destination_workload="{app}-{slot}",destination_version="{version}""#;

fn prometheus_toml(url: &str) -> String {
    let s = QUERY_SELECTOR;
    format!(
        "[app.prometheus]\nurl = \"{url}\"\n\
         requests_query = 'sum(increase(istio_requests_total{{{s}}}[{{interval}}]))'\n\
         errors_query = 'sum(increase(istio_requests_total{{{s},response_code=~\"5..\"}}[{{interval}}])) or vector(0)'\n\
         client_errors_query = 'sum(increase(istio_requests_total{{{s},response_code=~\"4..\"}}[{{interval}}])) or vector(0)'\n\
         codes_query = 'sum by (code) (label_replace(increase(istio_requests_total{{{s}}}[{{interval}}]), \"code\", \"$1\", \"response_code\", \"(.+)\"))'\n\
         p99_ms_query = \"\"\n"
    )
}

struct Rig {
    kind: Kind,
    server: Arc<ApiServer>,
    mesh: Mesh,
    _prometheus: Prometheus,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    serve: Option<ChildProcess>,
    admin: String,
}

impl Rig {
    async fn start(kind: Kind) -> Rig {
        let server = Arc::new(ApiServer::start().await);
        let dir = tempfile::Builder::new()
            .prefix("cutover-k8s-test-")
            .tempdir()
            .unwrap();
        server.write_kubeconfig(&dir.path().join("kubeconfig"), NS);
        for object in kind.user_objects() {
            server.apply_as("argocd", object, false).unwrap();
        }
        server.set_pod_behaviour(
            "registry.test/shop:v4-never",
            PodBehaviour::NeverReady {
                message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
            },
        );
        std::fs::write(dir.path().join("deploy.yaml"), MANIFEST).unwrap();
        let mesh = Mesh::start(server.clone(), kind).await;
        let prometheus =
            Prometheus::start(&[("mesh", mesh.addr, "/metrics")], Duration::from_millis(500)).await;
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
tick_ms = 50

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "shop"
platform = "kubernetes"

[app.kubernetes]
kubeconfig = "kubeconfig"
manifest = "deploy.yaml"
image = "registry.test/shop:{{version}}"

[app.router]
{router}
drain_timeout_ms = 300

[app.rollout]
steps = {steps}
analysis_interval_ms = 1500
failure_limit = 1
inconclusive_limit = 30
rollback_window_ms = {rollback_window_ms}
readiness_deadline_ms = 6000

[app.rollout.judge]
min_requests = 5

{prometheus}
"#,
                router = kind.router_toml(),
                steps = kind.steps(),
                rollback_window_ms = kind.rollback_window_ms(),
                prometheus = prometheus_toml(&prometheus.url),
            ),
        )
        .unwrap();
        let mut rig = Rig {
            kind,
            server,
            mesh,
            _prometheus: prometheus,
            _dir: dir,
            config,
            serve: None,
            admin: String::new(),
        };
        rig.serve();
        rig
    }

    fn serve(&mut self) {
        let (serve, ready) = common::serve(&self.config, TOKEN);
        self.admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
        self.serve = Some(serve);
    }

    fn kill9(&mut self) {
        self.serve.take().unwrap().kill();
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    fn deploy(&self, version: &str) -> (i32, String) {
        self.cli(&["deploy", "shop", version])
    }

    async fn status(&self) -> Value {
        get_json(&format!("{}/v1/apps/shop/status", self.admin)).await
    }

    async fn phase(&self) -> String {
        self.status().await["rollout"]["phase"]["phase"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    }

    async fn wait_phase(&self, phases: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            let phase = self.phase().await;
            if phases.contains(&phase.as_str()) {
                return phase;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "phase {phase}, waited for {phases:?}: {}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn shares(&self) -> [u32; 2] {
        shares(&self.server, self.kind).unwrap()
    }

    /// The slot (`blue`, `green`) whose Deployment runs `version`.
    fn slot_of(&self, version: &str) -> &'static str {
        for slot in ["blue", "green"] {
            if let Some(d) = self
                .server
                .get("apps/v1", "Deployment", NS, &format!("shop-{slot}"))
            {
                if d["metadata"]["annotations"]["cutover.dev/version"] == version {
                    return slot;
                }
            }
        }
        panic!("no slot runs {version}")
    }

    /// The share of traffic, in basis points, of the slot that runs `version`.
    fn share_of(&self, version: &str) -> u32 {
        let index = usize::from(self.slot_of(version) == "green");
        self.shares()[index]
    }

    fn replicas(&self, slot: &str) -> u64 {
        self.server
            .get("apps/v1", "Deployment", NS, &format!("shop-{slot}"))
            .unwrap()["spec"]["replicas"]
            .as_u64()
            .unwrap()
    }

    fn pods(&self, slot: &str) -> Vec<String> {
        let mut pods: Vec<String> = self
            .server
            .list("v1", "Pod", NS)
            .iter()
            .filter(|p| p["metadata"]["labels"]["cutover.dev/slot"] == slot)
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        pods.sort();
        pods
    }

    /// What users would have seen: no request sent to a slot without an available pod.
    fn assert_no_outage(&self) {
        let outage = self.mesh.outage.load(Ordering::SeqCst);
        let seen = self.mesh.seen.lock().unwrap().clone();
        assert_eq!(
            outage, 0,
            "requests sent to a slot with no available pod; shares seen: {seen:?}"
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill();
        }
    }
}

/// Good promoted (old slot scaled down only after the rollback window), bad rolled back,
/// never-ready failed with the weights untouched, abort restores the weights fully, and a
/// `kill -9` of cutover mid-rollout followed by a restart that adopts the slots and finishes it.
async fn whole_rollouts(kind: Kind) {
    let mut rig = Rig::start(kind).await;

    // The first release: all traffic on it.
    let (code, out) = rig.deploy("v1");
    assert_eq!(code, 0, "{out}");
    assert_eq!(rig.share_of("v1"), 10_000);

    // A secret by reference would be written into the Deployment in plain text: refused, and
    // nothing is written.
    let writes_before = rig.server.writes("cutover").len();
    let (code, out) = rig.cli(&["deploy", "shop", "v1-secret", "--secret", "DB_PASSWORD=env:HOME"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("secretKeyRef"), "{out}");
    assert_eq!(rig.server.writes("cutover").len(), writes_before);

    // A good release is promoted; the old slot stays warm through the rollback window.
    let (code, out) = rig.deploy("v2");
    assert_eq!(code, 0, "{out}");
    assert_eq!(rig.share_of("v2"), 10_000);
    let old = rig.slot_of("v1");
    assert_eq!(
        rig.replicas(old),
        2,
        "the old slot was scaled down before the rollback window ended"
    );
    rig.wait_phase(&["succeeded"]).await;
    wait_until("the old slot scaled to zero", Duration::from_secs(20), || {
        let zero = rig.replicas(old) == 0;
        async move { zero }
    })
    .await;

    // A bad release is rolled back: all traffic back on v2.
    let (code, out) = rig.deploy("v3-bad");
    if kind == Kind::Service {
        // Blue-green: promoted at once, then judged in the rollback window.
        assert!(code == 10 || code == 0, "{out}");
        rig.wait_phase(&["rolled_back"]).await;
    } else {
        assert_eq!(code, 10, "{out}");
    }
    assert_eq!(
        rig.share_of("v2"),
        10_000,
        "the rollback left traffic on the bad release"
    );

    // A release that never gets ready fails before any traffic reaches it.
    let (code, out) = rig.deploy("v4-never");
    assert_eq!(code, 12, "{out}");
    assert!(out.contains("ready"), "{out}");
    assert_eq!(rig.share_of("v2"), 10_000);

    // An abort mid-canary restores the weights fully.
    if kind != Kind::Service {
        let (code, out) = rig.cli(&["deploy", "shop", "v5", "--no-follow"]);
        assert_eq!(code, 0, "{out}");
        wait_until("the canary takes traffic", Duration::from_secs(30), || {
            let on_canary = rig.shares().iter().all(|s| *s > 0);
            async move { on_canary }
        })
        .await;
        let (code, out) = rig.cli(&["abort", "shop"]);
        assert_eq!(code, 0, "{out}");
        rig.wait_phase(&["aborted"]).await;
        assert_eq!(rig.share_of("v2"), 10_000, "the abort left weight behind");
    }

    // kill -9 mid-rollout, restart: the slots are adopted (the same pods), the rollout ends.
    let (code, out) = rig.cli(&["deploy", "shop", "v6", "--no-follow"]);
    assert_eq!(code, 0, "{out}");
    rig.wait_phase(&["canary", "promoted"]).await;
    let pods_before = (rig.pods("blue"), rig.pods("green"));
    rig.kill9();
    rig.serve();
    assert_eq!(
        (rig.pods("blue"), rig.pods("green")),
        pods_before,
        "a restart replaced running pods"
    );
    let phase = rig.wait_phase(&["succeeded", "promoted"]).await;
    assert!(phase == "succeeded" || phase == "promoted", "{phase}");
    assert_eq!(rig.share_of("v6"), 10_000, "v6 takes all traffic");
    rig.assert_no_outage();

    // Everything cutover wrote along the way passes the published schemas; the only writes that
    // are not objects are the scale-downs, patches of the scale subresource.
    let (objects, patches): (Vec<Value>, Vec<Value>) = rig
        .server
        .writes("cutover")
        .into_iter()
        .partition(|w| w.get("kind").is_some());
    assert!(
        patches
            .iter()
            .all(|p| *p == serde_json::json!({"spec": {"replicas": 0}})),
        "{patches:?}"
    );
    cutover_test_support::k8s_schema::validate_apply_patch(&objects).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_rollouts_through_a_service_selector() {
    whole_rollouts(Kind::Service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_rollouts_through_a_gateway_api_httproute() {
    whole_rollouts(Kind::Gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_rollouts_through_an_istio_virtualservice() {
    whole_rollouts(Kind::Istio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_rollouts_through_ingress_nginx() {
    whole_rollouts(Kind::IngressNginx).await;
}
