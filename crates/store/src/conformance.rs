//! The behaviour every [`Store`] must have. A backend's tests call [`run_all`] with a factory of
//! fresh, empty stores; each check panics with a message naming the check and what differed.
//!
//! ```
//! use cutover_store::{conformance, MemoryStore, Store};
//!
//! conformance::run_all(&|| Box::new(MemoryStore::new()) as Box<dyn Store>);
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // Panicking is how a check reports.

use std::net::SocketAddr;

use cutover_core::rollout::{handle, AppState, Command, Event, Input, Transition};
use cutover_core::{ReleaseSpec, RolloutPolicy, Timestamp};

use crate::{Store, StoreError, StoredEvent};

/// One check: panics when `store` misbehaves.
pub type Check = fn(&dyn Store);

/// Runs every check, each against a store fresh from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    let checks: &[(&str, Check)] = &[
        ("unknown_app_is_empty", unknown_app_is_empty),
        ("state_round_trips", state_round_trips),
        ("events_are_numbered_and_paged", events_are_numbered_and_paged),
        ("events_filter_by_rollout", events_filter_by_rollout),
        ("seqs_are_per_app", seqs_are_per_app),
        (
            "rollouts_newest_first_and_replaced",
            rollouts_newest_first_and_replaced,
        ),
        (
            "a_rollout_closed_by_the_next_deploy_is_recorded_as_ended",
            a_rollout_closed_by_the_next_deploy_is_recorded_as_ended,
        ),
        ("apps_are_sorted", apps_are_sorted),
        ("unstorable_state_is_refused", unstorable_state_is_refused),
    ];
    for (name, check) in checks {
        let store = make();
        tracing::debug!(check = name, ?store, "store conformance");
        check(store.as_ref());
    }
}

/// An app nobody committed has no state, no events, no rollouts, and is not listed.
pub fn unknown_app_is_empty(store: &dyn Store) {
    assert_eq!(
        store.load("nope").unwrap(),
        None,
        "unknown_app_is_empty: load of an unknown app"
    );
    assert!(
        store.events("nope", None, 0, 100).unwrap().is_empty(),
        "unknown_app_is_empty: events of an unknown app"
    );
    assert!(
        store.rollouts("nope", 100).unwrap().is_empty(),
        "unknown_app_is_empty: rollouts of an unknown app"
    );
    assert!(
        store.apps().unwrap().is_empty(),
        "unknown_app_is_empty: apps() of a fresh store"
    );
}

/// A committed state with a rollout in progress loads back equal, and `commit` returns exactly
/// what `events` later reads.
pub fn state_round_trips(store: &dyn Store) {
    let t = deploy(&app_with_v1("web"), "v2", RolloutPolicy::default(), at(0));
    assert!(
        t.state.rollout.is_some(),
        "state_round_trips: the deploy should start a rollout"
    );
    let stored = store.commit(&t.state, &t.events).unwrap();
    assert_eq!(
        store.load("web").unwrap().as_ref(),
        Some(&t.state),
        "state_round_trips: loaded state differs from the committed one"
    );
    assert_eq!(
        stored.iter().map(|e| &e.event).collect::<Vec<_>>(),
        t.events.iter().collect::<Vec<_>>(),
        "state_round_trips: commit should return the committed events in order"
    );
    assert_eq!(
        store.events("web", None, 0, 100).unwrap(),
        stored,
        "state_round_trips: events() should read back what commit returned"
    );

    let t = step(
        &t.state,
        Input::Provisioned {
            backends: vec![addr(9002)],
        },
        at(1_000),
    );
    store.commit(&t.state, &t.events).unwrap();
    assert_eq!(
        store.load("web").unwrap().as_ref(),
        Some(&t.state),
        "state_round_trips: a second commit should replace the state"
    );
}

