//! `cutover flag ramp KEY ...`: guarded ramps from the command line. Starts a ramp, follows it
//! with `--wait`, shows it with `--status`, and resumes or aborts it.
//!
//! Exit codes with `--wait` (and of `--status`), as for deploys: 0 completed, 10 the judge killed
//! the flag, 11 aborted, 13 paused waiting for a person; 3 refused by the server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use cutover_flags::ramp::{Ramp, RampDecision, RampPhase};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{exit, Client};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cutover flag ramp new_session_validator --steps 1,5,25,50,100 --window 60s --reason \"ship the new validator\" --wait\n  \
    cutover flag ramp new_session_validator --status\n  \
    cutover flag ramp new_session_validator --wait          # follow the running ramp\n  \
    cutover flag ramp new_session_validator --resume\n  \
    cutover flag ramp new_session_validator --abort --reason \"holding at 5 % for the weekend\"\n\n\
    Exit codes with --wait and --status: 0 completed, 10 killed by the judge, 11 aborted, 13 paused, 3 refused.")]
pub struct RampArgs {
    /// The flag to ramp.
    pub key: String,
    /// Percentages of users in the new variant, step by step, e.g. 1,5,25,50,100.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["resume", "abort", "status", "wait"])]
    pub steps: Vec<f64>,
    /// How long each step is observed before the next, e.g. 60s, 5m.
    #[arg(long, value_parser = crate::units::parse_millis, required_unless_present_any = ["resume", "abort", "status", "wait"])]
    pub window: Option<u64>,
    /// Length of one analysis window (default: a sixth of --window, from 1s to 10s).
    #[arg(long, value_parser = crate::units::parse_millis)]
    pub interval: Option<u64>,
    /// How long a step may wait past --window for enough evidence before it pauses (default 5 windows).
    #[arg(long, value_parser = crate::units::parse_millis)]
    pub max_extension: Option<u64>,
    /// The variant to ramp up (default: the `true` variant of a boolean flag).
    #[arg(long)]
    pub variant: Option<String>,
    /// The variant everyone else gets (default: the flag's default variant).
    #[arg(long)]
    pub control: Option<String>,
    /// Fewest flagged requests a step must see before it may pass (default 50).
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// Why: recorded in the ramp and in every change of the flag it makes.
    #[arg(long)]
    pub reason: Option<String>,
    /// Follow the ramp, printing its decisions, until it completes, is killed, aborted or paused;
    /// without --steps, follows the flag's current ramp.
    #[arg(long)]
    pub wait: bool,
    /// Show the flag's latest ramp.
    #[arg(long, conflicts_with_all = ["resume", "abort", "steps"])]
    pub status: bool,
    /// Resume a paused ramp at its step.
    #[arg(long, conflicts_with_all = ["abort", "steps"])]
    pub resume: bool,
    /// Stop the ramp where it is (the split stays; `cutover flag kill` turns the flag off).
    #[arg(long, conflicts_with = "steps")]
    pub abort: bool,
    /// text for people; json for scripts (one document, stable field names).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::Output,
}

fn path(key: &str) -> String {
    format!("/v1/flags/{}/ramp", crate::flag::encode(key))
}

/// A ramp as the admin API shows it (`GET /v1/flags/{key}/ramp`; the server's type is its own):
/// the ramp, and the share of users in the new variant now.
struct RampView {
    ramp: Ramp,
    /// In percent; none once killed or aborted.
    percent: Option<f64>,
}

impl RampView {
    /// The answer as the server sent it: the ramp's fields and `percent`, side by side.
    fn json(&self) -> Result<Value> {
        let mut json = crate::client::json_value(&self.ramp)?;
        if let Some(fields) = json.as_object_mut() {
            fields.insert("percent".into(), json!(self.percent));
        }
        Ok(json)
    }
}

/// The exit code for a ramp in `phase`, once it needs nothing more from the caller.
fn exit_for(phase: &RampPhase) -> Option<u8> {
    match phase {
        RampPhase::Completed { .. } => Some(exit::PROMOTED),
        RampPhase::Killed { .. } => Some(exit::ROLLED_BACK),
        RampPhase::Aborted { .. } => Some(exit::ABORTED),
        RampPhase::Paused { .. } => Some(exit::PAUSED),
        RampPhase::Running { .. } => None,
    }
}

/// Why a ramp paused or ended other than by completing.
pub(crate) fn reason_of(phase: &RampPhase) -> Option<&str> {
    match phase {
        RampPhase::Paused { reason, .. }
        | RampPhase::Killed { reason, .. }
        | RampPhase::Aborted { reason, .. } => Some(reason),
        RampPhase::Running { .. } | RampPhase::Completed { .. } => None,
    }
}

fn percent(view: &RampView) -> String {
    match view.percent {
        Some(p) => format!("{p} %"),
        None if matches!(view.ramp.phase, RampPhase::Killed { .. }) => {
            "0 % (killed: every user gets the default)".into()
        }
        None => "the split it was left at".into(),
    }
}

