#!/usr/bin/env bash
# cutover's data plane next to nginx and HAProxy doing the same job, each proxy given exactly one
# core, at 32 to 10 000 connections, small and 1 MiB responses, plaintext, TLS and HTTP/2, plus
# the memory of 10 000 idle connections.
#
#   bench/proxy.sh                      # 3 runs x 8 scenarios x 3 proxies x (2 s + 10 s): ~16 min
#   BENCH_QUICK=1 bench/proxy.sh        # smoke test: 1 run, 1 s + 2 s, 5 scenarios: ~1 min
#   BENCH_SCENARIOS="small-c256 h2-c256" BENCH_RUNS=5 bench/proxy.sh
#
# Layout (2-core reference machine): the proxy under test alone on core 0 (`taskset -c 0`; all
# of nginx's processes, HAProxy, cutover with TOKIO_WORKER_THREADS=1); core 1 runs the load
# generator (wrk -t1 or h2load -t1), the backend (an nginx with one worker: `GET /` answers a
# 58-byte JSON body from `return 200`, `/1m` a 1 MiB file) and this script with its helpers. The
# three proxies run side by side all along; only one is loaded at a time.
#
# Scenarios (BENCH_SCENARIOS, names KIND-cN with N connections; the default is all eight):
#   small-c32 small-c256 small-c1000 small-c10000   wrk, plaintext HTTP/1.1, GET / (58 bytes)
#   1m-c32 1m-c256                                  wrk, plaintext HTTP/1.1, GET /1m (1 MiB)
#   tls-c256                                        wrk over https (TLS 1.3, HTTP/1.1), GET /
#   h2-c256                                         h2load -m BENCH_H2_STREAMS (10) over TLS
#                                                   with ALPN h2, GET /
# also accepted: tls1m-cN (wrk, https, /1m) and h2c-cN (h2load, HTTP/2 by prior knowledge on
# plaintext). Every proxy terminates TLS with the same self-signed P-256 certificate.
#
# Interleaved: for each run, for each scenario, each proxy in turn (the order rotates from run to
# run) gets a warm-up (BENCH_WARMUP, unmeasured, its own connections) and a measured run
# (BENCH_DURATION). Per run: req/s (MiB/s for 1 MiB), p50/p99/max latency, non-2xx, socket
# errors, the proxy's CPU time (user + system of its process tree from /proc) per request or per
# MiB, how busy each core was, the upstream connections the proxy opened (the backend's
# stub_status) and the CPU used by processes that are not the benchmark's.
#
# Idle memory, before the load: BENCH_IDLE_CONNS (10000) keep-alive connections, each after one
# GET /, held idle; RSS growth of the proxy's process tree per connection, and its RSS once they
# all closed.
#
# fd limits: 10 000 connections through a proxy need about 20 200 fds in the proxy (clients +
# upstream) and 10 000 in wrk. lib.sh raises the limit when it may (root with CAP_SYS_RESOURCE);
# a scenario that does not fit in the limit is skipped, and says so.
#
# Environment (defaults): BENCH_RUNS (3), BENCH_WARMUP (2s), BENCH_DURATION (10s),
# BENCH_SCENARIOS (above), BENCH_TARGETS ("cutover nginx haproxy"; "h1floor", the hand-written
# HTTP/1.1 floor in bench/h1-floor, may be added: plaintext HTTP/1.1 scenarios only),
# BENCH_IDLE_CONNS (10000; 0 skips the probe), BENCH_QUICK (0), BENCH_PROXY_CPU (0),
# BENCH_LOAD_CPU (1), BENCH_PIN (1), BENCH_PROXY_THREADS (1), BENCH_WRK_THREADS (1; h2load -t
# too), BENCH_H2_STREAMS (10), BENCH_WRK_TIMEOUT (10s), BENCH_UPSTREAM_IDLE (the most requests
# in flight of the scenarios, at least 1024: the idle upstream pool of every proxy),
# BENCH_COOKIE (unset; e.g. "cutover_bucket=u1": a Cookie header on every request),
# BENCH_SKIP_BUILD (0), BENCH_KEEP_TMP (0).
#
# Output: progress on stderr; stdout opens with the layout and versions, then one table per
# scenario (median over the runs and min-max) with the ratios against nginx and HAProxy of each
# run, the idle-memory table, and as its last line one JSON object with every figure and every
# run (`bench/proxy.sh | tail -n1 | jq .`).
set -euo pipefail

