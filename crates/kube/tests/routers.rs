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
    match kind {
        RouterKind::Service | RouterKind::IngressNginx => {
            // Its selector key is its own; cutover's keys are cutover's: no conflict, no change.
            let object = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "shop", "namespace": NS, "labels": {"team": "checkout"}},
                "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
            });
            cluster.server.apply_as("argocd", object, false).unwrap();
            assert_eq!(router.applied().await.unwrap(), wanted);
        }
        RouterKind::Gateway | RouterKind::Istio => {
            // The rules list is atomic in these CRDs, so cutover owns it whole: a sync of other
            // weights is a conflict the tool reports, not a silent flip of the traffic
            // (docs/kubernetes.md: tell the tool to leave fields managed by cutover alone).
            let (api_version, k) = kind.api_version_kind();
            let spec = if kind == RouterKind::Gateway {
                json!({"rules": [{"backendRefs": [{"name": "shop-blue", "port": 8080}]}]})
            } else {
                json!({"http": [{"route": [{"destination": {"host": "shop-blue"}}]}]})
            };
            let object = json!({"apiVersion": api_version, "kind": k, "metadata": {"name": "shop", "namespace": NS}, "spec": spec});
            let err = cluster.server.apply_as("argocd", object, false).unwrap_err();
            assert!(err.contains("conflict") || err.contains("Conflict"), "{err}");
            assert_eq!(router.applied().await.unwrap(), wanted);
        }
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
