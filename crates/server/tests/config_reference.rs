#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `docs/config.md` is the reference of `cutover.toml`, and this test keeps it from drifting from
//! the configuration types.
//!
//! The keys cutover accepts are not listed here: they are asked of the parser itself. Every config
//! struct rejects unknown keys (`deny_unknown_fields`), and `Config::parse` answers an unknown key
//! with the table's fields ("unknown field; remove it, or use one of the fields of this table:
//! `a`, `b`"). So the test writes a probe key into each table, reads the fields from the answer,
//! then finds which of them are tables themselves by giving each the value `1` ("expected struct
//! ...", "expected a sequence" and so on) and probes those in turn. Tables tagged by a key (the
//! router's `kind`) are probed once per variant. No list of keys lives in this file, so a field
//! added to a config struct fails this test until it is documented, and a documented key that is
//! renamed or removed fails it too.
//!
//! The reference's format, which the test reads:
//! - a table is a heading `## [app.proxy]` (`## [[app.webhook]]` for an array of tables), one
//!   variant of a tagged table `## [app.router] kind = "haproxy"`;
//! - its keys are the rows of a markdown table whose header is `| key | type | default | meaning |`,
//!   the key being the bare key in backticks; other markdown tables are left alone;
//! - a key that is a table is documented by the table's own section (a row for it in the parent's
//!   table is welcome, as an overview, and is checked like any other row);
//! - every ```toml block is a whole configuration that `Config::parse` accepts (no fragments, so
//!   no example can go stale). The examples need no environment or files: they set no
//!   `secret_env`, `[app.tls]` or `workdir`, which validation looks up.

use std::collections::{BTreeMap, BTreeSet};

use cutover_server::config::ConfigError;
use cutover_server::Config;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");

/// The unknown key written into each table. Nothing like any real key, or the parser would answer
/// "did you mean ...?" instead of listing the table's fields.
const PROBE: &str = "zz_doc_probe";

/// What every probed `[[app]]` has, so the app itself is valid and only the probe is reported.
const APP_BASE: [(&str, &str); 2] = [("name", "\"probe\""), ("listen", "\"127.0.0.1:18080\"")];

/// Tables that take any key without a word, so the probe cannot list their keys: the variants of
/// a tagged enum that carry no data (serde ignores the rest of the table for those). Each entry
/// says why; the test fails once an entry starts rejecting unknown keys, so the list stays true.
const IGNORES_UNKNOWN_KEYS: [(&str, &str); 1] = [(
    "[app.router] kind = \"builtin\"",
    "RouterConfig::Builtin is a unit variant: serde ignores the other keys of its table",
)];

/// One step of a table's path: `app` of `[[app]]`, `router` of `[app.router]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    key: String,
    /// An array of tables: written `[[...]]`, and element 0 in problem paths.
    array: bool,
    /// For a tagged table: the tag key and the variant written (`kind`, `haproxy`).
    variant: Option<(String, String)>,
}

/// A table of `cutover.toml`; the empty path is the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    path: Vec<Seg>,
}

impl Table {
    fn root() -> Table {
        Table { path: Vec::new() }
    }

    fn child(&self, key: &str, array: bool) -> Table {
        let mut path = self.path.clone();
        path.push(Seg {
            key: key.to_string(),
            array,
            variant: None,
        });
        Table { path }
    }

    fn with_variant(&self, tag: &str, variant: &str) -> Table {
        let mut table = self.clone();
        if let Some(last) = table.path.last_mut() {
            last.variant = Some((tag.to_string(), variant.to_string()));
        }
        table
    }

