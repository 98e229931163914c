//! Checks Kubernetes objects against the schemas published for them, with a checker nobody here
//! wrote: the models of the npm packages `kubernetes-models` (core types),
//! `@kubernetes-models/gateway-api` and `@kubernetes-models/istio`, each generated from a published
//! schema, each with a `.validate()` that runs ajv (a JSON Schema validator) and throws on a
//! violation. `k8s-schema/validate.mjs` beside this crate's sources feeds them the objects;
//! `./scripts/test` installs the exact versions of `k8s-schema/package.json` into
//! `target/test-node/k8s-schema/node_modules`, and a test panics saying so when node or the
//! packages are missing: it fails, never skips.
//!
//! # Which schemas
//!
//! - `kubernetes-models` 4.5.1: the Kubernetes v1.33.0 OpenAPI spec (merged with older releases'
//!   specs for removed APIs such as `extensions/v1beta1`): `apps/v1` Deployment, `v1` Service,
//!   `networking.k8s.io/v1` Ingress and every other built-in kind.
//! - `@kubernetes-models/gateway-api` 0.5.1: the Gateway API v1.0.0 CRDs, standard and
//!   experimental channels (and v0.6.2's): `gateway.networking.k8s.io/v1` HTTPRoute, Gateway,
//!   GatewayClass; v1beta1 and v1alpha2.
//! - `@kubernetes-models/istio` 2.3.0: the Istio 1.18.0 CRDs: `networking.istio.io/v1beta1` (and
//!   v1alpha3) VirtualService, DestinationRule, Gateway, ... There is **no `networking.istio.io/v1`**
//!   in it: that version exists from Istio 1.22 on, with the same schema as v1beta1, and is only in
//!   `@kubernetes-models/istio` 3, which (like `kubernetes-models` 5, Kubernetes v1.36, and
//!   `gateway-api` 2, Gateway API v1.5) is ESM-only and requires Node.js 22, while the machines have
//!   Node.js 20. A `networking.istio.io/v1` object is therefore checked as `v1beta1`, under the
//!   name the models know the same schema by (every function here does that).
//!
//! The model is picked by `apiVersion` + `kind`; an object no package has a model for is an error,
//! never a pass.
//!
//! # What it catches, and what not
//!
//! Caught: missing required properties ([`validate`] only), wrong JSON types (a `spec.selector`
//! that is a number, a label or annotation value that is not a string, `weight: "x"`), enum values
//! (`pathType`, `strategy.type`, Service `type`), minimum/maximum (a backendRef `weight` of -1 or a
//! `port` above 65535), string lengths and patterns where the schema has them (Gateway API names
//! and hostnames), formats (`int-or-string`, `quantity`), and Istio's "exactly one of" fields (a
//! `uri` match with both `prefix` and `exact`).
//!
//! Not caught:
//! - **Unknown fields** (`spec.selektor`): the Kubernetes schemas and these CRDs don't set
//!   `additionalProperties: false`, so a misspelt field passes, where an API server with strict
//!   field validation (kubectl's default) refuses it. A check of our own would need the schemas as
//!   data, and `kubernetes-models` ships them only compiled into validation code (since 4.4.0).
//! - What Kubernetes validates in Go code rather than in its OpenAPI schema: name syntax
//!   (`Web_1!` passes), label key/value syntax, a selector that doesn't match the template labels.
//! - CEL rules (`x-kubernetes-validations`) of the CRDs, such as Gateway API's "a backendRef to a
//!   Service needs a port".
//! - Istio 1.18's CRDs mark nothing required (a VirtualService route without `destination`
//!   passes).
//!
//! # Apply patches
//!
//! Server-side apply patches carry only the fields their manager owns (a Service with only
//! `metadata.name` and `spec.selector`), which the API server checks for types but not for the
//! whole object's required properties. [`validate_apply_patch`] runs `validate.mjs --partial`:
//! each model's `.validate()` throws an ajv `ValidationError` whose `errors` are ajv error
//! objects with a `keyword` (ajv runs with `allErrors`, so every violation is listed); those
//! whose keyword is `required` are dropped and every other one still fails the object. So it
//! also lets through a list item without its merge key (a container without `name`), which apply
//! would refuse.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::{find_bin, profile_dir};

