//! A small HTTP service that stands in for "the user's application" in cutover's
//! tests, benchmarks and demo. It reports which version/slot answered, can be told
//! to misbehave (errors, latency, failing readiness, crashing), keeps login sessions
//! in a store shared by both slots, and exposes the awkward kinds of traffic a proxy
//! must carry (SSE, WebSocket, large bodies).
//!
//! # Routes
//!
//! - `GET /`, `GET /api/*`: JSON identity (`app`, `version`, `slot`, `instance`); the
//!   benchmark hot path. These, and `/api/me`, are the only routes the fault flags hit.
//! - `GET /api/me`: the logged-in user (`user`, `issued_by`, `served_by`); 401
//!   `{"error":"not logged in"}` without a valid `example_session` cookie, or when
//!   `--reject-old-sessions` refuses a session another version issued.
//! - `POST /login` (`{"user":"alice"}`, or the form on `/page`): creates a session and
//!   sets the `example_session` cookie. `POST /logout`: removes it. With no
//!   `--session-store` the session routes answer 503.
//! - `GET /page`: HTML with version, slot, and a login/logout form.
//! - `GET /health/live`: always 200. `GET /health/ready`: 200 unless `--fail-ready`,
//!   switched off at runtime, the session store fails a trivial query (SQLite) or does
//!   not answer `PING` (Redis) within 1 s, or the `--ready-dependency` URL does not
//!   answer 2xx within 1 s; the 503 body names each failed check.
//! - `POST /control/ready?value=BOOL`, `GET /control/requests`: runtime switches and
//!   the request counter, for tests.
//! - `GET /slow?ms=`, `/sse?events=&interval_ms=`, `/ws` (echo), `/echo`, `/headers`,
//!   `/status/{code}`, `/bytes?n=`: traffic shapes a proxy must carry.
//!
//! # Flags
//!
//! Identity: `--host`, `--port` (`PORT`), `--version-label` (`CUTOVER_VERSION`),
//! `--slot` (`CUTOVER_SLOT`), `--app` (`CUTOVER_APP`), `--threads`.
//! Faults: `--error-rate`, `--latency-ms`, `--latency-jitter-ms`, `--slow-rate`,
//! `--slow-ms`, `--fail-ready`, `--crash-after-secs`.
//! Sessions: `--session-store PATH|URL` (`EXAMPLE_SESSION_STORE`; a SQLite file by
//! default, or `redis://HOST[:PORT][/DB]` for Redis), `--reject-old-sessions`. Either
//! store is (re)connected lazily, so an instance started before its store is
//! reachable recovers without a restart.
//! Readiness: `--ready-dependency URL` (`http://` only).
//! Feature flag: `--flag-header NAME` (default `x-cutover-flags`, where cutover's proxy
//! forwards variants), `--flag-error-rate F`. With `new_session_validator=on` in that
//! header `/api/me` rejects every session with 401, and `--flag-error-rate` of `/` and
//! `/api/*` requests answer 500.
//! Lifecycle: `--drain-timeout-secs`, `--exit-on-stdin-close`.

mod app;
mod dependency;
mod session;
mod users;

use std::future::IntoFuture;
use std::io::{IsTerminal, Read, Write};
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::serve::ListenerExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::app::{App, Faults, FlagSettings, Settings};
use crate::dependency::Dependency;
use crate::session::{RedisTarget, SessionStore, StoreLocation};
use axum::http::HeaderName;

/// Exit code used by `--crash-after-secs`, distinct from clap's 2 and anyhow's 1 so
/// tests can tell a simulated crash from a usage error.
const CRASH_EXIT_CODE: i32 = 3;

