#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `kill -9` of a process in the middle of committing: every commit that returned survives, and
//! none is torn. The child process is this test binary again, running only [`crash_writer`] with
//! an environment variable that tells it where to write.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cutover_core::rollout::{handle, AppState, Event, Input};
use cutover_core::{ReleaseSpec, RolloutPolicy, Timestamp};
use cutover_store::{SqliteStore, Store};
use rusqlite::Connection;

/// Set in the child only: the state file it writes.
const WRITER_ENV: &str = "CUTOVER_STORE_CRASH_WRITER";
const APP: &str = "web";
const EVENTS_PER_COMMIT: u64 = 3;
/// Commits each round waits for before killing the writer.
const COMMITS_PER_ROUND: u64 = 50;
const ROUNDS: u64 = 5;

/// The child's side of [`commits_survive_sigkill`]; passes at once in a normal test run.
#[test]
fn crash_writer() {
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    write_until_killed(Path::new(&path));
}

/// Commits forever (within bounds, should the parent die first), one counter step per commit.
/// The counter is `rollout.failures`: a commit sets it to `n` and appends events
/// `EVENTS_PER_COMMIT` of commit `n`, so a torn commit shows as a count that does not match.
fn write_until_killed(path: &Path) {
    let store = SqliteStore::open(path).unwrap();
    let mut state = store.load(APP).unwrap().unwrap_or_else(initial_state);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stdout = std::io::stdout();
    for _ in 0..100_000 {
        if Instant::now() > deadline {
            break;
        }
        let rollout = state.rollout.as_mut().unwrap();
        rollout.failures += 1;
        let n = u64::from(rollout.failures);
        // Large enough that one commit spans several pages of the file.
        let padding = "x".repeat(1_000);
        let events: Vec<Event> = (0..EVENTS_PER_COMMIT)
            .map(|i| Event {
                at: Timestamp(1_700_000_000_000 + n),
                rollout_id: Some(rollout.id),

                message: format!("commit {n} event {i} {padding}"),
                detail: cutover_core::event::EventDetail::Unrecognized {
                    kind: "tick".into(),
                    data: serde_json::json!({ "commit": n, "i": i }),
                },
            })
            .collect();
        store.commit(&state, &events).unwrap();
        // Only after `commit` returned: what the parent reads here must be on disk.
        writeln!(stdout, "committed {n}").unwrap();
        stdout.flush().unwrap();
    }
}

fn initial_state() -> AppState {
    let mut state = AppState::new(APP);
    state.blue.release = Some(ReleaseSpec::new("v1", "run v1"));
    let input = Input::Deploy {
        release: ReleaseSpec::new("v2", "run v2"),
        policy: RolloutPolicy::default(),
        forced: false,
        migrate: false,
    };
    handle(&state, input, Timestamp(1_700_000_000_000)).unwrap().state
}

#[test]
fn commits_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut committed = 0;
    for round in 1..=ROUNDS {
        let reported = run_writer_and_kill(&path, committed + COMMITS_PER_ROUND);
        let found = check_file(&path);
        assert!(
            found >= reported,
            "round {round}: the writer saw commit {reported} return, but the file holds only {found} commits"
        );
        committed = found;
    }
}

/// Starts a writer on `path`, kills it with SIGKILL once it reports commit `target`, and returns
/// the last commit it reported.
fn run_writer_and_kill(path: &Path, target: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness may print its own text on the same line before ours.
            let Some((_, n)) = line.rsplit_once("committed ") else {
                continue;
            };
            if tx.send(n.trim().parse::<u64>().unwrap()).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reported = 0;
    while reported < target {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(n) => reported = n,
            Err(e) => {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                panic!(
                    "the writer reported commit {reported} of {target}, then {e:?}; it exited with {status}"
                );
            }
        }
    }
    // A varying delay, so the kill lands at different points of the next commits.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_micros(u64::from(nanos % 3_000)));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer should have died of SIGKILL while writing, not {status}"
    );
    reported
}

/// Checks the file is whole and consistent, and returns the number of commits in it.
fn check_file(path: &Path) -> u64 {
    let integrity: String = Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "SQLite integrity check after SIGKILL");

    let store = SqliteStore::open(path).unwrap();
    let state = store
        .load(APP)
        .unwrap()
        .expect("the state should exist after commits");
    let rollout = state.rollout.clone().unwrap();
    let commits = u64::from(rollout.failures);

    let events = store.events(APP, None, 0, usize::MAX).unwrap();
    assert_eq!(
        events.len() as u64,
        commits * EVENTS_PER_COMMIT,
        "torn commit: the state says {commits} commits, the log has {} events",
        events.len()
    );
    for (e, seq) in events.iter().zip(1..) {
        assert_eq!(e.seq, seq, "event seqs must have no gaps");
        let expected = serde_json::json!({
            "commit": (seq - 1) / EVENTS_PER_COMMIT + 1,
            "i": (seq - 1) % EVENTS_PER_COMMIT,
        });
        assert_eq!(
            e.event.data(),
            expected,
            "event {seq} is not where its commit put it"
        );
    }
    assert_eq!(
        store.rollouts(APP, 10).unwrap(),
        vec![rollout],
        "the rollout history should hold the rollout as of the last commit"
    );
    commits
}
