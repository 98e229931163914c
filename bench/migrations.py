#!/usr/bin/env python3
"""The live app's latency and errors while an expand migration backfills a large table.

    bench/migrations.py [--cutover target/release/cutover] [--rows 1000000] [--runs 3]

Each run starts from nothing: a fresh PostgreSQL cluster (initdb in a temp dir, PostgreSQL's
default settings but the listen address), `cutover serve` with one app (`web`) whose releases
are the example app with a PostgreSQL `users` table, and:

1. v1 is deployed (its migration 0001 creates `users (id bigserial PRIMARY KEY, name text)`) and
   promoted; then `--rows` users are inserted with psql (`generate_series`), VACUUM ANALYZE,
   CHECKPOINT: the table is seeded once v1 is live, before any load.
2. wrk sends `GET /users/<random id in 1..rows>` and `POST /users?name=...` (90/10 by default)
   through cutover's proxy at a fixed rate (`--rate`; `--rate 0`: closed loop, as fast as it
   goes) for a warm-up (discarded), then the "before" window (v1 live, nothing migrating).
3. `cutover deploy web v2 --no-follow`: v2's directory adds 0002_full_name.expand.sql, which adds
   `full_name` and backfills it from `name`. The "during" window is the rollout's `migrating`
   phase by the server's own clock: from its `deploy` event to its `migrated` event.
4. A short tail lets the requests sent during the expand finish; then everything is stopped.

Two variants of 0002, each run on its own fresh database, interleaved run by run:

- `single-tx`: `ALTER TABLE ... ADD COLUMN` and one `UPDATE` of every row, in the migration's
  transaction (the runner wraps the file in one). The linter refuses this file
  (`data-change-under-lock`, a rule this benchmark motivated); the UPDATE carries a
  `-- cutover:allow` with its reason so the unsafe way can be measured;
- `batched`: a `-- cutover:no-transaction` file: the ALTER (`IF NOT EXISTS`), then `--batches`
  UPDATEs of consecutive id ranges (`WHERE id BETWEEN a AND b AND full_name IS NULL`, the last one
  open-ended), each committed on its own; a rerun after a failure skips the rows already done.

`cutover migrate lint` runs on each variant's v2 directory first; its verdict is printed (a
finding does not stop the benchmark: the server's own linter would then refuse the rollout, and
the run says so).

How requests are counted. wrk runs one connection per thread, so the Lua script's request() and
response() pair up, and every request is logged with its send time (monotonic clock, the same the
script reads), its latency and its status. A request belongs to the window in which it was sent,
whatever its latency: a request the expand holds up for 20 s counts in "during" with its 20 s
(1 s wrk slices would silently drop it, since wrk forgets requests in flight when it stops).
Errors: answers outside 2xx/3xx, requests whose connection failed before an answer, and
requests still without an answer when wrk is stopped (tail seconds after `migrated`). At a fixed
rate a stalled connection sends nothing while it waits (the rate drops instead: see the req/s
columns); the percentiles are over the requests actually sent. In both windows one psql session
asks pg_stat_activity every `--probe-interval` s how many of the app's queries wait for a lock.

Needs wrk, taskset, PostgreSQL's server binaries (Debian: postgresql) and python3 (standard
library only). As root, PostgreSQL runs as the `postgres` user.

Layout (2 cores): PostgreSQL, `cutover serve` and the app instances it starts (1 tokio worker
each) on CPU `--server-cpu` (0), wrk (one thread per connection), this script, psql and the CLI
calls on CPU `--client-cpu` (1); the same for every window and variant. Loopback only. Progress
goes to stderr; stdout is a table and, last, one JSON line. Every process started is stopped and
the temp dir removed on exit (Ctrl-C included; `--keep-tmp` keeps the directory).
"""
import argparse
import json
import math
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_helpers import cpu_idle_pct, cpu_snapshot, descendants, foreign_cpu_pct, free_port, ready_line  # noqa: E402

TOKEN = "bench-migrations-admin-token-0123456789"
PG_PASSWORD = "bench-migrations-pg-pass"
APP = "web"
VARIANTS = ("single-tx", "batched")

USERS_SQL = "CREATE TABLE users (id bigserial PRIMARY KEY, name text);\n"

# wrk's Lua: one connection per thread, so the thread's last request() and its next response()
# are the same request. Each request is logged as "send_us latency_us status kind" (latency -1:
# no answer, the connection failed and wrk reconnected).
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC, as Python's time.monotonic()
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  log = io.open(args[1] .. "." .. tid, "w")
  log:setvbuf("full", 65536)
  rows = tonumber(args[2])
  post_pct = tonumber(args[3])
  interval_us = tonumber(args[4])
  math.randomseed(tid * 7919 + os.time())
  seq = 0
  sent_at = 0
  kind = "g"
  next_due = 0
  -- wrk calls the first thread's request() once before the run to check it: not a request
  checked = tid ~= 1
