//! Readiness, smoke checks and pre-warm: what the controller asks of a slot before users see it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use cutover_core::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    /// Path every instance of a new release must answer with a 2xx or 3xx before any traffic
    /// goes to its slot. It is also the path of the proxy's health checks of the live backends
    /// (`[app.proxy.health_check] path`) unless that is given: a service without
    /// `/health/ready` sets this alone.
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            path: "/health/ready".into(),
            interval_ms: 200,
            timeout_ms: 1000,
        }
    }
}

/// One HTTP expectation run against every instance of the new slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    #[serde(default = "ok")]
    pub expect_status: u16,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
}

fn get() -> String {
    "GET".into()
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    pub smoke: Vec<SmokeCheck>,
    /// A command run with `TARGET_URL` (the first instance of the new slot) in its environment;
    /// exit 0 passes.
    pub command: Option<String>,
    pub command_timeout_ms: Option<u64>,
    /// Requests sent to every instance before the first step, to fill caches and JITs.
    pub prewarm_paths: Vec<String>,
    pub prewarm_requests: u32,
}

impl VerifyConfig {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, c) in self.smoke.iter().enumerate() {
            if !c.path.starts_with('/') {
                errors.push(FieldError::new(
                    format!("{prefix}smoke[{i}].path"),
                    format!("{:?} must start with '/'", c.path),
                ));
            }
            if http::Method::from_bytes(c.method.as_bytes()).is_err() {
                errors.push(FieldError::new(
                    format!("{prefix}smoke[{i}].method"),
                    format!("{:?} is not an HTTP method", c.method),
                ));
            }
            if !(100..=599).contains(&c.expect_status) {
                errors.push(FieldError::new(
                    format!("{prefix}smoke[{i}].expect_status"),
                    "must be an HTTP status, 100 to 599",
                ));
            }
        }
        for (i, p) in self.prewarm_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(FieldError::new(
                    format!("{prefix}prewarm_paths[{i}]"),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        errors
    }
}

/// Sends one request and returns status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let method =
        http::Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method:?}: {e}"))?;
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_string()));
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "cutover-verify")
        .body(body)
        .map_err(|e| format!("request {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: reading body: {e}"))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Waits until every address answers the readiness probe, or the deadline passes; the error
/// carries the last probe result of each instance that is not ready.
/// `progress` holds, between probes, what the instances not yet ready last answered (for the
/// controller's "not ready yet" events).
pub async fn wait_ready(
    addrs: &[SocketAddr],
    config: &ReadinessConfig,
    deadline: Duration,
    progress: &std::sync::Mutex<String>,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let mut last: Vec<Option<String>> = vec![Some("not probed yet".into()); addrs.len()];
    let details = |last: &[Option<String>]| not_ready_details(addrs, last, &config.path);
    loop {
        for (i, addr) in addrs.iter().enumerate() {
            if last[i].is_none() {
                continue;
            }
            let probe = cutover_proxy::health::probe(*addr, &config.path);
            last[i] = match tokio::time::timeout(Duration::from_millis(config.timeout_ms), probe).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {} ms", config.timeout_ms)),
            };
        }
        if last.iter().all(Option::is_none) {
            return Ok(());
        }
        if started.elapsed() >= deadline {
            return Err(details(&last));
        }
        if let Ok(mut p) = progress.lock() {
            *p = details(&last);
        }
        tokio::time::sleep(Duration::from_millis(config.interval_ms)).await;
    }
}

/// What the instances not yet ready last answered, with the setting to change when the
/// answers show a common mistake.
fn not_ready_details(addrs: &[SocketAddr], last: &[Option<String>], path: &str) -> String {
    let failing: Vec<&String> = last.iter().flatten().collect();
    let mut text = addrs
        .iter()
        .zip(last)
        .filter_map(|(a, l)| l.as_ref().map(|l| format!("{a}: last probe of {path}: {l}")))
        .collect::<Vec<_>>()
        .join("; ");
    if failing.is_empty() {
        return text;
    }
    // A 404 (or 405, 410) means the service has no such path: say which setting points
    // elsewhere, rather than let the user guess. A 503 is a service still starting: no hint.
    if failing
        .iter()
        .all(|l| matches!(l.as_str(), "status 404" | "status 405" | "status 410"))
    {
        text.push_str(&format!(
            " (the service answers, but not 200 on {path}: if it has no such path, set [app.readiness] path to one that answers 200 once it is ready)"
        ));
    }
    // Nothing listening where cutover said to listen: the command ignores the port it was given.
    if failing.iter().all(|l| l.contains("Connection refused")) {
        text.push_str(
            " (nothing listens on the port cutover gave the instance: its command must use {port}, or read $PORT, rather than a port of its own)",
        );
    }
    text
}

