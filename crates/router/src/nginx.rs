//! nginx as a router: cutover renders one configuration file per app, has nginx test it, reloads
//! nginx, and checks that nginx serves it before it calls a change applied. The guide with a
//! complete example is `docs/routers/nginx.md`.
//!
//! # What cutover writes
//!
//! The file at [`NginxConfig::config_file`] is included by the team's `nginx.conf` inside
//! `http {}`. It holds everything about the app, all named `cutover_<app>_*`:
//!
//! - one `upstream` per slot with the slot's backends (`max_fails`/`fail_timeout`, `keepalive`).
//!   nginx needs a server in every upstream, so an empty slot gets a `down` placeholder and no
//!   traffic: its share goes to the other slot (or, when both are empty, requests get 503).
//! - the user key (`map`s): the [`NginxConfig::user_key_header`], else the
//!   [`NginxConfig::user_key_cookie`], else the [`NginxConfig::bucket_cookie`], else the request's
//!   `$request_id`, which is then set as the bucket cookie so the client keeps its bucket.
//! - the split: `split_clients` on the key with the canary's share as a percentage to two
//!   decimals (a basis point is exactly 0.01 %). nginx's `split_clients` gives its first entry
//!   the hashes below `share × (2³² − 1) / 100 %` (cumulative bounds, `hash < bound`), so raising
//!   the share only moves users from the live slot to the canary. A `0%` entry would mean "the
//!   rest", so weights 0 and 10 000 render no `split_clients` at all: every request goes to one
//!   slot, exactly.
//! - the app's `server {}` on [`NginxConfig::listen`]: the cutover access log,
//!   `client_header_timeout`, and `location /` proxying to the chosen slot over HTTP/1.1
//!   keep-alive (`proxy_http_version 1.1`, `proxy_set_header Connection ""`). What else the
//!   server needs (TLS, more locations, the team's own access log) goes in
//!   [`NginxConfig::server_include`]; directives for the proxying location in
//!   [`NginxConfig::location_include`].
//! - a status `server {}` on [`NginxConfig::status_listen`] (loopback only) answering the file's
//!   revision, a hash of everything the file is rendered from.
//! - two comment lines with the revision and the route table as JSON: the file on disk is the
//!   state, read back by [`Router::applied`].
//!
//! # Applying a table
//!
//! [`Router::apply`] renders the file and, unless nginx already serves exactly that file:
//!
//! 1. writes it atomically (a dot-file in the same directory, which no include glob matches,
//!    renamed over it) and runs the [`NginxConfig::test_command`] (`nginx -t`). A failed test
//!    puts the previous file back (nginx never saw the new one) and returns
//!    [`RouterError::Refused`] with nginx's message.
//! 2. creates a flag file that makes the workers serving now answer with `Connection: close` for
//!    [`NginxConfig::keepalive_close_ms`] (see below), then runs the
//!    [`NginxConfig::reload_command`] (`nginx -s reload`).
//! 3. polls the status server until it answers the new revision. A reload nginx did not take (its
//!    error log says why, e.g. a listen address in use) puts the previous file back and returns
//!    [`RouterError::NotApplied`].
//! 4. when [`NginxConfig::pid_file`] is set, waits until the workers from before the reload no
//!    longer route new requests (below). Without it, `apply` returns when new workers serve the
//!    new revision, while old ones may still take requests for a moment.
//!
//! [`Router::applied`] reads the table from the file *and* asks the status server for the
//! revision: a file nginx did not load is an error, so `reconcile` applies the table again. After
//! nginx restarts it loads the file from disk, so `applied` matches and `reconcile` does nothing.
//!
//! # Old workers after a reload
//!
//! On a reload nginx starts new workers, lets both generations accept for 100 ms, then tells the
//! old ones to shut down: they close their listening sockets and idle keep-alive connections and
//! finish the requests they have. Two things still reach old workers after that:
//!
//! - a connection accepted before the shutdown that has not carried a request yet (clients open
//!   spare connections; hyper does) is kept, and its first request is routed by the old table.
//!   Such a connection lives until `client_header_timeout`, which cutover renders from
//!   [`NginxConfig::client_header_timeout_ms`]; `apply` waits until the old workers have exited or
//!   that long has passed since they started shutting down (it reads their titles, `nginx: worker
//!   process is shutting down`, from `/proc`).
//! - a request in flight finishes on its old worker: that is the drain. A slot that loses its
//!   traffic keeps its in-flight requests until they end or `worker_shutdown_timeout` (set it to
//!   [`NginxConfig::drain_timeout_ms`]) passes.
//!
//! # Keep-alive clients across reloads
//!
//! A shutting-down worker closes its idle keep-alive connections without reading them. A client
//! that sends its next request on one at that moment gets an error ("connection closed before
//! message completed") unless it retries, which browsers, curl and Go do for idempotent requests
//! and hyper/reqwest do not. No nginx directive changes this (in the conformance suite's load, 8
//! keep-alive clients lost 49 of 54 000 requests over 40 reloads). So before each reload cutover
//! creates `.<config file name>.closing-<revision>` next to the file; the serving revision checks
//! for it on every request (`if (-f ...)`, one `stat`) and, while it exists, proxies through a
//! named location with `keepalive_timeout 0`, so its responses say `Connection: close` and busy
//! clients move to fresh connections before the reload (none failed in the same load). A client
//! idle for longer than [`NginxConfig::keepalive_close_ms`] that sends exactly as the reload
//! closes its connection can still fail, as can one whose request was in flight for that whole
//! time and that reuses the connection nginx closes after the response.
//!
//! # Health
//!
//! nginx (open source) has only passive health checks: a backend that fails
//! [`NginxConfig::max_fails`] times within [`NginxConfig::fail_timeout_secs`] gets no requests
//! for that long, and a request that could not connect is retried on another backend
//! (`proxy_next_upstream error timeout`).
//!
//! # Counters
//!
//! Every request of the app's server is logged to [`NginxConfig::access_log`] in the
//! `cutover_<app>` format: `cutover1`, slot, an id of the slot's release, status,
//! `$request_time`. [`Router::counters`] reads the lines added since its last call (it starts at
//! the end of the log as it finds it), counts those of each slot's current release, and starts a
//! new series when the release of a slot changes or the log was truncated or replaced
//! (rotation). Rotate with `nginx -s reopen` afterwards (Debian's logrotate does), or nginx keeps
//! writing to the rotated file. nginx logs `$request_time` in milliseconds, so latencies are
//! known to the millisecond.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cutover_core::histogram::{bucket_index, LATENCY_BUCKETS};
use cutover_core::{FieldError, RouteTable, Slot};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Router, RouterError, SlotCounters};

