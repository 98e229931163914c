//! Delivery: background notifications, synchronous veto gates and polled confirmations.

use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_core::ValidationErrors;
use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{validate_all, Format, WebhookConfig};
use crate::event::{one_line, truncate_chars, EventKind, WebhookEvent};
use crate::sign::Secret;

/// Longest wait between two retries of one delivery, however many retries are configured.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between two asks of a confirm_promotion hook: an approval is noticed at most
/// this long after the receiver starts answering 2xx.
pub const MAX_CONFIRM_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Characters of a receiver's answer quoted in a veto reason.
pub const REASON_BODY_CHARS: usize = 200;
/// Bytes of a receiver's answer read at most; the rest is never downloaded.
const BODY_READ_LIMIT: usize = 4 * 1024;

pub const HEADER_EVENT: &str = "X-Cutover-Event";
pub const HEADER_TIMESTAMP: &str = "X-Cutover-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Cutover-Signature";
pub const HEADER_DELIVERY: &str = "X-Cutover-Delivery";

/// What a gate or a confirmation decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum GateDecision {
    /// Every hook asked answered 2xx (or no hook was asked).
    Allow,
    /// `hook` refused, or could not be reached (fail closed); `reason` is `<status>: <start of
    /// the answer>` or `unreachable: <why>`.
    Veto { hook: String, reason: String },
    /// `hook` had not approved when the confirmation's time ran out.
    TimedOut { hook: String },
}

impl GateDecision {
    pub fn is_allow(&self) -> bool {
        matches!(self, GateDecision::Allow)
    }
}

impl fmt::Display for GateDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateDecision::Allow => f.write_str("allowed by every webhook"),
            GateDecision::Veto { hook, reason } => write!(f, "vetoed by webhook {hook:?}: {reason}"),
            GateDecision::TimedOut { hook } => {
                write!(f, "webhook {hook:?} did not approve in time")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid webhook configuration: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error(
        "webhook {hook:?}: environment variable {env} (its secret_env) is not set or empty; export \
         it with the HMAC secret shared with the receiver, or remove secret_env to send unsigned \
         requests"
    )]
    MissingSecret { hook: String, env: String },
    #[error("cannot build the HTTP client for webhooks: {0}")]
    Client(#[source] reqwest::Error),
    #[error(
        "{pending} webhook deliveries still running after {waited_ms} ms; they go on in the \
         background (a receiver is slow or unreachable: the warnings name the hook)"
    )]
    FlushTimedOut { pending: usize, waited_ms: u128 },
}

/// Sends lifecycle events to the configured webhooks. Cheap to clone: clones share the hooks, the
/// HTTP client and the count of deliveries in flight.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    hooks: Vec<Hook>,
    client: reqwest::Client,
    /// Deliveries spawned and not finished; `flush` waits for 0.
    in_flight: watch::Sender<usize>,
}

#[derive(Debug)]
struct Hook {
    config: WebhookConfig,
    kinds: Vec<EventKind>,
    secret: Option<Secret>,
}

impl Hook {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn first_backoff(&self, cap: Duration) -> Duration {
        Duration::from_millis(self.config.retry_backoff_ms).min(cap)
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hooks show their redacted URL and `Secret(<redacted>)`, never a secret.
        f.debug_struct("Notifier")
            .field("hooks", &self.inner.hooks)
            .field("in_flight", &*self.inner.in_flight.borrow())
            .finish()
    }
}

/// How a receiver answered one attempt.
#[derive(Debug)]
enum Answer {
    Status {
        status: StatusCode,
        body: String,
    },
    /// No HTTP answer: connection refused, timeout, TLS failure...
    Unreachable(String),
}

/// What a confirm_promotion answer means.
enum Confirmation {
    Approve,
    Reject,
    NotYet,
}

impl Answer {
    fn is_success(&self) -> bool {
        matches!(self, Answer::Status { status, .. } if status.is_success())
    }

