"""The servers a benchmark runs: their configuration files, and the processes, each pinned with taskset.

- `upstream`: nginx answering `/` with a fixed 200 JSON, `/big` with a 1 MiB file, and a POST to `/upload`
  with a small 200 after reading the whole body (`proxy_pass` with request buffering reads all of it before
  it asks its own `sink` server, which gets no body: `proxy_pass_request_body off`). POSTs with `?verify=X`
  are logged with `$request_length`, so a check can prove a body went all the way through a proxy.
- `nginx`: nginx as a reverse proxy, 1 worker, keep-alive pool to the upstream (`keepalive 512`,
  `proxy_http_version 1.1`, `Connection ""`), no access log. Buffers sized so a 1 MiB body stays in memory
  both ways (`proxy_buffers 32 32k`, `proxy_max_temp_file_size 0`, `client_body_buffer_size 2m`): its
  fastest setting for the 1 MiB cases on this machine (streaming with the default 4k/8k buffers did 55-70 %
  of it; streaming with 256k buffers about the same), so the baseline is nginx at its best.
- `haproxy`: 1 thread, http mode, keep-alive to the upstream (`http-reuse always`), no log.
- `threescale`: `python -m proxy serve --config` with a generated YAML; the 3scale backend is the project's
  emulator (`python -m proxy.emulator`) in its own process.

`Children` starts every process in a session of its own and kills them all (SIGTERM to the leader, then
SIGKILL to the whole group) when the benchmark ends, by error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.wrk import clean_env

REPO = Path(__file__).resolve().parent.parent
SERVICE_ID = "2555417777820"
TOKEN = "bench-service-token"
KEY = "bench-key-5f3c9a1e7b2d4c68aa"  # the cached key every target gets as x-api-key
MISS_PREFIX = "bench-miss-"  # + 8 digits: the distinct keys of the miss case
BIG_BYTES = 1024 * 1024
SMALL_BODY = '{"ok":true}\n'
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """Absolute path of a system tool (nginx and haproxy live in /usr/sbin, outside a user's PATH)."""
    found = shutil.which(name, path=SBIN_PATH)
    if found is None:
        raise SystemExit(f"{name} is not installed: run scripts/bench-deps.sh (or `make bench`)")
    return found


class StartError(RuntimeError):
    """A server did not come up; the message holds the reason (the tail of its log)."""


# ------------------------------------------------------------------------------------------ processes


class Children:
    """Every process the benchmark starts; `close` ends them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        argv: Sequence[str],
        *,
        cpus: str | None,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        cmd = (["taskset", "-c", cpus] if cpus else []) + list(argv)  # taskset execs: the pid is the server's
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else clean_env(),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def register(self, proc: subprocess.Popen[Any]) -> None:
        self.procs.append(proc)

    def stop(self, proc: subprocess.Popen[Any], *, timeout: float = 10.0, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL at once with `kill`) to the leader, then SIGKILL to what is left of its group."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=5)


# ------------------------------------------------------------------------------------------------ HTTP


def http_request(
    port: int, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:port (http.client: no environment proxy settings apply)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(
    port: int,
    path: str,
    proc: subprocess.Popen[Any],
    log: Path,
    *,
    headers: Mapping[str, str] | None = None,
    want: Sequence[int] = (200,),
    timeout: float = 30.0,
) -> None:
    """Until GET path answers one of `want`; StartError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}: {log_tail(log)}")
        try:
            status, body = http_request(port, "GET", path, headers)
            if status in want:
                return
            last = f"HTTP {status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StartError(f"GET {path} on :{port}: no expected answer within {timeout:g} s ({last}): {log_tail(log)}")


def log_tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# -------------------------------------------------------------------------------------------- configs


def _nginx_head(prefix: Path, workers: int) -> str:
    """What every nginx of the bench starts with: one process tree in the foreground, its files under `prefix`,
    no access log; the caller goes on inside `http {`."""
    return f"""worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;"""


