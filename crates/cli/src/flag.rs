//! `cutover flag ...`: the flag service's admin API from the command line.
//!
//! `cutover flag apply flags.toml` makes the server's flags what a declarative file says (see
//! [`cutover_flags::file`] for its format). It reads the server's flags, prints what would
//! change flag by flag (created; changed, with each field before → after; unchanged; archived
//! with `--prune` when the file no longer has the flag), and then writes each change with the
//! revision it read as the expected one (0 for a flag that does not exist yet). A flag someone
//! changed in between is refused by the server rather than overwritten: the apply stops there
//! with a conflict (exit 3), says which changes it made before, and the next run shows what is
//! left. `--dry-run` prints the difference and changes nothing; a file with any problem prints
//! every one of them, each at its line, changes nothing and exits with 3.
//!
//! **An `enabled` the file does not write keeps the state the server has.** `enabled` is the
//! kill switch, thrown by a person in an incident, usually from another terminal than the one a
//! release applies flags from. A declarative apply that put every unwritten `enabled` back to
//! `true` would silently turn a killed flag back on with the next routine apply; so only a file
//! that writes `enabled = true` unkills a flag, and one that writes `enabled = false` kills it.
//! A new flag without `enabled` is created enabled (its split and default variant say who gets
//! what). The diff says when a kept kill is why a flag differs from the file.
//!
//! Archiving has no revision to check in the admin API: a flag pruned while someone changes it
//! is archived with their change (the audit keeps both).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use cutover_flags::file::FileFlag;
use cutover_flags::hygiene::Staleness;
use cutover_flags::{Flag, FlagType, SplitEntry};
use serde_json::{json, Value};

