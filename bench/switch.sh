#!/usr/bin/env bash
# Zero-downtime check under load: wrk keeps 64 keep-alive connections busy through cutover while
# the admin API flips canary_weight_bp between 0 and 10000 (all traffic to blue, then all to
# green, ...) BENCH_SWITCHES times. Any non-2xx response, socket error or failed admin call fails
# the run (exit 1).
#
#   bench/switch.sh
#   BENCH_SWITCHES=200 BENCH_SWITCH_DURATION=10s bench/switch.sh
#
# Timing: wrk only prints its summary when its duration ends, so wrk runs for a fixed
# BENCH_SWITCH_DURATION (20s) and the switcher is made to finish inside it: it starts once
# requests flow, spreads the switches evenly over DURATION - 5 s (BENCH_SWITCH_SPREAD=0: back to
# back, as fast as the admin API answers) and gives up at DURATION - 2 s after wrk started; a
# switch not made by then counts as failed. So every switch happens under load, and wrk's
# summary covers all of them.
#
# Core budget (2 cores): two example apps with BENCH_BACKEND_THREADS=1 worker each, cutover with
# BENCH_PROXY_THREADS=1 tokio worker, wrk with 1 thread and the python switcher: oversubscribed
# on purpose; this measures correctness under contention, not speed.
#
# Environment: BENCH_SWITCHES (1000), BENCH_SWITCH_DURATION (20s), BENCH_SWITCH_SPREAD (1),
# BENCH_CONNECTIONS (64), BENCH_PROXY_THREADS, BENCH_BACKEND_THREADS, BENCH_WRK_THREADS,
# BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1.
#
# The last line of stdout is one JSON object.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SWITCHES="${BENCH_SWITCHES:-1000}"
DURATION="${BENCH_SWITCH_DURATION:-20s}"
SPREAD="${BENCH_SWITCH_SPREAD:-1}"

bench_require_tools wrk python3 curl cargo
bench_init
bench_build
bench_check_idle
DURATION_S="$(bench_duration_s "$DURATION")"
DURATION_MS="$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 1000))' "$DURATION_S")"
((DURATION_MS >= 8000)) || bench_die "BENCH_SWITCH_DURATION must be at least 8s"
((SWITCHES > 0 && SWITCHES <= 100000)) || bench_die "BENCH_SWITCHES must be in 1..100000"

bench_start_app app-v1 v1
V1_PORT=$BENCH_APP_PORT
bench_start_app app-v2 v2
V2_PORT=$BENCH_APP_PORT

bench_start_cutover cutover "$(
    cat <<EOF
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "bench"
listen = "127.0.0.1:0"

[app.proxy.health_check]
interval_ms = 1000

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = { version = "v1", backends = ["127.0.0.1:$V1_PORT"] }
green = { version = "v2", backends = ["127.0.0.1:$V2_PORT"] }
EOF
)"
URL="http://$BENCH_CUTOVER_LISTEN/"
ADMIN="$BENCH_CUTOVER_ADMIN"
bench_wait_http_ok "$URL" 15 || bench_die "GET $URL does not answer 2xx"

# Total requests counted by cutover for the app so far (both slots).
cutover_requests() {
    curl -fsS --max-time 2 "http://$ADMIN/v1/apps/bench/metrics" |
        python3 -c 'import json, sys; print(sum(s["metrics"]["requests"] for s in json.load(sys.stdin)))'
}

BASELINE="$(cutover_requests)"
bench_log "wrk -t$BENCH_WRK_THREADS -c$BENCH_CONNECTIONS -d$DURATION --latency $URL (in the background)"
bench_cpu_mark run
WRK_START_MS="$(bench_now_ms)"
bench_spawn wrk wrk -t"$BENCH_WRK_THREADS" -c"$BENCH_CONNECTIONS" -d"$DURATION" --latency "$URL"
WRK_PID=$BENCH_LAST_PID

# Bounded poll until wrk's requests show up in cutover's counters.
deadline=$(($(bench_now_ms) + 5000))
until (($(cutover_requests) > BASELINE + 100)); do
    bench_alive "$WRK_PID" || bench_fail_with_log wrk "wrk exited early"
    (($(bench_now_ms) < deadline)) || bench_die "no traffic through cutover 5 s after starting wrk"
    sleep 0.05
done

elapsed_ms=$(($(bench_now_ms) - WRK_START_MS))
SW_DEADLINE_S="$(python3 -c 'import sys; print((int(sys.argv[1]) - 2000 - int(sys.argv[2])) / 1000)' "$DURATION_MS" "$elapsed_ms")"
if [[ $SPREAD == 1 ]]; then
    SW_WINDOW_S="$(python3 -c 'import sys; print(max(0.0, (int(sys.argv[1]) - 5000 - int(sys.argv[2])) / 1000))' "$DURATION_MS" "$elapsed_ms")"
else
    SW_WINDOW_S=0
fi
bench_log "switcher: $SWITCHES flips of canary_weight_bp 0 <-> 10000 over ${SW_WINDOW_S}s (deadline ${SW_DEADLINE_S}s)"
CUTOVER_ADMIN_TOKEN="$BENCH_ADMIN_TOKEN" python3 "$BENCH_HELPERS" switcher --admin "$ADMIN" \
    --app bench --switches "$SWITCHES" --window "$SW_WINDOW_S" --deadline "$SW_DEADLINE_S" \
    >"$BENCH_TMP/switcher.json" || bench_die "the switcher could not run: $(cat "$BENCH_TMP/switcher.json")"
bench_log "switcher: $(cat "$BENCH_TMP/switcher.json")"

WRK_ENDED_EARLY=()
if ! bench_alive "$WRK_PID"; then
    WRK_ENDED_EARLY=(--wrk-end-before-switches-done)
fi

# Bounded wait for wrk's own end.
deadline=$((WRK_START_MS + DURATION_MS + 15000))
while bench_alive "$WRK_PID"; do
    (($(bench_now_ms) < deadline)) || bench_die "wrk did not finish 15 s after its duration"
    sleep 0.1
done
wrk_rc=0
wait "$WRK_PID" || wrk_rc=$?
((wrk_rc == 0)) || bench_fail_with_log wrk "wrk exited with status $wrk_rc"
sed 's/^/    /' "$BENCH_TMP/wrk.out" >&2

curl -fsS --max-time 2 "http://$ADMIN/v1/apps/bench/metrics" >"$BENCH_TMP/metrics.json"
bench_alive "$BENCH_CUTOVER_PID" || bench_die "cutover died during the run"

bench_cpu_foreign run
rc=0
python3 "$BENCH_HELPERS" report-switch --wrk "$BENCH_TMP/wrk.out" \
    --switcher "$BENCH_TMP/switcher.json" --metrics "$BENCH_TMP/metrics.json" \
    --duration-s "$DURATION_S" --connections "$BENCH_CONNECTIONS" --cpu-idle-before "$BENCH_CPU_IDLE" \
    --foreign-cpu "$BENCH_FOREIGN_CPU" "${WRK_ENDED_EARLY[@]}" || rc=$?
exit "$rc"
