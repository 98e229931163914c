//! cutover's own proxy as a router: the table is swapped in process, atomically, and read back
//! from the proxy itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{RouteTable, Slot};
use cutover_proxy::AppProxy;

use crate::{Router, RouterError, SlotCounters};

/// The built-in proxy of one app.
#[derive(Debug, Clone)]
pub struct BuiltinRouter {
    proxy: Arc<AppProxy>,
}

impl BuiltinRouter {
    pub fn new(proxy: Arc<AppProxy>) -> Self {
        BuiltinRouter { proxy }
    }

    pub fn proxy(&self) -> &Arc<AppProxy> {
        &self.proxy
    }
}

#[async_trait]
impl Router for BuiltinRouter {
    fn describe(&self) -> String {
        "built-in proxy".to_string()
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        if self.proxy.route() == *table {
            return Ok(());
        }
        self.proxy
            .apply(table.clone())
            .map_err(|e| RouterError::Refused {
                router: self.describe(),
                reason: e.to_string(),
            })?;
        let found = self.proxy.route();
        if found != *table {
            // Another apply raced this one; the controller serialises its own, so this is
            // somebody using the admin API at the same moment.
            return Err(RouterError::NotApplied {
                router: self.describe(),
                wanted: serde_json::to_string(table).unwrap_or_default(),
                found: serde_json::to_string(&found).unwrap_or_default(),
                hint: "another change was applied at the same moment; it will be applied again".to_string(),
            });
        }
        Ok(())
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        Ok(self.proxy.route())
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        let table = self.proxy.table();
        Ok(Slot::ALL.map(|slot| {
            let pool = table.pool(slot);
            let snapshot = pool.metrics.snapshot();
            SlotCounters {
                version: pool.version.clone(),
                series: pool.metrics.series(),
                requests: snapshot.total_requests(),
                server_errors: snapshot.server_errors(),
                client_errors: Some(snapshot.client_errors()),
                codes: Some(snapshot.code_counts()),
                users: Some(snapshot.users),
                users_with_client_errors: Some(snapshot.users_with_client_errors),
                latency_buckets: Some(snapshot.latency_buckets),
                in_flight: Some(snapshot.in_flight),
            }
        }))
    }

    fn drain_timeout(&self) -> Duration {
        self.proxy.settings.drain_timeout()
    }
}
