//! Deploy-freeze windows: weekdays and a time range in a time zone.

use cutover_core::{FieldError, Timestamp};
use jiff::civil::{Time, Weekday};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// Shown in the refusal ("weekend freeze").
    #[serde(default)]
    pub name: Option<String>,
    /// `mon` … `sun`; empty means every day. A window that crosses midnight belongs to the day
    /// it starts on.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, inclusive.
    pub from: String,
    /// `HH:MM`, exclusive; earlier than `from` for a window that crosses midnight.
    pub to: String,
    /// IANA time zone such as `Europe/Berlin`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

fn weekday(name: &str) -> Option<Weekday> {
    Some(match name.to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

fn time(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

impl FreezeWindow {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, d) in self.days.iter().enumerate() {
            if weekday(d).is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}days[{i}]"),
                    format!("{d:?} is not a weekday (mon, tue, … sun)"),
                ));
            }
        }
        for (field, value) in [("from", &self.from), ("to", &self.to)] {
            if time(value).is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}{field}"),
                    format!("{value:?} is not a time of day as HH:MM"),
                ));
            }
        }
        if jiff::tz::TimeZone::get(&self.timezone).is_err() {
            errors.push(FieldError::new(
                format!("{prefix}timezone"),
                format!(
                    "{:?} is not a known time zone; use an IANA name such as Europe/Berlin",
                    self.timezone
                ),
            ));
        }
        errors
    }

    fn describe(&self) -> String {
        let days = if self.days.is_empty() {
            "every day".to_string()
        } else {
            self.days.join(",")
        };
        let name = self
            .name
            .as_deref()
            .map(|n| format!("{n:?} "))
            .unwrap_or_default();
        format!("{name}({days} {}–{} {})", self.from, self.to, self.timezone)
    }

    /// Is `now` inside this window? Invalid windows never match (validation reports them).
    pub fn contains(&self, now: Timestamp) -> bool {
        let (Some(from), Some(to)) = (time(&self.from), time(&self.to)) else {
            return false;
        };
        let Ok(ts) = jiff::Timestamp::from_millisecond(now.as_millis() as i64) else {
            return false;
        };
        let Ok(tz) = jiff::tz::TimeZone::get(&self.timezone) else {
            return false;
        };
        let local = ts.to_zoned(tz);
        let day_ok = |d: Weekday| self.days.is_empty() || self.days.iter().any(|n| weekday(n) == Some(d));
        let t = local.time();
        if from <= to {
            day_ok(local.weekday()) && t >= from && t < to
        } else {
            (day_ok(local.weekday()) && t >= from) || (day_ok(local.weekday().previous()) && t < to)
        }
    }
}

/// The first window `now` falls in, described for a refusal message.
pub fn active_freeze(windows: &[FreezeWindow], now: Timestamp) -> Option<String> {
    windows
        .iter()
        .find(|w| w.contains(now))
        .map(FreezeWindow::describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        let ts: jiff::Timestamp = rfc3339.parse().unwrap();
        Timestamp(ts.as_millisecond() as u64)
    }

    #[test]
    fn windows_honour_days_times_zones_and_midnight() {
        let weekend = FreezeWindow {
            name: Some("weekend".into()),
            days: vec!["sat".into(), "sun".into()],
            from: "00:00".into(),
            to: "23:59".into(),
            timezone: "Europe/Berlin".into(),
        };
        // 2026-11-21 is a Saturday.
        assert!(weekend.contains(at("2026-11-21T12:00:00Z")));
        assert!(!weekend.contains(at("2026-11-20T12:00:00Z")));
        // Friday 23:30 UTC is Saturday 00:30 in Berlin.
        assert!(weekend.contains(at("2026-11-20T23:30:00Z")));
        let nightly = FreezeWindow {
            name: None,
            days: vec!["fri".into()],
            from: "22:00".into(),
            to: "06:00".into(),
            timezone: "UTC".into(),
        };
        assert!(nightly.contains(at("2026-11-20T23:00:00Z")), "Friday night");
        assert!(
            nightly.contains(at("2026-11-21T05:00:00Z")),
            "Saturday early morning belongs to Friday's window"
        );
        assert!(
            !nightly.contains(at("2026-11-21T23:00:00Z")),
            "Saturday night is not frozen"
        );
        assert_eq!(
            active_freeze(&[nightly, weekend], at("2026-11-22T10:00:00Z")).as_deref(),
            Some("\"weekend\" (sat,sun 00:00–23:59 Europe/Berlin)")
        );
    }

    #[test]
    fn invalid_windows_are_reported() {
        let w = FreezeWindow {
            name: None,
            days: vec!["someday".into()],
            from: "25:00".into(),
            to: "1".into(),
            timezone: "Mars/Olympus".into(),
        };
        let fields: Vec<String> = w
            .validate("app[0].freeze[0].")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "app[0].freeze[0].days[0]",
                "app[0].freeze[0].from",
                "app[0].freeze[0].to",
                "app[0].freeze[0].timezone"
            ]
        );
    }
}