end

function request()
  if sent_at > 0 and checked then
    log:write(sent_at, " -1 0 ", kind, "\n")
  end
  checked = true
  seq = seq + 1
  local req
  if math.random(100) <= post_pct then
    kind = "p"
    req = wrk.format("POST", "/users?name=bench-" .. tid .. "-" .. seq, nil, "")
  else
    kind = "g"
    req = wrk.format("GET", "/users/" .. math.random(rows))
  end
  sent_at = now_us()
  return req
end

function response(status, headers, body)
  if sent_at > 0 then
    log:write(sent_at, " ", now_us() - sent_at, " ", status, " ", kind, "\n")
    sent_at = 0
  end
end

function done(summary, latency, requests)
  local pending = {}
  for _, t in ipairs(threads) do
    local s = t:get("sent_at")
    if s and s > 0 then table.insert(pending, string.format("%d", s)) end
  end
  local e = summary.errors
  io.write(string.format("BENCH-DONE %d %d %d %d %d %d %s\n", summary.requests, e.connect, e.read,
    e.write, e.timeout, e.status, table.concat(pending, ",")))
end
"""

# Pacing at a fixed rate: each connection sends every `interval_us`, without catching up after a
# stall (a connection that waited 10 s sends its next request at once, not a burst of the missed
# ones).
LUA_DELAY = r"""
function delay()
  local now = now_us()
  if next_due == 0 then
    next_due = now + math.random(math.max(1, math.floor(interval_us)))
  else
    next_due = math.max(next_due + interval_us, now)
  end
  return math.floor((next_due - now) / 1000)
end
"""


def log(*args):
    print("[bench migrations]", *args, file=sys.stderr, flush=True)


def mono_us():
    return time.monotonic_ns() // 1000


def wall_minus_mono_us():
    return time.time_ns() // 1000 - time.monotonic_ns() // 1000


# --------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process a run started, stopped in reverse order: politely, then by force."""

    def __init__(self):
        self.items = []  # (name, Popen, stop signal, grace s)

    def start(self, name, cmd, stop_signal=signal.SIGTERM, grace=10.0, **kw):
        log("start", name + ":", " ".join(cmd))
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.items.append((name, p, stop_signal, grace))
        return p

    def stop_all(self):
        while self.items:
            name, p, sig, grace = self.items.pop()
            if p.poll() is not None:
                continue
            # cutover's instances may sit in their own process groups: note them before the
            # server goes, and kill whatever of them is left afterwards.
            tree = [(pid, started_at(pid)) for pid in descendants(p.pid) if pid != p.pid]
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop within {grace} s of {signal.Signals(sig).name}: SIGKILL")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
            for pid, start in tree:
                # Only the very process noted above, not one that reused its pid since.
                if start is not None and started_at(pid) == start:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


def started_at(pid):
    """The start time of `pid` (clock ticks since boot), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def wait_file_line(path, proc, deadline, what):
    """The `ready` JSON line `proc` writes to `path`, or an error with the file's tail."""
    while time.monotonic() < deadline:
        ready = ready_line(path)
        if ready:
            return ready
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not report ready (exit {proc.poll()}); {path}:\n{tail(path)}")


def tail(path, n=3000):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin_dir(given):
    if given:
        return given
    versions = []
    for entry in os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else []:
        if entry.isdigit() and os.path.exists(f"/usr/lib/postgresql/{entry}/bin/postgres"):
            versions.append(int(entry))
    if not versions:
        sys.exit("PostgreSQL is not installed (no /usr/lib/postgresql/N/bin/postgres): apt-get install postgresql")
    return f"/usr/lib/postgresql/{max(versions)}/bin"


