#!/usr/bin/env bash
# End-to-end benchmark of the judge with real processes: `cutover serve` (built-in proxy, local
# process platform), the bundled example app as every release, a sticky load generator and, in
# one scenario, a hostile client. Where bench/judge.sh replays simulated rollouts, this one deploys
# real releases with real faults and measures what the rollout decided and what users saw.
#
# Usage:
#   bench/judge-e2e.sh                              every scenario, 3 runs each (~15-20 min)
#   BENCH_RUNS=5 bench/judge-e2e.sh                 more runs per scenario
#   BENCH_SCENARIOS="healthy errors-5pct" bench/judge-e2e.sh
#   BENCH_SKIP_BUILD=1 bench/judge-e2e.sh           use the existing target/release/cutover
#   BENCH_KEEP_TMP=1 bench/judge-e2e.sh             keep the temp dir (config, state, logs)
#
# Scenarios (canary = the new version's example-app flags, baseline = the live version's):
#   healthy                 baseline -                               canary -
#   healthy-noisy           baseline --error-rate 0.01               canary --error-rate 0.01
#                           and 2 % of user requests ask for a missing page (404 on both versions)
#   errors-5pct             baseline -                               canary --error-rate 0.05
#   tail-latency            baseline -                               canary --slow-rate 0.02 --slow-ms 300
#   p99-doubled-fast        baseline --latency-ms 5 --latency-jitter-ms 5
#                           canary   --latency-ms 10 --latency-jitter-ms 10   (5-10 ms -> 10-20 ms)
#   canary-crash            baseline -                               canary --crash-after-secs 8
#                           (every canary instance exits, code 3, 8 s after its start: in step 2)
#   incompatible-sessions   baseline -                               canary --reject-old-sessions
#                           (every user logs in on the baseline first, then reads /api/me)
#   client-fault-attack     healthy canary; meanwhile a hostile client sends ~8 broken uploads/s
#                           to POST /echo over raw sockets: an invalid chunk size, a body aborted
#                           mid-way, a body that stalls until the proxy's response timeout (5 s).
#                           By default it finds X-User-ID keys sticky to the canary and uses them
#                           (one broken client with a sticky key); BENCH_ATTACK_TARGET=random
#                           spreads it by weight instead.
#   low-healthy             app bench-low at 5 req/s, baseline -     canary -
#   low-faulty              app bench-low at 5 req/s, baseline -     canary --error-rate 0.05
# Faulty: errors-5pct, tail-latency, p99-doubled-fast, canary-crash, incompatible-sessions,
# low-faulty (expected: rolled back). The others are healthy (expected: promoted).
#
# Rollout policies (two apps on one `cutover serve`, so each traffic level has its own policy):
#   bench      (200 req/s): steps 5 % / 25 % / 50 % of 5 s each, then 100 %; 1 s analysis
#              windows; min_requests 5; min_step_requests 50 and max_step_extension_ms 20000;
#              about 20-25 s per run.
#   bench-low  (5 req/s):   a 5 % step would see one request every 4 s, so this app starts at
#              25 %: steps 25 % / 50 % of 20 s each, then 100 %; 4 s windows; min_requests 4;
#              min_step_requests 150 and max_step_extension_ms 240000; about 2-4 min per run.
#   Both: sequential judge, alpha 0.005, failure_limit 1, client_errors = true and
#   ignore_status = [], rollback window 3 s, retry_canary_failures on (the default).
#
# Each run: make a version with the scenario's baseline flags live if the live one has other
# flags (deployed through the admin API, promoted by hand once its smoke checks pass, before any
# load); start the load (N sticky users, X-User-ID keys fresh per run so each run has its own
# canary users; logged in first where the scenario needs sessions); 2 s warm-up (5 s at low
# traffic); `cutover deploy APP VERSION --cmd '<example-app ...> <canary flags>'`, followed to its
# end (a paused rollout, or none decided within the deploy timeout, is aborted by the driver and
# counted as such); 1 s to settle; stop the load.
#
# Measured per run:
#   outcome            the rollout's first decision event: promoted / rolled_back / paused /
#                      aborted / failed (timeout when there was none); the CLI's exit code is
#                      recorded beside it (0 promoted, 10 rolled back, 11 aborted, 12 failed,
#                      13 paused, 14 timed out).
#   decision s         first user request answered by the new version (the example app's
#                      x-app-version header) to the decision event's timestamp; and the server's
#                      own first_canary_request_to_decision_ms when the rollout reports it.
#   failed %           user requests sent during the deploy (deploy command start to end) that got
#                      no answer or a status outside 2xx/3xx.
# Targets (exit 1 when one is missed): every faulty scenario rolled back in every run, in < 30 s
# from the first canary request at 200 req/s; no healthy scenario rolled back; < 0.1 % of user
# requests failed in every run of each faulty scenario at 200 req/s (BENCH_STRICT_LOW=1 applies
# it at 5 req/s too, where the judge cannot see a fault without users meeting it); zero failed
# user requests in canary-crash. Exit 2: the benchmark itself could not run.
#
# Output: progress on stderr; on stdout the table, the target checks and, last, one JSON line
# with every figure and every run (`bench/judge-e2e.sh | tail -n1 | jq .`).
#
# Layout (2-core reference machine): core 0 runs `cutover serve` (`taskset -c 0`) and, inherited
# from it, every example-app instance the local platform starts (one tokio worker each); core 1
# runs the driver (`taskset -c 1`): the load generator's threads, the hostile client and the
# `cutover deploy` commands it starts. Without taskset, or with one CPU, nothing is pinned.
# All traffic goes to 127.0.0.1; every loop is bounded in count and time; the EXIT trap stops
# everything started here, including app instances (found by their session-store path, unique to
# this run's temp dir), even if cutover itself died.
#
# Knobs (defaults): BENCH_RUNS (3), BENCH_SCENARIOS (all), BENCH_USERS (1000), BENCH_RATE (200),
# BENCH_LOW_RATE (5), BENCH_INSTANCES (2 per slot), BENCH_STEP_MS (5000), BENCH_LOW_STEP_MS
# (20000), BENCH_DEPLOY_TIMEOUT (120 s), BENCH_LOW_DEPLOY_TIMEOUT (420 s),
# BENCH_CRASH_AFTER_SECS (0: 1 s + 1.5 steps, i.e. 8 s with 5 s steps), BENCH_LOW_FAULT
# ("--error-rate 0.05"), BENCH_ATTACK_RATE (8), BENCH_ATTACK_TARGET (canary),
# BENCH_RESPONSE_TIMEOUT_MS (5000), BENCH_STRICT_LOW (0), BENCH_SKIP_BUILD (0), BENCH_KEEP_TMP (0),
# BENCH_RETRY_CANARY_FAILURES (1; 0 turns the live slot's answer to safe requests the canary
# failed off, to measure what the judge alone leaves users to see).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

