#![allow(clippy::unwrap_used, clippy::expect_used)]

//! nginx as a router, with a real nginx and real example apps on loopback: the conformance
//! suite, refused tables, read-back of a file nginx did not load, counters from the access log,
//! and configuration errors.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::Backends;
use cutover_core::{Pool, RouteTable, Slot};
use cutover_router::conformance::{
    self, Rig, BLUE_VERSION, GREEN_VERSION, MIN_DRAIN_TIMEOUT, USER_KEY_HEADER,
};
use cutover_router::nginx::{NginxConfig, NginxRouter};
use cutover_router::{Router, RouterError, SlotCounters};
use cutover_test_support::nginx::{Nginx, NginxOptions};
use cutover_test_support::{free_port, http_client, wait_until};

const APP: &str = "shop";

/// The router's configuration for the nginx of a test: its files in nginx's prefix, the app on
/// `port`, the status server on another free port.
fn config_for(nginx: &Nginx, port: u16) -> NginxConfig {
    NginxConfig {
        config_file: nginx.conf_d().join("cutover-{app}.conf").display().to_string(),
        listen: vec![format!("127.0.0.1:{port}")],
        status_listen: format!("127.0.0.1:{}", free_port()),
        test_command: nginx.test_command(),
        reload_command: nginx.reload_command(),
        pid_file: nginx.pid_path().display().to_string(),
        user_key_header: Some(USER_KEY_HEADER.to_string()),
        access_log: nginx.logs_dir().join("cutover-{app}.log").display().to_string(),
        drain_timeout_ms: u64::try_from(MIN_DRAIN_TIMEOUT.as_millis()).unwrap() * 2,
        // Keeps applies short: each waits this long at most for unused client connections that
        // old workers still hold (see `client_header_timeout_ms`).
        client_header_timeout_ms: 1_000,
        keepalive_close_ms: 300,
        ..NginxConfig::default()
    }
}

async fn start_nginx() -> Nginx {
    Nginx::start(NginxOptions {
        worker_shutdown_timeout: MIN_DRAIN_TIMEOUT * 2,
    })
    .await
}

struct NginxRig {
    router: Arc<NginxRouter>,
    entry: SocketAddr,
    backends: Backends,
    nginx: tokio::sync::Mutex<Nginx>,
}

impl NginxRig {
    async fn new() -> NginxRig {
        let backends = Backends::spawn(2);
        let nginx = start_nginx().await;
        let port = free_port();
        let router = NginxRouter::new(APP, config_for(&nginx, port)).unwrap();
        NginxRig {
            router: Arc::new(router),
            entry: SocketAddr::from(([127, 0, 0, 1], port)),
            backends,
            nginx: tokio::sync::Mutex::new(nginx),
        }
    }

    fn table(&self, live: Slot, weight: u16) -> RouteTable {
        conformance::table(self, live, weight)
    }