/// Placeholder replaced by the app's name in [`NginxConfig::config_file`] and
/// [`NginxConfig::access_log`].
pub const APP_PLACEHOLDER: &str = "{app}";
/// Comment line prefixes of the rendered file.
const REVISION_LINE: &str = "# cutover-revision: ";
const TABLE_LINE: &str = "# cutover-table: ";
/// First field of every line of the cutover access log format.
const LOG_TAG: &str = "cutover1";
/// Bumped when the rendered text changes for the same inputs, so the revision changes with it.
const RENDER_FORMAT: &str = "cutover-nginx-1";
/// How often `apply` asks nginx whether the new revision is served yet.
const VERIFY_POLL: Duration = Duration::from_millis(10);
/// Largest answer read from the status server.
const STATUS_MAX_BYTES: u64 = 16 * 1024;

/// How cutover drives an nginx for one app: the `[app.router]` table of `cutover.toml` with
/// `kind = "nginx"`. Paths may contain `{app}`, replaced by the app's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxConfig {
    /// The file cutover writes; the team's `nginx.conf` includes it inside `http {}`. The
    /// default is in Debian's `conf.d`, which its `nginx.conf` already includes.
    pub config_file: String,
    /// `listen` parameters of the app's server, one directive each, as nginx takes them (`80`,
    /// `127.0.0.1:8080`, `443 ssl`).
    pub listen: Vec<String>,
    /// `server_name`s of the app's server; none means nginx's default (`""`).
    pub server_name: Vec<String>,
    /// A file of the team's own directives included inside the app's server (TLS certificates,
    /// their access log, more locations). Directives here are inherited by cutover's
    /// `location /`, except `proxy_set_header`, `add_header` and `error_page`, which cutover sets
    /// there (use `location_include`). It must not set `client_header_timeout` (cutover does).
    pub server_include: Option<String>,
    /// A file of the team's own directives included inside the location that proxies to the
    /// slots. `error_page`, `add_header` and `proxy_set_header` of the server level are not
    /// inherited there (cutover defines some), so put the app's own here.
    pub location_include: Option<String>,
    /// Loopback address of the status server cutover renders and asks which revision nginx
    /// serves. Apps sharing an nginx may share it (each has its own `server_name`).
    pub status_listen: String,
    /// Checks the configuration before a reload; run as argv (use `["sh", "-c", "..."]` for a
    /// shell). Its stderr is the message of a refused table.
    pub test_command: Vec<String>,
    /// Makes nginx load the configuration; run as argv.
    pub reload_command: Vec<String>,
    /// Longest the test or reload command may run.
    pub command_timeout_ms: u64,
    /// Longest `apply` waits, after the reload command, for nginx to serve only the new
    /// configuration. Must exceed `client_header_timeout_ms` by a second at least.
    pub verify_timeout_ms: u64,
    /// Before a reload, the workers serving now answer with `Connection: close` for this long,
    /// so clients that are sending requests reconnect instead of having their idle keep-alive
    /// connection closed under them by the reload (a request sent on it at that moment fails
    /// unless the client retries). 0 reloads at once.
    pub keepalive_close_ms: u64,
    /// `client_header_timeout` of the app's server. A worker that shuts down after a reload
    /// keeps the connections it accepted that carry no request yet, and routes their first
    /// request by the old table, until this timeout; `apply` waits for it (or for the old workers
    /// to exit) so nothing is routed by the old table once it returns.
    pub client_header_timeout_ms: u64,
    /// nginx's `pid` file. When set, `apply` also waits until the workers that ran before the
    /// reload have exited or have been shutting down for `client_header_timeout_ms`, so no new
    /// request is routed by the old table afterwards (needs cutover on nginx's host, reading
    /// `/proc`). `""` skips that wait.
    pub pid_file: String,
    /// Request header whose value identifies the user (for example `X-User-ID`).
    pub user_key_header: Option<String>,
    /// An existing cookie of the app whose value identifies the user (for example a session id).
    pub user_key_cookie: Option<String>,
    /// Cookie cutover issues to clients that carry no key, and reads back from then on.
    pub bucket_cookie: String,
    pub bucket_cookie_max_age_secs: u64,
    /// Add `Secure` to the bucket cookie (always added on TLS connections).
    pub bucket_cookie_secure: bool,
    /// The access log cutover renders for the app's server and reads for counters.
    pub access_log: String,
    /// How long a slot that lost its traffic may keep serving; set nginx's
    /// `worker_shutdown_timeout` to the same.
    pub drain_timeout_ms: u64,
    /// Idle keep-alive connections to backends kept per worker and slot (`keepalive`).
    pub upstream_keepalive: u32,
    /// Idle keep-alive connections to backends are closed after this long; keep it below the
    /// backends' own idle timeout.
    pub upstream_idle_timeout_ms: u64,
    /// Failures within `fail_timeout_secs` that take a backend out for `fail_timeout_secs`
    /// (0 never takes one out).
    pub max_fails: u32,
    pub fail_timeout_secs: u64,
    pub connect_timeout_ms: u64,
    /// Longest wait between two reads from a backend (`proxy_read_timeout`).
    pub read_timeout_ms: u64,
    /// Longest wait between two writes to a backend (`proxy_send_timeout`).
    pub send_timeout_ms: u64,
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            config_file: "/etc/nginx/conf.d/cutover-{app}.conf".into(),
            listen: vec!["80".into()],
            server_name: Vec::new(),
            server_include: None,
            location_include: None,
            status_listen: "127.0.0.1:8719".into(),
            test_command: vec!["nginx".into(), "-t".into()],
            reload_command: vec!["nginx".into(), "-s".into(), "reload".into()],
            command_timeout_ms: 30_000,
            verify_timeout_ms: 15_000,
            client_header_timeout_ms: 5_000,
            keepalive_close_ms: 1_000,
            pid_file: "/run/nginx.pid".into(),
            user_key_header: None,
            user_key_cookie: None,
            bucket_cookie: "cutover_bucket".into(),
            bucket_cookie_max_age_secs: 365 * 24 * 3600,
            bucket_cookie_secure: false,
            access_log: "/var/log/nginx/cutover-{app}.log".into(),
            drain_timeout_ms: 30_000,
            upstream_keepalive: 32,
            upstream_idle_timeout_ms: 4_000,
            max_fails: 3,
            fail_timeout_secs: 10,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
        }
    }
}

impl NginxConfig {
    /// Every problem at once, each with its field path (`prefix` + field) and what to do.
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |field: &str, message: String| {
            errors.push(FieldError::new(format!("{prefix}{field}"), message));
        };

        for (field, path) in [
            ("config_file", Some(self.config_file.as_str())),
            ("access_log", Some(self.access_log.as_str())),
            ("server_include", self.server_include.as_deref()),
            ("location_include", self.location_include.as_deref()),
        ] {
            if let Some(path) = path {
                if let Some(problem) = path_problem(path) {
                    error(field, problem);
                }
            }
        }
        if !self.pid_file.is_empty() {
            if let Some(problem) = path_problem(&self.pid_file) {
                error(
                    "pid_file",
                    format!("{problem}, or \"\" to skip waiting for old workers"),
                );
            }
        }
        if self.config_file == self.access_log {
            error(
                "access_log",
                "is the same file as config_file; give the access log its own path".into(),
            );
        }

