#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The flag service end to end in process: flags changed through the admin API, evaluated over
//! OFREP with an API key, bulk answers with ETags, and change notifications.

use std::net::SocketAddr;
use std::time::Duration;

use cutover_core::{Pool, RouteTable, Slot};
use cutover_server::config::{AdminConfig, AppConfig, FlagsConfig, ServerConfig};
use cutover_server::{Config, Running, StartOptions};
use cutover_test_support::http_client;
use futures_util::StreamExt;
use serde_json::{json, Value};

const TOKEN: &str = "flags-test-admin-token";
const KEY: &str = "flags-test-api-key-0123456789";
const ALICE: &str = "alice-admin-token-0123456789";

struct Server {
    running: Option<Running>,
    admin: String,
    ofrep: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            tokio::spawn(running.shutdown());
        }
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("flags.keys");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys)
            .unwrap();
        writeln!(f, "# clients\nweb {KEY}").unwrap();
    }
    let tokens = dir.path().join("admin.tokens");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tokens)
            .unwrap();
        writeln!(
            f,
            "# people and jobs\nalice {ALICE}\nci-release-job ci-release-job-token-0123456789"
        )
        .unwrap();
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let routes = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".into(),
            backends: vec!["127.0.0.1:9".parse().unwrap()],
        },
        green: Pool::default(),
    };
    let config = Config {
        server: ServerConfig {
            state_dir: dir.path().join("state"),
            ..ServerConfig::default()
        },
        admin: AdminConfig {
            listen: loopback,
            tokens_file: Some(tokens),
            ..AdminConfig::default()
        },
        apps: vec![AppConfig::static_routes("web", loopback, routes)],
        store: Default::default(),
        flags: Some(FlagsConfig {
            listen: loopback,
            api_keys_file: Some(keys),
            ..FlagsConfig::default()
        }),
    };
    let running = cutover_server::start(config, TOKEN.into(), StartOptions::new(dir.path()))
        .await
        .unwrap();
    Server {
        admin: format!("http://{}", running.bound.admin),
        ofrep: format!("http://{}", running.bound.flags.unwrap()),
        running: Some(running),
        _dir: dir,
    }
}

fn checkout(on_bp: u32) -> Value {
    json!({
        "key": "checkout",
        "type": "boolean",
        "variants": { "on": true, "off": false },
        "default_variant": "off",
        "owner": "team-payments",
        "description": "The new checkout",
        "expires": "2027-03-31",
        "split": [{ "variant": "on", "weight": on_bp }, { "variant": "off", "weight": 10_000 - on_bp }],
        "rules": [{ "when": [{ "attribute": "email", "op": "ends_with", "value": "@example.com" }], "variant": "on" }]
    })
}