/// Events get seq 1, 2, … in commit order; `after` and `limit` page through them.
pub fn events_are_numbered_and_paged(store: &dyn Store) {
    let state = AppState::new("web");
    let first: Vec<Event> = (1..=5).map(|n| event(n, None)).collect();
    let stored = store.commit(&state, &first).unwrap();
    assert_eq!(
        seqs(&stored),
        vec![1, 2, 3, 4, 5],
        "events_are_numbered_and_paged: first commit"
    );
    assert!(
        stored.iter().all(|e| e.app == "web"),
        "events_are_numbered_and_paged: stored events name their app"
    );
    let stored = store.commit(&state, &[event(6, None), event(7, None)]).unwrap();
    assert_eq!(
        seqs(&stored),
        vec![6, 7],
        "events_are_numbered_and_paged: second commit continues"
    );
    assert!(
        store.commit(&state, &[]).unwrap().is_empty(),
        "events_are_numbered_and_paged: a commit without events stores none"
    );

    let all = store.events("web", None, 0, 100).unwrap();
    assert_eq!(
        seqs(&all),
        (1..=7).collect::<Vec<_>>(),
        "events_are_numbered_and_paged: all"
    );
    for e in &all {
        assert_eq!(
            e.event,
            event(e.seq, None),
            "events_are_numbered_and_paged: event {} differs",
            e.seq
        );
    }

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events("web", None, after, 3).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(seqs(&page));
        assert!(
            pages.len() <= 3,
            "events_are_numbered_and_paged: paging does not end: {pages:?}"
        );
    }
    assert_eq!(
        pages,
        vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]],
        "events_are_numbered_and_paged: pages of 3"
    );
    assert!(
        store.events("web", None, 0, 0).unwrap().is_empty(),
        "events_are_numbered_and_paged: limit 0 returns nothing"
    );
    assert!(
        store.events("web", None, 100, 10).unwrap().is_empty(),
        "events_are_numbered_and_paged: after past the end returns nothing"
    );
    assert_eq!(
        seqs(&store.events("web", None, 6, usize::MAX).unwrap()),
        vec![7],
        "events_are_numbered_and_paged: after 6 with no real limit"
    );

    let stored = store.commit(&state, &[event(8, None)]).unwrap();
    assert_eq!(
        seqs(&stored),
        vec![8],
        "events_are_numbered_and_paged: numbering continues after a commit without events"
    );
}

/// With a rollout id, only that rollout's events, keeping their app-wide seqs.
pub fn events_filter_by_rollout(store: &dyn Store) {
    let state = AppState::new("web");
    let ids = [Some(1), None, Some(2), Some(1), Some(2), Some(1)];
    let events: Vec<Event> = (1..).zip(ids).map(|(n, id)| event(n, id)).collect();
    store.commit(&state, &events).unwrap();

    let one = store.events("web", Some(1), 0, 100).unwrap();
    assert_eq!(seqs(&one), vec![1, 4, 6], "events_filter_by_rollout: rollout 1");
    assert!(
        one.iter().all(|e| e.event.rollout_id == Some(1)),
        "events_filter_by_rollout: only rollout 1's events"
    );
    assert_eq!(
        seqs(&store.events("web", Some(2), 0, 100).unwrap()),
        vec![3, 5],
        "events_filter_by_rollout: rollout 2"
    );
    assert_eq!(
        seqs(&store.events("web", Some(1), 1, 1).unwrap()),
        vec![4],
        "events_filter_by_rollout: after and limit apply to the filtered events"
    );
    assert!(
        store.events("web", Some(99), 0, 100).unwrap().is_empty(),
        "events_filter_by_rollout: unknown rollout id"
    );
    assert_eq!(
        seqs(&store.events("web", None, 0, 100).unwrap()),
        vec![1, 2, 3, 4, 5, 6],
        "events_filter_by_rollout: no filter returns events with and without a rollout id"
    );
}

