//! `cutover.toml`: parsed, then validated with every error reported at once, each pointing at the
//! file, line and field.

mod structure;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use cutover_core::{FieldError, RolloutPolicy, RouteTable, Slot};
use cutover_proxy::ProxySettings;

use crate::checks::{ReadinessConfig, VerifyConfig};
use crate::controller::{ManagedConfig, ReleaseTemplate};
use crate::freeze::FreezeWindow;
use serde::{Deserialize, Serialize};
use structure::Step;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
    /// The flag service: feature flags evaluated over OpenFeature's OFREP on their own listener.
    /// Off unless the table is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<FlagsConfig>,
    /// Where the state lives: the embedded SQLite file (default), or etcd for a fleet.
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`: the embedded SQLite file, or an etcd cluster shared by a fleet of controllers
/// (one elected leader) and proxies (`cutover proxy`) on several hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// etcd members' client URLs (`http://10.0.0.5:2379`, `https://...` with TLS), tried in turn.
    pub endpoints: Vec<String>,
    /// Every key cutover writes starts with this; several installations may share a cluster.
    pub prefix: String,
    /// PEM file of the CA that signed the members' certificates (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for clusters that require client certificates.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user, for clusters with authentication on; its password is read from
    /// `password_file` (0600), never from this file.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// How long a controller's leadership outlives its last renewal: a standby takes over within
    /// this long of the leader's death.
    pub leader_lease_ms: u64,
    /// A proxy that has not confirmed its route tables against etcd for this long says it is
    /// stale on its health endpoint and in its metrics (it keeps serving the last tables).
    pub stale_after_ms: u64,
}

/// Which store `[store] kind` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Etcd,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            endpoints: Vec::new(),
            prefix: "/cutover/".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            leader_lease_ms: 5_000,
            stale_after_ms: 5_000,
        }
    }
}

impl StoreConfig {
    pub fn is_etcd(&self) -> bool {
        self.kind == StoreKind::Etcd
    }

