//! Routers that move traffic by changing one object the cluster's data plane reads:
//!
//! | kind | object | what cutover owns | canary weights |
//! | --- | --- | --- | --- |
//! | `kubernetes_service` | the app's Service | `spec.selector` (atomic in the API: the owner's keys as they are, plus `cutover.dev/app`, `cutover.dev/slot`) | no: blue-green only |
//! | `gateway_api` | an HTTPRoute | `spec.rules` (the list is atomic in the CRD), `backendRefs` of the rules that point at the slot Services | 0.01 % steps |
//! | `istio` | a VirtualService | `spec.http` (atomic), `route` of the routes that point at the slot Services | 1 % steps |
//! | `ingress_nginx` | the app's Service, and a canary Ingress `<ingress>-canary` cutover makes | the selector, and the whole canary Ingress (the paths of the app's Ingress that send to the app's Service) | 0.01 % steps |
//!
//! The slot Services are the platform's `<app>-blue` and `<app>-green`.
//!
//! # Promises, and what these routers cannot promise
//!
//! - **Read back.** Every change is a server-side apply with field manager `cutover` (force: a
//!   controller owns its fields), whose answer is read back. Next to its routing fields cutover
//!   writes the table it applied in the annotation `cutover.dev/route-table`; [`Router::applied`]
//!   returns that table only when the object's routing fields still say what the table says,
//!   otherwise what the fields say, so the controller's reconcile applies the table again when
//!   someone else changed cutover's fields.
//! - **Never to a slot that is not ready.** Before a change gives a slot more traffic than it has,
//!   the slot's Deployment must be fully rolled out with at least one available pod, and run the
//!   version of the table; otherwise the change is refused and nothing moves. This is the guard
//!   against switching before the new pods are ready and against switching back to a slot
//!   already scaled down.
//! - **Never an empty selector, never a weight sum other than the whole.** The Service selector
//!   always carries both of cutover's keys; weights are written as a pair that sums to 10 000
//!   (1 % steps, summing to 100, for Istio, whose weights are percents); a reading whose weights
//!   do not sum to the whole counts as someone else's change.
//! - **No per-user stickiness.** Weights split each request at random (Gateway API, Istio,
//!   ingress-nginx), and a selector switch moves everyone at once: a user may see both versions
//!   during a canary. Pin users with the data plane's own session affinity if needed.
//! - **No counts.** [`Router::counters`] is an error: the judge reads Prometheus
//!   (`[app.prometheus]`), with the data plane's metrics (examples in docs/kubernetes.md).
//! - **Drain** is the data plane's: requests in flight on the slot that lost its traffic finish
//!   on its pods, which run until the controller stops the slot after `drain_timeout_ms` (and
//!   the rollback window).

use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{RouteTable, Slot};
use cutover_router::{Router, RouterError, SlotCounters};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::platform::{rollout_status, RolloutStatus};
use crate::{
    slot_object_name, ANNOTATION_ROUTE_TABLE, ANNOTATION_VERSION, FIELD_MANAGER, LABEL_APP, LABEL_SLOT,
};

const WHOLE: u32 = 10_000;

fn default_drain_timeout_ms() -> u64 {
    30_000
}

/// `kind = "kubernetes_service"`: switches the Service `service` between the slots by its
/// selector. Blue-green only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRouterConfig {
    pub service: String,
    /// How long the slot that lost its traffic keeps its pods for the requests it had (and for
    /// kube-proxies and load balancers to see the change) before it may be stopped.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// `kind = "gateway_api"`: weights in the `backendRefs` of an HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRouterConfig {
    pub http_route: String,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// `kind = "istio"`: weights in the routes of a VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioRouterConfig {
    pub virtual_service: String,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// `kind = "ingress_nginx"`: the live slot by the selector of the Service that the app's Ingress
/// `ingress` sends to, the canary's share by a canary Ingress cutover makes beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressNginxRouterConfig {
    pub ingress: String,
    pub service: String,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// One kind of route object: how a table is written into it and read out of it.
pub(crate) trait RouteObject: Send + Sync + std::fmt::Debug {
    fn gvk(&self) -> GroupVersionKind;
    fn name(&self) -> &str;
    /// Whether this object can express `table` at all.
    fn check(&self, table: &RouteTable) -> Result<(), String>;
    /// The fields cutover owns for `table`, given the object as it is (`spec` only).
    fn render(&self, table: &RouteTable, current: &Value) -> Result<Value, String>;
    /// The share of each slot `[blue, green]`, in basis points, the object routes by; an error
    /// when it routes by something cutover did not write.
    fn read(&self, current: &Value) -> Result<[u32; 2], String>;
    /// Whether it sends to the slot Services (`<app>-blue`, `<app>-green`) rather than to pods
    /// by label.
    fn uses_slot_services(&self) -> bool {
        false
    }
}

