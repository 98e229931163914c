#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A fleet on a real 3-member etcd: two `cutover serve` controllers (one elected) and three
//! `cutover proxy` processes routing one app whose hosts the static platform's hook deploys.
//! Users' requests go round the three proxies the whole time; every answer is recorded.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_test_support::etcd::EtcdCluster;
use cutover_test_support::{free_port, http_client, wait_until, ChildProcess};
use serde_json::Value;

mod common;

use common::CUTOVER;
const TOKEN: &str = "fleet-test-token-0123456789";

struct Proxy {
    process: Option<ChildProcess>,
    admin: String,
    public: String,
}

struct Fleet {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    config: std::path::PathBuf,
    controllers: Vec<(Option<ChildProcess>, String)>,
    proxies: Vec<Proxy>,
}

fn config_text(dir: &Path, endpoints: &[String], blue: u16, green: u16) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        r#"
[server]
tick_ms = 50

[admin]
listen = "127.0.0.1:0"

[store]
kind = "etcd"
endpoints = [{endpoints}]
prefix = "/fleet-test/"
leader_lease_ms = 2000
stale_after_ms = 2000

[[app]]
name = "web"
platform = "static"
listen = "127.0.0.1:0"
stop_grace_ms = 2000

[app.proxy]
drain_timeout_ms = 300

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.proxy.health_check]
interval_ms = 100

[app.hosts]
blue = ["127.0.0.1:{blue}"]
green = ["127.0.0.1:{green}"]
stop_command = "HOOK_DIR='{dir}' '{dir}/stop.sh'"
hook_timeout_ms = 30000

[app.release]
command = "'{dir}/deploy.sh'"
env = {{ HOOK_DIR = "{dir}", CUTOVER_BIN = "{CUTOVER}" }}

[app.readiness]
interval_ms = 50

[app.rollout]
steps = [{{ weight_bp = 2000, duration_ms = 4000 }}, {{ weight_bp = 5000, duration_ms = 1500 }}, {{ weight_bp = 10000 }}]
analysis_interval_ms = 500
failure_limit = 1
inconclusive_limit = 40
rollback_window_ms = 1000
readiness_deadline_ms = 15000

[app.rollout.judge]
min_requests = 5

# Identical versions on a busy test machine: only a slowdown of 50 ms counts, not scheduling noise.
[app.rollout.judge.sequential]
min_latency_increase_ms = 50
"#,
        endpoints = endpoints.join(", "),
        dir = dir.display(),
    )
}

fn start_proxy(config: &Path, id: &str) -> Proxy {
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["proxy", "--config"])
        .arg(config)
        .args(["--id", id])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN);
    let mut process = ChildProcess::spawn(&format!("cutover-proxy-{id}"), cmd);
    let ready = process.wait_for_stdout_line(Duration::from_secs(30), |line| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v["event"] == "ready")
    });
    Proxy {
        process: Some(process),
        admin: format!("http://{}", ready["bound"]["admin"].as_str().unwrap()),
        public: format!(
            "http://{}",
            ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
        ),
    }
}