        if self.listen.is_empty() {
            error(
                "listen",
                "is empty; give at least one listen address of the app's server, e.g. [\"80\"]".into(),
            );
        }
        for (i, listen) in self.listen.iter().enumerate() {
            if listen.trim().is_empty() || has_unsafe_chars(listen) {
                error(
                    &format!("listen[{i}]"),
                    format!(
                        "{listen:?} is not a listen address; write what follows `listen` in nginx, \
                         e.g. \"80\" or \"127.0.0.1:8080\" (no quotes, braces, ';', '$' or '\\')"
                    ),
                );
            }
        }
        for (i, name) in self.server_name.iter().enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) || has_unsafe_chars(name) {
                error(
                    &format!("server_name[{i}]"),
                    format!("{name:?} is not a server name; one name per entry, e.g. \"shop.example.com\""),
                );
            }
        }

        match self.status_listen.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() => error(
                "status_listen",
                format!("{addr} is not a loopback address; use 127.0.0.1:PORT or [::1]:PORT so only this host reaches it"),
            ),
            Ok(addr) if addr.port() == 0 => error(
                "status_listen",
                format!("{addr} has port 0; give a free port, e.g. 127.0.0.1:8719"),
            ),
            Ok(_) => {}
            Err(_) => error(
                "status_listen",
                format!("{:?} is not an IP:PORT address; e.g. 127.0.0.1:8719", self.status_listen),
            ),
        }

        for (field, argv) in [
            ("test_command", &self.test_command),
            ("reload_command", &self.reload_command),
        ] {
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                error(
                    field,
                    "is empty; give the program and its arguments, e.g. [\"nginx\", \"-t\"]".into(),
                );
            }
        }

        for (field, value) in [
            ("command_timeout_ms", self.command_timeout_ms),
            ("verify_timeout_ms", self.verify_timeout_ms),
            ("client_header_timeout_ms", self.client_header_timeout_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("bucket_cookie_max_age_secs", self.bucket_cookie_max_age_secs),
            ("upstream_keepalive", u64::from(self.upstream_keepalive)),
            ("upstream_idle_timeout_ms", self.upstream_idle_timeout_ms),
            ("fail_timeout_secs", self.fail_timeout_secs),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
        ] {
            if value == 0 {
                error(field, "must be greater than 0".into());
            }
        }

        if self.verify_timeout_ms < self.client_header_timeout_ms.saturating_add(1_000) {
            error(
                "verify_timeout_ms",
                format!(
                    "{} ms leaves no time to wait out client_header_timeout_ms ({} ms) after a reload; \
                     make it at least 1000 ms longer",
                    self.verify_timeout_ms, self.client_header_timeout_ms
                ),
            );
        }
        if let Some(header) = &self.user_key_header {
            let valid = !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                error(
                    "user_key_header",
                    format!(
                        "{header:?} is not a header name nginx reads; use letters, digits and '-' \
                         (nginx ignores headers with '_' by default), e.g. \"X-User-ID\""
                    ),
                );
            }
        }
        for (field, cookie) in [
            ("user_key_cookie", self.user_key_cookie.as_deref()),
            ("bucket_cookie", Some(self.bucket_cookie.as_str())),
        ] {
            if let Some(cookie) = cookie {
                let valid = !cookie.is_empty()
                    && cookie
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !valid {
                    error(
                        field,
                        format!(
                            "{cookie:?} is not a usable cookie name; use letters, digits, '_', '-' and '.'"
                        ),
                    );
                }
            }
        }
        errors
    }

    /// `template` with `{app}` replaced.
    fn path_for(template: &str, app: &str) -> PathBuf {
        PathBuf::from(template.replace(APP_PLACEHOLDER, app))
    }
}

/// Why `path` cannot be used, if it cannot.
fn path_problem(path: &str) -> Option<String> {
    let expanded = path.replace(APP_PLACEHOLDER, "app");
    if !expanded.starts_with('/') {
        Some(format!("{path:?} is not an absolute path; give the full path"))
    } else if has_unsafe_chars(&expanded) || expanded.contains(char::is_whitespace) {
        Some(format!(
            "{path:?} has characters nginx's configuration cannot take here (whitespace, quotes, braces, ';', '$', '\\')"
        ))
    } else {
        None
    }
}

/// Characters that would end or change an nginx directive if rendered unquoted.
fn has_unsafe_chars(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || matches!(c, ';' | '{' | '}' | '"' | '\'' | '$' | '\\' | '#'))
}

/// Whether `app` can name nginx upstreams and variables.
fn app_name_problem(app: &str) -> Option<String> {
    let valid = !app.is_empty()
        && app.len() <= 64
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (!valid).then(|| {
        format!(
            "app name {app:?} cannot name nginx upstreams and variables; the nginx router needs \
             1 to 64 letters, digits, '-' or '_'"
        )
    })
}

/// The `cutover_<app>` prefix of every name cutover renders ('-' is not allowed in variables).
fn ident(app: &str) -> String {
    format!("cutover_{}", app.replace('-', "_"))
}