def postgres_user():
    """(uid, gid) of `postgres` when running as root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    with open("/etc/passwd", encoding="utf-8") as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == "postgres":
                return int(fields[2]), int(fields[3])
    sys.exit("running as root and there is no `postgres` user to run PostgreSQL as: apt-get install postgresql")


class Postgres:
    def __init__(self, root, args, procs):
        self.bin = args.pg_bin
        self.dir = os.path.join(root, "pg")
        self.data = os.path.join(self.dir, "data")
        self.owner = postgres_user()
        os.makedirs(self.dir)
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PG_PASSWORD)
        if self.owner:
            for path in (self.dir, pwfile):
                os.chown(path, *self.owner)
        out = subprocess.run(
            [os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"],
            preexec_fn=self._drop, capture_output=True, text=True, timeout=120, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
        self.port = free_port()
        settings = ["listen_addresses=127.0.0.1"] + list(args.pg_conf)
        cmd = ["taskset", "-c", args.server_cpu, os.path.join(self.bin, "postgres"), "-D", self.data,
               "-k", self.dir, "-p", str(self.port)]
        for s in settings:
            cmd += ["-c", s]
        self.command = cmd
        self.log = os.path.join(self.dir, "postgres.log")
        self.proc = procs.start("postgres", cmd, stop_signal=signal.SIGINT, grace=60.0, preexec_fn=self._drop,
                                stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.url = f"postgres://postgres:{PG_PASSWORD}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{tail(self.log)}")
            if "ready to accept connections" in tail(self.log, 100_000):
                try:
                    self.query("SELECT 1")
                    return
                except RuntimeError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"postgres was not ready within 60 s:\n{tail(self.log)}")

    def _drop(self):
        if self.owner:
            os.setgroups([])
            os.setgid(self.owner[1])
            os.setuid(self.owner[0])

    def query(self, sql, timeout=60.0):
        """psql over TCP with the password, as the app and cutover connect."""
        out = subprocess.run(
            [os.path.join(self.bin, "psql"), self.url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", sql],
            capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql -c {sql[:200]!r} failed: {out.stderr.strip()}")
        return out.stdout.strip()


# --------------------------------------------------------------------------------------------
# cutover


def backfill_sql(variant, rows, batches):
    if variant == "single-tx":
        return (
            "-- full_name, filled from name in the migration's own transaction\n"
            "ALTER TABLE users ADD COLUMN full_name text;\n"
            "-- cutover:allow data-change-under-lock: the unsafe way, run on purpose to measure what the rule prevents\n"
            "UPDATE users SET full_name = name WHERE full_name IS NULL;\n"
        )
    size = max(1, -(-rows // batches))
    lines = [
        "-- cutover:no-transaction",
        f"-- full_name, filled from name in {batches} batches of {size} ids, each committed on its own;",
        "-- a rerun after a failure part-way skips the rows already done",
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS full_name text;",
    ]
    for i in range(batches):
        first = i * size + 1
        if first > rows:
            break
        if i == batches - 1 or first + size > rows:
            # Open-ended: also the users v1 added since the seed.
            lines.append(f"UPDATE users SET full_name = name WHERE id >= {first} AND full_name IS NULL;")
            break
        lines.append(f"UPDATE users SET full_name = name WHERE id BETWEEN {first} AND {first + size - 1} AND full_name IS NULL;")
    return "\n".join(lines) + "\n"


def write_release(root, version, files):
    d = os.path.join(root, "releases", version, "migrations")
    os.makedirs(d, exist_ok=True)
    for name, sql in files:
        with open(os.path.join(d, name), "w") as f:
            f.write(sql)
    return d


def app_command(binary, version, schema):
    return (f"exec '{binary}' example-app --port {{port}} --version-label {version} --threads 1 "
            f"--users-schema {schema}")


def write_config(root, binary, url_file):
    path = os.path.join(root, "cutover.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
state_dir = "{root}/state"

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "{APP}"
listen = "127.0.0.1:0"
platform = "local"
stop_grace_ms = 2000

[app.release]
command = "{app_command(binary, '{version}', 'old')}"

[app.readiness]
interval_ms = 100

[app.rollout]
steps = [{{ weight_bp = 5000, duration_ms = 600000 }}, {{ weight_bp = 10000 }}]
rollback_window_ms = 600000
readiness_deadline_ms = 30000

[app.migrations]
dir = "{root}/releases/{{version}}/migrations"
engine = "postgres"
url_file = "{url_file}"
lock_timeout_ms = 2000
""")
    return path


class Cutover:
    def __init__(self, root, args, procs, url_file):
        self.binary = args.cutover
        config = write_config(root, self.binary, url_file)
        out = os.path.join(root, "serve.out")
        self.err = os.path.join(root, "serve.err")
        self.proc = procs.start(
            "cutover serve", ["taskset", "-c", args.server_cpu, self.binary, "serve", "--config", config],
            stdout=open(out, "w"), stderr=open(self.err, "w"), cwd=root,
            env={**os.environ, "CUTOVER_ADMIN_TOKEN": TOKEN, "TOKIO_WORKER_THREADS": "1"},
        )
        ready = wait_file_line(out, self.proc, time.monotonic() + 30, "cutover serve")
        self.admin = "http://" + ready["bound"]["admin"]
        self.listen = ready["bound"]["apps"][APP]["listen"]
        self.secret = f"EXAMPLE_USERS_DB=file:{url_file}"

    def cli(self, *args, timeout=120.0):
        out = subprocess.run(
            [self.binary, "--admin", self.admin, *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "CUTOVER_ADMIN_TOKEN": TOKEN}, stdin=subprocess.DEVNULL, check=False,
        )
        return out.returncode, out.stdout + out.stderr

    def get(self, path):
        request = urllib.request.Request(self.admin + path, headers={"Authorization": "Bearer " + TOKEN})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def rollout(self):
        return (self.get(f"/v1/apps/{APP}/status") or {}).get("rollout") or {}

    def wait_phase(self, phase, seconds):
        deadline = time.monotonic() + seconds
        got = None
        while time.monotonic() < deadline:
            got = (self.rollout().get("phase") or {}).get("phase")
            if got == phase:
                return
            time.sleep(0.1)
        raise RuntimeError(f"phase {phase} not reached within {seconds} s (now {got}):\n{tail(self.err)}")


