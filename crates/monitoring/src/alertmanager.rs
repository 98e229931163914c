//! The alert gate: no rollout starts while an alert that matters is firing.
//!
//! [`AlertGate::check`] asks Alertmanager (API v2) for the alerts that are active, not silenced
//! and not inhibited, and that match every configured matcher (Alertmanager ANDs them). Each
//! one returned blocks. A silence is how a person says "go ahead anyway"; a resolved alert
//! (its end time passed) no longer counts.
//!
//! Matchers use Alertmanager's syntax, one per entry: `severity="page"`, `team!="sandbox"`,
//! `alertname=~"High.*"`, `env!~"dev|test"` (regexes are anchored, as in Alertmanager). They are
//! checked when the gate is built, so a typo is reported at configuration time, naming the
//! matcher, rather than as a gate that never blocks. With no matchers every active alert blocks.
//!
//! An error from `check` means the gate could not be evaluated (Alertmanager unreachable, ...):
//! the caller should treat that as "not safe to start" and say so, not as "no alerts".

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::{self, Exhausted, RequestFailure, RetryPolicy};

/// How many alerts [`describe`] names before summing up the rest.
const DESCRIBE_MAX_ALERTS: usize = 10;

/// Where Alertmanager is and which alerts block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertGateConfig {
    /// Base URL of Alertmanager, e.g. `http://127.0.0.1:9093` (with the path prefix, if any).
    pub url: String,
    /// Alertmanager matchers; an alert blocks when it matches all of them.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Timeout of one attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first when Alertmanager is unreachable or failing.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before the first retry; doubles for each further one (10 s at most).
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff_ms() -> u64 {
    200
}

impl AlertGateConfig {
    /// The defaults (2 s timeout, 2 retries from 200 ms) for `url` and `matchers`.
    pub fn new(url: impl Into<String>, matchers: &[&str]) -> Self {
        Self {
            url: url.into(),
            matchers: matchers.iter().map(|m| (*m).to_owned()).collect(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
        }
    }

    /// Every problem with the settings.
    pub fn validate(&self) -> Result<(), Vec<GateError>> {
        let mut errors = Vec::new();
        if let Err(reason) = http::base_url(&self.url) {
            errors.push(GateError::Config {
                field: "url".to_owned(),
                reason,
            });
        }
        for m in &self.matchers {
            if let Err(e) = validate_matcher(m) {
                errors.push(e);
            }
        }
        if self.timeout_ms == 0 {
            errors.push(GateError::Config {
                field: "timeout_ms".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Why the gate could not be built or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    #[error(
        "alert gate matcher {matcher:?} is invalid: {reason}; write it as name=\"value\" with one of \
         the operators = != =~ !~, e.g. severity=\"page\""
    )]
    InvalidMatcher { matcher: String, reason: String },
    #[error("alert gate setting `{field}`: {reason}")]
    Config { field: String, reason: String },
    #[error(
        "asking Alertmanager at {url} for firing alerts failed after {attempts} attempt(s): \
         {last_error}; {hint}",
        hint = .last_error.hint()
    )]
    Query {
        url: String,
        attempts: u32,
        last_error: RequestFailure,
    },
}

/// A matcher's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One parsed matcher: `name op "value"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl fmt::Display for Matcher {
    /// The canonical form, as sent to Alertmanager: the value always quoted and escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.as_str())?;
        for c in self.value.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

impl std::str::FromStr for Matcher {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_matcher(s)
    }
}

/// Parses an Alertmanager matcher (`name op "value"`, the value may also be unquoted if it has
/// no spaces, quotes, commas or braces); the error names the matcher and what is wrong.
pub fn validate_matcher(matcher: &str) -> Result<Matcher, GateError> {
    parse_matcher(matcher).map_err(|reason| GateError::InvalidMatcher {
        matcher: matcher.to_owned(),
        reason,
    })
}

