#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reading instance logs with a cursor: the engine on files the test writes (appends, a
//! truncation, a replaced file, the caps, long lines, bytes that are not UTF-8), then the local
//! process platform with real instances, across a new version and a restart of cutover.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_core::{ReleaseSpec, Slot};
use cutover_platform::logs::{
    read_logs, LogSource, LINE_CUT_MARKER, MAX_BYTES_PER_CALL, MAX_LINES_PER_CALL, MAX_LINE_BYTES,
};
use cutover_platform::{
    LocalProcessPlatform, LogChunk, LogCursor, LogRequest, Platform, PlatformError, StaticHostsConfig,
    StaticHostsPlatform,
};
use cutover_test_support::wait_until;

const DEADLINE: Duration = Duration::from_secs(20);

fn source(path: &Path, instance: u32, version: &str, finished: bool) -> LogSource {
    LogSource {
        instance,
        version: version.to_string(),
        path: path.to_path_buf(),
        finished,
    }
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn tail(n: usize) -> LogRequest {
    LogRequest {
        tail_lines: n,
        after: None,
    }
}

fn after(chunk: &LogChunk) -> LogRequest {
    LogRequest {
        tail_lines: 0,
        // Through its text form, as a client hands it back.
        after: Some(chunk.cursor.to_string().parse().unwrap()),
    }
}

fn texts(chunk: &LogChunk) -> Vec<&str> {
    chunk.lines.iter().map(|l| l.text.as_str()).collect()
}

fn numbered(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn a_tail_then_only_what_was_appended_and_never_half_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    fs::write(&path, "one\ntwo\nthree\r\nfour\n").unwrap();
    let sources = [source(&path, 0, "v1", false)];

    let first = read_logs(&sources, &tail(2));
    assert_eq!(
        texts(&first),
        ["three", "four"],
        "the \\r of a CRLF line goes too"
    );
    assert_eq!(first.lines[0].instance, 0);
    assert_eq!(first.lines[0].version, "v1");
    assert_eq!(first.version.as_deref(), Some("v1"));
    assert!(!first.truncated && !first.restarted, "{first:?}");

    let nothing = read_logs(&sources, &after(&first));
    assert!(nothing.lines.is_empty() && !nothing.restarted, "{nothing:?}");

    // A line being written shows once it is finished, in one piece.
    append(&path, b"five\nsix is ha");
    let second = read_logs(&sources, &after(&nothing));
    assert_eq!(texts(&second), ["five"]);
    append(&path, b"lf done\n");
    let third = read_logs(&sources, &after(&second));
    assert_eq!(texts(&third), ["six is half done"]);

    // A tail asks for more than there is: all of it, not truncated.
    let all = read_logs(&sources, &tail(100));
    assert_eq!(all.lines.len(), 6);
    assert!(!all.truncated);
    // Zero lines: nothing but a cursor to follow from.
    let none = read_logs(&sources, &tail(0));
    assert!(none.lines.is_empty());
    append(&path, b"seven\n");
    assert_eq!(texts(&read_logs(&sources, &after(&none))), ["seven"]);
}

#[test]
fn the_unfinished_last_line_of_an_instance_that_ended_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    fs::write(&path, "started\npanicked at 'oh no").unwrap();
    let running = read_logs(&[source(&path, 0, "v1", false)], &tail(10));
    assert_eq!(texts(&running), ["started"]);
    let ended = read_logs(&[source(&path, 0, "v1", true)], &after(&running));
    assert_eq!(texts(&ended), ["panicked at 'oh no"]);
    let ended_tail = read_logs(&[source(&path, 0, "v1", true)], &tail(10));
    assert_eq!(texts(&ended_tail), ["started", "panicked at 'oh no"]);
}

