//! The store in one SQLite file.
//!
//! The controller commits a transition *before* it carries out the transition's actions, so the
//! file is the controller's memory across a `kill -9`: a commit that returned is on disk, and one
//! interrupted by a crash left nothing behind.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_core::rollout::{AppState, Event, Rollout};
use cutover_core::Timestamp;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::flags::{check_change, encode_flag, encode_ramp, flag_i64, plan_change};
use crate::{
    decode_state, encode_commit, FlagChange, FlagChangeRecord, FlagSet, Store, StoreError, StoredEvent,
};
use cutover_flags::Flag;

/// The schema, one migration per version: `MIGRATIONS[i]` takes a file from version `i` to
/// `i + 1`. Append only; a released migration is never edited, since files out there already ran
/// it.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE apps (
        app TEXT PRIMARY KEY NOT NULL,
        state_json TEXT NOT NULL,
        -- Wall-clock time of the last write, for people looking at the file; cutover never reads it.
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
    );",
    // Version 2: feature flags (issue #12).
    "CREATE TABLE flags (
        key TEXT PRIMARY KEY NOT NULL,
        -- Authoritative for compare and swap; the copy inside flag_json is overwritten on read.
        revision INTEGER NOT NULL,
        flag_json TEXT NOT NULL
    );
    -- One row: the revision of the whole flag set, bumped by every change.
    CREATE TABLE flag_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        set_revision INTEGER NOT NULL
    );
    INSERT INTO flag_meta (id, set_revision) VALUES (1, 0);
    -- Every change, archived flags included: the flag's history once its row in flags is gone.
    CREATE TABLE flag_audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        key TEXT NOT NULL,
        -- The flag's revision as of the change (for an archive, the archived flag's), so a flag
        -- created again continues from it.
        revision INTEGER NOT NULL,
        who TEXT NOT NULL,
        why TEXT NOT NULL,
        before_json TEXT,
        after_json TEXT
    );
    CREATE INDEX flag_audit_by_key ON flag_audit (key, seq);",
    // Version 3: guarded ramps of flags (issue #12).
    "CREATE TABLE flag_ramps (
        flag TEXT NOT NULL,
        id INTEGER NOT NULL,
        phase TEXT NOT NULL,
        ramp_json TEXT NOT NULL,
        PRIMARY KEY (flag, id)
    );",
];