/// A stable 64-bit FNV-1a hash, as 16 hex digits (the same in every build, unlike `std`'s).
fn fnv_hex(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The id of a release in the access log (versions may hold characters nginx strings cannot).
fn release_id(version: &str) -> String {
    fnv_hex(&[b"release", version.as_bytes()])
}

/// The revision of a rendered table: a hash of everything that goes into the file.
fn revision_of(app: &str, config: &NginxConfig, table: &RouteTable) -> String {
    let config_json = serde_json::to_string(config).unwrap_or_default();
    let table_json = serde_json::to_string(table).unwrap_or_default();
    fnv_hex(&[
        RENDER_FORMAT.as_bytes(),
        app.as_bytes(),
        config_json.as_bytes(),
        table_json.as_bytes(),
    ])
}

/// The weight of the canary nginx should route by: an empty slot gets nothing while the other
/// has backends. `None` when neither slot has backends.
fn effective_canary_weight(table: &RouteTable) -> Option<u16> {
    let live_empty = table.pool(table.live).backends.is_empty();
    let canary_empty = table.pool(table.canary()).backends.is_empty();
    match (live_empty, canary_empty) {
        (true, true) => None,
        (false, true) => Some(0),
        (true, false) => Some(10_000),
        (false, false) => Some(table.canary_weight_bp.min(10_000)),
    }
}

/// The file cutover writes for `app` routing by `table`. Deterministic: the same inputs give the
/// same text, whose revision (a hash of the inputs) the status server answers.
pub fn render_config(app_name: &str, config: &NginxConfig, table: &RouteTable) -> String {
    let id = ident(app_name);
    let revision = revision_of(app_name, config, table);
    let table_json = serde_json::to_string(table).unwrap_or_default();
    let access_log = NginxConfig::path_for(&config.access_log, app_name);
    let mut out = String::new();
    let w = &mut out;
    // `write!` into a String cannot fail.
    let _ = writeln!(
        w,
        "# Written by cutover for app {app_name:?}; it replaces this file on every change.\n\
         # Do not edit: change cutover.toml or the route table instead.\n\
         {REVISION_LINE}{revision}\n\
         {TABLE_LINE}{table_json}\n"
    );

    // Upstreams.
    for slot in Slot::ALL {
        let pool = table.pool(slot);
        let _ = writeln!(w, "upstream {id}_{slot} {{");
        if pool.backends.is_empty() {
            let _ = writeln!(
                w,
                "    # No backends: nginx needs a server here, and cutover routes nothing to this slot.\n    server 127.0.0.1:9 down;"
            );
        }
        for backend in &pool.backends {
            let _ = writeln!(
                w,
                "    server {backend} max_fails={} fail_timeout={}s;",
                config.max_fails, config.fail_timeout_secs
            );
        }
        let _ = writeln!(
            w,
            "    keepalive {};\n    keepalive_timeout {}ms;\n}}\n",
            config.upstream_keepalive, config.upstream_idle_timeout_ms
        );
    }

    // The user key: header, else the app's cookie, else the bucket cookie, else a fresh id.
    let bucket_cookie_var = format!("${{cookie_{}}}", config.bucket_cookie);
    let _ = writeln!(
        w,
        "# The user key: {}the bucket cookie, else a fresh id issued as the bucket cookie.",
        match (&config.user_key_header, &config.user_key_cookie) {
            (Some(h), Some(c)) => format!("header {h}, else cookie {c}, else "),
            (Some(h), None) => format!("header {h}, else "),
            (None, Some(c)) => format!("cookie {c}, else "),
            (None, None) => String::new(),
        }
    );
    let _ = writeln!(
        w,
        "map {bucket_cookie_var} ${id}_key_bucket {{\n    \"\" $request_id;\n    default {bucket_cookie_var};\n}}"
    );
    let mut key_var = format!("${id}_key_bucket");
    let mut present = bucket_cookie_var.clone();
    if let Some(cookie) = &config.user_key_cookie {
        let var = format!("${{cookie_{cookie}}}");
        let _ = writeln!(
            w,
            "map {var} ${id}_key_cookie {{\n    \"\" {key_var};\n    default {var};\n}}"
        );
        key_var = format!("${id}_key_cookie");
        present = format!("{var}{present}");
    }
    if let Some(header) = &config.user_key_header {
        let var = format!("$http_{}", header.to_ascii_lowercase().replace('-', "_"));
        let _ = writeln!(
            w,
            "map {var} ${id}_key_header {{\n    \"\" {key_var};\n    default {var};\n}}"
        );
        key_var = format!("${id}_key_header");
        present = format!("{var}{present}");
    }
    let secure = if config.bucket_cookie_secure {
        "; Secure".to_string()
    } else {
        format!("${id}_cookie_secure")
    };
    let _ = writeln!(
        w,
        "map $https ${id}_cookie_secure {{\n    on \"; Secure\";\n    default \"\";\n}}\n\
         map \"{present}\" ${id}_set_cookie {{\n    \"\" \"{}=$request_id; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}\";\n    default \"\";\n}}\n",
        config.bucket_cookie, config.bucket_cookie_max_age_secs
    );

    // The split.
    let weight = effective_canary_weight(table);
    let canary = table.canary();
    let live = table.live;
    let slot_value = match weight {
        None => None,
        Some(0) => Some(live.to_string()),
        Some(10_000) => Some(canary.to_string()),
        Some(bp) => {
            let _ = writeln!(
                w,
                "# {bp} bp of users on the canary ({canary}): split_clients gives the first entry the \
                 first part of the hash range, so a growing share only adds users.\n\
                 split_clients \"{key_var}\" ${id}_split {{\n    {}.{:02}% {canary};\n    * {live};\n}}\n",
                bp / 100,
                bp % 100
            );
            Some(format!("${id}_split"))
        }
    };
    let _ = writeln!(
        w,
        "map ${id}_slot ${id}_release {{\n    blue {};\n    green {};\n    default -;\n}}\n",
        release_id(&table.blue.version),
        release_id(&table.green.version)
    );
    let _ = writeln!(
        w,
        "log_format {id} \"{LOG_TAG} ${id}_slot ${id}_release $status $request_time\";\n"
    );

    // The app's server.
    let _ = writeln!(w, "server {{");
    for listen in &config.listen {
        let _ = writeln!(w, "    listen {listen};");
    }
    if !config.server_name.is_empty() {
        let _ = writeln!(w, "    server_name {};", config.server_name.join(" "));
    }
    let _ = writeln!(
        w,
        "    access_log {} {id};\n    client_header_timeout {}ms;",
        access_log.display(),
        config.client_header_timeout_ms
    );
    match &slot_value {
        Some(value) => {
            let _ = writeln!(w, "    set ${id}_slot {value};");
        }
        None => {
            let _ = writeln!(w, "    set ${id}_slot -;");
        }
    }
    if let Some(include) = &config.server_include {
        let _ = writeln!(w, "    include {include};");
    }
    if slot_value.is_some() {
        let proxy = format!(
            "        proxy_pass http://{id}_${id}_slot;\n\
             \x20       proxy_http_version 1.1;\n\
             \x20       proxy_set_header Connection \"\";\n\
             \x20       proxy_set_header Host $host;\n\
             \x20       proxy_set_header X-Real-IP $remote_addr;\n\
             \x20       proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20       proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20       proxy_next_upstream error timeout;\n\
             \x20       proxy_connect_timeout {}ms;\n\
             \x20       proxy_send_timeout {}ms;\n\
             \x20       proxy_read_timeout {}ms;\n\
             \x20       add_header Set-Cookie ${id}_set_cookie always;{}",
            config.connect_timeout_ms,
            config.send_timeout_ms,
            config.read_timeout_ms,
            config
                .location_include
                .as_ref()
                .map(|include| format!("\n        include {include};"))
                .unwrap_or_default()
        );
        let flag = closing_flag(&NginxConfig::path_for(&config.config_file, app_name), &revision);
        let _ = writeln!(
            w,
            "\n    # While cutover prepares a reload, this revision answers with `Connection: close`\n\
             \x20   # (see @{id}_closing), so busy keep-alive clients reconnect before the reload\n\
             \x20   # closes their idle connections.\n\
             \x20   location / {{\n\
             \x20       open_file_cache off;\n\
             \x20       error_page 418 = @{id}_closing;\n\
             \x20       if (-f {flag}) {{\n\
             \x20           return 418;\n\
             \x20       }}\n\
             {proxy}\n\
             \x20   }}\n\n\
             \x20   location @{id}_closing {{\n\
             \x20       keepalive_timeout 0;\n\
             {proxy}\n\
             \x20   }}\n\
             }}\n",
            flag = flag.display()
        );
    } else {
        let _ = writeln!(
            w,
            "\n    location / {{\n\
             \x20       # Neither slot has backends.\n\
             \x20       return 503 \"no backends for {app_name}\\n\";\n\
             \x20   }}\n\
             }}\n"
        );
    }

    // The status server.
    let _ = writeln!(
        w,
        "# cutover asks which revision nginx serves.\n\
         server {{\n\
         \x20   listen {};\n\
         \x20   server_name {};\n\
         \x20   access_log off;\n\
         \x20   location = {} {{\n\
         \x20       default_type text/plain;\n\
         \x20       return 200 \"{revision}\\n\";\n\
         \x20   }}\n\
         \x20   location / {{\n\
         \x20       return 404;\n\
         \x20   }}\n\
         }}",
        config.status_listen,
        status_host(app_name),
        status_path(app_name)
    );
    out
}

/// The file whose presence makes the workers serving `revision` answer with
/// `Connection: close`: a dot-file next to `config_file`, which no include glob matches.
fn closing_flag(config_file: &Path, revision: &str) -> PathBuf {
    let name = config_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    config_file.with_file_name(format!(".{name}.closing-{revision}"))
}

fn status_host(app: &str) -> String {
    format!("cutover-status-{app}")
}

fn status_path(app: &str) -> String {
    format!("/cutover/{app}/revision")
}

/// The revision and table recorded in a rendered file.
fn parse_rendered(text: &str) -> Result<(String, RouteTable), String> {
    let revision = text
        .lines()
        .find_map(|l| l.strip_prefix(REVISION_LINE))
        .ok_or_else(|| format!("no `{}` line", REVISION_LINE.trim()))?;
    let table = text
        .lines()
        .find_map(|l| l.strip_prefix(TABLE_LINE))
        .ok_or_else(|| format!("no `{}` line", TABLE_LINE.trim()))?;
    let table = serde_json::from_str(table).map_err(|e| format!("its route table does not parse: {e}"))?;
    Ok((revision.trim().to_string(), table))
}

/// nginx, driven through its configuration, for one app.
#[derive(Debug)]
pub struct NginxRouter {
    app: String,
    config: NginxConfig,
    config_file: PathBuf,
    status_addr: SocketAddr,
    /// Serialises applies: each one reads the file it replaces.
    apply_lock: tokio::sync::Mutex<()>,
    log: Arc<Mutex<LogReader>>,
}

impl NginxRouter {
    /// A router for `app_name`; fails on an invalid configuration, naming every field wrong.
    pub fn new(app_name: &str, config: NginxConfig) -> Result<Self, RouterError> {
        let mut problems: Vec<String> = config.validate("").iter().map(ToString::to_string).collect();
        if let Some(problem) = app_name_problem(app_name) {
            problems.insert(0, problem);
        }
        let status_addr = config.status_listen.parse::<SocketAddr>().ok();
        let (true, Some(status_addr)) = (problems.is_empty(), status_addr) else {
            return Err(RouterError::Unavailable {
                router: "nginx".to_string(),
                reason: format!("invalid router configuration:\n  - {}", problems.join("\n  - ")),
            });
        };
        let config_file = NginxConfig::path_for(&config.config_file, app_name);
        let access_log = NginxConfig::path_for(&config.access_log, app_name);
        Ok(NginxRouter {
            app: app_name.to_string(),
            config_file,
            status_addr,
            apply_lock: tokio::sync::Mutex::new(()),
            log: Arc::new(Mutex::new(LogReader::new(access_log))),
            config,
        })
    }

    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// The file this router writes.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    fn unavailable(&self, reason: String) -> RouterError {
        RouterError::Unavailable {
            router: self.describe(),
            reason,
        }
    }

    /// The revision nginx's status server answers now.
    async fn served_revision(&self) -> Result<String, String> {
        let timeout = Duration::from_millis(self.config.verify_timeout_ms.min(5_000));
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(self.status_addr)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                status_path(&self.app),
                status_host(&self.app)
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending the request failed: {e}"))?;
            let mut answer = Vec::new();
            stream
                .take(STATUS_MAX_BYTES)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?;
            let answer = String::from_utf8_lossy(&answer);
            let (head, body) = answer
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("answered {answer:?}, not HTTP"))?;
            let status_line = head.lines().next().unwrap_or_default();
            if status_line.split_whitespace().nth(1) != Some("200") {
                return Err(format!(
                    "answered {status_line:?}: that address is not cutover's status server for {} \
                     (is the file included inside http {{}}?)",
                    self.app
                ));
            }
            Ok(body.trim().to_string())
        };
        match tokio::time::timeout(timeout, fetch).await {
            Ok(result) => result.map_err(|e| {
                format!(
                    "status server http://{}{}: {e}",
                    self.status_addr,
                    status_path(&self.app)
                )
            }),
            Err(_) => Err(format!(
                "status server http://{}{} did not answer within {timeout:?}",
                self.status_addr,
                status_path(&self.app)
            )),
        }
    }

    /// Runs `argv` (the `field` of the configuration) and returns its output, or why it failed.
    async fn run_command(&self, field: &str, argv: &[String]) -> Result<(), CommandFailure> {
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let Some((program, args)) = argv.split_first() else {
            return Err(CommandFailure::NotRun(format!("{field} is empty")));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Err(_) => {
                return Err(CommandFailure::NotRun(format!(
                    "{field} {argv:?} did not finish within {timeout:?} (command_timeout_ms)"
                )))
            }
            Ok(Err(e)) => {
                return Err(CommandFailure::NotRun(format!(
                "cannot run {field} {argv:?}: {e}; check that {program:?} is installed and on cutover's PATH"
            )))
            }
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(stdout.trim());
        }
        Err(CommandFailure::Failed(format!(
            "{field} {argv:?} failed ({}): {text}",
            output.status
        )))
    }

    /// Replaces the file with `text` atomically: a dot-file (no include glob matches it) in the
    /// same directory, renamed over the file.
    fn write_file(&self, text: &str) -> Result<(), String> {
        let path = &self.config_file;
        let dir = path
            .parent()
            .ok_or_else(|| format!("{} has no directory", path.display()))?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} has no file name", path.display()))?
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.cutover-tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "cannot write {} (config_file): {e}; check that the directory exists and cutover may write it",
                path.display()
            )
        })
    }

    /// Puts back what the file held before (removes it if there was none).
    fn restore(&self, previous: Option<&str>) -> Option<String> {
        let result = match previous {
            Some(text) => self.write_file(text),
            None => std::fs::remove_file(&self.config_file)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("cannot remove {}: {e}", self.config_file.display())),
        };
        result.err().map(|e| {
            tracing::error!(error = %e, "could not put back the previous nginx configuration");
            format!(" (putting back the previous file failed too: {e})")
        })
    }

    fn read_file(&self) -> Result<Option<String>, String> {
        match std::fs::read_to_string(&self.config_file) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read {} (config_file): {e}",
                self.config_file.display()
            )),
        }
    }

    /// nginx's worker processes with whether each is shutting down, when `pid_file` is set.
    fn workers(&self) -> Result<Option<Vec<(u32, bool)>>, String> {
        if self.config.pid_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.config.pid_file).map_err(|e| {
            format!(
                "cannot read nginx's pid file {} (pid_file): {e}; set pid_file to the path of nginx's \
                 `pid` directive, or to \"\" to skip waiting for old workers",
                self.config.pid_file
            )
        })?;
        let master: u32 = text.trim().parse().map_err(|_| {
            format!(
                "nginx's pid file {} (pid_file) holds {:?}, not a pid",
                self.config.pid_file,
                text.trim()
            )
        })?;
        Ok(Some(
            worker_processes(master)
                .into_iter()
                .map(|(pid, title)| (pid, title.contains("shutting down")))
                .collect(),
        ))
    }

    /// nginx's workers that accept connections, when `pid_file` is set.
    fn accepting_workers(&self) -> Result<Option<Vec<u32>>, String> {
        Ok(self.workers()?.map(|workers| {
            workers
                .into_iter()
                .filter(|(_, shutting_down)| !shutting_down)
                .map(|(pid, _)| pid)
                .collect()
        }))
    }

    /// Waits until nginx answers `revision`, then until none of `old_workers` can route a new
    /// request. The error says whether nginx had loaded the new configuration.
    async fn verify(&self, revision: &str, old_workers: Option<Vec<u32>>) -> Result<(), (bool, RouterError)> {
        let timeout = Duration::from_millis(self.config.verify_timeout_ms);
        let started = Instant::now();
        let mut last;
        loop {
            last = self.served_revision().await;
            if last.as_deref() == Ok(revision) {
                break;
            }
            if started.elapsed() >= timeout {
                return Err((
                    false,
                    RouterError::NotApplied {
                        router: self.describe(),
                        wanted: format!("revision {revision}"),
                        found: match &last {
                            Ok(found) => format!("revision {found}"),
                            Err(e) => e.clone(),
                        },
                        hint: format!(
                            "nginx did not load the new configuration within {timeout:?} (verify_timeout_ms); \
                             its error log says why (a listen address in use, a reload command that \
                             signals another nginx); the previous file was put back"
                        ),
                    },
                ));
            }
            tokio::time::sleep(VERIFY_POLL).await;
        }
        let Some(old_workers) = old_workers else {
            return Ok(());
        };
        // Old workers stop accepting when they start shutting down, but connections they
        // accepted before and that carry no request yet stay open until their first request
        // (routed by the old table) or `client_header_timeout`. So wait for the old workers to
        // exit, or for that timeout to pass since they started shutting down.
        let fresh_window = Duration::from_millis(self.config.client_header_timeout_ms);
        let mut shutting_since: Option<Instant> = None;
        loop {
            let workers = match self.workers() {
                Ok(Some(workers)) => workers,
                Ok(None) => return Ok(()),
                Err(e) => return Err((true, self.unavailable(e))),
            };
            let remaining: Vec<(u32, bool)> = workers
                .into_iter()
                .filter(|(pid, _)| old_workers.contains(pid))
                .collect();
            let accepting: Vec<u32> = remaining
                .iter()
                .filter(|(_, shutting_down)| !shutting_down)
                .map(|(pid, _)| *pid)
                .collect();
            if accepting.is_empty() {
                let since = *shutting_since.get_or_insert_with(Instant::now);
                if remaining.is_empty() || since.elapsed() >= fresh_window {
                    return Ok(());
                }
            }
            if started.elapsed() >= timeout {
                let (found, hint) = if accepting.is_empty() {
                    (
                        format!(
                            "old workers {remaining:?} shutting down, maybe with unused client connections"
                        ),
                        format!(
                            "verify_timeout_ms ({timeout:?}) must leave time for client_header_timeout_ms \
                             ({fresh_window:?}) after the old workers start shutting down"
                        ),
                    )
                } else {
                    (
                        format!("old workers {accepting:?} still accepting requests"),
                        format!(
                            "nginx serves the new configuration, but workers from before the reload \
                             did not start shutting down within {timeout:?} (verify_timeout_ms)"
                        ),
                    )
                };
                return Err((
                    true,
                    RouterError::NotApplied {
                        router: self.describe(),
                        wanted: format!("only workers with revision {revision}"),
                        found,
                        hint,
                    },
                ));
            }
            tokio::time::sleep(VERIFY_POLL).await;
        }
    }
}