/// A [`Router`] over one route object; see the module docs.
#[derive(Clone)]
pub struct KubeRouter {
    client: kube::Client,
    namespace: String,
    app: String,
    object: std::sync::Arc<dyn RouteObject>,
    drain: Duration,
    /// For `ingress_nginx`: the canary Ingress beside the Service.
    canary_ingress: Option<std::sync::Arc<CanaryIngress>>,
}

impl std::fmt::Debug for KubeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRouter")
            .field("namespace", &self.namespace)
            .field("app", &self.app)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

impl KubeRouter {
    pub fn service(client: kube::Client, namespace: &str, app: &str, config: &ServiceRouterConfig) -> Self {
        Self::new(
            client,
            namespace,
            app,
            ServiceSelector::new(app, &config.service),
            config.drain_timeout_ms,
        )
    }

    pub fn gateway(client: kube::Client, namespace: &str, app: &str, config: &GatewayRouterConfig) -> Self {
        let object = WeightedRoutes {
            kind: RouteKind::HttpRoute,
            name: config.http_route.clone(),
            namespace: namespace.to_string(),
            hosts: slot_hosts(app),
        };
        Self::new(client, namespace, app, object, config.drain_timeout_ms)
    }

    pub fn istio(client: kube::Client, namespace: &str, app: &str, config: &IstioRouterConfig) -> Self {
        let object = WeightedRoutes {
            kind: RouteKind::VirtualService,
            name: config.virtual_service.clone(),
            namespace: namespace.to_string(),
            hosts: slot_hosts(app),
        };
        Self::new(client, namespace, app, object, config.drain_timeout_ms)
    }

    pub fn ingress_nginx(
        client: kube::Client,
        namespace: &str,
        app: &str,
        config: &IngressNginxRouterConfig,
    ) -> Self {
        let mut router = Self::new(
            client,
            namespace,
            app,
            ServiceSelector::new(app, &config.service).with_canary(),
            config.drain_timeout_ms,
        );
        router.canary_ingress = Some(std::sync::Arc::new(CanaryIngress {
            ingress: config.ingress.clone(),
            service: config.service.clone(),
            hosts: slot_hosts(app),
        }));
        router
    }

    fn new(
        client: kube::Client,
        namespace: &str,
        app: &str,
        object: impl RouteObject + 'static,
        drain_ms: u64,
    ) -> Self {
        KubeRouter {
            client,
            namespace: namespace.to_string(),
            app: app.to_string(),
            object: std::sync::Arc::new(object),
            drain: Duration::from_millis(drain_ms),
            canary_ingress: None,
        }
    }

