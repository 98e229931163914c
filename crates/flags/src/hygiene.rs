//! Flag hygiene: which flags should leave the code. A flag is stale when it is past its `expires`
//! date, or when it has settled: every user gets one variant (it is killed, or its split gives
//! everyone the same variant and nothing targets anyone) and it has not changed for a number of
//! days. Permanent flags are never stale by date, but can settle like any other (a kill switch
//! left killed for months is worth a look).

use cutover_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::flag::Flag;

/// Why a flag is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Staleness {
    /// Past its `expires` date: the team said it would be gone by then.
    Expired { expires: String, days_over: i64 },
    /// Every user gets `variant`, unchanged for `days` days: the flag has done its job.
    Settled { variant: String, days: u64 },
}

impl Staleness {
    pub fn kind(&self) -> &'static str {
        match self {
            Staleness::Expired { .. } => "expired",
            Staleness::Settled { .. } => "settled",
        }
    }

    /// One sentence for people.
    pub fn describe(&self) -> String {
        match self {
            Staleness::Expired { expires, days_over } => {
                format!("expired on {expires} ({days_over} days ago): remove it from the code, or move `expires`")
            }
            Staleness::Settled { variant, days } => format!(
                "every user has got {variant:?} for {days} days: make that the code's behaviour and remove the flag"
            ),
        }
    }
}

/// The variant every user gets, if the flag gives everyone the same one.
pub fn uniform_variant(flag: &Flag) -> Option<&str> {
    if !flag.enabled {
        return Some(&flag.default_variant);
    }
    if flag.allow.as_ref().is_some_and(|a| !a.keys.is_empty()) || !flag.rules.is_empty() {
        return None;
    }
    let mut weighted = flag.split.iter().filter(|e| e.weight > 0);
    match (weighted.next(), weighted.next()) {
        (None, _) => Some(&flag.default_variant),
        (Some(only), None) => Some(&only.variant),
        _ => None,
    }
}

const DAY_MS: u64 = 86_400_000;

/// Whether `flag` is stale at `now` (`today` is its date), given when it last changed.
pub fn staleness(
    flag: &Flag,
    last_changed: Option<Timestamp>,
    now: Timestamp,
    today: jiff::civil::Date,
    settled_after_days: u32,
) -> Option<Staleness> {
    if let (Some(expiry), Some(expires)) = (flag.expiry(), &flag.expires) {
        if expiry < today {
            let days_over = (today - expiry).get_days().into();
            return Some(Staleness::Expired {
                expires: expires.clone(),
                days_over,
            });
        }
    }
    let variant = uniform_variant(flag)?;
    let days = now.millis_since(last_changed?) / DAY_MS;
    (days >= u64::from(settled_after_days)).then(|| Staleness::Settled {
        variant: variant.to_string(),
        days,
    })
}

/// The civil date (UTC) of `at`.
pub fn date_of(at: Timestamp) -> jiff::civil::Date {
    let ms = i64::try_from(at.as_millis()).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn flag(split: serde_json::Value) -> Flag {
        serde_json::from_value(serde_json::json!({
            "key": "f", "type": "boolean", "variants": { "on": true, "off": false },
            "default_variant": "off", "owner": "t", "description": "d", "expires": "2027-03-31",
            "split": split,
        }))
        .unwrap()
    }

    fn day(date: &str) -> (Timestamp, jiff::civil::Date) {
        let d: jiff::civil::Date = date.parse().unwrap();
        let ms = d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond();
        (Timestamp(ms as u64), d)
    }

    #[test]
    fn a_flag_past_its_date_is_expired() {
        let (now, today) = day("2027-04-02");
        let s = staleness(&flag(serde_json::json!([])), None, now, today, 30).unwrap();
        assert_eq!(
            s,
            Staleness::Expired {
                expires: "2027-03-31".into(),
                days_over: 2
            }
        );
        let (now, today) = day("2027-03-31");
        assert_eq!(
            staleness(&flag(serde_json::json!([])), None, now, today, 30),
            None
        );
    }

    #[test]
    fn a_flag_at_100_or_0_percent_for_long_has_settled() {
        let (changed, _) = day("2026-10-01");
        let (now, today) = day("2026-12-01");
        let full = flag(
            serde_json::json!([{ "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 0 }]),
        );
        assert_eq!(
            staleness(&full, Some(changed), now, today, 30),
            Some(Staleness::Settled {
                variant: "on".into(),
                days: 61
            })
        );
        assert_eq!(staleness(&full, Some(changed), now, today, 90), None);
        let half = flag(
            serde_json::json!([{ "variant": "on", "weight": 5000 }, { "variant": "off", "weight": 5000 }]),
        );
        assert_eq!(staleness(&half, Some(changed), now, today, 30), None);
        let mut killed = half.clone();
        killed.enabled = false;
        assert_eq!(uniform_variant(&killed), Some("off"));
        // Unknown last change: not settled, whatever the split.
        assert_eq!(staleness(&full, None, now, today, 30), None);
    }
}
