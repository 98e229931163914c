#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The rollout state machine in simulation: time is data, so whole rollouts run in microseconds.

use std::net::SocketAddr;

use cutover_core::judge::{JudgeConfig, SlotWindow, WindowStats};
use cutover_core::rollout::{
    handle, route_table, window_due, Action, AppState, Command, Event, Input, Phase, Rejected,
};
use cutover_core::{ReleaseSpec, RolloutPolicy, Slot, Step, Timestamp};

/// Drives the engine like the controller does: carries out actions by answering with inputs,
/// judges windows from a traffic model, advances a simulated clock.
struct Sim {
    state: AppState,
    now: Timestamp,
    /// Canary and baseline of each window: (requests, errors, p99 ms).
    traffic: Box<dyn FnMut(u64) -> WindowStats>,
    routes: Vec<(u16, Slot)>,
    /// The table the router serves: the last one applied.
    router: Option<cutover_core::RouteTable>,
    stopped: Vec<Slot>,
    log: Vec<String>,
    /// Every event, for what the log's sentences leave out (a decision's verdict).
    events: Vec<Event>,
    provision_ok: bool,
    verify_ok: bool,
    gate_failure: Option<String>,
    gate_fails_at: Option<usize>,
    gates_asked: Vec<usize>,
    confirmations_asked: u32,
    /// Expand runs asked for; answered by the test.
    migrations_asked: u32,
    /// Provisions asked for.
    provisions_asked: u32,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn healthy(_: u64) -> WindowStats {
    let w = |requests| SlotWindow {
        requests,
        errors: 0,
        p99_ms: Some(20.0),
        ..SlotWindow::default()
    };
    WindowStats {
        canary: w(200),
        baseline: Some(w(2000)),
        duration_ms: 10_000,
        latency: None,
        unavailable: None,
        external: Vec::new(),
    }
}

fn failing(_: u64) -> WindowStats {
    WindowStats {
        canary: SlotWindow {
            requests: 200,
            errors: 20,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        },
        baseline: Some(SlotWindow {
            requests: 2000,
            errors: 2,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        }),
        duration_ms: 10_000,
        latency: None,
        unavailable: None,
        external: Vec::new(),
    }
}

fn quiet(_: u64) -> WindowStats {
    WindowStats {
        canary: SlotWindow {
            requests: 3,
            errors: 0,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        },
        baseline: None,
        duration_ms: 10_000,
        latency: None,
        unavailable: None,
        external: Vec::new(),
    }
}

impl Sim {
    /// An app with v1 live in blue.
    fn new(traffic: fn(u64) -> WindowStats) -> Sim {
        let mut state = AppState::new("web");
        state.blue.release = Some(ReleaseSpec::new("v1", "run v1"));
        state.blue.backends = vec![addr(9001)];
        Sim {
            router: Some(route_table(&state)),
            state,
            now: Timestamp(1_700_000_000_000),
            traffic: Box::new(traffic),
            routes: Vec::new(),
            stopped: Vec::new(),
            log: Vec::new(),
            events: Vec::new(),
            provision_ok: true,
            verify_ok: true,
            gate_failure: None,
            gate_fails_at: None,
            gates_asked: Vec::new(),
            confirmations_asked: 0,
            migrations_asked: 0,
            provisions_asked: 0,
        }
    }

    fn send(&mut self, input: Input) -> Result<(), String> {
        let t = handle(&self.state, input, self.now).map_err(|e| e.0)?;
        self.state = t.state;
        for e in &t.events {
            self.log.push(format!("{}: {}", e.kind(), e.message));
        }
        self.events.extend(t.events.iter().cloned());
        // Whatever a transition applies on the way, the router ends up serving the derived table.
        let last_applied = t.actions.iter().rev().find_map(|a| match a {
            Action::ApplyRoutes(table) => Some(table.clone()),
            _ => None,
        });
        if let Some(table) = last_applied {
            assert_eq!(
                table,
                route_table(&self.state),
                "applied routes are the derived ones"
            );
            self.router = Some(table);
        }
        // Any change of the derived table is applied by the transition that made it, so the
        // router never serves a stale table until a reconcile notices.
        if let Some(router) = &self.router {
            assert_eq!(
                *router,
                route_table(&self.state),
                "the state's table changed without an ApplyRoutes: {:#?}",
                self.log.last()
            );
        }
        for action in t.actions {
            match action {
                Action::ApplyRoutes(table) => {
                    table.validate().unwrap();
                    self.routes.push((table.canary_weight_bp, table.live));
                }
                Action::Migrate { .. } => self.migrations_asked += 1,
                Action::Provision { .. } => {
                    self.provisions_asked += 1;
                    let reply = if self.provision_ok {
                        Input::Provisioned {
                            backends: vec![addr(9002)],
                        }
                    } else {
                        Input::ProvisionFailed {
                            reason: "never became ready: last probe 503".into(),
                        }
                    };
                    self.send(reply)?;
                }
                Action::Verify { .. } => {
                    let reply = if self.verify_ok {
                        Input::VerifyPassed {
                            detail: "2 checks".into(),
                        }
                    } else {
                        Input::VerifyFailed {
                            reason: "GET /api/hello: expected 200, got 500".into(),
                        }
                    };
                    self.send(reply)?;
                }
                Action::Stop { slot, .. } => self.stopped.push(slot),
                Action::CheckGates { step, .. } => {
                    let reply = match &self.gate_failure {
                        Some(reason) if self.gate_fails_at == Some(step) => Input::GatesFailed {
                            step,
                            reason: reason.clone(),
                        },
                        _ => Input::GatesPassed { step },
                    };
                    self.gates_asked.push(step);
                    self.send(reply)?;
                }
                Action::ConfirmPromotion => self.confirmations_asked += 1,
            }
        }
        Ok(())
    }

