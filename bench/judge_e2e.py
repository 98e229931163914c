#!/usr/bin/env python3
"""Driver of bench/judge-e2e.sh: the judge end to end, with real processes (standard library only).

Subcommands:
  write-config ...       write the cutover.toml of the benchmark (two apps, local platform); options
                         the binary does not know yet (`cutover config check` says "unknown field")
                         are dropped one by one and reported
  run ...                deploy every scenario BENCH_RUNS times under load, print the table, the
                         target check and one JSON line; exit 0 targets met, 1 missed, 2 error
  pids-with-arg TEXT     pids of processes whose command line contains TEXT (the cleanup trap
                         uses it to find the example-app instances by their session-store path)
  loadgen ...            the sticky load generator alone against 127.0.0.1:PORT, for trying it
  attack ...             the hostile client alone against 127.0.0.1:PORT, for trying it

Every connection goes to 127.0.0.1 only; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import queue
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"

# --------------------------------------------------------------------------------------------
# scenarios

# Targets (checked at the end; the exit status says whether they were met).
TARGET_DECISION_S = 30.0  # faulty canaries at 200 req/s: first canary request -> rollback
TARGET_FAILED_SHARE = 0.001  # faulty scenarios: share of user requests that failed


@dataclass
class Scenario:
    name: str
    app: str  # "fast" (200 req/s policy) or "low" (5 req/s policy)
    faulty: bool
    base_flags: str  # example-app flags of the live version (the baseline)
    canary_flags: str  # example-app flags of the new version
    sessions: bool = False  # users log in on the baseline first and read /api/me
    missing_share: float = 0.0  # share of user requests for a page that does not exist (404)
    attack: bool = False  # the hostile client runs during the deploy
    note: str = ""

    @property
    def expect(self) -> str:
        return "rolled_back" if self.faulty else "promoted"


def scenarios(args) -> list[Scenario]:
    # Default: in the middle of step 2, counting about 1 s to start and pass the smoke checks.
    crash = args.crash_after_secs or int(1 + 1.5 * args.step_ms / 1000)
    return [
        Scenario("healthy", "fast", False, "", "", note="same binary, same flags"),
        Scenario(
            "healthy-noisy", "fast", False, "--error-rate 0.01", "--error-rate 0.01",
            missing_share=0.02,
            note="1 % 5xx on both versions; 2 % of user requests ask for a missing page (404 on both)",
        ),
        Scenario("errors-5pct", "fast", True, "", "--error-rate 0.05"),
        Scenario("tail-latency", "fast", True, "", "--slow-rate 0.02 --slow-ms 300",
                 note="2 % of requests +300 ms"),
        Scenario(
            "p99-doubled-fast", "fast", True,
            "--latency-ms 5 --latency-jitter-ms 5", "--latency-ms 10 --latency-jitter-ms 10",
            note="uniform 5-10 ms -> 10-20 ms",
        ),
        Scenario("canary-crash", "fast", True, "", f"--crash-after-secs {crash}",
                 note=f"every instance of the canary exits (code 3) {crash} s after its start"),
        Scenario("incompatible-sessions", "fast", True, "", "--reject-old-sessions", sessions=True,
                 note="users logged in on the baseline get 401 from the canary"),
        Scenario("client-fault-attack", "fast", False, "", "", attack=True,
                 note="healthy canary; a hostile client sends broken uploads at ~8/s"),
        Scenario("low-healthy", "low", False, "", "", note="5 req/s, low-traffic policy"),
        Scenario("low-faulty", "low", True, "", args.low_fault_flags,
                 note="5 req/s, low-traffic policy"),
    ]


# --------------------------------------------------------------------------------------------
# small utilities


def log(msg: str) -> None:
    print(f"[judge-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loopback_port(addr: str) -> int:
    host, _, port = addr.rpartition(":")
    if host not in (LOOPBACK, "localhost"):
        raise SystemExit(f"refusing non-loopback address {addr}")
    return int(port)


def release_command(binary: str, sessions_db: str) -> str:
    """The release command of both apps; a scenario appends its fault flags."""
    return (
        f"exec {shlex.quote(binary)} example-app --port {{port}} --version-label {{version}} "
        f"--session-store {shlex.quote(sessions_db)} --threads 1 --drain-timeout-secs 2"
    )


def find_key(obj, key: str):
    """First value of `key` anywhere in a JSON document (depth first), or None."""
    stack = [obj]
    n = 0
    while stack and n < 200_000:
        n += 1
        cur = stack.pop()
        if isinstance(cur, dict):
            if key in cur and cur[key] is not None:
                return cur[key]
            stack.extend(reversed(list(cur.values())))
        elif isinstance(cur, list):
            stack.extend(reversed(cur))
    return None


def paced(rate: float, max_seconds: float, stop: threading.Event, max_count: int | None = None):
    """Yields (i, due) for ticks at `rate` per second, due = when tick i should happen, until `stop`
    is set, `max_seconds` have passed or `max_count` ticks were given: bounded in time and count."""
    t0 = time.monotonic()
    limit = t0 + max_seconds
    i = 0
    while not stop.is_set() and (max_count is None or i < max_count):
        due = t0 + i / rate
        now = time.monotonic()
        if now > limit:
            return
        if due > now and stop.wait(due - now):
            return
        yield i, due
        i += 1


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def maximum(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def rnd(x, nd=3):
    return None if x is None else round(x, nd)


class Admin:
    """The admin API on 127.0.0.1, one short connection per call."""

    def __init__(self, addr: str, token: str):
        self.port = loopback_port(addr)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.token = token

    def call(self, method: str, path: str, body=None, timeout: float = 10.0):
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = raw.decode(errors="replace")
            return resp.status, doc
        finally:
            conn.close()

    def get(self, path: str):
        status, doc = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {str(doc)[:300]}")
        return doc

    def status(self, app: str):
        return self.get(f"/v1/apps/{app}/status")


# --------------------------------------------------------------------------------------------
# the sticky load generator

# Client connections idle longer than this are closed before reuse, so a request never races the
# proxy closing an idle keep-alive connection (it keeps them 30 s); at the benchmark's rates no
# connection idles this long anyway.
CLIENT_IDLE_CLOSE_S = 10.0


class LoadGen:
    """`rate` requests per second in total, user after user (round robin over `users` keys sent
    in X-User-ID, so every user stays on its slot), on `workers` keep-alive connections fed from
    one schedule. Open loop: a slow answer delays no other request while a worker is free."""

    def __init__(self, port: int, users: int, rate: float, *, key_prefix: str = "user",
                 path: str = "/api/items", sessions: bool = False, missing_share: float = 0.0,
                 workers: int | None = None, max_seconds: float = 900.0, seed: int = 1,
                 timeout: float = 15.0):
        self.port = port
        self.users = max(1, users)
        self.rate = max(0.1, rate)
        self.key_prefix = key_prefix
        self.path = "/api/me" if sessions else path
        self.sessions_wanted = sessions
        self.cookies: dict[int, str] = {}
        self.login_failures = 0
        self.missing_share = missing_share
        self.workers = workers or max(4, min(48, int(self.rate * 0.15) + 4))
        self.max_seconds = max_seconds
        self.rng = random.Random(seed)
        self.timeout = timeout
        # (t_send wall s, latency ms, status or None, x-app-version or None, missing?, error or None)
        self.records: list[tuple] = []
        self.lag_ms: list[float] = []
        self.dropped = 0
        self._q: queue.Queue = queue.Queue(maxsize=int(self.rate * 5) + 100)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._order = list(range(self.users))

    def key(self, u: int) -> str:
        return f"{self.key_prefix}-{u}"

    # logins ---------------------------------------------------------------------------------

    def login_all(self, seconds: float = 90.0) -> None:
        """Logs every user in (through the proxy, so on the slot its key is sticky to), keeps
        each session cookie, and drops the users whose login failed twice from the schedule."""
        todo: queue.Queue = queue.Queue()
        for u in range(self.users):
            todo.put(u)
        deadline = time.monotonic() + seconds
        lock = threading.Lock()

        def worker():
            conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
            while time.monotonic() < deadline:
                try:
                    u = todo.get_nowait()
                except queue.Empty:
                    break
                cookie = None
                for _attempt in range(2):
                    try:
                        body = json.dumps({"user": self.key(u)}).encode()
                        conn.request("POST", "/login", body=body, headers={
                            "X-User-ID": self.key(u), "Content-Type": "application/json"})
                        resp = conn.getresponse()
                        resp.read()
                        set_cookie = resp.getheader("set-cookie") or ""
                        if resp.status == 200 and set_cookie.startswith("example_session="):
                            cookie = set_cookie.split(";", 1)[0]
                            break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                with lock:
                    if cookie:
                        self.cookies[u] = cookie
                    else:
                        self.login_failures += 1
            conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(16, self.users))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic() + 1))
        self._order = sorted(self.cookies)
        self.login_failures = self.users - len(self._order)

    # load -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.sessions_wanted and not self._order:
            raise RuntimeError("no user could log in")
        for _ in range(self.workers):
            t = threading.Thread(target=self._work, daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._dispatch, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, wait_s: float = 20.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + wait_s
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        n = len(self._order)
        for i, due in paced(self.rate, self.max_seconds, self._stop):
            u = self._order[i % n]
            missing = self.missing_share > 0 and self.rng.random() < self.missing_share
            try:
                self._q.put_nowait((u, missing, due))
            except queue.Full:
                self.dropped += 1
        for _ in range(self.workers):
            try:
                self._q.put((None, False, 0.0), timeout=1)
            except queue.Full:
                break

    def _work(self) -> None:
        conn = None
        last_used = 0.0
        while True:
            try:
                u, missing, due = self._q.get(timeout=1.0)
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            if u is None:
                break
            now = time.monotonic()
            if conn is not None and now - last_used > CLIENT_IDLE_CLOSE_S:
                conn.close()
                conn = None
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            headers = {"X-User-ID": self.key(u)}
            cookie = self.cookies.get(u)
            if cookie:
                headers["Cookie"] = cookie
            path = "/missing/page" if missing else self.path
            self.lag_ms.append((now - due) * 1000.0)
            t_send = time.time()
            t0 = time.perf_counter()
            status = version = err = None
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                version = resp.getheader("x-app-version")
            except (OSError, http.client.HTTPException) as e:
                err = type(e).__name__
                conn.close()
                conn = None
            lat = (time.perf_counter() - t0) * 1000.0
            last_used = time.monotonic()
            self.records.append((t_send, lat, status, version, missing, err))
        if conn is not None:
            conn.close()


def failed(status) -> bool:
    """A user request failed: no answer, or an answer outside 2xx/3xx."""
    return status is None or not (200 <= status < 400)


def load_summary(records, t_from: float, t_to: float, canary: str | None,
                 decided_at_ms: int | None = None) -> dict:
    """What users saw between t_from and t_to (send times, wall clock). The canary's first
    request is the first one sent (up to the decision) that the new version answered."""
    rs = [r for r in records if t_from <= r[0] <= t_to]
    n = len(rs)
    nf = sum(1 for r in rs if failed(r[2]))
    unexpected = sum(1 for r in rs if failed(r[2]) and not (r[4] and r[2] == 404))
    errors = sum(1 for r in rs if r[2] is None)
    by_version: dict[str, dict] = {}
    statuses: dict[str, int] = {}
    for r in rs:
        v = r[3] or "-"
        e = by_version.setdefault(v, {"served": 0, "failed": 0})
        e["served"] += 1
        e["failed"] += 1 if failed(r[2]) else 0
        k = str(r[2]) if r[2] is not None else f"error:{r[5]}"
        statuses[k] = statuses.get(k, 0) + 1
    first_canary = None
    if canary:
        until = decided_at_ms / 1000 if decided_at_ms else float("inf")
        sends = [r[0] for r in records if r[3] == canary and r[0] <= until]
        first_canary = min(sends) if sends else None
    lat = sorted(r[1] for r in rs if r[2] is not None)

    def pct(p):
        return rnd(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

    return {
        "user_requests": n,
        "failed": nf,
        "failed_share": (nf / n) if n else None,
        "failed_unexpected": unexpected,
        "connection_errors": errors,
        "canary_requests": by_version.get(canary, {}).get("served", 0) if canary else 0,
        "canary_failed": by_version.get(canary, {}).get("failed", 0) if canary else 0,
        "by_version": by_version,
        "statuses": statuses,
        "first_canary_request_at_ms": int(first_canary * 1000) if first_canary else None,
        "latency_p50_ms": pct(0.5),
        "latency_p99_ms": pct(0.99),
    }


# --------------------------------------------------------------------------------------------
# the hostile client


class Attacker:
    """Broken uploads at `rate` per second over raw sockets to POST /echo, in turn: a chunked body
    with an invalid chunk size, a body aborted mid-way (the socket closed after 4 KiB of 64 KiB),
    and a body that stalls after 1 KiB until the proxy gives up (its response timeout) or
    `stall_wait_s` passes.

    target "canary": once the rollout is in its canary phase (`canary_live` set by the driver),
    a prober finds a few X-User-ID keys the proxy routes to the new version (GET /api/probe, at
    most 400 probes) and the attacks use them, as one broken client with a sticky key would; until
    then, and with target "random", every attack carries a fresh random key."""

    KINDS = ("bad-chunk", "aborted", "stall")
    MAX_THREADS = 150

    def __init__(self, port: int, rate: float, *, canary_version: str | None, target: str,
                 stall_wait_s: float, max_seconds: float = 900.0, seed: int = 7):
        self.port = port
        self.rate = rate
        self.canary_version = canary_version
        self.target = target
        self.stall_wait_s = stall_wait_s
        self.max_seconds = max_seconds
        self.rng = random.Random(seed)
        self.canary_live = threading.Event()
        self.canary_keys: list[str] = []
        self.probes = 0
        self.results: dict[str, dict[str, int]] = {k: {} for k in self.KINDS}
        self.on_canary_key = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active = 0

    def start(self) -> None:
        for target in (self._schedule, self._probe):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + wait_s
        for t in list(self._threads):
            t.join(max(0.05, deadline - time.monotonic()))

    def summary(self) -> dict:
        with self._lock:
            return {
                "rate": self.rate,
                "target": self.target,
                "canary_keys_found": len(self.canary_keys),
                "probes": self.probes,
                "attacks_with_canary_key": self.on_canary_key,
                "skipped_over_thread_cap": self.skipped,
                "results": {k: dict(v) for k, v in self.results.items()},
            }

    def _note(self, kind: str, what: str) -> None:
        with self._lock:
            d = self.results[kind]
            d[what] = d.get(what, 0) + 1

    def _probe(self) -> None:
        if self.target != "canary" or not self.canary_version:
            return
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self.canary_live.is_set():
                self._stop.wait(0.1)
                continue
            break
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        k = 0
        while (not self._stop.is_set() and len(self.canary_keys) < 4 and self.probes < 400
               and time.monotonic() < deadline):
            key = f"broken-client-{self.rng.getrandbits(32):08x}-{k}"
            k += 1
            try:
                conn.request("GET", "/api/probe", headers={"X-User-ID": key})
                resp = conn.getresponse()
                resp.read()
                if resp.getheader("x-app-version") == self.canary_version:
                    with self._lock:
                        self.canary_keys.append(key)
            except (OSError, http.client.HTTPException):
                conn.close()
            with self._lock:
                self.probes += 1
            if k % 20 == 0:
                self._stop.wait(0.1)
        conn.close()

    def _schedule(self) -> None:
        for i, _ in paced(self.rate, self.max_seconds, self._stop, max_count=1_000_000):
            kind = self.KINDS[i % len(self.KINDS)]
            with self._lock:
                keys = list(self.canary_keys)
                busy = self._active >= self.MAX_THREADS
                if busy:
                    self.skipped += 1
                else:
                    self._active += 1
            if busy:
                continue
            if keys:
                key = self.rng.choice(keys)
                with self._lock:
                    self.on_canary_key += 1
            else:
                key = f"anon-{self.rng.getrandbits(48):012x}"
            t = threading.Thread(target=self._attack, args=(kind, key), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _attack(self, kind: str, key: str) -> None:
        try:
            self._attack_inner(kind, key)
        finally:
            with self._lock:
                self._active -= 1

    def _attack_inner(self, kind: str, key: str) -> None:
        head = (
            "POST /echo HTTP/1.1\r\nHost: bench\r\n"
            f"X-User-ID: {key}\r\nContent-Type: application/octet-stream\r\n"
        )
        try:
            s = socket.create_connection((LOOPBACK, self.port), timeout=5)
        except OSError as e:
            self._note(kind, f"connect-error:{type(e).__name__}")
            return
        try:
            if kind == "bad-chunk":
                s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhello\r\nzz-not-a-size\r\nxxxx\r\n0\r\n\r\n").encode())
                self._note(kind, self._await_answer(s, 10.0))
            elif kind == "aborted":
                s.sendall((head + "Content-Length: 65536\r\n\r\n").encode() + b"x" * 4096)
                self._stop.wait(0.05)
                self._note(kind, "aborted")
            else:
                s.sendall((head + "Content-Length: 65536\r\n\r\n").encode() + b"x" * 1024)
                self._note(kind, self._await_answer(s, self.stall_wait_s))
        except OSError as e:
            self._note(kind, f"error:{type(e).__name__}")
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _await_answer(self, s: socket.socket, wait_s: float) -> str:
        """The status the proxy answered with, "closed" without an answer, or "no-answer"."""
        deadline = time.monotonic() + wait_s
        buf = b""
        while time.monotonic() < deadline and len(buf) < 65536:
            if self._stop.is_set():
                return "stopped"
            s.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except OSError as e:
                return f"reset:{type(e).__name__}"
            if not chunk:
                break
            buf += chunk
            if b"\r\n" in buf:
                break
        m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
        if m:
            return m.group(1).decode()
        return "closed" if time.monotonic() < deadline else "no-answer"


# --------------------------------------------------------------------------------------------
# configuration

NEW_OPTIONS = ("min_step_requests", "client_errors", "ignore_status", "max_step_extension_ms")


def policy(app: str, args) -> dict:
    """Rollout policy of each app, as written to the config (and recorded in the JSON)."""
    if app == "fast":
        s = args.step_ms
        return {
            "steps": f"[{{ weight_bp = 500, duration_ms = {s} }}, {{ weight_bp = 2500, duration_ms = {s} }}, "
                     f"{{ weight_bp = 5000, duration_ms = {s} }}, {{ weight_bp = 10000 }}]",
            "analysis_interval_ms": 1000,
            "inconclusive_limit": 5,
            "min_requests": 5,
            "min_step_requests": 50,
            "max_step_extension_ms": 20000,
        }
    s = args.low_step_ms
    return {
        "steps": f"[{{ weight_bp = 2500, duration_ms = {s} }}, {{ weight_bp = 5000, duration_ms = {s} }}, "
                 f"{{ weight_bp = 10000 }}]",
        "analysis_interval_ms": 4000,
        "inconclusive_limit": 10,
        "min_requests": 4,
        # At 1-2.5 canary requests a second, 50 requests hold too few errors to tell 5 % from
        # 0.1 % (a 5 % canary was promoted in 1 run of 3 with 50); 150 make it a few in 100.
        "min_step_requests": 150,
        "max_step_extension_ms": 240000,
    }


def render_config(args, dropped: set[str]) -> str:
    def new(line: str, name: str) -> str:
        return "" if name in dropped else line + "\n"

    out = [
        "# Generated by bench/judge-e2e.sh: two apps on one `cutover serve`, both on the local process",
        "# platform. `bench` is judged under 200 req/s, `bench-low` under 5 req/s with longer steps.",
        "[server]",
        'state_dir = "state"',
        "tick_ms = 100",
        "",
        "[admin]",
        f'listen = "{LOOPBACK}:0"',
        "",
    ]
    retry_canary_failures = "false" if os.environ.get("BENCH_RETRY_CANARY_FAILURES", "1") == "0" else "true"
    for key, name in (("fast", "bench"), ("low", "bench-low")):
        p = policy(key, args)
        sessions = os.path.join(args.dir, f"sessions-{name}.db")
        command = release_command(args.bin, sessions)
        out.append(f"""[[app]]
