//! `cutover.toml`: parsed, then validated with every error reported at once, each pointing at the
//! file, line and field.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cutover_core::{FieldError, RolloutPolicy, RouteTable, Slot};
use cutover_proxy::ProxySettings;

use crate::checks::{ReadinessConfig, VerifyConfig};
use crate::controller::{ManagedConfig, ReleaseTemplate};
use crate::freeze::FreezeWindow;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the state file, instance records and instance logs live; relative paths are relative
    /// to the configuration file's directory.
    pub state_dir: PathBuf,
    /// How often controllers look at time, windows and instances.
    pub tick_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            state_dir: PathBuf::from(".cutover"),
            tick_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback by default: the admin API changes where traffic goes.
    pub listen: SocketAddr,
    /// File holding the bearer token for changes. When neither this nor the environment variable
    /// `CUTOVER_ADMIN_TOKEN` gives one, `serve` generates a token and writes it to `token_file`
    /// (default `.cutover/admin.token` beside the config file), readable by the owner only.
    pub token_file: Option<PathBuf>,
    /// Must be set to listen on anything but loopback, as a deliberate act.
    pub allow_non_loopback: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            token_file: None,
            allow_non_loopback: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    /// Where users connect, for the built-in proxy (the default router). Apps routed by HAProxy
    /// or nginx are reached through those and have no listener of cutover's.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// What splits the app's traffic: the built-in proxy (default), HAProxy or nginx.
    #[serde(default)]
    pub router: RouterConfig,
    /// Optional listener that always routes to the slot that is not live, for testers.
    #[serde(default)]
    pub preview_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub proxy: ProxySettings,
    /// The route table at start-up of an app without a platform; later changed through the admin
    /// API. Apps with a platform derive their routes from their persisted state instead.
    #[serde(default = "default_routes")]
    pub routes: RouteTable,
    /// Where releases run. Without it the app is routed by `routes` and the admin API alone.
    #[serde(default)]
    pub platform: Option<PlatformKind>,
    /// The backends of each slot and the hooks, for `platform = "static"`.
    #[serde(default)]
    pub hosts: Option<cutover_platform::StaticHostsConfig>,
    #[serde(default)]
    pub release: ReleaseTemplate,
    #[serde(default)]
    pub readiness: ReadinessConfig,
    #[serde(default)]
    pub rollout: RolloutPolicy,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub freeze: Vec<FreezeWindow>,
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
    /// Webhooks told of lifecycle events; some may veto a rollout or a step, or confirm promotions.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<cutover_notify::WebhookConfig>,
    /// Alertmanager: matching firing alerts (not silenced, not inhibited) block a rollout's start
    /// and fail its steps.
    #[serde(default)]
    pub alert_gate: Option<cutover_monitoring::AlertGateConfig>,
    /// Judge rollouts from Prometheus (PromQL per slot and window) instead of the proxy's metrics.
    #[serde(default)]
    pub prometheus: Option<cutover_monitoring::PrometheusConfig>,
}

fn default_stop_grace_ms() -> u64 {
    10_000
}

/// `[app.router]`: `kind` picks the router, the other fields are that router's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouterConfig {
    /// cutover's own proxy, configured by `listen`, `[app.proxy]` and friends.
    #[default]
    Builtin,
    /// An HAProxy driven through its runtime API.
    Haproxy(Box<cutover_router::haproxy::HaproxyConfig>),
    /// An nginx driven by a rendered include file, `nginx -t` and graceful reloads.
    Nginx(Box<cutover_router::nginx::NginxConfig>),
}