    /// Worth another attempt: the receiver may do better in a moment. Other 4xx say the request
    /// itself is wrong (or refused), and sending it again would not change that.
    fn is_retryable(&self) -> bool {
        match self {
            Answer::Unreachable(_) => true,
            Answer::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// 2xx approves; 408, 409, 425 and 429 mean "not yet" (so a receiver can hold the promotion
    /// until a person or a pipeline decides), as do 3xx, 5xx and no answer at all; every other 4xx
    /// (403 is the documented one) rejects.
    fn confirmation(&self) -> Confirmation {
        match self {
            Answer::Status { status, .. } if status.is_success() => Confirmation::Approve,
            Answer::Status { status, .. }
                if status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429) =>
            {
                Confirmation::Reject
            }
            _ => Confirmation::NotYet,
        }
    }

    /// For veto reasons and logs: `409 Conflict: <start of the body>` or `unreachable: <why>`.
    fn reason(&self) -> String {
        match self {
            Answer::Status { status, body } => {
                let code = match status.canonical_reason() {
                    Some(text) => format!("{} {text}", status.as_u16()),
                    None => status.as_u16().to_string(),
                };
                if body.is_empty() {
                    code
                } else {
                    format!("{code}: {body}")
                }
            }
            Answer::Unreachable(why) => format!("unreachable: {why}"),
        }
    }
}

impl Notifier {
    /// Hooks with their secrets looked up by `secrets` (environment variable name → value).
    /// Every configuration problem is reported at once, fields named `webhooks[i].field`.
    pub fn new(
        hooks: Vec<WebhookConfig>,
        secrets: impl Fn(&str) -> Option<String>,
    ) -> Result<Notifier, NotifyError> {
        ValidationErrors::check(validate_all(&hooks, "webhooks", &secrets))?;
        let mut resolved = Vec::with_capacity(hooks.len());
        for config in hooks {
            let secret = match &config.secret_env {
                None => None,
                Some(env) => match secrets(env).filter(|s| !s.is_empty()) {
                    Some(value) => Some(Secret::new(value)),
                    // Validation looked a moment ago; the source may have changed since.
                    None => {
                        return Err(NotifyError::MissingSecret {
                            hook: config.name.clone(),
                            env: env.clone(),
                        })
                    }
                },
            };
            resolved.push(Hook {
                kinds: config.kinds(),
                config,
                secret,
            });
        }
        let client = reqwest::Client::builder()
            // A redirect turns a POST into a GET on 301-303 and would hide a moved receiver: the
            // 3xx is reported as the answer instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(NotifyError::Client)?;
        Ok(Notifier {
            inner: Arc::new(Inner {
                hooks: resolved,
                client,
                in_flight: watch::Sender::new(0),
            }),
        })
    }

    /// [`new`](Self::new) with secrets from the process environment.
    pub fn from_env(hooks: Vec<WebhookConfig>) -> Result<Notifier, NotifyError> {
        Notifier::new(hooks, crate::config::env_secret)
    }

    /// Whether any hook subscribes to `kind` (for instance, whether a promotion waits for a
    /// confirmation at all).
    pub fn has_hooks_for(&self, kind: EventKind) -> bool {
        self.inner.hooks.iter().any(|h| h.kinds.contains(&kind))
    }

    /// Deliveries started and not yet finished.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Sends `event` to every hook subscribed to its kind, in the background: returns at once.
    /// Each delivery retries (with a doubling backoff) on connection errors, timeouts, 5xx, 408
    /// and 429; a failure in the end is logged with the hook's name. Answers never veto anything
    /// here, whatever `can_veto` says. Must be called within a tokio runtime; outside one, the
    /// event is dropped with an error logged.
    pub fn notify(&self, event: WebhookEvent) {
        let event = Arc::new(event);
        for index in self.subscribed(event.kind) {
            self.spawn_delivery(index, &event);
        }
    }

