//! Local evaluation of one flag for one evaluation context: pure, allocation-light, no I/O.

use serde_json::{Map, Value};

use crate::bucket;
use crate::flag::{Condition, Flag, Op};

/// The context attribute holding the user's key (OpenFeature's name for it).
pub const TARGETING_KEY: &str = "targetingKey";

/// Why a flag evaluated to its variant. The names are OpenFeature's resolution reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The flag has no targeting and no split: everyone gets the default variant.
    Static,
    /// The allow list or a rule placed the user.
    TargetingMatch,
    /// The split placed the user, by the hash of flag key and targeting key.
    Split,
    /// The flag is killed: the default variant for everyone.
    Disabled,
    /// The flag has targeting, but nothing placed this user: the default variant.
    Default,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
        }
    }
}

/// A successful evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'f> {
    pub variant: &'f str,
    pub value: &'f Value,
    pub reason: Reason,
}

/// Why a flag could not be evaluated for a context: OpenFeature's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The flag splits users by their key and the context has none.
    #[error("the flag splits users by their targeting key, and the context has no targetingKey")]
    TargetingKeyMissing,
    /// The context is not what an evaluation context must be.
    #[error("invalid evaluation context: {0}")]
    InvalidContext(String),
    /// The flag names a variant it does not have (a flag that skipped validation).
    #[error("the flag is inconsistent: {0}")]
    General(String),
}

/// Evaluates `flag` for `context` (the evaluation context's attributes, `targetingKey` among
/// them). A disabled flag gives its default variant whatever the context.
pub fn evaluate<'f>(flag: &'f Flag, context: &Map<String, Value>) -> Result<Resolution<'f>, EvalError> {
    let targeting_key = match context.get(TARGETING_KEY) {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key.as_str()),
        Some(other) => {
            return Err(EvalError::InvalidContext(format!(
                "targetingKey must be a string, not {other}"
            )))
        }
    };
    if !flag.enabled {
        return resolve(flag, &flag.default_variant, Reason::Disabled);
    }
    if let (Some(allow), Some(key)) = (&flag.allow, targeting_key) {
        if allow.keys.contains(key) {
            return resolve(flag, &allow.variant, Reason::TargetingMatch);
        }
    }
    for rule in &flag.rules {
        if rule.when.iter().all(|c| matches(c, context)) {
            return resolve(flag, &rule.variant, Reason::TargetingMatch);
        }
    }
    if !flag.split.is_empty() {
        let key = targeting_key.ok_or(EvalError::TargetingKeyMissing)?;
        if let Some(i) = bucket::pick(&flag.key, key, flag.split.iter().map(|e| e.weight)) {
            return resolve(flag, &flag.split[i].variant, Reason::Split);
        }
    }
    let targeted = flag.allow.is_some() || !flag.rules.is_empty() || !flag.split.is_empty();
    resolve(
        flag,
        &flag.default_variant,
        if targeted { Reason::Default } else { Reason::Static },
    )
}

fn resolve<'f>(flag: &'f Flag, variant: &str, reason: Reason) -> Result<Resolution<'f>, EvalError> {
    match flag.variants.get_key_value(variant) {
        Some((name, value)) => Ok(Resolution {
            variant: name,
            value,
            reason,
        }),
        None => Err(EvalError::General(format!(
            "flag {} has no variant {variant:?}",
            flag.key
        ))),
    }
}

