//! The simulated cluster: a deployment controller, a garbage collector and a kubelet, run on a
//! ticker (and after every change). They write through the same store path as everyone else,
//! so watches see pods come and go and statuses change.
//!
//! A rolling update is collapsed to an instant: pods of an old template are deleted and pods
//! of the new one created in the same tick. Pods are owned by their Deployment directly (no
//! ReplicaSets). Pod statuses follow the [`PodBehaviour`] of each container's image.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::resources::{DEPLOYMENTS, EVENTS, PODS};
use super::store::{
    canonical_json, init_metadata, name_of, now_rfc3339, random_suffix, random_u64, safe_encode, uid_of,
    State,
};
use super::PodBehaviour;

/// How often a crash-looping container's restart count grows.
const RESTART_EVERY: Duration = Duration::from_millis(100);
/// How long an image pull fails with `ErrImagePull` before the kubelet backs off.
const PULL_ERROR_FOR: Duration = Duration::from_millis(500);
const NODE: &str = "cutover-node";
/// More replicas than this are simulated as this many pods (a test has no use for more, and a
/// hostile `replicas` must not exhaust memory).
const MAX_PODS_PER_DEPLOYMENT: i64 = 200;

#[derive(Default)]
pub(crate) struct SimState {
    pods: HashMap<String, PodSim>,
    deployments: HashMap<String, DeploymentSim>,
    next_pod_ip: u32,
    next_service_ip: u32,
    /// (pod uid, reason) of the Events already written, so each is written once.
    events: HashSet<(String, &'static str)>,
}

impl SimState {
    pub fn next_service_ip(&mut self) -> u32 {
        self.next_service_ip += 1;
        self.next_service_ip
    }
}

struct PodSim {
    created: Instant,
    created_at: String,
    ip: String,
    /// Readiness last reported, and since when (for the conditions' transition times).
    ready: Option<(bool, String)>,
}

struct DeploymentSim {
    generation: i64,
    hash: String,
    ready: usize,
    last_progress: Instant,
}

/// One pass of every controller.
pub(crate) fn tick(state: &mut State) {
    let now = Instant::now();
    if !state.paused {
        let deployments: Vec<(String, String)> = state
            .list(DEPLOYMENTS, None)
            .into_iter()
            .map(|d| {
                let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_string();
                (ns, name_of(d).to_string())
            })
            .collect();
        for (ns, name) in deployments {
            reconcile_deployment(state, &ns, &name, now);
        }
    }
    collect_garbage(state);
    run_kubelet(state, now);
}

/// FNV-1a (32 bit) of the pod template, in the safe alphabet: a stand-in for the real
/// `pod-template-hash`, equal for equal templates.
pub(crate) fn template_hash(template: &Value) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in canonical_json(template).bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    safe_encode(hash)
}

fn owned_by<'a>(state: &'a State, namespace: &str, uid: &str) -> Vec<&'a Value> {
    state
        .list(PODS, Some(namespace))
        .into_iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// `maxUnavailable` of a rolling update, rounded down as the real controller does.
fn max_unavailable(deployment: &Value, replicas: i64) -> i64 {
    let strategy = &deployment["spec"]["strategy"];
    if strategy["type"].as_str().unwrap_or("RollingUpdate") != "RollingUpdate" || replicas == 0 {
        return 0;
    }
    match &strategy["rollingUpdate"]["maxUnavailable"] {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map(|p| replicas.saturating_mul(p) / 100)
            .unwrap_or(0),
        _ => replicas / 4,
    }
    .clamp(0, replicas)
}