def nginx_upstream_conf(prefix: Path, port: int, sink_port: int, workers: int = 1) -> str:
    return f"""
{_nginx_head(prefix, workers)}
  log_format upload '$arg_verify $request_length $status';
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 120s;
  upstream sink {{ server 127.0.0.1:{sink_port}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location = /big {{ root {prefix}/www; default_type application/octet-stream; }}
    location = /upload {{
      client_max_body_size 2m;
      client_body_buffer_size 2m;
      proxy_request_buffering on;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_pass http://sink/;
      access_log {prefix}/upload.log upload if=$arg_verify;
    }}
    location / {{ return 200 '{SMALL_BODY.strip()}\\n'; }}
  }}
  server {{
    listen 127.0.0.1:{sink_port};
    default_type application/json;
    location / {{ return 200 '{SMALL_BODY.strip()}\\n'; }}
  }}
}}
"""


def nginx_proxy_conf(prefix: Path, port: int, backend_port: int) -> str:
    return f"""
{_nginx_head(prefix, 1)}
  tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 120s;
  upstream app {{
    server 127.0.0.1:{backend_port};
    keepalive 512; keepalive_requests 10000000; keepalive_timeout 120s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 2m;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffers 32 32k;
      proxy_buffer_size 32k;
      proxy_max_temp_file_size 0;
      client_body_buffer_size 2m;
    }}
  }}
}}
"""


def haproxy_conf(port: int, backend_port: int) -> str:
    return f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server up 127.0.0.1:{backend_port}
