#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whole rollouts through each router, with backends cutover does not start: the static platform
//! runs a deploy hook that (re)starts the example app on the slot's fixed ports, the way a team's
//! own deploy script would on its hosts.

use std::time::Duration;

use cutover_router::haproxy::{render_config, HaproxyConfig};
use cutover_router::nginx::NginxConfig;
use cutover_test_support::haproxy::{Haproxy, HaproxySetup};
use cutover_test_support::nginx::{Nginx, NginxOptions};
use cutover_test_support::{free_port, get_json, http_client, wait_until, ChildProcess, Load};
use serde_json::Value;

mod common;

use common::CUTOVER;
const TOKEN: &str = "routers-test-token";

/// How traffic reaches the app in a test.
enum RouterSetup {
    Builtin,
    Haproxy,
    Nginx,
}

/// The router process a test started, if the router is not cutover's own.
enum RouterProcess {
    None,
    Haproxy(Box<Haproxy>),
    Nginx { nginx: Box<Nginx>, public: String },
}

struct Cluster {
    dir: tempfile::TempDir,
    serve: Option<ChildProcess>,
    router: RouterProcess,
    admin: String,
    /// Where users' requests enter.
    public: String,
}

impl Cluster {
    async fn start(router: RouterSetup) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cutover-routers-test-")
            .tempdir()
            .unwrap();
        common::hosts::write_hooks(dir.path());
        let (blue, green) = (free_port(), free_port());
        let (router_config, router_process) = match router {
            RouterSetup::Builtin => (
                String::from(
                    r#"
listen = "127.0.0.1:0"

[app.proxy]
drain_timeout_ms = 300

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.proxy.health_check]
interval_ms = 100
"#,
                ),
                RouterProcess::None,
            ),
            RouterSetup::Haproxy => {
                let haproxy_config = |setup: &HaproxySetup| HaproxyConfig {
                    runtime_api: setup.stats_socket.display().to_string(),
                    bind: vec![format!("127.0.0.1:{}", setup.port)],
                    server_slots: 2,
                    health_check_interval_ms: 200,
                    user_key_header: Some("x-user-id".into()),
                    drain_timeout_ms: 300,
                    map_path: setup.dir.join("cutover.map"),
                    ..HaproxyConfig::default()
                };
                let haproxy = Haproxy::start(|setup| {
                    let config = haproxy_config(setup);
                    std::fs::write(&config.map_path, "").unwrap();
                    render_config("web", &config)
                })
                .await;
                let config = haproxy_config(&haproxy.setup);
                let toml = format!(
                    "\n[app.router]\nkind = \"haproxy\"\n{}",
                    toml::to_string(&config).unwrap()
                );
                (toml, RouterProcess::Haproxy(Box::new(haproxy)))
            }
            RouterSetup::Nginx => {
                let nginx = Nginx::start(NginxOptions {
                    worker_shutdown_timeout: Duration::from_secs(5),
                })
                .await;
                let port = free_port();
                let config = NginxConfig {
                    config_file: nginx.conf_d().join("cutover-{app}.conf").display().to_string(),
                    listen: vec![format!("127.0.0.1:{port}")],
                    status_listen: format!("127.0.0.1:{}", free_port()),
                    test_command: nginx.test_command(),
                    reload_command: nginx.reload_command(),
                    pid_file: nginx.pid_path().display().to_string(),
                    user_key_header: Some("x-user-id".into()),
                    access_log: nginx.logs_dir().join("cutover-{app}.log").display().to_string(),
                    drain_timeout_ms: 300,
                    client_header_timeout_ms: 1_000,
                    keepalive_close_ms: 300,
                    ..NginxConfig::default()
                };
                let toml = format!(
                    "\n[app.router]\nkind = \"nginx\"\n{}",
                    toml::to_string(&config).unwrap()
                );
                let public = format!("http://127.0.0.1:{port}");
                (
                    toml,
                    RouterProcess::Nginx {
                        nginx: Box::new(nginx),
                        public,
                    },
                )
            }
        };
        let config = format!(
            r#"
[server]
tick_ms = 50

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
platform = "static"
stop_grace_ms = 2000
{router_config}

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
steps = [{{ weight_bp = 2500, duration_ms = 600 }}, {{ weight_bp = 5000, duration_ms = 600 }}, {{ weight_bp = 10000 }}]
analysis_interval_ms = 200
failure_limit = 1
inconclusive_limit = 20
rollback_window_ms = 500
readiness_deadline_ms = 10000

[app.rollout.judge]
min_requests = 5

[app.verify]
smoke = [{{ path = "/health/ready" }}]
"#,
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("cutover.toml");
        std::fs::write(&config_path, config).unwrap();
        let (serve, ready) = common::serve(&config_path, TOKEN);
        let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
        let public = match &router_process {
            RouterProcess::None => format!(
                "http://{}",
                ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
            ),
            RouterProcess::Haproxy(h) => h.url(),
            RouterProcess::Nginx { public, .. } => public.clone(),
        };
        Cluster {
            dir,
            serve: Some(serve),
            router: router_process,
            admin,
            public,
        }
    }

    fn deploy(&self, version: &str) -> (i32, String) {
        common::cli(&self.admin, TOKEN, &["deploy", "web", version])
    }

    async fn status(&self) -> Value {
        get_json(&format!("{}/v1/apps/web/status", self.admin)).await
    }

    /// Kills the router process and starts it again (HAProxy forgets its runtime state; nginx
    /// reads what cutover wrote); `false` for the built-in proxy.
    async fn restart_router(&mut self) -> bool {
        match &mut self.router {
            RouterProcess::None => false,
            RouterProcess::Haproxy(h) => {
                h.restart().await;
                true
            }
            RouterProcess::Nginx { nginx, .. } => {
                nginx.restart().await;
                true
            }
        }
    }

    fn running_apps(&self) -> usize {
        common::hosts::pid_files(self.dir.path()).len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill();
        }
        common::hosts::kill_hook_apps(self.dir.path());
    }
}