    /// What is wrong with `[store]`, alone and with the apps a fleet would run.
    fn problems(&self, apps: &[AppConfig], flags: bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.is_etcd() {
            let defaults = StoreConfig::default();
            let set = [
                ("endpoints", !self.endpoints.is_empty()),
                ("prefix", self.prefix != defaults.prefix),
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
                ("username", self.username.is_some()),
                ("password_file", self.password_file.is_some()),
                (
                    "leader_lease_ms",
                    self.leader_lease_ms != defaults.leader_lease_ms,
                ),
                ("stale_after_ms", self.stale_after_ms != defaults.stale_after_ms),
            ];
            for (field, _) in set.iter().filter(|(_, set)| *set) {
                errors.push(FieldError::new(
                    format!("store.{field}"),
                    "only means something with kind = \"etcd\"; set it, or remove this key",
                ));
            }
            return errors;
        }
        if self.endpoints.is_empty() {
            errors.push(FieldError::new(
                "store.endpoints",
                "kind = \"etcd\" needs the members' client URLs, e.g. [\"http://10.0.0.5:2379\"]",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
            match reqwest::Url::parse(e) {
                Ok(url) if scheme_ok && (!url.username().is_empty() || url.password().is_some()) => errors
                    .push(FieldError::new(
                        format!("store.endpoints[{i}]"),
                        "credentials do not belong in an endpoint URL (it is shown in messages): \
                         use store.username and store.password_file",
                    )),
                Ok(_) if scheme_ok => {}
                _ => errors.push(FieldError::new(
                    format!("store.endpoints[{i}]"),
                    format!("{e:?} is not an http:// or https:// URL of an etcd member"),
                )),
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            errors.push(FieldError::new(
                "store.prefix",
                format!(
                    "{:?} must start and end with '/', e.g. \"/cutover/\"",
                    self.prefix
                ),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push(FieldError::new(
                "store.cert_file",
                "a client certificate needs both cert_file and key_file",
            ));
        }
        if self.username.is_some() != self.password_file.is_some() {
            errors.push(FieldError::new(
                "store.username",
                "etcd authentication needs both username and password_file",
            ));
        }
        if !(1_000..=600_000).contains(&self.leader_lease_ms) {
            errors.push(FieldError::new(
                "store.leader_lease_ms",
                "must be between 1000 and 600000 (etcd leases are whole seconds)",
            ));
        }
        if !(500..=3_600_000).contains(&self.stale_after_ms) {
            errors.push(FieldError::new(
                "store.stale_after_ms",
                "must be between 500 and 3600000",
            ));
        }
        if flags {
            errors.push(FieldError::new(
                "flags",
                "the flag service does not run in a fleet yet: keep it on a SQLite installation",
            ));
        }
        for (i, app) in apps.iter().enumerate() {
            match app.platform {
                Some(PlatformKind::Local) => errors.push(FieldError::new(
                    format!("app[{i}].platform"),
                    "\"local\" processes cannot be adopted by a standby controller on another host: \
                     in a fleet use platform = \"static\" (or \"kubernetes\")",
                )),
                None => errors.push(FieldError::new(
                    format!("app[{i}].platform"),
                    "an app in a fleet is managed by the elected controller: set platform = \"static\" or \"kubernetes\"",
                )),
                _ => {}
            }
            if app.flags.is_some() {
                errors.push(FieldError::new(
                    format!("app[{i}].flags"),
                    "flag forwarding does not run in a fleet's proxies yet; remove [app.flags]",
                ));
            }
        }
        errors
    }
}

/// `[flags]`: where OpenFeature clients evaluate flags, and with which keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagsConfig {
    /// The OFREP listener. Loopback by default: flag values can be business secrets.
    pub listen: SocketAddr,
    /// Must be set to listen on anything but loopback, as a deliberate act.
    pub allow_non_loopback: bool,
    /// Read-only API keys of OFREP clients, one `NAME KEY` per line (the name is for audit and
    /// logs; the key is never shown). Missing: generated with one key named `default`, mode
    /// 0600, beside the admin token (`.cutover/flags.keys`). Separate from the admin token: a
    /// key can evaluate flags and nothing else.
    pub api_keys_file: Option<PathBuf>,
    /// Webhooks told of flag events (`flag`): a guarded ramp's steps, pauses, completion and
    /// automatic kill, and flags passing their expiry date.
    #[serde(rename = "webhook")]
    pub webhooks: Vec<cutover_notify::WebhookConfig>,
    /// A flag at 0 % or 100 % of its split, unchanged for this many days, is stale: it has done
    /// its job and should leave the code (`cutover flag list --stale`).
    pub stale_after_days: u32,
    /// Judge guarded ramps from Prometheus (PromQL with `{flag}`, `{variant}`, `{op}`,
    /// `{interval}`) instead of the built-in proxy's per-variant counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<cutover_monitoring::FlagPrometheusConfig>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9190)),
            allow_non_loopback: false,
            api_keys_file: None,
            webhooks: Vec::new(),
            stale_after_days: 30,
            prometheus: None,
        }
    }
}

/// `[app.flags]`: flags the built-in proxy evaluates for each request's user key and passes to
/// the app's backends, so an app needs no OpenFeature SDK to read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppFlagsConfig {
    /// Flag keys to evaluate for every request.
    pub forward: Vec<String>,
    /// The request header the variants go in (`flag=variant, flag=variant`); a copy a client
    /// sent is removed.
    pub header: String,
}

impl Default for AppFlagsConfig {
    fn default() -> Self {
        AppFlagsConfig {
            forward: Vec::new(),
            header: cutover_proxy::flags::DEFAULT_HEADER.to_string(),
        }
    }
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
    /// Further admin tokens, one `NAME TOKEN` per line (0600, tokens of 16+ characters): each
    /// person or CI job gets its own, and flag audit records name who changed what. The main
    /// token is named `admin`.
    pub tokens_file: Option<PathBuf>,
    /// Must be set to listen on anything but loopback, as a deliberate act.
    pub allow_non_loopback: bool,
    /// A request head must arrive whole within this time, or the connection is closed: a client
    /// trickling bytes cannot hold a connection open. The CLI and the dashboard send theirs at once.
    pub header_read_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            token_file: None,
            tokens_file: None,
            allow_non_loopback: false,
            header_read_timeout_ms: 10_000,
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
    /// Length of the accept queue of `listen` and `preview_listen`: connections the kernel has
    /// completed and that wait for the proxy to accept them. Connections beyond it are dropped
    /// (the client retries its SYN a second later), so a burst of connects larger than the queue
    /// turns into one-second stalls; a backlog of 128 dropped connections under a burst of 5000
    /// connects.
    /// Per app, next to `listen`, because bursts differ between apps. Default 4096, 1 to 65535.
    /// The kernel caps it at `net.core.somaxconn` (4096 since Linux 5.4, 128 before): raise that
    /// too for more. For comparison, nginx's default is 511 and HAProxy's follows `maxconn`.
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
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
    /// The cluster, the Deployment template and the image, for `platform = "kubernetes"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<kube_types::KubernetesConfig>,
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
    /// Expand/contract schema migrations run with the app's rollouts (needs a platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<crate::migrations::MigrationsConfig>,
    /// Flags the built-in proxy forwards to the app's backends (needs `[flags]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<AppFlagsConfig>,
}

fn default_stop_grace_ms() -> u64 {
    10_000
}

fn default_listen_backlog() -> u32 {
    4096
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
    /// A Kubernetes Service switched by its selector (blue-green only).
    KubernetesService(Box<kube_types::ServiceRouterConfig>),
    /// A Gateway API HTTPRoute's backendRefs weights.
    GatewayApi(Box<kube_types::GatewayRouterConfig>),
    /// An Istio VirtualService's route weights.
    Istio(Box<kube_types::IstioRouterConfig>),
    /// ingress-nginx: the app's Service selector and a canary Ingress.
    IngressNginx(Box<kube_types::IngressNginxRouterConfig>),
}

/// The types of the Kubernetes settings: cutover-kube's with the `kubernetes` feature; without
/// it any table, which validation refuses with how to get a binary that has it.
#[cfg(feature = "kubernetes")]
pub mod kube_types {
    pub use cutover_kube::routers::{
        GatewayRouterConfig, IngressNginxRouterConfig, IstioRouterConfig, ServiceRouterConfig,
    };
    pub use cutover_kube::KubernetesConfig;
}

/// The types of the Kubernetes settings: without the `kubernetes` feature, any table, refused by
/// validation.
#[cfg(not(feature = "kubernetes"))]
pub mod kube_types {
    pub type KubernetesConfig = toml::Table;
    pub type ServiceRouterConfig = toml::Table;
    pub type GatewayRouterConfig = toml::Table;
    pub type IstioRouterConfig = toml::Table;
    pub type IngressNginxRouterConfig = toml::Table;
}

/// Why a binary without the `kubernetes` feature refuses Kubernetes settings.
#[cfg(not(feature = "kubernetes"))]
const NO_KUBERNETES: &str = "this cutover was built without Kubernetes support; build it with      `cargo build --release --features kubernetes`";

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
            // Made with the app's cluster connection (`crate::kube_wiring`).
            RouterConfig::KubernetesService(_)
            | RouterConfig::GatewayApi(_)
            | RouterConfig::Istio(_)
            | RouterConfig::IngressNginx(_) => None,
        })
    }

    /// Whether this router is a Kubernetes object.
    pub fn is_kubernetes(&self) -> bool {
        matches!(
            self,
            RouterConfig::KubernetesService(_)
                | RouterConfig::GatewayApi(_)
                | RouterConfig::Istio(_)
                | RouterConfig::IngressNginx(_)
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RouterConfig::Builtin => "builtin",
            RouterConfig::Haproxy(_) => "haproxy",
            RouterConfig::Nginx(_) => "nginx",
            RouterConfig::KubernetesService(_) => "kubernetes_service",
            RouterConfig::GatewayApi(_) => "gateway_api",
            RouterConfig::Istio(_) => "istio",
            RouterConfig::IngressNginx(_) => "ingress_nginx",
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
    /// A Deployment per slot on a Kubernetes cluster (`[app.kubernetes]`); a release is an image.
    Kubernetes,
}

impl AppConfig {
    /// An app routed by `routes` only, with default settings: handy for tests and embedding.
    pub fn static_routes(name: impl Into<String>, listen: SocketAddr, routes: RouteTable) -> Self {
        AppConfig {
            name: name.into(),
            listen: Some(listen),
            listen_backlog: default_listen_backlog(),
            router: RouterConfig::Builtin,
            preview_listen: None,
            tls: None,
            proxy: ProxySettings::default(),
            routes,
            platform: None,
            hosts: None,
            kubernetes: None,
            release: ReleaseTemplate::default(),
            readiness: ReadinessConfig::default(),
            rollout: RolloutPolicy::default(),
            verify: VerifyConfig::default(),
            freeze: Vec::new(),
            stop_grace_ms: default_stop_grace_ms(),
            webhooks: Vec::new(),
            alert_gate: None,
            prometheus: None,
            migrations: None,
            flags: None,
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
            migrations: self.migrations.clone(),
            runs_images: self.platform == Some(PlatformKind::Kubernetes),
        })
    }
}

