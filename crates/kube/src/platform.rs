//! `platform = "kubernetes"`: each slot is a Deployment `<app>-<slot>` made from the app's own
//! Deployment manifest, with the release's image and environment, and a ClusterIP Service of the
//! same name for the routers that split by weight.
//!
//! - **Ready** means what `kubectl rollout status` means: the controller has observed the latest
//!   generation, every replica is updated and available, and no old replica is left. A container
//!   that crash-loops [`KubernetesConfig::crash_loop_restarts`] times, or that cannot start for a
//!   reason no wait fixes (an invalid image name, a missing ConfigMap key), fails the release at
//!   once; otherwise the controller's readiness deadline does. A failure names the pods' states,
//!   and [`Platform::log_tail`] gives the last lines of a failing container.
//! - **Stop** scales the Deployment to zero through its `scale` subresource; the Deployment stays,
//!   so its labels still say which version the slot last ran. The controller stops a slot only
//!   once the rollback window has passed and the traffic has left it and drained.
//! - **Adoption**: after a restart the slots are found by their labels; wanted ones are adopted
//!   as they run, others scaled to zero.
//! - Secrets by reference are refused: cutover would have to write their values into the
//!   Deployment. A Kubernetes Secret referenced from the manifest (`valueFrom.secretKeyRef`,
//!   `envFrom`) is the way.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::{ReleaseSpec, Slot};
use cutover_platform::{InstanceInfo, Platform, PlatformError, Readiness, ReconcileReport};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use serde_json::{json, Map, Value};

use crate::{
    slot_object_name, version_label, KubeError, KubernetesConfig, ANNOTATION_VERSION, FIELD_MANAGER,
    LABEL_APP, LABEL_MANAGED_BY, LABEL_SLOT, LABEL_VERSION,
};

/// When the slot's Deployment was last started, for [`Platform::running`]'s order.
const ANNOTATION_STARTED_AT: &str = "cutover.dev/started-at";
/// Reasons a container waits for that no amount of waiting fixes.
const FATAL_WAITING_REASONS: [&str; 4] = [
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
];
/// How often the logs of a failing pod are fetched again while a slot gets ready.
const LOG_REFRESH: Duration = Duration::from_secs(2);
const LOG_LINES: i64 = 20;

/// Slots as Deployments on a cluster. See the module docs.
pub struct KubernetesPlatform {
    client: kube::Client,
    namespace: String,
    config: KubernetesConfig,
    /// Per app and slot: what the last readiness check saw of failing pods (their states and
    /// last log lines), for [`Platform::log_tail`], which cannot ask the cluster itself.
    seen: Mutex<HashMap<(String, Slot), (Instant, String)>>,
}