fn reconcile_deployment(state: &mut State, namespace: &str, name: &str, now: Instant) {
    let Some(deployment) = state.get(DEPLOYMENTS, namespace, name).cloned() else {
        return;
    };
    let uid = uid_of(&deployment).to_string();
    let template = deployment["spec"]["template"].clone();
    let hash = template_hash(&template);
    let desired = deployment["spec"]["replicas"]
        .as_i64()
        .unwrap_or(1)
        .clamp(0, MAX_PODS_PER_DEPLOYMENT);

    // Pods: old template gone at once, then exactly `desired` of the current one.
    let pods: Vec<Value> = owned_by(state, namespace, &uid).into_iter().cloned().collect();
    let mut current = Vec::new();
    for pod in pods {
        if pod["metadata"]["labels"]["pod-template-hash"] == hash.as_str() {
            current.push(pod);
        } else {
            state.remove(PODS, namespace, name_of(&pod));
        }
    }
    current.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    while current.len() as i64 > desired {
        if let Some(pod) = current.pop() {
            state.remove(PODS, namespace, name_of(&pod));
        }
    }
    while (current.len() as i64) < desired {
        current.push(create_pod(state, &deployment, &template, &hash, now));
    }

    // Status, as the real controller reports it.
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
    let total = current.len() as i64;
    let ready = current
        .iter()
        .filter(|p| state.get(PODS, namespace, name_of(p)).is_some_and(is_ready))
        .count();
    let sim = state
        .sim
        .deployments
        .entry(uid.clone())
        .or_insert_with(|| DeploymentSim {
            generation,
            hash: hash.clone(),
            ready,
            last_progress: now,
        });
    if sim.generation != generation || sim.hash != hash || ready > sim.ready {
        sim.last_progress = now;
    }
    sim.generation = generation;
    sim.hash = hash.clone();
    sim.ready = ready;
    let last_progress = sim.last_progress;

    let available = ready as i64;
    let complete = total == desired && available == desired;
    let deadline = deployment["spec"]["progressDeadlineSeconds"]
        .as_u64()
        .unwrap_or(600);
    let rs = format!("{name}-{hash}");
    let progressing = if complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs}\" has successfully progressed."),
        )
    } else if now.duration_since(last_progress) > Duration::from_secs(deadline) {
        (
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{rs}\" has timed out progressing."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs}\" is progressing."),
        )
    };
    let available_condition = if available >= desired - max_unavailable(&deployment, desired) {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_string(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_string(),
        )
    };
    let old_conditions = deployment["status"]["conditions"].clone();
    let conditions = vec![
        condition(&old_conditions, "Available", available_condition),
        condition(&old_conditions, "Progressing", progressing),
    ];
    let mut status = Map::new();
    status.insert("observedGeneration".into(), json!(generation));
    // Zero counts are left out, as the real API's `omitempty` does.
    for (field, n) in [
        ("replicas", total),
        ("updatedReplicas", total),
        ("readyReplicas", available),
        ("availableReplicas", available),
        ("unavailableReplicas", (desired - available).max(0)),
    ] {
        if n != 0 {
            status.insert(field.into(), json!(n));
        }
    }
    status.insert("conditions".into(), Value::Array(conditions));
    let status = Value::Object(status);
    if deployment["status"] != status {
        let mut updated = deployment;
        updated["status"] = status;
        state.commit(DEPLOYMENTS, namespace, updated);
    }
}

/// A condition with its times kept while its status, reason and message stay the same.
fn condition(old: &Value, kind: &str, (status, reason, message): (&str, &str, String)) -> Value {
    let previous = old
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let now = now_rfc3339();
    let unchanged = previous
        .is_some_and(|p| p["status"] == status && p["reason"] == reason && p["message"] == message.as_str());
    let transition = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    });
    c["lastUpdateTime"] = match previous {
        Some(p) if unchanged => p["lastUpdateTime"].clone(),
        _ => json!(now),
    };
    c
}

fn create_pod(state: &mut State, deployment: &Value, template: &Value, hash: &str, now: Instant) -> Value {
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = name_of(deployment);
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("pod-template-hash".into(), json!(hash));
    let mut spec = template["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["nodeName"] = json!(NODE);
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
    ] {
        if spec.get(field).is_none() {
            spec[field] = value;
        }
    }
    let prefix = format!("{name}-{hash}-");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{prefix}{}", random_suffix(5)),
            "generateName": prefix,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                "uid": uid_of(deployment), "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    if let Some(annotations) = template["metadata"].get("annotations") {
        pod["metadata"]["annotations"] = annotations.clone();
    }
    init_metadata(&mut pod);
    sim_for(state, uid_of(&pod), now);
    state.commit(PODS, namespace, pod)
}

fn sim_for<'a>(state: &'a mut State, uid: &str, now: Instant) -> &'a mut PodSim {
    let sim = &mut state.sim;
    sim.pods.entry(uid.to_string()).or_insert_with(|| {
        sim.next_pod_ip += 1;
        let n = sim.next_pod_ip;
        PodSim {
            created: now,
            created_at: now_rfc3339(),
            ip: format!("10.244.{}.{}", n / 250, n % 250 + 1),
            ready: None,
        }
    })
}

