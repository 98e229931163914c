//! The Kubernetes platform against the stand-in API server: slots as Deployments, readiness as
//! `kubectl rollout status` means it, failures with the pods' words, scale-down, adoption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{image, wait_verdict, Cluster, APP, NS};
use cutover_core::{ReleaseSpec, Slot};
use cutover_platform::{Platform, Readiness};
use cutover_test_support::kube_apiserver::PodBehaviour;

#[tokio::test]
async fn a_slot_is_a_deployment_from_the_manifest_and_ready_when_rolled_out() {
    let cluster = Cluster::start().await;
    cluster
        .server
        .set_pod_behaviour(&image("v1"), PodBehaviour::ReadyAfter(Duration::from_millis(400)));
    let platform = cluster.platform().await;
    let mut release = ReleaseSpec::new("v1", "");
    release.env.insert("FEATURE".into(), "on".into());
    platform.start(APP, Slot::Blue, &release).await.unwrap();

    // Not ready while the pods are not: pending, with what is missing.
    match platform.readiness(APP, Slot::Blue).await.unwrap().unwrap() {
        Readiness::Pending(what) => assert!(!what.is_empty()),
        other => panic!("ready before the pods are: {other:?}"),
    }
    let Readiness::Ready(instances) = wait_verdict(&platform, Slot::Blue).await else {
        panic!("not ready")
    };
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|i| i.addr.port() == 8080 && i.version == "v1"),
        "{instances:?}"
    );

    let d = cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-blue")
        .unwrap();
    assert_eq!(d["metadata"]["labels"]["cutover.dev/slot"], "blue");
    assert_eq!(d["metadata"]["labels"]["cutover.dev/app"], "shop");
    assert_eq!(d["metadata"]["labels"]["cutover.dev/version"], "v1");
    assert_eq!(d["spec"]["replicas"], 2);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], image("v1"));
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "FEATURE" && e["value"] == "on"));
    // The readiness probe of the user's manifest is kept: readiness is the pods' own.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    let service = cluster.server.get("v1", "Service", NS, "shop-blue").unwrap();
    assert_eq!(service["spec"]["selector"]["cutover.dev/slot"], "blue");

    cluster.check_writes_are_cutovers_applies();
    cluster.check_writes_against_schemas();
}

#[tokio::test]
async fn a_crash_looping_release_fails_with_the_pods_state_and_its_last_log_lines() {
    let cluster = Cluster::start().await;
    cluster.server.set_pod_behaviour(
        &image("v2"),
        PodBehaviour::CrashLoop {
            exit_code: 3,
            logs: vec!["starting".into(), "panic: DATABASE_URL is not set".into()],
        },
    );
    let platform = cluster.platform().await;
    platform
        .start(APP, Slot::Green, &ReleaseSpec::new("v2", ""))
        .await
        .unwrap();
    let Readiness::Failed(why) = wait_verdict(&platform, Slot::Green).await else {
        panic!("a crash loop is not a failure")
    };
    assert!(why.contains("crash-looping"), "{why}");
    assert!(why.contains("exit code 3"), "{why}");
    let tail = platform.log_tail(APP, Slot::Green, 20);
    assert!(tail.contains("panic: DATABASE_URL is not set"), "{tail}");
    // The controller treats a crash-looping pod like an instance that died.
    let instances = platform.instances(APP, Slot::Green).await.unwrap();
    assert!(instances.iter().any(|i| i.exited.is_some()), "{instances:?}");
}

