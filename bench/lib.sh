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
#   bench_start_nginx UPSTREAM_PORT     sets BENCH_NGINX_{PID,PORT} (+ _TLS_PORT, _H2C_PORT)
#   bench_start_haproxy UPSTREAM_PORT   sets BENCH_HAPROXY_{PID,PORT} (+ _TLS_PORT)
#   bench_start_backend_nginx   the nginx backend of proxy.sh/upgrade.sh (`/`: a small body,
#                              `/1m`: 1 MiB); sets BENCH_BACKEND_{PID,PORT,STATUS_URL,BODY_BYTES}
#   bench_make_cert            self-signed cert in $BENCH_TMP/tls; sets BENCH_TLS_{CERT,KEY,PEM}
#   bench_pin_layout           BENCH_PIN_PROXY / BENCH_PIN_LOAD taskset prefixes (core 0 / 1)
#   bench_build_cutover        cargo build --release -p cutover (or check BENCH_SKIP_BUILD=1)
#   bench_fd_enough N          true when this shell may open N files
#   bench_wait_port PORT PID SECS      bounded poll until 127.0.0.1:PORT accepts
#   bench_wait_http_ok URL SECS        bounded poll until URL answers 2xx
#
# nginx and HAProxy (proxies and backend) are sized for BENCH_MAX_CLIENTS client connections
# (default 11000) plus as many upstream ones; BENCH_UPSTREAM_IDLE (default 1024) is the idle
# upstream pool of each proxy (nginx `keepalive`, HAProxy `pool-max-conn`; proxy.sh gives
# cutover the same `upstream_max_idle_per_backend`). When BENCH_TLS_CERT is set (bench_make_cert),
# nginx and HAProxy also listen with TLS (ALPN h2 and http/1.1).
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
BENCH_MAX_CLIENTS="${BENCH_MAX_CLIENTS:-11000}"
BENCH_UPSTREAM_IDLE="${BENCH_UPSTREAM_IDLE:-1024}"  # proxy.sh sizes it to its scenarios
# taskset prefixes (empty: not pinned), set by bench_pin_layout
BENCH_PIN_PROXY=()
BENCH_PIN_LOAD=()
BENCH_TLS_CERT=""
BENCH_TLS_KEY=""
BENCH_TLS_PEM=""
# BENCH_CUTOVER_BIN: another cutover binary (proxy.sh and upgrade.sh; no build then)
CUTOVER_BIN="${BENCH_CUTOVER_BIN:-$BENCH_ROOT/target/release/cutover}"
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
    # 10 000 client connections through a proxy plus its upstream connections need more than
    # 20 000 fds in the proxy (and 10 000 in wrk). root may raise the hard limit (up to
    # fs.nr_open); everybody may raise the soft limit to the hard one. Children inherit it.
    local want="${BENCH_NOFILE:-200000}" nr_open hard
    if [[ $(id -u) == 0 ]]; then
        nr_open="$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576)"
        ((want <= nr_open)) || want=$nr_open
        hard="$(ulimit -Hn)"
        if [[ $hard != unlimited ]] && ((hard < want)); then
            ulimit -Hn "$want" 2>/dev/null || true
        fi
    fi
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# bench_fd_enough N: may this shell (and what it starts) open N files?
bench_fd_enough() {
    local soft
    soft="$(ulimit -n)"
    [[ $soft == unlimited ]] || (($1 <= soft))
}

# bench_pin_layout: the proxy under test alone on BENCH_PROXY_CPU (0), everything else (load
# generator, backend, this script and its helpers) on BENCH_LOAD_CPU (1). Sets BENCH_PIN_PROXY
# and BENCH_PIN_LOAD (taskset prefixes for commands) and BENCH_PIN_TEXT; pins this shell to the
# load CPU. BENCH_PIN=0, no taskset, or CPUs this process may not use: nothing is pinned.
bench_pin_layout() {
    BENCH_PROXY_CPU="${BENCH_PROXY_CPU:-0}"
    BENCH_LOAD_CPU="${BENCH_LOAD_CPU:-1}"
    BENCH_PIN_PROXY=()
    BENCH_PIN_LOAD=()
    # shellcheck disable=SC2034
    BENCH_PIN_TEXT="not pinned"
    local allowed
    if [[ ${BENCH_PIN:-1} != 1 ]]; then
        bench_log "BENCH_PIN=0: nothing is pinned"
        return 0
    fi
    if ! command -v taskset >/dev/null 2>&1; then
        bench_log "WARNING: no taskset (util-linux): nothing is pinned"
        return 0
    fi
    allowed=",$(python3 "$BENCH_HELPERS" cpus-allowed),"
    if [[ $BENCH_PROXY_CPU == "$BENCH_LOAD_CPU" || $allowed != *",$BENCH_PROXY_CPU,"* ||
        $allowed != *",$BENCH_LOAD_CPU,"* ]]; then
        bench_log "WARNING: CPUs $BENCH_PROXY_CPU and $BENCH_LOAD_CPU are not two usable CPUs (allowed:${allowed//,/ }): nothing is pinned"
        return 0
    fi
    BENCH_PIN_PROXY=(taskset -c "$BENCH_PROXY_CPU")
    BENCH_PIN_LOAD=(taskset -c "$BENCH_LOAD_CPU")
    taskset -p -c "$BENCH_LOAD_CPU" "$$" >/dev/null ||
        bench_log "WARNING: could not pin this shell to CPU $BENCH_LOAD_CPU"
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_PIN_TEXT="proxy under test alone on CPU $BENCH_PROXY_CPU; load generator, backend and this script on CPU $BENCH_LOAD_CPU (taskset)"
}

