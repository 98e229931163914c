//! A stand-in API server with an app's objects, and cutover's platform and routers on it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use cutover_core::{Pool, ReleaseSpec, RouteTable, Slot};
use cutover_kube::routers::{
    GatewayRouterConfig, IngressNginxRouterConfig, IstioRouterConfig, KubeRouter, ServiceRouterConfig,
};
use cutover_kube::{KubernetesConfig, KubernetesPlatform};
use cutover_platform::{Platform, Readiness};
use cutover_test_support::kube_apiserver::ApiServer;
use serde_json::{json, Value};

pub const NS: &str = "shop-ns";
pub const APP: &str = "shop";

pub fn image(version: &str) -> String {
    format!("registry.test/shop:{version}")
}

pub const MANIFEST: &str = r#"apiVersion: apps/v1
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
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
"#;

/// The stand-in server, a kubeconfig for it and the app's manifest in a directory.
pub struct Cluster {
    pub server: ApiServer,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        server.write_kubeconfig(&dir.path().join("kubeconfig"), NS);
        std::fs::write(dir.path().join("deploy.yaml"), MANIFEST).unwrap();
        Cluster { server, dir }
    }

    pub fn settings(&self) -> KubernetesConfig {
        KubernetesConfig {
            kubeconfig: Some(self.dir.path().join("kubeconfig")),
            context: None,
            namespace: Some(NS.into()),
            manifest: Some(self.dir.path().join("deploy.yaml")),
            deployment: None,
            image: "registry.test/shop:{version}".into(),
            container: None,
            replicas: None,
            crash_loop_restarts: 3,
            service_port: None,
        }
    }

    pub async fn client(&self) -> kube::Client {
        cutover_kube::connect(&self.settings()).await.unwrap().0
    }

    pub async fn platform(&self) -> KubernetesPlatform {
        KubernetesPlatform::connect(self.settings()).await.unwrap()
    }

    pub async fn router(&self, kind: RouterKind) -> KubeRouter {
        let client = self.client().await;
        match kind {
            RouterKind::Service => KubeRouter::service(
                client,
                NS,
                APP,
                &ServiceRouterConfig {
                    service: "shop".into(),
                    drain_timeout_ms: 5_000,
                },
            ),
            RouterKind::Gateway => KubeRouter::gateway(
                client,
                NS,
                APP,
                &GatewayRouterConfig {
                    http_route: "shop".into(),
                    drain_timeout_ms: 5_000,
                },
            ),
            RouterKind::Istio => KubeRouter::istio(
                client,
                NS,
                APP,
                &IstioRouterConfig {
                    virtual_service: "shop".into(),
                    drain_timeout_ms: 5_000,
                },
            ),
            RouterKind::IngressNginx => KubeRouter::ingress_nginx(
                client,
                NS,
                APP,
                &IngressNginxRouterConfig {
                    ingress: "shop".into(),
                    service: "shop".into(),
                    drain_timeout_ms: 5_000,
                },
            ),
        }
    }

    /// The user's own objects for `kind`, as a GitOps tool ("argocd") applies them.
    pub fn create_user_objects(&self, kind: RouterKind) {
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": NS, "labels": {"team": "checkout"}},
            "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
        });
        let objects = match kind {
            RouterKind::Service => vec![service],
            RouterKind::Gateway => vec![json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "shop", "namespace": NS, "labels": {"team": "checkout"}},
                "spec": {
                    "parentRefs": [{"name": "public"}],
                    "hostnames": ["shop.example.com"],
                    "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                         "backendRefs": [{"name": "admin", "port": 80}]},
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "backendRefs": [{"name": "shop-blue", "port": 8080}]},
                    ],
                },
            })],
            RouterKind::Istio => vec![json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "shop", "namespace": NS},
                "spec": {
                    "hosts": ["shop.example.com"],
                    "gateways": ["public"],
                    "http": [{"route": [{"destination": {"host": "shop-blue", "port": {"number": 8080}}}]}],
                },
            })],
            RouterKind::IngressNginx => vec![
                service,
                json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "shop", "namespace": NS},
                    "spec": {
                        "ingressClassName": "nginx",
                        "rules": [{"host": "shop.example.com", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "shop", "port": {"number": 80}}}},
                        ]}}],
                    },
                }),
            ],
        };
        for object in objects {
            self.server.apply_as("argocd", object, false).unwrap();
        }
    }

    /// Starts `version` in `slot` and waits until the platform calls it ready.
    pub async fn start_ready(&self, platform: &KubernetesPlatform, slot: Slot, version: &str) {
        platform
            .start(APP, slot, &ReleaseSpec::new(version, ""))
            .await
            .unwrap();
        let verdict = wait_verdict(platform, slot).await;
        assert!(matches!(verdict, Readiness::Ready(_)), "{verdict:?}");
    }

    pub fn object(&self, kind: RouterKind) -> Value {
        let (api_version, k) = kind.api_version_kind();
        self.server.get(api_version, k, NS, "shop").unwrap()
    }

    /// Every object cutover wrote, checked against the published schemas as apply patches.
    pub fn check_writes_against_schemas(&self) {
        let writes = self.server.writes("cutover");
        assert!(!writes.is_empty(), "cutover wrote nothing");
        cutover_test_support::k8s_schema::validate_apply_patch(&writes).unwrap();
    }

    /// Every write cutover made was a server-side apply (or a scale through the subresource)
    /// with its own field manager.
    pub fn check_writes_are_cutovers_applies(&self) {
        for r in self.server.requests() {
            if r.method == "GET" {
                continue;
            }
            assert_eq!(r.field_manager.as_deref(), Some("cutover"), "{r:?}");
            let content_type = r.content_type.clone().unwrap_or_default();
            if r.path.ends_with("/scale") {
                assert_eq!(content_type, "application/merge-patch+json", "{r:?}");
            } else {
                assert_eq!(r.method, "PATCH", "{r:?}");
                assert_eq!(content_type, "application/apply-patch+yaml", "{r:?}");
                assert!(r.query.contains("force=true"), "{r:?}");
            }
        }
    }
}

