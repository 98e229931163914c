//! `[app.migrations]`: the expand/contract schema migrations of a managed app, run by its
//! controller (the expand half as the `migrating` phase of a rollout, before the new release
//! starts) and by `cutover migrate` (status, contract, repair).
//!
//! Decisions:
//! - The migration directory comes with the release: a relative `dir` is taken from the
//!   release's `workdir` when it has one (each version is its own checkout, with the
//!   migrations it needs), else from the server's working directory; `{version}` in `dir` is
//!   the release's version. A contract therefore runs from the live release's directory, and a
//!   contract file says "this version no longer needs what the file removes": ship it with the
//!   version that stopped using the old schema, not with the expand.
//! - The linter runs on every file of the directory before any expand; any finding fails the
//!   rollout before the database is touched.
//! - A contract runs only when no rollout is in progress, the old slot is retired (nothing
//!   runs in it), and the live release was deployed by the rollout that applied the
//!   migration's expand or a later one: an older live version may still read what the
//!   contract removes.
//! - The PostgreSQL URL is read from the server's environment or a file at each run and never
//!   stored, logged, shown or passed to the app's instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{AppState, Phase as RolloutPhase};
use cutover_core::{Clock, FieldError, ReleaseSpec};
use cutover_migrate::lint::{self, Dialect, LintOptions, LintReport};
use cutover_migrate::postgres::{PostgresDatabase, PostgresOptions};
use cutover_migrate::sqlite::SqliteDatabase;
use cutover_migrate::{run, status, Applied, Database, MigrateError, MigrationSet, Phase, State, Status};
use serde::{Deserialize, Serialize};

/// Which database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// `[app.migrations]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsConfig {
    /// The directory of `NNNN_name.expand.sql` / `NNNN_name.contract.sql` files.
    pub dir: String,
    pub engine: Engine,
    /// SQLite: the database file (relative to the server's working directory).
    #[serde(default)]
    pub path: Option<String>,
    /// PostgreSQL: the environment variable (of the server) that holds the URL...
    #[serde(default)]
    pub url_env: Option<String>,
    /// ...or the file that holds it (its first line).
    #[serde(default)]
    pub url_file: Option<String>,
    /// How long one statement may wait for a lock before the attempt is given up and retried.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// How long one statement may run; 0: no limit.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Attempts after the first when a lock was not granted.
    #[serde(default = "default_lock_retries")]
    pub lock_retries: u32,
    /// The first retry's wait; it doubles up to 30 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Run pending contracts by themselves this long after a rollout retired the old slot. None:
    /// only `cutover migrate contract APP` runs them.
    #[serde(default)]
    pub contract_after_ms: Option<u64>,
    /// The configuration file's directory, which relative paths are taken from (set by the
    /// server, not the file).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

fn default_lock_timeout_ms() -> u64 {
    2_000
}
fn default_statement_timeout_ms() -> u64 {
    15 * 60 * 1000
}
fn default_lock_retries() -> u32 {
    10
}
fn default_retry_backoff_ms() -> u64 {
    1_000
}

