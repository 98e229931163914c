//! HAProxy as a router: an HAProxy the team already runs, driven through its runtime API (the
//! `stats socket`, at `level admin`).
//!
//! # What HAProxy loads
//!
//! [`render_config`] gives the configuration cutover needs for one app (cutover writes it to
//! [`HaproxyConfig::fragment_path`] when that is set; HAProxy must load it, e.g. with
//! `-f /etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d/`):
//!
//! - a frontend `cutover_<app>` on [`HaproxyConfig::bind`] that computes each user's bucket and
//!   picks the slot;
//! - one backend per slot, `cutover_<app>_blue` and `cutover_<app>_green`, each a
//!   `server-template` of [`HaproxyConfig::server_slots`] servers that start in maintenance and
//!   are health checked on [`HaproxyConfig::health_check_path`];
//! - a map file, [`HaproxyConfig::map_path`], which must exist (empty at first) when HAProxy
//!   starts; cutover changes it at runtime and saves its entries in the file.
//!
//! # Routing
//!
//! The user key is the [`HaproxyConfig::user_key_header`] header, else the
//! [`HaproxyConfig::user_key_cookie`] cookie, else the [`HaproxyConfig::bucket_cookie`] cookie,
//! else a new random key (`uuid`) that HAProxy returns as the bucket cookie so the client stays
//! on its slot. Its bucket is `xxh32(key, hash_seed) mod 10000`: `xxh32` gives an unsigned 32-bit
//! value (unlike the signed `xxh3`), so the remainder is never negative, and the bias of 2^32 mod
//! 10 000 is below 10^-5 per bucket. The map entry `<app>.route` holds `<live>:<weight>:<canary>`
//! (e.g. `blue:2500:green`); the frontend computes `bucket - weight` and sends the request to the
//! canary's backend when it is negative, else to the live one. One map entry decides, so a
//! request sees either the old route or the new one, never a mix; raising the weight only moves
//! buckets to the canary. Without the entry (HAProxy just started) everybody goes to blue.
//!
//! # What cutover does at runtime
//!
//! [`Router::apply`] first readies the servers a slot gains (`set server B/S addr`, then
//! `state ready`; a server leaving maintenance counts as up until its checks say otherwise),
//! then writes the entries `<app>.blue` and `<app>.green` (each slot's version and backend order,
//! for [`Router::applied`]), then the route, and last puts the servers a slot lost in `maint`.
//! Maintenance stops new requests but cuts nothing: requests in flight finish, as do those of a
//! slot that lost its weight. A free server is reused for a new address preferring those with no
//! session and in maintenance the longest. Everything is then read back (`show map`, `show
//! servers state`) and compared with the table.
//!
//! # Reloads
//!
//! HAProxy forgets runtime changes when it reloads or restarts. After each apply cutover also
//! writes its map entries into the map file (keeping other lines), so a new HAProxy process
//! starts from the last route; the servers' addresses and states survive only with HAProxy's
//! `server-state-file` (dumped before the reload). Without it the servers are back in
//! maintenance, [`Router::applied`] shows slots without backends, which differs from the wanted
//! table, and [`Router::reconcile`] applies it again. Counters restart from zero on a reload too:
//! [`SlotCounters::series`] hashes the `Pid` and `Start_time_sec` of `show info` with the slot's
//! version, so it changes on a reload and on a new version.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{FieldError, Pool, RouteTable, Slot};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::{Router, RouterError, SlotCounters};

/// Held while a map file is rewritten, so apps sharing one do not lose each other's lines.
static MAP_FILE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Buckets users are hashed into; the canary takes those below its weight.
const BUCKETS: u32 = 10_000;
/// Most servers per slot backend: a slot's backends travel in one runtime API command (`set map`),
/// which must fit in HAProxy's 16 kB buffer (200 IPv6 addresses with ports take under 10 kB).
const MAX_SERVER_SLOTS: u16 = 200;
/// Largest answer read from the runtime API (a `show stat` of a big HAProxy is well below).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;
/// Admin state flags of a server (`show servers state`, `srv_admin_state`) that take it out of
/// the pool: forced, inherited or resolution maintenance (0x23) and forced or inherited drain
/// (0x18). 0x04 only says it was `disabled` in the configuration and 0x40 that its FQDN was set.
const OUT_OF_POOL: u32 = 0x23 | 0x18;

