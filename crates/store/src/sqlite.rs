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

use crate::{decode_state, encode_commit, Store, StoreError, StoredEvent};

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
                        event.kind,
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
                        kind,
                        message,
                        data,
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
