//! Expand/contract schema migrations (issue #13), the part that needs no database: the
//! migration directory read into a [`MigrationSet`] (every problem of the directory at once),
//! each file's SHA-256 checksum, and the [`Status`] of every migration against the history of
//! what was applied ([`status`]).
//!
//! A migration is `NNNN_name.expand.sql` with an optional `NNNN_name.contract.sql`. The expand
//! half runs before the new release starts and must work for the old and the new version at
//! once; the contract half runs only once no running version needs the old schema. Still to
//! come (see the closing note): running them against PostgreSQL and SQLite as phases
//! of the rollout, the history table, the linter, the CLI, the demo chapter.

mod database;
pub mod lint;
pub mod postgres;
mod set;
pub mod sqlite;
mod status;

pub use database::{run, Database, MigrateError, HISTORY_TABLE};
pub use set::{Migration, MigrationFile, MigrationSet, Phase, SetError, NO_TRANSACTION};
pub use status::{status, Applied, MigrationStatus, State, Status};