/// How cutover drives one app's routing in HAProxy. Lives under `[app.router]` with
/// `kind = "haproxy"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaproxyConfig {
    /// HAProxy's runtime API: the absolute path of a unix `stats socket`, or `host:port` of a TCP
    /// one (`stats socket ipv4@127.0.0.1:9999 level admin`). It needs `level admin`.
    pub runtime_api: String,
    /// How long one runtime API command may take, connecting included.
    pub runtime_api_timeout_ms: u64,
    /// `bind` lines of the app's frontend, e.g. `["*:80"]` or `[":443 ssl crt /etc/haproxy/site.pem"]`.
    pub bind: Vec<String>,
    /// Servers in each slot's backend (`server-template`): the most backends a slot can have.
    /// Changing it takes a new fragment and an HAProxy reload.
    pub server_slots: u16,
    /// Path HAProxy's health checks request on each backend (`option httpchk GET <path>`).
    pub health_check_path: String,
    /// Time between two health checks of a backend.
    pub health_check_interval_ms: u64,
    /// Request header whose value identifies the user, e.g. `x-user-id`.
    pub user_key_header: Option<String>,
    /// An existing cookie of the app whose value identifies the user, e.g. a session id.
    pub user_key_cookie: Option<String>,
    /// Cookie HAProxy gives clients that carry no key (a random key), and reads back from then on.
    pub bucket_cookie: String,
    /// Lifetime of the bucket cookie.
    pub bucket_cookie_max_age_secs: u64,
    /// Add `Secure` to the bucket cookie on plain HTTP too (it always has it over TLS).
    pub bucket_cookie_secure: bool,
    /// Seed of the bucket hash (`xxh32`); changing it reshuffles every user.
    pub hash_seed: u32,
    /// How long a slot that lost its traffic may keep serving the requests it had.
    pub drain_timeout_ms: u64,
    /// `timeout server` of the slot backends: how long HAProxy waits for a backend's answer.
    pub server_timeout_ms: u64,
    /// Where cutover writes the rendered configuration (rewritten when it changes; HAProxy needs
    /// a reload to load a change). `None`: cutover writes nothing and the operator installs the
    /// output of [`render_config`] and the map file.
    pub fragment_path: Option<PathBuf>,
    /// The map file the frontend reads the route from; it must exist (empty at first) when
    /// HAProxy starts. cutover creates it when it writes the fragment, and saves its entries in
    /// it after each change so a reloaded HAProxy starts from them. Apps may share one.
    pub map_path: PathBuf,
}

impl Default for HaproxyConfig {
    fn default() -> Self {
        HaproxyConfig {
            runtime_api: "/run/haproxy/admin.sock".into(),
            runtime_api_timeout_ms: 5_000,
            bind: Vec::new(),
            server_slots: 16,
            health_check_path: "/health/ready".into(),
            health_check_interval_ms: 2_000,
            user_key_header: None,
            user_key_cookie: None,
            bucket_cookie: "cutover_bucket".into(),
            bucket_cookie_max_age_secs: 365 * 24 * 3600,
            bucket_cookie_secure: false,
            hash_seed: 0,
            drain_timeout_ms: 30_000,
            server_timeout_ms: 60_000,
            fragment_path: None,
            map_path: PathBuf::from("/etc/haproxy/cutover.map"),
        }
    }
}

impl HaproxyConfig {
    /// Every problem with this configuration; `prefix` is the path of this table in the user's
    /// input (e.g. `apps.shop.router.`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |field: &str, message: String| {
            errors.push(FieldError::new(format!("{prefix}{field}"), message));
        };
        if let Err(e) = Endpoint::parse(&self.runtime_api) {
            error("runtime_api", e);
        }
        for (field, value) in [
            ("runtime_api_timeout_ms", self.runtime_api_timeout_ms),
            ("health_check_interval_ms", self.health_check_interval_ms),
            ("bucket_cookie_max_age_secs", self.bucket_cookie_max_age_secs),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("server_timeout_ms", self.server_timeout_ms),
        ] {
            if value == 0 {
                error(field, "must be greater than 0".into());
            }
        }
        if self.bind.is_empty() {
            error(
                "bind",
                "is empty; list where the app's frontend listens, e.g. bind = [\"*:80\"]".into(),
            );
        }
        for (i, line) in self.bind.iter().enumerate() {
            if line.trim().is_empty() || line.contains(['\n', '\r', '#']) {
                error(
                    &format!("bind[{i}]"),
                    format!("{line:?} is not a bind line; give an address such as \"*:80\" or \"127.0.0.1:8080\", optionally followed by bind options, on one line without '#'"),
                );
            }
        }
        if self.server_slots == 0 || self.server_slots > MAX_SERVER_SLOTS {
            error(
                "server_slots",
                format!(
                    "{} is out of range; give the most backends a slot may have, 1 to {MAX_SERVER_SLOTS}",
                    self.server_slots
                ),
            );
        }
        let path = &self.health_check_path;
        if !path.starts_with('/')
            || path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            error(
                "health_check_path",
                format!("{path:?} is not a request path; give one that starts with '/' and has no spaces, e.g. \"/health/ready\""),
            );
        }
        if let Some(name) = &self.user_key_header {
            if !is_token(name) {
                error(
                    "user_key_header",
                    format!("{name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"),
                );
            }
        }
        for (field, name) in [
            ("bucket_cookie", Some(&self.bucket_cookie)),
            ("user_key_cookie", self.user_key_cookie.as_ref()),
        ] {
            if let Some(name) = name {
                if !is_token(name) {
                    error(
                        field,
                        format!("{name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
                    );
                }
            }
        }
        if let Some(path) = &self.fragment_path {
            if !path.is_absolute() {
                error(
                    "fragment_path",
                    format!("{} is relative; give an absolute path in a directory HAProxy loads, e.g. /etc/haproxy/conf.d/cutover-shop.cfg", path.display()),
                );
            }
        }
        let map = self.map_path.to_string_lossy();
        if !self.map_path.is_absolute()
            || map
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ",;()\"'\\#".contains(c))
        {
            error(
                "map_path",
                format!("{map:?} cannot be used; give an absolute path without spaces, quotes or any of , ; ( ) \\ #, e.g. /etc/haproxy/cutover.map"),
            );
        }
        errors
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn runtime_api_timeout(&self) -> Duration {
        Duration::from_millis(self.runtime_api_timeout_ms)
    }
}