fn parse_matcher(s: &str) -> Result<Matcher, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("it is empty".to_owned());
    }
    if s.starts_with('{') {
        return Err("give one matcher per entry, without braces".to_owned());
    }
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if name.is_empty() {
        return Err("it does not start with a label name".to_owned());
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("label name {name:?} starts with a digit"));
    }
    let rest = s[name_end..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (MatchOp::Regex, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (MatchOp::Equal, r)
    } else if rest.is_empty() {
        return Err(format!(
            "label name {name:?} is not followed by an operator and a value"
        ));
    } else {
        return Err(format!(
            "{:?} after the label name is not an operator",
            rest.chars().take(2).collect::<String>()
        ));
    };
    let rest = rest.trim_start();
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        loop {
            match chars.next() {
                None => return Err("the value's closing quote is missing".to_owned()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    Some(c) => return Err(format!("unknown escape \\{c} in the value")),
                    None => return Err("the value ends with a lone backslash".to_owned()),
                },
                Some(c) => value.push(c),
            }
        }
        let trailing = chars.as_str().trim();
        if !trailing.is_empty() {
            return Err(format!(
                "{trailing:?} follows the value; give one matcher per entry"
            ));
        }
        value
    } else {
        if let Some(c) = rest.chars().find(|&c| c.is_whitespace() || "\"'{},".contains(c)) {
            return Err(format!(
                "the unquoted value {rest:?} contains {c:?}; put the value in double quotes"
            ));
        }
        rest.to_owned()
    };
    Ok(Matcher {
        name: name.to_owned(),
        op,
        value,
    })
}

/// An alert that blocks a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAlert {
    /// The `alertname` label (`<unnamed>` if it has none).
    pub name: String,
    /// All labels, `alertname` included.
    pub labels: BTreeMap<String, String>,
    /// When it started firing, as Alertmanager reports it (RFC 3339).
    pub starts_at: String,
    /// The `summary` annotation, if any.
    pub summary: Option<String>,
}

/// Asks Alertmanager whether anything blocks a rollout; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AlertGate {
    config: AlertGateConfig,
    base: String,
    matchers: Vec<Matcher>,
    client: reqwest::Client,
}

impl AlertGate {
    /// Checks `config` (URL and every matcher) and builds the client. On error, the first
    /// problem; use [`AlertGateConfig::validate`] for all of them.
    pub fn new(config: AlertGateConfig) -> Result<Self, GateError> {
        if let Err(mut errors) = config.validate() {
            return Err(errors.remove(0));
        }
        let config_error = |reason| GateError::Config {
            field: "url".to_owned(),
            reason,
        };
        let base = http::base_url(&config.url).map_err(config_error)?;
        let matchers = config
            .matchers
            .iter()
            .map(|m| validate_matcher(m))
            .collect::<Result<_, _>>()?;
        let client = http::client(Duration::from_millis(config.timeout_ms)).map_err(config_error)?;
        Ok(Self {
            config,
            base,
            matchers,
            client,
        })
    }

    pub fn config(&self) -> &AlertGateConfig {
        &self.config
    }

    /// The parsed matchers.
    pub fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }

    /// The alerts that block a rollout now: active, not silenced, not inhibited, matching every
    /// matcher. Empty means the gate is open. Sorted by name, then labels.
    pub async fn check(&self) -> Result<Vec<ActiveAlert>, GateError> {
        let url = format!("{}/api/v2/alerts", self.base);
        let filters: Vec<String> = self.matchers.iter().map(Matcher::to_string).collect();
        let mut params: Vec<(&str, &str)> =
            vec![("active", "true"), ("silenced", "false"), ("inhibited", "false")];
        params.extend(filters.iter().map(|f| ("filter", f.as_str())));
        let policy = RetryPolicy {
            retries: self.config.retries,
            backoff: Duration::from_millis(self.config.retry_backoff_ms),
        };
        let alerts = http::with_retries(policy, "Alertmanager alert query", || async {
            let (status, body) =
                http::send(self.client.get(&url).query(&params), self.config.timeout_ms).await?;
            if !(200..300).contains(&status) {
                return Err(http::status_failure(status, &body));
            }
            serde_json::from_str::<Vec<GettableAlert>>(&body).map_err(|e| {
                RequestFailure::Decode(format!(
                    "{e}; body starts with {:?}",
                    body.chars().take(120).collect::<String>()
                ))
            })
        })
        .await
        .map_err(|Exhausted { attempts, failure }| GateError::Query {
            url: self.base.clone(),
            attempts,
            last_error: failure,
        })?;

        let mut blocking: Vec<ActiveAlert> = alerts
            .into_iter()
            // Alertmanager filtered already; the state check keeps a suppressed alert from
            // blocking should a version ignore a filter parameter.
            .filter(|a| {
                a.status
                    .as_ref()
                    .is_none_or(|s| s.state == "active" || s.state == "unprocessed")
            })
            .map(|a| ActiveAlert {
                name: a
                    .labels
                    .get("alertname")
                    .cloned()
                    .unwrap_or_else(|| "<unnamed>".to_owned()),
                summary: a.annotations.get("summary").cloned(),
                labels: a.labels,
                starts_at: a.starts_at,
            })
            .collect();
        blocking.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        tracing::debug!(count = blocking.len(), "alert gate checked");
        Ok(blocking)
    }

    /// [`describe`] with this gate's matchers.
    pub fn describe(&self, alerts: &[ActiveAlert]) -> String {
        describe(alerts, &self.matchers)
    }
}