impl RouterConfig {
    /// The router of an app routed by HAProxy or nginx; `None` for the built-in proxy, which
    /// the server builds with the app's listeners.
    pub fn external(
        &self,
        app: &str,
    ) -> Result<Option<std::sync::Arc<dyn cutover_router::Router>>, cutover_router::RouterError> {
        Ok(match self {
            RouterConfig::Builtin => None,
            RouterConfig::Haproxy(c) => Some(std::sync::Arc::new(
                cutover_router::haproxy::HaproxyRouter::new(app, c.as_ref().clone())?,
            )),
            RouterConfig::Nginx(c) => Some(std::sync::Arc::new(cutover_router::nginx::NginxRouter::new(
                app,
                c.as_ref().clone(),
            )?)),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RouterConfig::Builtin => "builtin",
            RouterConfig::Haproxy(_) => "haproxy",
            RouterConfig::Nginx(_) => "nginx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    /// Local processes started by cutover on this host.
    Local,
    /// Fixed backends per slot (`[app.hosts]`) on hosts the team deploys itself; the release
    /// command is the deploy hook.
    Static,
}

impl AppConfig {
    /// An app routed by `routes` only, with default settings: handy for tests and embedding.
    pub fn static_routes(name: impl Into<String>, listen: SocketAddr, routes: RouteTable) -> Self {
        AppConfig {
            name: name.into(),
            listen: Some(listen),
            router: RouterConfig::Builtin,
            preview_listen: None,
            tls: None,
            proxy: ProxySettings::default(),
            routes,
            platform: None,
            hosts: None,
            release: ReleaseTemplate::default(),
            readiness: ReadinessConfig::default(),
            rollout: RolloutPolicy::default(),
            verify: VerifyConfig::default(),
            freeze: Vec::new(),
            stop_grace_ms: default_stop_grace_ms(),
            webhooks: Vec::new(),
            alert_gate: None,
            prometheus: None,
        }
    }

    /// The controller's part of this app's configuration, for apps with a platform.
    pub fn managed(&self) -> Option<ManagedConfig> {
        self.platform.map(|_| ManagedConfig {
            release: self.release.clone(),
            readiness: self.readiness.clone(),
            rollout: self.rollout.clone(),
            verify: self.verify.clone(),
            freeze: self.freeze.clone(),
            prometheus: self.prometheus.clone(),
            stop_grace_ms: self.stop_grace_ms,
        })
    }
}

fn default_routes() -> RouteTable {
    RouteTable::empty(Slot::Blue)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A problem in the configuration, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", render(path, problems))]
    Invalid {
        path: String,
        problems: Vec<ConfigProblem>,
    },
}

fn render(path: &str, problems: &[ConfigProblem]) -> String {
    let mut out = format!(
        "{path}: {} problem{} found:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string_in(path));
    }
    out
}

impl ConfigProblem {
    fn to_string_in(&self, path: &str) -> String {
        match self.line {
            Some(line) => format!("{path}:{line}: {}: {}", self.field, self.message),
            None => format!("{path}: {}: {}", self.field, self.message),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_in("config"))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: origin.to_string(),
            problems,
        };
        let config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                let message = e.message().trim().to_string();
                return Err(invalid(vec![ConfigProblem {
                    line,
                    field: "toml".into(),
                    message,
                }]));
            }
        };
        let errors = config.validate();
        if errors.is_empty() {
            return Ok(config);
        }
        let doc = toml_edit::Document::parse(text).ok();
        let problems = errors
            .into_iter()
            .map(|e| ConfigProblem {
                line: doc.as_ref().and_then(|d| locate(d, text, &e.field)),
                field: e.field,
                message: e.message,
            })
            .collect();
        Err(invalid(problems))
    }

