#![allow(clippy::expect_used)] // a benchmark of fixed, valid flags
//! Local evaluation of one flag (the target: under 1 µs), next to its anchor measured in the same
//! run: the MurmurHash3 of flag key and targeting key that every split evaluation needs (the
//! floor of any flagd-compatible evaluation).
//!
//!     cargo bench -p cutover-flags --bench eval
//!
//! Pin it for stable figures: `taskset -c 1 cargo bench -p cutover-flags --bench eval`. After
//! Criterion's own report, a table gives each case as nanoseconds and as a ratio to the anchor
//! (median of 7 timed loops of 200 000 evaluations each).

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use cutover_flags::{evaluate, Flag};
use serde_json::{json, Map, Value};

fn flag(extra: Value) -> Flag {
    let mut f = json!({
        "key": "new-checkout-flow", "type": "boolean", "variants": { "on": true, "off": false },
        "default_variant": "off", "owner": "bench", "description": "bench", "expires": "2099-01-01",
        "split": [{ "variant": "on", "weight": 2500 }, { "variant": "off", "weight": 7500 }],
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        f[k] = v.clone();
    }
    serde_json::from_value(f).expect("a valid flag")
}

fn context() -> Map<String, Value> {
    json!({ "targetingKey": "user-4711-a8f3", "plan": "pro", "country": "de", "app_version": "2.4.1" })
        .as_object()
        .cloned()
        .unwrap_or_default()
}

type Case = (&'static str, Box<dyn Fn() -> usize>);

fn cases() -> Vec<Case> {
    let ctx = context();
    let split = flag(json!({}));
    let rules = flag(json!({
        "allow": { "variant": "on", "keys": ["tester-1", "tester-2", "tester-3"] },
        "rules": [
            { "when": [{ "attribute": "plan", "op": "in", "value": ["enterprise", "team"] }], "variant": "on" },
            { "when": [{ "attribute": "app_version", "op": "semver_ge", "value": "3.0.0" }], "variant": "on" },
            { "when": [{ "attribute": "country", "op": "equals", "value": "fr" }], "variant": "off" },
        ],
    }));
    let killed = flag(json!({ "enabled": false }));
    // 100 flags like bench/flags.py's, answered as a bulk OFREP evaluation (JSON body in and out).
    let index = cutover_flags::ofrep::FlagIndex::new(
        1,
        (0..100).map(|i| {
            let mut f = if i % 3 == 0 { rules.clone() } else { split.clone() };
            f.key = format!("flag-{i:03}");
            f
        }),
    );
    let body = serde_json::to_vec(&json!({ "context": context() })).unwrap_or_default();
    let key = split.key.clone();
    let (c1, c2, c3) = (ctx.clone(), ctx.clone(), ctx);
    vec![
        (
            "anchor: murmur3(flag key + targeting key)",
            Box::new(move || cutover_flags::bucket::murmur3(key.as_bytes(), b"user-4711-a8f3") as usize),
        ),
        (
            "split (25 % on)",
            Box::new(move || evaluate(&split, &c1).map_or(0, |r| r.variant.len())),
        ),
        (
            "allow list + 3 rules (in, semver, equals) + split",
            Box::new(move || evaluate(&rules, &c2).map_or(0, |r| r.variant.len())),
        ),
        (
            "killed",
            Box::new(move || evaluate(&killed, &c3).map_or(0, |r| r.variant.len())),
        ),
        (
            "OFREP bulk answer of 100 flags (parse, evaluate, JSON)",
            Box::new(move || {
                let reply = cutover_flags::ofrep::evaluate_all(&index, &body, None, Some("/ofrep/v1/events"));
                reply.body.map_or(0, |b| b.len())
            }),
        ),
    ]
}

fn ns_per_call(f: &dyn Fn() -> usize) -> f64 {
    const N: u32 = 200_000;
    let mut loops: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..N {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .collect();
    loops.sort_by(f64::total_cmp);
    loops[loops.len() / 2]
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group("evaluate");
        for (name, f) in cases() {
            group.bench_function(name, |b| b.iter(|| black_box(f())));
        }
        group.finish();
    }
    c.final_summary();
    let cases = cases();
    let anchor = ns_per_call(&*cases[0].1);
    println!("\n{:<50} {:>10} {:>16}", "case", "ns/eval", "x anchor");
    for (name, f) in &cases {
        let ns = ns_per_call(&**f);
        println!("{name:<50} {ns:>10.1} {:>16.1}", ns / anchor);
    }
}