impl Fleet {
    async fn start() -> Fleet {
        let etcd = EtcdCluster::start(3).await;
        let dir = tempfile::Builder::new()
            .prefix("cutover-fleet-test-")
            .tempdir()
            .unwrap();
        common::hosts::write_hooks(dir.path());
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            config_text(dir.path(), &etcd.endpoints(), free_port(), free_port()),
        )
        .unwrap();
        let mut controllers = Vec::new();
        for _ in 0..2 {
            let (serve, ready) = common::serve(&config, TOKEN);
            let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
            controllers.push((Some(serve), admin));
        }
        let proxies = (1..=3).map(|i| start_proxy(&config, &format!("p{i}"))).collect();
        Fleet {
            dir,
            etcd,
            config,
            controllers,
            proxies,
        }
    }

    /// The admin URL of the controller that leads now (waits for one).
    async fn leader(&self) -> String {
        poll_for("a controller leads", Duration::from_secs(30), || async {
            for (process, admin) in &self.controllers {
                if process.is_none() {
                    continue;
                }
                let ok = http_client()
                    .get(format!("{admin}/v1/apps/web/status"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    return Some(admin.clone());
                }
            }
            None
        })
        .await
    }

    async fn status(&self) -> Value {
        let leader = self.leader().await;
        http_client()
            .get(format!("{leader}/v1/apps/web/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn deploy(&self, version: &str) -> (i32, String) {
        let leader = self.leader().await;
        let version = version.to_string();
        tokio::task::spawn_blocking(move || common::cli(&leader, TOKEN, &["deploy", "web", &version]))
            .await
            .unwrap()
    }

    /// Waits until `version` is live with no rollout going on.
    async fn wait_live(&self, version: &str) {
        wait_until(&format!("{version} is live"), Duration::from_secs(90), || async {
            let s = self.status().await;
            let live = s["live"].as_str().unwrap_or("").to_string();
            let slot_version = s["slots"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["slot"] == live.as_str())
                .and_then(|v| v["version"].as_str())
                .map(str::to_string);
            let active = s["rollout"]["phase"]["phase"]
                .as_str()
                .is_some_and(|p| !matches!(p, "promoted" | "rolled_back" | "failed" | "aborted"));
            slot_version.as_deref() == Some(version) && !active
        })
        .await;
    }

    /// Waits until every proxy routes by the stored table's generation.
    async fn wait_proxies_caught_up(&self) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        let what = "every proxy routes by the stored table";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        poll_for(what, Duration::from_secs(31), || async {
            let status = self.status().await;
            *last.borrow_mut() = status.clone();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; the last status:\n{status:#}"
            );
            let fleet = &status["fleet"];
            let proxies = fleet["proxies"].as_array().cloned().unwrap_or_default();
            let caught_up = proxies.len() == self.proxies.len()
                && proxies
                    .iter()
                    .all(|p| p["generation"] == fleet["generation"] && p["lagging"] == false);
            caught_up.then_some(status)
        })
        .await
    }
}

/// Polls `check` every 50 ms until it gives a value; panics after `timeout`.
async fn poll_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.proxies {
            if let Some(mut process) = p.process.take() {
                process.kill();
            }
        }
        for (c, _) in &mut self.controllers {
            if let Some(mut process) = c.take() {
                process.kill();
            }
        }
        common::hosts::kill_hook_apps(self.dir.path());
    }
}

/// Versions each (user, proxy) saw, in order (a change of version is appended once).
type Seen = BTreeMap<(u32, usize), Vec<String>>;

/// Users' requests round the proxies until stopped (or 3 minutes): every answer recorded.
struct Users {
    stop: Arc<AtomicBool>,
    /// (user, proxy) -> versions seen in order (a change of version is appended once).
    seen: Arc<Mutex<Seen>>,
    failures: Arc<Mutex<Vec<String>>>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Users {
    fn start(publics: Vec<String>) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for worker in 0..3u32 {
            let (stop, seen, failures, sent, publics) = (
                Arc::clone(&stop),
                Arc::clone(&seen),
                Arc::clone(&failures),
                Arc::clone(&sent),
                publics.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = http_client();
                let limit = tokio::time::Instant::now() + Duration::from_secs(180);
                let mut i: u32 = worker;
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < limit {
                    let user = i % 300;
                    let proxy = (i / 300 + worker) as usize % publics.len();
                    i += 3;
                    let answer = client
                        .get(format!("{}/", publics[proxy]))
                        .header("X-User-ID", format!("user-{user}"))
                        .send()
                        .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            let version = r
                                .headers()
                                .get("x-app-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let mut seen = seen.lock().unwrap();
                            let list: &mut Vec<String> = seen.entry((user, proxy)).or_default();
                            if list.last() != Some(&version) {
                                list.push(version);
                            }
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("proxy {proxy}: {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("proxy {proxy}: {e}")),
                    }
                }
            }));
        }
        Users {
            stop,
            seen,
            failures,
            sent,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>, Seen) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures, seen)
    }
}

