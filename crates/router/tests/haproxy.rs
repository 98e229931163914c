#![allow(clippy::unwrap_used, clippy::expect_used)]

//! HAProxy (Debian's 2.6, a real process) driven through its runtime API passes the router
//! conformance suite, survives reloads, counts per slot and rejects bad configuration.

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
use cutover_router::haproxy::{render_config, HaproxyConfig, HaproxyRouter};
use cutover_router::{Router, RouterError, SlotCounters};
use cutover_test_support::haproxy::{Haproxy, HaproxySetup};
use cutover_test_support::{http_client, wait_until};

const APP: &str = "conformance";

/// The router configuration for the HAProxy being set up, talking over the unix socket.
fn config(setup: &HaproxySetup) -> HaproxyConfig {
    HaproxyConfig {
        runtime_api: setup.stats_socket.display().to_string(),
        bind: vec![format!("127.0.0.1:{}", setup.port)],
        server_slots: 4,
        health_check_interval_ms: 1_000,
        user_key_header: Some(USER_KEY_HEADER.to_string()),
        drain_timeout_ms: u64::try_from(MIN_DRAIN_TIMEOUT.as_millis()).unwrap(),
        map_path: setup.dir.join("cutover.map"),
        ..HaproxyConfig::default()
    }
}

/// Starts HAProxy with the fragment cutover renders for [`APP`] (and its empty map file).
async fn start_haproxy() -> (Haproxy, HaproxyConfig) {
    let haproxy = Haproxy::start(|setup| {
        let config = config(setup);
        std::fs::write(&config.map_path, "").unwrap();
        render_config(APP, &config)
    })
    .await;
    let config = config(&haproxy.setup);
    (haproxy, config)
}

struct HaproxyRig {
    router: Arc<HaproxyRouter>,
    haproxy: tokio::sync::Mutex<Haproxy>,
    entry: String,
    backends: Backends,
}

impl HaproxyRig {
    async fn new() -> HaproxyRig {
        let backends = Backends::spawn(2);
        let (haproxy, config) = start_haproxy().await;
        HaproxyRig {
            router: Arc::new(HaproxyRouter::new(APP, config).unwrap()),
            entry: haproxy.url(),
            haproxy: tokio::sync::Mutex::new(haproxy),
            backends,
        }
    }

    fn table(&self, live: Slot, weight: u16) -> RouteTable {
        conformance::table(self, live, weight)
    }
}

#[async_trait]
impl Rig for HaproxyRig {
    fn router(&self) -> Arc<dyn Router> {
        Arc::clone(&self.router) as Arc<dyn Router>
    }

    fn entry(&self) -> String {
        self.entry.clone()
    }

    fn backends(&self, slot: Slot) -> Vec<SocketAddr> {
        self.backends.addrs(slot)
    }

    async fn restart_router(&self) -> bool {
        self.haproxy.lock().await.restart().await;
        true
    }
}

/// Status, `x-app-version`, `x-app-instance` and `set-cookie` of `GET path` through HAProxy.
async fn get(
    rig: &HaproxyRig,
    path: &str,
    key: Option<&str>,
    cookie: Option<&str>,
) -> (u16, String, String, Option<String>) {
    let mut request = http_client()
        .get(format!("{}{path}", rig.entry))
        .timeout(Duration::from_secs(10));
    if let Some(key) = key {
        request = request.header(USER_KEY_HEADER, key);
    }
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let out = (
        response.status().as_u16(),
        header("x-app-version").unwrap_or_default(),
        header("x-app-instance").unwrap_or_default(),
        header("set-cookie"),
    );
    response.bytes().await.unwrap();
    out
}

