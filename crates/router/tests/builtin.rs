#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The built-in proxy passes the router conformance suite.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{RouteTable, Slot};
use cutover_proxy::{AppProxy, ListenerKind, ProxySettings};
use cutover_router::conformance::{self, Rig, BLUE_VERSION, GREEN_VERSION, MIN_DRAIN_TIMEOUT};
use cutover_router::{BuiltinRouter, Router};
use cutover_test_support::ExampleApp;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct BuiltinRig {
    router: Arc<BuiltinRouter>,
    entry: SocketAddr,
    blue: Vec<ExampleApp>,
    green: Vec<ExampleApp>,
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
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
        .iter()
        .map(|a| a.addr)
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_proxy_passes_the_router_conformance_suite() {
    let blue: Vec<_> = (0..2).map(|_| ExampleApp::spawn(BLUE_VERSION, &[])).collect();
    let green: Vec<_> = (0..2).map(|_| ExampleApp::spawn(GREEN_VERSION, &[])).collect();
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
    let rig = BuiltinRig {
        router: Arc::new(BuiltinRouter::new(proxy)),
        entry,
        blue,
        green,
        shutdown,
    };
    conformance::run_all(&rig).await;
}
