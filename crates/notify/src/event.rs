//! What is sent: the event payload and its two body formats.

use cutover_core::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The lifecycle moment an event reports. Its `as_str` name is the payload's `type`, the
/// `X-Cutover-Event` header and the name used in a hook's `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout is about to start; a `can_veto` hook can stop it.
    PreRollout,
    /// A canary step is about to take traffic; a `can_veto` hook can fail it.
    Step,
    /// The rollout waits for approval before promotion (see [`Notifier::confirm`](crate::Notifier::confirm)).
    ConfirmPromotion,
    /// The rollout ended (succeeded, aborted or failed).
    PostRollout,
    /// Traffic went back to the old slot.
    Rollback,
    /// Any entry of the rollout's event log.
    Event,
    /// A flag event: a guarded ramp's step, pause, completion or automatic kill, or a flag past
    /// its expiry date. `app` is `flags`, `phase` the flag event (`flag_killed`, ...), and
    /// `data.flag` the flag's key.
    Flag,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::PreRollout,
        EventKind::Step,
        EventKind::ConfirmPromotion,
        EventKind::PostRollout,
        EventKind::Rollback,
        EventKind::Event,
        EventKind::Flag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PreRollout => "pre_rollout",
            EventKind::Step => "step",
            EventKind::ConfirmPromotion => "confirm_promotion",
            EventKind::PostRollout => "post_rollout",
            EventKind::Rollback => "rollback",
            EventKind::Event => "event",
            EventKind::Flag => "flag",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of every webhook. Every field is always present in the JSON (`null` when it does
/// not apply), so receivers can parse it with a fixed schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub app: String,
    pub rollout_id: Option<u64>,
    pub version: Option<String>,
    pub previous_version: Option<String>,
    pub phase: Option<String>,
    /// Index of the step in the rollout policy, from 0.
    pub step: Option<usize>,
    /// Share of users on the new version, in basis points (500 = 5 %).
    pub weight_bp: Option<u16>,
    /// One human-readable sentence: what happened and why.
    pub message: String,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Details that depend on the kind (for `event`, the log entry itself).
    #[serde(default)]
    pub data: Value,
}

impl WebhookEvent {
    /// An event with only the required fields; set the others directly.
    pub fn new(kind: EventKind, app: impl Into<String>, message: impl Into<String>, at: Timestamp) -> Self {
        WebhookEvent {
            kind,
            app: app.into(),
            rollout_id: None,
            version: None,
            previous_version: None,
            phase: None,
            step: None,
            weight_bp: None,
            message: message.into(),
            at_ms: at.as_millis(),
            data: Value::Null,
        }
    }

    /// `[app] type: message` on one line: the Slack `text` and the fallback of notifications.
    pub fn summary(&self) -> String {
        format!(
            "[{}] {}: {}",
            one_line(&self.app),
            self.kind,
            one_line(&self.message)
        )
    }

    /// The Slack incoming-webhook message for this event.
    pub fn to_slack(&self) -> Value {
        // Slack limits a section's text to 3000 characters; the whole message stays in `text`.
        let message = truncate_chars(&one_line(&self.message), 2_800);
        let mut blocks = vec![json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": format!(
                    "*[{}]* `{}`: {}",
                    slack_escape(&one_line(&self.app)),
                    self.kind,
                    slack_escape(&message)
                ),
            },
        })];
        let mut details = Vec::new();
        if let Some(version) = &self.version {
            let mut text = format!("version *{}*", slack_escape(version));
            if let Some(previous) = &self.previous_version {
                text.push_str(&format!(" (from {})", slack_escape(previous)));
            }
            details.push(text);
        }
        if let Some(phase) = &self.phase {
            details.push(format!("phase {}", slack_escape(phase)));
        }
        if let Some(step) = self.step {
            details.push(format!("step {step}"));
        }
        if let Some(weight) = self.weight_bp {
            details.push(format!("weight {}", percent(weight)));
        }
        if let Some(id) = self.rollout_id {
            details.push(format!("rollout #{id}"));
        }
        if !details.is_empty() {
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": details.join(" · ")}],
            }));
        }
        // `text` is mrkdwn too: escaped, so a message cannot ping `<!channel>`.
        json!({ "text": slack_escape(&self.summary()), "blocks": blocks })
    }
}

/// Basis points as a percentage without needless decimals: 500 → "5 %", 50 → "0.5 %".
pub(crate) fn percent(bp: u16) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    if frac == 0 {
        format!("{whole} %")
    } else {
        let decimals = format!("{frac:02}");
        format!("{whole}.{} %", decimals.trim_end_matches('0'))
    }
}

/// Control characters (newlines included) become spaces so a summary stays one line.
pub(crate) fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup (links, mentions); user text must not.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_event() -> WebhookEvent {
        let mut event = WebhookEvent::new(
            EventKind::Step,
            "shop",
            "step 1: 5 % of users\non v2",
            Timestamp::from_millis(1_700_000_000_123),
        );
        event.rollout_id = Some(7);
        event.version = Some("v2".into());
        event.previous_version = Some("v1".into());
        event.phase = Some("canary".into());
        event.step = Some(1);
        event.weight_bp = Some(500);
        event.data = json!({"analysis_interval_ms": 10000});
        event
    }

    #[test]
    fn json_shape_is_the_documented_one() {
        let value = serde_json::to_value(step_event()).unwrap();
        assert_eq!(
            value,
            json!({
                "type": "step",
                "app": "shop",
                "rollout_id": 7,
                "version": "v2",
                "previous_version": "v1",
                "phase": "canary",
                "step": 1,
                "weight_bp": 500,
                "message": "step 1: 5 % of users\non v2",
                "at_ms": 1_700_000_000_123_u64,
                "data": {"analysis_interval_ms": 10000},
            })
        );
        let minimal = serde_json::to_value(WebhookEvent::new(
            EventKind::Event,
            "shop",
            "x",
            Timestamp::from_millis(1),
        ))
        .unwrap();
        // Fields that do not apply are present as null, never missing.
        assert_eq!(minimal["version"], Value::Null);
        assert_eq!(minimal.as_object().map(|o| o.len()), Some(11));
        let back: WebhookEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, step_event());
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        }
        assert_eq!(EventKind::parse("promoted"), None);
    }

    #[test]
    fn slack_message_has_one_line_text_and_blocks() {
        let mut event = step_event();
        event.message = "<!channel> a & b\nc".into();
        let slack = event.to_slack();
        assert_eq!(slack["text"], "[shop] step: &lt;!channel&gt; a &amp; b c");
        let section = slack["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(section, "*[shop]* `step`: &lt;!channel&gt; a &amp; b c");
        let context = slack["blocks"][1]["elements"][0]["text"].as_str().unwrap();
        assert_eq!(
            context,
            "version *v2* (from v1) · phase canary · step 1 · weight 5 % · rollout #7"
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(500), "5 %");
        assert_eq!(percent(50), "0.5 %");
        assert_eq!(percent(1), "0.01 %");
        assert_eq!(percent(10_000), "100 %");
        assert_eq!(percent(2_525), "25.25 %");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("ééé", 2), "éé…");
        assert_eq!(truncate_chars("ab", 2), "ab");
    }
}
