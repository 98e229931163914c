//! `cutover flag ...`: the flag service's admin API from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Every flag: key, type, state, owner, expiry.
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// One flag, whole, as JSON.
    Show { key: String },
    /// Create or replace a flag from a file holding one flag (TOML or JSON), e.g.
    /// `cutover flag set new-checkout --file flags/new-checkout.toml --reason "ship dark"`.
    Set {
        key: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        reason: String,
        /// Refuse the change if the flag is no longer at this revision (someone else changed it).
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// The kill switch: every user gets the default variant at once.
    Kill {
        key: String,
        #[arg(long)]
        reason: String,
    },
    /// Undo a kill: the flag's targeting and split apply again.
    Unkill {
        key: String,
        #[arg(long)]
        reason: String,
    },
    /// Remove a flag (its history stays in the audit).
    Archive {
        key: String,
        #[arg(long)]
        reason: String,
    },
    /// Every change of a flag: when, who, why, and the revision it made.
    Audit { key: String },
}

fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_flag(file: &PathBuf) -> Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(&text).with_context(|| format!("{}: not a JSON flag", file.display()))
    } else {
        let value: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: not a TOML flag", file.display()))?;
        serde_json::to_value(value).with_context(|| format!("{}: not a flag", file.display()))
    }
}

pub async fn run(client: &Client, command: FlagCommand) -> Result<ExitCode> {
    match command {
        FlagCommand::List { output } => {
            let all = client.get("/v1/flags").await?;
            if output == crate::Output::Json {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<32} {:<8} {:<8} {:<20} {:<12} {:>8}",
                "key",
                "type",
                "state",
                "owner",
                "expires",
                "revision"
            );
            for f in all["flags"].as_array().into_iter().flatten() {
                let state = if f["enabled"].as_bool().unwrap_or(true) {
                    "on"
                } else {
                    "killed"
                };
                let expires = f["expires"].as_str().unwrap_or(if f["permanent"].is_string() {
                    "permanent"
                } else {
                    "-"
                });
                out!(
                    "{:<32} {:<8} {:<8} {:<20} {:<12} {:>8}",
                    f["key"].as_str().unwrap_or("?"),
                    f["type"].as_str().unwrap_or("?"),
                    state,
                    f["owner"].as_str().unwrap_or("?"),
                    expires,
                    f["revision"]
                );
            }
        }
        FlagCommand::Show { key } => {
            let flag = client.get(&format!("/v1/flags/{}", encode(&key))).await?;
            out!("{}", serde_json::to_string_pretty(&flag)?);
        }
        FlagCommand::Set {
            key,
            file,
            reason,
            expected_revision,
        } => {
            let flag = read_flag(&file)?;
            let record = client
                .put(
                    &format!("/v1/flags/{}", encode(&key)),
                    json!({ "flag": flag, "reason": reason, "expected_revision": expected_revision }),
                )
                .await?;
            out!("flag {key} is at revision {}", record["after"]["revision"]);
        }
        FlagCommand::Kill { key, reason } => {
            client
                .post(
                    &format!("/v1/flags/{}/kill", encode(&key)),
                    json!({ "reason": reason }),
                )
                .await?;
            out!("flag {key} killed: every user gets its default variant");
        }
        FlagCommand::Unkill { key, reason } => {
            client
                .post(
                    &format!("/v1/flags/{}/unkill", encode(&key)),
                    json!({ "reason": reason }),
                )
                .await?;
            out!("flag {key} is on again");
        }
        FlagCommand::Archive { key, reason } => {
            let path = format!("/v1/flags/{}?reason={}", encode(&key), encode(&reason));
            client.delete(&path).await?;
            out!("flag {key} archived");
        }
        FlagCommand::Audit { key } => {
            let records = client.get(&format!("/v1/flags/{}/audit", encode(&key))).await?;
            for r in records.as_array().into_iter().flatten() {
                let revision = r["after"]["revision"]
                    .as_u64()
                    .map_or("archived".to_string(), |n| n.to_string());
                out!(
                    "#{:<5} {:<10} {:<10} {}",
                    r["seq"],
                    revision,
                    r["who"].as_str().unwrap_or("?"),
                    r["why"].as_str().unwrap_or("").replace('\n', " ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
