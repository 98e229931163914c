#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The static platform: the deploy hook's contract, its failures, and what survives a restart.

use cutover_core::{ReleaseSpec, Slot};
use cutover_platform::{Platform, PlatformError, StaticHostsConfig, StaticHostsPlatform};
use std::collections::BTreeMap;

fn config() -> StaticHostsConfig {
    StaticHostsConfig {
        blue: vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        ],
        green: vec!["127.0.0.1:7003".parse().unwrap()],
        stop_command: None,
        hook_timeout_ms: 10_000,
    }
}

fn release(version: &str, command: &str) -> ReleaseSpec {
    ReleaseSpec {
        version: version.into(),
        command: command.into(),
        env: BTreeMap::from([("EXTRA".to_string(), "x".to_string())]).into(),
        secrets: BTreeMap::new(),
        workdir: None,
        instances: 1,
    }
}

#[tokio::test]
async fn the_deploy_hook_gets_app_slot_version_and_backends_and_must_exit_0() {
    let state = tempfile::tempdir().unwrap();
    let out = state.path().join("env.txt");
    let mut config = config();
    config.stop_command = Some(format!(
        "echo stopped $CUTOVER_SLOT $CUTOVER_VERSION >> '{}'",
        out.display()
    ));
    let platform = StaticHostsPlatform::new("shop", config.clone(), state.path()).unwrap();
    let hook = format!(
        "echo $CUTOVER_APP $CUTOVER_SLOT $CUTOVER_VERSION $CUTOVER_BACKENDS $EXTRA > '{}'",
        out.display()
    );
    let instances = platform
        .start("shop", Slot::Blue, &release("v7", &hook))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "shop blue v7 127.0.0.1:7001,127.0.0.1:7002 x"
    );
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i.version == "v7" && i.exited.is_none()));
    assert!(platform.instances("shop", Slot::Green).await.unwrap().is_empty());

    // A restarted cutover knows what runs where, and lets go of what is no longer wanted.
    let again = StaticHostsPlatform::new("shop", config, state.path()).unwrap();
    assert_eq!(again.instances("shop", Slot::Blue).await.unwrap(), instances);
    let report = again.reconcile("shop", &[]).await.unwrap();
    assert_eq!(report.stopped.len(), 2);
    assert!(again.instances("shop", Slot::Blue).await.unwrap().is_empty());
    assert!(std::fs::read_to_string(&out).unwrap().contains("stopped blue v7"));
}

#[tokio::test]
async fn a_failing_or_hanging_hook_fails_the_start_and_its_output_is_kept() {
    let state = tempfile::tempdir().unwrap();
    let mut config = config();
    config.hook_timeout_ms = 300;
    let platform = StaticHostsPlatform::new("shop", config, state.path()).unwrap();
    let err = platform
        .start(
            "shop",
            Slot::Green,
            &release("v2", "echo cannot reach host 10.0.0.9 >&2; exit 3"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PlatformError::Start {
                slot: Slot::Green,
                ..
            }
        ) && err.to_string().contains("exit status: 3"),
        "{err}"
    );
    assert!(platform
        .log_tail("shop", Slot::Green, 5)
        .contains("cannot reach host 10.0.0.9"));
    assert!(platform.instances("shop", Slot::Green).await.unwrap().is_empty());

    let err = platform
        .start("shop", Slot::Green, &release("v3", "sleep 30"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not finish within 300 ms"), "{err}");
}

#[test]
fn bad_hosts_are_reported_together_with_their_fields() {
    let config = StaticHostsConfig {
        blue: vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7001".parse().unwrap(),
        ],
        green: vec!["127.0.0.1:7001".parse().unwrap(), "127.0.0.1:0".parse().unwrap()],
        stop_command: Some(" ".into()),
        hook_timeout_ms: 0,
    };
    let fields: Vec<String> = config
        .validate("app[0].hosts.")
        .into_iter()
        .map(|e| e.field)
        .collect();
    for f in [
        "app[0].hosts.blue[1]",
        "app[0].hosts.green[0]",
        "app[0].hosts.green[1]",
        "app[0].hosts.hook_timeout_ms",
        "app[0].hosts.stop_command",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
}