/// One probe of each address; true if all answered ready.
pub async fn all_ready(addrs: &[SocketAddr], config: &ReadinessConfig) -> bool {
    for addr in addrs {
        let probe = cutover_proxy::health::probe(*addr, &config.path);
        if !matches!(
            tokio::time::timeout(Duration::from_millis(config.timeout_ms), probe).await,
            Ok(Ok(()))
        ) {
            return false;
        }
    }
    !addrs.is_empty()
}

/// Smoke checks, the smoke command and pre-warm against `addrs`. Ok carries a summary.
pub async fn verify(addrs: &[SocketAddr], config: &VerifyConfig) -> Result<String, String> {
    for check in &config.smoke {
        for addr in addrs {
            let (status, body) = request(*addr, &check.method, &check.path, check.body.as_deref())
                .await
                .map_err(|e| format!("smoke check {} {} on {addr}: {e}", check.method, check.path))?;
            if status != check.expect_status {
                return Err(format!(
                    "smoke check {} {} on {addr}: expected status {}, got {status}; body: {}",
                    check.method,
                    check.path,
                    check.expect_status,
                    excerpt(&body)
                ));
            }
            if let Some(needle) = &check.body_contains {
                if !body.contains(needle.as_str()) {
                    return Err(format!(
                        "smoke check {} {} on {addr}: body does not contain {needle:?}; body: {}",
                        check.method,
                        check.path,
                        excerpt(&body)
                    ));
                }
            }
        }
    }
    if let Some(command) = &config.command {
        let target = addrs.first().map(|a| format!("http://{a}")).unwrap_or_default();
        let mut run = tokio::process::Command::new("/bin/sh");
        // Never cutover's own secrets (the admin token, webhook keys): a smoke script's output
        // lands in events, and the script may be the release's own.
        cutover_platform::inherit_env(&mut run, &["SSH_AUTH_SOCK", "SSH_AGENT_PID"]);
        let run = run
            .arg("-c")
            .arg(command)
            .env("TARGET_URL", &target)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let timeout = Duration::from_millis(config.command_timeout_ms.unwrap_or(60_000));
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| {
                format!(
                    "smoke command {command:?} did not finish within {} ms",
                    timeout.as_millis()
                )
            })?
            .map_err(|e| format!("smoke command {command:?} could not start: {e}"))?;
        if !output.status.success() {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            return Err(format!(
                "smoke command {command:?} failed ({}); output: {}",
                output.status,
                excerpt(&text)
            ));
        }
    }
    let (mut sent, mut warmed) = (0u64, 0u64);
    for path in &config.prewarm_paths {
        for addr in addrs {
            for _ in 0..config.prewarm_requests {
                sent += 1;
                // Pre-warm failures are not verdicts: the smoke checks decide.
                if request(*addr, "GET", path, None).await.is_ok() {
                    warmed += 1;
                }
            }
        }
    }
    Ok(verified(
        config.smoke.len(),
        addrs.len(),
        config.command.is_some(),
        sent,
        warmed,
    ))
}

