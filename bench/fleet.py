#!/usr/bin/env python3
"""A fleet on etcd (docs/fleet.md): how fast route changes reach three proxies under load, and what
a controller of 10 000 apps costs.

    bench/fleet.py [BINARY]        # BINARY defaults to target/release/cutover (build it first)

Part 1, route changes: a 3-member etcd cluster, two example apps (v1, v2) and three
`cutover proxy` processes, wrk sending requests through each proxy the whole time. The script
writes BENCH_CHANGES (1000) route tables to etcd, one every BENCH_CHANGE_MS (20) ms, as the
elected controller does (`fleet/routes/web`, the canary weight going round 0, 25, 50, 75, 100 %),
and reads from each proxy's log when it applied each one (the log's microsecond timestamps;
same host, same clock). Apply latency is from the moment the write was sent (so it includes
etcd's consensus round) to the proxy's swap. The anchor, measured in the same run: a bare watch
of the same key through etcd's JSON gateway in this script, from the same moment to the event's
arrival. A proxy may coalesce changes that arrive in one watch message (it applies the newest):
those are counted, not timed. Failed requests: wrk's non-2xx responses and socket errors.

Part 2, many apps: a controller (`cutover serve`) configured with BENCH_APPS (10000) apps on a
fresh prefix: the time from its start until its admin API answers for every app (elected, every
app's state read and its controller started, every app's first table written), its memory then,
and its CPU while it sits with nothing to do for BENCH_IDLE_S (10) s: CPU time per tick per app
is what one reconcile of one app costs (the controller reads the tables from one watch, not one
etcd request per app per tick).

Layout (2 cores): the proxies and the controller pinned to CPU 0 (`taskset -c 0`, one tokio
worker each); etcd, the example apps, wrk and this script on CPU 1. Three proxies share one
core here, so their latencies include waiting for each other. Loopback only; every loop is
bounded in count and time. Progress goes to stderr; stdout is a summary and, last, one JSON line.
"""
import base64
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_helpers import free_port, parse_wrk  # noqa: E402

