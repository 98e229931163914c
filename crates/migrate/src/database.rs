//! The database a migration runs against: one trait, one module per engine (SQLite,
//! PostgreSQL), and [`run`], which runs the pending halves of one phase in order.

use async_trait::async_trait;
use cutover_core::Timestamp;

use crate::set::{MigrationFile, MigrationSet, Phase};
use crate::status::{status, Applied};

/// The table cutover keeps its history in, inside the app's own database.
pub const HISTORY_TABLE: &str = "cutover_migrations";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Nothing ran: the directory and the history disagree (see [`crate::Status::blocking`]).
    #[error("no migration was run:\n  {}", .0.join("\n  "))]
    Blocked(Vec<String>),
    /// A statement failed. In a transaction its migration left no trace; without one (the
    /// no-transaction marker) the statements before it stay applied. `outcome` says which.
    #[error("{file}: statement {index} (line {line}) failed: {error}\n  {statement}\n{outcome}")]
    Statement {
        file: String,
        /// 1-based among the file's statements.
        index: usize,
        /// The line of the file the statement starts on.
        line: usize,
        /// As written, with any `PASSWORD '...'` literal replaced (see [`shown_statement`]).
        statement: String,
        error: String,
        outcome: String,
    },
    /// A lock the migration needed was held by someone else at every attempt; nothing of the
    /// migration was kept.
    #[error(
        "{last}\na lock was not granted within {lock_timeout:?} in {attempts} attempts (each attempt held the app's queries of the table up for at most that long, then let them go); the file is not at fault: find the long transaction holding the lock (pg_stat_activity), end it, and deploy again"
    )]
    LockNotGranted {
        attempts: u32,
        lock_timeout: std::time::Duration,
        last: Box<MigrateError>,
    },
    /// The database could not be reached or refused cutover's own bookkeeping.
    #[error("migration database: {0}")]
    Database(String),
}

/// One engine.
#[async_trait]
pub trait Database: Send {
    /// Makes this migrator the only one of the database until it is dropped, waiting for
    /// another one to finish first. Engines that serialise writers on their own need nothing.
    async fn lock(&mut self) -> Result<(), MigrateError> {
        Ok(())
    }
    /// Creates the history table if it is missing.
    async fn prepare(&mut self) -> Result<(), MigrateError>;
    /// What was applied, in the order it was.
    async fn history(&mut self) -> Result<Vec<Applied>, MigrateError>;
    /// Runs `file` and records it, in one transaction (the history row commits with the
    /// change or not at all).
    async fn apply(
        &mut self,
        name: &str,
        phase: Phase,
        file: &MigrationFile,
        rollout_id: Option<u64>,
        now: Timestamp,
    ) -> Result<Applied, MigrateError>;
    /// Records `checksum` as the applied checksum of `name`'s `phase`, on purpose
    /// (`cutover migrate repair`). Returns whether there was such a record.
    async fn repair(&mut self, name: &str, phase: Phase, checksum: &str) -> Result<bool, MigrateError>;
}

/// Runs every pending half of `phase` of `set`, in order, stopping at the first failure.
/// Nothing runs while anything blocks. Returns what was applied now.
pub async fn run(
    db: &mut dyn Database,
    set: &MigrationSet,
    phase: Phase,
    rollout_id: Option<u64>,
    clock: &dyn cutover_core::Clock,
) -> Result<Vec<Applied>, MigrateError> {
    db.lock().await?;
    db.prepare().await?;
    let history = db.history().await?;
    let current = status(set, &history);
    let blocking = current.blocking();
    if !blocking.is_empty() {
        return Err(MigrateError::Blocked(blocking));
    }
    let mut done = Vec::new();
    for name in current.pending(phase) {
        let Some(file) = set
            .migrations
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.file(phase))
        else {
            continue;
        };
        if phase == Phase::Contract
            && !history
                .iter()
                .chain(done.iter())
                .any(|a| a.name == name && a.phase == Phase::Expand)
        {
            // A contract undoes what its expand made room for: never before it.
            continue;
        }
        done.push(db.apply(name, phase, file, rollout_id, clock.now()).await?);
    }
    Ok(done)
}

/// The statements of `sql` with the line each starts on, split where SQLite's own parser
/// splits them (used for the position of a failure).
pub(crate) fn line_of(sql: &str, offset: usize) -> usize {
    sql[..offset.min(sql.len())].matches('\n').count() + 1
}

/// What a failed statement's error says of the rest of its migration.
pub(crate) fn outcome(in_transaction: bool, lock: bool) -> String {
    match (in_transaction, lock) {
        (true, true) => "the migration was rolled back and nothing of it was recorded".to_string(),
        (true, false) => {
            "the migration was rolled back and nothing of it was recorded; fix the file and deploy again".to_string()
        }
        (false, _) => "the statements before it stay applied (the file runs without a transaction) and the migration is not recorded; fix the file and deploy again: it runs again from its first statement, so each statement must be re-runnable".to_string(),
    }
}

/// A statement as errors show it: `PASSWORD '...'` literals (CREATE/ALTER ROLE) replaced, so a
/// failed migration does not publish a password in events, logs and the CLI's output.
pub fn shown_statement(statement: &str) -> String {
    let Ok(scanned) = pg_query::scan(statement) else {
        return statement.to_string();
    };
    let password = pg_query::protobuf::Token::Password as i32;
    let literals = [
        pg_query::protobuf::Token::Sconst as i32,
        pg_query::protobuf::Token::Usconst as i32,
    ];
    let mut shown = String::with_capacity(statement.len());
    let mut copied = 0;
    let mut after_password = false;
    for token in &scanned.tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end)) else {
            continue;
        };
        if after_password && literals.contains(&token.token) && start >= copied && end <= statement.len() {
            shown.push_str(&statement[copied..start]);
            shown.push_str("'<redacted>'");
            copied = end;
        }
        after_password = token.token == password;
    }
    shown.push_str(statement.get(copied..).unwrap_or(""));
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_statements_are_not_shown() {
        assert_eq!(
            shown_statement("CREATE ROLE app LOGIN PASSWORD 'Role-Secret-77'"),
            "CREATE ROLE app LOGIN PASSWORD '<redacted>'"
        );
        assert_eq!(
            shown_statement("alter role app with password E'x\\'y' valid until 'infinity'"),
            "alter role app with password '<redacted>' valid until 'infinity'"
        );
        assert_eq!(
            shown_statement("UPDATE users SET name = 'PASSWORD'"),
            "UPDATE users SET name = 'PASSWORD'"
        );
    }
}