/// An RFC 9110 token: header and cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why an app name cannot name HAProxy proxies and map keys, if it cannot.
fn check_app_name(app_name: &str) -> Result<(), String> {
    let valid = !app_name.is_empty()
        && app_name.len() <= 64
        && app_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "app name {app_name:?} cannot name HAProxy proxies; use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

/// Name of the frontend of `app_name`.
pub fn frontend_name(app_name: &str) -> String {
    format!("cutover_{app_name}")
}

/// Name of the backend of `slot` of `app_name`.
pub fn backend_name(app_name: &str, slot: Slot) -> String {
    format!("cutover_{app_name}_{slot}")
}

/// The HAProxy configuration of `app_name`: its frontend and one backend per slot (see the
/// module documentation). `config` should have passed [`HaproxyConfig::validate`].
pub fn render_config(app_name: &str, config: &HaproxyConfig) -> String {
    let frontend = frontend_name(app_name);
    let map = config.map_path.display();
    let cookie = &config.bucket_cookie;
    let mut out = format!(
        "# Rendered by cutover for app {app_name:?}: change cutover.toml, not this file.\n\
         # cutover sets the route (in the map) and the servers at runtime, through the runtime API.\n\
         frontend {frontend}\n    mode http\n"
    );
    for line in &config.bind {
        out.push_str(&format!("    bind {}\n", line.trim()));
    }
    out.push_str("    # The user key: ");
    let mut sources = Vec::new();
    if let Some(h) = &config.user_key_header {
        sources.push(format!("the {h} header"));
    }
    if let Some(c) = &config.user_key_cookie {
        sources.push(format!("the {c} cookie"));
    }
    sources.push(format!("the {cookie} cookie"));
    out.push_str(&sources.join(", else "));
    out.push_str(",\n    # else a new random key, sent back as that cookie.\n");
    let unset = "!{ var(txn.cutover_key) -m found }";
    if let Some(h) = &config.user_key_header {
        out.push_str(&format!(
            "    http-request set-var(txn.cutover_key) req.fhdr({h},1) if {{ req.fhdr({h},1) -m len gt 0 }}\n"
        ));
    }
    for c in config.user_key_cookie.iter().chain([cookie]) {
        out.push_str(&format!(
            "    http-request set-var(txn.cutover_key) req.cook({c}) if {unset} {{ req.cook({c}) -m len gt 0 }}\n"
        ));
    }
    out.push_str(&format!(
        "    http-request set-var(txn.cutover_new_key) uuid if {unset}\n\
         \x20   http-request set-var(txn.cutover_key) var(txn.cutover_new_key) if {{ var(txn.cutover_new_key) -m found }}\n\
         \x20   # The bucket (0..9999) and the route \"<live>:<canary weight>:<canary>\"; the canary takes the\n\
         \x20   # buckets below its weight.\n\
         \x20   http-request set-var(txn.cutover_bucket) var(txn.cutover_key),xxh32({seed}),mod({BUCKETS})\n\
         \x20   http-request set-var(txn.cutover_route) str({route_key}),map({map},blue:0:green)\n\
         \x20   http-request set-var(txn.cutover_weight) var(txn.cutover_route),field(2,:)\n\
         \x20   http-request set-var(txn.cutover_below) var(txn.cutover_bucket),sub(txn.cutover_weight)\n\
         \x20   http-request set-var(txn.cutover_slot) var(txn.cutover_route),field(1,:)\n\
         \x20   http-request set-var(txn.cutover_slot) var(txn.cutover_route),field(3,:) if {{ var(txn.cutover_below) -m int lt 0 }}\n\
         \x20   use_backend cutover_{app_name}_%[var(txn.cutover_slot)]\n",
        seed = config.hash_seed,
        route_key = map_key(app_name, "route"),
    ));
    let set_cookie = format!(
        "{cookie}=%[var(txn.cutover_new_key)]; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        config.bucket_cookie_max_age_secs
    );
    if config.bucket_cookie_secure {
        out.push_str(&format!(
            "    http-response add-header Set-Cookie \"{set_cookie}; Secure\" if {{ var(txn.cutover_new_key) -m found }}\n"
        ));
    } else {
        out.push_str(&format!(
            "    http-response add-header Set-Cookie \"{set_cookie}; Secure\" if {{ var(txn.cutover_new_key) -m found }} {{ ssl_fc }}\n\
             \x20   http-response add-header Set-Cookie \"{set_cookie}\" if {{ var(txn.cutover_new_key) -m found }} !{{ ssl_fc }}\n"
        ));
    }
    for slot in Slot::ALL {
        out.push_str(&format!(
            "\nbackend {backend}\n    mode http\n    balance roundrobin\n    timeout server {server_timeout}ms\n    \
             option redispatch\n    retries 3\n    option httpchk GET {path}\n    \
             default-server check inter {interval}ms fall 3 rise 2\n    \
             # Placeholders in maintenance; cutover sets their addresses and states at runtime.\n    \
             server-template srv 1-{slots} 127.0.0.1:1 disabled\n",
            backend = backend_name(app_name, slot),
            server_timeout = config.server_timeout_ms,
            path = config.health_check_path,
            interval = config.health_check_interval_ms,
            slots = config.server_slots,
        ));
    }
    out
}

/// A key of `app_name` in the map.
fn map_key(app_name: &str, what: &str) -> String {
    format!("{app_name}.{what}")
}

/// Where the runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let hint = "give the absolute path of HAProxy's stats socket (e.g. /run/haproxy/admin.sock) or host:port of a TCP stats socket (e.g. 127.0.0.1:9999)";
        if s.is_empty() {
            return Err(format!("is empty; {hint}"));
        }
        let s = s.strip_prefix("unix@").unwrap_or(s);
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let s = s
            .strip_prefix("ipv4@")
            .or_else(|| s.strip_prefix("ipv6@"))
            .unwrap_or(s);
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(Endpoint::Tcp(s.to_string()));
        }
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.contains(':')
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && port.parse::<u16>().is_ok_and(|p| p > 0) =>
            {
                Ok(Endpoint::Tcp(s.to_string()))
            }
            _ => Err(format!("{s:?} is neither an absolute path nor host:port; {hint}")),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

