//! The Kubernetes routers against the stand-in API server, each held to the router promises that
//! apply to it: applied tables read back, switch and rollback, refused tables change nothing, no
//! traffic to a slot that is not ready or already scaled down, an abort leaves no weight behind,
//! an object changed behind cutover's back is reconciled, and nothing but cutover's own fields is
//! written, by server-side apply, in objects that pass the published schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{shares, table, Cluster, RouterKind, NS};
use cutover_core::Slot;
use cutover_platform::Platform;
use cutover_router::{Router, RouterError};
use cutover_test_support::kube_apiserver::PodBehaviour;
use serde_json::json;

/// A cluster with the user's objects and both slots running and ready.
async fn rig(
    kind: RouterKind,
) -> (
    Cluster,
    cutover_kube::KubernetesPlatform,
    cutover_kube::routers::KubeRouter,
) {
    let cluster = Cluster::start().await;
    cluster.create_user_objects(kind);
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    cluster.start_ready(&platform, Slot::Green, "v2").await;
    let router = cluster.router(kind).await;
    (cluster, platform, router)
}

fn refused(result: Result<(), RouterError>) -> String {
    match result {
        Err(e @ RouterError::Refused { .. }) => e.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

fn resource_version(cluster: &Cluster, kind: RouterKind) -> String {
    cluster.object(kind)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn applies_reads_back_switches_and_rolls_back(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    let mut steps = vec![table(Slot::Blue, 0, "v1", "v2")];
    if kind.splits() {
        steps.extend([
            table(Slot::Blue, 500, "v1", "v2"),
            table(Slot::Blue, 5_000, "v1", "v2"),
        ]);
    }
    steps.extend([
        table(Slot::Blue, 10_000, "v1", "v2"),
        table(Slot::Green, 0, "v1", "v2"),
        // Rollback.
        table(Slot::Blue, 0, "v1", "v2"),
    ]);
    for t in &steps {
        router.apply(t).await.unwrap();
        assert_eq!(&router.applied().await.unwrap(), t);
        let want = [
            u32::from(t.weight_of(Slot::Blue)),
            u32::from(t.weight_of(Slot::Green)),
        ];
        assert_eq!(shares(&cluster, kind), want, "after {t:?}");
        assert!(
            !router.reconcile(t).await.unwrap(),
            "a table in force is not applied again"
        );
    }
    cluster.check_writes_are_cutovers_applies();
    cluster.check_writes_against_schemas();
}

async fn refused_tables_change_nothing(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    router.apply(&table(Slot::Blue, 0, "v1", "v2")).await.unwrap();
    let before = resource_version(&cluster, kind);
    let mut bad = vec![table(Slot::Blue, 10_001, "v1", "v2")];
    match kind {
        RouterKind::Service => bad.push(table(Slot::Blue, 500, "v1", "v2")),
        RouterKind::Istio => bad.push(table(Slot::Blue, 50, "v1", "v2")),
        _ => {}
    }
    for t in bad {
        let why = refused(router.apply(&t).await);
        assert!(!why.is_empty());
    }
    if kind == RouterKind::Service {
        let why = refused(router.apply(&table(Slot::Blue, 500, "v1", "v2")).await);
        assert!(
            why.contains("blue-green") || why.contains("cannot be expressed"),
            "{why}"
        );
    }
    assert_eq!(
        resource_version(&cluster, kind),
        before,
        "a refused table changed the object"
    );
}

async fn no_traffic_to_a_slot_that_is_not_ready_or_scaled_down(kind: RouterKind) {
    let (cluster, platform, router) = rig(kind).await;
    router.apply(&table(Slot::Blue, 0, "v1", "v2")).await.unwrap();
    let before = resource_version(&cluster, kind);
    let to_green = if kind.splits() {
        table(Slot::Blue, 500, "v1", "v3")
    } else {
        table(Slot::Green, 0, "v1", "v3")
    };
    // A new version that is not ready yet.
    cluster.server.set_pod_behaviour(
        &common::image("v3"),
        PodBehaviour::NeverReady {
            message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
        },
    );
    platform
        .start(
            common::APP,
            Slot::Green,
            &cutover_core::ReleaseSpec::new("v3", ""),
        )
        .await
        .unwrap();
    let why = refused(router.apply(&to_green).await);
    assert!(why.contains("not sending traffic to slot green"), "{why}");
    // A table that names another version than the slot runs is refused too.
    let why = refused(router.apply(&table(Slot::Green, 0, "v1", "v9")).await);
    assert!(why.contains("runs \"v3\""), "{why}");
    assert_eq!(resource_version(&cluster, kind), before);

    // The old version scaled down: switching back to it would be an outage.
    cluster.start_ready(&platform, Slot::Green, "v2").await;
    router.apply(&table(Slot::Green, 0, "v1", "v2")).await.unwrap();
    platform
        .stop(common::APP, Slot::Blue, std::time::Duration::ZERO)
        .await
        .unwrap();
    cutover_test_support::wait_until("blue's pods to go", std::time::Duration::from_secs(10), || {
        let d = cluster
            .server
            .get("apps/v1", "Deployment", NS, "shop-blue")
            .unwrap();
        let gone = d["status"]["availableReplicas"].as_u64().unwrap_or(0) == 0;
        async move { gone }
    })
    .await;
    let before = resource_version(&cluster, kind);
    let why = refused(router.apply(&table(Slot::Blue, 0, "v1", "v2")).await);
    assert!(why.contains("no available pod"), "{why}");
    assert_eq!(resource_version(&cluster, kind), before);
    assert_eq!(shares(&cluster, kind), [0, 10_000]);
}

async fn an_abort_leaves_no_weight_behind(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    let canary = if kind.splits() { 2_500 } else { 10_000 };
    router
        .apply(&table(Slot::Blue, canary, "v1", "v2"))
        .await
        .unwrap();
    // The abort: everything back on the live slot.
    let aborted = table(Slot::Blue, 0, "v1", "v2");
    router.apply(&aborted).await.unwrap();
    assert_eq!(shares(&cluster, kind), [10_000, 0]);
    assert_eq!(router.applied().await.unwrap(), aborted);
    if kind == RouterKind::IngressNginx {
        let canary = cluster
            .server
            .get("networking.k8s.io/v1", "Ingress", NS, "shop-canary")
            .unwrap();
        assert_eq!(
            canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"],
            "0"
        );
    }
}

async fn a_route_object_changed_behind_cutovers_back_is_reconciled(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    let wanted = table(Slot::Blue, if kind.splits() { 2_500 } else { 0 }, "v1", "v2");
    router.apply(&wanted).await.unwrap();
    let (api_version, k) = kind.api_version_kind();
    // Someone edits cutover's fields: the selector to the other slot, weights to 1:1.
    let edit = match kind {
        RouterKind::Service => json!({"spec": {"selector": {"cutover.dev/slot": "green"}}}),
        RouterKind::IngressNginx => json!({"spec": {"selector": {"cutover.dev/slot": "green"}}}),
        RouterKind::Gateway => {
            let mut rules = cluster.object(kind)["spec"]["rules"].clone();
            rules[1]["backendRefs"] = json!([{"name": "shop-blue", "port": 8080, "weight": 1}, {"name": "shop-green", "port": 8080, "weight": 1}]);
            json!({"spec": {"rules": rules}})
        }
        RouterKind::Istio => {
            let mut http = cluster.object(kind)["spec"]["http"].clone();
            http[0]["route"][0]["weight"] = json!(50);
            http[0]["route"][1]["weight"] = json!(50);
            json!({"spec": {"http": http}})
        }
    };
    cluster
        .server
        .merge_patch_as("kubectl-edit", api_version, k, NS, "shop", edit);
    assert_ne!(
        router.applied().await.ok(),
        Some(wanted.clone()),
        "the edit is not seen"
    );
    assert!(router.reconcile(&wanted).await.unwrap(), "the edit is not undone");
    assert_eq!(router.applied().await.unwrap(), wanted);
    let want = [
        u32::from(wanted.weight_of(Slot::Blue)),
        u32::from(wanted.weight_of(Slot::Green)),
    ];
    assert_eq!(shares(&cluster, kind), want);
    assert!(!router.reconcile(&wanted).await.unwrap());
    // The user's own fields are still the user's.
    let object = cluster.object(kind);
    match kind {
        RouterKind::Service | RouterKind::IngressNginx => {
            assert_eq!(object["metadata"]["labels"]["team"], "checkout");
            assert_eq!(object["spec"]["ports"][0]["port"], 80);
        }
        RouterKind::Gateway => {
            assert_eq!(object["spec"]["hostnames"], json!(["shop.example.com"]));
            assert_eq!(
                object["spec"]["rules"][0]["backendRefs"],
                json!([{"name": "admin", "port": 80}])
            );
        }
        RouterKind::Istio => assert_eq!(object["spec"]["gateways"], json!(["public"])),
    }
}

async fn a_gitops_tool_that_applies_its_own_fields_again_does_not_undo_cutovers(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    let wanted = table(Slot::Green, 0, "v1", "v2");
    router.apply(&wanted).await.unwrap();
    // The GitOps tool syncs its manifest again (server-side apply, its own manager, no force).
    // Every field cutover writes is in a map or list the API declares atomic (a Service's
    // selector, an HTTPRoute's rules, a VirtualService's http routes), so cutover owns it whole:
    // a sync of the tool's own values is a conflict the tool reports, never a silent switch of
    // the traffic (docs/kubernetes.md: tell the tool to leave fields managed by cutover alone).
    let (api_version, k) = kind.api_version_kind();
    let spec = match kind {
        RouterKind::Service | RouterKind::IngressNginx => json!({"selector": {"app": "shop"}}),
        RouterKind::Gateway => json!({"rules": [{"backendRefs": [{"name": "shop-blue", "port": 8080}]}]}),
        RouterKind::Istio => json!({"http": [{"route": [{"destination": {"host": "shop-blue"}}]}]}),
    };
    let object = json!({"apiVersion": api_version, "kind": k, "metadata": {"name": "shop", "namespace": NS}, "spec": spec});
    let err = cluster.server.apply_as("argocd", object, false).unwrap_err();
    assert!(err.contains("conflict") || err.contains("Conflict"), "{err}");
    assert_eq!(router.applied().await.unwrap(), wanted);
    // The tool's other fields stay its own: applying those alone is no conflict.
    if matches!(kind, RouterKind::Service | RouterKind::IngressNginx) {
        let labels = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": NS, "labels": {"team": "payments"}},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        cluster.server.apply_as("argocd", labels, false).unwrap();
        assert_eq!(router.applied().await.unwrap(), wanted);
    }
}

async fn a_missing_route_object_is_named(kind: RouterKind) {
    let (cluster, _platform, router) = rig(kind).await;
    let (api_version, k) = kind.api_version_kind();
    assert!(cluster.server.delete(api_version, k, NS, "shop"));
    let err = router
        .apply(&table(Slot::Blue, 0, "v1", "v2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains(&format!("{NS}/shop")), "{err}");
}

macro_rules! for_each_router {
    ($($kind:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;
            #[tokio::test]
            async fn applies_reads_back_switches_and_rolls_back() {
                super::applies_reads_back_switches_and_rolls_back(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn refused_tables_change_nothing() {
                super::refused_tables_change_nothing(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn no_traffic_to_a_slot_that_is_not_ready_or_scaled_down() {
                super::no_traffic_to_a_slot_that_is_not_ready_or_scaled_down(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn an_abort_leaves_no_weight_behind() {
                super::an_abort_leaves_no_weight_behind(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn a_route_object_changed_behind_cutovers_back_is_reconciled() {
                super::a_route_object_changed_behind_cutovers_back_is_reconciled(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn a_gitops_tool_that_applies_its_own_fields_again_does_not_undo_cutovers() {
                super::a_gitops_tool_that_applies_its_own_fields_again_does_not_undo_cutovers(RouterKind::$kind).await;
            }
            #[tokio::test]
            async fn a_missing_route_object_is_named() {
                super::a_missing_route_object_is_named(RouterKind::$kind).await;
            }
        }
    )*};
}

for_each_router!(Service => service, Gateway => gateway_api, Istio => istio, IngressNginx => ingress_nginx);

#[tokio::test]
async fn a_service_without_a_selector_is_never_given_one_that_could_select_everything() {
    let cluster = Cluster::start().await;
    cluster
        .server
        .apply_as(
            "argocd",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop", "namespace": NS},
                   "spec": {"ports": [{"port": 80}]}}),
            false,
        )
        .unwrap();
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    let router = cluster.router(RouterKind::Service).await;
    let why = refused(router.apply(&table(Slot::Blue, 0, "v1", "")).await);
    assert!(why.contains("has no selector"), "{why}");
    let service = cluster.server.get("v1", "Service", NS, "shop").unwrap();
    assert!(service["spec"]
        .get("selector")
        .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())));
}

#[tokio::test]
async fn no_weight_to_a_slot_whose_service_is_missing() {
    let cluster = Cluster::start().await;
    // A manifest whose container declares no port: cutover cannot make the slot Services.
    std::fs::write(
        cluster.dir.path().join("deploy.yaml"),
        common::MANIFEST.replace("          ports: [{containerPort: 8080}]\n", ""),
    )
    .unwrap();
    cluster.create_user_objects(RouterKind::Gateway);
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    assert!(cluster.server.get("v1", "Service", NS, "shop-blue").is_none());
    let router = cluster.router(RouterKind::Gateway).await;
    let why = refused(router.apply(&table(Slot::Blue, 0, "v1", "")).await);
    assert!(
        why.contains("Service shop-ns/shop-blue does not exist") && why.contains("service_port"),
        "{why}"
    );
}

/// Replays cutover's writes to the Service and the canary Ingress in order: the share of each
/// slot after each write, as ingress-nginx would route.
fn ingress_nginx_shares_after_each_write(cluster: &Cluster) -> Vec<[u32; 2]> {
    let mut live: Option<usize> = None;
    let mut canary: Option<(usize, u32)> = None;
    let index = |name: &str| usize::from(name == "shop-green");
    let mut out = Vec::new();
    for w in cluster.server.writes("cutover") {
        match w["kind"].as_str() {
            Some("Service") if w["metadata"]["name"] == "shop" => {
                live = Some(usize::from(w["spec"]["selector"]["cutover.dev/slot"] == "green"));
            }
            Some("Ingress") => {
                let weight: u32 = w["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let to = w["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
                    .as_str()
                    .unwrap();
                canary = Some((index(to), weight));
            }
            _ => continue,
        }
        let Some(live) = live else { continue };
        let mut shares = [0, 0];
        shares[live] = 10_000;
        if let Some((to, weight)) = canary {
            shares[live] -= weight;
            shares[to] += weight;
        }
        out.push(shares);
    }
    out
}

#[tokio::test]
async fn ingress_nginx_promotion_and_rollback_never_send_users_back_and_forth() {
    let (cluster, _platform, router) = rig(RouterKind::IngressNginx).await;
    router.apply(&table(Slot::Blue, 0, "v1", "v2")).await.unwrap();
    router.apply(&table(Slot::Blue, 5_000, "v1", "v2")).await.unwrap();
    let from = ingress_nginx_shares_after_each_write(&cluster).len();
    // Promotion: green becomes live, and no write in between gives blue more than it had.
    router.apply(&table(Slot::Green, 0, "v1", "v2")).await.unwrap();
    let during = ingress_nginx_shares_after_each_write(&cluster);
    for shares in &during[from..] {
        assert!(
            shares[1] >= 5_000,
            "green lost users on the way to all of them: {during:?}"
        );
    }
    assert_eq!(*during.last().unwrap(), [0, 10_000]);
    // And back (a rollback within the window): green never gains on the way.
    let from = during.len();
    router.apply(&table(Slot::Blue, 0, "v1", "v2")).await.unwrap();
    let back = ingress_nginx_shares_after_each_write(&cluster);
    let mut green = 10_000;
    for shares in &back[from..] {
        assert!(
            shares[1] <= green,
            "green gained users during the rollback: {back:?}"
        );
        green = shares[1];
    }
    assert_eq!(*back.last().unwrap(), [10_000, 0]);
}

#[tokio::test]
async fn the_canary_ingress_copies_only_the_apps_paths_to_the_slot_services_port() {
    let cluster = Cluster::start().await;
    cluster.create_user_objects(RouterKind::IngressNginx);
    // The app's Ingress also sends /admin to another Service.
    cluster
        .server
        .apply_as(
            "argocd",
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "shop", "namespace": NS},
                "spec": {"ingressClassName": "nginx", "rules": [
                    {"host": "shop.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": {"number": 80}}}},
                        {"path": "/admin", "pathType": "Prefix", "backend": {"service": {"name": "admin", "port": {"number": 80}}}},
                    ]}},
                    {"host": "admin.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "admin", "port": {"number": 80}}}},
                    ]}},
                ]},
            }),
            false,
        )
        .unwrap();
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    cluster.start_ready(&platform, Slot::Green, "v2").await;
    let router = cluster.router(RouterKind::IngressNginx).await;
    router.apply(&table(Slot::Blue, 2_500, "v1", "v2")).await.unwrap();
    let canary = cluster
        .server
        .get("networking.k8s.io/v1", "Ingress", NS, "shop-canary")
        .unwrap();
    assert_eq!(
        canary["spec"]["rules"],
        json!([{"host": "shop.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop-green", "port": {"name": "http"}}}},
        ]}}])
    );
    let slot_service = cluster.server.get("v1", "Service", NS, "shop-green").unwrap();
    assert_eq!(slot_service["spec"]["ports"][0]["name"], "http");
}