    fn api(&self, gvk: &GroupVersionKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &ApiResource::from_gvk(gvk))
    }

    fn what(&self) -> String {
        format!(
            "{} {}/{}",
            self.object.gvk().kind,
            self.namespace,
            self.object.name()
        )
    }

    fn unavailable(&self, reason: impl Into<String>) -> RouterError {
        RouterError::Unavailable {
            router: self.describe(),
            reason: reason.into(),
        }
    }

    fn refused(&self, reason: impl Into<String>) -> RouterError {
        RouterError::Refused {
            router: self.describe(),
            reason: reason.into(),
        }
    }

    /// The object as the cluster has it, as JSON.
    async fn current(&self) -> Result<Value, RouterError> {
        let gvk = self.object.gvk();
        match self.api(&gvk).get_opt(self.object.name()).await {
            Ok(Some(object)) => serde_json::to_value(object).map_err(|e| self.unavailable(e.to_string())),
            Ok(None) => Err(self.unavailable(format!(
                "{} does not exist; create it (docs/kubernetes.md has an example): cutover changes only its routing fields",
                self.what()
            ))),
            Err(e) => Err(self.unavailable(format!("reading {}: {}", self.what(), crate::describe_api_error(&e)))),
        }
    }

    /// Refuses to give a slot more traffic than it has unless its Deployment is rolled out,
    /// has an available pod and runs the table's version.
    async fn guard(&self, table: &RouteTable, now: Option<[u32; 2]>) -> Result<(), RouterError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        for slot in Slot::ALL {
            let wanted = u32::from(table.weight_of(slot));
            let has = now.map_or(0, |shares| shares[slot.index()]);
            if wanted == 0 || wanted <= has {
                continue;
            }
            let name = slot_object_name(&self.app, slot);
            let d = deployments.get_opt(&name).await.map_err(|e| {
                self.unavailable(format!(
                    "reading Deployment {name}: {}",
                    crate::describe_api_error(&e)
                ))
            })?;
            let Some(d) = d else {
                return Err(self.refused(format!(
                    "not sending traffic to slot {slot}: its Deployment {}/{name} does not exist",
                    self.namespace
                )));
            };
            let version = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_VERSION).cloned())
                .unwrap_or_default();
            let wanted_version = &table.pool(slot).version;
            if !wanted_version.is_empty() && &version != wanted_version {
                return Err(self.refused(format!(
                    "not sending traffic to slot {slot}: its Deployment {name} runs {version:?}, the table says {wanted_version:?}"
                )));
            }
            let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
            let replicas = d.spec.replicas.unwrap_or(1);
            if replicas == 0 || available == 0 {
                return Err(self.refused(format!(
                    "not sending traffic to slot {slot}: its Deployment {name} has no available pod ({available} of {replicas}); it may have been scaled down"
                )));
            }
            let by_service = self.object.uses_slot_services()
                || (self.canary_ingress.is_some() && slot == table.live.other());
            if by_service {
                let services: Api<k8s_openapi::api::core::v1::Service> =
                    Api::namespaced(self.client.clone(), &self.namespace);
                let found = services.get_opt(&name).await.map_err(|e| {
                    self.unavailable(format!(
                        "reading Service {name}: {}",
                        crate::describe_api_error(&e)
                    ))
                })?;
                if found.is_none() {
                    return Err(self.refused(format!(
                        "not sending traffic to slot {slot}: its Service {}/{name} does not exist; cutover makes it when the slot starts if the container has a port: add `ports` to the container in the manifest, or set [app.kubernetes] service_port",
                        self.namespace
                    )));
                }
            }
            if let RolloutStatus::Waiting(why) | RolloutStatus::Failed(why) = rollout_status(&d) {
                return Err(self.refused(format!(
                    "not sending traffic to slot {slot}: its Deployment {name} is not rolled out ({why})"
                )));
            }
        }
        Ok(())
    }

    /// The share of each slot the cluster routes by: the route object's, and for ingress-nginx
    /// the canary Ingress's weight on top of the Service's live slot.
    async fn shares(&self, object: &Value) -> Result<[u32; 2], RouterError> {
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        let mut shares = self.object.read(&spec).map_err(|why| {
            self.unavailable(format!(
                "{} does not route by cutover's table: {why}",
                self.what()
            ))
        })?;
        if let Some(canary) = &self.canary_ingress {
            let live = if shares[0] == WHOLE {
                Slot::Blue
            } else {
                Slot::Green
            };
            if let Some((slot, weight)) = canary.read(self).await? {
                if slot == live && weight > 0 {
                    return Err(self.unavailable(format!(
                        "the canary Ingress {} sends to the live slot {live}",
                        canary.name()
                    )));
                }
                shares[live.index()] = WHOLE - weight;
                shares[live.other().index()] = weight;
            }
        }
        Ok(shares)
    }

    /// The table `object` routes by: the annotated table when the routing fields agree with it.
    async fn table_of(&self, object: &Value) -> Result<RouteTable, RouterError> {
        let shares = self.shares(object).await?;
        let annotated: Option<RouteTable> = object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION_ROUTE_TABLE))
            .and_then(Value::as_str)
            .and_then(|text| serde_json::from_str(text).ok());
        Ok(table_from(annotated, shares))
    }
}

/// The annotated table when `shares` is what it says; otherwise a table that says `shares`, in
/// the terms of the annotated one where there is one (so it differs from it).
fn table_from(annotated: Option<RouteTable>, shares: [u32; 2]) -> RouteTable {
    let share_of = |t: &RouteTable| {
        [
            u32::from(t.weight_of(Slot::Blue)),
            u32::from(t.weight_of(Slot::Green)),
        ]
    };
    match annotated {
        Some(t) if share_of(&t) == shares => t,
        other => {
            let live = match &other {
                Some(t) => t.live,
                None if shares[1] > shares[0] => Slot::Green,
                None => Slot::Blue,
            };
            let mut t = other.unwrap_or_else(|| RouteTable::empty(live));
            t.canary_weight_bp = u16::try_from(shares[live.other().index()].min(WHOLE)).unwrap_or(0);
            t
        }
    }
}

fn slot_hosts(app: &str) -> [String; 2] {
    [
        slot_object_name(app, Slot::Blue),
        slot_object_name(app, Slot::Green),
    ]
}