/// Each app has its own log, numbered from 1.
pub fn seqs_are_per_app(store: &dyn Store) {
    let web = AppState::new("web");
    let api = AppState::new("api");
    store.commit(&web, &[event(1, None), event(2, None)]).unwrap();
    let stored = store
        .commit(&api, &[event(10, None), event(11, None), event(12, None)])
        .unwrap();
    assert_eq!(seqs(&stored), vec![1, 2, 3], "seqs_are_per_app: api starts at 1");
    let stored = store.commit(&web, &[event(3, None)]).unwrap();
    assert_eq!(
        seqs(&stored),
        vec![3],
        "seqs_are_per_app: web continues its own log"
    );

    let web_events = store.events("web", None, 0, 100).unwrap();
    assert_eq!(
        web_events.iter().map(|e| e.event.at).collect::<Vec<_>>(),
        vec![at(1), at(2), at(3)],
        "seqs_are_per_app: web's events only"
    );
    assert!(
        web_events.iter().all(|e| e.app == "web"),
        "seqs_are_per_app: web's events name web"
    );
    let api_events = store.events("api", None, 0, 100).unwrap();
    assert_eq!(
        api_events.iter().map(|e| e.event.at).collect::<Vec<_>>(),
        vec![at(10), at(11), at(12)],
        "seqs_are_per_app: api's events only"
    );
    assert_eq!(
        store.load("api").unwrap().as_ref(),
        Some(&api),
        "seqs_are_per_app: api's state"
    );
    assert_eq!(
        store.load("web").unwrap().as_ref(),
        Some(&web),
        "seqs_are_per_app: web's state"
    );
}

/// A deploy inside the rollback window ends the promoted rollout as succeeded and replaces it in
/// the state: its history record must say succeeded, not stay promoted forever.
pub fn a_rollout_closed_by_the_next_deploy_is_recorded_as_ended(store: &dyn Store) {
    let mut t = deploy(&app_with_v1("web"), "v2", RolloutPolicy::default(), at(0));
    store.commit(&t.state, &t.events).unwrap();
    for (input, ms) in [
        (
            Input::Provisioned {
                backends: vec![addr(9002)],
            },
            1_000,
        ),
        (Input::Command(Command::Promote), 2_000),
    ] {
        t = step(&t.state, input, at(ms));
        store.commit_ending(&t.state, &t.events, &t.ended).unwrap();
    }
    assert_eq!(t.state.rollout.as_ref().map(|r| r.phase.name()), Some("promoted"));
    let next = deploy(&t.state, "v3", RolloutPolicy::default(), at(3_000));
    assert_eq!(
        next.ended
            .iter()
            .map(|r| (r.id, r.phase.name()))
            .collect::<Vec<_>>(),
        vec![(1, "succeeded")],
        "conformance setup: the engine hands over the rollout it ended"
    );
    store
        .commit_ending(&next.state, &next.events, &next.ended)
        .unwrap();
    let history = store.rollouts("web", 10).unwrap();
    assert_eq!(
        history.iter().map(|r| (r.id, r.phase.name())).collect::<Vec<_>>(),
        vec![(2, "provisioning"), (1, "succeeded")],
        "a_rollout_closed_by_the_next_deploy_is_recorded_as_ended: history after a deploy in the rollback window"
    );
    assert_eq!(
        Some(&history[1]),
        next.ended.first(),
        "a_rollout_closed_by_the_next_deploy_is_recorded_as_ended: rollout 1 as it ended"
    );
}

/// The rollout history is newest first, limited, and a rollout committed again is updated in
/// place; a state without a rollout leaves the history alone.
pub fn rollouts_newest_first_and_replaced(store: &dyn Store) {
    let t = deploy(&app_with_v1("web"), "v2", RolloutPolicy::default(), at(0));
    store.commit(&t.state, &t.events).unwrap();
    let t = step(
        &t.state,
        Input::Provisioned {
            backends: vec![addr(9002)],
        },
        at(1_000),
    );
    store.commit(&t.state, &t.events).unwrap();
    let history = store.rollouts("web", 10).unwrap();
    assert_eq!(
        history.iter().map(|r| (r.id, r.phase.name())).collect::<Vec<_>>(),
        vec![(1, "verifying")],
        "rollouts_newest_first_and_replaced: rollout 1 should be recorded once, in its latest phase"
    );

    let aborted = step(&t.state, Input::Command(Command::Abort), at(2_000));
    store.commit(&aborted.state, &aborted.events).unwrap();
    let t = deploy(&aborted.state, "v3", RolloutPolicy::default(), at(3_000));
    store.commit(&t.state, &t.events).unwrap();

    let history = store.rollouts("web", 10).unwrap();
    assert_eq!(
        history.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![2, 1],
        "rollouts_newest_first_and_replaced: newest first"
    );
    assert_eq!(
        Some(&history[0]),
        t.state.rollout.as_ref(),
        "rollouts_newest_first_and_replaced: rollout 2 as committed"
    );
    assert_eq!(
        Some(&history[1]),
        aborted.state.rollout.as_ref(),
        "rollouts_newest_first_and_replaced: rollout 1 as last committed (aborted)"
    );
    assert_eq!(
        store
            .rollouts("web", 1)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![2],
        "rollouts_newest_first_and_replaced: limit 1"
    );
    assert!(
        store.rollouts("web", 0).unwrap().is_empty(),
        "rollouts_newest_first_and_replaced: limit 0"
    );

    let mut cleared = t.state.clone();
    cleared.rollout = None;
    store.commit(&cleared, &[]).unwrap();
    assert_eq!(
        store.load("web").unwrap().as_ref(),
        Some(&cleared),
        "rollouts_newest_first_and_replaced: a state without a rollout loads without one"
    );
    assert_eq!(
        store.rollouts("web", 10).unwrap().len(),
        2,
        "rollouts_newest_first_and_replaced: a state without a rollout keeps the history"
    );
}

