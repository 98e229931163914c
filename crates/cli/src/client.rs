//! The CLI's side of the admin API: deploy and follow, status, commands, history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Exit codes of `deploy` (and `status --watch` when the rollout ends).
pub mod exit {
    pub const PROMOTED: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const REJECTED: u8 = 3;
    pub const ROLLED_BACK: u8 = 10;
    pub const ABORTED: u8 = 11;
    pub const FAILED: u8 = 12;
    /// The rollout waits for a person (a pause step, inconclusive evidence, a step held too
    /// long, an unconfirmed promotion); it stays where it is in the server.
    pub const PAUSED: u8 = 13;
    /// `--timeout` passed before the rollout ended; it goes on in the server.
    pub const TIMED_OUT: u8 = 14;
}

/// How `deploy` follows a rollout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Follow {
    /// Keep following through pauses (until a person resumes, promotes or rolls back).
    pub wait: bool,
    /// Give up following after this long.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Admin API of the cutover server.
    #[arg(
        long,
        env = "CUTOVER_ADMIN",
        default_value = "http://127.0.0.1:9180",
        global = true
    )]
    pub admin: String,
    /// File with the admin token (used when CUTOVER_ADMIN_TOKEN is not set).
    #[arg(long, default_value = ".cutover/admin.token", global = true)]
    pub token_file: PathBuf,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token_file: PathBuf,
}