#[async_trait]
impl Router for KubeRouter {
    fn describe(&self) -> String {
        format!("kubernetes {}", self.what())
    }

    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError> {
        table.validate().map_err(|e| self.refused(e.to_string()))?;
        self.object.check(table).map_err(|why| self.refused(why))?;
        if routes_to_no_release(table) {
            // Before the first release there is nothing of cutover's to send traffic to: the
            // object stays as its owner left it (it may still serve what ran before cutover).
            return Ok(());
        }
        let current = self.current().await?;
        let spec = current.get("spec").cloned().unwrap_or(Value::Null);
        let now = self.shares(&current).await.ok();
        self.guard(table, now).await?;
        let gvk = self.object.gvk();
        let owned = self
            .object
            .render(table, &spec)
            .map_err(|why| self.refused(why))?;
        let annotation = serde_json::to_string(table).map_err(|e| self.refused(e.to_string()))?;
        let body = json!({
            "apiVersion": if gvk.group.is_empty() { gvk.version.clone() } else { format!("{}/{}", gvk.group, gvk.version) },
            "kind": gvk.kind,
            "metadata": {
                "name": self.object.name(),
                "namespace": self.namespace,
                "annotations": {ANNOTATION_ROUTE_TABLE: annotation},
            },
            "spec": owned,
        });
        // ingress-nginx: when the live slot changes, everything first goes through the canary
        // Ingress to the new live slot, then the Service switches to it, then the canary Ingress
        // gets its new share; at no moment does anyone go back to the old slot.
        let service_live =
            self.object
                .read(&spec)
                .ok()
                .map(|s| if s[0] == WHOLE { Slot::Blue } else { Slot::Green });
        if let Some(canary) = &self.canary_ingress {
            if service_live.is_some_and(|live| live != table.live) {
                canary.apply(self, table.live, WHOLE).await?;
            }
        }
        let written = self
            .api(&gvk)
            .patch(
                self.object.name(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| {
                self.unavailable(format!(
                    "applying {}: {}",
                    self.what(),
                    crate::describe_api_error(&e)
                ))
            })?;
        if let Some(canary) = &self.canary_ingress {
            canary
                .apply(self, table.live.other(), u32::from(table.canary_weight_bp))
                .await?;
        }
        let written = serde_json::to_value(written).map_err(|e| self.unavailable(e.to_string()))?;
        let found = self.table_of(&written).await?;
        if &found != table {
            return Err(RouterError::NotApplied {
                router: self.describe(),
                wanted: format!("{table:?}"),
                found: format!("{found:?}"),
                hint: "an admission webhook or another controller may rewrite the object".into(),
            });
        }
        Ok(())
    }

    async fn applied(&self) -> Result<RouteTable, RouterError> {
        let current = self.current().await?;
        self.table_of(&current).await
    }

    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError> {
        Err(self.unavailable(
            "a Kubernetes router counts no requests: the judge reads them from Prometheus ([app.prometheus])",
        ))
    }

    fn drain_timeout(&self) -> Duration {
        self.drain
    }

    async fn reconcile(&self, wanted: &RouteTable) -> Result<bool, RouterError> {
        if routes_to_no_release(wanted) || self.applied().await.ok().as_ref() == Some(wanted) {
            return Ok(false);
        }
        self.apply(wanted).await?;
        Ok(true)
    }
}

/// Whether every slot `table` sends traffic to is without a release (an app before its first
/// deploy).
fn routes_to_no_release(table: &RouteTable) -> bool {
    Slot::ALL
        .into_iter()
        .all(|slot| table.weight_of(slot) == 0 || table.pool(slot).version.is_empty())
}

/// The app's Service: `spec.selector` picks the live slot.
#[derive(Debug)]
struct ServiceSelector {
    app: String,
    service: String,
    /// With a canary Ingress beside it (`ingress_nginx`): any weight; else only 0 and the whole.
    canary_elsewhere: bool,
}

impl ServiceSelector {
    fn new(app: &str, service: &str) -> Self {
        ServiceSelector {
            app: app.to_string(),
            service: service.to_string(),
            canary_elsewhere: false,
        }
    }

    fn with_canary(mut self) -> Self {
        self.canary_elsewhere = true;
        self
    }

    /// The slot that takes the Service's traffic under `table`.
    fn selected(table: &RouteTable) -> Slot {
        if table.canary_weight_bp >= 10_000 {
            table.live.other()
        } else {
            table.live
        }
    }
}

impl RouteObject for ServiceSelector {
    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk("", "v1", "Service")
    }

    fn name(&self) -> &str {
        &self.service
    }

    fn check(&self, table: &RouteTable) -> Result<(), String> {
        if !self.canary_elsewhere && table.canary_weight_bp != 0 && table.canary_weight_bp != 10_000 {
            return Err(format!(
                "a Service selector sends all of the traffic to one slot; a canary weight of {} bp cannot be expressed (use gateway_api, istio or ingress_nginx for canaries)",
                table.canary_weight_bp
            ));
        }
        Ok(())
    }

