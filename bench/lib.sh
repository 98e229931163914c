# shellcheck shell=bash
# Helpers shared by bench/proxy.sh and bench/switch.sh. Source it; do not run it.
#
# What it gives:
#   bench_init                 temp dir ($BENCH_TMP), cleanup trap, raised fd limit
#   bench_require_tools T...   fail with an install hint when a tool is missing
#   bench_build                cargo build --release of cutover and the example app (once)
#   bench_start_app LABEL V    start the example app; sets BENCH_APP_PORT and BENCH_APP_PID
#   bench_start_cutover NAME CONFIG_BODY
#                              start `cutover serve`; sets BENCH_CUTOVER_{PID,LISTEN,ADMIN}
#   bench_start_nginx UPSTREAM_PORT     sets BENCH_NGINX_{PID,PORT}
#   bench_start_haproxy UPSTREAM_PORT   sets BENCH_HAPROXY_{PID,PORT}
#   bench_wait_port PORT PID SECS      bounded poll until 127.0.0.1:PORT accepts
#   bench_wait_http_ok URL SECS        bounded poll until URL answers 2xx
#
# Every process started here is recorded in BENCH_PIDS and killed (TERM, then KILL after a
# bounded wait, children included) by the EXIT trap. Nothing is killed by name.
# All traffic goes to 127.0.0.1.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_HELPERS="$BENCH_DIR/bench_helpers.py"
BENCH_PIDS=()
BENCH_TMP=""
# Worker threads/processes given to each proxy under test (cutover: tokio workers; nginx:
# worker_processes; HAProxy: nbthread). Same number for all three.
BENCH_PROXY_THREADS="${BENCH_PROXY_THREADS:-1}"
BENCH_BACKEND_THREADS="${BENCH_BACKEND_THREADS:-1}"
BENCH_WRK_THREADS="${BENCH_WRK_THREADS:-1}"
BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-64}"
BENCH_ADMIN_TOKEN="${BENCH_ADMIN_TOKEN:-bench-token-$$}"
CUTOVER_BIN="$BENCH_ROOT/target/release/cutover"
APP_BIN="$BENCH_ROOT/target/release/cutover-example-app"

