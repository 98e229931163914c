//! `cutover migrate ...`: the expand/contract migrations of an app.
//!
//! `status`, `contract` and `repair` ask the server (it holds the database's URL and knows which
//! versions run); `lint` reads a directory here and needs no server, so a CI job can run it on
//! every pull request.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use cutover_migrate::lint::{self, Dialect, LintOptions};
use cutover_migrate::{MigrationSet, Phase};
use serde_json::{json, Value};

use crate::client::{exit, Client};

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Applied, pending and blocked migrations of APP's live release, whether a contract may
    /// run now and why not, and what the linter says of the files.
    Status {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// Run APP's pending contract migrations now. Refused, with the reason, while a rollout is
    /// in progress, while the old slot still runs, or while the live version predates the
    /// rollout that applied a migration's expand.
    Contract {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
    },
    /// Accept the current content of migration NAME (`NNNN_name` or `NNNN`) whose applied file
    /// was changed, on purpose: its new checksum is recorded and runs stop being blocked.
    ///
    /// Nothing is run again: use it when the change is harmless (a comment, formatting) or was
    /// applied to the database by hand. Recorded in the event log.
    Repair {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        /// The migration whose file changed: NNNN_name, or just NNNN.
        name: String,
        /// The version whose file is to be accepted (a deploy of it was blocked by its changed
        /// file); default: the live version.
        #[arg(long)]
        version: Option<String>,
    },
    /// Check a migration directory for changes the live version cannot survive (drops and
    /// renames in expand files, table rewrites, long locks, ...). Exits 1 on any finding.
    ///
    /// e.g. `cutover migrate lint migrations --engine postgres`
    Lint {
        /// The directory of NNNN_name.expand.sql / NNNN_name.contract.sql files.
        #[arg(default_value = "migrations")]
        dir: PathBuf,
        /// The database the files are written for: the lock rules apply to PostgreSQL only.
        #[arg(long, value_enum, default_value = "postgres")]
        engine: EngineArg,
        /// The lock_timeout cutover will run each statement with, in milliseconds (0: none,
        /// which the `access-exclusive-without-lock-timeout` rule reports).
        #[arg(long, default_value_t = 2000)]
        lock_timeout_ms: u64,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Postgres,
    Sqlite,
}

pub async fn run(api: impl FnOnce() -> Result<Client>, command: MigrateCommand) -> Result<ExitCode> {
    match command {
        MigrateCommand::Lint {
            dir,
            engine,
            lock_timeout_ms,
            output,
        } => lint_dir(&dir, engine, lock_timeout_ms, output == crate::Output::Json),
        MigrateCommand::Status { app, output } => {
            let view = api()?.get(&format!("/v1/apps/{app}/migrations")).await?;
            if output == crate::Output::Json {
                out!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Contract { app } => {
            let answer = api()?
                .post(&format!("/v1/apps/{app}/migrations/contract"), json!({}))
                .await?;
            out!("{}", answer["result"].as_str().unwrap_or("done"));
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Repair { app, name, version } => {
            let answer = api()?
                .post(
                    &format!("/v1/apps/{app}/migrations/repair"),
                    json!({ "name": name, "version": version }),
                )
                .await?;
            let repaired = answer["repaired"].as_array().cloned().unwrap_or_default();
            if repaired.is_empty() {
                out!("{name}: nothing to repair (no applied file of it has changed)");
            }
            for line in repaired {
                out!("{}", line.as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn lint_dir(dir: &std::path::Path, engine: EngineArg, lock_timeout_ms: u64, json: bool) -> Result<ExitCode> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory of migrations; pass the directory that holds the NNNN_name.expand.sql files (default: ./migrations)",
            dir.display()
        );
    }
    let set = MigrationSet::load(dir).map_err(|e| anyhow::Error::msg(e.to_string()))?;
    let options = LintOptions {
        dialect: match engine {
            EngineArg::Postgres => Dialect::Postgres,
            EngineArg::Sqlite => Dialect::Sqlite,
        },
        lock_timeout: (lock_timeout_ms > 0).then(|| std::time::Duration::from_millis(lock_timeout_ms)),
    };
    let report = lint::lint_set(&set, &options);
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else if report.is_clean() {
        let files: usize = set
            .migrations
            .iter()
            .map(|m| 1 + usize::from(m.contract.is_some()))
            .sum();
        out!(
            "{}: {files} file{} of {} migration{}, no finding{}",
            dir.display(),
            if files == 1 { "" } else { "s" },
            set.migrations.len(),
            if set.migrations.len() == 1 { "" } else { "s" },
            if report.silenced.is_empty() {
                String::new()
            } else {
                format!(" ({} silenced with a reason)", report.silenced.len())
            }
        );
    } else {
        out!("{report}");
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    })
}

fn when(ms: &Value) -> String {
    ms.as_u64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_status(view: &Value) {
    out!(
        "app {} · {} · migrations in {}",
        view["app"].as_str().unwrap_or("-"),
        view["engine"].as_str().unwrap_or("-"),
        view["dir"].as_str().unwrap_or("-")
    );
    let rows = view["status"]["migrations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rows.is_empty() {
        out!("  no migration files");
    }
    let width = rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::len))
        .max()
        .unwrap_or(4);
    for row in &rows {
        let name = row["name"].as_str().unwrap_or("-");
        let phase = row["phase"].as_str().unwrap_or("-");
        let state = match row["state"].as_str().unwrap_or("-") {
            "applied" => {
                let a = &row["applied"];
                format!(
                    "applied {} {} ({} ms)",
                    when(&a["applied_at"]),
                    a["rollout_id"]
                        .as_u64()
                        .map(|id| format!("by rollout #{id}"))
                        .unwrap_or_else(|| "by hand".into()),
                    a["duration_ms"].as_u64().unwrap_or(0)
                )
            }
            "pending" => "pending".to_string(),
            "changed" => "CHANGED since it was applied: blocks every run (see below)".to_string(),
            "out_of_order" => format!(
                "OUT OF ORDER: pending below {}, blocks every run",
                row["after"].as_str().unwrap_or("-")
            ),
            "file_missing" => "applied (its file is not in this version's directory)".to_string(),
            "renamed" => format!(
                "RENAMED: its number was applied as {}, blocks every run",
                row["applied_as"].as_str().unwrap_or("-")
            ),
            other => other.to_string(),
        };
        out!("  {name:<width$}  {phase:<8}  {state}");
    }
    for why in view["blocked"].as_array().into_iter().flatten() {
        out!("blocked: {}", why.as_str().unwrap_or_default());
    }
    let pending_contracts = rows
        .iter()
        .any(|r| r["phase"] == Phase::Contract.as_str() && r["state"] == "pending");
    if pending_contracts {
        match view["contract_refused"].as_str() {
            Some(why) => out!("contract: not now: {why}"),
            None => out!(
                "contract: may run now: `cutover migrate contract {}`",
                view["app"].as_str().unwrap_or("APP")
            ),
        }
    }
    let findings = view["lint"]["findings"].as_array().map_or(0, Vec::len);
    if findings > 0 {
        out!("lint: {findings} finding(s); `cutover migrate lint DIR` shows them");
    }
}
