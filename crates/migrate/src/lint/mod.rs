#![doc = include_str!("README.md")]

mod ast;
mod check;
mod report;
pub mod rules;
mod silence;
mod source;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::set::{MigrationSet, Phase, NO_TRANSACTION};
use check::{FileContext, FileLinter, Hit, Knowledge};
pub use report::{Finding, LintReport, Silenced};
pub use rules::{Rule, RULES};
use source::Lines;

/// Which database the migrations are for. Both are parsed with PostgreSQL's grammar; for
/// SQLite only the rules with [`Rule::applies_to_sqlite`] are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// How to lint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintOptions {
    pub dialect: Dialect,
    /// The lock_timeout cutover's runner sets before each migration; `None` (or zero) when the
    /// configuration disables it, so that only a `SET lock_timeout` in the file protects the
    /// live app from a statement queued behind a long transaction.
    pub lock_timeout: Option<Duration>,
}

/// Lints one file on its own: nothing is known of the migrations before it (a `SET NOT NULL`
/// is accepted only after a CHECK validated in this same file). Whether the file runs outside
/// a transaction is read from its [`NO_TRANSACTION`] marker, as the loader reads it.
pub fn lint_file(path: &Path, sql: &str, phase: Phase, options: &LintOptions) -> LintReport {
    let no_transaction = sql.lines().any(|l| l.trim() == NO_TRANSACTION);
    lint_source(
        path,
        sql,
        phase,
        options,
        no_transaction,
        &mut Knowledge::default(),
    )
}

/// Lints every file of every migration, in the order they run: each expand file, then its
/// contract. A `SET NOT NULL` may rely on a CHECK that an earlier file validated: an expand file
/// on those of earlier expand files only (every pending expand runs before any contract), a
/// contract file on those of every file before it.
pub fn lint_set(set: &MigrationSet, options: &LintOptions) -> LintReport {
    let mut knowledge = Knowledge::default();
    let mut report = LintReport::default();
    for migration in &set.migrations {
        let halves = [
            (Phase::Expand, Some(&migration.expand)),
            (Phase::Contract, migration.contract.as_ref()),
        ];
        for (phase, file) in halves {
            if let Some(file) = file {
                report.extend(lint_source(
                    &file.path,
                    &file.sql,
                    phase,
                    options,
                    file.no_transaction,
                    &mut knowledge,
                ));
            }
        }
    }
    report
}

/// A silence comment that applies: rule `rule` is accepted on statement `statement`.
struct Allowed {
    statement: usize,
    rule: &'static str,
    reason: String,
}

fn lint_source(
    path: &Path,
    sql: &str,
    phase: Phase,
    options: &LintOptions,
    no_transaction: bool,
    knowledge: &mut Knowledge,
) -> LintReport {
    let lines = Lines::new(sql);
    let split = source::split(sql);
    let mut report = LintReport::default();
    let finding = |rule: &'static Rule, line: usize, statement: &str, message: String, fix: String| Finding {
        rule: rule.id,
        file: path.to_path_buf(),
        line,
        statement: statement.to_string(),
        message,
        fix,
    };

    if let Some(error) = &split.unscannable {
        let (message, fix) = parse_error(error, options.dialect);
        let first = sql.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        report
            .findings
            .push(finding(&rules::PARSE_ERROR, 1, first, message, fix));
        return report;
    }

    let mut allowed: Vec<Allowed> = Vec::new();
    for comment in &split.comments {
        let text = &sql[comment.start..comment.end];
        let Some(allow) = silence::parse(text) else {
            continue;
        };
        let line = lines.line(comment.start);
        let shown = text.trim();
        report.findings.extend(
            silence_problems(&allow, shown)
                .into_iter()
                .map(|(rule, message, fix)| finding(rule, line, shown, message, fix)),
        );
        if allow.reason.is_empty() {
            continue;
        }
        // The statement the comment is in, or that ends on its line before it (a trailing
        // comment), or else the next one.
        let before = split.statements.iter().rposition(|s| s.end <= comment.start);
        let target = match before {
            Some(i) if lines.line(split.statements[i].end) == line => Some(i),
            _ => split.statements.iter().position(|s| s.end > comment.start),
        };
        let Some(statement) = target else {
            continue;
        };
        // The ids that are rules count even when another id of the same comment is not one.
        allowed.extend(
            allow
                .ids
                .iter()
                .filter_map(|id| rules::rule(id))
                .filter(|rule| rule.silenceable)
                .map(|rule| Allowed {
                    statement,
                    rule: rule.id,
                    reason: allow.reason.to_string(),
                }),
        );
    }

    let cx = FileContext {
        phase,
        dialect: options.dialect,
        no_transaction,
        lock_timeout: options.lock_timeout,
        contract_file: contract_file(path),
    };
    let mut linter = FileLinter::new(cx, knowledge);
    for (index, statement) in split.statements.iter().enumerate() {
        let line = lines.line(statement.start);
        let hits = match &statement.parsed {
            Ok(node) => linter.statement(node, line),
            Err(error) => {
                let (message, fix) = parse_error(error, options.dialect);
                vec![Hit {
                    rule: &rules::PARSE_ERROR,
                    message,
                    fix,
                }]
            }
        };
        for hit in hits {
            let found = finding(hit.rule, line, &statement.shown, hit.message, hit.fix);
            match allowed
                .iter()
                .find(|a| a.statement == index && a.rule == hit.rule.id)
            {
                Some(a) => report.silenced.push(Silenced {
                    finding: found,
                    reason: a.reason.clone(),
                }),
                None => report.findings.push(found),
            }
        }
    }
    report.findings.sort_by_key(|f| f.line);
    report
}