/// One app's routing in an HAProxy, through its runtime API.
#[derive(Debug)]
pub struct HaproxyRouter {
    app_name: String,
    config: HaproxyConfig,
    endpoint: Endpoint,
    map: String,
    /// Serialises this router's changes.
    applying: Mutex<()>,
}

/// A server of a slot backend, from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerState {
    id: u32,
    name: String,
    addr: String,
    port: u16,
    admin_state: u32,
    since_change_secs: u64,
}

impl ServerState {
    fn in_pool(&self) -> bool {
        self.admin_state & OUT_OF_POOL == 0
    }

    fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.addr.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

/// What cutover keeps in the map for one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SlotEntry {
    version: String,
    backends: Vec<SocketAddr>,
}

impl SlotEntry {
    /// `<percent-encoded version>|<addr>,<addr>`: no spaces, no `;` (the runtime API's command
    /// separator), never empty.
    fn encode(pool: &Pool) -> String {
        let backends: Vec<String> = pool.backends.iter().map(ToString::to_string).collect();
        format!("{}|{}", percent_encode(&pool.version), backends.join(","))
    }

    fn decode(value: &str) -> Result<SlotEntry, String> {
        let (version, backends) = value
            .split_once('|')
            .ok_or_else(|| format!("{value:?} is not <version>|<backends>"))?;
        let version = percent_decode(version).ok_or_else(|| format!("{version:?} is not percent-encoded"))?;
        let backends = backends
            .split(',')
            .filter(|b| !b.is_empty())
            .map(|b| b.parse().map_err(|_| format!("{b:?} is not an address")))
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        Ok(SlotEntry { version, backends })
    }
}

/// The route entry: `<live>:<weight>:<canary>`.
fn encode_route(live: Slot, weight: u16) -> String {
    format!("{live}:{weight}:{}", live.other())
}

fn decode_route(value: &str) -> Result<(Slot, u16), String> {
    let mut parts = value.split(':');
    let (Some(live), Some(weight), Some(canary), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{value:?} is not <live>:<weight>:<canary>"));
    };
    let live: Slot = live.parse().map_err(|e| format!("{value:?}: {e}"))?;
    let canary: Slot = canary.parse().map_err(|e| format!("{value:?}: {e}"))?;
    let weight: u16 = weight
        .parse()
        .ok()
        .filter(|w| u32::from(*w) <= BUCKETS)
        .ok_or_else(|| format!("{value:?}: the weight is not 0 to {BUCKETS}"))?;
    if canary != live.other() {
        return Err(format!("{value:?}: the canary must be the other slot"));
    }
    Ok((live, weight))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `show map` lines: `0x55d1c7a0 <key> <value>`; the first of duplicate keys wins.
fn parse_map(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.trim().splitn(3, char::is_whitespace);
        let (Some(ptr), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ptr.starts_with("0x") {
            out.entry(key.to_string())
                .or_insert_with(|| value.trim().to_string());
        }
    }
    out
}

/// `show servers state <backend>`: a format version line, a `#` header naming the columns, one
/// line per server.
fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut columns: Option<Vec<&str>> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            columns = Some(header.split_whitespace().collect());
            continue;
        }
        let Some(columns) = &columns else {
            continue;
        };
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.is_empty() {
            continue;
        }
        let get = |name: &str| -> Result<&str, String> {
            columns
                .iter()
                .position(|c| *c == name)
                .and_then(|i| values.get(i).copied())
                .ok_or_else(|| format!("a server line has no {name}: {line:?}"))
        };
        let num = |name: &str| -> Result<u64, String> {
            let v = get(name)?;
            v.parse()
                .map_err(|_| format!("{name} is {v:?}, not a number, in {line:?}"))
        };
        out.push(ServerState {
            id: u32::try_from(num("srv_id")?).map_err(|e| e.to_string())?,
            name: get("srv_name")?.to_string(),
            addr: get("srv_addr")?.to_string(),
            port: u16::try_from(num("srv_port")?).map_err(|e| e.to_string())?,
            admin_state: u32::try_from(num("srv_admin_state")?).map_err(|e| e.to_string())?,
            since_change_secs: num("srv_time_since_last_change")?,
        });
    }
    if columns.is_none() {
        return Err(format!("no header line in {:?}", truncate(text)));
    }
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// `show stat` rows by `(pxname, svname)`, each as column name -> value.
type StatRows = HashMap<(String, String), HashMap<String, String>>;

/// `show stat` CSV: `# pxname,svname,...` then one line per proxy or server, as
/// `(pxname, svname) -> column -> value`.
fn parse_stat(text: &str) -> Result<StatRows, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or_else(|| format!("no CSV header in {:?}", truncate(text)))?;
    let columns: Vec<&str> = header.trim().split(',').collect();
    let mut out = HashMap::new();
    for line in lines {
        let values: Vec<&str> = line.split(',').collect();
        let row: HashMap<String, String> = columns
            .iter()
            .zip(&values)
            .map(|(c, v)| ((*c).to_string(), (*v).to_string()))
            .collect();
        if let (Some(px), Some(sv)) = (row.get("pxname"), row.get("svname")) {
            out.insert((px.clone(), sv.clone()), row);
        }
    }
    Ok(out)
}