    fn deploy(&mut self, policy: RolloutPolicy) {
        self.send(Input::Deploy {
            release: ReleaseSpec::new("v2", "run v2"),
            policy,
            forced: false,
            migrate: false,
        })
        .unwrap();
    }

    /// Advances time by `ms` in 1 s ticks, judging windows as they fall due.
    fn run_for(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        while self.now < end {
            self.now = self.now.plus_ms(1000);
            if window_due(&self.state, self.now) {
                let stats = (self.traffic)(self.now.0);
                self.send(Input::Window(stats)).unwrap();
            } else {
                self.send(Input::Tick).unwrap();
            }
        }
    }

    fn decisions(&self) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.kind() == "decision")
            .cloned()
            .collect()
    }

    fn phase(&self) -> &'static str {
        self.state
            .rollout
            .as_ref()
            .map(|r| r.phase.name())
            .unwrap_or("none")
    }

    fn command(&mut self, c: Command) -> Result<(), String> {
        self.send(Input::Command(c))
    }
}

fn policy() -> RolloutPolicy {
    RolloutPolicy {
        steps: vec![
            Step::new(500, 60_000),
            Step::new(2_500, 60_000),
            Step::new(5_000, 60_000),
            Step::new(10_000, 0),
        ],
        analysis_interval_ms: 10_000,
        rollback_window_ms: 600_000,
        ..RolloutPolicy::default()
    }
}

#[test]
fn a_healthy_release_goes_through_every_step_and_retires_the_old_slot() {
    let mut sim = Sim::new(healthy);
    sim.deploy(policy());
    assert_eq!(sim.phase(), "canary");
    sim.run_for(30 * 60_000);
    assert_eq!(sim.phase(), "succeeded", "{:#?}", sim.log);
    let weights: Vec<u16> = sim.routes.iter().map(|r| r.0).collect();
    assert!(weights.contains(&500) && weights.contains(&2_500) && weights.contains(&5_000));
    assert_eq!(sim.state.live, Slot::Green);
    assert_eq!(
        sim.stopped,
        [Slot::Blue],
        "the old slot is retired after the rollback window"
    );
    assert!(sim.state.blue.backends.is_empty());
    assert_eq!(route_table(&sim.state).weight_of(Slot::Green), 10_000);
    // Users only ever move towards the new version until promotion.
    let mut last = 0;
    for (w, live) in &sim.routes {
        let share_new = if *live == Slot::Blue { *w } else { 10_000 - *w };
        assert!(
            share_new >= last,
            "traffic on the new version went from {last} to {share_new}"
        );
        last = share_new;
    }
}