/// What is wrong with an app's `platform = "kubernetes"` and `[app.kubernetes]`.
fn kubernetes_platform_problems(app: &AppConfig, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match (app.platform, &app.kubernetes) {
        (Some(PlatformKind::Kubernetes), None) => errors.push(FieldError::new(
            format!("{at}.kubernetes"),
            "platform = \"kubernetes\" needs [app.kubernetes] with the Deployment manifest and the image",
        )),
        (Some(PlatformKind::Kubernetes), Some(_k)) => {
            #[cfg(feature = "kubernetes")]
            errors.extend(_k.validate(&format!("{at}.kubernetes.")));
            #[cfg(not(feature = "kubernetes"))]
            errors.push(FieldError::new(format!("{at}.platform"), NO_KUBERNETES));
            if !app.router.is_kubernetes() {
                errors.push(FieldError::new(
                    format!("{at}.router"),
                    "an app on Kubernetes is routed by the cluster: set [app.router] kind = \"kubernetes_service\", \"gateway_api\", \"istio\" or \"ingress_nginx\"",
                ));
            }
            if !app.release.command.is_empty() || app.release.workdir.is_some() {
                errors.push(FieldError::new(
                    format!("{at}.release"),
                    "a release on Kubernetes is an image ([app.kubernetes] image), not a command: remove command and workdir",
                ));
            }
        }
        (_, Some(_)) => errors.push(FieldError::new(
            format!("{at}.kubernetes"),
            "[app.kubernetes] is only for platform = \"kubernetes\"; remove it or set the platform",
        )),
        (_, None) => {}
    }
    errors
}

