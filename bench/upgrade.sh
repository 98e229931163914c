#!/usr/bin/env bash
# Zero-downtime upgrades of cutover itself and config reloads, under load: wrk keeps
# BENCH_CONNECTIONS (64) keep-alive connections busy through `cutover serve` while the script
# replaces the server process BENCH_UPGRADES (20) times with `cutover serve --upgrade` (the new
# process takes the listening sockets over through the state directory, prints its ready line,
# and the old one stops accepting, drains and exits 0) and then reloads it BENCH_RELOADS (20)
# times with SIGHUP (the running server starts `serve --upgrade` of its own binary on the same
# config file, which the script changes before each reload). Any non-2xx response or socket error
# seen by wrk, or a step that does not complete, fails the run (exit 1).
#
#   bench/upgrade.sh
#   BENCH_UPGRADES=5 BENCH_RELOADS=5 bench/upgrade.sh
#
# Each step: bounded polls (BENCH_STEP_TIMEOUT, 30 s) for the new ready line on stdout and for the
# previous process to be gone; BENCH_PACE (0.5 s) between steps, the only sleeps. Per step it
# records the time from the start of the step to the new ready line (ready_ms) and to the exit of
# the old process (exit_ms), the PIDs, the old process's exit code (when it was this script's
# child: processes started by SIGHUP are the server's children and are reparented when it exits),
# that the app and admin listeners kept their addresses, and that the admin API answers.
# The reloads alternate `[app.proxy] client_idle_timeout_ms` between 30000 and 31000, and every
# fourth reload adds a second app with its own listener (checked with curl: it must answer) and
# the one two reloads later removes it (its port must then refuse connections). Half way, when
# BENCH_INVALID_RELOAD=1 (default), one reload is sent with an invalid file
# (client_idle_timeout_ms = 0): no new server may become ready, the running one must keep serving.
#
# Layout: as proxy.sh, cutover (TOKIO_WORKER_THREADS=BENCH_PROXY_THREADS, 1) alone on core 0
# (BENCH_PROXY_CPU), wrk and the nginx backend on core 1 (BENCH_LOAD_CPU). Processes started by
# `--upgrade` inherit the pinning and the environment.
#
# Environment (defaults): BENCH_UPGRADES (20), BENCH_RELOADS (20), BENCH_CONNECTIONS (64),
# BENCH_STEP_TIMEOUT (30), BENCH_PACE (0.5), BENCH_INVALID_RELOAD (1), BENCH_WRK_MAX (3600s: wrk's
# -d; it is stopped with SIGINT, which makes it print its summary, once the steps are done),
# BENCH_PROXY_CPU, BENCH_LOAD_CPU, BENCH_PIN, BENCH_SKIP_BUILD, BENCH_KEEP_TMP, CUTOVER_LOG (warn).
#
# The last line of stdout is one JSON object with every figure and every step.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UPGRADES="${BENCH_UPGRADES:-20}"
RELOADS="${BENCH_RELOADS:-20}"
STEP_TIMEOUT="${BENCH_STEP_TIMEOUT:-30}"
PACE="${BENCH_PACE:-0.5}"
INVALID_RELOAD="${BENCH_INVALID_RELOAD:-1}"
WRK_MAX="${BENCH_WRK_MAX:-3600s}"
((UPGRADES >= 0 && UPGRADES <= 1000 && RELOADS >= 0 && RELOADS <= 1000)) ||
    bench_die "BENCH_UPGRADES and BENCH_RELOADS must be in 0..1000"
((STEP_TIMEOUT >= 1 && STEP_TIMEOUT <= 600)) || bench_die "BENCH_STEP_TIMEOUT must be in 1..600 (seconds)"