async fn counters(router: &HaproxyRouter) -> [SlotCounters; 2] {
    router.counters().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_passes_the_router_conformance_suite() {
    let rig = HaproxyRig::new().await;
    conformance::run_all(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_loses_runtime_state_and_reconcile_restores_it() {
    let rig = HaproxyRig::new().await;
    let router = &rig.router;
    let wanted = rig.table(Slot::Green, 3000);
    // Another app's line in the shared map file survives cutover saving its own.
    let map_path = router.config().map_path.clone();
    std::fs::write(&map_path, "# shared\nother.route green:0:blue\n").unwrap();
    router.apply(&wanted).await.unwrap();
    let saved = std::fs::read_to_string(&map_path).unwrap();
    assert!(
        saved.starts_with("# shared\nother.route green:0:blue\n")
            && saved.contains("\nconformance.route green:3000:blue\n"),
        "{saved}"
    );
    assert!(
        !router.reconcile(&wanted).await.unwrap(),
        "nothing to reconcile yet"
    );
    let before = counters(router).await;
    let old_pid = rig.haproxy.lock().await.pid();

    rig.haproxy.lock().await.reload().await;
    assert_ne!(rig.haproxy.lock().await.pid(), old_pid);
    // The new process starts from the files: the route cutover saved in the map file, but every
    // server back in maintenance (no server state file was dumped).
    let mut lost = wanted.clone();
    lost.blue.backends.clear();
    lost.green.backends.clear();
    assert_eq!(router.applied().await.unwrap(), lost);
    assert_eq!(
        get(&rig, "/", Some("reload-0"), None).await.0,
        503,
        "no server is in a pool before reconcile"
    );
    let after = counters(router).await;
    for slot in Slot::ALL {
        assert_ne!(
            before[slot.index()].series,
            after[slot.index()].series,
            "the series of {slot} must change on a reload"
        );
    }
    assert!(
        router.reconcile(&wanted).await.unwrap(),
        "reconcile must re-apply"
    );
    assert_eq!(router.applied().await.unwrap(), wanted);
    assert!(!router.reconcile(&wanted).await.unwrap());
    // Traffic follows the table again: at 30 % on blue, both slots serve.
    let mut seen = [0u32; 2];
    for i in 0..60 {
        let (status, version, _, _) = get(&rig, "/", Some(&format!("reload-{i}")), None).await;
        assert_eq!(status, 200);
        seen[usize::from(version == GREEN_VERSION)] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > seen[0],
        "blue/green after reconcile: {seen:?}"
    );
    rig.haproxy.lock().await.wait_retired().await;

    // A hard restart (kill and start) loses the state the same way.
    rig.haproxy.lock().await.restart().await;
    assert_eq!(router.applied().await.unwrap(), lost);
    assert!(router.reconcile(&wanted).await.unwrap());
    assert_eq!(router.applied().await.unwrap(), wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_server_state_file_keeps_routing_without_a_failed_request() {
    let rig = Arc::new(HaproxyRig::new().await);
    let router = &rig.router;
    let wanted = rig.table(Slot::Green, 3000);
    router.apply(&wanted).await.unwrap();
    let before = counters(router).await;
    // Load on fresh connections while HAProxy reloads.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (rig, stop) = (Arc::clone(&rig), Arc::clone(&stop));
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let r = client
                    .get(format!("{}/", rig.entry))
                    .header(USER_KEY_HEADER, format!("during-{i}"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("body: {e}")),
                    },
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    wait_until("some load before the reload", Duration::from_secs(10), || async {
        counters(router).await[0].requests + counters(router).await[1].requests
            > before[0].requests + before[1].requests + 10
    })
    .await;
    rig.haproxy.lock().await.reload_keeping_server_state().await;
    // Servers come back from the state file, the route from the map file: nothing to do.
    assert_eq!(router.applied().await.unwrap(), wanted);
    assert!(!router.reconcile(&wanted).await.unwrap());
    let after = counters(router).await;
    assert_ne!(
        after[0].series, before[0].series,
        "counters restarted with the new process"
    );
    wait_until("some load after the reload", Duration::from_secs(10), || async {
        counters(router).await[0].requests + counters(router).await[1].requests > 10
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the reload: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    rig.haproxy.lock().await.wait_retired().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_requests_errors_and_in_flight() {
    let rig = HaproxyRig::new().await;
    let router = &rig.router;
    router.apply(&rig.table(Slot::Blue, 0)).await.unwrap();
    let start = counters(router).await;
    assert_eq!(start[0].version, BLUE_VERSION);
    assert_eq!(start[1].version, GREEN_VERSION);
    assert_eq!(start[0].latency_buckets, None);
    for i in 0..20 {
        assert_eq!(get(&rig, "/", Some(&format!("c-{i}")), None).await.0, 200);
    }
    for i in 0..5 {
        assert_eq!(
            get(&rig, "/status/500", Some(&format!("e-{i}")), None).await.0,
            500
        );
    }
    let now = counters(router).await;
    let (blue, green) = (&now[0], &now[1]);
    assert_eq!(blue.series, start[0].series);
    assert_eq!(blue.requests - start[0].requests, 25, "{blue:?}");
    assert_eq!(blue.server_errors - start[0].server_errors, 5, "{blue:?}");
    assert_eq!(green.requests, start[1].requests, "{green:?}");
    assert_eq!(green.server_errors, start[1].server_errors);

    // A slow request is in flight until it ends.
    let slow = {
        let url = format!("{}/slow?ms=1500", rig.entry);
        tokio::spawn(async move {
            let r = http_client()
                .get(url)
                .header(USER_KEY_HEADER, "slow")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    wait_until(
        "the slow request to be in flight on blue",
        Duration::from_secs(10),
        || async { counters(router).await[0].in_flight == Some(1) },
    )
    .await;
    assert_eq!(slow.await.unwrap(), (200, "slow done".to_string()));
    wait_until(
        "blue to have nothing in flight",
        Duration::from_secs(10),
        || async { counters(router).await[0].in_flight == Some(0) },
    )
    .await;

    // A new version in a slot starts a new series.
    let mut next = rig.table(Slot::Blue, 0);
    next.green.version = "conformance-green-2".into();
    router.apply(&next).await.unwrap();
    let after = counters(router).await;
    assert_eq!(after[1].version, "conformance-green-2");
    assert_ne!(after[1].series, start[1].series);
    assert_eq!(after[0].series, start[0].series);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_removed_from_a_pool_finish_their_requests() {
    let rig = HaproxyRig::new().await;
    let router = &rig.router;
    router.apply(&rig.table(Slot::Blue, 0)).await.unwrap();
    let [b0, b1] = [rig.backends.blue[0].addr, rig.backends.blue[1].addr];
    let slow_on = |addr: SocketAddr| async move {
        let text = http_client()
            .get(format!("http://{addr}/control/requests"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["slow_in_progress"].as_u64().unwrap()
    };
    // Round robin: of a few slow requests, one reaches b1.
    let mut slow = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_on(b1).await == 0 {
        assert!(
            slow.len() < 6 && Instant::now() < deadline,
            "no slow request reached {b1}"
        );
        let url = format!("{}/slow?ms=2000", rig.entry);
        slow.push(tokio::spawn(async move {
            let r = http_client()
                .get(url)
                .header(USER_KEY_HEADER, "slow")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
        let sent = Instant::now();
        while slow_on(b0).await + slow_on(b1).await < slow.len() as u64
            && sent.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut smaller = rig.table(Slot::Blue, 0);
    smaller.blue.backends = vec![b0];
    router.apply(&smaller).await.unwrap();
    assert_eq!(router.applied().await.unwrap(), smaller);
    for i in 0..10 {
        let (status, _, instance, _) = get(&rig, "/", Some(&format!("s-{i}")), None).await;
        assert_eq!(status, 200);
        assert_eq!(
            instance,
            b0.port().to_string(),
            "a new request reached a removed server"
        );
    }
    for task in slow {
        assert_eq!(task.await.unwrap(), (200, "slow done".to_string()));
    }
    let state = rig
        .haproxy
        .lock()
        .await
        .command(&format!("show servers state cutover_{APP}_blue"))
        .await;
    let b1_line = state
        .lines()
        .find(|l| l.split_whitespace().nth(18) == Some(&b1.port().to_string()))
        .unwrap_or_else(|| panic!("no server with port {} in {state}", b1.port()));
    let admin: u32 = b1_line.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert_ne!(
        admin & 0x01,
        0,
        "the removed server is not in maintenance: {b1_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_router_before_the_first_deploy() {
    let rig = HaproxyRig::new().await;
    let router = &rig.router;
    assert_eq!(router.applied().await.unwrap(), RouteTable::empty(Slot::Blue));
    let (status, _, _, _) = get(&rig, "/", Some("early"), None).await;
    assert_eq!(status, 503, "no backend anywhere yet");
    router.apply(&RouteTable::empty(Slot::Blue)).await.unwrap();
    // The first release in blue, green still idle.
    let mut first = RouteTable::empty(Slot::Blue);
    first.blue = Pool {
        version: BLUE_VERSION.into(),
        backends: rig.backends(Slot::Blue),
    };
    router.apply(&first).await.unwrap();
    assert_eq!(router.applied().await.unwrap(), first);
    assert_eq!(get(&rig, "/", Some("early"), None).await.0, 200);
    let c = counters(router).await;
    assert_eq!((c[1].version.as_str(), c[1].requests), ("", 0));
    // A pool larger than the backend's servers is refused before anything changes.
    let mut too_many = first.clone();
    too_many.green.backends = (1..=5).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    let err = router.apply(&too_many).await.unwrap_err();
    assert!(matches!(err, RouterError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("server_slots"), "{err}");
    assert_eq!(router.applied().await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_key_get_a_bucket_cookie_and_stay() {
    let rig = HaproxyRig::new().await;
    rig.router.apply(&rig.table(Slot::Blue, 5000)).await.unwrap();
    let mut seen = [0u32; 2];
    for _ in 0..12 {
        let (status, version, _, set_cookie) = get(&rig, "/", None, None).await;
        assert_eq!(status, 200);
        let set_cookie = set_cookie.expect("a client without a key gets a bucket cookie");
        assert!(
            set_cookie.contains("Path=/; Max-Age=31536000; HttpOnly"),
            "{set_cookie}"
        );
        let pair = set_cookie.split(';').next().unwrap().to_string();
        assert!(pair.starts_with("cutover_bucket="), "{set_cookie}");
        seen[usize::from(version == GREEN_VERSION)] += 1;
        for _ in 0..5 {
            let (_, again, _, cookie) = get(&rig, "/", None, Some(&pair)).await;
            assert_eq!(again, version, "a client with {pair} changed slot");
            assert_eq!(cookie, None, "a client with a bucket cookie gets no new one");
        }
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "12 new clients at 50 % all on one slot: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_a_tcp_runtime_api_and_reports_missing_configuration() {
    let rig = HaproxyRig::new().await;
    let tcp = {
        let haproxy = rig.haproxy.lock().await;
        HaproxyConfig {
            runtime_api: haproxy.setup.stats_tcp.to_string(),
            ..config(&haproxy.setup)
        }
    };
    let router = HaproxyRouter::new(APP, tcp.clone()).unwrap();
    assert!(router.describe().contains(&tcp.runtime_api));
    let t = rig.table(Slot::Green, 1234);
    router.apply(&t).await.unwrap();
    assert_eq!(router.applied().await.unwrap(), t);
    assert_eq!(
        rig.router.applied().await.unwrap(),
        t,
        "both sockets see one HAProxy"
    );
    assert_eq!(counters(&router).await[1].version, GREEN_VERSION);

    // HAProxy without this app's configuration.
    let other = HaproxyRouter::new("other", tcp.clone()).unwrap();
    let err = other.apply(&t).await.unwrap_err().to_string();
    assert!(
        err.contains("no backend cutover_other_blue") && err.contains("reload HAProxy"),
        "{err}"
    );
    // Nothing listening.
    let dead = HaproxyRouter::new(
        APP,
        HaproxyConfig {
            runtime_api: "/nonexistent/haproxy.sock".into(),
            runtime_api_timeout_ms: 500,
            ..tcp
        },
    )
    .unwrap();
    let err = dead.applied().await.unwrap_err();
    assert!(matches!(err, RouterError::Unavailable { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("/nonexistent/haproxy.sock") && err.contains("level admin"),
        "{err}"
    );
}

#[test]
fn bad_config_values_are_rejected_with_field_names() {
    let bad = HaproxyConfig {
        runtime_api: "admin.sock".into(),
        runtime_api_timeout_ms: 0,
        bind: vec!["*:80".into(), "   ".into()],
        server_slots: 0,
        health_check_path: "health".into(),
        user_key_header: Some("x user".into()),
        user_key_cookie: Some("a=b".into()),
        bucket_cookie: String::new(),
        drain_timeout_ms: 0,
        fragment_path: Some("conf.d/cutover.cfg".into()),
        map_path: "/etc/haproxy/my map".into(),
        ..HaproxyConfig::default()
    };
    let errors = bad.validate("apps.shop.router.");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for field in [
        "runtime_api",
        "runtime_api_timeout_ms",
        "bind[1]",
        "server_slots",
        "health_check_path",
        "user_key_header",
        "user_key_cookie",
        "bucket_cookie",
        "drain_timeout_ms",
        "fragment_path",
        "map_path",
    ] {
        assert!(
            fields.contains(&format!("apps.shop.router.{field}").as_str()),
            "no error for {field} in {errors:?}"
        );
    }
    assert_eq!(errors.len(), 11, "{errors:?}");
    assert!(errors[0].message.contains("absolute path"), "{}", errors[0]);

    let empty_bind = HaproxyConfig::default().validate("");
    assert_eq!(empty_bind.len(), 1);
    assert_eq!(empty_bind[0].field, "bind");

    let err = HaproxyRouter::new("shop", bad).unwrap_err().to_string();
    assert!(
        err.contains("server_slots") && err.contains("runtime_api"),
        "{err}"
    );
    let good = HaproxyConfig {
        bind: vec!["*:80".into()],
        ..HaproxyConfig::default()
    };
    let err = HaproxyRouter::new("my shop", good).unwrap_err().to_string();
    assert!(err.contains("app name"), "{err}");

    let err = serde_json::from_str::<HaproxyConfig>(r#"{"runtime_api":"/run/h.sock","server_slot":3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("server_slot"), "{err}");
    let parsed: HaproxyConfig =
        serde_json::from_str(r#"{"bind":["*:80"],"user_key_header":"x-user-id"}"#).unwrap();
    assert_eq!(parsed.server_slots, 16);
    assert!(parsed.validate("").is_empty());
}

#[test]
fn writes_the_fragment_and_map_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = HaproxyConfig {
        bind: vec!["127.0.0.1:8080".into()],
        fragment_path: Some(dir.path().join("cutover-shop.cfg")),
        map_path: dir.path().join("cutover.map"),
        ..HaproxyConfig::default()
    };
    let router = HaproxyRouter::new("shop", config.clone()).unwrap();
    let written = std::fs::read_to_string(dir.path().join("cutover-shop.cfg")).unwrap();
    assert_eq!(written, render_config("shop", &config));
    assert_eq!(std::fs::read_to_string(&config.map_path).unwrap(), "");
    assert!(!router.write_files().unwrap(), "nothing changed");
    std::fs::write(&config.map_path, "shop.route green:0:blue\n").unwrap();
    assert!(!router.write_files().unwrap());
    assert_eq!(
        std::fs::read_to_string(&config.map_path).unwrap(),
        "shop.route green:0:blue\n",
        "an existing map file is left alone"
    );
    let unwritable = HaproxyConfig {
        fragment_path: Some("/nonexistent/dir/cutover.cfg".into()),
        ..config
    };
    let err = HaproxyRouter::new("shop", unwritable).unwrap_err().to_string();
    assert!(
        err.contains("fragment_path") && err.contains("/nonexistent/dir/cutover.cfg"),
        "{err}"
    );
}

/// The fenced code blocks of `markdown` with their info string.
fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn the_documented_example_is_what_cutover_renders_and_haproxy_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/routers/haproxy.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let blocks = code_blocks(&doc);
    let find = |info: &str, needle: &str| {
        blocks
            .iter()
            .find(|(i, text)| i == info && text.contains(needle))
            .map(|(_, text)| text.clone())
            .unwrap_or_else(|| panic!("{} has no ```{info} block with {needle:?}", path.display()))
    };
    let cutover_toml = find("toml", "[app.router]");
    let haproxy_cfg = find("haproxy", "stats socket");
    let fragment = find("haproxy", "frontend cutover_shop");

    let parsed: toml::Table = toml::from_str(&cutover_toml).unwrap();
    let app = &parsed["app"].as_array().unwrap()[0];
    let mut router = app["router"].as_table().unwrap().clone();
    assert_eq!(router.remove("kind").unwrap().as_str(), Some("haproxy"));
    let config: HaproxyConfig = router.try_into().unwrap();
    assert_eq!(config.validate("app.router."), vec![]);
    let name = app["name"].as_str().unwrap();
    let rendered = render_config(name, &config);
    assert_eq!(
        fragment, rendered,
        "the fragment in the doc differs from what cutover renders for its cutover.toml:\n{rendered}"
    );

    // HAProxy accepts haproxy.cfg followed by the fragment (with a map file that exists).
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("cutover.map");
    std::fs::write(&map, "").unwrap();
    let map_path = config.map_path.display().to_string();
    let full = format!("{haproxy_cfg}\n{fragment}").replace(&map_path, &map.display().to_string());
    cutover_test_support::haproxy::check_config_text(&full)
        .unwrap_or_else(|e| panic!("haproxy -c rejects the documented configuration: {e}\n{full}"));
}