#[test]
fn a_truncated_or_rewritten_log_is_read_again_from_its_start_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    fs::write(&path, numbered(0, 10)).unwrap();
    let sources = [source(&path, 0, "v1", false)];
    let first = read_logs(&sources, &tail(3));

    // logrotate's copytruncate: same file, shorter.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    append(&path, b"after rotation\n");
    let rotated = read_logs(&sources, &after(&first));
    assert_eq!(texts(&rotated), ["after rotation"]);
    assert!(rotated.restarted, "{rotated:?}");
    assert!(
        rotated
            .notes
            .iter()
            .any(|n| n.contains("instance 0") && n.contains("shrank")),
        "{:?}",
        rotated.notes
    );

    // Truncated and written again past the old position before the next read: the offset
    // fits, the bytes before it do not.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    append(&path, b"a different story, longer than the old one\n");
    let rewritten = read_logs(&sources, &after(&rotated));
    assert_eq!(texts(&rewritten), ["a different story, longer than the old one"]);
    assert!(rewritten.restarted, "{rewritten:?}");
    assert!(
        rewritten.notes.iter().any(|n| n.contains("rewritten")),
        "{:?}",
        rewritten.notes
    );

    // Replaced by a new file under the same name (logrotate's create mode).
    let moved = dir.path().join("blue-v1-0.log.1");
    fs::rename(&path, &moved).unwrap();
    fs::write(&path, "fresh file\n").unwrap();
    let replaced = read_logs(&sources, &after(&rewritten));
    assert_eq!(texts(&replaced), ["fresh file"]);
    assert!(replaced.restarted);
    assert!(
        replaced.notes.iter().any(|n| n.contains("new log file")),
        "{:?}",
        replaced.notes
    );
    // And then it is followed as usual.
    append(&path, b"more\n");
    let more = read_logs(&sources, &after(&replaced));
    assert_eq!(texts(&more), ["more"]);
    assert!(!more.restarted && more.notes.is_empty(), "{more:?}");
}

#[test]
fn a_new_version_or_a_new_instance_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("blue-v1-0.log");
    fs::write(&v1, "v1 says hi\n").unwrap();
    let first = read_logs(&[source(&v1, 0, "v1", false)], &tail(10));

    let v2 = [dir.path().join("blue-v2-0.log"), dir.path().join("blue-v2-1.log")];
    fs::write(&v2[0], "v2 instance 0\n").unwrap();
    fs::write(&v2[1], "v2 instance 1\n").unwrap();
    let sources = [source(&v2[0], 0, "v2", false), source(&v2[1], 1, "v2", false)];
    let next = read_logs(&sources, &after(&first));
    assert_eq!(texts(&next), ["v2 instance 0", "v2 instance 1"]);
    assert_eq!(next.version.as_deref(), Some("v2"));
    assert_eq!(next.instances, 2);
    assert_eq!(next.lines[1].instance, 1);
    assert!(next.restarted);
    assert!(
        next.notes
            .iter()
            .any(|n| n.starts_with("instance 0:") && n.contains("version v2")),
        "{:?}",
        next.notes
    );
    assert!(
        next.notes
            .iter()
            .any(|n| n.starts_with("instance 1:") && n.contains("new since the cursor")),
        "{:?}",
        next.notes
    );
}

#[test]
fn one_call_returns_at_most_the_line_cap_and_the_cursor_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    fs::write(&path, "").unwrap();
    let sources = [source(&path, 0, "v1", false)];
    let start = read_logs(&sources, &tail(100));
    let total = MAX_LINES_PER_CALL * 2 + 500;
    append(&path, numbered(0, total).as_bytes());

    let mut seen = Vec::new();
    let mut chunk = start;
    let mut calls = 0;
    loop {
        chunk = read_logs(&sources, &after(&chunk));
        calls += 1;
        assert!(chunk.lines.len() <= MAX_LINES_PER_CALL);
        seen.extend(chunk.lines.iter().map(|l| l.text.clone()));
        if !chunk.truncated {
            break;
        }
        assert!(calls < 10, "no progress");
    }
    assert_eq!(calls, 3);
    let expected: Vec<String> = (0..total).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, expected, "every line once, in order");

    // A tail wider than the cap says it left earlier lines out.
    let capped = read_logs(&sources, &tail(MAX_LINES_PER_CALL + 1));
    assert_eq!(capped.lines.len(), MAX_LINES_PER_CALL);
    assert_eq!(capped.lines.last().unwrap().text, format!("line {}", total - 1));
    assert!(capped.truncated);
}

