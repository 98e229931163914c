//! `cutover demo`: the whole product on this machine, with nothing but this binary.
//!
//! It starts `cutover serve` in process (built-in proxy, local process platform, SQLite state in a
//! temporary directory) on free loopback ports, puts v1 of the bundled example app live, and drives
//! a bounded load of sticky, logged-in users against the public listener while it deploys:
//! - v2, healthy: through every canary step to promotion;
//! - v3 with 5 % errors: rolled back automatically by the judge;
//! - v4 that never becomes ready: fails in provisioning with no traffic shifted;
//! - a schema change in expand/contract steps on a SQLite database every version shares: v1
//!   creates `users (name)`, v2's expand adds `full_name` before v2 starts (v2 writes both), v5
//!   ships a `DROP COLUMN` in an expand file and is refused by the migration linter before
//!   anything runs, and v6 (reads only `full_name`) ships the contract that drops `name`, which
//!   is refused while v2 is warm for a rollback and runs once v2 is retired;
//! - deploy is not release: the new session validator, shipped dark behind a feature flag in
//!   the live version, is ramped by a guarded ramp from 1 %; its flagged users are logged out,
//!   the judge sees their 401s, and the flag is killed automatically, with no redeploy.
//!
//! Timings are compressed (one-second analysis windows) so the demo takes about a minute. It ends
//! with a table of the rollouts, their decisions and what users saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cutover_core::event::EventDetail;
use cutover_core::judge::Outcome;
use cutover_core::rollout::Phase;
use cutover_core::{RolloutPolicy, Step};
use cutover_flags::ramp::RampPhase;
use cutover_server::config::{AdminConfig, AppConfig, PlatformKind, ServerConfig};
use cutover_server::controller::{Controller, DeployRequest};
use cutover_server::{Config, StartOptions};

#[derive(Debug, clap::Args)]
pub struct DemoOptions {
    /// Sticky users (distinct `X-User-ID` values, each logged in) in the synthetic load.
    #[arg(long, default_value_t = 2000)]
    users: u32,
    /// Requests per second of the synthetic load, all users together.
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Keep the state directory (state file, instance logs) instead of deleting it.
    #[arg(long)]
    keep_state: bool,
    /// At the end, keep the server and the live version running, so a person can look at the
    /// dashboard and try the CLI against it; Ctrl-C (or SIGTERM) stops everything.
    #[arg(long)]
    keep_running: bool,
}

#[derive(Default)]
struct Served {
    ok: u64,
    failed: u64,
}

/// What users saw, per version that answered ("-" for requests no version answered), and apart
/// from it what they saw while a flag was being ramped.
#[derive(Default)]
struct LoadStats {
    by_version: BTreeMap<String, Served>,
    /// Set while the flag chapter runs: requests are counted in `flag` instead.
    flag_chapter: bool,
    flag: Served,
    /// Users who got a failure during the flag chapter.
    flag_failed_users: std::collections::BTreeSet<usize>,
}

/// The flag the example app reads: on, it rejects every session (the incompatible-session bug).
const FLAG: &str = "new_session_validator";

