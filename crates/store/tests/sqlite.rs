#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What only the SQLite store can get wrong: the file across reopening, atomicity as another
//! connection sees it, schema versions, damaged rows, paths it cannot use.

use std::net::SocketAddr;
use std::path::Path;

use cutover_core::rollout::{handle, AppState, Event, Input};
use cutover_core::{ReleaseSpec, RolloutPolicy, Timestamp};
use cutover_flags::Flag;
use cutover_store::{FlagChange, FlagSet, SqliteStore, Store, StoreError};
use rusqlite::Connection;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `web` with v1 live in blue and a rollout of v2 just started, and the deploy's events.
fn deployed() -> (AppState, Vec<Event>) {
    let mut state = AppState::new("web");
    state.blue.release = Some(ReleaseSpec::new("v1", "run v1"));
    state.blue.backends = vec![addr(9001)];
    let input = Input::Deploy {
        release: ReleaseSpec::new("v2", "run v2"),
        policy: RolloutPolicy::default(),
        forced: false,
        migrate: false,
    };
    let t = handle(&state, input, Timestamp(1_700_000_000_000)).unwrap();
    (t.state, t.events)
}

fn event(n: u64) -> Event {
    Event {
        at: Timestamp(1_700_000_000_000 + n),
        rollout_id: Some(1),

        message: format!("event {n}"),
        detail: cutover_core::event::EventDetail::Unrecognized {
            kind: "test".into(),
            data: serde_json::json!({ "n": n }),
        },
    }
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (state, events) = deployed();
    let stored = {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.path(), path);
        store.commit(&state, &events).unwrap()
    };

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load("web").unwrap(), Some(state.clone()));
    assert_eq!(store.apps().unwrap(), vec!["web"]);
    assert_eq!(store.events("web", None, 0, 100).unwrap(), stored);
    assert_eq!(
        store.rollouts("web", 10).unwrap(),
        vec![state.rollout.clone().unwrap()]
    );
    let next = store.commit(&state, &[event(1)]).unwrap();
    assert_eq!(
        next[0].seq,
        stored.len() as u64 + 1,
        "numbering continues after reopening"
    );
}

#[test]
fn a_commit_is_visible_whole_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let (state, _) = deployed();
    let events: Vec<Event> = (1..=3).map(event).collect();
    store.commit(&state, &events).unwrap();

    // The store is still open: the other connection reads through the WAL, as the API or a person
    // with `sqlite3` would.
    let other = raw(&path);
    let json: String = other
        .query_row("SELECT state_json FROM apps WHERE app = 'web'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<AppState>(&json).unwrap(), state);
    assert_eq!(count(&other, "SELECT COUNT(*) FROM events WHERE app = 'web'"), 3);
    let (phase, version): (String, String) = other
        .query_row(
            "SELECT phase, version FROM rollouts WHERE app = 'web' AND id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((phase.as_str(), version.as_str()), ("provisioning", "v2"));
}

#[test]
fn a_commit_that_fails_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let before = AppState::new("web");
    store.commit(&before, &[event(1)]).unwrap();

    // Make the last statement of a commit (recording the rollout) fail, after the state and the
    // events were written inside the transaction.
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER refuse_rollouts BEFORE INSERT ON rollouts
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let (state, events) = deployed();
    let err = store.commit(&state, &events).unwrap_err();
    assert!(matches!(err, StoreError::Database { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("app web"), "{message}");

    assert_eq!(
        store.load("web").unwrap(),
        Some(before.clone()),
        "state rolled back"
    );
    assert_eq!(
        store.events("web", None, 0, 100).unwrap().len(),
        1,
        "events rolled back"
    );
    assert!(store.rollouts("web", 10).unwrap().is_empty());

    // The connection is usable afterwards, and numbering is unaffected by the failed attempt.
    raw(&path).execute_batch("DROP TRIGGER refuse_rollouts").unwrap();
    let stored = store.commit(&state, &events).unwrap();
    assert_eq!(stored[0].seq, 2);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    let newer = SqliteStore::SCHEMA_VERSION + 1;
    raw(&path).pragma_update(None, "user_version", newer).unwrap();

    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::TooNew {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path.display().to_string());
            assert_eq!((*found, *supported), (newer, SqliteStore::SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade cutover"), "{err}");
    // Refusing must not touch the file.
    assert_eq!(count(&raw(&path), "PRAGMA user_version"), i64::from(newer));
}

#[test]
fn opening_a_file_twice_keeps_its_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(
        count(&raw(&path), "PRAGMA user_version"),
        i64::from(SqliteStore::SCHEMA_VERSION)
    );
    assert_eq!(
        count(
            &raw(&path),
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
        ),
        7
    );
}

#[test]
fn a_corrupt_state_names_the_app_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let (state, events) = deployed();
    store.commit(&state, &events).unwrap();
    store.commit(&AppState::new("api"), &[]).unwrap();
    raw(&path)
        .execute(
            "UPDATE apps SET state_json = '{\"app\": \"web\", \"live\":' WHERE app = 'web'",
            [],
        )
        .unwrap();

    let err = store.load("web").unwrap_err();
    match &err {
        StoreError::Corrupt { app, .. } => assert_eq!(app, "web"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("backup"), "should say what to do: {message}");
    assert_eq!(
        store.load("api").unwrap(),
        Some(AppState::new("api")),
        "other apps still load"
    );
}

#[test]
fn a_state_stored_under_another_app_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    store.commit(&AppState::new("web"), &[]).unwrap();
    store.commit(&AppState::new("api"), &[]).unwrap();
    raw(&path)
        .execute(
            "UPDATE apps SET state_json = (SELECT state_json FROM apps WHERE app = 'api') WHERE app = 'web'",
            [],
        )
        .unwrap();
    let err = store.load("web").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { app, .. } if app == "web"),
        "{err:?}"
    );
}

