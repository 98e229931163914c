//! Login sessions kept in a SQLite file that every instance of the app opens, so a
//! user who logged in on the blue slot is still logged in when green answers.
//!
//! SQLite calls block, so one dedicated thread owns the connection and request
//! handlers send it jobs over a channel: the async worker threads never wait on disk
//! or on another process's lock, and routes that do not use sessions (`/` above all)
//! never touch the store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

/// How long SQLite retries while another process holds the write lock. Instances
/// of both slots write to the same file, so short waits are normal.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs that may wait for the store thread; beyond this, senders wait for a free
/// slot (bounded by their own timeout) instead of queueing without limit.
const QUEUE_LEN: usize = 256;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "example_session";

/// A stored login session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub issued_by_version: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Why the store could not do what was asked, worded for a response body.
#[derive(Debug, Clone)]
pub struct StoreError(String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) + Send>;

/// Handle to the thread that owns the SQLite connection.
#[derive(Debug, Clone)]
pub struct SessionStore {
    jobs: mpsc::Sender<Job>,
}

impl SessionStore {
    /// Starts the store thread. The file is opened lazily and reopened after a
    /// failure, so an instance started while the store is unreachable recovers
    /// without a restart; until then every call (and so readiness) reports why.
    pub fn start(path: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || store_thread(&path, rx))?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the store thread, giving up after `timeout` (the job may still
    /// run later; every job is safe to finish unobserved).
    async fn call<T, F>(&self, timeout: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn).map_err(|e| StoreError(format!("query failed: {e}"))),
                Err(e) => Err(e.clone()),
            };
            // The caller may have timed out and gone; nothing is waiting then.
            let _ = reply_tx.send(result);
        });
        let exchange = async {
            self.jobs
                .send(job)
                .await
                .map_err(|_| StoreError("the session store thread has stopped".into()))?;
            reply_rx
                .await
                .map_err(|_| StoreError("the session store thread has stopped".into()))?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(StoreError(format!("no answer within {timeout:?}"))))
    }

    /// A trivial query that still reads the file, for readiness.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.call(timeout, |conn| {
            conn.query_row("SELECT 1 FROM sessions LIMIT 1", [], |_| Ok(()))
                .optional()
                .map(|_| ())
        })
        .await
    }

    pub async fn create(
        &self,
        timeout: Duration,
        user: String,
        version: String,
    ) -> Result<Session, StoreError> {
        let session = Session {
            // 128 bits from rand's CSPRNG-backed thread generator: unguessable, and
            // collisions are not a practical concern.
            id: format!("{:032x}", rand::random::<u128>()),
            user,
            issued_by_version: version,
            created_at: unix_now(),
        };
        self.call(timeout, move |conn| {
            conn.execute(
                "INSERT INTO sessions (id, user, issued_by_version, created_at) VALUES (?1, ?2, ?3, ?4)",
                (
                    &session.id,
                    &session.user,
                    &session.issued_by_version,
                    session.created_at,
                ),
            )?;
            Ok(session)
        })
        .await
    }

    pub async fn get(&self, timeout: Duration, id: String) -> Result<Option<Session>, StoreError> {
        self.call(timeout, move |conn| {
            conn.query_row(
                "SELECT user, issued_by_version, created_at FROM sessions WHERE id = ?1",
                [&id],
                |row| {
                    Ok(Session {
                        id: id.clone(),
                        user: row.get(0)?,
                        issued_by_version: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Whether a session was removed.
    pub async fn delete(&self, timeout: Duration, id: String) -> Result<bool, StoreError> {
        self.call(timeout, move |conn| {
            conn.execute("DELETE FROM sessions WHERE id = ?1", [&id])
                .map(|n| n > 0)
        })
        .await
    }
}

/// Whether `id` could have been issued by [`SessionStore::create`]; anything else is
/// rejected without a query.
pub fn is_well_formed_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn store_thread(path: &Path, mut jobs: mpsc::Receiver<Job>) {
    let mut store = LazyConnection {
        conn: None,
        last_error: None,
    };
    // Opened up front so a bad path shows in the log at startup rather than at the
    // first login.
    let _ = store.get(path);
    while let Some(job) = jobs.blocking_recv() {
        match store.get(path) {
            Ok(conn) => job(Ok(conn)),
            Err(e) => job(Err(&e)),
        }
    }
}

struct LazyConnection {
    conn: Option<Connection>,
    /// Remembered so a store that stays broken is logged once, not on every request.
    last_error: Option<String>,
}

impl LazyConnection {
    fn get(&mut self, path: &Path) -> Result<&Connection, StoreError> {
        if self.conn.is_none() {
            match open(path) {
                Ok(conn) => {
                    tracing::info!(path = %path.display(), "session store opened");
                    self.conn = Some(conn);
                    self.last_error = None;
                }
                Err(e) => {
                    if self.last_error.as_deref() != Some(e.0.as_str()) {
                        tracing::warn!("session store unavailable: {e}");
                        self.last_error = Some(e.0.clone());
                    }
                    return Err(e);
                }
            }
        }
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError("the session store is not open".into()))
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
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