    fn dotted(&self) -> String {
        self.path
            .iter()
            .map(|s| s.key.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The heading of the table in docs/config.md: `[app.proxy]`, `[[app.webhook]]`,
    /// `[app.router] kind = "haproxy"`.
    fn heading(&self) -> String {
        let Some(last) = self.path.last() else {
            return "(top level)".to_string();
        };
        assert!(
            self.path[..self.path.len() - 1]
                .iter()
                .all(|s| s.variant.is_none()),
            "{:?}: a table inside a variant of a tagged table; teach this test how to name its heading",
            self.path
        );
        let (open, close) = if last.array { ("[[", "]]") } else { ("[", "]") };
        let mut heading = format!("{open}{}{close}", self.dotted());
        if let Some((tag, variant)) = &last.variant {
            heading.push_str(&format!(" {tag} = \"{variant}\""));
        }
        heading
    }

    /// How `Config::parse` names a key of this table in its problems: `app[0].proxy.sticky.x`.
    fn field(&self, key: &str) -> String {
        let mut out = String::new();
        for seg in &self.path {
            out.push_str(&seg.key);
            if seg.array {
                out.push_str("[0]");
            }
            out.push('.');
        }
        out.push_str(key);
        out
    }

    /// A configuration with this table present and `line` (setting `key`) in it. Arrays of tables
    /// get a header of their own (the deeper headers then belong to their element 0), and so do
    /// tagged tables (their tag goes under it).
    fn config_with(&self, key: &str, line: &str) -> String {
        if self.path.is_empty() {
            return format!("{line}\n");
        }
        let mut text = String::new();
        for i in 0..self.path.len() {
            let seg = &self.path[i];
            let last = i + 1 == self.path.len();
            if !(seg.array || seg.variant.is_some() || last) {
                continue;
            }
            let dotted = self.path[..=i]
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>()
                .join(".");
            if seg.array {
                text.push_str(&format!("[[{dotted}]]\n"));
            } else {
                text.push_str(&format!("[{dotted}]\n"));
            }
            if i == 0 && seg.key == "app" {
                for (base_key, value) in APP_BASE {
                    // The probed key itself, when it is one of these, is written by the probe.
                    if !(last && base_key == key) {
                        text.push_str(&format!("{base_key} = {value}\n"));
                    }
                }
            }
            if let Some((tag, variant)) = &seg.variant {
                text.push_str(&format!("{tag} = \"{variant}\"\n"));
            }
        }
        text.push_str(line);
        text.push('\n');
        text
    }
}

/// Every problem `Config::parse` finds in `text`, as (field, message).
fn problems(text: &str) -> Vec<(String, String)> {
    match Config::parse(text, "probe.toml") {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| (p.field, p.message)).collect()
        }
        Err(e) => panic!("parsing a probe cannot fail to read a file: {e}"),
    }
}

/// The message of the problem `Config::parse` finds at `field` in `text`, if any.
fn problem_at(text: &str, field: &str) -> Option<String> {
    problems(text)
        .into_iter()
        .find(|(f, _)| f == field)
        .map(|(_, message)| message)
}

/// The words between backticks.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The keys `table` accepts, from the parser's answer to an unknown key; `None` when the table
/// took the unknown key without a word.
fn accepted_keys(table: &Table) -> Option<Vec<String>> {
    let text = table.config_with(PROBE, &format!("{PROBE} = 1"));
    let message = problem_at(&text, &table.field(PROBE))?;
    // The wording of crates/server/src/config/structure.rs (`unknown_field`).
    if message == "unknown field: this table takes no fields; remove it" {
        return Some(Vec::new());
    }
    if message.starts_with("unknown field; remove it, or use one of the fields of this table: ") {
        return Some(backticked(&message));
    }
    panic!(
        "{}: the parser answered the unknown key {PROBE} with {message:?}, which this test does not \
         know how to read (probed with:\n{text}); if the wording of unknown fields changed in \
         crates/server/src/config/structure.rs, update `accepted_keys` here",
        table.heading()
    );
}

/// What kind of value a key takes, as far as the reference cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A value, or an array of values.
    Value,
    /// A table of free-form keys (`env`): documented as one key.
    Map,
    Table,
    ArrayOfTables,
    /// A table whose keys depend on a tag key (`[app.router] kind = ...`).
    Tagged,
}

