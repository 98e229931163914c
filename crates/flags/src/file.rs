//! `flags.toml`: flags written down declaratively, one `[[flag]]` table each, read with every
//! problem of the file reported at once and each one pointing at its line.
//!
//! ```toml
//! [[flag]]
//! key = "new-checkout"
//! type = "boolean"
//! variants = { on = true, off = false }
//! default_variant = "off"
//! split = [{ variant = "on", weight = 500 }, { variant = "off", weight = 9500 }]
//! owner = "team-payments"
//! description = "The new checkout flow"
//! expires = 2027-03-31   # or "2027-03-31"; permanent = "why it stays" instead
//! ```
//!
//! A table holds the fields of [`Flag`] but `revision`, which the server keeps. `enabled` may be
//! left out, and whether it was written is kept ([`FileFlag::states_enabled`]): a tool applying
//! the file decides what an unstated `enabled` means for a flag that exists already.
//!
//! serde stops at the first error, so the file is walked by hand instead: every type error,
//! unknown field (with the field it is probably a typo of), missing field and duplicate key is
//! collected, the flag is built with a stand-in for each value that was wrong, and then
//! [`Flag::problems`] runs on it. What validation says about a stand-in would only repeat the
//! problem already reported for it, so it is left out. No I/O: the caller reads the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde_json::Value;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::flag::{AllowList, Condition, Flag, FlagType, Op, Rule, SplitEntry};
use cutover_core::validate::typos;

/// One flag of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFlag {
    /// The flag as written; `enabled` is `true` when the file does not state it, and `revision`
    /// is 0.
    pub flag: Flag,
    /// Whether the file wrote `enabled` for this flag.
    pub states_enabled: bool,
    /// The line of the flag's table.
    pub line: usize,
}

/// One thing wrong with the file, at its line when the file has one for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// A path such as `flag[2].rules[0].when[1].op`.
    pub field: String,
    pub message: String,
}

impl Problem {
    /// `FILE:LINE: field: message`.
    pub fn to_string_in(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file}:{line}: {}: {}", self.field, self.message),
            None => format!("{file}: {}: {}", self.field, self.message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_in("flags.toml"))
    }
}

/// Every problem of a flags file, in the order of its lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FlagFileError {
    /// The file as the problems name it.
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for FlagFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{} found:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", p.to_string_in(&self.file))?;
        }
        Ok(())
    }
}

const FILE_FIELDS: &[&str] = &["flag"];
const FLAG_FIELDS: &[&str] = &[
    "key",
    "type",
    "variants",
    "default_variant",
    "enabled",
    "allow",
    "rules",
    "split",
    "owner",
    "description",
    "expires",
    "permanent",
];
const ALLOW_FIELDS: &[&str] = &["variant", "keys"];
const RULE_FIELDS: &[&str] = &["when", "variant"];
const CONDITION_FIELDS: &[&str] = &["attribute", "op", "value"];
const SPLIT_FIELDS: &[&str] = &["variant", "weight"];