/// Whether the context meets the condition. A missing attribute, or one of another type than
/// the condition compares, meets no condition but `not_equals` and `not_in`.
fn matches(condition: &Condition, context: &Map<String, Value>) -> bool {
    let actual = context.get(&condition.attribute);
    let wanted = &condition.value;
    match condition.op {
        Op::Equals => actual.is_some_and(|a| same(a, wanted)),
        Op::NotEquals => !actual.is_some_and(|a| same(a, wanted)),
        Op::In => actual.is_some_and(|a| listed(a, wanted)),
        Op::NotIn => !actual.is_some_and(|a| listed(a, wanted)),
        Op::StartsWith => text(actual)
            .zip(wanted.as_str())
            .is_some_and(|(a, w)| a.starts_with(w)),
        Op::EndsWith => text(actual)
            .zip(wanted.as_str())
            .is_some_and(|(a, w)| a.ends_with(w)),
        Op::Lt => number(actual).zip(wanted.as_f64()).is_some_and(|(a, w)| a < w),
        Op::Le => number(actual).zip(wanted.as_f64()).is_some_and(|(a, w)| a <= w),
        Op::Gt => number(actual).zip(wanted.as_f64()).is_some_and(|(a, w)| a > w),
        Op::Ge => number(actual).zip(wanted.as_f64()).is_some_and(|(a, w)| a >= w),
        Op::SemverEq => versions(actual, wanted).is_some_and(|(a, w)| a == w),
        Op::SemverLt => versions(actual, wanted).is_some_and(|(a, w)| a < w),
        Op::SemverLe => versions(actual, wanted).is_some_and(|(a, w)| a <= w),
        Op::SemverGt => versions(actual, wanted).is_some_and(|(a, w)| a > w),
        Op::SemverGe => versions(actual, wanted).is_some_and(|(a, w)| a >= w),
    }
}

/// Equal as JSON scalars; numbers by value, so `3` equals `3.0`.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn listed(a: &Value, list: &Value) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|item| same(a, item)))
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// A number, or a string holding one (contexts often carry numbers as text).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn version(text: &str) -> Option<semver::Version> {
    semver::Version::parse(text.trim().trim_start_matches('v')).ok()
}