/// The shape of `key` of `table`, from the parser's answer to `key = 1` (and `key = [1]` for
/// arrays, to tell arrays of tables from arrays of values).
fn shape_of(table: &Table, key: &str) -> Shape {
    let text = table.config_with(key, &format!("{key} = 1"));
    let Some(message) = problem_at(&text, &table.field(key)) else {
        return Shape::Value;
    };
    if message.contains("expected struct ") {
        Shape::Table
    } else if message.contains("expected internally tagged enum") {
        Shape::Tagged
    } else if message.contains("expected a map") {
        Shape::Map
    } else if message.contains("expected a sequence") {
        let text = table.config_with(key, &format!("{key} = [1]"));
        match problem_at(&text, &format!("{}[0]", table.field(key))) {
            Some(m) if m.contains("expected struct ") => Shape::ArrayOfTables,
            Some(m) if m.contains("expected internally tagged enum") => panic!(
                "{} `{key}` is an array of tagged tables; teach this test to probe those",
                table.heading()
            ),
            _ => Shape::Value,
        }
    } else {
        Shape::Value
    }
}

/// The tag key of a tagged table (from "missing" on an empty one) and its variants (from an
/// unknown variant's answer).
fn tag_and_variants(table: &Table) -> (String, Vec<String>) {
    let text = table.config_with("", "");
    let prefix = table.field("");
    let tag = problems(&text)
        .into_iter()
        .find(|(f, m)| f.starts_with(&prefix) && m.starts_with("missing"))
        .map(|(f, _)| f[prefix.len()..].to_string())
        .unwrap_or_else(|| {
            panic!(
                "{}: an empty tagged table reported no missing tag key",
                table.heading()
            )
        });
    let text = table.config_with(&tag, &format!("{tag} = \"{PROBE}\""));
    let message = problem_at(&text, &table.field(&tag))
        .unwrap_or_else(|| panic!("{}: an unknown {tag} was accepted", table.heading()));
    // "unknown value `zz_doc_probe`; use one of `a`, `b`": the first word is ours.
    let variants: Vec<String> = backticked(&message).into_iter().skip(1).collect();
    assert!(
        !variants.is_empty(),
        "{}: cannot read the variants of {tag} from {message:?}",
        table.heading()
    );
    (tag, variants)
}

/// What the parser accepts in one table.
#[derive(Debug)]
struct Found {
    table: Table,
    /// `None`: the table takes unknown keys without a word (see [`IGNORES_UNKNOWN_KEYS`]).
    keys: Option<Vec<(String, Shape)>>,
}

/// Every table reachable from `table`, depth first.
fn discover(table: Table, found: &mut Vec<Found>) {
    let Some(keys) = accepted_keys(&table) else {
        found.push(Found { table, keys: None });
        return;
    };
    let keys: Vec<(String, Shape)> = keys
        .into_iter()
        .map(|k| {
            let shape = shape_of(&table, &k);
            (k, shape)
        })
        .collect();
    found.push(Found {
        table: table.clone(),
        keys: Some(keys.clone()),
    });
    for (key, shape) in keys {
        match shape {
            Shape::Table => discover(table.child(&key, false), found),
            Shape::ArrayOfTables => discover(table.child(&key, true), found),
            Shape::Tagged => {
                let tagged = table.child(&key, false);
                let (tag, variants) = tag_and_variants(&tagged);
                // The table's own section documents the tag; each variant's section its keys.
                found.push(Found {
                    table: tagged.clone(),
                    keys: Some(vec![(tag.clone(), Shape::Value)]),
                });
                for variant in variants {
                    discover(tagged.with_variant(&tag, &variant), found);
                }
            }
            Shape::Value | Shape::Map => {}
        }
    }
}

/// One `## [...]` section of docs/config.md.
#[derive(Debug, Default)]
struct Section {
    /// 1-based line of the heading.
    line: usize,
    /// Documented keys with their lines.
    keys: Vec<(String, usize)>,
}

