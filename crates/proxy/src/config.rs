//! Settings of one app's data plane. Every field has a default a careful operator would pick, and
//! units are in the names.

use std::time::Duration;

use cutover_core::{FieldError, Slot};
use serde::{Deserialize, Serialize};

/// How users are kept on one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StickyConfig {
    /// Request header whose value identifies the user (for example `X-User-ID`).
    pub user_key_header: Option<String>,
    /// An existing cookie of the app whose value identifies the user (for example a session id).
    pub user_key_cookie: Option<String>,
    /// Cookie cutover issues to clients that carry no key, and reads back from then on.
    pub bucket_cookie: String,
    /// Lifetime of the bucket cookie.
    pub bucket_cookie_max_age_secs: u64,
    /// Add `Secure` to the bucket cookie (on by default for TLS listeners whatever this says).
    pub bucket_cookie_secure: bool,
    /// Seed of the bucket hash; changing it reshuffles every user.
    pub hash_seed: u64,
}

impl Default for StickyConfig {
    fn default() -> Self {
        StickyConfig {
            user_key_header: None,
            user_key_cookie: None,
            bucket_cookie: "cutover_bucket".into(),
            bucket_cookie_max_age_secs: 365 * 24 * 3600,
            bucket_cookie_secure: false,
            hash_seed: 0,
        }
    }
}

/// How testers reach a slot before users do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// Header that forces a slot: `<slot>:<token>`, e.g. `X-Cutover-Preview: green:s3cret`. It is
    /// honoured only with the right token, and always removed before the request goes upstream.
    pub header: String,
    /// The token; without one the header is never honoured.
    #[serde(skip_serializing)]
    pub token: Option<String>,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            header: "x-cutover-preview".into(),
            token: None,
        }
    }
}

/// Active health checks of every backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    /// Path of the `GET` sent to every backend of both slots, live ones included; a backend
    /// that keeps failing it is taken out. In `cutover.toml`, when `[app.proxy.health_check]
    /// path` is not given it is the app's `[app.readiness] path`, so a service is checked on the
    /// path it was admitted by; both may be given and differ (a cheap path checked every
    /// second, a deeper one before traffic), as long as every backend answers both.
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that bring a backend back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            path: "/health/ready".into(),
            interval_ms: 1000,
            timeout_ms: 500,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// Everything about one app's traffic handling except where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    pub sticky: StickyConfig,
    pub preview: PreviewConfig,
    pub health_check: HealthCheckConfig,
    pub connect_timeout_ms: u64,
    /// Time allowed for a backend to start its response (status and headers).
    pub response_timeout_ms: u64,
    /// Idle upstream keep-alive connections are closed after this long. Kept below the 5 s idle
    /// timeout of common application servers (Node.js, Go's default in some frameworks) so the
    /// proxy never reuses a connection the backend is closing.
    pub upstream_idle_timeout_ms: u64,
    /// Most idle keep-alive connections kept per backend.
    pub upstream_max_idle_per_backend: usize,
    /// How many other backends a request that failed to connect may try.
    pub connect_retries: u32,
    /// First ejection of a backend after a connection failure; doubles on each further failure.
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
    /// How long in-flight requests to a slot that lost its traffic may run before they are cut.
    pub drain_timeout_ms: u64,
    /// Largest request body accepted, in bytes; larger requests get 413.
    pub max_request_body_bytes: u64,
    /// Longest a write to a client may make no progress, as nginx's `send_timeout`: the time
    /// between two successive writes of a response, not for the whole response, so a slow reader
    /// is served and one that stopped reading is not. Past it the client's connection is closed,
    /// the backend connection feeding the response is closed too (never pooled half read), and
    /// the cut counts as the client's fault (`too_slow`), never against the release.
    pub send_timeout_ms: u64,
    /// Longest a client connection may stay open with no request in it: the wait for the next
    /// request head on HTTP/1.1 (and for the whole head once it starts), the time without an open
    /// stream on HTTP/2, where keep-alive pings alone would let a client hold a connection
    /// forever. nginx: `client_header_timeout` 60 s, `keepalive_timeout` 75 s.
    pub client_idle_timeout_ms: u64,
    /// A safe request (GET, HEAD, OPTIONS without a body) that the canary answered with a 4xx or
    /// 5xx is sent once more to the live slot, and the user gets the live slot's answer. The
    /// canary's answer still counts against it, so the judge sees every failure while users
    /// barely do: the blast radius of a bad release shrinks to its unsafe requests.
    pub retry_canary_failures: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            sticky: StickyConfig::default(),
            preview: PreviewConfig::default(),
            health_check: HealthCheckConfig::default(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 4_000,
            upstream_max_idle_per_backend: 256,
            connect_retries: 2,
            eject_base_ms: 1_000,
            eject_max_ms: 30_000,
            drain_timeout_ms: 30_000,
            max_request_body_bytes: 10 * 1024 * 1024,
            send_timeout_ms: 60_000,
            client_idle_timeout_ms: 30_000,
            retry_canary_failures: true,
        }
    }
}

