//! One app's routing state: the active table, swapped atomically, and the backends behind it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use cutover_core::{Bucketer, RouteTable, Slot, ValidationErrors};
use http::header::HeaderName;

use crate::backend::Backend;
use crate::config::ProxySettings;
use crate::flags::FlagForwarding;
use crate::health;
use crate::metrics::PoolMetrics;

/// A route table made ready for the hot path: backends as live objects, metrics attached.
#[derive(Debug)]
pub struct ActiveTable {
    pub route: RouteTable,
    /// Indexed by [`Slot::index`].
    pub pools: [ActivePool; 2],
    /// Counts applied tables, starting at 1.
    pub generation: u64,
}

#[derive(Debug)]
pub struct ActivePool {
    pub slot: Slot,
    pub version: String,
    pub weight_bp: u16,
    pub backends: Vec<Arc<Backend>>,
    pub metrics: Arc<PoolMetrics>,
}

impl ActiveTable {
    pub fn pool(&self, slot: Slot) -> &ActivePool {
        &self.pools[slot.index()]
    }
}

impl ActivePool {
    /// Whether some backend of the pool takes new requests now.
    pub fn can_take_requests(&self) -> bool {
        self.backends.iter().any(|b| b.is_available())
    }
}

/// Header names parsed once from the settings.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNames {
    pub user_key: Option<HeaderName>,
    pub preview: HeaderName,
    /// What follows `name=key` in an issued bucket cookie: its attributes, without and with
    /// `Secure`.
    pub cookie_attributes: [String; 2],
}

impl HeaderNames {
    pub(crate) fn from_settings(settings: &ProxySettings) -> Self {
        HeaderNames {
            user_key: settings
                .sticky
                .user_key_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            preview: HeaderName::from_bytes(settings.preview.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-cutover-preview")),
            cookie_attributes: [false, true].map(|secure| {
                format!(
                    "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
                    settings.sticky.bucket_cookie_max_age_secs,
                    if secure { "; Secure" } else { "" }
                )
            }),
        }
    }
}

/// The data plane of one app.
#[derive(Debug)]
pub struct AppProxy {
    pub name: String,
    pub settings: ProxySettings,
    pub(crate) bucketer: Bucketer,
    pub(crate) names: HeaderNames,
    table: ArcSwap<ActiveTable>,
    /// Serialises table changes; never touched by requests.
    apply_lock: Mutex<HashMap<(Slot, SocketAddr), Arc<Backend>>>,
    /// The flags forwarded to the app's backends, when it has any (`[app.flags]`).
    flags: arc_swap::ArcSwapOption<FlagForwarding>,
}

impl AppProxy {
    /// Must be called inside a tokio runtime: health checks of the initial backends start here.
    pub fn new(
        name: impl Into<String>,
        settings: ProxySettings,
        initial: RouteTable,
    ) -> Result<Arc<Self>, ValidationErrors> {
        initial.validate()?;
        let bucketer = Bucketer::new(settings.sticky.hash_seed);
        let empty = RouteTable::empty(initial.live);
        let app = Arc::new(AppProxy {
            name: name.into(),
            bucketer,
            names: HeaderNames::from_settings(&settings),
            table: ArcSwap::from_pointee(ActiveTable {
                pools: [Slot::Blue, Slot::Green].map(|slot| ActivePool {
                    slot,
                    version: String::new(),
                    weight_bp: empty.weight_of(slot),
                    backends: Vec::new(),
                    metrics: Arc::new(PoolMetrics::default()),
                }),
                route: empty,
                generation: 0,
            }),
            settings,
            apply_lock: Mutex::new(HashMap::new()),
            flags: arc_swap::ArcSwapOption::empty(),
        });
        app.apply(initial)?;
        Ok(app)
    }

    /// Forwards `forwarding`'s flags to the app's backends from the next request on.
    pub fn forward_flags(&self, forwarding: Arc<FlagForwarding>) {
        self.flags.store(Some(forwarding));
    }

    /// The app's forwarded flags and their counters, if it has any.
    pub fn flag_forwarding(&self) -> Option<Arc<FlagForwarding>> {
        self.flags.load_full()
    }