/// How long one run of the checker may take (it starts in well under a second).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The packages `validate.mjs` loads, as `scripts/test` installs them.
const PACKAGES: [&str; 3] = [
    "kubernetes-models",
    "@kubernetes-models/gateway-api",
    "@kubernetes-models/istio",
];

/// Validates whole objects: `Err` carries the checker's output, one line per object (`ok KIND
/// NAME` or `error KIND NAME: /json/pointer message [keyword]; ...`).
pub fn validate(objects: &[Value]) -> Result<(), String> {
    run(objects, false)
}

/// [`validate`] for one object.
pub fn validate_one(object: &Value) -> Result<(), String> {
    validate(std::slice::from_ref(object))
}

/// Validates server-side apply patches: like [`validate`], except that missing required
/// properties are not errors (see the module docs).
pub fn validate_apply_patch(objects: &[Value]) -> Result<(), String> {
    run(objects, true)
}

/// Where `./scripts/test` installs the packages: `$CUTOVER_K8S_SCHEMA_NODE_MODULES`, or
/// `target/test-node/k8s-schema/node_modules`.
pub fn node_modules_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CUTOVER_K8S_SCHEMA_NODE_MODULES") {
        return PathBuf::from(p);
    }
    profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-node/k8s-schema/node_modules")
}

/// Istio's `networking.istio.io/v1` objects under the name the models know their schema by:
/// the Istio models here have the networking API only as `v1beta1`, and `v1` (Istio 1.22) is
/// the same schema promoted.
fn as_known_versions(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .cloned()
        .map(|mut object| {
            if object["apiVersion"] == "networking.istio.io/v1" {
                object["apiVersion"] = Value::from("networking.istio.io/v1beta1");
            }
            object
        })
        .collect()
}

fn run(objects: &[Value], partial: bool) -> Result<(), String> {
    let objects = &as_known_versions(objects);
    let modules = node_modules_dir();
    for package in PACKAGES {
        if !modules.join(package).join("package.json").is_file() {
            panic!(
                "the npm package {package} is not installed in {}; run ./scripts/test, which installs \
                 crates/test-support/k8s-schema/package.json into target/test-node/k8s-schema",
                modules.display()
            );
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-schema/validate.mjs");
    let mut cmd = Command::new(find_bin("node", "npm"));
    cmd.arg(&script);
    if partial {
        cmd.arg("--partial");
    }
    cmd.env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting the schema checker ({cmd:?}) failed: {e}"));

    let input = serde_json::to_vec(objects).unwrap_or_else(|e| panic!("serializing the objects failed: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A checker that exits early closes the pipe: its exit status and output tell why.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(TIMEOUT) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for the schema checker failed: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            let _ = waiter.join();
            panic!("the schema checker ({cmd:?}) did not finish within {TIMEOUT:?}");
        }
    };
    let _ = waiter.join();
    let _ = writer.join();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = if stderr.trim().is_empty() {
        stdout.to_string()
    } else {
        format!("{stdout}--- stderr ---\n{stderr}")
    };
    match output.status.code() {
        Some(0) => {
            let lines: Vec<&str> = stdout.lines().collect();
            if lines.len() != objects.len() || !lines.iter().all(|l| l.starts_with("ok ")) {
                panic!(
                    "the schema checker exited 0 but did not report {} objects as ok:\n{report}",
                    objects.len()
                );
            }
            Ok(())
        }
        Some(1) => Err(report),
        _ => panic!(
            "the schema checker ({cmd:?}) failed ({}); if packages are missing, run ./scripts/test\n{report}",
            output.status
        ),
    }
}