#[test]
fn a_failing_canary_is_rolled_back_after_the_failure_limit() {
    let mut sim = Sim::new(failing);
    let mut p = policy();
    p.judge = JudgeConfig::threshold();
    sim.deploy(p);
    sim.run_for(10_000);
    assert_eq!(
        sim.phase(),
        "canary",
        "one failed window is tolerated with failure_limit 1"
    );
    sim.run_for(10_000);
    assert_eq!(sim.phase(), "rolled_back", "{:#?}", sim.log);
    let table = route_table(&sim.state);
    assert_eq!((table.live, table.weight_of(Slot::Green)), (Slot::Blue, 0));
    assert_eq!(sim.stopped, [Slot::Green]);
    let Phase::RolledBack { reason, .. } = &sim.state.rollout.as_ref().unwrap().phase else {
        unreachable!()
    };
    // In plain words; the statistics are in the decision's data.
    assert!(
        reason.contains("v2 fails 10.0 % of requests with a 5xx"),
        "{reason}"
    );
    let decisions = sim.decisions();
    assert_eq!(
        decisions
            .iter()
            .map(|d| d.data()["verdict"]["outcome"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ["fail", "fail"]
    );
    assert_eq!(
        decisions[0].message,
        "v2 fails 10.0 % of requests with a 5xx, above the 5 % ceiling (v1 0.10 %): failed window 1 of 2, holding at 5 %"
    );
    assert!(
        decisions[1]
            .message
            .ends_with(": failed window 2 of 2, rolling back"),
        "{}",
        decisions[1].message
    );
    // The statistics stay in the data, with the plain sentence beside them.
    let verdict = &decisions[1].data()["verdict"];
    assert!(
        verdict["reason"]
            .as_str()
            .unwrap()
            .contains("above baseline 0.10 % × 2 + 1.00 %"),
        "{verdict}"
    );
    assert_eq!(verdict["summary"].as_str(), Some(decisions[1].message.as_str()));
}

#[test]
fn the_sequential_judge_rolls_back_at_once_on_strong_evidence() {
    let mut sim = Sim::new(failing);
    sim.deploy(policy());
    sim.run_for(10_000);
    assert_eq!(sim.phase(), "rolled_back", "{:#?}", sim.log);
    let decisions = sim.decisions();
    let decision = decisions.last().expect("a decision");
    assert_eq!(
        decision.message,
        "v2 fails 10.0 % of requests with a 5xx, v1 0.10 %: rolling back"
    );
    let verdict = &decision.data()["verdict"];
    assert_eq!(
        (verdict["outcome"].as_str(), verdict["conclusive"].as_bool()),
        (Some("fail"), Some(true))
    );
    let statistics = verdict["reason"].as_str().unwrap();
    assert!(statistics.contains("5xx: canary 10.00 %"), "{statistics}");
    assert!(statistics.contains("e-value"), "{statistics}");
}

#[test]
fn early_step_completion_moves_on_once_the_canary_is_shown_not_worse() {
    let mut sim = Sim::new(|_| {
        let w = |requests, errors| SlotWindow {
            requests,
            errors,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        };
        WindowStats {
            canary: w(5000, 50),
            baseline: Some(w(5000, 50)),
            duration_ms: 10_000,
            latency: None,
            unavailable: None,
            external: Vec::new(),
        }
    });
    let mut p = policy();
    p.judge.sequential.early_step_completion = true;
    p.judge.sequential.latency_quantiles = vec![];
    sim.deploy(p);
    // Each step lasts a minute; with the evidence it ends well before.
    sim.run_for(150_000);
    assert!(matches!(sim.phase(), "promoted" | "succeeded"), "{:#?}", sim.log);
    let early = sim
        .decisions()
        .into_iter()
        .find(|d| d.data()["verdict"]["complete_step"] == true)
        .expect("a decision ended a step early");
    assert!(
        early.message.contains("so the step can end early: step 1 passed"),
        "{}",
        early.message
    );
    assert!(
        early.data()["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains("step complete"),
        "{}",
        early.data()
    );
}

#[test]
fn step_gates_are_asked_before_every_step_and_a_refusal_rolls_back() {
    let mut sim = Sim::new(healthy);
    let mut p = policy();
    p.gate_steps = true;
    sim.gate_failure = Some("2 firing alerts match severity=\"page\": HighErrorRate".into());
    sim.gate_fails_at = Some(1);
    sim.deploy(p);
    assert_eq!(sim.gates_asked, [0]);
    assert_eq!(route_table(&sim.state).canary_weight_bp, 500);
    sim.run_for(60_000);
    assert_eq!(sim.gates_asked, [0, 1]);
    assert_eq!(sim.phase(), "rolled_back");
    let Phase::RolledBack { reason, .. } = &sim.state.rollout.as_ref().unwrap().phase else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "step gate before step 2: 2 firing alerts match severity=\"page\": HighErrorRate"
    );
    assert_eq!(route_table(&sim.state).weight_of(Slot::Blue), 10_000);
}

#[test]
fn promotion_waits_for_confirmation() {
    let mut sim = Sim::new(healthy);
    let mut p = policy();
    p.confirm_promotion = true;
    sim.deploy(p.clone());
    sim.run_for(3 * 60_000 + 10_000);
    assert_eq!(sim.phase(), "awaiting_confirmation");
    assert_eq!(sim.confirmations_asked, 1);
    assert_eq!(
        route_table(&sim.state).canary_weight_bp,
        5_000,
        "the last step's weight is held"
    );
    sim.send(Input::ConfirmationTimedOut {
        reason: "no answer from release-bot within 600 s".into(),
    })
    .unwrap();
    assert_eq!(
        sim.phase(),
        "awaiting_confirmation",
        "a timeout neither promotes nor rolls back"
    );
    sim.send(Input::PromotionConfirmed {
        detail: "release-bot answered 200".into(),
    })
    .unwrap();
    assert_eq!(sim.phase(), "promoted");

    let mut sim = Sim::new(healthy);
    sim.deploy(p);
    sim.run_for(3 * 60_000 + 10_000);
    sim.send(Input::PromotionRejected {
        reason: "release-bot answered 403".into(),
    })
    .unwrap();
    assert_eq!(sim.phase(), "rolled_back");
}

#[test]
fn too_little_traffic_extends_the_step_then_pauses_for_a_person() {
    let mut sim = Sim::new(quiet);
    sim.deploy(policy());
    sim.run_for(30_000);
    assert_eq!(
        sim.phase(),
        "canary",
        "three inconclusive windows extend the step"
    );
    sim.run_for(10_000);
    assert_eq!(sim.phase(), "paused", "{:#?}", sim.log);
    assert_eq!(
        route_table(&sim.state).canary_weight_bp,
        500,
        "a paused rollout keeps its weight"
    );
    sim.traffic = Box::new(healthy);
    sim.command(Command::Resume).unwrap();
    sim.run_for(30 * 60_000);
    assert_eq!(sim.phase(), "succeeded");
}

#[test]
fn a_manual_pause_step_waits_for_a_person() {
    let mut sim = Sim::new(healthy);
    let mut p = policy();
    p.steps[0].pause = true;
    sim.deploy(p);
    sim.run_for(5 * 60_000);
    assert_eq!(sim.phase(), "paused");
    assert_eq!(route_table(&sim.state).canary_weight_bp, 500);
    sim.command(Command::Resume).unwrap();
    assert_eq!(
        route_table(&sim.state).canary_weight_bp,
        2_500,
        "resume after a pause step moves on"
    );
}

#[test]
fn plain_blue_green_promotes_after_verification_and_can_roll_back_instantly() {
    let mut sim = Sim::new(healthy);
    sim.deploy(RolloutPolicy::blue_green());
    assert_eq!(sim.phase(), "promoted");
    assert_eq!(sim.state.live, Slot::Green);
    sim.run_for(60_000);
    sim.command(Command::Rollback).unwrap();
    assert_eq!(sim.phase(), "rolled_back");
    assert_eq!(sim.state.live, Slot::Blue);
    assert_eq!(
        sim.state.blue.backends,
        [addr(9001)],
        "the old slot was kept warm"
    );
}

#[test]
fn a_regression_in_the_rollback_window_rolls_back() {
    let mut sim = Sim::new(healthy);
    sim.deploy(RolloutPolicy::blue_green());
    sim.traffic = Box::new(|_| WindowStats {
        canary: SlotWindow {
            requests: 500,
            errors: 100,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        },
        baseline: None,
        duration_ms: 10_000,
        latency: None,
        unavailable: None,
        external: Vec::new(),
    });
    sim.run_for(20_000);
    assert_eq!(sim.phase(), "rolled_back", "{:#?}", sim.log);
    assert_eq!(sim.state.live, Slot::Blue);
}

#[test]
fn provisioning_and_verification_failures_shift_no_traffic() {
    for (provision_ok, verify_ok, reason) in [
        (false, true, "never became ready"),
        (true, false, "expected 200, got 500"),
    ] {
        let mut sim = Sim::new(healthy);
        sim.provision_ok = provision_ok;
        sim.verify_ok = verify_ok;
        sim.deploy(policy());
        assert_eq!(sim.phase(), "failed");
        let Phase::Failed { reason: got, .. } = &sim.state.rollout.as_ref().unwrap().phase else {
            unreachable!()
        };
        assert!(got.contains(reason), "{got}");
        assert!(
            sim.routes.iter().all(|(w, live)| *w == 0 && *live == Slot::Blue),
            "{:?}",
            sim.routes
        );
        assert_eq!(sim.stopped, [Slot::Green]);
    }
}

#[test]
fn the_readiness_deadline_fails_a_release_that_never_reports() {
    let mut sim = Sim::new(healthy);
    // The platform never answers: provisioning stays pending.
    let t = handle(
        &sim.state,
        Input::Deploy {
            release: ReleaseSpec::new("v2", "x"),
            policy: policy(),
            forced: false,
            migrate: false,
        },
        sim.now,
    )
    .unwrap();
    sim.state = t.state;
    // Its actions were dropped with the platform's answer; the router took the table all the same.
    sim.router = Some(route_table(&sim.state));
    sim.run_for(59_000);
    assert_eq!(sim.phase(), "provisioning");
    sim.run_for(5_000);
    assert_eq!(sim.phase(), "failed");
}

#[test]
fn the_first_release_of_an_app_goes_live_after_verification() {
    let mut sim = Sim::new(healthy);
    sim.state = AppState::new("web");
    sim.deploy(policy());
    assert_eq!(sim.phase(), "promoted");
    assert_eq!(route_table(&sim.state).weight_of(Slot::Green), 10_000);
    sim.run_for(700_000);
    assert_eq!(sim.phase(), "succeeded");
}

/// A failing window of the promoted phase: 20 % errors, far past any ceiling.
fn failing_alone(_: u64) -> WindowStats {
    WindowStats {
        canary: SlotWindow {
            requests: 500,
            errors: 100,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        },
        baseline: None,
        duration_ms: 10_000,
        latency: None,
        unavailable: None,
        external: Vec::new(),
    }
}

/// The first release of an app: nothing was live, so once it is there is nothing to go back to.
/// Routing users to the empty old slot would answer every request 503.
fn first_release_promoted() -> Sim {
    let mut sim = Sim::new(healthy);
    sim.state = AppState::new("web");
    sim.router = Some(route_table(&sim.state));
    sim.deploy(policy());
    assert_eq!(sim.phase(), "promoted");
    assert_eq!(sim.state.live, Slot::Green);
    sim
}

fn assert_still_live(sim: &Sim) {
    assert_eq!(sim.state.live, Slot::Green, "{:#?}", sim.log);
    assert_eq!(route_table(&sim.state).weight_of(Slot::Green), 10_000);
    assert_eq!(sim.state.green.backends, [addr(9002)], "{:#?}", sim.log);
    assert!(!sim.stopped.contains(&Slot::Green), "{:#?}", sim.log);
}

const NOTHING_TO_ROLL_BACK_TO: &str =
    "rollout #1 is the first release of web: there is nothing to roll back to; deploy another version instead";

#[test]
fn the_first_release_says_there_is_no_old_version_to_keep_warm() {
    let mut sim = first_release_promoted();
    let promoted = sim
        .log
        .iter()
        .find(|l| l.starts_with("promoted"))
        .unwrap()
        .clone();
    assert!(
        promoted.contains("no old version to keep warm") && !promoted.contains("stays warm"),
        "{promoted}"
    );
    sim.run_for(700_000);
    assert_eq!(sim.phase(), "succeeded");
    let succeeded = sim.log.last().unwrap();
    assert!(succeeded.starts_with("succeeded: "), "{succeeded}");
    assert!(
        !succeeded.contains("retired") && succeeded.contains("first release"),
        "no old slot was there to retire: {succeeded}"
    );
    assert_still_live(&sim);
}

#[test]
fn the_first_release_cannot_be_rolled_back_or_aborted_once_live() {
    for command in [Command::Rollback, Command::Abort] {
        let mut sim = first_release_promoted();
        sim.run_for(60_000);
        let before = sim.state.clone();
        assert_eq!(
            sim.command(command),
            Err(NOTHING_TO_ROLL_BACK_TO.to_string()),
            "{command:?}"
        );
        assert_eq!(sim.state, before, "a rejected command changes nothing");
        assert_still_live(&sim);
        // Promote still ends the window, and a next version replaces it as usual.
        sim.command(Command::Promote).unwrap();
        assert_eq!(sim.phase(), "succeeded");
        assert_still_live(&sim);
    }
    // Not a first release, but the same: v1 is recorded in blue with no instances (a table no
    // router takes, so straight through the engine) when v2 is verified, so v2 went live at once.
    let mut state = AppState::new("web");
    state.blue.release = Some(ReleaseSpec::new("v1", "run v1"));
    let now = Timestamp(1_700_000_000_000);
    for input in [
        Input::Deploy {
            release: ReleaseSpec::new("v2", "run v2"),
            policy: policy(),
            forced: false,
            migrate: false,
        },
        Input::Provisioned {
            backends: vec![addr(9002)],
        },
        Input::VerifyPassed {
            detail: "no checks".into(),
        },
    ] {
        state = handle(&state, input, now).unwrap().state;
    }
    assert_eq!(state.rollout.as_ref().unwrap().phase.name(), "promoted");
    assert_eq!(
        handle(&state, Input::Command(Command::Rollback), now).map(|_| ()),
        Err(Rejected("rollout #1 went live while the old slot blue ran nothing (v1 was not running): there is nothing to roll back to; deploy another version instead".to_string()))
    );
    // Before it is live, the first release can still be called off: users never saw it.
    let mut sim = Sim::new(healthy);
    sim.state = AppState::new("web");
    sim.state = handle(
        &sim.state,
        Input::Deploy {
            release: ReleaseSpec::new("v1", "x"),
            policy: policy(),
            forced: false,
            migrate: false,
        },
        sim.now,
    )
    .unwrap()
    .state;
    sim.router = Some(route_table(&sim.state));
    sim.command(Command::Abort).unwrap();
    assert_eq!(sim.phase(), "aborted");
}

#[test]
fn the_first_releases_window_never_rolls_back_to_nothing() {
    // Failing windows: recorded, but nothing to roll back to.
    let mut sim = first_release_promoted();
    sim.traffic = Box::new(failing_alone);
    sim.run_for(60_000);
    assert_eq!(sim.phase(), "promoted", "{:#?}", sim.log);
    assert_still_live(&sim);
    let last = decision_messages(&sim).pop().unwrap();
    assert!(last.contains("nothing to roll back to"), "{last}");
    sim.run_for(700_000);
    assert_eq!(sim.phase(), "succeeded", "{:#?}", sim.log);
    assert_still_live(&sim);

    // A restart that finds it running but not ready: it stays, the window goes on.
    let mut sim = first_release_promoted();
    sim.send(Input::Recovered {
        target_ready: false,
        live_ready: false,
        target_gone: false,
    })
    .unwrap();
    assert_eq!(sim.phase(), "promoted", "{:#?}", sim.log);
    assert_still_live(&sim);

    // Its instances exit: the rollout ends with it live, so the controller supervises it like
    // any live slot (and starts it again once all its instances are gone).
    let mut sim = first_release_promoted();
    sim.send(Input::TargetDown {
        reason: "instance 0 exited with code 3".into(),
    })
    .unwrap();
    assert_eq!(sim.phase(), "succeeded", "{:#?}", sim.log);
    assert_still_live(&sim);
    assert!(
        sim.log.iter().any(|l| l.contains("nothing to roll back to")),
        "{:#?}",
        sim.log
    );
}

#[test]
fn a_deploy_during_the_rollback_window_closes_it_and_starts() {
    let mut sim = Sim::new(healthy);
    sim.deploy(RolloutPolicy::blue_green());
    assert_eq!(sim.phase(), "promoted");
    sim.send(Input::Deploy {
        release: ReleaseSpec::new("v3", "x"),
        policy: RolloutPolicy::blue_green(),
        forced: false,
        migrate: false,
    })
    .unwrap();
    assert_eq!(sim.state.rollout.as_ref().unwrap().id, 2);
    assert_eq!(sim.phase(), "promoted", "v3 went through blue-green at once");
    assert_eq!(sim.state.live, Slot::Blue);
    assert!(
        sim.log.iter().any(|l| l.starts_with("window_closed")),
        "{:#?}",
        sim.log
    );
}

#[test]
fn one_rollout_at_a_time() {
    let mut sim = Sim::new(healthy);
    sim.deploy(policy());
    let err = sim
        .send(Input::Deploy {
            release: ReleaseSpec::new("v3", "x"),
            policy: policy(),
            forced: false,
            migrate: false,
        })
        .unwrap_err();
    assert_eq!(
        err,
        "rollout #1 of app web (v1 → v2) is still in phase canary; wait for it, or abort it first"
    );
}

/// Each command in each phase: the phase it leads to, or the rejection.
#[test]
fn commands_in_every_phase() {
    let phases = [
        "provisioning",
        "verifying",
        "canary",
        "paused",
        "promoted",
        "succeeded",
        "rolled_back",
        "failed",
    ];
    let commands = [
        Command::Promote,
        Command::Pause,
        Command::Resume,
        Command::Abort,
        Command::Rollback,
    ];
    let expected = [
        // promote, pause, resume, abort, rollback
        ["rejected", "rejected", "rejected", "aborted", "rolled_back"], // provisioning
        ["promoted", "rejected", "rejected", "aborted", "rolled_back"], // verifying
        ["promoted", "paused", "rejected", "aborted", "rolled_back"],   // canary
        ["promoted", "rejected", "canary", "aborted", "rolled_back"],   // paused
        ["succeeded", "rejected", "rejected", "aborted", "rolled_back"], // promoted
        ["rejected", "rejected", "rejected", "rejected", "rejected"],   // succeeded
        ["rejected", "rejected", "rejected", "rejected", "rejected"],   // rolled_back
        ["rejected", "rejected", "rejected", "rejected", "rejected"],   // failed
    ];
    for (p, phase) in phases.iter().enumerate() {
        for (c, command) in commands.iter().enumerate() {
            let mut sim = Sim::new(healthy);
            sim.verify_ok = true;
            // Reach the phase.
            match *phase {
                "provisioning" => {
                    let deploy = Input::Deploy {
                        release: ReleaseSpec::new("v2", "x"),
                        policy: policy(),
                        forced: false,
                        migrate: false,
                    };
                    sim.state = handle(&sim.state, deploy, sim.now).unwrap().state;
                }
                "rolled_back" => {
                    sim.traffic = Box::new(failing);
                    sim.deploy(policy());
                    sim.run_for(20_000);
                }
                "failed" => {
                    sim.verify_ok = false;
                    sim.deploy(policy());
                }
                "verifying" => {
                    sim.send(Input::Deploy {
                        release: ReleaseSpec::new("v2", "x"),
                        policy: policy(),
                        forced: false,
                        migrate: false,
                    })
                    .ok();
                    // Rewind to verifying by hand: the simulator answers Verify at once.
                    let mut st = sim.state.clone();
                    st.rollout.as_mut().unwrap().phase = Phase::Verifying;
                    sim.state = st;
                }
                "canary" => sim.deploy(policy()),
                "paused" => {
                    sim.deploy(policy());
                    sim.command(Command::Pause).unwrap();
                }
                "promoted" => sim.deploy(RolloutPolicy::blue_green()),
                "succeeded" => {
                    sim.deploy(RolloutPolicy::blue_green());
                    sim.run_for(700_000);
                }
                _ => unreachable!(),
            }
            assert_eq!(sim.phase(), *phase);
            let outcome = match sim.command(*command) {
                Ok(()) => sim.phase().to_string(),
                Err(_) => "rejected".to_string(),
            };
            assert_eq!(outcome, expected[p][c], "{command:?} in {phase}");
            // Whatever happened, traffic is never on a slot without backends.
            let table = route_table(&sim.state);
            for slot in Slot::ALL {
                assert!(
                    table.weight_of(slot) == 0 || !table.pool(slot).backends.is_empty(),
                    "{command:?} in {phase}: {table:?}"
                );
            }
        }
    }
}

#[test]
fn after_a_restart_the_rollout_resumes_or_rolls_back() {
    for (target_ready, phase) in [(true, "canary"), (false, "rolled_back")] {
        let mut sim = Sim::new(healthy);
        sim.deploy(policy());
        sim.run_for(70_000);
        let weight = route_table(&sim.state).canary_weight_bp;
        sim.send(Input::Recovered {
            target_ready,
            live_ready: true,
            target_gone: false,
        })
        .unwrap();
        assert_eq!(sim.phase(), phase);
        if target_ready {
            assert_eq!(
                route_table(&sim.state).canary_weight_bp,
                weight,
                "the same step resumes"
            );
            sim.run_for(30 * 60_000);
            assert_eq!(sim.phase(), "succeeded");
        } else {
            assert_eq!(route_table(&sim.state).weight_of(Slot::Blue), 10_000);
        }
    }
}

#[test]
fn a_dead_canary_is_rolled_back() {
    let mut sim = Sim::new(healthy);
    sim.deploy(policy());
    sim.send(Input::TargetDown {
        reason: "instance 0 exited with code 3".into(),
    })
    .unwrap();
    assert_eq!(sim.phase(), "rolled_back");
    assert_eq!(route_table(&sim.state).weight_of(Slot::Blue), 10_000);
}

#[test]
fn a_thirty_minute_rollout_is_simulated_in_milliseconds() {
    let mut sim = Sim::new(healthy);
    let mut p = policy();
    p.steps = (1..=20).map(|i| Step::new(i * 400, 60_000)).collect();
    sim.deploy(p);
    sim.run_for(40 * 60_000);
    assert_eq!(sim.phase(), "succeeded");
}

#[test]
fn policies_are_validated() {
    let mut p = policy();
    p.steps = vec![Step::new(2_500, 1000), Step::new(500, 0), Step::new(20_000, 0)];
    p.analysis_interval_ms = 0;
    let fields: Vec<String> = p
        .validate("app[0].rollout.")
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "app[0].rollout.steps[1].weight_bp",
            "app[0].rollout.steps[1].duration_ms",
            "app[0].rollout.steps[2].weight_bp",
            "app[0].rollout.analysis_interval_ms"
        ]
    );
}