/// Names the blocking `alerts` for a rollout's refusal reason, e.g. `2 firing alerts match
/// severity="page": HighErrorRate{service=api} (error rate 7 %), DiskFull{instance=db1}`.
/// Labels every alert shares through an `=` matcher are left out of the list; at most 10
/// alerts are named.
pub fn describe(alerts: &[ActiveAlert], matchers: &[Matcher]) -> String {
    let (count, verb) = match alerts.len() {
        0 => ("no firing alerts".to_owned(), "match"),
        1 => ("1 firing alert".to_owned(), "matches"),
        n => (format!("{n} firing alerts"), "match"),
    };
    let selector = if matchers.is_empty() {
        "(the gate has no matchers: every alert counts)".to_owned()
    } else {
        let all: Vec<String> = matchers.iter().map(Matcher::to_string).collect();
        format!("{verb} {}", all.join(" and "))
    };
    if alerts.is_empty() {
        return format!("{count} {selector}");
    }
    let implied: Vec<&str> = matchers
        .iter()
        .filter(|m| m.op == MatchOp::Equal)
        .map(|m| m.name.as_str())
        .collect();
    let mut named: Vec<String> = alerts
        .iter()
        .take(DESCRIBE_MAX_ALERTS)
        .map(|a| {
            let labels: Vec<String> = a
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname" && !implied.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut s = a.name.clone();
            if !labels.is_empty() {
                s.push_str(&format!("{{{}}}", labels.join(",")));
            }
            if let Some(summary) = &a.summary {
                s.push_str(&format!(" ({summary})"));
            }
            s
        })
        .collect();
    if alerts.len() > DESCRIBE_MAX_ALERTS {
        named.push(format!("and {} more", alerts.len() - DESCRIBE_MAX_ALERTS));
    }
    format!("{count} {selector}: {}", named.join(", "))
}

/// An alert as API v2 returns it; only the fields the gate uses.
#[derive(Debug, Deserialize)]
struct GettableAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt", default)]
    starts_at: String,
    status: Option<AlertStatus>,
}

#[derive(Debug, Deserialize)]
struct AlertStatus {
    state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(s: &str) -> Matcher {
        validate_matcher(s).unwrap()
    }