impl NginxRouter {
    async fn reload_and_verify(
        &self,
        previous: Option<&str>,
        revision: &str,
        old_workers: Option<Vec<u32>>,
    ) -> Result<(), RouterError> {
        if let Err(CommandFailure::Failed(message) | CommandFailure::NotRun(message)) = self
            .run_command("reload_command", &self.config.reload_command)
            .await
        {
            let restore = self.restore(previous).unwrap_or_default();
            return Err(self.unavailable(format!(
                "{message}; is nginx running? The previous file is back{restore}"
            )));
        }
        if let Err((loaded, e)) = self.verify(revision, old_workers).await {
            if !loaded {
                let _ = self.restore(previous);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes every closing flag of this app's file (also ones a crash left behind).
    fn remove_closing_flags(&self) {
        let Some(dir) = self.config_file.parent() else {
            return;
        };
        let prefix = closing_flag(&self.config_file, "")
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(flag = %entry.path().display(), error = %e, "cannot remove a closing flag");
                }
            }
        }
    }
}

/// Why a command did not succeed.
enum CommandFailure {
    /// It could not be started or did not finish.
    NotRun(String),
    /// It ran and exited with an error.
    Failed(String),
}

/// The worker processes of nginx master `master`, with their titles (`nginx: worker process`,
/// `nginx: worker process is shutting down`), from `/proc`.
fn worker_processes(master: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            if ppid != master {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            title
                .contains("worker process")
                .then(|| (pid, title.trim().to_string()))
        })
        .collect()
}

