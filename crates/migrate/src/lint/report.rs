//! What the linter answers: findings, the ones a comment accepted, and how a CLI prints them.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One problem of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A [`super::Rule::id`].
    pub rule: &'static str,
    pub file: PathBuf,
    /// 1-based: the line the statement's first word is on (a silence comment's own line for
    /// the findings about silences).
    pub line: usize,
    /// The statement on one line, comments left out, cut to about 120 characters.
    pub statement: String,
    /// What is wrong, naming the tables and columns.
    pub message: String,
    /// What to do instead.
    pub fix: String,
}

/// A finding a `-- cutover:allow` comment accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Silenced {
    pub finding: Finding,
    /// Why the comment says it is safe.
    pub reason: String,
}

/// Everything the linter found in a file or a migration set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LintReport {
    /// In file order, then line order.
    pub findings: Vec<Finding>,
    pub silenced: Vec<Silenced>,
}

impl LintReport {
    /// No finding is left (silenced ones do not count): the migrations may run.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    pub(crate) fn extend(&mut self, other: LintReport) {
        self.findings.extend(other.findings);
        self.silenced.extend(other.silenced);
    }
}

impl fmt::Display for Finding {
    /// `path:line: [rule-id] message`, then the statement and the fix, indented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}\n    {}\n    fix: {}",
            self.file.display(),
            self.line,
            self.rule,
            self.message,
            self.statement,
            self.fix
        )
    }
}

impl fmt::Display for LintReport {
    /// Every finding, then one line per silenced finding with its reason, then a count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        for s in &self.silenced {
            writeln!(
                f,
                "{}:{}: [{}] allowed: {}",
                s.finding.file.display(),
                s.finding.line,
                s.finding.rule,
                s.reason
            )?;
        }
        let n = self.findings.len();
        write!(
            f,
            "{n} finding{}, {} silenced",
            if n == 1 { "" } else { "s" },
            self.silenced.len()
        )
    }
}
