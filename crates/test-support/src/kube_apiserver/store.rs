//! The object store: one map of objects, one global resource version, and the history of
//! changes that watches replay. Every change, whether from an HTTP request, a test helper or a
//! simulated controller, goes through [`State::commit`] or [`State::remove`], so every change
//! gets a resource version and reaches the watches.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, Notify};

use super::controllers::SimState;
use super::resources::{ResourceType, NAMESPACES, RESOURCES};
use super::{PodBehaviour, RequestRecord};

/// How many changes watches can replay before the oldest are forgotten (as etcd compacts).
const HISTORY_LIMIT: usize = 50_000;
/// How many changes a live watch may fall behind before it is ended with 410 Gone.
pub(crate) const LIVE_BUFFER: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub res: usize,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it. `previous` is the object before a modification, so a
/// filtered watch can tell an object entering or leaving its selector.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub res: usize,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    pub previous: Option<Value>,
}

pub(crate) struct State {
    /// The last resource version handed out.
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Arc<Event>>,
    /// Changes at or below this resource version are forgotten: a watch from before it gets
    /// 410 Gone.
    pub compacted: u64,
    pub live: broadcast::Sender<Arc<Event>>,
    /// Wakes the simulated controllers after a change.
    pub wake: Arc<Notify>,
    pub behaviours: HashMap<String, PodBehaviour>,
    pub ready_delay: Duration,
    pub writes: Vec<(String, Value)>,
    pub requests: Vec<RequestRecord>,
    pub paused: bool,
    pub sim: SimState,
}

impl State {
    pub fn new(wake: Arc<Notify>) -> State {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let mut state = State {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            live,
            wake,
            behaviours: HashMap::new(),
            ready_delay: Duration::ZERO,
            writes: Vec::new(),
            requests: Vec::new(),
            paused: false,
            sim: SimState::default(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            state.ensure_namespace(ns);
        }
        state
    }

    pub fn get(&self, res: usize, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Key {
            res,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Objects of one type, in one namespace or (with `None`) in all.
    pub fn list(&self, res: usize, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.res == res && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
            .collect()
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.get(NAMESPACES, "", name).is_some()
    }

    pub fn ensure_namespace(&mut self, name: &str) {
        if self.namespace_exists(name) {
            return;
        }
        let mut ns = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        init_metadata(&mut ns);
        self.commit(NAMESPACES, "", ns);
    }

    /// Stores `object` under its name with the next resource version, records the change and
    /// tells the watches. The object's metadata must be complete (see [`init_metadata`]).
    pub fn commit(&mut self, res: usize, namespace: &str, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = Key {
            res,
            namespace: namespace.to_string(),
            name: name_of(&object).to_string(),
        };
        let previous = self.objects.insert(key, object.clone());
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv,
            res,
            namespace: namespace.to_string(),
            kind,
            object: object.clone(),
            previous,
        });
        object
    }

    /// Deletes an object at once (no finalizers, no grace period). The DELETED event carries
    /// the object with the deletion's resource version, as etcd-backed watches do.
    pub fn remove(&mut self, res: usize, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            res,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let mut object = self.objects.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(Event {
            rv,
            res,
            namespace: namespace.to_string(),
            kind: EventType::Deleted,
            object: object.clone(),
            previous: None,
        });
        if res == NAMESPACES {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| RESOURCES[k.res].namespaced && k.namespace == name)
                .cloned()
                .collect();
            for k in inside {
                self.remove(k.res, &k.namespace, &k.name);
            }
        }
        Some(object)
    }

    fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(event);
        self.wake.notify_one();
    }

    /// Forgets the history: watches from an older resource version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

/// `metadata.name`, or "" when missing.
pub(crate) fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

pub(crate) fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or("")
}

pub(crate) fn resource_version_of(object: &Value) -> Option<&str> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Fills in what the server sets on a new object: uid, creation time, generation 1.
pub(crate) fn init_metadata(object: &mut Value) {
    let meta = metadata_mut(object);
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("selfLink");
}