    /// The version that answered `GET path` for user `key`.
    async fn get(&self, client: &reqwest::Client, path: &str, key: &str) -> (u16, String) {
        let response = client
            .get(format!("{}{path}", self.entry()))
            .header(USER_KEY_HEADER, key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let version = response
            .headers()
            .get("x-app-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        response.bytes().await.unwrap();
        (status, version)
    }
}

#[async_trait]
impl Rig for NginxRig {
    fn router(&self) -> Arc<dyn Router> {
        Arc::clone(&self.router) as Arc<dyn Router>
    }

    fn entry(&self) -> String {
        format!("http://{}", self.entry)
    }

    fn backends(&self, slot: Slot) -> Vec<SocketAddr> {
        self.backends.addrs(slot)
    }

    async fn restart_router(&self) -> bool {
        self.nginx.lock().await.restart().await;
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_the_router_conformance_suite() {
    let rig = NginxRig::new().await;
    conformance::run_all(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_nginx_rejects_leaves_the_old_file_and_the_running_config() {
    let rig = NginxRig::new().await;
    let client = http_client();
    let good = rig.table(Slot::Blue, 0);
    rig.router.apply(&good).await.unwrap();
    let before = std::fs::read_to_string(rig.router.config_file()).unwrap();

    // A link-local IPv6 backend with a zone index: a valid table that nginx cannot parse.
    let mut bad = rig.table(Slot::Blue, 10_000);
    bad.green.backends.push("[fe80::1%2]:8080".parse().unwrap());
    assert!(bad.validate().is_ok(), "the table itself must be valid");
    let err = rig.router.apply(&bad).await.unwrap_err();
    match &err {
        RouterError::Refused { reason, .. } => {
            assert!(reason.contains("[emerg]"), "nginx's message is missing: {reason}");
            assert!(
                reason.contains("fe80::1%2"),
                "nginx's message is missing: {reason}"
            );
            assert!(
                reason.contains("test failed"),
                "nginx's message is missing: {reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = std::fs::read_to_string(rig.router.config_file()).unwrap();
    assert_eq!(after, before, "the previous file must be back");
    let dir = rig.router.config_file().parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cutover-shop.conf")
        .collect();
    assert!(
        leftovers.is_empty(),
        "files left next to the config: {leftovers:?}"
    );
    assert_eq!(rig.router.applied().await.unwrap(), good);
    for i in 0..20 {
        let (status, version) = rig.get(&client, "/", &format!("refused-{i}")).await;
        assert_eq!(
            (status, version.as_str()),
            (200, BLUE_VERSION),
            "still routed by the old table"
        );
    }
    // The next good table goes through.
    let next = rig.table(Slot::Blue, 10_000);
    rig.router.apply(&next).await.unwrap();
    assert_eq!(rig.router.applied().await.unwrap(), next);
    let (_, version) = rig.get(&client, "/", "after").await;
    assert_eq!(version, GREEN_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_nginx_did_not_load_is_not_reported_as_applied() {
    let rig = NginxRig::new().await;
    // Before anything was applied there is nothing to read back.
    assert!(rig.router.applied().await.is_err());
    let first = rig.table(Slot::Blue, 0);
    assert!(
        rig.router.reconcile(&first).await.unwrap(),
        "reconcile applies the first table"
    );
    assert!(
        !rig.router.reconcile(&first).await.unwrap(),
        "and then has nothing to do"
    );

    // Someone writes a valid file for another table without reloading nginx.
    let second = rig.table(Slot::Green, 0);
    let text = cutover_router::nginx::render_config(APP, rig.router.config(), &second);
    std::fs::write(rig.router.config_file(), text).unwrap();
    let err = rig.router.applied().await.unwrap_err();
    assert!(matches!(err, RouterError::NotApplied { .. }), "{err}");
    assert!(err.to_string().contains("did not load"), "{err}");

    // Reconciling to the second table reloads nginx with it.
    assert!(rig.router.reconcile(&second).await.unwrap());
    assert_eq!(rig.router.applied().await.unwrap(), second);
    let (_, version) = rig.get(&http_client(), "/", "someone").await;
    assert_eq!(version, GREEN_VERSION);

    // With nginx stopped, nothing reads back.
    rig.nginx.lock().await.stop();
    let err = rig.router.applied().await.unwrap_err();
    assert!(err.to_string().contains("status server"), "{err}");
    assert!(matches!(err, RouterError::Unavailable { .. }), "{err}");
}

/// Polls the counters until `done` holds for them, returning them.
async fn counters_when(
    router: &NginxRouter,
    what: &str,
    mut done: impl FnMut(&[SlotCounters; 2]) -> bool,
) -> [SlotCounters; 2] {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = router.counters().await.unwrap();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last counters: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_come_from_the_access_log() {
    let rig = NginxRig::new().await;
    let client = http_client();
    let t = rig.table(Slot::Blue, 0);
    rig.router.apply(&t).await.unwrap();
    let start = rig.router.counters().await.unwrap();
    assert_eq!(start[0].version, BLUE_VERSION);
    assert_eq!(start[1].version, GREEN_VERSION);
    assert_eq!(start[0].in_flight, None);

    for i in 0..10 {
        assert_eq!(rig.get(&client, "/", &format!("u{i}")).await.0, 200);
    }
    for i in 0..3 {
        assert_eq!(rig.get(&client, "/status/500", &format!("e{i}")).await.0, 500);
    }
    assert_eq!(rig.get(&client, "/slow?ms=300", "slow").await.0, 200);
    let after = counters_when(&rig.router, "14 blue requests", |c| {
        c[0].requests == start[0].requests + 14
    })
    .await;
    assert_eq!(after[0].series, start[0].series);
    assert_eq!(after[0].server_errors - start[0].server_errors, 3);
    assert_eq!(after[1].requests, start[1].requests, "green got nothing");
    let buckets = after[0].latency_buckets.as_ref().unwrap();
    let before_buckets = start[0].latency_buckets.as_ref().unwrap();
    let added: Vec<u64> = buckets.iter().zip(before_buckets).map(|(a, b)| a - b).collect();
    assert_eq!(added.iter().sum::<u64>(), 14);
    let slow_bucket = cutover_core::histogram::bucket_index(300_000);
    let at_least_slow: u64 = added[slow_bucket..].iter().sum();
    assert_eq!(at_least_slow, 1, "one request took 300 ms or more: {added:?}");

    // Truncation starts a new series.
    let log = nginx_log(&rig).await;
    std::fs::File::create(&log).unwrap();
    for i in 0..4 {
        rig.get(&client, "/", &format!("t{i}")).await;
    }
    let truncated = counters_when(&rig.router, "a new series with 4 requests", |c| {
        c[0].series != after[0].series && c[0].requests == 4
    })
    .await;
    assert_ne!(
        truncated[1].series, after[1].series,
        "green's counts restarted too"
    );

    // Rotation (rename, then nginx reopens its logs) starts another.
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    {
        let nginx = rig.nginx.lock().await;
        let mut reopen = nginx.reload_command();
        *reopen.last_mut().unwrap() = "reopen".to_string();
        let output = std::process::Command::new(&reopen[0])
            .args(&reopen[1..])
            .output()
            .unwrap();
        assert!(output.status.success(), "{reopen:?}: {output:?}");
    }
    wait_until("nginx to reopen its access log", Duration::from_secs(10), || {
        let log = log.clone();
        async move { log.exists() }
    })
    .await;
    for i in 0..2 {
        rig.get(&client, "/", &format!("r{i}")).await;
    }
    let rotated = counters_when(&rig.router, "a new series with 2 requests", |c| {
        c[0].series != truncated[0].series && c[0].requests == 2
    })
    .await;

    // A new release in a slot starts its counts again; the other slot keeps its series.
    let mut t2 = t.clone();
    t2.blue.version = "blue-2".to_string();
    rig.router.apply(&t2).await.unwrap();
    let released = rig.router.counters().await.unwrap();
    assert_eq!(released[0].version, "blue-2");
    assert_ne!(released[0].series, rotated[0].series);
    assert_eq!(released[0].requests, 0);
    assert_eq!(released[1].series, rotated[1].series);
    rig.get(&client, "/", "new-release").await;
    counters_when(&rig.router, "the new release's request", |c| {
        c[0].requests == 1 && c[0].series == released[0].series
    })
    .await;
}

async fn nginx_log(rig: &NginxRig) -> std::path::PathBuf {
    rig.nginx
        .lock()
        .await
        .logs_dir()
        .join(format!("cutover-{APP}.log"))
}

#[test]
fn bad_config_values_are_rejected_with_field_names() {
    let config = NginxConfig {
        listen: vec![],
        status_listen: "0.0.0.0:8719".to_string(),
        access_log: "logs/access.log".to_string(),
        reload_command: vec![],
        drain_timeout_ms: 0,
        user_key_cookie: Some("bad cookie".to_string()),
        ..NginxConfig::default()
    };
    let errors = config.validate("app.router.");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "app.router.access_log",
            "app.router.listen",
            "app.router.status_listen",
            "app.router.reload_command",
            "app.router.drain_timeout_ms",
            "app.router.user_key_cookie",
        ],
        "{errors:?}"
    );
    for e in &errors {
        assert!(e.message.len() > 15, "{e} says too little");
    }
    let err = NginxRouter::new("shop", config).unwrap_err().to_string();
    for field in [
        "access_log",
        "listen",
        "status_listen",
        "reload_command",
        "drain_timeout_ms",
    ] {
        assert!(err.contains(field), "{field} missing from {err}");
    }

    // Unknown fields are refused by name; missing ones take their defaults.
    let err = serde_json::from_str::<NginxConfig>(r#"{"lisen": ["80"]}"#).unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
    let parsed: NginxConfig = serde_json::from_str(r#"{"listen": ["8080"]}"#).unwrap();
    assert_eq!(parsed.listen, ["8080"]);
    assert_eq!(parsed.test_command, NginxConfig::default().test_command);

    // As `[app.router]` will hold it: `kind` as a serde tag over the struct's fields.
    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    enum RouterConfig {
        Nginx(NginxConfig),
    }
    let RouterConfig::Nginx(tagged) =
        serde_json::from_str(r#"{"kind": "nginx", "listen": ["8080"], "pid_file": ""}"#).unwrap();
    assert_eq!(tagged.listen, ["8080"]);
    assert_eq!(tagged.pid_file, "");
    let err = serde_json::from_str::<RouterConfig>(r#"{"kind": "nginx", "lisen": ["80"]}"#).unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_cannot_run_say_which_and_leave_the_file() {
    let nginx = start_nginx().await;
    let mut config = config_for(&nginx, free_port());
    config.test_command = vec!["/nonexistent/nginx".to_string(), "-t".to_string()];
    let router = NginxRouter::new(APP, config).unwrap();
    let t = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".to_string(),
            backends: vec!["127.0.0.1:9".parse().unwrap()],
        },
        green: Pool::default(),
    };
    let err = router.apply(&t).await.unwrap_err().to_string();
    assert!(
        err.contains("test_command") && err.contains("/nonexistent/nginx"),
        "{err}"
    );
    assert!(!router.config_file().exists(), "no file is left behind");
}

/// The answer to `GET /` with `headers`.
async fn answer(rig: &NginxRig, client: &reqwest::Client, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client
        .get(format!("{}/", rig.entry()))
        .timeout(Duration::from_secs(10));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closing_flag_makes_the_serving_revision_close_connections() {
    let rig = NginxRig::new().await;
    let client = http_client();
    rig.router.apply(&rig.table(Slot::Blue, 0)).await.unwrap();
    let text = std::fs::read_to_string(rig.router.config_file()).unwrap();
    let revision = text
        .lines()
        .find_map(|l| l.strip_prefix("# cutover-revision: "))
        .unwrap()
        .trim()
        .to_string();
    let flag = rig
        .router
        .config_file()
        .with_file_name(format!(".cutover-{APP}.conf.closing-{revision}"));

    let open = answer(&rig, &client, &[(USER_KEY_HEADER, "a")]).await;
    assert_eq!(header(&open, "connection"), "keep-alive");
    std::fs::write(&flag, b"").unwrap();
    let closing = answer(&rig, &client, &[(USER_KEY_HEADER, "a")]).await;
    assert_eq!(header(&closing, "connection"), "close");
    assert_eq!(closing.status(), 200);
    assert_eq!(header(&closing, "x-app-version"), BLUE_VERSION);
    std::fs::remove_file(&flag).unwrap();
    let open = answer(&rig, &client, &[(USER_KEY_HEADER, "a")]).await;
    assert_eq!(header(&open, "connection"), "keep-alive");

    // A flag left behind (a crash during an apply) is removed by the next apply, and none stays.
    std::fs::write(&flag, b"").unwrap();
    rig.router.apply(&rig.table(Slot::Blue, 10_000)).await.unwrap();
    let left: Vec<String> = std::fs::read_dir(rig.router.config_file().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("closing"))
        .collect();
    assert!(left.is_empty(), "flags left: {left:?}");
    let open = answer(&rig, &client, &[(USER_KEY_HEADER, "a")]).await;
    assert_eq!(header(&open, "connection"), "keep-alive");
    assert_eq!(header(&open, "x-app-version"), GREEN_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_key_get_a_bucket_cookie_and_keep_their_slot() {
    let rig = NginxRig::new().await;
    let client = http_client();
    rig.router.apply(&rig.table(Slot::Blue, 5000)).await.unwrap();
    let mut on = std::collections::HashMap::new();
    for _ in 0..40 {
        let first = answer(&rig, &client, &[]).await;
        let cookie = header(&first, "set-cookie");
        let value = cookie
            .strip_prefix("cutover_bucket=")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("no bucket cookie: {cookie:?}"))
            .to_string();
        assert!(
            cookie.contains("path=/") && cookie.contains("httponly"),
            "{cookie}"
        );
        let version = header(&first, "x-app-version");
        let pair = format!("cutover_bucket={value}");
        for _ in 0..3 {
            let again = answer(&rig, &client, &[("cookie", &pair)]).await;
            assert_eq!(header(&again, "x-app-version"), version, "a client changed slot");
            assert_eq!(
                header(&again, "set-cookie"),
                "",
                "a client with a key got a new cookie"
            );
        }
        *on.entry(version).or_insert(0) += 1;
    }
    assert_eq!(
        on.len(),
        2,
        "40 new clients at 50 % all landed on one slot: {on:?}"
    );
    // A header key wins over the cookie and gets no cookie.
    let keyed = answer(&rig, &client, &[(USER_KEY_HEADER, "someone")]).await;
    assert_eq!(header(&keyed, "set-cookie"), "");
}
