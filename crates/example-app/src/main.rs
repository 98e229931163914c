//! The example app as its own binary; `cutover example-app` runs the same code.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cutover-example-app", version, about = "Example backend for cutover")]
struct Cli {
    #[command(flatten)]
    options: cutover_example_app::Options,
}

fn main() -> ExitCode {
    match cutover_example_app::run(Cli::parse().options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
