//! The OpenFeature Remote Evaluation Protocol (OFREP 0.3.0) as pure functions: a request body in,
//! a status, an optional ETag and a JSON body out. The HTTP server around them only routes,
//! authenticates and writes. Every body here matches a schema of the published
//! `openapi.yaml` (checked by the tests of the server).
//!
//! Decisions where the spec leaves room:
//! - The spec's `reason` enum is `STATIC | TARGETING_MATCH | SPLIT | DISABLED | UNKNOWN`; a user
//!   whom the flag's targeting did not place gets the default variant with reason `STATIC`
//!   (there is no `DEFAULT` in the enum, and the value is indeed the flag's static default).
//! - A context without `targetingKey` is accepted (the schema marks it required, but the error
//!   `TARGETING_KEY_MISSING` exists for exactly the flags that need one): only a flag that
//!   splits by it fails, with that code.
//! - The bulk ETag hashes the flag set's revision *and* the evaluation context, so a client
//!   that switches users never gets a 304 for the other user's answers.
//! - An inconsistent flag (a variant it does not have; validation prevents it) is a 500.

use serde_json::{json, Map, Value};

use crate::eval::{self, EvalError, Reason};
use crate::flag::Flag;

/// The largest request body accepted, in bytes: contexts are a few attributes of one user.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Flags by key, and the revision of the whole set (bumped by every change of any flag).
///
/// Each flag's answer parts that do not depend on the user (its key and metadata as JSON) are
/// written once, when the index is built on a change, so an evaluation writes only the value,
/// reason and variant: a bulk answer of 100 flags is one buffer, not thousands of small
/// allocations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagIndex {
    pub revision: u64,
    flags: std::collections::BTreeMap<String, Indexed>,
}

#[derive(Debug, Clone, PartialEq)]
struct Indexed {
    flag: Flag,
    /// `{"key":"...",`
    head: String,
    /// `"metadata":{...}}`
    tail: String,
}

impl Indexed {
    fn new(flag: Flag) -> Self {
        let key = serde_json::to_string(&flag.key).unwrap_or_else(|_| "\"\"".into());
        let metadata = serde_json::to_string(&metadata(&flag)).unwrap_or_else(|_| "{}".into());
        Indexed {
            head: format!("{{\"key\":{key},"),
            tail: format!("\"metadata\":{metadata}}}"),
            flag,
        }
    }
}

impl FlagIndex {
    pub fn new(revision: u64, flags: impl IntoIterator<Item = Flag>) -> Self {
        FlagIndex {
            revision,
            flags: flags
                .into_iter()
                .map(|f| (f.key.clone(), Indexed::new(f)))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Flag> {
        self.flags.get(key).map(|i| &i.flag)
    }

    pub fn flags(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values().map(|i| &i.flag)
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// For bulk answers: the `ETag` header, quoted.
    pub etag: Option<String>,
    /// The JSON body; `None` for a 304.
    pub body: Option<Vec<u8>>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            etag: None,
            body: Some(serde_json::to_vec(&body).unwrap_or_default()),
        }
    }

    /// The body parsed, for tests and tools.
    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(self.body.as_deref()?).ok()
    }
}

/// Why a request body is refused before any flag is looked at.
enum BadRequest {
    Parse(String),
    Context(String),
}

impl BadRequest {
    fn code(&self) -> &'static str {
        match self {
            BadRequest::Parse(_) => "PARSE_ERROR",
            BadRequest::Context(_) => "INVALID_CONTEXT",
        }
    }

    fn details(&self) -> &str {
        match self {
            BadRequest::Parse(d) | BadRequest::Context(d) => d,
        }
    }
}

/// The evaluation context of a request body `{"context": {...}}`.
fn context_of(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(BadRequest::Context(format!(
            "the request body has {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
            body.len()
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest::Parse(format!("the request body is not JSON: {e}")))?;
    let Value::Object(mut request) = value else {
        return Err(BadRequest::Parse(
            "the request body must be a JSON object: {\"context\": {...}}".into(),
        ));
    };
    match request.remove("context") {
        Some(Value::Object(context)) => match context.get(eval::TARGETING_KEY) {
            None | Some(Value::String(_)) => Ok(context),
            Some(other) => Err(BadRequest::Context(format!(
                "targetingKey must be a string, not {other}"
            ))),
        },
        Some(other) => Err(BadRequest::Context(format!(
            "context must be an object, not {other}"
        ))),
        None => Err(BadRequest::Context(
            "the request body has no context; send {\"context\": {\"targetingKey\": \"...\"}}".into(),
        )),
    }
}

/// A flag's metadata in OFREP: owner, expiry, description, revision (scalars only).
fn metadata(flag: &Flag) -> Value {
    let mut m = Map::new();
    m.insert("owner".into(), json!(flag.owner));
    m.insert("description".into(), json!(flag.description));
    m.insert("revision".into(), json!(flag.revision));
    match (&flag.expires, &flag.permanent) {
        (Some(date), _) => {
            m.insert("expires".into(), json!(date));
        }
        (None, Some(reason)) => {
            m.insert("permanent".into(), json!(true));
            m.insert("permanentReason".into(), json!(reason));
        }
        (None, None) => {}
    }
    Value::Object(m)
}

fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Default => Reason::Static.as_str(),
        other => other.as_str(),
    }
}

