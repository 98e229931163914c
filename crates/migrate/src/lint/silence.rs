//! `-- cutover:allow RULE-ID[, RULE-ID...]: REASON`, the comment that accepts a finding on the
//! statement after it. Only `--` comments are read (the scanner finds them, so one inside a
//! string is never taken for a silence). `--` may stand for the `:`, as in
//! `-- cutover:allow drop-column -- the column was never read`.

/// The directive that starts a silence.
pub(crate) const ALLOW: &str = "cutover:allow";

/// A silence comment taken apart. The ids are not checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allow<'a> {
    pub ids: Vec<&'a str>,
    /// Trimmed; empty when none was given.
    pub reason: &'a str,
}

/// The silence in a `--` comment's text (the `--` included), if it is one.
pub(crate) fn parse(comment: &str) -> Option<Allow<'_>> {
    let body = comment.strip_prefix("--")?.trim_start();
    let rest = body.strip_prefix(ALLOW)?;
    // `cutover:allowed` is not the directive.
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace) || rest.starts_with(':')) {
        return None;
    }
    let colon = rest.find(':').map(|at| (at, 1));
    let dashes = rest.find("--").map(|at| (at, 2));
    let separator = match (colon, dashes) {
        (Some(c), Some(d)) => Some(if c.0 < d.0 { c } else { d }),
        (c, d) => c.or(d),
    };
    let (ids, reason) = match separator {
        Some((at, len)) => (&rest[..at], rest[at + len..].trim()),
        None => (rest, ""),
    };
    Some(Allow {
        ids: ids
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|id| !id.is_empty())
            .collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow<'a>(ids: &[&'a str], reason: &'a str) -> Option<Allow<'a>> {
        Some(Allow {
            ids: ids.to_vec(),
            reason,
        })
    }

    #[test]
    fn silences_are_read_with_either_separator() {
        assert_eq!(
            parse("-- cutover:allow drop-column: never read since v12: see #41"),
            allow(&["drop-column"], "never read since v12: see #41")
        );
        assert_eq!(
            parse("--cutover:allow drop-table -- an empty scratch table"),
            allow(&["drop-table"], "an empty scratch table")
        );
        assert_eq!(
            parse("-- cutover:allow drop-table, access-exclusive-without-lock-timeout: tiny"),
            allow(&["drop-table", "access-exclusive-without-lock-timeout"], "tiny")
        );
    }

    #[test]
    fn a_missing_reason_or_rule_is_kept_for_the_caller_to_report() {
        assert_eq!(parse("-- cutover:allow drop-column"), allow(&["drop-column"], ""));
        assert_eq!(
            parse("-- cutover:allow drop-column:   "),
            allow(&["drop-column"], "")
        );
        assert_eq!(parse("-- cutover:allow: why"), allow(&[], "why"));
    }

    #[test]
    fn other_comments_are_not_silences() {
        assert_eq!(parse("-- drop the old column"), None);
        assert_eq!(parse("-- cutover:no-transaction"), None);
        assert_eq!(parse("-- cutover:allowed drop-column: x"), None);
    }
}
