//! The `cutover` command: a thin shell over the server crate and the admin API.

/// `println!` for a command's output: a reader that went away (`cutover history web | head -1`)
/// ends the command quietly, where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            // A reader that went away (`| head`) is no error; any other failure to write the
            // output (a full disk) is, and must not pass for success.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // ... except for a deploy, whose exit code is the rollout's outcome: one that
                // stops before it knows the outcome must not pass for "promoted".
                if crate::client::FOLLOWING.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("cutover: the output was closed before the rollout ended; it goes on in the server (`cutover status APP`)");
                    std::process::exit(1);
                }
                std::process::exit(0);
            }
            eprintln!("cutover: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

mod client;
mod connect;
mod demo;
mod flag;
mod init;
mod logs;
mod migrate;
mod ramp;
mod simulate;
mod table;
mod units;

/// mimalloc instead of glibc's malloc: it gives the memory of closed connections back to the
/// system (glibc kept all of it: 10 000 idle connections closed, 0 % returned, in
/// `bench/proxy.sh`), and its per-thread free lists make the proxy's short-lived allocations
/// cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory of closed connections back to the system once at least this many have
/// closed since the last time: mimalloc frees pages lazily, when the thread allocates again, so a
/// server whose clients all left would keep their memory until the next burst of traffic.
const COLLECT_AFTER_CLOSED: u64 = 256;

/// Every second, [`collect_freed_memory`] if enough client connections closed meanwhile.
async fn return_memory_of_closed_connections() {
    let mut collected_at = cutover_proxy::closed_connections();
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let closed = cutover_proxy::closed_connections();
        if closed.saturating_sub(collected_at) >= COLLECT_AFTER_CLOSED {
            collected_at = closed;
            collect_freed_memory();
        }
    }
}

