//! The three non-apply patch formats.
//!
//! - JSON merge patch (RFC 7386), exactly.
//! - Strategic merge patch, approximated: a merge patch, except that the keyed lists
//!   [`list_keys`] knows (containers, env, ports, volumes, ...) merge item by item, and the
//!   directives kubectl sends are understood: `$patch: delete|replace` in maps and list items,
//!   `$setElementOrder/<list>` (ignored: order is kept as is), `$retainKeys` (ignored),
//!   `$deleteFromPrimitiveList/<list>`. Every other list is replaced whole.
//! - JSON patch (RFC 6902): add, remove, replace, move, copy, test.

use serde_json::{Map, Value};

use super::resources::{key_default, list_keys, ResourceType};

pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

pub(crate) fn strategic_merge_patch(rt: &ResourceType, target: &mut Value, patch: &Value) {
    strategic(rt, target, patch, &mut Vec::new());
}

fn strategic<'a>(rt: &ResourceType, target: &mut Value, patch: &'a Value, names: &mut Vec<&'a str>) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if fields.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        strip_directives(&mut replacement);
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (k, v) in fields {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) = (map.get_mut(list), v.as_array()) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if v.is_null() {
            map.remove(k);
            continue;
        }
        names.push(k);
        let keys = list_keys(rt, names);
        match (keys, v, map.get_mut(k)) {
            (Some(keys), Value::Array(items), Some(Value::Array(existing))) => {
                merge_keyed_list(rt, existing, items, keys, names);
            }
            (_, Value::Object(_), Some(slot)) => strategic(rt, slot, v, names),
            _ => {
                let mut fresh = Value::Null;
                strategic(rt, &mut fresh, v, names);
                if let Value::Array(items) = &mut fresh {
                    items.retain(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"));
                }
                map.insert(k.clone(), fresh);
            }
        }
        names.pop();
    }
}

fn merge_keyed_list<'a>(
    rt: &ResourceType,
    existing: &mut Vec<Value>,
    items: &'a [Value],
    keys: &[&str],
    names: &mut Vec<&'a str>,
) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *existing = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return;
    }
    for item in items {
        let matches = |e: &Value| {
            keys.iter().all(|k| {
                let key_of = |v: &Value| v.get(*k).cloned().or_else(|| key_default(k));
                key_of(e) == key_of(item)
            })
        };
        let position = existing.iter().position(matches);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(rt, &mut existing[i], item, names),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic(rt, &mut fresh, item, names);
                existing.push(fresh);
            }
        }
    }
}

fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Applies an RFC 6902 patch; on failure the target may be half-patched, so callers patch a
/// copy.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for (i, op) in ops.iter().enumerate() {
        json_patch_op(target, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    Ok(())
}

fn json_patch_op(target: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op["op"].as_str().ok_or("missing \"op\"")?;
    let path = op["path"].as_str().ok_or("missing \"path\"")?;
    let value = || op.get("value").cloned().ok_or("missing \"value\"");
    let from = || op["from"].as_str().ok_or("missing \"from\"");
    match kind {
        "add" => add(target, path, value()?),
        "remove" => remove(target, path).map(|_| ()),
        "replace" => {
            remove(target, path)?;
            add(target, path, value()?)
        }
        "move" => {
            let moved = remove(target, from()?)?;
            add(target, path, moved)
        }
        "copy" => {
            let copied = pointer(target, from()?)
                .ok_or_else(|| format!("no value at {}", from().unwrap_or_default()))?
                .clone();
            add(target, path, copied)
        }
        "test" => {
            let expected = value()?;
            match pointer(target, path) {
                Some(actual) if *actual == expected => Ok(()),
                _ => Err(format!("testing value {path} failed")),
            }
        }
        other => Err(format!("unexpected kind of operation: {other:?}")),
    }
}

/// The unescaped tokens of a JSON pointer.
fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("a JSON pointer must start with '/': {path:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer<'a>(target: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = target;
    for t in tokens(path).ok()? {
        cur = match cur {
            Value::Object(m) => m.get(&t)?,
            Value::Array(items) => items.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parent_mut<'a>(target: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut toks = tokens(path)?;
    let last = toks.pop().ok_or("the root cannot be patched")?;
    let mut cur = target;
    for t in &toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(items) => t.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("missing path {path:?}"))?;
    }
    Ok((cur, last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(target, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let i = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad array index in {path:?}"))?
            };
            if i > items.len() {
                return Err(format!("index out of bounds in {path:?}"));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!("cannot add at {path:?}: the parent is not a map or list")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent_mut(target, path)?;
    let removed = match parent {
        Value::Object(m) => m.remove(&last),
        Value::Array(items) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("unable to remove nonexistent key: {path}: missing value"))
}
