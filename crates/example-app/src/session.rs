//! Login sessions kept in a store that every instance of the app uses, so a user who
//! logged in on the blue slot is still logged in when green answers: a SQLite file
//! ([`sqlite_store`]) or a Redis server ([`redis_store`]).
//!
//! Both clients block, so one dedicated thread owns the connection and request
//! handlers send it jobs over a channel: the async worker threads never wait on disk,
//! on another process's lock or on the network, and routes that do not use sessions
//! (`/` above all) never touch the store.

mod redis_store;
mod sqlite_store;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use self::redis_store::RedisBackend;
pub use self::redis_store::RedisTarget;
use self::sqlite_store::SqliteBackend;

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

/// Where sessions are kept (`--session-store`).
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A SQLite file every instance can open.
    Sqlite(PathBuf),
    /// A Redis server every instance can reach.
    Redis(RedisTarget),
}

/// What the store thread does with a session, whichever store holds it. Every
/// method opens (or reopens) the connection when there is none, so an instance
/// started while the store is unreachable recovers without a restart.
trait Backend {
    /// A trivial round trip to the store, for readiness.
    fn ping(&mut self) -> Result<(), StoreError>;
    fn insert(&mut self, session: &Session) -> Result<(), StoreError>;
    fn get(&mut self, id: &str) -> Result<Option<Session>, StoreError>;
    /// Whether a session was removed.
    fn delete(&mut self, id: &str) -> Result<bool, StoreError>;
}

type Job = Box<dyn FnOnce(&mut dyn Backend) + Send>;

/// Handle to the thread that owns the store connection.
#[derive(Debug, Clone)]
pub struct SessionStore {
    jobs: mpsc::Sender<Job>,
}

impl SessionStore {
    /// Starts the store thread. The store is opened lazily and reopened after a
    /// failure; until it works every call (and so readiness) reports why.
    pub fn start(location: StoreLocation) -> std::io::Result<Self> {
        let backend: Box<dyn Backend + Send> = match location {
            StoreLocation::Sqlite(path) => Box::new(SqliteBackend::new(path)),
            StoreLocation::Redis(target) => Box::new(RedisBackend::new(target)),
        };
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || store_thread(backend, rx))?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the store thread, giving up after `timeout` (the job may still
    /// run later; every job is safe to finish unobserved).
    async fn call<T, F>(&self, timeout: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |backend| {
            // The caller has already answered its request with a timeout; running the
            // job anyway would only hold up the jobs queued behind it, which is what
            // keeps a stuck store from recovering quickly.
            if reply_tx.is_closed() {
                return;
            }
            // The caller may time out while the job runs; nothing is waiting then.
            let _ = reply_tx.send(f(backend));
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

    /// A trivial round trip to the store, for readiness.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.call(timeout, |backend| backend.ping()).await
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
        self.call(timeout, move |backend| {
            backend.insert(&session)?;
            Ok(session)
        })
        .await
    }

    pub async fn get(&self, timeout: Duration, id: String) -> Result<Option<Session>, StoreError> {
        self.call(timeout, move |backend| backend.get(&id)).await
    }

    /// Whether a session was removed.
    pub async fn delete(&self, timeout: Duration, id: String) -> Result<bool, StoreError> {
        self.call(timeout, move |backend| backend.delete(&id)).await
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

fn store_thread(mut backend: Box<dyn Backend + Send>, mut jobs: mpsc::Receiver<Job>) {
    // Connected up front so a bad location shows in the log at startup rather than
    // at the first login; the backend logs the failure itself.
    let _ = backend.ping();
    while let Some(job) = jobs.blocking_recv() {
        job(backend.as_mut());
    }
}

/// Remembers the last failure to open the store, so a store that stays unreachable
/// is logged once rather than on every request.
#[derive(Default)]
struct OpenErrorLog {
    last: Option<String>,
}

impl OpenErrorLog {
    fn failed(&mut self, e: &StoreError) {
        if self.last.as_deref() != Some(e.0.as_str()) {
            tracing::warn!("session store unavailable: {e}");
            self.last = Some(e.0.clone());
        }
    }

    fn opened(&mut self) {
        self.last = None;
    }
}
