//! Flags without an SDK: the proxy evaluates an app's forwarded flags for each request's user
//! key (the key it is sticky by, so a user's flag variant and slot follow the same identity),
//! passes the variants to the backend in one header, and counts the requests of every flag and
//! variant like a pool's, so a guarded ramp can judge users in a variant against the others.
//!
//! The header is `name: flag=variant, flag=variant` (variant names are letters, digits, `_`,
//! `-` and `.`, so the value needs no quoting). A copy a client sent is always removed, whether or
//! not any flag is forwarded: a client must not choose its own variants. A flag that does not
//! exist (archived, or not created yet) is left out of the header. The evaluation context holds
//! the targeting key only; rules on other attributes see them missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use cutover_flags::ofrep::FlagIndex;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::metrics::{MetricsSnapshot, PoolMetrics};

/// The header variants are forwarded in unless configured otherwise.
pub const DEFAULT_HEADER: &str = "x-cutover-flags";

/// Where the proxy reads the flags it evaluates: the flag service's index, swapped whole on
/// every change, so a request sees a change entirely or not at all.
pub trait FlagSource: Send + Sync + std::fmt::Debug {
    fn index(&self) -> Arc<FlagIndex>;
}

/// Counters per flag and variant, of one app.
#[derive(Debug, Default)]
pub struct FlagTraffic {
    /// flag → variant → counters; replaced whole when a variant is seen for the first time
    /// (rare), read without a lock on every request.
    by_flag: ArcSwap<HashMap<String, HashMap<String, Arc<PoolMetrics>>>>,
    adding: Mutex<()>,
}

impl FlagTraffic {
    /// The counters of `flag`'s `variant`, created on first use.
    fn metrics(&self, flag: &str, variant: &str) -> Arc<PoolMetrics> {
        if let Some(m) = self.by_flag.load().get(flag).and_then(|v| v.get(variant)) {
            return Arc::clone(m);
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.by_flag.load_full();
        if let Some(m) = current.get(flag).and_then(|v| v.get(variant)) {
            return Arc::clone(m);
        }
        let mut next = (*current).clone();
        let metrics = Arc::new(PoolMetrics::default());
        next.entry(flag.to_string())
            .or_default()
            .insert(variant.to_string(), Arc::clone(&metrics));
        self.by_flag.store(Arc::new(next));
        metrics
    }

    /// Every variant of `flag` seen so far with its counters now, sorted by variant.
    pub fn snapshot(&self, flag: &str) -> Vec<(String, u64, MetricsSnapshot)> {
        let mut out: Vec<_> = self
            .by_flag
            .load()
            .get(flag)
            .into_iter()
            .flatten()
            .map(|(variant, m)| (variant.clone(), m.series(), m.snapshot()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every flag and variant with its counters now, sorted, for `/metrics`.
    pub fn all(&self) -> Vec<(String, String, MetricsSnapshot)> {
        let mut out: Vec<_> = self
            .by_flag
            .load()
            .iter()
            .flat_map(|(flag, variants)| {
                variants
                    .iter()
                    .map(move |(variant, m)| (flag.clone(), variant.clone(), m.snapshot()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// An app's forwarded flags.
#[derive(Debug)]
pub struct FlagForwarding {
    source: Arc<dyn FlagSource>,
    flags: Vec<String>,
    header: HeaderName,
    pub traffic: FlagTraffic,
}

/// The variants one request was given, to record its outcome against.
#[derive(Debug, Default)]
pub(crate) struct Assigned(Vec<Arc<PoolMetrics>>);

impl FlagForwarding {
    /// `header` must be a valid header name (the configuration checks it); an invalid one falls
    /// back to [`DEFAULT_HEADER`].
    pub fn new(source: Arc<dyn FlagSource>, flags: Vec<String>, header: &str) -> Self {
        FlagForwarding {
            source,
            flags,
            header: HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                .unwrap_or(HeaderName::from_static(DEFAULT_HEADER)),
            traffic: FlagTraffic::default(),
        }
    }

    pub fn flags(&self) -> &[String] {
        &self.flags
    }

    /// Removes any copy of the header a client sent, evaluates the forwarded flags for
    /// `targeting_key` and sets the header; returns the counters to record the answer in.
    pub(crate) fn assign(&self, headers: &mut HeaderMap, targeting_key: &str) -> Assigned {
        while headers.remove(&self.header).is_some() {}
        if self.flags.is_empty() {
            return Assigned::default();
        }
        let index = self.source.index();
        let mut context = serde_json::Map::with_capacity(1);
        context.insert(
            cutover_flags::TARGETING_KEY.to_string(),
            serde_json::Value::String(targeting_key.to_string()),
        );
        let mut value = String::new();
        let mut assigned = Vec::with_capacity(self.flags.len());
        for key in &self.flags {
            let Some(flag) = index.get(key) else { continue };
            let Ok(resolution) = cutover_flags::evaluate(flag, &context) else {
                continue;
            };
            if !value.is_empty() {
                value.push_str(", ");
            }
            value.push_str(key);
            value.push('=');
            value.push_str(resolution.variant);
            assigned.push(self.traffic.metrics(key, resolution.variant));
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            if !value.is_empty() {
                headers.insert(self.header.clone(), v);
            }
        }
        Assigned(assigned)
    }
}

impl Assigned {
    /// Records the answer the user got, in every variant the request was given.
    pub(crate) fn record(&self, status: u16, latency: Duration, user: u64) {
        for m in &self.0 {
            m.record(status, latency, user);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug)]
    struct Fixed(Arc<FlagIndex>);

    impl FlagSource for Fixed {
        fn index(&self) -> Arc<FlagIndex> {
            Arc::clone(&self.0)
        }
    }

    fn flag(key: &str, on_bp: u32) -> cutover_flags::Flag {
        serde_json::from_value(serde_json::json!({
            "key": key, "type": "boolean", "variants": { "on": true, "off": false },
            "default_variant": "off", "owner": "t", "description": "d", "expires": "2030-01-01",
            "split": [{ "variant": "on", "weight": on_bp }, { "variant": "off", "weight": 10_000 - on_bp }],
        }))
        .unwrap()
    }

    #[test]
    fn variants_go_in_one_header_and_a_client_copy_is_removed() {
        let index = FlagIndex::new(1, [flag("a", 10_000), flag("b", 0)]);
        let fwd = FlagForwarding::new(
            Arc::new(Fixed(Arc::new(index))),
            vec!["a".into(), "missing".into(), "b".into()],
            "X-Cutover-Flags",
        );
        let mut headers = HeaderMap::new();
        headers.append("x-cutover-flags", HeaderValue::from_static("a=off"));
        headers.append("x-cutover-flags", HeaderValue::from_static("b=on"));
        let assigned = fwd.assign(&mut headers, "user-1");
        let values: Vec<_> = headers.get_all("x-cutover-flags").iter().collect();
        assert_eq!(values, vec!["a=on, b=off"]);
        assigned.record(200, Duration::from_millis(1), 7);
        let a = fwd.traffic.snapshot("a");
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].0.as_str(), a[0].2.requests_by_class[1]), ("on", 1));
    }

    #[test]
    fn with_nothing_forwarded_a_client_copy_is_still_removed() {
        let fwd = FlagForwarding::new(
            Arc::new(Fixed(Arc::new(FlagIndex::new(0, [])))),
            Vec::new(),
            "x-cutover-flags",
        );
        let mut headers = HeaderMap::new();
        headers.append("x-cutover-flags", HeaderValue::from_static("a=on"));
        fwd.assign(&mut headers, "u");
        assert!(headers.get("x-cutover-flags").is_none());
    }
}
