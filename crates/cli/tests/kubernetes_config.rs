//! `docs/kubernetes.md` stays true: its configurations pass `cutover config check`, and its
//! Kubernetes objects pass the published schemas. And `config check` refuses what the Kubernetes
//! routers cannot do, each with its field and reason. No server runs.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

mod common;

use common::CUTOVER;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md");
    std::fs::read_to_string(&path).unwrap()
}

/// The fenced blocks of `lang` in the page, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == format!("```{lang}") => {
                current = Some((line.len() - trimmed.len(), String::new()))
            }
            Some((indent, body)) => {
                if trimmed == "```" {
                    out.push(std::mem::take(body));
                    current = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(""));
                    body.push('\n');
                }
            }
            None => {}
        }
    }
    out
}

/// `cutover config check` of `toml`: its exit code and output.
fn check(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(CUTOVER)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `base` with each `[table]` of `fragment` in place of the same table of `base`.
fn with_tables(base: &str, fragment: &str) -> String {
    let sections = |text: &str| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.starts_with('[') {
                out.push((line.to_string(), String::new()));
            }
            if let Some(last) = out.last_mut() {
                last.1.push_str(line);
                last.1.push('\n');
            } else {
                out.push((String::new(), format!("{line}\n")));
            }
        }
        out
    };
    let replacements = sections(fragment);
    sections(base)
        .into_iter()
        .map(|(header, body)| {
            replacements
                .iter()
                .find(|(h, _)| *h == header)
                .map(|(_, b)| b.clone())
                .unwrap_or(body)
        })
        .collect()
}

#[test]
fn the_pages_configurations_pass_config_check() {
    let text = doc();
    let tomls = blocks(&text, "toml");
    let base = tomls
        .iter()
        .find(|t| t.contains("[[app]]"))
        .expect("a whole configuration");
    let (code, out) = check(base);
    assert_eq!(code, 0, "{base}\n{out}");
    let mut fragments = 0;
    for fragment in tomls.iter().filter(|t| !t.contains("[[app]]")) {
        let whole = with_tables(base, fragment);
        let (code, out) = check(&whole);
        assert_eq!(code, 0, "{whole}\n{out}");
        fragments += 1;
    }
    assert!(
        fragments >= 5,
        "one block per router and the ingress-nginx judge: {fragments}"
    );
}

#[test]
fn the_pages_objects_pass_the_published_schemas() {
    let mut objects = Vec::new();
    for block in blocks(&doc(), "yaml") {
        for document in serde_yaml_ng::Deserializer::from_str(&block) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            objects.push(value);
        }
    }
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Service",
        "HTTPRoute",
        "VirtualService",
        "Ingress",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "the page shows no {kind}: {kinds:?}");
    }
    cutover_test_support::k8s_schema::validate(&objects).unwrap();
}

const APP: &str = r#"
[[app]]
name = "shop"
platform = "kubernetes"

[app.kubernetes]
manifest = "shop.yaml"
image = "registry.test/shop:{version}"

[app.prometheus]
url = "http://127.0.0.1:9090"
"#;

fn problems(extra: &str) -> String {
    let (code, out) = check(&format!("{APP}\n{extra}"));
    assert_eq!(code, 3, "accepted:\n{out}");
    out
}

#[test]
fn config_check_refuses_what_a_kubernetes_router_cannot_do() {
    // A Service selector has no weights: canary steps are refused with the reason.
    let out = problems(
        "[app.router]\nkind = \"kubernetes_service\"\nservice = \"shop\"\n[app.rollout]\nsteps = [{ weight_bp = 500, duration_ms = 1000 }, { weight_bp = 10000 }]\n",
    );
    assert!(
        out.contains("app[0].rollout.steps[0].weight_bp") && out.contains("blue-green"),
        "{out}"
    );
    // Istio's weights are whole percents.
    let out = problems(
        "[app.router]\nkind = \"istio\"\nvirtual_service = \"shop\"\n[app.rollout]\nsteps = [{ weight_bp = 50, duration_ms = 1000 }, { weight_bp = 10000 }]\n",
    );
    assert!(
        out.contains("app[0].rollout.steps[0].weight_bp") && out.contains("whole percents"),
        "{out}"
    );
    // Sticky users are a promise of cutover's own proxy.
    let out = problems(
        "[app.router]\nkind = \"gateway_api\"\nhttp_route = \"shop\"\n[app.proxy.sticky]\nuser_key_header = \"x-user\"\n",
    );
    assert!(
        out.contains("app[0].proxy") && out.contains("cannot keep a user on one version"),
        "{out}"
    );
    // An empty object name.
    let out = problems("[app.router]\nkind = \"gateway_api\"\nhttp_route = \"\"\n");
    assert!(out.contains("app[0].router.http_route"), "{out}");
}

#[test]
fn config_check_reports_every_kubernetes_problem_at_once() {
    let (code, out) = check(
        r#"
[[app]]
name = "shop"
platform = "kubernetes"

[app.kubernetes]
image = "registry.test/shop:latest"
namespace = "Shop"

[app.release]
command = "./shop"

[app.router]
kind = "kubernetes_service"
service = "shop"

[[app]]
name = "web"
platform = "local"
listen = "127.0.0.1:0"
[app.release]
command = "./web --port {port}"
[app.router]
kind = "istio"
virtual_service = "web"
"#,
    );
    assert_eq!(code, 3, "{out}");
    for wanted in [
        "app[0].kubernetes.manifest",
        "app[0].kubernetes.image",
        "app[0].kubernetes.namespace",
        "app[0].release",
        "app[0].prometheus",
        "app[1].router",
        "app[1].prometheus",
    ] {
        assert!(out.contains(wanted), "{wanted} not reported:\n{out}");
    }
}
