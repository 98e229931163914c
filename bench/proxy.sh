#!/usr/bin/env bash
# Throughput and tail latency of cutover next to nginx and HAProxy, all in front of the same
# example-app process, plus the app alone as the ceiling.
#
#   bench/proxy.sh                              # 10 s per target, 1 worker per proxy
#   BENCH_DURATION=30s BENCH_PROXY_THREADS=2 bench/proxy.sh
#
# Core budget (the reference machine has 2 cores): the backend gets BENCH_BACKEND_THREADS=1 tokio
# worker, each proxy BENCH_PROXY_THREADS=1 worker (cutover: TOKIO_WORKER_THREADS, nginx:
# worker_processes, HAProxy: nbthread) and wrk BENCH_WRK_THREADS=1 thread. Through a proxy that
# is 3 busy threads on 2 cores, so every proxied figure includes the same contention; the direct
# figure has 2 busy threads. Only one target is loaded at a time; the others sit idle.
#
# Environment: BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_CONNECTIONS (64),
# BENCH_PROXY_THREADS (1), BENCH_BACKEND_THREADS (1), BENCH_WRK_THREADS (1),
# BENCH_IDLE_CONNS (1000; 0 skips the idle-connection memory probe), BENCH_TARGETS
# ("direct cutover nginx haproxy"), BENCH_COOKIE (unset; e.g. "cutover_bucket=u1" makes wrk send
# that Cookie header to every target, so cutover reads a returning user's bucket instead of
# minting a key and a Set-Cookie for each request), BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1.
#
# The last line of stdout is one JSON object with every figure.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-1000}"
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct cutover nginx haproxy h1floor}"

bench_require_tools wrk nginx haproxy python3 curl cargo
bench_init
bench_build
bench_check_idle
bench_cpu_mark run
DURATION_S="$(bench_duration_s "$DURATION")"
bench_duration_s "$WARMUP" >/dev/null

bench_start_app app v1
BACKEND_PORT=$BENCH_APP_PORT

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
blue = { version = "v1", backends = ["127.0.0.1:$BACKEND_PORT"] }
green = { version = "", backends = [] }
EOF
)"
bench_start_nginx "$BACKEND_PORT"
bench_start_haproxy "$BACKEND_PORT"
H1FLOOR_PORT=""
H1FLOOR_PID=""
if [[ " ${TARGETS[*]} " == *" h1floor "* ]]; then
    H1FLOOR_BIN="$BENCH_DIR/h1-floor/target/release/h1-floor"
    if [[ ${BENCH_SKIP_BUILD:-0} != 1 || ! -x $H1FLOOR_BIN ]]; then
        bench_log "cargo build --release --manifest-path bench/h1-floor/Cargo.toml"
        cargo build --release --manifest-path "$BENCH_DIR/h1-floor/Cargo.toml" >&2
    fi
    H1FLOOR_PORT="$(bench_free_port)"
    bench_spawn h1floor env TOKIO_WORKER_THREADS="$BENCH_PROXY_THREADS" "$H1FLOOR_BIN" \
        "127.0.0.1:$H1FLOOR_PORT" "127.0.0.1:$BACKEND_PORT"
    H1FLOOR_PID=$BENCH_LAST_PID
    bench_wait_port "$H1FLOOR_PORT" "$H1FLOOR_PID" 10 || bench_fail_with_log h1floor "h1-floor does not accept connections"
fi

declare -A URL=(
    [direct]="http://127.0.0.1:$BACKEND_PORT/"
    [cutover]="http://$BENCH_CUTOVER_LISTEN/"
    [nginx]="http://127.0.0.1:$BENCH_NGINX_PORT/"
    [haproxy]="http://127.0.0.1:$BENCH_HAPROXY_PORT/"
)
[[ -z $H1FLOOR_PORT ]] || URL[h1floor]="http://127.0.0.1:$H1FLOOR_PORT/"
declare -A PID=(
    [direct]=$BENCH_APP_PID
    [cutover]=$BENCH_CUTOVER_PID
    [nginx]=$BENCH_NGINX_PID
    [haproxy]=$BENCH_HAPROXY_PID
)
[[ -z $H1FLOOR_PID ]] || PID[h1floor]=$H1FLOOR_PID