impl std::fmt::Debug for KubernetesPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesPlatform")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesPlatform {
    /// Connects to the cluster `config` names.
    pub async fn connect(config: KubernetesConfig) -> Result<Self, KubeError> {
        let (client, namespace) = crate::connect(&config).await?;
        Ok(Self::new(client, namespace, config))
    }

    pub fn new(client: kube::Client, namespace: String, config: KubernetesConfig) -> Self {
        KubernetesPlatform {
            client,
            namespace,
            config,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The template of the slots' Deployments: the manifest, read at every start so an edit
    /// applies to the next release, or the named Deployment as the cluster has it now.
    async fn template(&self) -> Result<Value, KubeError> {
        if let Some(path) = &self.config.manifest {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| KubeError::Manifest {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            return deployment_from_manifest(&text).map_err(|reason| KubeError::Manifest {
                path: path.display().to_string(),
                reason,
            });
        }
        let name = self.config.deployment.clone().unwrap_or_default();
        let found = self.deployments().get(&name).await.map_err(|e| {
            KubeError::api(
                format!("reading the template Deployment {}/{name}", self.namespace),
                e,
            )
        })?;
        serde_json::to_value(found).map_err(|e| KubeError::Api {
            what: format!("reading the template Deployment {}/{name}", self.namespace),
            reason: e.to_string(),
        })
    }

    fn selector(app: &str, slot: Option<Slot>) -> String {
        match slot {
            Some(slot) => format!("{LABEL_APP}={app},{LABEL_SLOT}={slot}"),
            None => format!("{LABEL_APP}={app}"),
        }
    }

    async fn slot_pods(&self, app: &str, slot: Slot) -> Result<Vec<Pod>, PlatformError> {
        let list = self
            .pods()
            .list(&ListParams::default().labels(&Self::selector(app, Some(slot))))
            .await
            .map_err(|e| {
                PlatformError::Other(
                    KubeError::api(format!("listing the pods of {app}-{slot}"), e).to_string(),
                )
            })?;
        Ok(list.items)
    }

    fn instances_of(&self, pods: &[Pod]) -> Vec<InstanceInfo> {
        let mut out = Vec::new();
        for (index, pod) in pods.iter().enumerate() {
            let version = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_VERSION).cloned())
                .unwrap_or_default();
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let port = container_port(pod, self.config.container.as_deref()).unwrap_or(80);
            out.push(InstanceInfo {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                addr: SocketAddr::new(ip, port),
                version,
                pid: None,
                log_path: None,
                // A crash-looping or failed pod counts as an instance that died.
                exited: pod_failed(pod, self.config.crash_loop_restarts),
            });
        }
        out
    }

    async fn scale_to_zero(&self, app: &str, slot: Slot) -> Result<(), PlatformError> {
        let name = slot_object_name(app, slot);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        match self
            .deployments()
            .patch_scale(&name, &params, &Patch::Merge(json!({"spec": {"replicas": 0}})))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(PlatformError::Stop {
                slot,
                reason: KubeError::api(format!("scaling Deployment {}/{name} to 0", self.namespace), e)
                    .to_string(),
            }),
        }
    }

    /// The states of the pods that are not ready, and the last log lines of the first failing
    /// container, refreshed at most every [`LOG_REFRESH`].
    async fn describe_unready(&self, app: &str, slot: Slot, pods: &[Pod]) -> String {
        let key = (app.to_string(), slot);
        if let Ok(seen) = self.seen.lock() {
            if let Some((at, text)) = seen.get(&key) {
                if at.elapsed() < LOG_REFRESH {
                    return text.clone();
                }
            }
        }
        let mut text = String::new();
        for pod in pods.iter().filter(|p| !pod_ready(p)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            text.push_str(&format!("pod {name}: {}\n", pod_state(pod)));
        }
        // The logs of the pod that failed (else the first that is not ready), of the release's
        // container: a pod with sidecars has no default container to read.
        let limit = self.config.crash_loop_restarts;
        let logs_of = pods
            .iter()
            .find(|p| pod_failed(p, limit).is_some())
            .or_else(|| pods.iter().find(|p| !pod_ready(p)));
        if let Some(pod) = logs_of {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let container = self.config.container.clone().or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .map(|c| c.name.clone())
            });
            let mut why_not = String::new();
            for previous in [true, false] {
                let params = LogParams {
                    container: container.clone(),
                    tail_lines: Some(LOG_LINES),
                    previous,
                    ..LogParams::default()
                };
                match self.pods().logs(&name, &params).await {
                    Ok(lines) if !lines.trim().is_empty() => {
                        let which = if previous {
                            " (the container that exited)"
                        } else {
                            ""
                        };
                        text.push_str(&format!("last lines of pod {name}{which}:\n{lines}"));
                        why_not.clear();
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => why_not = crate::describe_api_error(&e),
                }
            }
            if !why_not.is_empty() {
                text.push_str(&format!("the logs of pod {name} could not be read: {why_not}\n"));
            }
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, (Instant::now(), text.clone()));
        }
        text
    }
}