#[async_trait]
impl Router for NginxRouter {
    fn describe(&self) -> String {
        format!("nginx ({})", self.config_file.display())
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        table.validate().map_err(|e| RouterError::Refused {
            router: self.describe(),
            reason: e.to_string(),
        })?;
        let _guard = self.apply_lock.lock().await;
        let text = render_config(&self.app, &self.config, table);
        let revision = revision_of(&self.app, &self.config, table);
        let previous = self.read_file().map_err(|e| self.unavailable(e))?;
        if previous.as_deref() == Some(text.as_str())
            && self.served_revision().await.as_deref() == Ok(revision.as_str())
        {
            return Ok(());
        }
        let old_workers = self.accepting_workers().map_err(|e| self.unavailable(e))?;

        self.write_file(&text).map_err(|e| self.unavailable(e))?;
        if let Err(failure) = self.run_command("test_command", &self.config.test_command).await {
            let restore = self.restore(previous.as_deref()).unwrap_or_default();
            return Err(match failure {
                CommandFailure::Failed(message) => RouterError::Refused {
                    router: self.describe(),
                    reason: format!(
                        "nginx rejected the configuration rendered for this table; nothing was \
                         reloaded and the previous file is back{restore}: {message}"
                    ),
                },
                CommandFailure::NotRun(message) => {
                    self.unavailable(format!("{message}; the previous file is back{restore}"))
                }
            });
        }
        // Before the reload, the workers serving now answer with `Connection: close` for a
        // while, so clients that are sending requests move to fresh connections instead of
        // having an idle one closed under them by the reload.
        self.remove_closing_flags();
        let hold = Duration::from_millis(self.config.keepalive_close_ms);
        if !hold.is_zero() {
            if let Ok(serving) = self.served_revision().await {
                let flag = closing_flag(&self.config_file, &serving);
                match std::fs::write(&flag, b"") {
                    Ok(()) => tokio::time::sleep(hold).await,
                    Err(e) => tracing::warn!(
                        flag = %flag.display(),
                        error = %e,
                        "cannot create the flag that closes keep-alive connections before a reload; reloading without it"
                    ),
                }
            }
        }
        let result = self
            .reload_and_verify(previous.as_deref(), &revision, old_workers)
            .await;
        self.remove_closing_flags();
        result
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        let text = self
            .read_file()
            .map_err(|e| self.unavailable(e))?
            .ok_or_else(|| {
                self.unavailable(format!(
                    "{} does not exist: no table was applied yet",
                    self.config_file.display()
                ))
            })?;
        let (revision, table) = parse_rendered(&text).map_err(|e| {
            self.unavailable(format!(
                "{} was not written by cutover or was edited: {e}",
                self.config_file.display()
            ))
        })?;
        let served = self.served_revision().await.map_err(|e| self.unavailable(e))?;
        if served != revision {
            return Err(RouterError::NotApplied {
                router: self.describe(),
                wanted: format!("revision {revision} (the file on disk)"),
                found: format!("revision {served}"),
                hint: "nginx did not load the file (a failed reload?); applying the table again reloads it"
                    .to_string(),
            });
        }
        Ok(table)
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        let versions = match self.read_file().map_err(|e| self.unavailable(e))? {
            Some(text) => parse_rendered(&text)
                .map(|(_, t)| [t.blue.version, t.green.version])
                .unwrap_or_default(),
            None => Default::default(),
        };
        let log = Arc::clone(&self.log);
        let read = tokio::task::spawn_blocking(move || {
            log.lock().unwrap_or_else(PoisonError::into_inner).read(&versions)
        })
        .await
        .map_err(|e| self.unavailable(format!("reading the access log stopped: {e}")))?;
        read.map_err(|e| self.unavailable(e))
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.config.drain_timeout_ms)
    }
}

