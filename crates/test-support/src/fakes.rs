//! In-process fakes of the [`Platform`] and [`Router`] traits, so the controller's paths can be
//! tested without spawning a binary or running a proxy.
//!
//! - [`FakePlatform`] starts, for every instance, a tiny real HTTP server on `127.0.0.1:0` that
//!   answers 200 on every path (the controller probes readiness over real HTTP), and stops it on
//!   `stop` or [`FakePlatformHandle::kill`]. Its [`FakePlatformHandle`] injects faults (failing,
//!   held or slow starts, killed instances, not-ready instances) and records every call.
//! - [`FakeRouter`] keeps its route table and per-slot counters in memory. Its
//!   [`FakeRouterHandle`] refuses applies, drops the table (like a restarted HAProxy), records
//!   every table it took, and feeds counters to the judge.
//!
//! Both are cheap to share: a fake and its handles point to the same state, so a test keeps the
//! handle and gives the fake itself to the code under test.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_core::{ReleaseSpec, RouteTable, Slot};
use cutover_platform::{InstanceInfo, Platform, PlatformError, ReconcileReport};
use cutover_router::{Router, RouterError, SlotCounters};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a held `start` waits for [`FakePlatformHandle::release_starts`] before it fails, so
/// a test that forgets to release cannot hang forever.
const HOLD_LIMIT: Duration = Duration::from_secs(60);
/// What [`InstanceInfo::exited`] says of an instance killed with [`FakePlatformHandle::kill`].
pub const KILLED: &str = "killed by SIGKILL (fake platform)";
/// How the fake router describes itself in messages and errors.
const ROUTER_NAME: &str = "fake router";
/// The fake router's drain timeout until [`FakeRouterHandle::set_drain_timeout`] changes it.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------------
// Platform
// ------------------------------------------------------------------------------------------------

/// One call to the fake platform, or its outcome, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformCall {
    /// `start` was called; recorded at once, before any hold, delay or injected failure.
    Start {
        app: String,
        slot: Slot,
        version: String,
        instances: u32,
    },
    /// A `start` returned these instances, now serving.
    Started {
        app: String,
        slot: Slot,
        version: String,
        addrs: Vec<SocketAddr>,
    },
    /// A `start` failed (an injected failure, a hold never released, a failed bind).
    StartFailed {
        app: String,
        slot: Slot,
        version: String,
        reason: String,
    },
    /// `stop` was called (whether or not the slot had instances).
    Stop { app: String, slot: Slot },
    /// `reconcile` was called with these wanted `(slot, version)` pairs.
    Reconcile { app: String, keep: Vec<(Slot, String)> },
}

/// A [`Platform`] whose instances are in-process HTTP servers. Get a [`FakePlatformHandle`] with
/// [`FakePlatform::handle`] before handing the platform to the code under test.
#[derive(Debug, Clone, Default)]
pub struct FakePlatform {
    shared: Arc<PlatformShared>,
}

/// Controls and observes a [`FakePlatform`]; clones share the same platform.
#[derive(Debug, Clone)]
pub struct FakePlatformHandle {
    shared: Arc<PlatformShared>,
}

#[derive(Debug)]
struct PlatformShared {
    state: Mutex<PlatformState>,
    /// `true` while starts are held.
    hold: watch::Sender<bool>,
    /// Whether instances answer 200 (or 503) on every path; shared by all instances.
    ready: Arc<AtomicBool>,
}

