//! Field ownership and server-side apply.
//!
//! A field set is a set of paths in the `FieldsV1` segment syntax: `f:name` for a map field,
//! `k:{"name":"web"}` for an item of a keyed list (the item itself, the `"."` of `FieldsV1`).
//! Leaves are scalars, empty maps and whole atomic lists; maps are not owned themselves, only
//! their fields (as in the sets an Apply records).
//!
//! Apply: the applier's set is every leaf of what it sent. A leaf whose value would change and
//! that another manager owns is a conflict (409 unless forced; forcing takes the field over).
//! A field the applier owned before, did not send now and nobody else owns is removed. Then
//! the applied object is merged in: maps recursively, keyed lists by key, everything else
//! replaced. Update (PUT, patches, create) takes every field whose value it changed from
//! whoever owned it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::resources::{atomic_map, key_default, list_keys, ResourceType};
use super::store::{canonical_json, now_rfc3339};

pub(crate) type Path = Vec<String>;

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: BTreeSet<Path>,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// How conflict messages name the manager, as the real server does.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        s.push_str(&format!(" using {}", self.api_version));
        if self.operation == "Update" && !self.time.is_empty() {
            s.push_str(&format!(" at {}", self.time));
        }
        s
    }
}

/// The fields of `object` that ownership is tracked for: not `apiVersion`, `kind`, the
/// server-set metadata, and (unless `with_status`) not `status`.
fn owned_view(object: &Value, with_status: bool) -> Value {
    let mut v = object.clone();
    let Some(map) = v.as_object_mut() else {
        return json!({});
    };
    map.remove("apiVersion");
    map.remove("kind");
    if !with_status {
        map.remove("status");
    }
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(field);
        }
        if meta.is_empty() {
            map.remove("metadata");
        }
    }
    v
}

/// Every owned path of `object` (see the module doc). Fails on a keyed list whose items lack
/// their key or repeat one, as the real server does.
pub(crate) fn field_set(rt: &ResourceType, object: &Value) -> Result<BTreeSet<Path>, String> {
    let mut out = BTreeSet::new();
    if let Value::Object(map) = object {
        let mut path = Vec::new();
        let mut names = Vec::new();
        walk_fields(rt, map, &mut path, &mut names, &mut out)?;
    }
    Ok(out)
}

fn walk_fields<'a>(
    rt: &ResourceType,
    map: &'a Map<String, Value>,
    path: &mut Path,
    names: &mut Vec<&'a str>,
    out: &mut BTreeSet<Path>,
) -> Result<(), String> {
    for (k, child) in map {
        path.push(format!("f:{k}"));
        names.push(k);
        walk_value(rt, child, path, names, out)?;
        names.pop();
        path.pop();
    }
    Ok(())
}

fn walk_value<'a>(
    rt: &ResourceType,
    value: &'a Value,
    path: &mut Path,
    names: &mut Vec<&'a str>,
    out: &mut BTreeSet<Path>,
) -> Result<(), String> {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() && atomic_map(rt, names) => {
            out.insert(path.clone());
        }
        Value::Object(map) if !map.is_empty() => walk_fields(rt, map, path, names, out)?,
        Value::Array(items) if !items.is_empty() => match list_keys(rt, names) {
            Some(keys) => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let segment = item_key(item, keys)
                        .map_err(|e| format!("{}: element {i}: {e}", path_string(path)))?;
                    if !seen.insert(segment.clone()) {
                        return Err(format!(
                            "{}: element {i}: duplicate entries for key {}",
                            path_string(path),
                            &segment[2..]
                        ));
                    }
                    path.push(segment);
                    out.insert(path.clone());
                    if let Value::Object(fields) = item {
                        walk_fields(rt, fields, path, names, out)?;
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
    Ok(())
}

/// The `k:{...}` segment of a keyed list item.
fn item_key(item: &Value, keys: &[&str]) -> Result<String, String> {
    let Value::Object(fields) = item else {
        return Err("associative list with keys has an element that is not a map".into());
    };
    let mut key = Map::new();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    for k in sorted {
        let v = match fields.get(k).filter(|v| !v.is_null()) {
            Some(v) => v.clone(),
            None => key_default(k).ok_or_else(|| {
                format!(
                    "associative list with keys has an element that omits key field {k:?} \
                     (and doesn't have default value)"
                )
            })?,
        };
        key.insert(k.to_string(), v);
    }
    Ok(format!("k:{}", canonical_json(&Value::Object(key))))
}

fn item_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| {
        let own = item
            .get(k)
            .filter(|x| !x.is_null())
            .cloned()
            .or_else(|| key_default(k));
        own.as_ref() == Some(v)
    })
}