bench_log() {
    printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

bench_die() {
    printf '[bench] error: %s\n' "$*" >&2
    exit 1
}

bench_now_ms() {
    date +%s%3N
}

# All PIDs of $1's process tree (itself first), from /proc; empty if it is gone.
bench_tree_pids() {
    local pid="$1" p t children
    local -a todo=("$pid") seen=()
    local n=0
    while ((${#todo[@]} > 0 && n < 1000)); do
        n=$((n + 1))
        p="${todo[0]}"
        todo=("${todo[@]:1}")
        [[ -d /proc/$p ]] || continue
        seen+=("$p")
        for t in /proc/"$p"/task/*/children; do
            [[ -r $t ]] || continue
            read -r -a children <"$t" || true
            todo+=("${children[@]}")
        done
    done
    if ((${#seen[@]} > 0)); then
        printf '%s\n' "${seen[@]}"
    fi
}

bench_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local -a all=()
    local pid i
    # Newest first, so proxies go before their backends; children (nginx workers) included.
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${BENCH_PIDS[i]}"
        mapfile -t -O "${#all[@]}" all < <(bench_tree_pids "$pid")
    done
    if ((${#all[@]} > 0)); then
        kill -TERM "${all[@]}" 2>/dev/null
        local deadline=$(($(bench_now_ms) + 5000)) alive
        while :; do
            alive=0
            for pid in "${all[@]}"; do
                if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
                    alive=1
                    break
                fi
            done
            ((alive == 0)) && break
            if (($(bench_now_ms) > deadline)); then
                bench_log "some processes ignored SIGTERM for 5 s; sending SIGKILL"
                kill -KILL "${all[@]}" 2>/dev/null
                break
            fi
            sleep 0.05
        done
        for pid in "${BENCH_PIDS[@]}"; do
            wait "$pid" 2>/dev/null
        done
    fi
    if [[ -n $BENCH_TMP && -d $BENCH_TMP ]]; then
        if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
            bench_log "kept $BENCH_TMP"
        else
            rm -rf -- "$BENCH_TMP"
        fi
    fi
    exit "$rc"
}

bench_init() {
    BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/cutover-bench.XXXXXX")"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # 1000 idle connections plus upstream connections need more than the usual 1024 fds.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

bench_require_tools() {
    local -a missing=()
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || missing+=("$t")
    done
    if ((${#missing[@]} > 0)); then
        bench_die "missing tool(s): ${missing[*]}. Install them with: apt-get install wrk nginx haproxy curl python3"
    fi
}

# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
bench_tool() {
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        printf '/usr/sbin/%s\n' "$1"
    fi
}

bench_build() {
    if [[ ${BENCH_SKIP_BUILD:-0} == 1 && -x $CUTOVER_BIN && -x $APP_BIN ]]; then
        return 0
    fi
    bench_log "cargo build --release -p cutover -p cutover-example-app"
    (cd "$BENCH_ROOT" && cargo build --release -p cutover -p cutover-example-app)
    [[ -x $CUTOVER_BIN && -x $APP_BIN ]] || bench_die "release binaries missing after the build"
}

# bench_spawn NAME CMD...: start CMD in the background with stdout/stderr in $BENCH_TMP/NAME.{out,err}.
# Sets BENCH_LAST_PID. (No command substitution: the child must stay ours to wait for.)
bench_spawn() {
    local name="$1"
    shift
    "$@" >"$BENCH_TMP/$name.out" 2>"$BENCH_TMP/$name.err" &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

bench_alive() {
    kill -0 "$1" 2>/dev/null
}

bench_fail_with_log() {
    local name="$1" msg="$2"
    bench_log "$msg; last lines of $name's logs:"
    tail -n 20 "$BENCH_TMP/$name.out" "$BENCH_TMP/$name.err" >&2 2>/dev/null || true
    exit 1
}

# bench_wait_port PORT PID SECS
bench_wait_port() {
    local port="$1" pid="$2" secs="$3"
    local deadline=$(($(bench_now_ms) + secs * 1000))
    while (($(bench_now_ms) < deadline)); do
        bench_alive "$pid" || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# bench_wait_http_ok URL SECS
bench_wait_http_ok() {
    local url="$1" secs="$2"
    local deadline=$(($(bench_now_ms) + secs * 1000))
    while (($(bench_now_ms) < deadline)); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

bench_free_port() {
    python3 "$BENCH_HELPERS" free-port
}

# bench_start_app NAME VERSION: the example app with $BENCH_BACKEND_THREADS tokio workers.
bench_start_app() {
    local name="$1" version="$2" line deadline
    bench_spawn "$name" "$APP_BIN" --port 0 --version-label "$version" \
        --threads "$BENCH_BACKEND_THREADS" --drain-timeout-secs 2
    BENCH_APP_PID=$BENCH_LAST_PID
    deadline=$(($(bench_now_ms) + 10000))
    BENCH_APP_PORT=""
    while (($(bench_now_ms) < deadline)); do
        line="$(grep -m1 -o 'listening on http://127\.0\.0\.1:[0-9]*' "$BENCH_TMP/$name.out" 2>/dev/null || true)"
        if [[ -n $line ]]; then
            BENCH_APP_PORT="${line##*:}"
            break
        fi
        bench_alive "$BENCH_APP_PID" || break
        sleep 0.05
    done
    [[ -n $BENCH_APP_PORT ]] || bench_fail_with_log "$name" "the example app did not report its port"
    bench_wait_port "$BENCH_APP_PORT" "$BENCH_APP_PID" 10 ||
        bench_fail_with_log "$name" "the example app does not accept connections"
    bench_log "$name ($version) on 127.0.0.1:$BENCH_APP_PORT, pid $BENCH_APP_PID, $BENCH_BACKEND_THREADS thread(s)"
}

# bench_start_cutover NAME TOML: writes TOML to $BENCH_TMP/NAME/cutover.toml and serves it with
# $BENCH_PROXY_THREADS tokio workers; app "bench" must be in the config.
bench_start_cutover() {
    local name="$1" toml="$2" dir ready deadline
    dir="$BENCH_TMP/$name"
    mkdir -p "$dir"
    printf '%s\n' "$toml" >"$dir/cutover.toml"
    bench_spawn "$name" env CUTOVER_LOG="${CUTOVER_LOG:-warn}" \
        CUTOVER_ADMIN_TOKEN="$BENCH_ADMIN_TOKEN" TOKIO_WORKER_THREADS="$BENCH_PROXY_THREADS" \
        "$CUTOVER_BIN" serve --config "$dir/cutover.toml"
    BENCH_CUTOVER_PID=$BENCH_LAST_PID
    deadline=$(($(bench_now_ms) + 15000))
    ready=""
    while (($(bench_now_ms) < deadline)); do
        if ready="$(python3 "$BENCH_HELPERS" ready-line "$BENCH_TMP/$name.out")"; then
            break
        fi
        ready=""
        bench_alive "$BENCH_CUTOVER_PID" || break
        sleep 0.05
    done
    [[ -n $ready ]] || bench_fail_with_log "$name" "cutover did not print its ready line"
    BENCH_CUTOVER_ADMIN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.admin)"
    BENCH_CUTOVER_LISTEN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench.listen)"
    bench_log "cutover on $BENCH_CUTOVER_LISTEN (admin $BENCH_CUTOVER_ADMIN), pid $BENCH_CUTOVER_PID, TOKIO_WORKER_THREADS=$BENCH_PROXY_THREADS"
}

# bench_start_nginx UPSTREAM_PORT
bench_start_nginx() {
    local upstream="$1" dir port
    dir="$BENCH_TMP/nginx"
    mkdir -p "$dir/logs" "$dir/tmp"
    port="$(bench_free_port)"
    # Runs as the current user (`user` is only honoured for root; name it explicitly so the
    # workers can use the temp dir). keepalive_requests is raised on both sides so neither wrk's
    # connections nor the upstream ones are closed every 1000 requests: cutover and HAProxy do
    # not recycle connections either.
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $BENCH_PROXY_THREADS;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
$(if [[ $(id -u) == 0 ]]; then printf 'user root root;'; fi)

events {
    worker_connections 10000;
}

http {
    access_log off;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000000;

    upstream backend {
        server 127.0.0.1:$upstream;
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    bench_spawn nginx "$(bench_tool nginx)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
    BENCH_NGINX_PID=$BENCH_LAST_PID
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_NGINX_PORT=$port
    bench_wait_port "$port" "$BENCH_NGINX_PID" 10 ||
        bench_fail_with_log nginx "nginx does not accept connections on $port ($(cat "$dir/logs/error.log" 2>/dev/null))"
    bench_log "nginx on 127.0.0.1:$port, pid $BENCH_NGINX_PID, worker_processes $BENCH_PROXY_THREADS"
}

# bench_start_haproxy UPSTREAM_PORT
bench_start_haproxy() {
    local upstream="$1" dir port
    dir="$BENCH_TMP/haproxy"
    mkdir -p "$dir"
    port="$(bench_free_port)"
    # No `log` line anywhere: HAProxy logs nothing. -db keeps it in the foreground.
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $BENCH_PROXY_THREADS
    # each connection needs 2 fds (client + server); the fd limit here is typically 20000
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn 8000
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout http-request 30s

frontend bench
    bind 127.0.0.1:$port
    default_backend app

backend app
    server app1 127.0.0.1:$upstream
EOF
    "$(bench_tool haproxy)" -c -q -f "$dir/haproxy.cfg" >"$BENCH_TMP/haproxy-check.log" 2>&1 ||
        bench_die "haproxy config check failed: $(cat "$BENCH_TMP/haproxy-check.log")"
    bench_spawn haproxy "$(bench_tool haproxy)" -db -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid"
    BENCH_HAPROXY_PID=$BENCH_LAST_PID
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_HAPROXY_PORT=$port
    bench_wait_port "$port" "$BENCH_HAPROXY_PID" 10 ||
        bench_fail_with_log haproxy "haproxy does not accept connections on $port"
    bench_log "haproxy on 127.0.0.1:$port, pid $BENCH_HAPROXY_PID, nbthread $BENCH_PROXY_THREADS"
}

# Sample how idle the machine is for 1 s before loading it; sets BENCH_CPU_IDLE and warns when
# something else is using the CPU (a build, tests, another benchmark): the figures would suffer.
bench_check_idle() {
    BENCH_CPU_IDLE="$(python3 "$BENCH_HELPERS" cpu-idle 1)"
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 90 else 1)' "$BENCH_CPU_IDLE"; then
        bench_log "WARNING: the CPUs were only $BENCH_CPU_IDLE % idle before the run; something else is busy and the figures will suffer"
    else
        bench_log "CPUs $BENCH_CPU_IDLE % idle before the run"
    fi
}

# bench_cpu_mark NAME: start watching CPU use by processes that are not ours.
bench_cpu_mark() {
    python3 "$BENCH_HELPERS" cpu-snapshot "$BENCH_TMP/cpu-$1.json" "$$" "${BENCH_PIDS[@]}"
}

# bench_cpu_foreign NAME: share of the CPU capacity used since bench_cpu_mark NAME by processes
# that are not ours (sets BENCH_FOREIGN_CPU); warns above 5 %.
bench_cpu_foreign() {
    BENCH_FOREIGN_CPU="$(python3 "$BENCH_HELPERS" foreign-cpu "$BENCH_TMP/cpu-$1.json" "$$" "${BENCH_PIDS[@]}")"
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 5 else 1)' "$BENCH_FOREIGN_CPU"; then
        bench_log "WARNING: $1: other processes used $BENCH_FOREIGN_CPU % of the CPU capacity meanwhile; these figures are disturbed"
    else
        bench_log "$1: other processes used $BENCH_FOREIGN_CPU % of the CPU capacity meanwhile"
    fi
}

# bench_duration_s 10s|1m|500ms -> seconds (may be fractional), for wrk's -d syntax.
bench_duration_s() {
    python3 - "$1" <<'EOF'
import re, sys
m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1])
if not m:
    sys.exit(f"bad duration {sys.argv[1]!r}; use e.g. 10s")
v = float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
print(int(v) if v == int(v) else v)
EOF
}
