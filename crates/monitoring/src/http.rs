//! What the Prometheus and Alertmanager clients share: building the HTTP client, classifying a
//! failed attempt, and retrying the ones another attempt can fix.

use std::future::Future;
use std::time::Duration;

/// The longest pause between two attempts, however many retries are configured: a slow
/// monitoring system must not stall a rollout's decision for minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How much of an error body goes into a [`RequestFailure::Status`].
const BODY_EXCERPT_CHARS: usize = 300;

/// Why one attempt at a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestFailure {
    /// Could not connect, or the connection broke.
    #[error("cannot connect: {0}")]
    Transport(String),
    /// No complete answer within the attempt's timeout.
    #[error("no answer within {ms} ms")]
    Timeout { ms: u64 },
    /// An HTTP error status without an API error in the body.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The API answered `"status": "error"` (Prometheus) with this type and message.
    #[error("HTTP {status}, {error_type} error: {error}")]
    Api {
        status: u16,
        error_type: String,
        error: String,
    },
    /// A successful status with a body that is not what the API returns.
    #[error("unreadable response: {0}")]
    Decode(String),
}

impl RequestFailure {
    /// Whether another attempt can succeed: the server was unreachable, slow or temporarily
    /// failing. A rejected request (bad query, wrong path) fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            RequestFailure::Transport(_) | RequestFailure::Timeout { .. } => true,
            RequestFailure::Status { status, .. } => retryable_status(*status),
            RequestFailure::Api {
                status, error_type, ..
            } => {
                retryable_status(*status)
                    || matches!(
                        error_type.as_str(),
                        "timeout" | "canceled" | "internal" | "unavailable"
                    )
            }
            RequestFailure::Decode(_) => false,
        }
    }

    /// What to do about it, for error messages.
    pub fn hint(&self) -> &'static str {
        match self {
            RequestFailure::Transport(_) => {
                "check that the server runs at that URL and is reachable from cutover"
            }
            RequestFailure::Timeout { .. } => {
                "the server is overloaded or the query too expensive; raise timeout_ms or simplify the query"
            }
            RequestFailure::Status { status: 404, .. } => {
                "check the URL: it should be the server's base URL (with its path prefix, if any)"
            }
            RequestFailure::Status {
                status: 401 | 403, ..
            } => "the server wants credentials; put them in the URL or allow cutover's address",
            RequestFailure::Api { error_type, .. }
                if error_type == "bad_data" || error_type == "execution" =>
            {
                "fix the query (try it in the server's web UI)"
            }
            RequestFailure::Decode(_) => "check that the URL points at the right kind of server",
            _ => "check the server's health and logs",
        }
    }
}

fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The request failed for good: `attempts` attempts, the last one with `failure`.
#[derive(Debug)]
pub(crate) struct Exhausted {
    pub attempts: u32,
    pub failure: RequestFailure,
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// Pause before the first retry; doubles for each further one, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

impl RetryPolicy {
    fn pause_before_retry(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// Runs `attempt` until it succeeds, fails in a way retrying cannot fix, or `policy.retries`
/// retries are used up. `what` describes the request in log lines.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, Exhausted>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestFailure>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(failure) if failure.is_retryable() && attempts <= policy.retries => {
                let pause = policy.pause_before_retry(attempts);
                tracing::warn!(
                    "{what}: attempt {attempts} of {} failed ({failure}); retrying in {pause:?}",
                    policy.retries + 1
                );
                // A backoff, not a wait for a condition: the server gets a moment to recover.
                tokio::time::sleep(pause).await;
            }
            Err(failure) => return Err(Exhausted { attempts, failure }),
        }
    }
}

/// The HTTP client for one source or gate. The per-attempt timeout covers connecting, sending
/// and reading the whole body.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Checks a configured base URL: absolute, http or https. Returned without a trailing slash so
/// API paths can be appended.
pub(crate) fn base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a URL ({e}); write it like http://127.0.0.1:9090"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{url:?} must not have a query or fragment; give the server's base URL"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Sends one request and returns the status and body, mapping transport problems to
/// [`RequestFailure`].
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout_ms: u64,
) -> Result<(u16, String), RequestFailure> {
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            RequestFailure::Timeout { ms: timeout_ms }
        } else {
            RequestFailure::Transport(error_chain(&e))
        }
    };
    let response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(classify)?;
    Ok((status, body))
}

/// A [`RequestFailure::Status`] with an excerpt of the body.
pub(crate) fn status_failure(status: u16, body: &str) -> RequestFailure {
    let body = body.trim();
    let mut excerpt: String = body.chars().take(BODY_EXCERPT_CHARS).collect();
    if excerpt.len() < body.len() {
        excerpt.push_str("...");
    }
    RequestFailure::Status {
        status,
        body: excerpt,
    }
}

/// The error with its sources: reqwest's own message ("error sending request") hides the cause
/// ("Connection refused") in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            retries: 40,
            backoff: Duration::from_millis(200),
        };
        assert_eq!(p.pause_before_retry(1), Duration::from_millis(200));
        assert_eq!(p.pause_before_retry(2), Duration::from_millis(400));
        assert_eq!(p.pause_before_retry(3), Duration::from_millis(800));
        assert_eq!(p.pause_before_retry(30), MAX_BACKOFF);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(RequestFailure::Transport("refused".into()).is_retryable());
        assert!(RequestFailure::Timeout { ms: 5 }.is_retryable());
        assert!(status_failure(503, "").is_retryable());
        assert!(status_failure(429, "").is_retryable());
        assert!(!status_failure(404, "").is_retryable());
        let api = |status, t: &str| RequestFailure::Api {
            status,
            error_type: t.into(),
            error: "x".into(),
        };
        assert!(api(503, "unavailable").is_retryable());
        assert!(api(200, "timeout").is_retryable());
        assert!(!api(400, "bad_data").is_retryable());
        assert!(!api(422, "execution").is_retryable());
        assert!(!RequestFailure::Decode("x".into()).is_retryable());
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            base_url("https://mon.example/prom").unwrap(),
            "https://mon.example/prom"
        );
        assert!(base_url("127.0.0.1:9090").unwrap_err().contains("http://"));
        assert!(base_url("ftp://x").unwrap_err().contains("http://"));
        assert!(base_url("http://x/?a=b").unwrap_err().contains("query"));
    }

    #[test]
    fn long_bodies_are_cut() {
        let RequestFailure::Status { body, .. } = status_failure(500, &"x".repeat(1000)) else {
            panic!("not a status failure");
        };
        assert_eq!(body.len(), BODY_EXCERPT_CHARS + 3);
    }
}