impl MigrationsConfig {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let field = |name: &str| format!("{prefix}{name}");
        if self.dir.trim().is_empty() {
            errors.push(FieldError::new(
                field("dir"),
                "must name the directory of the migration files",
            ));
        }
        match self.engine {
            Engine::Sqlite => {
                if self.path.as_deref().is_none_or(|p| p.trim().is_empty()) {
                    errors.push(FieldError::new(
                        field("path"),
                        "engine = \"sqlite\" needs the database file, e.g. path = \"app.db\"",
                    ));
                }
                for (name, value) in [("url_env", &self.url_env), ("url_file", &self.url_file)] {
                    if value.is_some() {
                        errors.push(FieldError::new(
                            field(name),
                            "is for engine = \"postgres\"; SQLite takes path",
                        ));
                    }
                }
            }
            Engine::Postgres => {
                match (&self.url_env, &self.url_file) {
                    (Some(_), Some(_)) => errors.push(FieldError::new(
                        field("url_env"),
                        "give url_env or url_file, not both",
                    )),
                    (None, None) => errors.push(FieldError::new(
                        field("url_env"),
                        "engine = \"postgres\" needs the URL's source: url_env = \"DATABASE_URL\" (a variable of the server's environment) or url_file = \"/path\"; the URL itself never goes in the configuration",
                    )),
                    (Some(var), None) if var.trim().is_empty() || var.contains('=') => {
                        errors.push(FieldError::new(field("url_env"), "must be the name of an environment variable"))
                    }
                    _ => {}
                }
                if self.path.is_some() {
                    errors.push(FieldError::new(
                        field("path"),
                        "is for engine = \"sqlite\"; PostgreSQL takes url_env or url_file",
                    ));
                }
            }
        }
        let placeholders = self.dir.replace("{version}", "");
        if placeholders.contains('{') || placeholders.contains('}') {
            errors.push(FieldError::new(
                field("dir"),
                format!(
                    "{:?} has a placeholder other than {{version}}, the one there is; check its spelling",
                    self.dir
                ),
            ));
        }
        if let Some(var) = &self.url_env {
            if var.starts_with("CUTOVER_") {
                errors.push(FieldError::new(
                    field("url_env"),
                    "names one of cutover's own variables; export the database URL under a name of its own, e.g. DATABASE_URL",
                ));
            }
        }
        // PostgreSQL takes both settings as a 32-bit number of milliseconds.
        for (name, value) in [
            ("lock_timeout_ms", self.lock_timeout_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
        ] {
            if value > i32::MAX as u64 {
                errors.push(FieldError::new(
                    field(name),
                    format!(
                        "{value} is more than PostgreSQL accepts ({} ms, about 24 days)",
                        i32::MAX
                    ),
                ));
            }
        }
        if self.lock_timeout_ms == 0 {
            errors.push(FieldError::new(
                field("lock_timeout_ms"),
                "must be greater than 0: without it a migration waiting for a lock holds up every query of the table behind it",
            ));
        }
        if self.lock_retries > 1000 {
            errors.push(FieldError::new(field("lock_retries"), "must be at most 1000"));
        }
        errors
    }

    fn dialect(&self) -> Dialect {
        match self.engine {
            Engine::Postgres => Dialect::Postgres,
            Engine::Sqlite => Dialect::Sqlite,
        }
    }

    pub fn lint_options(&self) -> LintOptions {
        LintOptions {
            dialect: self.dialect(),
            lock_timeout: Some(Duration::from_millis(self.lock_timeout_ms)),
        }
    }

    /// The migration directory of `release`: `{version}` in `dir` is the release's version,
    /// and a relative `dir` is taken from the release's workdir when it has one, else from the
    /// configuration file's directory.
    pub fn dir_for(&self, release: Option<&ReleaseSpec>) -> PathBuf {
        let dir = match release {
            Some(r) => self.dir.replace("{version}", &r.version),
            None => self.dir.clone(),
        };
        let dir = Path::new(&dir);
        match release.and_then(|r| r.workdir.as_deref()) {
            Some(workdir) if dir.is_relative() => self.resolve(Path::new(workdir)).join(dir),
            _ => self.resolve(dir),
        }
    }

    /// `path` from the configuration file's directory when it is relative.
    fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn options(&self, application_name: String) -> PostgresOptions {
        PostgresOptions {
            application_name,
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            lock_retries: self.lock_retries,
            backoff: Duration::from_millis(self.retry_backoff_ms),
            ..PostgresOptions::default()
        }
    }

    /// The PostgreSQL URL, read now. The error names where it looked, never the value.
    fn url(&self) -> Result<String, String> {
        if let Some(var) = &self.url_env {
            return std::env::var(var).map_err(|_| {
                format!("the database URL's variable {var} ([app.migrations] url_env) is not set in cutover's environment")
            });
        }
        if let Some(file) = &self.url_file {
            let file = self.resolve(Path::new(file)).display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| {
                format!("cannot read the database URL from {file} ([app.migrations] url_file): {e}")
            })?;
            let url = text.lines().next().unwrap_or("").trim().to_string();
            if url.is_empty() {
                return Err(format!("{file} ([app.migrations] url_file) is empty"));
            }
            return Ok(url);
        }
        Err("[app.migrations] names no database URL (url_env or url_file)".to_string())
    }
}