#[test]
fn corrupt_events_and_rollouts_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let (state, events) = deployed();
    store.commit(&state, &events).unwrap();
    let conn = raw(&path);

    conn.execute("UPDATE rollouts SET rollout_json = 'nope' WHERE app = 'web'", [])
        .unwrap();
    let err = store.rollouts("web", 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { app, .. } if app == "web"),
        "{err:?}"
    );
    assert!(err.to_string().contains("rollout #1"), "{err}");

    conn.execute(
        "UPDATE events SET data_json = '{' WHERE app = 'web' AND seq = 1",
        [],
    )
    .unwrap();
    let err = store.events("web", None, 0, 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { app, .. } if app == "web"),
        "{err:?}"
    );
    assert!(err.to_string().contains("event 1"), "{err}");

    conn.execute(
        "UPDATE events SET data_json = 'null', at_ms = -5 WHERE app = 'web' AND seq = 1",
        [],
    )
    .unwrap();
    let err = store.events("web", None, 0, 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { app, .. } if app == "web"),
        "{err:?}"
    );

    conn.execute(
        "UPDATE events SET at_ms = 'yesterday' WHERE app = 'web' AND seq = 1",
        [],
    )
    .unwrap();
    let err = store.events("web", None, 0, 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { app, .. } if app == "web"),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_directory_that_cannot_be_created_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    // A file where a directory should be: fails for root too, unlike permissions.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let path = blocker.join("sub").join("state.db");

    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::Open { path: p, reason } => {
            assert_eq!(p, &path.display().to_string());
            assert!(reason.contains("cannot create its directory"), "{reason}");
        }
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_directory_as_the_file_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path == &dir.path().display().to_string()),
        "{err:?}"
    );
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        "this is a text file, not a database; it is long enough to have a header",
    )
    .unwrap();

    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::Open { path: p, reason } => {
            assert_eq!(p, &path.display().to_string());
            assert!(
                reason.contains("not a cutover state file"),
                "should say what to do: {reason}"
            );
        }
        other => panic!("expected Open, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "this is a text file, not a database; it is long enough to have a header",
        "the file must be left alone"
    );
}

/// The state holds every release's command and environment: the file is 0600 and the directory
/// cutover makes for it 0700, whatever the umask; an existing file with wider permissions is made
/// private when opened.
#[test]
fn the_state_file_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let path = dir.path().join("new-dir").join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let (state, events) = deployed();
    store.commit(&state, &events).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600, "an existing state file is made private");
}

