//! A fleet on etcd (`[store] kind = "etcd"`): controllers on several hosts, one of them elected,
//! and proxies (`cutover proxy`) on several hosts, all following the same route tables.
//!
//! # Roles
//!
//! - **Controller** (`cutover serve`): campaigns for the leader key ([`cutover_etcd::Election`]).
//!   A standby serves only `/healthz` and answers every other admin request 503, naming the
//!   leader. The leader starts the apps' controllers through the ordinary recovery path
//!   ([`Controller::start`] reads the stored state), with a store fenced on its leadership: once
//!   its lease is gone, no write of it lands. A leader that cannot renew its lease exits
//!   (fail-stop, exit code 75) so that its supervisor restarts it as a standby; it never goes on
//!   deciding with a leadership it may have lost.
//! - **Proxy** (`cutover proxy`): binds the apps' listeners and follows
//!   `<prefix>fleet/routes/` (list, then watch; see [`cutover_etcd::follow`]), applying each app's
//!   table as a whole. Every second it reads the tables again (a linearizable read): when they
//!   equal what it routes by, the tables are *confirmed*. Not confirmed for
//!   `[store] stale_after_ms`, the proxy says so on `/healthz` (503) and in `/metrics`, and keeps
//!   serving the last tables (an etcd outage must not take the traffic down with it). It registers
//!   itself under `<prefix>fleet/proxies/<id>` with a lease, renewed every second, with the
//!   generation of each table it routes by and when it last confirmed them.
//!
//! # The controller's router: [`FleetRouter`]
//!
//! `apply` writes the app's table to `fleet/routes/<app>` with a generation one above the last,
//! in a transaction that also compares the leader key (fencing). `applied` returns the stored
//! table only when every registered proxy routes by its generation: until then the old table may
//! still have traffic, so nothing that waits for traffic to leave a slot goes ahead. `counters`
//! sums the counters of every registered proxy, read from their admin APIs: one that does not
//! answer makes the reading (and so the window) unavailable, never a pass on partial traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use cutover_core::{RouteTable, Slot};
use cutover_etcd::{client_ops, Client, ClientOptions, Election, EtcdStore};
use cutover_proxy::AppProxy;
use cutover_router::{Router, RouterError, SlotCounters};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RouterConfig, StoreConfig};
use crate::{Bound, BoundApp, Running, ServeError, StartOptions};

/// Exit code of a leader that lost its leadership: restart me, I will stand by.
pub const LOST_LEADERSHIP_EXIT: i32 = 75;

/// How often a proxy renews its registration and confirms its tables.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The admin token, kept out of `Debug` output (and so out of logs).
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The keys of the fleet under the store's prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// Everything of the fleet, what a controller's [`FleetCache`] follows.
    pub fn fleet_prefix(&self) -> String {
        format!("{}fleet/", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}fleet/leader", self.prefix)
    }
    pub fn routes_prefix(&self) -> String {
        format!("{}fleet/routes/", self.prefix)
    }
    pub fn routes(&self, app: &str) -> String {
        format!("{}{app}", self.routes_prefix())
    }
    pub fn proxies_prefix(&self) -> String {
        format!("{}fleet/proxies/", self.prefix)
    }
}

/// An app's table as stored: the table, and its generation (1 for the first, one more for each
/// change), which proxies report so that status can show who routes by what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTable {
    pub generation: u64,
    pub table: RouteTable,
}

/// A proxy's registration, renewed every second under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub id: String,
    /// Its admin API, where the controller reads its counters.
    pub admin: String,
    pub pid: u32,
    /// Wall-clock milliseconds of this renewal.
    pub contact_ms: u64,
    /// Generation of each app's table it routes by.
    pub generations: BTreeMap<String, u64>,
    /// Wall-clock milliseconds of the last confirmation of its tables against etcd.
    pub confirmed_ms: Option<u64>,
    /// It has not confirmed its tables for longer than `stale_after_ms`.
    pub stale: bool,
}

/// One proxy as status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyView {
    pub id: String,
    pub admin: String,
    /// Generation of this app's table it routes by; `None` before its first.
    pub generation: Option<u64>,
    /// Milliseconds since its last renewal reached etcd.
    pub last_contact_ms: u64,
    /// Milliseconds since it last confirmed its tables against etcd.
    pub confirmed_ago_ms: Option<u64>,
    /// Behind the stored table, stale by its own account, or silent for longer than its lease.
    pub lagging: bool,
    /// Why it is lagging, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The fleet as status shows it for one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The controller that leads.
    pub leader: Option<String>,
    /// Generation of the app's stored table.
    pub generation: Option<u64>,
    pub proxies: Vec<ProxyView>,
    /// Why the fleet could not be read (etcd unreachable from the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fleet_error(what: impl std::fmt::Display) -> ServeError {
    ServeError::Fleet(what.to_string())
}

/// A client of the cluster `[store]` names, with its TLS files and credentials read.
pub fn client(store: &StoreConfig, config_dir: &Path) -> Result<Client, ServeError> {
    let path = |p: &Path| {
        if p.is_relative() {
            config_dir.join(p)
        } else {
            p.to_path_buf()
        }
    };
    let read = |field: &str, p: &Path| {
        std::fs::read(path(p)).map_err(|e| fleet_error(format!("store.{field}: {}: {e}", path(p).display())))
    };
    let mut options = ClientOptions::default();
    if let Some(ca) = &store.ca_file {
        options.ca_pem = Some(read("ca_file", ca)?);
    }
    if let (Some(cert), Some(key)) = (&store.cert_file, &store.key_file) {
        let mut pem = read("cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("key_file", key)?);
        options.identity_pem = Some(pem);
    }
    if let (Some(user), Some(file)) = (&store.username, &store.password_file) {
        let file = path(file);
        let password = match crate::read_secret_file(&file) {
            Ok(crate::SecretFile::Text(t)) => t.trim().to_string(),
            Ok(crate::SecretFile::Open { mode }) => {
                return Err(fleet_error(format!(
                    "store.password_file: {} can be read by others (mode {mode:o}); run `chmod 600 {}`",
                    file.display(),
                    file.display()
                )))
            }
            Ok(crate::SecretFile::Missing) => {
                return Err(fleet_error(format!(
                "store.password_file: {} does not exist; write the etcd user's password in it (mode 0600)",
                file.display()
            )))
            }
            Err(e) => {
                return Err(fleet_error(format!(
                    "store.password_file: {}: {e}",
                    file.display()
                )))
            }
        };
        options.credentials = Some((user.clone(), password));
    }
    Client::with_options(store.endpoints.clone(), &options).map_err(fleet_error)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
}

/// Every registered proxy.
async fn proxies(client: &Client, keys: &Keys) -> Result<Vec<ProxyRecord>, String> {
    let (c, prefix) = (client.clone(), keys.proxies_prefix());
    let kvs = blocking(move || c.range_all(&prefix, 0))
        .await?
        .map_err(|e| e.to_string())?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_str(&kv.value).ok())
        .collect())
}

