//! SQLite, for the embedded default and the demo. Statements run one by one (as SQLite's own
//! parser splits them) inside one transaction with the history row, so a failure names its
//! statement and leaves nothing behind. SQLite has one writer at a time: `BEGIN IMMEDIATE`
//! takes the write lock first, so two migrators never interleave, and a busy timeout bounds
//! the wait for it.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::Timestamp;
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::database::{line_of, outcome, shown_statement, Database, MigrateError, HISTORY_TABLE};
use crate::set::{MigrationFile, Phase};
use crate::status::Applied;

/// A SQLite database file. The calls block for as long as the statements take; the server runs
/// migrations on a blocking thread.
#[derive(Debug)]
pub struct SqliteDatabase {
    conn: Connection,
}

fn db_err(e: rusqlite::Error) -> MigrateError {
    MigrateError::Database(e.to_string())
}

impl SqliteDatabase {
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self, MigrateError> {
        let conn =
            Connection::open(path).map_err(|e| MigrateError::Database(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(busy_timeout).map_err(db_err)?;
        Ok(SqliteDatabase { conn })
    }
}

#[async_trait]
impl Database for SqliteDatabase {
    async fn prepare(&mut self) -> Result<(), MigrateError> {
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                    name TEXT NOT NULL,
                    phase TEXT NOT NULL,
                    checksum TEXT NOT NULL,
                    applied_at_ms INTEGER NOT NULL,
                    rollout_id INTEGER,
                    duration_ms INTEGER NOT NULL,
                    PRIMARY KEY (name, phase)
                )"
            ))
            .map_err(db_err)
    }

    async fn history(&mut self) -> Result<Vec<Applied>, MigrateError> {
        // A database no migration ran against yet has no history table: nothing applied.
        let exists: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [HISTORY_TABLE],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT name, phase, checksum, applied_at_ms, rollout_id, duration_ms
                 FROM {HISTORY_TABLE} ORDER BY applied_at_ms, rowid"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| {
                let phase: String = row.get(1)?;
                Ok(Applied {
                    name: row.get(0)?,
                    phase: if phase == "contract" {
                        Phase::Contract
                    } else {
                        Phase::Expand
                    },
                    checksum: row.get(2)?,
                    applied_at: Timestamp(u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0)),
                    rollout_id: row.get::<_, Option<i64>>(4)?.and_then(|r| u64::try_from(r).ok()),
                    duration_ms: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    async fn apply(
        &mut self,
        name: &str,
        phase: Phase,
        file: &MigrationFile,
        rollout_id: Option<u64>,
        now: Timestamp,
    ) -> Result<Applied, MigrateError> {
        let started = Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        // Another migrator may have applied it between our reading of the history and our
        // taking of the write lock.
        let done: Option<i64> = tx
            .query_row(
                &format!("SELECT 1 FROM {HISTORY_TABLE} WHERE name = ?1 AND phase = ?2"),
                params![name, phase.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if done.is_some() {
            return Err(MigrateError::Database(format!(
                "{name}.{phase}.sql was applied by another migrator meanwhile; run again to see the current status"
            )));
        }
        let mut batch = rusqlite::Batch::new(&tx, &file.sql);
        let mut index = 0;
        let mut offset = 0;
        let failed =
            |index: usize, start: usize, statement: &str, error: rusqlite::Error| MigrateError::Statement {
                file: file.path.display().to_string(),
                index,
                line: line_of(&file.sql, start),
                statement: shown_statement(statement),
                error: error.to_string(),
                outcome: outcome(true, false),
            };
        loop {
            let next = batch.next();
            let mut stmt = match next {
                Ok(Some(stmt)) => stmt,
                Ok(None) => break,
                Err(e) => {
                    let rest = file.sql.get(offset..).unwrap_or("").trim_start();
                    let start = file.sql.len() - rest.len();
                    return Err(failed(index + 1, start, rest.lines().next().unwrap_or(""), e));
                }
            };
            index += 1;
            let text = stmt.expanded_sql().unwrap_or_default();
            let text = text.trim();
            let start = file
                .sql
                .get(offset..)
                .and_then(|rest| rest.find(text))
                .map_or(offset, |at| offset + at);
            offset = start + text.len();
            let mut rows = stmt.raw_query();
            loop {
                match rows.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return Err(failed(index, start, text, e)),
                }
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
        tx.execute(
            &format!(
                "INSERT INTO {HISTORY_TABLE} (name, phase, checksum, applied_at_ms, rollout_id, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                applied.name,
                phase.as_str(),
                applied.checksum,
                i64::try_from(now.as_millis()).unwrap_or(i64::MAX),
                rollout_id.and_then(|r| i64::try_from(r).ok()),
                i64::try_from(applied.duration_ms).unwrap_or(i64::MAX),
            ],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(applied)
    }

    async fn repair(&mut self, name: &str, phase: Phase, checksum: &str) -> Result<bool, MigrateError> {
        let found: Option<String> = self
            .conn
            .query_row(
                &format!("SELECT checksum FROM {HISTORY_TABLE} WHERE name = ?1 AND phase = ?2"),
                params![name, phase.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if found.is_none() {
            return Ok(false);
        }
        self.conn
            .execute(
                &format!("UPDATE {HISTORY_TABLE} SET checksum = ?3 WHERE name = ?1 AND phase = ?2"),
                params![name, phase.as_str(), checksum],
            )
            .map_err(db_err)?;
        Ok(true)
    }
}
