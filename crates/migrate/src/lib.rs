//! Expand/contract schema migrations: the migration directory read into a [`MigrationSet`]
//! (every problem of the directory at once), each file's SHA-256 checksum, the [`Status`] of
//! every migration against the history of what was applied ([`status`]), and [`run`].
//!
//! A migration is `NNNN_name.expand.sql` with an optional `NNNN_name.contract.sql`. The expand
//! half runs before the new release starts and must work for the old and the new version at
//! once; the contract half runs only once no running version needs the old schema. Engines:
//! [`sqlite`] and [`postgres`]; the linter: [`lint`]. When each half runs is the server's
//! business (`cutover-server`'s `migrations.rs` and the rollout's `migrating` phase).

mod database;
pub mod lint;
pub mod postgres;
mod set;
pub mod sqlite;
mod status;

pub use database::{run, shown_statement, Database, MigrateError, HISTORY_TABLE};
pub use set::{Migration, MigrationFile, MigrationSet, Phase, SetError, NO_TRANSACTION};
pub use status::{status, Applied, MigrationStatus, State, Status};