impl ProxySettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_idle_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.client_idle_timeout_ms)
    }

    /// Every problem with these settings; `prefix` is the path of this table in the user's input.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut positive = |field: &str, value: u64| {
            if value == 0 {
                errors.push(FieldError::new(
                    format!("{prefix}{field}"),
                    "must be greater than 0",
                ));
            }
        };
        positive("connect_timeout_ms", self.connect_timeout_ms);
        positive("response_timeout_ms", self.response_timeout_ms);
        positive("upstream_idle_timeout_ms", self.upstream_idle_timeout_ms);
        positive("eject_base_ms", self.eject_base_ms);
        positive("eject_max_ms", self.eject_max_ms);
        positive("drain_timeout_ms", self.drain_timeout_ms);
        positive("max_request_body_bytes", self.max_request_body_bytes);
        positive("send_timeout_ms", self.send_timeout_ms);
        positive("client_idle_timeout_ms", self.client_idle_timeout_ms);
        let hc = &self.health_check;
        if hc.enabled {
            positive("health_check.interval_ms", hc.interval_ms);
            positive("health_check.timeout_ms", hc.timeout_ms);
            positive("health_check.healthy_threshold", u64::from(hc.healthy_threshold));
            positive(
                "health_check.unhealthy_threshold",
                u64::from(hc.unhealthy_threshold),
            );
            if !hc.path.starts_with('/') {
                errors.push(FieldError::new(
                    format!("{prefix}health_check.path"),
                    format!("{:?} must start with '/'", hc.path),
                ));
            }
        }
        if self.eject_max_ms < self.eject_base_ms {
            errors.push(FieldError::new(
                format!("{prefix}eject_max_ms"),
                format!(
                    "{} is below eject_base_ms ({})",
                    self.eject_max_ms, self.eject_base_ms
                ),
            ));
        }
        for (field, name) in [
            ("sticky.user_key_header", self.sticky.user_key_header.as_deref()),
            ("preview.header", Some(self.preview.header.as_str())),
        ] {
            if let Some(name) = name {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    errors.push(FieldError::new(
                        format!("{prefix}{field}"),
                        format!("{name:?} is not a valid HTTP header name"),
                    ));
                }
            }
        }
        for (field, name) in [
            ("sticky.bucket_cookie", Some(self.sticky.bucket_cookie.as_str())),
            ("sticky.user_key_cookie", self.sticky.user_key_cookie.as_deref()),
        ] {
            if let Some(name) = name {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !valid {
                    errors.push(FieldError::new(
                        format!("{prefix}{field}"),
                        format!("{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
                    ));
                }
            }
        }
        if let Some(token) = &self.preview.token {
            if token.len() < 16 || token.contains(':') || token.chars().any(|c| c.is_whitespace()) {
                errors.push(FieldError::new(
                    format!("{prefix}preview.token"),
                    "must be at least 16 characters without ':' or white space",
                ));
            }
        }
        errors
    }
}

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Users: routed by weight and stickiness.
    Public,
    /// Testers: always the slot that is not live.
    Preview,
}

/// A slot forced for a request, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    PreviewListener,
    PreviewHeader(Slot),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_timeout_defaults_like_nginx_and_must_be_positive() {
        let settings: ProxySettings = serde_json::from_str("{}").unwrap();
        assert_eq!(settings.send_timeout_ms, 60_000);
        assert!(settings.validate("").is_empty());
        let zero: ProxySettings = serde_json::from_str(r#"{"send_timeout_ms": 0}"#).unwrap();
        let errors = zero.validate("proxy.");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "proxy.send_timeout_ms");
    }
}
