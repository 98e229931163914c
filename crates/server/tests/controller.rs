#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The controller's paths with in-process fakes: the real [`Controller`] over a
//! [`FakePlatform`] (instances are tiny HTTP servers in this process), a [`FakeRouter`] (tables
//! and counters in memory), a [`MemoryStore`] and a [`ManualClock`]. Analysis windows fall due
//! when the test moves the clock; the controller's own tick is 5 ms of real time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{route_table, Command, Phase, Rollout};
use cutover_core::{Clock, ManualClock, RolloutPolicy, RouteTable, Slot, Step, Timestamp};
use cutover_platform::Platform;
use cutover_router::Router;
use cutover_server::checks::ReadinessConfig;
use cutover_server::controller::{
    Controller, ControllerError, DeployRequest, Deps, ManagedConfig, ReleaseTemplate,
};
use cutover_server::gates::NoGates;
use cutover_store::{MemoryStore, Store, StoredEvent};
use cutover_test_support::fakes::{
    FakePlatform, FakePlatformHandle, FakeRouter, FakeRouterHandle, PlatformCall, KILLED,
};
use cutover_test_support::wait_until;
use tokio_util::sync::CancellationToken;

const APP: &str = "web";
/// How long any one condition may take to come true.
const DEADLINE: Duration = Duration::from_secs(20);
/// The analysis window of [`policy`]; each canary step lasts two of them.
const INTERVAL_MS: u64 = 1_000;
/// Healthy traffic of one window: (requests, 5xx) of the canary and of the baseline.
const HEALTHY_CANARY: (u64, u64) = (500, 0);
const HEALTHY_BASELINE: (u64, u64) = (5_000, 0);

/// Two canary steps of two windows each (10 %, then 50 %), then promotion; a rollback window
/// long enough that moving the clock in a test never ends it by accident.
fn policy() -> RolloutPolicy {
    RolloutPolicy {
        steps: vec![
            Step::new(1_000, 2 * INTERVAL_MS),
            Step::new(5_000, 2 * INTERVAL_MS),
            Step::new(10_000, 0),
        ],
        analysis_interval_ms: INTERVAL_MS,
        rollback_window_ms: 3_600_000,
        readiness_deadline_ms: 30_000,
        ..RolloutPolicy::default()
    }
}

fn config() -> ManagedConfig {
    ManagedConfig {
        release: ReleaseTemplate {
            command: "fake-app --port {port}".into(),
            ..ReleaseTemplate::default()
        },
        readiness: ReadinessConfig {
            interval_ms: 10,
            timeout_ms: 1_000,
            ..ReadinessConfig::default()
        },
        rollout: policy(),
        stop_grace_ms: 100,
        ..ManagedConfig::default()
    }
}

/// A controller over the fakes, and the handles to drive them.
struct Rig {
    controller: Arc<Controller>,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    platform: FakePlatformHandle,
    router: FakeRouterHandle,
    shutdown: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Rig {
    async fn start() -> Rig {
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let store = Arc::new(MemoryStore::new());
        let platform = FakePlatform::new();
        let router = FakeRouter::new();
        let (platform_handle, router_handle) = (platform.handle(), router.handle());
        let shutdown = CancellationToken::new();
        let deps_clock: Arc<dyn Clock> = clock.clone();
        let deps_store: Arc<dyn Store> = store.clone();
        let deps_platform: Arc<dyn Platform> = Arc::new(platform);
        let deps = Deps {
            clock: deps_clock,
            store: deps_store,
            platform: deps_platform,
            tick: Duration::from_millis(5),
            shutdown: shutdown.clone(),
            gates: Arc::new(NoGates),
        };
        let router: Arc<dyn Router> = Arc::new(router);
        let controller = Controller::start(APP, config(), router, deps).await.unwrap();
        Rig {
            controller,
            clock,
            store,
            platform: platform_handle,
            router: router_handle,
            shutdown,
        }
    }

    async fn deploy(&self, version: &str) -> u64 {
        self.controller
            .deploy(DeployRequest {
                version: version.into(),
                ..DeployRequest::default()
            })
            .await
            .unwrap()
    }

    /// The current (or last) rollout.
    async fn rollout(&self) -> Rollout {
        self.controller
            .state()
            .await
            .rollout
            .expect("the app has had a rollout")
    }

    async fn phase_name(&self) -> &'static str {
        match self.controller.state().await.rollout {
            Some(r) => r.phase.name(),
            None => "none",
        }
    }