#[test]
fn one_call_reads_about_the_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    let line = "x".repeat(999);
    let count = 3 * MAX_BYTES_PER_CALL / 1000;
    fs::write(&path, format!("{line}\n").repeat(count)).unwrap();
    let sources = [source(&path, 0, "v1", false)];

    let tailed = read_logs(&sources, &tail(MAX_LINES_PER_CALL));
    let bytes: usize = tailed.lines.iter().map(|l| l.text.len() + 1).sum();
    assert!(bytes <= MAX_BYTES_PER_CALL, "{bytes}");
    assert!(
        tailed.lines.len() >= MAX_BYTES_PER_CALL / 1000 - 1,
        "{}",
        tailed.lines.len()
    );
    assert!(tailed.truncated, "earlier lines were left out");

    let empty = dir.path().join("blue-v1-1.log");
    fs::write(&empty, "").unwrap();
    let follow = [source(&empty, 0, "v1", false)];
    let start = read_logs(&follow, &tail(0));
    fs::copy(&path, &empty).unwrap();
    let mut chunk = read_logs(&follow, &after(&start));
    assert!(chunk.truncated);
    let mut lines = chunk.lines.len();
    assert!(lines * 1000 <= MAX_BYTES_PER_CALL);
    while chunk.truncated {
        chunk = read_logs(&follow, &after(&chunk));
        lines += chunk.lines.len();
    }
    assert_eq!(lines, count, "every line once");
}

#[test]
fn long_lines_are_cut_with_a_marker_and_their_rest_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    let long = "y".repeat(100 * 1024);
    fs::write(&path, format!("before\n{long}\nafter\n")).unwrap();
    let sources = [source(&path, 0, "v1", false)];
    let chunk = read_logs(&sources, &tail(10));
    assert_eq!(chunk.lines.len(), 3);
    assert_eq!(chunk.lines[0].text, "before");
    assert_eq!(
        chunk.lines[1].text,
        format!("{}{LINE_CUT_MARKER}", &long[..MAX_LINE_BYTES])
    );
    assert_eq!(chunk.lines[2].text, "after");

    // A line still being written, already too long to wait for: shown cut now, and its end,
    // when it comes, is not shown as a line of its own.
    let half = "z".repeat(3 * MAX_LINE_BYTES);
    append(&path, half.as_bytes());
    let cut = read_logs(&sources, &after(&chunk));
    assert_eq!(
        texts(&cut),
        [format!("{}{LINE_CUT_MARKER}", &half[..MAX_LINE_BYTES])]
    );
    append(&path, format!("{half}\nnext\n").as_bytes());
    let rest = read_logs(&sources, &after(&cut));
    assert_eq!(texts(&rest), ["next"]);
}

#[test]
fn bytes_that_are_not_utf8_are_shown_lossily() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blue-v1-0.log");
    fs::write(&path, b"ok \xff\xfe end\n\xe2\x82\n").unwrap();
    let chunk = read_logs(&[source(&path, 0, "v1", false)], &tail(10));
    assert_eq!(texts(&chunk), ["ok \u{fffd}\u{fffd} end", "\u{fffd}"]);
}

#[test]
fn an_unreadable_log_is_a_note_and_the_others_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("blue-v1-0.log");
    fs::write(&good, "fine\n").unwrap();
    let missing = dir.path().join("blue-v1-1.log");
    let chunk = read_logs(
        &[source(&good, 0, "v1", false), source(&missing, 1, "v1", false)],
        &tail(10),
    );
    assert_eq!(texts(&chunk), ["fine"]);
    assert!(
        chunk
            .notes
            .iter()
            .any(|n| n.starts_with("instance 1: cannot read its log")),
        "{:?}",
        chunk.notes
    );
}

#[test]
fn a_cursor_that_is_not_ours_is_refused_with_what_to_do() {
    for bad in ["", "hello", "1.zz-0-0-0-0-0", "1.0-0-0"] {
        let err = bad.parse::<LogCursor>().unwrap_err();
        assert!(matches!(err, PlatformError::BadCursor { .. }), "{bad:?}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains("invalid log cursor") && text.contains("previous answer"),
            "{text}"
        );
    }
}

