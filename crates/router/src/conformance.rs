//! The behaviour every [`Router`] must show, checked with real traffic. A backend's tests build a
//! [`Rig`] (the router, where clients enter, example-app backends in both slots, a way to restart
//! the router's process) and call [`run_all`]; each check panics with a message naming the check
//! and what differed.
//!
//! The backends are `cutover-example-app` processes that stamp every response with
//! `x-app-version`; the blue ones run [`BLUE_VERSION`], the green ones [`GREEN_VERSION`], so the
//! version of a response says which slot served it. The router must be configured to take the
//! user key from the [`USER_KEY_HEADER`] header and to drain for at least
//! [`MIN_DRAIN_TIMEOUT`].
//!
//! Every loop here is bounded in count and in time, and traffic goes only to the rig's entry
//! address, which must be on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Panicking is how a check reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::{Pool, RouteTable, Slot};

use crate::Router;

pub const BLUE_VERSION: &str = "conformance-blue";
pub const GREEN_VERSION: &str = "conformance-green";
pub const USER_KEY_HEADER: &str = "x-user-id";
/// The drain check holds a request for 1.5 s after its slot lost its traffic.
pub const MIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const SLOW_MS: u64 = 1500;

/// A router under test with everything around it.
#[async_trait]
pub trait Rig: Send + Sync {
    fn router(&self) -> Arc<dyn Router>;
    /// Base URL clients send requests to, e.g. `http://127.0.0.1:41234` (no trailing slash).
    fn entry(&self) -> String;
    /// The backends of `slot`: example apps labelled [`BLUE_VERSION`] or [`GREEN_VERSION`].
    fn backends(&self, slot: Slot) -> Vec<SocketAddr>;
    /// Kills the router's process and starts it again from its configuration on disk, returning
    /// once it accepts connections; `false` when the router has no process of its own.
    async fn restart_router(&self) -> bool;
}

/// One check.
pub type Check = for<'a> fn(&'a dyn Rig) -> futures_util::future::BoxFuture<'a, ()>;

/// Every check, by name.
pub fn checks() -> Vec<(&'static str, Check)> {
    vec![
        ("applies_and_reads_back", |r| Box::pin(applies_and_reads_back(r))),
        ("all_or_nothing", |r| Box::pin(all_or_nothing(r))),
        ("weighted_split", |r| Box::pin(weighted_split(r))),
        ("sticky_users", |r| Box::pin(sticky_users(r))),
        ("switch_and_rollback", |r| Box::pin(switch_and_rollback(r))),
        ("drain", |r| Box::pin(drain(r))),
        ("no_failures_across_switches", |r| {
            Box::pin(no_failures_across_switches(r))
        }),
        ("recovers_after_restart", |r| Box::pin(recovers_after_restart(r))),
    ]
}

/// Runs every check in turn on `rig`.
pub async fn run_all(rig: &dyn Rig) {
    for (name, check) in checks() {
        let started = Instant::now();
        check(rig).await;
        eprintln!(
            "router conformance: {name} passed in {} ms",
            started.elapsed().as_millis()
        );
    }
}

/// A table with both slots' backends, `live` serving all but `canary_weight_bp`.
pub fn table(rig: &dyn Rig, live: Slot, canary_weight_bp: u16) -> RouteTable {
    let pool = |slot: Slot| Pool {
        version: match slot {
            Slot::Blue => BLUE_VERSION,
            Slot::Green => GREEN_VERSION,
        }
        .to_string(),
        backends: rig.backends(slot),
    };
    RouteTable {
        live,
        canary_weight_bp,
        blue: pool(Slot::Blue),
        green: pool(Slot::Green),
    }
}

