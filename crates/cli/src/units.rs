//! Durations as people write them on a command line.

/// `900` (seconds), `250ms`, `90s`, `1.5m`, `15m`, `1h30m`; in milliseconds, up to 30 days.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad =
        || format!("{text:?} is not a duration; write e.g. 500ms, 60s, 15m, 1h30m, or a number of seconds");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let factor = match unit {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            // A bare number is seconds, alone only: `10m5` is a typo, not ten minutes and five seconds.
            "" if rest.len() == text.len() => 1000.0,
            "" => return Err(bad()),
            other => return Err(format!("unknown unit {other:?} in {text:?}; use ms, s, m or h")),
        };
        total += number * factor;
        rest = after;
    }
    if !total.is_finite() || !(0.0..=30.0 * 86_400_000.0).contains(&total) {
        return Err(format!("{text:?} is out of range (up to 30 days)"));
    }
    Ok(total.round() as u64)
}

/// [`parse_millis`] as a `Duration`, for clap.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    parse_millis(text).map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_millis("900"), Ok(900_000));
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("90s"), Ok(90_000));
        assert_eq!(parse_millis("1.5m"), Ok(90_000));
        assert_eq!(parse_millis("15m"), Ok(900_000));
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        for bad in ["", "m", "15x", "10m5", "-3", "soon", "5d", "1000h"] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
    }
}
