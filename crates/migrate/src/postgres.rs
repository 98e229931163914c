//! PostgreSQL, through `tokio-postgres`.
//!
//! What keeps the live app's queries flowing while a migration runs:
//! - every statement runs under a `lock_timeout` (default 2 s): an `ALTER TABLE` that waits for
//!   a lock held by a long transaction queues every later query of the table behind it, so
//!   waiting is cut short, the migration is rolled back, and it is tried again after a backoff,
//!   a bounded number of times;
//! - a `statement_timeout` bounds each statement's run;
//! - a session advisory lock makes a second migrator wait for the first, then find nothing
//!   left to do (the history is read after the lock is taken).
//!
//! A migration runs in one transaction with its history row unless its file says
//! `-- cutover:no-transaction` (for `CREATE INDEX CONCURRENTLY`): then each statement commits on
//! its own, the history row is written after the last one, and a crash in between leaves the
//! migration pending, so the next run repeats it from the start; its statements must be
//! idempotent (`IF NOT EXISTS`), which the linter checks.
//!
//! The connection URL is a secret (it may hold a password): it is never part of an error, a
//! log line or a `Debug` output.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::database::{line_of, outcome, shown_statement, Database, MigrateError, HISTORY_TABLE};
use crate::set::{MigrationFile, Phase};
use crate::status::Applied;

/// The advisory lock key every cutover migrator of a database takes ("cutover" in ASCII, as a
/// number, so it is unlikely to meet an app's own keys).
pub const ADVISORY_LOCK_KEY: i64 = 0x0063_7574_6f76_6572;

/// How long connecting may take unless the URL says otherwise (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How migrations run against PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// How long one statement may wait for a lock before the attempt is given up.
    pub lock_timeout: Duration,
    /// How long one statement may run (0: no limit).
    pub statement_timeout: Duration,
    /// How many times a migration whose lock was not granted is tried again.
    pub lock_retries: u32,
    /// The wait before the first retry; doubles each time, up to [`Self::max_backoff`].
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long to wait for another migrator's advisory lock.
    pub advisory_lock_wait: Duration,
    /// The connection's `application_name`, which [`cancel`] finds it by.
    pub application_name: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(15 * 60),
            lock_retries: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            advisory_lock_wait: Duration::from_secs(15 * 60),
            application_name: "cutover-migrate".to_string(),
        }
    }
}

/// What [`PostgresDatabase::on_retry`] calls.
type RetryReport = Box<dyn Fn(&str) + Send + Sync>;

/// One connection to the app's database.
pub struct PostgresDatabase {
    client: Client,
    options: PostgresOptions,
    locked: bool,
    /// Called with a line for each retry, so a caller can say what is going on.
    on_retry: Option<RetryReport>,
}

impl std::fmt::Debug for PostgresDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL.
        f.debug_struct("PostgresDatabase")
            .field("options", &self.options)
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

/// `host:port` of the URL, for messages.
fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// An error of the driver, without anything that could carry the URL.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            // "error connecting to server" alone does not say why: add the causes (refused,
            // no route, TLS), which never hold the URL.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

fn db_err(error: tokio_postgres::Error) -> MigrateError {
    MigrateError::Database(describe(&error))
}

fn is_lock_timeout(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// Milliseconds as PostgreSQL's settings take them.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The statements of `sql` with their byte offsets, as PostgreSQL's own parser splits them.
/// A file that does not parse is sent whole (PostgreSQL reports the error and its position).
fn statements(sql: &str) -> Vec<(usize, String)> {
    match pg_query::parse(sql, 0) {
        Ok(parsed) => parsed
            .protobuf
            .stmts
            .iter()
            .filter_map(|raw| {
                let start = usize::try_from(raw.stmt_location).ok()?;
                let len = usize::try_from(raw.stmt_len).ok()?;
                // stmt_len 0 means "to the end of the text".
                let end = if len == 0 { sql.len() } else { start + len };
                let text = sql.get(start..end)?;
                let body = skip_comments(text);
                let leading = text.len() - body.len();
                let body = body.trim_end();
                (!body.is_empty()).then(|| (start + leading, body.to_string()))
            })
            .collect(),
        Err(_) => vec![(0, sql.to_string())],
    }
}

/// `text` without the whitespace and comments it starts with (the parser counts a comment
/// before a statement as part of it; the statement's line is where its first word is).
fn skip_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix("--") {
            text = rest.find('\n').map_or("", |at| &rest[at..]);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.find("*/").map_or("", |at| &rest[at + 2..]);
        } else {
            return text;
        }
    }
}

/// Why one attempt at a migration failed.
enum AttemptError {
    /// A lock was not granted within `lock_timeout`: try again later.
    Lock(MigrateError),
    Fatal(MigrateError),
}

