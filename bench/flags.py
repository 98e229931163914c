#!/usr/bin/env python3
"""The flag service over OFREP, on one core: single evaluations per second and bulk evaluations of
100 flags at several concurrencies, each next to nginx answering the same bytes from a `return`
on the same core (from a file, with sendfile: the floor of any HTTP server sending that answer), and the time from
`cutover flag kill` to the next evaluation that sees it and to a connected client's notification.

    bench/flags.py [BINARY]        # BINARY defaults to target/release/cutover (build it first)

Layout: the server under test (cutover, then nginx) alone on CPU 0 (`taskset -c 0`, cutover with
TOKIO_WORKER_THREADS=1, nginx with worker_processes 1); wrk with one thread on CPU 1. Every run is
a 2 s warm-up, then BENCH_DURATION (default 10s) measured; BENCH_RUNS (default 1) runs per
target, interleaved, reporting the median. Kill latencies: BENCH_KILLS (default 30) kills, the
median, p90 and max, with the round trip of a plain admin GET measured in the same run as the
anchor. Loopback only. Progress goes to stderr; stdout is a table and, last, one JSON line.
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_helpers import free_port, parse_wrk  # noqa: E402

TOKEN = "bench-flags-admin-token-0123456789"
API_KEY = "bench-flags-api-key-0123456789"
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_CONCURRENCIES", "32,256,1000").split(",")]
DURATION = os.environ.get("BENCH_DURATION", "10s")
RUNS = int(os.environ.get("BENCH_RUNS", "1"))
KILLS = int(os.environ.get("BENCH_KILLS", "30"))
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
CONTEXT = {"targetingKey": "user-4711", "plan": "pro", "country": "de", "app_version": "2.4.1"}


def log(*args):
    print("[bench flags]", *args, file=sys.stderr, flush=True)


def flags(n):
    """`n` flags of every type: splits, rules, allow lists, one killed."""
    out = []
    for i in range(n):
        kind = ["boolean", "string", "number", "object"][i % 4]
        variants = {
            "boolean": {"on": True, "off": False},
            "string": {"red": "red", "blue": "blue", "green": "green"},
            "number": {"low": 1, "high": 100},
            "object": {"a": {"limit": 10}, "b": {"limit": 20}},
        }[kind]
        names = list(variants)
        flag = {
            "key": f"flag-{i:03}",
            "type": kind,
            "variants": variants,
            "default_variant": names[-1] if kind == "boolean" else names[0],
            "owner": "bench",
            "description": f"benchmark flag {i}",
            "expires": "2099-12-31",
            "split": [{"variant": names[0], "weight": 1000 + 50 * i}, {"variant": names[1], "weight": 9000 - 50 * i}],
        }
        if i % 3 == 0:
            flag["rules"] = [
                {"when": [{"attribute": "plan", "op": "in", "value": ["enterprise", "team"]}], "variant": names[0]},
                {"when": [{"attribute": "app_version", "op": "semver_ge", "value": "3.0.0"}], "variant": names[1]},
            ]
        if i % 10 == 0:
            flag["allow"] = {"variant": names[0], "keys": ["tester-1", "tester-2"]}
        if i == 7:
            flag["enabled"] = False
        out.append(flag)
    return out


def admin_call(admin, method, path, body=None):
    request = urllib.request.Request(
        admin + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": "Bearer " + TOKEN, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def ofrep(addr, path, body):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, json.dumps(body), {"X-API-Key": API_KEY, "content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def wrk(url, path, body, connections, lua_dir, extra_header):
    script = os.path.join(lua_dir, "post.lua")
    with open(script, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            + (f'wrk.headers["X-API-Key"] = "{API_KEY}"\n' if extra_header else "")
        )
    base = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", "-s", script, "--latency"]
    subprocess.run(base + ["-d2s", url + path], capture_output=True, check=False)
    out = subprocess.run(base + [f"-d{DURATION}", "--timeout", "5s", url + path], capture_output=True, text=True, check=False)
    figures = parse_wrk(out.stdout)
    if figures["rps"] is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    return figures


def start_cutover(binary, d):
    keys = os.path.join(d, "flags.keys")
    with open(keys, "w") as f:
        f.write(f"bench {API_KEY}\n")
    os.chmod(keys, 0o600)
    config = os.path.join(d, "cutover.toml")
    with open(config, "w") as f:
        f.write(
            f'[admin]\nlisten = "127.0.0.1:0"\n\n[flags]\nlisten = "127.0.0.1:0"\napi_keys_file = "{keys}"\n'
        )
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, binary, "serve", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CUTOVER_ADMIN_TOKEN": TOKEN, "TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"},
    )
    ready = json.loads(server.stdout.readline())
    return server, "http://" + ready["bound"]["admin"], ready["bound"]["flags"]


def start_nginx(d, single, bulk):
    port = free_port()
    root = os.path.join(d, "nginx")
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)

    # The answers as files: a `return` cannot hold 16 KiB, and a POST to a static file is a 405
    # that `error_page` turns into the file (with sendfile), the cheapest way nginx has.
    for name, body in (("single.json", single), ("bulk.json", bulk)):
        with open(os.path.join(root, name), "wb") as f:
            f.write(body)

    with open(os.path.join(root, "nginx.conf"), "w") as f:
        f.write(
            f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
{'user root root;' if os.getuid() == 0 else ''}
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    keepalive_requests 1000000000;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /ofrep/v1/evaluate/flags/flag-001 {{ alias {root}/single.json; error_page 405 =200 $uri; }}
        location = /ofrep/v1/evaluate/flags {{ alias {root}/bulk.json; error_page 405 =200 $uri; }}
    }}
}}
"""
        )
    stderr = open(os.path.join(root, "logs", "stderr.log"), "w")
    nginx = subprocess.Popen(
        [
            "taskset", "-c", SERVER_CPU, shutil.which("nginx") or "/usr/sbin/nginx",
            "-p", root, "-c", os.path.join(root, "nginx.conf"), "-e", os.path.join(root, "logs", "error.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return nginx, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    nginx.kill()
    with open(os.path.join(root, "logs", "stderr.log")) as f:
        raise RuntimeError(f"nginx did not start: {f.read()[-2000:]}")


def stop(process):
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_latencies(admin, flags_addr):
    """`KILLS` kills of flag-001: time to the first evaluation that sees it and to the SSE event."""
    host, port = flags_addr.rsplit(":", 1)
    to_eval, to_event, api, anchor = [], [], [], []
    body = json.dumps({"context": CONTEXT})
    for trial in range(KILLS):
        admin_call(admin, "POST", "/v1/flags/flag-001/unkill", {"reason": f"bench trial {trial}"})
        # The anchor: a plain round trip to the same server, in the same conditions.
        t = time.perf_counter()
        urllib.request.urlopen(admin + "/healthz", timeout=5).read()
        anchor.append(time.perf_counter() - t)
        events = socket.create_connection((host, int(port)), timeout=10)
        events.sendall(
            f"GET /ofrep/v1/events HTTP/1.1\r\nHost: {flags_addr}\r\nX-API-Key: {API_KEY}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        buf = b""
        while b"subscribed" not in buf:
            buf += events.recv(4096)
        heard = {}

        def listen():
            data = b""
            while b"refetchEvaluation" not in data:
                chunk = events.recv(4096)
                if not chunk:
                    return
                data += chunk
            heard["at"] = time.perf_counter()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        seen = {}
        stop_polling = threading.Event()

        def poll():
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            while not stop_polling.is_set():
                conn.request("POST", "/ofrep/v1/evaluate/flags/flag-001", body, {"X-API-Key": API_KEY, "content-type": "application/json"})
                answer = conn.getresponse().read()
                if b'"DISABLED"' in answer:
                    seen["at"] = time.perf_counter()
                    return

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        admin_call(admin, "POST", "/v1/flags/flag-001/kill", {"reason": f"bench trial {trial}"})
        api.append(time.perf_counter() - t0)
        poller.join(5)
        listener.join(5)
        stop_polling.set()
        events.close()
        if "at" in seen:
            to_eval.append(seen["at"] - t0)
        if "at" in heard:
            to_event.append(heard["at"] - t0)
    return to_eval, to_event, api, anchor


def summary(values):
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "max_ms": round(ms[-1], 3),
    }


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target/release/cutover")
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: run `cargo build --release` first")
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install wrk nginx-light util-linux")
    results = {"single": {}, "bulk": {}}
    with tempfile.TemporaryDirectory() as d:
        server, admin, flags_addr = start_cutover(binary, d)
        try:
            for flag in flags(100):
                admin_call(admin, "PUT", f"/v1/flags/{flag['key']}", {"flag": flag, "reason": "bench"})
            status, single = ofrep(flags_addr, "/ofrep/v1/evaluate/flags/flag-001", {"context": CONTEXT})
            assert status == 200, single
            status, bulk = ofrep(flags_addr, "/ofrep/v1/evaluate/flags", {"context": CONTEXT})
            assert status == 200 and len(json.loads(bulk)["flags"]) == 100, bulk[:200]
            log(f"single answer {len(single)} B, bulk answer of 100 flags {len(bulk)} B")
            nginx, nginx_url = start_nginx(d, single, bulk)
            try:
                for kind, path in (("single", "/ofrep/v1/evaluate/flags/flag-001"), ("bulk", "/ofrep/v1/evaluate/flags")):
                    for c in CONCURRENCIES:
                        runs = {"cutover": [], "nginx": []}
                        for _ in range(RUNS):
                            # nginx runs while cutover idles on the same core, and the other way round.
                            runs["cutover"].append(wrk("http://" + flags_addr, path, {"context": CONTEXT}, c, d, True))
                            runs["nginx"].append(wrk(nginx_url, path, {"context": CONTEXT}, c, d, False))
                        med = {
                            name: {
                                "rps": statistics.median(r["rps"] for r in rs),
                                "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                                "non_2xx": sum(r["non_2xx"] for r in rs),
                                "socket_errors": sum(r["socket_errors_total"] for r in rs),
                            }
                            for name, rs in runs.items()
                        }
                        results[kind][c] = med
                        log(kind, c, med)
            finally:
                stop(nginx)
            log(f"{KILLS} kills")
            to_eval, to_event, api, anchor = kill_latencies(admin, flags_addr)
            results["kill"] = {
                "to_next_evaluation": summary(to_eval),
                "to_notification": summary(to_event),
                "kill_api_call": summary(api),
                "anchor_admin_round_trip": summary(anchor),
            }
        finally:
            stop(server)
    print(f"{'what':<10} {'conns':>6} {'cutover rps':>12} {'nginx rps':>10} {'ratio':>6} {'cutover p99':>12} {'nginx p99':>10}")
    for kind in ("single", "bulk"):
        for c, m in results[kind].items():
            print(
                f"{kind:<10} {c:>6} {m['cutover']['rps']:>12.0f} {m['nginx']['rps']:>10.0f} "
                f"{m['cutover']['rps'] / m['nginx']['rps']:>6.2f} {m['cutover']['p99_ms']:>10.2f}ms {m['nginx']['p99_ms']:>8.2f}ms"
            )
    k = results["kill"]
    anchor = k["anchor_admin_round_trip"].get("median_ms") or float("nan")
    for name in ("to_next_evaluation", "to_notification", "kill_api_call", "anchor_admin_round_trip"):
        s = k[name]
        print(
            f"kill {name:<26} median {s.get('median_ms', float('nan')):>7.3f} ms  p90 {s.get('p90_ms', float('nan')):>7.3f} ms  "
            f"max {s.get('max_ms', float('nan')):>7.3f} ms  ({s.get('median_ms', float('nan')) / anchor:.1f} x anchor, n={s['n']})"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