/// What is wrong with an app routed by a Kubernetes object.
fn kubernetes_router_problems(app: &AppConfig, router: &RouterConfig, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let kind = router.kind();
    #[cfg(not(feature = "kubernetes"))]
    errors.push(FieldError::new(format!("{at}.router.kind"), NO_KUBERNETES));
    if app.platform != Some(PlatformKind::Kubernetes) {
        errors.push(FieldError::new(
            format!("{at}.router"),
            format!("{kind} routes between the Deployments of platform = \"kubernetes\"; set that platform and [app.kubernetes]"),
        ));
    }
    if app.proxy != ProxySettings::default() {
        errors.push(FieldError::new(
            format!("{at}.proxy"),
            format!(
                "[app.proxy] (sticky users, health checks, timeouts) is a setting of cutover's own proxy; {kind} splits each request by weight or switches everyone at once, so it cannot keep a user on one version: remove it, and use the data plane's own session affinity if users must stay put"
            ),
        ));
    }
    if app.prometheus.is_none() {
        errors.push(FieldError::new(
            format!("{at}.prometheus"),
            format!("{kind} counts no requests, so the judge needs [app.prometheus] with a query per slot (docs/kubernetes.md has them for Istio and ingress-nginx)"),
        ));
    }
    #[cfg(feature = "kubernetes")]
    {
        let names: Vec<(&str, &str)> = match router {
            RouterConfig::KubernetesService(c) => vec![("service", c.service.as_str())],
            RouterConfig::GatewayApi(c) => vec![("http_route", c.http_route.as_str())],
            RouterConfig::Istio(c) => vec![("virtual_service", c.virtual_service.as_str())],
            RouterConfig::IngressNginx(c) => {
                vec![("ingress", c.ingress.as_str()), ("service", c.service.as_str())]
            }
            _ => Vec::new(),
        };
        for (field, name) in names {
            if !cutover_kube::is_dns_subdomain(name) {
                errors.push(FieldError::new(
                    format!("{at}.router.{field}"),
                    format!("{name:?} is not an object name: lower-case letters, digits, '-' and '.'"),
                ));
            }
        }
    }
    for (i, step) in app.rollout.steps.iter().enumerate() {
        let w = step.weight_bp;
        let why = match router {
            RouterConfig::KubernetesService(_) if w != 0 && w != 10_000 => Some(format!(
                "{w} bp: a Service selector sends all traffic to one slot (blue-green), so it has no canary steps; use one step of 10000, or route with gateway_api, istio or ingress_nginx for canaries"
            )),
            RouterConfig::Istio(_) if w % 100 != 0 => Some(format!(
                "{w} bp: Istio's weights are whole percents; use a multiple of 100 bp"
            )),
            _ => None,
        };
        if let Some(why) = why {
            errors.push(FieldError::new(format!("{at}.rollout.steps[{i}].weight_bp"), why));
        }
    }
    errors
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

    /// Parses and validates `text`; `origin` names it in errors. Every problem is reported at
    /// once, in file order: type errors and unknown fields (see [`structure`]), then what
    /// validation finds in the rest.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: origin.to_string(),
            problems,
        };
        let toml_problem = |e: &toml::de::Error| ConfigProblem {
            line: e.span().map(|s| line_of(text, s.start)),
            field: "toml".into(),
            message: e.message().trim().to_string(),
        };
        // The common case, a valid file, takes one pass; the structural pass below only runs to
        // find every problem of a file already known to have one.
        let mut found = match toml::from_str::<Config>(text) {
            Ok(config) => structure::Structure::clean(config),
            Err(first) => match toml::from_str::<toml::Table>(text) {
                // A syntax error: what follows it cannot be read reliably, so it is the one
                // problem reported.
                Err(syntax) => return Err(invalid(vec![toml_problem(&syntax)])),
                Ok(table) => {
                    let found = structure::Structure::collect(table);
                    if found.problems.is_empty() {
                        // The two passes disagree (they should not): report what the first saw.
                        return Err(invalid(vec![toml_problem(&first)]));
                    }
                    found
                }
            },
        };
        let doc = toml_edit::Document::parse(text).ok();
        if let Some(doc) = &doc {
            // Apps taken out for their problems shift the indices of those after them.
            let apps = found.config.as_ref().map_or(0, |c| c.apps.len());
            let written: Vec<usize> = (0..apps)
                .map(
                    |i| match found.to_original(&[Step::Key("app".into()), Step::Index(i)])[..] {
                        [_, Step::Index(written)] => written,
                        _ => i,
                    },
                )
                .collect();
            if let Some(config) = &mut found.config {
                for (app, written) in config.apps.iter_mut().zip(written) {
                    follow_readiness(app, doc, written);
                }
            }
        }
        let line = |field: &str| doc.as_ref().and_then(|d| locate(d, text, field));
        let mut problems: Vec<ConfigProblem> = found
            .problems
            .iter()
            .map(|(field, message)| ConfigProblem {
                line: line(field),
                field: field.clone(),
                message: message.clone(),
            })
            .collect();
        if let Some(config) = &found.config {
            for e in config.validate() {
                // Validation saw the document without the values taken out; its paths are
                // translated back to the file as written.
                let field = match structure::parse_path(&e.field) {
                    Some(path) => {
                        let original = found.to_original(&path);
                        if found.masks(&original) {
                            continue;
                        }
                        structure::render(&original)
                    }
                    None => e.field,
                };
                problems.push(ConfigProblem {
                    line: line(&field),
                    field,
                    message: e.message,
                });
            }
        }
        match found.config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                // Stable: problems on one line keep the order they were found in.
                problems.sort_by_key(|p| p.line);
                Err(invalid(problems))
            }
        }
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
        if self.apps.is_empty() && self.flags.is_none() {
            errors.push(FieldError::new(
                "app",
                "no [[app]] is configured; add at least one",
            ));
        }
        if let Some(flags) = &self.flags {
            if let Some(Err(problems)) = flags.prometheus.as_ref().map(|p| p.validate()) {
                for p in problems {
                    errors.push(FieldError::new("flags.prometheus", p.to_string()));
                }
            }
            errors.extend(cutover_notify::validate_all(
                &flags.webhooks,
                "flags.webhook",
                &cutover_notify::env_secret,
            ));
            if !flags.listen.ip().is_loopback() && !flags.allow_non_loopback {
                errors.push(FieldError::new(
                    "flags.listen",
                    format!(
                        "{} is not a loopback address; listening elsewhere needs \
                         flags.allow_non_loopback = true, as a deliberate act",
                        flags.listen
                    ),
                ));
            }
        }
        errors.extend(self.store.problems(&self.apps, self.flags.is_some()));
        let mut names = HashSet::new();
        // Every listener cutover binds, with its field, to find the ones that would collide.
        let mut listeners = vec![("admin.listen".to_string(), self.admin.listen)];
        if let Some(flags) = &self.flags {
            listeners.push(("flags.listen".to_string(), flags.listen));
        }
        let mut databases = Vec::new();
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
                    // The backlog has a default, so only a value other than it shows it was set.
                    for (field, set) in [
                        ("listen", app.listen.is_some()),
                        ("listen_backlog", app.listen_backlog != default_listen_backlog()),
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
                        k8s => errors.extend(kubernetes_router_problems(app, k8s, &at)),
                    }
                }
            }
            for (field, addr) in [("listen", app.listen), ("preview_listen", app.preview_listen)] {
                if let Some(addr) = addr {
                    let field = format!("{at}.{field}");
                    if let Some((other_field, other)) = listeners.iter().find(|(_, o)| overlaps(addr, *o)) {
                        errors.push(FieldError::new(&field, collision(addr, other_field, *other)));
                    }
                    listeners.push((field, addr));
                }
            }
            if !(1..=65535).contains(&app.listen_backlog) {
                errors.push(FieldError::new(
                    format!("{at}.listen_backlog"),
                    format!(
                        "{} is out of range: give 1 to 65535 (default 4096; the kernel caps it at \
                         net.core.somaxconn)",
                        app.listen_backlog
                    ),
                ));
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
            if let Some(m) = &app.migrations {
                // One history table per database, keyed by migration name: two apps' 0001_init
                // would read as one changed file.
                let source = (m.engine, m.path.clone(), m.url_env.clone(), m.url_file.clone());
                if let Some((other, _)) = databases.iter().find(|(_, s)| *s == source) {
                    errors.push(FieldError::new(
                        format!("{at}.migrations"),
                        format!("uses the same database as app {other}'s migrations; their histories would mix (cutover_migrations is keyed by migration name): give each app a database (or a URL with its own schema in search_path) of its own"),
                    ));
                }
                databases.push((app.name.clone(), source));
            }
            if app.migrations.is_some() && app.platform.is_none() {
                errors.push(FieldError::new(
                    format!("{at}.migrations"),
                    "migrations run with the app's rollouts, which need a platform; set platform = \"local\" or \"static\"",
                ));
            }
            if let Some(flags) = &app.flags {
                if self.flags.is_none() {
                    errors.push(FieldError::new(
                        format!("{at}.flags"),
                        "forwarding flags needs the flag service: add a [flags] table",
                    ));
                }
                if !matches!(app.router, RouterConfig::Builtin) {
                    errors.push(FieldError::new(
                        format!("{at}.flags"),
                        format!(
                            "only the built-in proxy evaluates and forwards flags, and this app is routed by {}; read the flags over OFREP with an OpenFeature SDK instead",
                            app.router.kind()
                        ),
                    ));
                }
                let mut seen = HashSet::new();
                for (j, key) in flags.forward.iter().enumerate() {
                    if !cutover_flags::flag::valid_name(key) {
                        errors.push(FieldError::new(
                            format!("{at}.flags.forward[{j}]"),
                            format!("{key:?} is not a flag key: 1 to 128 letters, digits, '_', '-' or '.'"),
                        ));
                    } else if !seen.insert(key.as_str()) {
                        errors.push(FieldError::new(
                            format!("{at}.flags.forward[{j}]"),
                            format!("{key:?} is listed twice"),
                        ));
                    }
                }
                let header_ok =
                    http::header::HeaderName::from_bytes(flags.header.to_ascii_lowercase().as_bytes())
                        .is_ok();
                let reserved = [
                    "host",
                    "cookie",
                    "authorization",
                    "content-length",
                    "transfer-encoding",
                    "connection",
                ]
                .contains(&flags.header.to_ascii_lowercase().as_str());
                let lower = flags.header.to_ascii_lowercase();
                let taken = app
                    .proxy
                    .sticky
                    .user_key_header
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(&lower))
                    || app.proxy.preview.header.eq_ignore_ascii_case(&lower);
                if taken {
                    errors.push(FieldError::new(
                        format!("{at}.flags.header"),
                        format!(
                            "{:?} is already the user key header or the preview header of this app; the variants would replace it: use a header of their own such as \"X-Cutover-Flags\"",
                            flags.header
                        ),
                    ));
                }
                if !header_ok || reserved {
                    errors.push(FieldError::new(
                        format!("{at}.flags.header"),
                        format!("{:?} is not a header the variants can go in; use a name of your own such as \"X-Cutover-Flags\"", flags.header),
                    ));
                }
            }
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
            errors.extend(kubernetes_platform_problems(app, &at));
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
                if let Some(workdir) = &app.release.workdir {
                    errors.extend(check_workdir(&format!("{at}.release.workdir"), workdir));
                }
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