async fn get(url: &str) -> (u16, Value) {
    let r = http_client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A whole rollout through three proxies, with the leader killed mid-canary: the standby takes
/// over and finishes it; no request fails, and no user is sent back to the old version by any
/// proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_through_three_proxies_survives_kill_9_of_the_leader() {
    let mut fleet = Fleet::start().await;
    // One controller leads; the other stands by and says who leads.
    let leader = fleet.leader().await;
    let standby = fleet
        .controllers
        .iter()
        .map(|(_, a)| a.clone())
        .find(|a| *a != leader)
        .unwrap();
    let (status, body) = get(&format!("{standby}/v1/apps/web/status")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stands by"), "{body}");
    let (code, out) = fleet.deploy("v1").await;
    assert_eq!(code, 0, "{out}");
    fleet.wait_live("v1").await;
    let caught_up = fleet.wait_proxies_caught_up().await;
    assert_eq!(
        caught_up["fleet"]["proxies"].as_array().unwrap().len(),
        3,
        "{caught_up:#}"
    );

    let publics: Vec<String> = fleet.proxies.iter().map(|p| p.public.clone()).collect();
    let users = Users::start(publics);
    // v2 starts its canary; the leader dies in the middle of it.
    let leader = fleet.leader().await;
    let (code, out) = {
        let leader = leader.clone();
        tokio::task::spawn_blocking(move || {
            common::cli(&leader, TOKEN, &["deploy", "web", "v2", "--no-follow"])
        })
        .await
        .unwrap()
    };
    assert_eq!(code, 0, "{out}");
    wait_until("the canary takes traffic", Duration::from_secs(60), || async {
        let s = fleet.status().await;
        s["rollout"]["phase"]["phase"] == "canary"
            && s["weights"]["green"].as_u64().unwrap_or(0) + s["weights"]["blue"].as_u64().unwrap_or(0) > 0
            && s["weights"]
                .as_object()
                .unwrap()
                .values()
                .all(|w| w.as_u64().unwrap() < 10_000)
    })
    .await;
    let index = fleet.controllers.iter().position(|(_, a)| *a == leader).unwrap();
    fleet.controllers[index].0.take().unwrap().kill();
    // The standby takes over within a few seconds and goes on with the rollout.
    let new_leader = fleet.leader().await;
    assert_ne!(new_leader, leader);
    fleet.wait_live("v2").await;
    let status = fleet.wait_proxies_caught_up().await;
    let (sent, failures, seen) = users.finish().await;
    println!("{sent} requests through three proxies, {} failed", failures.len());
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(sent > 100, "{sent}");
    assert_sticky(&seen);
    // The dashboard's overview on the leader lists the app, though its proxies run elsewhere.
    let (code, overview) = get(&format!("{new_leader}/v1/status")).await;
    assert_eq!(code, 200, "{overview}");
    assert_eq!(overview["apps"][0]["app"], "web", "{overview:#}");
    let (code, apps) = get(&format!("{new_leader}/v1/apps")).await;
    assert_eq!(code, 200, "{apps}");
    assert_eq!(
        apps[0]["app"], "web",
        "`cutover apps` lists the fleet's app: {apps:#}"
    );
    // The new leader leads in etcd's eyes too.
    let leader_key = status["fleet"]["leader"].as_str().unwrap_or("");
    assert!(leader_key.contains(&new_leader), "{status:#}");
}

/// A user on one proxy sees one version at a time and only ever moves to a newer one (v1, v2,
/// v3 in the order deployed), never back.
fn assert_sticky(seen: &Seen) {
    for ((user, proxy), versions) in seen {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "user {user} on proxy {proxy} saw {versions:?}"
        );
    }
}