#[async_trait::async_trait]
impl Platform for KubernetesPlatform {
    async fn start(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
    ) -> Result<Vec<InstanceInfo>, PlatformError> {
        let start_error = |reason: String| PlatformError::Start {
            slot,
            version: release.version.clone(),
            index: 0,
            reason,
        };
        if !release.secrets.is_empty() {
            return Err(start_error(format!(
                "secrets by reference ({}) would be written into the Deployment in plain text; reference a Kubernetes Secret from the manifest instead (env valueFrom.secretKeyRef or envFrom)",
                release.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let template = self.template().await.map_err(|e| start_error(e.to_string()))?;
        let now = started_at_now();
        let deployment = slot_deployment(&template, &self.config, &self.namespace, app, slot, release, &now)
            .map_err(&start_error)?;
        let name = slot_object_name(app, slot);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.deployments()
            .patch(&name, &params, &Patch::Apply(&deployment))
            .await
            .map_err(|e| {
                start_error(
                    KubeError::api(format!("applying Deployment {}/{name}", self.namespace), e).to_string(),
                )
            })?;
        if let Some(service) = slot_service(&template, &self.config, &self.namespace, app, slot) {
            let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
            services
                .patch(&name, &params, &Patch::Apply(&service))
                .await
                .map_err(|e| {
                    start_error(
                        KubeError::api(format!("applying Service {}/{name}", self.namespace), e).to_string(),
                    )
                })?;
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&(app.to_string(), slot));
        }
        // Pods come later; readiness() reports them.
        Ok(Vec::new())
    }

    async fn stop(&self, app: &str, slot: Slot, _grace: Duration) -> Result<(), PlatformError> {
        // The pods' own terminationGracePeriodSeconds (from the manifest) is the grace here.
        self.scale_to_zero(app, slot).await
    }

    async fn instances(&self, app: &str, slot: Slot) -> Result<Vec<InstanceInfo>, PlatformError> {
        let pods = self.slot_pods(app, slot).await?;
        Ok(self.instances_of(&pods))
    }

    async fn readiness(&self, app: &str, slot: Slot) -> Option<Result<Readiness, PlatformError>> {
        Some(self.check_ready(app, slot).await)
    }

    async fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> Result<ReconcileReport, PlatformError> {
        let mut report = ReconcileReport::default();
        for (slot, version, replicas) in self.slot_deployments(app).await? {
            let pods = self.slot_pods(app, slot).await?;
            let instances = self.instances_of(&pods);
            if keep.iter().any(|(s, v)| *s == slot && *v == version) {
                report.adopted.extend(instances);
            } else if replicas > 0 {
                self.scale_to_zero(app, slot).await?;
                report.stopped.extend(instances);
            }
        }
        Ok(report)
    }

    async fn running(&self, app: &str) -> Result<Vec<(Slot, Vec<InstanceInfo>)>, PlatformError> {
        let list = self.app_deployments(app).await?;
        let mut found = Vec::new();
        for d in list {
            let Some(slot) = label_slot(&d) else { continue };
            let replicas = d.spec.replicas.unwrap_or(1);
            let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
            if replicas == 0 || available == 0 {
                continue;
            }
            let started = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_STARTED_AT).cloned())
                .unwrap_or_default();
            let pods = self.slot_pods(app, slot).await?;
            let ready: Vec<Pod> = pods.into_iter().filter(pod_ready).collect();
            found.push((started, slot, self.instances_of(&ready)));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, slot, i)| (slot, i)).collect())
    }

    fn log_tail(&self, app: &str, slot: Slot, _lines: usize) -> String {
        self.seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(&(app.to_string(), slot)).map(|(_, text)| text.clone()))
            .unwrap_or_default()
    }

    fn read_logs(
        &self,
        app: &str,
        slot: Slot,
        _request: &cutover_platform::LogRequest,
    ) -> Result<cutover_platform::LogChunk, PlatformError> {
        Err(PlatformError::Other(format!(
            "the pods of app {app} log to the cluster: read them with `kubectl logs -n {} -l {LABEL_APP}={app},{LABEL_SLOT}={slot} --prefix`",
            self.namespace
        )))
    }
}

impl KubernetesPlatform {
    /// `(slot, version, replicas)` of each slot Deployment of `app` in the cluster.
    async fn slot_deployments(&self, app: &str) -> Result<Vec<(Slot, String, i32)>, PlatformError> {
        Ok(self
            .app_deployments(app)
            .await?
            .iter()
            .filter_map(|d| {
                let slot = label_slot(d)?;
                let version = d.metadata.annotations.as_ref()?.get(ANNOTATION_VERSION)?.clone();
                let replicas = d.spec.replicas.unwrap_or(1);
                Some((slot, version, replicas))
            })
            .collect())
    }