bench_require_tools wrk nginx python3 curl
bench_build_cutover
bench_init
# Besides what lib.sh tracks: servers started by SIGHUP (children of a server, reparented when
# it exits). Their command line names this run's config file.
# shellcheck disable=SC2317 # run by the EXIT trap
upgrade_cleanup() {
    local rc=$? pid
    set +e
    if [[ -n $BENCH_TMP ]]; then
        while read -r pid; do
            [[ -n $pid ]] && BENCH_PIDS+=("$pid")
        done < <(python3 "$BENCH_HELPERS" pids-with-arg "$BENCH_TMP/cutover.toml" 2>/dev/null)
    fi
    (exit "$rc")
    bench_cleanup
}
trap upgrade_cleanup EXIT
bench_pin_layout
bench_check_idle

bench_start_backend_nginx
BACKEND="127.0.0.1:$BENCH_BACKEND_PORT"
STATE="$BENCH_TMP/state"
mkdir -m 0700 "$STATE"
CONF="$BENCH_TMP/cutover.toml"
OUT="$BENCH_TMP/cutover.out"
ERR="$BENCH_TMP/cutover.err"
STEPS="$BENCH_TMP/steps.jsonl"
: >"$STEPS"
# Fixed ports, so the addresses stay the same across upgrades (with port 0 each process would
# bind anew... or inherit; fixed ports make "same address" checkable).
ADMIN_PORT="$(bench_free_port)"
APP_PORT="$(bench_free_port)"
EXTRA_PORT="$(bench_free_port)"
URL="http://127.0.0.1:$APP_PORT/"
EXTRA_URL="http://127.0.0.1:$EXTRA_PORT/"
ADMIN_URL="http://127.0.0.1:$ADMIN_PORT/v1/apps/bench/metrics"

# app_toml NAME PORT [PROXY_LINE]: one [[app]] on 127.0.0.1:PORT with static routes to the
# backend, and PROXY_LINE (e.g. `client_idle_timeout_ms = 30000`) under [app.proxy] if given.
app_toml() {
    local name="$1" port="$2" proxy_line="${3:-}"
    printf '\n[[app]]\nname = "%s"\nlisten = "127.0.0.1:%s"\n' "$name" "$port"
    [[ -z $proxy_line ]] || printf '\n[app.proxy]\n%s\n' "$proxy_line"
    cat <<EOF

[app.proxy.health_check]
interval_ms = 1000

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = { version = "v1", backends = ["$BACKEND"] }
green = { version = "", backends = [] }
EOF
}

# write_config IDLE_MS EXTRA(0|1): the config file, replaced atomically (rename).
write_config() {
    local idle_ms="$1" extra="$2"
    {
        cat <<EOF
# bench/upgrade.sh: client_idle_timeout_ms=$idle_ms, second app: $extra
[server]
state_dir = "$STATE"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
EOF
        app_toml bench "$APP_PORT" "client_idle_timeout_ms = $idle_ms"
        if [[ $extra == 1 ]]; then
            app_toml extra "$EXTRA_PORT"
        fi
    } >"$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
}

# serve_spawn [ARGS...]: `cutover serve --config CONF ARGS` on the proxy CPU; stdout and stderr
# appended (O_APPEND) to one file each, shared with the servers that SIGHUP starts.
serve_spawn() {
    "${BENCH_PIN_PROXY[@]}" env CUTOVER_LOG="${CUTOVER_LOG:-warn}" \
        CUTOVER_ADMIN_TOKEN="$BENCH_ADMIN_TOKEN" TOKIO_WORKER_THREADS="$BENCH_PROXY_THREADS" \
        "$CUTOVER_BIN" serve --config "$CONF" "$@" >>"$OUT" 2>>"$ERR" &
    SPAWNED=$!
    BENCH_PIDS+=("$SPAWNED")
}

ready_count() {
    local n
    n="$(grep -cE '"event" *: *"ready"' "$OUT" 2>/dev/null)" || n=0
    printf '%s\n' "$n"
}