/// Whether two listeners cannot both bind: the same port (0 picks a free one, so never) on the
/// same address, or on addresses one of which is a wildcard covering the other. `[::]` covers
/// IPv4 addresses too, since Linux binds IPv6 wildcards dual-stack by default
/// (`net.ipv6.bindv6only = 0`) and cutover does not set `IPV6_V6ONLY`.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to the kernel.
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    x == y || covers(x, y) || covers(y, x)
}

fn covers(wildcard: IpAddr, other: IpAddr) -> bool {
    match wildcard {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    }
}

/// Why `addr` cannot be bound next to `other` (of `other_field`), and what to do.
fn collision(addr: SocketAddr, other_field: &str, other: SocketAddr) -> String {
    if addr.ip().to_canonical() == other.ip().to_canonical() {
        return format!(
            "{addr} is already used by another listener ({other_field}); give each listener its own port"
        );
    }
    let wildcard = if covers(addr.ip().to_canonical(), other.ip().to_canonical()) {
        addr.ip()
    } else {
        other.ip()
    };
    let (wildcard, reach) = match wildcard {
        IpAddr::V4(w) => (w.to_string(), "every IPv4 address"),
        IpAddr::V6(w) => (
            format!("[{w}]"),
            "every IPv6 address and, dual-stack, every IPv4 address",
        ),
    };
    format!(
        "{addr} overlaps {other} ({other_field}): the wildcard {wildcard} takes port {port} on \
         {reach}, so both cannot be bound; give each listener its own port",
        port = addr.port()
    )
}

/// Instances of the local platform start in the release's `workdir`, and the deploy hooks of the
/// static platform run in it; serve only looks at it when it starts them, so a missing directory
/// would otherwise show at the first deploy, as a failed rollout. A relative path is resolved the
/// way the platform does: against the directory cutover is started in.
fn check_workdir(field: &str, workdir: &str) -> Option<FieldError> {
    // `releases/{version}`: each version's directory appears when it is deployed; what must be
    // there now is the directory they go in.
    if let Some(at) = workdir.find("{version}") {
        let parent = workdir[..at].rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let parent = if parent.is_empty() && workdir.starts_with('/') {
            "/"
        } else {
            parent
        };
        return check_workdir(field, if parent.is_empty() { "." } else { parent });
    }
    let relative = if Path::new(workdir).is_relative() {
        " (a relative workdir is resolved against the directory cutover is started in)"
    } else {
        ""
    };
    let path = match std::path::absolute(workdir) {
        Ok(path) => path,
        Err(e) => {
            let what = format!("{workdir:?} cannot be resolved ({e})");
            return Some(FieldError::new(
                field,
                format!("{what}; give the directory releases run in, or remove workdir"),
            ));
        }
    };
    let problem = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => return None,
        Ok(_) => "is not a directory".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read ({e})"),
    };
    Some(FieldError::new(
        field,
        format!(
            "{} {problem}{relative}; create the directory or point workdir at the one releases run in",
            path.display()
        ),
    ))
}

