#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The flag service against an OpenFeature client nobody here wrote: the Python `openfeature-sdk`
//! with `openfeature-provider-ofrep` (installed by `scripts/test` in `target/test-venv`), talking
//! to a real `cutover serve`, every raw OFREP response validated against the published spec.

#[allow(dead_code)] // not every helper is used by every test binary
mod common;

use std::path::PathBuf;
use std::process::Command;

use cutover_test_support::http_client;
use serde_json::{json, Value};

const TOKEN: &str = "ofrep-test-admin-token";
const KEY: &str = "ofrep-test-api-key-0123456789";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let path = std::env::var_os("CUTOVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/test-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: ./scripts/test installs the Python OpenFeature client there \
         (or set CUTOVER_TEST_PYTHON to a python with openfeature-sdk, \
         openfeature-provider-ofrep, jsonschema and pyyaml)",
        path.display()
    );
    path
}

fn flag(key: &str, kind: &str, variants: Value, default: &str, extra: Value) -> Value {
    let mut flag = json!({
        "key": key,
        "type": kind,
        "variants": variants,
        "default_variant": default,
        "owner": "web-team",
        "description": format!("the {key} flag"),
        "expires": "2027-06-30",
    });
    for (k, v) in extra.as_object().unwrap() {
        flag[k] = v.clone();
    }
    flag
}

/// `cutover serve` with a flag service and one static app: its directory, process, admin and
/// OFREP base URLs.
fn serve_with_flags() -> (
    tempfile::TempDir,
    cutover_test_support::ChildProcess,
    String,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("flags.keys");
    common::private_file(&keys, &format!("python-client {KEY}\n"));
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[flags]
listen = "127.0.0.1:0"
api_keys_file = "{keys}"

[[app]]
name = "web"
listen = "127.0.0.1:0"

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = {{ version = "v1", backends = ["127.0.0.1:9"] }}
green = {{ version = "", backends = [] }}
"#,
            keys = keys.display()
        ),
    )
    .unwrap();
    let (serve, ready) = common::serve(&config, TOKEN);
    let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
    let ofrep = format!("http://{}", ready["bound"]["flags"].as_str().unwrap());

    (dir, serve, admin, ofrep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_openfeature_sdk_evaluates_cutovers_flags_over_ofrep() {
    let python = python();
    // The published spec lives beside the repository (`../shared/ofrep`), where every test may
    // read it; CUTOVER_OFREP_SPEC points elsewhere for a checkout without that layout.
    let spec = std::env::var_os("CUTOVER_OFREP_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/ofrep/openapi.yaml"));
    assert!(
        spec.exists(),
        "the OFREP spec is read from {}: check out the repository beside `shared/`, or set \
         CUTOVER_OFREP_SPEC to the spec's openapi.yaml",
        spec.display()
    );
    let (_dir, _serve, admin, ofrep) = serve_with_flags();
    let flags = [
        flag(
            "dark-mode",
            "boolean",
            json!({ "on": true, "off": false }),
            "off",
            json!({ "rules": [{ "when": [{ "attribute": "app_version", "op": "semver_ge", "value": "2.3.0" }], "variant": "on" }] }),
        ),
        flag(
            "banner",
            "string",
            json!({ "red": "red", "blue": "blue" }),
            "red",
            json!({}),
        ),
        flag(
            "max-items",
            "number",
            json!({ "few": 25, "many": 100 }),
            "few",
            json!({}),
        ),
        flag("ratio", "number", json!({ "most": 0.75 }), "most", json!({})),
        flag(
            "limits",
            "object",
            json!({ "default": { "rps": 100, "burst": 20 } }),
            "default",
            json!({}),
        ),
        flag(
            "new-checkout",
            "boolean",
            json!({ "on": true, "off": false }),
            "off",
            json!({ "split": [{ "variant": "on", "weight": 5000 }, { "variant": "off", "weight": 5000 }] }),
        ),
    ];
    for f in flags {
        let key = f["key"].as_str().unwrap().to_string();
        let r = http_client()
            .put(format!("{admin}/v1/flags/{key}"))
            .bearer_auth(TOKEN)
            .json(&json!({ "flag": f, "reason": "set up the test" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{key}: {}", r.text().await.unwrap());
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/ofrep_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([&ofrep, KEY, &admin, TOKEN])
            .arg(spec)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("OK"),
        "the OpenFeature client failed:\n{stdout}\n{stderr}"
    );
}

/// `cutover flag`: set from a TOML file, list, kill, show, audit, archive; bad input refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_commands_manage_the_flag_service() {
    let (dir, _serve, admin, _ofrep) = serve_with_flags();
    let cli = |args: &[&str]| common::cli(&admin, TOKEN, args);
    let file = dir.path().join("checkout.toml");
    std::fs::write(
        &file,
        r#"
key = "checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "team-payments"
description = "The new checkout"
expires = "2027-03-31"
split = [{ variant = "on", weight = 100 }, { variant = "off", weight = 9900 }]
"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out) = cli(&["flag", "set", "checkout", "--file", file, "--reason", "ship dark"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revision 1"), "{out}");
    let (code, out) = cli(&["flag", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checkout") && out.contains("team-payments") && out.contains("2027-03-31"),
        "{out}"
    );
    let (code, out) = cli(&["flag", "kill", "checkout", "--reason", "errors"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&["flag", "show", "checkout", "--output", "json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["enabled"], false);
    let (_, out) = cli(&["flag", "list", "--output", "json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["revision"], 2);
    let (_, out) = cli(&["flag", "audit", "checkout"]);
    assert!(out.contains("ship dark") && out.contains("errors"), "{out}");
    // A stale revision is refused (exit 3) and changes nothing.
    let (code, out) = cli(&[
        "flag",
        "set",
        "checkout",
        "--file",
        file,
        "--reason",
        "ramp",
        "--expected-revision",
        "1",
    ]);
    assert_eq!(code, 3, "{out}");
    // An invalid flag: every problem, nothing changed.
    std::fs::write(dir.path().join("bad.toml"), "key = \"checkout\"\ntype = \"boolean\"\nvariants = { on = 1 }\ndefault_variant = \"off\"\nowner = \"\"\ndescription = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (code, out) = cli(&[
        "flag",
        "set",
        "checkout",
        "--file",
        bad.to_str().unwrap(),
        "--reason",
        "x",
    ]);
    assert_ne!(code, 0, "{out}");
    for field in ["variants.on", "default_variant", "owner", "expires"] {
        assert!(out.contains(field), "{field}: {out}");
    }
    let (code, out) = cli(&["flag", "archive", "checkout", "--reason", "done"]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = cli(&["flag", "show", "checkout"]);
    assert_ne!(code, 0);
}
