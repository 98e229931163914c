//! The `cutover` command: a thin shell over the server crate and the admin API.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cutover_server::{Config, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime releases: blue-green, sticky canaries, instant rollback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    /// Show the proxy at work on this machine: two versions of the example app, a sticky ramp
    /// from 0 to 100 % and back, and the split observed at each step.
    Demo(demo::DemoOptions),
    /// Run the bundled example app (used by the demo, the tests and the benchmarks).
    #[command(hide = true)]
    ExampleApp(cutover_example_app::Options),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ExampleApp(options) = cli.command {
        return match cutover_example_app::run(options) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The demo prints its own story; only warnings and errors from the machinery belong beside it.
    init_logging(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(&file)?;
            println!(
                "{}: ok ({} app{})",
                file.display(),
                config.apps.len(),
                if config.apps.len() == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(options) => demo::run(options).await,
        Command::ExampleApp(_) => Ok(ExitCode::FAILURE),
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
    let running = cutover_server::start(config, token)
        .await
        .context("starting the server")?;
    // One machine-readable line on stdout: the addresses actually bound (ports may be 0 in the
    // config), for scripts and tests.
    println!(
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