/// `[app.proxy.health_check] path` not given: the proxy checks the backends on the readiness
/// path, the one a release was admitted by. A readiness path that is not a path is left to
/// validation, which reports it where it is written, and the health check keeps its default.
/// `app` is the `[[app]]` at index `written` of `doc`, the document as written.
fn follow_readiness(app: &mut AppConfig, doc: &toml_edit::Document<&str>, written: usize) {
    let table = doc.get("app").and_then(|apps| match apps {
        toml_edit::Item::ArrayOfTables(a) => a.get(written).map(|t| t as &dyn toml_edit::TableLike),
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => a
            .get(written)
            .and_then(|v| v.as_inline_table())
            .map(|t| t as &dyn toml_edit::TableLike),
        _ => None,
    });
    // Whether `app.<section>.<key>` (sections separated by dots) is written in the file.
    let given = |path: &[&str]| {
        let mut node = table;
        let (last, sections) = match path.split_last() {
            Some(split) => split,
            None => return false,
        };
        for section in sections {
            node = node.and_then(|t| t.get(section)).and_then(|i| i.as_table_like());
        }
        node.is_some_and(|t| t.contains_key(last))
    };
    if !app.readiness.path.starts_with('/') {
        return;
    }
    if !given(&["proxy", "health_check", "path"]) {
        app.proxy.health_check.path = app.readiness.path.clone();
    }
    // HAProxy health checks the backends itself, on its own path: the same trap.
    if let RouterConfig::Haproxy(haproxy) = &mut app.router {
        if !given(&["router", "health_check_path"]) {
            haproxy.health_check_path = app.readiness.path.clone();
        }
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
    fn an_etcd_store_is_checked_with_every_problem_at_once() {
        let text = r#"
[store]
kind = "etcd"
endpoints = ["10.0.0.5:2379", "http://root:secret@10.0.0.6:2379"]
prefix = "cutover"
cert_file = "client.pem"
username = "cutover"
leader_lease_ms = 10

[flags]

[[app]]
name = "web"
listen = "127.0.0.1:8080"
platform = "local"

[app.release]
command = "./web --port {port}"
"#;
        let found = problems(text);
        for expected in [
            "store.endpoints[0]",
            "store.endpoints[1]",
            "store.prefix",
            "store.cert_file",
            "store.username",
            "store.leader_lease_ms",
            "app[0].platform",
            "flags",
        ] {
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{expected} missing from {found:#?}"
            );
        }
        assert!(
            found.iter().any(|p| p.contains("cannot be adopted by a standby"))
                && !found.iter().any(|p| p.contains("secret")),
            "{found:#?}"
        );
        // etcd keys without kind = "etcd" are a mistake too, not ignored.
        let found = problems("[store]\nendpoints = [\"http://a:2379\"]\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\n[app.routes]\nlive = \"blue\"\nblue = { version = \"v1\", backends = [\"127.0.0.1:2\"] }\n");
        assert!(
            found
                .iter()
                .any(|p| p.contains("store.endpoints") && p.contains("kind = \"etcd\"")),
            "{found:#?}"
        );
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
        assert_eq!(
            got,
            ["c.toml:4: app[0].lisen: unknown field; did you mean `listen`?"]
        );
        let got = problems("[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("c.toml:3: toml: "), "{got:?}");
    }

    #[test]
    fn every_type_error_and_unknown_field_is_reported_in_file_order() {
        let text = r#"
[server]
tick_ms = "fast"

[[app]]
name = "web"
listen = "127.0.0.1:8080"
stop_grace_ms = 5000

[app.proxy]
conect_timeout_ms = 500
drain_timeout_ms = 0

[app.proxy.sticky]
bucket_cooky = "b"

[[app]]
name = "api"
listen = "localhost:8081"
platform = "lokal"
readiness = { path = "/ready", intervall_ms = 100 }

[app.release]
command = "./api --port {port}"

[app.tls]
cert_path = "/nonexistent/cert.pem"

[[app]]
name = "shop"
router = { kind = "haproxy", bind = ["*:80"], runtime_apy = "/run/h.sock" }
platform = "static"
hosts = { blue = ["10.0.0.1:80"], green = ["10.0.0.2:80"] }
"#;
        assert_eq!(
            problems(text),
            [
                "c.toml:3: server.tick_ms: invalid type: string \"fast\", expected u64",
                "c.toml:11: app[0].proxy.conect_timeout_ms: unknown field; did you mean `connect_timeout_ms`?",
                "c.toml:12: app[0].proxy.drain_timeout_ms: must be greater than 0",
                "c.toml:15: app[0].proxy.sticky.bucket_cooky: unknown field; did you mean `bucket_cookie`?",
                "c.toml:19: app[1].listen: invalid socket address syntax; write an IP address and a port, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\" (host names are not resolved)",
                "c.toml:20: app[1].platform: unknown value `lokal`; did you mean `local`?",
                "c.toml:21: app[1].readiness.intervall_ms: unknown field; did you mean `interval_ms`?",
                "c.toml:26: app[1].tls.key_path: missing: this field is required; add it",
                "c.toml:31: app[2].router.runtime_apy: unknown field; did you mean `runtime_api`?",
            ],
            "app[1] lost values, so its semantic problems (tls, listen) wait; app[0]'s do not"
        );
        // serde reads the router's table whole (it is tagged by `kind`) and so reports at the
        // table; the problem still names the key, and the kind's own problems are named too.
        let router = |body: &str| {
            problems(&format!(
                "[[app]]\nname = \"a\"\nplatform = \"static\"\nhosts = {{ blue = [\"10.0.0.1:80\"], green = [\"10.0.0.2:80\"] }}\n[app.router]\n{body}"
            ))
        };
        assert_eq!(
            router("kind = \"haproxy\"\nbind = \"*:80\"\n"),
            ["c.toml:7: app[0].router.bind: invalid type: string \"*:80\", expected a sequence"]
        );
        assert_eq!(
            router("kind = \"haproxi\"\nbind = [\"*:80\"]\n"),
            ["c.toml:6: app[0].router.kind: unknown value `haproxi`; did you mean `haproxy`?"]
        );
        assert_eq!(
            router("bind = [\"*:80\"]\n"),
            ["c.toml:5: app[0].router.kind: missing: this field is required; add it"]
        );
    }

    #[test]
    fn indices_after_an_app_taken_out_are_those_of_the_file() {
        // app[0] lacks its name, so it cannot be built and is taken out; app[1] is then the
        // first app, but its problems must still say app[1] and point at its lines.
        let text = "[[app]]\nlisten = \"127.0.0.1:8080\"\n\n[[app]]\nname = \"b\"\nlisten = \"127.0.0.1:8081\"\nstop_grace = 1\n[app.proxy]\ndrain_timeout_ms = 0\n";
        assert_eq!(
            problems(text),
            [
                "c.toml:1: app[0].name: missing: this field is required; add it",
                "c.toml:7: app[1].stop_grace: unknown field; did you mean `stop_grace_ms`?",
                "c.toml:9: app[1].proxy.drain_timeout_ms: must be greater than 0",
            ]
        );
        // A value of the wrong type is one problem, not also a "missing" one for its table.
        let text = "[[app]]\nname = 7\nlisten = \"127.0.0.1:8080\"\n";
        assert_eq!(
            problems(text),
            ["c.toml:2: app[0].name: invalid type: integer `7`, expected a string"]
        );
        // [app] instead of [[app]].
        let got = problems("[app]\nname = \"web\"\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "c.toml:1: app: invalid type: map, expected a sequence; a list of tables is written [[name]]"
            ),
            "{got:?}"
        );
    }

    fn listeners(admin: &str, apps: &[(&str, Option<&str>)]) -> Vec<String> {
        let mut text = format!("[admin]\nlisten = \"{admin}\"\nallow_non_loopback = true\n");
        for (i, (listen, preview)) in apps.iter().enumerate() {
            text.push_str(&format!("\n[[app]]\nname = \"a{i}\"\nlisten = \"{listen}\"\n"));
            if let Some(p) = preview {
                text.push_str(&format!("preview_listen = \"{p}\"\n"));
            }
        }
        problems(&text)
    }

    #[test]
    fn overlapping_listeners_are_reported_not_only_identical_ones() {
        assert_eq!(
            listeners("127.0.0.1:9180", &[("127.0.0.1:8080", None), ("0.0.0.0:8080", None)]),
            ["c.toml:11: app[1].listen: 0.0.0.0:8080 overlaps 127.0.0.1:8080 (app[0].listen): the wildcard 0.0.0.0 takes port 8080 on every IPv4 address, so both cannot be bound; give each listener its own port"]
        );
        assert_eq!(
            listeners("127.0.0.1:9180", &[("[::]:8080", Some("127.0.0.1:8080"))]),
            ["c.toml:8: app[0].preview_listen: 127.0.0.1:8080 overlaps [::]:8080 (app[0].listen): the wildcard [::] takes port 8080 on every IPv6 address and, dual-stack, every IPv4 address, so both cannot be bound; give each listener its own port"]
        );
        assert_eq!(
            listeners("0.0.0.0:9180", &[("127.0.0.1:9180", None)]),
            ["c.toml:7: app[0].listen: 127.0.0.1:9180 overlaps 0.0.0.0:9180 (admin.listen): the wildcard 0.0.0.0 takes port 9180 on every IPv4 address, so both cannot be bound; give each listener its own port"]
        );
        assert_eq!(
            listeners("127.0.0.1:9180", &[("127.0.0.1:9180", None)]),
            ["c.toml:7: app[0].listen: 127.0.0.1:9180 is already used by another listener (admin.listen); give each listener its own port"]
        );
        let mapped = listeners(
            "127.0.0.1:9180",
            &[("[::ffff:127.0.0.1]:8080", Some("127.0.0.1:8080"))],
        );
        assert_eq!(mapped.len(), 1, "{mapped:?}");
        // Different addresses of one family, other families without a wildcard, other ports,
        // and port 0 (a free port each) never collide.
        for apps in [
            &[("127.0.0.1:8080", Some("127.0.0.2:8080"))][..],
            &[("[::1]:8080", Some("127.0.0.1:8080"))],
            &[("0.0.0.0:8080", Some("[::1]:8080"))],
            &[("0.0.0.0:8080", Some("0.0.0.0:8081"))],
            &[("0.0.0.0:0", Some("127.0.0.1:0")), ("[::]:0", None)],
        ] {
            assert_eq!(listeners("127.0.0.1:0", apps), Vec::<String>::new(), "{apps:?}");
        }
    }

    #[test]
    fn a_missing_workdir_is_reported_at_check_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let config = |workdir: &std::path::Path| {
            format!(
                "[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nplatform = \"local\"\n\n[app.release]\ncommand = \"./web --port {{port}}\"\nworkdir = {:?}\n",
                workdir.display().to_string()
            )
        };
        assert_eq!(problems(&config(dir.path())), Vec::<String>::new());
        let missing = dir.path().join("missing");
        assert_eq!(
            problems(&config(&missing)),
            [format!(
                "c.toml:8: app[0].release.workdir: {} does not exist; create the directory or point workdir at the one releases run in",
                missing.display()
            )]
        );
        assert_eq!(
            problems(&config(&file)),
            [format!(
                "c.toml:8: app[0].release.workdir: {} is not a directory; create the directory or point workdir at the one releases run in",
                file.display()
            )]
        );
        let relative = problems(&config(std::path::Path::new("no/such/dir/here")));
        assert_eq!(relative.len(), 1, "{relative:?}");
        assert!(
            relative[0].contains(
                "does not exist (a relative workdir is resolved against the directory cutover is started in)"
            ),
            "{relative:?}"
        );
    }

    /// `[app.readiness] path` is what a release must answer before traffic, the health check's
    /// path what its backends must keep answering: a service without the default path that sets
    /// the first alone must not be ejected by the second as soon as it is live.
    #[test]
    fn haproxys_health_check_path_follows_the_readiness_path_unless_given() {
        let text = |router_extra: &str| {
            format!(
                "[[app]]\nname = \"shop\"\nplatform = \"static\"\n[app.readiness]\npath = \"/healthz\"\n\
                 [app.router]\nkind = \"haproxy\"\nbind = [\"*:80\"]\n{router_extra}\
                 [app.hosts]\nblue = [\"10.0.0.11:8080\"]\ngreen = [\"10.0.0.21:8080\"]\n[app.release]\ncommand = \"./deploy.sh\"\n"
            )
        };
        let path = |text: &str| {
            let config = Config::parse(text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
            match &config.apps[0].router {
                RouterConfig::Haproxy(h) => h.health_check_path.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(path(&text("")), "/healthz");
        assert_eq!(path(&text("health_check_path = \"/live\"\n")), "/live");
    }

    #[test]
    fn the_health_check_path_follows_the_readiness_path_unless_given() {
        let app = |name: &str, port: u16, extra: &str| {
            format!("[[app]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n{extra}")
        };
        let paths = |text: &str| {
            let config = Config::parse(text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
            config
                .apps
                .iter()
                .map(|a| (a.readiness.path.clone(), a.proxy.health_check.path.clone()))
                .collect::<Vec<_>>()
        };
        let pair = |r: &str, h: &str| (r.to_string(), h.to_string());
        // Neither given: both the default.
        assert_eq!(
            paths(&app("web", 8080, "")),
            [pair("/health/ready", "/health/ready")]
        );
        // The readiness path alone, however written: the health check follows it.
        for readiness in [
            "[app.readiness]\npath = \"/\"\n",
            "readiness = { path = \"/\" }\n",
            "readiness.path = \"/\"\n[app.proxy.health_check]\ninterval_ms = 100\n",
            "readiness.path = \"/\"\nproxy = { health_check = { enabled = true } }\n",
        ] {
            assert_eq!(
                paths(&app("web", 8080, readiness)),
                [pair("/", "/")],
                "{readiness}"
            );
        }
        // Both given: each keeps its own, even where they differ, and even where the health
        // check's is the default.
        for (health, want) in [
            ("/health/live", "/health/live"),
            ("/health/ready", "/health/ready"),
        ] {
            let text = app(
                "web",
                8080,
                &format!("[app.readiness]\npath = \"/\"\n[app.proxy.health_check]\npath = \"{health}\"\n"),
            );
            assert_eq!(paths(&text), [pair("/", want)], "{text}");
        }
        let text = app("web", 8080, "proxy.health_check.path = \"/live\"\n");
        assert_eq!(paths(&text), [pair("/health/ready", "/live")]);
        // Per app.
        let text = [
            app("a", 8080, "[app.readiness]\npath = \"/a\"\n"),
            app("b", 8081, "[app.proxy.health_check]\npath = \"/hb\"\n"),
            app("c", 8082, "[app.readiness]\npath = \"/c\"\n"),
        ]
        .concat();
        assert_eq!(
            paths(&text),
            [pair("/a", "/a"), pair("/health/ready", "/hb"), pair("/c", "/c")]
        );
        // An app taken out for its problems shifts those after it, not what they were given: the
        // second app's own health check path is kept, and so judged.
        let text = [
            "[[app]]\nlisten = \"127.0.0.1:8080\"\n[app.readiness]\npath = \"/a\"\n".to_string(),
            app("b", 8081, "[app.proxy.health_check]\npath = \"hb\"\n"),
        ]
        .concat();
        assert_eq!(
            problems(&text),
            [
                "c.toml:1: app[0].name: missing: this field is required; add it",
                "c.toml:9: app[1].proxy.health_check.path: \"hb\" must start with '/'",
            ]
        );
        // The serialized form says what is in effect, and reads back the same.
        let config = Config::parse(&app("web", 8080, "readiness.path = \"/\"\n"), "c.toml").unwrap();
        let again = Config::parse(&toml::to_string(&config).unwrap(), "again.toml").unwrap();
        assert_eq!(again.apps[0].proxy.health_check.path, "/");
        // A readiness path that is not one is reported where it is written, not again at the
        // health check it would have given its value to.
        let text = app(
            "web",
            8080,
            "platform = \"local\"\n[app.release]\ncommand = \"./web --port {port}\"\n[app.readiness]\npath = \"ready\"\n",
        );
        assert_eq!(
            problems(&text),
            ["c.toml:8: app[0].readiness.path: must start with '/'"]
        );
    }

    #[test]
    fn the_listen_backlog_defaults_to_4096_and_is_checked() {
        let app = |extra: &str| format!("[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n{extra}");
        let config = Config::parse(&app(""), "c.toml").unwrap();
        assert_eq!(config.apps[0].listen_backlog, 4096);
        let config = Config::parse(&app("listen_backlog = 511\n"), "c.toml").unwrap();
        assert_eq!(config.apps[0].listen_backlog, 511);
        for bad in ["0", "65536"] {
            assert_eq!(
                problems(&app(&format!("listen_backlog = {bad}\n"))),
                [format!("c.toml:4: app[0].listen_backlog: {bad} is out of range: give 1 to 65535 (default 4096; the kernel caps it at net.core.somaxconn)")]
            );
        }
        let negative = problems(&app("listen_backlog = -1\n"));
        assert!(
            negative[0].starts_with("c.toml:4: app[0].listen_backlog: invalid value: integer `-1`"),
            "{negative:?}"
        );
        let haproxy = problems(
            "[[app]]\nname = \"web\"\nlisten_backlog = 100\nplatform = \"static\"\nhosts = { blue = [\"10.0.0.1:80\"], green = [\"10.0.0.2:80\"] }\n[app.router]\nkind = \"haproxy\"\nbind = [\"*:80\"]\n",
        );
        assert_eq!(
            haproxy,
            ["c.toml:3: app[0].listen_backlog: is a setting of the built-in proxy, but this app is routed by haproxy; remove it and configure haproxy instead"]
        );
    }
}
