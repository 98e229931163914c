//! Webhooks: cutover tells other systems what a rollout does, and lets them stop it.
//!
//! A webhook is an HTTP endpoint that receives a `POST` with a JSON body for each lifecycle event
//! it subscribes to. Three uses:
//!
//! - **Notify** (every kind): chat, incident tools, audit logs. Sent in the background; a failed
//!   delivery is retried and then logged, and never changes the rollout.
//! - **Veto** (`pre_rollout`, `step`, hooks with `can_veto = true`): a change-management system or
//!   a CI check answers non-2xx to stop the rollout before it starts, or to fail a step.
//! - **Confirm** (`confirm_promotion`): a person or pipeline approves the promotion to 100 %;
//!   cutover asks again until the receiver approves, rejects, or time runs out.
//!
//! # Configuration
//!
//! ```toml
//! [[webhooks]]
//! name = "change-board"                 # names the hook in logs and vetoes; unique
//! url = "https://change.example.com/cutover"
//! events = ["pre_rollout", "step", "confirm_promotion", "rollback"]
//! format = "json"                       # or "slack"
//! secret_env = "CHANGE_BOARD_SECRET"    # the variable's name; the secret stays out of the file
//! timeout_ms = 5000                     # per attempt, connecting to end of answer
//! retries = 3                           # further attempts after an error, timeout, 5xx, 408, 429
//! retry_backoff_ms = 500                # before the first retry, doubling (at most 30 s)
//! can_veto = true                       # pre_rollout / step: non-2xx stops the rollout
//! ```
//!
//! `events` lists any of `pre_rollout`, `step`, `confirm_promotion`, `post_rollout`, `rollback`
//! and `event` (every entry of the rollout's event log). By default a hook gets all of them except
//! `confirm_promotion`, which must be asked for: a receiver that answers 200 to everything would
//! otherwise approve every promotion. Unknown fields are errors. [`WebhookConfig::validate`]
//! reports every problem at once (URL scheme, unknown events, a `secret_env` that is not set, a
//! Slack hook subscribed to `confirm_promotion`...).
//!
//! # The request
//!
//! `POST <url>` with these headers:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `User-Agent` | `cutover/<version>` |
//! | `X-Cutover-Event` | the event's `type`, e.g. `step` |
//! | `X-Cutover-Timestamp` | Unix time of sending, in seconds (new for each attempt) |
//! | `X-Cutover-Signature` | with `secret_env` only: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` |
//! | `X-Cutover-Delivery` | 32 hex digits, the same for every attempt (and every poll) of one event to one hook: use it to drop duplicates |
//!
//! Delivery is at least once: when an answer is lost, the same event is sent again. Events sent
//! in the background may arrive out of order; order them by `at_ms`. Redirects are not followed
//! (a 3xx is the answer).
//!
//! ## Body (`format = "json"`)
//!
//! Every field is always present, `null` when it does not apply:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `type` | string | `pre_rollout`, `step`, `confirm_promotion`, `post_rollout`, `rollback` or `event` |
//! | `app` | string | the app's name |
//! | `rollout_id` | integer or null | the rollout the event belongs to |
//! | `version` | string or null | the version being rolled out |
//! | `previous_version` | string or null | the version it replaces |
//! | `phase` | string or null | the rollout's phase, e.g. `canary`, `promoted`, `rolled_back` |
//! | `step` | integer or null | index of the step in the policy, from 0 |
//! | `weight_bp` | integer or null | share of users on the new version in basis points (500 = 5 %) |
//! | `message` | string | one human-readable sentence: what happened and why |
//! | `at_ms` | integer | when it happened, milliseconds since the Unix epoch |
//! | `data` | any JSON | details depending on the kind (for `event`, the log entry) |
//!
//! ```json
//! {"type": "step", "app": "shop", "rollout_id": 7, "version": "v2", "previous_version": "v1",
//!  "phase": "canary", "step": 1, "weight_bp": 2500, "message": "step 1: 25 % of users on v2",
//!  "at_ms": 1700000000123, "data": {}}
//! ```
//!
//! ## Body (`format = "slack"`)
//!
//! A Slack incoming-webhook message: `text` is one line, `[app] type: message`, and `blocks`
//! holds the same as a section plus a context line with the version, phase, step, weight and
//! rollout. Text is escaped for Slack (`&`, `<`, `>`), so a message cannot mention `@channel`.
//! Slack answers 200 to every message, so a Slack hook cannot confirm promotions.
//!
//! # Verifying a request (receivers)
//!
//! 1. Recompute `sha256=` + hex(HMAC-SHA256(secret, `X-Cutover-Timestamp` + `"."` + raw body))
//!    and compare it with `X-Cutover-Signature` in constant time ([`verify_signature`] does this).
//! 2. Reject a timestamp more than a few minutes from your clock, so a captured request cannot be
//!    replayed later.
//!
//! ```
//! # let (secret, timestamp, body) = ("s3cret", "1700000000", br#"{"type":"step"}"#.as_slice());
//! # let header = cutover_notify::sign(secret, timestamp, body);
//! assert!(cutover_notify::verify_signature(secret, timestamp, body, &header));
//! ```
//!
//! # Answers and what they mean
//!
//! | answer | notify | veto gate ([`Notifier::gate`]) | confirm ([`Notifier::confirm`]) |
//! |---|---|---|---|
//! | 2xx | delivered | allow | approve |
//! | 403, and other 4xx not listed below | failed, not retried | veto at once | reject at once |
//! | 408, 429 | retried | retried, then veto | not yet: asked again |
//! | 409, 425 | failed, not retried | veto at once | not yet: asked again |
//! | 3xx (redirects are not followed) | failed, not retried | veto at once | not yet: asked again |
//! | 5xx, timeout, no connection | retried, then logged | retried, then veto ("fail closed") | not yet: asked again |
//!
//! A veto's reason is the status and the first 200 characters of the answer, e.g.
//! `409 Conflict: deploy freeze until 18:00`, or `unreachable: timed out after 5000 ms`. A gate
//! fails closed: a check that could not run has not passed. For a confirmation, answer 409 (or
//! 425, or 503) until a decision is made, then 200 to approve or 403 to reject; cutover asks
//! again after `retry_backoff_ms`, doubling up to 10 s, until the confirmation's timeout, which
//! ends it as timed out.
//!
//! Secrets are never logged: they are read from the environment once, and every `Debug` output
//! (of the configuration, of [`Notifier`]) shows neither the secret nor the path of the URL, where
//! incoming-webhook URLs keep their token.

mod config;
mod event;
mod notifier;
mod sign;

pub use config::{default_events, env_secret, validate_all, Format, WebhookConfig};
pub use event::{EventKind, WebhookEvent};
pub use notifier::{
    GateDecision, Notifier, NotifyError, HEADER_DELIVERY, HEADER_EVENT, HEADER_SIGNATURE, HEADER_TIMESTAMP,
    MAX_CONFIRM_POLL_INTERVAL, MAX_RETRY_BACKOFF, REASON_BODY_CHARS,
};
pub use sign::{sign, verify_signature};