    fn render(&self, table: &RouteTable, current: &Value) -> Result<Value, String> {
        if current
            .get("selector")
            .and_then(Value::as_object)
            .is_none_or(|s| s.is_empty())
        {
            return Err(format!(
                "Service {} has no selector (its endpoints are kept by hand?); cutover switches a selector: give it the app's own labels",
                self.service
            ));
        }
        let slot = if self.canary_elsewhere {
            table.live
        } else {
            Self::selected(table)
        };
        // `spec.selector` is an atomic map in the Service API: an apply owns it whole, so it
        // carries the owner's keys as they are, with cutover's two.
        let mut selector = current
            .get("selector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        selector.insert(LABEL_APP.into(), json!(self.app));
        selector.insert(LABEL_SLOT.into(), json!(slot.to_string()));
        Ok(json!({ "selector": Value::Object(selector) }))
    }

    fn read(&self, current: &Value) -> Result<[u32; 2], String> {
        let selector = current
            .get("selector")
            .and_then(Value::as_object)
            .ok_or("it has no selector")?;
        if selector.get(LABEL_APP).and_then(Value::as_str) != Some(self.app.as_str()) {
            return Err(format!("its selector has no {LABEL_APP}={}", self.app));
        }
        let share = match selector.get(LABEL_SLOT).and_then(Value::as_str) {
            Some("blue") => [WHOLE, 0],
            Some("green") => [0, WHOLE],
            other => return Err(format!("its selector's {LABEL_SLOT} is {other:?}, not a slot")),
        };
        Ok(share)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    HttpRoute,
    VirtualService,
}

/// An HTTPRoute or a VirtualService: weighted references to the two slot Services in the
/// rules (routes) that point at them.
#[derive(Debug)]
struct WeightedRoutes {
    kind: RouteKind,
    name: String,
    namespace: String,
    hosts: [String; 2],
}

impl WeightedRoutes {
    /// `(rules key, refs key)`: `spec.rules[].backendRefs[]` or `spec.http[].route[]`.
    fn keys(&self) -> (&'static str, &'static str) {
        match self.kind {
            RouteKind::HttpRoute => ("rules", "backendRefs"),
            RouteKind::VirtualService => ("http", "route"),
        }
    }

    /// The slot a reference points at, if it is one of the slot Services.
    fn slot_of(&self, reference: &Value) -> Option<Slot> {
        let name = match self.kind {
            RouteKind::HttpRoute => {
                let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("Service");
                if kind != "Service" {
                    return None;
                }
                reference.get("name")?.as_str()?
            }
            // Istio's short names are in the VirtualService's namespace; `x.ns.svc.cluster.local`
            // names the same Service.
            RouteKind::VirtualService => {
                let host = reference.pointer("/destination/host")?.as_str()?;
                let mut labels = host.split('.');
                let name = labels.next()?;
                // `shop-blue.other-ns.svc.cluster.local` is another namespace's Service.
                if labels.next().is_some_and(|ns| ns != self.namespace) {
                    return None;
                }
                name
            }
        };
        Slot::ALL.into_iter().find(|s| self.hosts[s.index()] == name)
    }

    /// Scale of one weight unit in basis points.
    fn unit(&self) -> u32 {
        match self.kind {
            RouteKind::HttpRoute => 1,
            RouteKind::VirtualService => 100,
        }
    }

    /// The reference to `slot`'s Service with `weight`, made from `like` (the rule's reference
    /// to that slot, else to the other one): its other fields (port, filters, headers) are the
    /// owner's and stay as they are.
    fn reference(&self, slot: Slot, weight: u32, like: Option<&Value>) -> Value {
        let host = self.hosts[slot.index()].clone();
        let mut r = like
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        match self.kind {
            RouteKind::HttpRoute => {
                r["name"] = json!(host);
                if r.get("kind").is_none() {
                    r["kind"] = json!("Service");
                }
            }
            RouteKind::VirtualService => {
                if !r.get("destination").is_some_and(Value::is_object) {
                    r["destination"] = json!({});
                }
                r["destination"]["host"] = json!(host);
            }
        }
        r["weight"] = json!(weight);
        r
    }
}

impl RouteObject for WeightedRoutes {
    fn uses_slot_services(&self) -> bool {
        true
    }

    fn gvk(&self) -> GroupVersionKind {
        match self.kind {
            RouteKind::HttpRoute => GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            RouteKind::VirtualService => GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, table: &RouteTable) -> Result<(), String> {
        if u32::from(table.canary_weight_bp) % self.unit() != 0 {
            return Err(format!(
                "Istio weights are whole percents; a canary weight of {} bp ({} %) cannot be expressed: make the rollout's steps whole percents",
                table.canary_weight_bp,
                f64::from(table.canary_weight_bp) / 100.0
            ));
        }
        Ok(())
    }

    fn render(&self, table: &RouteTable, current: &Value) -> Result<Value, String> {
        let (rules_key, refs_key) = self.keys();
        let mut rules = current
            .get(rules_key)
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| format!("it has no spec.{rules_key}"))?;
        let mut matched = 0;
        for rule in &mut rules {
            let Some(refs) = rule.get(refs_key).and_then(Value::as_array) else {
                continue;
            };
            if !refs.iter().any(|r| self.slot_of(r).is_some()) {
                continue;
            }
            let like = |slot: Slot| {
                refs.iter()
                    .find(|r| self.slot_of(r) == Some(slot))
                    .or_else(|| refs.iter().find(|r| self.slot_of(r).is_some()))
            };
            let new_refs: Vec<Value> = Slot::ALL
                .into_iter()
                .map(|slot| self.reference(slot, u32::from(table.weight_of(slot)) / self.unit(), like(slot)))
                .collect();
            rule[refs_key] = Value::Array(new_refs);
            matched += 1;
        }
        if matched == 0 {
            return Err(format!(
                "none of its spec.{rules_key} has a {refs_key} entry for {} or {}: point the ones cutover should split at one of them",
                self.hosts[0], self.hosts[1]
            ));
        }
        Ok(json!({ rules_key: rules }))
    }

    fn read(&self, current: &Value) -> Result<[u32; 2], String> {
        let (rules_key, refs_key) = self.keys();
        let rules = current
            .get(rules_key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("it has no spec.{rules_key}"))?;
        let mut found: Option<[u32; 2]> = None;
        for (i, rule) in rules.iter().enumerate() {
            let Some(refs) = rule.get(refs_key).and_then(Value::as_array) else {
                continue;
            };
            if !refs.iter().any(|r| self.slot_of(r).is_some()) {
                continue;
            }
            let mut shares = [0u32; 2];
            for r in refs {
                let Some(slot) = self.slot_of(r) else {
                    return Err(format!("{rules_key}[{i}] also sends to {r}, which is not a slot"));
                };
                // Gateway API's weight defaults to 1; Istio's to 100 with one destination.
                let weight = r
                    .get("weight")
                    .and_then(Value::as_u64)
                    .unwrap_or(match self.kind {
                        RouteKind::HttpRoute => 1,
                        RouteKind::VirtualService if refs.len() == 1 => 100,
                        RouteKind::VirtualService => 0,
                    });
                shares[slot.index()] += u32::try_from(weight)
                    .unwrap_or(u32::MAX)
                    .saturating_mul(self.unit());
            }
            let sum = shares[0].saturating_add(shares[1]);
            if sum != WHOLE {
                return Err(format!(
                    "{rules_key}[{i}]'s weights are {} and {}, which sum to {}, not the whole ({})",
                    shares[0] / self.unit(),
                    shares[1] / self.unit(),
                    sum / self.unit(),
                    WHOLE / self.unit()
                ));
            }
            match found {
                Some(other) if other != shares => {
                    return Err(format!(
                        "{rules_key}[{i}] splits differently from the rules before it"
                    ))
                }
                _ => found = Some(shares),
            }
        }
        found.ok_or_else(|| {
            format!(
                "no {rules_key} entry sends to {} or {}",
                self.hosts[0], self.hosts[1]
            )
        })
    }
}

/// ingress-nginx's canary: an Ingress `<ingress>-canary` with the hosts and paths of the app's
/// Ingress, sending to the canary slot's Service, with the canary weight out of 10 000.
#[derive(Debug)]
struct CanaryIngress {
    ingress: String,
    /// The app's Service, to which the paths the canary copies send.
    service: String,
    hosts: [String; 2],
}

const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const NGINX_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const NGINX_WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";

impl CanaryIngress {
    fn name(&self) -> String {
        format!("{}-canary", self.ingress)
    }

    fn gvk() -> GroupVersionKind {
        GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress")
    }

    /// The canary Ingress sending `weight` (basis points) to `slot`, made from the app's Ingress
    /// as it is now: its hosts and the paths that send to the app's Service (`service`), nothing
    /// else, each to the slot's Service on its `http` port.
    fn render(&self, main: &Value, slot: Slot, weight: u32, namespace: &str) -> Result<Value, String> {
        let rules = main
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("Ingress {} has no spec.rules", self.ingress))?;
        let mut canary_rules = Vec::new();
        for rule in rules {
            let paths: Vec<Value> = rule
                .pointer("/http/paths")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| {
                    p.pointer("/backend/service/name").and_then(Value::as_str) == Some(self.service.as_str())
                })
                .map(|p| {
                    let mut path = p.clone();
                    path["backend"] =
                        json!({"service": {"name": self.hosts[slot.index()], "port": {"name": "http"}}});
                    path
                })
                .collect();
            if paths.is_empty() {
                continue;
            }
            let mut canary_rule = json!({"http": {"paths": paths}});
            if let Some(host) = rule.get("host") {
                canary_rule["host"] = host.clone();
            }
            canary_rules.push(canary_rule);
        }
        if canary_rules.is_empty() {
            return Err(format!(
                "no path of Ingress {} sends to Service {}: the canary Ingress copies those paths",
                self.ingress, self.service
            ));
        }
        let mut spec = json!({ "rules": canary_rules });
        if let Some(class) = main.pointer("/spec/ingressClassName") {
            spec["ingressClassName"] = class.clone();
        }
        if let Some(tls) = main.pointer("/spec/tls") {
            spec["tls"] = tls.clone();
        }
        Ok(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": self.name(),
                "namespace": namespace,
                "labels": {crate::LABEL_MANAGED_BY: FIELD_MANAGER},
                "annotations": {
                    NGINX_CANARY: "true",
                    NGINX_WEIGHT: weight.to_string(),
                    NGINX_WEIGHT_TOTAL: WHOLE.to_string(),
                },
            },
            "spec": spec,
        }))
    }

    async fn apply(&self, router: &KubeRouter, slot: Slot, weight: u32) -> Result<(), RouterError> {
        let api = router.api(&Self::gvk());
        let main = api
            .get_opt(&self.ingress)
            .await
            .map_err(|e| {
                router.unavailable(format!(
                    "reading Ingress {}: {}",
                    self.ingress,
                    crate::describe_api_error(&e)
                ))
            })?
            .ok_or_else(|| {
                router.unavailable(format!(
                    "Ingress {}/{} does not exist; the canary Ingress copies its hosts and paths",
                    router.namespace, self.ingress
                ))
            })?;
        let main = serde_json::to_value(main).map_err(|e| router.unavailable(e.to_string()))?;
        let body = self
            .render(&main, slot, weight, &router.namespace)
            .map_err(|why| router.refused(why))?;
        api.patch(
            &self.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| {
            router.unavailable(format!(
                "applying Ingress {}: {}",
                self.name(),
                crate::describe_api_error(&e)
            ))
        })?;
        Ok(())
    }

    /// The slot the canary Ingress sends to and its weight in basis points; `None` when there
    /// is no canary Ingress yet (no canary).
    async fn read(&self, router: &KubeRouter) -> Result<Option<(Slot, u32)>, RouterError> {
        let api = router.api(&Self::gvk());
        let found = api.get_opt(&self.name()).await.map_err(|e| {
            router.unavailable(format!(
                "reading Ingress {}: {}",
                self.name(),
                crate::describe_api_error(&e)
            ))
        })?;
        let Some(found) = found else { return Ok(None) };
        let found = serde_json::to_value(found).map_err(|e| router.unavailable(e.to_string()))?;
        read_canary_ingress(&found, &self.hosts).map(Some).map_err(|why| {
            router.unavailable(format!(
                "the canary Ingress {} is not cutover's: {why}",
                self.name()
            ))
        })
    }
}