impl PostgresDatabase {
    /// Connects to `url` (a `postgres://` URL or a `key=value` string). The error never
    /// contains the URL.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, MigrateError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            MigrateError::Database(
                "the database URL does not parse (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE); \
                 it is not shown because it may hold a password"
                    .to_string(),
            )
        })?;
        // An unreachable host, or one that accepts and never answers, must not hold a rollout
        // (or `cutover migrate status`) for minutes: the whole connection, startup included, is
        // bounded. The URL's connect_timeout wins.
        let timeout = config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        config.connect_timeout(timeout);
        config.application_name(&options.application_name);
        // Host and port are not secret (the password is): they say which server failed.
        let target = target(&config);
        let (client, connection) = match tokio::time::timeout(timeout, config.connect(NoTls)).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => {
                return Err(MigrateError::Database(format!(
                    "cannot connect to {target}: {}",
                    describe(&e)
                )))
            }
            Err(_) => {
                return Err(MigrateError::Database(format!(
                    "cannot connect to {target}: no answer within {timeout:?} (set connect_timeout in the URL for more)"
                )))
            }
        };
        tokio::spawn(async move {
            // The connection ends when the client is dropped; an error is reported by the
            // next call on the client.
            let _ = connection.await;
        });

        Ok(PostgresDatabase {
            client,
            options,
            locked: false,
            on_retry: None,
        })
    }

    /// Calls `report` with a line each time a migration is tried again.
    pub fn on_retry(&mut self, report: impl Fn(&str) + Send + Sync + 'static) {
        self.on_retry = Some(Box::new(report));
    }

    async fn set_timeouts(&self) -> Result<(), MigrateError> {
        self.client
            .batch_execute(&format!(
                "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'",
                ms(self.options.lock_timeout),
                ms(self.options.statement_timeout)
            ))
            .await
            .map_err(db_err)
    }

    async fn history_table_exists(&self) -> Result<bool, MigrateError> {
        let row = self
            .client
            .query_one(&format!("SELECT to_regclass('{HISTORY_TABLE}') IS NOT NULL"), &[])
            .await
            .map_err(db_err)?;
        Ok(row.get(0))
    }

    async fn already_applied(&self, name: &str, phase: Phase) -> Result<bool, MigrateError> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT 1 FROM {HISTORY_TABLE} WHERE name = $1 AND phase = $2"),
                &[&name, &phase.as_str()],
            )
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// One attempt: every statement, then the history row.
    async fn attempt(
        &self,
        name: &str,
        phase: Phase,
        file: &MigrationFile,
        rollout_id: Option<u64>,
        now: Timestamp,
    ) -> Result<Applied, AttemptError> {
        let started = Instant::now();
        let fatal = AttemptError::Fatal;
        self.set_timeouts().await.map_err(fatal)?;
        let in_transaction = !file.no_transaction;
        if in_transaction {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| fatal(db_err(e)))?;
        }
        for (index, (offset, statement)) in statements(&file.sql).iter().enumerate() {
            if let Err(error) = self.client.batch_execute(statement).await {
                if in_transaction {
                    // Whatever the rollback says, the attempt failed for `error`.
                    let _ = self.client.batch_execute("ROLLBACK").await;
                }
                let mut text = describe(&error);
                if let Some(tokio_postgres::error::ErrorPosition::Original(at)) =
                    error.as_db_error().and_then(|db| db.position())
                {
                    // A character position in the statement, 1-based.
                    let at = usize::try_from(*at).unwrap_or(1).saturating_sub(1);
                    let byte = statement
                        .char_indices()
                        .nth(at)
                        .map_or(statement.len(), |(b, _)| b);
                    text.push_str(&format!(" at line {}", line_of(&file.sql, offset + byte)));
                }
                let failure = MigrateError::Statement {
                    file: file.path.display().to_string(),
                    index: index + 1,
                    line: line_of(&file.sql, *offset),
                    statement: shown_statement(statement),
                    error: text,
                    outcome: outcome(in_transaction, is_lock_timeout(&error)),
                };
                return Err(if is_lock_timeout(&error) {
                    AttemptError::Lock(failure)
                } else {
                    AttemptError::Fatal(failure)
                });
            }
        }
        let applied = Applied {
            name: name.to_string(),
            phase,
            checksum: file.checksum.clone(),
            applied_at: now,
            rollout_id,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let recorded = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {HISTORY_TABLE} (name, phase, checksum, applied_at_ms, rollout_id, duration_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)"
                ),
                &[
                    &applied.name,
                    &phase.as_str(),
                    &applied.checksum,
                    &i64::try_from(now.as_millis()).unwrap_or(i64::MAX),
                    &rollout_id.and_then(|r| i64::try_from(r).ok()),
                    &i64::try_from(applied.duration_ms).unwrap_or(i64::MAX),
                ],
            )
            .await;
        if let Err(error) = recorded {
            if in_transaction {
                let _ = self.client.batch_execute("ROLLBACK").await;
            }
            return Err(fatal(db_err(error)));
        }
        if in_transaction {
            if let Err(error) = self.client.batch_execute("COMMIT").await {
                return Err(if is_lock_timeout(&error) {
                    AttemptError::Lock(db_err(error))
                } else {
                    fatal(db_err(error))
                });
            }
        }
        Ok(applied)
    }
}