/// One flag evaluated for `context`, its answer appended to `out`: the success object, or with
/// status 400 the failure object, or with 500 the failure's details only.
fn write_flag(out: &mut Vec<u8>, indexed: &Indexed, context: &Map<String, Value>) -> u16 {
    match eval::evaluate(&indexed.flag, context) {
        Ok(r) => {
            out.extend_from_slice(indexed.head.as_bytes());
            out.extend_from_slice(b"\"value\":");
            // Values and variant names came from JSON and serialise back; the fallback keeps the
            // answer well-formed all the same.
            if serde_json::to_writer(&mut *out, r.value).is_err() {
                out.extend_from_slice(b"null");
            }
            out.extend_from_slice(b",\"reason\":\"");
            out.extend_from_slice(reason_name(r.reason).as_bytes());
            out.extend_from_slice(b"\",\"variant\":");
            if serde_json::to_writer(&mut *out, r.variant).is_err() {
                out.extend_from_slice(b"\"\"");
            }
            out.push(b',');
            out.extend_from_slice(indexed.tail.as_bytes());
            200
        }
        Err(e) => {
            let (status, body) = failure(&indexed.flag, &e);
            let _ = serde_json::to_writer(&mut *out, &body);
            status
        }
    }
}

/// The failure object of a flag that could not be evaluated, and its status.
fn failure(flag: &Flag, e: &EvalError) -> (u16, Value) {
    let (status, code) = match e {
        EvalError::TargetingKeyMissing => (400, "TARGETING_KEY_MISSING"),
        EvalError::InvalidContext(_) => (400, "INVALID_CONTEXT"),
        EvalError::General(_) => (500, "GENERAL"),
    };
    (
        status,
        json!({
            "key": flag.key,
            "errorCode": code,
            "errorDetails": e.to_string(),
            "metadata": metadata(flag),
        }),
    )
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub fn evaluate_one(index: &FlagIndex, key: &str, body: &[u8]) -> Reply {
    let context = match context_of(body) {
        Ok(c) => c,
        Err(bad) => {
            return Reply::json(
                400,
                json!({ "key": key, "errorCode": bad.code(), "errorDetails": bad.details() }),
            )
        }
    };
    let Some(indexed) = index.flags.get(key) else {
        return Reply::json(
            404,
            json!({
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": format!("flag {key:?} was not found"),
            }),
        );
    };
    let mut out = Vec::with_capacity(indexed.head.len() + indexed.tail.len() + 64);
    let status = write_flag(&mut out, indexed, &context);
    if status == 500 {
        // The generic server error has no key or code (generalErrorResponse).
        let body: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        return Reply::json(500, json!({ "errorDetails": body["errorDetails"] }));
    }
    Reply {
        status,
        etag: None,
        body: Some(out),
    }
}

/// The ETag of a bulk answer: the flag set's revision and the context it was evaluated for.
pub fn bulk_etag(revision: u64, context: &Map<String, Value>) -> String {
    // serde_json's map is ordered by key: the same context always serialises the same.
    let text = serde_json::to_string(context).unwrap_or_default();
    let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
    format!("\"{revision}-{hash:016x}\"")
}

/// Whether an `If-None-Match` header value names `etag` (or is `*`).
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `POST /ofrep/v1/evaluate/flags`: every flag for one context, or 304 when `if_none_match`
/// names the answer the client already has. `event_stream` is the request URI of the change
/// notification stream, if the server has one.
pub fn evaluate_all(
    index: &FlagIndex,
    body: &[u8],
    if_none_match: Option<&str>,
    event_stream: Option<&str>,
) -> Reply {
    let context = match context_of(body) {
        Ok(c) => c,
        Err(bad) => {
            return Reply::json(
                400,
                json!({ "errorCode": bad.code(), "errorDetails": bad.details() }),
            )
        }
    };
    let etag = bulk_etag(index.revision, &context);
    if if_none_match.is_some_and(|h| none_match(h, &etag)) {
        return Reply {
            status: 304,
            etag: Some(etag),
            body: None,
        };
    }
    let size: usize = index
        .flags
        .values()
        .map(|i| i.head.len() + i.tail.len() + 64)
        .sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"flags\":[");
    for (n, indexed) in index.flags.values().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let start = out.len();
        if write_flag(&mut out, indexed, &context) == 500 {
            // Inside a bulk answer a broken flag is one failed item, not a failed request.
            let body: Value = serde_json::from_slice(&out[start..]).unwrap_or(Value::Null);
            out.truncate(start);
            let item = json!({
                "key": indexed.flag.key,
                "errorCode": "GENERAL",
                "errorDetails": body["errorDetails"],
            });
            let _ = serde_json::to_writer(&mut out, &item);
        }
    }
    out.extend_from_slice(b"],\"metadata\":{\"flagSetRevision\":");
    out.extend_from_slice(index.revision.to_string().as_bytes());
    out.push(b'}');
    if let Some(uri) = event_stream {
        out.extend_from_slice(b",\"eventStreams\":");
        let streams = json!([{ "type": "sse", "endpoint": { "requestUri": uri } }]);
        let _ = serde_json::to_writer(&mut out, &streams);
    }
    out.push(b'}');
    Reply {
        status: 200,
        etag: Some(etag),
        body: Some(out),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn index() -> FlagIndex {
        let text = r#"
[[flag]]
key = "banner"
type = "string"
variants = { blue = "blue", red = "red" }
default_variant = "blue"
owner = "web"
description = "Banner colour"
expires = "2027-01-31"
rules = [{ when = [{ attribute = "country", op = "equals", value = "DE" }], variant = "red" }]

[[flag]]
key = "checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "payments"
description = "New checkout"
permanent = "the payments kill switch"
split = [{ variant = "on", weight = 5000 }, { variant = "off", weight = 5000 }]
"#;
        #[derive(serde::Deserialize)]
        struct File {
            flag: Vec<Flag>,
        }
        let file: File = toml::from_str(text).unwrap();
        FlagIndex::new(7, file.flag)
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn single_evaluations_answer_with_value_reason_variant_and_metadata() {
        let i = index();
        let r = evaluate_one(
            &i,
            "banner",
            &body(json!({"context": {"targetingKey": "u", "country": "DE"}})),
        );
        assert_eq!(r.status, 200);
        let b = r.json_body().unwrap();
        assert_eq!(
            (b["value"].clone(), b["reason"].clone(), b["variant"].clone()),
            (json!("red"), json!("TARGETING_MATCH"), json!("red"))
        );
        assert_eq!(b["metadata"]["owner"], "web");
        assert_eq!(b["metadata"]["expires"], "2027-01-31");
        let r = evaluate_one(&i, "banner", &body(json!({"context": {"country": "FR"}})));
        assert_eq!(
            r.json_body().unwrap()["reason"],
            "STATIC",
            "the default of a targeted flag"
        );
        let r = evaluate_one(&i, "checkout", &body(json!({"context": {"targetingKey": "u"}})));
        assert_eq!(r.json_body().unwrap()["reason"], "SPLIT");
    }

    #[test]
    fn errors_have_their_codes_and_statuses() {
        let i = index();
        let cases: [(&str, &[u8], u16, &str); 6] = [
            ("nope", br#"{"context": {}}"#, 404, "FLAG_NOT_FOUND"),
            ("checkout", br#"{"context": {}}"#, 400, "TARGETING_KEY_MISSING"),
            ("banner", b"{not json", 400, "PARSE_ERROR"),
            ("banner", b"[1, 2]", 400, "PARSE_ERROR"),
            ("banner", br#"{"context": 5}"#, 400, "INVALID_CONTEXT"),
            (
                "banner",
                br#"{"context": {"targetingKey": 5}}"#,
                400,
                "INVALID_CONTEXT",
            ),
        ];
        for (key, request, status, code) in cases {
            let r = evaluate_one(&i, key, request);
            assert_eq!(r.status, status, "{key} {}", String::from_utf8_lossy(request));
            assert_eq!(r.json_body().unwrap()["errorCode"], code);
        }
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            evaluate_one(&i, "banner", &huge).json_body().unwrap()["errorCode"],
            "INVALID_CONTEXT"
        );
    }

    #[test]
    fn the_bulk_etag_depends_on_the_revision_and_the_context() {
        let i = index();
        let alice = body(json!({"context": {"targetingKey": "alice"}}));
        let bob = body(json!({"context": {"targetingKey": "bob"}}));
        let first = evaluate_all(&i, &alice, None, Some("/ofrep/v1/events"));
        assert_eq!(first.status, 200);
        let etag = first.etag.clone().unwrap();
        let b = first.json_body().unwrap();
        assert_eq!(b["flags"].as_array().unwrap().len(), 2);
        assert_eq!(b["eventStreams"][0]["endpoint"]["requestUri"], "/ofrep/v1/events");
        // The same user again: 304. Another user with alice's ETag: a full answer.
        assert_eq!(evaluate_all(&i, &alice, Some(&etag), None).status, 304);
        assert_eq!(
            evaluate_all(&i, &alice, Some(&format!("W/{etag}, \"x\"")), None).status,
            304
        );
        assert_eq!(evaluate_all(&i, &bob, Some(&etag), None).status, 200);
        // A change of the flag set: a full answer for alice too.
        let changed = FlagIndex::new(8, i.flags().cloned());
        assert_eq!(evaluate_all(&changed, &alice, Some(&etag), None).status, 200);
        // Without a targeting key the split flag fails alone; the request does not.
        let r = evaluate_all(&i, br#"{"context": {}}"#, None, None);
        assert_eq!(r.status, 200);
        let flags = r.json_body().unwrap()["flags"].clone();
        assert_eq!(flags[1]["errorCode"], "TARGETING_KEY_MISSING");
        assert_eq!(flags[0]["reason"], "STATIC");
    }
}