/// What is wrong with a silence comment (shown as `shown`): each as a rule, a message, a fix.
fn silence_problems(allow: &silence::Allow<'_>, shown: &str) -> Vec<(&'static Rule, String, String)> {
    let mut problems = Vec::new();
    if allow.ids.is_empty() {
        problems.push((
            &rules::UNKNOWN_RULE,
            format!("`{shown}` names no rule"),
            format!(
                "name the rule it accepts: -- {} <rule-id>: <reason>",
                silence::ALLOW
            ),
        ));
    }
    let silenceable = || RULES.iter().filter(|r| r.silenceable).map(|r| r.id);
    for id in &allow.ids {
        match rules::rule(id) {
            Some(rule) if rule.silenceable => {}
            Some(rule) => problems.push((
                &rules::UNKNOWN_RULE,
                format!("`{shown}` names {}, which cannot be silenced", rule.id),
                format!(
                    "{} is about a silence comment itself: correct that comment instead",
                    rule.id
                ),
            )),
            None => {
                let near = cutover_core::validate::typos(id, silenceable());
                let fix = if near.is_empty() {
                    format!("use one of: {}", silenceable().collect::<Vec<_>>().join(", "))
                } else {
                    format!("did you mean {}?", near.join(" or "))
                };
                problems.push((
                    &rules::UNKNOWN_RULE,
                    format!("`{shown}` names `{id}`, which is not a rule"),
                    fix,
                ));
            }
        }
    }
    if allow.reason.is_empty() {
        problems.push((
            &rules::SILENCE_WITHOUT_REASON,
            format!("`{shown}` gives no reason, so it silences nothing"),
            format!(
                "say why the statement is safe after a colon: -- {} {}: <reason>",
                silence::ALLOW,
                allow.ids.join(", ")
            ),
        ));
    }
    problems
}

fn parse_error(error: &str, dialect: Dialect) -> (String, String) {
    match dialect {
        Dialect::Postgres => (
            format!("does not parse: {error}"),
            "correct the statement: PostgreSQL would refuse it too".to_string(),
        ),
        Dialect::Sqlite => (
            format!("does not parse with PostgreSQL's grammar, which the linter uses for SQLite files too: {error}"),
            format!(
                "if it is SQLite-only syntax (AUTOINCREMENT, PRAGMA, STRICT, ...), check it against the rules by hand and accept it: -- {} parse-error: <why it is safe>",
                silence::ALLOW
            ),
        ),
    }
}

/// `0003_x.contract.sql` for `.../0003_x.expand.sql`.
fn contract_file(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".expand.sql"))
        .map_or_else(
            || "the migration's contract file".to_string(),
            |stem| format!("{stem}.contract.sql"),
        )
}