/// v1 goes live, v2 is promoted step by step, v3 ("bad") is rolled back, all through `router`.
async fn good_and_bad_rollout(router: RouterSetup) {
    let mut cluster = Cluster::start(router).await;
    let (code, out) = cluster.deploy("v1");
    assert_eq!(code, 0, "first release: {out}");
    let load = Load::start(&cluster.public);
    let (code, out) = cluster.deploy("v2");
    assert_eq!(code, 0, "a healthy release is promoted: {out}");
    assert!(out.contains("step 1 of 3: 25.00 %"), "{out}");

    let (code, out) = cluster.deploy("v3-bad");
    assert_eq!(code, 10, "a failing release is rolled back: {out}");
    assert!(out.contains("rolled back automatically: "), "{out}");
    let (sent, failed) = load.finish().await;
    assert!(sent > 100, "the load ran: {sent}");
    assert!(
        failed * 20 < sent,
        "a bounded share of requests failed: {failed} of {sent}"
    );
    let status = cluster.status().await;
    let target = status["rollout"]["target"].as_str().unwrap().to_string();
    assert_eq!(
        status["weights"][&target], 0,
        "no traffic on the rolled-back slot: {status}"
    );
    for i in 0..20 {
        let r = http_client()
            .get(format!("{}/", cluster.public))
            .header("X-User-ID", format!("after-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-app-version"], "v2");
    }
    // A router that restarts is given the current table again by the controller's reconcile.
    if cluster.restart_router().await {
        wait_until(
            "v2 answers through the restarted router",
            Duration::from_secs(20),
            || async {
                let r = http_client()
                    .get(format!("{}/", cluster.public))
                    .header("X-User-ID", "after-restart")
                    .send()
                    .await;
                r.is_ok_and(|r| r.status().is_success() && r.headers()["x-app-version"] == "v2")
            },
        )
        .await;
    }
    // The stop hook takes the bad release off its host once the drain is over.
    wait_until(
        "the stop hook stopped the bad release",
        Duration::from_secs(20),
        || async { cluster.running_apps() == 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_hosts_behind_the_builtin_proxy() {
    good_and_bad_rollout(RouterSetup::Builtin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_hosts_behind_haproxy() {
    good_and_bad_rollout(RouterSetup::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_hosts_behind_nginx() {
    good_and_bad_rollout(RouterSetup::Nginx).await;
}