impl Default for PlatformShared {
    fn default() -> Self {
        PlatformShared {
            state: Mutex::new(PlatformState::default()),
            hold: watch::channel(false).0,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

#[derive(Debug, Default)]
struct PlatformState {
    slots: BTreeMap<(String, Slot), Vec<FakeInstance>>,
    calls: Vec<PlatformCall>,
    /// Starts still to fail, and why.
    failing_starts: u32,
    failure_reason: String,
    start_delay: Duration,
    log_tail: String,
}

#[derive(Debug)]
struct FakeInstance {
    info: InstanceInfo,
    /// `None` once killed.
    server: Option<InstanceServer>,
}

/// A running instance's HTTP server; aborted (listener and connections closed) on drop.
#[derive(Debug)]
struct InstanceServer {
    task: JoinHandle<()>,
}

impl Drop for InstanceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePlatform {
    pub fn new() -> FakePlatform {
        FakePlatform::default()
    }

    pub fn handle(&self) -> FakePlatformHandle {
        FakePlatformHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl FakePlatformHandle {
    /// The next `n` calls of `start` fail with `reason` (as [`PlatformError::Start`]), after any
    /// hold or delay.
    pub fn fail_next_starts(&self, n: u32, reason: impl Into<String>) {
        let mut s = lock(&self.shared.state);
        s.failing_starts = n;
        s.failure_reason = reason.into();
    }

    /// Calls of `start` from now on (and those already waiting) hang until
    /// [`FakePlatformHandle::release_starts`], or fail after 60 s.
    pub fn hold_starts(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets held starts go on, and later ones through at once.
    pub fn release_starts(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Every `start` waits this long (real time) before it succeeds or fails; zero by default.
    pub fn set_start_delay(&self, delay: Duration) {
        lock(&self.shared.state).start_delay = delay;
    }

    /// Whether the instances answer 200 (true, the default) or 503 on every path, readiness
    /// probes included. Applies to running instances at once.
    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
    }

    /// What `log_tail` returns (empty by default).
    pub fn set_log_tail(&self, text: impl Into<String>) {
        lock(&self.shared.state).log_tail = text.into();
    }

    /// Kills instance `index` of `slot`: its server stops answering and `instances` reports it
    /// as exited ([`KILLED`]) until the slot is stopped. False if no such instance was running.
    pub fn kill(&self, app: &str, slot: Slot, index: u32) -> bool {
        let mut s = lock(&self.shared.state);
        let Some(instances) = s.slots.get_mut(&(app.to_string(), slot)) else {
            return false;
        };
        let Some(instance) = instances
            .iter_mut()
            .find(|i| i.info.index == index && i.info.exited.is_none())
        else {
            return false;
        };
        instance.server = None;
        instance.info.exited = Some(KILLED.to_string());
        true
    }

    /// The instances of `slot` as `Platform::instances` would report them.
    pub fn instances(&self, app: &str, slot: Slot) -> Vec<InstanceInfo> {
        self.shared.instances(app, slot)
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<PlatformCall> {
        lock(&self.shared.state).calls.clone()
    }
}

impl PlatformShared {
    fn record(&self, call: PlatformCall) {
        lock(&self.state).calls.push(call);
    }

    fn instances(&self, app: &str, slot: Slot) -> Vec<InstanceInfo> {
        lock(&self.state)
            .slots
            .get(&(app.to_string(), slot))
            .map(|list| list.iter().map(|i| i.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Records the start and takes its share of the injected faults: (failure, delay).
    fn begin_start(&self, app: &str, slot: Slot, release: &ReleaseSpec) -> (Option<String>, Duration) {
        let mut s = lock(&self.state);
        s.calls.push(PlatformCall::Start {
            app: app.to_string(),
            slot,
            version: release.version.clone(),
            instances: release.instances,
        });
        let failure = (s.failing_starts > 0).then(|| {
            s.failing_starts -= 1;
            s.failure_reason.clone()
        });
        (failure, s.start_delay)
    }

    /// Waits while starts are held; an error when held past [`HOLD_LIMIT`].
    async fn wait_while_held(&self) -> Result<(), String> {
        let mut held = self.hold.subscribe();
        // Bounded by the timeout around it.
        let released = async move {
            loop {
                let is_held = *held.borrow_and_update();
                if !is_held {
                    return;
                }
                if held.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(HOLD_LIMIT, released)
            .await
            .map_err(|_| format!("fake platform: the start was held for {HOLD_LIMIT:?} and never released"))
    }

    /// Replaces whatever ran in the slot by `instances`.
    fn install(&self, app: &str, slot: Slot, version: &str, instances: Vec<FakeInstance>) {
        let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.info.addr).collect();
        let old = {
            let mut s = lock(&self.state);
            s.calls.push(PlatformCall::Started {
                app: app.to_string(),
                slot,
                version: version.to_string(),
                addrs,
            });
            s.slots.insert((app.to_string(), slot), instances)
        };
        // Stopped outside the lock (dropping aborts their servers).
        drop(old);
    }

    /// Stops and forgets every instance of the slot.
    fn remove_slot(&self, app: &str, slot: Slot) {
        let old = lock(&self.state).slots.remove(&(app.to_string(), slot));
        drop(old);
    }

    fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let mut stopped = Vec::new();
        {
            let mut s = lock(&self.state);
            s.calls.push(PlatformCall::Reconcile {
                app: app.to_string(),
                keep: keep.to_vec(),
            });
            for slot in Slot::ALL {
                let key = (app.to_string(), slot);
                let Some(instances) = s.slots.remove(&key) else {
                    continue;
                };
                let (running, exited): (Vec<FakeInstance>, Vec<FakeInstance>) =
                    instances.into_iter().partition(|i| i.info.exited.is_none());
                report.gone.extend(exited.iter().map(|i| i.info.clone()));
                let wanted = running.first().is_some_and(|i| {
                    keep.iter()
                        .any(|(k_slot, k_version)| *k_slot == slot && *k_version == i.info.version)
                });
                if wanted {
                    report.adopted.extend(running.iter().map(|i| i.info.clone()));
                    s.slots.insert(key, running);
                } else {
                    report.stopped.extend(running.iter().map(|i| i.info.clone()));
                    stopped.extend(running);
                }
            }
        }
        drop(stopped);
        report
    }
}

#[async_trait]
impl Platform for FakePlatform {
    async fn start(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
    ) -> Result<Vec<InstanceInfo>, PlatformError> {
        let shared = &self.shared;
        let (failure, delay) = shared.begin_start(app, slot, release);
        let fail = |index: u32, reason: String| {
            shared.record(PlatformCall::StartFailed {
                app: app.to_string(),
                slot,
                version: release.version.clone(),
                reason: reason.clone(),
            });
            PlatformError::Start {
                slot,
                version: release.version.clone(),
                index,
                reason,
            }
        };
        if let Err(reason) = shared.wait_while_held().await {
            return Err(fail(0, reason));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(reason) = failure {
            return Err(fail(0, reason));
        }
        // Like a real platform: whatever still ran in the slot is stopped first.
        shared.remove_slot(app, slot);
        let mut started = Vec::new();
        for index in 0..release.instances {
            match InstanceServer::start(&release.version, Arc::clone(&shared.ready)).await {
                Ok((addr, server)) => started.push(FakeInstance {
                    info: InstanceInfo {
                        index,
                        addr,
                        version: release.version.clone(),
                        pid: None,
                        log_path: None,
                        exited: None,
                    },
                    server: Some(server),
                }),
                // `started` drops here, stopping the instances already started.
                Err(e) => {
                    let reason = format!("fake platform: binding 127.0.0.1:0 failed: {e}");
                    return Err(fail(index, reason));
                }
            }
        }
        let infos: Vec<InstanceInfo> = started.iter().map(|i| i.info.clone()).collect();
        shared.install(app, slot, &release.version, started);
        Ok(infos)
    }

    async fn stop(&self, app: &str, slot: Slot, _grace: Duration) -> Result<(), PlatformError> {
        self.shared.record(PlatformCall::Stop {
            app: app.to_string(),
            slot,
        });
        self.shared.remove_slot(app, slot);
        Ok(())
    }

    async fn instances(&self, app: &str, slot: Slot) -> Result<Vec<InstanceInfo>, PlatformError> {
        Ok(self.shared.instances(app, slot))
    }

    async fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> Result<ReconcileReport, PlatformError> {
        Ok(self.shared.reconcile(app, keep))
    }

    async fn running(&self, app: &str) -> Result<Vec<(Slot, Vec<InstanceInfo>)>, PlatformError> {
        // The fake does not know start order: blue, then green.
        Ok(Slot::ALL
            .into_iter()
            .map(|slot| {
                let running: Vec<InstanceInfo> = self
                    .shared
                    .instances(app, slot)
                    .into_iter()
                    .filter(|i| i.exited.is_none())
                    .collect();
                (slot, running)
            })
            .filter(|(_, running)| !running.is_empty())
            .collect())
    }

    fn log_tail(&self, _app: &str, _slot: Slot, _lines: usize) -> String {
        lock(&self.shared.state).log_tail.clone()
    }
}

impl InstanceServer {
    /// Binds `127.0.0.1:0` and serves HTTP/1.1 there until dropped: every path answers 200 with
    /// the version as the body, or 503 while `ready` is false.
    async fn start(version: &str, ready: Arc<AtomicBool>) -> std::io::Result<(SocketAddr, InstanceServer)> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, format!("{version}\n"), ready));
        Ok((addr, InstanceServer { task }))
    }
}

/// The accept loop of one instance; it runs until its task is aborted (the instance is stopped
/// or killed, or the runtime ends), which also aborts its connections (the `JoinSet` drops).
async fn serve(listener: TcpListener, body: String, ready: Arc<AtomicBool>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, say: back off a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let body = body.clone();
        let ready = Arc::clone(&ready);
        connections.spawn(async move {
            let service = service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
                let mut response = hyper::Response::new(Full::new(Bytes::from(body.clone())));
                if !ready.load(Ordering::SeqCst) {
                    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                }
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is not the fake's problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ------------------------------------------------------------------------------------------------
// Router
// ------------------------------------------------------------------------------------------------

/// A [`Router`] that keeps its table and counters in memory. Get a [`FakeRouterHandle`] with
/// [`FakeRouter::handle`] before handing the router to the code under test.
///
/// It starts routing by `RouteTable::empty(Slot::Blue)`. Like a real router it validates a table
/// before taking it (an invalid one is [`RouterError::Refused`]), and it keeps one counter run per
/// slot and version: a table that puts another version in a slot restarts that slot's counters
/// from zero with a new `series`.
#[derive(Debug, Clone, Default)]
pub struct FakeRouter {
    shared: Arc<Mutex<RouterState>>,
}

/// Controls and observes a [`FakeRouter`]; clones share the same router.
#[derive(Debug, Clone)]
pub struct FakeRouterHandle {
    shared: Arc<Mutex<RouterState>>,
}

#[derive(Debug)]
struct RouterState {
    table: RouteTable,
    history: Vec<RouteTable>,
    refused: Vec<RouteTable>,
    refuse_next: u32,
    counters: [SlotCounters; 2],
    drain_timeout: Duration,
}

impl Default for RouterState {
    fn default() -> Self {
        RouterState {
            table: RouteTable::empty(Slot::Blue),
            history: Vec::new(),
            refused: Vec::new(),
            refuse_next: 0,
            counters: Default::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl FakeRouter {
    pub fn new() -> FakeRouter {
        FakeRouter::default()
    }

    pub fn handle(&self) -> FakeRouterHandle {
        FakeRouterHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl FakeRouterHandle {
    /// The next `n` calls of `apply` fail with [`RouterError::Unavailable`] and change nothing;
    /// `u32::MAX` refuses until [`FakeRouterHandle::accept_applies`].
    pub fn refuse_next_applies(&self, n: u32) {
        lock(&self.shared).refuse_next = n;
    }

    /// Takes tables again from the next `apply` on.
    pub fn accept_applies(&self) {
        lock(&self.shared).refuse_next = 0;
    }

    /// Forgets the table, like a restarted or reloaded HAProxy: `applied` (and so `reconcile`)
    /// shows `RouteTable::empty(Slot::Blue)` until a table is applied again. Counters are kept
    /// (see [`FakeRouterHandle::restart_counters`]).
    pub fn drop_table(&self) {
        lock(&self.shared).table = RouteTable::empty(Slot::Blue);
    }

    /// The table the router routes by now (what `applied` returns).
    pub fn current(&self) -> RouteTable {
        lock(&self.shared).table.clone()
    }

    /// Every table taken by `apply`, oldest first.
    pub fn history(&self) -> Vec<RouteTable> {
        lock(&self.shared).history.clone()
    }

    /// Every table `apply` refused (injected refusals and invalid tables), oldest first.
    pub fn refused(&self) -> Vec<RouteTable> {
        lock(&self.shared).refused.clone()
    }

    /// Replaces the counters of `slot` as they are.
    pub fn set_counters(&self, slot: Slot, counters: SlotCounters) {
        lock(&self.shared).counters[slot.index()] = counters;
    }

    /// Adds `requests` answered, `server_errors` of them 5xx, to `slot`'s counters.
    pub fn add_traffic(&self, slot: Slot, requests: u64, server_errors: u64) {
        let mut s = lock(&self.shared);
        let c = &mut s.counters[slot.index()];
        c.requests = c.requests.saturating_add(requests);
        c.server_errors = c.server_errors.saturating_add(server_errors);
    }

    /// Starts every slot's counters from zero with a new series, like a reloaded HAProxy.
    pub fn restart_counters(&self) {
        let mut s = lock(&self.shared);
        for c in &mut s.counters {
            *c = SlotCounters {
                version: c.version.clone(),
                series: c.series.wrapping_add(1),
                ..Default::default()
            };
        }
    }

    /// The counters as `counters` returns them, indexed by [`Slot::index`].
    pub fn counters(&self) -> [SlotCounters; 2] {
        lock(&self.shared).counters.clone()
    }

    pub fn set_drain_timeout(&self, timeout: Duration) {
        lock(&self.shared).drain_timeout = timeout;
    }
}

impl FakeRouter {
    fn apply_now(&self, table: &RouteTable) -> Result<(), RouterError> {
        let mut s = lock(&self.shared);
        if s.refuse_next > 0 {
            s.refuse_next -= 1;
            s.refused.push(table.clone());
            return Err(RouterError::Unavailable {
                router: ROUTER_NAME.to_string(),
                reason: "refusing applies (injected fault)".to_string(),
            });
        }
        if let Err(e) = table.validate() {
            s.refused.push(table.clone());
            return Err(RouterError::Refused {
                router: ROUTER_NAME.to_string(),
                reason: e.to_string(),
            });
        }
        for slot in Slot::ALL {
            let version = &table.pool(slot).version;
            let c = &mut s.counters[slot.index()];
            if c.version != *version {
                *c = SlotCounters {
                    version: version.clone(),
                    series: c.series.wrapping_add(1),
                    ..Default::default()
                };
            }
        }
        s.table = table.clone();
        s.history.push(table.clone());
        Ok(())
    }
}

#[async_trait]
impl Router for FakeRouter {
    fn describe(&self) -> String {
        ROUTER_NAME.to_string()
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        self.apply_now(table)
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        Ok(lock(&self.shared).table.clone())
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        Ok(lock(&self.shared).counters.clone())
    }

    fn drain_timeout(&self) -> Duration {
        lock(&self.shared).drain_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, instances: u32) -> ReleaseSpec {
        ReleaseSpec {
            instances,
            ..ReleaseSpec::new(version, "fake")
        }
    }

    async fn status(addr: SocketAddr) -> Option<u16> {
        let r = crate::http_client()
            .get(format!("http://{addr}/health/ready"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    #[tokio::test]
    async fn instances_serve_until_killed_or_stopped() {
        let platform = FakePlatform::new();
        let handle = platform.handle();
        let started = platform
            .start("web", Slot::Green, &release("v1", 2))
            .await
            .unwrap();
        assert_eq!(started.len(), 2);
        for i in &started {
            assert_eq!(status(i.addr).await, Some(200));
        }
        handle.set_ready(false);
        assert_eq!(status(started[0].addr).await, Some(503));
        handle.set_ready(true);

        assert!(handle.kill("web", Slot::Green, 0));
        let addr = started[0].addr;
        crate::wait_until(
            "the killed instance stops answering",
            Duration::from_secs(5),
            || async move { status(addr).await.is_none() },
        )
        .await;
        let listed = platform.instances("web", Slot::Green).await.unwrap();
        assert_eq!(listed[0].exited.as_deref(), Some(KILLED));
        assert_eq!(listed[1].exited, None);

        platform.stop("web", Slot::Green, Duration::ZERO).await.unwrap();
        assert!(platform.instances("web", Slot::Green).await.unwrap().is_empty());
        let addr = started[1].addr;
        crate::wait_until(
            "the stopped instance stops answering",
            Duration::from_secs(5),
            || async move { status(addr).await.is_none() },
        )
        .await;
        let calls = handle.calls();
        assert!(matches!(calls[0], PlatformCall::Start { instances: 2, .. }));
        assert!(matches!(calls[1], PlatformCall::Started { .. }));
        assert!(matches!(
            calls[2],
            PlatformCall::Stop {
                slot: Slot::Green,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn injected_failures_and_holds() {
        let platform = FakePlatform::new();
        let handle = platform.handle();
        handle.fail_next_starts(1, "no such image");
        let err = platform
            .start("web", Slot::Blue, &release("v1", 1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such image"), "{err}");
        assert!(platform.start("web", Slot::Blue, &release("v1", 1)).await.is_ok());

        handle.hold_starts();
        let p = platform.clone();
        let held = tokio::spawn(async move { p.start("web", Slot::Green, &release("v2", 1)).await });
        crate::wait_until("the held start is recorded", Duration::from_secs(5), || async {
            handle.calls().iter().any(|c| {
                matches!(
                    c,
                    PlatformCall::Start {
                        slot: Slot::Green,
                        ..
                    }
                )
            })
        })
        .await;
        assert!(!held.is_finished());
        handle.release_starts();
        let started = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(started[0].version, "v2");
    }

    #[tokio::test]
    async fn the_router_refuses_drops_and_counts() {
        let router = FakeRouter::new();
        let handle = router.handle();
        let mut table = RouteTable::empty(Slot::Blue);
        table.blue.version = "v1".into();
        table.blue.backends = vec!["127.0.0.1:1".parse().unwrap()];

        handle.refuse_next_applies(1);
        assert!(matches!(
            router.apply(&table).await,
            Err(RouterError::Unavailable { .. })
        ));
        assert_eq!(router.applied().await.unwrap(), RouteTable::empty(Slot::Blue));
        router.apply(&table).await.unwrap();
        assert_eq!(handle.current(), table);
        assert_eq!(handle.history(), vec![table.clone()]);
        assert_eq!(handle.refused(), vec![table.clone()]);

        let counters = handle.counters();
        assert_eq!(counters[Slot::Blue.index()].version, "v1");
        handle.add_traffic(Slot::Blue, 100, 7);
        let c = router.counters().await.unwrap();
        assert_eq!((c[0].requests, c[0].server_errors), (100, 7));

        handle.drop_table();
        assert!(router.reconcile(&table).await.unwrap());
        assert!(!router.reconcile(&table).await.unwrap());
        assert_eq!(handle.history().len(), 2);
    }
}