/// Counts of one slot's current release.
#[derive(Debug, Clone)]
struct SlotCount {
    version: String,
    release: String,
    series: u64,
    requests: u64,
    server_errors: u64,
    client_errors: u64,
    codes: std::collections::BTreeMap<u16, u64>,
    latency_buckets: Vec<u64>,
}

/// Reads the access log incrementally.
#[derive(Debug)]
struct LogReader {
    path: PathBuf,
    /// (device, inode) of the file read, to notice a replaced file.
    file_id: Option<(u64, u64)>,
    offset: u64,
    /// The end of a line not yet complete.
    partial: Vec<u8>,
    next_series: u64,
    slots: [SlotCount; 2],
    started: bool,
}

impl LogReader {
    fn new(path: PathBuf) -> LogReader {
        // Series numbers unique across cutover restarts too.
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_mul(1024);
        let slot = |series| SlotCount {
            version: String::new(),
            release: release_id(""),
            series,
            requests: 0,
            server_errors: 0,
            client_errors: 0,
            codes: Default::default(),
            latency_buckets: vec![0; LATENCY_BUCKETS],
        };
        LogReader {
            path,
            file_id: None,
            offset: 0,
            partial: Vec::new(),
            next_series: base + 2,
            slots: [slot(base), slot(base + 1)],
            started: false,
        }
    }

    fn new_series(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.series = self.next_series;
        self.next_series += 1;
        slot.requests = 0;
        slot.server_errors = 0;
        slot.client_errors = 0;
        slot.codes.clear();
        slot.latency_buckets.iter_mut().for_each(|b| *b = 0);
    }

    /// Reads what was added to the log and returns the counts of `versions` (blue, green).
    fn read(&mut self, versions: &[String; 2]) -> Result<[SlotCounters; 2], String> {
        for (index, version) in versions.iter().enumerate() {
            if self.slots[index].version != *version {
                self.new_series(index);
                self.slots[index].version = version.clone();
                self.slots[index].release = release_id(version);
            }
        }
        self.read_new_lines()?;
        Ok([0, 1].map(|i| {
            let s = &self.slots[i];
            SlotCounters {
                version: s.version.clone(),
                series: s.series,
                requests: s.requests,
                server_errors: s.server_errors,
                client_errors: Some(s.client_errors),
                codes: Some(s.codes.clone()),
                users: None,
                users_with_client_errors: None,
                latency_buckets: Some(s.latency_buckets.clone()),
                in_flight: None,
            }
        }))
    }

    fn read_new_lines(&mut self) -> Result<(), String> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            // nginx creates it on start; nothing logged yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.started = true;
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the access log {} (access_log): {e}",
                    self.path.display()
                ))
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read the access log {}: {e}", self.path.display()))?;
        let id = (meta.dev(), meta.ino());
        if !self.started {
            // Start at the end of the log as found: what came before is history.
            self.started = true;
            self.file_id = Some(id);
            self.offset = meta.len();
            return Ok(());
        }
        if self.file_id != Some(id) || meta.len() < self.offset {
            // Rotated (a new file) or truncated: the counts start again.
            let first_file = self.file_id.is_none();
            self.file_id = Some(id);
            self.offset = 0;
            self.partial.clear();
            if !first_file {
                self.new_series(0);
                self.new_series(1);
            }
        }
        if meta.len() == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| format!("cannot read the access log {}: {e}", self.path.display()))?;
        let mut chunk = Vec::new();
        file.take(meta.len() - self.offset)
            .read_to_end(&mut chunk)
            .map_err(|e| format!("cannot read the access log {}: {e}", self.path.display()))?;
        self.offset += chunk.len() as u64;
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(&chunk);
        let complete = match data.iter().rposition(|b| *b == b'\n') {
            Some(end) => end + 1,
            None => 0,
        };
        self.partial = data[complete..].to_vec();
        for line in data[..complete].split(|b| *b == b'\n') {
            if let Some((slot, release, status, micros)) = parse_log_line(line) {
                let count = &mut self.slots[slot.index()];
                if count.release != release {
                    continue;
                }
                count.requests += 1;
                if (500..600).contains(&status) {
                    count.server_errors += 1;
                }
                // 499 is nginx's own "the client closed the connection": the client's doing.
                if (400..500).contains(&status) && status != 499 {
                    count.client_errors += 1;
                }
                if cutover_core::status::tracked_index(status).is_some() {
                    *count.codes.entry(status).or_default() += 1;
                }
                count.latency_buckets[bucket_index(micros)] += 1;
            }
        }
        Ok(())
    }
}