/// Everything the example app can be told on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to bind; 0 picks a free one (printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,

    /// Version reported in responses and the `x-app-version` header.
    #[arg(long, env = "CUTOVER_VERSION", default_value = "dev")]
    version_label: String,

    /// Deployment slot reported in `/` (e.g. "blue" / "green").
    #[arg(long, env = "CUTOVER_SLOT", default_value = "")]
    slot: String,

    /// Application name reported in `/`.
    #[arg(long, env = "CUTOVER_APP", default_value = "example")]
    app: String,

    /// Tokio worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,

    /// Share (0..=1) of `/` and `/api/*` requests answered with 500.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,

    /// Fixed delay added to `/` and `/api/*`.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_ms: u64,

    /// Uniform random extra delay in 0..=MS added to `/` and `/api/*`.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency_jitter_ms: u64,

    /// Share (0..=1) of `/` and `/api/*` requests that get `--slow-ms` extra delay.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_rate)]
    slow_rate: f64,

    /// Extra delay for the requests picked by `--slow-rate`.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    slow_ms: u64,

    /// Make `/health/ready` always answer 503.
    #[arg(long)]
    fail_ready: bool,

    /// Where login sessions are kept, shared by every instance (blue and green) so
    /// users stay logged in across slots: the path of a SQLite file, or
    /// `redis://HOST[:PORT][/DB]` for a Redis server (port 6379 and database 0 unless
    /// given). Without it the session routes answer 503.
    #[arg(long, env = "EXAMPLE_SESSION_STORE", value_name = "PATH|URL", value_parser = parse_session_store)]
    session_store: Option<StoreLocation>,

    /// Answer 401 to sessions issued by another version, like an app whose session
    /// format changed incompatibly and logs everyone out during a rolling deploy.
    #[arg(long)]
    reject_old_sessions: bool,

    /// `http://` URL (e.g. another service's health check) that must answer 2xx
    /// within 1 s for `/health/ready` to pass.
    #[arg(long, value_name = "URL", value_parser = Dependency::parse)]
    ready_dependency: Option<Dependency>,

    /// The header cutover's proxy forwards flag variants in (`[app.flags] header`). With
    /// `new_session_validator=on` in it, `/api/me` rejects every session (401): the
    /// incompatible-session bug, shipped dark behind a flag.
    #[arg(long, value_name = "NAME", default_value = "x-cutover-flags")]
    flag_header: String,

    /// Share (0..=1) of `/` and `/api/*` requests of users with `new_session_validator`
    /// on that answer 500: a new code path that fails some of its requests.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_rate)]
    flag_error_rate: f64,

    /// A users table shared by every version (`/users`), for showing expand/contract
    /// migrations: the path of a SQLite file or a `postgres://` URL.
    #[arg(long, env = "EXAMPLE_USERS_DB", value_name = "PATH|URL")]
    users_db: Option<String>,

    /// Which columns of `users` this version reads and writes: `old` (name), `both` (writes
    /// name and full_name, reads name), `new` (full_name only).
    #[arg(long, value_enum, default_value = "old")]
    users_schema: users::UsersSchema,

    /// Exit with code 3 this many seconds after start, simulating a crash.
    #[arg(long, value_name = "SECS")]
    crash_after_secs: Option<u64>,

    /// On SIGTERM/SIGINT, how long to wait for in-flight requests before exiting anyway.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    drain_timeout_secs: u64,

    /// Exit when stdin reaches EOF. Test harnesses hold a pipe to stdin so the app dies
    /// with them even when they are killed without a chance to clean up.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("must be between 0 and 1, got {v}"));
    }
    Ok(v)
}

fn parse_session_store(s: &str) -> Result<StoreLocation, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((scheme, _)) = s.split_once("://") {
        // `rediss` too, so asking for TLS gets Redis's own explanation of what is
        // supported rather than a generic one.
        if scheme.eq_ignore_ascii_case("redis") || scheme.eq_ignore_ascii_case("rediss") {
            return RedisTarget::parse(s).map(StoreLocation::Redis);
        }
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(format!(
                "{scheme}:// session stores are not supported; pass the path of a SQLite file \
                 or a redis:// URL"
            ));
        }
    }
    Ok(StoreLocation::Sqlite(s.into()))
}

