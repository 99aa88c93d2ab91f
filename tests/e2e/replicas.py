"""Proxy replicas as real `python -m proxy serve` processes, for the end-to-end reporting tests.

Reporting is about what survives a process: its final flush on SIGTERM, what a SIGKILL loses, which replica
reports a shared buffer. Only separate processes show that, so each replica here is one `serve` with its own
YAML file, ports and log files (kept under tmp_path: when a test fails, pytest prints their tails, which the
`ReplicaSet` teardown writes to the captured output).
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.workers import container_cpus
from tests import support
from tests.support import SERVICE_ID, TOKEN, free_port

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]

ORDERS_RULES: list[dict[str, Any]] = [
    {"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1},
    {"method": "GET", "pattern": "/v1/orders/{id}$", "metric": "orders", "delta": 1},
]
"""The mapping rules every test uses; `expected_usage` is their client-side twin."""


def expected_usage(method: str, path: str) -> dict[str, int]:
    """What ORDERS_RULES count for one request (paths in these tests carry no query)."""
    usage = {"hits": 1}
    parts = path.split("/")
    if method == "GET" and len(parts) == 4 and parts[1:3] == ["v1", "orders"] and parts[3]:
        usage["orders"] = 1
    return usage


def proxy_config(backend_url: str, upstream_url: str, redis_url: str, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """A serve config with the short intervals the tests need; `sections` update one top-level key each
    (`report={"interval": 5}` keeps the other report keys)."""
    config: dict[str, Any] = {
        "redis_url": redis_url,
        "threescale": {"backend_url": backend_url, "timeout": 1},
        "cache": {"ttl": 300, "local_ttl": 2, "negative_ttl": 30, "mode": "resilient"},
        "report": {
            "interval": 0.5,
            "flush_to_redis_ms": 100,
            "max_batch": 250,
            "lease": 3,  # must exceed threescale.timeout + 1 s
            "max_pending_memory": 100_000,
            "backoff_max": 1,
        },
        "shutdown": {"drain_delay": 0.5, "timeout": 10},
        "log": {"access_log": False},
        "services": [
            {
                "id": SERVICE_ID,
                "token": TOKEN,
                "upstream": upstream_url,
                "upstream_timeout": 5,
                "mapping_rules": copy.deepcopy(ORDERS_RULES),
            }
        ],
    }
    for key, value in sections.items():
        if isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@dataclass
class Replica:
    """One `python -m proxy serve` process with its config file, ports and captured output."""

    name: str
    workdir: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Write the config and start the process (not waiting for readiness: see `wait_ready`)."""
        config = {
            **self.config,
            "listen": f"127.0.0.1:{self.port}",
            "metrics_listen": f"127.0.0.1:{self.metrics_port}",
        }
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # PROXY_* from the outer environment would override the file and make the run depend on the shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        env["PYTHONUNBUFFERED"] = "1"
        out: IO[bytes]
        err: IO[bytes]
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "proxy", "serve", "--config", str(path)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.exit_code = None

    @property
    def workers(self) -> int:
        """The worker processes `serve` runs for this config (`workers`, else one per CPU on Redis)."""
        if self.config.get("workers") is not None:
            return int(self.config["workers"])
        return 1 if str(self.config.get("redis_url", "")).startswith("memory:") else container_cpus()

    def all_workers_ready(self) -> bool:
        """With a supervisor, /readyz answers for whichever worker takes the connection, so one ready worker
        is enough for a 200; the supervisor logs "workers ready" once every worker serves."""
        if self.workers == 1:
            return True
        text = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return '"msg":"workers ready"' in text

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /readyz until 200 and every worker serves (a worker that starts later would run its first
        report round in the middle of a test); fail with the process's output if it exits or never does."""
        try:
            await support.wait_ready(self.admin_url, timeout, alive=lambda: self.running, what=self.name)
            await support.eventually(self.all_workers_ready, timeout, what=f"every worker of {self.name} ready")
        except AssertionError as exc:
            code = self.proc and self.proc.poll()
            raise AssertionError(f"{exc} (exit code {code})\n{self.tail()}") from None

    def sigterm(self) -> float:
        """Send SIGTERM; returns the monotonic time it was sent (the start of the drain)."""
        assert self.proc is not None, f"{self.name} was never started"
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return sent

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, or AssertionError (and SIGKILL) if the process outlives `timeout`."""
        assert self.proc is not None, f"{self.name} was never started"
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.tail()}") from None
        self.exit_code = code
        return code

    async def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM and wait (default: shutdown.timeout plus 5 s for the interpreter); the exit code."""
        if timeout is None:
            timeout = float(self.config.get("shutdown", {}).get("timeout", 25)) + 5
        self.sigterm()
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush; what the process held only in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self.exit_code = self.proc.returncode

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"{self.admin_url}/metrics") as resp:
                assert resp.status == 200, f"{self.name} /metrics answered {resp.status}"
                return await resp.text()

    def tail(self, lines: int = 40) -> str:
        """The last lines of stdout and stderr, for failure messages."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


class ReplicaSet:
    """Starts replicas and, in `cleanup` (a fixture's teardown), kills whatever is still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.replicas: list[Replica] = []

    async def start(self, config: dict[str, Any], count: int = 1, prefix: str = "replica") -> list[Replica]:
        """Start `count` replicas of one config at once (they boot in parallel) and wait until all are ready."""
        started = []
        for _ in range(count):
            replica = Replica(f"{prefix}-{len(self.replicas)}", self.workdir, copy.deepcopy(config))
            self.replicas.append(replica)
            replica.start()
            started.append(replica)
        await asyncio.gather(*(r.wait_ready() for r in started))
        return started

    async def terminate_all(self, replicas: Iterable[Replica] | None = None) -> dict[str, int]:
        """SIGTERM every running replica at once; their exit codes by name."""
        chosen = [r for r in (self.replicas if replicas is None else replicas) if r.running]
        codes = await asyncio.gather(*(r.terminate() for r in chosen))
        return {r.name: code for r, code in zip(chosen, codes, strict=True)}

    def cleanup(self) -> None:
        for replica in self.replicas:
            if replica.running:
                replica.kill()
            print(f"=== {replica.name} exit={replica.exit_code}\n{replica.tail(25)}")


# ------------------------------------------------------------------------------------------------ accounting


class Ledger:
    """What the clients were served: usage per (app, metric), counted from the 200 answers only."""

    def __init__(self) -> None:
        self.usage: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        """Connection errors and timeouts (requests that got no status at all)."""

    def record(self, app: str, method: str, path: str, status: int) -> None:
        self.statuses[status] += 1
        if status == 200:
            for metric, delta in expected_usage(method, path).items():
                self.usage[app, metric] += delta

    @property
    def ok(self) -> int:
        return self.statuses[200]


def reported_usage(reported: Iterable[Mapping[str, Any]], service_id: str = SERVICE_ID) -> Counter[tuple[str, str]]:
    """Raw usage per (app, metric) in the emulator's accepted transactions (report and authrep alike):
    what the proxies sent, before 3scale adds children to their parents."""
    totals: Counter[tuple[str, str]] = Counter()
    for tx in reported:
        if tx["service_id"] != service_id:
            continue
        for metric, value in tx["usage"].items():
            assert isinstance(value, int), f"a set (#N) value reached 3scale: {tx}"
            totals[tx["app"], metric] += value
    return totals


def metric_samples(text: str, sample_name: str) -> list[tuple[dict[str, str], float]]:
    """Labels and value of every sample called `sample_name` (e.g. threescale_proxy_reports_total)."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    ]