"""


def emulator_config(miss_keys: int) -> dict[str, Any]:
    """One service; the cached key and `miss_keys` more (the miss case's), on a plan nobody reaches."""
    apps = [{"user_key": KEY, "plan": "bench"}]
    apps += [{"user_key": f"{MISS_PREFIX}{i:08d}", "plan": "bench"} for i in range(1, miss_keys + 1)]
    return {
        "services": [
            {
                "id": SERVICE_ID,
                "token": TOKEN,
                "backend_version": 1,
                "metrics": {"hits": {}},
                "plans": {"bench": {"limits": {"hits": {"minute": 10**12}}}},
                "applications": apps,
            }
        ]
    }


def proxy_config(
    *, port: int, metrics_port: int, redis_url: str, backend_url: str, upstream_port: int
) -> dict[str, Any]:
    """The proxy's YAML: one service before the upstream, no access log (nginx and haproxy keep none),
    and a stop without drain delay (nothing balances load here)."""
    return {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "redis_url": redis_url,
        "threescale": {"backend_url": backend_url},
        "log": {"level": "warning", "access_log": False},
        "shutdown": {"drain_delay": 0, "timeout": 5},
        "services": [
            {
                "id": SERVICE_ID,
                "token": TOKEN,
                "upstream": f"http://127.0.0.1:{upstream_port}",
                "credentials": {"location": "header", "user_key": "x-api-key"},
                "mapping_rules": [{"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1}],
            }
        ],
    }


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """`upstream.transport=h1` → cfg["upstream"]["transport"] = "h1"; digits index lists (`services.0.x`)."""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif last:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]


def parse_assignment(text: str) -> tuple[str | None, str, Any]:
    """`[TARGET:]KEY=VALUE` (VALUE read as YAML: `false`, `2`, `h1`) → (target or None, key, value)."""
    left, sep, raw = text.partition("=")
    if not sep or not left:
        raise ValueError(f"expected [TARGET:]KEY=VALUE, got {text!r}")
    target, colon, key = left.rpartition(":")
    return (target if colon else None), key.strip(), yaml.safe_load(raw)


# --------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    cpus: str | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_nginx_upstream(children: Children, work: Path, name: str, cpus: str | None, workers: int = 1) -> Server:
    prefix = work / name
    (prefix / "www").mkdir(parents=True)
    (prefix / "www" / "big").write_bytes(os.urandom(BIG_BYTES))
    port, sink = free_port(), free_port()
    (prefix / "nginx.conf").write_text(nginx_upstream_conf(prefix, port, sink, workers))
    log = prefix / "nginx.log"
    argv = [tool("nginx"), "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    proc = children.start(argv, cpus=cpus, log=log)
    wait_http(port, "/", proc, log)
    return Server(name, port, proc, log, cpus, {"upload_log": str(prefix / "upload.log")})


def start_nginx_proxy(children: Children, work: Path, backend_port: int, cpus: str | None) -> Server:
    prefix = work / "nginx"
    prefix.mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_proxy_conf(prefix, port, backend_port))
    log = prefix / "nginx.log"
    argv = [tool("nginx"), "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    proc = children.start(argv, cpus=cpus, log=log)
    wait_http(port, "/", proc, log)
    return Server("nginx", port, proc, log, cpus)


def start_haproxy(children: Children, work: Path, backend_port: int, cpus: str | None) -> Server:
    prefix = work / "haproxy"
    prefix.mkdir()
    port = free_port()
    (prefix / "haproxy.cfg").write_text(haproxy_conf(port, backend_port))
    log = prefix / "haproxy.log"
    proc = children.start([tool("haproxy"), "-db", "-f", str(prefix / "haproxy.cfg")], cpus=cpus, log=log)
    wait_http(port, "/", proc, log)
    return Server("haproxy", port, proc, log, cpus)


def start_emulator(children: Children, work: Path, miss_keys: int, cpus: str | None) -> Server:
    path = work / "emulator.yaml"
    path.write_text(yaml.safe_dump(emulator_config(miss_keys)))
    port = free_port()
    log = work / "emulator.log"
    argv = [sys.executable, "-m", "proxy.emulator", "--config", str(path), "--port", str(port)]
    proc = children.start(argv, cpus=cpus, log=log, cwd=REPO)
    wait_http(port, "/", proc, log, want=range(100, 600))  # any answer: it is listening
    return Server("emulator", port, proc, log, cpus)


def start_redis(children: Children, work: Path, cpus: str | None) -> tuple[Server, str]:
    port = free_port()
    log = work / "redis.log"
    argv = [tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = children.start([*argv, "--dir", str(work)], cpus=cpus, log=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StartError(f"redis-server did not start: {log_tail(log)}")
        time.sleep(0.05)
    return Server("redis", port, proc, log, cpus), f"redis://127.0.0.1:{port}/0"


def proxy_env(src: Path) -> dict[str, str]:
    env = clean_env()
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_proxy_source(src: Path) -> str:
    """The directory `import proxy` resolves to when run from `src` (must be src/proxy)."""
    out = subprocess.run(
        [sys.executable, "-c", "import os, proxy; print(os.path.dirname(os.path.abspath(proxy.__file__)))"],
        cwd=src,
        env=proxy_env(src),
        capture_output=True,
        text=True,
        check=False,
    )
    found = out.stdout.strip()
    if out.returncode != 0 or Path(found) != (src / "proxy").resolve():
        raise SystemExit(f"--proxy-src {src}: `import proxy` resolves to {found or out.stderr.strip()!r}")
    return found


def start_threescale(
    children: Children,
    work: Path,
    name: str,
    *,
    src: Path,
    cfg: dict[str, Any],
    cpus: str | None,
    warm: bool = True,
) -> Server:
    """`python -m proxy serve` from checkout `src`, ready (GET /readyz 200) and, with `warm`, with the
    cached key authorized (GET / with it answers 200)."""
    prefix = work / name.replace("/", "_")
    prefix.mkdir(exist_ok=True)
    path = prefix / f"proxy-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = int(cfg["listen"].rsplit(":", 1)[1])
    metrics_port = int(cfg["metrics_listen"].rsplit(":", 1)[1])
    log = path.with_suffix(".log")
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(path)]
    proc = children.start(argv, cpus=cpus, log=log, cwd=src, env=proxy_env(src))
    try:
        wait_http(metrics_port, "/readyz", proc, log)
        if warm:
            wait_http(port, "/", proc, log, headers={"x-api-key": KEY}, timeout=10)
    except StartError:
        children.stop(proc, kill=True)
        raise
    return Server(name, port, proc, log, cpus, {"metrics_port": metrics_port, "config": str(path)})


@contextlib.contextmanager
def stopped_after(children: Children, server: Server, *, kill: bool = False) -> Iterator[Server]:
    try:
        yield server
    finally:
        children.stop(server.proc, kill=kill)