    async fn wait_phase(&self, name: &str) {
        wait_until(&format!("phase {name}"), DEADLINE, || async {
            self.phase_name().await == name
        })
        .await;
    }

    /// The table the state calls for.
    async fn wanted_table(&self) -> RouteTable {
        route_table(&self.controller.state().await)
    }

    fn events(&self, rollout: u64) -> Vec<StoredEvent> {
        self.store.events(APP, Some(rollout), 0, 10_000).unwrap()
    }

    fn kinds(&self, rollout: u64) -> Vec<String> {
        self.events(rollout)
            .into_iter()
            .map(|e| e.event.kind().to_string())
            .collect()
    }

    /// Deploys `version` as the app's first release (nothing live: promoted at once) and ends
    /// its rollback window, so the next deploy goes through the canary steps.
    async fn first_release(&self, version: &str) -> u64 {
        let id = self.deploy(version).await;
        self.wait_phase("promoted").await;
        self.controller.command(Command::Promote).await.unwrap();
        self.wait_phase("succeeded").await;
        id
    }

    /// One analysis window: `canary` and `baseline` traffic (requests, 5xx) on the router's
    /// counters, then the clock past the window's end; returns once the controller has judged it
    /// (every judged window changes the phase, if only its `window_started_at`). Reading the
    /// state waits for the transition's actions, so the next window's first reading is taken.
    async fn judge_window(&self, canary: (u64, u64), baseline: (u64, u64)) {
        let before = self.rollout().await;
        self.router.add_traffic(before.target, canary.0, canary.1);
        self.router
            .add_traffic(before.target.other(), baseline.0, baseline.1);
        self.clock.advance(Duration::from_millis(INTERVAL_MS));
        wait_until("the window to be judged", DEADLINE, || async {
            self.rollout().await.phase != before.phase
        })
        .await;
    }

    /// Deploys `version` on top of the live release and waits for the first canary step.
    async fn deploy_to_canary(&self, version: &str) -> u64 {
        let id = self.deploy(version).await;
        self.wait_phase("canary").await;
        id
    }

    fn calls_of(&self, slot: Slot) -> Vec<PlatformCall> {
        self.platform
            .calls()
            .into_iter()
            .filter(|c| call_slot(c) == Some(slot))
            .collect()
    }

    async fn wait_slot_stopped(&self, slot: Slot) {
        wait_until(&format!("slot {slot} to be stopped"), DEADLINE, || async {
            self.platform.instances(APP, slot).is_empty()
                && self
                    .calls_of(slot)
                    .iter()
                    .any(|c| matches!(c, PlatformCall::Stop { .. }))
        })
        .await;
    }
}

fn call_slot(call: &PlatformCall) -> Option<Slot> {
    match call {
        PlatformCall::Start { slot, .. }
        | PlatformCall::Started { slot, .. }
        | PlatformCall::StartFailed { slot, .. }
        | PlatformCall::Stop { slot, .. } => Some(*slot),
        PlatformCall::Reconcile { .. } => None,
    }
}

