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
seq = {s: r for (s, j), r in res.items() if j == "sequential"}
seq5 = seq["errors-5pct"]
healthy = [r for s, r in seq.items() if s.startswith("healthy")]
alpha = 0.005  # the sequential judge's default
# Faulty scenarios the judge must catch within 30 s at 200 req/s in >= 95 % of runs.
fast_faults = ["errors-5pct", "latency-doubled-fast", "latency-doubled-slow", "401-sessions-rejected"]
checks = []
for name in fast_faults:
    r = seq[name]
    checks.append((f"{name}: rolled back within 30 s in >= 95 % of runs", r["detected_within_30s"] >= 0.95,
                   f"{r['detected_within_30s']*100:.1f} %"))
for r in healthy:
    checks.append((f"{r['scenario']}: false rollbacks <= alpha ({alpha*100:.1f} %)", r["rollback_rate"] <= alpha,
                   f"{r['rollback_rate']*100:.2f} %"))
low_ok = seq["healthy-low-traffic"]
low_bad = seq["errors-5pct-low-traffic"]
promoted_low = 1.0 - low_ok["rollback_rate"] - low_ok["paused_rate"]
checks.append(("healthy-low-traffic: promoted in >= 95 % of runs (never rolled back)",
               promoted_low >= 0.95 and low_ok["rollback_rate"] <= alpha, f"{promoted_low*100:.1f} % promoted"))
checks.append(("errors-5pct-low-traffic: never promoted, rolled back in >= 90 % of runs",
               low_bad["rollback_rate"] >= 0.9 and low_bad["rollback_rate"] + low_bad["paused_rate"] >= 0.999,
               f"{low_bad['rollback_rate']*100:.1f} % rolled back, {low_bad['paused_rate']*100:.1f} % paused"))
print()
for what, good, got in checks:
    print(f"target: {what}: {got} {'ok' if good else 'MISSED'}")
ok = all(good for _, good, _ in checks)
targets = {what: {"ok": good, "got": got} for what, good, got in checks}
print("targets met" if ok else "TARGETS MISSED")
out = {"bench": "judge", "date": datetime.date.today().isoformat(), "runs": data["runs"], "seed": data["seed"],
       "targets": targets, "targets_met": ok, "results": data["results"]}
print(json.dumps(out, separators=(",", ":")))
sys.exit(0 if ok else 1)
PY