/// Told each time a migration is tried again after a lock was not granted.
pub type RetryReport = Arc<dyn Fn(String) + Send + Sync>;

/// Runs `work` against the app's database. On PostgreSQL the session is named
/// `application_name` (so [`cancel_expand`] can find it) and every retry is logged and, with
/// `report`, told; SQLite calls block, so they run on a blocking thread.
async fn with_database<T, F>(
    config: &MigrationsConfig,
    application_name: &str,
    report: Option<RetryReport>,
    work: F,
) -> Result<T, String>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut dyn Database) -> futures_util::future::BoxFuture<'a, Result<T, String>>
        + Send
        + 'static,
{
    match config.engine {
        Engine::Postgres => {
            let mut db =
                PostgresDatabase::connect(&config.url()?, config.options(application_name.to_string()))
                    .await
                    .map_err(|e| e.to_string())?;
            db.on_retry(move |line| {
                tracing::warn!("{line}");
                if let Some(report) = &report {
                    report(line.to_string());
                }
            });
            work(&mut db).await
        }
        Engine::Sqlite => with_sqlite(config, work).await,
    }
}

/// The session name of migrations run outside a rollout (status, contract, repair).
const SESSION: &str = "cutover-migrate";

async fn with_sqlite<T, F>(config: &MigrationsConfig, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut dyn Database) -> futures_util::future::BoxFuture<'a, Result<T, String>>
        + Send
        + 'static,
{
    // SQLite calls block: on a blocking thread.
    let path = config.resolve(Path::new(&config.path.clone().unwrap_or_default()));
    let busy = Duration::from_millis(config.lock_timeout_ms.max(1_000));
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut db = SqliteDatabase::open(&path, busy).map_err(|e| e.to_string())?;
        handle.block_on(work(&mut db))
    })
    .await
    .map_err(|e| format!("the migration task failed: {e}"))?
}

fn load(config: &MigrationsConfig, release: Option<&ReleaseSpec>) -> Result<MigrationSet, String> {
    MigrationSet::load(&config.dir_for(release)).map_err(|e| e.to_string())
}

/// [`lint_pending`] on a blocking thread: linting is CPU work that grows with the files, and
/// the async workers also serve the proxy.
async fn lint_pending_off_workers(
    config: &MigrationsConfig,
    set: &Arc<MigrationSet>,
    current: Status,
) -> Result<(), String> {
    let (config, set) = (config.clone(), Arc::clone(set));
    tokio::task::spawn_blocking(move || lint_pending(&config, &set, &current))
        .await
        .map_err(|e| format!("the linter failed: {e}"))?
}

/// Lints the halves that have yet to run (an applied file is history, whatever later rules
/// would say of it); the report, or why nothing may run.
fn lint_pending(config: &MigrationsConfig, set: &MigrationSet, current: &Status) -> Result<(), String> {
    let options = config.lint_options();
    let mut report = LintReport::default();
    for m in &set.migrations {
        for phase in [Phase::Expand, Phase::Contract] {
            let Some(file) = m.file(phase) else { continue };
            let pending = current
                .migrations
                .iter()
                .any(|s| s.name == m.name && s.phase == phase && s.state == State::Pending);
            if pending {
                let found = lint::lint_file(&file.path, &file.sql, phase, &options);
                report.findings.extend(found.findings);
                report.silenced.extend(found.silenced);
            }
        }
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!(
            "the migration linter refused what was about to run, before any of it ran:\n{report}\nfix the files (or silence one statement with a `-- cutover:allow` comment that gives the reason) and deploy again"
        ))
    }
}