    /// The Deployments labelled as `app`'s, both slots.
    async fn app_deployments(&self, app: &str) -> Result<Vec<Deployment>, PlatformError> {
        let list = self
            .deployments()
            .list(&ListParams::default().labels(&Self::selector(app, None)))
            .await
            .map_err(|e| {
                PlatformError::Other(
                    KubeError::api(format!("listing the Deployments of {app}"), e).to_string(),
                )
            })?;
        Ok(list.items)
    }

    /// `kubectl rollout status`, plus a look at the pods for failures no wait fixes.
    async fn check_ready(&self, app: &str, slot: Slot) -> Result<Readiness, PlatformError> {
        let name = slot_object_name(app, slot);
        let deployment = self.deployments().get_opt(&name).await.map_err(|e| {
            PlatformError::Other(
                KubeError::api(format!("reading Deployment {}/{name}", self.namespace), e).to_string(),
            )
        })?;
        let Some(deployment) = deployment else {
            return Ok(Readiness::Failed(format!(
                "Deployment {}/{name} does not exist any more (deleted by someone?)",
                self.namespace
            )));
        };
        let pods = self.slot_pods(app, slot).await?;
        let version = deployment
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(ANNOTATION_VERSION).cloned())
            .unwrap_or_default();
        let pods: Vec<Pod> = pods
            .into_iter()
            .filter(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_VERSION))
                    == Some(&version)
            })
            .collect();
        match rollout_status(&deployment) {
            RolloutStatus::Done => {
                let ready: Vec<Pod> = pods.into_iter().filter(pod_ready).collect();
                if ready.is_empty() {
                    return Ok(Readiness::Pending(
                        "no pod of the new version is ready yet".into(),
                    ));
                }
                Ok(Readiness::Ready(self.instances_of(&ready)))
            }
            RolloutStatus::Failed(why) => {
                let detail = self.describe_unready(app, slot, &pods).await;
                Ok(Readiness::Failed(format!(
                    "Deployment {}/{name}: {why}; {}",
                    self.namespace,
                    first_line(&detail)
                )))
            }
            RolloutStatus::Waiting(what) => {
                let limit = self.config.crash_loop_restarts;
                if let Some(fatal) = pods.iter().find_map(|p| pod_failed(p, limit)) {
                    self.describe_unready(app, slot, &pods).await;
                    return Ok(Readiness::Failed(format!(
                        "Deployment {}/{name}: {fatal}",
                        self.namespace
                    )));
                }
                let unready: Vec<String> = pods
                    .iter()
                    .filter(|p| !pod_ready(p))
                    .map(|p| {
                        format!(
                            "pod {}: {}",
                            p.metadata.name.clone().unwrap_or_default(),
                            pod_state(p)
                        )
                    })
                    .collect();
                if !unready.is_empty() {
                    self.describe_unready(app, slot, &pods).await;
                }
                Ok(Readiness::Pending(if unready.is_empty() {
                    what
                } else {
                    format!("{what}; {}", unready.join("; "))
                }))
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Now as zero-padded milliseconds since the epoch, for [`ANNOTATION_STARTED_AT`] (ordered as
/// text).
fn started_at_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Zero-padded milliseconds since the epoch sort like the times they are.
    format!("{:016}", now.as_millis())
}

fn label_slot(d: &Deployment) -> Option<Slot> {
    match d.metadata.labels.as_ref()?.get(LABEL_SLOT)?.as_str() {
        "blue" => Some(Slot::Blue),
        "green" => Some(Slot::Green),
        _ => None,
    }
}

/// What `kubectl rollout status deployment/x` would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStatus {
    Done,
    Waiting(String),
    Failed(String),
}

/// The verdict of `kubectl rollout status` on `d`: the same conditions in the same order.
pub fn rollout_status(d: &Deployment) -> RolloutStatus {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutStatus::Waiting("waiting for the Deployment's new spec to be observed".into());
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return RolloutStatus::Failed(format!(
            "it exceeded its progress deadline ({})",
            c.message.clone().unwrap_or_default()
        ));
    }
    let wanted = d.spec.replicas.unwrap_or(1);
    if wanted == 0 {
        // `kubectl rollout status` calls this done; for cutover a slot without pods is not ready.
        return RolloutStatus::Waiting("the Deployment is scaled to zero".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        return RolloutStatus::Waiting(format!("{updated} of {wanted} new replicas have been updated"));
    }
    if replicas > updated {
        return RolloutStatus::Waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutStatus::Waiting(format!("{available} of {updated} updated replicas are available"));
    }
    RolloutStatus::Done
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod's state in a line: phase, waiting or terminated reasons, restarts, readiness.
fn pod_state(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let mut parts = vec![status.phase.clone().unwrap_or_else(|| "Pending".into())];
    for c in status.container_statuses.iter().flatten() {
        let mut s = format!("container {}", c.name);
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            s.push_str(&format!(" waiting: {}", w.reason.clone().unwrap_or_default()));
            if let Some(m) = &w.message {
                s.push_str(&format!(" ({m})"));
            }
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            s.push_str(&format!(", last exit code {}", t.exit_code));
            if let Some(r) = &t.reason {
                s.push_str(&format!(" ({r})"));
            }
        }
        if c.restart_count > 0 {
            s.push_str(&format!(", restarted {} times", c.restart_count));
        }
        if !c.ready {
            s.push_str(", not ready");
        }
        parts.push(s);
    }
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            if let Some(m) = &c.message {
                parts.push(format!("{} False: {m}", c.type_));
            }
        }
    }
    parts.join(", ")
}

