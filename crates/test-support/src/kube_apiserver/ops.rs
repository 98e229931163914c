//! The write path: create, update, patch (server-side apply included), delete and scale, shared
//! by the HTTP handlers and the test helpers so both have the same semantics. Each operation
//! works on the locked [`State`] and ends in [`State::commit`] or [`State::remove`].

use serde_json::{json, Value};

use super::error::ApiError;
use super::fields::{self, Writer};
use super::patch;
use super::resources::{ResourceType, RESOURCES};
use super::store::{
    apply_defaults, carry_metadata, init_metadata, metadata_mut, name_of, random_suffix, resource_version_of,
    State,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// Who writes, and whether for real.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteOptions<'a> {
    pub manager: &'a str,
    pub dry_run: bool,
    /// Server-side apply only: take over conflicting fields.
    pub force: bool,
}

/// A write's outcome: the object, and whether it was created (201) or not (200).
pub(crate) struct Written {
    pub object: Value,
    pub created: bool,
}

/// Checks (or fills in) `apiVersion` and `kind` against the URL's resource type.
fn check_type(rt: &ResourceType, body: &mut Value, required: bool) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let api_version = rt.api_version();
    match body["apiVersion"].as_str() {
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
        None if required => {
            return Err(ApiError::bad_request("apiVersion must be set"));
        }
        None => body["apiVersion"] = json!(api_version),
    }
    match body["kind"].as_str() {
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )))
        }
        None if required => return Err(ApiError::bad_request("kind must be set")),
        None => body["kind"] = json!(rt.kind),
    }
    Ok(())
}

/// Checks (or fills in) `metadata.namespace` against the URL's namespace.
fn check_namespace(rt: &ResourceType, namespace: &str, body: &mut Value) -> Result<(), ApiError> {
    let meta = metadata_mut(body);
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(namespace));
            Ok(())
        }
    }
}

/// Checks (or fills in) `metadata.name` against the URL's name.
fn check_name(body: &mut Value, name: &str) -> Result<(), ApiError> {
    let meta = metadata_mut(body);
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != name => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        _ => {
            meta.insert("name".into(), json!(name));
            Ok(())
        }
    }
}

/// A DNS-1123 subdomain, what most object names must be.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn namespace_must_exist(state: &State, rt: &ResourceType, namespace: &str) -> Result<(), ApiError> {
    if rt.namespaced && !state.namespace_exists(namespace) {
        return Err(ApiError::not_found(
            &RESOURCES[super::resources::NAMESPACES],
            namespace,
        ));
    }
    Ok(())
}

/// For kinds with a status subresource, what a write through `subresource` may change: only
/// `status` through `/status`, everything but `status` otherwise.
fn isolate_status(rt: &ResourceType, live: &Value, candidate: Value, subresource: &str) -> Value {
    let take = |from: &Value, into: &mut Value| match from.get("status") {
        Some(s) => into["status"] = s.clone(),
        None => {
            if let Some(m) = into.as_object_mut() {
                m.remove("status");
            }
        }
    };
    if subresource == "status" {
        let mut new = live.clone();
        take(&candidate, &mut new);
        new
    } else if rt.status_subresource {
        let mut new = candidate;
        take(live, &mut new);
        new
    } else {
        candidate
    }
}

pub(crate) fn create(
    state: &mut State,
    res: usize,
    namespace: &str,
    mut body: Value,
    options: WriteOptions<'_>,
) -> Result<Written, ApiError> {
    let rt = &RESOURCES[res];
    check_type(rt, &mut body, false)?;
    check_namespace(rt, namespace, &mut body)?;
    let meta = metadata_mut(&mut body);
    let name = match (meta.get("name").and_then(Value::as_str), meta.get("generateName")) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(Value::String(prefix))) => format!("{prefix}{}", random_suffix(5)),
        _ => {
            return Err(ApiError::invalid(
                rt,
                "",
                "metadata.name: Required value: name or generateName is required",
            ))
        }
    };
    if !valid_name(&name) {
        return Err(ApiError::invalid(
            rt,
            &name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must \
                 consist of lower case alphanumeric characters, '-' or '.', and must start and \
                 end with an alphanumeric character"
            ),
        ));
    }
    meta.insert("name".into(), json!(name));
    namespace_must_exist(state, rt, namespace)?;
    if state.get(res, namespace, &name).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    if rt.status_subresource {
        if let Some(m) = body.as_object_mut() {
            m.remove("status");
        }
    }
    init_metadata(&mut body);
    apply_defaults(rt, &mut body, state);
    let writer = Writer {
        manager: options.manager,
        api_version: &rt.api_version(),
        subresource: "",
    };
    fields::record_update(rt, None, &mut body, writer).map_err(|e| ApiError::invalid(rt, &name, e))?;
    let object = if options.dry_run {
        body
    } else {
        state.commit(res, namespace, body)
    };
    Ok(Written {
        object,
        created: true,
    })
}

