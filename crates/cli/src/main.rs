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
                std::process::exit(0);
            }
            eprintln!("cutover: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

mod client;
mod demo;
mod flag;
mod migrate;
mod ramp;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cutover_server::config::RouterConfig;
use cutover_server::{Config, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime releases: blue-green, sticky canaries, instant rollback",
    after_help = "Exit codes of deploy: 0 promoted, 10 rolled back, 11 aborted, 12 failed before any traffic, \
                  13 paused waiting for a person (without --wait), 14 --timeout passed (the rollout goes on), \
                  3 refused by the server (another rollout running, deploy freeze, invalid request), 1 other errors."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: client::Connection,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy and the admin API from a configuration file.
    Serve {
        #[arg(long, short, default_value = "cutover.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem in it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Deploy VERSION of APP and follow the rollout until it is promoted or ends.
    Deploy {
        app: String,
        version: String,
        /// Command line of the release (`{port}` is replaced); default: the app's configured one.
        #[arg(long = "cmd")]
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
        #[arg(long)]
        instances: Option<u32>,
        /// Deploy inside a freeze window (recorded in the event log).
        #[arg(long)]
        force: bool,
        /// Return once the rollout has started instead of following it.
        #[arg(long, conflicts_with_all = ["wait", "timeout"])]
        no_follow: bool,
        /// Keep following while the rollout waits for a person, instead of exiting with 13.
        #[arg(long)]
        wait: bool,
        /// Stop following after SECS seconds and exit with 14; the rollout goes on.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Phase, weights, per-slot metrics and the latest decisions of APP.
    Status {
        app: String,
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Skip the remaining analysis and move all traffic to the new version.
    Promote {
        app: String,
    },
    /// Hold the current step until resumed.
    Pause {
        app: String,
    },
    Resume {
        app: String,
    },
    /// Stop the rollout: traffic back to the old version, the new one torn down.
    Abort {
        app: String,
    },
    /// Move all traffic back to the old version now (instant while it is still warm).
    Rollback {
        app: String,
    },
    /// Past rollouts of APP, newest first.
    History {
        app: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Feature flags: create, apply a flags.toml, kill, ramp under the judge, audit, check for stale flags.
    Flag {
        #[command(subcommand)]
        command: flag::FlagCommand,
    },
    /// Expand/contract schema migrations: status, contract, repair, and the linter.
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// Show the proxy at work on this machine: two versions of the example app, a sticky ramp
    /// from 0 to 100 % and back, and the split observed at each step.
    Demo(demo::DemoOptions),
    /// Seeded simulations of rollouts judged by the real engine: detection rates, times to
    /// detect and false rollbacks per scenario and judge.
    Simulate(simulate::SimulateOptions),
    /// Run the bundled example app (used by the demo, the tests and the benchmarks).
    #[command(hide = true)]
    ExampleApp(cutover_example_app::Options),
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
    Check {
        file: PathBuf,
    },
    /// Print the configuration an app's external router (HAProxy, nginx) must load before
    /// cutover can drive it, e.g. `cutover config router cutover.toml web > /etc/haproxy/cutover-web.cfg`.
    Router {
        file: PathBuf,
        app: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Simulate(options) = cli.command {
        return match simulate::run(options) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::ExampleApp(options) = cli.command {
        return match cutover_example_app::run(options) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Only the server tells its story in logs; other commands print their own output.
    init_logging(if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.connection)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            client::exit_code_for(&e)
        }
    }
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command, connection: client::Connection) -> Result<ExitCode> {
    let api = || client::Client::new(&connection);
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
                    return Ok(ExitCode::from(2));
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
            let follow = (!no_follow).then_some(client::Follow {
                wait,
                timeout: timeout.map(std::time::Duration::from_secs),
            });
            client::deploy(&api()?, &app, body, follow).await
        }
        Command::Status { app, watch, output } => {
            client::status(&api()?, &app, output == Output::Json, watch).await
        }
        Command::Promote { app } => client::command(&api()?, &app, "promote").await,
        Command::Pause { app } => client::command(&api()?, &app, "pause").await,
        Command::Resume { app } => client::command(&api()?, &app, "resume").await,
        Command::Abort { app } => client::command(&api()?, &app, "abort").await,
        Command::Rollback { app } => client::command(&api()?, &app, "rollback").await,
        Command::History { app, output } => client::history(&api()?, &app, output == Output::Json).await,
        Command::Flag { command } => flag::run(&api()?, command).await,
        Command::Migrate { command } => migrate::run(api, command).await,
        Command::Serve { config } => serve(config).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(&file)?;
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(options) => demo::run(options).await,
        Command::ExampleApp(_) | Command::Simulate(_) => Ok(ExitCode::FAILURE),
    }
}

async fn serve(path: PathBuf) -> Result<ExitCode> {
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
    let running = cutover_server::start(config, token, cutover_server::StartOptions::new(&dir))
        .await
        .context("starting the server")?;
    // One machine-readable line on stdout: the addresses actually bound (ports may be 0 in the
    // config), for scripts and tests.
    out!(
        "{}",
        serde_json::json!({ "event": "ready", "bound": running.bound })
    );
    tracing::info!(admin = %running.bound.admin, "serving");
    running.run_until(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