BENCH_UPSTREAM_IDLE_SET="${BENCH_UPSTREAM_IDLE:-}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    : "${BENCH_RUNS:=1}" "${BENCH_WARMUP:=1s}" "${BENCH_DURATION:=2s}" "${BENCH_IDLE_CONNS:=1000}"
    : "${BENCH_SCENARIOS:=small-c32 small-c1000 1m-c32 tls-c256 h2-c256}"
fi
RUNS="${BENCH_RUNS:-3}"
WARMUP="${BENCH_WARMUP:-2s}"
DURATION="${BENCH_DURATION:-10s}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-10000}"
H2_STREAMS="${BENCH_H2_STREAMS:-10}"
WRK_TIMEOUT="${BENCH_WRK_TIMEOUT:-10s}"
read -r -a SCENARIOS <<<"${BENCH_SCENARIOS:-small-c32 small-c256 small-c1000 small-c10000 1m-c32 1m-c256 tls-c256 h2-c256}"
read -r -a TARGETS <<<"${BENCH_TARGETS:-cutover nginx haproxy}"
((RUNS >= 1 && RUNS <= 100)) || bench_die "BENCH_RUNS must be in 1..100"
((${#TARGETS[@]} > 0)) || bench_die "BENCH_TARGETS is empty"
for t in "${TARGETS[@]}"; do
    [[ $t == cutover || $t == nginx || $t == haproxy || $t == h1floor ]] ||
        bench_die "unknown target $t (known: cutover nginx haproxy h1floor)"
done
has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

# scenario NAME -> KIND and connection count, checked up front
declare -A SC_KIND=() SC_CONNS=()
NEED_H2LOAD=0
for sc in "${SCENARIOS[@]}"; do
    [[ $sc =~ ^(small|1m|tls|tls1m|h2|h2c)-c([0-9]+)$ ]] ||
        bench_die "unknown scenario $sc (KIND-cN with KIND one of small 1m tls tls1m h2 h2c)"
    SC_KIND[$sc]=${BASH_REMATCH[1]}
    SC_CONNS[$sc]=${BASH_REMATCH[2]}
    ((SC_CONNS[$sc] >= 1)) || bench_die "$sc: at least one connection"
    [[ ${SC_KIND[$sc]} != h2* ]] || NEED_H2LOAD=1
done

tools=(wrk nginx haproxy python3 curl openssl)
((NEED_H2LOAD == 0)) || tools+=(h2load)
bench_require_tools "${tools[@]}"
bench_init
if has_target cutover; then
    bench_build_cutover
fi
bench_pin_layout
WARMUP_S="$(bench_duration_s "$WARMUP")"
DURATION_S="$(bench_duration_s "$DURATION")"
# wrk takes whole seconds
[[ $WARMUP_S =~ ^[1-9][0-9]*$ && $DURATION_S =~ ^[1-9][0-9]*$ ]] ||
    bench_die "BENCH_WARMUP and BENCH_DURATION must be whole seconds, at least 1s (wrk's -d)"

# What fits in the fd limit: a proxy holds every client connection and (cutover: one per request
# in flight) as many upstream ones; h2 has BENCH_H2_STREAMS requests in flight per connection.
RUNNABLE=()
SKIPPED=()
MAX_UP=0
for sc in "${SCENARIOS[@]}"; do
    c=${SC_CONNS[$sc]}
    up=$c
    [[ ${SC_KIND[$sc]} != h2* ]] || up=$((c * H2_STREAMS))
    need=$((c + up + 300))
    if bench_fd_enough "$need"; then
        RUNNABLE+=("$sc")
        ((up <= MAX_UP)) || MAX_UP=$up
    else
        msg="$sc: needs about $need open files per process, the limit is $(ulimit -n) (hard $(ulimit -Hn)); raise it (root: ulimit -Hn 200000, needs CAP_SYS_RESOURCE) to run it"
        bench_log "SKIPPED $msg"
        SKIPPED+=("$msg")
    fi
done
if ((IDLE_CONNS > 0)) && ! bench_fd_enough $((IDLE_CONNS + 300)); then
    msg="idle probe: $IDLE_CONNS connections need about $((IDLE_CONNS + 300)) open files, the limit is $(ulimit -n)"
    bench_log "SKIPPED $msg"
    SKIPPED+=("$msg")
    IDLE_CONNS=0
fi
((${#RUNNABLE[@]} > 0 || IDLE_CONNS > 0)) || bench_die "nothing to run"
# Idle upstream pool of each proxy: room for every request in flight in the largest scenario
# (at least 1024), so no proxy closes and reopens upstream connections because its pool is full.
# The figure "up conns" (upstream connections opened during a measured run) shows it held.
if [[ -z ${BENCH_UPSTREAM_IDLE_SET:-} ]]; then
    BENCH_UPSTREAM_IDLE=$((MAX_UP > 1024 ? MAX_UP : 1024))
fi
# nginx and HAProxy are sized for this many clients (and as many upstream connections)
((IDLE_CONNS <= MAX_UP)) || MAX_UP=$IDLE_CONNS
BENCH_MAX_CLIENTS=$((MAX_UP + 500))

bench_check_idle
bench_cpu_mark run

bench_make_cert
bench_start_backend_nginx
BACKEND="127.0.0.1:$BENCH_BACKEND_PORT"
declare -A PID=() URL=()
# URL[target:kind]; a missing entry means the target does not do that kind
if has_target cutover; then
    tls_routes="$(
        cat <<EOF
[app.proxy]
upstream_max_idle_per_backend = $BENCH_UPSTREAM_IDLE

[app.proxy.health_check]
interval_ms = 1000

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = { version = "v1", backends = ["$BACKEND"] }
green = { version = "", backends = [] }
EOF
    )"
    bench_start_cutover cutover "$(
        cat <<EOF
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "bench"
listen = "127.0.0.1:0"

$tls_routes

[[app]]
name = "bench-tls"
listen = "127.0.0.1:0"

[app.tls]
cert_path = "$BENCH_TLS_CERT"
key_path = "$BENCH_TLS_KEY"

$tls_routes
EOF
    )"
    PID[cutover]=$BENCH_CUTOVER_PID
    tls_listen="$(printf '%s' "$BENCH_CUTOVER_READY" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench-tls.listen)"
    URL[cutover:plain]="http://$BENCH_CUTOVER_LISTEN"
    URL[cutover:tls]="https://$tls_listen"
    URL[cutover:h2c]="http://$BENCH_CUTOVER_LISTEN"
fi
if has_target nginx; then
    bench_start_nginx "$BENCH_BACKEND_PORT"
    PID[nginx]=$BENCH_NGINX_PID
    URL[nginx:plain]="http://127.0.0.1:$BENCH_NGINX_PORT"
    URL[nginx:tls]="https://127.0.0.1:$BENCH_NGINX_TLS_PORT"
    URL[nginx:h2c]="http://127.0.0.1:$BENCH_NGINX_H2C_PORT"
fi
if has_target haproxy; then
    bench_start_haproxy "$BENCH_BACKEND_PORT"
    PID[haproxy]=$BENCH_HAPROXY_PID
    URL[haproxy:plain]="http://127.0.0.1:$BENCH_HAPROXY_PORT"
    URL[haproxy:tls]="https://127.0.0.1:$BENCH_HAPROXY_TLS_PORT"
    URL[haproxy:h2c]="http://127.0.0.1:$BENCH_HAPROXY_PORT"
fi
if has_target h1floor; then
    H1FLOOR_BIN="$BENCH_DIR/h1-floor/target/release/h1-floor"
    if [[ ! -x $H1FLOOR_BIN ]]; then
        [[ ${BENCH_SKIP_BUILD:-0} != 1 ]] || bench_die "BENCH_SKIP_BUILD=1 but $H1FLOOR_BIN is missing"
        bench_log "cargo build --release --manifest-path bench/h1-floor/Cargo.toml"
        cargo build --release --manifest-path "$BENCH_DIR/h1-floor/Cargo.toml" >&2
    fi
    port="$(bench_free_port)"
    bench_spawn h1floor "${BENCH_PIN_PROXY[@]}" env TOKIO_WORKER_THREADS="$BENCH_PROXY_THREADS" \
        "$H1FLOOR_BIN" "127.0.0.1:$port" "$BACKEND"
    PID[h1floor]=$BENCH_LAST_PID
    bench_wait_port "$port" "${PID[h1floor]}" 10 || bench_fail_with_log h1floor "h1-floor does not accept connections"
    URL[h1floor:plain]="http://127.0.0.1:$port"
fi

for t in "${TARGETS[@]}"; do
    bench_wait_http_ok "${URL[$t:plain]}/" 15 || bench_die "$t: GET ${URL[$t:plain]}/ does not answer 2xx"
    if [[ -n ${URL[$t:tls]:-} ]]; then
        curl -fsSk -o /dev/null --max-time 5 "${URL[$t:tls]}/" || bench_die "$t: GET ${URL[$t:tls]}/ does not answer 2xx"
    fi
done

# scenario -> how to load it
url_of() { # TARGET SCENARIO -> URL, or nothing when the target does not do it
    local t="$1" kind="${SC_KIND[$2]}" base=""
    case $kind in
        small | 1m) base="${URL[$t:plain]:-}" ;;
        tls | tls1m | h2) base="${URL[$t:tls]:-}" ;;
        h2c) base="${URL[$t:h2c]:-}" ;;
    esac
    [[ -n $base ]] || return 0
    case $kind in
        1m | tls1m) printf '%s/1m\n' "$base" ;;
        *) printf '%s/\n' "$base" ;;
    esac
}
body_of() { case ${SC_KIND[$1]} in 1m | tls1m) echo 1048576 ;; *) echo "$BENCH_BACKEND_BODY_BYTES" ;; esac }
tool_of() { case ${SC_KIND[$1]} in h2 | h2c) echo h2load ;; *) echo wrk ;; esac }
describe() {
    local sc="$1" c="${SC_CONNS[$1]}"
    case ${SC_KIND[$sc]} in
        small) echo "wrk -t$BENCH_WRK_THREADS -c$c, plaintext HTTP/1.1 keep-alive, GET / ($BENCH_BACKEND_BODY_BYTES-byte body)" ;;
        1m) echo "wrk -t$BENCH_WRK_THREADS -c$c, plaintext HTTP/1.1 keep-alive, GET /1m (1 MiB body)" ;;
        tls) echo "wrk -t$BENCH_WRK_THREADS -c$c, HTTPS (TLS 1.3, HTTP/1.1) keep-alive, GET / ($BENCH_BACKEND_BODY_BYTES-byte body)" ;;
        tls1m) echo "wrk -t$BENCH_WRK_THREADS -c$c, HTTPS (TLS 1.3, HTTP/1.1) keep-alive, GET /1m (1 MiB body)" ;;
        h2) echo "h2load -t$BENCH_WRK_THREADS -c$c -m$H2_STREAMS, HTTP/2 over TLS 1.3 (ALPN h2), GET / ($BENCH_BACKEND_BODY_BYTES-byte body)" ;;
        h2c) echo "h2load -t$BENCH_WRK_THREADS -c$c -m$H2_STREAMS, HTTP/2 by prior knowledge (h2c), GET / ($BENCH_BACKEND_BODY_BYTES-byte body)" ;;
    esac
}