fn versions(actual: Option<&Value>, wanted: &Value) -> Option<(semver::Version, semver::Version)> {
    Some((version(text(actual)?)?, version(wanted.as_str()?)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::flag::{AllowList, FlagType, Rule, SplitEntry};

    fn boolean_flag(on_bp: u32) -> Flag {
        Flag {
            key: "new_checkout".into(),
            kind: FlagType::Boolean,
            variants: BTreeMap::from([("on".into(), json!(true)), ("off".into(), json!(false))]),
            default_variant: "off".into(),
            enabled: true,
            allow: None,
            rules: Vec::new(),
            split: vec![
                SplitEntry {
                    variant: "on".into(),
                    weight: on_bp,
                },
                SplitEntry {
                    variant: "off".into(),
                    weight: 10_000 - on_bp,
                },
            ],
            owner: "team-payments".into(),
            description: "The new checkout".into(),
            expires: Some("2027-03-31".into()),
            permanent: None,
            revision: 1,
        }
    }

    fn user(key: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(TARGETING_KEY.into(), json!(key));
        m
    }

    fn condition(attribute: &str, op: Op, value: Value) -> Condition {
        Condition {
            attribute: attribute.into(),
            op,
            value,
        }
    }

    #[test]
    fn a_killed_flag_gives_its_default_to_everyone() {
        let mut f = boolean_flag(10_000);
        f.enabled = false;
        f.allow = Some(AllowList {
            variant: "on".into(),
            keys: ["tester".to_string()].into(),
        });
        for key in ["tester", "someone"] {
            let r = evaluate(&f, &user(key)).unwrap();
            assert_eq!(
                (r.variant, r.value, r.reason),
                ("off", &json!(false), Reason::Disabled)
            );
        }
        // even without a targeting key
        assert_eq!(evaluate(&f, &Map::new()).unwrap().reason, Reason::Disabled);
    }

    #[test]
    fn the_allow_list_then_the_rules_in_order_then_the_split() {
        let mut f = boolean_flag(0);
        f.allow = Some(AllowList {
            variant: "on".into(),
            keys: ["tester".to_string()].into(),
        });
        f.rules = vec![
            Rule {
                when: vec![condition("email", Op::EndsWith, json!("@example.com"))],
                variant: "on".into(),
            },
            Rule {
                when: vec![
                    condition("plan", Op::In, json!(["gold", "platinum"])),
                    condition("app_version", Op::SemverGe, json!("2.3.0")),
                ],
                variant: "on".into(),
            },
        ];
        let eval = |ctx: Value| {
            let r = evaluate(&f, ctx.as_object().unwrap()).unwrap();
            (r.variant, r.reason)
        };
        assert_eq!(
            eval(json!({"targetingKey": "tester"})),
            ("on", Reason::TargetingMatch)
        );
        assert_eq!(
            eval(json!({"targetingKey": "u1", "email": "a@example.com"})),
            ("on", Reason::TargetingMatch)
        );
        assert_eq!(
            eval(json!({"targetingKey": "u1", "plan": "gold", "app_version": "2.10.0"})),
            ("on", Reason::TargetingMatch),
            "2.10.0 >= 2.3.0 as versions, not as text"
        );
        assert_eq!(
            eval(json!({"targetingKey": "u1", "plan": "gold", "app_version": "2.2.9"})),
            ("off", Reason::Split),
            "every condition of a rule must hold"
        );
        assert_eq!(eval(json!({"targetingKey": "u1"})), ("off", Reason::Split));
    }

    #[test]
    fn each_operator_compares_its_kind_of_value() {
        let ctx = json!({"country": "DE", "age": 30, "score": "7.5", "beta": true, "v": "v1.2.3"});
        let ctx = ctx.as_object().unwrap();
        for (c, expected) in [
            (condition("country", Op::Equals, json!("DE")), true),
            (condition("country", Op::NotEquals, json!("DE")), false),
            (condition("missing", Op::NotEquals, json!("DE")), true),
            (condition("country", Op::In, json!(["FR", "DE"])), true),
            (condition("country", Op::NotIn, json!(["FR", "DE"])), false),
            (condition("missing", Op::NotIn, json!(["FR"])), true),
            (condition("country", Op::StartsWith, json!("D")), true),
            (condition("age", Op::StartsWith, json!("3")), false),
            (condition("age", Op::Ge, json!(30)), true),
            (condition("age", Op::Gt, json!(30)), false),
            (condition("age", Op::Equals, json!(30.0)), true),
            (condition("score", Op::Lt, json!(8)), true),
            (condition("beta", Op::Equals, json!(true)), true),
            (condition("v", Op::SemverEq, json!("1.2.3")), true),
            (condition("v", Op::SemverLt, json!("1.10.0")), true),
            (condition("country", Op::SemverLt, json!("1.0.0")), false),
            (condition("missing", Op::Lt, json!(1)), false),
        ] {
            assert_eq!(matches(&c, ctx), expected, "{c:?}");
        }
    }

    #[test]
    fn a_split_needs_a_targeting_key_and_a_flag_without_targeting_is_static() {
        let f = boolean_flag(5_000);
        assert_eq!(evaluate(&f, &Map::new()), Err(EvalError::TargetingKeyMissing));
        let bad = json!({"targetingKey": 42});
        assert!(matches!(
            evaluate(&f, bad.as_object().unwrap()),
            Err(EvalError::InvalidContext(_))
        ));
        let mut plain = boolean_flag(0);
        plain.split.clear();
        let r = evaluate(&plain, &Map::new()).unwrap();
        assert_eq!((r.variant, r.reason), ("off", Reason::Static));
    }

    /// A million users split 12.34 % / 87.66 % land within 0.2 percentage points of it.
    #[test]
    fn a_million_users_follow_the_configured_split() {
        let f = boolean_flag(1_234);
        let on = (0..1_000_000)
            .filter(|i| evaluate(&f, &user(&format!("user-{i}"))).unwrap().variant == "on")
            .count();
        let share = on as f64 / 1_000_000.0;
        assert!((share - 0.1234).abs() < 0.002, "{share}");
    }

    proptest! {
        /// The same user gets the same variant every time, and raising the new variant's share
        /// only adds users to it: nobody who had it loses it.
        #[test]
        fn buckets_are_stable_and_ramps_monotone(
            key in ".{0,40}",
            low in 0u32..=10_000,
            high in 0u32..=10_000,
        ) {
            let (low, high) = (low.min(high), low.max(high));
            let ctx = user(&key);
            let (at, above) = (boolean_flag(low), boolean_flag(high));
            let at_low = evaluate(&at, &ctx).unwrap().variant;
            prop_assert_eq!(at_low, evaluate(&at, &ctx).unwrap().variant);
            if at_low == "on" {
                prop_assert_eq!(evaluate(&above, &ctx).unwrap().variant, "on");
            }
        }
    }
}
