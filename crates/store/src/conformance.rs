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
use cutover_flags::Flag;

use crate::{FlagChange, FlagChangeRecord, FlagSet, Store, StoreError, StoredEvent};

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
        ("flags_start_empty", flags_start_empty),
        ("flag_changes_bump_revisions", flag_changes_bump_revisions),
        ("flag_audit_is_in_order", flag_audit_is_in_order),
        ("a_flag_conflict_writes_nothing", a_flag_conflict_writes_nothing),
        (
            "a_flag_under_another_key_is_refused",
            a_flag_under_another_key_is_refused,
        ),
        (
            "archiving_an_unknown_flag_is_refused",
            archiving_an_unknown_flag_is_refused,
        ),
        ("flags_are_sorted", flags_are_sorted),
        (
            "ramps_round_trip_latest_per_flag",
            ramps_round_trip_latest_per_flag,
        ),
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

/// A fresh store has no flags, set revision 0 and no audit.
pub fn flags_start_empty(store: &dyn Store) {
    assert_eq!(
        store.flags().unwrap(),
        FlagSet {
            revision: 0,
            flags: vec![]
        },
        "flags_start_empty: flags() of a fresh store"
    );
    assert!(
        store.flag_audit(None, 0, 100).unwrap().is_empty(),
        "flags_start_empty: audit of a fresh store"
    );
    assert!(
        store.flag_audit(Some("nope"), 0, 100).unwrap().is_empty(),
        "flags_start_empty: audit of an unknown flag"
    );
}

/// Create, update, archive and create again: the flag's revision goes up by one per change and
/// never repeats, the set's revision by one per change of any flag; the revision the caller
/// put in the flag is ignored.
pub fn flag_changes_bump_revisions(store: &dyn Store) {
    let mut a = flag("a", "off");
    a.revision = 99;
    let created = store.change_flag(&change("a", Some(a), None, 1)).unwrap();
    assert_eq!(
        created.after.as_ref().map(|f| f.revision),
        Some(1),
        "flag_changes_bump_revisions: a new flag gets revision 1, whatever the caller set"
    );
    assert_eq!(
        created.before, None,
        "flag_changes_bump_revisions: creating has nothing before"
    );
    assert_eq!(
        store.flags().unwrap(),
        FlagSet {
            revision: 1,
            flags: vec![with_revision(flag("a", "off"), 1)]
        },
        "flag_changes_bump_revisions: after creating a"
    );

    let updated = store
        .change_flag(&change("a", Some(flag("a", "on")), Some(1), 2))
        .unwrap();
    assert_eq!(
        (updated.before, updated.after),
        (
            Some(with_revision(flag("a", "off"), 1)),
            Some(with_revision(flag("a", "on"), 2))
        ),
        "flag_changes_bump_revisions: updating a"
    );
    store
        .change_flag(&change("b", Some(flag("b", "off")), Some(0), 3))
        .unwrap();
    assert_eq!(
        store.flags().unwrap(),
        FlagSet {
            revision: 3,
            flags: vec![
                with_revision(flag("a", "on"), 2),
                with_revision(flag("b", "off"), 1)
            ]
        },
        "flag_changes_bump_revisions: after updating a and creating b"
    );

    let archived = store.change_flag(&change("a", None, Some(2), 4)).unwrap();
    assert_eq!(
        (archived.before, archived.after),
        (Some(with_revision(flag("a", "on"), 2)), None),
        "flag_changes_bump_revisions: archiving a"
    );
    assert_eq!(
        store.flags().unwrap(),
        FlagSet {
            revision: 4,
            flags: vec![with_revision(flag("b", "off"), 1)]
        },
        "flag_changes_bump_revisions: an archived flag is not listed"
    );

    // A client still holding revision 1 or 2 of the old `a` must not match the new one.
    let again = store
        .change_flag(&change("a", Some(flag("a", "off")), Some(0), 5))
        .unwrap();
    assert_eq!(
        (again.before, again.after),
        (None, Some(with_revision(flag("a", "off"), 3))),
        "flag_changes_bump_revisions: a flag created again continues from its last revision"
    );
    assert_eq!(
        store.flags().unwrap().revision,
        5,
        "flag_changes_bump_revisions: set revision after five changes"
    );
}