TOKEN = "bench-fleet-admin-token-0123456789"
CHANGES = int(os.environ.get("BENCH_CHANGES", "1000"))
CHANGE_MS = int(os.environ.get("BENCH_CHANGE_MS", "20"))
APPS = int(os.environ.get("BENCH_APPS", "10000"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
OTHER_CPU = os.environ.get("BENCH_OTHER_CPU", "1")

PROCS = []


def log(*args):
    print("[bench fleet]", *args, file=sys.stderr, flush=True)


def spawn(args, cpu=None, env=None, stdout=None, stderr=None):
    if cpu is not None:
        args = ["taskset", "-c", cpu] + args
    p = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=stdout or subprocess.DEVNULL,
                         stderr=stderr or subprocess.DEVNULL, start_new_session=True)
    PROCS.append(p)
    return p


def cleanup():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def b64(text):
    return base64.b64encode(text.encode()).decode()


def post(url, body, timeout=5):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def get(url, timeout=2, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting until {what}")


def start_etcd(tmp):
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    members = [(f"m{i}", free_port(), free_port()) for i in range(3)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, _, p in members)
    for name, client, peer in members:
        spawn([binary, "--name", name, "--data-dir", os.path.join(tmp, name),
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", initial, "--initial-cluster-token", f"bench-{os.getpid()}",
               "--initial-cluster-state", "new", "--heartbeat-interval", "50",
               "--election-timeout", "500", "--log-level", "warn"], cpu=OTHER_CPU)
    endpoints = [f"http://127.0.0.1:{c}" for _, c, _ in members]
    for e in endpoints:
        wait(f"etcd {e} is healthy", lambda e=e: b'"health":"true"' in get(f"{e}/health")[1], 30)
    return endpoints


def config(tmp, endpoints, prefix, apps, hosts):
    lines = ["[server]", f'state_dir = "{tmp}/state-{prefix.strip("/")}"', "", "[admin]",
             'listen = "127.0.0.1:0"', "", "[store]", 'kind = "etcd"',
             "endpoints = [" + ", ".join(f'"{e}"' for e in endpoints) + "]", f'prefix = "{prefix}"']
    for name in apps:
        lines += ["", "[[app]]", f'name = "{name}"', 'platform = "static"', 'listen = "127.0.0.1:0"',
                  "", "[app.proxy.sticky]", 'user_key_header = "X-User-ID"', "", "[app.hosts]",
                  f'blue = ["{hosts[0]}"]', f'green = ["{hosts[1]}"]', "", "[app.release]", 'command = "true"']
    path = os.path.join(tmp, f"cutover-{prefix.strip('/')}.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def ready_line(path, timeout=60):
    found = {}

    def check():
        with open(path) as f:
            for line in f:
                if '"ready"' in line:
                    found.update(json.loads(line))
                    return True
        return False
    wait(f"{path} says ready", check, timeout)
    return found


def table(n, backends):
    weight = [0, 2500, 5000, 7500, 10000][n % 5]
    return {"live": "blue", "canary_weight_bp": weight,
            "blue": {"version": "v1", "backends": [backends[0]]},
            "green": {"version": "v2", "backends": [backends[1]]}}


APPLIED = re.compile(r'^(\S+)\s+INFO cutover_server::fleet: routing by a new table app="web" generation=(\d+)')


def applied_times(log_path):
    times = {}
    with open(log_path) as f:
        for line in f:
            m = APPLIED.match(line)
            if m:
                ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                times[int(m.group(2))] = ts
    return times


def quantiles(values):
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2)}


def watch_anchor(endpoint, key, arrivals, stop):
    """A bare watch of `key`: arrival time of each generation's event."""
    body = json.dumps({"create_request": {"key": b64(key)}}).encode()
    req = urllib.request.Request(f"{endpoint}/v3/watch", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            now = time.time()
            if stop.is_set():
                return
            for ev in json.loads(line).get("result", {}).get("events", []) or []:
                value = json.loads(base64.b64decode(ev["kv"]["value"]))
                arrivals[value["generation"]] = now


def route_changes(tmp, binary, endpoints):
    ports = [free_port(), free_port()]
    backends = [f"127.0.0.1:{p}" for p in ports]
    for port, version in zip(ports, ["v1", "v2"]):
        spawn([binary, "example-app", "--port", str(port), "--version-label", version], cpu=OTHER_CPU,
              env={"TOKIO_WORKER_THREADS": "1"})
        wait(f"example app {version}", lambda p=port: get(f"http://127.0.0.1:{p}/health/ready")[0] == 200, 30)
    prefix = "/bench-routes/"
    key = f"{prefix}fleet/routes/web"
    post(f"{endpoints[0]}/v3/kv/put", {"key": b64(key), "value": b64(json.dumps({"generation": 0, "table": table(0, backends)}))})
    cfg = config(tmp, endpoints, prefix, ["web"], backends)
    proxies = []
    for i in range(3):
        out, err = os.path.join(tmp, f"proxy{i}.out"), os.path.join(tmp, f"proxy{i}.log")
        spawn([binary, "proxy", "--config", cfg, "--id", f"p{i}"], cpu=PROXY_CPU,
              env={"CUTOVER_ADMIN_TOKEN": TOKEN, "TOKIO_WORKER_THREADS": "1", "NO_COLOR": "1"},
              stdout=open(out, "w"), stderr=open(err, "w"))
        ready = ready_line(out)
        proxies.append({"log": err, "admin": f"http://{ready['bound']['admin']}",
                        "public": f"http://{ready['bound']['apps']['web']['listen']}"})
    duration = CHANGES * CHANGE_MS / 1000 + 8
    wrks = []
    for i, p in enumerate(proxies):
        out = os.path.join(tmp, f"wrk{i}.out")
        wrks.append((spawn(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{int(duration)}s", "--latency",
                            "-H", f"X-User-ID: user-{i}", p["public"] + "/"],
                           cpu=OTHER_CPU, stdout=open(out, "w")), out))
    arrivals, stop = {}, threading.Event()
    threading.Thread(target=watch_anchor, args=(endpoints[1], key, arrivals, stop), daemon=True).start()
    time.sleep(2)
    log(f"{CHANGES} route changes, one every {CHANGE_MS} ms, under load through 3 proxies")
    sent = {}
    start = time.monotonic()
    for n in range(1, CHANGES + 1):
        value = json.dumps({"generation": n, "table": table(n, backends)})
        sent[n] = time.time()
        post(f"{endpoints[n % 3]}/v3/kv/put", {"key": b64(key), "value": b64(value)})
        next_at = start + n * CHANGE_MS / 1000
        time.sleep(max(0.0, next_at - time.monotonic()))
    for p in proxies:
        wait("every proxy routes by the last table",
             lambda p=p: json.loads(get(p["admin"] + "/healthz")[1]).get("generations", {}).get("web") == CHANGES, 30)
    stop.set()
    failures, requests = 0, 0
    for proc, out in wrks:
        proc.wait(timeout=duration + 30)
        with open(out) as f:
            w = parse_wrk(f.read())
        requests += w.get("requests") or 0
        failures += (w.get("non_2xx") or 0) + sum((w.get("socket_errors") or {}).values())
    per_proxy = []
    all_latencies = []
    for p in proxies:
        times = applied_times(p["log"])
        lat = [times[n] - sent[n] for n in range(1, CHANGES + 1) if n in times]
        all_latencies += lat
        per_proxy.append({**quantiles(lat), "coalesced": CHANGES - len(lat)})
    anchor = quantiles([arrivals[n] - sent[n] for n in range(1, CHANGES + 1) if n in arrivals])
    return {"changes": CHANGES, "every_ms": CHANGE_MS, "proxies": per_proxy, "all": quantiles(all_latencies),
            "anchor_bare_watch": anchor, "requests": requests, "failed_requests": failures}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def many_apps(tmp, binary, endpoints):
    names = [f"app{i:05}" for i in range(APPS)]
    cfg = config(tmp, endpoints, "/bench-apps/", names, ["127.0.0.1:9", "127.0.0.1:10"])
    out, err = os.path.join(tmp, "serve.out"), os.path.join(tmp, "serve.log")
    log(f"a controller of {APPS} apps")
    began = time.monotonic()
    serve = spawn(["taskset", "-c", PROXY_CPU, binary, "serve", "--config", cfg],
                  env={"CUTOVER_ADMIN_TOKEN": TOKEN, "TOKIO_WORKER_THREADS": "1", "NO_COLOR": "1"},
                  stdout=open(out, "w"), stderr=open(err, "w"))
    admin = f"http://{ready_line(out, 300)['bound']['admin']}"
    wait("the controller answers for every app",
         lambda: len(json.loads(get(admin + "/v1/apps", 10)[1])) == APPS, 600)
    resumed = time.monotonic() - began
    prefix = b64("/bench-apps/fleet/routes/")
    end = b64("/bench-apps/fleet/routes0")

    def tables():
        return int(post(f"{endpoints[0]}/v3/kv/range", {"key": prefix, "range_end": end, "count_only": True}).get("count", 0))
    wait("every app's first table is written", lambda: tables() == APPS, 600)
    settled = time.monotonic() - began
    time.sleep(2)
    before = cpu_seconds(serve.pid)
    time.sleep(IDLE_S)
    used = cpu_seconds(serve.pid) - before
    ticks = IDLE_S / 0.25
    return {"apps": APPS, "resume_s": round(resumed, 1), "first_tables_s": round(settled, 1),
            "rss_mib": round(rss_mib(serve.pid), 1), "idle_cpu_percent": round(used / IDLE_S * 100, 1),
            "cpu_us_per_app_per_tick": round(used / ticks / APPS * 1e6, 2)}


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/cutover"
    for tool in ["wrk", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install wrk util-linux")
    tmp = tempfile.mkdtemp(prefix="cutover-bench-fleet-")
    try:
        endpoints = start_etcd(tmp)
        routes = route_changes(tmp, binary, endpoints)
        apps = many_apps(tmp, binary, endpoints) if APPS > 0 else None
    finally:
        cleanup()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"route changes: {routes['changes']} (one every {routes['every_ms']} ms), "
          f"{routes['requests']} requests through 3 proxies, {routes['failed_requests']} failed")
    for i, p in enumerate(routes["proxies"]):
        print(f"  proxy {i}: apply median {p.get('median_ms')} ms, p99 {p.get('p99_ms')} ms, "
              f"max {p.get('max_ms')} ms ({p['coalesced']} coalesced)")
    a, b = routes["all"], routes["anchor_bare_watch"]
    ratio = lambda k: round(a[k] / b[k], 2) if b.get(k) else None  # noqa: E731
    print(f"  all proxies: median {a.get('median_ms')} ms, p99 {a.get('p99_ms')} ms; "
          f"bare watch (anchor): median {b.get('median_ms')} ms, p99 {b.get('p99_ms')} ms; "
          f"ratio median {ratio('median_ms')}, p99 {ratio('p99_ms')}")
    if apps:
        print(f"{apps['apps']} apps: controller answers for all after {apps['resume_s']} s, first tables "
              f"written after {apps['first_tables_s']} s, RSS {apps['rss_mib']} MiB, idle CPU "
              f"{apps['idle_cpu_percent']} % ({apps['cpu_us_per_app_per_tick']} µs per app per tick)")
    print(json.dumps({"routes": routes, "apps": apps, "ratio_median": ratio("median_ms"),
                      "ratio_p99": ratio("p99_ms")}))
    return 1 if routes["failed_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