/// A 0 % soak step sends no users to the canary: it passes on time alone, not held for canary
/// requests it cannot get.
#[test]
fn a_soak_step_without_canary_traffic_is_not_held_for_requests() {
    fn soak(_: u64) -> WindowStats {
        WindowStats {
            canary: SlotWindow::default(),
            baseline: Some(SlotWindow {
                requests: 2000,
                ..SlotWindow::default()
            }),
            duration_ms: 10_000,
            ..WindowStats::default()
        }
    }
    let mut sim = Sim::new(soak);
    sim.deploy(RolloutPolicy {
        steps: vec![Step::new(0, 30_000), Step::new(10_000, 0)],
        ..policy()
    });
    sim.run_for(60_000);
    assert_eq!(sim.phase(), "promoted", "{:#?}", sim.log);
    assert!(
        !sim.log.iter().any(|l| l.starts_with("step_extended")),
        "{:#?}",
        sim.log
    );
}

fn deploy_with_migrations(sim: &mut Sim, version: &str) {
    sim.send(Input::Deploy {
        release: ReleaseSpec::new(version, format!("run {version}")),
        policy: policy(),
        forced: false,
        migrate: true,
    })
    .unwrap();
}

#[test]
fn expand_migrations_run_before_the_new_release_is_provisioned() {
    let mut sim = Sim::new(healthy);
    deploy_with_migrations(&mut sim, "v2");
    assert_eq!(sim.phase(), "migrating");
    assert_eq!(
        (sim.migrations_asked, sim.provisions_asked),
        (1, 0),
        "nothing starts before the expand"
    );
    assert_eq!(route_table(&sim.state).weight_of(Slot::Green), 0);
    // Time passing while a long backfill runs moves nothing and fails nothing.
    sim.run_for(30 * 60_000);
    assert_eq!(sim.phase(), "migrating");
    sim.send(Input::Migrated {
        detail: "expand migrations applied: 0002_email.expand.sql (12 ms)".into(),
    })
    .unwrap();
    assert_eq!(sim.provisions_asked, 1);
    assert_eq!(sim.phase(), "canary", "{:#?}", sim.log);
    assert!(sim
        .log
        .iter()
        .any(|l| l.starts_with("migrated: expand migrations applied")));
    // The new slot remembers the rollout that put it there (for the contract's check).
    let id = sim.state.rollout.as_ref().unwrap().id;
    assert_eq!(sim.state.green.deployed_by, Some(id));
    sim.run_for(30 * 60_000);
    assert_eq!(sim.phase(), "succeeded");
}

