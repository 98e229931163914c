#!/usr/bin/env bash
# Judgement benchmark: the threshold judge and the sequential judge side by side over seeded,
# simulated rollouts (the real engine and judge on simulated time; no network).
#
#   bench/judge.sh                 1000 runs per scenario and judge
#   BENCH_RUNS=5000 bench/judge.sh
#
# Prints a table, then checks the targets of the sequential judge, and ends with one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${BENCH_RUNS:-1000}"
seed="${BENCH_SEED:-1}"
cargo build --release --quiet -p cutover
bin=target/release/cutover

"$bin" simulate --runs "$runs" --seed "$seed"
json=$("$bin" simulate --runs "$runs" --seed "$seed" --json)

python3 - "$json" <<'PY'
import json, sys, datetime
data = json.loads(sys.argv[1])
res = {(r["scenario"], r["judge"]): r for r in data["results"]}
seq5 = res[("errors-5pct", "sequential")]
healthy = [r for (s, j), r in res.items() if j == "sequential" and s.startswith("healthy")]
targets = {
    "errors_5pct_detected_within_30s": seq5["detected_within_30s"],
    "errors_5pct_target": 0.95,
    "healthy_false_rollback_max": max(r["rollback_rate"] for r in healthy),
    "healthy_false_rollback_target": 0.01,
}
ok = targets["errors_5pct_detected_within_30s"] >= 0.95 and targets["healthy_false_rollback_max"] < 0.01
print()
print(f"target: 5 % errors detected within 30 s in >= 95 % of runs: {seq5['detected_within_30s']*100:.1f} %")
print(f"target: false rollbacks of healthy canaries < 1 %: worst {targets['healthy_false_rollback_max']*100:.2f} %")
print("targets met" if ok else "TARGETS MISSED")
out = {"bench": "judge", "date": datetime.date.today().isoformat(), "runs": data["runs"], "seed": data["seed"],
       "targets": targets, "targets_met": ok, "results": data["results"]}
print(json.dumps(out, separators=(",", ":")))
sys.exit(0 if ok else 1)
PY
