//! The migration directory: file names, order, checksums, every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The comment, on a line of its own, that runs a migration outside a transaction (for
/// `CREATE INDEX CONCURRENTLY`, which PostgreSQL refuses inside one).
pub const NO_TRANSACTION: &str = "-- cutover:no-transaction";

/// Which half of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Runs before the new release starts; must not break the running one.
    Expand,
    /// Runs once no running release needs the old schema.
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationFile {
    pub path: PathBuf,
    pub sql: String,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub checksum: String,
    /// The file asks to run outside a transaction ([`NO_TRANSACTION`]).
    pub no_transaction: bool,
}

/// A migration: its number, its name and its halves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub number: u32,
    /// `NNNN_name`, as the history records it.
    pub name: String,
    pub expand: MigrationFile,
    pub contract: Option<MigrationFile>,
}

impl Migration {
    pub fn file(&self, phase: Phase) -> Option<&MigrationFile> {
        match phase {
            Phase::Expand => Some(&self.expand),
            Phase::Contract => self.contract.as_ref(),
        }
    }
}

/// Every migration of a directory, in order of number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationSet {
    pub migrations: Vec<Migration>,
}

/// Every problem of a migration directory, each naming its file and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SetError {
    pub dir: String,
    pub problems: Vec<String>,
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "migrations in {}: {n} problem{} found:",
            self.dir,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// `NNNN_name.phase.sql` split, or why the name is not one.
fn parse_name(file_name: &str) -> Result<(u32, String, Phase), String> {
    let expected = "name migrations NNNN_name.expand.sql or NNNN_name.contract.sql (four or more digits, then letters, digits and '_')";
    if file_name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("has upper-case letters; {expected}, all lower-case"));
    }
    let Some(stem) = file_name.strip_suffix(".sql") else {
        return Err(format!("is not a .sql file; {expected}"));
    };
    let (name, phase) = if let Some(name) = stem.strip_suffix(".expand") {
        (name, Phase::Expand)
    } else if let Some(name) = stem.strip_suffix(".contract") {
        (name, Phase::Contract)
    } else {
        return Err(format!("says neither .expand nor .contract; {expected}"));
    };
    let (digits, rest) = name.split_at(name.find(|c: char| !c.is_ascii_digit()).unwrap_or(name.len()));
    let label = rest.strip_prefix('_').unwrap_or("");
    let label_ok = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match digits.parse::<u32>() {
        Ok(number) if digits.len() >= 4 && label_ok => Ok((number, name.to_string(), phase)),
        _ => Err(format!("does not start with a number and a name; {expected}")),
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl MigrationSet {
    /// Reads `dir`: every `.sql` file must be a migration half; every contract needs its expand;
    /// numbers are unique. Other files (a README) are left alone. Every problem at once.
    pub fn load(dir: &Path) -> Result<MigrationSet, SetError> {
        let shown = dir.display().to_string();
        let fail = |problems| SetError {
            dir: shown.clone(),
            problems,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            fail(vec![format!(
                "cannot read the directory ({e}); check [app.migrations] dir"
            )])
        })?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut problems = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // `.SQL` too: a file skipped for its case would be a migration that never runs.
                    if name.to_ascii_lowercase().ends_with(".sql") {
                        files.push((name, e.path()));
                    }
                }
                Err(e) => problems.push(format!("cannot list an entry: {e}")),
            }
        }
        files.sort();
        let mut halves: BTreeMap<(u32, String), (Option<MigrationFile>, Option<MigrationFile>)> =
            BTreeMap::new();
        for (file_name, path) in files {
            let (number, name, phase) = match parse_name(&file_name) {
                Ok(parsed) => parsed,
                Err(why) => {
                    problems.push(format!("{file_name}: {why}"));
                    continue;
                }
            };
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!(
                        "{file_name}: cannot be read ({e}); check its permissions"
                    ));
                    continue;
                }
            };
            let Ok(sql) = String::from_utf8(bytes.clone()) else {
                problems.push(format!("{file_name}: is not UTF-8 text"));
                continue;
            };
            let file = MigrationFile {
                checksum: checksum(&bytes),
                no_transaction: sql.lines().any(|l| l.trim() == NO_TRANSACTION),
                path,
                sql,
            };
            let slot = halves.entry((number, name)).or_default();
            match phase {
                Phase::Expand => slot.0 = Some(file),
                Phase::Contract => slot.1 = Some(file),
            }
        }
        let mut migrations: Vec<Migration> = Vec::new();
        for ((number, name), (expand, contract)) in halves {
            let Some(expand) = expand else {
                problems.push(format!(
                    "{name}.contract.sql: has no {name}.expand.sql; a contract undoes what an expand made room for: add the expand half (it may be empty)"
                ));
                continue;
            };
            if let Some(other) = migrations.iter().find(|m| m.number == number) {
                problems.push(format!(
                    "{name}.expand.sql: number {number:04} is also {}'s; give each migration its own number",
                    other.name
                ));
                continue;
            }
            migrations.push(Migration {
                number,
                name,
                expand,
                contract,
            });
        }
        if problems.is_empty() {
            Ok(MigrationSet { migrations })
        } else {
            Err(fail(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, sql) in files {
            std::fs::write(d.path().join(name), sql).unwrap();
        }
        d
    }

    #[test]
    fn migrations_are_read_in_order_with_their_checksums() {
        let d = dir(&[
            (
                "0002_email.expand.sql",
                "ALTER TABLE users ADD COLUMN email text;",
            ),
            ("0002_email.contract.sql", "ALTER TABLE users DROP COLUMN mail;"),
            ("0001_users.expand.sql", "CREATE TABLE users (id bigint);"),
            (
                "0003_index.expand.sql",
                "-- cutover:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);",
            ),
            ("README.md", "not a migration"),
        ]);
        let set = MigrationSet::load(d.path()).unwrap();
        let names: Vec<&str> = set.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["0001_users", "0002_email", "0003_index"]);
        assert!(set.migrations[1].contract.is_some());
        assert!(set.migrations[2].expand.no_transaction);
        assert!(!set.migrations[0].expand.no_transaction);
        assert_eq!(
            set.migrations[0].expand.checksum,
            checksum(b"CREATE TABLE users (id bigint);")
        );
        // SHA-256 of the empty string, the well-known vector.
        assert_eq!(
            checksum(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_problem_of_the_directory_is_reported_at_once() {
        let d = dir(&[
            ("0001_users.expand.sql", ""),
            ("0001_accounts.expand.sql", ""),
            ("0002_orphan.contract.sql", ""),
            ("3_short.expand.sql", ""),
            ("0004_Upper.expand.sql", ""),
            ("0005_undo.down.sql", ""),
        ]);
        let err = MigrationSet::load(d.path()).unwrap_err();
        let text = err.to_string();
        for wanted in [
            "5 problems found",
            "0001_users.expand.sql: number 0001 is also 0001_accounts's",
            "0002_orphan.contract.sql: has no 0002_orphan.expand.sql",
            "3_short.expand.sql: does not start with a number and a name",
            "0004_Upper.expand.sql: has upper-case letters",
            "0005_undo.down.sql: says neither .expand nor .contract",
        ] {
            assert!(text.contains(wanted), "{wanted}\n{text}");
        }
    }

    #[test]
    fn a_missing_directory_says_where_to_look() {
        let err = MigrationSet::load(Path::new("/nonexistent/migrations")).unwrap_err();
        assert!(err.to_string().contains("check [app.migrations] dir"), "{err}");
    }
}