/// Every change leaves one record, numbered from 1 across flags, with who, why, when and the
/// flag before and after; `key`, `after_seq` and `limit` select and page.
pub fn flag_audit_is_in_order(store: &dyn Store) {
    let changes = [
        change("a", Some(flag("a", "off")), None, 1),
        change("b", Some(flag("b", "off")), None, 2),
        change("a", Some(flag("a", "on")), None, 3),
        change("b", None, None, 4),
        change("a", Some(flag("a", "off")), None, 5),
    ];
    let returned: Vec<FlagChangeRecord> = changes.iter().map(|c| store.change_flag(c).unwrap()).collect();
    let all = store.flag_audit(None, 0, 100).unwrap();
    assert_eq!(
        all, returned,
        "flag_audit_is_in_order: the audit reads back what change_flag returned"
    );
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "flag_audit_is_in_order: seqs"
    );
    for (record, change) in all.iter().zip(&changes) {
        assert_eq!(
            (&record.key, record.at, &record.who, &record.why),
            (&change.key, change.at, &change.who, &change.why),
            "flag_audit_is_in_order: record {} keeps the change's key, time, who and why",
            record.seq
        );
    }
    let revisions = |r: &FlagChangeRecord| {
        (
            r.before.as_ref().map(|f| f.revision),
            r.after.as_ref().map(|f| f.revision),
        )
    };
    assert_eq!(
        all.iter().map(revisions).collect::<Vec<_>>(),
        vec![
            (None, Some(1)),
            (None, Some(1)),
            (Some(1), Some(2)),
            (Some(1), None),
            (Some(2), Some(3)),
        ],
        "flag_audit_is_in_order: before and after of each change"
    );
    assert_eq!(
        all[2].before.as_ref().map(|f| f.default_variant.as_str()),
        Some("off"),
        "flag_audit_is_in_order: before is the flag as it was stored"
    );

    let of_a = store.flag_audit(Some("a"), 0, 100).unwrap();
    assert_eq!(
        of_a.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 5],
        "flag_audit_is_in_order: only a's records"
    );
    assert_eq!(
        store
            .flag_audit(Some("a"), 1, 1)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3],
        "flag_audit_is_in_order: after_seq and limit apply to the selected records"
    );
    assert_eq!(
        store
            .flag_audit(None, 3, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![4, 5],
        "flag_audit_is_in_order: after 3"
    );
    assert!(
        store.flag_audit(None, 0, 0).unwrap().is_empty(),
        "flag_audit_is_in_order: limit 0 returns nothing"
    );
    assert!(
        store.flag_audit(None, u64::MAX, 10).unwrap().is_empty(),
        "flag_audit_is_in_order: after past the end returns nothing"
    );
}