name = "{name}"
listen = "{LOOPBACK}:0"
platform = "local"
stop_grace_ms = 3000

[app.proxy]
drain_timeout_ms = 1000
connect_timeout_ms = 1000
# Short, so the stalled uploads of client-fault-attack end within a run (default 60 s).
response_timeout_ms = {args.response_timeout_ms}
max_request_body_bytes = 1048576
# BENCH_RETRY_CANARY_FAILURES=0 measures what the judge alone leaves users to see.
retry_canary_failures = {retry_canary_failures}

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.proxy.health_check]
path = "/health/ready"
interval_ms = 250

[app.release]
command = {json.dumps(command)}
instances = {args.instances}

[app.readiness]
path = "/health/ready"
interval_ms = 100

[app.verify]
smoke = [{{ path = "/health/ready", expect_status = 200 }}]
prewarm_paths = ["/"]
prewarm_requests = 5

[app.rollout]
steps = {p["steps"]}
analysis_interval_ms = {p["analysis_interval_ms"]}
failure_limit = 1
inconclusive_limit = {p["inconclusive_limit"]}
rollback_window_ms = 3000
readiness_deadline_ms = 15000
""" + new(f"max_step_extension_ms = {p['max_step_extension_ms']}   # hold a step this long past its "
          "duration while harm builds or requests are too few, then pause", "max_step_extension_ms") + f"""