#[test]
fn a_failed_expand_fails_the_rollout_before_any_traffic() {
    let mut sim = Sim::new(healthy);
    deploy_with_migrations(&mut sim, "v2");
    sim.send(Input::MigrationFailed {
        reason: "0002_email.expand.sql: statement 2 (line 4) failed: column \"emial\" does not exist".into(),
    })
    .unwrap();
    assert_eq!(sim.phase(), "failed");
    assert_eq!(sim.provisions_asked, 0, "the release never started");
    let Phase::Failed { reason, .. } = &sim.state.rollout.as_ref().unwrap().phase else {
        unreachable!()
    };
    assert!(
        reason.contains("the expand migrations failed, so v2 never started"),
        "{reason}"
    );
    assert!(reason.contains("line 4"), "{reason}");
    assert!(
        sim.routes.iter().all(|(w, live)| *w == 0 && *live == Slot::Blue),
        "{:?}",
        sim.routes
    );
    // A late success is ignored: the rollout is over.
    assert!(sim
        .send(Input::Migrated {
            detail: "late".into()
        })
        .is_err());
}

#[test]
fn a_restart_during_the_expand_runs_it_again_and_a_rollback_never_undoes_it() {
    let mut sim = Sim::new(healthy);
    deploy_with_migrations(&mut sim, "v2");
    sim.send(Input::Recovered {
        target_ready: false,
        live_ready: true,
        target_gone: true,
    })
    .unwrap();
    assert_eq!(
        sim.phase(),
        "migrating",
        "a restart is no verdict on the migrations"
    );
    assert_eq!(
        sim.migrations_asked, 2,
        "the expand runs again (what was applied is skipped)"
    );
    sim.send(Input::Migrated { detail: "ok".into() }).unwrap();
    sim.run_for(10_000);
    assert_eq!(sim.phase(), "canary");
    let asked = sim.migrations_asked;
    sim.command(Command::Rollback).unwrap();
    assert_eq!(sim.phase(), "rolled_back");
    assert_eq!(
        sim.migrations_asked, asked,
        "a rollback runs no migration: the expand stays"
    );
    // An abort while migrating puts nothing on the new slot and leaves the expand running out.
    deploy_with_migrations(&mut sim, "v3");
    sim.command(Command::Abort).unwrap();
    assert_eq!(sim.phase(), "aborted");
    assert_eq!(route_table(&sim.state).weight_of(sim.state.live.other()), 0);
}

