//! A flag as users write it (`flags.toml`, the CLI) and as the store keeps it, and its
//! validation: every problem at once, each with its field.

use std::collections::{BTreeMap, BTreeSet};

use cutover_core::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};

/// The longest flag key, variant name or attribute name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The largest sum of a split's weights: the bucket is `(hash × total) >> 32`, which must not
/// overflow 64 bits (flagd's own weights are small integers too).
pub const MAX_SPLIT_TOTAL: u64 = 1 << 31;

/// A feature flag.
///
/// Evaluation order: a disabled flag (the kill switch) gives its default variant; then the allow
/// list; then the rules, first match wins; then the split; then the default variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: FlagType,
    /// Variant name → value; every value of the flag's type.
    pub variants: BTreeMap<String, serde_json::Value>,
    /// What a disabled flag, and a user no rule or split places, gets: the "off" variant.
    pub default_variant: String,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Targeting keys that always get one variant (testers, the team), before any rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AllowList>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Who gets which variant of those no rule placed, by a hash of flag key and targeting key
    /// (see [`crate::bucket`]). Empty: everyone gets the default variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitEntry>,
    /// Who answers for the flag: a person or a team.
    pub owner: String,
    pub description: String,
    /// The date by which the flag should be gone from the code (`YYYY-MM-DD`). Required unless
    /// the flag is `permanent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Why the flag stays for good (an operational kill switch, say). Set instead of `expires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<String>,
    /// Bumped by every change; set by the store, never by the user.
    #[serde(default)]
    pub revision: u64,
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagType {
    Boolean,
    String,
    Number,
    Object,
}

impl FlagType {
    fn accepts(self, value: &serde_json::Value) -> bool {
        match self {
            FlagType::Boolean => value.is_boolean(),
            FlagType::String => value.is_string(),
            FlagType::Number => value.is_number(),
            FlagType::Object => value.is_object(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            FlagType::Boolean => "boolean",
            FlagType::String => "string",
            FlagType::Number => "number",
            FlagType::Object => "object",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    pub variant: String,
    pub keys: BTreeSet<String>,
}

/// Users whose context meets every condition get `variant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub when: Vec<Condition>,
    pub variant: String,
}

/// `attribute op value`, read from the evaluation context (`targetingKey` included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub attribute: String,
    pub op: Op,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    StartsWith,
    EndsWith,
    Lt,
    Le,
    Gt,
    Ge,
    SemverEq,
    SemverLt,
    SemverLe,
    SemverGt,
    SemverGe,
}

impl Op {
    /// What kind of value the condition must be compared with.
    fn operand(self) -> Operand {
        match self {
            Op::Equals | Op::NotEquals => Operand::Scalar,
            Op::In | Op::NotIn => Operand::List,
            Op::StartsWith | Op::EndsWith => Operand::Text,
            Op::Lt | Op::Le | Op::Gt | Op::Ge => Operand::Number,
            Op::SemverEq | Op::SemverLt | Op::SemverLe | Op::SemverGt | Op::SemverGe => Operand::Version,
        }
    }
}

enum Operand {
    Scalar,
    List,
    Text,
    Number,
    Version,
}

/// One variant's share of a split, in any unit: only the ratios count (basis points are usual).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub variant: String,
    pub weight: u32,
}

/// Letters, digits, `_`, `-` and `.`: safe in a URL path, a header, a metric label and a shell.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Flag {
    /// Every problem of the flag; fields are named under `at` (`flag[3]`, or the key).
    pub fn problems(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut push = |field: String, message: String| errors.push(FieldError::new(field, message));
        if !valid_name(&self.key) {
            push(
                format!("{at}.key"),
                format!(
                    "{:?} must be 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.'",
                    self.key
                ),
            );
        }
        if self.variants.is_empty() {
            push(
                format!("{at}.variants"),
                "a flag needs at least one variant, e.g. variants = { on = true, off = false }".into(),
            );
        }
        for (name, value) in &self.variants {
            if !valid_name(name) {
                push(
                    format!("{at}.variants.{name}"),
                    format!("variant names are 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.'"),
                );
            }
            if !self.kind.accepts(value) {
                push(
                    format!("{at}.variants.{name}"),
                    format!("{value} is not a {} (the flag's type)", self.kind.name()),
                );
            }
        }
        let known: Vec<&str> = self.variants.keys().map(String::as_str).collect();
        let mut check_variant = |field: String, variant: &str| {
            if !self.variants.contains_key(variant) {
                push(
                    field,
                    format!(
                        "{variant:?} is not a variant of the flag; its variants: {}",
                        known.join(", ")
                    ),
                );
            }
        };
        check_variant(format!("{at}.default_variant"), &self.default_variant);
        if let Some(allow) = &self.allow {
            check_variant(format!("{at}.allow.variant"), &allow.variant);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            check_variant(format!("{at}.rules[{i}].variant"), &rule.variant);
        }
        for (i, entry) in self.split.iter().enumerate() {
            check_variant(format!("{at}.split[{i}].variant"), &entry.variant);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.when.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.rules[{i}].when"),
                    "a rule needs at least one condition; to give everyone a variant, use the split or the default variant",
                ));
            }
            for (j, condition) in rule.when.iter().enumerate() {
                if let Some(problem) = condition.problem() {
                    errors.push(FieldError::new(format!("{at}.rules[{i}].when[{j}]"), problem));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in self.split.iter().enumerate() {
            if !seen.insert(entry.variant.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.split[{i}].variant"),
                    format!(
                        "{:?} is listed twice in the split; give each variant one weight",
                        entry.variant
                    ),
                ));
            }
        }
        let total: u64 = self.split.iter().map(|e| u64::from(e.weight)).sum();
        if total > MAX_SPLIT_TOTAL {
            errors.push(FieldError::new(
                format!("{at}.split"),
                format!(
                    "the weights add up to {total}, more than {MAX_SPLIT_TOTAL}; only their ratios count, so use smaller ones (basis points: 10000 in all)"
                ),
            ));
        }
        if !self.split.is_empty() && self.split.iter().all(|e| e.weight == 0) {
            errors.push(FieldError::new(
                format!("{at}.split"),
                "every weight is 0; give at least one variant a weight, or remove the split",
            ));
        }
        if self.owner.trim().is_empty() {
            errors.push(FieldError::new(
                format!("{at}.owner"),
                "missing: name the person or team who answers for the flag",
            ));
        }
        if self.description.trim().is_empty() {
            errors.push(FieldError::new(
                format!("{at}.description"),
                "missing: say what the flag switches",
            ));
        }
        match (&self.expires, &self.permanent) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                format!("{at}.permanent"),
                "a flag is either temporary (expires) or permanent; remove one",
            )),
            (None, None) => errors.push(FieldError::new(
                format!("{at}.expires"),
                "missing: give the date by which the flag leaves the code (expires = \"2027-03-31\"), \
                 or permanent = \"why it stays\"",
            )),
            (Some(date), None) => {
                if date.parse::<jiff::civil::Date>().is_err() {
                    errors.push(FieldError::new(
                        format!("{at}.expires"),
                        format!("{date:?} is not a date; write YYYY-MM-DD"),
                    ));
                }
            }
            (None, Some(reason)) => {
                if reason.trim().is_empty() {
                    errors.push(FieldError::new(
                        format!("{at}.permanent"),
                        "say why the flag stays for good",
                    ));
                }
            }
        }
        errors
    }

    /// The flag if it has no problem, else all of them.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        ValidationErrors::check(self.problems(&format!("flag {}", self.key)))
    }

    /// The day the flag expires, if it does and the date is valid.
    pub fn expiry(&self) -> Option<jiff::civil::Date> {
        self.expires.as_deref().and_then(|d| d.parse().ok())
    }
}

