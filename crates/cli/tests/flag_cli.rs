#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cutover flag apply | create | show | audit` against a real `cutover serve` with a flag
//! service: the difference printed, what it changes on the server, what it must never change
//! (a kill, a flag someone changed meanwhile, anything when the file is invalid).

#[allow(dead_code)] // not every helper is used by every test binary
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cutover_test_support::{http_client, ChildProcess};
use serde_json::{json, Value};

const TOKEN: &str = "flag-cli-test-admin-token";
const KEY: &str = "flag-cli-test-api-key-0123456789";

/// A `cutover serve` with a flag service and no app.
struct Server {
    dir: tempfile::TempDir,
    _process: ChildProcess,
    admin: String,
    ofrep: String,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("flags.keys");
        common::private_file(&keys, &format!("flag-cli-test {KEY}\n"));
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
"#,
                keys = keys.display()
            ),
        )
        .unwrap();
        let (process, ready) = common::serve(&config, TOKEN);
        let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
        let ofrep = format!("http://{}", ready["bound"]["flags"].as_str().unwrap());
        Server {
            dir,
            _process: process,
            admin,
            ofrep,
        }
    }

    /// `cutover ARGS...` against this server: exit code, stdout and stderr.
    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    /// Writes `text` as a flags file in the server's directory; returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// The flag as `cutover flag show --output json` gives it (`Null` when there is none).
    fn show(&self, key: &str) -> Value {
        let (code, out) = self.cli(&["flag", "show", key, "--output", "json"]);
        if code != 0 {
            assert!(out.contains("no flag"), "flag show {key} failed:\n{out}");
            return Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("flag show {key}: not JSON ({e}):\n{out}"))
    }

    /// Every flag key with its revision.
    fn revisions(&self) -> Vec<(String, u64)> {
        let (code, out) = self.cli(&["flag", "list", "--output", "json"]);
        assert_eq!(code, 0, "{out}");
        let list: Value = serde_json::from_str(&out).unwrap();
        list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["key"].as_str().unwrap().to_string(),
                    f["revision"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn checkout(split_on: u32, extra: &str) -> String {
    format!(
        r#"
[[flag]]
key = "checkout"
type = "boolean"
variants = {{ on = true, off = false }}
default_variant = "off"
split = [{{ variant = "on", weight = {split_on} }}, {{ variant = "off", weight = {} }}]
owner = "team-payments"
description = "The new checkout flow"
expires = 2027-03-31
{extra}
"#,
        10_000 - split_on
    )
}

const BANNER: &str = r#"
[[flag]]
key = "banner"
type = "string"
variants = { red = "red", blue = "blue" }
default_variant = "red"
owner = "web"
description = "The banner's colour"
permanent = "branding"
"#;

fn assert_lines(out: &str, wanted: &[&str]) {
    for line in wanted {
        assert!(
            out.lines().any(|l| l == *line),
            "expected the line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn apply_shows_the_difference_then_makes_the_server_match_the_file() {
    let server = Server::start();
    let file = server.file("flags.toml", &format!("{}{BANNER}", checkout(500, "")));

    // A dry run prints what would change and changes nothing.
    let (code, out) = server.cli(&["flag", "apply", &file, "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &[
            "+ checkout: create (boolean, split on 5.00 %, off 95.00 %)",
            "+ banner: create (string, everyone no rule places gets \"red\")",
            "2 created, 0 changed, 0 unchanged, 0 archived",
            "dry run: nothing was changed; run without --dry-run to apply",
        ],
    );
    assert_eq!(server.revisions(), []);

    let (code, out) = server.cli(&["flag", "apply", &file, "--reason", "flags as code"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(&out, &["2 created, 0 changed, 0 unchanged, 0 archived"]);
    assert_eq!(
        server.revisions(),
        [("banner".to_string(), 1), ("checkout".to_string(), 1)]
    );
    assert_eq!(server.show("checkout")["expires"], "2027-03-31");

    // The same file again changes nothing.
    let (code, out) = server.cli(&["flag", "apply", &file, "--reason", "again"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &[
            "= checkout: unchanged",
            "= banner: unchanged",
            "0 created, 0 changed, 2 unchanged, 0 archived",
        ],
    );
    assert_eq!(
        server.revisions(),
        [("banner".to_string(), 1), ("checkout".to_string(), 1)]
    );

    // A kill in an incident survives an apply whose file does not write `enabled`.
    let (code, out) = server.cli(&["flag", "kill", "checkout", "--reason", "errors at checkout"]);
    assert_eq!(code, 0, "{out}");
    let file = server.file(
        "flags.toml",
        &format!("{}{BANNER}", checkout(5_000, "")).replace("The new checkout flow", "The checkout flow"),
    );
    let (code, out) = server.cli(&["flag", "apply", &file, "--reason", "ramp to half"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &[
            "~ checkout: change (revision 2)",
            "    split: on 5.00 %, off 95.00 % → on 50.00 %, off 50.00 %",
            "    description: \"The new checkout flow\" → \"The checkout flow\"",
            "    stays killed: the file does not write `enabled` (write enabled = true to unkill)",
            "= banner: unchanged",
            "0 created, 1 changed, 1 unchanged, 0 archived",
        ],
    );
    let shown = server.show("checkout");
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_eq!(shown["split"][0]["weight"], 5_000, "{shown}");

    // Written down, `enabled = true` unkills; --prune archives what the file no longer has.
    let file = server.file("flags.toml", &checkout(5_000, "enabled = true"));
    let (code, out) = server.cli(&["flag", "apply", &file, "--prune", "--reason", "banner done"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &[
            "~ checkout: change (revision 3)",
            "    enabled: false → true",
            "- banner: archive (not in the file; --prune)",
            "0 created, 1 changed, 0 unchanged, 1 archived",
        ],
    );
    assert_eq!(server.show("checkout")["enabled"], true);
    assert_eq!(server.show("banner"), Value::Null);

    // Every change is in the audit, with the reason apply was given.
    let (code, out) = server.cli(&["flag", "audit", "checkout", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let audit: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let why: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["why"].as_str().unwrap())
        .collect();
    assert_eq!(
        why,
        [
            "flags as code",
            "errors at checkout",
            "ramp to half",
            "banner done"
        ]
    );
}

#[test]
fn an_invalid_file_reports_every_problem_at_its_line_and_changes_nothing() {
    let server = Server::start();
    let file = server.file(
        "flags.toml",
        r#"[[flag]]
key = "checkout"
type = "boolen"
variants = { on = true, off = false }
default_variant = "of"
ownr = "team-payments"
description = "The new checkout flow"
expires = "2027-02-30"

[[flag]]
key = "checkout"
type = "number"
variants = { few = "25" }
default_variant = "few"
split = [{ variant = "few", weight = -5 }]
owner = "web"
description = "Items per page"
permanent = "a setting"
"#,
    );
    for args in [
        vec!["flag", "apply", file.as_str(), "--reason", "x"],
        vec!["flag", "apply", file.as_str(), "--dry-run"],
    ] {
        let (code, out) = server.cli(&args);
        assert_eq!(code, 3, "{out}");
        assert_lines(
            &out,
            &[
                &format!("error: {file}: 7 problems found:"),
                &format!("  {file}:3: flag[0].type: unknown value `boolen`; did you mean `boolean`?"),
                &format!(
                    "  {file}:5: flag[0].default_variant: \"of\" is not a variant of the flag; its variants: off, on"
                ),
                &format!("  {file}:6: flag[0].ownr: unknown field; did you mean `owner`?"),
                &format!("  {file}:8: flag[0].expires: \"2027-02-30\" is not a date; write YYYY-MM-DD"),
                &format!("  {file}:11: flag[1].key: \"checkout\" is declared twice, here and in flag[0]; keep one of them"),
                &format!("  {file}:13: flag[1].variants.few: \"25\" is not a number (the flag's type)"),
                &format!(
                    "  {file}:15: flag[1].split[0].weight: must be a whole number from 0 to 4294967295, \
                     e.g. weight = 500 (basis points); found -5"
                ),
                "nothing was changed",
            ],
        );
    }
    assert_eq!(server.revisions(), []);
}

#[test]
fn create_ships_a_dark_flag_and_refuses_one_that_exists() {
    let server = Server::start();
    let create = [
        "flag",
        "create",
        "dark-mode",
        "--type",
        "boolean",
        "--owner",
        "web",
        "--description",
        "Dark mode",
        "--expires",
        "2027-01-31",
        "--reason",
        "ship dark",
    ];
    let (code, out) = server.cli(&create);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &["flag dark-mode created at revision 1: dark, every user gets \"off\" until it is ramped"],
    );

    // Everyone gets the default variant.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for user in ["alice", "bob", "user-17"] {
        let answer: Value = runtime.block_on(async {
            let response = http_client()
                .post(format!("{}/ofrep/v1/evaluate/flags/dark-mode", server.ofrep))
                .header("X-API-Key", KEY)
                .json(&json!({ "context": { "targetingKey": user } }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json().await.unwrap()
        });
        assert_eq!(
            (&answer["value"], &answer["variant"]),
            (&json!(false), &json!("off")),
            "{answer}"
        );
    }

    // A second create is refused: it would replace the flag.
    let (code, out) = server.cli(&create);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("flag dark-mode exists already; nothing was changed")
            && out.contains("cutover flag set")
            && out.contains("cutover flag apply"),
        "{out}"
    );
    assert_eq!(server.revisions(), [("dark-mode".to_string(), 1)]);

    // Bad arguments: every problem, named by its argument; nothing created.
    let (code, out) = server.cli(&[
        "flag",
        "create",
        "limit",
        "--type",
        "number",
        "--owner",
        "",
        "--description",
        "Items per page",
        "--expires",
        "soon",
        "--variant",
        "few=25",
        "--default",
        "many",
        "--reason",
        "x",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_lines(
        &out,
        &[
            "  --default: \"many\" is not a variant of the flag; its variants: few",
            "  --owner: missing: name the person or team who answers for the flag",
            "  --expires: \"soon\" is not a date; write YYYY-MM-DD",
        ],
    );
    assert_eq!(server.revisions(), [("dark-mode".to_string(), 1)]);

    // show: a summary for people, the flag as JSON for programs; audit as JSON too.
    let (code, out) = server.cli(&["flag", "show", "dark-mode"]);
    assert_eq!(code, 0, "{out}");
    assert_lines(
        &out,
        &[
            "flag dark-mode (revision 1)",
            "  type         boolean",
            "  state        on",
            "  owner        web",
            "  expires      2027-01-31",
            "  variants     off = false (default), on = true",
            "  rules        none",
            "  split        none: users no rule places get \"off\"",
        ],
    );
    assert_eq!(server.show("dark-mode")["split"], Value::Null);
    let (code, out) = server.cli(&["flag", "audit", "dark-mode", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let audit: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(audit[0]["why"], "ship dark", "{audit}");
    assert_eq!(audit[0]["after"]["revision"], 1, "{audit}");
}

/// Forwards the admin API to `target`; the first flag PUT that passes through is preceded by a
/// kill of that flag, as if an operator threw the kill switch while `apply` ran.
async fn kill_during_apply(target: String) -> (String, Arc<AtomicBool>) {
    use axum::body::{to_bytes, Body};
    use axum::extract::{Request, State};
    use axum::http::{Method, StatusCode};
    use axum::response::Response;

    #[derive(Clone)]
    struct Proxy {
        target: String,
        killed: Arc<AtomicBool>,
    }

    async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
        let method = request.method().clone();
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let headers = request.headers().clone();
        let body = to_bytes(request.into_body(), 1 << 20).await.unwrap();
        let client = http_client();
        if method == Method::PUT && !proxy.killed.swap(true, Ordering::SeqCst) {
            let kill = client
                .post(format!("{}{path}/kill", proxy.target))
                .bearer_auth(TOKEN)
                .json(&json!({ "reason": "incident while apply ran" }))
                .send()
                .await
                .unwrap();
            assert_eq!(kill.status(), 200, "{}", kill.text().await.unwrap());
        }
        let mut forwarded = client.request(
            reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
            format!("{}{path}", proxy.target),
        );
        for (name, value) in &headers {
            if name == "authorization" || name == "content-type" {
                forwarded = forwarded.header(name.as_str(), value.as_bytes());
            }
        }
        let answer = forwarded.body(body).send().await.unwrap();
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
        let bytes = answer.bytes().await.unwrap();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .unwrap()
    }

    let killed = Arc::new(AtomicBool::new(false));
    let app = axum::Router::new().fallback(forward).with_state(Proxy {
        target,
        killed: killed.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), killed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_does_not_overwrite_a_flag_changed_while_it_ran() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let file = server.file("flags.toml", &checkout(500, ""));
    let (code, out) = server.cli(&["flag", "apply", &file, "--reason", "create"]);
    assert_eq!(code, 0, "{out}");
    let file = server.file(
        "flags.toml",
        &format!("{}{BANNER}", checkout(5_000, "enabled = true")),
    );

    let (proxy, killed) = kill_during_apply(server.admin.clone()).await;
    let args: Vec<String> = ["flag", "apply", &file, "--reason", "ramp to half"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (code, out) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::cli(&proxy, TOKEN, &args)
    })
    .await
    .unwrap();
    assert!(killed.load(Ordering::SeqCst), "the proxy saw no PUT:\n{out}");
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(
            "flag checkout changed on the server since apply read it, so apply did not overwrite it; \
             none of the changes was made: run `cutover flag apply"
        ) && out.contains("was changed since it was read (expected revision 1, found 2"),
        "{out}"
    );
    // The kill stands, the ramp did not happen, and nothing after the conflict was applied.
    let shown = server.show("checkout");
    assert_eq!(
        (&shown["enabled"], &shown["split"][0]["weight"]),
        (&json!(false), &json!(500)),
        "{shown}"
    );
    assert_eq!(server.show("banner"), Value::Null);
}