/// `(live, canary weight)` of each table, consecutive repeats merged.
fn weights(tables: &[RouteTable]) -> Vec<(Slot, u16)> {
    let mut out: Vec<(Slot, u16)> = Vec::new();
    for t in tables {
        let w = (t.live, t.canary_weight_bp);
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out
}

/// Whether `wanted` occurs in `seq` in order (not necessarily adjacent).
fn in_order<T: PartialEq>(seq: &[T], wanted: &[T]) -> bool {
    let mut rest = wanted.iter().peekable();
    for item in seq {
        if rest.peek() == Some(&item) {
            rest.next();
        }
    }
    rest.peek().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_goes_through_provisioning_verifying_and_the_canary_steps_to_promotion() {
    let rig = Rig::start().await;
    let first = rig.first_release("v1").await;
    let first_kinds = rig.kinds(first);
    assert!(
        in_order(
            &first_kinds,
            &["deploy", "ready", "verified", "promoted", "succeeded"].map(String::from)
        ),
        "{first_kinds:?}"
    );
    assert_eq!(rig.controller.state().await.live, Slot::Green);

    // Provisioning lasts as long as the platform takes to start the release.
    rig.platform.hold_starts();
    let id = rig.deploy("v2").await;
    wait_until("v2 to be starting", DEADLINE, || async {
        rig.calls_of(Slot::Blue)
            .iter()
            .any(|c| matches!(c, PlatformCall::Start { version, .. } if version == "v2"))
    })
    .await;
    assert_eq!(rig.phase_name().await, "provisioning");
    assert!(
        rig.router.current().blue.backends.is_empty(),
        "nothing of v2 is routed while it starts"
    );
    rig.platform.release_starts();

    // Ready, verified (no smoke checks configured), then the first step.
    rig.wait_phase("canary").await;
    let state = rig.controller.state().await;
    let v2: Vec<SocketAddr> = rig
        .platform
        .instances(APP, Slot::Blue)
        .iter()
        .map(|i| i.addr)
        .collect();
    assert_eq!(state.blue.backends, v2);
    let table = rig.router.current();
    assert_eq!((table.live, table.canary_weight_bp), (Slot::Green, 1_000));
    assert_eq!(table.blue.backends, v2);
    assert_eq!(table.blue.version, "v2");

    // Healthy windows walk the steps; at most a generous number of them.
    for _ in 0..20 {
        if rig.phase_name().await != "canary" {
            break;
        }
        rig.judge_window(HEALTHY_CANARY, HEALTHY_BASELINE).await;
    }
    assert_eq!(rig.phase_name().await, "promoted", "{:?}", rig.rollout().await);

    let steps = weights(&rig.router.history());
    assert!(
        in_order(
            &steps,
            &[(Slot::Green, 1_000), (Slot::Green, 5_000), (Slot::Blue, 0)]
        ),
        "tables applied: {steps:?}"
    );
    assert_eq!(rig.router.current(), rig.wanted_table().await);
    let events = rig.events(id);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
    assert!(
        in_order(
            &kinds,
            &["deploy", "ready", "verified", "step", "decision", "step", "decision", "promoted"]
        ),
        "{kinds:?}"
    );
    for e in events.iter().filter(|e| e.event.kind() == "decision") {
        assert_eq!(
            e.event.data()["verdict"]["outcome"],
            "pass",
            "{}",
            e.event.message
        );
        // The message is the plain sentence, naming the versions; the statistics are data.
        assert!(e.event.message.contains("v2"), "{}", e.event.message);
        assert!(
            e.event.data()["verdict"]["reason"].is_string(),
            "{}",
            e.event.data()
        );
    }
    assert!(
        !kinds.contains(&"rolled_back") && !kinds.contains(&"paused"),
        "{kinds:?}"
    );

    // The rollback window ends: the old slot is retired.
    rig.controller.command(Command::Promote).await.unwrap();
    rig.wait_phase("succeeded").await;
    rig.wait_slot_stopped(Slot::Green).await;
    let table = rig.router.current();
    assert_eq!((table.live, table.weight_of(Slot::Blue)), (Slot::Blue, 10_000));
    assert!(table.green.backends.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_to_start_fails_the_rollout_with_the_reason() {
    let rig = Rig::start().await;
    rig.platform
        .fail_next_starts(1, "no such image: registry.example/web:v1");
    let id = rig.deploy("v1").await;
    rig.wait_phase("failed").await;
    let r = rig.rollout().await;
    let Phase::Failed { reason, .. } = &r.phase else {
        panic!("expected a failed rollout, got {:?}", r.phase);
    };
    assert!(
        reason.contains("no such image: registry.example/web:v1"),
        "{reason}"
    );
    assert!(reason.contains("v1"), "the reason names the version: {reason}");
    let failed = rig
        .events(id)
        .into_iter()
        .find(|e| e.event.kind() == "failed")
        .expect("a failed event");
    assert!(
        failed.event.message.contains("no such image"),
        "{}",
        failed.event.message
    );
    rig.wait_slot_stopped(Slot::Green).await;
    // No user was ever sent to the failed slot.
    assert!(rig
        .router
        .history()
        .iter()
        .all(|t| t.green.backends.is_empty() && t.weight_of(Slot::Green) == 0));

    // The controller goes on: the next deploy of the same version works.
    let again = rig.deploy("v1").await;
    assert_eq!(again, id + 1);
    rig.wait_phase("promoted").await;
    let starts = rig
        .calls_of(Slot::Green)
        .iter()
        .filter(|c| matches!(c, PlatformCall::Start { .. }))
        .count();
    assert_eq!(starts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_canary_rolls_back_to_the_old_slot() {
    let rig = Rig::start().await;
    rig.first_release("v1").await;
    rig.deploy_to_canary("v2").await;
    rig.judge_window(HEALTHY_CANARY, HEALTHY_BASELINE).await;
    assert_eq!(rig.phase_name().await, "canary");
    assert_eq!(rig.router.current().weight_of(Slot::Blue), 1_000);

    assert!(rig.platform.kill(APP, Slot::Blue, 0));
    // No clock needed: the controller watches the new slot's instances on every tick.
    rig.wait_phase("rolled_back").await;
    let r = rig.rollout().await;
    let Phase::RolledBack { reason, .. } = &r.phase else {
        panic!("expected a rollback, got {:?}", r.phase);
    };
    assert!(reason.contains("stopped running"), "{reason}");
    assert!(reason.contains(KILLED), "{reason}");

    let last = rig.router.history().last().cloned().expect("tables were applied");
    assert_eq!(last.live, Slot::Green);
    assert_eq!(last.weight_of(Slot::Green), 10_000);
    assert_eq!(last.weight_of(Slot::Blue), 0);
    assert!(last.blue.backends.is_empty());
    assert_eq!(last.green.version, "v1");
    assert_eq!(rig.router.current(), last);
    let state = rig.controller.state().await;
    assert_eq!(state.live, Slot::Green);
    assert!(state.blue.backends.is_empty());

    // The dead slot is stopped after the router's drain timeout.
    rig.wait_slot_stopped(Slot::Blue).await;
    assert!(
        !rig.platform.instances(APP, Slot::Green).is_empty(),
        "v1 keeps running"
    );
}

/// The first release has nothing before it: once live, `rollback` and `abort` are refused (409 in
/// the admin API, exit 3 in the CLI) and it keeps serving; when its instance dies it is not rolled
/// back onto the empty slot but started again, like any live slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_release_is_never_rolled_back_onto_an_empty_slot() {
    let rig = Rig::start().await;
    rig.deploy("v1").await;
    rig.wait_phase("promoted").await;
    for command in [Command::Rollback, Command::Abort] {
        match rig.controller.command(command).await {
            Err(ControllerError::Rejected(message)) => assert_eq!(
                message,
                "rollout #1 is the first release of web: there is nothing to roll back to; deploy another version instead"
            ),
            other => panic!("{command:?}: {other:?}"),
        }
    }
    assert_eq!(rig.phase_name().await, "promoted");
    let serving = rig.router.current();
    assert_eq!(
        (serving.live, serving.weight_of(Slot::Green)),
        (Slot::Green, 10_000)
    );
    assert_eq!(serving.green.version, "v1");

    assert!(rig.platform.kill(APP, Slot::Green, 0));
    rig.wait_phase("succeeded").await;
    wait_until("v1 started again", DEADLINE, || async {
        rig.platform
            .instances(APP, Slot::Green)
            .iter()
            .any(|i| i.exited.is_none())
    })
    .await;
    let state = rig.controller.state().await;
    assert_eq!(state.live, Slot::Green);
    assert_eq!(state.green.version(), Some("v1"));
    assert_eq!(rig.router.current().weight_of(Slot::Green), 10_000);
    assert!(
        rig.kinds(1).iter().all(|k| k != "rolled_back"),
        "{:?}",
        rig.kinds(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_refuses_applies_gets_the_table_once_it_accepts_again() {
    let rig = Rig::start().await;
    let accepted_before = rig.router.history().len();
    rig.router.refuse_next_applies(u32::MAX);

    // The rollout goes on without the router ...
    rig.deploy("v1").await;
    rig.wait_phase("promoted").await;
    let wanted = rig.wanted_table().await;
    assert_eq!(wanted.live, Slot::Green);
    assert_eq!(wanted.green.version, "v1");
    assert!(
        rig.router.refused().contains(&wanted),
        "the promotion's table was offered to the router"
    );
    assert_ne!(rig.router.current(), wanted);
    assert_eq!(rig.router.history().len(), accepted_before);
    // ... and the controller keeps serving.
    let status = rig.controller.status().await.unwrap();
    assert_eq!(status.live, Slot::Green);

    rig.router.accept_applies();
    // After failed attempts the controller backs off (1 s, 2 s, ... up to 30 s of its clock).
    wait_until("the router to route by the state's table", DEADLINE, || async {
        rig.clock.advance(Duration::from_millis(500));
        rig.router.current() == wanted
    })
    .await;
    assert_eq!(rig.router.history().last(), Some(&wanted));
    assert_eq!(rig.phase_name().await, "promoted");
    assert_eq!(rig.wanted_table().await, wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_lost_its_table_gets_it_again_on_a_later_tick() {
    let rig = Rig::start().await;
    rig.first_release("v1").await;
    let wanted = rig.wanted_table().await;
    assert_eq!(rig.router.current(), wanted);
    let accepted_before = rig.router.history().len();

    // (Not asserted here that the router shows another table now: the controller may already
    // have applied it again.)
    rig.router.drop_table();
    wait_until("the table to be applied again", DEADLINE, || async {
        rig.router.current() == wanted
    })
    .await;
    assert_eq!(
        rig.router.history()[accepted_before..].to_vec(),
        vec![wanted.clone()],
        "applied again, once"
    );

    // The same mid-canary, with the canary's weight.
    rig.deploy_to_canary("v2").await;
    let wanted = rig.wanted_table().await;
    assert_eq!(wanted.weight_of(Slot::Blue), 1_000);
    let accepted_before = rig.router.history().len();
    rig.router.drop_table();
    wait_until("the canary's table to be applied again", DEADLINE, || async {
        rig.router.current() == wanted && rig.router.history().len() > accepted_before
    })
    .await;
    assert_eq!(rig.router.history().last(), Some(&wanted));
    assert_eq!(rig.phase_name().await, "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_provisioning_result_after_an_abort_is_ignored_and_its_instances_stopped() {
    let rig = Rig::start().await;
    rig.platform.hold_starts();
    let id = rig.deploy("v1").await;
    wait_until("v1 to be starting", DEADLINE, || async {
        rig.calls_of(Slot::Green)
            .iter()
            .any(|c| matches!(c, PlatformCall::Start { .. }))
    })
    .await;
    rig.controller.command(Command::Abort).await.unwrap();
    assert_eq!(rig.phase_name().await, "aborted");
    // The abort stops the slot (after the drain timeout), while the start still hangs.
    wait_until("the abort to stop the slot", DEADLINE, || async {
        rig.calls_of(Slot::Green)
            .iter()
            .any(|c| matches!(c, PlatformCall::Stop { .. }))
    })
    .await;

    // The start completes after all: its instances must not outlive the rollout.
    rig.platform.release_starts();
    wait_until("the late instances to be stopped", DEADLINE, || async {
        let calls = rig.calls_of(Slot::Green);
        let started = calls
            .iter()
            .position(|c| matches!(c, PlatformCall::Started { .. }));
        started.is_some_and(|i| calls[i..].iter().any(|c| matches!(c, PlatformCall::Stop { .. })))
            && rig.platform.instances(APP, Slot::Green).is_empty()
    })
    .await;
    let late: Vec<SocketAddr> = rig
        .calls_of(Slot::Green)
        .into_iter()
        .find_map(|c| match c {
            PlatformCall::Started { addrs, .. } => Some(addrs),
            _ => None,
        })
        .expect("the late start completed");
    for addr in late {
        wait_until(
            &format!("late instance {addr} to stop answering"),
            DEADLINE,
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }

    // The result changed nothing: still aborted, no backends, never routed.
    let state = rig.controller.state().await;
    assert!(matches!(
        state.rollout.as_ref().map(|r| &r.phase),
        Some(Phase::Aborted { .. })
    ));
    assert!(state.green.backends.is_empty());
    assert!(!rig.kinds(id).iter().any(|k| k == "ready"), "{:?}", rig.kinds(id));
    assert!(rig.router.history().iter().all(|t| t.green.backends.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_rolls_back_a_canary_with_many_server_errors() {
    let rig = Rig::start().await;
    rig.first_release("v1").await;
    let id = rig.deploy_to_canary("v2").await;

    // Half the canary's answers are 5xx, a thousandth of the baseline's.
    for _ in 0..6 {
        if rig.phase_name().await != "canary" {
            break;
        }
        rig.judge_window((400, 200), (4_000, 4)).await;
    }
    let r = rig.rollout().await;
    let Phase::RolledBack { reason, .. } = &r.phase else {
        panic!("expected a rollback by the judge, got {:?}", r.phase);
    };
    assert!(reason.contains("of requests with a 5xx"), "{reason}");
    assert!(r.failures >= 1, "{r:?}");
    let decisions: Vec<_> = rig
        .events(id)
        .into_iter()
        .filter(|e| e.event.kind() == "decision")
        .map(|e| e.event)
        .collect();
    let last = decisions.last().expect("a decision");
    assert_eq!(last.data()["verdict"]["outcome"], "fail", "{decisions:?}");
    assert!(last.message.ends_with("rolling back"), "{}", last.message);
    assert!(rig.kinds(id).iter().any(|k| k == "rolled_back"));

    // All traffic back on v1, and v2 stopped.
    let table = rig.router.current();
    assert_eq!(table.live, Slot::Green);
    assert_eq!(table.weight_of(Slot::Green), 10_000);
    assert!(table.blue.backends.is_empty());
    rig.wait_slot_stopped(Slot::Blue).await;
}

/// A start of an aborted rollout that completes while the next rollout provisions the same slot
/// must not hand its instances (of the wrong version) to the new rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_start_of_an_aborted_rollout_never_becomes_the_next_rollouts_backends() {
    let rig = Rig::start().await;
    rig.platform.hold_starts();
    rig.deploy("v1").await;
    wait_until("v1 to be starting", DEADLINE, || async {
        rig.calls_of(Slot::Green)
            .iter()
            .any(|c| matches!(c, PlatformCall::Start { version, .. } if version == "v1"))
    })
    .await;
    rig.controller.command(Command::Abort).await.unwrap();
    // v2's start finishes well after v1's: v1's result arrives while v2 provisions.
    rig.platform.set_start_delay(Duration::from_millis(1_500));
    rig.deploy("v2").await;
    wait_until("v2 to be starting", DEADLINE, || async {
        rig.calls_of(Slot::Green)
            .iter()
            .any(|c| matches!(c, PlatformCall::Start { version, .. } if version == "v2"))
    })
    .await;
    rig.platform.release_starts();
    rig.wait_phase("promoted").await;
    let v2_addrs: Vec<SocketAddr> = rig
        .calls_of(Slot::Green)
        .into_iter()
        .find_map(|c| match c {
            PlatformCall::Started { version, addrs, .. } if version == "v2" => Some(addrs),
            _ => None,
        })
        .expect("v2 started");
    let state = rig.controller.state().await;
    assert_eq!(state.green.backends, v2_addrs, "{:?}", rig.calls_of(Slot::Green));
    assert_eq!(rig.rollout().await.release.version, "v2");
    assert!(
        !rig.platform.instances(APP, Slot::Green).is_empty(),
        "v2 still runs"
    );
}

/// A store that fails every commit while `failing` is set, as a full disk does.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
    failed_commits: std::sync::atomic::AtomicUsize,
}

impl Store for FlakyStore {
    fn load(&self, app: &str) -> Result<Option<cutover_core::rollout::AppState>, cutover_store::StoreError> {
        self.inner.load(app)
    }
    fn apps(&self) -> Result<Vec<String>, cutover_store::StoreError> {
        self.inner.apps()
    }
    fn commit_ending(
        &self,
        state: &cutover_core::rollout::AppState,
        events: &[cutover_core::rollout::Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, cutover_store::StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            self.failed_commits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(cutover_store::StoreError::Io(
                "No space left on device (os error 28)".into(),
            ));
        }
        self.inner.commit_ending(state, events, ended)
    }
    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, cutover_store::StoreError> {
        self.inner.events(app, rollout_id, after, limit)
    }
    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, cutover_store::StoreError> {
        self.inner.rollouts(app, limit)
    }
    fn flags(&self) -> Result<cutover_store::FlagSet, cutover_store::StoreError> {
        self.inner.flags()
    }
    fn change_flag(
        &self,
        change: &cutover_store::FlagChange,
    ) -> Result<cutover_store::FlagChangeRecord, cutover_store::StoreError> {
        self.inner.change_flag(change)
    }
    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<cutover_store::FlagChangeRecord>, cutover_store::StoreError> {
        self.inner.flag_audit(key, after_seq, limit)
    }

    fn ramps(&self) -> Result<Vec<cutover_flags::ramp::Ramp>, cutover_store::StoreError> {
        self.inner.ramps()
    }

    fn save_ramp(&self, ramp: &cutover_flags::ramp::Ramp) -> Result<(), cutover_store::StoreError> {
        self.inner.save_ramp(ramp)
    }
}

/// Log lines written while a test runs, for counting.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A full disk fails every commit of a window that falls due, on every 5 ms tick: the failure
/// is logged once as an error, then once a minute with the count not logged, traffic stays on
/// the last table, and the rollout moves on once the disk has room again.
#[tokio::test]
async fn a_store_that_keeps_failing_is_logged_once_then_once_a_minute() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::new(),
        failing: false.into(),
        failed_commits: 0.into(),
    });
    let platform = FakePlatform::new();
    let router = FakeRouter::new();
    let router_handle = router.handle();
    let shutdown = CancellationToken::new();
    let deps = Deps {
        clock: clock.clone(),
        store: store.clone(),
        platform: Arc::new(platform),
        tick: Duration::from_millis(5),
        shutdown: shutdown.clone(),
        gates: Arc::new(NoGates),
    };
    let controller = Controller::start(APP, config(), Arc::new(router), deps)
        .await
        .unwrap();
    let phase = || async { controller.state().await.rollout.map(|r| r.phase.name()) };
    controller
        .deploy(DeployRequest {
            version: "v1".into(),
            ..DeployRequest::default()
        })
        .await
        .unwrap();
    wait_until("v1 promoted", DEADLINE, || async {
        phase().await == Some("promoted")
    })
    .await;
    controller.command(Command::Promote).await.unwrap();
    controller
        .deploy(DeployRequest {
            version: "v2".into(),
            ..DeployRequest::default()
        })
        .await
        .unwrap();
    wait_until("v2 in canary", DEADLINE, || async {
        phase().await == Some("canary")
    })
    .await;
    let table = router_handle.current();
    let target = controller.state().await.rollout.unwrap().target;

    // The disk fills: the window that falls due cannot be saved, tick after tick.
    store.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    router_handle.add_traffic(target, HEALTHY_CANARY.0, HEALTHY_CANARY.1);
    router_handle.add_traffic(target.other(), HEALTHY_BASELINE.0, HEALTHY_BASELINE.1);
    clock.advance(Duration::from_millis(INTERVAL_MS));
    wait_until("many failed commits", DEADLINE, || async {
        store.failed_commits.load(std::sync::atomic::Ordering::SeqCst) >= 50
    })
    .await;
    const LINE: &str = "cannot save the state";
    assert_eq!(captured.lines_with(LINE), 1, "logged once, not on every tick");
    assert_eq!(captured.lines_with("ERROR"), 1);
    assert_eq!(router_handle.current(), table, "traffic stays as it was");

    // A minute later it is logged again, saying how many were not.
    clock.advance(Duration::from_secs(61));
    wait_until("the failure logged again", DEADLINE, || async {
        captured.lines_with(LINE) == 2
    })
    .await;
    assert_eq!(
        captured.lines_with("similar_errors_not_logged=0"),
        1,
        "the first one"
    );
    let failed = store.failed_commits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(failed > 50);

    // Room again: the rollout moves on and says saving works again.
    store.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("saving works again", DEADLINE, || async {
        captured.lines_with("saving the state works again") == 1
    })
    .await;
    assert_eq!(captured.lines_with(LINE), 2);
    shutdown.cancel();
}