async fn stored_table(client: &Client, keys: &Keys, app: &str) -> Result<Option<(StoredTable, i64)>, String> {
    let (c, key) = (client.clone(), keys.routes(app));
    let found = blocking(move || c.get(&key)).await?.map_err(|e| e.to_string())?;
    match found {
        None => Ok(None),
        Some((value, revision)) => serde_json::from_str(&value)
            .map(|t| Some((t, revision)))
            .map_err(|e| format!("the stored table of app {app} is unreadable: {e}")),
    }
}

/// The fleet's view for status: who leads, the stored generation, each proxy.
pub async fn status(client: &Client, keys: &Keys, app: &str, lease_ms: u64) -> Result<FleetStatus, String> {
    let (c, leader_key) = (client.clone(), keys.leader());
    let leader = blocking(move || c.get(&leader_key))
        .await?
        .map_err(|e| e.to_string())?
        .map(|(v, _)| v);
    let generation = stored_table(client, keys, app).await?.map(|(t, _)| t.generation);
    let now = wall_ms();
    let proxies = proxies(client, keys)
        .await?
        .into_iter()
        .map(|p| {
            let routed = p.generations.get(app).copied();
            let last_contact_ms = now.saturating_sub(p.contact_ms);
            let problem = if last_contact_ms > lease_ms.max(3_000) {
                Some(format!(
                    "no contact with etcd for {:.1} s: partitioned, or gone",
                    last_contact_ms as f64 / 1000.0
                ))
            } else if p.stale {
                Some("its tables are not confirmed against etcd (stale)".to_string())
            } else if routed < generation {
                Some(format!(
                    "routes by generation {}, not {} yet",
                    routed.map_or("none".to_string(), |g| g.to_string()),
                    generation.unwrap_or(0)
                ))
            } else {
                None
            };
            ProxyView {
                id: p.id,
                admin: p.admin,
                generation: routed,
                last_contact_ms,
                confirmed_ago_ms: p.confirmed_ms.map(|c| now.saturating_sub(c)),
                lagging: problem.is_some(),
                problem,
            }
        })
        .collect();
    Ok(FleetStatus {
        leader,
        generation,
        proxies,
        error: None,
    })
}

/// What the leader knows of the fleet without asking etcd: `fleet/` followed with one watch (a
/// consistent snapshot at one revision, kept current), so that thousands of apps' controllers
/// do not each read etcd on every tick. Reads that decide something safe-or-not (whether a
/// table is applied) may lag the cluster by the watch's delay; they then err on the side of
/// waiting, since a snapshot shows the proxies and the stored table as of one revision.
#[derive(Debug, Default)]
pub struct FleetCache {
    /// `fleet/`'s keys (without the prefix) and values; `None` until the first listing.
    keys: std::sync::RwLock<Option<BTreeMap<String, String>>>,
    /// The revision the keys are current at.
    revision: std::sync::atomic::AtomicI64,
}

/// Returns once the cache has stayed behind etcd for two checks in a row (a watch that hangs
/// without breaking: a member cut off from its quorum goes silent rather than failing).
async fn behind(client: &Client, prefix: &str, cache: &FleetCache) {
    let mut suspect: Option<i64> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (c, p) = (client.clone(), prefix.to_string());
        let range_end = format!("{}0", p.trim_end_matches('/'));
        let newest = blocking(move || {
            c.call(
                "/v3/kv/range",
                json!({ "key": cutover_etcd::b64(&p), "range_end": cutover_etcd::b64(&range_end), "keys_only": true }),
            )
        })
        .await;
        let Ok(Ok(answer)) = newest else { continue };
        let newest = answer
            .get("kvs")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|kv| cutover_etcd::number(kv.get("mod_revision")))
            .max()
            .unwrap_or(0);
        let have = cache.revision.load(std::sync::atomic::Ordering::Relaxed);
        suspect = match suspect {
            // Still at the revision it had at the last check, with newer changes in etcd.
            Some(was) if was == have && newest > have => return,
            _ if newest > have => Some(have),
            _ => None,
        };
    }
}

impl FleetCache {
    /// Starts following `fleet/` until `shutdown`.
    pub fn start(client: &Client, keys: &Keys, shutdown: CancellationToken) -> Arc<FleetCache> {
        let cache = Arc::new(FleetCache::default());
        let (c, prefix, target) = (client.clone(), keys.fleet_prefix(), Arc::clone(&cache));
        tokio::spawn(async move {
            loop {
                let follow = cutover_etcd::follow::follow(&c, &prefix, |snapshot| {
                    target
                        .revision
                        .store(snapshot.revision, std::sync::atomic::Ordering::Relaxed);
                    let mut keys = target.keys.write().unwrap_or_else(PoisonError::into_inner);
                    match (&snapshot.changed, keys.as_mut()) {
                        // One change among thousands of apps' keys: copy what changed, not the map.
                        (Some(changed), Some(mine)) => {
                            for key in changed {
                                match snapshot.keys.get(key) {
                                    Some(value) => mine.insert(key.clone(), value.clone()),
                                    None => mine.remove(key),
                                };
                            }
                        }
                        _ => *keys = Some(snapshot.keys.clone()),
                    }
                    true
                });
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = follow => {}
                    _ = behind(&c, &prefix, &target) => {
                        tracing::warn!("the fleet watch is behind etcd: listing and watching again");
                    }
                }
            }
        });
        cache
    }

    /// The stored table of `app` and the registered proxies, as of one revision.
    fn view(&self, app: &str) -> Option<(Option<StoredTable>, Vec<ProxyRecord>)> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let keys = keys.as_ref()?;
        let table = keys
            .get(&format!("routes/{app}"))
            .and_then(|v| serde_json::from_str(v).ok());
        let proxies = keys
            .range("proxies/".to_string().."proxies0".to_string())
            .filter_map(|(_, v)| serde_json::from_str(v).ok())
            .collect();
        Some((table, proxies))
    }
}

