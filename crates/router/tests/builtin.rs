#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The built-in proxy passes the router conformance suite.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::Backends;
use cutover_core::{RouteTable, Slot, Timestamp};
use cutover_monitoring::{MetricSource, WindowQuery};
use cutover_proxy::{AppProxy, ListenerKind, ProxySettings};
use cutover_router::conformance::{self, Rig, BLUE_VERSION, GREEN_VERSION, MIN_DRAIN_TIMEOUT};
use cutover_router::{BuiltinRouter, CounterSource, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct BuiltinRig {
    router: Arc<BuiltinRouter>,
    entry: SocketAddr,
    backends: Backends,
    shutdown: CancellationToken,
}

#[async_trait]
impl Rig for BuiltinRig {
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
        // The built-in proxy lives in cutover's process: a restart of it is a restart of
        // cutover, which applies the persisted table on start (tested with the controller).
        false
    }
}

impl Drop for BuiltinRig {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.router.proxy().retire_all();
    }
}

async fn rig(per_slot: usize) -> BuiltinRig {
    let backends = Backends::spawn(per_slot);
    let mut settings = ProxySettings::default();
    settings.sticky.user_key_header = Some(conformance::USER_KEY_HEADER.to_string());
    settings.drain_timeout_ms = u64::try_from(MIN_DRAIN_TIMEOUT.as_millis()).unwrap();
    settings.health_check.interval_ms = 200;
    let proxy = AppProxy::new("conformance", settings, RouteTable::empty(Slot::Blue)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let entry = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(cutover_proxy::serve(
        listener,
        Arc::clone(&proxy),
        ListenerKind::Public,
        None,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    BuiltinRig {
        router: Arc::new(BuiltinRouter::new(proxy)),
        entry,
        backends,
        shutdown,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_proxy_passes_the_router_conformance_suite() {
    conformance::run_all(&rig(2).await).await;
}

/// The built-in proxy's metrics reach the judge through the same MetricSource trait as
/// Prometheus: counts and a latency histogram per window, and no window across a new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_source_measures_windows_of_the_builtin_proxy() {
    let rig = rig(1).await;
    let router = rig.router();
    router
        .apply(&conformance::table(&rig, Slot::Blue, 10_000))
        .await
        .unwrap();
    let source = CounterSource::new(Arc::clone(&router));
    let client = cutover_test_support::http_client();
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), format!("{}{path}", rig.entry()));
        async move {
            client
                .get(url)
                .header("x-user-id", "u1")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    get("/").await;
    source.start_window(Timestamp(1000)).await;
    for _ in 0..6 {
        assert!(get("/").await.is_success());
    }
    for _ in 0..4 {
        assert_eq!(get("/status/500").await.as_u16(), 500);
    }
    let query = |slot: Slot, version: &str| WindowQuery {
        app: "conformance".into(),
        slot,
        version: version.into(),
        from: Timestamp(1000),
        to: Timestamp(2000),
    };
    let green = source.measure(&query(Slot::Green, GREEN_VERSION)).await.unwrap();
    assert_eq!((green.requests, green.errors), (Some(10.0), Some(4.0)));
    let buckets = green
        .latency_buckets
        .as_ref()
        .expect("the built-in proxy keeps a histogram");
    assert_eq!(buckets.iter().sum::<u64>(), 10);
    assert!(green.p99_ms.is_some_and(|ms| ms > 0.0));
    // The live slot answered the four GETs the canary failed (`retry_canary_failures`), and
    // failed them too: they count there as well, as its own.
    let blue = source.measure(&query(Slot::Blue, BLUE_VERSION)).await.unwrap();
    assert_eq!((blue.requests, blue.errors), (Some(4.0), Some(4.0)));
    assert_eq!(green.codes.as_ref().and_then(|c| c.get(&500)), Some(&4.0));
    assert_eq!(green.client_errors, Some(0.0));
    // Both slots of a window from one reading, with the same figures.
    let (canary, baseline) = source
        .measure_window(
            &query(Slot::Green, GREEN_VERSION),
            Some(&query(Slot::Blue, BLUE_VERSION)),
        )
        .await;
    assert_eq!(canary.unwrap(), green);
    assert_eq!(baseline.unwrap().unwrap(), blue);

    // Asking for another version than the slot runs, or across a change of version, is refused.
    let wrong = source.measure(&query(Slot::Green, "v-other")).await.unwrap_err();
    assert!(wrong.to_string().contains("runs version"), "{wrong}");
    let mut relabelled = conformance::table(&rig, Slot::Blue, 10_000);
    relabelled.green.version = "v-next".into();
    router.apply(&relabelled).await.unwrap();
    let restarted = source.measure(&query(Slot::Green, "v-next")).await.unwrap_err();
    assert!(restarted.to_string().contains("restarted"), "{restarted}");
    source.start_window(Timestamp(2000)).await;
    let fresh = source.measure(&query(Slot::Green, "v-next")).await.unwrap();
    assert_eq!(fresh.requests, Some(0.0));
}
