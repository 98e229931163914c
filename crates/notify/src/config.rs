//! What a webhook is: where it goes, which events it gets, how it is signed and how hard cutover
//! tries to deliver.

use std::collections::HashSet;
use std::fmt;

use cutover_core::FieldError;
use serde::{Deserialize, Serialize};

use crate::event::EventKind;

/// The body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The documented cutover payload (see the crate documentation).
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` plus `blocks`).
    Slack,
}

/// One webhook receiver.
///
/// `Debug` is written by hand: the URL of a Slack (or similar) incoming webhook is itself a
/// credential, so only its scheme and host are shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the hook in logs, vetoes and errors; unique among an app's hooks.
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Lifecycle events sent: any of "pre_rollout", "step", "confirm_promotion", "post_rollout",
    /// "rollback", "event" (every event of the log); default all but confirm_promotion.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    #[serde(default)]
    pub format: Format,
    /// Environment variable holding the HMAC secret (never the secret itself in the config file).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Time allowed for one attempt, from connecting to the end of the response body.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a connection error, a timeout, a 5xx, a 408 or a 429.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; each further retry waits twice as long (at most 30 s).
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// For pre_rollout and step: a non-2xx answer vetoes (the rollout does not start / the step
    /// fails).
    #[serde(default)]
    pub can_veto: bool,
}

/// Every kind except `confirm_promotion`: a hook that approves promotions has to be asked for
/// explicitly, or any receiver answering 200 would approve every promotion.
pub fn default_events() -> Vec<String> {
    EventKind::ALL
        .iter()
        .filter(|k| **k != EventKind::ConfirmPromotion)
        .map(|k| k.as_str().to_string())
        .collect()
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_retries() -> u32 {
    3
}

fn default_retry_backoff_ms() -> u64 {
    500
}

impl WebhookConfig {
    /// A hook with every default, for code and tests that build configurations directly.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            events: default_events(),
            format: Format::Json,
            secret_env: None,
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
            can_veto: false,
        }
    }

    /// The kinds this hook subscribes to; unknown names (reported by `validate`) are skipped.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.events.iter().filter_map(|e| EventKind::parse(e)).collect()
    }

    pub fn subscribes_to(&self, kind: EventKind) -> bool {
        self.events.iter().any(|e| e == kind.as_str())
    }

    /// Every problem with this hook, fields named `{prefix}{field}`. The secret is looked up in
    /// the process environment.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        self.validate_with(prefix, &env_secret)
    }

    /// [`validate`](Self::validate) with the secrets looked up by `secrets` instead of the
    /// environment.
    pub fn validate_with(&self, prefix: &str, secrets: &dyn Fn(&str) -> Option<String>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |field: &str, message: String| {
            errors.push(FieldError::new(format!("{prefix}{field}"), message));
        };
        if self.name.trim().is_empty() {
            error(
                "name",
                "must not be empty: it names the hook in logs and vetoes".into(),
            );
        }
        if let Err(problem) = check_url(&self.url) {
            error("url", problem);
        }
        if self.events.is_empty() {
            error(
                "events",
                "is empty, so the hook would never be called: list events or remove the hook".into(),
            );
        }
        for (i, name) in self.events.iter().enumerate() {
            if EventKind::parse(name).is_none() {
                error(
                    &format!("events[{i}]"),
                    format!("unknown event {name:?}; expected one of {}", known_events()),
                );
            }
        }
        if let Some(env) = &self.secret_env {
            if env.trim().is_empty() {
                error(
                    "secret_env",
                    "is empty: name the environment variable that holds the secret, or remove \
                     secret_env to send unsigned requests"
                        .into(),
                );
            } else if secrets(env).is_none_or(|s| s.is_empty()) {
                error(
                    "secret_env",
                    format!(
                        "environment variable {env} is not set or empty: export it with the \
                         HMAC secret shared with the receiver"
                    ),
                );
            }
        }
        if self.timeout_ms == 0 {
            error("timeout_ms", "must be greater than 0".into());
        }
        if self.retry_backoff_ms == 0 {
            error(
                "retry_backoff_ms",
                "must be greater than 0 (it also paces the polling of confirm_promotion)".into(),
            );
        }
        if self.can_veto && !self.subscribes_to(EventKind::PreRollout) && !self.subscribes_to(EventKind::Step)
        {
            error(
                "can_veto",
                "only applies to pre_rollout and step, and the hook subscribes to neither: add \
                 one of them to events or remove can_veto"
                    .into(),
            );
        }
        if self.format == Format::Slack && self.subscribes_to(EventKind::ConfirmPromotion) {
            error(
                "events",
                "a Slack hook cannot confirm promotions: Slack answers 200 to every message, so \
                 it would approve each one at once; use a json hook for confirm_promotion"
                    .into(),
            );
        }
        errors
    }
}

/// Validates a list of hooks (`{prefix}[i].field`) and that their names are unique.
pub fn validate_all(
    hooks: &[WebhookConfig],
    prefix: &str,
    secrets: &dyn Fn(&str) -> Option<String>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, hook) in hooks.iter().enumerate() {
        let hook_prefix = format!("{prefix}[{i}].");
        errors.extend(hook.validate_with(&hook_prefix, secrets));
        if !seen.insert(hook.name.as_str()) {
            errors.push(FieldError::new(
                format!("{hook_prefix}name"),
                format!(
                    "{:?} is used by an earlier hook: names must be unique, they say which hook vetoed",
                    hook.name
                ),
            ));
        }
    }
    errors
}

/// The default secret lookup: the process environment.
pub fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn known_events() -> String {
    EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("is not a valid URL ({e}); expected http(s)://host[:port]/path"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; use http:// or https://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host; expected http(s)://host[:port]/path".into());
    }
    Ok(())
}

/// `scheme://host[:port]/…`: enough to tell hooks apart in debug output without revealing the
/// path or query, where incoming-webhook URLs keep their token.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if parsed.path() == "/" && parsed.query().is_none() {
                ""
            } else {
                "/…"
            };
            format!("{}://{host}{port}{rest}", parsed.scheme())
        }
        Err(_) => "<invalid url>".into(),
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("events", &self.events)
            .field("format", &self.format)
            .field("secret_env", &self.secret_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("can_veto", &self.can_veto)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_secrets(_: &str) -> Option<String> {
        None
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn defaults_fill_everything_but_name_and_url() {
        let hook: WebhookConfig =
            serde_json::from_str(r#"{"name": "ops", "url": "https://example.com/hook"}"#).unwrap();
        assert_eq!(hook, WebhookConfig::new("ops", "https://example.com/hook"));
        assert_eq!(hook.timeout_ms, 5_000);
        assert_eq!(hook.retries, 3);
        assert_eq!(hook.retry_backoff_ms, 500);
        assert!(!hook.can_veto);
        assert_eq!(hook.format, Format::Json);
        assert_eq!(
            hook.events,
            ["pre_rollout", "step", "post_rollout", "rollback", "event", "flag"]
        );
        assert!(!hook.subscribes_to(EventKind::ConfirmPromotion));
        assert!(hook.validate_with("", &no_secrets).is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<WebhookConfig>(
            r#"{"name": "ops", "url": "https://example.com/", "secret": "hunter2"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
    }

    #[test]
    fn slack_format_parses() {
        let hook: WebhookConfig = serde_json::from_str(
            r#"{"name": "chat", "url": "https://hooks.slack.com/x", "format": "slack"}"#,
        )
        .unwrap();
        assert_eq!(hook.format, Format::Slack);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut hook = WebhookConfig::new("", "ftp://example.com/");
        hook.events = vec!["step".into(), "promoted".into()];
        hook.secret_env = Some("CUTOVER_TEST_NOT_SET".into());
        hook.timeout_ms = 0;
        hook.retry_backoff_ms = 0;
        let errors = hook.validate_with("webhooks[0].", &no_secrets);
        assert_eq!(
            fields(&errors),
            [
                "webhooks[0].name",
                "webhooks[0].url",
                "webhooks[0].events[1]",
                "webhooks[0].secret_env",
                "webhooks[0].timeout_ms",
                "webhooks[0].retry_backoff_ms",
            ],
            "{errors:?}"
        );
        assert!(errors[2].message.contains("\"promoted\""));
        assert!(errors[2].message.contains("confirm_promotion"));
        assert!(errors[3].message.contains("CUTOVER_TEST_NOT_SET"));
    }

    #[test]
    fn url_needs_http_scheme_and_host() {
        for bad in ["not a url", "mailto:ops@example.com", "file:///tmp/x", "http://"] {
            let errors = WebhookConfig::new("a", bad).validate_with("", &no_secrets);
            assert_eq!(fields(&errors), ["url"], "{bad}: {errors:?}");
        }
        for good in ["http://127.0.0.1:9/x", "https://hooks.slack.com/services/T/B/C"] {
            assert!(WebhookConfig::new("a", good)
                .validate_with("", &no_secrets)
                .is_empty());
        }
    }

    #[test]
    fn secret_present_passes() {
        let mut hook = WebhookConfig::new("a", "https://example.com/");
        hook.secret_env = Some("HOOK_SECRET".into());
        let lookup = |name: &str| (name == "HOOK_SECRET").then(|| "s3cret".to_string());
        assert!(hook.validate_with("", &lookup).is_empty());
        let empty = |_: &str| Some(String::new());
        assert_eq!(fields(&hook.validate_with("", &empty)), ["secret_env"]);
    }

    #[test]
    fn veto_needs_a_vetoable_event_and_slack_cannot_confirm() {
        let mut hook = WebhookConfig::new("a", "https://example.com/");
        hook.can_veto = true;
        hook.events = vec!["rollback".into()];
        assert_eq!(fields(&hook.validate_with("", &no_secrets)), ["can_veto"]);

        let mut slack = WebhookConfig::new("chat", "https://hooks.slack.com/x");
        slack.format = Format::Slack;
        slack.events.push("confirm_promotion".into());
        assert_eq!(fields(&slack.validate_with("", &no_secrets)), ["events"]);
    }

    #[test]
    fn names_must_be_unique() {
        let hooks = [
            WebhookConfig::new("ops", "https://a.example/"),
            WebhookConfig::new("ops", "https://b.example/"),
        ];
        let errors = validate_all(&hooks, "apps.shop.webhooks", &no_secrets);
        assert_eq!(fields(&errors), ["apps.shop.webhooks[1].name"]);
    }

    #[test]
    fn debug_hides_the_url_token() {
        let hook = WebhookConfig::new(
            "chat",
            "https://user:pw@hooks.slack.com:8443/services/T000/B000/XXXXSECRET?x=1",
        );
        let debug = format!("{hook:?}");
        assert!(debug.contains("https://hooks.slack.com:8443/…"), "{debug}");
        assert!(!debug.contains("XXXXSECRET"), "{debug}");
        assert!(!debug.contains("pw"), "{debug}");
    }
}
