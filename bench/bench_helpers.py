#!/usr/bin/env python3
"""Helpers for the benchmark scripts in bench/ (standard library only).

Subcommands:
  free-port                      print a free TCP port on 127.0.0.1
  json-get FILE_OR_- PATH        print one value from a JSON document (PATH like a.b.0.c)
  ready-line FILE                print the first line of FILE that is a JSON object with
                                 "event": "ready" (exit 1 if there is none yet)
  parse-wrk FILE                 parse wrk --latency output into one JSON object
  rss-kib PID                    RSS of PID and all its descendants, in KiB
  cpu-jiffies PID                CPU time (user+system, clock ticks) of PID and its descendants
  cpu-idle SECS                  % of CPU idle over the next SECS seconds
  cpu-snapshot FILE SHELL_PID PID...  record CPU counters (start of a measurement)
  foreign-cpu FILE SHELL_PID PID...   % of CPU capacity used by other processes since then
  idle-conns ...                 memory per idle keep-alive connection (see --help)
  switcher ...                   flip canary_weight_bp through the admin API (see --help)
  report-proxy ...               print the proxy.sh table and its JSON line
  report-switch ...              print the switch.sh summary and its JSON line

Every network call here goes to 127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import sys
import time

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# small utilities


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def json_get(doc, path: str):
    cur = doc
    if path in ("", "."):
        return cur
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)]
        else:
            cur = cur[part]
    return cur


def ready_line(path: str):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and obj.get("event") == "ready":
                    return obj
    except FileNotFoundError:
        return None
    return None


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"cannot read a wrk duration from {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(text: str) -> dict:
    """The figures of one `wrk --latency` run."""
    out: dict = {
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "requests": None,
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([0-9.]+\s*(?:us|ms|s|m|h))\s*$", text, re.M)
        if m:
            out[key] = round(to_ms(m.group(1)), 3)
    m = re.search(r"^\s*([0-9]+) requests in ", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*([0-9]+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    m = re.search(
        r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", text
    )
    if m:
        out["socket_errors"] = {
            "connect": int(m.group(1)),
            "read": int(m.group(2)),
            "write": int(m.group(3)),
            "timeout": int(m.group(4)),
        }
    out["socket_errors_total"] = sum(out["socket_errors"].values())
    return out


def cpu_idle_pct(seconds: float) -> float:
    """Share of all CPUs idle over the next `seconds` (from /proc/stat), in %."""

    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return idle, sum(vals)

    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return round(100.0 * (i1 - i0) / max(1, t1 - t0), 1)


def _cpu_totals() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _proc_jiffies(pid: int, children_too: bool) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # fields[0] is field 3 (state); utime/stime/cutime/cstime are fields 14..17
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + stime + (cutime + cstime if children_too else 0)


def _ours_jiffies(shell_pid: int, pids: list[int]) -> int:
    """CPU jiffies used so far by the benchmark shell (with the children it has waited for: wrk,
    helpers, the build), by this helper, and by the live processes `pids` and their
    descendants."""
    ours = _proc_jiffies(shell_pid, children_too=True)
    t = os.times()
    ours += int((t.user + t.system) * os.sysconf("SC_CLK_TCK"))
    for pid in pids:
        for p in descendants(pid):
            if p != shell_pid:
                ours += _proc_jiffies(p, children_too=True)
    return ours


def cpu_snapshot(path: str, shell_pid: int, pids: list[int]) -> None:
    busy, total = _cpu_totals()
    ours = _ours_jiffies(shell_pid, pids)
    with open(path, "w", encoding="ascii") as f:
        json.dump({"busy": busy, "total": total, "ours": ours}, f)


def foreign_cpu_pct(snapshot: str, shell_pid: int, pids: list[int]) -> float:
    """Share of the machine's CPU capacity since `snapshot` used by processes other than ours.
    High means the figures were disturbed (a build, tests, another benchmark)."""
    with open(snapshot, encoding="ascii") as f:
        snap = json.load(f)
    busy, total = _cpu_totals()
    ours = _ours_jiffies(shell_pid, pids) - snap["ours"]
    foreign = (busy - snap["busy"]) - ours
    return round(max(0.0, 100.0 * foreign / max(1, total - snap["total"])), 1)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/PID/task/*/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children", encoding="ascii") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return seen


def rss_kib(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------------------------
# idle keep-alive connections


def _read_response(sock: socket.socket, deadline: float) -> bool:
    """Read one HTTP/1.1 response with a Content-Length body; True when complete."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
        if len(buf) > 1 << 20:
            return False
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 2"):
        return False
    m = re.search(rb"(?im)^content-length:\s*([0-9]+)\s*$", head)
    if not m:
        return False
    need = int(m.group(1))
    while len(body) < need:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def _still_open(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        data = sock.recv(1, socket.MSG_PEEK)
        return bool(data)  # b"" means the peer closed it
    except BlockingIOError:
        return True
    except OSError:
        return False


def idle_conns(args) -> int:
    """Open N keep-alive connections to 127.0.0.1:PORT, send one GET / on each (sequentially, so
    the proxy needs a single upstream connection), hold them idle and report the RSS growth of
    the proxy's process tree."""
    deadline = time.monotonic() + args.timeout
    before = rss_kib(args.pid)
    socks: list[socket.socket] = []
    ok = 0
    try:
        for _ in range(args.count):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection((LOOPBACK, args.port), timeout=5)
            socks.append(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            if _read_response(s, deadline):
                ok += 1
        after = rss_kib(args.pid)
        still = sum(1 for s in socks if _still_open(s))
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    delta = after - before
    print(
        json.dumps(
            {
                "connections": len(socks),
                "responses_ok": ok,
                "still_open": still,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "idle_conn_kib": round(delta / max(1, len(socks)), 2),
            }
        )
    )
    return 0 if ok == args.count else 1


# --------------------------------------------------------------------------------------------
# the switcher


def switcher(args) -> int:
    """Flip canary_weight_bp between 0 and 10000 `--switches` times over one keep-alive
    connection to the admin API, spread evenly over `--window` seconds (0: back to back), and
    never past `--deadline` seconds from start."""
    token = os.environ.get("CUTOVER_ADMIN_TOKEN", "")
    host, port = args.admin.rsplit(":", 1)
    if host not in (LOOPBACK, "localhost"):
        print(f"refusing non-loopback admin address {args.admin}", file=sys.stderr)
        return 2
    path = f"/v1/apps/{args.app}/routes"
    started = time.monotonic()
    hard_deadline = started + args.deadline

    conn = http.client.HTTPConnection(host, int(port), timeout=5)

    def request(method: str, body: bytes | None = None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        except (OSError, http.client.HTTPException) as e:
            conn.close()  # reconnects on the next request
            return None, repr(e).encode()

    status, data = request("GET")
    if status != 200:
        print(f"GET {path} failed: {status} {data[:300]!r}", file=sys.stderr)
        return 2
    view = json.loads(data)
    route = view["route"]
    gen_start = view["generation"]

    times_ms: list[float] = []
    failures: list[str] = []  # one entry per failed attempt
    notes: list[str] = []
    attempted = 0
    step = args.window / args.switches if args.window > 0 else 0.0
    for i in range(args.switches):
        target = started + i * step
        now = time.monotonic()
        if now >= hard_deadline:
            notes.append(f"deadline reached after {attempted} switches")
            break
        if target > now:
            time.sleep(min(target - now, hard_deadline - now))
        weight = 10000 if i % 2 == 0 else 0
        route["canary_weight_bp"] = weight
        body = json.dumps({**route}).encode()
        t0 = time.perf_counter()
        status, data = request("PUT", body)
        dt = (time.perf_counter() - t0) * 1000.0
        attempted += 1
        times_ms.append(dt)
        if status != 200:
            failures.append(f"switch {i}: status {status}: {data[:300]!r}")
            continue
        try:
            got = json.loads(data)["route"]["canary_weight_bp"]
        except (ValueError, KeyError, TypeError):
            failures.append(f"switch {i}: unreadable answer {data[:300]!r}")
            continue
        if got != weight:
            failures.append(f"switch {i}: asked for {weight}, table says {got}")

    status, data = request("GET")
    gen_end = json.loads(data)["generation"] if status == 200 else None
    conn.close()
    elapsed = time.monotonic() - started
    times_sorted = sorted(times_ms)

    def pct(p: float):
        if not times_sorted:
            return None
        return round(times_sorted[min(len(times_sorted) - 1, int(p * len(times_sorted)))], 3)

    # a switch is failed when it was not attempted, or its answer was not a 200 with the asked
    # weight
    failed = len(failures) + (args.switches - attempted)
    print(
        json.dumps(
            {
                "switches": args.switches,
                "attempted": attempted,
                "failed_switches": failed,
                "median_switch_ms": round(statistics.median(times_ms), 3) if times_ms else None,
                "p99_switch_ms": pct(0.99),
                "max_switch_ms": round(max(times_ms), 3) if times_ms else None,
                "elapsed_s": round(elapsed, 3),
                "generation_start": gen_start,
                "generation_end": gen_end,
                "errors": (notes + failures)[:20],
            }
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# reports


def _num(x: float):
    """10.0 -> 10 for the JSON lines; other values unchanged."""
    return int(x) if x == int(x) else x


def _ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return round(a / b, 3)


def report_proxy(args) -> int:
    results = {}
    for spec in args.target:
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8", errors="replace") as f:
            results[name] = parse_wrk(f.read())
    idle = {}
    for spec in args.idle or []:
        name, path = spec.split("=", 1)
        try:
            with open(path, encoding="utf-8") as f:
                idle[name] = json.loads(f.read())
        except (OSError, ValueError):
            idle[name] = None

    foreign = {}
    for spec in args.target_foreign_cpu or []:
        name, pct = spec.split("=", 1)
        foreign[name] = float(pct)

    cpu_us = {}
    hz = os.sysconf("SC_CLK_TCK")
    for spec in args.target_cpu or []:
        name, jiffies = spec.split("=", 1)
        reqs = results.get(name, {}).get("requests")
        if reqs:
            cpu_us[name] = round(int(jiffies) / hz * 1e6 / reqs, 2)

    print()
    print(f"{'target':<10} {'req/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8} {'sock err':>9}"
          f" {'CPU us/req':>11} {'idle KiB/conn':>14} {'other CPU %':>12}")
    for name, r in results.items():
        rps = f"{r['rps']:.0f}" if r["rps"] is not None else "?"
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "?"
        p99 = f"{r['p99_ms']:.3f}" if r["p99_ms"] is not None else "?"
        kib = "-"
        if idle.get(name):
            kib = f"{idle[name]['idle_conn_kib']:.1f}"
        other = f"{foreign[name]:.1f}" if name in foreign else "-"
        cpu = f"{cpu_us[name]:.2f}" if name in cpu_us else "-"
        print(f"{name:<10} {rps:>12} {p50:>9} {p99:>9} {r['non_2xx']:>8} "
              f"{r['socket_errors_total']:>9} {cpu:>11} {kib:>14} {other:>12}")

    def get(name, key):
        return results.get(name, {}).get(key)

    ratios = {
        "rps_cutover_over_nginx": _ratio(get("cutover", "rps"), get("nginx", "rps")),
        "rps_cutover_over_haproxy": _ratio(get("cutover", "rps"), get("haproxy", "rps")),
        "p99_cutover_over_nginx": _ratio(get("cutover", "p99_ms"), get("nginx", "p99_ms")),
        "p99_cutover_over_haproxy": _ratio(get("cutover", "p99_ms"), get("haproxy", "p99_ms")),
        "cpu_cutover_over_nginx": _ratio(cpu_us.get("cutover"), cpu_us.get("nginx")),
        "cpu_cutover_over_haproxy": _ratio(cpu_us.get("cutover"), cpu_us.get("haproxy")),
        # The floor: a minimal hand-written HTTP/1.1 proxy on tokio (bench/h1-floor).
        "rps_h1floor_over_nginx": _ratio(get("h1floor", "rps"), get("nginx", "rps")),
        "p99_h1floor_over_nginx": _ratio(get("h1floor", "p99_ms"), get("nginx", "p99_ms")),
        "cpu_h1floor_over_nginx": _ratio(cpu_us.get("h1floor"), cpu_us.get("nginx")),
    }
    print()
    print("ratios (rps: higher is better for cutover; p99 and CPU per request: lower is better)")
    for k, v in ratios.items():
        print(f"  {k:<26} {v}")
    print()

    doc: dict = {
        "bench": "proxy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": _num(args.duration_s),
        "connections": args.connections,
        "proxy_threads": args.proxy_threads,
        "backend_threads": args.backend_threads,
        "wrk_threads": args.wrk_threads,
        "cpu_idle_pct_before": args.cpu_idle_before,
        "cookie": args.cookie or None,
        "foreign_cpu_pct": args.foreign_cpu,
    }
    for name, r in results.items():
        entry = {"rps": r["rps"], "p99_ms": r["p99_ms"], "p50_ms": r["p50_ms"],
                 "non_2xx": r["non_2xx"], "socket_errors": r["socket_errors_total"]}
        if idle.get(name):
            entry["idle_conn_kib"] = idle[name]["idle_conn_kib"]
        if name in cpu_us:
            entry["cpu_us_per_req"] = cpu_us[name]
        if name in foreign:
            entry["foreign_cpu_pct"] = foreign[name]
        doc[name] = entry
    doc["ratios"] = ratios
    print(json.dumps(doc, separators=(",", ":")))
    return 0


def report_switch(args) -> int:
    with open(args.wrk, encoding="utf-8", errors="replace") as f:
        wrk = parse_wrk(f.read())
    with open(args.switcher, encoding="utf-8") as f:
        sw = json.loads(f.read().strip().splitlines()[-1])
    with open(args.metrics, encoding="utf-8") as f:
        slots = json.loads(f.read())
    per_slot = {}
    for s in slots:
        m = s["metrics"]
        per_slot[s["slot"]] = {
            "version": s["version"],
            "requests": m["requests"],
            "requests_by_class": m["requests_by_class"],
            "connect_failures": m["connect_failures"],
            "retries": m["retries"],
        }
    both_served = len(per_slot) == 2 and all(v["requests"] > 0 for v in per_slot.values())
    problems = []
    if wrk["requests"] is None:
        problems.append("could not read wrk's request count")
    if wrk["non_2xx"]:
        problems.append(f"{wrk['non_2xx']} non-2xx responses")
    if wrk["socket_errors_total"]:
        problems.append(f"socket errors {wrk['socket_errors']}")
    if sw["failed_switches"]:
        problems.append(f"{sw['failed_switches']} failed switches: {sw['errors'][:5]}")
    if not both_served:
        problems.append(f"not both slots served requests: {per_slot}")
    if wrk["requests"] is not None and args.wrk_end_before_switches_done:
        problems.append("wrk ended before the switcher finished")

    print()
    print(f"wrk: {wrk['requests']} requests, {wrk['rps']} req/s, p99 {wrk['p99_ms']} ms")
    print(f"  non-2xx responses : {wrk['non_2xx']}")
    print(f"  socket errors     : {wrk['socket_errors']}")
    print(f"switches: {sw['attempted']}/{sw['switches']} attempted, {sw['failed_switches']} failed, "
          f"in {sw['elapsed_s']} s")
    print(f"  admin round trip  : median {sw['median_switch_ms']} ms, p99 {sw['p99_switch_ms']} ms, "
          f"max {sw['max_switch_ms']} ms")
    print(f"  generation        : {sw['generation_start']} -> {sw['generation_end']}")
    for slot, v in per_slot.items():
        print(f"slot {slot} ({v['version']}): {v['requests']} requests, by class "
              f"{v['requests_by_class']}, connect failures {v['connect_failures']}, "
              f"retries {v['retries']}")
    if sw["errors"]:
        print("switcher errors (first 20):")
        for e in sw["errors"]:
            print(f"  {e}")
    print("RESULT:", "FAIL: " + "; ".join(problems) if problems else "ok")
    print()
    doc = {
        "bench": "switch",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "switches": sw["switches"],
        "duration_s": _num(args.duration_s),
        "connections": args.connections,
        "requests": wrk["requests"],
        "rps": wrk["rps"],
        "p99_ms": wrk["p99_ms"],
        "non_2xx": wrk["non_2xx"],
        "socket_errors": wrk["socket_errors_total"],
        "failed_switches": sw["failed_switches"],
        "median_switch_ms": sw["median_switch_ms"],
        "p99_switch_ms": sw["p99_switch_ms"],
        "slot_requests": {k: v["requests"] for k, v in per_slot.items()},
        "cpu_idle_pct_before": args.cpu_idle_before,
        "foreign_cpu_pct": args.foreign_cpu,
        "ok": not problems,
    }
    print(json.dumps(doc, separators=(",", ":")))
    return 0 if not problems else 1


# --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("free-port")
    q = sub.add_parser("json-get")
    q.add_argument("file")
    q.add_argument("path")
    q = sub.add_parser("ready-line")
    q.add_argument("file")
    q = sub.add_parser("parse-wrk")
    q.add_argument("file")
    q = sub.add_parser("rss-kib")
    q.add_argument("pid", type=int)
    q = sub.add_parser("cpu-idle")
    q.add_argument("seconds", type=float)
    q = sub.add_parser("cpu-jiffies")
    q.add_argument("pid", type=int)
    q = sub.add_parser("cpu-snapshot")
    q.add_argument("file")
    q.add_argument("shell_pid", type=int)
    q.add_argument("pids", type=int, nargs="*")
    q = sub.add_parser("foreign-cpu")
    q.add_argument("file")
    q.add_argument("shell_pid", type=int)
    q.add_argument("pids", type=int, nargs="*")
    q = sub.add_parser("idle-conns")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--pid", type=int, required=True, help="proxy process (its children count too)")
    q.add_argument("--count", type=int, default=1000)
    q.add_argument("--timeout", type=float, default=30.0)
    q = sub.add_parser("switcher")
    q.add_argument("--admin", required=True, help="127.0.0.1:PORT")
    q.add_argument("--app", default="bench")
    q.add_argument("--switches", type=int, default=1000)
    q.add_argument("--window", type=float, default=0.0, help="spread the switches over this many s")
    q.add_argument("--deadline", type=float, required=True, help="give up after this many s")
    q = sub.add_parser("report-proxy")
    q.add_argument("--target", action="append", required=True, help="NAME=WRK_OUTPUT_FILE")
    q.add_argument("--idle", action="append", help="NAME=IDLE_CONNS_JSON_FILE")
    q.add_argument("--duration-s", type=float, required=True)
    q.add_argument("--connections", type=int, required=True)
    q.add_argument("--proxy-threads", type=int, required=True)
    q.add_argument("--backend-threads", type=int, required=True)
    q.add_argument("--wrk-threads", type=int, required=True)
    q.add_argument("--cookie", default="")
    q.add_argument("--target-foreign-cpu", action="append", help="NAME=PCT")
    q.add_argument("--target-cpu", action="append", help="NAME=JIFFIES used by the target")
    q.add_argument("--foreign-cpu", type=float)
    q.add_argument("--cpu-idle-before", type=float)
    q = sub.add_parser("report-switch")
    q.add_argument("--wrk", required=True)
    q.add_argument("--switcher", required=True)
    q.add_argument("--metrics", required=True)
    q.add_argument("--duration-s", type=float, required=True)
    q.add_argument("--connections", type=int, required=True)
    q.add_argument("--wrk-end-before-switches-done", action="store_true")
    q.add_argument("--foreign-cpu", type=float)
    q.add_argument("--cpu-idle-before", type=float)
    args = p.parse_args(argv)

    if args.cmd == "free-port":
        print(free_port())
        return 0
    if args.cmd == "json-get":
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        val = json_get(json.loads(text), args.path)
        print(val if isinstance(val, str) else json.dumps(val))
        return 0
    if args.cmd == "ready-line":
        obj = ready_line(args.file)
        if obj is None:
            return 1
        print(json.dumps(obj))
        return 0
    if args.cmd == "parse-wrk":
        with open(args.file, encoding="utf-8", errors="replace") as f:
            print(json.dumps(parse_wrk(f.read())))
        return 0
    if args.cmd == "rss-kib":
        print(rss_kib(args.pid))
        return 0
    if args.cmd == "cpu-idle":
        print(cpu_idle_pct(args.seconds))
        return 0
    if args.cmd == "cpu-jiffies":
        print(sum(_proc_jiffies(p, children_too=False) for p in descendants(args.pid)))
        return 0
    if args.cmd == "cpu-snapshot":
        cpu_snapshot(args.file, args.shell_pid, args.pids)
        return 0
    if args.cmd == "foreign-cpu":
        print(foreign_cpu_pct(args.file, args.shell_pid, args.pids))
        return 0
    if args.cmd == "idle-conns":
        return idle_conns(args)
    if args.cmd == "switcher":
        return switcher(args)
    if args.cmd == "report-proxy":
        return report_proxy(args)
    if args.cmd == "report-switch":
        return report_switch(args)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
