//! What is applied, pending, and blocked: the migration set against the history.
//!
//! Decisions, as the issue asks and other migrators' users complain:
//! - An applied file whose content changed blocks every run, with both checksums and the way
//!   out (`cutover migrate repair`, which records the new checksum on purpose).
//! - A pending expand numbered below an applied one blocks too: it was written against a schema
//!   that no longer exists. New migrations take numbers after the last applied one.
//! - An applied migration whose file is gone is reported, never undone and never blocking: the
//!   database has it either way.

use std::collections::BTreeMap;

use cutover_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::set::{MigrationSet, Phase};

/// One history record: a migration half as it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub name: String,
    pub phase: Phase,
    pub checksum: String,
    pub applied_at: Timestamp,
    /// The rollout that ran it (`None`: run by `cutover migrate` by hand).
    pub rollout_id: Option<u64>,
    pub duration_ms: u64,
}

/// Where one migration half is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Applied,
    Pending,
    /// Applied, and the file changed since: blocks every run.
    Changed {
        file_checksum: String,
    },
    /// Pending, but written before migrations already applied: blocks every run.
    OutOfOrder {
        after: String,
    },
    /// Applied, and its file is gone.
    FileMissing,
    /// Pending, but its number was applied under another name (a renamed file): it would run
    /// again. Blocks every run.
    Renamed {
        applied_as: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    pub name: String,
    pub phase: Phase,
    #[serde(flatten)]
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
}

/// Every migration half and its state, in order (expands and contracts interleaved by number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub migrations: Vec<MigrationStatus>,
}