for t in "${TARGETS[@]}"; do
    [[ -n ${URL[$t]:-} ]] || bench_die "unknown target $t (known: ${!URL[*]})"
    bench_wait_http_ok "${URL[$t]}" 15 || bench_die "$t: GET ${URL[$t]} does not answer 2xx"
done

# Memory per idle keep-alive connection: RSS of the proxy's process tree (nginx: master and
# workers) before and after IDLE_CONNS connections that each carried one request and then sit
# idle. Measured before the load runs, on freshly started processes. Rough: allocator behaviour
# and page granularity make it a ballpark figure, not an exact cost.
IDLE_ARGS=()
if ((IDLE_CONNS > 0)); then
    for t in "${TARGETS[@]}"; do
        [[ $t != direct ]] || continue
        port="${URL[$t]##*:}"
        port="${port%/}"
        out="$BENCH_TMP/idle-$t.json"
        if python3 "$BENCH_HELPERS" idle-conns --port "$port" --pid "${PID[$t]}" \
            --count "$IDLE_CONNS" --timeout 60 >"$out"; then
            bench_log "$t idle connections: $(cat "$out")"
        else
            bench_log "$t idle connections: not all $IDLE_CONNS connections got a response: $(cat "$out")"
        fi
        IDLE_ARGS+=(--idle "$t=$out")
    done
fi

WRK_EXTRA=()
if [[ -n ${BENCH_COOKIE:-} ]]; then
    WRK_EXTRA=(-H "Cookie: $BENCH_COOKIE")
fi

REPORT_ARGS=()
for t in "${TARGETS[@]}"; do
    bench_log "$t: warm-up $WARMUP"
    wrk -t"$BENCH_WRK_THREADS" -c"$BENCH_CONNECTIONS" -d"$WARMUP" "${WRK_EXTRA[@]}" "${URL[$t]}" >"$BENCH_TMP/warmup-$t.txt"
    bench_log "$t: wrk -t$BENCH_WRK_THREADS -c$BENCH_CONNECTIONS -d$DURATION --latency ${WRK_EXTRA[*]} ${URL[$t]}"
    bench_cpu_mark "$t"
    cpu_before="$(python3 "$BENCH_HELPERS" cpu-jiffies "${PID[$t]}")"
    wrk -t"$BENCH_WRK_THREADS" -c"$BENCH_CONNECTIONS" -d"$DURATION" --latency "${WRK_EXTRA[@]}" "${URL[$t]}" \
        >"$BENCH_TMP/wrk-$t.txt"
    cpu_after="$(python3 "$BENCH_HELPERS" cpu-jiffies "${PID[$t]}")"
    bench_cpu_foreign "$t"
    REPORT_ARGS+=(--target-cpu "$t=$((cpu_after - cpu_before))")
    REPORT_ARGS+=(--target-foreign-cpu "$t=$BENCH_FOREIGN_CPU")
    sed 's/^/    /' "$BENCH_TMP/wrk-$t.txt" >&2
    for p in "${PID[@]}"; do
        bench_alive "$p" || bench_die "a target process (pid $p) died during the $t run"
    done
    REPORT_ARGS+=(--target "$t=$BENCH_TMP/wrk-$t.txt")
done

bench_cpu_foreign run
python3 "$BENCH_HELPERS" report-proxy "${REPORT_ARGS[@]}" "${IDLE_ARGS[@]}" \
    --duration-s "$DURATION_S" --connections "$BENCH_CONNECTIONS" \
    --proxy-threads "$BENCH_PROXY_THREADS" --backend-threads "$BENCH_BACKEND_THREADS" \
    --wrk-threads "$BENCH_WRK_THREADS" --cpu-idle-before "$BENCH_CPU_IDLE" \
    --cookie "${BENCH_COOKIE:-}" --foreign-cpu "$BENCH_FOREIGN_CPU"