/// PUT: replaces the object (or its status, through `/status`).
pub(crate) fn update(
    state: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    mut body: Value,
    subresource: &str,
    options: WriteOptions<'_>,
) -> Result<Written, ApiError> {
    let rt = &RESOURCES[res];
    let live = state
        .get(res, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    check_type(rt, &mut body, false)?;
    check_name(&mut body, name)?;
    check_namespace(rt, namespace, &mut body)?;
    if let Some(rv) = resource_version_of(&body) {
        if Some(rv) != resource_version_of(&live) {
            return Err(ApiError::conflict(rt, name));
        }
    }
    let candidate = isolate_status(rt, &live, body, subresource);
    finish_update(state, res, namespace, &live, candidate, subresource, options)
}

/// PATCH in any of the four formats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    state: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    kind: PatchKind,
    body: &Value,
    subresource: &str,
    options: WriteOptions<'_>,
) -> Result<Written, ApiError> {
    let rt = &RESOURCES[res];
    if kind == PatchKind::Apply {
        return apply(state, res, namespace, name, body.clone(), subresource, options);
    }
    let live = state
        .get(res, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let candidate = patched(rt, &live, kind, body)?;
    if let Some(rv) = resource_version_of(&candidate) {
        if Some(rv) != resource_version_of(&live) {
            return Err(ApiError::conflict(rt, name));
        }
    }
    let candidate = isolate_status(rt, &live, candidate, subresource);
    finish_update(state, res, namespace, &live, candidate, subresource, options)
}

/// `target` with a non-apply patch applied.
fn patched(rt: &ResourceType, target: &Value, kind: PatchKind, body: &Value) -> Result<Value, ApiError> {
    let mut candidate = target.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic if !body.is_object() => {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"))
        }
        PatchKind::Merge => patch::merge_patch(&mut candidate, body),
        PatchKind::Strategic if !rt.builtin => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources: use a JSON merge \
                 patch or a JSON patch",
            ))
        }
        PatchKind::Strategic => patch::strategic_merge_patch(rt, &mut candidate, body),
        PatchKind::Json => patch::json_patch(&mut candidate, body).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {e}"),
            )
        })?,
        PatchKind::Apply => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "apply patch is not supported here",
            ))
        }
    }
    if !candidate.is_object() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "the patched object is not a JSON object",
        ));
    }
    Ok(candidate)
}

/// The common end of PUT and non-apply patches: server-set metadata, field ownership, and no
/// write at all when nothing changed.
fn finish_update(
    state: &mut State,
    res: usize,
    namespace: &str,
    live: &Value,
    mut new: Value,
    subresource: &str,
    options: WriteOptions<'_>,
) -> Result<Written, ApiError> {
    let rt = &RESOURCES[res];
    let name = name_of(live).to_string();
    if !new.is_object() || name_of(&new) != name {
        return Err(ApiError::invalid(
            rt,
            &name,
            "metadata.name: Invalid value: field is immutable",
        ));
    }
    if rt.namespaced && new["metadata"]["namespace"].as_str() != Some(namespace) {
        return Err(ApiError::invalid(
            rt,
            &name,
            "metadata.namespace: Invalid value: field is immutable",
        ));
    }
    new["apiVersion"] = json!(rt.api_version());
    new["kind"] = json!(rt.kind);
    carry_metadata(live, &mut new);
    apply_defaults(rt, &mut new, state);
    let writer = Writer {
        manager: options.manager,
        api_version: &rt.api_version(),
        subresource,
    };
    fields::record_update(rt, Some(live), &mut new, writer).map_err(|e| ApiError::invalid(rt, &name, e))?;
    new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
    if new == *live || options.dry_run {
        return Ok(Written {
            object: new,
            created: false,
        });
    }
    Ok(Written {
        object: state.commit(res, namespace, new),
        created: false,
    })
}