    fn reason(s: &str) -> String {
        match validate_matcher(s).unwrap_err() {
            GateError::InvalidMatcher { matcher, reason } => {
                assert_eq!(matcher, s);
                reason
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn matchers_parse_with_every_operator() {
        assert_eq!(
            matcher(r#"severity="page""#),
            Matcher {
                name: "severity".into(),
                op: MatchOp::Equal,
                value: "page".into()
            }
        );
        assert_eq!(matcher(r#"team != "sandbox""#).op, MatchOp::NotEqual);
        assert_eq!(matcher(r#"alertname=~"High.*""#).op, MatchOp::Regex);
        assert_eq!(matcher(r#"env!~"dev|test""#).op, MatchOp::NotRegex);
        assert_eq!(matcher("severity=page").value, "page");
        assert_eq!(matcher(r#"a="say \"hi\" \\ now""#).value, r#"say "hi" \ now"#);
        assert_eq!(matcher(r#"a="""#).value, "");
    }

    #[test]
    fn matchers_render_canonically() {
        assert_eq!(matcher("severity = page").to_string(), r#"severity="page""#);
        assert_eq!(matcher(r#"a=~"x\"y""#).to_string(), r#"a=~"x\"y""#);
        let m: Matcher = r#"b!="c""#.parse().unwrap();
        assert_eq!(m.to_string(), r#"b!="c""#);
    }

    #[test]
    fn invalid_matchers_say_what_is_wrong() {
        assert_eq!(reason(""), "it is empty");
        assert!(reason(r#"{severity="page"}"#).contains("without braces"));
        assert!(reason(r#"="page""#).contains("label name"));
        assert!(reason(r#"1x="page""#).contains("starts with a digit"));
        assert!(reason("severity").contains("not followed by an operator"));
        assert!(reason(r#"severity=="page""#).contains("put the value in double quotes"));
        assert!(reason(r#"severity<"page""#).contains("not an operator"));
        assert!(reason(r#"severity="page"#).contains("closing quote"));
        assert!(reason(r#"severity="page",team="x""#).contains("one matcher per entry"));
        assert!(reason(r#"a="\t""#).contains("unknown escape"));
        assert!(reason("a=two words").contains("double quotes"));
        let msg = validate_matcher("severity").unwrap_err().to_string();
        assert!(msg.contains(r#"matcher "severity" is invalid"#), "{msg}");
        assert!(msg.contains("= != =~ !~"), "{msg}");
    }

    #[test]
    fn config_checks_every_matcher_and_the_url() {
        let config = AlertGateConfig::new("http://127.0.0.1:9093", &[r#"severity="page""#, "bad", "worse="]);
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(&errors[0], GateError::InvalidMatcher { matcher, .. } if matcher == "bad"));
        assert!(AlertGate::new(AlertGateConfig::new("nope", &[])).is_err());
        let parsed: AlertGateConfig = serde_json::from_str(r#"{"url": "http://127.0.0.1:9093"}"#).unwrap();
        assert_eq!(parsed, AlertGateConfig::new("http://127.0.0.1:9093", &[]));
        assert!(serde_json::from_str::<AlertGateConfig>(r#"{"url": "http://x", "matcher": []}"#).is_err());
    }

    fn alert(name: &str, labels: &[(&str, &str)], summary: Option<&str>) -> ActiveAlert {
        let mut all: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        all.insert("alertname".into(), name.into());
        ActiveAlert {
            name: name.into(),
            labels: all,
            starts_at: "2024-01-01T00:00:00Z".into(),
            summary: summary.map(Into::into),
        }
    }

    #[test]
    fn describe_names_the_alerts() {
        let matchers = [matcher(r#"severity="page""#)];
        let alerts = [
            alert(
                "HighErrorRate",
                &[("service", "api"), ("severity", "page")],
                Some("error rate 7 %"),
            ),
            alert("DiskFull", &[("instance", "db1"), ("severity", "page")], None),
        ];
        assert_eq!(
            describe(&alerts, &matchers),
            r#"2 firing alerts match severity="page": HighErrorRate{service=api} (error rate 7 %), DiskFull{instance=db1}"#
        );
        assert_eq!(
            describe(
                &alerts[1..],
                &[matcher(r#"severity=~"page|crit""#), matcher("team=db")]
            ),
            r#"1 firing alert matches severity=~"page|crit" and team="db": DiskFull{instance=db1,severity=page}"#
        );
        assert_eq!(
            describe(&[], &matchers),
            r#"no firing alerts match severity="page""#
        );
        assert_eq!(
            describe(&[alert("X", &[], None)], &[]),
            "1 firing alert (the gate has no matchers: every alert counts): X"
        );
    }

    #[test]
    fn describe_caps_the_list() {
        let alerts: Vec<ActiveAlert> = (0..13).map(|i| alert(&format!("A{i}"), &[], None)).collect();
        let text = describe(&alerts, &[]);
        assert!(text.starts_with("13 firing alerts"), "{text}");
        assert!(text.ends_with("A9, and 3 more"), "{text}");
    }
}