/// Runs the app until SIGTERM or SIGINT; the exit code to end the process with.
pub fn run(cli: Options) -> Result<ExitCode> {
    if cli.slow_rate > 0.0 && cli.slow_ms == 0 {
        bail!(
            "--slow-rate {} has no effect without --slow-ms > 0",
            cli.slow_rate
        );
    }
    if cli.reject_old_sessions && cli.session_store.is_none() {
        bail!("--reject-old-sessions has no effect without --session-store");
    }

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Tests capture stderr into log files, where colour codes are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init()
        .ok();

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.get());
    }
    let runtime = builder.build().context("building the tokio runtime")?;
    let result = runtime.block_on(serve(cli));
    // Streams still open after the drain timeout must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

async fn serve(cli: Options) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((cli.host.as_str(), cli.port))
        .await
        .with_context(|| format!("binding {}:{}", cli.host, cli.port))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let faults = Faults {
        error_rate: cli.error_rate,
        latency_ms: cli.latency_ms,
        jitter_ms: cli.latency_jitter_ms,
        slow_rate: cli.slow_rate,
        slow_ms: cli.slow_ms,
    };
    // The state lives as long as the process; leaking it makes `State` a plain
    // reference, so the hot path does no reference counting.
    let sessions = match &cli.session_store {
        Some(StoreLocation::Sqlite(path)) => {
            // Absolute, so the log names the file unambiguously: instances of the two
            // slots may run from different directories and must open the same one.
            let path = std::path::absolute(path)
                .with_context(|| format!("resolving --session-store {}", path.display()))?;
            Some(StoreLocation::Sqlite(path))
        }
        Some(redis @ StoreLocation::Redis(_)) => Some(redis.clone()),
        None => None,
    };
    let sessions = sessions
        .map(SessionStore::start)
        .transpose()
        .context("starting the session store thread")?;
    let users = match &cli.users_db {
        Some(target) => Some(users::UsersDb::open(target, cli.users_schema).await?),
        None => None,
    };
    let app: &'static App = Box::leak(Box::new(App::new(Settings {
        users,
        app: cli.app.clone(),
        version: cli.version_label.clone(),
        slot: cli.slot.clone(),
        port: addr.port(),
        faults,
        fail_ready: cli.fail_ready,
        sessions,
        reject_old_sessions: cli.reject_old_sessions,
        ready_dependency: cli.ready_dependency.clone(),
        flags: FlagSettings {
            header: HeaderName::from_bytes(cli.flag_header.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("--flag-header {:?} is not a header name", cli.flag_header))?,
            error_rate: cli.flag_error_rate,
        },
    })?));

    // Installed before announcing readiness: a supervisor may send SIGTERM the moment
    // it reads the line below, and the default action would kill us with no exit code.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    if let Some(secs) = cli.crash_after_secs {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            tracing::error!(after_secs = secs, "simulated crash (--crash-after-secs)");
            std::process::exit(CRASH_EXIT_CODE);
        });
    }
    if cli.exit_on_stdin_close {
        std::thread::spawn(exit_when_stdin_closes);
    }

    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "cutover-example-app listening on http://{addr} version={}",
            cli.version_label
        )?;
        out.flush()?;
    }
    tracing::info!(%addr, version = %cli.version_label, slot = %cli.slot, "serving");

    let listener = listener.tap_io(|tcp| {
        // Small request/response exchanges; Nagle would only add latency.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {e}");
        }
    });
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app::router(app))
        .with_graceful_shutdown(async {
            let _ = drain_rx.await;
        })
        .into_future();
    let mut server = std::pin::pin!(server);

    let signal_name = tokio::select! {
        res = &mut server => {
            res.context("serving")?;
            bail!("server stopped without being asked to");
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!("{signal_name} received, draining in-flight requests");
    let _ = drain_tx.send(());

    let drain_timeout = Duration::from_secs(cli.drain_timeout_secs);
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(res) => res.context("serving while draining")?,
        Err(_) => tracing::warn!(
            ?drain_timeout,
            "drain timeout passed, exiting with requests in flight"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

fn exit_when_stdin_closes() {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tracing::warn!("stdin closed (--exit-on-stdin-close), exiting");
    std::process::exit(0);
}