E2E="$BENCH_DIR/judge_e2e.py"
RUNS="${BENCH_RUNS:-3}"
INSTANCES="${BENCH_INSTANCES:-2}"
STEP_MS="${BENCH_STEP_MS:-5000}"
LOW_STEP_MS="${BENCH_LOW_STEP_MS:-20000}"
RESPONSE_TIMEOUT_MS="${BENCH_RESPONSE_TIMEOUT_MS:-5000}"

bench_require_tools python3
if [[ ${BENCH_SKIP_BUILD:-0} == 1 && -x $CUTOVER_BIN ]]; then
    bench_log "using the existing $CUTOVER_BIN"
else
    bench_require_tools cargo
    bench_log "cargo build --release -p cutover"
    (cd "$BENCH_ROOT" && cargo build --release -p cutover)
fi
[[ -x $CUTOVER_BIN ]] || bench_die "$CUTOVER_BIN missing after the build"

bench_init
# Besides what lib.sh tracks: example-app instances started by cutover's local platform, which
# outlive `cutover serve` by design. Their command line names this run's session store.
judge_e2e_cleanup() {
    local rc=$? pid
    set +e
    if [[ -n $BENCH_TMP ]]; then
        while read -r pid; do
            [[ -n $pid ]] && BENCH_PIDS+=("$pid")
        done < <(python3 "$E2E" pids-with-arg "$BENCH_TMP/sessions-" 2>/dev/null)
    fi
    (exit "$rc")
    bench_cleanup
}
trap judge_e2e_cleanup EXIT