/// The value at `path` in `object`, `None` when absent or null.
pub(crate) fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = object;
    for seg in path {
        cur = if let Some(field) = seg.strip_prefix("f:") {
            cur.get(field)?
        } else if let Some(key) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).ok()?;
            cur.as_array()?.iter().find(|item| item_matches(item, &key))?
        } else if let Some(i) = seg.strip_prefix("i:") {
            cur.as_array()?.get(i.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(cur).filter(|v| !v.is_null())
}

fn value_at_mut<'a>(object: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = object;
    for seg in path {
        cur = if let Some(field) = seg.strip_prefix("f:") {
            cur.get_mut(field)?
        } else if let Some(key) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).ok()?;
            cur.as_array_mut()?
                .iter_mut()
                .find(|item| item_matches(item, &key))?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the field or list item at `path`, and maps left empty by that.
fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = value_at_mut(object, parent_path) else {
        return;
    };
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = parent.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:") {
        if let (Ok(key), Some(items)) = (
            serde_json::from_str::<Map<String, Value>>(key),
            parent.as_array_mut(),
        ) {
            items.retain(|item| !item_matches(item, &key));
        }
    }
    let parent_is_empty_map = parent.as_object().is_some_and(Map::is_empty);
    if parent_is_empty_map && parent_path.last().is_some_and(|s| s.starts_with("f:")) {
        remove_at(object, parent_path);
    }
}

/// Whether `path` is a key field of a keyed list item (`...k:{"name":"web"}`, `f:name`).
fn is_key_field(path: &[String]) -> bool {
    let [.., item, field] = path else {
        return false;
    };
    let (Some(key), Some(field)) = (item.strip_prefix("k:"), field.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(field))
}

/// `.spec.template.spec.containers[name="web"].image`, as conflict messages write paths.
pub(crate) fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(field) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(field);
        } else if let Some(key) = seg.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(key)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(i) = seg.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        } else {
            s.push_str(&format!("[{seg}]"));
        }
    }
    s
}

/// `FieldsV1` JSON of a set.
fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for path in paths {
        let mut node = &mut root;
        for seg in path {
            if !node.is_object() {
                *node = json!({});
            }
            node = node
                .as_object_mut()
                .map(|m| m.entry(seg.clone()).or_insert_with(|| json!({})))
                .unwrap_or_else(|| unreachable!("made a map above"));
        }
    }
    // An owned path that also has owned children is marked with ".".
    for path in paths {
        if let Some(node) = value_at_mut_raw(&mut root, path) {
            if let Some(map) = node.as_object_mut() {
                if !map.is_empty() {
                    map.insert(".".into(), json!({}));
                }
            }
        }
    }
    root
}

fn value_at_mut_raw<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = tree;
    for seg in path {
        cur = cur.get_mut(seg.as_str())?;
    }
    Some(cur)
}