# load TOOL CONNS SECS URL OUT [H2_LOG]: one load run on the load CPU; output (stdout and stderr)
# in OUT. Returns the tool's exit code.
COOKIE_ARGS=()
[[ -z ${BENCH_COOKIE:-} ]] || COOKIE_ARGS=(-H "Cookie: $BENCH_COOKIE")
load() {
    local tool="$1" c="$2" secs="$3" url="$4" out="$5" h2log="${6:-}" rc=0
    local -a cmd
    if [[ $tool == wrk ]]; then
        cmd=(wrk -t"$BENCH_WRK_THREADS" -c"$c" -d"${secs}s" --latency --timeout "$WRK_TIMEOUT"
            "${COOKIE_ARGS[@]}" "$url")
    else
        cmd=(h2load -t"$BENCH_WRK_THREADS" -c"$c" -m"$H2_STREAMS" -D "$secs" "${COOKIE_ARGS[@]}")
        [[ -z $h2log ]] || cmd+=(--log-file="$h2log")
        cmd+=("$url")
    fi
    printf '%s\n' "${cmd[*]}" >"$out.cmd"
    # bounded: h2load waits forever on a server that does not negotiate h2, for one
    "${BENCH_PIN_LOAD[@]}" timeout -k 5 "$((secs + 60))" "${cmd[@]}" >"$out" 2>&1 || rc=$?
    ((rc != 124)) || printf '\n(stopped by the script after %s s)\n' "$((secs + 60))" >>"$out"
    return "$rc"
}