/// The message of each decision: the verdict in plain words, then what the engine does.
fn decision_messages(sim: &Sim) -> Vec<String> {
    sim.decisions().into_iter().map(|d| d.message).collect()
}

#[test]
fn decisions_say_in_plain_words_what_the_engine_does() {
    // Healthy: the rollout goes on, steps pass, the rollback window goes on.
    let mut sim = Sim::new(healthy);
    sim.deploy(policy());
    sim.run_for(4 * 60_000);
    let said = decision_messages(&sim);
    assert_eq!(
        said[0],
        "v2 looks as good as v1 so far (5xx 0 % vs 0 %, p99 20 ms vs 20 ms, 200 requests): going on"
    );
    assert_eq!(
        said[5],
        "v2 looks as good as v1 so far (5xx 0 % vs 0 %, p99 20 ms vs 20 ms, 1200 requests): step 1 passed"
    );
    assert_eq!(
        said.last().unwrap(),
        "v2 stays under its ceilings (5xx 0 % against a 5 % ceiling, p99 20 ms, 200 requests): the rollback window goes on"
    );
    // The verdict kept for status displays is the one the event carries.
    let r = sim.state.rollout.as_ref().unwrap();
    assert_eq!(r.last_verdict.as_ref().unwrap().summary, *said.last().unwrap());

    // Too few requests: the step is held until it has seen enough.
    let mut sim = Sim::new(|_| {
        let w = |requests, errors| SlotWindow {
            requests,
            errors,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        };
        WindowStats {
            canary: w(4, 0),
            baseline: Some(w(2000, 2)),
            duration_ms: 10_000,
            ..WindowStats::default()
        }
    });
    sim.deploy(policy());
    sim.run_for(60_000);
    assert_eq!(
        decision_messages(&sim).last().unwrap(),
        "not enough traffic to judge yet (24 of 50 requests): holding at 5 % until the step has seen 50 requests (24 so far)"
    );
    assert_eq!(
        sim.log.last().unwrap(),
        "step_extended: step 1 extended by up to 300 s: v2 has served 24 of the 50 requests a step needs"
    );

    // Evidence building: the step is held, then the release rolled back.
    let mut sim = Sim::new(|_| {
        let w = |requests, errors| SlotWindow {
            requests,
            errors,
            p99_ms: Some(20.0),
            ..SlotWindow::default()
        };
        WindowStats {
            canary: w(100, 3),
            baseline: Some(w(1900, 19)),
            duration_ms: 10_000,
            ..WindowStats::default()
        }
    });
    sim.deploy(policy());
    sim.run_for(6 * 60_000);
    let said = decision_messages(&sim);
    assert!(
        said.contains(
            &"evidence against v2 is building (5xx: v2 3.0 %, v1 1.0 %; 62 % of the way to a rollback): holding at 5 %"
                .to_string()
        ),
        "{said:#?}"
    );
    assert_eq!(
        said.last().unwrap(),
        "v2 fails 3.0 % of requests with a 5xx, v1 1.0 %: rolling back"
    );

    // Windows without a verdict: held, then a person decides.
    let mut sim = Sim::new(quiet);
    sim.deploy(policy());
    sim.run_for(40_000);
    let said = decision_messages(&sim);
    assert_eq!(
        said[0],
        "not enough traffic to judge yet (3 of 20 requests in this window): holding at 5 %"
    );
    assert_eq!(
        said[3],
        "not enough traffic to judge yet (3 of 20 requests in this window): pausing for a person"
    );
    let Phase::Paused { reason, .. } = &sim.state.rollout.as_ref().unwrap().phase else {
        panic!("{:#?}", sim.log)
    };
    assert_eq!(
        reason,
        "4 windows in a row without a verdict, the last: not enough traffic to judge yet (3 of 20 requests in this window); \
         never promoting blind: resume, promote or roll back"
    );

    // A failed window in the rollback window.
    let mut sim = Sim::new(failing);
    sim.deploy(RolloutPolicy::blue_green());
    sim.run_for(20_000);
    assert_eq!(
        decision_messages(&sim),
        [
            "v2 fails 10.0 % of requests with a 5xx, above the 5 % ceiling: failed window 1 of 2, v2 stays live for now",
            "v2 fails 10.0 % of requests with a 5xx, above the 5 % ceiling: failed window 2 of 2, rolling back",
        ]
    );
}

#[test]
fn a_redeploy_of_the_live_version_tells_the_two_apart() {
    let mut sim = Sim::new(failing);
    sim.send(Input::Deploy {
        release: ReleaseSpec::new("v1", "run v1"),
        policy: policy(),
        forced: false,
        migrate: false,
    })
    .unwrap();
    sim.run_for(10_000);
    assert_eq!(
        decision_messages(&sim),
        ["the new v1 fails 10.0 % of requests with a 5xx, the live v1 0.10 %: rolling back"]
    );
}

#[test]
fn the_verified_event_is_the_verifications_own_sentence() {
    // Before, the engine put "smoke checks passed: " in front of whatever the verification
    // said, "smoke checks passed: no smoke checks configured" included.
    let mut sim = Sim::new(healthy);
    sim.deploy(policy());
    assert!(
        sim.log.contains(&"verified: 2 checks".to_string()),
        "{:#?}",
        sim.log
    );
}