/// Why `pod` will not get ready without a change, if so.
fn pod_failed(pod: &Pod, crash_loop_restarts: u32) -> Option<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(format!("pod {name} failed: {}", pod_state(pod)));
    }
    for c in status.container_statuses.iter().flatten() {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
        if FATAL_WAITING_REASONS.contains(&reason) {
            return Some(format!("pod {name} cannot start: {}", pod_state(pod)));
        }
        let restarts = u32::try_from(c.restart_count).unwrap_or(0);
        if reason == "CrashLoopBackOff" && restarts >= crash_loop_restarts {
            return Some(format!("pod {name} is crash-looping: {}", pod_state(pod)));
        }
    }
    None
}

fn container_port(pod: &Pod, container: Option<&str>) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    let c = match container {
        Some(name) => spec.containers.iter().find(|c| c.name == name)?,
        None => spec.containers.first()?,
    };
    let port = c.ports.as_ref()?.first()?.container_port;
    u16::try_from(port).ok()
}

/// The one Deployment among the documents of a manifest.
pub fn deployment_from_manifest(text: &str) -> Result<Value, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let deployments: Vec<Value> = docs
        .into_iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Deployment"))
        .collect();
    match deployments.len() {
        1 => deployments
            .into_iter()
            .next()
            .ok_or_else(|| "no Deployment".to_string()),
        0 => Err("it holds no `kind: Deployment` document; the slots' Deployments are made from one".into()),
        n => Err(format!(
            "it holds {n} Deployments; keep the app's one Deployment in this file"
        )),
    }
}

/// Labels every object of a slot carries.
fn slot_labels(app: &str, slot: Slot) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(LABEL_MANAGED_BY.into(), json!(FIELD_MANAGER));
    labels.insert(LABEL_APP.into(), json!(app));
    labels.insert(LABEL_SLOT.into(), json!(slot.to_string()));
    labels
}