/// The controller's router of one app in a fleet; see the module docs.
#[derive(Debug)]
pub struct FleetRouter {
    client: Client,
    keys: Keys,
    app: String,
    identity: String,
    drain: Duration,
    token: Token,
    http: reqwest::Client,
    cache: Option<Arc<FleetCache>>,
}

impl FleetRouter {
    pub fn new(client: Client, keys: Keys, app: &str, identity: &str, drain: Duration, token: &str) -> Self {
        FleetRouter {
            cache: None,
            client,
            keys,
            app: app.to_string(),
            identity: identity.to_string(),
            drain,
            token: Token(token.to_string()),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// This router, reading the stored table and the proxies from `cache` instead of etcd.
    pub fn with_cache(mut self, cache: Arc<FleetCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The stored table and the proxies: from the cache when it has a snapshot, else from etcd.
    async fn view(&self) -> Result<(Option<StoredTable>, Vec<ProxyRecord>), RouterError> {
        if let Some(view) = self.cache.as_ref().and_then(|c| c.view(&self.app)) {
            return Ok(view);
        }
        let table = stored_table(&self.client, &self.keys, &self.app)
            .await
            .map_err(|e| self.unavailable(e))?
            .map(|(t, _)| t);
        let proxies = proxies(&self.client, &self.keys)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok((table, proxies))
    }

    /// Writes `table` unless etcd already holds it; returns whether it wrote.
    async fn write(&self, table: &RouteTable) -> Result<bool, RouterError> {
        table.validate().map_err(|e| RouterError::Refused {
            router: self.describe(),
            reason: e.to_string(),
        })?;
        for _ in 0..10 {
            let current = stored_table(&self.client, &self.keys, &self.app)
                .await
                .map_err(|e| self.unavailable(e))?;
            if current.as_ref().is_some_and(|(t, _)| t.table == *table) {
                return Ok(false);
            }
            let (generation, revision) = current.map_or((0, 0), |(t, r)| (t.generation, r));
            let value = serde_json::to_string(&StoredTable {
                generation: generation + 1,
                table: table.clone(),
            })
            .map_err(|e| self.unavailable(e.to_string()))?;
            let key = self.keys.routes(&self.app);
            let leader_key = self.keys.leader();
            let compare = vec![
                client_ops::mod_revision_is(&key, revision),
                client_ops::value_is(&leader_key, &self.identity),
            ];
            let c = self.client.clone();
            let put = vec![client_ops::put(&key, &value)];
            let won = blocking(move || c.txn(compare, put))
                .await
                .map_err(|e| self.unavailable(e))?
                .map_err(|e| self.unavailable(e.to_string()))?;
            if won {
                return Ok(true);
            }
            let c = self.client.clone();
            let leader = blocking(move || c.get(&leader_key))
                .await
                .map_err(|e| self.unavailable(e))?
                .map_err(|e| self.unavailable(e.to_string()))?;
            if leader.as_ref().map(|(v, _)| v.as_str()) != Some(self.identity.as_str()) {
                // Fenced off: another controller leads (or nobody). Nothing of this one's may
                // act any more, platform calls included.
                lost(&format!(
                    "writing the table of app {} was refused: the leader key holds {}",
                    self.app,
                    leader.map_or("nothing".to_string(), |(v, _)| v)
                ));
            }
        }
        Err(self.unavailable("the stored table kept changing under this write; it will be tried again"))
    }

    fn unavailable(&self, reason: impl Into<String>) -> RouterError {
        RouterError::Unavailable {
            router: self.describe(),
            reason: reason.into(),
        }
    }

    async fn counters_of(&self, proxy: &ProxyRecord) -> Result<[SlotCounters; 2], String> {
        let url = format!("{}/v1/fleet/counters?app={}", proxy.admin, self.app);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token.0)
            .send()
            .await
            .map_err(|e| format!("proxy {} did not report ({url}): {e}", proxy.id))?;
        if !response.status().is_success() {
            return Err(format!(
                "proxy {} did not report: {url} answered {}",
                proxy.id,
                response.status()
            ));
        }
        response
            .json()
            .await
            .map_err(|e| format!("proxy {} sent unreadable counters: {e}", proxy.id))
    }
}

/// Adds `b` to `a`; a count one side lacks makes the sum lack it.
fn add(a: &mut SlotCounters, b: &SlotCounters) {
    fn opt(a: &mut Option<u64>, b: Option<u64>) {
        *a = a.zip(b).map(|(x, y)| x + y);
    }
    a.requests += b.requests;
    a.server_errors += b.server_errors;
    opt(&mut a.client_errors, b.client_errors);
    // Users are estimated per proxy: a user who reached two proxies is counted twice, which
    // only ever overstates how many users saw an error.
    opt(&mut a.users, b.users);
    opt(&mut a.users_with_client_errors, b.users_with_client_errors);
    opt(&mut a.in_flight, b.in_flight);
    a.codes = match (a.codes.take(), &b.codes) {
        (Some(mut x), Some(y)) => {
            for (code, n) in y {
                *x.entry(*code).or_default() += n;
            }
            Some(x)
        }
        _ => None,
    };
    a.latency_buckets = match (a.latency_buckets.take(), &b.latency_buckets) {
        (Some(mut x), Some(y)) if x.len() == y.len() => {
            for (i, n) in y.iter().enumerate() {
                x[i] += n;
            }
            Some(x)
        }
        _ => None,
    };
}

/// The counters of several proxies as one: their sums, under a series that changes whenever
/// any proxy's does or the set of proxies changes (two such readings cannot be subtracted).
pub fn sum_counters(readings: &[(String, [SlotCounters; 2])]) -> Result<[SlotCounters; 2], String> {
    use std::hash::{Hash, Hasher};
    let mut total: [SlotCounters; 2] = Default::default();
    for slot in Slot::ALL {
        let i = slot.index();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut first = true;
        for (id, counters) in readings {
            let c = &counters[i];
            (id, c.series).hash(&mut hasher);
            if first {
                total[i] = c.clone();
                first = false;
                continue;
            }
            if c.version != total[i].version {
                return Err(format!(
                    "proxy {id} counts version {:?} in slot {slot}, others {:?}: its table is behind",
                    c.version, total[i].version
                ));
            }
            add(&mut total[i], c);
        }
        total[i].series = hasher.finish();
    }
    Ok(total)
}

#[async_trait]
impl Router for FleetRouter {
    fn describe(&self) -> String {
        format!(
            "fleet's proxies (table at etcd key {})",
            self.keys.routes(&self.app)
        )
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        self.write(table).await.map(|_| ())
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        let (stored, proxies) = self.view().await?;
        let Some(stored) = stored else {
            return Err(self.unavailable("no table stored yet"));
        };
        for p in &proxies {
            let routed = p.generations.get(&self.app).copied().unwrap_or(0);
            if routed < stored.generation {
                return Err(self.unavailable(format!(
                    "proxy {} still routes by generation {routed}, not {}: traffic may still follow the earlier table",
                    p.id, stored.generation
                )));
            }
        }
        Ok(stored.table)
    }

    async fn reconcile(&self, wanted: &RouteTable) -> Result<bool, RouterError> {
        let (stored, _) = self.view().await?;
        if stored.is_some_and(|t| t.table == *wanted) {
            return Ok(false);
        }
        // The cache may only lag: `write` reads etcd itself and writes only a real difference.
        self.write(wanted).await
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        let (_, proxies) = self.view().await?;
        if proxies.is_empty() {
            return Err(self.unavailable("no proxy of the fleet is registered: nothing is counted"));
        }
        let mut readings = Vec::new();
        for p in &proxies {
            let counters = self.counters_of(p).await.map_err(|e| self.unavailable(e))?;
            readings.push((p.id.clone(), counters));
        }
        sum_counters(&readings).map_err(|e| self.unavailable(e))
    }

    async fn still_routes(&self, slot: Slot) -> bool {
        // Anything short of "the stored table gives it nothing and every proxy routes by that
        // table" may still send it traffic: a proxy behind, or a view that cannot be read.
        let Ok((Some(stored), proxies)) = self.view().await else {
            return true;
        };
        stored.table.weight_of(slot) > 0
            || proxies
                .iter()
                .any(|p| p.generations.get(&self.app).copied().unwrap_or(0) < stored.generation)
    }

    fn drain_timeout(&self) -> Duration {
        self.drain
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy role.

/// `cutover proxy`'s options beyond the configuration file.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Its name in the fleet (default: host name and pid).
    pub id: Option<String>,
    /// Its admin listener instead of `[admin] listen`.
    pub admin_listen: Option<SocketAddr>,
}

/// What a proxy routes by and how sure it is of it.
#[derive(Debug)]
struct ProxyState {
    apps: BTreeMap<String, Arc<AppProxy>>,
    /// Per app: the stored value last applied, and its generation.
    applied: Mutex<BTreeMap<String, (String, u64)>>,
    /// When the tables were last confirmed against etcd.
    confirmed: Mutex<Option<(Instant, u64)>>,
    started: Instant,
    stale_after: Duration,
    token: Token,
    id: String,
    /// Why the last table of an app was refused, if it was: shown on `/healthz`, since such a
    /// proxy can never confirm its tables and etcd is not to blame.
    refused: Mutex<BTreeMap<String, String>>,
}

impl ProxyState {
    fn generations(&self) -> BTreeMap<String, u64> {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(app, (_, g))| (app.clone(), *g))
            .collect()
    }

    /// Seconds since the tables were last confirmed (since start, if never).
    fn unconfirmed_for(&self) -> Duration {
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(self.started.elapsed(), |(at, _)| at.elapsed())
    }

    fn stale(&self) -> bool {
        self.unconfirmed_for() > self.stale_after
    }

    /// Applies the tables of a snapshot of `fleet/routes/`; returns whether all of ours parsed.
    fn apply_snapshot(&self, keys: &BTreeMap<String, String>) {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        for (app, proxy) in &self.apps {
            let Some(value) = keys.get(app) else { continue };
            if applied.get(app).is_some_and(|(v, _)| v == value) {
                continue;
            }
            let refusal = match serde_json::from_str::<StoredTable>(value) {
                Ok(stored) => match proxy.apply(stored.table) {
                    Ok(_) => {
                        tracing::info!(app, generation = stored.generation, "routing by a new table");
                        applied.insert(app.clone(), (value.clone(), stored.generation));
                        None
                    }
                    Err(e) => Some(format!(
                        "the stored table of app {app} was refused ({e}); routing by the last one"
                    )),
                },
                Err(e) => Some(format!(
                    "the stored table of app {app} is unreadable ({e}); routing by the last one"
                )),
            };
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            match refusal {
                Some(why) => {
                    tracing::error!(app, "{why}");
                    refused.insert(app.clone(), why);
                }
                None => {
                    refused.remove(app);
                }
            }
        }
    }

    /// Whether what we route by is what etcd holds now.
    fn matches(&self, keys: &BTreeMap<String, String>) -> bool {
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        self.apps
            .keys()
            .all(|app| keys.get(app).map(String::as_str) == applied.get(app).map(|(v, _)| v.as_str()))
    }
}

/// Starts a proxy of the fleet; see the module docs.
pub async fn start_proxy(
    config: Config,
    admin_token: String,
    options: StartOptions,
    proxy_options: ProxyOptions,
) -> Result<Running, ServeError> {
    if !config.store.is_etcd() {
        return Err(fleet_error(
            "`cutover proxy` follows route tables in etcd: its configuration needs [store] kind = \"etcd\" and endpoints",
        ));
    }
    let client = client(&config.store, &options.config_dir)?;
    let keys = Keys::new(&config.store.prefix);
    let shutdown = CancellationToken::new();
    let mut apps = BTreeMap::new();
    let mut bound_apps = BTreeMap::new();
    let mut listeners = Vec::new();
    for (i, app_config) in config.apps.iter().enumerate() {
        if !matches!(app_config.router, RouterConfig::Builtin) {
            continue;
        }
        let listen = app_config.listen.ok_or_else(|| ServeError::NoListener {
            app: app_config.name.clone(),
        })?;
        let bind = |field: &str, addr: SocketAddr| {
            crate::bind_listener(addr, app_config.listen_backlog).map_err(|source| ServeError::Bind {
                field: format!("app[{i}].{field}"),
                addr,
                source,
            })
        };
        let public = bind("listen", listen)?;
        let preview = match app_config.preview_listen {
            Some(addr) => Some(bind("preview_listen", addr)?),
            None => None,
        };
        let tls = match &app_config.tls {
            Some(t) => Some(
                cutover_proxy::tls_acceptor(&t.cert_path, &t.key_path).map_err(|source| ServeError::Tls {
                    field: format!("app[{i}].tls"),
                    source,
                })?,
            ),
            None => None,
        };
        let app = AppProxy::new(
            app_config.name.clone(),
            app_config.proxy.clone(),
            RouteTable::empty(Slot::Blue),
        )
        .map_err(|source| ServeError::Routes {
            app: app_config.name.clone(),
            source,
        })?;
        bound_apps.insert(
            app_config.name.clone(),
            BoundApp {
                listen: public.local_addr().unwrap_or(listen),
                preview: preview.as_ref().and_then(|l| l.local_addr().ok()),
            },
        );
        listeners.push((
            Arc::clone(&app),
            public,
            cutover_proxy::ListenerKind::Public,
            tls.clone(),
        ));
        if let Some(preview) = preview {
            listeners.push((
                Arc::clone(&app),
                preview,
                cutover_proxy::ListenerKind::Preview,
                tls,
            ));
        }
        apps.insert(app_config.name.clone(), app);
    }
    let admin_addr = proxy_options.admin_listen.unwrap_or(config.admin.listen);
    if admin_addr.ip().is_unspecified() {
        return Err(fleet_error(format!(
            "admin address {admin_addr}: the controllers read this proxy's counters at the address it \
             registers, so give one they can reach, e.g. --admin-listen 10.0.1.5:9181"
        )));
    }
    if !admin_addr.ip().is_loopback() && !config.admin.allow_non_loopback {
        return Err(fleet_error(format!(
            "--admin-listen {admin_addr} is not a loopback address; the controllers read this proxy's \
             counters there, so set [admin] allow_non_loopback = true to listen elsewhere, as a deliberate act"
        )));
    }
    let admin_listener = crate::bind_listener(admin_addr, 1024).map_err(|source| ServeError::Bind {
        field: "admin.listen".into(),
        addr: admin_addr,
        source,
    })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    let host = host_name();
    let id = proxy_options
        .id
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let state = Arc::new(ProxyState {
        apps: apps.clone(),
        applied: Mutex::new(BTreeMap::new()),
        confirmed: Mutex::new(None),
        started: Instant::now(),
        stale_after: Duration::from_millis(config.store.stale_after_ms),
        token: Token(admin_token),
        id: id.clone(),
        refused: Mutex::new(BTreeMap::new()),
    });

    let mut tasks = JoinSet::new();
    // The tables first, then the listeners: a proxy that starts while etcd answers never
    // serves a request by an empty table. Without etcd it serves 503s until the tables come.
    let restart = Arc::new(tokio::sync::Notify::new());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(follow_tables(
        client.clone(),
        keys.clone(),
        Arc::clone(&state),
        Arc::clone(&restart),
        first_tx,
        shutdown.clone(),
    ));
    if tokio::time::timeout(state.stale_after, first_rx).await.is_err() {
        tracing::warn!(
            "no route table from etcd yet: serving 503 until one comes, and saying so on /healthz"
        );
    }
    for (app, listener, kind, tls) in listeners {
        let drain = app.settings.drain_timeout();
        tasks.spawn(cutover_proxy::serve(
            listener,
            app,
            kind,
            tls,
            shutdown.clone(),
            drain,
        ));
    }
    tasks.spawn(confirm_and_register(
        client.clone(),
        keys.clone(),
        Arc::clone(&state),
        restart,
        format!("http://{admin_addr}"),
        shutdown.clone(),
    ));
    let header_read_timeout = Duration::from_millis(config.admin.header_read_timeout_ms);
    tasks.spawn(crate::serve_api(
        "proxy admin",
        admin_listener,
        proxy_admin(Arc::clone(&state)),
        header_read_timeout,
        shutdown.clone(),
    ));
    tracing::info!(id, "proxy of the fleet started");
    Ok(Running {
        bound: Bound {
            admin: admin_addr,
            apps: bound_apps,
            flags: None,
        },
        apps,
        controllers: BTreeMap::new(),
        shutdown,
        handed_over: CancellationToken::new(),
        tasks,
        _state_lock: Arc::new(std::sync::Mutex::new(None)),
    })
}

/// Follows `fleet/routes/` for as long as the proxy runs; starts over when told the watch is
/// behind (a connection that hangs without breaking).
async fn follow_tables(
    client: Client,
    keys: Keys,
    state: Arc<ProxyState>,
    restart: Arc<tokio::sync::Notify>,
    first: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut first = Some(first);
    let prefix = keys.routes_prefix();
    loop {
        let follower = cutover_etcd::follow::follow(&client, &prefix, |snapshot| {
            state.apply_snapshot(&snapshot.keys);
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            true
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = follower => {}
            _ = restart.notified() => {
                tracing::warn!("the table watch is behind what etcd holds: listing and watching again");
            }
        }
    }
}

/// Every second: reads the tables (confirming or not) and renews the registration.
async fn confirm_and_register(
    client: Client,
    keys: Keys,
    state: Arc<ProxyState>,
    restart: Arc<tokio::sync::Notify>,
    admin: String,
    shutdown: CancellationToken,
) {
    let key = format!("{}{}", keys.proxies_prefix(), state.id);
    let mut lease: i64 = 0;
    let mut behind_since: Option<Instant> = None;
    let ttl_secs = (state.stale_after.as_secs() * 3).clamp(10, 600);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Leaving on purpose: out of the fleet at once, not after the lease.
                let c = client.clone();
                let _ = blocking(move || c.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))).await;
                return;
            }
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let (c, prefix) = (client.clone(), keys.routes_prefix());
        let skip = prefix.len();
        match blocking(move || c.range_all(&prefix, 0)).await {
            Ok(Ok(kvs)) => {
                let now: BTreeMap<String, String> = kvs
                    .into_iter()
                    .map(|kv| (kv.key[skip..].to_string(), kv.value))
                    .collect();
                if state.matches(&now) {
                    *state.confirmed.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((Instant::now(), wall_ms()));
                    behind_since = None;
                } else {
                    let since = *behind_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > state.stale_after / 2 {
                        restart.notify_one();
                        behind_since = None;
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot confirm the route tables with etcd"),
            Err(e) => tracing::warn!(error = %e, "cannot confirm the route tables with etcd"),
        }
        let confirmed_ms = state
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(_, wall)| wall);
        let record = ProxyRecord {
            id: state.id.clone(),
            admin: admin.clone(),
            pid: std::process::id(),
            contact_ms: wall_ms(),
            generations: state.generations(),
            confirmed_ms,
            stale: state.stale(),
        };
        let Ok(value) = serde_json::to_string(&record) else {
            continue;
        };
        let c = client.clone();
        let (k, l) = (key.clone(), lease);
        let renewed = blocking(move || register(&c, &k, &value, l, ttl_secs)).await;
        match renewed {
            Ok(Ok(l)) => {
                if lease != l {
                    tracing::info!(key, lease = l, "registered in the fleet");
                }
                lease = l
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew this proxy's registration in etcd"),
            Err(e) => tracing::warn!(error = %e, "cannot renew this proxy's registration in etcd"),
        }
    }
}

/// Writes the registration under `lease` (renewed), or under a new lease if that one is gone.
fn register(
    client: &Client,
    key: &str,
    value: &str,
    lease: i64,
    ttl_secs: u64,
) -> Result<i64, cutover_etcd::EtcdError> {
    let mut lease = lease;
    if lease != 0 {
        let answer = client.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))?;
        let ttl = cutover_etcd::number(answer.pointer("/result/TTL").or_else(|| answer.get("TTL")));
        if ttl <= 0 {
            lease = 0;
        }
    }
    if lease == 0 {
        let grant = client.call("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() }))?;
        lease = cutover_etcd::number(grant.get("ID"));
    }
    client.call(
        "/v3/kv/put",
        json!({ "key": cutover_etcd::b64(key), "value": cutover_etcd::b64(value), "lease": lease.to_string() }),
    )?;
    Ok(lease)
}

fn proxy_admin(state: Arc<ProxyState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(proxy_health))
        .route("/metrics", get(proxy_metrics))
        .route("/v1/fleet/counters", get(proxy_counters))
        .with_state(state)
}