/// A compare and swap against another revision is refused with [`StoreError::Conflict`] and
/// writes nothing; against the right one (0 for a flag that does not exist) it goes through.
pub fn a_flag_conflict_writes_nothing(store: &dyn Store) {
    store
        .change_flag(&change("a", Some(flag("a", "off")), Some(0), 1))
        .unwrap();
    let before = (store.flags().unwrap(), store.flag_audit(None, 0, 100).unwrap());
    let attempts = [
        (change("a", Some(flag("a", "on")), Some(5), 2), 5, 1),
        (change("a", Some(flag("a", "on")), Some(0), 2), 0, 1),
        (change("a", None, Some(2), 2), 2, 1),
        (change("b", Some(flag("b", "on")), Some(1), 2), 1, 0),
    ];
    for (attempt, expected, found) in attempts {
        let err = match store.change_flag(&attempt) {
            Err(err) => err,
            Ok(record) => panic!(
                "a_flag_conflict_writes_nothing: {} expecting revision {expected}: expected Err(Conflict), got Ok({record:?})",
                attempt.key
            ),
        };
        match &err {
            StoreError::Conflict {
                key,
                expected: e,
                found: f,
            } => assert_eq!(
                (key.as_str(), *e, *f),
                (attempt.key.as_str(), expected, found),
                "a_flag_conflict_writes_nothing: the conflict names the flag and both revisions"
            ),
            other => panic!(
                "a_flag_conflict_writes_nothing: {} expecting revision {expected}: expected Conflict, got {other:?}",
                attempt.key
            ),
        }
        assert!(
            err.to_string().contains("re-read"),
            "a_flag_conflict_writes_nothing: the message says what to do: {err}"
        );
        assert_eq!(
            (store.flags().unwrap(), store.flag_audit(None, 0, 100).unwrap()),
            before,
            "a_flag_conflict_writes_nothing: a refused change leaves flags, set revision and audit alone"
        );
    }
    let record = store
        .change_flag(&change("a", Some(flag("a", "on")), Some(1), 3))
        .unwrap();
    assert_eq!(
        (record.seq, record.after.map(|f| f.revision)),
        (2, Some(2)),
        "a_flag_conflict_writes_nothing: the right revision goes through, numbered after the refusals"
    );
}

/// A change whose flag has another key than the change names is refused and writes nothing.
pub fn a_flag_under_another_key_is_refused(store: &dyn Store) {
    match store.change_flag(&change("a", Some(flag("b", "off")), None, 1)) {
        Err(StoreError::UnstorableFlag { key, reason }) => {
            assert_eq!(
                key, "a",
                "a_flag_under_another_key_is_refused: the error names the change's key"
            );
            assert!(
                reason.contains("\"b\""),
                "a_flag_under_another_key_is_refused: the reason names the flag's key: {reason}"
            );
        }
        other => panic!("a_flag_under_another_key_is_refused: expected Err(UnstorableFlag), got {other:?}"),
    }
    assert_eq!(
        store.flags().unwrap(),
        FlagSet::default(),
        "a_flag_under_another_key_is_refused: nothing stored"
    );
    assert!(
        store.flag_audit(None, 0, 100).unwrap().is_empty(),
        "a_flag_under_another_key_is_refused: nothing audited"
    );
}

/// Archiving a flag that is not stored is refused with [`StoreError::NoSuchFlag`]: it would
/// leave an audit record of a change that changed nothing.
pub fn archiving_an_unknown_flag_is_refused(store: &dyn Store) {
    store
        .change_flag(&change("a", Some(flag("a", "off")), None, 1))
        .unwrap();
    store.change_flag(&change("a", None, None, 2)).unwrap();
    for key in ["a", "never"] {
        match store.change_flag(&change(key, None, None, 3)) {
            Err(StoreError::NoSuchFlag { key: k }) => assert_eq!(
                k, key,
                "archiving_an_unknown_flag_is_refused: the error names the flag"
            ),
            other => panic!(
                "archiving_an_unknown_flag_is_refused: archiving {key}: expected Err(NoSuchFlag), got {other:?}"
            ),
        }
    }
    assert_eq!(
        store.flags().unwrap(),
        FlagSet {
            revision: 2,
            flags: vec![]
        },
        "archiving_an_unknown_flag_is_refused: nothing changed"
    );
    assert_eq!(
        store.flag_audit(None, 0, 100).unwrap().len(),
        2,
        "archiving_an_unknown_flag_is_refused: nothing audited"
    );
}