/// `cutover1 <slot> <release> <status> <request_time>`, where `request_time` is seconds with
/// milliseconds (`0.123`). Lines of other formats (or of requests that never chose a slot) give
/// `None`.
fn parse_log_line(line: &[u8]) -> Option<(Slot, &str, u16, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.trim_end_matches('\r').split(' ');
    if fields.next()? != LOG_TAG {
        return None;
    }
    let slot = match fields.next()? {
        "blue" => Slot::Blue,
        "green" => Slot::Green,
        _ => return None,
    };
    let release = fields.next()?;
    let status = fields.next()?.parse().ok()?;
    let micros = parse_seconds_as_micros(fields.next()?)?;
    Some((slot, release, status, micros))
}

fn parse_seconds_as_micros(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    whole.checked_mul(1_000_000)?.checked_add(fraction)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cutover_core::Pool;

    fn table(live: Slot, weight: u16) -> RouteTable {
        RouteTable {
            live,
            canary_weight_bp: weight,
            blue: Pool {
                version: "v1".into(),
                backends: vec!["127.0.0.1:1000".parse().unwrap()],
            },
            green: Pool {
                version: "v2 \"$x\"".into(),
                backends: vec!["127.0.0.1:2000".parse().unwrap(), "[::1]:2001".parse().unwrap()],
            },
        }
    }

    #[test]
    fn renders_the_share_to_two_decimals_and_no_split_at_the_ends() {
        let config = NginxConfig::default();
        let text = render_config("shop", &config, &table(Slot::Blue, 1));
        assert!(text.contains("0.01% green;"), "{text}");
        assert!(text.contains("* blue;"), "{text}");
        assert!(
            text.contains("set $cutover_shop_slot $cutover_shop_split;"),
            "{text}"
        );
        let text = render_config("shop", &config, &table(Slot::Green, 2550));
        assert!(text.contains("25.50% blue;"), "{text}");
        let text = render_config("shop", &config, &table(Slot::Blue, 9999));
        assert!(text.contains("99.99% green;"), "{text}");
        for (live, weight, slot) in [
            (Slot::Blue, 0, "blue"),
            (Slot::Blue, 10_000, "green"),
            (Slot::Green, 0, "green"),
        ] {
            let text = render_config("shop", &config, &table(live, weight));
            assert!(!text.contains("split_clients"), "{text}");
            assert!(
                text.contains(&format!("set $cutover_shop_slot {slot};")),
                "{text}"
            );
        }
    }

    #[test]
    fn an_empty_slot_gets_a_placeholder_and_no_traffic() {
        let mut t = table(Slot::Blue, 5000);
        t.green = Pool::default();
        let text = render_config("shop", &NginxConfig::default(), &t);
        assert!(text.contains("server 127.0.0.1:9 down;"), "{text}");
        assert!(!text.contains("split_clients"), "{text}");
        assert!(text.contains("set $cutover_shop_slot blue;"), "{text}");
        t.blue = Pool::default();
        let text = render_config("shop", &NginxConfig::default(), &t);
        assert!(text.contains("return 503"), "{text}");
    }

    #[test]
    fn the_file_reads_back_and_the_revision_follows_the_inputs() {
        let config = NginxConfig::default();
        let t = table(Slot::Green, 1234);
        let text = render_config("shop", &config, &t);
        let (revision, back) = parse_rendered(&text).unwrap();
        assert_eq!(back, t);
        assert_eq!(revision, revision_of("shop", &config, &t));
        assert!(text.contains(&format!("return 200 \"{revision}\\n\";")));
        assert_ne!(revision, revision_of("shop", &config, &table(Slot::Green, 1235)));
        assert_eq!(text, render_config("shop", &config, &t));
    }

    #[test]
    fn user_key_chain_follows_header_cookie_bucket() {
        let config = NginxConfig {
            user_key_header: Some("X-User-ID".into()),
            user_key_cookie: Some("session".into()),
            ..NginxConfig::default()
        };
        let text = render_config("my-app", &config, &table(Slot::Blue, 100));
        assert!(
            text.contains("map $http_x_user_id $cutover_my_app_key_header"),
            "{text}"
        );
        assert!(text.contains("\"\" $cutover_my_app_key_cookie;"), "{text}");
        assert!(
            text.contains("map ${cookie_session} $cutover_my_app_key_cookie"),
            "{text}"
        );
        assert!(
            text.contains("split_clients \"$cutover_my_app_key_header\""),
            "{text}"
        );
        assert!(
            text.contains("map \"$http_x_user_id${cookie_session}${cookie_cutover_bucket}\""),
            "{text}"
        );
    }

    #[test]
    fn validation_names_every_bad_field() {
        let config = NginxConfig {
            config_file: "relative.conf".into(),
            listen: vec!["80; evil".into()],
            server_name: vec!["a b".into()],
            status_listen: "10.0.0.1:80".into(),
            test_command: vec![],
            reload_command: vec![" ".into()],
            command_timeout_ms: 0,
            user_key_header: Some("x_user".into()),
            bucket_cookie: "a=b".into(),
            pid_file: "run/nginx.pid".into(),
            ..NginxConfig::default()
        };
        let fields: Vec<String> = config
            .validate("app.router.")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "app.router.config_file",
                "app.router.pid_file",
                "app.router.listen[0]",
                "app.router.server_name[0]",
                "app.router.status_listen",
                "app.router.test_command",
                "app.router.reload_command",
                "app.router.command_timeout_ms",
                "app.router.user_key_header",
                "app.router.bucket_cookie",
            ]
        );
        assert!(NginxConfig::default().validate("").is_empty());
        let err = NginxRouter::new("bad name", NginxConfig::default()).unwrap_err();
        assert!(err.to_string().contains("app name"), "{err}");
    }

    #[test]
    fn parses_log_lines() {
        assert_eq!(
            parse_log_line(b"cutover1 green abc 503 1.5"),
            Some((Slot::Green, "abc", 503, 1_500_000))
        );
        assert_eq!(
            parse_log_line(b"cutover1 blue abc 200 0.012"),
            Some((Slot::Blue, "abc", 200, 12_000))
        );
        assert_eq!(parse_log_line(b"cutover1 - - 400 0.000"), None);
        assert_eq!(parse_log_line(b"something else"), None);
        assert_eq!(parse_seconds_as_micros("12"), Some(12_000_000));
    }
}