/// How long a write waits for another connection's lock (another cutover process, or a person
/// with the `sqlite3` shell open) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Store`] in a SQLite file.
///
/// One connection behind a [`Mutex`]: every method holds the lock only for its own few statements
/// and never across an `.await` (the methods are synchronous), so callers never wait long and an
/// async runtime cannot deadlock on it.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The schema version this build writes and the newest it can read.
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// Opens the state file at `path`, creating it and its parent directories if needed, and
    /// brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                // Private whatever the umask: the state holds every release's command and env.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| StoreError::Open {
                        path: shown.clone(),
                        reason: format!(
                            "cannot create its directory {}: {e}; create it by hand, or choose a state file in a writable directory",
                            parent.display()
                        ),
                    })?;
            }
        }
        if path.is_dir() {
            return Err(StoreError::Open {
                path: shown,
                reason: "it is a directory; give the path of a file in it, such as state.db".into(),
            });
        }
        // The state file is 0600 whatever the umask, new or old; SQLite gives its WAL and shared
        // memory files the database file's permissions.
        let private = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
        private.map_err(|e| StoreError::Open {
            path: shown.clone(),
            reason: format!("cannot create it or make it private (0600): {e}; check the directory's owner and permissions"),
        })?;
        let open_err = |doing: &str, e: rusqlite::Error| StoreError::Open {
            path: shown.clone(),
            reason: format!("{doing}: {e}; {}", hint(&e)),
        };
        let mut conn = Connection::open(path).map_err(|e| open_err("cannot open it", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err("cannot set the busy timeout", e))?;
        // WAL: readers (the API, a person's `sqlite3`) never block the controller's writes, and a
        // commit is one append to the log.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| open_err("cannot read it as a SQLite database", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still correct (the rollback journal is just as atomic), only slower and with readers
            // blocking writers; some network file systems cannot do WAL.
            tracing::warn!(path = %shown, %mode, "state file is not in WAL mode; keep it on a local disk");
        }
        // FULL: a transition must be on disk before its side effects (routes, stopping instances)
        // run; NORMAL in WAL mode may lose the last commits on power loss, and with them the
        // controller's knowledge of what it already did.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_err("cannot set synchronous=FULL", e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| open_err("cannot enable foreign keys", e))?;
        migrate(&mut conn, &shown)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The file this store keeps its state in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot have left a transaction half-done: rusqlite rolls
        // a `Transaction` back when it is dropped during unwinding. The connection is still good.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn db_err(&self, action: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        let action = action.into();
        move |e| StoreError::Database {
            path: self.path.display().to_string(),
            action,
            hint: hint(&e),
            reason: e.to_string(),
        }
    }

    /// A value read from a row of `app` that has the wrong type or range is damage to that app's
    /// data, not a failure of the database.
    fn read_err(&self, app: &str, what: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        let (app, what) = (app.to_string(), what.to_string());
        move |e| match e {
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt {
                reason: format!(
                    "{what} in {} has a value of the wrong type ({e}); restore the file from a backup",
                    self.path.display()
                ),
                app,
            },
            e => (self.db_err(format!("reading {what} of app {app}")))(e),
        }
    }

    fn corrupt(&self, app: &str, what: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            app: app.to_string(),
            reason: format!(
                "{what} in {} is invalid ({detail}); restore the file from a backup",
                self.path.display()
            ),
        }
    }

    /// [`SqliteStore::corrupt`] for flag data; `key` is `None` for the set's bookkeeping.
    fn corrupt_flags(&self, key: Option<&str>, what: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::CorruptFlags {
            key: key.map(str::to_string),
            reason: format!(
                "{what} in {} is invalid ({detail}); restore the file from a backup",
                self.path.display()
            ),
        }
    }

    /// [`SqliteStore::read_err`] for flag data: a value of the wrong type is damage, anything
    /// else a failure of the database while `action`.
    fn flag_read_err<'a>(
        &'a self,
        key: Option<&'a str>,
        what: &'a str,
        action: &'a str,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
        move |e| match e {
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => self.corrupt_flags(key, what, e),
            e => (self.db_err(action))(e),
        }
    }

    /// A stored flag, checked to be the one its row says. `revision` is the row's, which wins over
    /// the copy in the JSON: it is what compare and swap compares.
    fn decode_flag(&self, key: &str, revision: i64, json: &str, what: &str) -> Result<Flag, StoreError> {
        let mut flag: Flag =
            serde_json::from_str(json).map_err(|e| self.corrupt_flags(Some(key), what, e))?;
        if flag.key != key {
            return Err(self.corrupt_flags(
                Some(key),
                what,
                format!(
                    "it holds flag {:?}; the file was edited by hand or is damaged",
                    flag.key
                ),
            ));
        }
        flag.revision = u64::try_from(revision).map_err(|e| self.corrupt_flags(Some(key), what, e))?;
        Ok(flag)
    }

    /// An audit copy of a flag (`before_json` or `after_json`), if there is one.
    fn decode_audit_flag(
        &self,
        key: &str,
        json: Option<&str>,
        what: &str,
    ) -> Result<Option<Flag>, StoreError> {
        json.map(|json| {
            let flag: Flag =
                serde_json::from_str(json).map_err(|e| self.corrupt_flags(Some(key), what, e))?;
            if flag.key != key {
                return Err(self.corrupt_flags(
                    Some(key),
                    what,
                    format!(
                        "it holds flag {:?}; the file was edited by hand or is damaged",
                        flag.key
                    ),
                ));
            }
            Ok(flag)
        })
        .transpose()
    }

    /// The set's revision, inside the caller's transaction. The row is made by the migration and
    /// never deleted by cutover: without it the revision would restart and readers caching by it
    /// would miss changes, so its absence is damage, not 0.
    fn set_revision(&self, conn: &Connection, action: &str) -> Result<u64, StoreError> {
        const WHAT: &str = "the flag set's revision (table flag_meta)";
        let revision: Option<i64> = conn
            .query_row("SELECT set_revision FROM flag_meta WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.flag_read_err(None, WHAT, action))?;
        let revision = revision.ok_or_else(|| self.corrupt_flags(None, WHAT, "its row is missing"))?;
        u64::try_from(revision).map_err(|e| self.corrupt_flags(None, WHAT, e))
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let supported = SqliteStore::SCHEMA_VERSION;
    let open_err = |doing: &str, e: rusqlite::Error| StoreError::Open {
        path: path.to_string(),
        reason: format!("{doing}: {e}; {}", hint(&e)),
    };
    let check = |found: i64| -> Result<u32, StoreError> {
        let found = u32::try_from(found).map_err(|_| StoreError::Open {
            path: path.to_string(),
            reason: format!(
                "its schema version is {found}, which no cutover writes; it is not a cutover state file: choose another path"
            ),
        })?;
        if found > supported {
            return Err(StoreError::TooNew {
                path: path.to_string(),
                found,
                supported,
            });
        }
        Ok(found)
    };
    let version = |conn: &Connection| -> Result<i64, StoreError> {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| open_err("cannot read its schema version", e))
    };
    // Checked before any migration so a newer file is refused without taking the write lock.
    check(version(conn)?)?;
    for (target, sql) in (1..=supported).zip(MIGRATIONS) {
        // IMMEDIATE takes the write lock up front and the version is re-read under it: two
        // processes opening one old file at once must not both run a migration.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| open_err("cannot start upgrading its schema", e))?;
        if check(version(&tx)?)? >= target {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| open_err(&format!("cannot upgrade its schema to version {target}"), e))?;
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| open_err(&format!("cannot record schema version {target}"), e))?;
        tx.commit()
            .map_err(|e| open_err(&format!("cannot commit schema version {target}"), e))?;
        tracing::info!(%path, version = target, "state file schema upgraded");
    }
    Ok(())
}