impl Condition {
    fn problem(&self) -> Option<String> {
        if self.attribute.is_empty() || self.attribute.len() > MAX_NAME_LEN {
            return Some(format!("attribute must be 1 to {MAX_NAME_LEN} characters"));
        }
        let value = &self.value;
        let ok = match self.op.operand() {
            Operand::Scalar => value.is_string() || value.is_number() || value.is_boolean(),
            Operand::List => value.as_array().is_some_and(|list| {
                list.iter()
                    .all(|v| v.is_string() || v.is_number() || v.is_boolean())
            }),
            Operand::Text => value.is_string(),
            Operand::Number => value.is_number(),
            Operand::Version => value
                .as_str()
                .is_some_and(|v| semver::Version::parse(v.trim_start_matches('v')).is_ok()),
        };
        (!ok).then(|| {
            let wanted = match self.op.operand() {
                Operand::Scalar => "a string, number or boolean",
                Operand::List => "a list of strings, numbers or booleans",
                Operand::Text => "a string",
                Operand::Number => "a number",
                Operand::Version => "a semantic version such as \"2.3.0\"",
            };
            format!("{:?} compares with {wanted}, not {value}", self.op)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn flag() -> Flag {
        toml_flag(
            r#"
key = "new_checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "team-payments"
description = "The new checkout flow"
expires = "2027-03-31"
split = [{ variant = "on", weight = 100 }, { variant = "off", weight = 9900 }]
"#,
        )
    }

    fn toml_flag(text: &str) -> Flag {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_good_flag_has_no_problem() {
        assert_eq!(flag().problems("flag"), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        let mut f = flag();
        f.key = "bad key".into();
        f.variants.insert("maybe".into(), serde_json::json!("yes"));
        f.default_variant = "none".into();
        f.split.push(SplitEntry {
            variant: "on".into(),
            weight: 1,
        });
        f.rules.push(Rule {
            when: vec![Condition {
                attribute: "app_version".into(),
                op: Op::SemverGe,
                value: serde_json::json!("two"),
            }],
            variant: "on".into(),
        });
        f.owner = " ".into();
        f.expires = Some("next year".into());
        let problems: Vec<String> = f.problems("flag[0]").iter().map(ToString::to_string).collect();
        for wanted in [
            "flag[0].key",
            "flag[0].variants.maybe: \"yes\" is not a boolean",
            "flag[0].default_variant: \"none\" is not a variant",
            "flag[0].split[2].variant: \"on\" is listed twice",
            "flag[0].rules[0].when[0]: SemverGe compares with a semantic version",
            "flag[0].owner: missing",
            "flag[0].expires: \"next year\" is not a date",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(wanted)),
                "{wanted}: {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn weights_too_large_to_bucket_are_refused() {
        let mut f = flag();
        f.split = vec![
            SplitEntry {
                variant: "on".into(),
                weight: u32::MAX,
            },
            SplitEntry {
                variant: "off".into(),
                weight: u32::MAX,
            },
        ];
        let problems: Vec<String> = f.problems("f").iter().map(ToString::to_string).collect();
        assert!(
            problems[0].starts_with("f.split: the weights add up to 8589934590"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_flag_is_temporary_or_permanent_with_a_reason() {
        let mut f = flag();
        f.expires = None;
        assert!(f.problems("f")[0].to_string().contains("f.expires: missing"));
        f.permanent = Some("the payments kill switch".into());
        assert_eq!(f.problems("f"), vec![]);
        f.expires = Some("2027-01-01".into());
        assert!(f.problems("f")[0].to_string().contains("either temporary"));
    }
}