impl Server {
    async fn admin_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = http_client()
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn evaluate(&self, key: &str, context: Value) -> (u16, Value) {
        let r = http_client()
            .post(format!("{}/ofrep/v1/evaluate/flags/{key}", self.ofrep))
            .header("X-API-Key", KEY)
            .json(&json!({ "context": context }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn flags_changed_by_the_admin_api_are_evaluated_over_ofrep_and_a_kill_is_pushed() {
    let server = start().await;
    let (status, body) = server
        .admin_call(
            reqwest::Method::PUT,
            "/v1/flags/checkout",
            Some(json!({ "flag": checkout(0), "reason": "ship dark" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["after"]["revision"], 1);

    let (status, r) = server.evaluate("checkout", json!({ "targetingKey": "u1" })).await;
    assert_eq!(
        (status, r["value"].clone(), r["reason"].clone()),
        (200, json!(false), json!("SPLIT"))
    );
    let (_, r) = server
        .evaluate(
            "checkout",
            json!({ "targetingKey": "u1", "email": "a@example.com" }),
        )
        .await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(true), json!("TARGETING_MATCH"))
    );
    assert_eq!(r["metadata"]["owner"], "team-payments");
    let (status, r) = server.evaluate("nope", json!({ "targetingKey": "u1" })).await;
    assert_eq!((status, r["errorCode"].clone()), (404, json!("FLAG_NOT_FOUND")));

    // No key, a wrong key: 401, nothing evaluated.
    for key in [None, Some("wrong-key-0123456789")] {
        let mut r = http_client()
            .post(format!("{}/ofrep/v1/evaluate/flags/checkout", server.ofrep))
            .json(&json!({ "context": { "targetingKey": "u1" } }));
        if let Some(key) = key {
            r = r.header("X-API-Key", key);
        }
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
    // The admin token is not an API key, and an API key is not the admin token.
    let r = http_client()
        .put(format!("{}/v1/flags/checkout", server.admin))
        .bearer_auth(KEY)
        .json(&json!({ "flag": checkout(10_000), "reason": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Bulk: an ETag, a 304 for the same user, a full answer for another.
    let bulk = |user: &'static str, etag: Option<String>| {
        let ofrep = server.ofrep.clone();
        async move {
            let mut r = http_client()
                .post(format!("{ofrep}/ofrep/v1/evaluate/flags"))
                .header("X-API-Key", KEY)
                .json(&json!({ "context": { "targetingKey": user } }));
            if let Some(etag) = etag {
                r = r.header("If-None-Match", etag);
            }
            let r = r.send().await.unwrap();
            let etag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), etag)
        }
    };
    let (status, etag) = bulk("alice", None).await;
    assert_eq!(status, 200);
    assert_eq!(bulk("alice", etag.clone()).await.0, 304);
    assert_eq!(
        bulk("bob", etag.clone()).await.0,
        200,
        "another user's ETag is not this user's"
    );

    // A client listening for changes hears the kill, and the next evaluation is DISABLED.
    let events = http_client()
        .get(format!("{}/ofrep/v1/events", server.ofrep))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut stream = events.bytes_stream();
    let (status, body) = server
        .admin_call(
            reqwest::Method::POST,
            "/v1/flags/checkout/kill",
            Some(json!({ "reason": "errors in checkout" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = String::new();
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("refetchEvaluation") {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("the kill is pushed to listening clients");
    assert!(heard.contains("refetchEvaluation"), "{heard}");
    let (_, r) = server
        .evaluate(
            "checkout",
            json!({ "targetingKey": "u1", "email": "a@example.com" }),
        )
        .await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(false), json!("DISABLED"))
    );
    assert_eq!(
        bulk("alice", etag).await.0,
        200,
        "a change invalidates every ETag"
    );

    // Every change is in the audit, with who, why, before and after.
    let (_, audit) = server
        .admin_call(reqwest::Method::GET, "/v1/flags/checkout/audit", None)
        .await;
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1]["why"], "errors in checkout");
    assert_eq!(audit[1]["before"]["enabled"], true);
    assert_eq!(audit[1]["after"]["enabled"], false);
}

#[tokio::test]
async fn invalid_flags_and_stale_writes_are_refused_and_change_nothing() {
    let server = start().await;
    let mut bad = checkout(0);
    bad["owner"] = json!("");
    bad["default_variant"] = json!("maybe");
    let (status, body) = server
        .admin_call(
            reqwest::Method::PUT,
            "/v1/flags/checkout",
            Some(json!({ "flag": bad, "reason": "x" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    let (status, _) = server
        .admin_call(
            reqwest::Method::PUT,
            "/v1/flags/checkout",
            Some(json!({ "flag": checkout(0), "reason": "" })),
        )
        .await;
    assert_eq!(status, 400, "a reason is required");
    let (status, _) = server
        .admin_call(
            reqwest::Method::PUT,
            "/v1/flags/checkout",
            Some(json!({ "flag": checkout(0), "reason": "ok" })),
        )
        .await;
    assert_eq!(status, 200);
    // A write made from revision 0 while the flag is at 1: 409, nothing changed.
    let (status, body) = server
        .admin_call(
            reqwest::Method::PUT,
            "/v1/flags/checkout",
            Some(json!({ "flag": checkout(5_000), "reason": "ramp", "expected_revision": 0 })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (_, flag) = server
        .admin_call(reqwest::Method::GET, "/v1/flags/checkout", None)
        .await;
    assert_eq!(flag["split"][0]["weight"], 0);
    // Hostile OFREP bodies: clear 400s.
    for body in [
        "",
        "{",
        "[]",
        "{\"context\": 1}",
        "{\"context\": {\"targetingKey\": []}}",
    ] {
        let r = http_client()
            .post(format!("{}/ofrep/v1/evaluate/flags/checkout", server.ofrep))
            .header("X-API-Key", KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body:?}");
        let json: Value = r.json().await.unwrap();
        assert!(json["errorCode"].is_string(), "{json}");
    }
}

#[tokio::test]
async fn the_audit_names_the_token_that_made_each_change() {
    let server = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let put = |token: &'static str, flag: Value, reason: &'static str| {
        let client = client.clone();
        let url = format!("{}/v1/flags/checkout", server.admin);
        async move {
            client
                .put(url)
                .bearer_auth(token)
                .json(&json!({ "flag": flag, "reason": reason }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put(TOKEN, checkout(100), "create").await, 200);
    assert_eq!(put(ALICE, checkout(500), "ramp by hand").await, 200);
    assert_eq!(put("not-a-token-of-this-server", checkout(900), "no").await, 401);
    let (status, audit) = server
        .admin_call(reqwest::Method::GET, "/v1/flags/checkout/audit", None)
        .await;
    assert_eq!(status, 200);
    let who: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["who"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["admin", "alice"]);
}