/// Returns the calling thread's free mimalloc pages to the system.
#[allow(unsafe_code)]
fn collect_freed_memory() {
    // SAFETY: mi_collect has no preconditions: it takes a flag by value, works only on
    // mimalloc's own state (the calling thread's heap and the shared segments) under its own
    // synchronisation, and may be called from any thread at any time, like malloc itself.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use connect::ServerArgs;
use cutover_server::config::RouterConfig;
use cutover_server::{Config, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime releases: blue-green, sticky canaries, automatic judgement, instant rollback",
    long_about = "Zero-downtime releases: the new version starts beside the old one, takes a small sticky \
                  slice of real traffic, is judged against the old version on errors and latency, and is \
                  promoted step by step or rolled back in milliseconds.\n\n\
                  Commands that talk to a running server find it through --admin, CUTOVER_ADMIN, or the \
                  [admin] section of cutover.toml (--config FILE, CUTOVER_CONFIG, or ./cutover.toml).",
    after_help = START_HERE,
    after_long_help = LONG_HELP_END
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Before the command's name, for scripts written that way: `cutover --admin URL status web`.
    #[command(flatten, next_help_heading = None)]
    server: HiddenServerArgs,
}

const START_HERE: &str = "Start here:\n  cutover init                    # writes cutover.toml and cutover.service for your service\n  \
                  cutover serve                   # runs the proxy, the controller and the admin API\n  \
                  cutover deploy web v2           # deploys v2 and follows the rollout to its end\n  \
                  cutover demo                    # shows everything on this machine, in about 45 s";
/// The exit codes, as every help that needs them shows them.
macro_rules! exit_codes {
    () => {
        concat!(
            "Exit codes:\n",
            "  0   done (deploy: promoted)\n",
            "  1   error: the server unreachable, an unexpected answer, a file that cannot be read\n",
            "  2   usage error: an unknown flag, a missing or malformed argument\n",
            "  3   invalid input: refused by the server (an unknown app, another rollout running, a deploy\n",
            "      freeze, a bad argument), or a configuration file with problems (config check)\n",
            "  4   not authorised: the admin token is missing or wrong\n",
            "  10  deploy: rolled back (the judge found the new version worse, or a person rolled it back)\n",
            "  11  deploy: aborted by a person\n",
            "  12  deploy: failed before any user traffic (migrations, provisioning, readiness, smoke checks)\n",
            "  13  deploy: waiting for a person (a pause step, inconclusive evidence; without --wait)\n",
            "  14  deploy: --timeout passed (the rollout goes on, or was aborted with --on-timeout abort)\n",
            "  130 deploy: interrupted (Ctrl-C, SIGTERM, SIGHUP); the rollout goes on in the server"
        )
    };
}

const LONG_HELP_END: &str = concat!(
    "Start here:\n  cutover init                    # writes cutover.toml and cutover.service for your service\n  ",
    "cutover serve                   # runs the proxy, the controller and the admin API\n  ",
    "cutover deploy web v2           # deploys v2 and follows the rollout to its end\n  ",
    "cutover demo                    # shows everything on this machine, in about 45 s\n\n",
    exit_codes!()
);

/// `--admin`, `--token-file` and `--config` accepted before a command's name, and not shown
/// there: they mean something only to the commands that talk to a server, whose help shows them.
#[derive(Debug, Clone, Default, clap::Args)]
struct HiddenServerArgs {
    #[arg(long, value_name = "URL", hide = true)]
    admin: Option<String>,
    #[arg(long, value_name = "FILE", hide = true)]
    token_file: Option<PathBuf>,
    #[arg(long, short = 'c', value_name = "FILE", hide = true)]
    config: Option<PathBuf>,
}

impl HiddenServerArgs {
    fn given(&self) -> bool {
        self.admin.is_some() || self.token_file.is_some() || self.config.is_some()
    }

    fn as_server_args(&self) -> ServerArgs {
        ServerArgs {
            admin: self.admin.clone(),
            token_file: self.token_file.clone(),
            config: self.config.clone(),
        }
    }
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented cutover.toml and a systemd unit for your service, to start from.
    #[command(after_help = "Examples:\n  \
        cutover init --app web --cmd './bin/web --port {port}'\n  \
        cutover init --app api --cmd 'node server.js' --readiness-path /healthz --listen 0.0.0.0:80\n  \
        cutover init                     # the bundled example app, to try cutover first")]
    Init(init::InitOptions),
    /// Run the proxy, the rollout controller and the admin API from a configuration file.
    #[command(after_help = "Examples:\n  \
        cutover serve                          # ./cutover.toml\n  \
        cutover serve --config /srv/web/cutover.toml --log-format json\n\n\
        On stdout, one JSON line once every listener is bound: {\"event\":\"ready\",\"bound\":{...}}.\n\
        Logs go to stderr (CUTOVER_LOG=debug for more; colour only on a terminal, never with NO_COLOR).\n\
        SIGTERM or Ctrl-C: stop accepting, finish in-flight requests, exit 0. Instances keep running.\n\
        SIGHUP: reload the configuration with no failed request: the server starts\n  \
        `cutover serve --upgrade` of its own binary with the same file; if the file does not load,\n  \
        that process says why and exits, and this one goes on as before.\n\
        Upgrade cutover itself: install the new binary, then run `cutover serve --upgrade` with it\n  \
        (or send SIGHUP, which starts the binary at the path this one was started from).")]
    Serve {
        /// The configuration file; relative paths in it are its directory's.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
        /// How log lines are written to stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Take over from the `cutover serve` running on the same state directory: its listening
        /// sockets are passed to this process, it stops accepting and drains, and this one resumes
        /// its rollouts from the stored state. No connection is refused meanwhile.
        #[arg(long)]
        upgrade: bool,
    },
    /// A proxy of a fleet: serve the apps' listeners, routing by the tables the elected
    /// controller keeps in etcd ([store] kind = "etcd").
    #[command(after_help = "Examples:\n  \
        cutover proxy --config /etc/cutover/cutover.toml\n  \
        cutover proxy --config cutover.toml --id edge-2 --admin-listen 127.0.0.1:9101\n\n\
        On stdout, one JSON line once every listener is bound: {\"event\":\"ready\",\"bound\":{...}}.\n\
        Its admin listener serves /healthz (503 while its tables are not confirmed against etcd for\n\
        [store] stale_after_ms), /metrics, and the counters the controller judges from (admin token).\n\
        Every process of the fleet needs the same admin token (CUTOVER_ADMIN_TOKEN or [admin] token_file).")]
    Proxy {
        /// The configuration file shared by the fleet.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
        /// This proxy's name in the fleet, shown by `cutover status` (default: host name and pid).
        #[arg(long)]
        id: Option<String>,
        /// Its admin listener, instead of [admin] listen.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
        /// How log lines are written to stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Check a configuration file, or print what an external router needs.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Every app of the server: its live version, the rollout's phase and the new version's weight.
    #[command(after_help = "Examples:\n  cutover apps\n  cutover apps --output json")]
    Apps {
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Deploy VERSION of APP and follow the rollout until it is promoted or ends.
    #[command(after_help = concat!("Examples:\n  \
        cutover deploy web v2\n  \
        cutover deploy web \"$(git rev-parse --short HEAD)\" --output json --timeout 15m\n  \
        cutover deploy web v6 --cmd './bin/web --port {port}' --env LOG_LEVEL=debug --secret DB_PASSWORD=file:/run/secrets/db\n  \
        cutover deploy web v7 --no-follow && cutover status web --watch\n\n", exit_codes!()))]
    Deploy {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        version: String,
        /// Command line of the release, instead of the app's `[app.release] command`: `{port}` is
        /// replaced by each instance's port, `{version}` by VERSION, `{slot}` by blue or green.
        #[arg(long = "cmd", value_name = "COMMAND")]
        command: Option<String>,
        /// Environment of the release, NAME=VALUE (repeatable). Values are never shown again:
        /// status and history show the names, each value as <redacted>.
        // Parsed after clap, whose errors repeat the argument (a value may be a secret).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// A variable by reference rather than by value (repeatable): NAME=file:/PATH (a file on
        /// the server, one trailing newline removed) or NAME=env:VAR (a variable of the server's
        /// environment; CUTOVER_* refused).
        ///
        /// The server reads it each time the instances start, so a rotated file takes effect at
        /// the next deploy or restart; only the reference is stored and shown. A reference that
        /// cannot be read when deploying is refused before anything starts. Example:
        ///
        ///   cutover deploy web v6 --secret DB_PASSWORD=file:/run/secrets/db-password --secret API_KEY=env:WEB_API_KEY
        #[arg(long = "secret", value_name = "NAME=REF", verbatim_doc_comment)]
        secrets: Vec<String>,
        /// Instances of the release per slot, instead of `[app.release] instances`.
        #[arg(long, value_name = "N")]
        instances: Option<u32>,
        /// Deploy inside a freeze window (recorded in the event log).
        #[arg(long)]
        force: bool,
        /// Return once the rollout has started instead of following it.
        #[arg(long, conflicts_with_all = ["wait", "timeout", "on_timeout", "verbose"])]
        no_follow: bool,
        /// Keep following while the rollout waits for a person, instead of exiting with 13.
        #[arg(long)]
        wait: bool,
        /// Stop following after this long and exit with 14: `900` (seconds), `90s`, `15m`, `1h30m`.
        #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// What happens to the rollout when --timeout passes: it goes on (leave), or is aborted.
        #[arg(long, value_enum, default_value = "leave", requires = "timeout")]
        on_timeout: client::OnTimeout,
        /// text: the events as they come and a live progress line; json: one JSON object per
        /// line (each event, then `{"kind":"result","exit_code":...}`), for CI.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Also the statistics behind each decision (estimates, intervals, evidence).
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Phase, weights, per-slot metrics and the latest decisions of APP.
    #[command(
        after_help = "Examples:\n  cutover status web\n  cutover status web --watch\n  cutover status web --output json | jq .rollout.phase"
    )]
    Status {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        /// Keep showing the status, every second, until Ctrl-C (redrawn in place on a terminal;
        /// piped, a new block when something changed, or one JSON object per line).
        #[arg(long, short)]
        watch: bool,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Also the statistics behind each decision.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Skip the remaining analysis and move all traffic to the new version.
    #[command(after_help = "Example:\n  cutover promote web")]
    Promote {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Hold the current step (its weight stays) until `cutover resume`.
    #[command(after_help = "Example:\n  cutover pause web")]
    Pause {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Go on with a paused rollout: the next step (after a pause step) or the step it was holding.
    #[command(after_help = "Example:\n  cutover resume web")]
    Resume {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop the rollout: traffic back to the old version, the new one torn down.
    #[command(after_help = "Example:\n  cutover abort web")]
    Abort {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Move all traffic back to the old version now (instant while it is still warm).
    #[command(after_help = "Example:\n  cutover rollback web")]
    Rollback {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Past rollouts of APP, newest first: start, duration, versions, outcome and why.
    #[command(after_help = "Examples:\n  cutover history web\n  cutover history web --output json")]
    History {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The event log of APP: deploys, steps, decisions, gates, rollbacks, as they happen.
    ///
    /// Each event as text, or one JSON object per line (`{"seq","app","at","rollout_id","kind",
    /// "message","data"}`, documented in docs/events.md) for scripts.
    #[command(
        after_help = "Examples:\n  cutover events web\n  cutover events web --follow --output json | jq -c 'select(.kind == \"decision\")'\n  cutover events web --rollout 7 --verbose"
    )]
    Events {
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
        /// Only the events of this rollout (its number, as `history` shows it).
        #[arg(long, value_name = "ID")]
        rollout: Option<u64>,
        /// Start with this many of the latest events.
        #[arg(long, short = 'n', default_value_t = 50, value_name = "N")]
        last: usize,
        /// Keep printing new events as they come, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// text for people; json: one object per line.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Also the statistics behind each decision.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Logs (stdout and stderr) of APP's instances, read through the server.
    Logs {
        #[command(flatten)]
        options: logs::LogsOptions,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Feature flags: create, apply a flags.toml, kill, ramp under the judge, audit, check for stale flags.
    Flag {
        #[command(subcommand)]
        command: flag::FlagCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Expand/contract schema migrations: status, contract, repair, and the linter.
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// See cutover at work on this machine, in about 45 s.
    ///
    /// The bundled example app deployed through canary steps under a load of sticky users: v2
    /// promoted, v3 (5 % errors) rolled back, v4 (never ready) failed; a schema change in
    /// expand/contract steps; a flag killed by its guarded ramp. Nothing outside loopback.
    #[command(after_help = "Examples:\n  cutover demo\n  cutover demo --users 500 --rate 100 --keep-state")]
    Demo(demo::DemoOptions),
    /// Simulated rollouts judged by the real engine: how often and how fast it catches a bad release.
    ///
    /// Seeded runs per scenario and judge: detection rates, times to detect, false rollbacks.
    #[command(
        after_help = "Examples:\n  cutover simulate --list\n  cutover simulate --scenario slow-leak --runs 200"
    )]
    Simulate(simulate::SimulateOptions),
    /// Run the bundled example app, a small HTTP service to try cutover with.
    ///
    /// Readiness at /health/ready, its version at /api/hello; what `cutover init` deploys
    /// when no --cmd is given. Flags make it fail, slow down or never get ready, for practice.
    #[command(after_help = "Example:\n  cutover example-app --port 9001 --version-label v1")]
    ExampleApp(cutover_example_app::Options),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:\n  \
        cutover completions bash > /etc/bash_completion.d/cutover\n  \
        cutover completions zsh > \"${fpath[1]}/_cutover\"\n  \
        cutover completions fish > ~/.config/fish/completions/cutover.fish")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command (cutover.1, cutover-deploy.1, ...), into DIR.
    #[command(after_help = "Example:\n  cutover man /usr/local/share/man/man1 && man cutover-deploy")]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured only on a terminal, never with NO_COLOR set).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

/// `NAME=VALUE`. The error does not repeat the argument: it may be a secret without its name.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| {
            "--env: an argument has no '='; write NAME=VALUE, e.g. --env LOG_LEVEL=debug".to_string()
        })
}

/// `NAME=file:/PATH` or `NAME=env:VAR`, checked as the server will check it; the reference
/// normalised. Errors do not repeat the argument (a value pasted in place of a reference).
fn parse_secret(s: &str) -> Result<(String, String), String> {
    let (name, reference) = s.split_once('=').ok_or_else(|| {
        "--secret: an argument has no '='; write NAME=file:/PATH or NAME=env:VAR, e.g. --secret DB_PASSWORD=file:/run/secrets/db-password"
            .to_string()
    })?;
    let reference: cutover_core::SecretRef = reference
        .parse()
        .map_err(|e| format!("--secret: the reference of {name} {e}"))?;
    if !reference.is_allowed() {
        return Err(format!(
            "--secret: the reference of {name} names cutover's own variable ({reference}); cutover never gives its own \
             settings, the admin token among them, to an app: export the secret under a name that does not \
             start with CUTOVER_"
        ));
    }
    Ok((name.to_string(), reference.to_string()))
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and report every problem in it at once, each with its line
    /// and field; exits 0 when it is valid, 3 when it has problems. The reference: docs/config.md.
    #[command(after_help = "Example:\n  cutover config check cutover.toml")]
    Check {
        /// The configuration file to check [default: --config, CUTOVER_CONFIG, or the nearest
        /// cutover.toml in this directory or above].
        file: Option<PathBuf>,
        /// The configuration file, as the other commands take it.
        #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "file")]
        config: Option<PathBuf>,
    },
    /// Print the configuration an app's external router (HAProxy, nginx) must load before
    /// cutover can drive it, e.g. `cutover config router cutover.toml web > /etc/haproxy/cutover-web.cfg`.
    Router {
        /// The configuration file.
        file: PathBuf,
        /// The app, as named in cutover.toml (`cutover apps` lists them).
        app: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let before = cli.server.clone();
    if before.given() && !talks_to_a_server(&cli.command) {
        // clap's own wording and exit code for a usage error.
        let name = command_name(&cli.command);
        let hint = if matches!(cli.command, Command::Serve { .. }) && cli.server.config.is_some() {
            format!("; give the file after the command: `cutover {name} --config FILE`")
        } else {
            String::new()
        };
        eprintln!(
            "error: --admin, --token-file and --config before the command are for commands that talk to a running \
             server; `{name}` does not{hint}"
        );
        return ExitCode::from(client::exit::USAGE);
    }
    match cli.command {
        Command::Simulate(options) => {
            return match simulate::run(options) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::ExampleApp(options) => {
            return match cutover_example_app::run(options) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "cutover", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match write_man_pages(&dir) {
                Ok(n) => {
                    out!("{n} man pages written to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Init(options) => {
            return match init::run(options) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // Only the server tells its story in logs; other commands print their own output.
    match &cli.command {
        Command::Serve { log_format, .. } | Command::Proxy { log_format, .. } => {
            init_logging("info", *log_format)
        }
        _ => init_logging("warn", LogFormat::Text),
    }
    // Fair service under many connections. On tokio's multi-thread scheduler a worker's tasks
    // woken by I/O beyond its local queue (256) go to a shared queue that it looks at once every
    // 61 tasks: with one worker and 1000 busy connections, the connections in the local queue
    // were served again and again while the others waited up to a few hundred ms (p50 19 ms,
    // p99 208 ms: bench/RESULTS.md, issue 16). The current-thread scheduler has one unbounded
    // FIFO queue, so one worker serves every connection in turn; it is used whenever one
    // worker is all there is (`TOKIO_WORKER_THREADS=1`, or one CPU, e.g. under `taskset`).
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, before.as_server_args())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            client::exit_code_for(&e)
        }
    }
}

fn talks_to_a_server(command: &Command) -> bool {
    matches!(
        command,
        Command::Apps { .. }
            | Command::Deploy { .. }
            | Command::Status { .. }
            | Command::Promote { .. }
            | Command::Pause { .. }
            | Command::Resume { .. }
            | Command::Abort { .. }
            | Command::Rollback { .. }
            | Command::History { .. }
            | Command::Logs { .. }
            | Command::Events { .. }
            | Command::Flag { .. }
            | Command::Migrate { .. }
    )
}

/// The command's name as typed, for messages.
fn command_name(command: &Command) -> String {
    let name = match command {
        Command::Init(_) => "init",
        Command::Serve { .. } => "serve",
        Command::Proxy { .. } => "proxy",
        Command::Config { .. } => "config",
        Command::Demo(_) => "demo",
        Command::Simulate(_) => "simulate",
        Command::ExampleApp(_) => "example-app",
        Command::Completions { .. } => "completions",
        Command::Man { .. } => "man",
        _ => "this command",
    };
    name.to_string()
}

/// One man page per command and subcommand, named as `man` finds them: `cutover-flag-kill.1`.
fn write_man_pages(dir: &std::path::Path) -> Result<usize> {
    fn write(command: &clap::Command, prefix: &str, dir: &std::path::Path, count: &mut usize) -> Result<()> {
        let name = if prefix.is_empty() {
            command.get_name().to_string()
        } else {
            format!("{prefix}-{}", command.get_name())
        };
        let page = command.clone().name(name.clone());
        let mut buffer = Vec::new();
        clap_mangen::Man::new(page).render(&mut buffer)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buffer).with_context(|| format!("writing {}", path.display()))?;
        *count += 1;
        // `help` subcommands are clap's own: a page each would only repeat `--help`.
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            write(sub, &name, dir, count)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Cli::command();
    command.build();
    let mut count = 0;
    write(&command, "", dir, &mut count)?;
    Ok(count)
}

fn init_logging(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour is for people at a terminal: never in a file, a journal or a pipe, and never when
    // NO_COLOR is set to anything (no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

async fn run(command: Command, before: ServerArgs) -> Result<ExitCode> {
    let api = |server: ServerArgs| -> Result<client::Client> {
        let connection = connect::discover(&server.or(&before), &connect::Environment::read())?;
        client::Client::new(&connection)
    };
    match command {
        Command::Deploy {
            app,
            version,
            command,
            env,
            secrets,
            instances,
            force,
            no_follow,
            wait,
            timeout,
            on_timeout,
            output,
            verbose,
            server,
        } => {
            let parsed = env
                .iter()
                .map(|s| parse_key_value(s))
                .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
                .and_then(|env| {
                    let secrets = secrets
                        .iter()
                        .map(|s| parse_secret(s))
                        .collect::<Result<std::collections::BTreeMap<_, _>, _>>()?;
                    Ok((env, secrets))
                });
            let (env, secrets) = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    // A usage error, like clap's, without repeating the argument.
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(client::exit::USAGE));
                }
            };
            let body = serde_json::json!({
                "version": version,
                "command": command,
                "env": env,
                "secrets": secrets,
                "instances": instances,
                "force": force,
            });
            if timeout.is_some_and(|t| t.is_zero()) {
                eprintln!("error: --timeout 0 would stop following at once; give a duration such as 15m, or leave it out to follow to the end");
                return Ok(ExitCode::from(client::exit::USAGE));
            }
            let json = output == Output::Json;
            let follow = (!no_follow).then_some(client::Follow {
                wait,
                timeout,
                on_timeout,
                json,
                verbose,
            });
            let deployed = async { client::deploy(&api(server)?, &app, body, follow, json).await }.await;
            match deployed {
                // A pipeline reading JSON gets its result line whatever happened.
                Err(e) if json => {
                    let code = client::exit_number_for(&e);
                    out!(
                        "{}",
                        serde_json::json!({
                            "kind": "result",
                            "app": app,
                            "exit_code": code,
                            "error": format!("{e:#}"),
                        })
                    );
                    eprintln!("error: {e:#}");
                    Ok(ExitCode::from(code))
                }
                other => other,
            }
        }
        Command::Apps { output, server } => client::apps(&api(server)?, output == Output::Json).await,
        Command::Status {
            app,
            watch,
            output,
            verbose,
            server,
        } => client::status(&api(server)?, &app, output == Output::Json, watch, verbose).await,
        Command::Promote { app, server } => client::command(&api(server)?, &app, "promote").await,
        Command::Pause { app, server } => client::command(&api(server)?, &app, "pause").await,
        Command::Resume { app, server } => client::command(&api(server)?, &app, "resume").await,
        Command::Abort { app, server } => client::command(&api(server)?, &app, "abort").await,
        Command::Rollback { app, server } => client::command(&api(server)?, &app, "rollback").await,
        Command::History { app, output, server } => {
            client::history(&api(server)?, &app, output == Output::Json).await
        }
        Command::Events {
            app,
            rollout,
            last,
            follow,
            output,
            verbose,
            server,
        } => {
            client::events(
                &api(server)?,
                &app,
                rollout,
                last,
                follow,
                output == Output::Json,
                verbose,
            )
            .await
        }
        Command::Logs { options, server } => logs::run(&api(server)?, options).await,
        Command::Flag { command, server } => flag::run(&api(server)?, command).await,
        Command::Migrate { command, server } => migrate::run(|| api(server.clone()), command).await,
        Command::Serve {
            config,
            log_format,
            upgrade,
        } => serve(config, log_format, upgrade).await,
        Command::Proxy {
            config,
            id,
            admin_listen,
            log_format: _,
        } => proxy(config, id, admin_listen).await,
        Command::Config {
            command: ConfigCommand::Check { file, config },
        } => {
            let file = match file
                .or(config)
                .or_else(|| std::env::var_os("CUTOVER_CONFIG").map(PathBuf::from))
            {
                Some(file) => file,
                None => {
                    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                    match connect::find_upwards(&here) {
                        Some(found) => found,
                        None => anyhow::bail!(
                            "no cutover.toml in {} or a directory above it; name the file: `cutover config check FILE`",
                            here.display()
                        ),
                    }
                }
            };
            let config = match Config::load(&file) {
                Ok(config) => config,
                // A file that cannot be read is an error (1); one with problems is invalid
                // input, as the server would refuse it (3).
                Err(e @ cutover_server::config::ConfigError::Read { .. }) => return Err(e.into()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(client::exit::REJECTED));
                }
            };
            out!(
                "{}: ok ({} app{})",
                file.display(),
                config.apps.len(),
                if config.apps.len() == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Router { file, app },
        } => {
            let config = Config::load(&file)?;
            let Some(app_config) = config.apps.iter().find(|a| a.name == app) else {
                let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
                anyhow::bail!(
                    "{}: no app named {app:?} (apps: {})",
                    file.display(),
                    names.join(", ")
                );
            };
            match &app_config.router {
                RouterConfig::Builtin => anyhow::bail!(
                    "app {app} is routed by the built-in proxy, which needs no outside configuration; \
                     set [app.router] kind = \"haproxy\" or \"nginx\" to use one of those"
                ),
                RouterConfig::Haproxy(c) => print!("{}", cutover_router::haproxy::render_config(&app, c)),
                // What nginx serves before the first deploy; cutover rewrites the file from then on.
                RouterConfig::Nginx(c) => print!(
                    "{}",
                    cutover_router::nginx::render_config(
                        &app,
                        c,
                        &cutover_core::RouteTable::empty(cutover_core::Slot::Blue)
                    )
                ),
                k8s => anyhow::bail!(
                    "app {app} is routed by a Kubernetes object ({}), which stays yours: cutover changes \
                     only its routing fields; docs/kubernetes.md has a complete example for each router",
                    k8s.kind()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(options) => demo::run(options).await,
        Command::ExampleApp(_)
        | Command::Simulate(_)
        | Command::Init(_)
        | Command::Completions { .. }
        | Command::Man { .. } => Ok(ExitCode::FAILURE),
    }
}

async fn serve(path: PathBuf, log_format: LogFormat, upgrade: bool) -> Result<ExitCode> {
    // The path this binary was started from, read now: after a package upgrade replaced the file,
    // a reload (SIGHUP) starts the new binary found there.
    let exe = std::env::current_exe().ok();
    // Installed before the ready line: a SIGHUP sent as soon as that is out must reload, not
    // kill (SIGHUP's default).
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let terminations = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let config = Config::load(&path)?;
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let (token, source) =
        cutover_server::resolve_admin_token(&config, &dir, std::env::var("CUTOVER_ADMIN_TOKEN").ok())?;
    match &source {
        TokenSource::Environment => tracing::info!("admin token from CUTOVER_ADMIN_TOKEN"),
        TokenSource::File(p) => tracing::info!(file = %p.display(), "admin token from file"),
        TokenSource::Generated(p) => tracing::info!(file = %p.display(), "generated an admin token"),
    }
    let config_state_dir = cutover_server::state_dir(&config, &dir);
    let options = cutover_server::StartOptions::new(&dir);
    let running = if upgrade {
        cutover_server::start_upgrade(config, token, options)
            .await
            .context("taking over from the running server")?
    } else {
        cutover_server::start(config, token, options)
            .await
            .context("starting the server")?
    };
    // One machine-readable line on stdout: the addresses actually bound (ports may be 0 in the
    // config), for scripts and tests.
    out!(
        "{}",
        serde_json::json!({ "event": "ready", "bound": running.bound })
    );
    record_admin_url(&config_state_dir, &running.bound.admin);
    tracing::info!(admin = %running.bound.admin, "serving");
    // Under systemd (Type=notify, NotifyAccess=all): this process is now the service's main one.
    systemd_notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    // With one worker (the current-thread runtime) this runs on the thread that served the
    // connections, whose heap holds their memory.
    tokio::spawn(return_memory_of_closed_connections());
    // Ends on SIGTERM or Ctrl-C; a hand-over (after `serve --upgrade`, or a SIGHUP's successor)
    // ends it too, by itself.
    running
        .run_until(async {
            tokio::select! {
                _ = shutdown_signal(terminations) => {}
                _ = reload_on_hangup(hangups, exe, path, log_format) => {}
            }
        })
        .await;
    Ok(ExitCode::SUCCESS)
}

async fn proxy(
    path: PathBuf,
    id: Option<String>,
    admin_listen: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    let terminations = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let config = Config::load(&path)?;
    let dir = match path.parent().map(PathBuf::from) {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => PathBuf::from("."),
    };
    let (token, source) =
        cutover_server::resolve_admin_token(&config, &dir, std::env::var("CUTOVER_ADMIN_TOKEN").ok())?;
    if let TokenSource::Generated(p) = &source {
        tracing::warn!(file = %p.display(), "generated an admin token: the controller cannot read this proxy's counters unless it has the same one");
    }
    let options = cutover_server::StartOptions::new(&dir);
    let running = cutover_server::start_proxy(
        config,
        token,
        options,
        cutover_server::fleet::ProxyOptions { id, admin_listen },
    )
    .await
    .context("starting the proxy")?;
    out!(
        "{}",
        serde_json::json!({ "event": "ready", "bound": running.bound })
    );
    tracing::info!(admin = %running.bound.admin, "proxying");
    running.run_until(shutdown_signal(terminations)).await;
    Ok(ExitCode::SUCCESS)
}

/// On each SIGHUP, starts `cutover serve --upgrade` with the same configuration file; never
/// returns (the server ends on the successor's hand-over, see [`cutover_server::Running`]). A
/// successor that fails (a configuration that does not load, say) has said why on the shared
/// stderr; this server goes on as before.
async fn reload_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    exe: Option<PathBuf>,
    config: PathBuf,
    log_format: LogFormat,
) {
    let Some(mut hangups) = hangups else {
        return std::future::pending().await;
    };
    loop {
        if hangups.recv().await.is_none() {
            return std::future::pending().await;
        }
        let Some(exe) = &exe else {
            tracing::error!("SIGHUP: cannot reload: the path of this binary is unknown; run `cutover serve --upgrade` instead");
            continue;
        };
        // The value as clap spells it, so the successor parses what this one was given.
        let format = clap::ValueEnum::to_possible_value(&log_format)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--log-format", &format, "--upgrade"])
            .stdin(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                tracing::info!(pid, file = %config.display(), "SIGHUP: reloading: started the new server");
                tokio::spawn(async move {
                    // Reaped here; it outlives this process once it has taken over.
                    if let Ok(status) = child.wait().await {
                        if !status.success() {
                            tracing::error!(pid, %status,
                                "the reload failed (its error is above); still serving the previous configuration");
                        }
                    }
                });
            }
            Err(e) => tracing::error!(exe = %exe.display(), error = %e,
                "SIGHUP: cannot start the new server; still serving the previous configuration"),
        }
    }
}

/// Tells systemd about this process when it started it with `Type=notify` (`$NOTIFY_SOCKET`);
/// nothing otherwise. A failure to tell is logged, never fatal.
fn systemd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Records where the admin API listens, for a CLI whose configuration lets the port be chosen
/// (`listen = "127.0.0.1:0"`). Failing to is no reason not to serve: it is said and ignored.
fn record_admin_url(state_dir: &std::path::Path, admin: &impl std::fmt::Display) {
    let path = state_dir.join(connect::ADMIN_URL_FILE);
    if let Err(e) = std::fs::write(&path, format!("http://{admin}\n")) {
        tracing::warn!(file = %path.display(), error = %e, "cannot record the admin API's address for the CLI");
    }
}

async fn shutdown_signal(terminations: Option<tokio::signal::unix::Signal>) {
    match terminations {
        Some(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Every command says what it is for, and every flag and argument what it means: `--help` is
    /// the first documentation people read.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if command.is_hide_set() {
                return;
            }
            if command.get_about().is_none() && !path.is_empty() {
                missing.push(format!("command `{path}`"));
            }
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none()
                {
                    missing.push(format!("`{path}` argument {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                let name = if path.is_empty() {
                    sub.get_name().to_string()
                } else {
                    format!("{path} {}", sub.get_name())
                };
                if name.ends_with("help") {
                    continue;
                }
                walk(sub, &name, missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "", &mut missing);
        assert!(
            missing.is_empty(),
            "no help text for:\n  {}",
            missing.join("\n  ")
        );
    }

    /// `--admin` and friends are shown only where they mean something.
    #[test]
    fn server_flags_appear_only_on_commands_that_talk_to_a_server() {
        let mut command = Cli::command();
        command.build();
        for name in [
            "serve",
            "demo",
            "simulate",
            "example-app",
            "init",
            "completions",
            "man",
            "config",
        ] {
            let sub = command.find_subcommand(name).unwrap();
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                assert!(
                    arg.is_hide_set() || !matches!(id, "admin" | "token_file"),
                    "`{name}` shows --{id}"
                );
            }
        }
        for name in [
            "deploy", "status", "apps", "history", "logs", "promote", "rollback",
        ] {
            let sub = command.find_subcommand(name).unwrap();
            assert!(
                sub.get_arguments().any(|a| a.get_id() == "admin"),
                "`{name}` lacks --admin"
            );
        }
    }
}
