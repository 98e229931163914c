//! Sessions in a SQLite file: the default store, enough when every instance runs on
//! one machine (or shares a file system with working locks).

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::{Backend, OpenErrorLog, Session, StoreError};

/// How long SQLite retries while another process holds the write lock. Instances
/// of both slots write to the same file, so short waits are normal.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteBackend {
    path: PathBuf,
    conn: Option<Connection>,
    open_errors: OpenErrorLog,
}

impl SqliteBackend {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: None,
            open_errors: OpenErrorLog::default(),
        }
    }

    fn connection(&mut self) -> Result<&Connection, StoreError> {
        if self.conn.is_none() {
            match open(&self.path) {
                Ok(conn) => {
                    tracing::info!(path = %self.path.display(), "session store opened");
                    self.conn = Some(conn);
                    self.open_errors.opened();
                }
                Err(e) => {
                    self.open_errors.failed(&e);
                    return Err(e);
                }
            }
        }
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError("the session store is not open".into()))
    }

    /// Runs a query. A failed query keeps the connection: SQLite errors at this point
    /// (a busy lock, a full disk) concern the file, not the handle.
    fn query<T>(&mut self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(self.connection()?).map_err(|e| StoreError(format!("query failed: {e}")))
    }
}

impl Backend for SqliteBackend {
    /// Reads the sessions table rather than `SELECT 1`, so the file itself is checked.
    fn ping(&mut self) -> Result<(), StoreError> {
        self.query(|conn| {
            conn.query_row("SELECT 1 FROM sessions LIMIT 1", [], |_| Ok(()))
                .optional()
                .map(|_| ())
        })
    }

    fn insert(&mut self, session: &Session) -> Result<(), StoreError> {
        self.query(|conn| {
            conn.execute(
                "INSERT INTO sessions (id, user, issued_by_version, created_at) VALUES (?1, ?2, ?3, ?4)",
                (
                    &session.id,
                    &session.user,
                    &session.issued_by_version,
                    session.created_at,
                ),
            )
            .map(|_| ())
        })
    }

    fn get(&mut self, id: &str) -> Result<Option<Session>, StoreError> {
        self.query(|conn| {
            conn.query_row(
                "SELECT user, issued_by_version, created_at FROM sessions WHERE id = ?1",
                [id],
                |row| {
                    Ok(Session {
                        id: id.to_owned(),
                        user: row.get(0)?,
                        issued_by_version: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        self.query(|conn| {
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map(|n| n > 0)
        })
    }
}

fn open(path: &std::path::Path) -> Result<Connection, StoreError> {
    let err = |what: &str, e: rusqlite::Error| {
        let (e, path) = (e.to_string(), path.display().to_string());
        // SQLite's open errors already end with the path; saying it twice is noise.
        if e.contains(&path) {
            StoreError(format!("{what}: {e}"))
        } else {
            StoreError(format!("{what} {path}: {e}"))
        }
    };
    let conn = Connection::open(path).map_err(|e| err("opening", e))?;
    // Set before anything else: even switching to WAL needs a lock that another
    // instance opening the file at the same moment may hold.
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| err("setting busy_timeout on", e))?;
    // WAL lets the other slot read while one writes, instead of failing with
    // SQLITE_BUSY on every overlapping request.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| err("enabling WAL on", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Happens on file systems without shared memory; still usable, just slower
        // under contention.
        tracing::warn!(path = %path.display(), %mode, "session store could not switch to WAL");
    }
    // In WAL mode NORMAL still never corrupts the file; it may only lose the last
    // logins on power loss, which is fine for sessions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| err("setting synchronous on", e))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sessions (
             id TEXT PRIMARY KEY,
             user TEXT NOT NULL,
             issued_by_version TEXT NOT NULL,
             created_at INTEGER NOT NULL
         )",
    )
    .map_err(|e| err("creating the sessions table in", e))?;
    Ok(conn)
}