fn describe_applied(applied: &[Applied]) -> String {
    applied
        .iter()
        .map(|a| format!("{}.{}.sql ({} ms)", a.name, a.phase, a.duration_ms))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The expand phase of rollout `rollout_id`: lint, then every pending expand. Returns a
/// sentence for the event log, or why the rollout must fail.
pub async fn expand(
    app: &str,
    config: &MigrationsConfig,
    release: &ReleaseSpec,
    rollout_id: u64,
    clock: Arc<dyn Clock>,
    report: RetryReport,
) -> Result<String, String> {
    let set = load(config, Some(release))?;
    let total = set.migrations.len();
    let set = Arc::new(set);
    let config_for_lint = config.clone();
    let version = release.version.clone();
    // The way out of a changed file names this app and this version's files.
    let repair = format!("cutover migrate repair {app} --version {}", release.version);
    let applied = with_database(
        config,
        &expand_session(app, rollout_id),
        Some(report),
        move |db| {
            Box::pin(async move {
                db.lock().await.map_err(|e| e.to_string())?;
                db.prepare().await.map_err(|e| e.to_string())?;
                let history = db.history().await.map_err(|e| e.to_string())?;
                refuse_older_than_a_contract(&set, &history, &version)?;
                let current = status(&set, &history);
                let blocking = current.blocking_with(&repair);
                if !blocking.is_empty() {
                    return Err(MigrateError::Blocked(blocking).to_string());
                }
                lint_pending_off_workers(&config_for_lint, &set, current).await?;
                run(db, &set, Phase::Expand, Some(rollout_id), clock.as_ref())
                    .await
                    .map_err(|e| e.to_string())
            })
        },
    )
    .await?;
    Ok(if applied.is_empty() {
        format!("no expand migration pending ({total} in the directory, all applied)")
    } else {
        format!(
            "expand migrations applied before the release starts: {}",
            describe_applied(&applied)
        )
    })
}

/// The `application_name` of rollout `rollout_id`'s expand session, which [`cancel_expand`]
/// finds it by.
fn expand_session(app: &str, rollout_id: u64) -> String {
    format!("cutover-migrate {app} #{rollout_id}")
}

/// Cancels the expand of rollout `rollout_id`, aborted or rolled back while it ran (PostgreSQL;
/// SQLite's migrations run to their end). Returns a sentence for the event log.
pub async fn cancel_expand(config: &MigrationsConfig, app: &str, rollout_id: u64) -> Result<String, String> {
    if config.engine != Engine::Postgres {
        return Ok(
            "the expand runs to its end (SQLite cannot cancel it); it is kept, as every expand is"
                .to_string(),
        );
    }
    let told = cutover_migrate::postgres::cancel(&config.url()?, &expand_session(app, rollout_id))
        .await
        .map_err(|e| e.to_string())?;
    Ok(if told == 0 {
        "no expand statement was running any more".to_string()
    } else {
        "the running expand statement was cancelled: a migration in a transaction was rolled back and not recorded; in a no-transaction file the statements before it stay".to_string()
    })
}

/// A version whose directory lacks a contract that was applied predates it: it may use what the
/// contract removed (the review found such a canary answering 500s), so it is refused before it
/// starts.
fn refuse_older_than_a_contract(
    set: &MigrationSet,
    history: &[Applied],
    version: &str,
) -> Result<(), String> {
    let missing: Vec<String> = history
        .iter()
        .filter(|a| a.phase == Phase::Contract)
        .filter(|a| {
            !set.migrations
                .iter()
                .any(|m| m.name == a.name && m.contract.is_some())
        })
        .map(|a| format!("{}.contract.sql", a.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{version} predates contract migrations already applied ({}): its directory does not have them, so it may use what they removed; deploy a version whose directory has them",
        missing.join(", ")
    ))
}

/// What `cutover migrate status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationsView {
    pub app: String,
    pub dir: String,
    pub engine: Engine,
    pub status: Status,
    /// Why nothing may run now (a changed or out-of-order file).
    pub blocked: Vec<String>,
    /// Why a contract may not run now; none: `cutover migrate contract` would run the pending
    /// ones.
    pub contract_refused: Option<String>,
    pub lint: LintReport,
}