async fn proxy_health(State(state): State<Arc<ProxyState>>) -> Response {
    let unconfirmed = state.unconfirmed_for();
    let body = json!({
        "id": state.id,
        "stale": state.stale(),
        "generations": state.generations(),
        "unconfirmed_ms": u64::try_from(unconfirmed.as_millis()).unwrap_or(u64::MAX),
    });
    if state.stale() {
        let mut body = body;
        let refused: Vec<String> = state
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        body["error"] = json!(if refused.is_empty() {
            format!(
                "the route tables have not been confirmed against etcd for {:.1} s (stale_after_ms {}): serving the last tables",
                unconfirmed.as_secs_f64(),
                state.stale_after.as_millis()
            )
        } else {
            refused.join("; ")
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(body).into_response()
    }
}

async fn proxy_metrics(State(state): State<Arc<ProxyState>>) -> Response {
    use std::fmt::Write;
    let mut text = cutover_proxy::prometheus::render(state.apps.values().map(|a| a.as_ref()));
    let _ = writeln!(
        text,
        "# HELP cutover_fleet_table_stale 1 while this proxy has not confirmed its route tables against etcd for longer than stale_after_ms.\n# TYPE cutover_fleet_table_stale gauge\ncutover_fleet_table_stale {}",
        u8::from(state.stale())
    );
    let _ = writeln!(
        text,
        "# HELP cutover_fleet_table_unconfirmed_seconds Time since this proxy last confirmed its route tables against etcd.\n# TYPE cutover_fleet_table_unconfirmed_seconds gauge\ncutover_fleet_table_unconfirmed_seconds {:.3}",
        state.unconfirmed_for().as_secs_f64()
    );
    let _ = writeln!(
        text,
        "# HELP cutover_fleet_table_generation Generation of the route table each app is routed by.\n# TYPE cutover_fleet_table_generation gauge"
    );
    for (app, generation) in state.generations() {
        let _ = writeln!(
            text,
            "cutover_fleet_table_generation{{app=\"{app}\"}} {generation}"
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
struct CountersQuery {
    app: String,
}

async fn proxy_counters(
    State(state): State<Arc<ProxyState>>,
    headers: HeaderMap,
    query: Result<Query<CountersQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let authorized = crate::admin::bearer_token(&headers)
        .is_some_and(|t| constant_time_eq::constant_time_eq(t.as_bytes(), state.token.0.as_bytes()));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "counters need the fleet's admin token: send `Authorization: Bearer <token>`" })),
        )
            .into_response();
    }
    let Ok(Query(query)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "name the app: ?app=NAME" })),
        )
            .into_response();
    };
    let Some(app) = state.apps.get(&query.app) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("this proxy serves no app named {:?}", query.app) })),
        )
            .into_response();
    };
    let router = cutover_router::BuiltinRouter::new(Arc::clone(app));
    match router.counters().await {
        Ok(c) => Json(c).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// The controller role.

/// The admin API of a controller that may be standing by: the full API once it leads.
#[derive(Debug)]
struct Dispatch {
    leading: OnceLock<axum::Router>,
    identity: String,
    client: Client,
    keys: Keys,
}

async fn dispatch(State(d): State<Arc<Dispatch>>, request: axum::extract::Request) -> Response {
    if let Some(router) = d.leading.get() {
        use tower::ServiceExt;
        return match router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let (c, key) = (d.client.clone(), d.keys.leader());
    let leader = blocking(move || c.get(&key))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .map(|(v, _)| v);
    let leader_text = leader.clone().unwrap_or_else(|| "none yet".into());
    if request.uri().path() == "/healthz" {
        return Json(json!({ "role": "standby", "identity": d.identity, "leader": leader })).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": format!(
                "this controller ({}) stands by; the leader is {leader_text}: send this request to the leader's admin API",
                d.identity
            ),
            "leader": leader,
        })),
    )
        .into_response()
}