check_alive() {
    local t
    for t in "${!PID[@]}"; do
        bench_alive "${PID[$t]}" || bench_fail_with_log "$t" "$t (pid ${PID[$t]}) died $1"
    done
    bench_alive "$BENCH_BACKEND_PID" || bench_fail_with_log backend "the nginx backend died $1"
}

# ---------------------------------------------------------------------------------------------
# Layout, first on stdout: how these figures were measured.
ver() { "$@" 2>&1 | head -n1 | tr -s ' ' | cut -c1-100 || true; }
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
NGINX_V="$(ver "$(bench_tool nginx)" -v)"
HAPROXY_V="$(ver "$(bench_tool haproxy)" -v)"
WRK_V="$(ver wrk -v)"
H2LOAD_V="$(ver h2load --version)"
OPENSSL_V="$(ver openssl version)"
CUTOVER_V=""
if has_target cutover; then
    CUTOVER_V="$(ver "$CUTOVER_BIN" --version)"
    commit="$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    dirty="$(git -C "$BENCH_ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
    CUTOVER_V="$CUTOVER_V (commit $commit$( ((dirty == 0)) || echo ", $dirty files changed under crates/"))"
fi
TLS_INFO=()
for t in "${TARGETS[@]}"; do
    [[ -n ${URL[$t:tls]:-} ]] || continue
    hostport="${URL[$t:tls]#https://}"
    info="$(openssl s_client -connect "$hostport" -alpn h2,http/1.1 </dev/null 2>/dev/null |
        sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p; s/^ALPN protocol: \(.*\)$/ALPN \1/p' | tr '\n' ' ' || true)"
    TLS_INFO+=("$t: ${info% }")
done
{
    echo "# bench/proxy.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# layout: $BENCH_PIN_TEXT"
    echo "# each proxy: $BENCH_PROXY_THREADS worker (cutover TOKIO_WORKER_THREADS, nginx worker_processes, HAProxy nbthread); idle upstream pool $BENCH_UPSTREAM_IDLE (nginx keepalive, HAProxy pool-max-conn, cutover upstream_max_idle_per_backend)"
    echo "# backend: nginx, 1 worker, GET / -> 200 with a $BENCH_BACKEND_BODY_BYTES-byte JSON body (return), /1m -> 1 MiB file (sendfile)"
    echo "# runs: $RUNS x (warm-up ${WARMUP_S} s + measured ${DURATION_S} s) per scenario and proxy, interleaved, proxy order rotated per run; wrk --timeout $WRK_TIMEOUT"
    echo "# open files limit: $(ulimit -n) (hard $(ulimit -Hn)); fs.nr_open $(cat /proc/sys/fs/nr_open 2>/dev/null || echo '?'); net.core.somaxconn $(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?')"
    echo "# machine: $(nproc --all) CPUs ($CPU_MODEL), kernel $(uname -r), CPUs $BENCH_CPU_IDLE % idle before"
    echo "# versions: $NGINX_V; $HAPROXY_V; $WRK_V; $H2LOAD_V; $OPENSSL_V${CUTOVER_V:+; cutover: $CUTOVER_V}"
    for line in "${TLS_INFO[@]}"; do echo "# TLS $line"; done
    for s in "${SKIPPED[@]}"; do echo "# SKIPPED $s"; done
}

# ---------------------------------------------------------------------------------------------
# Memory per idle keep-alive connection, on the freshly started proxies, before any load.
IDLE_ARGS=()
if ((IDLE_CONNS > 0)); then
    for t in "${TARGETS[@]}"; do
        port="${URL[$t:plain]##*:}"
        out="$BENCH_TMP/idle-$t.json"
        bench_log "$t: $IDLE_CONNS idle keep-alive connections"
        if python3 "$BENCH_HELPERS" idle-conns --port "$port" --pid "${PID[$t]}" \
            --count "$IDLE_CONNS" --timeout 120 --settle 5 >"$out"; then
            bench_log "$t idle connections: $(cat "$out")"
        else
            bench_log "WARNING: $t: not all $IDLE_CONNS connections got a response: $(cat "$out")"
        fi
        IDLE_ARGS+=(--idle "$t=$out")
        check_alive "during the idle-connection probe"
    done
fi

# ---------------------------------------------------------------------------------------------
# The load runs, interleaved.
CORE_ARGS=()
((${#BENCH_PIN_PROXY[@]} == 0)) || CORE_ARGS=(--proxy-cpu "$BENCH_PROXY_CPU" --load-cpu "$BENCH_LOAD_CPU")
RECORDS="$BENCH_TMP/records.jsonl"
: >"$RECORDS"
mkdir -p "$BENCH_TMP/raw"
n=${#TARGETS[@]}
for ((run = 1; run <= RUNS; run++)); do
    for sc in "${RUNNABLE[@]}"; do
        c=${SC_CONNS[$sc]}
        tool="$(tool_of "$sc")"
        body="$(body_of "$sc")"
        order=0
        for ((k = 0; k < n; k++)); do
            t="${TARGETS[((k + run - 1) % n)]}"
            url="$(url_of "$t" "$sc")"
            [[ -n $url ]] || continue
            order=$((order + 1))
            base="$BENCH_TMP/raw/$sc-$t-run$run"
            bench_log "run $run/$RUNS, $sc, $t: warm-up ${WARMUP_S} s"
            load "$tool" "$c" "$WARMUP_S" "$url" "$base.warmup.txt" ||
                bench_log "WARNING: $t: the warm-up exited with an error: $(tail -n 3 "$base.warmup.txt" | tr '\n' ' ')"
            check_alive "in the warm-up of $sc"
            bench_log "run $run/$RUNS, $sc, $t: $(describe "$sc"), ${DURATION_S} s, $url"
            python3 "$BENCH_HELPERS" run-start "$base.snap" --shell-pid "$$" --proxy-pid "${PID[$t]}" \
                --pids "${BENCH_PIDS[@]}" --backend-status "$BENCH_BACKEND_STATUS_URL"
            h2log=""
            [[ $tool != h2load ]] || h2log="$base.h2log"
            load "$tool" "$c" "$DURATION_S" "$url" "$base.txt" "$h2log" ||
                bench_log "WARNING: $t: $tool exited with an error: $(tail -n 3 "$base.txt" | tr '\n' ' ')"
            python3 "$BENCH_HELPERS" run-end "$base.snap" --shell-pid "$$" --proxy-pid "${PID[$t]}" \
                --pids "${BENCH_PIDS[@]}" --backend-status "$BENCH_BACKEND_STATUS_URL" \
                --tool "$tool" --output "$base.txt" ${h2log:+--h2-log "$h2log"} --scenario "$sc" \
                --target "$t" --run "$run" --order "$order" --connections "$c" --body-bytes "$body" \
                "${CORE_ARGS[@]}" \
                --record-to "$RECORDS"
            [[ -z $h2log ]] || rm -f "$h2log"
            sed 's/^/    /' "$base.txt" >&2
            check_alive "during $sc"
        done
    done
done

bench_cpu_foreign run
lines() { if (($# > 0)); then printf '%s\n' "$@"; fi; }
META_PINNED=${#BENCH_PIN_PROXY[@]} META_PIN_TEXT="$BENCH_PIN_TEXT" \
    META_PROXY_CPU="${BENCH_PROXY_CPU:-}" META_LOAD_CPU="${BENCH_LOAD_CPU:-}" \
    META_TARGETS="$(lines "${TARGETS[@]}")" META_SCENARIOS="$(lines "${RUNNABLE[@]}")" \
    META_DESCRIBE="$(for sc in "${RUNNABLE[@]}"; do describe "$sc"; done)" \
    META_SKIPPED="$(lines "${SKIPPED[@]}")" META_TLS="$(lines "${TLS_INFO[@]}")" \
    META_NGINX="$NGINX_V" META_HAPROXY="$HAPROXY_V" META_WRK="$WRK_V" META_H2LOAD="$H2LOAD_V" \
    META_OPENSSL="$OPENSSL_V" META_CUTOVER="$CUTOVER_V" META_CPU_MODEL="$CPU_MODEL" \
    META_NOFILE="$(ulimit -n)" META_NPROC="$(nproc --all)" META_KERNEL="$(uname -r)" \
    META_PROXY_THREADS="$BENCH_PROXY_THREADS" META_LOAD_THREADS="$BENCH_WRK_THREADS" \
    META_H2_STREAMS="$H2_STREAMS" META_RUNS="$RUNS" META_WARMUP_S="$WARMUP_S" \
    META_DURATION_S="$DURATION_S" META_WRK_TIMEOUT="$WRK_TIMEOUT" \
    META_UPSTREAM_IDLE="$BENCH_UPSTREAM_IDLE" META_IDLE_CONNS="$IDLE_CONNS" \
    META_BODY_BYTES="$BENCH_BACKEND_BODY_BYTES" META_COOKIE="${BENCH_COOKIE:-}" \
    python3 - >"$BENCH_TMP/meta.json" <<'PY'
import json, os
e = os.environ
def ls(k):
    return [x for x in e.get(k, "").split("\n") if x]
pinned = e["META_PINNED"] != "0"
scen = ls("META_SCENARIOS")
print(json.dumps({
    "layout": e["META_PIN_TEXT"],
    "proxy_cpu": int(e["META_PROXY_CPU"]) if pinned else None,
    "load_cpu": int(e["META_LOAD_CPU"]) if pinned else None,
    "proxy_threads": int(e["META_PROXY_THREADS"]),
    "load_threads": int(e["META_LOAD_THREADS"]),
    "h2_streams": int(e["META_H2_STREAMS"]),
    "runs": int(e["META_RUNS"]),
    "warmup_s": int(e["META_WARMUP_S"]),
    "duration_s": int(e["META_DURATION_S"]),
    "wrk_timeout": e["META_WRK_TIMEOUT"],
    "upstream_idle": int(e["META_UPSTREAM_IDLE"]),
    "idle_conns": int(e["META_IDLE_CONNS"]),
    "backend_body_bytes": int(e["META_BODY_BYTES"]),
    "cookie": e["META_COOKIE"] or None,
    "targets": ls("META_TARGETS"),
    "scenarios": scen,
    "scenario_text": dict(zip(scen, ls("META_DESCRIBE"))),
    "skipped": ls("META_SKIPPED"),
    "tls": ls("META_TLS"),
    "nofile": int(e["META_NOFILE"]),
    "machine": {"nproc": int(e["META_NPROC"]), "cpu": e["META_CPU_MODEL"], "kernel": e["META_KERNEL"]},
    "versions": {k: e["META_" + k.upper()] or None
                 for k in ("nginx", "haproxy", "wrk", "h2load", "openssl", "cutover")},
}, separators=(",", ":")))
PY
python3 "$BENCH_HELPERS" report-proxy --meta "$BENCH_TMP/meta.json" --records "$RECORDS" \
    "${IDLE_ARGS[@]}" --foreign-cpu "$BENCH_FOREIGN_CPU" --cpu-idle-before "$BENCH_CPU_IDLE"