/// The schema of version 1, as released before flags: a file that cutover wrote, to upgrade.
const SCHEMA_V1: &str = "CREATE TABLE apps (
        app TEXT PRIMARY KEY NOT NULL,
        state_json TEXT NOT NULL,
        updated_at_ms INTEGER
    );
    CREATE TABLE events (
        app TEXT NOT NULL REFERENCES apps(app),
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        rollout_id INTEGER,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT NOT NULL,
        PRIMARY KEY (app, seq)
    );
    CREATE INDEX events_by_rollout ON events (app, rollout_id, seq);
    CREATE TABLE rollouts (
        app TEXT NOT NULL REFERENCES apps(app),
        id INTEGER NOT NULL,
        phase TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        rollout_json TEXT NOT NULL,
        PRIMARY KEY (app, id)
    );
    PRAGMA user_version = 1;";

fn flag(key: &str, default_variant: &str) -> Flag {
    serde_json::from_value(serde_json::json!({
        "key": key,
        "type": "boolean",
        "variants": { "on": true, "off": false },
        "default_variant": default_variant,
        "owner": "team-payments",
        "description": "The new checkout",
        "expires": "2027-03-31",
    }))
    .unwrap()
}

fn change(key: &str, after: Option<Flag>, expected_revision: Option<u64>) -> FlagChange {
    FlagChange {
        key: key.into(),
        after,
        expected_revision,
        who: "ci-token".into(),
        why: "test".into(),
        at: Timestamp(1_700_000_000_000),
    }
}

#[test]
fn a_state_file_of_version_1_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (state, events) = deployed();
    {
        let old = raw(&path);
        old.execute_batch(SCHEMA_V1).unwrap();
        old.execute(
            "INSERT INTO apps (app, state_json, updated_at_ms) VALUES ('web', ?1, 0)",
            [serde_json::to_string(&state).unwrap()],
        )
        .unwrap();
        old.execute(
            "INSERT INTO events (app, seq, at_ms, rollout_id, kind, message, data_json)
             VALUES ('web', 1, 5, 1, 'deploy', 'old event', '{\"n\": 1}')",
            [],
        )
        .unwrap();
    }

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        count(&raw(&path), "PRAGMA user_version"),
        i64::from(SqliteStore::SCHEMA_VERSION)
    );
    assert_eq!(
        store.load("web").unwrap(),
        Some(state.clone()),
        "the old state is kept"
    );
    assert_eq!(store.events("web", None, 0, 10).unwrap().len(), 1);
    assert_eq!(store.flags().unwrap(), FlagSet::default());
    assert!(store.flag_audit(None, 0, 10).unwrap().is_empty());

    let record = store
        .change_flag(&change(
            "new_checkout",
            Some(flag("new_checkout", "off")),
            Some(0),
        ))
        .unwrap();
    assert_eq!(record.seq, 1);
    assert_eq!(store.flags().unwrap().revision, 1);
    // The upgraded file still takes commits, numbered after the old events.
    assert_eq!(store.commit(&state, &events).unwrap()[0].seq, 2);
}

#[test]
fn flags_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (set, audit) = {
        let store = SqliteStore::open(&path).unwrap();
        store
            .change_flag(&change("a", Some(flag("a", "off")), None))
            .unwrap();
        store
            .change_flag(&change("b", Some(flag("b", "off")), None))
            .unwrap();
        store
            .change_flag(&change("a", Some(flag("a", "on")), Some(1)))
            .unwrap();
        store.change_flag(&change("b", None, Some(1))).unwrap();
        (store.flags().unwrap(), store.flag_audit(None, 0, 100).unwrap())
    };
    assert_eq!(set.revision, 4);
    assert_eq!(set.flags.len(), 1);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.flags().unwrap(), set);
    assert_eq!(store.flag_audit(None, 0, 100).unwrap(), audit);
    // Revisions and numbering continue, also for the flag archived before the restart.
    let record = store
        .change_flag(&change("b", Some(flag("b", "on")), Some(0)))
        .unwrap();
    assert_eq!(record.seq, 5);
    assert_eq!(record.after.map(|f| f.revision), Some(2));
    assert_eq!(store.flags().unwrap().revision, 5);
}