/// Static hosts run their instances elsewhere: no logs here, and the error says where to look.
#[test]
fn a_platform_without_logs_says_where_to_read_them() {
    let state = tempfile::tempdir().unwrap();
    let config = StaticHostsConfig {
        blue: vec!["127.0.0.1:7001".parse().unwrap()],
        green: vec!["127.0.0.1:7002".parse().unwrap()],
        stop_command: None,
        hook_timeout_ms: 10_000,
    };
    let platform = StaticHostsPlatform::new("shop", config, state.path()).unwrap();
    let err = platform.read_logs("shop", Slot::Blue, &tail(10)).unwrap_err();
    assert!(matches!(err, PlatformError::LogsNotKept { .. }), "{err:?}");
    assert!(err.to_string().contains("read them where they run"), "{err}");
}

fn printer(version: &str, instances: u32) -> ReleaseSpec {
    let mut release = ReleaseSpec::new(version, "echo \"hello from $CUTOVER_VERSION\"; exec sleep 1000");
    release.instances = instances;
    release
}

async fn read_until(
    platform: &LocalProcessPlatform,
    slot: Slot,
    request: LogRequest,
    needle: &str,
) -> LogChunk {
    let mut found = None;
    wait_until(&format!("the logs to show {needle:?}"), DEADLINE, || {
        let chunk = platform.read_logs("shop", slot, &request).unwrap();
        let hit = chunk.lines.iter().any(|l| l.text.contains(needle));
        if hit {
            found = Some(chunk);
        }
        async move { hit }
    })
    .await;
    found.unwrap()
}

#[tokio::test]
async fn the_local_platform_reads_its_instances_logs_across_versions_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let platform = LocalProcessPlatform::new(state.clone()).unwrap();
    let v1 = printer("v1", 2);

    // Nothing ran yet: no lines, and a note saying so.
    let empty = platform.read_logs("shop", Slot::Blue, &tail(10)).unwrap();
    assert!(empty.lines.is_empty() && empty.version.is_none(), "{empty:?}");
    assert!(
        empty.notes.iter().any(|n| n.contains("no logs")),
        "{:?}",
        empty.notes
    );

    let started = platform.start("shop", Slot::Blue, &v1).await.unwrap();
    let guard = Killer(started.iter().filter_map(|i| i.pid).collect());
    let first = read_until(&platform, Slot::Blue, tail(10), "hello from v1").await;
    assert_eq!(first.version.as_deref(), Some("v1"));
    assert_eq!(first.instances, 2);
    // The banner cutover writes, then the instance's own output.
    assert!(
        first.lines[0]
            .text
            .starts_with("=== cutover: app shop, slot blue, version v1, instance 0"),
        "{first:?}"
    );

    // v2 replaces v1 in the slot: a follower's cursor restarts on the new files.
    let v2 = printer("v2", 1);
    let started = platform.start("shop", Slot::Blue, &v2).await.unwrap();
    let guard = guard.with(started.iter().filter_map(|i| i.pid));
    let next = read_until(&platform, Slot::Blue, after(&first), "hello from v2").await;
    assert_eq!(next.version.as_deref(), Some("v2"));
    assert!(next.restarted, "{next:?}");
    assert!(next.lines.iter().all(|l| l.version == "v2"), "{next:?}");

    // Stopped: the logs of its last instances stay readable, here and after a restart of
    // cutover.
    platform
        .stop("shop", Slot::Blue, Duration::from_secs(5))
        .await
        .unwrap();
    let stopped = platform.read_logs("shop", Slot::Blue, &tail(10)).unwrap();
    assert!(
        stopped.lines.iter().any(|l| l.text == "hello from v2"),
        "{stopped:?}"
    );
    let restarted = LocalProcessPlatform::new(state).unwrap();
    let again = restarted.read_logs("shop", Slot::Blue, &tail(10)).unwrap();
    assert_eq!(again.version.as_deref(), Some("v2"));
    assert_eq!(texts(&again), texts(&stopped));
    drop(guard);
}

/// SIGKILLs the process groups a test started when it ends, passed or failed.
struct Killer(Vec<u32>);

impl Killer {
    fn with(mut self, more: impl Iterator<Item = u32>) -> Self {
        self.0.extend(more);
        self
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        for &pgid in &self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
