#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Flag hygiene against a real `cutover serve`: `flag list --stale`, `flag check` (from the
//! server and from a file, for CI), the `cutover_flag_stale` gauge and the `flag_expired` webhook.

#[allow(dead_code)] // not every helper is used by every test binary
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_test_support::{http_client, wait_until};
use serde_json::Value;

const TOKEN: &str = "flag-hygiene-test-admin-token";

const FLAGS: &str = r#"
[[flag]]
key = "old_checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
split = [{ variant = "on", weight = 5000 }, { variant = "off", weight = 5000 }]
owner = "team-payments"
description = "The old checkout, long gone"
expires = "2020-01-31"

[[flag]]
key = "everyone_on"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
split = [{ variant = "on", weight = 10000 }]
owner = "team-web"
description = "At 100 % for good"
expires = "2099-12-31"

[[flag]]
key = "half"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
split = [{ variant = "on", weight = 5000 }, { variant = "off", weight = 5000 }]
owner = "team-web"
description = "Still ramping"
expires = "2099-12-31"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_flags_are_listed_counted_announced_and_fail_the_check() {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook = {
        let bodies = Arc::clone(&bodies);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let bodies = Arc::clone(&bodies);
                async move {
                    bodies.lock().unwrap().push(body);
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[flags]
listen = "127.0.0.1:0"
# Settled at once: no test waits days.
stale_after_days = 0

[[flags.webhook]]
name = "flag-owners"
url = "http://{hook_addr}/hook"
events = ["flag"]
"#
        ),
    )
    .unwrap();
    let (_serve, ready) = common::serve(&config, TOKEN);
    let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
    let cli = |args: &[&str]| common::cli(&admin, TOKEN, args);

    let file = dir.path().join("flags.toml");
    std::fs::write(&file, FLAGS).unwrap();
    let file = file.to_str().unwrap();
    // For CI, before anything reaches a server: the file's expired flag fails the check.
    let (code, out) = cli(&["flag", "check", "--file", file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("flag old_checkout (owner team-payments)"), "{out}");
    assert!(out.contains("flags.toml:2: expired on 2020-01-31"), "{out}");
    assert!(
        !out.contains("everyone_on"),
        "a file has no history, so nothing has settled: {out}"
    );

    let (code, out) = cli(&["flag", "apply", file, "--reason", "the flags as they are"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = cli(&["flag", "list", "--stale"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("old_checkout") && out.contains("expired on 2020-01-31"),
        "{out}"
    );
    assert!(out.contains("everyone_on") && out.contains("settled"), "{out}");
    assert!(
        !out.contains("half"),
        "a flag that still splits users is not stale: {out}"
    );
    let (_, json) = cli(&["flag", "list", "--stale", "--output", "json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = json["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["everyone_on", "old_checkout"]);

    let (code, out) = cli(&["flag", "check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: flag old_checkout"), "{out}");
    assert!(out.contains("warning: flag everyone_on"), "{out}");

    let metrics = http_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cutover_flag_stale{flag=\"old_checkout\",why=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cutover_flag_stale{flag=\"everyone_on\",why=\"settled\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("flag=\"half\""), "{metrics}");

    wait_until(
        "the owners hear of the expired flag",
        Duration::from_secs(10),
        || async {
            bodies
                .lock()
                .unwrap()
                .iter()
                .any(|b| b["phase"] == "flag_expired" && b["data"]["flag"] == "old_checkout")
        },
    )
    .await;
    // Once per flag and date, however many changes follow: after a kill, a flag created expired
    // is announced, and the first one still only once (changes are looked at in order).
    let (code, out) = cli(&["flag", "kill", "half", "--reason", "another change"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&[
        "flag",
        "create",
        "older",
        "--type",
        "boolean",
        "--owner",
        "team-web",
        "--description",
        "created late",
        "--expires",
        "2020-02-01",
        "--reason",
        "an old flag found in the code",
    ]);
    assert_eq!(code, 0, "{out}");
    wait_until(
        "the owners hear of the second expired flag",
        Duration::from_secs(10),
        || async {
            bodies
                .lock()
                .unwrap()
                .iter()
                .any(|b| b["data"]["flag"] == "older")
        },
    )
    .await;
    let announced: Vec<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["phase"] == "flag_expired")
        .map(|b| b["data"]["flag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(announced, ["old_checkout", "older"]);
    let (code, out) = cli(&["flag", "archive", "older", "--reason", "removed from the code"]);
    assert_eq!(code, 0, "{out}");

    // A new date clears it.
    let moved = FLAGS.replace("2020-01-31", "2099-01-31");
    std::fs::write(dir.path().join("flags.toml"), moved).unwrap();
    let (code, out) = cli(&["flag", "apply", file, "--reason", "keep it another while"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["flag", "check"]);
    assert_eq!(code, 0, "{out}");
}