/// The slot and weight (basis points) of a canary Ingress.
fn read_canary_ingress(found: &Value, hosts: &[String; 2]) -> Result<(Slot, u32), String> {
    let annotation = |key: &str| {
        found
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    if annotation(NGINX_CANARY) != Some("true") {
        return Err(format!("{NGINX_CANARY} is not \"true\""));
    }
    let weight: u32 = annotation(NGINX_WEIGHT)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("{NGINX_WEIGHT} is not a number"))?;
    let total: u32 = annotation(NGINX_WEIGHT_TOTAL)
        .and_then(|w| w.parse().ok())
        .unwrap_or(100);
    if total == 0 || weight > total {
        return Err(format!("a weight of {weight} out of {total}"));
    }
    let mut slot = None;
    for path in found
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.pointer("/http/paths").and_then(Value::as_array))
        .flatten()
    {
        let name = path
            .pointer("/backend/service/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let this = Slot::ALL
            .into_iter()
            .find(|s| hosts[s.index()] == name)
            .ok_or_else(|| format!("a path sends to {name:?}, not a slot Service"))?;
        if slot.is_some_and(|s| s != this) {
            return Err("its paths send to both slots".into());
        }
        slot = Some(this);
    }
    let slot = slot.ok_or("it has no paths")?;
    // Scaled to basis points; a total other than 10 000 is someone else's and reads inexactly,
    // which makes it differ from cutover's table and be written again.
    Ok((slot, weight.saturating_mul(WHOLE) / total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::Pool;

    fn table(live: Slot, weight: u16) -> RouteTable {
        RouteTable {
            live,
            canary_weight_bp: weight,
            blue: Pool {
                version: "v1".into(),
                backends: vec!["10.0.0.1:8080".parse().unwrap()],
            },
            green: Pool {
                version: "v2".into(),
                backends: vec!["10.0.0.2:8080".parse().unwrap()],
            },
        }
    }

    fn http_route() -> WeightedRoutes {
        WeightedRoutes {
            kind: RouteKind::HttpRoute,
            name: "shop".into(),
            namespace: "ns".into(),
            hosts: slot_hosts("shop"),
        }
    }

    #[test]
    fn a_service_selector_is_blue_green_only_and_never_empty() {
        let s = ServiceSelector::new("shop", "shop");
        assert!(s
            .check(&table(Slot::Blue, 500))
            .unwrap_err()
            .contains("cannot be expressed"));
        s.check(&table(Slot::Blue, 10_000)).unwrap();
        let spec = json!({"selector": {"app": "shop"}});
        let owned = s.render(&table(Slot::Blue, 10_000), &spec).unwrap();
        // The selector is atomic in the Service API: the owner's keys ride along, unchanged.
        assert_eq!(
            owned,
            json!({"selector": {"app": "shop", LABEL_APP: "shop", LABEL_SLOT: "green"}})
        );
        assert!(s.render(&table(Slot::Blue, 0), &json!({"selector": {}})).is_err());
        assert!(s.render(&table(Slot::Blue, 0), &json!({})).is_err());
        assert!(s.read(&json!({"selector": {"app": "shop"}})).is_err());
        assert_eq!(
            s.read(&json!({"selector": {LABEL_APP: "shop", LABEL_SLOT: "blue"}}))
                .unwrap(),
            [WHOLE, 0]
        );
    }

    #[test]
    fn http_route_weights_sum_to_the_whole_and_keep_the_rest_of_the_rules() {
        let r = http_route();
        let spec = json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}], "backendRefs": [{"name": "admin", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "shop-blue", "port": 8080}]},
        ]});
        let owned = r.render(&table(Slot::Blue, 500), &spec).unwrap();
        assert_eq!(owned["rules"][0], spec["rules"][0]);
        assert_eq!(owned["rules"][1]["matches"], spec["rules"][1]["matches"]);
        let refs = &owned["rules"][1]["backendRefs"];
        assert_eq!(
            refs[0],
            json!({"kind": "Service", "name": "shop-blue", "port": 8080, "weight": 9500})
        );
        assert_eq!(
            refs[1],
            json!({"kind": "Service", "name": "shop-green", "port": 8080, "weight": 500})
        );
        assert_eq!(r.read(&owned).unwrap(), [9500, 500]);
        // "Weights stuck at 1:1": not cutover's split.
        let one_to_one = json!({"rules": [{"backendRefs": [{"name": "shop-blue", "weight": 1}, {"name": "shop-green", "weight": 1}]}]});
        assert!(r.read(&one_to_one).unwrap_err().contains("sum to 2"));
        let no_rule = json!({"rules": [{"backendRefs": [{"name": "other"}]}]});
        assert!(r
            .render(&table(Slot::Blue, 0), &no_rule)
            .unwrap_err()
            .contains("shop-blue or shop-green"));
    }

    #[test]
    fn istio_weights_are_whole_percents() {
        let r = WeightedRoutes {
            kind: RouteKind::VirtualService,
            name: "shop".into(),
            namespace: "ns".into(),
            hosts: slot_hosts("shop"),
        };
        assert!(r
            .check(&table(Slot::Blue, 50))
            .unwrap_err()
            .contains("whole percents"));
        let spec = json!({"hosts": ["shop"], "http": [{"route": [{"destination": {"host": "shop-blue.ns.svc.cluster.local", "port": {"number": 80}}}]}]});
        assert_eq!(r.read(&spec).unwrap(), [WHOLE, 0]);
        let owned = r.render(&table(Slot::Green, 2500), &spec).unwrap();
        assert_eq!(
            owned["http"][0]["route"],
            json!([
                {"destination": {"host": "shop-blue", "port": {"number": 80}}, "weight": 25},
                {"destination": {"host": "shop-green", "port": {"number": 80}}, "weight": 75},
            ])
        );
        assert_eq!(r.read(&owned).unwrap(), [2500, 7500]);
    }
}