# A process is gone when /proc has no entry or it is a zombie.
gone() {
    [[ ! -d /proc/$1 ]] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

# wait_ready N0 PID_THAT_MUST_LIVE DEADLINE_MS: until more than N0 ready lines; 1 if PID died
# (0 = do not watch) or the deadline passed.
wait_ready() {
    local n0="$1" watch="$2" deadline="$3"
    while (($(bench_now_ms) < deadline)); do
        (($(ready_count) > n0)) && return 0
        if [[ $watch != 0 ]] && gone "$watch"; then
            (($(ready_count) > n0)) && return 0
            return 1
        fi
        sleep 0.02
    done
    return 1
}

wait_gone() {
    local pid="$1" deadline="$2"
    while (($(bench_now_ms) < deadline)); do
        gone "$pid" && return 0
        sleep 0.02
    done
    return 1
}

# The newest server process that is not one of the PIDs given (the ready line's "pid" when it
# has one, else the processes whose command line names CONF).
find_new_pid() {
    local ready="$1" pid p k known
    shift
    pid="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - pid 2>/dev/null || true)"
    if [[ $pid =~ ^[0-9]+$ ]]; then
        printf '%s\n' "$pid"
        return 0
    fi
    pid=""
    while read -r p; do
        [[ -n $p ]] || continue
        known=0
        for k in "$@" "${SEEN[@]}"; do [[ $p == "$k" ]] && known=1; done
        ((known == 1)) || pid=$p
    done < <(python3 "$BENCH_HELPERS" pids-with-arg "$CONF")
    printf '%s\n' "$pid"
}

# addresses in the last ready line are the configured ones?
listen_ok() {
    local ready="$1" admin app
    admin="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.admin 2>/dev/null || true)"
    app="$(printf '%s' "$ready" | python3 "$BENCH_HELPERS" json-get - bound.apps.bench.listen 2>/dev/null || true)"
    [[ $admin == "127.0.0.1:$ADMIN_PORT" && $app == "127.0.0.1:$APP_PORT" ]]
}

admin_ok() {
    curl -fsS -o /dev/null --max-time 3 "$ADMIN_URL" 2>/dev/null
}

# extra_check added|removed: the second app answers, or its port refuses connections (curl exit
# 7), within a bounded poll of 5 s. Sets EXTRA_NOTE.
extra_check() {
    local want="$1" deadline rc
    deadline=$(($(bench_now_ms) + 5000))
    EXTRA_NOTE=""
    while :; do
        rc=0
        curl -fsS -o /dev/null --max-time 2 "$EXTRA_URL" 2>/dev/null || rc=$?
        if [[ $want == added && $rc == 0 ]] || [[ $want == removed && $rc == 7 ]]; then
            return 0
        fi
        if (($(bench_now_ms) > deadline)); then
            EXTRA_NOTE="curl exit code $rc (want $([[ $want == added ]] && echo 0 || echo '7, connection refused'))"
            return 1
        fi
        sleep 0.1
    done
}

# record KEY=VALUE...: one JSON line per step
record() {
    python3 "$BENCH_HELPERS" json-object "$@" >>"$STEPS"
}

# ---------------------------------------------------------------------------------------------
IDLE_MS=30000
EXTRA=0
write_config "$IDLE_MS" "$EXTRA"
SEEN=()
serve_spawn
CUR=$SPAWNED
SEEN+=("$CUR")
wait_ready 0 "$CUR" $(($(bench_now_ms) + 15000)) || {
    tail -n 20 "$ERR" >&2 2>/dev/null
    bench_die "cutover did not print its ready line"
}
bench_wait_http_ok "$URL" 15 || bench_die "GET $URL does not answer 2xx"
admin_ok || bench_die "the admin API does not answer at $ADMIN_URL"
extra_check removed || bench_die "127.0.0.1:$EXTRA_PORT (the second app's port) is in use before it was configured"
bench_log "cutover on $URL (admin 127.0.0.1:$ADMIN_PORT), pid $CUR, state dir $STATE"

bench_cpu_mark run
WRK_CMD="wrk -t$BENCH_WRK_THREADS -c$BENCH_CONNECTIONS -d$WRK_MAX --latency --timeout 10s $URL"
bench_log "$WRK_CMD (in the background, stopped with SIGINT after the last step)"
# shellcheck disable=SC2086 # WRK_CMD is split on purpose (no spaces inside its words)
"${BENCH_PIN_LOAD[@]}" $WRK_CMD >"$BENCH_TMP/wrk.txt" 2>&1 &
WRK_PID=$!
BENCH_PIDS+=("$WRK_PID")
sleep 2 # load before the first step

FATAL=""
# step_finish KIND I OLD NEW T0 T_READY EXTRA: once the new server is ready, waits for OLD to be
# gone, checks the listeners, the admin API and the second app (EXTRA: added, removed or
# nothing), and records the step
step_finish() {
    local kind="$1" i="$2" old="$3" new="$4" t0="$5" t_ready="$6" extra="$7"
    local t_exit="" code="null" ok=true note="" ready lok aok eok="null"
    if wait_gone "$old" $(($(bench_now_ms) + STEP_TIMEOUT * 1000)); then
        t_exit=$(($(bench_now_ms) - t0))
        # our own child: its exit code (bash reaped it; `wait` returns the status it kept)
        if [[ " ${OUR_CHILDREN[*]} " == *" $old "* ]]; then
            code=0
            wait "$old" 2>/dev/null || code=$?
            if [[ $code != 0 ]]; then
                ok=false
                note+="old process $old exited with $code; "
            fi
        fi
    else
        ok=false
        note+="old process $old still running ${STEP_TIMEOUT} s after the step began; "
    fi
    ready="$(python3 "$BENCH_HELPERS" ready-last "$OUT" || true)"
    lok=true
    listen_ok "$ready" || {
        lok=false
        ok=false
        note+="listeners moved: $ready; "
    }
    aok=true
    admin_ok || {
        aok=false
        ok=false
        note+="admin API did not answer; "
    }
    if [[ -n $extra ]]; then
        eok=true
        extra_check "$extra" || eok=false
    fi
    bench_alive "$WRK_PID" || {
        ok=false
        note+="wrk ended before this step; "
    }
    record "kind:=$kind" "i=$i" "ok=$ok" "old_pid=$old" "new_pid=${new:-null}" \
        "ready_ms=${t_ready:-null}" "exit_ms=${t_exit:-null}" "old_exit_code=$code" \
        "listen_ok=$lok" "admin_ok=$aok" "extra:=$extra" "extra_ok=$eok" "extra_note:=${EXTRA_NOTE:-}" \
        "note:=$note"
    bench_log "$kind $i: pid $old -> ${new:-?}, ready after ${t_ready:-?} ms, old gone after ${t_exit:-?} ms${extra:+, second app $extra (${eok})}${note:+; $note}"
}
OUR_CHILDREN=("$CUR")

# --- upgrades: cutover serve --upgrade --------------------------------------------------------
for ((i = 1; i <= UPGRADES; i++)); do
    [[ -z $FATAL ]] || break
    n0="$(ready_count)"
    old=$CUR
    t0="$(bench_now_ms)"
    serve_spawn --upgrade
    new=$SPAWNED
    OUR_CHILDREN+=("$new")
    SEEN+=("$new")
    if wait_ready "$n0" "$new" $((t0 + STEP_TIMEOUT * 1000)); then
        t_ready=$(($(bench_now_ms) - t0))
        CUR=$new
        step_finish upgrade "$i" "$old" "$new" "$t0" "$t_ready" ""
    else
        if gone "$new"; then
            note="pid $new exited without a ready line"
        else
            note="no ready line from pid $new within ${STEP_TIMEOUT} s (stopped it)"
        fi
        bench_alive "$new" && kill -TERM "$new" 2>/dev/null
        record "kind:=upgrade" "i=$i" "ok=false" "old_pid=$old" "new_pid=$new" "note:=$note"
        bench_log "upgrade $i: FAILED: $note; last lines of stderr:"
        tail -n 10 "$ERR" >&2 || true
    fi
    bench_alive "$CUR" || FATAL="the serving process $CUR is gone after upgrade $i"
    sleep "$PACE"
done

# --- reloads: SIGHUP, each with a changed config file --------------------------------------------
# Server processes (command line names CONF) other than $1 that are still running.
others_alive() {
    local n=0 p
    while read -r p; do
        [[ -n $p && $p != "$1" ]] && ! gone "$p" && n=$((n + 1))
    done < <(python3 "$BENCH_HELPERS" pids-with-arg "$CONF")
    printf '%s\n' "$n"
}

# wait_ready_after_hup N0 OLD T0: until a new ready line; fails early (sets HUP_NOTE) when, 2 s
# after the signal, no process but OLD runs on this config (the one SIGHUP started has exited).
wait_ready_after_hup() {
    local n0="$1" old="$2" t0="$3" deadline=$(($3 + STEP_TIMEOUT * 1000))
    HUP_NOTE="no new ready line within ${STEP_TIMEOUT} s of SIGHUP"
    while (($(bench_now_ms) < deadline)); do
        (($(ready_count) > n0)) && return 0
        if (($(bench_now_ms) - t0 >= 2000)) && [[ $(others_alive "$old") == 0 ]]; then
            (($(ready_count) > n0)) && return 0
            HUP_NOTE="the process SIGHUP started exited without a ready line"
            return 1
        fi
        sleep 0.05
    done
    return 1
}
reload() { # I KIND EXTRA_EXPECTATION
    local i="$1" kind="$2" extra="$3" n0 old t0 t_ready new ready
    n0="$(ready_count)"
    old=$CUR
    t0="$(bench_now_ms)"
    if ! kill -HUP "$old" 2>/dev/null; then
        record "kind:=$kind" "i=$i" "ok=false" "old_pid=$old" "note:=SIGHUP: no process $old"
        return 0
    fi
    if wait_ready_after_hup "$n0" "$old" "$t0"; then
        t_ready=$(($(bench_now_ms) - t0))
        ready="$(python3 "$BENCH_HELPERS" ready-last "$OUT" || true)"
        new="$(find_new_pid "$ready" "$old")"
        if [[ -n $new ]]; then
            SEEN+=("$new")
            BENCH_PIDS+=("$new")
            CUR=$new
        else
            bench_log "$kind $i: WARNING: a new server is ready but its pid was not found"
        fi
        step_finish "$kind" "$i" "$old" "$new" "$t0" "$t_ready" "$extra"
    else
        record "kind:=$kind" "i=$i" "ok=false" "old_pid=$old" "note:=$HUP_NOTE"
        bench_log "$kind $i: FAILED: $HUP_NOTE; last lines of stderr:"
        tail -n 10 "$ERR" >&2 || true
    fi
}

# invalid_reload I: a file the new process must refuse; the running server must keep serving.
invalid_reload() {
    local i="$1" n0 old t0 deadline others ok=true note=""
    # client_idle_timeout_ms must be greater than 0
    write_config 0 0
    n0="$(ready_count)"
    old=$CUR
    t0="$(bench_now_ms)"
    kill -HUP "$old" 2>/dev/null || true
    # settled: at least 1 s passed and no server process but the running one is left
    deadline=$((t0 + STEP_TIMEOUT * 1000))
    while :; do
        others="$(others_alive "$old")"
        if (($(bench_now_ms) - t0 >= 1000 && others == 0)); then
            break
        fi
        if (($(bench_now_ms) > deadline)); then
            ok=false
            note+="$others other server process(es) still running ${STEP_TIMEOUT} s after SIGHUP; "
            break
        fi
        sleep 0.05
    done
    if (($(ready_count) > n0)); then
        ok=false
        note+="a server became ready with an invalid config; "
    fi
    bench_alive "$old" || {
        ok=false
        note+="the running server $old exited; "
    }
    curl -fsS -o /dev/null --max-time 3 "$URL" 2>/dev/null || {
        ok=false
        note+="GET $URL failed after the refused reload; "
    }
    record "kind:=reload-invalid" "i=$i" "ok=$ok" "old_pid=$old" "note:=$note" \
        "stderr_tail:=$(tail -n 3 "$ERR" 2>/dev/null | cut -c1-300)"
    bench_log "invalid reload: ${note:-refused, pid $old kept serving}"
    # back to the valid file (the next reload reads it)
    write_config "$IDLE_MS" "$EXTRA"
}

for ((i = 1; i <= RELOADS; i++)); do
    [[ -z $FATAL ]] || break
    if ((i % 2 == 1)); then IDLE_MS=31000; else IDLE_MS=30000; fi
    expect=""
    case $((i % 4)) in
        2) EXTRA=1 expect=added ;;
        0) EXTRA=0 expect=removed ;;
    esac
    write_config "$IDLE_MS" "$EXTRA"
    reload "$i" reload "$expect"
    bench_alive "$CUR" || FATAL="the serving process $CUR is gone after reload $i"
    sleep "$PACE"
    if [[ $INVALID_RELOAD == 1 && $i == $((RELOADS / 2)) && -z $FATAL ]]; then
        invalid_reload "$i"
        bench_alive "$CUR" || FATAL="the serving process $CUR is gone after the invalid reload"
        sleep "$PACE"
    fi