impl Status {
    /// The names of the pending halves of `phase`, in the order they must run.
    pub fn pending(&self, phase: Phase) -> Vec<&str> {
        self.migrations
            .iter()
            .filter(|m| m.phase == phase && m.state == State::Pending)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// Why nothing may run now, one sentence per problem (empty: migrations may run). A changed
    /// file names the way out as `cutover migrate repair APP NAME`; [`Status::blocking_with`]
    /// names the real command.
    pub fn blocking(&self) -> Vec<String> {
        self.blocking_with("cutover migrate repair APP")
    }

    /// [`Status::blocking`] with `repair` as the command that accepts a changed file, e.g.
    /// `cutover migrate repair web --version v6` (the migration's name follows it).
    pub fn blocking_with(&self, repair: &str) -> Vec<String> {
        self.migrations
            .iter()
            .filter_map(|m| {
                let file = format!("{}.{}.sql", m.name, m.phase);
                match &m.state {
                    State::Changed { file_checksum } => {
                        let applied = m.applied.as_ref()?;
                        Some(format!(
                            "{file} was applied with checksum {} and has changed since (now {file_checksum}): an applied migration must not change; restore the file, or accept its new content on purpose with `{repair} {}`",
                            applied.checksum, m.name
                        ))
                    }
                    State::Renamed { applied_as } => Some(format!(
                        "{file}: its number was applied as {applied_as}.{} (a renamed file?): it would run again; give it back its name, or a new number if it is a new migration",
                        m.phase
                    )),
                    State::OutOfOrder { after } => Some(format!(
                        "{file} is pending but {after} was applied after it: it was written against an older schema; renumber it after the last applied migration"
                    )),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The number a migration's name starts with.
fn number_of(name: &str) -> Option<u32> {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The state of every half of `set` against `history`.
pub fn status(set: &MigrationSet, history: &[Applied]) -> Status {
    let applied: BTreeMap<(&str, Phase), &Applied> =
        history.iter().map(|a| ((a.name.as_str(), a.phase), a)).collect();
    // The last expand applied, by number: a pending expand below it is out of order.
    let last_applied_expand = set
        .migrations
        .iter()
        .rev()
        .find(|m| applied.contains_key(&(m.name.as_str(), Phase::Expand)))
        .map(|m| (m.number, m.name.clone()));
    let mut out = Vec::new();
    for m in &set.migrations {
        for phase in [Phase::Expand, Phase::Contract] {
            let Some(file) = m.file(phase) else { continue };
            let record = applied.get(&(m.name.as_str(), phase)).copied();
            let state = match record {
                Some(a) if a.checksum != file.checksum => State::Changed {
                    file_checksum: file.checksum.clone(),
                },
                Some(_) => State::Applied,
                None => match &last_applied_expand {
                    Some((number, name)) if phase == Phase::Expand && *number > m.number => {
                        State::OutOfOrder {
                            after: format!("{name}.expand.sql"),
                        }
                    }
                    _ => match history.iter().find(|a| {
                        a.phase == phase && a.name != m.name && number_of(&a.name) == Some(m.number)
                    }) {
                        Some(a) => State::Renamed {
                            applied_as: a.name.clone(),
                        },
                        None => State::Pending,
                    },
                },
            };
            out.push(MigrationStatus {
                name: m.name.clone(),
                phase,
                state,
                applied: record.cloned(),
            });
        }
    }
    for a in history {
        let known = set
            .migrations
            .iter()
            .any(|m| m.name == a.name && m.file(a.phase).is_some());
        if !known {
            out.push(MigrationStatus {
                name: a.name.clone(),
                phase: a.phase,
                state: State::FileMissing,
                applied: Some(a.clone()),
            });
        }
    }
    Status { migrations: out }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::set::checksum;

    fn set(files: &[(&str, &str)]) -> (tempfile::TempDir, MigrationSet) {
        let d = tempfile::tempdir().unwrap();
        for (name, sql) in files {
            std::fs::write(d.path().join(name), sql).unwrap();
        }
        let s = MigrationSet::load(d.path()).unwrap();
        (d, s)
    }

    fn applied(name: &str, phase: Phase, sql: &str) -> Applied {
        Applied {
            name: name.into(),
            phase,
            checksum: checksum(sql.as_bytes()),
            applied_at: Timestamp(1),
            rollout_id: Some(3),
            duration_ms: 12,
        }
    }

    const FILES: &[(&str, &str)] = &[
        ("0001_users.expand.sql", "CREATE TABLE users (id bigint);"),
        (
            "0002_email.expand.sql",
            "ALTER TABLE users ADD COLUMN email text;",
        ),
        ("0002_email.contract.sql", "ALTER TABLE users DROP COLUMN mail;"),
    ];

    #[test]
    fn pending_halves_come_in_order() {
        let (_d, s) = set(FILES);
        let history = [applied("0001_users", Phase::Expand, FILES[0].1)];
        let st = status(&s, &history);
        assert_eq!(st.pending(Phase::Expand), ["0002_email"]);
        assert_eq!(st.pending(Phase::Contract), ["0002_email"]);
        assert!(st.blocking().is_empty());
    }

    #[test]
    fn a_changed_applied_file_blocks_with_the_way_out() {
        let (_d, s) = set(FILES);
        let history = [applied(
            "0001_users",
            Phase::Expand,
            "CREATE TABLE users (id int);",
        )];
        let blocking = status(&s, &history).blocking();
        assert_eq!(blocking.len(), 1);
        assert!(
            blocking[0].starts_with("0001_users.expand.sql was applied with checksum"),
            "{blocking:?}"
        );
        assert!(
            blocking[0].contains("cutover migrate repair APP 0001_users"),
            "{blocking:?}"
        );
    }

    #[test]
    fn an_expand_numbered_below_an_applied_one_blocks() {
        let (_d, s) = set(FILES);
        let history = [applied("0002_email", Phase::Expand, FILES[1].1)];
        let blocking = status(&s, &history).blocking();
        assert_eq!(blocking.len(), 1);
        assert!(
            blocking[0].starts_with(
                "0001_users.expand.sql is pending but 0002_email.expand.sql was applied after it"
            ),
            "{blocking:?}"
        );
    }

    #[test]
    fn an_applied_migration_whose_file_is_gone_is_reported_not_blocking() {
        let (_d, s) = set(&FILES[..1]);
        let history = [
            applied("0001_users", Phase::Expand, FILES[0].1),
            applied("0000_old", Phase::Expand, "SELECT 1;"),
        ];
        let st = status(&s, &history);
        assert!(st.blocking().is_empty());
        assert!(st
            .migrations
            .iter()
            .any(|m| m.name == "0000_old" && m.state == State::FileMissing));
    }
}