/// Starts a controller of the fleet: admin API at once, controllers once elected.
pub async fn start_controller(
    config: Config,
    admin_token: String,
    options: StartOptions,
) -> Result<Running, ServeError> {
    let client = client(&config.store, &options.config_dir)?;
    let keys = Keys::new(&config.store.prefix);
    let shutdown = CancellationToken::new();
    // This host's own files (the static platform's record, the CLI's admin.url), not the state.
    let state_dir = crate::state_dir(&config, &options.config_dir);
    crate::create_private_dir(&state_dir).map_err(|e| ServeError::StateDir {
        path: state_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let admin_listener =
        crate::bind_listener(config.admin.listen, 1024).map_err(|source| ServeError::Bind {
            field: "admin.listen".into(),
            addr: config.admin.listen,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
    let host = host_name();
    let identity = format!("{host} pid {} admin http://{admin_addr}", std::process::id());
    let dispatch_state = Arc::new(Dispatch {
        leading: OnceLock::new(),
        identity: identity.clone(),
        client: client.clone(),
        keys: keys.clone(),
    });
    let mut tasks = JoinSet::new();
    let header_read_timeout = Duration::from_millis(config.admin.header_read_timeout_ms);
    tasks.spawn(crate::serve_api(
        "admin",
        admin_listener,
        axum::Router::new()
            .fallback(dispatch)
            .with_state(Arc::clone(&dispatch_state)),
        header_read_timeout,
        shutdown.clone(),
    ));
    let lease_secs = i64::try_from(config.store.leader_lease_ms.div_ceil(1000)).unwrap_or(5);
    let election = Election::new(client.clone(), &keys.leader(), &identity, lease_secs);
    tasks.spawn(lead_when_elected(
        config,
        admin_token,
        options,
        election,
        client,
        keys,
        dispatch_state,
        shutdown.clone(),
    ));
    Ok(Running {
        bound: Bound {
            admin: admin_addr,
            apps: BTreeMap::new(),
            flags: None,
        },
        apps: BTreeMap::new(),
        controllers: BTreeMap::new(),
        shutdown,
        handed_over: CancellationToken::new(),
        tasks,
        _state_lock: Arc::new(std::sync::Mutex::new(None)),
    })
}

#[allow(clippy::too_many_arguments)]
async fn lead_when_elected(
    config: Config,
    admin_token: String,
    options: StartOptions,
    election: Election,
    client: Client,
    keys: Keys,
    dispatch: Arc<Dispatch>,
    shutdown: CancellationToken,
) {
    let retry = Duration::from_millis((config.store.leader_lease_ms / 5).clamp(200, 2_000));
    let mut said_standby = false;
    let leadership = loop {
        let e = election.clone();
        match blocking(move || e.try_acquire()).await {
            Ok(Ok(Some(l))) => break l,
            Ok(Ok(None)) if !said_standby => {
                tracing::info!(identity = %dispatch.identity, "standing by: another controller leads");
                said_standby = true;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot campaign for the leadership"),
            Err(e) => tracing::warn!(error = %e, "cannot campaign for the leadership"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    };
    let leadership = Arc::new(leadership);
    tracing::info!(identity = %dispatch.identity, "elected: resuming the apps from the stored state");
    // Renewals start before the controllers: starting them may take longer than the lease. The
    // task holds the only reference, so that it can resign at shutdown.
    let renewals = {
        let shutdown = shutdown.clone();
        let lease_ms = config.store.leader_lease_ms;
        // The watchdog: the leadership is certain only until the lease granted at the last
        // renewal's *sending* runs out, whatever the renewals are doing (one may hang).
        let renewed_at = Arc::new(Mutex::new(Instant::now()));
        {
            let (renewed_at, shutdown) = (Arc::clone(&renewed_at), shutdown.clone());
            let margin = Duration::from_millis(lease_ms / 5);
            let lease = Duration::from_millis(lease_ms);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    let since = renewed_at
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .elapsed();
                    if since + margin >= lease {
                        lost(&format!(
                            "no renewal confirmed for {:.1} s of a {:.1} s lease",
                            since.as_secs_f64(),
                            lease.as_secs_f64()
                        ));
                    }
                }
            });
        }
        tokio::spawn(async move {
            let every = Duration::from_millis((lease_ms / 3).max(300));
            let mut last_renewed = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Stepping down on purpose: a standby takes over now, not after the lease.
                        if let Ok(l) = Arc::try_unwrap(leadership) {
                            let _ = blocking(move || l.resign()).await;
                        }
                        return;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
                let l = Arc::clone(&leadership);
                let sent = Instant::now();
                match blocking(move || l.keep_alive()).await {
                    Ok(Ok(true)) => {
                        last_renewed = sent;
                        *renewed_at.lock().unwrap_or_else(PoisonError::into_inner) = sent;
                    }
                    Ok(Ok(false)) => lost("the lease expired and another controller may lead"),
                    Ok(Err(e)) if last_renewed.elapsed() >= Duration::from_millis(lease_ms) => {
                        lost(&format!("no renewal for the whole lease ({e})"))
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leadership yet"),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the leadership yet"),
                }
            }
        })
    };
    match lead(
        &config,
        admin_token,
        &options,
        &client,
        &keys,
        &dispatch,
        &shutdown,
    )
    .await
    {
        Ok(()) => {}
        Err(e) => {
            tracing::error!(error = %e, "elected, but the apps could not be started: stepping down");
            std::process::exit(LOST_LEADERSHIP_EXIT);
        }
    }
    let _ = renewals.await;
}

fn lost(why: &str) -> ! {
    tracing::error!(
        "lost the leadership ({why}): exiting so that a supervisor starts this controller again as a standby"
    );
    std::process::exit(LOST_LEADERSHIP_EXIT);
}

async fn lead(
    config: &Config,
    admin_token: String,
    options: &StartOptions,
    client: &Client,
    keys: &Keys,
    dispatch: &Arc<Dispatch>,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    use cutover_store::Store;
    let store: Arc<dyn Store> = Arc::new(
        EtcdStore::with_client(client.clone(), &config.store.prefix)
            .fenced(&keys.leader(), &dispatch.identity),
    );
    let state_dir = crate::state_dir(config, &options.config_dir);
    crate::create_private_dir(&state_dir).map_err(|e| ServeError::StateDir {
        path: state_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let named_tokens = match &config.admin.tokens_file {
        Some(p) if p.is_relative() => crate::flags::load_named_tokens(&options.config_dir.join(p))?,
        Some(p) => crate::flags::load_named_tokens(p)?,
        None => Vec::new(),
    };
    let cache = FleetCache::start(client, keys, shutdown.clone());
    #[cfg(feature = "kubernetes")]
    let mut clusters = crate::kube_wiring::Clusters::default();
    let mut controllers = BTreeMap::new();
    for app_config in &config.apps {
        let Some(mut managed) = app_config.managed() else {
            continue;
        };
        if let Some(migrations) = &mut managed.migrations {
            migrations.base_dir = Some(options.config_dir.clone());
        }
        let router: Arc<dyn Router> = {
            #[cfg(feature = "kubernetes")]
            let kube = clusters.router(app_config, &options.config_dir).await?;
            #[cfg(not(feature = "kubernetes"))]
            let kube: Option<Arc<dyn Router>> = None;
            match kube {
                Some(r) => r,
                None => match app_config.router.external(&app_config.name).map_err(|source| {
                    ServeError::Router {
                        app: app_config.name.clone(),
                        source,
                    }
                })? {
                    Some(r) => r,
                    None => Arc::new(
                        FleetRouter::new(
                            client.clone(),
                            keys.clone(),
                            &app_config.name,
                            &dispatch.identity,
                            app_config.proxy.drain_timeout(),
                            &admin_token,
                        )
                        .with_cache(Arc::clone(&cache)),
                    ),
                },
            }
        };
        let platform: Arc<dyn cutover_platform::Platform> = match (app_config.platform, &app_config.hosts) {
            (Some(crate::config::PlatformKind::Static), Some(hosts)) => {
                let platform =
                    cutover_platform::StaticHostsPlatform::new(&app_config.name, hosts.clone(), &state_dir)?;
                // What runs where is in the shared state, not in this host's record: a controller
                // that takes over learns it from there.
                if let Some(state) = store.load(&app_config.name)? {
                    for slot in Slot::ALL {
                        let s = state.slot(slot);
                        platform.remember(slot, s.is_running().then(|| s.version().unwrap_or_default()))?;
                    }
                }
                Arc::new(platform)
            }
            #[cfg(feature = "kubernetes")]
            (Some(crate::config::PlatformKind::Kubernetes), _) => clusters.platform(app_config)?,
            _ => {
                return Err(fleet_error(format!(
                    "app {}: a fleet's app needs platform = \"static\" or \"kubernetes\"",
                    app_config.name
                )))
            }
        };
        let alert_gate = match &app_config.alert_gate {
            Some(c) => Some(cutover_monitoring::AlertGate::new(c.clone()).map_err(|source| {
                ServeError::AlertGate {
                    app: app_config.name.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let gates = crate::gates::ConfiguredGates::new(app_config.webhooks.clone())
            .map_err(|source| ServeError::Webhooks {
                app: app_config.name.clone(),
                source,
            })?
            .with_alert_gate(alert_gate);
        let deps = crate::controller::Deps {
            clock: Arc::clone(&options.clock),
            store: Arc::clone(&store),
            platform,
            tick: Duration::from_millis(config.server.tick_ms),
            shutdown: shutdown.clone(),
            gates: Arc::new(gates),
        };
        let controller = crate::controller::Controller::start(&app_config.name, managed, router, deps)
            .await
            .map_err(|source| ServeError::Controller {
                app: app_config.name.clone(),
                source,
            })?;
        controllers.insert(app_config.name.clone(), controller);
    }
    let live = crate::dashboard::Live::new(Arc::clone(&options.clock), shutdown.clone());
    tokio::spawn(crate::dashboard::sample(
        Arc::clone(&live),
        controllers.clone(),
        Arc::clone(&options.clock),
    ));
    let state = Arc::new(crate::admin::AdminState {
        apps: BTreeMap::new(),
        controllers,
        token: admin_token,
        named_tokens,
        flags: None,
        ramps: None,
        live,
        loopback_only: config.admin.listen.ip().is_loopback(),
        fleet: Some(crate::admin::FleetHandle {
            client: client.clone(),
            keys: keys.clone(),
            lease_ms: config.store.leader_lease_ms,
        }),
    });
    let _ = dispatch.leading.set(crate::admin::router(state));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(version: &str, series: u64, requests: u64, errors: u64) -> SlotCounters {
        SlotCounters {
            version: version.into(),
            series,
            requests,
            server_errors: errors,
            client_errors: Some(1),
            codes: Some(BTreeMap::from([(500, errors)])),
            users: Some(3),
            users_with_client_errors: Some(1),
            latency_buckets: Some(vec![1, 2, 3]),
            in_flight: Some(0),
        }
    }

    #[test]
    fn the_fleet_counts_the_sum_of_its_proxies() {
        let a = [counters("v1", 1, 10, 1), counters("v2", 1, 5, 0)];
        let b = [counters("v1", 7, 20, 2), counters("v2", 7, 6, 1)];
        let sum = sum_counters(&[("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
        assert_eq!(sum[0].requests, 30);
        assert_eq!(sum[0].server_errors, 3);
        assert_eq!(sum[0].codes, Some(BTreeMap::from([(500, 3)])));
        assert_eq!(sum[0].latency_buckets, Some(vec![2, 4, 6]));
        assert_eq!(sum[1].requests, 11);
        // A proxy that restarted (a new series) makes a new series of the sum.
        let b2 = [counters("v1", 8, 1, 0), counters("v2", 8, 1, 0)];
        let again = sum_counters(&[("a".into(), a.clone()), ("b".into(), b2)]).unwrap();
        assert_ne!(again[0].series, sum[0].series);
        // So does a proxy more or less.
        let fewer = sum_counters(&[("a".into(), a.clone())]).unwrap();
        assert_ne!(fewer[0].series, sum[0].series);
        // A proxy whose table is behind (another version in the slot) cannot be added up.
        let behind = [counters("v0", 1, 10, 1), counters("v2", 1, 5, 0)];
        assert!(sum_counters(&[("a".into(), a), ("c".into(), behind)])
            .unwrap_err()
            .contains("proxy c"));
    }
}
