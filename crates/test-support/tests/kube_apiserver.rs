#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The stand-in Kubernetes API server, driven by clients nobody here wrote: kubectl (the one on
//! PATH, or `CUTOVER_KUBECTL`) and raw HTTP with reqwest.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use cutover_test_support::kube_apiserver::{ApiServer, PodBehaviour};
use cutover_test_support::{http_client, wait_until};
use serde_json::{json, Value};

/// How long one kubectl invocation may take before the test fails.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the simulated controllers may take to converge.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// kubectl

/// kubectl against one server, with its own kubeconfig and discovery cache.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
    /// Below 1.27 kubectl validates on the client with OpenAPI v2 (protobuf), which the stand-in
    /// does not serve: such a kubectl applies and creates with `--validate=false`.
    client_validation: bool,
    /// Below 1.21 `-o yaml` shows managed fields unasked, and knows no `--show-managed-fields`.
    managed_fields_shown: bool,
}

fn kubectl_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CUTOVER_KUBECTL") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("kubectl"))
                .find(|candidate| candidate.is_file())
        })
        .expect("kubectl is not on PATH (Debian package kubernetes-client; scripts/test installs it)")
}

fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cutover-kube-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Kubectl {
    async fn new(server: &ApiServer, tag: &str) -> Kubectl {
        let dir = temp_dir(tag);
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig, "default");
        let mut k = Kubectl {
            bin: kubectl_bin(),
            kubeconfig,
            cache: dir.join("cache"),
            dir,
            client_validation: false,
            managed_fields_shown: false,
        };
        let out = k.ok(&["version", "--client", "-o", "json"]).await;
        let version: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl version: {e}: {out}"));
        let minor: u32 = version["clientVersion"]["minor"]
            .as_str()
            .unwrap_or("0")
            .trim_end_matches('+')
            .parse()
            .unwrap_or(0);
        k.client_validation = minor < 27;
        k.managed_fields_shown = minor < 21;
        k
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        match tokio::time::timeout(KUBECTL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("running {} {args:?}: {e}", self.bin.display()),
            Err(_) => panic!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}"),
        }
    }

    /// Runs kubectl, expecting success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
        stdout.into_owned()
    }

    /// Runs kubectl, expecting failure; returns stdout and stderr together.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded but should have failed:\n{text}"
        );
        text
    }

    /// `kubectl create -f file`.
    async fn create(&self, file: &Path) -> String {
        let mut args = vec!["create", "-f", file.to_str().unwrap()];
        if self.client_validation {
            args.push("--validate=false");
        }
        self.ok(&args).await
    }

    /// `kubectl get KIND NAME -o yaml` with managed fields.
    async fn yaml_with_managed_fields(&self, kind: &str, name: &str) -> String {
        let mut args = vec!["get", kind, name, "-o", "yaml"];
        if !self.managed_fields_shown {
            args.push("--show-managed-fields");
        }
        self.ok(&args).await
    }

    /// `apply --server-side` with the flags this kubectl needs.
    fn apply_args<'a>(&self, manager: &'a str, file: &'a Path, extra: &[&'a str]) -> Vec<String> {
        let mut args = vec![
            "apply".to_string(),
            "--server-side".into(),
            format!("--field-manager={manager}"),
            "-f".into(),
            file.display().to_string(),
        ];
        if self.client_validation {
            args.push("--validate=false".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn apply(&self, manager: &str, file: &Path, extra: &[&str]) -> String {
        let args = self.apply_args(manager, file, extra);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
    }

    async fn apply_fails(&self, manager: &str, file: &Path, extra: &[&str]) -> String {
        let args = self.apply_args(manager, file, extra);
        self.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
    }
}

fn deployment_yaml(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: blue
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_version_and_api_resources() {
    let server = ApiServer::start().await;
    let k = Kubectl::new(&server, "version").await;
    let version = k.ok(&["version"]).await;
    assert!(version.contains("v1.34.0"), "server version missing:\n{version}");
    let resources = k.ok(&["api-resources"]).await;
    for expected in [
        "deployments",
        "deploy",
        "svc",
        "po",
        "ing",
        "httproutes",
        "virtualservices",
        "vs",
    ] {
        assert!(
            resources.split_whitespace().any(|w| w == expected),
            "{expected} missing from api-resources:\n{resources}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_applies_rolls_out_scales_and_deletes_a_deployment() {
    let server = ApiServer::start().await;
    let k = Kubectl::new(&server, "apply").await;
    let file = k.file("shop.yaml", &deployment_yaml("shop", "shop:1", 2));
    let out = k.apply("gitops", &file, &[]).await;
    assert!(out.contains("serverside-applied"), "{out}");

    let json: Value = serde_json::from_str(&k.ok(&["get", "deploy", "shop", "-o", "json"]).await).unwrap();
    assert_eq!(json["spec"]["replicas"], 2);
    assert_eq!(json["metadata"]["generation"], 1);
    assert_eq!(
        json["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:1"
    );
    assert!(json["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(json["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| rv.parse::<u64>().is_ok()));

    let out = k.ok(&["rollout", "status", "deploy/shop", "--timeout=20s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = k.ok(&["get", "pods", "-l", "app=shop", "-o", "name"]).await;
    assert_eq!(pods.lines().count(), 2, "two pods expected:\n{pods}");

    let yaml = k.yaml_with_managed_fields("deploy", "shop").await;
    assert!(
        yaml.contains("manager: gitops") && yaml.contains("operation: Apply"),
        "{yaml}"
    );
    assert!(yaml.contains("f:replicas: {}"), "{yaml}");

    // Another manager changing a field gitops owns: a conflict, then taken over with force.
    let other = k.file("shop3.yaml", &deployment_yaml("shop", "shop:1", 3));
    let out = k.apply_fails("argocd", &other, &[]).await;
    assert!(
        out.contains("conflict") && out.contains(".spec.replicas") && out.contains("gitops"),
        "{out}"
    );
    assert_eq!(
        server.get("apps/v1", "Deployment", "default", "shop").unwrap()["spec"]["replicas"],
        2
    );
    k.apply("argocd", &other, &["--force-conflicts"]).await;
    let deployment = server.get("apps/v1", "Deployment", "default", "shop").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let yaml = k.yaml_with_managed_fields("deploy", "shop").await;
    assert!(yaml.contains("manager: argocd"), "{yaml}");

    k.ok(&["scale", "deploy/shop", "--replicas=0"]).await;
    assert_eq!(
        server.get("apps/v1", "Deployment", "default", "shop").unwrap()["spec"]["replicas"],
        0
    );
    wait_until("the pods of a deployment scaled to 0 to go", SETTLE, || async {
        server.list("v1", "Pod", "default").is_empty()
    })
    .await;

    let out = k.ok(&["delete", "deploy", "shop"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(server.get("apps/v1", "Deployment", "default", "shop").is_none());
    let out = k.fails(&["get", "deploy", "shop"]).await;
    assert!(out.contains("NotFound") || out.contains("not found"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_rollout_status_fails_for_a_never_ready_image() {
    let server = ApiServer::start().await;
    server.set_pod_behaviour(
        "broken:1",
        PodBehaviour::NeverReady {
            message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
        },
    );
    let k = Kubectl::new(&server, "never-ready").await;
    let file = k.file("broken.yaml", &deployment_yaml("broken", "broken:1", 1));
    k.apply("gitops", &file, &[]).await;
    let started = Instant::now();
    let out = k
        .fails(&["rollout", "status", "deploy/broken", "--timeout=2s"])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "rollout status took {:?}",
        started.elapsed()
    );
    assert!(
        out.contains("Waiting for deployment \"broken\" rollout to finish"),
        "{out}"
    );
    let pod = &server.list("v1", "Pod", "default")[0];
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(
        ready["message"],
        "Readiness probe failed: HTTP probe failed with statuscode: 503"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_patches_a_service_and_lists_pods_by_label() {
    let server = ApiServer::start().await;
    let k = Kubectl::new(&server, "patch").await;
    let svc = k.file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: shop\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    k.create(&svc).await;
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"selector":{"slot":"green"}}}"#,
    ])
    .await;
    let service = server.get("v1", "Service", "default", "web").unwrap();
    assert_eq!(
        service["spec"]["selector"],
        json!({"app": "shop", "slot": "green"})
    );
    let managers: Vec<&str> = service["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(managers.contains(&"kubectl-patch"), "{managers:?}");

    server.create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [{"name": "web", "image": "a:1"}]}}}}));
    server.create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "b"}}, "template": {"metadata": {"labels": {"app": "b"}},
        "spec": {"containers": [{"name": "web", "image": "b:1"}]}}}}));
    wait_until("three pods", SETTLE, || async {
        server.list("v1", "Pod", "default").len() == 3
    })
    .await;
    let names = k.ok(&["get", "pods", "-l", "app=a", "-o", "name"]).await;
    assert_eq!(names.lines().count(), 2, "{names}");
    assert!(names.lines().all(|l| l.starts_with("pod/a-")), "{names}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_of_a_crash_looping_pod() {
    let server = ApiServer::start().await;
    server.set_pod_behaviour(
        "crash:1",
        PodBehaviour::CrashLoop {
            exit_code: 3,
            logs: vec!["starting".into(), "panic: no database".into()],
        },
    );
    let k = Kubectl::new(&server, "logs").await;
    let file = k.file("crash.yaml", &deployment_yaml("crash", "crash:1", 1));
    k.apply("gitops", &file, &[]).await;
    wait_until("a crash-looping pod", SETTLE, || async {
        server
            .list("v1", "Pod", "default")
            .iter()
            .any(|p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff")
    })
    .await;
    let pod = server.list("v1", "Pod", "default")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = k.ok(&["logs", &pod]).await;
    assert_eq!(logs, "starting\npanic: no database\n");
    let status = &server.get("v1", "Pod", "default", &pod).unwrap()["status"]["containerStatuses"][0];
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(status["ready"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_watch_sees_a_change() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    let k = Kubectl::new(&server, "watch").await;
    let file = k.file("w.yaml", &deployment_yaml("watched", "w:1", 1));
    k.apply("gitops", &file, &[]).await;
    let mut cmd = tokio::process::Command::new(&k.bin);
    cmd.arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .arg("--cache-dir")
        .arg(&k.cache)
        .args(["get", "deploy", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // The first line may be the table's header.
    let mut first = next_line(&mut stdout, &mut seen).await;
    if !first.contains("watched") {
        first = next_line(&mut stdout, &mut seen).await;
    }
    assert!(first.contains("ADDED") && first.contains("watched"), "{seen}");
    server.merge_patch_as(
        "someone",
        "apps/v1",
        "Deployment",
        "default",
        "watched",
        json!({"metadata": {"labels": {"changed": "yes"}}}),
    );
    let second = next_line(&mut stdout, &mut seen).await;
    assert!(
        second.contains("MODIFIED") && second.contains("watched"),
        "{seen}"
    );
    child.kill().await.unwrap();
}

async fn next_line(
    stdout: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    seen: &mut String,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    match tokio::time::timeout(KUBECTL_TIMEOUT, stdout.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        other => panic!("kubectl get -w printed no further line ({other:?}); so far:\n{seen}"),
    }
    seen.push_str(&line);
    line
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP

struct Http {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Http {
    fn new(server: &ApiServer) -> Http {
        Http {
            client: http_client(),
            base: server.url(),
            token: server.token(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None, None).await
    }

    async fn apply(&self, path: &str, manager: &str, force: bool, body: &Value) -> (u16, Value) {
        let path = format!("{path}?fieldManager={manager}&force={force}");
        self.send(
            "PATCH",
            &path,
            Some("application/apply-patch+yaml"),
            Some(body.to_string()),
        )
        .await
    }
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "web", "image": image}]}},
        },
    })
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fields_of<'a>(object: &'a Value, manager: &str) -> &'a Value {
    object["metadata"]["managedFields"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["manager"] == manager))
        .map(|e| &e["fieldsV1"])
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_token_get_401_but_version_is_open() {
    let server = ApiServer::start().await;
    let client = http_client();
    let response = client
        .get(format!("{}{DEPLOYMENTS}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let status: Value = response.json().await.unwrap();
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_i64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    let response = client
        .get(format!("{}/api/v1/pods", server.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let version: Value = client
        .get(format!("{}/version", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["gitVersion"], "v1.34.0");
    assert!(server
        .requests()
        .iter()
        .any(|r| r.status == 401 && r.path == DEPLOYMENTS));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_conflict_is_409_with_causes_and_changes_nothing() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    let http = Http::new(&server);
    let (status, created) = http
        .apply(
            &format!("{DEPLOYMENTS}/shop"),
            "argocd",
            false,
            &deployment("shop", 2, "shop:1"),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        managers(&created),
        vec![("argocd".to_string(), "Apply".to_string())]
    );
    assert_eq!(fields_of(&created, "argocd")["f:spec"]["f:replicas"], json!({}));
    assert_eq!(
        fields_of(&created, "argocd")["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"web\"}"]["."],
        json!({})
    );
    let before = server.get("apps/v1", "Deployment", "default", "shop").unwrap();

    let mut mine = deployment("shop", 5, "shop:1");
    mine["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop:2");
    let (status, error) = http
        .apply(&format!("{DEPLOYMENTS}/shop"), "cutover", false, &mine)
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["reason"], "Conflict");
    let causes = error["details"]["causes"].as_array().unwrap();
    let fields: Vec<&str> = causes.iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&".spec.replicas"), "{error}");
    assert!(
        fields.contains(&".spec.template.spec.containers[name=\"web\"].image"),
        "{error}"
    );
    for cause in causes {
        // The wire name of metav1.StatusCause's `Type` is "reason".
        assert_eq!(cause["reason"], "FieldManagerConflict");
        assert_eq!(cause["message"], "conflict with \"argocd\" using apps/v1");
    }
    assert_eq!(
        server.get("apps/v1", "Deployment", "default", "shop").unwrap(),
        before,
        "a refused apply changed the object"
    );

    // The same values are no conflict: shared ownership.
    let (status, shared) = http
        .apply(
            &format!("{DEPLOYMENTS}/shop"),
            "cutover",
            false,
            &deployment("shop", 2, "shop:1"),
        )
        .await;
    assert_eq!(status, 200, "{shared}");
    assert_eq!(fields_of(&shared, "cutover")["f:spec"]["f:replicas"], json!({}));
    assert_eq!(fields_of(&shared, "argocd")["f:spec"]["f:replicas"], json!({}));
    // Applying the same again changes nothing, and writes nothing.
    let (status, again) = http
        .apply(
            &format!("{DEPLOYMENTS}/shop"),
            "cutover",
            false,
            &deployment("shop", 2, "shop:1"),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["metadata"]["resourceVersion"], shared["metadata"]["resourceVersion"],
        "a no-op apply wrote"
    );
    let only_cutover: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.field_manager, r.content_type))
        .collect();
    assert_eq!(only_cutover.len(), 4);
    assert!(only_cutover
        .iter()
        .all(|(_, ct)| ct.as_deref() == Some("application/apply-patch+yaml")));
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_apply_moves_ownership() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    server
        .apply_as("argocd", deployment("shop", 2, "shop:1"), false)
        .unwrap();
    let http = Http::new(&server);
    let (status, moved) = http.apply(&format!("{DEPLOYMENTS}/shop"), "cutover", true, &json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"}, "spec": {"replicas": 7},
    })).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["spec"]["replicas"], 7);
    assert_eq!(moved["metadata"]["generation"], 2);
    assert_eq!(fields_of(&moved, "cutover")["f:spec"]["f:replicas"], json!({}));
    assert!(
        fields_of(&moved, "argocd")["f:spec"].get("f:replicas").is_none(),
        "{moved}"
    );
    // argocd now conflicts in turn, through the Rust helper too.
    let err = server
        .apply_as("argocd", deployment("shop", 2, "shop:1"), false)
        .unwrap_err();
    assert!(
        err.contains("conflict with \"cutover\"") && err.contains(".spec.replicas"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    let http = Http::new(&server);
    let path = format!("{DEPLOYMENTS}/shop");
    let mut first = deployment("shop", 2, "shop:1");
    first["metadata"]["labels"]["team"] = json!("payments");
    first["metadata"]["annotations"] = json!({"note": "x"});
    first["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "web", "image": "shop:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "proxy:1"},
    ]);
    assert_eq!(http.apply(&path, "cutover", false, &first).await.0, 201);
    // Someone else takes the annotation.
    server.merge_patch_as(
        "kubectl-edit",
        "apps/v1",
        "Deployment",
        "default",
        "shop",
        json!({"metadata": {"annotations": {"note": "y"}}}),
    );

    let mut second = deployment("shop", 2, "shop:1");
    second["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "web", "image": "shop:1", "env": [{"name": "A", "value": "1"}]},
    ]);
    let (status, object) = http.apply(&path, "cutover", false, &second).await;
    assert_eq!(status, 200, "{object}");
    assert!(
        object["metadata"]["labels"].get("team").is_none(),
        "label not removed: {object}"
    );
    assert_eq!(
        object["metadata"]["annotations"]["note"], "y",
        "a field another manager owns was removed"
    );
    let containers = object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "sidecar not removed: {object}");
    assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(
        managers(&object),
        vec![
            ("cutover".into(), "Apply".into()),
            ("kubectl-edit".into(), "Update".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_lists_are_atomic_and_keyed_lists_merge_by_key() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    let route = |backends: Value| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"rules": [{"backendRefs": backends}]},
        })
    };
    server.apply_as("cutover", route(json!([{"name": "blue", "port": 80, "weight": 90}, {"name": "green", "port": 80, "weight": 10}])), false).unwrap();
    let applied = server
        .apply_as(
            "cutover",
            route(json!([{"name": "green", "port": 80, "weight": 100}])),
            false,
        )
        .unwrap();
    assert_eq!(
        applied["spec"]["rules"][0]["backendRefs"],
        json!([{"name": "green", "port": 80, "weight": 100}])
    );
    assert_eq!(
        fields_of(&applied, "cutover")["f:spec"]["f:rules"],
        json!({}),
        "a CRD list must be owned whole"
    );

    // Two managers each own one container of the same Deployment.
    server
        .apply_as("a", deployment("shop", 1, "shop:1"), false)
        .unwrap();
    let sidecar = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1"}]}}}});
    let both = server.apply_as("b", sidecar, false).unwrap();
    let names: Vec<&str> = both["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "proxy"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_patch_strategic_patch_and_json_patch() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    server.create(deployment("shop", 1, "shop:1"));
    let http = Http::new(&server);
    let path = format!("{DEPLOYMENTS}/shop?fieldManager=cutover");
    let (status, object) = http
        .send(
            "PATCH",
            &path,
            Some("application/merge-patch+json"),
            Some(
                json!({"metadata": {"labels": {"slot": "blue", "app": null}}, "spec": {"replicas": 3}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{object}");
    assert_eq!(object["metadata"]["labels"], json!({"slot": "blue"}));
    assert_eq!(object["spec"]["replicas"], 3);
    assert_eq!(object["metadata"]["generation"], 2);
    assert!(managers(&object).contains(&("cutover".into(), "Update".into())));
    assert_eq!(fields_of(&object, "cutover")["f:spec"]["f:replicas"], json!({}));

    let (status, object) = http.send("PATCH", &path, Some("application/strategic-merge-patch+json"),
        Some(json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "web"}, {"name": "proxy"}],
            "containers": [{"name": "proxy", "image": "envoy:1"}]}}}}).to_string())).await;
    assert_eq!(status, 200, "{object}");
    let containers = object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(
        containers.len(),
        2,
        "strategic merge must merge containers by name: {object}"
    );

    let ops = json!([
        {"op": "test", "path": "/spec/replicas", "value": 3},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
    ]);
    let (status, object) = http
        .send(
            "PATCH",
            &path,
            Some("application/json-patch+json"),
            Some(ops.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{object}");
    assert_eq!(object["spec"]["replicas"], 4);
    assert_eq!(object["metadata"]["annotations"]["a/b"], "c");
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 99}, {"op": "replace", "path": "/spec/replicas", "value": 1}]);
    let (status, error) = http
        .send(
            "PATCH",
            &path,
            Some("application/json-patch+json"),
            Some(failing.to_string()),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(
        server.get("apps/v1", "Deployment", "default", "shop").unwrap()["spec"]["replicas"],
        4
    );

    let (status, error) = http
        .send("PATCH", &path, Some("text/plain"), Some("{}".into()))
        .await;
    assert_eq!(
        (status, error["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    assert_eq!(
        server.writes("cutover").len(),
        4,
        "every body cutover sent is recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_a_stale_resource_version_is_409() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    server.create(deployment("shop", 1, "shop:1"));
    let http = Http::new(&server);
    let (_, mut object) = http.get(&format!("{DEPLOYMENTS}/shop")).await;
    let stale = object.clone();
    object["spec"]["replicas"] = json!(2);
    let (status, updated) = http
        .send(
            "PUT",
            &format!("{DEPLOYMENTS}/shop"),
            Some("application/json"),
            Some(object.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        stale["metadata"]["resourceVersion"]
    );
    let (status, error) = http
        .send(
            "PUT",
            &format!("{DEPLOYMENTS}/shop"),
            Some("application/json"),
            Some(stale.to_string()),
        )
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["reason"], "Conflict");
    assert_eq!(
        error["message"],
        "Operation cannot be fulfilled on deployments.apps \"shop\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (status, error) = http
        .send(
            "POST",
            DEPLOYMENTS,
            Some("application/json"),
            Some(deployment("shop", 1, "x").to_string()),
        )
        .await;
    assert_eq!((status, error["reason"].as_str()), (409, Some("AlreadyExists")));
    let (status, error) = http.get(&format!("{DEPLOYMENTS}/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(
        error["details"],
        json!({"name": "nope", "group": "apps", "kind": "deployments"})
    );
}

/// Reads watch lines until `n` events came or the deadline passed.
async fn read_events(response: &mut reqwest::Response, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while events.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("reading the watch: {e}"),
            Err(_) => panic!("timed out with {} of {n} events: {events:?}", events.len()),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(i) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=i).collect();
            events.push(serde_json::from_slice(&line).unwrap());
        }
    }
    events
}

async fn open_watch(server: &ApiServer, path_and_query: &str) -> reqwest::Response {
    let response = http_client()
        .get(format!("{}{path_and_query}", server.url()))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response
}

fn config_map(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": {"app": "shop"}}, "data": {"v": value}})
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_a_resource_version_sees_later_events_in_order() {
    let server = ApiServer::start().await;
    server.create(config_map("before", "0"));
    let from = server.resource_version();
    server.create(config_map("one", "1"));
    server.merge_patch_as(
        "test",
        "v1",
        "ConfigMap",
        "default",
        "one",
        json!({"data": {"v": "2"}}),
    );
    let mut response = open_watch(
        &server,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={from}"),
    )
    .await;
    server.delete("v1", "ConfigMap", "default", "one");
    let events = read_events(&mut response, 3).await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("ADDED", "one"), ("MODIFIED", "one"), ("DELETED", "one")]);
    let rvs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > from, "{rvs:?}");
    assert_eq!(events[1]["object"]["data"]["v"], "2");

    // Without a resource version: the current objects first; a label selector filters.
    let mut response = open_watch(
        &server,
        "/api/v1/namespaces/default/configmaps?watch=1&labelSelector=app%3Dshop",
    )
    .await;
    let events = read_events(&mut response, 1).await;
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("before"))
    );
    // A change that takes an object out of the selection is a DELETED for this watch.
    server.merge_patch_as(
        "test",
        "v1",
        "ConfigMap",
        "default",
        "before",
        json!({"metadata": {"labels": {"app": "other"}}}),
    );
    let events = read_events(&mut response, 1).await;
    assert_eq!(events[0]["type"], "DELETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_after_compaction_gets_410_expired() {
    let server = ApiServer::start().await;
    let old = server.resource_version();
    server.create(config_map("a", "1"));
    server.compact();
    let mut response = open_watch(
        &server,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}"),
    )
    .await;
    let events = read_events(&mut response, 1).await;
    assert_eq!(events[0]["type"], "ERROR");
    let status = &events[0]["object"];
    assert_eq!(
        (status["code"].as_i64(), status["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {old} (")),
        "{status}"
    );
    let rest = tokio::time::timeout(SETTLE, response.chunk())
        .await
        .expect("the stream did not end")
        .unwrap();
    assert!(rest.is_none(), "the stream must end after the ERROR");

    // From the compaction point on, watching works.
    let now = server.resource_version();
    let mut response = open_watch(
        &server,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={now}"),
    )
    .await;
    server.create(config_map("b", "1"));
    assert_eq!(read_events(&mut response, 1).await[0]["type"], "ADDED");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_bookmarks_initial_events_and_timeout() {
    let server = ApiServer::start().await;
    server.create(config_map("a", "1"));
    let mut response = open_watch(&server,
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3").await;
    let events = read_events(&mut response, 3).await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(events[2]["type"], "BOOKMARK", "periodic bookmark expected");
    let started = Instant::now();
    loop {
        match tokio::time::timeout(SETTLE, response.chunk())
            .await
            .expect("timeoutSeconds did not end the watch")
            .unwrap()
        {
            None => break,
            Some(_) => assert!(started.elapsed() < SETTLE),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_subresource_is_isolated() {
    let server = ApiServer::start().await;
    server.pause_deployments(true);
    server.create(deployment("shop", 1, "shop:1"));
    let http = Http::new(&server);
    let path = format!("{DEPLOYMENTS}/shop");
    let (status, object) = http
        .send(
            "PATCH",
            &path,
            Some("application/merge-patch+json"),
            Some(json!({"spec": {"replicas": 2}, "status": {"replicas": 42}}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{object}");
    assert_eq!(object["spec"]["replicas"], 2);
    assert!(
        object["status"].get("replicas").is_none(),
        "status written through the main resource: {object}"
    );
    let (status, object) = http
        .send(
            "PATCH",
            &format!("{path}/status"),
            Some("application/merge-patch+json"),
            Some(json!({"spec": {"replicas": 9}, "status": {"replicas": 42}}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{object}");
    assert_eq!(object["spec"]["replicas"], 2, "spec written through /status");
    assert_eq!(object["status"]["replicas"], 42);
    assert_eq!(
        object["metadata"]["generation"], 2,
        "a status write must not bump the generation"
    );

    let (status, scale) = http.get(&format!("{path}/scale")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(2))
    );
    let (status, scale) = http
        .send(
            "PATCH",
            &format!("{path}/scale"),
            Some("application/merge-patch+json"),
            Some(json!({"spec": {"replicas": 0}}).to_string()),
        )
        .await;
    assert_eq!((status, scale["spec"]["replicas"].as_i64()), (200, Some(0)));
    assert_eq!(
        server.get("apps/v1", "Deployment", "default", "shop").unwrap()["spec"]["replicas"],
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn label_selector_forms() {
    let server = ApiServer::start().await;
    for (name, labels) in [
        ("a", json!({"app": "shop", "slot": "blue"})),
        ("b", json!({"app": "shop", "slot": "green"})),
        ("c", json!({"app": "other"})),
    ] {
        server.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": labels}}));
    }
    let http = Http::new(&server);
    for (selector, expected) in [
        ("app=shop", vec!["a", "b"]),
        ("app==shop", vec!["a", "b"]),
        ("app!=shop", vec!["c"]),
        ("slot", vec!["a", "b"]),
        ("!slot", vec!["c"]),
        ("slot in (blue,red)", vec!["a"]),
        ("slot notin (blue)", vec!["b", "c"]),
        ("app=shop,slot!=blue", vec!["b"]),
        ("", vec!["a", "b", "c"]),
    ] {
        let query: String = selector
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, list) = http
            .get(&format!(
                "/api/v1/namespaces/default/configmaps?labelSelector={query}"
            ))
            .await;
        assert_eq!(status, 200, "{selector}: {list}");
        assert_eq!(list["kind"], "ConfigMapList");
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "selector {selector:?}");
    }
    let (status, list) = http
        .get("/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Db")
        .await;
    assert_eq!((status, list["items"].as_array().map(Vec::len)), (200, Some(1)));
    for bad in ["app%3D%3D%3Dx", "slot%20in%20blue", "%21", "a%20b%20c"] {
        let (status, error) = http
            .get(&format!(
                "/api/v1/namespaces/default/configmaps?labelSelector={bad}"
            ))
            .await;
        assert_eq!(
            (status, error["reason"].as_str()),
            (400, Some("BadRequest")),
            "{bad}: {error}"
        );
    }
    let (status, _) = http
        .get("/api/v1/namespaces/default/configmaps?fieldSelector=spec.nope%3Dx")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bodies_get_400_and_the_server_keeps_serving() {
    let server = ApiServer::start().await;
    let http = Http::new(&server);
    let cases: Vec<(&str, String, Option<&str>, String)> = vec![
        (
            "POST",
            DEPLOYMENTS.into(),
            Some("application/json"),
            "{not json".into(),
        ),
        (
            "POST",
            DEPLOYMENTS.into(),
            Some("application/json"),
            "[1,2,3]".into(),
        ),
        ("POST", DEPLOYMENTS.into(), Some("application/json"), "".into()),
        (
            "POST",
            DEPLOYMENTS.into(),
            Some("application/json"),
            json!({"apiVersion": "v1", "kind": "Pod"}).to_string(),
        ),
        (
            "PATCH",
            format!("{DEPLOYMENTS}/x?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            "a: [unclosed".into(),
        ),
        (
            "PATCH",
            format!("{DEPLOYMENTS}/x?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            "- just\n- a list\n".into(),
        ),
        (
            "PATCH",
            format!("{DEPLOYMENTS}/x"),
            Some("application/apply-patch+yaml"),
            deployment("x", 1, "i").to_string(),
        ),
        (
            "PATCH",
            format!("{DEPLOYMENTS}/x?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            "\u{0}\u{1}\u{ff}".into(),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=abc".into(),
            None,
            String::new(),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=-1".into(),
            None,
            String::new(),
        ),
    ];
    for (method, path, content_type, body) in cases {
        let body = (!body.is_empty() || method != "GET").then_some(body);
        let (status, error) = http.send(method, &path, content_type, body.clone()).await;
        assert_eq!(status, 400, "{method} {path} {body:?}: {error}");
        assert_eq!(
            (error["kind"].as_str(), error["status"].as_str()),
            (Some("Status"), Some("Failure")),
            "{error}"
        );
    }
    // YAML is fine for apply, and a keyed list without its key is refused, not a crash.
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: y\nspec:\n  template:\n    spec:\n      containers:\n      - image: nameless\n";
    let (status, error) = http
        .send(
            "PATCH",
            &format!("{DEPLOYMENTS}/y?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            Some(yaml.into()),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    let (status, _) = http
        .send(
            "PATCH",
            &format!("{DEPLOYMENTS}/y?fieldManager=m"),
            Some("application/apply-patch+yaml"),
            Some(yaml.replace("- image", "- name: web\n        image")),
        )
        .await;
    assert_eq!(status, 201);
    // Too large, unknown paths and methods.
    let (status, _) = http
        .send(
            "POST",
            DEPLOYMENTS,
            Some("application/json"),
            Some(" ".repeat(4 * 1024 * 1024)),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(http.get("/apis/apps/v1/namespaces/default/widgets").await.0, 404);
    assert_eq!(http.get("/nothing/here").await.0, 404);
    assert_eq!(
        http.send(
            "POST",
            &format!("{DEPLOYMENTS}/y"),
            Some("application/json"),
            Some("{}".into())
        )
        .await
        .0,
        405
    );
    // Still serving.
    let (status, list) = http.get(DEPLOYMENTS).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_status_follows_pod_behaviours() {
    let server = ApiServer::start().await;
    server.set_pod_behaviour("slow:1", PodBehaviour::ReadyAfter(Duration::from_millis(600)));
    server.set_pod_behaviour("pull:1", PodBehaviour::ImagePullError);
    server.create(deployment("slow", 2, "slow:1"));
    server.create(deployment("pull", 1, "pull:1"));
    let status = |name: &str| server.get("apps/v1", "Deployment", "default", name).unwrap()["status"].clone();
    let condition = |status: &Value, kind: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
            .unwrap_or(Value::Null)
    };
    wait_until("slow's pods to be created but not ready", SETTLE, || async {
        let s = status("slow");
        s["updatedReplicas"] == 2 && s.get("readyReplicas").is_none()
    })
    .await;
    let s = status("slow");
    assert_eq!(s["unavailableReplicas"], 2, "{s}");
    assert_eq!(condition(&s, "Available")["reason"], "MinimumReplicasUnavailable");
    assert_eq!(condition(&s, "Progressing")["reason"], "ReplicaSetUpdated");
    wait_until("slow to become available", SETTLE, || async {
        status("slow")["availableReplicas"] == 2
    })
    .await;
    let s = status("slow");
    assert!(
        s.get("unavailableReplicas").is_none(),
        "zero counts must be absent: {s}"
    );
    assert_eq!(condition(&s, "Progressing")["reason"], "NewReplicaSetAvailable");
    assert_eq!(s["observedGeneration"], 1);

    wait_until("ImagePullBackOff", SETTLE, || async {
        server
            .list("v1", "Pod", "default")
            .iter()
            .any(|p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff")
    })
    .await;
    let pod = server
        .list("v1", "Pod", "default")
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app"] == "pull")
        .unwrap();
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("pull:1")
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let hash = pod["metadata"]["labels"]["pod-template-hash"].as_str().unwrap();
    assert!(pod["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with(&format!("pull-{hash}-")));

    // A new template replaces the pods; a short progress deadline expires.
    server.pause_deployments(true);
    server.merge_patch_as(
        "cutover",
        "apps/v1",
        "Deployment",
        "default",
        "pull",
        json!({"spec": {"progressDeadlineSeconds": 1, "template": {"metadata": {"labels": {"v": "2"}}}}}),
    );
    tokio::task::yield_now().await;
    assert_eq!(
        status("pull")["observedGeneration"],
        1,
        "paused: the controller must not observe"
    );
    server.pause_deployments(false);
    wait_until("ProgressDeadlineExceeded", SETTLE, || async {
        condition(&status("pull"), "Progressing")["reason"] == "ProgressDeadlineExceeded"
    })
    .await;
    let pods = server.list("v1", "Pod", "default");
    let pull_pods: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "pull")
        .collect();
    assert_eq!(pull_pods.len(), 1);
    assert_eq!(pull_pods[0]["metadata"]["labels"]["v"], "2");
    assert_eq!(status("pull")["observedGeneration"], 2);

    // Deleting a deployment deletes its pods.
    server.delete("apps/v1", "Deployment", "default", "slow");
    wait_until("slow's pods to go", SETTLE, || async {
        server
            .list("v1", "Pod", "default")
            .iter()
            .all(|p| p["metadata"]["labels"]["app"] != "slow")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_documents() {
    let server = ApiServer::start().await;
    let http = Http::new(&server);
    let (_, groups) = http.get("/apis").await;
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for group in [
        "apps",
        "networking.k8s.io",
        "gateway.networking.k8s.io",
        "networking.istio.io",
    ] {
        assert!(names.contains(&group), "{names:?}");
    }
    let (_, apps) = http.get("/apis/apps/v1").await;
    let resources = apps["resources"].as_array().unwrap();
    let scale = resources
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(
        (scale["group"].as_str(), scale["kind"].as_str()),
        (Some("autoscaling"), Some("Scale"))
    );
    let deployments = resources.iter().find(|r| r["name"] == "deployments").unwrap();
    assert_eq!(deployments["shortNames"], json!(["deploy"]));
    let (_, core) = http.get("/api/v1").await;
    assert!(core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/log"));
    let (status, namespaces) = http.get("/api/v1/namespaces").await;
    assert_eq!(status, 200);
    assert!(namespaces["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["metadata"]["name"] == "default"));
    let (status, error) = http
        .send(
            "POST",
            "/api/v1/namespaces/missing/configmaps",
            Some("application/json"),
            Some(config_map("x", "1").to_string()),
        )
        .await;
    assert_eq!(status, 400, "namespace mismatch: {error}");
    let mut in_missing = config_map("x", "1");
    in_missing["metadata"]["namespace"] = json!("missing");
    let (status, _) = http
        .send(
            "POST",
            "/api/v1/namespaces/missing/configmaps",
            Some("application/json"),
            Some(in_missing.to_string()),
        )
        .await;
    assert_eq!(status, 404);
}