/// `show info`: `Name: value` lines.
fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// 64-bit FNV-1a: stable across runs and builds, for counter series.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> std::io::Result<String> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.flush().await?;
    // Outside `prompt` mode HAProxy answers one command and closes the connection.
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// What a successful `set`/`add`/`del` command may answer; anything else is HAProxy's error.
fn is_success_answer(answer: &str) -> bool {
    let answer = answer.trim();
    answer.is_empty()
        || answer.starts_with("IP changed from")
        || answer.starts_with("no need to change the addr")
        || answer.starts_with("port changed from")
}

/// What to do about an error answer of the runtime API.
fn hint_for(answer: &str) -> &'static str {
    if answer.contains("Permission denied") || answer.contains("Require") && answer.contains("level") {
        "give the stats socket `level admin` in haproxy.cfg and reload HAProxy"
    } else if answer.contains("Unknown command") {
        "this HAProxy does not know the command; cutover needs HAProxy 2.4 or later"
    } else {
        "check that HAProxy loaded cutover's current configuration (render it again, reload HAProxy)"
    }
}

impl HaproxyRouter {
    /// A router for `app_name` with `config`. When [`HaproxyConfig::fragment_path`] is set, writes
    /// the rendered configuration there (if it changed) and creates an empty map file if there is
    /// none.
    pub fn new(app_name: &str, config: HaproxyConfig) -> Result<Self, RouterError> {
        let describe = format!("haproxy ({})", config.runtime_api);
        let refused = |reason: String| RouterError::Refused {
            router: describe.clone(),
            reason,
        };
        check_app_name(app_name).map_err(&refused)?;
        let errors = config.validate("");
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(refused(format!("invalid configuration: {}", list.join("; "))));
        }
        let endpoint = Endpoint::parse(&config.runtime_api).map_err(&refused)?;
        let router = HaproxyRouter {
            app_name: app_name.to_string(),
            map: config.map_path.to_string_lossy().into_owned(),
            endpoint,
            config,
            applying: Mutex::new(()),
        };
        router.write_files()?;
        Ok(router)
    }

    pub fn config(&self) -> &HaproxyConfig {
        &self.config
    }

    /// The configuration HAProxy must load for this router; see [`render_config`].
    pub fn render_config(&self) -> String {
        render_config(&self.app_name, &self.config)
    }

    /// Writes the fragment to [`HaproxyConfig::fragment_path`] when it differs from what is there
    /// (atomically, through a temporary file) and creates the map file if it is missing. Returns
    /// whether the fragment changed, i.e. whether HAProxy needs a reload to route by it. Does
    /// nothing without a `fragment_path`.
    pub fn write_files(&self) -> Result<bool, RouterError> {
        let Some(path) = &self.config.fragment_path else {
            return Ok(false);
        };
        let fragment = self.render_config();
        let changed = std::fs::read_to_string(path).map_or(true, |old| old != fragment);
        if changed {
            let tmp = path.with_extension("cfg.cutover-tmp");
            std::fs::write(&tmp, &fragment)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| self.file_error(path, "fragment_path", &e))?;
            tracing::warn!(
                app = %self.app_name,
                path = %path.display(),
                "wrote a new HAProxy configuration for the app; reload HAProxy to load it"
            );
        }
        let map = &self.config.map_path;
        if !map.exists() {
            std::fs::write(map, "").map_err(|e| self.file_error(map, "map_path", &e))?;
        }
        Ok(changed)
    }

    fn file_error(&self, path: &Path, field: &str, e: &std::io::Error) -> RouterError {
        RouterError::Unavailable {
            router: self.describe(),
            reason: format!(
                "cannot write {} ({field}): {e}; make the directory exist and writable by cutover, or set {field} elsewhere",
                path.display()
            ),
        }
    }

    fn unavailable(&self, reason: String) -> RouterError {
        RouterError::Unavailable {
            router: self.describe(),
            reason,
        }
    }

    /// Sends `command` and returns HAProxy's answer.
    async fn command(&self, command: &str) -> Result<String, RouterError> {
        let timeout = self.config.runtime_api_timeout();
        let run = async {
            match &self.endpoint {
                Endpoint::Unix(path) => exchange(tokio::net::UnixStream::connect(path).await?, command).await,
                Endpoint::Tcp(addr) => {
                    exchange(tokio::net::TcpStream::connect(addr.as_str()).await?, command).await
                }
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.unavailable(format!(
                "runtime API at {} failed on `{command}`: {e}; check that HAProxy runs and haproxy.cfg has `stats socket {} level admin` (runtime_api)",
                self.endpoint, self.endpoint
            ))),
            Err(_) => Err(self.unavailable(format!(
                "runtime API at {} did not answer `{command}` within {timeout:?}; check HAProxy, or raise runtime_api_timeout_ms",
                self.endpoint
            ))),
        }
    }

    /// Sends a command that changes something; an answer other than success is an error.
    async fn change(&self, command: &str) -> Result<(), RouterError> {
        let answer = self.command(command).await?;
        if is_success_answer(&answer) {
            Ok(())
        } else {
            Err(self.unavailable(format!(
                "HAProxy refused `{command}`: {}; {}",
                truncate(&answer),
                hint_for(&answer)
            )))
        }
    }

    async fn read_map(&self) -> Result<HashMap<String, String>, RouterError> {
        let command = format!("show map {}", self.map);
        let answer = self.command(&command).await?;
        if answer.contains("Unknown map identifier") {
            return Err(self.unavailable(format!(
                "HAProxy has no map {} (map_path); load cutover's configuration for app {:?} (render_config, fragment_path) and reload HAProxy",
                self.map, self.app_name
            )));
        }
        Ok(parse_map(&answer))
    }

    async fn servers(&self, slot: Slot) -> Result<Vec<ServerState>, RouterError> {
        let backend = backend_name(&self.app_name, slot);
        let answer = self.command(&format!("show servers state {backend}")).await?;
        if answer.contains("Can't find backend") {
            return Err(self.unavailable(format!(
                "HAProxy has no backend {backend}; load cutover's configuration for app {:?} (render_config, fragment_path) and reload HAProxy",
                self.app_name
            )));
        }
        parse_servers_state(&answer)
            .map_err(|e| self.unavailable(format!("cannot read `show servers state {backend}`: {e}")))
    }

    /// `show stat` of the backend of `slot` and its servers.
    async fn stat(&self, slot: Slot) -> Result<StatRows, RouterError> {
        let backend = backend_name(&self.app_name, slot);
        let command = format!("show stat {backend} 6 -1");
        let answer = self.command(&command).await?;
        if answer.contains("No such proxy") {
            return Err(self.unavailable(format!(
                "HAProxy has no backend {backend}; load cutover's configuration for app {:?} (render_config, fragment_path) and reload HAProxy",
                self.app_name
            )));
        }
        parse_stat(&answer).map_err(|e| self.unavailable(format!("cannot read `{command}`: {e}")))
    }

    fn slot_entry(&self, map: &HashMap<String, String>, slot: Slot) -> Result<SlotEntry, RouterError> {
        let key = map_key(&self.app_name, slot.as_str());
        match map.get(&key) {
            None => Ok(SlotEntry::default()),
            Some(value) => SlotEntry::decode(value).map_err(|e| {
                self.unavailable(format!(
                    "map entry {key} in {}: {e}; cutover rewrites it on the next apply",
                    self.map
                ))
            }),
        }
    }

    /// The table HAProxy routes by, from the map and the servers' states.
    async fn read_table(&self) -> Result<RouteTable, RouterError> {
        let map = self.read_map().await?;
        let route_key = map_key(&self.app_name, "route");
        let (live, canary_weight_bp) = match map.get(&route_key) {
            // HAProxy's default in the frontend: everybody on blue.
            None => (Slot::Blue, 0),
            Some(value) => decode_route(value).map_err(|e| {
                self.unavailable(format!(
                    "map entry {route_key} in {}: {e}; cutover rewrites it on the next apply",
                    self.map
                ))
            })?,
        };
        let mut table = RouteTable::empty(live);
        table.canary_weight_bp = canary_weight_bp;
        for slot in Slot::ALL {
            let entry = self.slot_entry(&map, slot)?;
            let servers = self.servers(slot).await?;
            let mut pooled = Vec::new();
            for server in servers.iter().filter(|s| s.in_pool()) {
                pooled.push(server.socket_addr().ok_or_else(|| {
                    self.unavailable(format!(
                        "server {}/{} is in the pool with address {}:{}, which cutover did not set; cutover puts it back in maintenance on the next apply",
                        backend_name(&self.app_name, slot),
                        server.name,
                        server.addr,
                        server.port
                    ))
                })?);
            }
            // The map keeps the order of the table's backends; the servers say which are there.
            let mut by_map = entry.backends.clone();
            by_map.sort();
            let mut by_servers = pooled.clone();
            by_servers.sort();
            let backends = if by_map == by_servers {
                entry.backends
            } else {
                pooled
            };
            *table.pool_mut(slot) = Pool {
                version: entry.version,
                backends,
            };
        }
        Ok(table)
    }

    /// Readies the servers `slot` gains; returns the servers to put in maintenance afterwards.
    async fn add_servers(&self, slot: Slot, wanted: &[SocketAddr]) -> Result<Vec<String>, RouterError> {
        let backend = backend_name(&self.app_name, slot);
        let servers = self.servers(slot).await?;
        if wanted.len() > servers.len() {
            return Err(RouterError::Refused {
                router: self.describe(),
                reason: format!(
                    "slot {slot} has {} backends but HAProxy's backend {backend} has {} servers; raise server_slots, write the configuration again and reload HAProxy",
                    wanted.len(),
                    servers.len()
                ),
            });
        }
        let wanted_set: HashSet<SocketAddr> = wanted.iter().copied().collect();
        let mut kept = HashSet::new();
        let mut remove = Vec::new();
        let mut free = Vec::new();
        for server in &servers {
            match server.socket_addr() {
                Some(addr) if server.in_pool() && wanted_set.contains(&addr) && kept.insert(addr) => {}
                _ if server.in_pool() => remove.push(server),
                _ => free.push(server),
            }
        }
        let to_add: Vec<SocketAddr> = wanted.iter().copied().filter(|a| !kept.contains(a)).collect();
        let mut removed = remove.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        if to_add.is_empty() {
            return Ok(removed);
        }
        // Prefer servers with no session (nothing in flight on their old address), then those in
        // maintenance the longest; servers leaving the pool come last.
        let stat = self.stat(slot).await?;
        let sessions = |s: &ServerState| {
            stat.get(&(backend.clone(), s.name.clone()))
                .and_then(|row| row.get("scur"))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        free.sort_by_key(|s| (sessions(s) > 0, std::cmp::Reverse(s.since_change_secs), s.id));
        let mut candidates: Vec<&ServerState> = free;
        candidates.extend(remove.iter().copied());
        for (addr, server) in to_add.iter().zip(candidates) {
            removed.retain(|name| *name != server.name);
            if server.in_pool() {
                self.change(&format!("set server {backend}/{} state maint", server.name))
                    .await?;
            }
            self.change(&format!(
                "set server {backend}/{} addr {} port {}",
                server.name,
                addr.ip(),
                addr.port()
            ))
            .await?;
            self.change(&format!("set server {backend}/{} state ready", server.name))
                .await?;
        }
        Ok(removed)
    }

    async fn set_entry(
        &self,
        map: &HashMap<String, String>,
        key: &str,
        value: &str,
    ) -> Result<(), RouterError> {
        let verb = if map.contains_key(key) { "set" } else { "add" };
        if map.get(key).map(String::as_str) == Some(value) {
            return Ok(());
        }
        self.change(&format!("{verb} map {} {key} {value}", self.map))
            .await
    }

    /// Writes this app's entries for `table` into the map file, keeping every other line, so an
    /// HAProxy that reloads starts from the route last applied.
    fn save_map(&self, table: &RouteTable) -> Result<(), String> {
        let _guard = MAP_FILE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let path = &self.config.map_path;
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("reading {} (map_path): {e}", path.display())),
        };
        let ours = [
            (
                map_key(&self.app_name, "route"),
                encode_route(table.live, table.canary_weight_bp),
            ),
            (map_key(&self.app_name, "blue"), SlotEntry::encode(&table.blue)),
            (map_key(&self.app_name, "green"), SlotEntry::encode(&table.green)),
        ];
        let mut text: String = old
            .lines()
            .filter(|line| {
                let key = line.split_whitespace().next().unwrap_or("");
                !ours.iter().any(|(k, _)| k == key)
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        for (key, value) in &ours {
            text.push_str(&format!("{key} {value}\n"));
        }
        if text == old {
            return Ok(());
        }
        let tmp = path.with_extension("map.cutover-tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                format!(
                    "writing {} (map_path): {e}; make it writable by cutover",
                    path.display()
                )
            })
    }

    fn not_applied(&self, wanted: &RouteTable, found: &RouteTable, hint: &str) -> RouterError {
        RouterError::NotApplied {
            router: self.describe(),
            wanted: serde_json::to_string(wanted).unwrap_or_default(),
            found: serde_json::to_string(found).unwrap_or_default(),
            hint: hint.to_string(),
        }
    }
}