fn summary(view: &RampView) -> String {
    let ramp = &view.ramp;
    let steps: Vec<String> = ramp
        .plan
        .steps_bp
        .iter()
        .map(|bp| format!("{}", f64::from(*bp) / 100.0))
        .collect();
    // An ended ramp has no step of its own: the one its last decision was made in.
    let step = match ramp.phase {
        RampPhase::Running { step, .. } | RampPhase::Paused { step, .. } => Some(step),
        _ => ramp.decisions.last().map(|d| d.step),
    }
    .map_or("-".to_string(), |s| (s + 1).to_string());
    let mut out = format!(
        "ramp #{} of flag {}: {}, step {step} of {} ({}), {:?} at {}\n  flagged requests judged: {} ({} failed)",
        ramp.id,
        ramp.flag,
        ramp.phase.name(),
        steps.len(),
        steps.join(", "),
        ramp.plan.variant,
        percent(view),
        ramp.flagged_requests,
        ramp.flagged_failures,
    );
    if let Some(reason) = reason_of(&ramp.phase) {
        out.push_str(&format!("\n  why: {reason}"));
    }
    out
}

fn decision_line(d: &RampDecision) -> String {
    format!("  [{}] {}", d.kind, d.message.replace('\n', " "))
}

pub async fn run(client: &Client, args: RampArgs) -> Result<ExitCode> {
    let json_out = args.output == crate::Output::Json;
    let ramp = if args.status || (args.wait && args.steps.is_empty() && !args.resume && !args.abort) {
        client.get(&path(&args.key)).await?
    } else if args.resume {
        client
            .post(&format!("{}/resume", path(&args.key)), json!({}))
            .await?
    } else if args.abort {
        let Some(reason) = &args.reason else {
            bail!("--abort needs --reason: say why the ramp stops");
        };
        client
            .post(&format!("{}/abort", path(&args.key)), json!({ "reason": reason }))
            .await?
    } else {
        let Some(reason) = &args.reason else {
            bail!("a ramp needs --reason: say why, e.g. --reason \"ship the new checkout\"");
        };
        let body = json!({
            "steps": args.steps,
            "window_ms": args.window,
            "interval_ms": args.interval,
            "max_extension_ms": args.max_extension,
            "variant": args.variant,
            "control": args.control,
            "min_requests": args.min_requests,
            "reason": reason,
        });
        client.post(&path(&args.key), body).await?
    };
    let ramp = read(client, ramp)?;
    if !args.wait {
        if json_out {
            out!("{}", serde_json::to_string_pretty(&ramp.json()?)?);
        } else {
            out!("{}", summary(&ramp));
        }
        let code = if args.status {
            exit_for(&ramp.ramp.phase).unwrap_or(0)
        } else {
            0
        };
        return Ok(ExitCode::from(code));
    }
    follow(client, &args.key, ramp, json_out).await
}

/// The server's answer as a ramp. (Read in two parts: a flattened `Ramp` would not read back the
/// numeric keys of its verdicts' maps.)
fn read(client: &Client, value: Value) -> Result<RampView> {
    /// The one field the view adds to the ramp's.
    #[derive(Deserialize)]
    struct Percent {
        percent: Option<f64>,
    }
    let Percent { percent } = client.read(value.clone(), "the ramp", Value::is_object)?;
    let ramp = client.read(value, "the ramp", Value::is_object)?;
    Ok(RampView { ramp, percent })
}

/// Prints the ramp's decisions as they come until it needs nothing more from the caller.
async fn follow(client: &Client, key: &str, mut view: RampView, json_out: bool) -> Result<ExitCode> {
    let id = view.ramp.id;
    let mut shown = 0usize;
    loop {
        let decisions = &view.ramp.decisions;
        // The store keeps the latest decisions only: never index past what is there.
        shown = shown.min(decisions.len());
        for d in &decisions[shown..] {
            if json_out {
                out!("{}", crate::client::json_value(d)?);
            } else {
                out!("{}", decision_line(d));
            }
        }
        shown = decisions.len();
        if let Some(code) = exit_for(&view.ramp.phase) {
            if !json_out {
                out!("{}", summary(&view));
            }
            return Ok(ExitCode::from(code));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A ramp survives a restart of the server: so does following it, for a minute.
        let mut unreachable = 0u32;
        let ramp = loop {
            match client.get(&path(key)).await {
                Ok(ramp) => break ramp,
                Err(e) if e.downcast_ref::<crate::client::ApiFailure>().is_none() && unreachable < 120 => {
                    if unreachable == 0 {
                        eprintln!(
                            "cannot reach the server ({e:#}); the ramp goes on there; retrying for a minute"
                        );
                    }
                    unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        view = read(client, ramp)?;
        if view.ramp.id != id {
            bail!(
                "another ramp of flag {key} started meanwhile (#{}); follow it with --status",
                view.ramp.id
            );
        }
    }
}