def lint(binary, directory):
    out = subprocess.run([binary, "migrate", "lint", directory], capture_output=True, text=True, timeout=60, check=False)
    return out.returncode, (out.stdout + out.stderr).strip()


# --------------------------------------------------------------------------------------------
# measuring


def cpu_busy():
    """{cpu index: (busy, total) jiffies} from /proc/stat."""
    out = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                vals = [int(v) for v in m.group(2).split()[:8]]
                out[int(m.group(1))] = (sum(vals) - vals[3] - vals[4], sum(vals))
    return out


def busy_pct(a, b, cpu):
    (b0, t0), (b1, t1) = a[cpu], b[cpu]
    return round(100.0 * (b1 - b0) / max(1, t1 - t0), 1)


LOCK_PROBE = (
    "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND application_name <> 'cutover-migrate' "
    "AND pid <> pg_backend_pid() AND state = 'active'"
)


class LockProbe:
    """One psql session over the Unix socket (no new backend per sample, no SCRAM handshake),
    asked every few hundred ms how many of the app's queries wait for a lock and how many run.
    pg_stat_activity takes no lock on the app's tables: the probe never waits for the expand."""

    def __init__(self, pg, procs):
        self.proc = procs.start(
            "lock probe (psql)",
            [os.path.join(pg.bin, "psql"), "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", "postgres",
             "-X", "-q", "-A", "-t"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )

    def sample(self):
        try:
            self.proc.stdin.write(LOCK_PROBE + ";\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], 2.0)
            if not ready:
                return None
            waiting, active = self.proc.stdout.readline().strip().split("|")
            return int(waiting), int(active)
        except (OSError, ValueError):
            return None


def read_requests(prefix, threads):
    """Every logged request: (send_us, latency_us or -1, status, kind)."""
    out = []
    for tid in range(1, threads + 1):
        try:
            with open(f"{prefix}.{tid}", encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4:
                        out.append((int(float(parts[0])), int(float(parts[1])), int(parts[2]), parts[3]))
        except OSError:
            pass
    return out


def pct(sorted_values, p):
    if not sorted_values:
        return None
    # Nearest rank: the smallest value with at least p % of the values at or below it.
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1))]


def window(requests, pending, t0, t1):
    sel = [r for r in requests if t0 <= r[0] < t1]
    lat = sorted(r[1] for r in sel if r[1] >= 0)
    non_2xx_3xx = sum(1 for r in sel if r[1] >= 0 and not 200 <= r[2] < 400)
    no_answer = sum(1 for r in sel if r[1] < 0)
    unfinished = sum(1 for s in pending if t0 <= s < t1)
    seconds = max(1e-9, (t1 - t0) / 1e6)

    def ms(v):
        return None if v is None else round(v / 1000.0, 3)

    by_kind = {k: sorted(r[1] for r in sel if r[1] >= 0 and r[3] == k) for k in ("g", "p")}
    return {
        "seconds": round(seconds, 3),
        "requests": len(sel) + unfinished,
        "req_per_s": round((len(sel) + unfinished) / seconds, 1),
        "p50_ms": ms(pct(lat, 50)),
        "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(lat[-1] if lat else None),
        "p99_get_ms": ms(pct(by_kind["g"], 99)),
        "p99_post_ms": ms(pct(by_kind["p"], 99)),
        "errors": non_2xx_3xx + no_answer + unfinished,
        "non_2xx_3xx": non_2xx_3xx,
        "no_answer": no_answer,
        "unfinished": unfinished,
        "status_counts": {str(s): n for s, n in sorted(count_by(r[2] for r in sel if r[1] >= 0).items())},
    }


def count_by(values):
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def parse_done(text):
    m = re.search(r"^BENCH-DONE (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) ?(\S*)$", text, re.M)
    if not m:
        return None
    return {
        "requests": int(m.group(1)),
        "socket_errors": {"connect": int(m.group(2)), "read": int(m.group(3)), "write": int(m.group(4)),
                          "timeout": int(m.group(5))},
        "non_2xx_3xx": int(m.group(6)),
        "pending": [int(s) for s in m.group(7).split(",") if s],
    }


# --------------------------------------------------------------------------------------------
# one run