#[async_trait]
impl Router for HaproxyRouter {
    fn describe(&self) -> String {
        format!("haproxy ({})", self.endpoint)
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        if let Err(e) = table.validate() {
            return Err(RouterError::Refused {
                router: self.describe(),
                reason: e.to_string(),
            });
        }
        for slot in Slot::ALL {
            let n = table.pool(slot).backends.len();
            if n > usize::from(self.config.server_slots) {
                return Err(RouterError::Refused {
                    router: self.describe(),
                    reason: format!(
                        "slot {slot} has {n} backends but server_slots is {}; raise server_slots, write the configuration again and reload HAProxy",
                        self.config.server_slots
                    ),
                });
            }
        }
        let _guard = self.applying.lock().await;
        if self.read_table().await.ok().as_ref() == Some(table) {
            return Ok(());
        }
        // Servers first, so a slot has its backends before it gets traffic.
        let mut to_remove = Vec::new();
        for slot in Slot::ALL {
            to_remove.push((slot, self.add_servers(slot, &table.pool(slot).backends).await?));
        }
        let map = self.read_map().await?;
        for slot in Slot::ALL {
            let key = map_key(&self.app_name, slot.as_str());
            self.set_entry(&map, &key, &SlotEntry::encode(table.pool(slot)))
                .await?;
        }
        let route_key = map_key(&self.app_name, "route");
        self.set_entry(
            &map,
            &route_key,
            &encode_route(table.live, table.canary_weight_bp),
        )
        .await?;
        // Last, the servers a slot lost: maintenance stops new requests, those in flight finish.
        for (slot, names) in to_remove {
            let backend = backend_name(&self.app_name, slot);
            for name in names {
                self.change(&format!("set server {backend}/{name} state maint"))
                    .await?;
            }
        }
        let found = self.read_table().await?;
        if found != *table {
            return Err(self.not_applied(
                table,
                &found,
                "another client of the runtime API may have changed it at the same moment; cutover applies it again on its next tick",
            ));
        }
        if let Err(e) = self.save_map(table) {
            // HAProxy routes by the table; only a reload would not start from it.
            tracing::warn!(
                app = %self.app_name,
                error = %e,
                "could not save the route in the map file; after an HAProxy reload the controller applies it again"
            );
        }
        Ok(())
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        self.read_table().await
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        let info = parse_info(&self.command("show info").await?);
        let pid = info.get("Pid").cloned().unwrap_or_default();
        let started = info.get("Start_time_sec").cloned().unwrap_or_default();
        if pid.is_empty() {
            return Err(
                self.unavailable("`show info` has no Pid; is runtime_api an HAProxy stats socket?".into())
            );
        }
        let map = self.read_map().await?;
        let mut out: [SlotCounters; 2] = Default::default();
        for slot in Slot::ALL {
            let backend = backend_name(&self.app_name, slot);
            let stat = self.stat(slot).await?;
            let row = stat.get(&(backend.clone(), "BACKEND".to_string())).ok_or_else(|| {
                self.unavailable(format!(
                    "`show stat` has no backend {backend}; load cutover's configuration for app {:?} and reload HAProxy",
                    self.app_name
                ))
            })?;
            let number = |column: &str| -> Result<u64, RouterError> {
                let v = row.get(column).map(String::as_str).unwrap_or("");
                if v.is_empty() {
                    return Ok(0);
                }
                v.parse().map_err(|_| {
                    self.unavailable(format!(
                        "`show stat` gives {column} = {v:?} for {backend}, not a number"
                    ))
                })
            };
            let version = self.slot_entry(&map, slot)?.version;
            out[slot.index()] = SlotCounters {
                series: fnv1a(&[&pid, &started, slot.as_str(), &version]),
                version,
                requests: number("req_tot")?,
                server_errors: number("hrsp_5xx")?,
                client_errors: Some(number("hrsp_4xx")?),
                codes: None,
                users: None,
                users_with_client_errors: None,
                latency_buckets: None,
                in_flight: Some(number("scur")?),
            };
        }
        Ok(out)
    }