/// What verification did, in a sentence that stays true when nothing was configured: the
/// `verified` event's message is this alone.
fn verified(
    smoke: usize,
    instances: usize,
    command: bool,
    prewarm_sent: u64,
    prewarm_answered: u64,
) -> String {
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            one.to_string()
        } else {
            format!("{n} {many}")
        }
    };
    let checks = match (smoke, command) {
        (0, false) => "no smoke checks configured ([app.verify] smoke): nothing to check".to_string(),
        (0, true) => "the smoke command passed".to_string(),
        (n, _) if instances == 0 => format!(
            "{} configured, but no instance to run them on",
            plural(n, "1 smoke check", "smoke checks")
        ),
        (n, command) => format!(
            "{} passed on {}{}",
            plural(n, "1 smoke check", "smoke checks"),
            match instances {
                1 => "the 1 instance".to_string(),
                i => format!("each of the {i} instances"),
            },
            if command {
                ", and so did the smoke command"
            } else {
                ""
            }
        ),
    };
    let prewarm = match (prewarm_sent, prewarm_answered) {
        (0, _) => "0 pre-warm requests".to_string(),
        (1, 1) => "1 pre-warm request".to_string(),
        (sent, answered) if sent == answered => format!("{sent} pre-warm requests"),
        (sent, answered) => format!("{answered} of {sent} pre-warm requests answered"),
    };
    format!("{checks}; {prewarm}")
}

fn excerpt(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|i| trimmed.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &trimmed[..cut])
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn not_ready_details_name_the_setting_or_the_port_to_fix() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        ];
        let no_path = not_ready_details(
            &addrs,
            &[Some("status 404".into()), Some("status 404".into())],
            "/health/ready",
        );
        assert!(no_path.contains("set [app.readiness] path"), "{no_path}");
        let refused = "connect: Connection refused (os error 111)".to_string();
        let wrong_port = not_ready_details(&addrs, &[Some(refused.clone()), Some(refused)], "/health/ready");
        assert!(
            wrong_port.contains("must use {port}, or read $PORT"),
            "{wrong_port}"
        );
        // One instance ready, the other still starting: no hint that could mislead.
        let mixed = not_ready_details(&addrs, &[None, Some("status 503".into())], "/health/ready");
        assert!(
            mixed.contains("127.0.0.1:4002: last probe of /health/ready: status 503"),
            "{mixed}"
        );
        assert!(!mixed.contains("127.0.0.1:4001"), "{mixed}");
        assert!(
            !mixed.contains("(the service answers"),
            "a 503 is a service starting: {mixed}"
        );
    }

    #[test]
    fn the_verified_sentence_is_true_for_none_one_and_many_checks() {
        let cases = [
            (
                verified(0, 2, false, 0, 0),
                "no smoke checks configured ([app.verify] smoke): nothing to check; 0 pre-warm requests",
            ),
            (
                verified(1, 1, false, 1, 1),
                "1 smoke check passed on the 1 instance; 1 pre-warm request",
            ),
            (
                verified(3, 2, true, 40, 40),
                "3 smoke checks passed on each of the 2 instances, and so did the smoke command; 40 pre-warm requests",
            ),
            (
                verified(0, 2, true, 40, 38),
                "the smoke command passed; 38 of 40 pre-warm requests answered",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    /// Before, a slot verified with nothing configured read "0 smoke checks passed".
    #[tokio::test]
    async fn verifying_with_nothing_configured_says_so() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let detail = verify(&[addr], &VerifyConfig::default()).await.unwrap();
        assert_eq!(
            detail,
            "no smoke checks configured ([app.verify] smoke): nothing to check; 0 pre-warm requests"
        );
        assert!(!detail.contains("passed"), "{detail}");
    }

    #[tokio::test]
    async fn one_smoke_check_on_one_instance_with_pre_warm() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // The smoke check and three pre-warm requests, one connection each.
            for _ in 0..4 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 1024];
                let _ = socket.read(&mut head).await.unwrap();
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let config = VerifyConfig {
            smoke: vec![SmokeCheck {
                method: "GET".into(),
                path: "/health".into(),
                expect_status: 200,
                body_contains: Some("ok".into()),
                body: None,
            }],
            prewarm_paths: vec!["/".into()],
            prewarm_requests: 3,
            ..VerifyConfig::default()
        };
        let detail = verify(&[addr], &config).await.unwrap();
        assert_eq!(
            detail,
            "1 smoke check passed on the 1 instance; 3 pre-warm requests"
        );
        server.await.unwrap();
    }
}