    /// For `pre_rollout` and `step`: asks the hooks with `can_veto` subscribed to the event's
    /// kind, concurrently and with their retries, and allows only if each one answers 2xx. A
    /// non-2xx answer after the retries vetoes with `<status>: <first 200 characters of the
    /// answer>`; a hook that cannot be reached at all vetoes too (`unreachable: ...`): a gate
    /// fails closed, since a check that could not run has not passed. The other subscribed hooks
    /// get the event in the background as with [`notify`](Self::notify), so call either `gate` or
    /// `notify` for an event, not both. For any other kind, nothing can veto: the event is only
    /// notified and the answer is `Allow`.
    pub async fn gate(&self, event: WebhookEvent) -> GateDecision {
        let event = Arc::new(event);
        let vetoable = matches!(event.kind, EventKind::PreRollout | EventKind::Step);
        let mut askers = Vec::new();
        for index in self.subscribed(event.kind) {
            if vetoable && self.inner.hooks[index].config.can_veto {
                askers.push(index);
            } else {
                self.spawn_delivery(index, &event);
            }
        }
        let answers = futures_util::future::join_all(askers.iter().map(|&index| {
            let hook = &self.inner.hooks[index];
            let event = &event;
            async move {
                match encode(hook.config.format, event) {
                    Ok(body) => self.inner.deliver(hook, event.kind, &body).await,
                    Err(e) => (Answer::Unreachable(format!("cannot encode the event: {e}")), 0),
                }
            }
        }))
        .await;
        for (&index, (answer, attempts)) in askers.iter().zip(answers) {
            let hook = &self.inner.hooks[index];
            if !answer.is_success() {
                let reason = answer.reason();
                tracing::warn!(
                    hook = hook.name(),
                    event = %event.kind,
                    app = %event.app,
                    attempts,
                    %reason,
                    "webhook vetoed"
                );
                return GateDecision::Veto {
                    hook: hook.name().to_string(),
                    reason,
                };
            }
        }
        GateDecision::Allow
    }

    /// For `confirm_promotion`: every hook subscribed to the event's kind must approve. Each is
    /// asked, and asked again after its `retry_backoff_ms` (doubling, at most
    /// [`MAX_CONFIRM_POLL_INTERVAL`]) until it decides or `timeout` has passed:
    ///
    /// - 2xx approves; once every hook has approved, the answer is `Allow`;
    /// - 403 (or another 4xx except 408, 409, 425 and 429) rejects: `Veto` at once, with the
    ///   status and the start of the answer as the reason;
    /// - anything else (409, 425 or 503 are the natural choices, but also 3xx, 5xx, timeouts and
    ///   connection errors) means "not yet": the hook is asked again later;
    /// - when `timeout` passes with a hook still undecided: `TimedOut` naming it.
    ///
    /// No attempt runs past `timeout`. With no subscribed hook there is nobody to ask: `Allow`
    /// (see [`has_hooks_for`](Self::has_hooks_for)). Call `confirm`, not `notify`, for this
    /// event: `notify` would send it once and ignore the answer.
    pub async fn confirm(&self, event: WebhookEvent, timeout: Duration) -> GateDecision {
        let now = Instant::now();
        // A timeout too large for the clock (Duration::MAX, say) means "wait as long as it takes".
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut polls: FuturesUnordered<_> = self
            .subscribed(event.kind)
            .into_iter()
            .map(|index| {
                self.inner
                    .poll_until_decided(&self.inner.hooks[index], &event, deadline)
            })
            .collect();
        // The first refusal or timeout decides; dropping the other polls stops them.
        while let Some(decision) = polls.next().await {
            if !decision.is_allow() {
                return decision;
            }
        }
        GateDecision::Allow
    }

    /// Waits until every delivery started by `notify` (and by `gate` for hooks without a veto)
    /// has finished, for tests and an orderly shutdown. Deliveries still running when `timeout`
    /// passes go on in the background.
    pub async fn flush(&self, timeout: Duration) -> Result<(), NotifyError> {
        let mut idle = self.inner.in_flight.subscribe();
        let waited = tokio::time::timeout(timeout, idle.wait_for(|n| *n == 0)).await;
        match waited {
            // A closed channel cannot happen while `self` holds the sender; nothing to wait for.
            Ok(_) => Ok(()),
            Err(_) => Err(NotifyError::FlushTimedOut {
                pending: self.in_flight(),
                waited_ms: timeout.as_millis(),
            }),
        }
    }

    fn subscribed(&self, kind: EventKind) -> Vec<usize> {
        (0..self.inner.hooks.len())
            .filter(|&i| self.inner.hooks[i].kinds.contains(&kind))
            .collect()
    }