/// The flags of `text`, in file order, or every problem of it. `file` names the file in the
/// problems.
pub fn parse(text: &str, file: &str) -> Result<Vec<FileFlag>, FlagFileError> {
    let invalid = |problems| FlagFileError {
        file: file.to_string(),
        problems,
    };
    let (document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // What follows a syntax error cannot be read reliably: the syntax is all that is reported.
        let problems = syntax
            .iter()
            .map(|e| Problem {
                line: e.span().map(|s| line_of(text, s.start)),
                field: "toml".into(),
                message: e.message().trim().to_string(),
            })
            .collect();
        return Err(invalid(problems));
    }
    let mut walk = Walk::default();
    let flags = walk.file(document.get_ref());
    let mut problems: Vec<Problem> = walk
        .problems
        .iter()
        .map(|(field, at, message)| Problem {
            line: Some(line_of(text, *at)),
            field: field.clone(),
            message: message.clone(),
        })
        .collect();
    for (i, (flag, _, _)) in flags.iter().enumerate() {
        for e in flag.problems(&format!("flag[{i}]")) {
            if walk.masks(&e.field) {
                continue;
            }
            problems.push(Problem {
                line: walk.offset_of(&e.field).map(|at| line_of(text, at)),
                field: e.field,
                message: e.message,
            });
        }
    }
    if !problems.is_empty() {
        // Stable: problems on one line keep the order they were found in.
        problems.sort_by_key(|p| p.line);
        return Err(invalid(problems));
    }
    Ok(flags
        .into_iter()
        .map(|(flag, states_enabled, at)| FileFlag {
            flag,
            states_enabled,
            line: line_of(text, at),
        })
        .collect())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

type Item<'i> = Spanned<DeValue<'i>>;

/// What the walk over the document found.
#[derive(Default)]
struct Walk {
    /// (field, byte offset, message), in the order they were met.
    problems: Vec<(String, usize, String)>,
    /// Where each field that was read starts in the text.
    offsets: HashMap<String, usize>,
    /// Fields whose value was wrong and was replaced by a stand-in: validation's findings under
    /// them are not shown. A mask ending in `.` covers the fields under it but not itself.
    masked: Vec<String>,
}

impl Walk {
    fn problem(&mut self, field: &str, at: usize, message: impl Into<String>) {
        self.problems.push((field.to_string(), at, message.into()));
    }

    /// A problem with the value of `field`, whose stand-in validation must not judge.
    fn damaged(&mut self, field: &str, at: usize, message: impl Into<String>) {
        self.problem(field, at, message);
        self.masked.push(field.to_string());
    }

    fn masks(&self, field: &str) -> bool {
        self.masked.iter().any(|m| {
            if m.ends_with('.') {
                field.starts_with(m.as_str())
            } else {
                field == m
                    || field
                        .strip_prefix(m.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            }
        })
    }

    /// The offset of `field`, or of the nearest field around it that was read.
    fn offset_of(&self, field: &str) -> Option<usize> {
        let mut field = field;
        loop {
            if let Some(at) = self.offsets.get(field) {
                return Some(*at);
            }
            let cut = field.rfind(['.', '['])?;
            field = &field[..cut];
        }
    }

    fn seen(&mut self, field: &str, item: &Item<'_>) {
        self.offsets.insert(field.to_string(), item.span().start);
    }

    /// Reports the keys of `table` not in `known` (and those `refused`, with their reason);
    /// returns the known ones with their values.
    fn fields<'t, 'i>(
        &mut self,
        at: &str,
        table: &'t DeTable<'i>,
        known: &[&'static str],
        refused: &[(&str, &str)],
    ) -> Vec<(&'static str, &'t Item<'i>)> {
        let mut found = Vec::new();
        for (key, value) in table {
            let name: &str = key.get_ref();
            let field = join(at, name);
            if let Some(&(_, why)) = refused.iter().find(|(r, _)| *r == name) {
                self.problem(&field, key.span().start, why);
            } else if let Some(&known_name) = known.iter().find(|k| **k == name) {
                self.seen(&field, value);
                found.push((known_name, value));
            } else {
                let near = suggest(name, known);
                if let Some(near) = near.filter(|n| !table.keys().any(|k| k.get_ref() == n)) {
                    // The typo stands for the field: it is not also reported missing.
                    self.masked.push(join(at, near));
                }
                self.problem(&field, key.span().start, unknown_field(name, known));
            }
        }
        found
    }

    /// The table of `item`, or a problem.
    fn table<'t, 'i>(&mut self, field: &str, item: &'t Item<'i>, example: &str) -> Option<&'t DeTable<'i>> {
        match item.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.damaged(
                    field,
                    item.span().start,
                    format!("must be a table, e.g. {example}; found {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn string(&mut self, field: &str, item: &Item<'_>, example: &str) -> Option<String> {
        match item.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.damaged(
                    field,
                    item.span().start,
                    format!("must be a string, e.g. {example}; found {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn list<'t, 'i>(&mut self, field: &str, item: &'t Item<'i>, example: &str) -> Option<&'t [Item<'i>]> {
        match item.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            other => {
                self.damaged(
                    field,
                    item.span().start,
                    format!("must be a list, e.g. {example}; found {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// A required field that is not there: reported at the table that lacks it, unless a typo
    /// of it was reported already.
    fn missing(&mut self, at: &str, at_offset: usize, name: &str, example: &str) {
        if self.masks(&join(at, name)) {
            return;
        }
        self.damaged(&join(at, name), at_offset, format!("missing: write {example}"));
    }

    /// The document: `[[flag]]` tables. Each flag with whether it states `enabled` and where its
    /// table starts.
    fn file(&mut self, document: &DeTable<'_>) -> Vec<(Flag, bool, usize)> {
        let mut flags = Vec::new();
        let mut list: &[Item<'_>] = &[];
        for (_, item) in self.fields("", document, FILE_FIELDS, &[]) {
            list = self
                .list("flag", item, "[[flag]] tables, one per flag")
                .unwrap_or_default();
        }
        // The first flag of each key, by index.
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("flag[{i}]");
            self.seen(&at, item);
            let Some(table) = self.table(&at, item, "[[flag]] with key = \"...\"") else {
                continue;
            };
            let (flag, states_enabled) = self.flag(&at, item.span().start, table);
            let key_field = join(&at, "key");
            if !self.masks(&key_field) {
                if let Some(first) = keys.get(&flag.key) {
                    let message = format!(
                        "{:?} is declared twice, here and in flag[{first}]; keep one of them",
                        flag.key
                    );
                    let key_at = self.offsets.get(&key_field).copied().unwrap_or(item.span().start);
                    self.problem(&key_field, key_at, message);
                } else {
                    keys.insert(flag.key.clone(), i);
                }
            }
            flags.push((flag, states_enabled, item.span().start));
        }
        if list.is_empty() && !self.masks("flag") {
            self.problem(
                "flag",
                0,
                "the file declares no flag; write one [[flag]] table per flag",
            );
        }
        flags
    }

    fn flag(&mut self, at: &str, start: usize, table: &DeTable<'_>) -> (Flag, bool) {
        let mut key = None;
        let mut kind = None;
        let mut kind_damaged = false;
        let mut variants = None;
        let mut default_variant = None;
        let mut enabled = None;
        let mut allow = None;
        let mut rules = Vec::new();
        let mut split = Vec::new();
        let mut owner = None;
        let mut description = None;
        let mut expires = None;
        let mut permanent = None;
        let refused = [(
            "revision",
            "the server sets the revision; remove it from the file",
        )];
        let fields = self.fields(at, table, FLAG_FIELDS, &refused);
        for (name, item) in fields {
            let field = join(at, name);
            match name {
                "key" => key = self.string(&field, item, "key = \"new-checkout\""),
                "type" => {
                    kind = self.flag_type(&field, item);
                    kind_damaged = kind.is_none();
                }
                "variants" => variants = Some(item),
                "default_variant" => default_variant = self.string(&field, item, "default_variant = \"off\""),
                "enabled" => match item.get_ref() {
                    DeValue::Boolean(b) => enabled = Some(*b),
                    other => {
                        self.damaged(
                            &field,
                            item.span().start,
                            format!("must be true or false; found {}", kind_of(other)),
                        );
                    }
                },
                "allow" => allow = self.allow(&field, item),
                "rules" => rules = self.rules(&field, item),
                "split" => split = self.split(&field, item),
                "owner" => owner = self.string(&field, item, "owner = \"team-payments\""),
                "description" => {
                    description = self.string(&field, item, "description = \"what the flag switches\"")
                }
                "expires" => expires = self.date(&field, item),
                "permanent" => {
                    permanent = self.string(&field, item, "permanent = \"why the flag stays for good\"")
                }
                _ => {}
            }
        }
        if kind_damaged {
            // Without a type no variant value can be judged.
            self.masked.push(format!("{}.", join(at, "variants")));
        }
        let kind = kind.unwrap_or_else(|| {
            if !kind_damaged {
                self.missing(
                    at,
                    start,
                    "type",
                    "type = \"boolean\" (or \"string\", \"number\", \"object\")",
                );
                self.masked.push(format!("{}.", join(at, "variants")));
            }
            FlagType::Boolean
        });
        let variants = match variants {
            Some(item) => self.variants(&join(at, "variants"), item, kind),
            None => BTreeMap::new(),
        };
        let key = key.unwrap_or_else(|| {
            self.missing(at, start, "key", "key = \"new-checkout\"");
            String::new()
        });
        let default_variant = default_variant.unwrap_or_else(|| {
            let example = variants
                .keys()
                .next()
                .map_or("default_variant = \"off\"".to_string(), |v| {
                    format!("default_variant = {v:?}")
                });
            self.missing(at, start, "default_variant", &example);
            String::new()
        });
        let flag = Flag {
            key,
            kind,
            variants,
            default_variant,
            enabled: enabled.unwrap_or(true),
            allow,
            rules,
            split,
            owner: owner.unwrap_or_default(),
            description: description.unwrap_or_default(),
            expires,
            permanent,
            revision: 0,
        };
        (flag, enabled.is_some())
    }

    fn flag_type(&mut self, field: &str, item: &Item<'_>) -> Option<FlagType> {
        let name = self.string(field, item, "type = \"boolean\"")?;
        match serde_json::from_value::<FlagType>(Value::String(name.clone())) {
            Ok(kind) => Some(kind),
            Err(e) => {
                let message = unknown_value(&name, &backticked(&e.to_string()));
                self.damaged(field, item.span().start, message);
                None
            }
        }
    }

    fn date(&mut self, field: &str, item: &Item<'_>) -> Option<String> {
        match item.get_ref() {
            // Validation judges the text: a wrong date is reported with the flag's other problems.
            DeValue::String(s) => Some(s.to_string()),
            // `expires = 2027-03-31`, a TOML date without quotes, is what people write.
            DeValue::Datetime(d) if d.date.is_some() && d.time.is_none() && d.offset.is_none() => {
                Some(d.to_string())
            }
            other => {
                self.damaged(
                    field,
                    item.span().start,
                    format!(
                        "must be a date, e.g. expires = \"2027-03-31\"; found {}",
                        kind_of(other)
                    ),
                );
                // A stand-in, so validation does not also call it missing.
                Some("1970-01-01".into())
            }
        }
    }

    fn variants(&mut self, field: &str, item: &Item<'_>, kind: FlagType) -> BTreeMap<String, Value> {
        let mut variants = BTreeMap::new();
        let Some(table) = self.table(field, item, "variants = { on = true, off = false }") else {
            return variants;
        };
        for (name, value) in table {
            let at = join(field, name.get_ref());
            self.seen(&at, value);
            // A value that cannot be read keeps its name, so what refers to it still finds it.
            let value = self.json(&at, value).unwrap_or_else(|| stand_in(kind));
            variants.insert(name.get_ref().to_string(), value);
        }
        variants
    }

    fn allow(&mut self, field: &str, item: &Item<'_>) -> Option<AllowList> {
        let example = "allow = { variant = \"on\", keys = [\"alice\", \"bob\"] }";
        let table = self.table(field, item, example)?;
        let mut variant = None;
        let mut keys = BTreeSet::new();
        let mut keys_written = false;
        for (name, value) in self.fields(field, table, ALLOW_FIELDS, &[]) {
            let at = join(field, name);
            match name {
                "variant" => variant = self.string(&at, value, "variant = \"on\""),
                "keys" => {
                    keys_written = true;
                    let Some(list) = self.list(&at, value, "keys = [\"alice\", \"bob\"]") else {
                        continue;
                    };
                    for (i, key) in list.iter().enumerate() {
                        let at = format!("{at}[{i}]");
                        self.seen(&at, key);
                        if let Some(k) = self.string(&at, key, "\"alice\"") {
                            keys.insert(k);
                        }
                    }
                }
                _ => {}
            }
        }
        if !keys_written {
            self.missing(field, item.span().start, "keys", "keys = [\"alice\", \"bob\"]");
        }
        let variant = variant.or_else(|| {
            self.missing(field, item.span().start, "variant", "variant = \"on\"");
            None
        })?;
        Some(AllowList { variant, keys })
    }

    fn rules(&mut self, field: &str, item: &Item<'_>) -> Vec<Rule> {
        let example = "rules = [{ when = [{ attribute = \"country\", op = \"in\", value = [\"de\"] }], variant = \"on\" }]";
        let Some(list) = self.list(field, item, example) else {
            return Vec::new();
        };
        let mut rules = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            self.seen(&at, item);
            let Some(table) = self.table(&at, item, "{ when = [...], variant = \"on\" }") else {
                // A stand-in keeps the indices of the rules after it as written.
                rules.push(Rule {
                    when: Vec::new(),
                    variant: String::new(),
                });
                continue;
            };
            let mut when = None;
            let mut variant = None;
            for (name, value) in self.fields(&at, table, RULE_FIELDS, &[]) {
                let field = join(&at, name);
                match name {
                    "variant" => variant = self.string(&field, value, "variant = \"on\""),
                    "when" => when = Some(self.conditions(&field, value)),
                    _ => {}
                }
            }
            let when = when.unwrap_or_else(|| {
                self.missing(
                    &at,
                    item.span().start,
                    "when",
                    "when = [{ attribute = \"country\", op = \"in\", value = [\"de\"] }]",
                );
                Vec::new()
            });
            let variant = variant.unwrap_or_else(|| {
                self.missing(&at, item.span().start, "variant", "variant = \"on\"");
                String::new()
            });
            rules.push(Rule { when, variant });
        }
        rules
    }

    fn conditions(&mut self, field: &str, item: &Item<'_>) -> Vec<Condition> {
        let example = "when = [{ attribute = \"country\", op = \"in\", value = [\"de\"] }]";
        let Some(list) = self.list(field, item, example) else {
            return Vec::new();
        };
        let mut conditions = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            self.seen(&at, item);
            let stand_in = Condition {
                attribute: String::new(),
                op: Op::Equals,
                value: Value::Null,
            };
            let Some(table) = self.table(
                &at,
                item,
                "{ attribute = \"country\", op = \"in\", value = [\"de\"] }",
            ) else {
                conditions.push(stand_in);
                continue;
            };
            let mut attribute = None;
            let mut op = None;
            let mut value = None;
            for (name, v) in self.fields(&at, table, CONDITION_FIELDS, &[]) {
                let field = join(&at, name);
                match name {
                    "attribute" => attribute = self.string(&field, v, "attribute = \"country\""),
                    "op" => {
                        if let Some(text) = self.string(&field, v, "op = \"equals\"") {
                            match serde_json::from_value::<Op>(Value::String(text.clone())) {
                                Ok(o) => op = Some(o),
                                Err(e) => {
                                    let message = unknown_value(&text, &backticked(&e.to_string()));
                                    self.damaged(&field, v.span().start, message);
                                }
                            }
                        }
                    }
                    "value" => value = self.json(&field, v),
                    _ => {}
                }
            }
            let mut complete = true;
            for (name, found, example) in [
                ("attribute", attribute.is_some(), "attribute = \"country\""),
                ("op", op.is_some(), "op = \"equals\""),
                ("value", value.is_some(), "value = \"de\""),
            ] {
                if !found {
                    complete = false;
                    self.missing(&at, item.span().start, name, example);
                }
            }
            if !complete {
                // Validation would judge the condition by its stand-ins.
                self.masked.push(at.clone());
            }
            conditions.push(Condition {
                attribute: attribute.unwrap_or_default(),
                op: op.unwrap_or(Op::Equals),
                value: value.unwrap_or(Value::Null),
            });
        }
        conditions
    }

    fn split(&mut self, field: &str, item: &Item<'_>) -> Vec<SplitEntry> {
        let example = "split = [{ variant = \"on\", weight = 500 }, { variant = \"off\", weight = 9500 }]";
        let Some(list) = self.list(field, item, example) else {
            return Vec::new();
        };
        let mut split = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            self.seen(&at, item);
            let Some(table) = self.table(&at, item, "{ variant = \"on\", weight = 500 }") else {
                split.push(SplitEntry {
                    variant: String::new(),
                    weight: 1,
                });
                continue;
            };
            let mut variant = None;
            let mut weight = None;
            for (name, value) in self.fields(&at, table, SPLIT_FIELDS, &[]) {
                let field = join(&at, name);
                match name {
                    "variant" => variant = self.string(&field, value, "variant = \"on\""),
                    "weight" => weight = self.weight(&field, value),
                    _ => {}
                }
            }
            let variant = variant.unwrap_or_else(|| {
                self.missing(&at, item.span().start, "variant", "variant = \"on\"");
                String::new()
            });
            let weight = weight.unwrap_or_else(|| {
                self.missing(&at, item.span().start, "weight", "weight = 500 (basis points)");
                // Not 0: a stand-in must not make "every weight is 0" true.
                1
            });
            split.push(SplitEntry { variant, weight });
        }
        split
    }

    fn weight(&mut self, field: &str, item: &Item<'_>) -> Option<u32> {
        let weight = match item.get_ref() {
            DeValue::Integer(n) => u32::from_str_radix(n.as_str(), n.radix()).ok(),
            _ => None,
        };
        if weight.is_none() {
            self.damaged(
                field,
                item.span().start,
                format!(
                    "must be a whole number from 0 to {}, e.g. weight = 500 (basis points); found {}",
                    u32::MAX,
                    describe(item.get_ref())
                ),
            );
        }
        weight
    }

    /// A TOML value as the JSON value the flag holds; `None` (the field masked) when some part of
    /// it has no JSON form.
    fn json(&mut self, field: &str, item: &Item<'_>) -> Option<Value> {
        let value = self.json_value(field, item);
        if value.is_none() {
            self.masked.push(field.to_string());
        }
        value
    }

    fn json_value(&mut self, field: &str, item: &Item<'_>) -> Option<Value> {
        let at = item.span().start;
        match item.get_ref() {
            DeValue::String(s) => Some(Value::String(s.to_string())),
            DeValue::Boolean(b) => Some(Value::Bool(*b)),
            DeValue::Integer(n) => {
                let parsed = i64::from_str_radix(n.as_str(), n.radix())
                    .map(Value::from)
                    .or_else(|_| u64::from_str_radix(n.as_str(), n.radix()).map(Value::from));
                match parsed {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.damaged(field, at, format!("{n} is too large for a 64-bit integer"));
                        None
                    }
                }
            }
            DeValue::Float(x) => {
                let number = x
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64);
                match number {
                    Some(n) => Some(Value::Number(n)),
                    None => {
                        self.damaged(
                            field,
                            at,
                            format!(
                                "{} is not a finite number; JSON has no infinity or NaN",
                                x.as_str()
                            ),
                        );
                        None
                    }
                }
            }
            DeValue::Datetime(d) => {
                self.damaged(
                    field,
                    at,
                    format!("a TOML date or time has no JSON form; quote it to make it a string: \"{d}\""),
                );
                None
            }
            DeValue::Array(list) => {
                let mut values = Vec::with_capacity(list.len());
                let mut complete = true;
                for (i, v) in list.iter().enumerate() {
                    match self.json(&format!("{field}[{i}]"), v) {
                        Some(v) => values.push(v),
                        None => complete = false,
                    }
                }
                complete.then_some(Value::Array(values))
            }
            DeValue::Table(table) => {
                let mut map = serde_json::Map::new();
                let mut complete = true;
                for (k, v) in table {
                    match self.json(&join(field, k.get_ref()), v) {
                        Some(v) => {
                            map.insert(k.get_ref().to_string(), v);
                        }
                        None => complete = false,
                    }
                }
                complete.then_some(Value::Object(map))
            }
        }
    }
}

/// A value the flag's type accepts, in place of one that could not be read.
fn stand_in(kind: FlagType) -> Value {
    match kind {
        FlagType::Boolean => Value::Bool(false),
        FlagType::String => Value::String(String::new()),
        FlagType::Number => Value::from(0),
        FlagType::Object => Value::Object(serde_json::Map::new()),
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// The value itself when it is short, else its kind.
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::Integer(n) => n.to_string(),
        DeValue::Float(x) => x.as_str().to_string(),
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Boolean(b) => b.to_string(),
        other => kind_of(other).to_string(),
    }
}

/// The words between backticks of a serde message, past the first (the offending word):
/// "unknown variant `x`, expected one of `a`, `b`" gives `a`, `b`.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn unknown_field(name: &str, expected: &[&str]) -> String {
    match suggest(name, expected) {
        Some(near) => format!("unknown field; did you mean `{near}`?"),
        None => format!(
            "unknown field; remove it, or use one of the fields of this table: {}",
            list(expected)
        ),
    }
}

fn unknown_value(name: &str, expected: &[String]) -> String {
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let near = typos(name, expected.iter().copied());
    if near.is_empty() {
        format!("unknown value `{name}`; use one of {}", list(&expected))
    } else {
        format!("unknown value `{name}`; did you mean {}?", list_or(&near))
    }
}

fn list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn list_or(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or `{last}`", list(rest)),
        _ => list(words),
    }
}

/// The candidate closest to `name`, if it is close enough to be a typo; the first of them when
/// several are as close.
fn suggest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    typos(name, candidates.iter().copied()).first().copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every problem of `text`, as the CLI prints them.
    fn problems(text: &str) -> Vec<String> {
        match parse(text, "flags.toml") {
            Ok(flags) => panic!("expected problems, parsed {flags:#?}"),
            Err(e) => e.problems.iter().map(|p| p.to_string_in("flags.toml")).collect(),
        }
    }

    const GOOD: &str = r#"
[[flag]]
key = "new-checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
allow = { variant = "on", keys = ["alice", "bob"] }
rules = [
  { when = [{ attribute = "app_version", op = "semver_ge", value = "2.3.0" },
            { attribute = "country", op = "in", value = ["de", "fr"] }], variant = "on" },
]
split = [{ variant = "on", weight = 500 }, { variant = "off", weight = 9_500 }]
owner = "team-payments"
description = "The new checkout flow"
expires = "2027-03-31"

[[flag]]
key = "limits"
type = "object"
variants = { small = { max = 10, ratio = 0.5 }, big = { max = 0x100, tags = ["a"] } }
default_variant = "small"
enabled = false
owner = "team-core"
description = "How much a user may do"
permanent = "the operational limit switch"
"#;

    #[test]
    fn a_file_reads_as_serde_reads_its_flags() {
        #[derive(serde::Deserialize)]
        struct Document {
            flag: Vec<Flag>,
        }
        let flags = parse(GOOD, "flags.toml").unwrap();
        let serde: Document = toml::from_str(GOOD).unwrap();
        let read: Vec<Flag> = flags.iter().map(|f| f.flag.clone()).collect();
        assert_eq!(read, serde.flag);
        assert_eq!(read[1].variants["big"]["max"], 256);
        assert_eq!(
            flags
                .iter()
                .map(|f| (f.flag.key.as_str(), f.states_enabled, f.flag.enabled, f.line))
                .collect::<Vec<_>>(),
            [("new-checkout", false, true, 2), ("limits", true, false, 17)]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_line() {
        let text = r#"
[[flag]]
key = "a"
type = "boolen"
variants = { on = true, off = 2027-01-01 }
default_variant = "of"
ownr = "x"
revision = 3
split = [
  { variant = "on", weight = -1 },
  { variant = "on", wieght = 3 },
]

[[flag]]
key = "a"
type = "string"
variants = { a = 1, b = "b" }
default_variant = "b"
rules = [{ when = [{ attribute = "v", op = "semver_gte", value = "1.0.0" }], variant = "c" }]
owner = "o"
description = "d"
expires = "2027-13-01"
"#;
        assert_eq!(
            problems(text),
            [
                "flags.toml:2: flag[0].description: missing: say what the flag switches",
                "flags.toml:2: flag[0].expires: missing: give the date by which the flag leaves the code \
                 (expires = \"2027-03-31\"), or permanent = \"why it stays\"",
                "flags.toml:4: flag[0].type: unknown value `boolen`; did you mean `boolean`?",
                "flags.toml:5: flag[0].variants.off: a TOML date or time has no JSON form; quote it to make \
                 it a string: \"2027-01-01\"",
                "flags.toml:6: flag[0].default_variant: \"of\" is not a variant of the flag; its variants: off, on",
                "flags.toml:7: flag[0].ownr: unknown field; did you mean `owner`?",
                "flags.toml:8: flag[0].revision: the server sets the revision; remove it from the file",
                "flags.toml:10: flag[0].split[0].weight: must be a whole number from 0 to 4294967295, \
                 e.g. weight = 500 (basis points); found -1",
                "flags.toml:11: flag[0].split[1].wieght: unknown field; did you mean `weight`?",
                "flags.toml:11: flag[0].split[1].variant: \"on\" is listed twice in the split; give each variant one weight",
                "flags.toml:15: flag[1].key: \"a\" is declared twice, here and in flag[0]; keep one of them",
                "flags.toml:17: flag[1].variants.a: 1 is not a string (the flag's type)",
                "flags.toml:19: flag[1].rules[0].when[0].op: unknown value `semver_gte`; did you mean \
                 `semver_gt` or `semver_ge`?",
                "flags.toml:19: flag[1].rules[0].variant: \"c\" is not a variant of the flag; its variants: a, b",
                "flags.toml:22: flag[1].expires: \"2027-13-01\" is not a date; write YYYY-MM-DD",
            ]
        );
    }

    #[test]
    fn values_of_the_wrong_type_say_what_to_write_and_are_not_judged_again() {
        let text = r#"[[flag]]
key = 7
type = "number"
variants = { few = 25, many = 1e400 }
default_variant = "few"
enabled = "yes"
allow = ["alice"]
rules = ["everyone", { when = [{ attribute = "plan" }], variant = "many" }]
split = { few = 1 }
owner = "web"
description = "Items per page"
expires = true
"#;
        assert_eq!(
            problems(text),
            [
                "flags.toml:2: flag[0].key: must be a string, e.g. key = \"new-checkout\"; found an integer",
                "flags.toml:4: flag[0].variants.many: 1e400 is not a finite number; JSON has no infinity or NaN",
                "flags.toml:6: flag[0].enabled: must be true or false; found a string",
                "flags.toml:7: flag[0].allow: must be a table, e.g. allow = { variant = \"on\", keys = \
                 [\"alice\", \"bob\"] }; found a list",
                "flags.toml:8: flag[0].rules[0]: must be a table, e.g. { when = [...], variant = \"on\" }; found a string",
                "flags.toml:8: flag[0].rules[1].when[0].op: missing: write op = \"equals\"",
                "flags.toml:8: flag[0].rules[1].when[0].value: missing: write value = \"de\"",
                "flags.toml:9: flag[0].split: must be a list, e.g. split = [{ variant = \"on\", weight = 500 }, \
                 { variant = \"off\", weight = 9500 }]; found a table",
                "flags.toml:12: flag[0].expires: must be a date, e.g. expires = \"2027-03-31\"; found a boolean",
            ]
        );
    }

    #[test]
    fn without_a_type_variants_are_not_judged_by_one() {
        let text = r#"[[flag]]
key = "banner"
variants = { red = "red", blue = 3 }
default_variant = "green"
owner = "web"
description = "Banner colour"
permanent = "branding"
"#;
        assert_eq!(
            problems(text),
            [
                "flags.toml:1: flag[0].type: missing: write type = \"boolean\" (or \"string\", \"number\", \"object\")",
                "flags.toml:4: flag[0].default_variant: \"green\" is not a variant of the flag; its variants: blue, red",
            ]
        );
    }

    #[test]
    fn an_unquoted_date_is_the_expiry_date() {
        let text = GOOD.replace("expires = \"2027-03-31\"", "expires = 2027-03-31");
        let flags = parse(&text, "flags.toml").unwrap();
        assert_eq!(flags[0].flag.expires.as_deref(), Some("2027-03-31"));
        let text = GOOD.replace("expires = \"2027-03-31\"", "expires = 2027-03-31T10:00:00Z");
        assert_eq!(
            problems(&text),
            ["flags.toml:15: flag[0].expires: must be a date, e.g. expires = \"2027-03-31\"; found a date-time"]
        );
    }

    #[test]
    fn a_syntax_error_is_the_one_problem_reported() {
        let text = "[[flag]]\nkey = \"a\"\nowner = \"x\nflavour = 3\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("flags.toml:3: toml: invalid basic string"),
            "{found:#?}"
        );
    }

    #[test]
    fn a_file_declares_at_least_one_flag() {
        for (text, wanted) in [
            (
                "",
                "flags.toml:1: flag: the file declares no flag; write one [[flag]] table per flag",
            ),
            (
                "flag = []",
                "flags.toml:1: flag: the file declares no flag; write one [[flag]] table per flag",
            ),
            (
                "[[flags]]\nkey = \"a\"",
                "flags.toml:1: flags: unknown field; did you mean `flag`?",
            ),
        ] {
            assert_eq!(problems(text), [wanted], "{text:?}");
        }
    }

    #[test]
    fn the_error_lists_every_problem_under_the_file() {
        let e = parse("[[flag]]\nkey = 1", "deploy/flags.toml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "deploy/flags.toml: 7 problems found:\n  deploy/flags.toml:1: flag[0].type: missing"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  deploy/flags.toml:2: flag[0].key: must be a string"),
            "{text}"
        );
    }
}