/// Server-side apply; creates the object when missing.
fn apply(
    state: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    mut body: Value,
    subresource: &str,
    options: WriteOptions<'_>,
) -> Result<Written, ApiError> {
    let rt = &RESOURCES[res];
    if options.manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
        ));
    }
    check_type(rt, &mut body, true)?;
    check_name(&mut body, name)?;
    check_namespace(rt, namespace, &mut body)?;
    let live = state.get(res, namespace, name).cloned();
    if live.is_none() {
        if subresource == "status" {
            return Err(ApiError::not_found(rt, name));
        }
        namespace_must_exist(state, rt, namespace)?;
        if !valid_name(name) {
            return Err(ApiError::invalid(rt, name, "metadata.name: Invalid value"));
        }
    }
    let applied = fields::applied_body(rt, &body, subresource == "status");
    let writer = Writer {
        manager: options.manager,
        api_version: &rt.api_version(),
        subresource,
    };
    let Some(mut new) = fields::apply(rt, live.as_ref(), &applied, writer, options.force)? else {
        let object = live.unwrap_or(Value::Null);
        return Ok(Written {
            object,
            created: false,
        });
    };
    match live {
        None => {
            let managed = new["metadata"]["managedFields"].clone();
            init_metadata(&mut new);
            new["metadata"]["managedFields"] = managed;
            apply_defaults(rt, &mut new, state);
            let object = if options.dry_run {
                new
            } else {
                state.commit(res, namespace, new)
            };
            Ok(Written {
                object,
                created: true,
            })
        }
        Some(live) => {
            let managed = new["metadata"]["managedFields"].clone();
            let mut new = isolate_status(rt, &live, new, subresource);
            carry_metadata(&live, &mut new);
            new["metadata"]["managedFields"] = managed;
            apply_defaults(rt, &mut new, state);
            new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            if new == live || options.dry_run {
                return Ok(Written {
                    object: new,
                    created: false,
                });
            }
            Ok(Written {
                object: state.commit(res, namespace, new),
                created: false,
            })
        }
    }
}

/// DELETE: at once (no finalizers, no grace period). Honours `preconditions` of the
/// DeleteOptions body.
pub(crate) fn delete(
    state: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    options: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    let live = state
        .get(res, namespace, name)
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let pre = &options["preconditions"];
    if let Some(uid) = pre["uid"].as_str() {
        if live["metadata"]["uid"].as_str() != Some(uid) {
            return Err(ApiError::conflict(rt, name));
        }
    }
    if let Some(rv) = pre["resourceVersion"].as_str() {
        if resource_version_of(live) != Some(rv) {
            return Err(ApiError::conflict(rt, name));
        }
    }
    if dry_run {
        return Ok(live.clone());
    }
    state
        .remove(res, namespace, name)
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
pub(crate) fn scale_of(object: &Value) -> Value {
    let labels = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &object["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": labels,
        },
    })
}

/// PUT or PATCH of `/scale`: the new Scale's `spec.replicas` goes to the object.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_scale(
    state: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    patch_kind: Option<PatchKind>,
    body: &Value,
    options: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    let live = state
        .get(res, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let scale = match patch_kind {
        None => body.clone(),
        Some(kind) => {
            let scale_type = &RESOURCES[res];
            patched(scale_type, &scale_of(&live), kind, body)?
        }
    };
    if let Some(rv) = resource_version_of(&scale) {
        if Some(rv) != resource_version_of(&live) {
            return Err(ApiError::conflict(rt, name));
        }
    }
    let replicas = scale["spec"]["replicas"]
        .as_i64()
        .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
        .ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: \
                     must be a non-negative integer"
                ),
            )
        })?;
    let mut candidate = live.clone();
    if !candidate["spec"].is_object() {
        candidate["spec"] = json!({});
    }
    candidate["spec"]["replicas"] = json!(replicas);
    let written = finish_update(state, res, namespace, &live, candidate, "scale", options)?;
    Ok(scale_of(&written.object))
}