done

sleep 1 # load after the last step
left="$(python3 "$BENCH_HELPERS" pids-with-arg "$CONF" | tr '\n' ' ')"
if bench_alive "$WRK_PID"; then
    kill -INT "$WRK_PID"
    deadline=$(($(bench_now_ms) + 15000))
    while ! gone "$WRK_PID" && (($(bench_now_ms) < deadline)); do sleep 0.05; done
    gone "$WRK_PID" || kill -KILL "$WRK_PID" 2>/dev/null || true
else
    FATAL="${FATAL:+$FATAL; }wrk ended before the steps were done (BENCH_WRK_MAX too short?)"
fi
wait "$WRK_PID" 2>/dev/null || true
bench_cpu_foreign run
sed 's/^/    /' "$BENCH_TMP/wrk.txt" >&2
[[ -z $FATAL ]] || record "kind:=fatal" "i=0" "ok=false" "note:=$FATAL"
bench_log "server processes left: $left(serving: $CUR)"

planned_invalid=0
[[ $INVALID_RELOAD != 1 ]] || ((RELOADS < 2)) || planned_invalid=1
python3 "$BENCH_HELPERS" json-object "wrk_cmd:=$WRK_CMD" "connections=$BENCH_CONNECTIONS" \
    "planned={\"upgrade\":$UPGRADES,\"reload\":$RELOADS,\"reload-invalid\":$planned_invalid}" \
    "layout:=$BENCH_PIN_TEXT" "proxy_threads=$BENCH_PROXY_THREADS" "step_timeout_s=$STEP_TIMEOUT" \
    "pace_s=$PACE" "servers_left:=$left" "serving_pid=$CUR" "fatal:=$FATAL" \
    "cutover:=$("$CUTOVER_BIN" --version 2>&1 | head -n1)" >"$BENCH_TMP/meta.json"
rc=0
python3 "$BENCH_HELPERS" report-upgrade --wrk "$BENCH_TMP/wrk.txt" --steps "$STEPS" \
    --meta "$BENCH_TMP/meta.json" --foreign-cpu "$BENCH_FOREIGN_CPU" \
    --cpu-idle-before "$BENCH_CPU_IDLE" || rc=$?
[[ -z $FATAL ]] || rc=1
exit "$rc"