/// Status of the migrations of the live release's directory against the database.
pub async fn view(config: &MigrationsConfig, state: &AppState) -> Result<MigrationsView, String> {
    let release = state.slot(state.live).release.as_ref();
    let set = load(config, release)?;
    let history = with_database(config, SESSION, None, |db| {
        Box::pin(async move { db.history().await.map_err(|e| e.to_string()) })
    })
    .await?;
    let current = status(&set, &history);
    let blocked = current.blocking_with(&format!("cutover migrate repair {}", state.app));
    let contract_refused = contract_refusal(state, &current, &history);
    let options = config.lint_options();
    let set = Arc::new(set);
    let lint = {
        let set = Arc::clone(&set);
        // CPU work that grows with the files, on a read anyone may make: off the async workers.
        tokio::task::spawn_blocking(move || lint::lint_set(&set, &options))
            .await
            .map_err(|e| format!("the linter failed: {e}"))?
    };
    Ok(MigrationsView {
        app: state.app.clone(),
        dir: config.dir_for(release).display().to_string(),
        engine: config.engine,
        lint,
        status: current,
        blocked,
        contract_refused,
    })
}

/// Why the pending contracts may not run now; `None` when they may (or there are none).
pub fn contract_refusal(state: &AppState, current: &Status, history: &[Applied]) -> Option<String> {
    // A rollout in progress refuses even with nothing pending in the live directory: the new
    // release's directory may bring a contract, and it is not live yet.
    if let Some(r) = state.active_rollout() {
        let why = match r.phase {
            RolloutPhase::Promoted { .. } => format!(
                "rollout #{} is promoted but its rollback window is open: the old version {} still runs in slot {} for an instant rollback",
                r.id,
                r.previous_version.as_deref().unwrap_or("-"),
                r.target.other()
            ),
            _ => format!("rollout #{} is in phase {}", r.id, r.phase.name()),
        };
        return Some(format!(
            "{why}; a contract runs only once the old version is retired (after the rollout ends)"
        ));
    }
    let pending = current.pending(Phase::Contract);
    if pending.is_empty() {
        return None;
    }
    let idle = state.live.other();
    if state.slot(idle).is_running() {
        return Some(format!(
            "slot {idle} still runs {}; a contract runs only once no older version runs",
            state.slot(idle).version().unwrap_or("an older version")
        ));
    }
    let live = state.slot(state.live);
    for name in pending {
        let Some(expand) = history
            .iter()
            .find(|a| a.name == name && a.phase == Phase::Expand)
        else {
            continue;
        };
        let Some(expanded_by) = expand.rollout_id else {
            continue;
        };
        if live.deployed_by.is_none_or(|d| d < expanded_by) {
            return Some(format!(
                "the live version {} came before rollout #{expanded_by}, which applied {name}.expand.sql: it may still use what {name}.contract.sql removes; deploy a version that comes with that migration first",
                live.version().unwrap_or("-"),
            ));
        }
    }
    None
}

/// Runs the pending contracts when [`contract_refusal`] allows it. Returns a sentence for the
/// event log.
pub async fn contract(
    config: &MigrationsConfig,
    state: &AppState,
    clock: Arc<dyn Clock>,
) -> Result<(String, Vec<Applied>), String> {
    let release = state.slot(state.live).release.clone();
    let set = load(config, release.as_ref())?;
    let state = state.clone();
    let set = Arc::new(set);
    let config_for_lint = config.clone();
    let applied = with_database(config, SESSION, None, move |db| {
        Box::pin(async move {
            db.lock().await.map_err(|e| e.to_string())?;
            let history = db.history().await.map_err(|e| e.to_string())?;
            let current = status(&set, &history);
            if let Some(why) = contract_refusal(&state, &current, &history) {
                return Err(format!("contract migrations refused: {why}"));
            }
            lint_pending_off_workers(&config_for_lint, &set, current).await?;
            run(db, &set, Phase::Contract, None, clock.as_ref())
                .await
                .map_err(|e| e.to_string())
        })
    })
    .await?;
    let sentence = if applied.is_empty() {
        "no contract migration pending".to_string()
    } else {
        format!("contract migrations applied: {}", describe_applied(&applied))
    };
    Ok((sentence, applied))
}