[app.rollout.judge]
method = "sequential"
min_requests = {p["min_requests"]}
max_error_rate = 0.05
""" + new(f"min_step_requests = {p['min_step_requests']}   # fewest canary requests in a step before it may pass",
          "min_step_requests")
            + new("client_errors = true   # judge 4xx against the baseline", "client_errors")
            + new("ignore_status = []   # 4xx codes that never count", "ignore_status") + """
[app.rollout.judge.sequential]
alpha = 0.005
""")
    return "\n".join(out)


def cmd_write_config(args) -> int:
    dropped: set[str] = set()
    for _ in range(len(NEW_OPTIONS) + 1):
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(render_config(args, dropped))
        check = subprocess.run([args.bin, "config", "check", args.out], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
        if check.returncode == 0:
            print(json.dumps({"dropped_options": sorted(dropped)}))
            return 0
        text = check.stdout + check.stderr
        m = re.search(r"unknown field `([A-Za-z0-9_]+)`", text)
        if m and m.group(1) in NEW_OPTIONS and m.group(1) not in dropped:
            log(f"this cutover does not know `{m.group(1)}` yet; the config goes without it")
            dropped.add(m.group(1))
            continue
        print(text, file=sys.stderr)
        return 1
    return 1


# --------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class AppCtx:
    key: str  # fast | low
    name: str  # app name in the config
    port: int  # public listener
    sessions_db: str
    live_flags: str | None = None
    live_version: str | None = None
    seq: int = 0


DECISION_KINDS = ("rolled_back", "promoted", "paused", "aborted", "failed")
OUTCOME_OF_EXIT = {0: "promoted", 10: "rolled_back", 11: "aborted", 12: "failed", 13: "paused",
                   14: "timeout", 3: "refused", 1: "error"}


class Bench:
    def __init__(self, args):
        self.args = args
        token = os.environ.get("CUTOVER_ADMIN_TOKEN", "")
        if not token:
            raise SystemExit("CUTOVER_ADMIN_TOKEN is not set")
        self.admin = Admin(args.admin, token)
        self.apps = {
            "fast": AppCtx("fast", "bench", loopback_port(args.fast_listen),
                           os.path.join(args.dir, "sessions-bench.db")),
            "low": AppCtx("low", "bench-low", loopback_port(args.low_listen),
                          os.path.join(args.dir, "sessions-bench-low.db")),
        }
        self.logs = os.path.join(args.dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.deploy_procs: list[subprocess.Popen] = []

    def command(self, app: AppCtx, flags: str) -> str:
        base = release_command(self.args.bin, app.sessions_db)
        return f"{base} {flags}".strip()

    # admin helpers ------------------------------------------------------------------------------

    def rollout_of(self, app: AppCtx, version: str):
        st = self.admin.status(app.name)
        r = st.get("rollout") or {}
        if (r.get("release") or {}).get("version") == version:
            return st, r
        return st, None

    def end_active_rollout(self, app: AppCtx) -> None:
        """Aborts whatever rollout is still open (paused, timed out) so the next deploy is taken;
        a promoted one in its rollback window is left: the next deploy closes it."""
        st = self.admin.status(app.name)
        phase = ((st.get("rollout") or {}).get("phase") or {}).get("phase")
        if phase in (None, "promoted", "succeeded", "rolled_back", "aborted", "failed"):
            return
        log(f"{app.name}: aborting the rollout left in phase {phase}")
        self.admin.call("POST", f"/v1/apps/{app.name}/abort")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = self.admin.status(app.name)
            phase = ((st.get("rollout") or {}).get("phase") or {}).get("phase")
            if phase in ("promoted", "succeeded", "rolled_back", "aborted", "failed"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{app.name}: the rollout did not end after abort (phase {phase})")

    def events(self, app: AppCtx, rollout_id: int):
        return self.admin.get(f"/v1/apps/{app.name}/events?rollout={rollout_id}&limit=10000") or []

    # deploys ------------------------------------------------------------------------------------

    def ensure_baseline(self, app: AppCtx, flags: str) -> None:
        """Makes a version with `flags` live, unless one already is: deployed through the admin
        API and promoted by hand as soon as its smoke checks pass (no load runs meanwhile)."""
        if app.live_flags == flags and app.live_version:
            return
        self.end_active_rollout(app)
        app.seq += 1
        version = f"v{app.seq}-baseline"
        status, doc = self.admin.call("POST", f"/v1/apps/{app.name}/deploy",
                                      {"version": version, "command": self.command(app, flags)})
        if status != 202:
            raise RuntimeError(f"deploying baseline {version}: {status} {doc}")
        deadline = time.monotonic() + 60
        promoted_by_hand = False
        phase = None
        while time.monotonic() < deadline:
            _, r = self.rollout_of(app, version)
            phase = ((r or {}).get("phase") or {}).get("phase")
            if phase in ("canary", "paused", "gating") and not promoted_by_hand:
                self.admin.call("POST", f"/v1/apps/{app.name}/promote")
                promoted_by_hand = True
            elif phase in ("promoted", "succeeded"):
                app.live_flags, app.live_version = flags, version
                log(f"{app.name}: baseline {version} live ({flags or 'no fault flags'})")
                return
            elif phase in ("failed", "rolled_back", "aborted"):
                raise RuntimeError(f"baseline {version} ended {phase}: {r['phase'].get('reason')}")
            time.sleep(0.1)
        raise RuntimeError(f"baseline {version} not live within 60 s (phase {phase})")

    def deploy_cli(self, app: AppCtx, version: str, flags: str, timeout_s: float,
                   on_phase=None) -> dict:
        """`cutover deploy` of `version`, followed to its end: exit code, the phases seen, and
        whether the driver had to step in (a pause, or no decision within `timeout_s`)."""
        argv = [self.args.bin, "--admin", self.admin.url, "deploy", app.name, version,
                "--cmd", self.command(app, flags)]
        if self.args.deploy_timeout_flag:
            argv += ["--timeout", str(int(timeout_s))]
        logf = open(os.path.join(self.logs, f"deploy-{app.name}-{version}.log"), "w",
                    encoding="utf-8")
        t_start = time.time()
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=os.environ.copy())
        self.deploy_procs.append(proc)
        deadline = time.monotonic() + timeout_s + 5
        phases: list[tuple[str, int]] = []
        intervened = None
        rollout_id = None
        try:
            while time.monotonic() < deadline:
                code = proc.poll()
                try:
                    _, r = self.rollout_of(app, version)
                except (OSError, RuntimeError) as e:
                    raise RuntimeError(f"admin API unreachable during the deploy: {e}") from e
                if r:
                    rollout_id = r.get("id")
                    phase = (r.get("phase") or {}).get("phase")
                    if not phases or phases[-1][0] != phase:
                        phases.append((phase, int(time.time() * 1000)))
                        if on_phase:
                            on_phase(phase)
                    if phase == "paused":
                        intervened = "paused"
                        break
                if code is not None:
                    break
                time.sleep(0.2)
            else:
                intervened = "timeout"
            if intervened:
                # A paused rollout waits for a person, and one without a decision in time is
                # stopped: either way the driver aborts it (409 when it has ended meanwhile).
                self.admin.call("POST", f"/v1/apps/{app.name}/abort")
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=5)
                intervened = intervened or "killed"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            logf.close()
            self.deploy_procs.remove(proc)
        if rollout_id is None:
            _, r = self.rollout_of(app, version)
            rollout_id = (r or {}).get("id")
        return {"exit_code": code, "phases": phases, "intervened": intervened,
                "rollout_id": rollout_id, "t_start": t_start, "t_end": time.time()}

    def first_release(self, app: AppCtx) -> None:
        app.seq += 1
        version = f"v{app.seq}"
        res = self.deploy_cli(app, version, "", 60)
        _, r = self.rollout_of(app, version)
        phase = ((r or {}).get("phase") or {}).get("phase")
        if phase not in ("promoted", "succeeded"):
            raise RuntimeError(f"{app.name}: first release {version} ended {phase} "
                               f"(exit {res['exit_code']}); see {self.logs}")
        app.live_flags, app.live_version = "", version
        log(f"{app.name}: first release {version} live (exit {res['exit_code']})")

    # one run --------------------------------------------------------------------------------------

    def run_once(self, scn: Scenario, run: int) -> dict:
        a = self.args
        app = self.apps[scn.app]
        self.ensure_baseline(app, scn.base_flags)
        baseline_version = app.live_version
        app.seq += 1
        version = f"v{app.seq}-{scn.name}-r{run + 1}"
        rate = a.rate if scn.app == "fast" else a.low_rate
        deploy_timeout = a.deploy_timeout if scn.app == "fast" else a.low_deploy_timeout
        load = LoadGen(app.port, a.users, rate, key_prefix=f"r{app.seq}-user",
                       sessions=scn.sessions, missing_share=scn.missing_share,
                       max_seconds=deploy_timeout + 120, seed=app.seq)
        logins = None
        if scn.sessions:
            t0 = time.monotonic()
            load.login_all()
            logins = {"users": a.users, "logged_in": len(load.cookies),
                      "failed": load.login_failures, "seconds": rnd(time.monotonic() - t0, 1)}
            if not load.cookies:
                raise RuntimeError(f"no user could log in on {baseline_version}")
        attacker = None
        if scn.attack:
            attacker = Attacker(app.port, a.attack_rate, canary_version=version,
                                target=a.attack_target,
                                stall_wait_s=a.response_timeout_ms / 1000 + 5,
                                max_seconds=deploy_timeout + 120, seed=app.seq)
        load.start()
        if attacker:
            attacker.start()
        warmup = a.warmup_s if scn.app == "fast" else a.low_warmup_s
        time.sleep(warmup)

        def on_phase(phase):
            if attacker and phase == "canary":
                attacker.canary_live.set()

        try:
            res = self.deploy_cli(app, version, scn.canary_flags, deploy_timeout, on_phase)
            time.sleep(a.settle_s)
        finally:
            if attacker:
                attacker.stop()
            load.stop()
        # A rollout the CLI left open (exit 13 paused, 14 timed out) is aborted before the next.
        self.end_active_rollout(app)
        rid = res["rollout_id"]
        events = self.events(app, rid) if rid else []
        st, r = self.rollout_of(app, version)
        history = self.admin.get(f"/v1/apps/{app.name}/history?limit=5") or []
        hist = next((h for h in history if h.get("id") == rid), None)
        decision = next((e for e in events if e.get("kind") in DECISION_KINDS), None)
        code = res["exit_code"]
        if decision is None:
            outcome = res["intervened"] or OUTCOME_OF_EXIT.get(code, "unknown")
        elif decision["kind"] == "aborted" and (code == 14 or res["intervened"] == "timeout"):
            outcome = "timeout"  # no decision in time: aborted by the CLI's --timeout or the driver
        else:
            outcome = decision["kind"]
        if outcome == "promoted":
            app.live_flags, app.live_version = scn.canary_flags, version
        # after a pause or a time-out the driver aborted: the baseline is live again

        decided_at = decision.get("at") if decision else None
        users = load_summary(load.records, res["t_start"], res["t_end"], version, decided_at)
        first = users["first_canary_request_at_ms"]
        client_s = (decided_at - first) / 1000 if (decided_at and first) else None
        server_ms = None
        for doc in ([decision.get("data")] if decision else []) + [r, hist]:
            if doc is not None and server_ms is None:
                v = find_key(doc, "first_canary_request_to_decision_ms")
                server_ms = v if isinstance(v, (int, float)) else None
        for doc in (r, hist):
            # else from the rollout's `exposure` (first_canary_request_at, decided_at)
            exp = find_key(doc, "exposure") if doc is not None and server_ms is None else None
            if isinstance(exp, dict) and isinstance(exp.get("decided_at"), int) \
                    and isinstance(exp.get("first_canary_request_at"), int):
                server_ms = exp["decided_at"] - exp["first_canary_request_at"]
        slot_metrics = None
        if scn.attack:
            try:
                slot_metrics = self.admin.get(f"/v1/apps/{app.name}/metrics")
                slot_metrics = [{"slot": s.get("slot"), "version": s.get("version"),
                                 "metrics": {k: v for k, v in (s.get("metrics") or {}).items()
                                             if k in ("requests", "requests_by_class", "codes",
                                                      "client_faults", "error_rate",
                                                      "client_error_rate")}}
                                for s in slot_metrics]
            except (OSError, RuntimeError):
                slot_metrics = None
        kinds: dict[str, int] = {}
        for e in events:
            k = e.get("kind") or "?"
            if k == "decision":  # "pass: ...", "fail (conclusive): ...", "inconclusive: ..."
                k = "window_" + (e.get("message") or "?").split(":", 1)[0].split(" ", 1)[0]
            kinds[k] = kinds.get(k, 0) + 1
        lag = sorted(load.lag_ms)
        out = {
            "run": run + 1,
            "version": version,
            "baseline_version": baseline_version,
            "rollout_id": rid,
            "outcome": outcome,
            "exit_code": res["exit_code"],
            "exit_code_says": OUTCOME_OF_EXIT.get(res["exit_code"], "?"),
            "driver_intervened": res["intervened"],
            "phases": [p for p, _ in res["phases"]],
            "events": kinds,
            "decision": {
                "kind": decision.get("kind"),
                "at_ms": decided_at,
                "message": (decision.get("message") or "").splitlines()[0][:300],
                "data": decision.get("data"),
            } if decision else None,
            "first_canary_request_to_decision_s": rnd(client_s),
            "server_first_canary_request_to_decision_s": rnd(server_ms / 1000) if server_ms is not None else None,
            "deploy_s": rnd(res["t_end"] - res["t_start"], 2),
            "users": users,
            "load": {"rate": rate, "workers": load.workers, "dropped": load.dropped,
                     "lag_p99_ms": rnd(lag[int(0.99 * (len(lag) - 1))], 1) if lag else None},
            "logins": logins,
            "attack": attacker.summary() if attacker else None,
            "slot_metrics": slot_metrics,
        }
        return out

    def close(self) -> None:
        for p in list(self.deploy_procs):
            if p.poll() is None:
                p.kill()


def decision_time(run: dict):
    """Seconds from the canary's first request to the decision: the server's figure when it
    gives one, else the client-side one (first response from the new version -> decision event)."""
    s = run.get("server_first_canary_request_to_decision_s")
    if s is None:
        s = run.get("first_canary_request_to_decision_s")
    if s is None and run["users"]["canary_requests"] == 0 and run["outcome"] == "rolled_back":
        return 0.0  # rolled back before any user reached the canary
    return s


def summarize(scn: Scenario, runs: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    shares = [r["users"]["failed_share"] for r in runs]
    return {
        "outcomes": counts,
        "decision_s_median": rnd(median([decision_time(r) for r in runs]), 2),
        "decision_s_max": rnd(maximum([decision_time(r) for r in runs]), 2),
        "client_decision_s_median": rnd(median([r["first_canary_request_to_decision_s"] for r in runs]), 2),
        "client_decision_s_max": rnd(maximum([r["first_canary_request_to_decision_s"] for r in runs]), 2),
        "server_decision_s_median": rnd(median([r["server_first_canary_request_to_decision_s"] for r in runs]), 2),
        "server_decision_s_max": rnd(maximum([r["server_first_canary_request_to_decision_s"] for r in runs]), 2),
        "failed_share_median": rnd(median(shares), 6),
        "failed_share_max": rnd(maximum(shares), 6),
        "failed_max": maximum([r["users"]["failed"] for r in runs]),
        "failed_unexpected_max": maximum([r["users"]["failed_unexpected"] for r in runs]),
    }


def check_targets(results: list[tuple[Scenario, list[dict], dict]], strict_low: bool) -> list[dict]:
    checks = []

    def add(name, ok, detail):
        checks.append({"target": name, "ok": bool(ok), "detail": detail})

    faulty = [(s, runs, sm) for s, runs, sm in results if s.faulty]
    healthy = [(s, runs, sm) for s, runs, sm in results if not s.faulty]
    if faulty:
        bad = [f"{s.name}: {sm['outcomes']}" for s, runs, sm in faulty
               if any(r["outcome"] != "rolled_back" for r in runs)]
        add("every faulty scenario rolled back (every run)", not bad, "; ".join(bad) or "all rolled back")
        slow = []
        for s, runs, _ in faulty:
            if s.app != "fast":
                continue
            for r in runs:
                t = decision_time(r)
                if r["outcome"] == "rolled_back" and (t is None or t >= TARGET_DECISION_S):
                    slow.append(f"{s.name} run {r['run']}: {t if t is not None else 'not measured'} s")
        add(f"faulty at 200 req/s: rolled back < {TARGET_DECISION_S:.0f} s after the first canary request",
            not slow, "; ".join(slow) or "all within")
        over = []
        for s, runs, sm in faulty:
            if s.app != "fast" and not strict_low:
                continue
            if sm["failed_share_max"] is None or sm["failed_share_max"] >= TARGET_FAILED_SHARE:
                over.append(f"{s.name}: max {100 * (sm['failed_share_max'] or 0):.3f} %")
        add(f"faulty: < {100 * TARGET_FAILED_SHARE:.1f} % of user requests failed (every run"
            + ("" if strict_low else "; 200 req/s scenarios") + ")", not over,
            "; ".join(over) or "all below")
    if healthy:
        bad = [f"{s.name}: {sm['outcomes']}" for s, runs, sm in healthy
               if any(r["outcome"] == "rolled_back" for r in runs)]
        add("no healthy scenario rolled back", not bad, "; ".join(bad) or "none rolled back")
    for s, runs, sm in results:
        if s.name == "canary-crash":
            add("canary-crash: zero failed user requests (every run)", sm["failed_max"] == 0,
                f"max {sm['failed_max']} failed")
    return checks


def fmt(x, nd=1, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd}f}"


def outcome_text(counts: dict, runs: int) -> str:
    order = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{n}/{runs} {k.replace('_', ' ')}" for k, n in order)


def report(args, results, checks, meta) -> dict:
    print()
    print(f"{'scenario':<22} {'expect':<11} {'runs':>4}  {'outcomes':<28} "
          f"{'decision s':>10} {'':>6} {'server s':>8} {'':>6} {'failed %':>8} {'':>7}")
    print(f"{'':<22} {'':<11} {'':>4}  {'':<28} {'med':>10} {'max':>6} {'med':>8} {'max':>6} "
          f"{'med':>8} {'max':>7}")
    for scn, runs, sm in results:
        print(f"{scn.name:<22} {scn.expect.replace('_', ' '):<11} {len(runs):>4}  "
              f"{outcome_text(sm['outcomes'], len(runs)):<28} "
              f"{fmt(sm['client_decision_s_median']):>10} {fmt(sm['client_decision_s_max']):>6} "
              f"{fmt(sm['server_decision_s_median']):>8} {fmt(sm['server_decision_s_max']):>6} "
              f"{fmt(sm['failed_share_median'], 3, True):>8} {fmt(sm['failed_share_max'], 3, True):>7}")
    print()
    print("decision s: first request answered by the new version -> the decision event (client "
          "clock vs the event's timestamp); server s: the rollout's own "
          "first_canary_request_to_decision_ms, '-' when the server does not report it.")
    print("failed %: user requests sent during the deploy that got no answer or a status outside "
          "2xx/3xx (healthy-noisy: its 1 % 5xx and 2 % 404s count too).")
    if meta["dropped_options"]:
        print(f"note: this cutover does not know {', '.join(meta['dropped_options'])} yet; "
              "the config went without them.")
    if not meta["deploy_timeout_flag"]:
        print("note: `cutover deploy --timeout` not available; the driver bounded each deploy and "
              "aborted paused rollouts itself.")
    print()
    for c in checks:
        print(f"target: {c['target']}: {'ok' if c['ok'] else 'MISSED'} ({c['detail']})")
    ok = all(c["ok"] for c in checks)
    print("targets met" if ok else "TARGETS MISSED")
    doc = {
        "bench": "judge-e2e",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **meta,
        "targets": checks,
        "targets_met": ok,
        "scenarios": [
            {"scenario": s.name, "app": s.app, "expect": s.expect, "faulty": s.faulty,
             "baseline_flags": s.base_flags, "canary_flags": s.canary_flags,
             "sessions": s.sessions, "missing_share": s.missing_share, "attack": s.attack,
             "note": s.note, "summary": sm, "runs": runs}
            for s, runs, sm in results
        ],
    }
    return doc


def cmd_run(args) -> int:
    all_scn = scenarios(args)
    wanted = args.scenarios.split() if args.scenarios else [s.name for s in all_scn]
    unknown = [w for w in wanted if w not in {s.name for s in all_scn}]
    if unknown:
        log(f"unknown scenario(s) {unknown}; known: {' '.join(s.name for s in all_scn)}")
        return 2
    chosen = [s for s in all_scn if s.name in wanted]
    bench = Bench(args)
    results = []
    started = time.monotonic()
    try:
        for key in sorted({s.app for s in chosen}):
            bench.first_release(bench.apps[key])
        for scn in chosen:
            runs = []
            for i in range(args.runs):
                log(f"{scn.name} run {i + 1}/{args.runs}: canary flags "
                    f"'{scn.canary_flags}', baseline flags '{scn.base_flags}'")
                r = bench.run_once(scn, i)
                d = decision_time(r)
                log(f"  -> {r['outcome']} (exit {r['exit_code']}{', driver ' + r['driver_intervened'] if r['driver_intervened'] else ''}); "
                    f"canary->decision {fmt(d)} s; {r['users']['failed']}/{r['users']['user_requests']} "
                    f"user requests failed; {r['users']['canary_requests']} served by the canary")
                runs.append(r)
            results.append((scn, runs, summarize(scn, runs)))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log(f"error: {e}")
        bench.close()
        return 2
    finally:
        bench.close()
    checks = check_targets(results, args.strict_low)
    meta = {
        "runs": args.runs,
        "rate": args.rate,
        "low_rate": args.low_rate,
        "users": args.users,
        "instances": args.instances,
        "attack_rate": args.attack_rate,
        "attack_target": args.attack_target,
        "response_timeout_ms": args.response_timeout_ms,
        "retry_canary_failures": os.environ.get("BENCH_RETRY_CANARY_FAILURES", "1") != "0",
        "policy": {"fast": policy("fast", args), "low": policy("low", args)},
        "dropped_options": json.loads(args.dropped_options or "[]"),
        "deploy_timeout_flag": bool(args.deploy_timeout_flag),
        "pinned": args.pinned,
        "cpu_idle_pct_before": args.cpu_idle_before,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    doc = report(args, results, checks, meta)
    print(json.dumps(doc, separators=(",", ":")))
    return 0 if doc["targets_met"] else 1


# --------------------------------------------------------------------------------------------
# standalone tools


def cmd_pids_with_arg(args) -> int:
    me = os.getpid()
    needle = args.text.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read():
                    print(name)
        except OSError:
            pass
    return 0


def cmd_loadgen(args) -> int:
    load = LoadGen(args.port, args.users, args.rate, path=args.path,
                   missing_share=args.missing_share, max_seconds=args.seconds + 5)
    t0 = time.time()
    load.start()
    time.sleep(args.seconds)
    load.stop()
    s = load_summary(load.records, t0, time.time(), None)
    s.pop("by_version")
    s["dropped"] = load.dropped
    s["workers"] = load.workers
    s["rate_achieved"] = round(s["user_requests"] / args.seconds, 1)
    print(json.dumps(s))
    return 0


def cmd_attack(args) -> int:
    att = Attacker(args.port, args.rate, canary_version=None, target="random",
                   stall_wait_s=args.stall_wait, max_seconds=args.seconds + 5)
    att.start()
    time.sleep(args.seconds)
    att.stop(wait_s=args.stall_wait + 2)
    print(json.dumps(att.summary()))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q):
        q.add_argument("--bin", required=True, help="the cutover binary")
        q.add_argument("--dir", required=True, help="the benchmark's temp dir")
        q.add_argument("--instances", type=int, default=2)
        q.add_argument("--step-ms", type=int, default=5000)
        q.add_argument("--low-step-ms", type=int, default=20000)
        q.add_argument("--response-timeout-ms", type=int, default=5000)

    q = sub.add_parser("write-config")
    common(q)
    q.add_argument("--out", required=True)

    q = sub.add_parser("run")
    common(q)
    q.add_argument("--admin", required=True, help="127.0.0.1:PORT of the admin API")
    q.add_argument("--fast-listen", required=True)
    q.add_argument("--low-listen", required=True)
    q.add_argument("--runs", type=int, default=3)
    q.add_argument("--scenarios", default="")
    q.add_argument("--users", type=int, default=1000)
    q.add_argument("--rate", type=float, default=200.0)
    q.add_argument("--low-rate", type=float, default=5.0)
    q.add_argument("--warmup-s", type=float, default=2.0)
    q.add_argument("--low-warmup-s", type=float, default=5.0)
    q.add_argument("--settle-s", type=float, default=1.0)
    q.add_argument("--deploy-timeout", type=float, default=120.0)
    q.add_argument("--low-deploy-timeout", type=float, default=400.0)
    q.add_argument("--crash-after-secs", type=int, default=0,
                   help="0: 1 s + 1.5 steps (8 s with 5 s steps)")
    q.add_argument("--low-fault-flags", default="--error-rate 0.05")
    q.add_argument("--attack-rate", type=float, default=8.0)
    q.add_argument("--attack-target", choices=("canary", "random"), default="canary")
    q.add_argument("--strict-low", action="store_true",
                   help="apply the failed-share target to the low-traffic faulty scenario too")
    q.add_argument("--deploy-timeout-flag", type=int, default=0,
                   help="1: `cutover deploy` has --timeout")
    q.add_argument("--dropped-options", default="[]")
    q.add_argument("--pinned", default="")
    q.add_argument("--cpu-idle-before", type=float)

    q = sub.add_parser("pids-with-arg")
    q.add_argument("text")

    q = sub.add_parser("loadgen")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--rate", type=float, default=200.0)
    q.add_argument("--users", type=int, default=100)
    q.add_argument("--seconds", type=float, default=3.0)
    q.add_argument("--path", default="/")
    q.add_argument("--missing-share", type=float, default=0.0)

    q = sub.add_parser("attack")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--rate", type=float, default=8.0)
    q.add_argument("--seconds", type=float, default=3.0)
    q.add_argument("--stall-wait", type=float, default=3.0)

    args = p.parse_args(argv)
    if args.cmd == "write-config":
        return cmd_write_config(args)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "pids-with-arg":
        return cmd_pids_with_arg(args)
    if args.cmd == "loadgen":
        return cmd_loadgen(args)
    if args.cmd == "attack":
        return cmd_attack(args)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