/// `apps` lists each app once, in byte order of the names.
pub fn apps_are_sorted(store: &dyn Store) {
    for app in ["zeta", "alpha", "mid", "Beta", "alpha"] {
        store.commit(&AppState::new(app), &[]).unwrap();
    }
    assert_eq!(
        store.apps().unwrap(),
        vec!["Beta", "alpha", "mid", "zeta"],
        "apps_are_sorted: sorted by name (bytes: upper case first), each once"
    );
}

/// A state that would not read back is refused with [`StoreError::Unstorable`] and changes
/// nothing; storing it would leave an app that cannot be loaded after a restart.
pub fn unstorable_state_is_refused(store: &dyn Store) {
    let base = app_with_v1("web");
    store.commit(&base, &[event(1, None)]).unwrap();
    let mut policy = RolloutPolicy::default();
    // JSON has no infinity: serde_json writes `null`, which does not parse back as a number.
    policy.judge.max_error_ratio = f64::INFINITY;
    let t = deploy(&base, "v2", policy, at(1_000));
    match store.commit(&t.state, &t.events) {
        Err(StoreError::Unstorable { app, .. }) => {
            assert_eq!(
                app, "web",
                "unstorable_state_is_refused: the error should name the app"
            );
        }
        other => panic!("unstorable_state_is_refused: expected Err(Unstorable), got {other:?}"),
    }
    assert_eq!(
        store.load("web").unwrap().as_ref(),
        Some(&base),
        "unstorable_state_is_refused: the state should be unchanged"
    );
    assert_eq!(
        seqs(&store.events("web", None, 0, 100).unwrap()),
        vec![1],
        "unstorable_state_is_refused: no events should be added"
    );
    assert!(
        store.rollouts("web", 10).unwrap().is_empty(),
        "unstorable_state_is_refused: no rollout should be recorded"
    );
}

fn at(ms: u64) -> Timestamp {
    Timestamp(1_700_000_000_000 + ms)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `app` with v1 live in blue.
fn app_with_v1(app: &str) -> AppState {
    let mut state = AppState::new(app);
    state.blue.release = Some(ReleaseSpec::new("v1", "run v1 on {port}"));
    state.blue.backends = vec![addr(9001)];
    state
}

fn deploy(state: &AppState, version: &str, policy: RolloutPolicy, now: Timestamp) -> Transition {
    let input = Input::Deploy {
        release: ReleaseSpec::new(version, format!("run {version} on {{port}}")),
        policy,
        forced: false,
    };
    step(state, input, now)
}

fn step(state: &AppState, input: Input, now: Timestamp) -> Transition {
    let shown = format!("{input:?}");
    handle(state, input, now).unwrap_or_else(|e| panic!("conformance setup: {shown} was rejected: {e}"))
}

/// Event `n`: at `at(n)`, with data naming `n`.
fn event(n: u64, rollout_id: Option<u64>) -> Event {
    Event {
        at: at(n),
        rollout_id,
        kind: format!("kind{n}"),
        message: format!("event {n} — with a non-ASCII dash"),
        data: serde_json::json!({ "n": n, "nested": { "list": [1, 2.5, null, "x"] } }),
    }
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}