/// Pods whose owning Deployment is gone are deleted (background propagation).
fn collect_garbage(state: &mut State) {
    let live: HashSet<String> = state
        .list(DEPLOYMENTS, None)
        .into_iter()
        .map(|d| uid_of(d).to_string())
        .collect();
    let orphans: Vec<(String, String)> = state
        .list(PODS, None)
        .into_iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                refs.iter()
                    .any(|r| r["kind"] == "Deployment" && !live.contains(r["uid"].as_str().unwrap_or("")))
            })
        })
        .map(|p| {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            (ns, name_of(p).to_string())
        })
        .collect();
    for (ns, name) in orphans {
        state.remove(PODS, &ns, &name);
    }
    let pods: HashSet<String> = state
        .list(PODS, None)
        .into_iter()
        .map(|p| uid_of(p).to_string())
        .collect();
    state.sim.pods.retain(|uid, _| pods.contains(uid));
    state.sim.deployments.retain(|uid, _| live.contains(uid));
}

/// One container's status and readiness under its image's behaviour.
struct ContainerView {
    status: Value,
    ready: bool,
    /// Waiting for its image: the pod stays Pending.
    pulling: bool,
    /// A Warning Event the kubelet would write: (reason, message).
    event: Option<(&'static str, String)>,
    /// Replaces the generic "containers with unready status" message of the pod's conditions.
    not_ready_message: Option<String>,
}

fn container_view(
    state: &State,
    sim: &PodSim,
    pod_name: &str,
    container: &Value,
    now: Instant,
) -> ContainerView {
    let name = container["name"].as_str().unwrap_or("");
    let image = container["image"].as_str().unwrap_or("");
    let behaviour = state
        .behaviours
        .get(image)
        .cloned()
        .unwrap_or(PodBehaviour::Ready);
    let elapsed = now.duration_since(sim.created);
    let container_id = format!("containerd://{:016x}{:016x}", random_for(pod_name, name), 0);
    let image_id = format!("docker.io/library/{image}@sha256:{:016x}", random_for(image, ""));
    let running = json!({"running": {"startedAt": sim.created_at}});
    let mut status = json!({
        "name": name, "image": image, "imageID": image_id, "containerID": container_id,
        "ready": false, "started": true, "restartCount": 0, "state": running, "lastState": {},
    });
    let mut view = ContainerView {
        status: Value::Null,
        ready: false,
        pulling: false,
        event: None,
        not_ready_message: None,
    };
    match behaviour {
        PodBehaviour::Ready => view.ready = elapsed >= state.ready_delay,
        PodBehaviour::ReadyAfter(after) => view.ready = elapsed >= after,
        PodBehaviour::NeverReady { message } => {
            view.event = Some(("Unhealthy", message.clone()));
            view.not_ready_message = Some(message);
        }
        PodBehaviour::CrashLoop { exit_code, .. } => {
            let restarts = elapsed.as_millis() / RESTART_EVERY.as_millis();
            status["restartCount"] = json!(restarts as u64);
            status["started"] = json!(false);
            status["state"] = json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off 10s restarting failed container={name} pod={pod_name}"),
            }});
            status["lastState"] = json!({"terminated": {
                "exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": sim.created_at,
                "finishedAt": sim.created_at,
                "containerID": container_id,
            }});
            view.event = Some((
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_name}"),
            ));
        }
        PodBehaviour::ImagePullError => {
            let (reason, message) = if elapsed < PULL_ERROR_FOR {
                (
                    "ErrImagePull",
                    format!(
                        "failed to pull and unpack image \"docker.io/library/{image}\": failed to \
                         resolve reference \"docker.io/library/{image}\": not found"
                    ),
                )
            } else {
                ("ImagePullBackOff", format!("Back-off pulling image \"{image}\""))
            };
            status = json!({
                "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {},
            });
            view.pulling = true;
            view.event = Some(("Failed", format!("Failed to pull image \"{image}\": not found")));
        }
    }
    status["ready"] = json!(view.ready);
    view.status = status;
    view
}

