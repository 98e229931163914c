//! The resource types the stand-in serves, what discovery says about them, and the little of
//! their schemas that server-side apply needs: which lists are keyed, and by what.

use serde_json::{json, Value};

/// One served resource type (a "GroupVersionResource" with what discovery says about it).
#[derive(Debug)]
pub(crate) struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: writes to the main resource ignore `.status`, writes to
    /// `/status` change nothing else.
    pub status_subresource: bool,
    /// Built into Kubernetes (as opposed to a CustomResourceDefinition): only these have keyed
    /// lists and strategic merge patch; a CRD without list-type markers has atomic lists.
    pub builtin: bool,
    /// Where the pod spec lives in this kind, for the keyed lists of containers and volumes.
    pub pod_spec: Option<&'static [&'static str]>,
}

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How error messages name the resource: `deployments.apps`, or `pods` for the core group.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    pub fn has_scale(&self) -> bool {
        self.is("apps", "deployments") || self.is("apps", "replicasets")
    }

    pub fn has_log(&self) -> bool {
        self.is("", "pods")
    }
}

const WORKLOADS: &[&str] = &["all"];

macro_rules! rt {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, namespaced: $ns:expr,
     short: $short:expr, categories: $cat:expr, status: $status:expr, builtin: $builtin:expr,
     pod_spec: $pod:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            status_subresource: $status,
            builtin: $builtin,
            pod_spec: $pod,
        }
    };
}

/// Every served resource type; indexes into this table identify a type in the store.
pub(crate) static RESOURCES: &[ResourceType] = &[
    rt!("", "v1", "pods", "pod", "Pod", namespaced: true, short: &["po"], categories: WORKLOADS,
        status: true, builtin: true, pod_spec: Some(&["spec"])),
    rt!("", "v1", "services", "service", "Service", namespaced: true, short: &["svc"],
        categories: WORKLOADS, status: true, builtin: true, pod_spec: None),
    rt!("", "v1", "namespaces", "namespace", "Namespace", namespaced: false, short: &["ns"],
        categories: &[], status: true, builtin: true, pod_spec: None),
    rt!("", "v1", "events", "event", "Event", namespaced: true, short: &["ev"], categories: &[],
        status: false, builtin: true, pod_spec: None),
    rt!("", "v1", "configmaps", "configmap", "ConfigMap", namespaced: true, short: &["cm"],
        categories: &[], status: false, builtin: true, pod_spec: None),
    rt!("", "v1", "secrets", "secret", "Secret", namespaced: true, short: &[], categories: &[],
        status: false, builtin: true, pod_spec: None),
    rt!("apps", "v1", "deployments", "deployment", "Deployment", namespaced: true,
        short: &["deploy"], categories: WORKLOADS, status: true, builtin: true,
        pod_spec: Some(&["spec", "template", "spec"])),
    rt!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", namespaced: true, short: &["rs"],
        categories: WORKLOADS, status: true, builtin: true,
        pod_spec: Some(&["spec", "template", "spec"])),
    rt!("networking.k8s.io", "v1", "ingresses", "ingress", "Ingress", namespaced: true,
        short: &["ing"], categories: &[], status: true, builtin: true, pod_spec: None),
    rt!("gateway.networking.k8s.io", "v1", "httproutes", "httproute", "HTTPRoute",
        namespaced: true, short: &[], categories: &["gateway-api"], status: true, builtin: false,
        pod_spec: None),
    rt!("networking.istio.io", "v1", "virtualservices", "virtualservice", "VirtualService",
        namespaced: true, short: &["vs"], categories: &["istio-io", "networking-istio-io"],
        status: true, builtin: false, pod_spec: None),
    rt!("networking.istio.io", "v1", "destinationrules", "destinationrule", "DestinationRule",
        namespaced: true, short: &["dr"], categories: &["istio-io", "networking-istio-io"],
        status: true, builtin: false, pod_spec: None),
];

pub(crate) const PODS: usize = 0;
pub(crate) const NAMESPACES: usize = 2;
pub(crate) const EVENTS: usize = 3;
pub(crate) const DEPLOYMENTS: usize = 6;