/// Cancels the statements of every session named `application_name` (a migration of a rollout
/// that was aborted): a transactional migration rolls back, a no-transaction one stops after
/// the statements it committed. Returns how many sessions were told.
pub async fn cancel(url: &str, application_name: &str) -> Result<u64, MigrateError> {
    let options = PostgresOptions {
        application_name: "cutover-migrate-cancel".to_string(),
        ..PostgresOptions::default()
    };
    let db = PostgresDatabase::connect(url, options).await?;
    let row = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .map_err(db_err)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

#[async_trait]
impl Database for PostgresDatabase {
    async fn lock(&mut self) -> Result<(), MigrateError> {
        if self.locked {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let row = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])
                .await
                .map_err(db_err)?;
            if row.get::<_, bool>(0) {
                self.locked = true;
                return Ok(());
            }
            if started.elapsed() >= self.options.advisory_lock_wait {
                return Err(MigrateError::Database(format!(
                    "another migrator has held cutover's advisory lock ({ADVISORY_LOCK_KEY}) for over {:?}; \
                     find it with SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = {}",
                    self.options.advisory_lock_wait,
                    ADVISORY_LOCK_KEY & 0xffff_ffff
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn prepare(&mut self) -> Result<(), MigrateError> {
        if self.history_table_exists().await? {
            return Ok(());
        }
        self.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                    name text NOT NULL,
                    phase text NOT NULL,
                    checksum text NOT NULL,
                    applied_at_ms bigint NOT NULL,
                    rollout_id bigint,
                    duration_ms bigint NOT NULL,
                    PRIMARY KEY (name, phase)
                )"
            ))
            .await
            .map_err(db_err)
    }

    async fn history(&mut self) -> Result<Vec<Applied>, MigrateError> {
        if !self.history_table_exists().await? {
            return Ok(Vec::new());
        }
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT name, phase, checksum, applied_at_ms, rollout_id, duration_ms
                     FROM {HISTORY_TABLE} ORDER BY applied_at_ms, name, phase"
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|row| Applied {
                name: row.get(0),
                phase: if row.get::<_, &str>(1) == "contract" {
                    Phase::Contract
                } else {
                    Phase::Expand
                },
                checksum: row.get(2),
                applied_at: Timestamp(u64::try_from(row.get::<_, i64>(3)).unwrap_or(0)),
                rollout_id: row.get::<_, Option<i64>>(4).and_then(|r| u64::try_from(r).ok()),
                duration_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
            })
            .collect())
    }

    async fn apply(
        &mut self,
        name: &str,
        phase: Phase,
        file: &MigrationFile,
        rollout_id: Option<u64>,
        now: Timestamp,
    ) -> Result<Applied, MigrateError> {
        self.lock().await?;
        if self.already_applied(name, phase).await? {
            return Err(MigrateError::Database(format!(
                "{name}.{phase}.sql was applied by another migrator meanwhile; run again to see the current status"
            )));
        }
        let mut backoff = self.options.backoff;
        let mut attempt = 0;
        loop {
            match self.attempt(name, phase, file, rollout_id, now).await {
                Ok(applied) => return Ok(applied),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Lock(error)) => {
                    if attempt >= self.options.lock_retries {
                        return Err(MigrateError::LockNotGranted {
                            attempts: attempt + 1,
                            lock_timeout: self.options.lock_timeout,
                            last: Box::new(error),
                        });
                    }
                    attempt += 1;
                    if let Some(report) = &self.on_retry {
                        report(&format!(
                            "{name}.{phase}.sql: a lock was not granted within {:?}; attempt {} of {} in {:?}",
                            self.options.lock_timeout,
                            attempt + 1,
                            self.options.lock_retries + 1,
                            backoff
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    async fn repair(&mut self, name: &str, phase: Phase, checksum: &str) -> Result<bool, MigrateError> {
        self.lock().await?;
        if !self.history_table_exists().await? {
            return Ok(false);
        }
        let changed = self
            .client
            .execute(
                &format!("UPDATE {HISTORY_TABLE} SET checksum = $3 WHERE name = $1 AND phase = $2"),
                &[&name, &phase.as_str(), &checksum],
            )
            .await
            .map_err(db_err)?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_split_by_the_real_grammar_with_their_offsets() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE t (a text DEFAULT ';');\n\n  CREATE INDEX CONCURRENTLY i ON t (a)";
        let split = statements(sql);
        assert_eq!(split.len(), 2, "{split:?}");
        assert_eq!(split[0].1, "CREATE TABLE t (a text DEFAULT ';')");
        assert_eq!(line_of(sql, split[0].0), 2);
        assert_eq!(split[1].1, "CREATE INDEX CONCURRENTLY i ON t (a)");
        assert_eq!(line_of(sql, split[1].0), 4);
    }

    #[test]
    fn a_function_body_is_one_statement() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nSELECT f();";
        assert_eq!(statements(sql).len(), 2);
    }
}