/// The sections of the reference by heading, and whatever is malformed in it.
fn read_reference(doc: &str) -> (BTreeMap<String, Section>, Vec<String>) {
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut current: Option<String> = None;
    let mut in_code = false;
    let mut in_key_table = false;
    for (i, line) in doc.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            in_key_table = false;
            let title = title.trim();
            current = title.starts_with('[').then(|| title.to_string());
            if let Some(heading) = &current {
                if let Some(earlier) = sections.get(heading) {
                    errors.push(format!(
                        "docs/config.md:{n}: ## {heading} is there twice (also line {}); merge the two sections",
                        earlier.line
                    ));
                }
                sections.insert(
                    heading.clone(),
                    Section {
                        line: n,
                        keys: Vec::new(),
                    },
                );
            }
            continue;
        }
        if line.starts_with('#') {
            // A deeper or shallower heading ends the section's key table, not the section.
            in_key_table = false;
            continue;
        }
        let row = line.trim();
        if !row.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let cells = cells(row);
        let header: Vec<&str> = cells.iter().map(|c| c.trim()).collect();
        if header == ["key", "type", "default", "meaning"] {
            in_key_table = true;
            continue;
        }
        if !in_key_table || header.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
            continue;
        }
        let Some(heading) = &current else {
            errors.push(format!(
                "docs/config.md:{n}: a key table outside a ## [table] section; put it under the heading of its table"
            ));
            continue;
        };
        if cells.len() != 4 || header.iter().any(|c| c.is_empty()) {
            errors.push(format!(
                "docs/config.md:{n}: {row:?} needs four cells, none empty (key, type, default, meaning); write `|` inside a cell as `\\|`"
            ));
        }
        let key = header
            .first()
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        let Some(key) = key else {
            errors.push(format!(
                "docs/config.md:{n}: the key cell of {row:?} must be the bare key in backticks, e.g. `listen`"
            ));
            continue;
        };
        let section = sections.entry(heading.clone()).or_default();
        if let Some((_, earlier)) = section.keys.iter().find(|(k, _)| k == key) {
            errors.push(format!(
                "docs/config.md:{n}: `{key}` is documented twice under ## {heading} (also line {earlier}); keep one row"
            ));
        }
        section.keys.push((key.to_string(), n));
    }
    (sections, errors)
}

/// The cells of a markdown table row; `\|` stays inside its cell.
fn cells(row: &str) -> Vec<String> {
    let inner = row.strip_prefix('|').unwrap_or(row);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            '|' if !escaped => cells.push(String::new()),
            _ => {
                if let Some(cell) = cells.last_mut() {
                    cell.push(c);
                }
            }
        }
        escaped = c == '\\';
    }
    cells
}

