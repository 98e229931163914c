#!/usr/bin/env python3
"""Memory of the proxy under route-table churn: puts a table with N backends in the green slot
(weight 0, so no traffic), then a table without them, ROUNDS times, and prints the server's RSS
after each put and each removal. Backends that leave the table must be freed: RSS must not grow
round after round.

    bench/backend_churn.py [BINARY] [N=1024] [ROUNDS=10]

BINARY defaults to target/release/cutover. Loopback only; the backends' addresses
(127.3-202.x.y:9) never answer, so their health checks fail fast.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

CONFIG = """
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"

[app.proxy]
drain_timeout_ms = 200

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = { version = "v1", backends = ["127.0.0.1:9"] }
green = { version = "v2", backends = ["127.0.0.1:10"] }
"""


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target/release/cutover")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    token = "backend-churn-token-0123456789"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "cutover.toml"), "w") as f:
            f.write(CONFIG)
        server = subprocess.Popen(
            [binary, "serve", "--config", os.path.join(d, "cutover.toml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "CUTOVER_ADMIN_TOKEN": token},
        )
        try:
            ready = json.loads(server.stdout.readline())
            admin = "http://" + ready["bound"]["admin"]

            def rss_mib():
                with open(f"/proc/{server.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS"):
                            return int(line.split()[1]) / 1024
                return float("nan")

            def put(count, generation):
                backends = [f"127.{3 + generation % 200}.{i // 250}.{i % 250}:9" for i in range(count)]
                body = {
                    "live": "blue",
                    "canary_weight_bp": 0,
                    "blue": {"version": "v1", "backends": ["127.0.0.1:9"]},
                    "green": {"version": f"v{generation + 2}", "backends": backends or ["127.0.0.1:10"]},
                }
                request = urllib.request.Request(
                    admin + "/v1/apps/web/routes",
                    data=json.dumps(body).encode(),
                    method="PUT",
                    headers={"Authorization": "Bearer " + token, "content-type": "application/json"},
                )
                try:
                    return urllib.request.urlopen(request).status
                except urllib.error.HTTPError as e:
                    return e.code

            start = rss_mib()
            rows = []
            for generation in range(rounds):
                status = put(n, generation)
                time.sleep(0.5)  # health-check tasks start
                with_backends = rss_mib()
                put(0, generation)
                time.sleep(1.0)  # past the 200 ms drain: the removed backends are dropped
                rows.append((generation, status, with_backends, rss_mib()))
            for generation, status, with_backends, after in rows:
                print(f"round {generation}: PUT {n} backends -> {status}, RSS {with_backends:.1f} MiB; removed -> {after:.1f} MiB")
            print(json.dumps({"bench": "backend_churn", "backends": n, "rounds": rounds,
                              "rss_start_mib": round(start, 1), "rss_end_mib": round(rows[-1][3], 1)}))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
