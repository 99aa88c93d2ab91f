"""Real parts for tests: a redis-server process, an HTTP upstream, emulator config, proxy settings."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.config import settings_from_dict

SERVICE_ID = "2555417777820"
TOKEN = "svc-token-abc"
KEY = "valid-key-0123456789"
OTHER_KEY = "other-key-9876543210"


class ManualClock:
    """A wall clock tests move by hand (`clock.advance(2)`) instead of sleeping; starts at the real time."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(condition: Any, timeout: float = 10.0, what: str = "the condition") -> Any:
    """Wait for an event that has no notification of its own: poll `condition` (sync or async) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ redis


@dataclass
class RedisServer:
    """A redis-server process owned by the tests; it can be killed and brought back on the same port.

    `durable` fsyncs every write to an append-only file so a kill + start loses nothing (a partition or a
    failover with AOF); by default nothing is persisted, like the machine's own Redis.
    """

    port: int
    workdir: Path
    durable: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it, or apt-get install redis-server")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"]
        args += ["--dir", str(self.workdir), "--appendonly", "yes" if self.durable else "no"]
        if self.durable:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


# ------------------------------------------------------------------------------------------------ upstream


@dataclass
class Upstream:
    """A real HTTP upstream that records what reached it."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None


def make_upstream_app(upstream: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):  # never holds the whole body
            digest.update(chunk)
            size += len(chunk)
        record = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": dict(request.headers),
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
        upstream.received.append(record)
        if request.path.startswith("/slow"):
            try:
                await asyncio.sleep(float(request.query.get("seconds", "5")))
            except asyncio.CancelledError:
                upstream.cancelled.append(request.path)  # the proxy dropped the connection
                raise
        if request.path.startswith("/chunked"):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(int(request.query.get("parts", "3"))):
                await response.write(f"part{i};".encode())
            await response.write_eof()
            return response
        if request.path.startswith("/hop"):  # names a header of its own in Connection: hop-by-hop too
            headers = {"Connection": "keep-alive, X-Internal", "X-Internal": "secret", "X-Upstream": "yes"}
            return web.json_response(record, headers=headers)
        if request.path.startswith("/status/"):
            return web.json_response(record, status=int(request.path.rsplit("/", 1)[1]))
        if request.path.startswith("/download"):
            size_mb = int(request.query.get("mb", "1"))
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = size_mb * 1024 * 1024
            await response.prepare(request)
            block = b"x" * (1024 * 1024)
            for _ in range(size_mb):
                await response.write(block)
            await response.write_eof()
            return response
        return web.json_response(record, headers={"X-Upstream": "yes", "Connection": "keep-alive"})

    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# ------------------------------------------------------------------------------------------------ 3scale


def emulator_config(plan_limits: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    return {
        "services": [
            {
                "id": SERVICE_ID,
                "token": TOKEN,
                "backend_version": 1,
                "metrics": {"hits": {}, "orders": {"parent": "hits"}},
                "plans": {"basic": {"limits": plan_limits or {"hits": {"day": 1_000_000}}}},
                "applications": [{"user_key": KEY, "plan": "basic"}, {"user_key": OTHER_KEY, "plan": "basic"}],
            }
        ]
    }


# ------------------------------------------------------------------------------------------------ proxy


def proxy_settings(backend_url: str, upstream_url: str, redis_url: str = "memory://", **overrides: Any) -> Any:
    service: dict[str, Any] = {
        "id": SERVICE_ID,
        "token": TOKEN,
        "upstream": upstream_url,
        "upstream_timeout": 2,
        "mapping_rules": [
            {"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1},
            {"method": "GET", "pattern": "/v1/orders/{id}$", "metric": "orders", "delta": 1},
        ],
    }
    service.update(overrides.pop("service", {}))
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "threescale": {"backend_url": backend_url, "timeout": 1},
        "services": [service],
        "log": {"access_log": False},
        "report": {"interval": 60, "flush_to_redis_ms": 100, "lease": 5},
        "shutdown": {"drain_delay": 0, "timeout": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return settings_from_dict(raw, source="<test>", env={})


def reported_totals(emulator: Any, app: str | None = None, *, service_id: str | None = None) -> dict[str, int]:
    """Sum of the usage 3scale (the emulator) accepted in reports, per metric: what really reached 3scale.

    The emulator's running totals, exact however many transactions its bounded `reported` log dropped."""
    totals: dict[str, int] = emulator.reported_totals(app, service_id=service_id)
    return totals


def metric_value(text: str, sample: str, **labels: str) -> float | None:
    """The value of the one sample named `sample` whose labels include `labels`, from Prometheus text; None
    when there is none (so a test can say "never counted")."""
    from prometheus_client.parser import text_string_to_metric_families

    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{len(found)} samples of {sample} match {labels}"
    return found[0] if found else None


# ------------------------------------------------------------------------------------------------ waiting on events


def minute_start_clock(offset: float = 1.0) -> ManualClock:
    """A ManualClock `offset` seconds into the current UTC minute.

    Shared by a test's proxies (`make_proxy(settings, clock=clock)`) and its emulator (`emulator.clock = clock`),
    it keeps per-minute limits inside one minute however slowly the test runs, instead of sleeping until a
    minute begins; `clock.advance(60)` is the next minute."""
    now = time.time()
    return ManualClock(now - now % 60 + offset)


async def wait_ready(admin_url: str, timeout: float = 30.0, *, alive: Any = None, what: str = "the proxy") -> None:
    """Poll `admin_url`/readyz until it answers 200; fail at once when `alive()` turns false (it exited)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

        async def ready() -> bool:
            if alive is not None and not alive():
                raise AssertionError(f"{what} exited before it was ready")
            try:
                async with session.get(f"{admin_url}/readyz") as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await eventually(ready, timeout, what=f"{what} ready")


class UsageBuffer:
    """One service's usage buffer in a real Redis, read the way the proxies write it: pending usage plus every
    in-flight batch, in one atomic read. Tests wait on it (all usage reached Redis; every batch was
    acknowledged, so nothing is left that could be reported again) instead of sleeping for it."""

    _READ = """
    local out = redis.call('HGETALL', KEYS[1])
    for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      local fields = redis.call('HGETALL', ARGV[1] .. id)
      for i = 1, #fields do out[#out + 1] = fields[i] end
    end
    return out
    """

    def __init__(self, url: str, service_id: str = SERVICE_ID) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(url)
        self.service_id = service_id

    async def usage(self) -> Any:
        """Usage per (app, metric) in the buffer: a Counter like `tests.e2e.replicas.reported_usage`."""
        from collections import Counter

        from proxy.store.base import batch_key, batches_key, parse_usage_field, pending_key

        keys = [pending_key(self.service_id), batches_key(self.service_id)]
        flat = await self.client.eval(self._READ, 2, *keys, batch_key(self.service_id, ""))
        totals: Counter[tuple[str, str]] = Counter()
        for name, delta in zip(flat[::2], flat[1::2], strict=True):
            _, _, metric, app = parse_usage_field(name.decode())
            totals[app, metric] += int(delta)
        return totals

    async def holds(self, expected: Any) -> bool:
        return bool(await self.usage() == expected)

    async def is_empty(self) -> bool:
        """Nothing pending and no batch in flight."""
        from proxy.store.base import batches_key, pending_key

        pipe = self.client.pipeline(transaction=True)
        pipe.hlen(pending_key(self.service_id))
        pipe.zcard(batches_key(self.service_id))
        pending, batches = await pipe.execute()
        return bool(pending == 0 and batches == 0)

    async def aclose(self) -> None:
        await self.client.aclose()
