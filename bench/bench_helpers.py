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
  json-object KEY=VALUE...       print one JSON object; VALUE is taken as JSON when it parses,
                                 as a string otherwise (KEY:=STRING forces a string)
  ready-count FILE               how many ready lines FILE holds (0 when none or no file)
  ready-last FILE                print the last ready line of FILE (exit 1 if there is none)
  pids-with-arg STRING           PIDs of processes one of whose arguments equals STRING
  cpus-allowed                   the CPUs this process may run on, comma-separated
  idle-conns ...                 memory per idle keep-alive connection (see --help)
  switcher ...                   flip canary_weight_bp through the admin API (see --help)
  run-start FILE ...             snapshot before one measured load run (proxy.sh, see --help)
  run-end FILE ...               figures of that run, appended to a JSON-lines file
  report-proxy ...               print the proxy.sh tables and its JSON line
  report-switch ...              print the switch.sh summary and its JSON line
  report-upgrade ...             print the upgrade.sh summary and its JSON line

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


_BINARY_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(text: str) -> dict:
    """The figures of one `wrk --latency` run. wrk prints sizes in binary units (its "MB" is
    MiB); `max_ms` is the largest latency of the run, `elapsed_s` the measured time."""
    out: dict = {
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
        "requests": None,
        "elapsed_s": None,
        "read_bytes": None,
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
    # "    Latency   309.71us   88.69us   2.47ms   90.10%": avg, stdev, max, +/- stdev
    m = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([0-9.]+(?:us|ms|s|m|h))\s", text, re.M)
    if m:
        out["max_ms"] = round(to_ms(m.group(1)), 3)
    m = re.search(r"^\s*([0-9]+) requests in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+)(B|KB|MB|GB|TB) read",
                  text, re.M)
    if m:
        out["requests"] = int(m.group(1))
        out["elapsed_s"] = round(to_ms(m.group(2) + m.group(3)) / 1000.0, 3)
        out["read_bytes"] = int(float(m.group(4)) * _BINARY_UNITS[m.group(5)])
    else:
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


def _percentile(sorted_vals: list, p: float):
    """Nearest-rank percentile of an ascending list (p in 0..100); None when empty."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def parse_h2load(text: str, log_path: str | None = None) -> dict:
    """The figures of one `h2load -D ...` run, in the same shape as parse_wrk's. h2load prints no
    percentiles, so p50/p99/max come from its `--log-file` (one line per request: start time,
    status, microseconds to the end of the response; status -1 for a failed stream)."""
    out: dict = {
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
        "requests": None,
        "elapsed_s": None,
        "read_bytes": None,
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "h2load": {},
    }
    m = re.search(r"^finished in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+) req/s", text, re.M)
    if m:
        out["elapsed_s"] = round(to_ms(m.group(1) + m.group(2)) / 1000.0, 3)
        out["rps"] = float(m.group(3))
    m = re.search(
        r"^requests: ([0-9]+) total, ([0-9]+) started, ([0-9]+) done, ([0-9]+) succeeded, "
        r"([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout", text, re.M)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        out["requests"] = done
        out["h2load"] = {"total": total, "started": started, "done": done, "succeeded": ok,
                         "failed": failed, "errored": errored, "timeout": timeout}
        # h2load's "errored" are streams that broke (reset, connection lost), "timeout" the
        # ones its timeouts cut: the counterparts of wrk's read and timeout socket errors.
        out["socket_errors"]["read"] = errored
        out["socket_errors"]["timeout"] = timeout
    m = re.search(r"^status codes: ([0-9]+) 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx",
                  text, re.M)
    if m:
        out["non_2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"^Application protocol: (\S+)", text, re.M)
    out["protocol"] = m.group(1) if m else ("h2c" if "TLS Protocol" not in text else None)
    m = re.search(r"^traffic: \S+ \(([0-9]+)\) total", text, re.M)
    if m:
        out["read_bytes"] = int(m.group(1))
    # clients that never connected: h2load says so on stderr (kept in the same file)
    out["socket_errors"]["connect"] = len(re.findall(r"(?im)^.*(could not connect|connect failed|Connection refused).*$", text))
    if log_path:
        durs: list[int] = []
        try:
            with open(log_path, encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split("\t")
                    if len(parts) >= 3 and parts[1] != "-1":
                        try:
                            durs.append(int(parts[2]))
                        except ValueError:
                            pass
        except OSError:
            pass
        durs.sort()
        if durs:
            out["p50_ms"] = round(_percentile(durs, 50) / 1000.0, 3)
            out["p99_ms"] = round(_percentile(durs, 99) / 1000.0, 3)
            out["max_ms"] = round(durs[-1] / 1000.0, 3)
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


def cpu_per_core() -> dict[int, tuple[int, int]]:
    """{cpu: (busy, total)} jiffies of each CPU so far, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            m = re.match(r"cpu([0-9]+)\s", line)
            if not m:
                continue
            vals = [int(v) for v in line.split()[1:9]]
            idle = vals[3] + vals[4]
            out[int(m.group(1))] = (sum(vals) - idle, sum(vals))
    return out


def tree_jiffies(pid: int) -> int:
    """CPU time (user + system, clock ticks) used so far by pid and its live descendants."""
    return sum(_proc_jiffies(p, children_too=False) for p in descendants(pid))


def nginx_status(url: str | None) -> dict | None:
    """nginx's stub_status at url (127.0.0.1 only): accepts, handled, requests, active."""
    if not url:
        return None
    m = re.fullmatch(r"http://127\.0\.0\.1:([0-9]+)(/.*)", url)
    if not m:
        return None
    try:
        conn = http.client.HTTPConnection(LOOPBACK, int(m.group(1)), timeout=3)
        conn.request("GET", m.group(2))
        body = conn.getresponse().read().decode("ascii", "replace")
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    a = re.search(r"Active connections:\s*([0-9]+)", body)
    n = re.search(r"^\s*([0-9]+)\s+([0-9]+)\s+([0-9]+)\s*$", body, re.M)
    if not (a and n):
        return None
    return {"active": int(a.group(1)), "accepts": int(n.group(1)), "handled": int(n.group(2)),
            "requests": int(n.group(3))}


def pids_with_arg(arg: str) -> list[int]:
    """PIDs of the processes one of whose command-line arguments is exactly `arg`."""
    out = []
    want = arg.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if want in args:
            out.append(int(d))
    return sorted(out)


def ready_lines(path: str) -> list[dict]:
    """Every ready line of `path`, in order (several processes may append to one file)."""
    out = []
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
                    out.append(obj)
    except FileNotFoundError:
        pass
    return out


# --------------------------------------------------------------------------------------------
# one measured load run (proxy.sh): a snapshot before, the figures after


def run_start(args) -> int:
    snap = {
        "t": time.monotonic(),
        "machine": _cpu_totals(),
        "ours": _ours_jiffies(args.shell_pid, args.pids),
        "cores": {str(k): v for k, v in cpu_per_core().items()},
        "proxy_jiffies": tree_jiffies(args.proxy_pid),
        "backend": nginx_status(args.backend_status),
    }
    with open(args.file, "w", encoding="ascii") as f:
        json.dump(snap, f)
    return 0


def run_end(args) -> int:
    """Read the load generator's output, work out the figures of the run since `run-start`,
    append them as one JSON line to --record-to and print a one-line summary on stderr."""
    t1 = time.monotonic()
    proxy_j1 = tree_jiffies(args.proxy_pid)
    cores1 = cpu_per_core()
    backend1 = nginx_status(args.backend_status)
    with open(args.file, encoding="ascii") as f:
        snap = json.load(f)
    busy, total = _cpu_totals()
    ours = _ours_jiffies(args.shell_pid, args.pids) - snap["ours"]
    foreign = (busy - snap["machine"][0]) - ours
    foreign_pct = round(max(0.0, 100.0 * foreign / max(1, total - snap["machine"][1])), 1)
    with open(args.output, encoding="utf-8", errors="replace") as f:
        text = f.read()
    r = parse_h2load(text, args.h2_log) if args.tool == "h2load" else parse_wrk(text)
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(1e-6, t1 - snap["t"])
    jiffies = proxy_j1 - snap["proxy_jiffies"]
    cpu_s = jiffies / hz

    def core_busy(cpu):
        if cpu is None or str(cpu) not in snap["cores"] or cpu not in cores1:
            return None
        b0, t0 = snap["cores"][str(cpu)]
        b1, tt1 = cores1[cpu]
        return round(100.0 * (b1 - b0) / max(1, tt1 - t0), 1)

    reqs = r["requests"]
    mib = reqs * args.body_bytes / (1 << 20) if reqs is not None else None
    rec = {
        "run": args.run,
        "order": args.order,
        "scenario": args.scenario,
        "target": args.target,
        "tool": args.tool,
        "connections": args.connections,
        "body_bytes": args.body_bytes,
        "requests": reqs,
        "elapsed_s": r["elapsed_s"],
        "rps": r["rps"],
        "mib_s": round(mib / r["elapsed_s"], 2) if mib is not None and r["elapsed_s"] else None,
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "non_2xx": r["non_2xx"],
        "socket_errors": r["socket_errors"],
        "errors": r["non_2xx"] + r["socket_errors_total"],
        "proxy_cpu_s": round(cpu_s, 3),
        "proxy_cpu_pct": round(100.0 * cpu_s / wall, 1),
        "cpu_us_per_req": round(cpu_s * 1e6 / reqs, 3) if reqs else None,
        "cpu_us_per_mib": (round(cpu_s * 1e6 / mib, 1)
                           if mib and args.body_bytes >= (1 << 20) else None),
        "proxy_core_busy_pct": core_busy(args.proxy_cpu),
        "load_core_busy_pct": core_busy(args.load_cpu),
        "foreign_cpu_pct": foreign_pct,
        "proxy_rss_kib": rss_kib(args.proxy_pid),
    }
    if snap.get("backend") and backend1:
        rec["upstream_connects"] = backend1["accepts"] - snap["backend"]["accepts"] - 1
        rec["backend_requests"] = backend1["requests"] - snap["backend"]["requests"] - 1
    if args.tool == "h2load":
        rec["protocol"] = r.get("protocol")
        rec["h2load"] = r["h2load"]
    with open(args.record_to, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    warn = " WARNING: other processes were busy, this run is disturbed" if foreign_pct > 5 else ""
    thr = f"{rec['mib_s']} MiB/s" if args.body_bytes >= (1 << 20) else f"{rec['rps']} req/s"
    cpu = (f"{rec['cpu_us_per_mib']} us/MiB" if args.body_bytes >= (1 << 20)
           else f"{rec['cpu_us_per_req']} us/req")
    print(f"{args.target}: {thr}, p99 {rec['p99_ms']} ms, max {rec['max_ms']} ms, errors "
          f"{rec['errors']}, proxy CPU {rec['proxy_cpu_pct']} % ({cpu}), cores "
          f"{rec['proxy_core_busy_pct']} / {rec['load_core_busy_pct']} % busy, upstream connects "
          f"{rec.get('upstream_connects')}, other CPU {foreign_pct} %{warn}", file=sys.stderr)
    return 0


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


def _settled_rss(pid: int, deadline: float, quiet_s: float = 0.6) -> tuple[int, float]:
    """RSS of pid's tree once it has not moved for `quiet_s` (sampled every 0.1 s), or at the
    deadline; with the seconds it took."""
    start = time.monotonic()
    last = rss_kib(pid)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        cur = rss_kib(pid)
        if cur != last:
            last = cur
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            break
    return last, round(time.monotonic() - start, 2)


def idle_conns(args) -> int:
    """Open N keep-alive connections to 127.0.0.1:PORT, send one GET on each (sequentially, so
    the proxy needs a single upstream connection), hold them idle and report the RSS growth of
    the proxy's process tree; then close them all and report the RSS once it settles (polled
    every 0.1 s until it has not moved for 0.6 s, at most --settle seconds): is the memory given
    back?"""
    deadline = time.monotonic() + args.timeout
    before = rss_kib(args.pid)
    socks: list[socket.socket] = []
    ok = 0
    errors: list[str] = []
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        for _ in range(args.count):
            if time.monotonic() > deadline:
                errors.append(f"deadline of {args.timeout} s reached after {len(socks)} connections")
                break
            try:
                s = socket.create_connection((LOOPBACK, args.port), timeout=5)
            except OSError as e:
                errors.append(f"connect {len(socks) + 1}: {e}")
                break
            socks.append(s)
            try:
                s.sendall(request)
                if _read_response(s, deadline):
                    ok += 1
            except OSError as e:
                if len(errors) < 5:
                    errors.append(f"request {len(socks)}: {e}")
        after, _ = _settled_rss(args.pid, time.monotonic() + 2.0)
        still = sum(1 for s in socks if _still_open(s))
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    closed, settle_s = _settled_rss(args.pid, time.monotonic() + args.settle)
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
                "rss_closed_kib": closed,
                "closed_settle_s": settle_s,
                # share of the growth given back once the connections closed
                "returned_pct": round(100.0 * (after - closed) / delta, 1) if delta > 0 else None,
                "errors": errors[:5],
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


def _med(vals):
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def _spread(vals):
    vals = [v for v in vals if v is not None]
    return (min(vals), max(vals)) if vals else (None, None)


def _fmt(v, digits: int) -> str:
    if v is None:
        return "?"
    return f"{v:,.{digits}f}".replace(",", " ") if digits == 0 else f"{v:.{digits}f}"


# (key, label, digits, higher_is_better) of the figures each scenario's table shows
_SMALL_COLS = [("rps", "req/s", 0, True), ("p50_ms", "p50 ms", 3, False),
               ("p99_ms", "p99 ms", 3, False), ("max_ms", "max ms", 1, False),
               ("cpu_us_per_req", "CPU us/req", 2, False)]
_BIG_COLS = [("mib_s", "MiB/s", 0, True), ("rps", "req/s", 0, True),
             ("p50_ms", "p50 ms", 2, False), ("p99_ms", "p99 ms", 2, False),
             ("max_ms", "max ms", 1, False), ("cpu_us_per_mib", "CPU us/MiB", 0, False)]
# the ratios printed for each scenario: (figure, what it means)
_RATIO_KEYS_SMALL = ["rps", "p99_ms", "cpu_us_per_req"]
_RATIO_KEYS_BIG = ["mib_s", "p99_ms", "cpu_us_per_mib"]


def report_proxy(args) -> int:
    with open(args.meta, encoding="utf-8") as f:
        meta = json.load(f)
    records = []
    try:
        with open(args.records, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    idle = {}
    for spec in args.idle or []:
        name, path = spec.split("=", 1)
        try:
            with open(path, encoding="utf-8") as f:
                idle[name] = json.loads(f.read())
        except (OSError, ValueError):
            idle[name] = None

    scenarios: list[str] = []
    targets: list[str] = []
    for r in records:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
        if r["target"] not in targets:
            targets.append(r["target"])
    # the order of BENCH_TARGETS (cutover first by default), not the rotated order of run 1
    targets.sort(key=lambda t: meta.get("targets", []).index(t) if t in meta.get("targets", []) else 99)
    refs = [t for t in ("nginx", "haproxy") if t in targets]
    others = [t for t in targets if t not in ("nginx", "haproxy")]

    summary: dict = {}
    out = sys.stdout
    print("", file=out)
    for sc in scenarios:
        rs = [r for r in records if r["scenario"] == sc]
        big = max(r["body_bytes"] for r in rs) >= (1 << 20)
        cols = _BIG_COLS if big else _SMALL_COLS
        runs = sorted({r["run"] for r in rs})
        desc = meta.get("scenario_text", {}).get(sc, "")
        print(f"{sc}: {desc}; {len(runs)} run(s), median [min-max]", file=out)
        head = f"  {'target':<9}"
        for _, label, _, _ in cols:
            head += f" {label:>21}"
        head += f" {'errors':>7} {'proxy CPU %':>11} {'up conns':>9} {'other CPU %':>11}"
        print(head, file=out)
        sc_sum: dict = {"targets": {}, "ratios": {}}
        for t in targets:
            tr = [r for r in rs if r["target"] == t]
            if not tr:
                continue
            line = f"  {t:<9}"
            entry: dict = {"runs": len(tr)}
            for key, _, digits, _ in cols:
                vals = [r.get(key) for r in tr]
                med = _med(vals)
                lo, hi = _spread(vals)
                entry[key] = {"median": med, "min": lo, "max": hi}
                cell = _fmt(med, digits)
                if len(tr) > 1 and lo is not None:
                    cell += f" [{_fmt(lo, digits)}-{_fmt(hi, digits)}]"
                line += f" {cell:>21}"
            errs = sum(r["errors"] for r in tr)
            entry["errors"] = errs
            entry["non_2xx"] = sum(r["non_2xx"] for r in tr)
            entry["socket_errors"] = {k: sum(r["socket_errors"][k] for r in tr)
                                      for k in ("connect", "read", "write", "timeout")}
            for key in ("proxy_cpu_pct", "upstream_connects", "foreign_cpu_pct",
                        "proxy_core_busy_pct", "load_core_busy_pct", "proxy_rss_kib"):
                entry[key] = _med([r.get(key) for r in tr])
            fmax = max((r["foreign_cpu_pct"] for r in tr), default=None)
            entry["foreign_cpu_pct_max"] = fmax
            up = entry["upstream_connects"]
            line += (f" {errs:>7} {_fmt(entry['proxy_cpu_pct'], 1):>11}"
                     f" {_fmt(up, 0) if up is not None else '-':>9} {_fmt(fmax, 1):>11}")
            print(line, file=out)
            sc_sum["targets"][t] = entry
        # ratios per run (each against the reference measured in the same run), then their median
        rkeys = _RATIO_KEYS_BIG if big else _RATIO_KEYS_SMALL
        labels = {"rps": "req/s (higher is better)", "mib_s": "MiB/s (higher is better)",
                  "p99_ms": "p99 (lower is better)",
                  "cpu_us_per_req": "CPU per request (lower is better)",
                  "cpu_us_per_mib": "CPU per MiB (lower is better)"}
        lines = []
        for who in others:
            for ref in refs:
                for key in rkeys:
                    per_run = []
                    for run in runs:
                        a = next((r.get(key) for r in rs if r["run"] == run and r["target"] == who), None)
                        b = next((r.get(key) for r in rs if r["run"] == run and r["target"] == ref), None)
                        per_run.append(_ratio(a, b))
                    name = f"{key}_{who}_over_{ref}"
                    med = _med(per_run)
                    sc_sum["ratios"][name] = {"median": med, "per_run": per_run}
                    runs_txt = " ".join("?" if v is None else f"{v:.2f}" for v in per_run)
                    lines.append(f"    {who}/{ref:<8} {labels[key]:<34} "
                                 f"{'?' if med is None else f'{med:.2f}':>5}   (runs: {runs_txt})")
        if lines:
            print("  ratios, each run against the proxies measured in that run; median of the runs:",
                  file=out)
            for ln in lines:
                print(ln, file=out)
        print("", file=out)
        summary[sc] = sc_sum

    if idle:
        n = max((v["connections"] for v in idle.values() if v), default=0)
        print(f"idle memory: {n} keep-alive connections, each after one GET /, "
              f"held idle; RSS of the proxy's process tree", file=out)
        print(f"  {'target':<9} {'before MiB':>10} {'held MiB':>9} {'KiB/conn':>9} {'closed MiB':>10}"
              f" {'given back %':>12} {'ok / open':>13}", file=out)
        for t, v in idle.items():
            if not v:
                print(f"  {t:<9} (probe failed)", file=out)
                continue
            gb = "-" if v.get("returned_pct") is None else str(round(v["returned_pct"]))
            print(f"  {t:<9} {v['rss_before_kib'] / 1024:>10.1f} {v['rss_after_kib'] / 1024:>9.1f}"
                  f" {v['idle_conn_kib']:>9.2f} {v['rss_closed_kib'] / 1024:>10.1f} {gb:>12}"
                  f" {str(v['responses_ok']) + ' / ' + str(v['still_open']):>13}", file=out)
        for ref in refs:
            if idle.get("cutover") and idle.get(ref):
                r = _ratio(idle["cutover"]["idle_conn_kib"], idle[ref]["idle_conn_kib"])
                print(f"  cutover/{ref} KiB per idle connection: {r}", file=out)
        print("", file=out)
    for sk in meta.get("skipped", []):
        print(f"skipped: {sk}", file=out)
    problems = [f"{sc}/{t}: {e['errors']} errors" for sc, v in summary.items()
                for t, e in v["targets"].items() if e["errors"]]
    disturbed = sorted({f"{r['scenario']}/{r['target']}/run {r['run']}" for r in records
                        if r["foreign_cpu_pct"] > 5})
    if problems:
        print("non-2xx or socket errors: " + "; ".join(problems), file=out)
    if disturbed:
        print("disturbed (other CPU > 5 %): " + ", ".join(disturbed), file=out)
    print("", file=out)

    doc: dict = {
        "bench": "proxy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: v for k, v in meta.items() if k != "scenario_text"},
        "cpu_idle_pct_before": args.cpu_idle_before,
        "foreign_cpu_pct": args.foreign_cpu,
        "scenarios": summary,
        "idle": idle or None,
        "per_run": records,
    }
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


def report_upgrade(args) -> int:
    """Summary of bench/upgrade.sh: wrk's figures over the whole run, and per kind of step
    (upgrade by `serve --upgrade`, reload by SIGHUP, refused reload of an invalid file) how many
    completed and how long they took."""
    with open(args.wrk, encoding="utf-8", errors="replace") as f:
        wrk = parse_wrk(f.read())
    with open(args.meta, encoding="utf-8") as f:
        meta = json.load(f)
    steps = []
    try:
        with open(args.steps, encoding="utf-8") as f:
            steps = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    problems = []
    if wrk["requests"] is None:
        problems.append("could not read wrk's summary")
    if wrk["non_2xx"]:
        problems.append(f"{wrk['non_2xx']} non-2xx responses")
    if wrk["socket_errors_total"]:
        problems.append(f"socket errors {wrk['socket_errors']}")
    if meta.get("fatal"):
        problems.append(meta["fatal"])
    kinds: dict = {}
    for kind in ("upgrade", "reload", "reload-invalid"):
        ks = [st for st in steps if st["kind"] == kind]
        want = meta.get("planned", {}).get(kind, len(ks))
        ok = [st for st in ks if st["ok"]]
        failed = [st for st in ks if not st["ok"]]
        entry = {"planned": want, "done": len(ks), "ok": len(ok), "failed": len(failed)}
        for key in ("ready_ms", "exit_ms"):
            vals = [st[key] for st in ok if st.get(key) is not None]
            entry[key] = {"median": _med(vals), "max": max(vals) if vals else None}
        kinds[kind] = entry
        if len(ok) < want:
            problems.append(f"{kind}: {len(ok)} of {want} completed")
        for st in failed[:5]:
            problems.append(f"{kind} {st['i']}: {st.get('note', '')}")
    extra = [st for st in steps if st.get("extra")]
    extra_failed = [st for st in extra if not st.get("extra_ok")]
    for st in extra_failed[:5]:
        problems.append(f"{st['kind']} {st['i']}: second app {st['extra']}: {st.get('extra_note', '')}")
    pids = []
    for st in steps:
        for key in ("old_pid", "new_pid"):
            if st.get(key) and st[key] not in pids:
                pids.append(st[key])

    print()
    print(f"wrk ({meta.get('wrk_cmd', '')}): {wrk['requests']} requests in {wrk['elapsed_s']} s, "
          f"{wrk['rps']} req/s, p50 {wrk['p50_ms']} ms, p99 {wrk['p99_ms']} ms, max {wrk['max_ms']} ms")
    print(f"  non-2xx responses : {wrk['non_2xx']}")
    print(f"  socket errors     : {wrk['socket_errors']}")
    labels = {"upgrade": "upgrades (serve --upgrade)", "reload": "reloads (SIGHUP)",
              "reload-invalid": "invalid-config reloads (must be refused)"}
    for kind, e in kinds.items():
        if not e["planned"] and not e["done"]:
            continue
        line = f"{labels[kind]}: {e['ok']}/{e['planned']} ok"
        if kind != "reload-invalid" and e["ok"]:
            line += (f"; new process ready after median {e['ready_ms']['median']} ms (max "
                     f"{e['ready_ms']['max']}), old one gone after median {e['exit_ms']['median']} ms "
                     f"(max {e['exit_ms']['max']})")
        print(line)
    if extra:
        adds = [st for st in extra if st["extra"] == "added"]
        rems = [st for st in extra if st["extra"] == "removed"]
        print(f"second app: answered after {sum(1 for st in adds if st['extra_ok'])}/{len(adds)} "
              f"additions, refused connections after {sum(1 for st in rems if st['extra_ok'])}/"
              f"{len(rems)} removals")
    print(f"server pids, in order: {' '.join(str(p) for p in pids)}")
    print("RESULT:", "FAIL: " + "; ".join(problems) if problems else "ok")
    print()
    doc = {
        "bench": "upgrade",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: v for k, v in meta.items()},
        "requests": wrk["requests"],
        "elapsed_s": wrk["elapsed_s"],
        "rps": wrk["rps"],
        "p50_ms": wrk["p50_ms"],
        "p99_ms": wrk["p99_ms"],
        "max_ms": wrk["max_ms"],
        "non_2xx": wrk["non_2xx"],
        "socket_errors": wrk["socket_errors"],
        "steps_summary": kinds,
        "pids": pids,
        "cpu_idle_pct_before": args.cpu_idle_before,
        "foreign_cpu_pct": args.foreign_cpu,
        "ok": not problems,
        "problems": problems,
        "steps": steps,
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
    q.add_argument("--path", default="/")
    q.add_argument("--settle", type=float, default=3.0,
                   help="longest wait for the RSS to settle after closing, in s")
    q = sub.add_parser("switcher")
    q.add_argument("--admin", required=True, help="127.0.0.1:PORT")
    q.add_argument("--app", default="bench")
    q.add_argument("--switches", type=int, default=1000)
    q.add_argument("--window", type=float, default=0.0, help="spread the switches over this many s")
    q.add_argument("--deadline", type=float, required=True, help="give up after this many s")
    q = sub.add_parser("report-proxy")
    q.add_argument("--meta", required=True, help="JSON file: layout, versions, settings")
    q.add_argument("--records", required=True, help="JSON-lines file written by run-end")
    q.add_argument("--idle", action="append", help="NAME=IDLE_CONNS_JSON_FILE")
    q.add_argument("--foreign-cpu", type=float)
    q.add_argument("--cpu-idle-before", type=float)
    for name in ("run-start", "run-end"):
        q = sub.add_parser(name)
        q.add_argument("file", help="the snapshot file")
        q.add_argument("--shell-pid", type=int, required=True)
        q.add_argument("--proxy-pid", type=int, required=True)
        q.add_argument("--pids", type=int, nargs="*", default=[], help="every process we started")
        q.add_argument("--backend-status", help="http://127.0.0.1:PORT/PATH of nginx's stub_status")
    q.add_argument("--tool", choices=("wrk", "h2load"), required=True)
    q.add_argument("--output", required=True, help="the load generator's output")
    q.add_argument("--h2-log", help="h2load's --log-file")
    q.add_argument("--scenario", required=True)
    q.add_argument("--target", required=True)
    q.add_argument("--run", type=int, required=True)
    q.add_argument("--order", type=int, default=0)
    q.add_argument("--connections", type=int, required=True)
    q.add_argument("--body-bytes", type=int, required=True)
    q.add_argument("--proxy-cpu", type=int)
    q.add_argument("--load-cpu", type=int)
    q.add_argument("--record-to", required=True)
    q = sub.add_parser("json-object")
    q.add_argument("pairs", nargs="*")
    q = sub.add_parser("ready-count")
    q.add_argument("file")
    q = sub.add_parser("ready-last")
    q.add_argument("file")
    q = sub.add_parser("pids-with-arg")
    q.add_argument("arg")
    sub.add_parser("cpus-allowed")
    q = sub.add_parser("report-upgrade")
    q.add_argument("--wrk", required=True)
    q.add_argument("--steps", required=True, help="JSON-lines file, one line per step")
    q.add_argument("--meta", required=True)
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
        print(tree_jiffies(args.pid))
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
    if args.cmd == "run-start":
        return run_start(args)
    if args.cmd == "run-end":
        return run_end(args)
    if args.cmd == "json-object":
        obj = {}
        for pair in args.pairs:
            key, sep, val = pair.partition("=")
            if key.endswith(":"):
                obj[key[:-1]] = val
                continue
            try:
                obj[key] = json.loads(val)
            except ValueError:
                obj[key] = val
        print(json.dumps(obj, separators=(",", ":")))
        return 0
    if args.cmd == "ready-count":
        print(len(ready_lines(args.file)))
        return 0
    if args.cmd == "ready-last":
        lines = ready_lines(args.file)
        if not lines:
            return 1
        print(json.dumps(lines[-1]))
        return 0
    if args.cmd == "pids-with-arg":
        for pid in pids_with_arg(args.arg):
            print(pid)
        return 0
    if args.cmd == "cpus-allowed":
        print(",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
        return 0
    if args.cmd == "report-upgrade":
        return report_upgrade(args)
    if args.cmd == "report-switch":
        return report_switch(args)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