use crate::client::{exit, ApiFailure, Client};

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Every flag: key, type, state, owner, expiry.
    List {
        /// Only the flags that should leave the code: past their `expires` date, or every user
        /// on one variant, unchanged for `[flags] stale_after_days` (default 30).
        #[arg(long)]
        stale: bool,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// For CI: exits 1 when any flag is past its `expires` date (and lists the flags that have
    /// settled on one variant, without failing). With `--file`, checks a flags.toml without
    /// asking the server.
    ///
    /// e.g. `cutover flag check --file flags.toml`
    Check {
        /// A flags file to check instead of the server's flags.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// One flag: type, state, owner, expiry, variants, rules, split and revision (`--output
    /// json`: the flag as the server holds it).
    Show {
        /// The flag's key.
        key: String,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// Create a flag that ships dark: no rule and no split, so every user gets the default
    /// variant until the flag is ramped. Refused if the flag exists.
    ///
    /// e.g. `cutover flag create new-checkout --type boolean --owner team-payments
    /// --description "The new checkout flow" --expires 2027-03-31 --reason "ship dark"`
    Create {
        /// The flag's key.
        key: String,
        /// The type of the variants' values. A boolean flag without `--variant` gets on=true and
        /// off=false, with off the default.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        kind: Kind,
        /// Who answers for the flag: a person or a team.
        #[arg(long)]
        owner: String,
        /// What the flag switches.
        #[arg(long)]
        description: String,
        /// The date by which the flag leaves the code (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD", required_unless_present = "permanent")]
        expires: Option<String>,
        /// Why the flag stays for good (an operational kill switch, say), instead of --expires.
        #[arg(long, value_name = "REASON", conflicts_with = "expires")]
        permanent: Option<String>,
        /// A variant and its value as JSON (`--variant big='{"max":100}'`); a string flag's
        /// value may be written without quotes (`--variant red=red`). Repeat for each variant.
        #[arg(long = "variant", value_name = "NAME=JSON")]
        variants: Vec<String>,
        /// The variant every user gets until the flag is ramped (and when it is killed).
        #[arg(long = "default", value_name = "NAME")]
        default_variant: Option<String>,
        /// Why: recorded in the audit log with who made the change.
        #[arg(long)]
        reason: String,
    },
    /// Create or replace a flag from a file holding one flag (TOML or JSON), e.g.
    /// `cutover flag set new-checkout --file flags/new-checkout.toml --reason "ship dark"`.
    Set {
        /// The flag's key.
        key: String,
        /// A TOML file with the flag's whole definition.
        #[arg(long)]
        file: PathBuf,
        /// Why: recorded in the audit log with who made the change.
        #[arg(long)]
        reason: String,
        /// Refuse the change if the flag is no longer at this revision (someone else changed it).
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Make the server's flags what a flags file (`[[flag]]` tables) says: prints the
    /// difference, then applies it. A flag whose `enabled` the file does not write keeps its
    /// state on the server, so an apply never undoes a kill; write `enabled = true` to unkill.
    Apply {
        /// The flags file: [[flag]] tables, as `cutover flag apply` reads them.
        file: PathBuf,
        /// Print the difference and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also archive the flags the file does not have.
        #[arg(long)]
        prune: bool,
        /// Why, for the audit of every flag changed (not needed with --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        reason: Option<String>,
    },
    /// The kill switch: every user gets the default variant at once.
    Kill {
        /// The flag's key.
        key: String,
        /// Why: recorded in the audit log with who made the change.
        #[arg(long)]
        reason: String,
    },
    /// Undo a kill: the flag's targeting and split apply again.
    Unkill {
        /// The flag's key.
        key: String,
        /// Why: recorded in the audit log with who made the change.
        #[arg(long)]
        reason: String,
    },
    /// Remove a flag (its history stays in the audit).
    Archive {
        /// The flag's key.
        key: String,
        /// Why: recorded in the audit log with who made the change.
        #[arg(long)]
        reason: String,
    },
    /// Every change of a flag: when, who, why, and the revision it made.
    Audit {
        /// The flag's key.
        key: String,
        /// text for people; json for scripts (one document, stable field names).
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// A guarded ramp: the flag's new variant to a growing share of users, each step judged
    /// like a canary (users in the variant against the others); a worse variant is killed.
    Ramp(crate::ramp::RampArgs),
}

/// `--type` of `cutover flag create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Boolean,
    String,
    Number,
    Object,
}

impl From<Kind> for FlagType {
    fn from(kind: Kind) -> FlagType {
        match kind {
            Kind::Boolean => FlagType::Boolean,
            Kind::String => FlagType::String,
            Kind::Number => FlagType::Number,
            Kind::Object => FlagType::Object,
        }
    }
}

pub(crate) fn encode(key: &str) -> String {
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
        Ok(toml_to_json(value))
    }
}

/// A TOML value as JSON; dates (`expires = 2027-03-31`, as flags.toml allows) become strings.
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// The server's answer as a flag.
fn flag_from(value: Value) -> Result<Flag> {
    serde_json::from_value(value).context(
        "the server answered with a flag this cutover cannot read; use a cutover CLI of the server's version",
    )
}

/// Every flag the server has.
async fn server_flags(client: &Client) -> Result<Vec<Flag>> {
    let mut all = client.get("/v1/flags").await?;
    let flags = all
        .get_mut("flags")
        .map(Value::take)
        .context("the server's answer to GET /v1/flags has no `flags`")?;
    serde_json::from_value(flags).context(
        "the server answered with flags this cutover cannot read; use a cutover CLI of the server's version",
    )
}

/// A flag that should leave the code, and why, as `GET /v1/flags` lists it under `stale` (the
/// server's type is its own).
#[derive(Debug, serde::Deserialize)]
struct StaleFlag {
    key: String,
    owner: String,
    #[serde(flatten)]
    staleness: Staleness,
    message: String,
}

/// The stale flags of the server's answer to `GET /v1/flags`.
fn stale_flags(client: &Client, all: &Value) -> Result<Vec<StaleFlag>> {
    let stale = all.get("stale").cloned().unwrap_or_else(|| json!([]));
    client.read(stale, "the stale flags", Value::is_array)
}

pub async fn run(client: &Client, command: FlagCommand) -> Result<ExitCode> {
    match command {
        FlagCommand::Ramp(args) => return crate::ramp::run(client, args).await,
        FlagCommand::Check { file } => return check(client, file.as_deref()).await,
        FlagCommand::List { output, stale } => {
            let all = client
                .get(if stale {
                    "/v1/flags?stale=true"
                } else {
                    "/v1/flags"
                })
                .await?;
            if stale && output != crate::Output::Json {
                let list = stale_flags(client, &all)?;
                if list.is_empty() {
                    out!("no stale flag");
                }
                for f in &list {
                    out!(
                        "{:<32} {:<8} {:<20} {}",
                        f.key,
                        f.staleness.kind(),
                        f.owner,
                        f.message
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
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
        FlagCommand::Show { key, output } => {
            let flag = client.get(&format!("/v1/flags/{}", encode(&key))).await?;
            if output == crate::Output::Json {
                out!("{}", serde_json::to_string_pretty(&flag)?);
            } else {
                for line in summary(&flag_from(flag)?) {
                    out!("{line}");
                }
            }
        }
        FlagCommand::Create {
            key,
            kind,
            owner,
            description,
            expires,
            permanent,
            variants,
            default_variant,
            reason,
        } => {
            let new = NewFlag {
                key,
                kind: kind.into(),
                owner,
                description,
                expires,
                permanent,
                variants,
                default_variant,
            };
            return create(client, new, &reason).await;
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
        FlagCommand::Apply {
            file,
            dry_run,
            prune,
            reason,
        } => {
            return apply(
                client,
                &ApplyOptions {
                    file,
                    dry_run,
                    prune,
                    reason: reason.unwrap_or_default(),
                },
            )
            .await;
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
        FlagCommand::Audit { key, output } => {
            let records = client.get(&format!("/v1/flags/{}/audit", encode(&key))).await?;
            if output == crate::Output::Json {
                out!("{}", serde_json::to_string_pretty(&records)?);
                return Ok(ExitCode::SUCCESS);
            }
            let records = records.as_array().cloned().unwrap_or_default();
            if records.is_empty() {
                out!("no change of flag {key} is recorded (`cutover flag list` shows the flags)");
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<6} {:<20} {:<10} {:<16} why",
                "seq",
                "when (UTC)",
                "revision",
                "who"
            );
            for r in &records {
                let revision = r["after"]["revision"]
                    .as_u64()
                    .map_or("archived".to_string(), |n| n.to_string());
                let when = r["at"]
                    .as_u64()
                    .and_then(|ms| jiff::Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok())
                    .map_or("?".to_string(), |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string());
                out!(
                    "#{:<5} {:<20} {:<10} {:<16} {}",
                    r["seq"].as_u64().unwrap_or(0),
                    when,
                    revision,
                    r["who"].as_str().unwrap_or("?"),
                    r["why"].as_str().unwrap_or("").replace('\n', " ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ===== show =====

/// `cutover flag show`: the flag in lines a person reads.
fn summary(flag: &Flag) -> Vec<String> {
    let mut lines = vec![format!("flag {} (revision {})", flag.key, flag.revision)];
    let mut field = |name: &str, value: String| lines.push(format!("  {name:<12} {value}"));
    field("type", type_name(flag.kind).to_string());
    field(
        "state",
        if flag.enabled {
            "on".to_string()
        } else {
            format!(
                "killed: every user gets {:?} (`cutover flag unkill {}` undoes it)",
                flag.default_variant, flag.key
            )
        },
    );
    field("owner", flag.owner.clone());
    field("description", flag.description.clone());
    match (&flag.expires, &flag.permanent) {
        (Some(date), _) => field("expires", date.clone()),
        (None, Some(why)) => field("expires", format!("never (permanent: {why})")),
        (None, None) => field("expires", "-".to_string()),
    }
    let variants: Vec<String> = flag
        .variants
        .iter()
        .map(|(name, value)| {
            let default = if *name == flag.default_variant {
                " (default)"
            } else {
                ""
            };
            format!("{name} = {value}{default}")
        })
        .collect();
    field("variants", variants.join(", "));
    if let Some(allow) = &flag.allow {
        let keys: Vec<&str> = allow.keys.iter().map(String::as_str).collect();
        field("allow", format!("{} for {}", allow.variant, keys.join(", ")));
    }
    if flag.rules.is_empty() {
        field("rules", "none".to_string());
    }
    for (i, rule) in flag.rules.iter().enumerate() {
        let name = if i == 0 { "rules" } else { "" };
        field(name, format!("{}. {}", i + 1, rule_text(rule)));
    }
    field(
        "split",
        if flag.split.is_empty() {
            format!("none: users no rule places get {:?}", flag.default_variant)
        } else {
            split_text(&flag.split)
        },
    );
    lines
}

fn type_name(kind: FlagType) -> &'static str {
    match kind {
        FlagType::Boolean => "boolean",
        FlagType::String => "string",
        FlagType::Number => "number",
        FlagType::Object => "object",
    }
}

fn with_article(kind: FlagType) -> &'static str {
    match kind {
        FlagType::Boolean => "a boolean",
        FlagType::String => "a string",
        FlagType::Number => "a number",
        FlagType::Object => "an object",
    }
}

/// `app_version semver_ge "2.3.0" and country in ["de","fr"] → on`.
fn rule_text(rule: &cutover_flags::Rule) -> String {
    let conditions: Vec<String> = rule
        .when
        .iter()
        .map(|c| {
            let op = serde_json::to_value(c.op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", c.op));
            format!("{} {op} {}", c.attribute, c.value)
        })
        .collect();
    format!("{} → {}", conditions.join(" and "), rule.variant)
}

/// `on 5.00 %, off 95.00 %`: each variant's share of the users the split places.
fn split_text(split: &[SplitEntry]) -> String {
    let total: u64 = split.iter().map(|e| u64::from(e.weight)).sum();
    split
        .iter()
        .map(|e| {
            let share = if total == 0 {
                0.0
            } else {
                f64::from(e.weight) * 100.0 / total as f64
            };
            format!("{} {share:.2} %", e.variant)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ===== create =====

/// What `cutover flag create` was told.
struct NewFlag {
    /// The flag's key.
    key: String,
    kind: FlagType,
    owner: String,
    description: String,
    expires: Option<String>,
    permanent: Option<String>,
    variants: Vec<String>,
    default_variant: Option<String>,
}

/// The flag `cutover flag create` asks for, or what is wrong with the arguments.
fn new_flag(new: NewFlag) -> std::result::Result<Flag, Vec<String>> {
    let mut problems = Vec::new();
    let mut variants = BTreeMap::new();
    for argument in &new.variants {
        let Some((name, text)) = argument.split_once('=') else {
            problems.push(format!(
                "--variant {argument}: write NAME=JSON, e.g. --variant on=true or --variant big='{{\"max\":100}}'"
            ));
            continue;
        };
        let value = match (serde_json::from_str::<Value>(text), new.kind) {
            (Ok(Value::String(s)), _) => Value::String(s),
            // A string flag's values need no quotes on the command line.
            (_, FlagType::String) => Value::String(text.to_string()),
            (Ok(value), _) => value,
            (Err(e), kind) => {
                problems.push(format!(
                    "--variant {name}: {text:?} is not a JSON value ({e}); {} flag's value is written as JSON, \
                     e.g. {}",
                    with_article(kind),
                    match kind {
                        FlagType::Number => "--variant many=100",
                        FlagType::Object => "--variant big='{\"max\":100}'",
                        _ => "--variant on=true",
                    }
                ));
                continue;
            }
        };
        if variants.insert(name.to_string(), value).is_some() {
            problems.push(format!("--variant {name}: given twice; give each variant once"));
        }
    }
    if variants.is_empty() && problems.is_empty() {
        if new.kind == FlagType::Boolean {
            variants.insert("on".to_string(), Value::Bool(true));
            variants.insert("off".to_string(), Value::Bool(false));
        } else {
            problems.push(format!(
                "--variant: {} flag needs its variants, e.g. {}",
                with_article(new.kind),
                match new.kind {
                    FlagType::String => "--variant red=red --variant blue=blue --default red",
                    FlagType::Number => "--variant few=25 --variant many=100 --default few",
                    _ => "--variant small='{\"max\":10}' --variant big='{\"max\":100}' --default small",
                }
            ));
        }
    }
    let default_variant = match new.default_variant {
        Some(name) => name,
        None if variants.contains_key("off") => "off".to_string(),
        None if variants.len() == 1 => variants.keys().next().cloned().unwrap_or_default(),
        None => {
            if !variants.is_empty() {
                let names: Vec<&str> = variants.keys().map(String::as_str).collect();
                problems.push(format!(
                    "--default: name the variant every user gets until the flag is ramped (one of {})",
                    names.join(", ")
                ));
            }
            String::new()
        }
    };
    let flag = Flag {
        key: new.key,
        kind: new.kind,
        variants,
        default_variant,
        enabled: true,
        allow: None,
        rules: Vec::new(),
        split: Vec::new(),
        owner: new.owner,
        description: new.description,
        expires: new.expires,
        permanent: new.permanent,
        revision: 0,
    };
    if problems.is_empty() {
        // Validation's findings, named by the arguments that set each field.
        for e in flag.problems("flag") {
            let field = e.field.strip_prefix("flag.").unwrap_or(&e.field);
            let (top, rest) = field.split_once('.').unwrap_or((field, ""));
            let argument = match top {
                "key" => "KEY".to_string(),
                "variants" if !rest.is_empty() => format!("--variant {rest}"),
                "variants" => "--variant".to_string(),
                "default_variant" => "--default".to_string(),
                other => format!("--{other}"),
            };
            problems.push(format!("{argument}: {}", e.message));
        }
    }
    if problems.is_empty() {
        Ok(flag)
    } else {
        Err(problems)
    }
}

async fn create(client: &Client, new: NewFlag, reason: &str) -> Result<ExitCode> {
    let flag = match new_flag(new) {
        Ok(flag) => flag,
        Err(problems) => {
            eprintln!("error: the flag cannot be created; nothing was changed:");
            for p in problems {
                eprintln!("  {p}");
            }
            return Ok(ExitCode::from(exit::REJECTED));
        }
    };
    let key = flag.key.clone();
    let default_variant = flag.default_variant.clone();
    let put = client
        .put(
            &format!("/v1/flags/{}", encode(&key)),
            json!({ "flag": flag, "reason": reason, "expected_revision": 0 }),
        )
        .await;
    let record = match put {
        Ok(record) => record,
        Err(e) => match e.downcast_ref::<ApiFailure>() {
            Some(f) if f.status == 409 => {
                return Err(ApiFailure {
                    status: 409,
                    message: format!(
                        "flag {key} exists already; nothing was changed. `cutover flag set {key} --file ...` \
                         replaces it, `cutover flag apply FILE` changes it from a flags file \
                         (`cutover flag show {key}` shows it)"
                    ),
                }
                .into())
            }
            _ => return Err(e),
        },
    };
    out!(
        "flag {key} created at revision {}: dark, every user gets {default_variant:?} until it is ramped",
        record["after"]["revision"]
    );
    Ok(ExitCode::SUCCESS)
}

// ===== apply =====

struct ApplyOptions {
    /// The flags file: [[flag]] tables, as `cutover flag apply` reads them.
    file: PathBuf,
    dry_run: bool,
    prune: bool,
    /// Why: recorded in the audit log with who made the change.
    reason: String,
}

/// What `apply` does to one flag.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Create(Flag),
    /// `after` holds `before`'s revision, the one expected.
    Change {
        before: Box<Flag>,
        after: Flag,
        kept_kill: bool,
    },
    Unchanged {
        flag: Flag,
        kept_kill: bool,
    },
    Archive(Flag),
}

/// The steps that make `stored` what `file` says, the file's flags first in its order, then the
/// flags archived (with `prune`) in key order.
fn plan(file: &[FileFlag], stored: &[Flag], prune: bool) -> Vec<Step> {
    let by_key: BTreeMap<&str, &Flag> = stored.iter().map(|f| (f.key.as_str(), f)).collect();
    let mut steps = Vec::new();
    for wanted in file {
        let mut after = wanted.flag.clone();
        let Some(before) = by_key.get(after.key.as_str()) else {
            after.revision = 0;
            steps.push(Step::Create(after));
            continue;
        };
        let kept_kill = !wanted.states_enabled && !before.enabled;
        if !wanted.states_enabled {
            after.enabled = before.enabled;
        }
        after.revision = before.revision;
        if after == **before {
            steps.push(Step::Unchanged {
                flag: after,
                kept_kill,
            });
        } else {
            steps.push(Step::Change {
                before: Box::new((*before).clone()),
                after,
                kept_kill,
            });
        }
    }
    if prune {
        let in_file: BTreeSet<&str> = file.iter().map(|f| f.flag.key.as_str()).collect();
        for (key, flag) in &by_key {
            if !in_file.contains(key) {
                steps.push(Step::Archive((*flag).clone()));
            }
        }
    }
    steps
}

/// The fields of a flag in the order a person reads them.
const FIELDS: &[&str] = &[
    "type",
    "enabled",
    "variants",
    "default_variant",
    "allow",
    "rules",
    "split",
    "owner",
    "description",
    "expires",
    "permanent",
];

/// `field: before → after` for each field that differs; each variant on its own line.
fn differences(before: &Flag, after: &Flag) -> Vec<String> {
    let as_map = |flag: &Flag| match serde_json::to_value(flag) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(before), as_map(after));
    let show = |v: Option<&Value>| v.map_or_else(|| "(none)".to_string(), Value::to_string);
    let mut lines = Vec::new();
    for field in FIELDS {
        let (a, b) = (old.get(*field), new.get(*field));
        if a == b {
            continue;
        }
        match *field {
            "variants" => {
                let empty = serde_json::Map::new();
                let a = a.and_then(Value::as_object).unwrap_or(&empty);
                let b = b.and_then(Value::as_object).unwrap_or(&empty);
                let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for name in names {
                    if a.get(name) != b.get(name) {
                        lines.push(format!(
                            "variants.{name}: {} → {}",
                            show(a.get(name)),
                            show(b.get(name))
                        ));
                    }
                }
            }
            "split" => {
                let text = |split: &[SplitEntry]| {
                    if split.is_empty() {
                        "(none)".to_string()
                    } else {
                        split_text(split)
                    }
                };
                lines.push(format!("split: {} → {}", text(&before.split), text(&after.split)));
            }
            _ => lines.push(format!("{field}: {} → {}", show(a), show(b))),
        }
    }
    lines
}

const KEPT_KILL: &str = "stays killed: the file does not write `enabled` (write enabled = true to unkill)";

/// The lines `apply` prints for a step.
fn describe(step: &Step) -> Vec<String> {
    match step {
        Step::Create(flag) => {
            let state = if flag.enabled { "" } else { ", killed" };
            let shares = if flag.split.is_empty() {
                format!("everyone no rule places gets {:?}", flag.default_variant)
            } else {
                format!("split {}", split_text(&flag.split))
            };
            vec![format!(
                "+ {}: create ({}, {shares}{state})",
                flag.key,
                type_name(flag.kind)
            )]
        }
        Step::Change {
            before,
            after,
            kept_kill,
        } => {
            let mut lines = vec![format!("~ {}: change (revision {})", after.key, before.revision)];
            lines.extend(differences(before, after).into_iter().map(|l| format!("    {l}")));
            if *kept_kill {
                lines.push(format!("    {KEPT_KILL}"));
            }
            lines
        }
        Step::Unchanged { flag, kept_kill } => {
            let mut lines = vec![format!("= {}: unchanged", flag.key)];
            if *kept_kill {
                lines.push(format!("    {KEPT_KILL}"));
            }
            lines
        }
        Step::Archive(flag) => vec![format!("- {}: archive (not in the file; --prune)", flag.key)],
    }
}

/// `cutover flag check`: 1 when a flag is past its expiry date, for CI.
async fn check(client: &Client, file: Option<&std::path::Path>) -> Result<ExitCode> {
    let stale: Vec<StaleFlag> = match file {
        Some(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the flags file {name}; check the path"))?;
            let flags = match cutover_flags::file::parse(&text, &name) {
                Ok(flags) => flags,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(exit::REJECTED));
                }
            };
            let now = cutover_core::Clock::now(&cutover_server::SystemClock);
            let today = cutover_flags::hygiene::date_of(now);
            // A file has no history: only dates can be checked, not how long a flag has settled.
            flags
                .iter()
                .filter_map(|f| {
                    let s = cutover_flags::hygiene::staleness(&f.flag, None, now, today, u32::MAX)?;
                    Some(StaleFlag {
                        key: f.flag.key.clone(),
                        owner: f.flag.owner.clone(),
                        message: format!("{name}:{}: {}", f.line, s.describe()),
                        staleness: s,
                    })
                })
                .collect()
        }
        None => stale_flags(client, &client.get("/v1/flags").await?)?,
    };
    let mut expired = 0;
    for f in &stale {
        let is_expired = matches!(f.staleness, Staleness::Expired { .. });
        if is_expired {
            expired += 1;
        }
        let level = if is_expired { "error" } else { "warning" };
        out!("{level}: flag {} (owner {}): {}", f.key, f.owner, f.message);
    }
    if expired > 0 {
        out!("{expired} flag(s) past their expiry date");
        return Ok(ExitCode::FAILURE);
    }
    out!("no flag is past its expiry date");
    Ok(ExitCode::SUCCESS)
}

async fn apply(client: &Client, options: &ApplyOptions) -> Result<ExitCode> {
    let name = options.file.display().to_string();
    let text = std::fs::read_to_string(&options.file)
        .with_context(|| format!("cannot read the flags file {name}; check the path"))?;
    let wanted = match cutover_flags::file::parse(&text, &name) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was changed");
            return Ok(ExitCode::from(exit::REJECTED));
        }
    };
    if !options.dry_run && options.reason.trim().is_empty() {
        bail!("every flag change needs a reason: pass --reason \"why\"; nothing was changed");
    }
    let stored = server_flags(client).await?;
    let steps = plan(&wanted, &stored, options.prune);
    for step in &steps {
        for line in describe(step) {
            out!("{line}");
        }
    }
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let summary = format!(
        "{} created, {} changed, {} unchanged, {} archived",
        count(|s| matches!(s, Step::Create(_))),
        count(|s| matches!(s, Step::Change { .. })),
        count(|s| matches!(s, Step::Unchanged { .. })),
        count(|s| matches!(s, Step::Archive(_))),
    );
    if options.dry_run {
        out!("{summary}");
        out!("dry run: nothing was changed; run without --dry-run to apply");
        return Ok(ExitCode::SUCCESS);
    }
    let total = steps
        .iter()
        .filter(|s| !matches!(s, Step::Unchanged { .. }))
        .count();
    let mut done: Vec<&str> = Vec::new();
    for step in &steps {
        let result = match step {
            Step::Unchanged { .. } => continue,
            Step::Create(flag) => put(client, flag, 0, &options.reason).await,
            Step::Change { before, after, .. } => put(client, after, before.revision, &options.reason).await,
            Step::Archive(flag) => client
                .delete(&format!(
                    "/v1/flags/{}?reason={}",
                    encode(&flag.key),
                    encode(&options.reason)
                ))
                .await
                .map(drop),
        };
        let key = match step {
            Step::Create(f) | Step::Archive(f) | Step::Unchanged { flag: f, .. } => &f.key,
            Step::Change { after, .. } => &after.key,
        };
        if let Err(e) = result {
            let made = if done.is_empty() {
                "none of the changes was made".to_string()
            } else {
                format!(
                    "{} of {total} changes were made before it ({}), the others were not",
                    done.len(),
                    done.join(", ")
                )
            };
            let failure = e.downcast_ref::<ApiFailure>();
            let conflict = failure.is_some_and(|f| f.status == 409 && !f.message.contains("being ramped"));
            let what = if conflict {
                format!("flag {key} changed on the server since apply read it, so apply did not overwrite it")
            } else {
                format!("flag {key} could not be applied")
            };
            return Err(e.context(format!(
                "{what}; {made}: run `cutover flag apply {name} --dry-run` to see what is left"
            )));
        }
        done.push(key);
    }
    out!("{summary}");
    Ok(ExitCode::SUCCESS)
}

async fn put(client: &Client, flag: &Flag, expected_revision: u64, reason: &str) -> Result<()> {
    let mut flag = flag.clone();
    flag.revision = 0;
    client
        .put(
            &format!("/v1/flags/{}", encode(&flag.key)),
            json!({ "flag": flag, "reason": reason, "expected_revision": expected_revision }),
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn stored(text: &str) -> Vec<Flag> {
        cutover_flags::file::parse(text, "stored")
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, f)| Flag {
                revision: i as u64 + 1,
                ..f.flag
            })
            .collect()
    }

    const FLAGS: &str = r#"
[[flag]]
key = "checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
split = [{ variant = "on", weight = 500 }, { variant = "off", weight = 9500 }]
owner = "team-payments"
description = "The new checkout"
expires = "2027-03-31"

[[flag]]
key = "banner"
type = "string"
variants = { red = "red", blue = "blue" }
default_variant = "red"
owner = "web"
description = "Banner colour"
permanent = "branding"
"#;

    #[test]
    fn a_kill_survives_a_file_that_does_not_write_enabled() {
        let mut server = stored(FLAGS);
        server[0].enabled = false;
        let file = cutover_flags::file::parse(FLAGS, "flags.toml").unwrap();
        let steps = plan(&file, &server, false);
        assert!(
            matches!(&steps[0], Step::Unchanged { kept_kill: true, flag } if !flag.enabled),
            "{steps:#?}"
        );
        assert_eq!(
            describe(&steps[0]),
            ["= checkout: unchanged", &format!("    {KEPT_KILL}")]
        );
        // Written down, `enabled = true` unkills.
        let unkill = FLAGS.replacen(
            "owner = \"team-payments\"",
            "owner = \"team-payments\"\nenabled = true",
            1,
        );
        let file = cutover_flags::file::parse(&unkill, "flags.toml").unwrap();
        let steps = plan(&file, &server, false);
        assert_eq!(
            describe(&steps[0]),
            ["~ checkout: change (revision 1)", "    enabled: false → true"]
        );
    }

    #[test]
    fn a_change_lists_each_field_before_and_after_and_prune_archives_the_rest() {
        let server = stored(FLAGS);
        let text = r#"
[[flag]]
key = "checkout"
type = "boolean"
variants = { on = true, off = false, maybe = false }
default_variant = "off"
split = [{ variant = "on", weight = 1 }, { variant = "off", weight = 1 }]
owner = "team-checkout"
description = "The new checkout"
expires = "2027-03-31"

[[flag]]
key = "dark-mode"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "web"
description = "Dark mode"
expires = "2027-01-31"
"#;
        let file = cutover_flags::file::parse(text, "flags.toml").unwrap();
        let lines: Vec<String> = plan(&file, &server, true).iter().flat_map(describe).collect();
        assert_eq!(
            lines,
            [
                "~ checkout: change (revision 1)",
                "    variants.maybe: (none) → false",
                "    split: on 5.00 %, off 95.00 % → on 50.00 %, off 50.00 %",
                "    owner: \"team-payments\" → \"team-checkout\"",
                "+ dark-mode: create (boolean, everyone no rule places gets \"off\")",
                "- banner: archive (not in the file; --prune)",
            ]
        );
        let lines: Vec<String> = plan(&file, &server, false).iter().flat_map(describe).collect();
        assert_eq!(lines.len(), 5, "{lines:#?}");
    }

    fn new(kind: FlagType, variants: &[&str], default_variant: Option<&str>) -> NewFlag {
        NewFlag {
            key: "k".into(),
            kind,
            owner: "web".into(),
            description: "d".into(),
            expires: Some("2027-01-01".into()),
            permanent: None,
            variants: variants.iter().map(|v| v.to_string()).collect(),
            default_variant: default_variant.map(str::to_string),
        }
    }

    #[test]
    fn a_created_boolean_flag_ships_dark_and_arguments_are_named_in_problems() {
        let flag = new_flag(new(FlagType::Boolean, &[], None)).unwrap();
        assert_eq!(flag.default_variant, "off");
        assert_eq!(flag.variants["on"], true);
        assert!(flag.split.is_empty() && flag.rules.is_empty() && flag.enabled);
        let flag = new_flag(new(FlagType::String, &["red=red", "blue=\"blue\""], Some("red"))).unwrap();
        assert_eq!(flag.variants["red"], "red");
        assert_eq!(flag.variants["blue"], "blue");
        let mut bad = new(FlagType::Number, &["few=25", "many=lots"], Some("none"));
        bad.expires = Some("soon".into());
        assert_eq!(
            new_flag(bad).unwrap_err(),
            [
                "--variant many: \"lots\" is not a JSON value (expected value at line 1 column 1); a number \
              flag's value is written as JSON, e.g. --variant many=100"
            ]
        );
        let mut bad = new(FlagType::Number, &["few=25"], Some("none"));
        bad.expires = Some("soon".into());
        assert_eq!(
            new_flag(bad).unwrap_err(),
            [
                "--default: \"none\" is not a variant of the flag; its variants: few",
                "--expires: \"soon\" is not a date; write YYYY-MM-DD"
            ]
        );
        assert!(
            new_flag(new(FlagType::Object, &[], None)).unwrap_err()[0].starts_with("--variant: an object"),
        );
    }
}