impl Client {
    pub fn new(connection: &Connection) -> Result<Client> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Client {
            http,
            base: connection.admin.trim_end_matches('/').to_string(),
            token_file: connection.token_file.clone(),
        })
    }

    fn token(&self) -> Result<String> {
        if let Ok(t) = std::env::var("CUTOVER_ADMIN_TOKEN") {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        let text = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!(
                "reading the admin token from {} (set CUTOVER_ADMIN_TOKEN or pass --token-file)",
                self.token_file.display()
            )
        })?;
        Ok(text.trim().to_string())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the cutover admin API at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let mut message = body["error"].as_str().unwrap_or("request failed").to_string();
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                message.push_str(&format!(
                    "\n  - {}: {}",
                    e["field"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                ));
            }
        }
        Err(ApiFailure {
            status: status.as_u16(),
            message,
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value> {
        let token = self.token()?;
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        let token = self.token()?;
        self.send(
            self.http
                .delete(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let token = self.token()?;
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }
}

/// The server said no: the status and its message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}

/// Exit code for an error: 3 when the server refused the request (409), 1 otherwise.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) if f.status == 409 || f.status == 400 => ExitCode::from(exit::REJECTED),
        _ => ExitCode::from(exit::ERROR),
    }
}

fn pct(bp: u64) -> String {
    format!("{:.2} %", bp as f64 / 100.0)
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

fn rate(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.2} %", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// One line describing where a rollout is.
pub fn progress_line(status: &Value) -> String {
    let r = &status["rollout"];
    if r.is_null() {
        return format!("app {}: no rollout yet", status["app"].as_str().unwrap_or("?"));
    }
    let phase = r["phase"]["phase"].as_str().unwrap_or("?");
    let target = r["target"].as_str().unwrap_or("?");
    let weights = &status["weights"];
    let weight = weights[target].as_u64().unwrap_or(0);
    let slot = |name: &str| {
        status["slots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["slot"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let canary = slot(target);
    let baseline = slot(if target == "blue" { "green" } else { "blue" });
    let step = match r["phase"]["step"].as_u64() {
        Some(s) => {
            let steps = r["policy"]["steps"].as_array().cloned().unwrap_or_default();
            let duration = steps
                .get(s as usize)
                .and_then(|st| st["duration_ms"].as_u64())
                .unwrap_or(0);
            let since_window = status["now"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(r["phase"]["window_started_at"].as_u64().unwrap_or(0));
            let observed = r["phase"]["observed_ms"].as_u64().map(|o| o + since_window);
            let progress = match observed {
                Some(o) if duration > 0 => format!(
                    " {:.0}/{:.0} s",
                    (o.min(duration)) as f64 / 1000.0,
                    duration as f64 / 1000.0
                ),
                _ => String::new(),
            };
            format!(" step {}/{}{progress}", s + 1, steps.len())
        }
        None => String::new(),
    };

    format!(
        "#{} {} → {} [{phase}{step}] {} on {target} | canary err {} p99 {} | baseline err {} p99 {}",
        r["id"],
        r["previous_version"].as_str().unwrap_or("nothing"),
        r["release"]["version"].as_str().unwrap_or("?"),
        pct(weight),
        rate(&canary["metrics"]["error_rate"]),
        ms(&canary["metrics"]["latency_p99_ms"]),
        rate(&baseline["metrics"]["error_rate"]),
        ms(&baseline["metrics"]["latency_p99_ms"]),
    )
}

pub fn exit_for_phase(phase: &str) -> Option<u8> {
    match phase {
        "promoted" | "succeeded" => Some(exit::PROMOTED),
        "rolled_back" => Some(exit::ROLLED_BACK),
        "aborted" => Some(exit::ABORTED),
        "failed" => Some(exit::FAILED),
        _ => None,
    }
}

/// Deploys and follows the rollout until it is promoted or ends (or pauses, unless
/// `follow.wait`); prints every event as it comes. `None`: return once it started.
pub async fn deploy(client: &Client, app: &str, body: Value, follow: Option<Follow>) -> Result<ExitCode> {
    let last_seq = last_event_seq(client, app).await?;
    let deployed = client.post(&format!("/v1/apps/{app}/deploy"), body).await?;
    let id = deployed["rollout_id"].as_u64().unwrap_or(0);
    out!("rollout #{id} of {app} started");
    let Some(follow) = follow else {
        return Ok(ExitCode::SUCCESS);
    };
    follow_rollout(client, app, id, last_seq, follow).await
}

async fn last_event_seq(client: &Client, app: &str) -> Result<u64> {
    let mut after = 0;
    loop {
        let batch = client
            .get(&format!("/v1/apps/{app}/events?after={after}&limit=10000"))
            .await?;
        let Some(items) = batch.as_array() else {
            return Ok(after);
        };
        match items.last() {
            Some(e) => after = e["seq"].as_u64().unwrap_or(after),
            None => return Ok(after),
        }
        if items.len() < 10_000 {
            return Ok(after);
        }
    }
}

pub async fn follow_rollout(
    client: &Client,
    app: &str,
    id: u64,
    mut after: u64,
    follow: Follow,
) -> Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let mut unconfirmed = false;
    loop {
        let status = client.get(&format!("/v1/apps/{app}/status")).await?;
        // Events after the status: a rollout that just ended has its last events in by now.
        unconfirmed |= print_events(client, app, id, &mut after, &bar).await?;
        bar.set_message(progress_line(&status));
        let phase = status["rollout"]["phase"]["phase"].as_str().unwrap_or("");
        if status["rollout"]["id"].as_u64() == Some(id) {
            if let Some(code) = exit_for_phase(phase) {
                bar.finish_and_clear();
                out!("{}", progress_line(&status));
                if let Some(exposure) = exposure_line(&status["rollout"]) {
                    out!("{exposure}");
                }
                out!("rollout #{id}: {phase}");
                return Ok(ExitCode::from(code));
            }
            let waiting = phase == "paused" || (phase == "awaiting_confirmation" && unconfirmed);
            if waiting && !follow.wait {
                bar.finish_and_clear();
                out!("{}", progress_line(&status));
                if let Some(reason) = status["rollout"]["phase"]["reason"].as_str() {
                    out!("reason: {reason}");
                }
                out!(
                    "rollout #{id} waits for a person: `cutover resume {app}`, `cutover promote {app}` or `cutover rollback {app}` (deploy --wait keeps following through pauses)"
                );
                return Ok(ExitCode::from(exit::PAUSED));
            }
        }
        if follow.timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.finish_and_clear();
            out!("{}", progress_line(&status));
            out!(
                "rollout #{id} still in phase {phase} after --timeout; it goes on in the server (cutover status {app})"
            );
            return Ok(ExitCode::from(exit::TIMED_OUT));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the canary did to users before the decision, in a line; `None` before any canary traffic.
pub fn exposure_line(rollout: &Value) -> Option<String> {
    let e = &rollout["exposure"];
    let requests = e["canary_requests"].as_u64().filter(|n| *n > 0)?;
    let failed =
        e["canary_server_errors"].as_u64().unwrap_or(0) + e["canary_client_errors"].as_u64().unwrap_or(0);
    let decided = match (e["decided_at"].as_u64(), e["first_canary_request_at"].as_u64()) {
        (Some(d), Some(f)) => format!(
            ", decided {:.1} s after its first request",
            d.saturating_sub(f) as f64 / 1000.0
        ),
        _ => String::new(),
    };
    let users = e["users_exposed"]
        .as_u64()
        .map(|u| format!(" from about {u} users"))
        .unwrap_or_default();
    Some(format!(
        "canary exposure: {requests} requests{users}, {failed} failed ({:.2} %){decided}",
        failed as f64 * 100.0 / requests as f64
    ))
}

/// Prints the rollout's new events; says whether one of them was an unconfirmed promotion.
async fn print_events(
    client: &Client,
    app: &str,
    id: u64,
    after: &mut u64,
    bar: &indicatif::ProgressBar,
) -> Result<bool> {
    let events = client
        .get(&format!("/v1/apps/{app}/events?after={after}&rollout={id}"))
        .await?;
    let mut unconfirmed = false;
    for e in events.as_array().into_iter().flatten() {
        unconfirmed |= e["kind"] == "confirmation_timed_out";
        *after = (*after).max(e["seq"].as_u64().unwrap_or(*after));
        let line = format!(
            "  {:<12} {}",
            e["kind"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
        // A hidden bar (output not a terminal) prints nothing, so print plainly then.
        if bar.is_hidden() {
            out!("{line}");
        } else {
            bar.println(line);
        }
    }
    Ok(unconfirmed)
}

/// The marker every output shows in place of an environment value.
const REDACTED: &str = cutover_core::REDACTED;

/// Replaces each value of a rollout's release `env` with [`REDACTED`]; changes nothing else.
/// The server never sends a value; this keeps an older server's answer from printing one.
fn redact_rollout(rollout: &mut Value) {
    let env = rollout
        .get_mut("release")
        .and_then(|r| r.get_mut("env"))
        .and_then(Value::as_object_mut);
    if let Some(env) = env {
        for value in env.values_mut() {
            *value = Value::String(REDACTED.to_string());
        }
    }
}

/// The release's variables by name, and its references, in a line; `None` when it has none.
pub fn env_line(release: &Value) -> Option<String> {
    let names: Vec<&str> = release["env"]
        .as_object()
        .map(|env| env.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let references: Vec<String> = release["secrets"]
        .as_object()
        .map(|s| {
            s.iter()
                .map(|(name, r)| format!("{name} from {}", r.as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    let mut parts = Vec::new();
    if !names.is_empty() {
        parts.push(format!("{} (values {REDACTED})", names.join(", ")));
    }
    if !references.is_empty() {
        parts.push(references.join(", "));
    }
    (!parts.is_empty()).then(|| format!("environment: {}", parts.join("; ")))
}

pub async fn status(client: &Client, app: &str, json: bool, watch: bool) -> Result<ExitCode> {
    loop {
        let mut status = client.get(&format!("/v1/apps/{app}/status")).await?;
        if let Some(rollout) = status.get_mut("rollout") {
            redact_rollout(rollout);
        }
        if json {
            out!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print_status(&status);
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !json {
            out!();
        }
    }
}

fn print_status(status: &Value) {
    out!("{}", progress_line(status));
    out!("live slot: {}", status["live"].as_str().unwrap_or("?"));
    if let Some(line) = env_line(&status["rollout"]["release"]) {
        out!("{line}");
    }
    out!(
        "{:<6} {:<10} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "slot",
        "version",
        "weight",
        "requests",
        "errors",
        "p50",
        "p99"
    );
    for s in status["slots"].as_array().into_iter().flatten() {
        let name = s["slot"].as_str().unwrap_or("?");
        out!(
            "{:<6} {:<10} {:>9} {:>9} {:>8} {:>10} {:>10}",
            name,
            s["version"].as_str().unwrap_or("-"),
            pct(status["weights"][name].as_u64().unwrap_or(0)),
            s["metrics"]["requests"],
            rate(&s["metrics"]["error_rate"]),
            ms(&s["metrics"]["latency_p50_ms"]),
            ms(&s["metrics"]["latency_p99_ms"]),
        );
    }
    if let Some(reason) = status["rollout"]["phase"]["reason"].as_str() {
        out!("reason: {reason}");
    }
    if let Some(exposure) = exposure_line(&status["rollout"]) {
        out!("{exposure}");
    }
    let decisions = status["recent_decisions"].as_array().cloned().unwrap_or_default();
    if !decisions.is_empty() {
        out!("latest decisions:");
        for d in decisions.iter().rev().take(5) {
            out!("  {}", d["message"].as_str().unwrap_or(""));
        }
    }
}

pub async fn command(client: &Client, app: &str, command: &str) -> Result<ExitCode> {
    let status = client
        .post(&format!("/v1/apps/{app}/{command}"), Value::Null)
        .await?;
    out!("{}", progress_line(&status));
    Ok(ExitCode::SUCCESS)
}

pub async fn history(client: &Client, app: &str, json: bool) -> Result<ExitCode> {
    let mut rollouts = client.get(&format!("/v1/apps/{app}/history")).await?;
    for r in rollouts.as_array_mut().into_iter().flatten() {
        redact_rollout(r);
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&rollouts)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(list) = rollouts.as_array() else {
        bail!("unexpected answer from the server: {rollouts}")
    };
    out!(
        "{:>4} {:<12} {:<12} {:<12} {:>10} {:>9} {:>7} reason",
        "id",
        "from",
        "to",
        "phase",
        "decided in",
        "canary rq",
        "failed"
    );
    for r in list {
        let e = &r["exposure"];
        let decided = match (e["decided_at"].as_u64(), e["first_canary_request_at"].as_u64()) {
            (Some(d), Some(f)) => format!("{:.1} s", d.saturating_sub(f) as f64 / 1000.0),
            _ => "-".into(),
        };
        let failed =
            e["canary_server_errors"].as_u64().unwrap_or(0) + e["canary_client_errors"].as_u64().unwrap_or(0);
        out!(
            "{:>4} {:<12} {:<12} {:<12} {:>10} {:>9} {:>7} {}",
            r["id"],
            r["previous_version"].as_str().unwrap_or("-"),
            r["release"]["version"].as_str().unwrap_or("?"),
            r["phase"]["phase"].as_str().unwrap_or("?"),
            decided,
            e["canary_requests"].as_u64().unwrap_or(0),
            failed,
            r["phase"]["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_release_shows_its_variable_names_and_references_but_never_a_value() {
        // As an older server would send it, with the value.
        let mut status = json!({
            "rollout": { "release": {
                "version": "v6",
                "env": { "DB_PASSWORD": "hunter2", "GREETING": "hello" },
                "secrets": { "API_KEY": "file:/run/secrets/api" }
            } }
        });
        redact_rollout(&mut status["rollout"]);
        let text = status.to_string();
        assert!(!text.contains("hunter2") && !text.contains("hello"), "{text}");
        assert_eq!(status["rollout"]["release"]["env"]["DB_PASSWORD"], REDACTED);
        assert_eq!(
            env_line(&status["rollout"]["release"]).unwrap(),
            "environment: DB_PASSWORD, GREETING (values <redacted>); API_KEY from file:/run/secrets/api"
        );
        assert_eq!(env_line(&json!({ "env": {} })), None);
        // Nothing to redact is nothing changed.
        for mut unchanged in [Value::Null, json!({ "release": null }), json!([1])] {
            let before = unchanged.clone();
            redact_rollout(&mut unchanged);
            assert_eq!(unchanged, before);
        }
    }
}