/// `flags` lists each flag once, in byte order of the keys.
pub fn flags_are_sorted(store: &dyn Store) {
    for (n, key) in (1..).zip(["zeta", "alpha", "mid", "Beta", "alpha", "a.b", "a-b"]) {
        store
            .change_flag(&change(key, Some(flag(key, "on")), None, n))
            .unwrap();
    }
    let set = store.flags().unwrap();
    assert_eq!(
        set.flags.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        vec!["Beta", "a-b", "a.b", "alpha", "mid", "zeta"],
        "flags_are_sorted: sorted by key (bytes: upper case first), each once"
    );
    assert_eq!(set.revision, 7, "flags_are_sorted: seven changes");
}

/// A boolean flag; `default_variant` tells two versions of it apart.
fn flag(key: &str, default_variant: &str) -> Flag {
    serde_json::from_value(serde_json::json!({
        "key": key,
        "type": "boolean",
        "variants": { "on": true, "off": false },
        "default_variant": default_variant,
        "split": [{ "variant": "on", "weight": 250 }, { "variant": "off", "weight": 9750 }],
        "rules": [{
            "when": [{ "attribute": "country", "op": "in", "value": ["DE", "FR"] }],
            "variant": "on"
        }],
        "owner": "team-payments",
        "description": "The new checkout — non-ASCII on purpose",
        "expires": "2027-03-31",
    }))
    .unwrap()
}

fn with_revision(mut flag: Flag, revision: u64) -> Flag {
    flag.revision = revision;
    flag
}

/// A saved ramp reads back as it was; saving it again replaces it; `ramps()` gives the latest
/// ramp of each flag, sorted by flag.
pub fn ramps_round_trip_latest_per_flag(store: &dyn Store) {
    use cutover_flags::ramp::{Ramp, RampInput, RampPlan};
    assert!(
        store.ramps().unwrap().is_empty(),
        "ramps_round_trip: a fresh store has none"
    );
    let plan = RampPlan {
        steps_bp: vec![100, 10_000],
        step_ms: 60_000,
        interval_ms: 10_000,
        max_extension_ms: 60_000,
        inconclusive_limit: 3,
        variant: "on".into(),
        control: "off".into(),
        judge: cutover_core::judge::JudgeConfig::default(),
    };
    let (mut b1, _) = Ramp::start("b", 1, plan.clone(), at(1), "admin", "first — ramp");
    store.save_ramp(&b1).unwrap();
    let (a1, _) = Ramp::start("a", 1, plan.clone(), at(2), "admin", "a's ramp");
    store.save_ramp(&a1).unwrap();
    assert_eq!(
        store.ramps().unwrap(),
        vec![a1.clone(), b1.clone()],
        "ramps_round_trip: sorted by flag"
    );
    b1.handle(
        RampInput::Abort {
            reason: "stop".into(),
        },
        at(3),
    )
    .unwrap();
    store.save_ramp(&b1).unwrap();
    assert_eq!(
        store.ramps().unwrap(),
        vec![a1.clone(), b1.clone()],
        "ramps_round_trip: saving again replaces"
    );
    let (b2, _) = Ramp::start("b", 2, plan, at(4), "admin", "again");
    store.save_ramp(&b2).unwrap();
    assert_eq!(
        store.ramps().unwrap(),
        vec![a1, b2],
        "ramps_round_trip: the latest ramp of each flag"
    );
}

/// A change of `key` by `ci` at `at(n)`, its reason naming `n`.
fn change(key: &str, after: Option<Flag>, expected_revision: Option<u64>, n: u64) -> FlagChange {
    FlagChange {
        key: key.into(),
        after,
        expected_revision,
        who: "ci-token".into(),
        why: format!("change {n}"),
        at: at(n),
    }
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
        migrate: false,
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

        message: format!("event {n} — with a non-ASCII dash"),
        // A kind no build knows: the store keeps any kind and data exactly as written.
        detail: cutover_core::event::EventDetail::Unrecognized {
            kind: format!("kind{n}"),
            data: serde_json::json!({ "n": n, "nested": { "list": [1, 2.5, null, "x"] } }),
        },
    }
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}