pub async fn run(options: DemoOptions) -> Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("cutover-demo-")
        .tempdir()
        .context("creating a state directory")?;
    let exe = std::env::current_exe().context("locating the cutover binary")?;
    let sessions = dir.path().join("sessions.db");
    let users_db = dir.path().join("users.db");
    let command = format!(
        "exec '{}' example-app --port {{port}} --version-label {{version}} --session-store '{}' --users-db '{}'",
        exe.display(),
        sessions.display(),
        users_db.display()
    );
    let releases = dir.path().join("releases");
    write_migrations(&releases)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut app = AppConfig::static_routes(
        "demo",
        loopback,
        cutover_core::RouteTable::empty(cutover_core::Slot::Blue),
    );
    app.preview_listen = Some(loopback);
    app.platform = Some(PlatformKind::Local);
    app.release.command = command.clone();
    app.release.instances = 2;
    app.proxy.sticky.user_key_header = Some("X-User-ID".into());
    app.proxy.health_check.interval_ms = 250;
    app.proxy.drain_timeout_ms = 1_000;
    app.stop_grace_ms = 2_000;
    app.readiness.interval_ms = 100;
    app.rollout = RolloutPolicy {
        steps: vec![
            Step::new(500, 3_000),
            Step::new(2_500, 3_000),
            Step::new(5_000, 3_000),
            Step::new(10_000, 0),
        ],
        analysis_interval_ms: 1_000,
        failure_limit: 1,
        inconclusive_limit: 5,
        rollback_window_ms: 3_000,
        readiness_deadline_ms: 5_000,
        ..RolloutPolicy::default()
    };
    app.rollout.judge.min_requests = 10;
    app.verify.smoke = vec![cutover_server::checks::SmokeCheck {
        method: "GET".into(),
        path: "/health/ready".into(),
        expect_status: 200,
        body_contains: None,
        body: None,
    }];
    app.verify.prewarm_paths = vec!["/".into()];
    app.verify.prewarm_requests = 5;
    app.flags = Some(cutover_server::config::AppFlagsConfig {
        forward: vec![FLAG.into()],
        ..cutover_server::config::AppFlagsConfig::default()
    });
    app.migrations = Some(cutover_server::migrations::MigrationsConfig {
        dir: format!("{}/{{version}}/migrations", releases.display()),
        engine: cutover_server::migrations::Engine::Sqlite,
        path: Some(users_db.display().to_string()),
        url_env: None,
        url_file: None,
        lock_timeout_ms: 2_000,
        statement_timeout_ms: 60_000,
        lock_retries: 5,
        retry_backoff_ms: 200,
        contract_after_ms: None,
        base_dir: None,
    });
    let config = Config {
        server: ServerConfig {
            state_dir: dir.path().join("state"),
            tick_ms: 100,
        },
        admin: AdminConfig {
            listen: loopback,
            ..AdminConfig::default()
        },
        apps: vec![app],
        store: Default::default(),
        flags: Some(cutover_server::config::FlagsConfig {
            listen: loopback,
            ..cutover_server::config::FlagsConfig::default()
        }),
    };
    let token = format!("{:032x}", rand::random::<u128>());
    let running = cutover_server::start(config, token.clone(), StartOptions::new(dir.path())).await?;
    let admin = Admin {
        base: format!("http://{}", running.bound.admin),
        token,
    };
    let public = running
        .bound
        .apps
        .get("demo")
        .context("demo app not bound")?
        .listen;
    let controller = Arc::clone(
        running
            .controllers
            .get("demo")
            .context("demo app has no controller")?,
    );
    out!(
        "cutover demo: proxy on http://{public}, admin API on http://{}",
        running.bound.admin
    );
    out!(
        "dashboard: open http://{}/ in a browser to watch it live",
        running.bound.admin
    );
    out!("state and instance logs in {}", dir.path().display());

    let result = scenario(&controller, public, &admin, &options).await;
    if options.keep_running {
        keep_running(dir.path(), &running.bound.admin.to_string(), &admin.token).await?;
    }
    // Instances outlive `cutover serve` by design (they are re-adopted after a restart); the demo
    // cleans up after itself, once the server stopped: a controller still running would start
    // the live slot again when it found its instances gone.
    running.shutdown().await;
    for slot in cutover_core::Slot::ALL {
        let _ = controller.stop_slot(slot).await;
    }
    if options.keep_state {
        let kept = dir.keep();
        out!("state kept in {}", kept.display());
    }
    let ok = result?;
    out!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Waits for Ctrl-C or SIGTERM with the server up. The admin token goes to a file readable by
/// its owner only, never to the terminal: the dashboard's controls and the CLI need it.
async fn keep_running(dir: &std::path::Path, admin: &str, token: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token_path = dir.join("admin.token");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_path)
        .and_then(|mut f| writeln!(f, "{token}"))
        .with_context(|| format!("writing the admin token to {}", token_path.display()))?;
    out!("");
    out!("the server keeps running (--keep-running); Ctrl-C stops it and every instance");
    out!("  dashboard:   http://{admin}/");
    out!(
        "  admin token: in {} (paste it into the dashboard to use its controls)",
        token_path.display()
    );
    out!(
        "  CLI:         cutover --admin http://{admin} --token-file {} status demo",
        token_path.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    out!("stopping");
    Ok(())
}

/// The admin API, for the flag chapter (flags are changed as a user would change them).
struct Admin {
    base: String,
    token: String,
}