#[test]
fn every_key_cutover_accepts_is_documented_and_every_documented_key_is_accepted() {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let (sections, mut errors) = read_reference(&doc);

    let mut found = Vec::new();
    discover(Table::root(), &mut found);
    // Guards the probing itself: were the parser's answers misread, far fewer tables would show.
    for expected in ["[[app]]", "[app.proxy.sticky]", "[app.rollout.judge.sequential]"] {
        assert!(
            found.iter().any(|f| f.table.heading() == expected),
            "probing the parser did not find {expected}; found {:?}",
            found.iter().map(|f| f.table.heading()).collect::<Vec<_>>()
        );
    }
    let headings: BTreeSet<String> = found.iter().map(|f| f.table.heading()).collect();

    for (heading, why) in IGNORES_UNKNOWN_KEYS {
        if !found
            .iter()
            .any(|f| f.table.heading() == heading && f.keys.is_none())
        {
            errors.push(format!(
                "{heading} now rejects unknown keys (or is gone), so IGNORES_UNKNOWN_KEYS in \
                 {} no longer needs it ({why}): remove the entry, and the sentence in \
                 docs/config.md that warns of it",
                file!()
            ));
        }
    }

    for f in &found {
        let heading = f.table.heading();
        let Some(keys) = &f.keys else {
            if !IGNORES_UNKNOWN_KEYS.iter().any(|(h, _)| *h == heading) {
                errors.push(format!(
                    "{heading} accepts any key: its type lost #[serde(deny_unknown_fields)], so typos \
                     there would pass unnoticed; restore it"
                ));
            }
            if !f.table.path.is_empty() && !sections.contains_key(&heading) {
                errors.push(format!(
                    "{heading} is not documented: add a section `## {heading}` to docs/config.md"
                ));
            }
            if let Some(section) = sections.get(&heading) {
                for (key, line) in &section.keys {
                    errors.push(format!(
                        "docs/config.md:{line}: `{key}` is documented under ## {heading}, which takes no keys of its own; remove the row"
                    ));
                }
            }
            continue;
        };
        let section = sections.get(&heading);
        if section.is_none() && !f.table.path.is_empty() {
            let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            errors.push(format!(
                "{heading} is not documented: add a section `## {heading}` to docs/config.md with a row for each of its keys ({})",
                names.join(", ")
            ));
            continue;
        }
        let documented: BTreeSet<&str> = section
            .map(|s| s.keys.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        for (key, shape) in keys {
            // A key that is a table is documented by the table's own section, whose absence is
            // reported (with its keys) when that table comes up in `found`.
            if *shape != Shape::Value && *shape != Shape::Map {
                continue;
            }
            if documented.contains(key.as_str()) {
                continue;
            }
            if f.table.path.is_empty() {
                errors.push(format!(
                    "the top-level key `{key}` is not documented: document it in docs/config.md (a \
                     section for top-level keys, and teach this test to read it)"
                ));
            } else {
                errors.push(format!(
                    "`{key}` of {heading} is not documented: document it in docs/config.md under \
                     ## {heading} (a row | `{key}` | type | default | meaning |)"
                ));
            }
        }
        if let Some(section) = section {
            let accepted: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            for (key, line) in &section.keys {
                if !accepted.contains(&key.as_str()) {
                    errors.push(format!(
                        "docs/config.md:{line}: `{key}` is documented under ## {heading}, but cutover.toml does not \
                         accept it there: remove the row or fix its name (the keys of {heading}: {})",
                        accepted.join(", ")
                    ));
                }
            }
        }
    }

    for (heading, section) in &sections {
        if headings.contains(heading) {
            continue;
        }
        // The same path with the other brackets: a table written as an array or the reverse.
        let bare = heading
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or_default();
        let hint = headings
            .iter()
            .find(|h| h.trim_start_matches('[').split(']').next() == Some(bare))
            .map(|h| format!("; the table is written {h}"))
            .unwrap_or_default();
        errors.push(format!(
            "docs/config.md:{}: ## {heading} is not a table of cutover.toml{hint}: fix the heading or remove the section",
            section.line
        ));
    }

    assert!(
        errors.is_empty(),
        "docs/config.md and the configuration types disagree ({} problem{}):\n  {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        errors.join("\n  ")
    );
}

#[test]
fn every_toml_example_in_the_reference_is_a_configuration_cutover_accepts() {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match &mut current {
            // Any ```toml block, whatever follows the word: the reference has no fragments.
            None if line.trim_start().starts_with("```toml") => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if fence => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(
        current.is_none(),
        "docs/config.md: a ```toml block is never closed"
    );
    assert!(!blocks.is_empty(), "docs/config.md has no ```toml example");
    let mut errors = Vec::new();
    for (line, text) in &blocks {
        if let Err(e) = Config::parse(
            text,
            &format!("docs/config.md (the ```toml block of line {line})"),
        ) {
            errors.push(format!(
                "{e}\n  every ```toml block of the reference is a whole configuration: fix the example"
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