def one_run(args, variant, run):
    root = tempfile.mkdtemp(prefix=f"cutover-bench-migrations-{variant}-")
    os.chmod(root, 0o711)  # PostgreSQL, running as `postgres`, lives in root/pg
    procs = Procs()
    result = {"variant": variant, "run": run, "rows": args.rows, "ok": False}
    try:
        pg = Postgres(root, args, procs)
        result["postgres_command"] = " ".join(pg.command)
        url_file = os.path.join(root, "database-url")
        with open(url_file, "w") as f:
            f.write(pg.url + "\n")
        os.chmod(url_file, 0o600)
        write_release(root, "v1", [("0001_users.expand.sql", USERS_SQL)])
        write_release(root, "v2", [("0001_users.expand.sql", USERS_SQL),
                                   ("0002_full_name.expand.sql", backfill_sql(variant, args.rows, args.batches))])

        cutover = Cutover(root, args, procs, url_file)
        code, out = cutover.cli("deploy", APP, "v1", "--secret", cutover.secret, timeout=180)
        if code != 0:
            raise RuntimeError(f"deploy v1 exited {code}:\n{out}\n{tail(cutover.err)}")
        code, out = cutover.cli("promote", APP)
        if code != 0:
            raise RuntimeError(f"promote v1 exited {code}:\n{out}")
        cutover.wait_phase("succeeded", 60)

        t = time.monotonic()
        pg.query(f"INSERT INTO users (name) SELECT 'user-' || i FROM generate_series(1, {args.rows}) AS i",
                 timeout=1800)
        pg.query("VACUUM ANALYZE users", timeout=1800)
        pg.query("CHECKPOINT", timeout=600)
        log(f"{variant} run {run}: seeded {args.rows} users in {time.monotonic() - t:.1f} s")
        base = "http://" + cutover.listen
        with urllib.request.urlopen(f"{base}/users/{args.rows}", timeout=10) as r:
            body = json.loads(r.read())
            if body.get("name") != f"user-{args.rows}":
                raise RuntimeError(f"GET /users/{args.rows} through the proxy answered {body}")

        # wrk: long enough for anything; stopped by SIGINT once the expand is over.
        lua = os.path.join(root, "load.lua")
        with open(lua, "w") as f:
            f.write(LUA + (LUA_DELAY if args.rate > 0 else ""))
        interval_us = args.connections / args.rate * 1e6 if args.rate > 0 else 0
        prefix = os.path.join(root, "requests")
        upper = int(args.warmup + args.before + args.max_expand + args.tail + 60)
        wrk_cmd = ["taskset", "-c", args.client_cpu, "wrk", f"-t{args.connections}", f"-c{args.connections}",
                   f"-d{upper}s", "--timeout", "120s", "-s", lua, base, "--", prefix, str(args.rows),
                   str(args.post_pct), str(interval_us)]
        result["wrk_command"] = " ".join(wrk_cmd)
        wrk_out = os.path.join(root, "wrk.out")
        snapshot = os.path.join(root, "cpu.snapshot")
        cpu_snapshot(snapshot, os.getpid(), [pg.proc.pid, cutover.proc.pid])
        wrk = procs.start("wrk", wrk_cmd, stop_signal=signal.SIGINT, grace=30.0,
                          stdout=open(wrk_out, "w"), stderr=subprocess.STDOUT)
        t_start = mono_us()
        time.sleep(args.warmup)
        if wrk.poll() is not None:
            raise RuntimeError(f"wrk exited during the warm-up:\n{tail(wrk_out)}")

        probe = LockProbe(pg, procs)
        probes = {"before": [], "during": []}
        t_before = mono_us()
        cpu_before = cpu_busy()
        while mono_us() < t_before + args.before * 1e6:
            probes["before"].append(probe.sample())
            time.sleep(max(0.0, min(args.probe_interval, (t_before + args.before * 1e6 - mono_us()) / 1e6)))

        cmd2 = app_command(cutover.binary, "v2", "both")
        t_deploy = mono_us()
        cpu_deploy = cpu_busy()
        code, out = cutover.cli("deploy", APP, "v2", "--no-follow", "--cmd", cmd2, "--secret", cutover.secret)
        if code != 0:
            raise RuntimeError(f"deploy v2 --no-follow exited {code}:\n{out}")
        rollout_id = cutover.rollout().get("id")
        offset = wall_minus_mono_us()
        started = None
        migrated = None
        failure = None
        next_probe = time.monotonic()
        deadline = time.monotonic() + args.max_expand
        while time.monotonic() < deadline and migrated is None and failure is None:
            if time.monotonic() >= next_probe:
                probes["during"].append(probe.sample())
                next_probe = time.monotonic() + args.probe_interval
            # The phase first: once it is past migrating, the events read next hold `migrated`
            # if the expand succeeded.
            phase = (cutover.rollout().get("phase") or {}).get("phase")
            events = cutover.get(f"/v1/apps/{APP}/events?rollout={rollout_id}&limit=1000")
            for e in events:
                if e["kind"] == "deploy" and started is None:
                    started = e
                if e["kind"] == "migrated":
                    migrated = e
            if migrated is None and phase not in ("migrating", None):
                failure = f"phase {phase}: " + "; ".join(f"{e['kind']}: {e['message']}" for e in events[-3:])
            time.sleep(0.1)
        t_seen = mono_us()
        cpu_migrated = cpu_busy()
        if migrated is None:
            failure = failure or f"no `migrated` event within {args.max_expand} s"
        time.sleep(args.tail)
        os.killpg(wrk.pid, signal.SIGINT)
        try:
            wrk.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(wrk.pid, signal.SIGKILL)
            wrk.wait(10)
        foreign = foreign_cpu_pct(snapshot, os.getpid(), [pg.proc.pid, cutover.proc.pid])
        wrk_text = tail(wrk_out, 100_000)
        done = parse_done(wrk_text)
        if done is None:
            raise RuntimeError(f"wrk's summary is missing:\n{wrk_text[-3000:]}")
        requests = read_requests(prefix, args.connections)
        log(f"{variant} run {run}: {len(requests)} requests logged, wrk counted {done['requests']}")

        # The during window is the rollout's migrating phase by the server's own clock (ms):
        # from its `deploy` event to its `migrated` event. Between the end of the before window
        # and the deploy event, the CLI starts (a few ms): in neither window.
        t_phase = t_deploy
        if started is not None:
            t_phase = max(t_deploy, min(t_seen, started["at"] * 1000 - offset))
        if migrated is not None:
            t_migrated = max(t_phase, min(t_seen, migrated["at"] * 1000 - offset))
            result["migrated_event"] = migrated["message"]
        else:
            t_migrated = t_seen
        result["failure"] = failure
        result["expand_s"] = round((t_migrated - t_phase) / 1e6, 3)
        result["before"] = window(requests, done["pending"], t_before, t_deploy)
        result["during"] = window(requests, done["pending"], t_phase, t_migrated)
        result["warmup"] = window(requests, done["pending"], t_start, t_before)
        result["wrk_whole_run"] = {k: done[k] for k in ("requests", "socket_errors", "non_2xx_3xx")}
        result["wrk_whole_run"]["unfinished"] = len(done["pending"])
        for name, a, b in (("before", cpu_before, cpu_deploy), ("during", cpu_deploy, cpu_migrated)):
            result[name]["server_cpu_busy_pct"] = busy_pct(a, b, int(args.server_cpu))
            result[name]["client_cpu_busy_pct"] = busy_pct(a, b, int(args.client_cpu))
            seen = [p for p in probes[name] if p is not None]
            result[name]["lock_probes"] = len(seen)
            result[name]["max_app_queries_waiting_for_lock"] = max((p[0] for p in seen), default=None)
        result["foreign_cpu_pct"] = foreign
        if result["before"]["p99_ms"] and result["during"]["p99_ms"] is not None:
            result["p99_ratio"] = round(result["during"]["p99_ms"] / result["before"]["p99_ms"], 2)
        if migrated is not None:
            result["sql_ms"] = int(pg.query(
                "SELECT duration_ms FROM cutover_migrations WHERE name = '0002_full_name' AND phase = 'expand'"
            ) or 0)
            result["rows_not_backfilled"] = int(pg.query(
                f"SELECT count(*) FROM users WHERE id <= {args.rows} AND full_name IS DISTINCT FROM name"
            ))
            if result["rows_not_backfilled"]:
                failure = f"{result['rows_not_backfilled']} seeded rows have no full_name after the expand"
                result["failure"] = failure
        result["ok"] = failure is None
        return result
    except Exception as e:  # noqa: BLE001 - one failed run is reported, the others still run
        result["failure"] = f"{type(e).__name__}: {e}"
        log(f"{variant} run {run} FAILED: {result['failure']}")
        return result
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log("kept", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# report


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def spread(values, spec="{:.2f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return spec.format(med)
    return f"{spec.format(med)} [{spec.format(min(values))}-{spec.format(max(values))}]"


def report(args, lints, results, layout):
    print()
    print(f"cutover: {args.cutover}")
    print(f"rows: {args.rows}, runs: {args.runs}, variants: {', '.join(args.variants)}, batches (batched): {args.batches}")
    rate = f"{args.rate} req/s" if args.rate > 0 else "closed loop (as fast as answers come)"
    print(f"load: wrk, {args.connections} connections (1 per thread), {rate}, "
          f"{100 - args.post_pct}% GET /users/<random 1..rows>, {args.post_pct}% POST /users; "
          f"warm-up {args.warmup} s, before {args.before} s, during = deploy -> `migrated`, tail {args.tail} s")
    print(f"layout: {layout}")
    for r in results:
        if r.get("wrk_command"):
            print(f"wrk: {r['wrk_command']}")
            print(f"postgres: {r['postgres_command']}")
            break
    print()
    for variant, (code, text) in lints.items():
        verdict = "no finding" if code == 0 else f"exit {code}: FINDINGS"
        print(f"lint {variant}: {verdict}")
        for line in text.splitlines():
            print(f"    {line}")
    print()
    head = (f"{'variant':<10} {'run':>3} {'expand s':>9} {'SQL s':>7} | {'before req/s':>12} {'p50':>7} {'p99':>7} "
            f"{'err':>5} | {'during req/s':>12} {'p50':>7} {'p99':>8} {'max':>8} {'err':>5} {'lockwait':>8} | "
            f"{'p99 x':>7} {'other CPU%':>10}")
    print(head)
    print("-" * len(head))
    for r in results:
        if "before" not in r:
            print(f"{r['variant']:<10} {r['run']:>3}  FAILED: {r.get('failure')}")
            continue
        b, d = r["before"], r["during"]
        sql = r.get("sql_ms")
        print(f"{r['variant']:<10} {r['run']:>3} {fmt(r['expand_s'], '{:.2f}'):>9} "
              f"{fmt(None if sql is None else sql / 1000, '{:.2f}'):>7} | "
              f"{fmt(b['req_per_s'], '{:.0f}'):>12} {fmt(b['p50_ms']):>7} {fmt(b['p99_ms']):>7} {b['errors']:>5} | "
              f"{fmt(d['req_per_s'], '{:.0f}'):>12} {fmt(d['p50_ms']):>7} {fmt(d['p99_ms']):>8} {fmt(d['max_ms'], '{:.0f}'):>8} "
              f"{d['errors']:>5} {fmt(d['max_app_queries_waiting_for_lock'], '{}'):>8} | "
              f"{fmt(r.get('p99_ratio'), '{:.1f}'):>7} {fmt(r['foreign_cpu_pct'], '{:.1f}'):>10}"
              + ("" if r["ok"] else f"  FAILED: {r.get('failure')}"))
    print("(latencies in ms; lockwait: most of the app's queries seen waiting for a lock at once, "
          f"sampled every {args.probe_interval} s; p99 x: p99 during / p99 before of the same run)")
    print()
    summary = {}
    print(f"summary over runs: median [min-max]")
    for variant in args.variants:
        rs = [r for r in results if r["variant"] == variant and "before" in r]
        if not rs:
            continue
        s = {
            "runs": len(rs),
            "failed_runs": sum(1 for r in rs if not r["ok"]),
            "expand_s": [r["expand_s"] for r in rs],
            "p50_before_ms": [r["before"]["p50_ms"] for r in rs],
            "p99_before_ms": [r["before"]["p99_ms"] for r in rs],
            "p50_during_ms": [r["during"]["p50_ms"] for r in rs],
            "p99_during_ms": [r["during"]["p99_ms"] for r in rs],
            "max_during_ms": [r["during"]["max_ms"] for r in rs],
            "p99_ratio": [r.get("p99_ratio") for r in rs],
            "req_per_s_before": [r["before"]["req_per_s"] for r in rs],
            "req_per_s_during": [r["during"]["req_per_s"] for r in rs],
            "requests_before": [r["before"]["requests"] for r in rs],
            "requests_during": [r["during"]["requests"] for r in rs],
            "errors_before": [r["before"]["errors"] for r in rs],
            "errors_during": [r["during"]["errors"] for r in rs],
        }
        summary[variant] = s
        print(f"  {variant}: expand {spread(s['expand_s'])} s; p99 before {spread(s['p99_before_ms'])} ms, "
              f"during {spread(s['p99_during_ms'])} ms, x {spread(s['p99_ratio'], '{:.1f}')}; "
              f"p50 before {spread(s['p50_before_ms'])}, during {spread(s['p50_during_ms'])} ms; "
              f"req/s before {spread(s['req_per_s_before'], '{:.0f}')}, during {spread(s['req_per_s_during'], '{:.0f}')}; "
              f"errors before {sum(s['errors_before'])} of {sum(s['requests_before'])}, "
              f"during {sum(s['errors_during'])} of {sum(s['requests_during'])}")
    disturbed = [f"{r['variant']} {r['run']}" for r in results if (r.get("foreign_cpu_pct") or 0) > 5]
    if disturbed:
        print(f"WARNING: other processes used more than 5 % of the machine during run(s) {', '.join(disturbed)}: "
              "their figures are not comparable; run again on a quiet machine")
    slow = [f"{r['variant']} {r['run']}" for r in results
            if args.rate > 0 and "before" in r and r["before"]["req_per_s"] < 0.95 * args.rate]
    if slow:
        print(f"WARNING: the before window fell short of --rate {args.rate:g} in run(s) {', '.join(slow)}: "
              "the app was saturated, so its latencies include queueing; lower --rate")
    print()
    doc = {
        "bench": "migrations",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cutover": args.cutover,
        "rows": args.rows,
        "runs": args.runs,
        "batches": args.batches,
        "rate": args.rate,
        "connections": args.connections,
        "post_pct": args.post_pct,
        "warmup_s": args.warmup,
        "before_s": args.before,
        "tail_s": args.tail,
        "layout": layout,
        "lint": {v: {"exit": c, "output": t} for v, (c, t) in lints.items()},
        "summary": summary,
        "results": results,
    }
    print(json.dumps(doc, separators=(",", ":")))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cutover", default=os.path.join(root, "target/release/cutover"), help="the cutover binary")
    p.add_argument("--rows", type=int, default=1_000_000, help="users seeded before the load")
    p.add_argument("--runs", type=int, default=3, help="runs of each variant (interleaved)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--batches", type=int, default=20, help="UPDATE statements of the batched backfill")
    p.add_argument("--rate", type=float, default=1000, help="requests per second in all; 0: closed loop")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (one thread each)")
    p.add_argument("--post-pct", type=int, default=10, help="share of POST /users in %%")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the before window")
    p.add_argument("--before", type=float, default=10.0, help="seconds of the before window")
    p.add_argument("--tail", type=float, default=3.0, help="seconds of load after `migrated` (not measured)")
    p.add_argument("--max-expand", type=float, default=900.0, help="give up on an expand after this many s")
    p.add_argument("--probe-interval", type=float, default=0.2, help="s between lock-wait probes (pg_stat_activity)")
    p.add_argument("--server-cpu", default="0", help="CPU of PostgreSQL, cutover and the app")
    p.add_argument("--client-cpu", default="1", help="CPU of wrk, this script, psql and the CLI")
    p.add_argument("--pg-bin", default=None, help="PostgreSQL's bin directory (default: the newest installed)")
    p.add_argument("--pg-conf", action="append", default=[], metavar="NAME=VALUE",
                   help="a postgres -c setting (repeatable); default: PostgreSQL's defaults")
    p.add_argument("--keep-tmp", action="store_true", help="keep each run's temp dir (configs, logs, request logs)")
    args = p.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}: {', '.join(VARIANTS)}")
    if args.runs < 1 or args.rows < 1 or args.batches < 1 or args.connections < 1:
        p.error("--runs, --rows, --batches and --connections must be at least 1")
    args.cutover = os.path.abspath(args.cutover)
    if not os.path.exists(args.cutover):
        sys.exit(f"{args.cutover} is missing: build it first (cargo build --release --bin cutover)")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install wrk util-linux")
    args.pg_bin = pg_bin_dir(args.pg_bin)
    help_text = subprocess.run([args.cutover, "example-app", "--help"], capture_output=True, text=True,
                               timeout=30, check=False).stdout
    if "--users-db" not in help_text:
        sys.exit(f"{args.cutover} has no `example-app --users-db`: it predates the /users routes; rebuild it")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background by a shell that ignores SIGINT for its jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # This script (and what it starts: psql, the CLI) shares the client CPU with wrk.
    os.sched_setaffinity(0, {int(args.client_cpu)})
    layout = (f"CPU {args.server_cpu}: PostgreSQL (all its processes), cutover serve "
              f"(TOKIO_WORKER_THREADS=1) and the app instances it starts (--threads 1); "
              f"CPU {args.client_cpu}: wrk ({args.connections} threads), this script, psql, the cutover CLI "
              f"(taskset; {os.cpu_count()} CPUs)")
    log("layout:", layout)
    idle = cpu_idle_pct(1.0)
    if idle < 90:
        log(f"WARNING: the CPUs were only {idle}% idle in the second before the benchmark: "
            "something else is running and the figures will not be comparable")

    lints = {}
    with tempfile.TemporaryDirectory(prefix="cutover-bench-migrations-lint-") as d:
        for variant in args.variants:
            directory = write_release(os.path.join(d, variant), "v2", [
                ("0001_users.expand.sql", USERS_SQL),
                ("0002_full_name.expand.sql", backfill_sql(variant, args.rows, args.batches)),
            ])
            lints[variant] = lint(args.cutover, directory)
            log(f"lint {variant}: exit {lints[variant][0]}: {lints[variant][1]}")

    results = []
    try:
        for run in range(1, args.runs + 1):
            for variant in args.variants:
                log(f"{variant} run {run}/{args.runs}")
                r = one_run(args, variant, run)
                results.append(r)
                if "before" in r:
                    log(f"{variant} run {run}: expand {r['expand_s']} s, p99 before {r['before']['p99_ms']} ms, "
                        f"during {r['during']['p99_ms']} ms, errors {r['before']['errors']} / {r['during']['errors']}, "
                        f"other CPU {r['foreign_cpu_pct']} %")
    except KeyboardInterrupt:
        log("interrupted: reporting the runs done so far")
    report(args, lints, results, layout)
    return 0 if results and all(r["ok"] for r in results) and len(results) == args.runs * len(args.variants) else 1


if __name__ == "__main__":
    sys.exit(main())