fn client() -> reqwest::Client {
    // Traffic must go to the loopback rig, never through a proxy from the environment.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// The release that answered, from the example app's `x-app-version` header.
fn app_version(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-app-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The slot that answered `GET {entry}{path}` for user `key`, or why there was no good answer.
async fn slot_of(client: &reqwest::Client, entry: &str, path: &str, key: &str) -> Result<Slot, String> {
    let response = client
        .get(format!("{entry}{path}"))
        .header(USER_KEY_HEADER, key)
        .send()
        .await
        .map_err(|e| format!("GET {path} as {key}: {}", error_chain(&e)))?;
    let status = response.status();
    let version = app_version(&response);
    // Read the body: a response is only good when all of it arrived.
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {path} as {key}: body: {}", error_chain(&e)))?;
    if !status.is_success() {
        return Err(format!(
            "GET {path} as {key}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    match version.as_str() {
        BLUE_VERSION => Ok(Slot::Blue),
        GREEN_VERSION => Ok(Slot::Green),
        other => Err(format!("GET {path} as {key}: unknown x-app-version {other:?}")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Slot of each key, in order. Each call has a client of its own: routers that reload (nginx)
/// close idle keep-alive connections, and a request racing such a close fails in any client.
/// These checks are about where users go; keep-alive across changes under load is
/// [`no_failures_across_switches`]'s.
async fn slots_of(rig: &dyn Rig, check: &str, keys: &[String]) -> Vec<Slot> {
    let client = &client();
    let mut out = Vec::with_capacity(keys.len());
    let entry = rig.entry();
    for chunk in keys.chunks(16) {
        let answers =
            futures_util::future::join_all(chunk.iter().map(|k| slot_of(client, &entry, "/", k))).await;
        for answer in answers {
            out.push(answer.unwrap_or_else(|e| panic!("{check}: {e}")));
        }
    }
    out
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn apply(rig: &dyn Rig, check: &str, table: &RouteTable) {
    rig.router()
        .apply(table)
        .await
        .unwrap_or_else(|e| panic!("{check}: apply {}: {e}", describe(table)));
}

fn describe(table: &RouteTable) -> String {
    format!(
        "live {} with {} bp on {}",
        table.live,
        table.canary_weight_bp,
        table.canary()
    )
}

/// What was applied is what reads back, for a few different tables.
pub async fn applies_and_reads_back(rig: &dyn Rig) {
    let router = rig.router();
    for t in [
        table(rig, Slot::Blue, 0),
        table(rig, Slot::Blue, 2500),
        table(rig, Slot::Green, 10_000),
        table(rig, Slot::Green, 1),
    ] {
        apply(rig, "applies_and_reads_back", &t).await;
        let found = router
            .applied()
            .await
            .unwrap_or_else(|e| panic!("applies_and_reads_back: read back after {}: {e}", describe(&t)));
        assert_eq!(found, t, "applies_and_reads_back: read back differs");
    }
    // A slot may be emptied and filled again.
    let mut empty_green = table(rig, Slot::Blue, 0);
    empty_green.green = Pool::default();
    apply(rig, "applies_and_reads_back", &empty_green).await;
    assert_eq!(
        router.applied().await.unwrap(),
        empty_green,
        "applies_and_reads_back: read back of a table with an empty slot"
    );
}

/// Weight 0 and 10 000 send every user to one slot.
pub async fn all_or_nothing(rig: &dyn Rig) {
    let keys = keys("all", 100);
    for (live, weight, expect) in [
        (Slot::Blue, 0, Slot::Blue),
        (Slot::Blue, 10_000, Slot::Green),
        (Slot::Green, 0, Slot::Green),
        (Slot::Green, 10_000, Slot::Blue),
    ] {
        let t = table(rig, live, weight);
        apply(rig, "all_or_nothing", &t).await;
        let slots = slots_of(rig, "all_or_nothing", &keys).await;
        let wrong = slots.iter().filter(|s| **s != expect).count();
        assert_eq!(
            wrong,
            0,
            "all_or_nothing: with {} {wrong} of {} users were not on {expect}",
            describe(&t),
            keys.len()
        );
    }
}

/// At 20 % the canary gets 20 % of users, within a tolerance of 4 points (more than 4 standard
/// deviations for 2000 users).
pub async fn weighted_split(rig: &dyn Rig) {
    let t = table(rig, Slot::Blue, 2000);
    apply(rig, "weighted_split", &t).await;
    let keys = keys("split", 2000);
    let slots = slots_of(rig, "weighted_split", &keys).await;
    let green = slots.iter().filter(|s| **s == Slot::Green).count();
    let share = green as f64 / keys.len() as f64;
    assert!(
        (0.16..=0.24).contains(&share),
        "weighted_split: {green} of {} users ({:.1} %) on the canary at 20 %",
        keys.len(),
        share * 100.0
    );
}

/// A user's slot does not change while the weight stays, and a canary user stays on the canary
/// while the weight only grows.
pub async fn sticky_users(rig: &dyn Rig) {
    let keys = keys("sticky", 400);
    let mut previous: Option<Vec<Slot>> = None;
    for weight in [500, 1000, 2500, 5000, 9000] {
        let t = table(rig, Slot::Blue, weight);
        apply(rig, "sticky_users", &t).await;
        let first = slots_of(rig, "sticky_users", &keys).await;
        let again = slots_of(rig, "sticky_users", &keys).await;
        let moved = first.iter().zip(&again).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved, 0,
            "sticky_users: at {weight} bp {moved} users changed slot between two requests"
        );
        if let Some(previous) = &previous {
            let back = previous
                .iter()
                .zip(&first)
                .filter(|(p, n)| **p == Slot::Green && **n == Slot::Blue)
                .count();
            assert_eq!(
                back, 0,
                "sticky_users: raising the canary to {weight} bp moved {back} canary users back"
            );
        }
        previous = Some(first);
    }
}

/// Switch everybody to the new slot, roll back, then promote.
pub async fn switch_and_rollback(rig: &dyn Rig) {
    let keys = keys("switch", 50);
    for (step, t, expect) in [
        ("start", table(rig, Slot::Blue, 0), Slot::Blue),
        ("switch", table(rig, Slot::Blue, 10_000), Slot::Green),
        ("rollback", table(rig, Slot::Blue, 0), Slot::Blue),
        ("promote", table(rig, Slot::Green, 0), Slot::Green),
        ("back to blue", table(rig, Slot::Blue, 0), Slot::Blue),
    ] {
        apply(rig, "switch_and_rollback", &t).await;
        let slots = slots_of(rig, "switch_and_rollback", &keys).await;
        let wrong = slots.iter().filter(|s| **s != expect).count();
        assert_eq!(
            wrong, 0,
            "switch_and_rollback: after {step}, {wrong} users not on {expect}"
        );
    }
}

/// A slot that loses its traffic lets its slow request finish while new requests go elsewhere.
pub async fn drain(rig: &dyn Rig) {
    let client = client();
    apply(rig, "drain", &table(rig, Slot::Blue, 10_000)).await;
    let green = rig.backends(Slot::Green);
    // Slow requests the green backends are serving now.
    let slow_on_green = |c: &reqwest::Client| {
        let urls: Vec<String> = green
            .iter()
            .map(|a| format!("http://{a}/control/requests"))
            .collect();
        let c = c.clone();
        async move {
            let mut total = 0u64;
            for url in urls {
                let text = c.get(&url).send().await.unwrap().text().await.unwrap();
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("drain: {url} answered {text:?}: {e}"));
                total += v["slow_in_progress"].as_u64().unwrap_or(0);
            }
            total
        }
    };
    let slow = {
        let client = client.clone();
        let url = format!("{}/slow?ms={SLOW_MS}", rig.entry());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client.get(url).header(USER_KEY_HEADER, "drain-user").send().await;
            let r = match r {
                Ok(r) => {
                    let status = r.status();
                    let version = app_version(&r);
                    r.text().await.map(|body| (status, version, body))
                }
                Err(e) => Err(e),
            };
            (r.map_err(|e| error_chain(&e)), started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_on_green(&client).await == 0 {
        assert!(
            Instant::now() < deadline,
            "drain: the slow request did not reach a green backend within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    apply(rig, "drain", &table(rig, Slot::Blue, 0)).await;
    let keys = keys("drain", 20);
    let slots = slots_of(rig, "drain", &keys).await;
    assert!(
        slots.iter().all(|s| *s == Slot::Blue),
        "drain: new requests reached green after it lost its traffic: {slots:?}"
    );
    let (result, took) = slow.await.unwrap();
    let (status, version, body) =
        result.unwrap_or_else(|e| panic!("drain: the in-flight slow request failed: {e}"));
    assert!(
        status.is_success() && version == GREEN_VERSION && body.contains("slow done"),
        "drain: the in-flight slow request got {status} from {version:?}: {body:?} after {took:?}"
    );
}

/// No request fails while the table switches back and forth under load.
pub async fn no_failures_across_switches(rig: &dyn Rig) {
    const CLIENTS: usize = 8;
    const SWITCHES: usize = 40;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen: Arc<std::sync::Mutex<HashMap<Slot, u64>>> = Arc::default();
    apply(rig, "no_failures_across_switches", &table(rig, Slot::Blue, 0)).await;
    let entry = rig.entry();
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (stop, done, failures, seen, entry) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failures),
            Arc::clone(&seen),
            entry.clone(),
        );
        load.push(tokio::spawn(async move {
            let client = client();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let key = format!("load-{c}-{i}");
                match slot_of(&client, &entry, "/", &key).await {
                    Ok(slot) => *seen.lock().unwrap().entry(slot).or_default() += 1,
                    Err(e) => failures.lock().unwrap().push(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for i in 0..SWITCHES {
        // Let some traffic pass on each table, so every switch happens under load.
        let mark = done.load(Ordering::Relaxed);
        while done.load(Ordering::Relaxed) < mark + 25 {
            assert!(
                Instant::now() < deadline,
                "no_failures_across_switches: the load stalled at switch {i}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let weight = match i % 4 {
            0 => 10_000,
            1 => 0,
            2 => 5000,
            _ => 0,
        };
        apply(
            rig,
            "no_failures_across_switches",
            &table(rig, Slot::Blue, weight),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        failures.is_empty(),
        "no_failures_across_switches: {} of {} requests failed across {SWITCHES} switches, e.g. {:?}",
        failures.len(),
        done.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(
        seen.get(&Slot::Blue).copied().unwrap_or(0) > 0 && seen.get(&Slot::Green).copied().unwrap_or(0) > 0,
        "no_failures_across_switches: traffic did not reach both slots: {seen:?}"
    );
}

/// After the router's process restarts, reconciling brings the applied table back.
pub async fn recovers_after_restart(rig: &dyn Rig) {
    let router = rig.router();
    let t = table(rig, Slot::Blue, 5000);
    apply(rig, "recovers_after_restart", &t).await;
    if !rig.restart_router().await {
        return;
    }
    router
        .reconcile(&t)
        .await
        .unwrap_or_else(|e| panic!("recovers_after_restart: reconcile after the restart: {e}"));
    assert_eq!(
        router.applied().await.unwrap(),
        t,
        "recovers_after_restart: read back after reconcile"
    );
    let keys = keys("restart", 400);
    let slots = slots_of(rig, "recovers_after_restart", &keys).await;
    let green = slots.iter().filter(|s| **s == Slot::Green).count();
    assert!(
        (120..=280).contains(&green),
        "recovers_after_restart: {green} of 400 users on the canary at 50 % after the restart"
    );
}