/// etcd failures do not take the traffic down: one member killed (quorum stays), then the whole
/// cluster restarted; the proxies keep serving the last table and catch up. A proxy cut off from
/// etcd says so on its health endpoint and shows in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_through_etcd_failures_and_a_partitioned_one_shows() {
    let mut fleet = Fleet::start().await;
    let (code, out) = fleet.deploy("v1").await;
    assert_eq!(code, 0, "{out}");
    fleet.wait_live("v1").await;
    fleet.wait_proxies_caught_up().await;
    let publics: Vec<String> = fleet.proxies.iter().map(|p| p.public.clone()).collect();
    let users = Users::start(publics);

    // One member down: a quorum remains, and a rollout goes through.
    fleet.etcd.kill(0);
    let (code, out) = fleet.deploy("v2").await;
    assert_eq!(code, 0, "{out}");
    fleet.wait_live("v2").await;
    fleet.wait_proxies_caught_up().await;
    fleet.etcd.restart(0).await;

    // The whole cluster restarts: the proxies serve the last table meanwhile, then confirm it,
    // and follow the next change.
    fleet.etcd.restart_all().await;
    fleet.wait_proxies_caught_up().await;
    let (code, out) = fleet.deploy("v3").await;
    assert_eq!(code, 0, "{out}");
    fleet.wait_live("v3").await;
    let status = fleet.wait_proxies_caught_up().await;
    for p in &fleet.proxies {
        wait_until(
            "the proxy confirms its table again",
            Duration::from_secs(30),
            || async { get(&format!("{}/healthz", p.admin)).await.0 == 200 },
        )
        .await;
    }
    assert_eq!(status["fleet"]["proxies"].as_array().unwrap().len(), 3);

    // A proxy cut off from etcd: its only endpoint is a relay to a member, which the test cuts
    // as a network partition would.
    let member = fleet.etcd.endpoints()[1]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = Relay::start(member).await;
    let cut_config = fleet.dir.path().join("cut.toml");
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let start = text.find("endpoints = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let cut_text = format!(
        "{}endpoints = [\"http://{}\"]{}",
        &text[..start],
        relay.addr,
        &text[end..]
    );
    std::fs::write(&cut_config, cut_text).unwrap();
    let cut = start_proxy(&cut_config, "p-cut");
    wait_until(
        "the cut-off proxy registers while it can",
        Duration::from_secs(30),
        || async {
            let s = fleet.status().await;
            s["fleet"]["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "p-cut" && p["lagging"] == false)
        },
    )
    .await;
    assert_eq!(get(&format!("{}/healthz", cut.admin)).await.0, 200);
    relay.cut();
    wait_until(
        "the cut-off proxy says it is stale",
        Duration::from_secs(30),
        || async {
            let (code, body) = get(&format!("{}/healthz", cut.admin)).await;
            code == 503 && body["stale"] == true
        },
    )
    .await;
    let metrics = http_client()
        .get(format!("{}/metrics", cut.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cutover_fleet_table_stale 1"), "{metrics}");
    poll_for(
        "status shows the cut-off proxy",
        Duration::from_secs(30),
        || async {
            let shown = fleet.status().await;
            shown["fleet"]["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    p["id"] == "p-cut"
                        && p["lagging"] == true
                        && p["problem"].as_str().unwrap_or("").contains("no contact")
                })
                .then_some(())
        },
    )
    .await;
    // `cutover status` says so, for people.
    let leader = fleet.leader().await;
    let (code, text) = tokio::task::spawn_blocking(move || common::cli(&leader, TOKEN, &["status", "web"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("fleet: leader"), "{text}");
    let cut_line = text.lines().find(|l| l.contains("p-cut")).unwrap_or_default();
    assert!(cut_line.contains("no contact with etcd"), "{text}");
    // It still serves the last table it had.
    let answer = http_client()
        .get(format!("{}/", cut.public))
        .header("X-User-ID", "user-1")
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    assert_eq!(answer.headers()["x-app-version"], "v3");
    fleet.proxies.push(cut);
    let (sent, failures, seen) = users.finish().await;
    assert_sticky(&seen);
    println!(
        "{sent} requests through etcd's failures, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

/// The judge sees the whole fleet: a proxy that stops answering (SIGSTOP: alive, registered,
/// silent) makes every window inconclusive rather than a pass on the other proxies' traffic,
/// and the rollout goes on once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_report_makes_the_window_inconclusive() {
    let fleet = Fleet::start().await;
    let (code, out) = fleet.deploy("v1").await;
    assert_eq!(code, 0, "{out}");
    fleet.wait_live("v1").await;
    fleet.wait_proxies_caught_up().await;
    // Users reach the two proxies that answer; the third is stopped.
    let publics: Vec<String> = fleet.proxies[..2].iter().map(|p| p.public.clone()).collect();
    let users = Users::start(publics);
    let silent = fleet.proxies[2].process.as_ref().unwrap().pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &silent])
        .status()
        .unwrap()
        .success());
    let leader = fleet.leader().await;
    let (code, out) = tokio::task::spawn_blocking(move || {
        common::cli(&leader, TOKEN, &["deploy", "web", "v2", "--no-follow"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    // While it stays registered (its lease outlives a short silence), no window passes.
    let (said, status) = poll_for(
        "a window is inconclusive for the silent proxy",
        Duration::from_secs(60),
        || async {
            let s = fleet.status().await;
            let said = s["recent_decisions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["message"].as_str())
                .find(|m| m.contains("proxy p3 did not report"))
                .map(str::to_string);
            said.map(|m| (m, s))
        },
    )
    .await;
    println!("{said}");
    assert_eq!(status["rollout"]["phase"]["phase"], "canary", "{status:#}");
    assert!(
        status["rollout"]["phase"]["step"].as_u64() == Some(0),
        "no step passed on part of the traffic: {status:#}"
    );
    assert!(Command::new("kill")
        .args(["-CONT", &silent])
        .status()
        .unwrap()
        .success());
    fleet.wait_live("v2").await;
    let (_, failures, seen) = users.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_sticky(&seen);
}

/// A TCP relay to one etcd member that the test can cut: connections in flight are dropped and
/// new ones refused, as a network partition would look to the proxy behind it.
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::Relaxed) {
                    drop(inbound);
                    continue;
                }
                let flag = Arc::clone(&flag);
                open.push(tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !flag.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                }));
            }
        });
        Relay { addr, cut, task }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