bench_require_tools() {
    local -a missing=()
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || missing+=("$t")
    done
    if ((${#missing[@]} > 0)); then
        bench_die "missing tool(s): ${missing[*]}. Install them with: apt-get install wrk nghttp2-client nginx haproxy curl python3 openssl util-linux"
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

# bench_build_cutover: only the cutover binary (proxy.sh and upgrade.sh need no example app).
bench_build_cutover() {
    if [[ ${BENCH_SKIP_BUILD:-0} == 1 || -n ${BENCH_CUTOVER_BIN:-} ]]; then
        [[ -x $CUTOVER_BIN ]] || bench_die "BENCH_SKIP_BUILD=1 but $CUTOVER_BIN is missing: cargo build --release -p cutover"
        return 0
    fi
    bench_require_tools cargo
    bench_log "cargo build --release -p cutover"
    (cd "$BENCH_ROOT" && cargo build --release -p cutover)
    [[ -x $CUTOVER_BIN ]] || bench_die "$CUTOVER_BIN missing after the build"
}

# bench_make_cert: a self-signed P-256 certificate for 127.0.0.1/localhost in $BENCH_TMP/tls,
# the same for every proxy: cert.pem, key.pem (PKCS#8) and cert+key in one file for HAProxy.
bench_make_cert() {
    local dir="$BENCH_TMP/tls"
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$dir/openssl.log" 2>&1 ||
        bench_die "openssl could not make a certificate: $(cat "$dir/openssl.log")"
    cat "$dir/cert.pem" "$dir/key.pem" >"$dir/combined.pem"
    BENCH_TLS_CERT="$dir/cert.pem"
    BENCH_TLS_KEY="$dir/key.pem"
    BENCH_TLS_PEM="$dir/combined.pem"
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
# $BENCH_PROXY_THREADS tokio workers (pinned by BENCH_PIN_PROXY when bench_pin_layout set it);
# app "bench" must be in the config. Sets BENCH_CUTOVER_READY to the ready line too.
bench_start_cutover() {
    local name="$1" toml="$2" dir ready deadline
    dir="$BENCH_TMP/$name"
    mkdir -p "$dir"
    printf '%s\n' "$toml" >"$dir/cutover.toml"
    bench_spawn "$name" "${BENCH_PIN_PROXY[@]}" env CUTOVER_LOG="${CUTOVER_LOG:-warn}" \
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
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_CUTOVER_READY="$ready"
    BENCH_CUTOVER_ADMIN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.admin)"
    BENCH_CUTOVER_LISTEN="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench.listen)"
    bench_log "cutover on $BENCH_CUTOVER_LISTEN (admin $BENCH_CUTOVER_ADMIN), pid $BENCH_CUTOVER_PID, TOKIO_WORKER_THREADS=$BENCH_PROXY_THREADS"
}

# The fd limit given to nginx workers: what this shell has.
bench_nofile() {
    local n
    n="$(ulimit -n)"
    [[ $n != unlimited ]] || n=1048576
    printf '%s\n' "$n"
}

# bench_nginx_preamble DIR WORKERS WORKER_CONNECTIONS: the top of an nginx.conf shared by the
# backend and the nginx under test, up to the common lines of the open `http {` block (runs as
# the current user, temp paths in DIR, no access log, keep-alive without a request cap).
bench_nginx_preamble() {
    local dir="$1" workers="$2" wc="$3"
    cat <<EOF
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $(bench_nofile);
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
$(if [[ $(id -u) == 0 ]]; then printf 'user root root;'; fi)

events {
    worker_connections $wc;
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
EOF
}

# bench_start_backend_nginx: the backend of proxy.sh and upgrade.sh, one nginx worker on the
# load CPU (BENCH_PIN_LOAD). `GET /` (any path but the two below) answers 200 with a small JSON
# body from a `return`; `/1m` is a 1 MiB file of random bytes (sendfile); `/__status` is
# stub_status (accepted connections: how many upstream connections the proxies opened). No
# access log, keep-alive without a request limit, room for BENCH_MAX_CLIENTS upstream
# connections (cutover opens one per request in flight).
bench_start_backend_nginx() {
    local dir port wc
    dir="$BENCH_TMP/backend"
    mkdir -p "$dir/logs" "$dir/tmp" "$dir/www"
    head -c 1048576 /dev/urandom >"$dir/www/1m"
    port="$(bench_free_port)"
    wc=$((2 * BENCH_MAX_CLIENTS + 1000))
    ((wc <= $(bench_nofile) - 100)) || wc=$(($(bench_nofile) - 100))
    BENCH_BACKEND_BODY='{"app":"bench","version":"v1","served_by":"nginx backend"}'
    cat >"$dir/nginx.conf" <<EOF
$(bench_nginx_preamble "$dir" 1 "$wc")
    sendfile on;
    tcp_nopush on;

    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /1m {
            root $dir/www;
            default_type application/octet-stream;
        }
        location = /__status {
            stub_status;
        }
        location / {
            default_type application/json;
            return 200 '$BENCH_BACKEND_BODY';
        }
    }
}
EOF
    bench_spawn backend "${BENCH_PIN_LOAD[@]}" "$(bench_tool nginx)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
    BENCH_BACKEND_PID=$BENCH_LAST_PID
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_BACKEND_PORT=$port
    # shellcheck disable=SC2034
    BENCH_BACKEND_STATUS_URL="http://127.0.0.1:$port/__status"
    # shellcheck disable=SC2034
    BENCH_BACKEND_BODY_BYTES=${#BENCH_BACKEND_BODY}
    bench_wait_port "$port" "$BENCH_BACKEND_PID" 10 ||
        bench_fail_with_log backend "the nginx backend does not accept connections on $port ($(cat "$dir/logs/error.log" 2>/dev/null))"
    bench_log "nginx backend on 127.0.0.1:$port, pid $BENCH_BACKEND_PID, ${BENCH_PIN_LOAD[*]:-not pinned}"
}

# bench_start_nginx UPSTREAM_PORT: nginx as a reverse proxy, BENCH_PROXY_THREADS workers, pinned
# by BENCH_PIN_PROXY. With BENCH_TLS_CERT set (bench_make_cert) it also listens with TLS
# (BENCH_NGINX_TLS_PORT, `ssl http2`: ALPN h2 or http/1.1) and for h2c by prior knowledge
# (BENCH_NGINX_H2C_PORT: in nginx 1.22 a plaintext `http2` listener speaks only HTTP/2).
bench_start_nginx() {
    local upstream="$1" dir port tls_port="" h2c_port="" wc
    dir="$BENCH_TMP/nginx"
    mkdir -p "$dir/logs" "$dir/tmp"
    port="$(bench_free_port)"
    if [[ -n $BENCH_TLS_CERT ]]; then
        tls_port="$(bench_free_port)"
        h2c_port="$(bench_free_port)"
    fi
    # client connections + as many upstream ones, within the fd limit
    wc=$((2 * BENCH_MAX_CLIENTS + 1000))
    ((wc <= $(bench_nofile) - 100)) || wc=$(($(bench_nofile) - 100))
    # Runs as the current user (`user` is only honoured for root; name it explicitly so the
    # workers can use the temp dir). keepalive_requests is raised on both sides so neither the
    # clients' connections nor the upstream ones are closed every 1000 requests: cutover and
    # HAProxy do not recycle connections either. proxy_max_temp_file_size 0: a response larger
    # than the proxy buffers is streamed to the client, never spilled to a temp file on disk
    # (cutover and HAProxy stream).
    cat >"$dir/nginx.conf" <<EOF
$(bench_nginx_preamble "$dir" "$BENCH_PROXY_THREADS" "$wc")

    upstream backend {
        server 127.0.0.1:$upstream;
        keepalive $BENCH_UPSTREAM_IDLE;
        keepalive_requests 1000000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$port backlog=4096;
$(if [[ -n $tls_port ]]; then
        printf '        listen 127.0.0.1:%s ssl http2 backlog=4096;\n' "$tls_port"
        printf '        listen 127.0.0.1:%s http2 backlog=4096;\n' "$h2c_port"
        printf '        ssl_certificate %s;\n        ssl_certificate_key %s;\n' "$BENCH_TLS_CERT" "$BENCH_TLS_KEY"
        # nginx before 1.23.4 leaves TLS 1.3 off unless asked; the others speak it
        printf '        ssl_protocols TLSv1.2 TLSv1.3;\n'
    fi)
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
    bench_spawn nginx "${BENCH_PIN_PROXY[@]}" "$(bench_tool nginx)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
    BENCH_NGINX_PID=$BENCH_LAST_PID
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_NGINX_PORT=$port
    # shellcheck disable=SC2034
    BENCH_NGINX_TLS_PORT=$tls_port
    # shellcheck disable=SC2034
    BENCH_NGINX_H2C_PORT=$h2c_port
    bench_wait_port "$port" "$BENCH_NGINX_PID" 10 ||
        bench_fail_with_log nginx "nginx does not accept connections on $port ($(cat "$dir/logs/error.log" 2>/dev/null))"
    bench_log "nginx on 127.0.0.1:$port${tls_port:+ (TLS $tls_port, h2c $h2c_port)}, pid $BENCH_NGINX_PID, worker_processes $BENCH_PROXY_THREADS, ${BENCH_PIN_PROXY[*]:-not pinned}"
}

# bench_start_haproxy UPSTREAM_PORT: HAProxy, nbthread BENCH_PROXY_THREADS, pinned by
# BENCH_PIN_PROXY. With BENCH_TLS_CERT set it also listens with TLS (BENCH_HAPROXY_TLS_PORT,
# ALPN h2 and http/1.1). Its plaintext listener takes h2c by prior knowledge too.
bench_start_haproxy() {
    local upstream="$1" dir port tls_port="" maxconn
    dir="$BENCH_TMP/haproxy"
    mkdir -p "$dir"
    port="$(bench_free_port)"
    [[ -z $BENCH_TLS_CERT ]] || tls_port="$(bench_free_port)"
    # maxconn counts client connections; HAProxy sizes its fd needs (maxsock, about 2 x maxconn:
    # server connections included) from it and refuses to start when it may not raise its fd
    # limit that far. When the limit is lower, `no strict-limits` lets it start anyway (with a
    # warning): 10 000 idle clients need 10 000 fds, not 20 000, and the load scenarios that
    # would not fit were skipped by proxy.sh.
    maxconn=$((BENCH_MAX_CLIENTS + 1000))
    local strict=""
    if ((2 * maxconn + 100 > $(bench_nofile))); then
        strict="    no strict-limits"
        bench_log "haproxy: maxconn $maxconn wants about $((2 * maxconn + 100)) fds, the limit is $(bench_nofile): no strict-limits"
    fi
    # No `log` line anywhere: HAProxy logs nothing. -db keeps it in the foreground.
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $BENCH_PROXY_THREADS
    maxconn $maxconn
$strict
    # Idle server connections are kept for reuse only while fewer than 20 % (low ratio) of the
    # fds HAProxy may use are in use, and killed past 25 % (high ratio): at 1000 clients that
    # turned half the requests into new upstream connections. Raised so the pool is not the
    # limit, as nginx's keepalive and cutover's pool are sized not to be.
    tune.pool-low-fd-ratio 90
    tune.pool-high-fd-ratio 95

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $maxconn
    backlog 4096
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout http-request 30s

frontend bench
    bind 127.0.0.1:$port
$(if [[ -n $tls_port ]]; then printf '    bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n' "$tls_port" "$BENCH_TLS_PEM"; fi)
    default_backend app

backend app
    server app1 127.0.0.1:$upstream pool-max-conn $BENCH_UPSTREAM_IDLE
EOF
    "$(bench_tool haproxy)" -c -q -f "$dir/haproxy.cfg" >"$BENCH_TMP/haproxy-check.log" 2>&1 ||
        bench_die "haproxy config check failed: $(cat "$BENCH_TMP/haproxy-check.log")"
    bench_spawn haproxy "${BENCH_PIN_PROXY[@]}" "$(bench_tool haproxy)" -db -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid"
    BENCH_HAPROXY_PID=$BENCH_LAST_PID
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BENCH_HAPROXY_PORT=$port
    # shellcheck disable=SC2034
    BENCH_HAPROXY_TLS_PORT=$tls_port
    bench_wait_port "$port" "$BENCH_HAPROXY_PID" 10 ||
        bench_fail_with_log haproxy "haproxy does not accept connections on $port"
    bench_log "haproxy on 127.0.0.1:$port${tls_port:+ (TLS $tls_port)}, pid $BENCH_HAPROXY_PID, nbthread $BENCH_PROXY_THREADS, maxconn $maxconn, ${BENCH_PIN_PROXY[*]:-not pinned}"
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