impl Admin {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let response = request.bearer_auth(&self.token).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("admin API answered {status}: {body}");
        }
        Ok(body)
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        self.send(client.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        self.send(client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        self.send(client.get(format!("{}{path}", self.base))).await
    }
}

/// What the flag chapter found.
struct FlagOutcome {
    phase: RampPhase,
    /// From the start of the ramp to the automatic kill.
    to_kill: Option<Duration>,
    reason: String,
}

async fn scenario(
    controller: &Arc<Controller>,
    public: SocketAddr,
    admin: &Admin,
    options: &DemoOptions,
) -> Result<bool> {
    out!("\n== v1 goes live (first release: nothing to compare against)");
    let v1 = deploy_and_wait(controller, "v1", None, true).await?;

    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(drive_load(
        public,
        options.users,
        options.rate,
        Arc::clone(&stats),
        Arc::clone(&stop),
    ));
    let users_db = controller
        .migrations_config()
        .and_then(|m| m.path.clone())
        .map(std::path::PathBuf::from)
        .context("the demo app has a SQLite migration database")?;
    let rollouts = async {
        out!("\n== v2, healthy: canary steps 5 % → 25 % → 50 % → 100 %; its expand migration adds users.full_name first");
        let v2 = deploy_and_wait(controller, "v2", Some("--users-schema both"), true).await?;
        out!("\n== v3 with 5 % errors: the judge should roll it back");
        let v3 = deploy_and_wait(controller, "v3", Some("--users-schema both --error-rate 0.05"), true).await?;
        out!("\n== v4 never becomes ready: provisioning should fail with no traffic shifted");
        let v4 = deploy_and_wait(controller, "v4", Some("--users-schema both --fail-ready"), true).await?;
        out!("\n== v5 drops users.name in an expand file, while v2 still reads it: the linter should refuse it");
        let v5 = deploy_and_wait(controller, "v5", Some("--users-schema new"), true).await?;
        if let Phase::Failed { reason, .. } = &v5.phase {
            for line in reason.lines().skip(1).take(4) {
                out!("  {:<12} {line}", "");
            }
        }
        out!("  {:<12} users columns: {}", "schema", users_columns(&users_db)?);
        out!("\n== v6 reads only full_name and ships the contract that drops users.name: it waits for v2's retirement");
        let v6 = deploy_and_wait_then_contract(controller, "v6", Some("--users-schema new"), &users_db).await?;
        out!("  {:<12} users columns: {}", "schema", users_columns_text(&v6.2));
        out!("\n== deploy is not release: {FLAG}, shipped dark in the live version, ramped from 1 % by a guarded ramp");
        let flag = flag_chapter(admin, &stats).await?;
        anyhow::Ok((v2, v3, v4, v5, v6, flag))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.context("load generator")?;
    let (v2, v3, v4, v5, v6, flag) = rollouts?;

    let outcomes = [
        (&v1, "succeeded"),
        (&v2, "succeeded"),
        (&v3, "rolled_back"),
        (&v4, "failed"),
        (&v5, "failed"),
        (&v6.0, "succeeded"),
    ];
    print_report(controller, &outcomes, &stats).await?;
    let s = stats.lock().unwrap_or_else(PoisonError::into_inner);
    out!(
        "\nflag {FLAG}: ramp {} ({}), killed {} after the ramp started, with no redeploy",
        flag.phase.name(),
        flag.reason,
        flag.to_kill
            .map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    out!(
        "while it ramped: {} user requests, {} failed, {} users affected (of {} users)",
        s.flag.ok + s.flag.failed,
        s.flag.failed,
        s.flag_failed_users.len(),
        options.users
    );
    out!(
        "schema: the contract {} ({})",
        if v6.1 {
            "ran after v2 was retired"
        } else {
            "did not run as expected"
        },
        users_columns_text(&v6.2)
    );
    Ok(outcomes.iter().all(|(r, want)| r.phase.name() == *want)
        && matches!(flag.phase, RampPhase::Killed { .. })
        && v6.1)
}

/// The migrations each version's checkout would carry.
fn write_migrations(releases: &std::path::Path) -> Result<()> {
    let users = (
        "0001_users.expand.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n",
    );
    let full_name = (
        "0002_full_name.expand.sql",
        "-- v2 writes name and full_name; rows written before it get full_name from name.\n\
         ALTER TABLE users ADD COLUMN full_name TEXT;\n\
         UPDATE users SET full_name = name WHERE full_name IS NULL;\n",
    );
    let backfill_again = (
        "0003_full_name_backfill.expand.sql",
        "-- rows v1 wrote during v2's canary\nUPDATE users SET full_name = name WHERE full_name IS NULL;\n",
    );
    let drop_in_expand = (
        "0003_drop_name.expand.sql",
        "ALTER TABLE users DROP COLUMN name;\n",
    );
    let contract = (
        "0002_full_name.contract.sql",
        "ALTER TABLE users DROP COLUMN name;\n",
    );
    let versions: [(&str, &[(&str, &str)]); 6] = [
        ("v1", &[users]),
        ("v2", &[users, full_name]),
        ("v3", &[users, full_name]),
        ("v4", &[users, full_name]),
        ("v5", &[users, full_name, drop_in_expand]),
        ("v6", &[users, full_name, backfill_again, contract]),
    ];
    for (version, files) in versions {
        let dir = releases.join(version).join("migrations");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, sql) in files {
            std::fs::write(dir.join(name), sql).with_context(|| format!("writing {name}"))?;
        }
    }
    Ok(())
}

fn users_columns(db: &std::path::Path) -> Result<String> {
    let conn = rusqlite_columns(db)?;
    Ok(users_columns_text(&conn))
}

fn users_columns_text(columns: &[String]) -> String {
    if columns.is_empty() {
        "no users table".to_string()
    } else {
        columns.join(", ")
    }
}

fn rusqlite_columns(db: &std::path::Path) -> Result<Vec<String>> {
    let conn = rusqlite::Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('users')")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(names.collect::<Result<Vec<_>, _>>()?)
}

/// Deploys `version`, tries the contract while the old version is warm for a rollback
/// (refused), and again once the rollout retired it. Returns the rollout, whether the contract
/// ran after retirement, and the users columns after it.
async fn deploy_and_wait_then_contract(
    controller: &Arc<Controller>,
    version: &str,
    extra_args: Option<&str>,
    users_db: &std::path::Path,
) -> Result<(cutover_core::rollout::Rollout, bool, Vec<String>)> {
    let waiting = deploy_and_wait(controller, version, extra_args, true);
    let trying = async {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = controller.state().await;
            if matches!(
                state.rollout.as_ref().map(|r| &r.phase),
                Some(Phase::Promoted { .. })
            ) {
                break;
            }
            if Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match controller.contract().await {
            Ok(done) => out!("  {:<12} ran too early: {}", "contract", done.summary),
            Err(why) => out!(
                "  {:<12} refused: {}",
                "contract",
                why.to_string().lines().next().unwrap_or("")
            ),
        }
    };
    let (rollout, ()) = tokio::join!(waiting, trying);
    let rollout = rollout?;
    let ran = match controller.contract().await {
        Ok(done) => {
            out!("  {:<12} {}", "contract", done.summary);
            done.applied > 0
        }
        Err(why) => {
            out!("  {:<12} refused: {why}", "contract");
            false
        }
    };
    Ok((rollout, ran, rusqlite_columns(users_db)?))
}

/// Creates the flag dark, starts a guarded ramp, and waits for the judge to kill it.
async fn flag_chapter(admin: &Admin, stats: &Arc<Mutex<LoadStats>>) -> Result<FlagOutcome> {
    let flag = serde_json::json!({
        "key": FLAG, "type": "boolean", "variants": { "on": true, "off": false },
        "default_variant": "off", "owner": "team-auth", "expires": "2027-03-31",
        "description": "The new session validator (rejects every existing session: a bug)",
    });
    admin
        .put(
            &format!("/v1/flags/{FLAG}"),
            serde_json::json!({ "flag": flag, "reason": "ship the validator dark", "expected_revision": 0 }),
        )
        .await?;
    out!("  flag         {FLAG} created, off for every user: the code is live but dark");
    stats.lock().unwrap_or_else(PoisonError::into_inner).flag_chapter = true;
    let started = Instant::now();
    admin
        .post(
            &format!("/v1/flags/{FLAG}/ramp"),
            serde_json::json!({
                "steps": [1, 5, 25, 50, 100], "window_ms": 3000, "interval_ms": 1000,
                "min_requests": 20, "reason": "turn on the new session validator",
            }),
        )
        .await?;
    let deadline = started + Duration::from_secs(90);
    let mut shown = 0;
    loop {
        let ramp: cutover_flags::ramp::Ramp =
            serde_json::from_value(admin.get(&format!("/v1/flags/{FLAG}/ramp")).await?)
                .context("the demo's server answered a ramp the demo cannot read")?;
        for d in ramp.decisions.iter().skip(shown) {
            out!("  {:<12} {}", d.kind, d.message.lines().next().unwrap_or(""));
        }
        shown = ramp.decisions.len();
        if !matches!(ramp.phase, RampPhase::Running { .. }) {
            let killed = matches!(ramp.phase, RampPhase::Killed { .. });
            let to_kill = killed.then(|| started.elapsed());
            stats.lock().unwrap_or_else(PoisonError::into_inner).flag_chapter = false;
            let reason = if killed {
                "the judge found flagged users worse".to_string()
            } else {
                crate::ramp::reason_of(&ramp.phase).unwrap_or("").to_string()
            };
            return Ok(FlagOutcome {
                phase: ramp.phase,
                to_kill,
                reason,
            });
        }
        if Instant::now() > deadline {
            bail!("the ramp of {FLAG} did not end within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deploys `version` and waits until its rollout ends (a promoted rollout ends when its rollback
/// window closes).
async fn deploy_and_wait(
    controller: &Arc<Controller>,
    version: &str,
    extra_args: Option<&str>,
    print: bool,
) -> Result<cutover_core::rollout::Rollout> {
    let mut request = DeployRequest {
        version: version.into(),
        ..DeployRequest::default()
    };
    if let Some(extra) = extra_args {
        request.command = Some(format!("{} {extra}", controller.release_command()));
    }
    let mut events = controller.subscribe();
    let id = controller.deploy(request).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        while let Ok(e) = events.try_recv() {
            if print && e.event.rollout_id == Some(id) {
                out!(
                    "  {:<12} {}",
                    e.event.kind(),
                    e.event.message.lines().next().unwrap_or("")
                );
            }
        }
        let state = controller.state().await;
        if let Some(Phase::Paused { reason, .. }) =
            state.rollout.as_ref().filter(|r| r.id == id).map(|r| &r.phase)
        {
            bail!("rollout #{id} of {version} paused for a person: {reason}");
        }
        if let Some(r) = state.rollout.filter(|r| r.id == id && r.phase.is_terminal()) {
            while let Ok(e) = events.try_recv() {
                if print && e.event.rollout_id == Some(id) {
                    out!(
                        "  {:<12} {}",
                        e.event.kind(),
                        e.event.message.lines().next().unwrap_or("")
                    );
                }
            }
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("rollout #{id} of {version} did not end within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sticky users, each logged in once, then reading `/api/me` at a fixed total rate.
async fn drive_load(
    public: SocketAddr,
    users: u32,
    rate: u32,
    stats: Arc<Mutex<LoadStats>>,
    stop: Arc<AtomicBool>,
) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let base = format!("http://{public}");
    let users = users.max(1);
    let mut sessions: Vec<Option<String>> = vec![None; users as usize];
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = tokio::task::JoinSet::new();
    let known_ids: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    // Bounded: at most 10 minutes of load whatever happens.
    let limit = Instant::now() + Duration::from_secs(600);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
        ticker.tick().await;
        let u = (n % u64::from(users)) as usize;
        n += 1;
        let user = format!("user-{u}");
        let client = client.clone();
        let base = base.clone();
        let session = sessions[u].clone();
        let stats = Arc::clone(&stats);
        if session.is_none() {
            // Log in first; the session lives in the store every version shares.
            let login = client
                .post(format!("{base}/login"))
                .header("X-User-ID", &user)
                .json(&serde_json::json!({ "user": user }))
                .send()
                .await;
            if let Ok(r) = login {
                if let Some(cookie) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
                    sessions[u] = cookie.split(';').next().map(str::to_string);
                }
            }
            continue;
        }
        let known_ids = Arc::clone(&known_ids);
        in_flight.spawn(async move {
            // One request in four writes or reads the users table, whose schema changes under
            // the load: a migration that broke a running version would fail these.
            let mut request = match n % 8 {
                0 => client.post(format!("{base}/users?name={user}")),
                4 => {
                    let id = {
                        let ids = known_ids.lock().unwrap_or_else(PoisonError::into_inner);
                        ids.get(n as usize / 8 % ids.len().max(1)).copied()
                    };
                    match id {
                        Some(id) => client.get(format!("{base}/users/{id}")),
                        None => client.get(format!("{base}/api/me")),
                    }
                }
                _ => client.get(format!("{base}/api/me")),
            }
            .header("X-User-ID", &user);
            if let Some(cookie) = session {
                request = request.header("Cookie", cookie);
            }
            let (version, ok) = match request.send().await {
                Ok(r) => {
                    let v = r
                        .headers()
                        .get("x-app-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let ok = r.status().is_success();
                    if ok && r.status() == reqwest::StatusCode::CREATED {
                        if let Ok(body) = r.json::<serde_json::Value>().await {
                            if let Some(id) = body["id"].as_i64() {
                                let mut ids = known_ids.lock().unwrap_or_else(PoisonError::into_inner);
                                if ids.len() < 10_000 {
                                    ids.push(id);
                                }
                            }
                        }
                    }
                    (v, ok)
                }
                Err(_) => ("-".to_string(), false),
            };
            let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
            if s.flag_chapter && !ok {
                s.flag_failed_users.insert(u);
            }
            let entry = if s.flag_chapter {
                &mut s.flag
            } else {
                s.by_version.entry(version).or_default()
            };
            if ok {
                entry.ok += 1;
            } else {
                entry.failed += 1;
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

async fn print_report(
    controller: &Arc<Controller>,
    outcomes: &[(&cutover_core::rollout::Rollout, &str)],
    stats: &Mutex<LoadStats>,
) -> Result<()> {
    out!(
        "\n{:<4} {:<10} {:<12} {:<12} {:>6} {:>5} {:>5} {:>10} {:>9} {:>6} {:>7}  reason",
        "#",
        "version",
        "expected",
        "outcome",
        "passed",
        "fail",
        "inc.",
        "decided in",
        "canary rq",
        "users",
        "failed"
    );
    for (r, expected) in outcomes {
        let events = controller
            .store()
            .events(controller.name(), Some(r.id), 0, 100_000)?;
        // The outcome is typed in the decision's data; its message is a sentence for people.
        let count = |outcome: Outcome| {
            events
                .iter()
                .filter(|e| matches!(&e.event.detail, EventDetail::Decision { verdict, .. } if verdict.outcome == outcome))
                .count()
        };
        // From the canary's first request to the decision: how long users were exposed.
        let decided_in = r
            .exposure
            .first_canary_request_to_decision_ms()
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let users = r
            .exposure
            .users_exposed
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into());
        let reason = match &r.phase {
            Phase::RolledBack { reason, .. }
            | Phase::Failed { reason, .. }
            | Phase::Aborted { reason, .. } => reason.lines().next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let mut reason = reason;
        if reason.len() > 110 {
            let cut = (0..=110).rev().find(|i| reason.is_char_boundary(*i)).unwrap_or(0);
            reason.truncate(cut);
            reason.push('…');
        }
        out!(
            "{:<4} {:<10} {:<12} {:<12} {:>6} {:>5} {:>5} {:>10} {:>9} {:>6} {:>7}  {}",
            r.id,
            r.release.version,
            expected,
            r.phase.name(),
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Inconclusive),
            decided_in,
            r.exposure.canary_requests,
            users,
            r.exposure.canary_failed_requests(),
            reason
        );
    }
    let s = stats.lock().unwrap_or_else(PoisonError::into_inner);
    out!("\nuser requests by the version that answered:");
    out!("{:<10} {:>9} {:>8}", "version", "served", "failed");
    let (mut total, mut failed) = (0, 0);
    for (version, served) in &s.by_version {
        out!(
            "{:<10} {:>9} {:>8}",
            version,
            served.ok + served.failed,
            served.failed
        );
        total += served.ok + served.failed;
        failed += served.failed;
    }
    let share = if total == 0 {
        0.0
    } else {
        failed as f64 / total as f64 * 100.0
    };
    out!("{total} user requests, {failed} failed: {share:.3} % of user requests failed");
    Ok(())
}