/// The resource type served at `group/version` under `plural`.
pub(crate) fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of objects with this `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// Whether the map at `names` is atomic (`mapType=atomic`, `structType=atomic`): owned and
/// replaced whole by an apply, like an atomic list. Only the ones cutover's objects use are
/// known: a Service's `spec.selector` and a Deployment's label selector.
pub(crate) fn atomic_map(rt: &ResourceType, names: &[&str]) -> bool {
    rt.builtin && names == ["spec", "selector"] && (rt.is("", "services") || rt.is("apps", "deployments"))
}

/// The key fields of the list at `names` (field names from the root, list items skipped), when
/// Kubernetes declares it `listType=map`; `None` for atomic lists. Only the lists cutover's
/// objects use are known; every other list is treated as atomic.
pub(crate) fn list_keys(rt: &ResourceType, names: &[&str]) -> Option<&'static [&'static str]> {
    if !rt.builtin {
        return None;
    }
    if names == ["metadata", "ownerReferences"] {
        return Some(&["uid"]);
    }
    if rt.is("", "services") && names == ["spec", "ports"] {
        return Some(&["port", "protocol"]);
    }
    let rest = names.strip_prefix(rt.pod_spec?)?;
    const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];
    match rest {
        [list] if CONTAINER_LISTS.contains(list) => Some(&["name"]),
        ["volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => Some(&["name"]),
        ["hostAliases"] => Some(&["ip"]),
        ["topologySpreadConstraints"] => Some(&["topologyKey", "whenUnsatisfiable"]),
        [list, field] if CONTAINER_LISTS.contains(list) => match *field {
            "env" => Some(&["name"]),
            "ports" => Some(&["containerPort", "protocol"]),
            "volumeMounts" => Some(&["mountPath"]),
            "volumeDevices" => Some(&["devicePath"]),
            "resizePolicy" => Some(&["resourceName"]),
            _ => None,
        },
        _ => None,
    }
}

/// The value a missing key field of a keyed list item stands for (Kubernetes defaults it
/// before merging), or `None` if the key field is required.
pub(crate) fn key_default(field: &str) -> Option<Value> {
    match field {
        "protocol" => Some(json!("TCP")),
        _ => None,
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The API groups other than the core group, in the order discovery lists them.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub(crate) fn group_served(group: &str, version: &str) -> bool {
    groups().contains(&(group, version))
}

/// `GET /apis`: one version per group, so it is also the preferred one.
pub(crate) fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}` (a single group).
pub(crate) fn group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv.clone()],
                "preferredVersion": gv}),
    )
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: the APIResourceList, subresources included.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if r.has_scale() {
            resources.push(json!({
                "name": format!("{}/scale", r.plural), "singularName": "",
                "namespaced": r.namespaced, "group": "autoscaling", "version": "v1",
                "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
        if r.has_log() {
            resources.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod",
                "verbs": ["get"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The `serverRelativeURL` hash of the OpenAPI v3 documents: they never change.
const OPENAPI_HASH: &str = "cutover-stand-in-1";

/// `GET /openapi/v3`: the index of the per-group-version documents.
///
/// The documents are minimal: one PATCH operation per resource with its
/// `x-kubernetes-group-version-kind` and query parameters, no schemas. That is what kubectl
/// (1.27 and later) reads to learn that the server validates fields itself
/// (`fieldValidation`), instead of downloading schemas to validate on the client.
pub(crate) fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut versions = vec![(String::new(), "v1".to_string())];
    versions.extend(groups().into_iter().map(|(g, v)| (g.to_string(), v.to_string())));
    for (group, version) in versions {
        let key = openapi_key(&group, &version);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={OPENAPI_HASH}")}),
        );
    }
    json!({"paths": paths})
}

fn openapi_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub(crate) fn openapi_v3_document(key: &str) -> Option<Value> {
    let (group, version) = match key.split('/').collect::<Vec<_>>()[..] {
        ["api", version] => ("", version),
        ["apis", group, version] => (group, version),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = format!("/{}", openapi_key(group, version));
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind":
                    {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation"),
                               query("force")],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (cutover's stand-in)", "version": "v1.34.0"},
        "paths": paths,
    }))
}