/// Carries the server-set metadata of `old` over to its replacement `new`, and bumps the
/// generation when anything but metadata and status changed. (`managedFields` is the field
/// manager's business: see `fields.rs`.)
pub(crate) fn carry_metadata(old: &Value, new: &mut Value) {
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let bump = without_meta_and_status(old) != without_meta_and_status(new);
    let meta = metadata_mut(new);
    for field in ["uid", "creationTimestamp"] {
        match old["metadata"].get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    meta.insert(
        "generation".into(),
        json!(if bump { generation + 1 } else { generation }),
    );
    meta.remove("deletionTimestamp");
    meta.remove("selfLink");
}

fn without_meta_and_status(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

/// `object.metadata` as a map, created (and `object` made a map) if missing.
pub(crate) fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made a map"),
    }
}

/// What the server adds to a new object of some kinds (a small part of Kubernetes' defaulting:
/// what clients of a Deployment or Service commonly read back).
pub(crate) fn apply_defaults(rt: &ResourceType, object: &mut Value, state: &mut State) {
    if let Some(pod_spec) = rt.pod_spec {
        default_container_ports(object, pod_spec);
    }
    if rt.is("", "namespaces") {
        if object["status"]["phase"].is_null() {
            object["status"] = json!({"phase": "Active"});
        }
        if object["spec"]["finalizers"].is_null() {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
        }
    } else if rt.is("apps", "deployments") {
        let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        for (field, value) in [
            ("replicas", json!(1)),
            ("progressDeadlineSeconds", json!(600)),
            ("revisionHistoryLimit", json!(10)),
            (
                "strategy",
                json!({"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            ),
        ] {
            if spec.get(field).is_none_or(Value::is_null) {
                spec[field] = value;
            }
        }
    } else if rt.is("", "services") {
        let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        if spec.get("type").is_none() {
            spec["type"] = json!("ClusterIP");
        }
        if spec.get("clusterIP").is_none() && spec["type"] != "ExternalName" {
            let n = state.sim.next_service_ip();
            spec["clusterIP"] = json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
            spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter(|p| p.is_object()) {
                if port.get("protocol").is_none() {
                    port["protocol"] = json!("TCP");
                }
                if port.get("targetPort").is_none() {
                    port["targetPort"] = port["port"].clone();
                }
            }
        }
        if object.get("status").is_none() {
            object["status"] = json!({"loadBalancer": {}});
        }
    }
}

/// Container ports get `protocol: TCP`, as on a real server (and their list key needs it).
fn default_container_ports(object: &mut Value, pod_spec: &[&str]) {
    let mut spec = &mut *object;
    for field in pod_spec {
        match spec.get_mut(*field) {
            Some(next) => spec = next,
            None => return,
        }
    }
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) else {
                continue;
            };
            for port in ports.iter_mut().filter(|p| p.is_object()) {
                if port.get("protocol").is_none_or(Value::is_null) {
                    port["protocol"] = json!("TCP");
                }
            }
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Unpredictable enough for test tokens, uids and pod name suffixes: std's per-instance
/// random hash keys mixed with a counter and the clock.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

pub(crate) fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Characters Kubernetes uses in generated name suffixes (no vowels, no confusables).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters as in generated names (`web-7d9f8b6c5d-x2kqz`).
pub(crate) fn random_suffix(n: usize) -> String {
    let mut r = random_u64();
    (0..n)
        .map(|_| {
            let c = SAFE_ALPHABET[(r % SAFE_ALPHABET.len() as u64) as usize] as char;
            r /= SAFE_ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The encoding Kubernetes uses for `pod-template-hash`: a 32-bit hash written in the safe
/// alphabet.
pub(crate) fn safe_encode(mut n: u32) -> String {
    let mut out = String::new();
    loop {
        out.push(SAFE_ALPHABET[(n % SAFE_ALPHABET.len() as u32) as usize] as char);
        n /= SAFE_ALPHABET.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

/// JSON with object keys sorted, whatever the map type's order: for hashes and list keys that
/// must not depend on how an object was built.
pub(crate) fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}
