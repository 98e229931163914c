//! `cutover demo`: the data plane on show, with nothing but this binary.
//!
//! Two versions of the bundled example app run as child processes; `cutover` proxies to them and
//! ramps a population of sticky users from v1 to v2 through the admin API (0 → 5 → 25 → 50 →
//! 100 %), then rolls back to 0 in one change. At each step it reports the split it observed, how
//! many users changed version against the direction of the ramp (must be none) and how many
//! requests failed (must be none). Bounded: a few thousand requests to loopback addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cutover_core::{Pool, RouteTable, Slot};
use cutover_proxy::ProxySettings;
use cutover_server::config::{AdminConfig, AppConfig};
use cutover_server::Config;
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct DemoOptions {
    /// Sticky users (distinct `X-User-ID` values) sending requests at each step.
    #[arg(long, default_value_t = 2000)]
    users: u32,
    /// Anonymous clients, sticky through the bucket cookie cutover issues them.
    #[arg(long, default_value_t = 200)]
    anonymous: u32,
}

struct ExampleApp {
    addr: SocketAddr,
    _child: Child,
}

async fn spawn_example_app(version: &str, slot: Slot) -> Result<ExampleApp> {
    let exe = std::env::current_exe().context("locating the cutover binary")?;
    let mut child = Command::new(exe)
        .args([
            "example-app",
            "--port",
            "0",
            "--version-label",
            version,
            "--slot",
            slot.as_str(),
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the example app")?;
    let stdout = child.stdout.take().context("example app stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("the example app did not report its port within 20 s")??
        .context("the example app exited before reporting its port")?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected first line from the example app: {line:?}"))?;
    Ok(ExampleApp { addr, _child: child })
}

#[derive(Default)]
struct StepResult {
    weight_bp: u16,
    on_v1: u32,
    on_v2: u32,
    flipped_back: u32,
    failed: u32,
    anonymous_inconsistent: u32,
    switch_ms: f64,
}

pub async fn run(options: DemoOptions) -> Result<ExitCode> {
    let started = Instant::now();
    println!("cutover demo: starting example app v1 (blue) and v2 (green) on loopback");
    let blue = spawn_example_app("v1", Slot::Blue).await?;
    let green = spawn_example_app("v2", Slot::Green).await?;

    let mut settings = ProxySettings::default();
    settings.sticky.user_key_header = Some("X-User-ID".into());
    settings.health_check.interval_ms = 200;
    settings.drain_timeout_ms = 2_000;
    let initial = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".into(),
            backends: vec![blue.addr],
        },
        green: Pool {
            version: "v2".into(),
            backends: vec![green.addr],
        },
    };
    let config = Config {
        admin: AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..AdminConfig::default()
        },
        apps: vec![AppConfig {
            name: "demo".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            preview_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            proxy: settings,
            routes: initial.clone(),
        }],
    };
    let token = format!("{:032x}", rand::random::<u128>());
    let running = cutover_server::start(config, token.clone()).await?;
    let bound = running
        .bound
        .apps
        .get("demo")
        .context("demo app not bound")?
        .clone();
    let admin = format!("http://{}", running.bound.admin);
    let public = format!("http://{}", bound.listen);
    println!("proxy on {public}, admin API on {admin}");

    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let users = options.users;
    let mut current: BTreeMap<u32, bool> = BTreeMap::new();
    let mut anon_cookies: Vec<Option<String>> = vec![None; options.anonymous as usize];
    let mut anon_version: Vec<Option<String>> = vec![None; options.anonymous as usize];
    let mut results = Vec::new();
    let ramp = [0u16, 500, 2_500, 5_000, 10_000, 0];
    for (i, &weight) in ramp.iter().enumerate() {
        let rollback = i == ramp.len() - 1;
        let mut table = initial.clone();
        table.canary_weight_bp = weight;
        let t = Instant::now();
        let response = client
            .put(format!("{admin}/v1/apps/demo/routes"))
            .bearer_auth(&token)
            .json(&table)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "admin API refused the route change: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let mut step = StepResult {
            weight_bp: weight,
            switch_ms: t.elapsed().as_secs_f64() * 1000.0,
            ..Default::default()
        };

        let answers: Vec<(u32, Option<String>)> = stream::iter(0..users)
            .map(|u| {
                let client = client.clone();
                let url = format!("{public}/");
                async move {
                    let r = client
                        .get(url)
                        .header("X-User-ID", format!("user-{u}"))
                        .send()
                        .await;
                    (
                        u,
                        r.ok()
                            .filter(|r| r.status().is_success())
                            .and_then(|r| version_of(&r)),
                    )
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for (u, version) in answers {
            match version.as_deref() {
                Some(v) => {
                    let on_v2 = v == "v2";
                    if on_v2 {
                        step.on_v2 += 1;
                    } else {
                        step.on_v1 += 1;
                    }
                    let before = current.insert(u, on_v2);
                    // While the weight only grows, nobody goes back to v1.
                    if !rollback && before == Some(true) && !on_v2 {
                        step.flipped_back += 1;
                    }
                }
                None => step.failed += 1,
            }
        }
        for (c, cookie) in anon_cookies.iter_mut().enumerate() {
            let mut request = client.get(format!("{public}/"));
            if let Some(cookie) = cookie.as_ref() {
                request = request.header("Cookie", cookie.clone());
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    if let Some(set) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
                        *cookie = set.split(';').next().map(str::to_string);
                    }
                    let v = version_of(&r);
                    if !rollback && anon_version[c].as_deref() == Some("v2") && v.as_deref() == Some("v1") {
                        step.anonymous_inconsistent += 1;
                    }
                    anon_version[c] = v;
                }
                _ => step.failed += 1,
            }
        }
        results.push(step);
    }
    let preview = match bound.preview {
        Some(p) => client
            .get(format!("http://{p}/"))
            .send()
            .await
            .ok()
            .and_then(|r| version_of(&r))
            .unwrap_or_else(|| "(failed)".into()),
        None => "(none)".into(),
    };
    running.shutdown().await;

    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10} {:>13} {:>7} {:>10}",
        "step", "weight", "on v1", "on v2", "observed", "flipped back", "failed", "switch ms"
    );
    let mut ok = true;
    for (i, s) in results.iter().enumerate() {
        let total = s.on_v1 + s.on_v2;
        let observed = if total == 0 {
            0.0
        } else {
            f64::from(s.on_v2) / f64::from(total) * 100.0
        };
        let label = if i == results.len() - 1 {
            "rollback".to_string()
        } else {
            format!("ramp {i}")
        };
        println!(
            "{label:<10} {:>7.1}% {:>8} {:>8} {:>9.1}% {:>13} {:>7} {:>10.2}",
            f64::from(s.weight_bp) / 100.0,
            s.on_v1,
            s.on_v2,
            observed,
            s.flipped_back + s.anonymous_inconsistent,
            s.failed,
            s.switch_ms
        );
        // Within 5 standard deviations of the configured share.
        let p = f64::from(s.weight_bp) / 10_000.0;
        let tolerance = 5.0 * (p * (1.0 - p) / f64::from(total.max(1))).sqrt() * 100.0 + 0.01;
        if s.failed > 0
            || s.flipped_back > 0
            || s.anonymous_inconsistent > 0
            || (observed - p * 100.0).abs() > tolerance
        {
            ok = false;
        }
    }
    println!();
    println!("preview listener answered with version {preview} (the slot that is not live)");
    let requests: u32 = results.iter().map(|s| s.on_v1 + s.on_v2 + s.failed).sum::<u32>()
        + options.anonymous * results.len() as u32;
    println!("{requests} requests in {:.1} s", started.elapsed().as_secs_f64());
    if ok && preview == "v2" {
        println!("result: every step within tolerance, no user moved against the ramp, no request failed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result: FAILED (see the table above)");
        Ok(ExitCode::FAILURE)
    }
}

fn version_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-app-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