/// The Deployment of `slot` for `release`, made from `template` (the user's Deployment): its
/// spec, with cutover's labels on the Deployment, its selector and its pods, the release's image
/// and environment on the release's container, and the replicas. Only what this returns is
/// cutover's (server-side apply): fields added to the Deployment by others stay theirs.
pub fn slot_deployment(
    template: &Value,
    config: &KubernetesConfig,
    namespace: &str,
    app: &str,
    slot: Slot,
    release: &ReleaseSpec,
    started_at: &str,
) -> Result<Value, String> {
    if template.get("apiVersion").and_then(Value::as_str) != Some("apps/v1") {
        return Err("the template is not an apps/v1 Deployment".into());
    }
    let mut spec = template
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .ok_or("the template Deployment has no spec")?;
    let mut pod_template = spec
        .remove("template")
        .and_then(|t| t.as_object().cloned())
        .ok_or("the template Deployment has no spec.template")?;
    let mut pod_spec = pod_template
        .remove("spec")
        .and_then(|s| s.as_object().cloned())
        .ok_or("the template Deployment has no spec.template.spec")?;
    let mut containers = pod_spec
        .remove("containers")
        .and_then(|c| c.as_array().cloned())
        .ok_or("the template Deployment has no containers")?;
    let names: Vec<String> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let index = match &config.container {
        Some(wanted) => names.iter().position(|n| n == wanted).ok_or_else(|| {
            format!(
                "[app.kubernetes] container: the template has no container {wanted:?} (it has {})",
                names.join(", ")
            )
        })?,
        None if containers.is_empty() => return Err("the template Deployment has no containers".into()),
        None => 0,
    };
    let image = config.image.replace("{version}", &release.version);
    let container = containers[index]
        .as_object_mut()
        .ok_or("a container is not an object")?;
    container.insert("image".into(), json!(image));
    let mut env: Vec<Value> = container
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ours: BTreeMap<String, String> =
        release.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    ours.insert("CUTOVER_APP".into(), app.into());
    ours.insert("CUTOVER_SLOT".into(), slot.to_string());
    ours.insert("CUTOVER_VERSION".into(), release.version.clone());
    env.retain(|e| {
        e.get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| !ours.contains_key(n))
    });
    env.extend(
        ours.into_iter()
            .map(|(name, value)| json!({"name": name, "value": value})),
    );
    container.insert("env".into(), Value::Array(env));
    pod_spec.insert("containers".into(), Value::Array(containers));

    let mut selector = spec
        .remove("selector")
        .and_then(|s| s.as_object().cloned())
        .unwrap_or_default();
    let mut match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match_labels.insert(LABEL_APP.into(), json!(app));
    match_labels.insert(LABEL_SLOT.into(), json!(slot.to_string()));
    selector.insert("matchLabels".into(), Value::Object(match_labels));

    let mut pod_meta = pod_template
        .remove("metadata")
        .and_then(|m| m.as_object().cloned())
        .unwrap_or_default();
    pod_meta.retain(|k, _| k == "labels" || k == "annotations");
    let mut pod_labels = pod_meta
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    pod_labels.extend(slot_labels(app, slot));
    pod_labels.insert(LABEL_VERSION.into(), json!(version_label(&release.version)));
    // The label meshes and dashboards read the version from (Istio's `destination_version`).
    pod_labels.insert(
        "app.kubernetes.io/version".into(),
        json!(version_label(&release.version)),
    );
    pod_meta.insert("labels".into(), Value::Object(pod_labels));
    let mut pod_annotations = pod_meta
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    pod_annotations.insert(ANNOTATION_VERSION.into(), json!(release.version));
    pod_meta.insert("annotations".into(), Value::Object(pod_annotations));

    let replicas = config
        .replicas
        .map(i64::from)
        .or_else(|| spec.get("replicas").and_then(Value::as_i64))
        .unwrap_or(i64::from(release.instances.max(1)));
    spec.remove("paused");
    spec.insert("replicas".into(), json!(replicas));
    spec.insert("selector".into(), Value::Object(selector));
    spec.insert(
        "template".into(),
        json!({"metadata": Value::Object(pod_meta), "spec": Value::Object(pod_spec)}),
    );

    let mut labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.extend(slot_labels(app, slot));
    labels.insert(LABEL_VERSION.into(), json!(version_label(&release.version)));
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": slot_object_name(app, slot),
            "namespace": namespace,
            "labels": Value::Object(labels),
            "annotations": {ANNOTATION_VERSION: release.version, ANNOTATION_STARTED_AT: started_at},
        },
        "spec": Value::Object(spec),
    });
    strip_nulls(&mut deployment);
    Ok(deployment)
}

/// The ClusterIP Service `<app>-<slot>` that selects the slot's pods, for the routers that split
/// by weight between two Services. `None` when no port is known (the Service-selector router
/// needs none).
pub fn slot_service(
    template: &Value,
    config: &KubernetesConfig,
    namespace: &str,
    app: &str,
    slot: Slot,
) -> Option<Value> {
    let containers = template.pointer("/spec/template/spec/containers")?.as_array()?;
    let container = match &config.container {
        Some(name) => containers
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))?,
        None => containers.first()?,
    };
    let first_port = container
        .pointer("/ports/0/containerPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    let target = first_port.or(config.service_port)?;
    let port = config.service_port.unwrap_or(target);
    let mut selector = template
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    selector.insert(LABEL_APP.into(), json!(app));
    selector.insert(LABEL_SLOT.into(), json!(slot.to_string()));
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": slot_object_name(app, slot),
            "namespace": namespace,
            "labels": Value::Object(slot_labels(app, slot)),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": Value::Object(selector),
            "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }))
}