#[tokio::test]
async fn a_release_that_never_gets_ready_stays_pending_with_the_probes_words() {
    let cluster = Cluster::start().await;
    cluster.server.set_pod_behaviour(
        &image("v3"),
        PodBehaviour::NeverReady {
            message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
        },
    );
    let platform = cluster.platform().await;
    platform
        .start(APP, Slot::Green, &ReleaseSpec::new("v3", ""))
        .await
        .unwrap();
    // Bounded: the controller's deadline ends it; here a dozen looks show it never turns ready.
    let mut last = String::new();
    for _ in 0..12 {
        match platform.readiness(APP, Slot::Green).await.unwrap().unwrap() {
            Readiness::Pending(what) => last = what,
            other => panic!("a never-ready release became {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.contains("0 of 2 updated replicas are available"), "{last}");
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_pending_with_the_reason() {
    let cluster = Cluster::start().await;
    cluster
        .server
        .set_pod_behaviour(&image("v4"), PodBehaviour::ImagePullError);
    let platform = cluster.platform().await;
    platform
        .start(APP, Slot::Blue, &ReleaseSpec::new("v4", ""))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match platform.readiness(APP, Slot::Blue).await.unwrap().unwrap() {
            Readiness::Pending(what)
                if what.contains("ImagePullBackOff") || what.contains("ErrImagePull") =>
            {
                break
            }
            Readiness::Pending(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pull error is never named"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn secrets_by_reference_are_refused_rather_than_written_into_the_deployment() {
    let cluster = Cluster::start().await;
    let platform = cluster.platform().await;
    let mut release = ReleaseSpec::new("v1", "");
    release
        .secrets
        .insert("DB_PASSWORD".into(), "env:DB_PASSWORD".parse().unwrap());
    let err = platform
        .start(APP, Slot::Blue, &release)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DB_PASSWORD") && err.contains("secretKeyRef"),
        "{err}"
    );
    assert!(cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-blue")
        .is_none());
}

#[tokio::test]
async fn stop_scales_to_zero_and_keeps_the_deployment() {
    let cluster = Cluster::start().await;
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    platform
        .stop(APP, Slot::Blue, Duration::from_secs(1))
        .await
        .unwrap();
    let d = cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-blue")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 0);
    cutover_test_support::wait_until("the pods to go", Duration::from_secs(10), || {
        let gone = cluster.server.list("v1", "Pod", NS).is_empty();
        async move { gone }
    })
    .await;
    assert!(platform.running(APP).await.unwrap().is_empty());
    // Stopping a slot that never ran is not an error.
    platform
        .stop(APP, Slot::Green, Duration::from_secs(1))
        .await
        .unwrap();
    cluster.check_writes_are_cutovers_applies();
}

#[tokio::test]
async fn after_a_restart_slots_are_adopted_by_their_labels() {
    let cluster = Cluster::start().await;
    let before = cluster.platform().await;
    cluster.start_ready(&before, Slot::Blue, "v1").await;
    cluster.start_ready(&before, Slot::Green, "v2").await;
    drop(before);

    // A new cutover process: nothing in memory.
    let platform = cluster.platform().await;
    let running = platform.running(APP).await.unwrap();
    let slots: Vec<Slot> = running.iter().map(|(s, _)| *s).collect();
    assert_eq!(slots, [Slot::Blue, Slot::Green], "started first comes first");
    let pods_before: Vec<String> = cluster
        .server
        .list("v1", "Pod", NS)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let report = platform
        .reconcile(APP, &[(Slot::Blue, "v1".into())])
        .await
        .unwrap();
    assert_eq!(report.adopted.len(), 2, "{report:?}");
    assert_eq!(report.stopped.len(), 2, "{report:?}");
    let green = cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-green")
        .unwrap();
    assert_eq!(green["spec"]["replicas"], 0, "an unwanted slot is scaled down");
    let blue = cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-blue")
        .unwrap();
    assert_eq!(blue["spec"]["replicas"], 2, "the wanted slot runs on");
    // Adopted means untouched: the blue pods are the same pods.
    let blue_pods: Vec<String> = cluster
        .server
        .list("v1", "Pod", NS)
        .iter()
        .filter(|p| p["metadata"]["labels"]["cutover.dev/slot"] == "blue")
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        blue_pods.iter().all(|p| pods_before.contains(p)),
        "{blue_pods:?} not in {pods_before:?}"
    );
}

#[tokio::test]
async fn the_deployment_of_a_slot_survives_a_gitops_tool_owning_other_fields() {
    let cluster = Cluster::start().await;
    let platform = cluster.platform().await;
    cluster.start_ready(&platform, Slot::Blue, "v1").await;
    // Someone else adds an annotation to the slot's Deployment; cutover's next start keeps it.
    cluster.server.merge_patch_as(
        "kubectl-annotate",
        "apps/v1",
        "Deployment",
        NS,
        "shop-blue",
        serde_json::json!({"metadata": {"annotations": {"owner": "team-checkout"}}}),
    );
    cluster.start_ready(&platform, Slot::Blue, "v1.1").await;
    let d = cluster
        .server
        .get("apps/v1", "Deployment", NS, "shop-blue")
        .unwrap();
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-checkout");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        image("v1.1")
    );
}