/// A stable pseudo-random number for a name, for container and image ids.
fn random_for(a: &str, b: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Sets every pod's status from its containers' behaviours; writes only what changed.
fn run_kubelet(state: &mut State, now: Instant) {
    let pods: Vec<Value> = state.list(PODS, None).into_iter().cloned().collect();
    for pod in pods {
        let uid = uid_of(&pod).to_string();
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = name_of(&pod).to_string();
        sim_for(state, &uid, now);
        let Some(sim) = state.sim.pods.get(&uid) else {
            continue;
        };
        let containers: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let views: Vec<ContainerView> = containers
            .iter()
            .map(|c| container_view(state, sim, &name, c, now))
            .collect();
        let all_ready = !views.is_empty() && views.iter().all(|v| v.ready);
        let pulling = views.iter().any(|v| v.pulling);
        let unready: Vec<&str> = views
            .iter()
            .filter(|v| !v.ready)
            .map(|v| v.status["name"].as_str().unwrap_or(""))
            .collect();
        let message = views
            .iter()
            .find_map(|v| v.not_ready_message.clone())
            .unwrap_or_else(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let events: Vec<(&'static str, String)> = views.iter().filter_map(|v| v.event.clone()).collect();
        let created_at = sim.created_at.clone();
        let ip = sim.ip.clone();

        let ready_since = {
            let Some(sim) = state.sim.pods.get_mut(&uid) else {
                continue;
            };
            match &sim.ready {
                Some((r, since)) if *r == all_ready => since.clone(),
                _ => {
                    let since = now_rfc3339();
                    sim.ready = Some((all_ready, since.clone()));
                    since
                }
            }
        };
        let ready_condition = |kind: &str| {
            let mut c = json!({"type": kind, "status": if all_ready { "True" } else { "False" },
                               "lastProbeTime": null, "lastTransitionTime": ready_since});
            if !all_ready {
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(message);
            }
            c
        };
        let plain = |kind: &str| {
            json!({"type": kind, "status": "True", "lastProbeTime": null,
                   "lastTransitionTime": created_at})
        };
        let status = json!({
            "phase": if pulling { "Pending" } else { "Running" },
            "conditions": [
                plain("PodReadyToStartContainers"),
                plain("Initialized"),
                ready_condition("Ready"),
                ready_condition("ContainersReady"),
                plain("PodScheduled"),
            ],
            "hostIP": "10.0.0.10",
            "hostIPs": [{"ip": "10.0.0.10"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": created_at,
            "containerStatuses": views.into_iter().map(|v| v.status).collect::<Vec<_>>(),
            "qosClass": pod["status"]["qosClass"].as_str().unwrap_or("BestEffort"),
        });
        if pod["status"] != status {
            let mut updated = pod.clone();
            updated["status"] = status;
            state.commit(PODS, &namespace, updated);
        }
        for (reason, message) in events {
            if state.sim.events.insert((uid.clone(), reason)) {
                write_event(state, &pod, reason, &message);
            }
        }
    }
}

/// A Warning Event about `pod`, as the kubelet writes them (`kubectl describe` shows these).
fn write_event(state: &mut State, pod: &Value, reason: &str, message: &str) {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let now = now_rfc3339();
    let mut event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{}.{:016x}", name_of(pod), random_u64()),
            "namespace": namespace,
        },
        "involvedObject": {
            "kind": "Pod", "namespace": namespace, "name": name_of(pod), "uid": uid_of(pod),
            "apiVersion": "v1",
        },
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": NODE},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Warning",
        "reportingComponent": "kubelet",
        "reportingInstance": NODE,
    });
    init_metadata(&mut event);
    state.commit(EVENTS, namespace, event);
}

/// `GET .../pods/{name}/log`: a crash-looping container's logs (the same for `previous`);
/// other running containers have empty logs.
pub(crate) fn pod_logs(
    state: &State,
    pod: &Value,
    container: Option<&str>,
    previous: bool,
) -> Result<String, ApiError> {
    let pod_name = name_of(pod);
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let chosen = match container {
        Some(c) => containers
            .iter()
            .find(|x| x["name"] == c)
            .ok_or_else(|| ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}")))?,
        None if containers.len() == 1 => &containers[0],
        None => {
            let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let name = chosen["name"].as_str().unwrap_or("");
    let image = chosen["image"].as_str().unwrap_or("");
    let behaviour = state
        .behaviours
        .get(image)
        .cloned()
        .unwrap_or(PodBehaviour::Ready);
    match behaviour {
        PodBehaviour::CrashLoop { logs, .. } => {
            let mut text = logs.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(text)
        }
        PodBehaviour::ImagePullError => Err(ApiError::bad_request(format!(
            "container \"{name}\" in pod \"{pod_name}\" is waiting to start: trying and failing \
             to pull image"
        ))),
        _ if previous => Err(ApiError::bad_request(format!(
            "previous terminated container \"{name}\" in pod \"{pod_name}\" not found"
        ))),
        _ => Ok(String::new()),
    }
}