    /// Every semantic problem, with field paths as the user wrote them (`app[0].proxy...`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.admin.listen.ip().is_loopback() && !self.admin.allow_non_loopback {
            errors.push(FieldError::new(
                "admin.listen",
                format!(
                    "{} is not a loopback address; the admin API changes where traffic goes, so \
                     listening elsewhere needs admin.allow_non_loopback = true",
                    self.admin.listen
                ),
            ));
        }
        if self.server.tick_ms == 0 {
            errors.push(FieldError::new("server.tick_ms", "must be greater than 0"));
        }
        if self.apps.is_empty() {
            errors.push(FieldError::new(
                "app",
                "no [[app]] is configured; add at least one",
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        if self.admin.listen.port() != 0 {
            addrs.insert(self.admin.listen);
        }
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("app[{i}]");
            let valid_name = !app.name.is_empty()
                && app.name.len() <= 64
                && app
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", app.name),
                ));
            }
            if !names.insert(app.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("app {:?} is defined twice", app.name),
                ));
            }
            match &app.router {
                RouterConfig::Builtin => {
                    if app.listen.is_none() {
                        errors.push(FieldError::new(
                            format!("{at}.listen"),
                            "missing: give the address users connect to, e.g. listen = \"0.0.0.0:8080\" \
                             (or route the app through HAProxy or nginx with [app.router])",
                        ));
                    }
                }
                external => {
                    let kind = external.kind();
                    for (field, set) in [
                        ("listen", app.listen.is_some()),
                        ("preview_listen", app.preview_listen.is_some()),
                        ("tls", app.tls.is_some()),
                    ] {
                        if set {
                            errors.push(FieldError::new(
                                format!("{at}.{field}"),
                                format!("is a setting of the built-in proxy, but this app is routed by {kind}; remove it and configure {kind} instead"),
                            ));
                        }
                    }
                    if app.platform.is_none() {
                        errors.push(FieldError::new(
                            format!("{at}.router"),
                            format!("an app routed by {kind} is driven by its rollouts and needs a platform; set platform = \"static\" or \"local\""),
                        ));
                    }
                    match external {
                        RouterConfig::Haproxy(c) => errors.extend(c.validate(&format!("{at}.router."))),
                        RouterConfig::Nginx(c) => errors.extend(c.validate(&format!("{at}.router."))),
                        RouterConfig::Builtin => {}
                    }
                }
            }
            for (field, addr) in [("listen", app.listen), ("preview_listen", app.preview_listen)] {
                if let Some(addr) = addr {
                    if addr.port() != 0 && !addrs.insert(addr) {
                        errors.push(FieldError::new(
                            format!("{at}.{field}"),
                            format!("{addr} is already used by another listener"),
                        ));
                    }
                }
            }
            if let Some(tls) = &app.tls {
                for (field, p) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
                    if !p.is_file() {
                        errors.push(FieldError::new(
                            format!("{at}.tls.{field}"),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            errors.extend(app.proxy.validate(&format!("{at}.proxy.")));
            errors.extend(cutover_notify::validate_all(
                &app.webhooks,
                &format!("{at}.webhook"),
                &cutover_notify::env_secret,
            ));
            if let Some(p) = &app.prometheus {
                if let Err(problems) = p.validate() {
                    for p in problems {
                        errors.push(FieldError::new(format!("{at}.prometheus"), p.to_string()));
                    }
                }
            }
            if let Some(gate) = &app.alert_gate {
                if let Err(problems) = gate.validate() {
                    for p in problems {
                        errors.push(FieldError::new(format!("{at}.alert_gate"), p.to_string()));
                    }
                }
            }
            match (app.platform, &app.hosts) {
                (Some(PlatformKind::Static), Some(hosts)) => errors.extend(hosts.validate(&format!("{at}.hosts."))),
                (Some(PlatformKind::Static), None) => errors.push(FieldError::new(
                    format!("{at}.hosts"),
                    "platform = \"static\" needs [app.hosts] with the addresses of the blue and green backends",
                )),
                (_, Some(_)) => errors.push(FieldError::new(
                    format!("{at}.hosts"),
                    "[app.hosts] is only for platform = \"static\"; remove it or set the platform",
                )),
                (_, None) => {}
            }
            if let Some(managed) = app.managed() {
                errors.extend(managed.validate(&format!("{at}.")));
                if app.routes != default_routes() {
                    errors.push(FieldError::new(
                        format!("{at}.routes"),
                        "an app with a platform takes its routes from its rollouts; remove [app.routes] or the platform",
                    ));
                }
            }
            if let Err(e) = app.routes.validate() {
                errors.extend(
                    e.errors
                        .into_iter()
                        .map(|e| FieldError::new(format!("{at}.routes.{}", e.field), e.message)),
                );
            }
        }
        errors
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Finds the line of `field` (a path like `app[1].proxy.sticky.bucket_cookie`) in the document, or
/// of the nearest enclosing item that has a position.
fn locate(doc: &toml_edit::Document<&str>, text: &str, field: &str) -> Option<usize> {
    enum Node<'a> {
        Table(&'a dyn toml_edit::TableLike),
        Item(&'a toml_edit::Item),
        Value(&'a toml_edit::Value),
    }
    let mut node = Node::Table(doc.as_table());
    let mut best: Option<usize> = None;
    for segment in field.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let table: &dyn toml_edit::TableLike = match &node {
            Node::Table(t) => *t,
            Node::Item(i) => match i.as_table_like() {
                Some(t) => t,
                None => break,
            },
            Node::Value(v) => match v.as_inline_table() {
                Some(t) => t,
                None => break,
            },
        };
        let Some((k, item)) = table.get_key_value(key) else {
            break;
        };
        if let Some(span) = k.span().or_else(|| item.span()) {
            best = Some(span.start);
        }
        node = Node::Item(item);
        if let Some(index) = index {
            node = match item {
                toml_edit::Item::ArrayOfTables(a) => match a.get(index) {
                    Some(t) => {
                        if let Some(span) = t.span() {
                            best = Some(span.start);
                        }
                        Node::Table(t)
                    }
                    None => break,
                },
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => match a.get(index) {
                    Some(v) => {
                        if let Some(span) = v.span() {
                            best = Some(span.start);
                        }
                        Node::Value(v)
                    }
                    None => break,
                },
                _ => break,
            };
        }
    }
    best.map(|offset| line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "cutover.toml") {
            Ok(_) => vec![],
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string_in("c.toml")).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn external_routers_and_static_hosts_are_configured_in_their_tables() {
        let text = r#"
[[app]]
name = "shop"
platform = "static"

[app.router]
kind = "haproxy"
runtime_api = "/run/haproxy/admin.sock"
bind = ["*:80"]
user_key_header = "x-user-id"

[app.hosts]
blue = ["10.0.0.1:8080"]
green = ["10.0.0.2:8080"]

[app.release]
command = "./deploy.sh"
"#;
        let config = Config::parse(text, "cutover.toml").unwrap();
        let RouterConfig::Haproxy(haproxy) = &config.apps[0].router else {
            panic!("not haproxy: {:?}", config.apps[0].router);
        };
        assert_eq!(haproxy.bind, ["*:80"]);
        assert_eq!(config.apps[0].hosts.as_ref().unwrap().green.len(), 1);

        let bad = problems(
            r#"
[[app]]
name = "shop"
listen = "127.0.0.1:8080"

[app.router]
kind = "haproxy"
bind = []

[app.hosts]
blue = []
green = ["10.0.0.2:8080"]
"#,
        );
        let all = bad.join("\n");
        for needle in [
            "app[0].listen: is a setting of the built-in proxy",
            "app[0].router: an app routed by haproxy",
            "app[0].router.bind",
            "app[0].hosts: [app.hosts] is only for platform = \"static\"",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        let unknown =
            problems("[[app]]\nname = \"shop\"\n[app.router]\nkind = \"haproxy\"\nsocket = \"x\"\n");
        assert!(unknown.join("\n").contains("socket"), "{unknown:?}");
        let no_listen = problems("[[app]]\nname = \"shop\"\n");
        assert!(
            no_listen.join("\n").contains("app[0].listen: missing"),
            "{no_listen:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"
[admin]
listen = "0.0.0.0:9180"

[[app]]
name = "web"
listen = "127.0.0.1:8080"

[app.proxy]
drain_timeout_ms = 0

[app.proxy.sticky]
bucket_cookie = "bad cookie"

[app.routes]
live = "blue"
canary_weight_bp = 20000
blue = { version = "v1", backends = ["127.0.0.1:9001", "127.0.0.1:9001"] }
"#;
        let got = problems(text);
        assert_eq!(
            got,
            [
                "c.toml:3: admin.listen: 0.0.0.0:9180 is not a loopback address; the admin API changes where traffic goes, so listening elsewhere needs admin.allow_non_loopback = true",
                "c.toml:10: app[0].proxy.drain_timeout_ms: must be greater than 0",
                "c.toml:13: app[0].proxy.sticky.bucket_cookie: \"bad cookie\" is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                "c.toml:17: app[0].routes.canary_weight_bp: 20000 is out of range: a weight is in basis points, 0 to 10000 (10000 = 100 %)",
                "c.toml:18: app[0].routes.blue.backends[1]: 127.0.0.1:9001 is listed twice in this pool; list each backend once",
            ]
        );
    }

    #[test]
    fn syntax_and_unknown_fields_point_at_the_line() {
        let got = problems("[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n");
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("c.toml:4: toml: unknown field `lisen`"),
            "{got:?}"
        );
    }
}