/// What a person can do about a SQLite failure.
fn hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "another process holds a lock on the file: stop any other cutover (or sqlite3 shell) using it, then retry"
        }
        Some(ErrorCode::DiskFull) => "the disk is full: free some space, then retry",
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "check that the file and its directory exist and are writable by this user"
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "the file is damaged or not a cutover state file: restore it from a backup; or move it aside (keep it) to start with no history: the running instances are adopted and keep serving"
        }
        Some(ErrorCode::SystemIoFailure) => "the disk reported an I/O error: check the disk and the system log",
        _ => "check the disk and the file's permissions; if that does not help, report this message as a bug",
    }
}

/// Milliseconds since the epoch by the wall clock, for `updated_at_ms` only.
fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A query's `LIMIT`: SQLite takes an i64, and more rows than that cannot exist anyway.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn load(&self, app: &str) -> Result<Option<AppState>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT state_json FROM apps WHERE app = ?1", [app], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.read_err(app, "the state"))?;
        let location = format!("{} (table apps)", self.path.display());
        json.map(|json| decode_state(app, &json, &location)).transpose()
    }

    fn apps(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let run = || -> rusqlite::Result<Vec<String>> {
            // BINARY collation compares UTF-8 bytes, the same order as Rust's `str`.
            let mut stmt = conn.prepare_cached("SELECT app FROM apps ORDER BY app")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            rows.collect()
        };
        run().map_err(self.db_err("listing the apps"))
    }

    fn commit_ending(
        &self,
        state: &AppState,
        events: &[Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let app = state.app.as_str();
        let encoded = encode_commit(state, events, ended)?;
        let mut conn = self.conn();
        let action = format!("saving the state of app {app}");
        // IMMEDIATE: the write lock is taken before the max seq is read. A deferred transaction
        // would upgrade at its first write, which in WAL mode fails at once (no busy wait) if
        // another connection wrote in between.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err(action.clone()))?;
        let last_seq = {
            let write = || -> rusqlite::Result<i64> {
                tx.execute(
                    "INSERT INTO apps (app, state_json, updated_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (app) DO UPDATE
                     SET state_json = excluded.state_json, updated_at_ms = excluded.updated_at_ms",
                    params![app, encoded.state_json, wall_clock_ms()],
                )?;
                let last_seq: i64 = tx.query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE app = ?1",
                    [app],
                    |row| row.get(0),
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (app, seq, at_ms, rollout_id, kind, message, data_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for ((event, row), seq) in events.iter().zip(&encoded.events).zip(last_seq + 1..) {
                    insert.execute(params![
                        app,
                        seq,
                        row.at_ms,
                        row.rollout_id,
                        event.kind(),
                        event.message,
                        row.data_json
                    ])?;
                }
                for row in &encoded.rollouts {
                    tx.execute(
                        "INSERT INTO rollouts (app, id, phase, version, started_at_ms, rollout_json)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (app, id) DO UPDATE
                         SET phase = excluded.phase, version = excluded.version,
                             started_at_ms = excluded.started_at_ms, rollout_json = excluded.rollout_json",
                        params![app, row.id, row.phase, row.version, row.started_at_ms, row.json],
                    )?;
                }
                Ok(last_seq)
            };
            write().map_err(self.db_err(action.clone()))?
        };
        tx.commit().map_err(self.db_err(action))?;
        let first = u64::try_from(last_seq)
            .map_err(|e| self.corrupt(app, "the largest event seq", e))?
            .saturating_add(1);
        Ok(events
            .iter()
            .zip(first..)
            .map(|(event, seq)| StoredEvent {
                seq,
                app: app.to_string(),
                event: event.clone(),
            })
            .collect())
    }

    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Past i64::MAX there is nothing to find, and the rollout id cannot have been stored.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rollout_id = match rollout_id.map(i64::try_from) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Ok(Vec::new()),
        };
        type Raw = (i64, i64, Option<i64>, String, String, String);
        let raw: Vec<Raw> = {
            let conn = self.conn();
            let run = || -> rusqlite::Result<Vec<Raw>> {
                // Two statements rather than `(?2 IS NULL OR rollout_id = ?2)`, which SQLite
                // cannot answer from the index.
                let mut stmt = match rollout_id {
                    None => conn.prepare_cached(
                        "SELECT seq, at_ms, rollout_id, kind, message, data_json FROM events
                         WHERE app = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )?,
                    Some(_) => conn.prepare_cached(
                        "SELECT seq, at_ms, rollout_id, kind, message, data_json FROM events
                         WHERE app = ?1 AND rollout_id = ?4 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )?,
                };
                let map = |row: &rusqlite::Row<'_>| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                };
                let rows = match rollout_id {
                    None => stmt.query_map(params![app, after, sql_limit(limit)], map)?,
                    Some(id) => stmt.query_map(params![app, after, sql_limit(limit), id], map)?,
                };
                rows.collect()
            };
            run().map_err(self.read_err(app, "the events"))?
        };
        raw.into_iter()
            .map(|(seq, at_ms, rollout_id, kind, message, data_json)| {
                let what = || format!("event {seq}");
                let data = serde_json::from_str(&data_json).map_err(|e| self.corrupt(app, &what(), e))?;
                Ok(StoredEvent {
                    seq: u64::try_from(seq).map_err(|e| self.corrupt(app, &what(), e))?,
                    app: app.to_string(),
                    event: Event {
                        at: Timestamp(u64::try_from(at_ms).map_err(|e| self.corrupt(app, &what(), e))?),
                        rollout_id: rollout_id
                            .map(u64::try_from)
                            .transpose()
                            .map_err(|e| self.corrupt(app, &what(), e))?,
                        message,
                        detail: cutover_core::event::EventDetail::from_parts(kind, data),
                    },
                })
            })
            .collect()
    }

    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        let raw: Vec<(i64, String)> = {
            let conn = self.conn();
            let run = || -> rusqlite::Result<Vec<(i64, String)>> {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, rollout_json FROM rollouts WHERE app = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![app, sql_limit(limit)], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                rows.collect()
            };
            run().map_err(self.read_err(app, "the rollouts"))?
        };
        raw.into_iter()
            .map(|(id, json)| {
                serde_json::from_str(&json).map_err(|e| self.corrupt(app, &format!("rollout #{id}"), e))
            })
            .collect()
    }

    fn flags(&self) -> Result<FlagSet, StoreError> {
        const ACTION: &str = "reading the flags";
        let mut conn = self.conn();
        // One read transaction: the revision is that of exactly the flags read with it, even while
        // another connection writes.
        let tx = conn.transaction().map_err(self.db_err(ACTION))?;
        let revision = self.set_revision(&tx, ACTION)?;
        let raw: Vec<(String, i64, String)> = {
            let run = || -> rusqlite::Result<Vec<(String, i64, String)>> {
                // BINARY collation compares UTF-8 bytes, the same order as Rust's `str`.
                let mut stmt =
                    tx.prepare_cached("SELECT key, revision, flag_json FROM flags ORDER BY key")?;
                let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
                rows.collect()
            };
            run().map_err(self.flag_read_err(None, "a row of table flags", ACTION))?
        };
        tx.finish().map_err(self.db_err(ACTION))?;
        let flags = raw
            .into_iter()
            .map(|(key, revision, json)| {
                self.decode_flag(&key, revision, &json, &format!("flag {key} (table flags)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FlagSet { revision, flags })
    }

    fn change_flag(&self, change: &FlagChange) -> Result<FlagChangeRecord, StoreError> {
        check_change(change)?;
        let key = change.key.as_str();
        let at_ms = flag_i64(key, "the change time", change.at.as_millis())?;
        let action = format!("changing flag {key}");
        let what = format!("flag {key} (table flags)");
        let mut conn = self.conn();
        // IMMEDIATE: the write lock is taken before the stored revision is read, so no other
        // connection can change the flag between the compare and the swap.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err(action.clone()))?;
        // Any `?` below drops `tx` uncommitted, which rolls it back: a refused change writes nothing.
        let row: Option<(i64, String)> = tx
            .query_row(
                "SELECT revision, flag_json FROM flags WHERE key = ?1",
                [key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(self.flag_read_err(Some(key), &what, &action))?;
        let before = row
            .map(|(revision, json)| self.decode_flag(key, revision, &json, &what))
            .transpose()?;
        let (last_revision, last_seq): (i64, i64) = tx
            .query_row(
                "SELECT (SELECT COALESCE(MAX(revision), 0) FROM flag_audit WHERE key = ?1),
                        (SELECT COALESCE(MAX(seq), 0) FROM flag_audit)",
                [key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(self.flag_read_err(Some(key), "the flag audit (table flag_audit)", &action))?;
        let last_revision = u64::try_from(last_revision).map_err(|e| {
            self.corrupt_flags(
                Some(key),
                &format!("the revisions of flag {key} (table flag_audit)"),
                e,
            )
        })?;
        let set_revision = self.set_revision(&tx, &action)?;
        let planned = plan_change(change, before.as_ref(), last_revision)?;
        let after_json = planned.after.as_ref().map(encode_flag).transpose()?;
        let before_json = before.as_ref().map(encode_flag).transpose()?;
        let revision = flag_i64(key, "the flag revision", planned.revision)?;
        let new_set_revision = set_revision
            .checked_add(1)
            .and_then(|r| i64::try_from(r).ok())
            .ok_or_else(|| {
                self.corrupt_flags(
                    None,
                    "the flag set's revision (table flag_meta)",
                    "it cannot be increased further",
                )
            })?;
        let seq = last_seq.checked_add(1).ok_or_else(|| {
            self.corrupt_flags(
                None,
                "the flag audit's last seq (table flag_audit)",
                "it cannot be increased further",
            )
        })?;
        let write = || -> rusqlite::Result<()> {
            match &after_json {
                Some(json) => tx.execute(
                    "INSERT INTO flags (key, revision, flag_json) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE
                     SET revision = excluded.revision, flag_json = excluded.flag_json",
                    params![key, revision, json],
                )?,
                // Archived: the row goes, the audit keeps the history.
                None => tx.execute("DELETE FROM flags WHERE key = ?1", [key])?,
            };
            tx.execute(
                "UPDATE flag_meta SET set_revision = ?1 WHERE id = 1",
                [new_set_revision],
            )?;
            tx.execute(
                "INSERT INTO flag_audit (seq, at_ms, key, revision, who, why, before_json, after_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    seq,
                    at_ms,
                    key,
                    revision,
                    change.who,
                    change.why,
                    before_json,
                    after_json
                ],
            )?;
            Ok(())
        };
        write().map_err(self.db_err(action.clone()))?;
        tx.commit().map_err(self.db_err(action))?;
        Ok(FlagChangeRecord {
            seq: u64::try_from(seq)
                .map_err(|e| self.corrupt_flags(None, "the flag audit's last seq (table flag_audit)", e))?,
            key: key.to_string(),
            at: change.at,
            who: change.who.clone(),
            why: change.why.clone(),
            before,
            after: planned.after,
        })
    }

    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError> {
        const ACTION: &str = "reading the flag audit";
        const WHAT: &str = "a row of table flag_audit";
        // Past i64::MAX there is nothing to find.
        let Ok(after_seq) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        type Raw = (i64, i64, String, String, String, Option<String>, Option<String>);
        let raw: Vec<Raw> = {
            let conn = self.conn();
            let run = || -> rusqlite::Result<Vec<Raw>> {
                // Two statements rather than `(?3 IS NULL OR key = ?3)`, which SQLite cannot
                // answer from the index.
                let mut stmt = match key {
                    None => conn.prepare_cached(
                        "SELECT seq, at_ms, key, who, why, before_json, after_json FROM flag_audit
                         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )?,
                    Some(_) => conn.prepare_cached(
                        "SELECT seq, at_ms, key, who, why, before_json, after_json FROM flag_audit
                         WHERE key = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2",
                    )?,
                };
                let map = |row: &rusqlite::Row<'_>| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                };
                let rows = match key {
                    None => stmt.query_map(params![after_seq, sql_limit(limit)], map)?,
                    Some(key) => stmt.query_map(params![after_seq, sql_limit(limit), key], map)?,
                };
                rows.collect()
            };
            run().map_err(self.flag_read_err(key, WHAT, ACTION))?
        };
        raw.into_iter()
            .map(|(seq, at_ms, key, who, why, before_json, after_json)| {
                let what = format!("audit record {seq} of flag {key} (table flag_audit)");
                let corrupt = |e| self.corrupt_flags(Some(&key), &what, e);
                Ok(FlagChangeRecord {
                    seq: u64::try_from(seq).map_err(corrupt)?,
                    at: Timestamp(u64::try_from(at_ms).map_err(corrupt)?),
                    before: self.decode_audit_flag(&key, before_json.as_deref(), &what)?,
                    after: self.decode_audit_flag(&key, after_json.as_deref(), &what)?,
                    key,
                    who,
                    why,
                })
            })
            .collect()
    }

    fn ramps(&self) -> Result<Vec<cutover_flags::ramp::Ramp>, StoreError> {
        const ACTION: &str = "reading the flag ramps";
        const WHAT: &str = "a row of table flag_ramps";
        let raw: Vec<(String, String)> = {
            let conn = self.conn();
            let run = || -> rusqlite::Result<Vec<(String, String)>> {
                let mut stmt = conn.prepare_cached(
                    "SELECT flag, ramp_json FROM flag_ramps r
                     WHERE id = (SELECT MAX(id) FROM flag_ramps WHERE flag = r.flag)
                     ORDER BY flag",
                )?;
                let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            };
            run().map_err(self.flag_read_err(None, WHAT, ACTION))?
        };
        raw.into_iter()
            .map(|(flag, json)| {
                let ramp: cutover_flags::ramp::Ramp = serde_json::from_str(&json).map_err(|e| {
                    self.corrupt_flags(Some(&flag), &format!("the ramp of flag {flag} (table flag_ramps)"), e)
                })?;
                if ramp.flag != flag {
                    return Err(self.corrupt_flags(
                        Some(&flag),
                        "table flag_ramps",
                        format!("the row of flag {flag:?} holds a ramp of flag {:?}; the file was edited by hand or is damaged", ramp.flag),
                    ));
                }
                Ok(ramp)
            })
            .collect()
    }

    fn save_ramp(&self, ramp: &cutover_flags::ramp::Ramp) -> Result<(), StoreError> {
        let json = encode_ramp(ramp)?;
        let id = flag_i64(&ramp.flag, "the ramp id", ramp.id)?;
        let action = format!("saving the ramp of flag {}", ramp.flag);
        let conn = self.conn();
        conn.execute(
            "INSERT INTO flag_ramps (flag, id, phase, ramp_json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (flag, id) DO UPDATE SET phase = excluded.phase, ramp_json = excluded.ramp_json",
            params![ramp.flag, id, ramp.phase.name(), json],
        )
        .map_err(self.db_err(action))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_is_set_up_for_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let conn = store.conn();
        let get = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "2", "synchronous should be FULL (2)");
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
        assert_eq!(get("user_version"), SqliteStore::SCHEMA_VERSION.to_string());
    }
}