    /// The table requests are routed by right now.
    pub fn table(&self) -> Arc<ActiveTable> {
        self.table.load_full()
    }

    pub fn route(&self) -> RouteTable {
        self.table.load().route.clone()
    }

    /// Replaces the route table. Invalid tables are refused whole and change nothing. The swap is
    /// atomic: the next request is routed by the whole new table. Backends kept across the change
    /// keep their health and warm connections; a slot that loses its traffic drains.
    pub fn apply(self: &Arc<Self>, route: RouteTable) -> Result<u64, ValidationErrors> {
        route.validate()?;
        let mut registry = self.apply_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.table.load_full();
        let drain = self.settings.drain_timeout();

        let mut wanted: HashMap<(Slot, SocketAddr), Arc<Backend>> = HashMap::new();
        let pools = [Slot::Blue, Slot::Green].map(|slot| {
            let pool = route.pool(slot);
            let backends: Vec<Arc<Backend>> = pool
                .backends
                .iter()
                .map(|addr| {
                    let backend = registry.get(&(slot, *addr)).cloned().unwrap_or_else(|| {
                        let backend = Arc::new(Backend::new(
                            *addr,
                            slot,
                            self.settings.upstream_max_idle_per_backend,
                        ));
                        if self.settings.health_check.enabled {
                            health::spawn_checks(
                                Arc::clone(&backend),
                                self.settings.clone(),
                                self.name.clone(),
                            );
                        }
                        backend
                    });
                    wanted.insert((slot, *addr), Arc::clone(&backend));
                    backend
                })
                .collect();
            let old_pool = old.pool(slot);
            // A new version in a slot starts new series: the old release's numbers must not leak
            // into the judgement of the new one.
            let metrics = if old_pool.version == pool.version {
                Arc::clone(&old_pool.metrics)
            } else {
                Arc::new(PoolMetrics::default())
            };
            ActivePool {
                slot,
                version: pool.version.clone(),
                weight_bp: route.weight_of(slot),
                backends,
                metrics,
            }
        });

        // Gain traffic before the swap so the first requests already keep their connections; lose
        // it after, so no new request lands on a connection being closed.
        for pool in &pools {
            if pool.weight_bp > 0 {
                for b in &pool.backends {
                    b.set_serving(true, drain);
                }
            }
        }
        let generation = old.generation + 1;
        let losing: Vec<Arc<Backend>> = pools
            .iter()
            .filter(|p| p.weight_bp == 0)
            .flat_map(|p| p.backends.iter().cloned())
            .collect();
        self.table.store(Arc::new(ActiveTable {
            route,
            pools,
            generation,
        }));
        for b in losing {
            b.set_serving(false, drain);
        }
        for (key, backend) in registry.drain() {
            if !wanted.contains_key(&key) {
                backend.retire(drain);
            }
        }
        *registry = wanted;
        tracing::info!(app = %self.name, generation, "route table applied");
        Ok(generation)
    }

    /// Stops health checks of every backend (used at shutdown).
    pub fn retire_all(&self) {
        let registry = self.apply_lock.lock().unwrap_or_else(PoisonError::into_inner);
        for backend in registry.values() {
            backend.retired.cancel();
        }
    }
}

/// Picks a backend by power of two choices over the least in-flight requests, skipping those that
/// are unhealthy, ejected, or in `exclude` (a bit set of indices already tried).
pub(crate) fn pick(backends: &[Arc<Backend>], exclude: u64) -> Option<(usize, &Arc<Backend>)> {
    let usable = |i: usize| {
        let skip = i < 64 && exclude & (1 << i) != 0;
        !skip && backends[i].is_available()
    };
    match backends.len() {
        0 => None,
        1 => usable(0).then(|| (0, &backends[0])),
        n => {
            let a = rand::random_range(0..n);
            let mut b = rand::random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let chosen = match (usable(a), usable(b)) {
                (true, true) => {
                    if backends[b].in_flight() < backends[a].in_flight() {
                        Some(b)
                    } else {
                        Some(a)
                    }
                }
                (true, false) => Some(a),
                (false, true) => Some(b),
                (false, false) => (0..n).map(|k| (a + k) % n).find(|&i| usable(i)),
            };
            chosen.map(|i| (i, &backends[i]))
        }
    }
}
