"""Load the proxy and an nginx baseline on this machine with wrk, and print the ratios.

Three targets, one upstream (nginx answering a fixed 200):
  upstream     wrk → nginx upstream                        (the ceiling)
  nginx-proxy  wrk → nginx proxy_pass → upstream            (what a plain reverse proxy costs)
  threescale   wrk → threescale-proxy (cached key) → upstream
Run: `python -m bench.run [--seconds 10] [--connections 50] [--redis redis://127.0.0.1:6379/0]`.
Needs wrk and nginx (apt-get install wrk nginx-light); load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.demo import DEMO_KEY, DEMO_SERVICE_ID, DEMO_TOKEN, demo_emulator_config

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 '{{"ok":true}}'; }} }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float


def wrk(url: str, seconds: int, connections: int, header: str | None = None) -> Result:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"{url}: {non_2xx.group(1)} non-2xx responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return Result(url, rps, pct("50"), pct("99"))


def wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--redis", default="memory://", help="redis_url for the proxy (default memory://)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y wrk nginx-light")

    work = Path(tempfile.mkdtemp(prefix="tsp-bench-"))
    up_port, nginx_port, proxy_port, metrics_port, emu_port = (free_port() for _ in range(5))
    (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, upstream=up_port, proxy=nginx_port))
    emu_cfg = demo_emulator_config()
    emu_cfg["services"][0]["plans"]["demo"] = {"limits": {"hits": {"minute": 10**9}}}
    (work / "emulator.yaml").write_text(yaml.safe_dump(emu_cfg))
    (work / "proxy.yaml").write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{proxy_port}",
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "redis_url": args.redis,
                "threescale": {"backend_url": f"http://127.0.0.1:{emu_port}"},
                "log": {"access_log": False, "level": "warning"},
                "services": [{"id": DEMO_SERVICE_ID, "token": DEMO_TOKEN, "upstream": f"http://127.0.0.1:{up_port}"}],
            }
        )
    )
    procs = [
        subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]),
        subprocess.Popen(
            [sys.executable, "-m", "proxy.emulator", "--config", str(work / "emulator.yaml"), "--port", str(emu_port)],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(work / "proxy.yaml")],
            stdout=subprocess.DEVNULL,
            env={**os.environ},
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/")
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        key = f"x-api-key: {DEMO_KEY}"
        req = urllib.request.Request(f"http://127.0.0.1:{proxy_port}/warm", headers={"x-api-key": DEMO_KEY})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        results = [
            wrk(f"http://127.0.0.1:{up_port}/", args.seconds, args.connections),
            wrk(f"http://127.0.0.1:{nginx_port}/", args.seconds, args.connections),
            wrk(f"http://127.0.0.1:{proxy_port}/", args.seconds, args.connections, key),
        ]
        names = ["upstream", "nginx-proxy", "threescale"]
        print(f"wrk -t1 -c{args.connections} -d{args.seconds}s on {os.cpu_count()} cores, redis_url={args.redis}")
        print(f"{'target':<12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for name, r in zip(names, results, strict=True):
            print(f"{name:<12} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}")
        up, ng, ts = results
        print(f"threescale / nginx-proxy throughput: {ts.rps / ng.rps:.2f}")
        print(f"threescale / upstream throughput:    {ts.rps / up.rps:.2f}")
        print(f"added p50 vs nginx-proxy: {ts.p50_ms - ng.p50_ms:+.2f} ms")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        calls = re.findall(
            r'threescale_proxy_backend_requests_total\{endpoint="authorize",status="200"\} ([\d.]+)', metrics
        )
        print(f"3scale authorize calls during the run: {calls[0] if calls else 0}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