/// Polls the platform's readiness until it is no longer pending (bounded).
pub async fn wait_verdict(platform: &KubernetesPlatform, slot: Slot) -> Readiness {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let verdict = platform.readiness(APP, slot).await.unwrap().unwrap();
        if !matches!(verdict, Readiness::Pending(_)) {
            return verdict;
        }
        assert!(std::time::Instant::now() < deadline, "still pending: {verdict:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    Service,
    Gateway,
    Istio,
    IngressNginx,
}

impl RouterKind {
    pub const ALL: [RouterKind; 4] = [
        RouterKind::Service,
        RouterKind::Gateway,
        RouterKind::Istio,
        RouterKind::IngressNginx,
    ];

    pub fn api_version_kind(self) -> (&'static str, &'static str) {
        match self {
            RouterKind::Service | RouterKind::IngressNginx => ("v1", "Service"),
            RouterKind::Gateway => ("gateway.networking.k8s.io/v1", "HTTPRoute"),
            RouterKind::Istio => ("networking.istio.io/v1", "VirtualService"),
        }
    }

    pub fn splits(self) -> bool {
        self != RouterKind::Service
    }
}

pub fn table(live: Slot, canary_weight_bp: u16, blue: &str, green: &str) -> RouteTable {
    let pool = |version: &str, port: u16| Pool {
        version: version.into(),
        backends: if version.is_empty() {
            Vec::new()
        } else {
            vec![std::net::SocketAddr::from(([10, 244, 0, 1], port))]
        },
    };
    RouteTable {
        live,
        canary_weight_bp,
        blue: pool(blue, 8080),
        green: pool(green, 8081),
    }
}

/// The traffic share `[blue, green]` in basis points the cluster's objects say, read without
/// cutover's code: the Service's selector, the route's weights, the canary Ingress.
pub fn shares(cluster: &Cluster, kind: RouterKind) -> [u32; 2] {
    let object = cluster.object(kind);
    let slot_index = |name: &str| match name {
        "shop-blue" => 0,
        "shop-green" => 1,
        other => panic!("routes to {other}"),
    };
    match kind {
        RouterKind::Service | RouterKind::IngressNginx => {
            let selector = &object["spec"]["selector"];
            assert_eq!(
                selector["app"], "shop",
                "the user's selector key survives: {selector}"
            );
            let live = match selector["cutover.dev/slot"].as_str().unwrap() {
                "blue" => 0,
                "green" => 1,
                other => panic!("slot {other}"),
            };
            let mut shares = [0, 0];
            shares[live] = 10_000;
            if kind == RouterKind::IngressNginx {
                if let Some(canary) = cluster
                    .server
                    .get("networking.k8s.io/v1", "Ingress", NS, "shop-canary")
                {
                    let a = &canary["metadata"]["annotations"];
                    assert_eq!(a["nginx.ingress.kubernetes.io/canary"], "true");
                    assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight-total"], "10000");
                    let weight: u32 = a["nginx.ingress.kubernetes.io/canary-weight"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let to = canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
                        .as_str()
                        .unwrap();
                    let canary_index = slot_index(to);
                    if weight > 0 {
                        assert_ne!(canary_index, live, "the canary Ingress sends to the live slot");
                    }
                    shares[live] -= weight;
                    shares[1 - live] += weight;
                }
            }
            shares
        }
        RouterKind::Gateway | RouterKind::Istio => {
            let (rules, refs, unit) = if kind == RouterKind::Gateway {
                ("rules", "backendRefs", 1)
            } else {
                ("http", "route", 100)
            };
            let mut found = None;
            for rule in object["spec"][rules].as_array().unwrap() {
                let list = rule[refs].as_array().unwrap();
                let names: Vec<&str> = list
                    .iter()
                    .map(|r| {
                        if kind == RouterKind::Gateway {
                            r["name"].as_str().unwrap()
                        } else {
                            r["destination"]["host"].as_str().unwrap()
                        }
                    })
                    .collect();
                if names == ["admin"] {
                    continue;
                }
                let mut shares = [0u32, 0];
                for (r, name) in list.iter().zip(&names) {
                    shares[slot_index(name)] += r["weight"].as_u64().unwrap_or(1) as u32 * unit;
                }
                assert_eq!(
                    shares[0] + shares[1],
                    10_000,
                    "weights of {rule} do not sum to the whole"
                );
                found = Some(shares);
            }
            found.unwrap()
        }
    }
}