#[test]
fn a_flag_change_that_fails_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .change_flag(&change("a", Some(flag("a", "off")), None))
        .unwrap();
    let before = (store.flags().unwrap(), store.flag_audit(None, 0, 100).unwrap());

    // The audit record is written last: make it fail after the flag and the set revision were.
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON flag_audit
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    for attempt in [
        change("a", Some(flag("a", "on")), Some(1)),
        change("a", None, None),
        change("b", Some(flag("b", "on")), None),
    ] {
        let err = store.change_flag(&attempt).unwrap_err();
        assert!(matches!(err, StoreError::Database { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("flag {}", attempt.key)), "{message}");
        assert_eq!(
            (store.flags().unwrap(), store.flag_audit(None, 0, 100).unwrap()),
            before,
            "rolled back"
        );
    }

    raw(&path).execute_batch("DROP TRIGGER refuse_audit").unwrap();
    let record = store
        .change_flag(&change("a", Some(flag("a", "on")), Some(1)))
        .unwrap();
    assert_eq!((record.seq, record.after.map(|f| f.revision)), (2, Some(2)));
}

#[test]
fn corrupt_flags_are_errors_naming_the_flag_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .change_flag(&change("a", Some(flag("a", "off")), None))
        .unwrap();
    store
        .change_flag(&change("b", Some(flag("b", "off")), None))
        .unwrap();
    let conn = raw(&path);
    let corrupt_flag = |err: StoreError, key: &str| {
        match &err {
            StoreError::CorruptFlags { key: Some(k), .. } => assert_eq!(k, key, "{err}"),
            other => panic!("expected CorruptFlags of {key}, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&format!("flag {key}")), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("backup"), "says what to do: {message}");
    };

    conn.execute("UPDATE flags SET flag_json = '{\"key\":' WHERE key = 'b'", [])
        .unwrap();
    corrupt_flag(store.flags().unwrap_err(), "b");
    // A change of the damaged flag reads it first: refused the same way, nothing written.
    corrupt_flag(
        store
            .change_flag(&change("b", Some(flag("b", "on")), None))
            .unwrap_err(),
        "b",
    );
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM flag_audit"), 2);
    // Other flags can still be changed.
    store
        .change_flag(&change("a", Some(flag("a", "on")), None))
        .unwrap();

    // Valid JSON of another flag.
    conn.execute(
        "UPDATE flags SET flag_json = (SELECT flag_json FROM flags WHERE key = 'a') WHERE key = 'b'",
        [],
    )
    .unwrap();
    corrupt_flag(store.flags().unwrap_err(), "b");

    conn.execute("UPDATE flags SET flag_json = (SELECT after_json FROM flag_audit WHERE seq = 2), revision = 'one' WHERE key = 'b'", [])
        .unwrap();
    let err = store.flags().unwrap_err();
    assert!(matches!(err, StoreError::CorruptFlags { .. }), "{err:?}");
    conn.execute("UPDATE flags SET revision = 1 WHERE key = 'b'", [])
        .unwrap();
    assert_eq!(store.flags().unwrap().flags.len(), 2, "repaired");

    conn.execute("UPDATE flag_audit SET after_json = 'nope' WHERE seq = 1", [])
        .unwrap();
    corrupt_flag(store.flag_audit(None, 0, 10).unwrap_err(), "a");
    assert!(
        store.flag_audit(Some("b"), 0, 10).is_ok(),
        "another flag's audit still reads"
    );
    conn.execute(
        "UPDATE flag_audit SET after_json = NULL, at_ms = -1 WHERE seq = 1",
        [],
    )
    .unwrap();
    corrupt_flag(store.flag_audit(Some("a"), 0, 10).unwrap_err(), "a");

    conn.execute("DELETE FROM flag_meta", []).unwrap();
    let err = store.flags().unwrap_err();
    assert!(
        matches!(&err, StoreError::CorruptFlags { key: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("flag_meta"), "{err}");
    assert!(matches!(
        store.change_flag(&change("a", None, None)),
        Err(StoreError::CorruptFlags { key: None, .. })
    ));
}

#[test]
fn a_flag_change_is_visible_whole_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .change_flag(&change("a", Some(flag("a", "off")), None))
        .unwrap();
    store
        .change_flag(&change("a", Some(flag("a", "on")), Some(1)))
        .unwrap();
    let other = raw(&path);
    let (revision, json): (i64, String) = other
        .query_row(
            "SELECT revision, flag_json FROM flags WHERE key = 'a'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(revision, 2);
    let stored: Flag = serde_json::from_str(&json).unwrap();
    assert_eq!((stored.default_variant.as_str(), stored.revision), ("on", 2));
    assert_eq!(count(&other, "SELECT set_revision FROM flag_meta"), 2);
    assert_eq!(
        count(&other, "SELECT COUNT(*) FROM flag_audit WHERE key = 'a'"),
        2
    );
}
