//! Debian's `kubectl` reads what cutover wrote to the stand-in API server, and makes the same
//! calls cutover makes (server-side apply with cutover's field manager, the scale subresource,
//! pods by label and their logs): a client nobody here wrote agrees with the stand-in about them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{table, Cluster, RouterKind, NS};
use cutover_core::Slot;
use cutover_router::Router;
use serde_json::Value;

fn kubectl_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CUTOVER_KUBECTL") {
        return PathBuf::from(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file())
        .expect("kubectl is not on PATH (Debian package kubernetes-client; scripts/test installs it)")
}

/// Runs kubectl with the cluster's kubeconfig; its stdout, or a panic with everything it said.
fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(cluster.dir.path().join("kubeconfig"))
        .arg("--cache-dir")
        .arg(cluster.dir.path().join("kubectl-cache"))
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn minor_version(cluster: &Cluster) -> u32 {
    let version = json(&kubectl(cluster, &["version", "--client", "-o", "json"]));
    version["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0)
}

/// kubectl before 1.27 validates on the client with OpenAPI v2, which the stand-in does not serve.
fn validate_flag(cluster: &Cluster) -> &'static str {
    if minor_version(cluster) < 27 {
        "--validate=false"
    } else {
        "--validate=true"
    }
}

/// kubectl 1.21 and later hide managed fields unless asked; 1.20 has no flag and shows them.
fn managed_fields_flag(cluster: &Cluster) -> &'static str {
    if minor_version(cluster) < 21 {
        "-o=json"
    } else {
        "--show-managed-fields"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_and_writes_what_cutover_does() {
    let cluster = Cluster::start().await;
    for kind in RouterKind::ALL {
        cluster.create_user_objects(kind);
    }
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    cluster.start_ready(&platform, Slot::Green, "v2").await;
    let canary = table(Slot::Blue, 2_500, "v1", "v2");
    for kind in [RouterKind::Gateway, RouterKind::Istio, RouterKind::IngressNginx] {
        cluster.router(kind).await.apply(&canary).await.unwrap();
    }

    // The slots, by cutover's labels.
    let deployments = json(&kubectl(
        &cluster,
        &["get", "deployments", "-l", "cutover.dev/app=shop", "-o", "json"],
    ));
    let names: Vec<&str> = deployments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"shop-blue") && names.contains(&"shop-green"),
        "{names:?}"
    );

    // The route objects through discovery of their groups, with cutover's weights.
    let managed = managed_fields_flag(&cluster);
    let route = json(&kubectl(
        &cluster,
        &[
            "get",
            "httproutes.gateway.networking.k8s.io",
            "shop",
            "-o",
            "json",
            managed,
        ],
    ));
    assert_eq!(
        route["spec"]["rules"][1]["backendRefs"][1]["weight"], 2500,
        "{route}"
    );
    let vs = json(&kubectl(
        &cluster,
        &["get", "virtualservices.networking.istio.io", "shop", "-o", "json"],
    ));
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 25, "{vs}");
    let ingress = json(&kubectl(
        &cluster,
        &["get", "ingress", "shop-canary", "-o", "json"],
    ));
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"],
        "2500"
    );
    let managers: Vec<&str> = route["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert!(
        managers.contains(&"cutover") && managers.contains(&"argocd"),
        "{managers:?}"
    );

    // The read-logs hint cutover gives: pods by label, with their logs.
    kubectl(
        &cluster,
        &[
            "logs",
            "-l",
            "cutover.dev/app=shop,cutover.dev/slot=blue",
            "--prefix",
        ],
    );

    // The calls cutover makes, made by kubectl: an apply of the weights with cutover's field
    // manager, which cutover then reads as its own table...
    let mut patch = cluster.object(RouterKind::Gateway);
    patch["metadata"] = serde_json::json!({
        "name": "shop",
        "namespace": NS,
        "annotations": route["metadata"]["annotations"].clone(),
    });
    patch.as_object_mut().unwrap().remove("status");
    let file = cluster.dir.path().join("route.json");
    std::fs::write(&file, patch.to_string()).unwrap();
    let validate = validate_flag(&cluster);
    kubectl(
        &cluster,
        &[
            "apply",
            "--server-side",
            "--field-manager=cutover",
            "--force-conflicts",
            validate,
            "-f",
            file.to_str().unwrap(),
        ],
    );
    let router = cluster.router(RouterKind::Gateway).await;
    assert_eq!(router.applied().await.unwrap(), canary);
    // ... and a scale to zero through the scale subresource, which the slot's readiness sees.
    kubectl(&cluster, &["scale", "deployment/shop-green", "--replicas=0"]);
    cutover_test_support::wait_until("green's pods to go", std::time::Duration::from_secs(10), || {
        let gone = !cluster
            .server
            .list("v1", "Pod", NS)
            .iter()
            .any(|p| p["metadata"]["labels"]["cutover.dev/slot"] == "green");
        async move { gone }
    })
    .await;
    let err = router
        .apply(&table(Slot::Blue, 5_000, "v1", "v2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no available pod"), "{err}");
}