    fn spawn_delivery(&self, index: usize, event: &Arc<WebhookEvent>) {
        let guard = InFlight::start(&self.inner);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                hook = self.inner.hooks[index].name(),
                event = %event.kind,
                "webhook not sent: notify was called outside a tokio runtime"
            );
            return;
        };
        let event = Arc::clone(event);
        runtime.spawn(async move {
            let inner = &guard.inner;
            let hook = &inner.hooks[index];
            let body = match encode(hook.config.format, &event) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(hook = hook.name(), event = %event.kind, error = %e, "webhook not sent: cannot encode the event");
                    return;
                }
            };
            let (answer, attempts) = inner.deliver(hook, event.kind, &body).await;
            if answer.is_success() {
                tracing::debug!(hook = hook.name(), event = %event.kind, attempts, "webhook delivered");
            } else {
                tracing::warn!(
                    hook = hook.name(),
                    event = %event.kind,
                    app = %event.app,
                    attempts,
                    answer = %answer.reason(),
                    "webhook delivery failed"
                );
            }
        });
    }
}

/// Counts a background delivery from before it is spawned until its task ends (or is dropped
/// unrun), so `flush` never misses one.
struct InFlight {
    inner: Arc<Inner>,
}

impl InFlight {
    fn start(inner: &Arc<Inner>) -> InFlight {
        inner.in_flight.send_modify(|n| *n += 1);
        InFlight {
            inner: Arc::clone(inner),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Inner {
    /// One delivery with its retries; returns the last answer and the number of attempts.
    async fn deliver(&self, hook: &Hook, kind: EventKind, body: &[u8]) -> (Answer, u32) {
        let id = delivery_id(hook, body);
        let mut backoff = hook.first_backoff(MAX_RETRY_BACKOFF);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = self.attempt(hook, kind, body, &id, hook.attempt_timeout()).await;
            if !answer.is_retryable() || attempts > hook.config.retries {
                return (answer, attempts);
            }
            tracing::debug!(
                hook = hook.name(),
                event = %kind,
                attempts,
                answer = %answer.reason(),
                retry_in_ms = backoff.as_millis() as u64,
                "webhook attempt failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_RETRY_BACKOFF);
        }
    }

    async fn poll_until_decided(&self, hook: &Hook, event: &WebhookEvent, deadline: Instant) -> GateDecision {
        let body = match encode(hook.config.format, event) {
            Ok(body) => body,
            Err(e) => {
                return GateDecision::Veto {
                    hook: hook.name().to_string(),
                    reason: format!("cannot encode the event: {e}"),
                }
            }
        };
        let id = delivery_id(hook, &body);
        let mut interval = hook.first_backoff(MAX_CONFIRM_POLL_INTERVAL);
        let mut last: Option<Answer> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let last = last.map(|a| a.reason()).unwrap_or_else(|| "none".into());
                tracing::warn!(
                    hook = hook.name(),
                    event = %event.kind,
                    app = %event.app,
                    last_answer = %last,
                    "webhook did not confirm in time"
                );
                return GateDecision::TimedOut {
                    hook: hook.name().to_string(),
                };
            }
            let answer = self
                .attempt(
                    hook,
                    event.kind,
                    &body,
                    &id,
                    hook.attempt_timeout().min(remaining),
                )
                .await;
            match answer.confirmation() {
                Confirmation::Approve => {
                    tracing::info!(hook = hook.name(), app = %event.app, "webhook confirmed");
                    return GateDecision::Allow;
                }
                Confirmation::Reject => {
                    let reason = answer.reason();
                    tracing::warn!(hook = hook.name(), app = %event.app, %reason, "webhook rejected the promotion");
                    return GateDecision::Veto {
                        hook: hook.name().to_string(),
                        reason,
                    };
                }
                Confirmation::NotYet => {
                    tracing::debug!(hook = hook.name(), answer = %answer.reason(), "webhook has not confirmed yet");
                    last = Some(answer);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(interval.min(remaining)).await;
            interval = interval.saturating_mul(2).min(MAX_CONFIRM_POLL_INTERVAL);
        }
    }

    async fn attempt(
        &self,
        hook: &Hook,
        kind: EventKind,
        body: &[u8],
        delivery_id: &str,
        timeout: Duration,
    ) -> Answer {
        // Signed per attempt, with the time of sending, so a receiver's replay window holds for
        // retries too.
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let mut request = self
            .client
            .post(&hook.config.url)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("cutover/", env!("CARGO_PKG_VERSION")))
            .header(HEADER_EVENT, kind.as_str())
            .header(HEADER_TIMESTAMP, &timestamp)
            .header(HEADER_DELIVERY, delivery_id);
        if let Some(secret) = &hook.secret {
            request = request.header(HEADER_SIGNATURE, secret.sign(&timestamp, body));
        }
        let mut response = match request.body(body.to_vec()).send().await {
            Ok(response) => response,
            Err(e) => return Answer::Unreachable(describe(&e, timeout)),
        };
        let status = response.status();
        // Only the start of the answer matters (for the veto reason); a receiver sending
        // megabytes must not cost more than a few KiB, and a body that fails midway still leaves
        // the status as the answer.
        let mut bytes = Vec::new();
        while bytes.len() < BODY_READ_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        bytes.truncate(BODY_READ_LIMIT);
        let text = one_line(String::from_utf8_lossy(&bytes).trim());
        Answer::Status {
            status,
            body: truncate_chars(&text, REASON_BODY_CHARS),
        }
    }
}

fn encode(format: Format, event: &WebhookEvent) -> Result<Vec<u8>, serde_json::Error> {
    match format {
        Format::Json => serde_json::to_vec(event),
        Format::Slack => serde_json::to_vec(&event.to_slack()),
    }
}

/// The same for every attempt of one event to one hook (and across controller restarts, since
/// the body carries the event's own time), so a receiver can drop duplicates of a delivery it
/// has already processed when an answer was lost.
fn delivery_id(hook: &Hook, body: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(hook.name().as_bytes())
        .chain_update(b"\n")
        .chain_update(body)
        .finalize();
    hex::encode(&digest[..16])
}

/// Why a request got no answer, without its URL: incoming-webhook URLs carry their token in the
/// path, so they are kept out of logs and veto reasons.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    // Not `error.to_string()`: it includes the URL. The causes below say what went wrong.
    let mut text = if error.is_connect() {
        "cannot connect"
    } else if error.is_builder() {
        "cannot build the request"
    } else {
        "request failed"
    }
    .to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Answer {
        Answer::Status {
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
        }
    }

    #[test]
    fn retry_only_what_may_change() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [200, 204, 301, 400, 401, 403, 404, 409, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(Answer::Unreachable("x".into()).is_retryable());
    }

    #[test]
    fn confirmation_semantics() {
        for code in [200, 201, 202, 204] {
            assert!(matches!(status(code).confirmation(), Confirmation::Approve));
        }
        for code in [400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(status(code).confirmation(), Confirmation::Reject),
                "{code}"
            );
        }
        for code in [302, 408, 409, 425, 429, 500, 503] {
            assert!(
                matches!(status(code).confirmation(), Confirmation::NotYet),
                "{code}"
            );
        }
        assert!(matches!(
            Answer::Unreachable("x".into()).confirmation(),
            Confirmation::NotYet
        ));
    }

    #[test]
    fn reasons() {
        assert_eq!(status(204).reason(), "204 No Content");
        assert_eq!(status(499).reason(), "499");
        let answer = Answer::Status {
            status: StatusCode::CONFLICT,
            body: "deploy freeze".into(),
        };
        assert_eq!(answer.reason(), "409 Conflict: deploy freeze");
        assert_eq!(
            Answer::Unreachable("timed out after 5 ms".into()).reason(),
            "unreachable: timed out after 5 ms"
        );
    }

    #[test]
    fn decisions_serialise_with_a_tag() {
        let veto = GateDecision::Veto {
            hook: "ci".into(),
            reason: "403 Forbidden".into(),
        };
        assert_eq!(
            serde_json::to_value(&veto).unwrap(),
            serde_json::json!({"decision": "veto", "hook": "ci", "reason": "403 Forbidden"})
        );
        assert_eq!(veto.to_string(), "vetoed by webhook \"ci\": 403 Forbidden");
    }
}