/// The set a `FieldsV1` JSON holds.
fn from_fields_v1(tree: &Value) -> BTreeSet<Path> {
    fn walk(node: &Map<String, Value>, path: &mut Path, out: &mut BTreeSet<Path>) {
        for (seg, child) in node {
            if seg == "." {
                continue;
            }
            path.push(seg.clone());
            match child.as_object() {
                Some(children) if !children.is_empty() => {
                    if children.contains_key(".") {
                        out.insert(path.clone());
                    }
                    walk(children, path, out);
                }
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Some(map) = tree.as_object() {
        walk(map, &mut Vec::new(), &mut out);
    }
    out
}

pub(crate) fn read_entries(object: &Value) -> Vec<Entry> {
    let Some(entries) = object["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    let text = |e: &Value, f: &str| e[f].as_str().unwrap_or("").to_string();
    entries
        .iter()
        .filter(|e| e.is_object())
        .map(|e| Entry {
            manager: text(e, "manager"),
            operation: text(e, "operation"),
            api_version: text(e, "apiVersion"),
            time: text(e, "time"),
            subresource: text(e, "subresource"),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let meta = super::store::metadata_mut(object);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who is writing, and how: the identity of a managedFields entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// "" or "status".
    pub subresource: &'a str,
}

/// Records an Update (create, PUT, any patch but apply) of `old` into `new` by `writer`: it
/// takes every field whose value it changed, and nobody keeps fields that are gone.
pub(crate) fn record_update(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    writer: Writer<'_>,
) -> Result<(), String> {
    let with_status = !rt.status_subresource || writer.subresource == "status";
    let new_set = field_set(rt, &owned_view(new, with_status))?;
    let changed: BTreeSet<Path> = new_set
        .into_iter()
        .filter(|p| {
            let before = old.and_then(|o| value_at(o, p));
            if p.last().is_some_and(|s| s.starts_with("k:")) {
                before.is_none()
            } else {
                before != value_at(new, p)
            }
        })
        .collect();
    let mut entries = old.map(read_entries).unwrap_or_default();
    for e in &mut entries {
        e.fields
            .retain(|p| !changed.contains(p) && value_at(new, p).is_some());
    }
    if !changed.is_empty() {
        let now = now_rfc3339();
        match entries
            .iter_mut()
            .find(|e| e.is(writer.manager, "Update", writer.subresource))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now;
                e.api_version = writer.api_version.to_string();
            }
            None => entries.push(Entry {
                manager: writer.manager.to_string(),
                operation: "Update".into(),
                api_version: writer.api_version.to_string(),
                time: now,
                subresource: writer.subresource.to_string(),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    write_entries(new, &entries);
    Ok(())
}

/// Drops what apply never takes from the body: server-set metadata, and `status` where it is
/// a subresource.
pub(crate) fn applied_body(rt: &ResourceType, applied: &Value, to_status: bool) -> Value {
    let mut body = applied.clone();
    if let Some(map) = body.as_object_mut() {
        if to_status {
            map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        } else if rt.status_subresource {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "selfLink",
                "deletionTimestamp",
            ] {
                meta.remove(field);
            }
            if to_status {
                meta.retain(|k, _| k == "name" || k == "namespace");
            }
        }
    }
    body
}

/// Server-side apply of `applied` (already cleaned by [`applied_body`]) onto `live` (`None`:
/// the object is created). Returns the new object, or `None` when nothing would change (a real
/// server then writes nothing either).
pub(crate) fn apply(
    rt: &ResourceType,
    live: Option<&Value>,
    applied: &Value,
    writer: Writer<'_>,
    force: bool,
) -> Result<Option<Value>, ApiError> {
    let name = applied["metadata"]["name"].as_str().unwrap_or("");
    let applied_view = owned_view(applied, !rt.status_subresource || writer.subresource == "status");
    let applied_set = field_set(rt, &applied_view).map_err(|e| ApiError::invalid(rt, name, e))?;
    let mut entries = live.map(read_entries).unwrap_or_default();
    let is_self = |e: &Entry| e.is(writer.manager, "Apply", writer.subresource);

    // (1) conflicts: leaves another manager owns and whose value would change.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for path in &applied_set {
        if path.last().is_some_and(|s| s.starts_with("k:")) {
            continue;
        }
        let old = live.and_then(|l| value_at(l, path));
        if old == value_at(&applied_view, path) {
            continue;
        }
        for (i, e) in entries.iter().enumerate() {
            if !is_self(e) && e.fields.contains(path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&entries, &conflicts));
    }
    // (2) forcing takes the conflicting fields over.
    for (i, path) in &conflicts {
        entries[*i].fields.remove(path);
    }

    // (3) fields the applier gave up that nobody else holds are removed.
    let mut object = live.cloned().unwrap_or_else(|| json!({}));
    let before = entries
        .iter()
        .find(|e| is_self(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    // Shortest first: a whole list item goes before its fields (its key fields are how it is
    // found), and a key field of an item that stays is never removed on its own.
    let mut dropped: Vec<&Path> = before.difference(&applied_set).collect();
    dropped.sort_by_key(|p| p.len());
    for path in dropped {
        let held_by_others = entries
            .iter()
            .filter(|e| !is_self(e))
            .any(|e| e.fields.iter().any(|q| q.starts_with(path)));
        if !held_by_others && !is_key_field(path) {
            remove_at(&mut object, path);
        }
    }

    // (4) merge.
    merge_applied(rt, &mut object, applied, &mut Vec::new());

    let now = now_rfc3339();
    match entries.iter_mut().find(|e| is_self(e)) {
        Some(e) => {
            e.fields = applied_set;
            e.api_version = writer.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: writer.manager.to_string(),
            operation: "Apply".into(),
            api_version: writer.api_version.to_string(),
            time: now.clone(),
            subresource: writer.subresource.to_string(),
            fields: applied_set,
        }),
    }
    for e in &mut entries {
        e.fields.retain(|p| value_at(&object, p).is_some());
    }
    entries.retain(|e| !e.fields.is_empty() || is_self(e));

    if let Some(live) = live {
        let old_entries = read_entries(live);
        let same_fields = old_entries.len() == entries.len()
            && old_entries.iter().zip(&entries).all(|(a, b)| {
                a.manager == b.manager
                    && a.operation == b.operation
                    && a.subresource == b.subresource
                    && a.fields == b.fields
            });
        let mut old_object = live.clone();
        let mut new_object = object.clone();
        super::store::metadata_mut(&mut old_object).remove("managedFields");
        super::store::metadata_mut(&mut new_object).remove("managedFields");
        if same_fields && old_object == new_object {
            return Ok(None);
        }
    }
    if let Some(e) = entries.iter_mut().find(|e| is_self(e)) {
        e.time = now;
    }
    write_entries(&mut object, &entries);
    Ok(Some(object))
}

/// Merges an applied configuration into the live object: maps field by field, keyed lists item
/// by item, everything else replaced. Nulls in the applied configuration are skipped.
fn merge_applied<'a>(rt: &ResourceType, live: &mut Value, applied: &'a Value, names: &mut Vec<&'a str>) {
    match applied {
        Value::Null => {}
        Value::Object(_) if atomic_map(rt, names) => *live = without_nulls(applied),
        Value::Object(fields) => {
            if !live.is_object() {
                *live = json!({});
            }
            let Some(live_fields) = live.as_object_mut() else {
                return;
            };
            for (k, v) in fields {
                if v.is_null() {
                    continue;
                }
                names.push(k);
                let slot = live_fields.entry(k.clone()).or_insert(Value::Null);
                merge_applied(rt, slot, v, names);
                names.pop();
            }
        }
        Value::Array(items) => match (list_keys(rt, names), live.as_array_mut()) {
            (Some(keys), Some(live_items)) => {
                for item in items {
                    let Ok(segment) = item_key(item, keys) else {
                        continue;
                    };
                    let key: Map<String, Value> = serde_json::from_str(&segment[2..]).unwrap_or_default();
                    match live_items.iter_mut().find(|l| item_matches(l, &key)) {
                        Some(existing) => merge_applied(rt, existing, item, names),
                        None => {
                            let mut fresh = Value::Null;
                            merge_applied(rt, &mut fresh, item, names);
                            live_items.push(fresh);
                        }
                    }
                }
            }
            _ => *live = without_nulls(applied),
        },
        other => *live = other.clone(),
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The 409 a conflicting apply gets, worded as the real server words it.
fn conflict_error(entries: &[Entry], conflicts: &[(usize, Path)]) -> ApiError {
    let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut causes = Vec::new();
    for (i, path) in conflicts {
        let who = entries[*i].describe();
        let field = path_string(path);
        causes.push(json!({
            // metav1.StatusCause serialises its `Type` as "reason".
            "reason": "FieldManagerConflict",
            "message": format!("conflict with {who}"),
            "field": field,
        }));
        by_manager.entry(who).or_default().push(field);
    }
    let n = conflicts.len();
    let mut message = format!(
        "Apply failed with {n} conflict{}: ",
        if n == 1 { "" } else { "s" }
    );
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(who, fields)| {
            if fields.len() == 1 {
                format!("conflict with {who}: {}", fields[0])
            } else {
                let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                format!("conflicts with {who}:\n{}", list.join("\n"))
            }
        })
        .collect();
    message.push_str(&parts.join("\n"));
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}