    fn drain_timeout(&self) -> Duration {
        self.config.drain_timeout()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn routes_round_trip() {
        for (live, w) in [(Slot::Blue, 0), (Slot::Green, 10_000), (Slot::Blue, 1)] {
            assert_eq!(decode_route(&encode_route(live, w)).unwrap(), (live, w));
        }
        assert_eq!(encode_route(Slot::Green, 2500), "green:2500:blue");
        for bad in [
            "",
            "blue:1",
            "blue:10001:green",
            "blue:5:blue",
            "red:5:green",
            "blue:5:green:x",
        ] {
            assert!(decode_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slot_entries_round_trip_any_version() {
        let pool = Pool {
            version: "v1 beta|100%;é,x".into(),
            backends: vec!["127.0.0.1:80".parse().unwrap(), "[::1]:8080".parse().unwrap()],
        };
        let encoded = SlotEntry::encode(&pool);
        assert!(!encoded.contains([' ', ';']), "{encoded}");
        let decoded = SlotEntry::decode(&encoded).unwrap();
        assert_eq!((decoded.version, decoded.backends), (pool.version, pool.backends));
        assert_eq!(SlotEntry::encode(&Pool::default()), "|");
        assert_eq!(SlotEntry::decode("|").unwrap(), SlotEntry::default());
        assert!(SlotEntry::decode("v1").is_err());
        assert!(SlotEntry::decode("%zz|").is_err());
    }

    #[test]
    fn parses_runtime_api_answers() {
        let map = parse_map("0x7f589c046d90 shop.route green:2500:blue\n0x1 shop.route blue:0:green\n\n");
        assert_eq!(map["shop.route"], "green:2500:blue");
        let servers = parse_servers_state(
            "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n\
             3 b 2 srv2 ::1 2 4 1 1 7 15 3 4 6 0 0 0 - 8080 -\n\
             3 b 1 srv1 127.0.0.1 0 5 1 1 9 1 0 0 14 0 0 0 - 1 -\n\n",
        )
        .unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].name, "srv1");
        assert!(!servers[0].in_pool());
        assert!(servers[1].in_pool());
        assert_eq!(servers[1].socket_addr(), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(servers[1].since_change_secs, 7);
        assert!(parse_servers_state("Can't find backend.\n").is_err());
        let stat = parse_stat("# pxname,svname,qcur,qmax,scur,\nb,BACKEND,0,0,3,\nb,srv1,0,0,1,\n").unwrap();
        assert_eq!(stat[&("b".into(), "BACKEND".into())]["scur"], "3");
        let info = parse_info("Name: HAProxy\nPid: 42\nStart_time_sec: 1700000000\n");
        assert_eq!(info["Pid"], "42");
    }

    #[test]
    fn runtime_api_endpoints() {
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock").unwrap(),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:9999").unwrap(),
            Endpoint::Tcp("127.0.0.1:9999".into())
        );
        assert_eq!(
            Endpoint::parse("ipv6@[::1]:9999").unwrap(),
            Endpoint::Tcp("[::1]:9999".into())
        );
        assert_eq!(
            Endpoint::parse("lb-1.internal:9999").unwrap(),
            Endpoint::Tcp("lb-1.internal:9999".into())
        );
        for bad in ["", "admin.sock", "host", "host:0", "host:x", "::1:99"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn success_answers() {
        assert!(is_success_answer("\n"));
        assert!(is_success_answer(
            "no need to change the addr, port changed from '1' to '18091' by 'stats socket command'\n"
        ));
        assert!(!is_success_answer("No such server.\n"));
        assert!(hint_for("Permission denied\n").contains("level admin"));
    }

    #[test]
    fn renders_the_key_sources_in_order() {
        let config = HaproxyConfig {
            bind: vec!["*:80".into()],
            user_key_header: Some("x-user-id".into()),
            user_key_cookie: Some("session".into()),
            ..HaproxyConfig::default()
        };
        let text = render_config("shop", &config);
        let header = text.find("req.fhdr(x-user-id,1)").unwrap();
        let session = text.find("req.cook(session)").unwrap();
        let bucket = text.find("req.cook(cutover_bucket)").unwrap();
        assert!(header < session && session < bucket, "{text}");
        assert!(text.contains("frontend cutover_shop\n"));
        assert!(text.contains("backend cutover_shop_green\n"));
        assert!(text.contains("server-template srv 1-16 "));
        assert!(text.contains("map(/etc/haproxy/cutover.map,blue:0:green)"));
    }

    #[test]
    fn series_differ_by_each_part() {
        assert_ne!(fnv1a(&["1", "2"]), fnv1a(&["12", ""]));
        assert_eq!(fnv1a(&["a"]), fnv1a(&["a"]));
    }
}