/// Removes `null` members: a Deployment read from the cluster has `creationTimestamp: null` in
/// its pod template, which an apply would otherwise claim as cutover's.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: {app: shop, team: checkout}
spec:
  replicas: 3
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: sidecar
          image: envoy:1
        - name: web
          image: shop:old
          ports: [{containerPort: 8080}]
          env: [{name: LOG, value: info}, {name: MODE, value: old}]
"#;

    fn config() -> KubernetesConfig {
        KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace: None,
            manifest: Some("deploy.yaml".into()),
            deployment: None,
            image: "ghcr.io/acme/shop:{version}".into(),
            container: Some("web".into()),
            replicas: None,
            crash_loop_restarts: 3,
            service_port: None,
        }
    }

    #[test]
    fn a_slot_deployment_is_the_template_with_cutovers_labels_image_and_env() {
        let template = deployment_from_manifest(MANIFEST).unwrap();
        let mut release = ReleaseSpec::new("v2+1", "");
        release.env.insert("MODE".into(), "new".into());
        let d = slot_deployment(
            &template,
            &config(),
            "shop-ns",
            "shop",
            Slot::Green,
            &release,
            "1",
        )
        .unwrap();
        assert_eq!(d["metadata"]["name"], "shop-green");
        assert_eq!(d["metadata"]["labels"]["team"], "checkout");
        assert_eq!(d["metadata"]["labels"][LABEL_SLOT], "green");
        assert_eq!(d["metadata"]["labels"][LABEL_VERSION], "v2_1");
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "shop");
        assert_eq!(d["spec"]["selector"]["matchLabels"][LABEL_SLOT], "green");
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][LABEL_APP], "shop");
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION_VERSION], "v2+1");
        let web = &pod["spec"]["containers"][1];
        assert_eq!(web["image"], "ghcr.io/acme/shop:v2+1");
        assert_eq!(pod["spec"]["containers"][0]["image"], "envoy:1");
        let env: Vec<(String, String)> = web["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(env.contains(&("LOG".into(), "info".into())));
        assert!(env.contains(&("MODE".into(), "new".into())));
        assert!(!env.contains(&("MODE".into(), "old".into())));
        assert!(env.contains(&("CUTOVER_SLOT".into(), "green".into())));
    }

    #[test]
    fn a_missing_container_is_named_with_the_ones_there_are() {
        let template = deployment_from_manifest(MANIFEST).unwrap();
        let mut c = config();
        c.container = Some("api".into());
        let err = slot_deployment(
            &template,
            &c,
            "ns",
            "shop",
            Slot::Blue,
            &ReleaseSpec::new("v1", ""),
            "1",
        )
        .unwrap_err();
        assert!(
            err.contains("container: the template has no container \"api\" (it has sidecar, web)"),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_needs_exactly_one_deployment() {
        assert!(deployment_from_manifest("kind: Service\n")
            .unwrap_err()
            .contains("no `kind: Deployment`"));
        let two = format!("{MANIFEST}\n---\n{}", MANIFEST.split("---").nth(1).unwrap());
        assert!(deployment_from_manifest(&two)
            .unwrap_err()
            .contains("2 Deployments"));
        assert!(deployment_from_manifest(": : :")
            .unwrap_err()
            .contains("not valid YAML"));
    }

    #[test]
    fn the_slot_service_selects_the_slots_pods_on_the_containers_port() {
        let template = deployment_from_manifest(MANIFEST).unwrap();
        let s = slot_service(&template, &config(), "ns", "shop", Slot::Blue).unwrap();
        assert_eq!(s["metadata"]["name"], "shop-blue");
        assert_eq!(s["spec"]["selector"][LABEL_SLOT], "blue");
        assert_eq!(s["spec"]["selector"]["app"], "shop");
        assert_eq!(s["spec"]["ports"][0]["port"], 8080);
    }
}
