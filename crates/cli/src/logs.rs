//! `cutover logs APP`: what the app's instances printed, read through the admin API
//! (`GET /v1/apps/{app}/logs`, which needs the admin token: logs may show secrets a program
//! printed). `--follow` polls with the answer's cursor, so every line shows once, in order.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::client::Client;

/// How often `--follow` asks for new lines. An answer cut by the server's per-answer cap is
/// followed at once.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    cutover logs web                      # the last 100 lines of each instance, live slot first\n  \
    cutover logs web -n 20 --follow       # then new lines as they come, until Ctrl-C\n  \
    cutover logs web --slot green         # the canary's, or what a rolled-back slot printed last\n  \
    cutover logs web -f --output json | jq -r .text\n\n\
    Needs the admin token (logs may show secrets a program printed). Lines come instance by \
    instance; lines over 16 KiB are cut.")]
pub struct LogsOptions {
    /// The app whose instances' logs to show.
    pub app: String,
    /// Only this slot's instances (of the version it ran last when none runs) [default: the
    /// slots that run, the live one first].
    #[arg(long, value_enum)]
    pub slot: Option<SlotChoice>,
    /// Keep printing new lines as they are written (checked every 500 ms) until Ctrl-C, which
    /// exits with 0.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How many of the last lines of each instance to show first, 0 to 10000.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub lines: u32,
    /// text: each line as `slot/version#instance | line` (the bare line when only one instance
    /// runs); json: one object per line, {"slot", "version", "instance", "text"}.
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::Output,
}

/// A slot, as `--slot` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotChoice {
    Blue,
    Green,
}

impl SlotChoice {
    fn as_str(self) -> &'static str {
        match self {
            SlotChoice::Blue => "blue",
            SlotChoice::Green => "green",
        }
    }
}

pub async fn run(client: &Client, options: LogsOptions) -> Result<ExitCode> {
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut printer = Printer {
        json: options.output == crate::Output::Json,
        prefixed: false,
        notes: Vec::new(),
    };
    let mut cursor: Option<String> = None;
    loop {
        let path = logs_path(&options, cursor.as_deref());
        let answer = if options.follow {
            tokio::select! {
                answer = client.get_authenticated(&path) => answer?,
                _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            }
        } else {
            client.get_authenticated(&path).await?
        };
        let first = cursor.is_none();
        let truncated = printer.print(&answer, first)?;
        if !options.follow {
            return Ok(ExitCode::SUCCESS);
        }
        cursor = Some(
            answer["cursor"]
                .as_str()
                .context("the server's answer has no `cursor` to follow the logs with; is it an older cutover? Upgrade it, or leave out --follow")?
                .to_string(),
        );
        // A cut answer means more lines wait: ask again at once.
        if !truncated || first {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// The request for the first answer (a tail) or the next (after `cursor`).
fn logs_path(options: &LogsOptions, cursor: Option<&str>) -> String {
    let mut path = format!("/v1/apps/{}/logs?lines={}", encode(&options.app), options.lines);
    if let Some(slot) = options.slot {
        path.push_str(&format!("&slot={}", slot.as_str()));
    }
    if let Some(cursor) = cursor {
        path.push_str(&format!("&after={}", encode(cursor)));
    }
    path
}

/// Percent-encodes everything but URL-unreserved characters (the server's cursors are made of
/// those already; this keeps an app name or a future cursor from breaking the URL).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Printer {
    json: bool,
    /// Lines carry `slot/version#instance | `. Set once more than one instance shows, and kept
    /// while following: lines that change shape halfway are harder to read and to parse.
    prefixed: bool,
    /// The notes of the previous answer, as (slot, note): a note that every poll repeats (a
    /// slot with no logs, a log that cannot be read) is printed once, not every 500 ms.
    notes: Vec<(String, String)>,
}

impl Printer {
    /// Prints an answer's lines on stdout and its notes on stderr; whether the server's cap cut
    /// it.
    fn print(&mut self, answer: &Value, first: bool) -> Result<bool> {
        let slots = answer["slots"]
            .as_array()
            .context("the server's answer has no `slots`; is it an older cutover? Upgrade it")?;
        let instances: u64 = slots.iter().filter_map(|s| s["instances"].as_u64()).sum();
        self.prefixed |= instances > 1;
        let mut truncated = false;
        let mut notes = Vec::new();
        for slot in slots {
            let name = slot["slot"].as_str().unwrap_or("?");
            let version = slot["version"].as_str().unwrap_or("-");
            for note in slot["notes"].as_array().into_iter().flatten() {
                let note = (name.to_string(), note.as_str().unwrap_or_default().to_string());
                if !self.notes.contains(&note) {
                    eprintln!("cutover logs: {name}: {}", note.1);
                }
                notes.push(note);
            }
            for line in slot["lines"].as_array().into_iter().flatten() {
                let text = line["text"].as_str().unwrap_or_default();
                let instance = line["instance"].as_u64().unwrap_or_default();
                if self.json {
                    let object = json!({
                        "slot": name,
                        "version": slot["version"],
                        "instance": instance,
                        "text": text,
                    });
                    out!("{object}");
                } else if self.prefixed {
                    out!("{name}/{version}#{instance} | {text}");
                } else {
                    out!("{text}");
                }
            }
            let cut = slot["truncated"].as_bool().unwrap_or(false);
            if cut && first {
                eprintln!(
                    "cutover logs: {name}: earlier lines left out: one answer holds at most 10000 lines and \
                     about 1 MiB; ask for fewer with -n"
                );
            }
            truncated |= cut;
        }
        self.notes = notes;
        Ok(truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        options: LogsOptions,
    }

    #[test]
    fn options_parse_with_their_defaults_and_limits() {
        let cli = Cli::try_parse_from(["logs", "web"]).unwrap();
        assert_eq!(cli.options.lines, 100);
        assert!(!cli.options.follow);
        assert_eq!(logs_path(&cli.options, None), "/v1/apps/web/logs?lines=100");

        let cli = Cli::try_parse_from(["logs", "web", "-f", "-n", "5", "--slot", "green"]).unwrap();
        assert!(cli.options.follow);
        assert_eq!(
            logs_path(&cli.options, Some("blue~1.0-1-2-3-4-0")),
            "/v1/apps/web/logs?lines=5&slot=green&after=blue~1.0-1-2-3-4-0"
        );
        assert!(Cli::try_parse_from(["logs", "web", "-n", "10001"]).is_err());
        assert!(Cli::try_parse_from(["logs", "web", "--slot", "red"]).is_err());
    }

    #[test]
    fn odd_characters_are_percent_encoded() {
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode("blue~1.0-ff_green~1"), "blue~1.0-ff_green~1");
    }
}