/// Accepts the current checksum of `name`'s applied halves, on purpose. Returns the halves
/// whose checksum changed.
pub async fn repair(
    config: &MigrationsConfig,
    state: &AppState,
    name: &str,
    version: Option<ReleaseSpec>,
) -> Result<Vec<String>, String> {
    // The live release's files unless another version's are named (a deploy blocked by its
    // own changed file).
    let release = version.or_else(|| state.slot(state.live).release.clone());
    let set = load(config, release.as_ref())?;
    let Some(migration) = set
        .migrations
        .iter()
        .find(|m| m.name == name || name.parse::<u32>().ok() == Some(m.number))
    else {
        let names: Vec<&str> = set.migrations.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "no migration {name} in {}; its migrations: {}",
            config.dir_for(release.as_ref()).display(),
            names.join(", ")
        ));
    };
    let halves: Vec<(String, Phase, String)> = [Phase::Expand, Phase::Contract]
        .into_iter()
        .filter_map(|phase| {
            migration
                .file(phase)
                .map(|f| (migration.name.clone(), phase, f.checksum.clone()))
        })
        .collect();
    with_database(config, SESSION, None, move |db| {
        Box::pin(async move {
            db.lock().await.map_err(|e| e.to_string())?;
            let history = db.history().await.map_err(|e| e.to_string())?;
            let mut repaired = Vec::new();
            for (name, phase, checksum) in halves {
                let Some(applied) = history.iter().find(|a| a.name == name && a.phase == phase) else {
                    continue;
                };
                if applied.checksum != checksum {
                    db.repair(&name, phase, &checksum)
                        .await
                        .map_err(|e| e.to_string())?;
                    repaired.push(format!(
                        "{name}.{phase}.sql: checksum {} accepted in place of {}",
                        checksum, applied.checksum
                    ));
                }
            }
            Ok(repaired)
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::rollout::Rollout;
    use cutover_core::{Slot, Timestamp};

    fn postgres() -> MigrationsConfig {
        MigrationsConfig {
            dir: "migrations".into(),
            engine: Engine::Postgres,
            path: None,
            url_env: Some("DATABASE_URL".into()),
            url_file: None,
            lock_timeout_ms: 2_000,
            statement_timeout_ms: 60_000,
            lock_retries: 10,
            retry_backoff_ms: 1_000,
            contract_after_ms: None,
            base_dir: None,
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn every_problem_of_the_table_is_reported_with_its_field() {
        assert!(postgres().validate("app[0].migrations.").is_empty());
        let bad = MigrationsConfig {
            dir: " ".into(),
            url_env: None,
            path: Some("app.db".into()),
            lock_timeout_ms: 0,
            ..postgres()
        };
        let errors = bad.validate("app[0].migrations.");
        assert_eq!(
            fields(&errors),
            [
                "app[0].migrations.dir",
                "app[0].migrations.url_env",
                "app[0].migrations.path",
                "app[0].migrations.lock_timeout_ms"
            ]
        );
        assert!(
            errors[1].message.contains("never goes in the configuration"),
            "{}",
            errors[1].message
        );
        let sqlite = MigrationsConfig {
            engine: Engine::Sqlite,
            ..postgres()
        };
        assert_eq!(
            fields(&sqlite.validate("m.")),
            ["m.path", "m.url_env"],
            "SQLite needs a file and takes no URL"
        );
    }

    #[test]
    fn placeholders_cutovers_variables_and_postgres_limits_are_checked() {
        let bad = MigrationsConfig {
            dir: "releases/{versoin}/migrations".into(),
            url_env: Some("CUTOVER_ADMIN_TOKEN".into()),
            lock_timeout_ms: 99_999_999_999,
            ..postgres()
        };
        assert_eq!(
            fields(&bad.validate("m.")),
            ["m.dir", "m.url_env", "m.lock_timeout_ms"]
        );
    }

    #[test]
    fn relative_paths_are_the_configuration_files() {
        let config = MigrationsConfig {
            engine: Engine::Sqlite,
            path: Some("app.db".into()),
            url_env: None,
            base_dir: Some(PathBuf::from("/etc/cutover")),
            ..postgres()
        };
        assert_eq!(config.dir_for(None), PathBuf::from("/etc/cutover/migrations"));
        assert_eq!(
            config.resolve(Path::new("app.db")),
            PathBuf::from("/etc/cutover/app.db")
        );
        let mut release = ReleaseSpec::new("v2", "run");
        release.workdir = Some("releases/v2".into());
        assert_eq!(
            config.dir_for(Some(&release)),
            PathBuf::from("/etc/cutover/releases/v2/migrations")
        );
    }

    #[test]
    fn the_directory_comes_with_the_release() {
        let config = MigrationsConfig {
            dir: "releases/{version}/db".into(),
            ..postgres()
        };
        let mut release = ReleaseSpec::new("v7", "run");
        assert_eq!(config.dir_for(Some(&release)), PathBuf::from("releases/v7/db"));
        release.workdir = Some("/srv/app/v7".into());
        assert_eq!(
            config.dir_for(Some(&release)),
            PathBuf::from("/srv/app/v7/releases/v7/db")
        );
        let absolute = MigrationsConfig {
            dir: "/etc/app/migrations".into(),
            ..postgres()
        };
        assert_eq!(
            absolute.dir_for(Some(&release)),
            PathBuf::from("/etc/app/migrations")
        );
    }

    #[test]
    fn the_url_is_read_from_its_source_and_never_shown_in_errors() {
        let dir = std::env::temp_dir().join(format!("cutover-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://u:hunter2@db/app\n").unwrap();
        let config = MigrationsConfig {
            url_env: None,
            url_file: Some(file.display().to_string()),
            ..postgres()
        };
        assert_eq!(config.url().unwrap(), "postgres://u:hunter2@db/app");
        let missing = MigrationsConfig {
            url_env: Some("CUTOVER_TEST_SURELY_UNSET_VARIABLE".into()),
            ..postgres()
        };
        let error = missing.url().unwrap_err();
        assert!(
            error.contains("CUTOVER_TEST_SURELY_UNSET_VARIABLE") && error.contains("not set"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn pending_contract() -> (Status, Vec<Applied>) {
        let applied = Applied {
            name: "0002_x".into(),
            phase: Phase::Expand,
            checksum: "c".into(),
            applied_at: Timestamp(1),
            rollout_id: Some(5),
            duration_ms: 1,
        };
        let status = Status {
            migrations: vec![cutover_migrate::MigrationStatus {
                name: "0002_x".into(),
                phase: Phase::Contract,
                state: State::Pending,
                applied: None,
            }],
        };
        (status, vec![applied])
    }

    #[test]
    fn a_contract_waits_for_the_old_version_to_be_retired_and_for_a_live_version_that_came_with_its_expand() {
        let (status, history) = pending_contract();
        let mut state = AppState::new("web");
        state.live = Slot::Green;
        state.green.release = Some(ReleaseSpec::new("v3", "run"));
        state.green.backends = vec!["127.0.0.1:1".parse().unwrap()];
        state.green.deployed_by = Some(6);
        state.blue.release = Some(ReleaseSpec::new("v2", "run"));
        state.blue.backends = vec!["127.0.0.1:2".parse().unwrap()];
        let why = contract_refusal(&state, &status, &history).unwrap();
        assert!(why.contains("slot blue still runs v2"), "{why}");

        state.blue.backends.clear();
        assert_eq!(contract_refusal(&state, &status, &history), None);

        // The live version came before the rollout that applied the expand (#5): it was rolled
        // back to, say. It may still use what the contract removes.
        state.green.deployed_by = Some(4);
        let why = contract_refusal(&state, &status, &history).unwrap();
        assert!(why.contains("came before rollout #5"), "{why}");

        state.green.deployed_by = Some(6);
        let rollout: Rollout = serde_json::from_value(serde_json::json!({
            "id": 7, "target": "blue", "release": ReleaseSpec::new("v4", "run"),
            "policy": cutover_core::RolloutPolicy::default(), "phase": { "phase": "migrating" },
            "started_at": 1, "previous_version": "v3", "forced": false, "failures": 0,
            "first_bad_window_at": null, "last_verdict": null,
        }))
        .unwrap();
        state.rollout = Some(rollout);
        let why = contract_refusal(
            &state,
            &Status {
                migrations: Vec::new(),
            },
            &history,
        )
        .unwrap();
        assert!(why.contains("rollout #7 is in phase migrating"), "{why}");
    }
}