# Pinning: cutover (and the instances it starts) on core 0, the driver and load on core 1.
PIN_SERVE=()
PIN_DRIVER=()
PINNED="none"
if command -v taskset >/dev/null 2>&1 && (($(nproc 2>/dev/null || echo 1) >= 2)); then
    PIN_SERVE=(taskset -c 0)
    PIN_DRIVER=(taskset -c 1)
    PINNED="cutover+instances:0,driver+load:1"
else
    bench_log "taskset missing or one CPU only: nothing is pinned"
fi

CUTOVER_ADMIN_TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export CUTOVER_ADMIN_TOKEN

CONFIG="$BENCH_TMP/cutover.toml"
config_args=(--bin "$CUTOVER_BIN" --dir "$BENCH_TMP" --instances "$INSTANCES"
    --step-ms "$STEP_MS" --low-step-ms "$LOW_STEP_MS" --response-timeout-ms "$RESPONSE_TIMEOUT_MS")
config_info="$(python3 "$E2E" write-config "${config_args[@]}" --out "$CONFIG")" ||
    bench_die "could not write a config this cutover accepts (see above)"
dropped="$(printf '%s' "$config_info" | python3 "$BENCH_HELPERS" json-get - dropped_options)"
bench_log "config $CONFIG (options left out: $dropped)"

# `cutover deploy --timeout SECS` (exit 14) is new; use it when this binary has it.
deploy_timeout_flag=0
if "$CUTOVER_BIN" deploy --help 2>/dev/null | grep -q -- '--timeout'; then
    deploy_timeout_flag=1
fi

bench_spawn serve env CUTOVER_LOG="${CUTOVER_LOG:-warn}" "${PIN_SERVE[@]}" \
    "$CUTOVER_BIN" serve --config "$CONFIG"
SERVE_PID=$BENCH_LAST_PID
ready=""
deadline=$(($(bench_now_ms) + 20000))
while (($(bench_now_ms) < deadline)); do
    if ready="$(python3 "$BENCH_HELPERS" ready-line "$BENCH_TMP/serve.out")"; then
        break
    fi
    ready=""
    bench_alive "$SERVE_PID" || break
    sleep 0.1
done
[[ -n $ready ]] || bench_fail_with_log serve "cutover serve did not print its ready line"
ADMIN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.admin)"
FAST_LISTEN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench.listen)"
LOW_LISTEN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench-low.listen)"
bench_log "cutover serve pid $SERVE_PID: admin $ADMIN, bench on $FAST_LISTEN, bench-low on $LOW_LISTEN ($PINNED)"

bench_check_idle

strict_low=()
if [[ ${BENCH_STRICT_LOW:-0} == 1 ]]; then
    strict_low=(--strict-low)
fi
low_fault="${BENCH_LOW_FAULT:-"--error-rate 0.05"}"

# In the background and waited for, so a TERM or Ctrl-C reaches the trap at once.
"${PIN_DRIVER[@]}" python3 "$E2E" run "${config_args[@]}" \
    --admin "$ADMIN" --fast-listen "$FAST_LISTEN" --low-listen "$LOW_LISTEN" \
    --runs "$RUNS" --scenarios "${BENCH_SCENARIOS:-}" \
    --users "${BENCH_USERS:-1000}" --rate "${BENCH_RATE:-200}" --low-rate "${BENCH_LOW_RATE:-5}" \
    --deploy-timeout "${BENCH_DEPLOY_TIMEOUT:-120}" \
    --low-deploy-timeout "${BENCH_LOW_DEPLOY_TIMEOUT:-420}" \
    --crash-after-secs "${BENCH_CRASH_AFTER_SECS:-0}" \
    --low-fault-flags="$low_fault" \
    --attack-rate "${BENCH_ATTACK_RATE:-8}" --attack-target "${BENCH_ATTACK_TARGET:-canary}" \
    --deploy-timeout-flag "$deploy_timeout_flag" --dropped-options "$dropped" \
    --pinned "$PINNED" --cpu-idle-before "$BENCH_CPU_IDLE" "${strict_low[@]}" &
DRIVER_PID=$!
BENCH_PIDS+=("$DRIVER_PID")
rc=0
wait "$DRIVER_PID" || rc=$?
if ! bench_alive "$SERVE_PID"; then
    bench_log "cutover serve is no longer running; last lines of its log:"
    tail -n 20 "$BENCH_TMP/serve.err" >&2 || true
    ((rc == 0)) && rc=2
fi
exit "$rc"
