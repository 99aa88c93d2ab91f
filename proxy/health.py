"""Liveness and readiness, and the metrics endpoint, served on the metrics port.

Readiness is 503 only while starting or draining: a Redis or 3scale outage is reported as "degraded"
with 200, because taking every replica out of the load balancer would turn a partial outage into a total one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics

log = logging.getLogger(__name__)

Phase = Literal["starting", "ready", "draining"]


class Health:
    """The process's phase plus the last known reachability of Redis and 3scale."""

    def __init__(self, metrics: Metrics) -> None:
        self.phase: Phase = "starting"
        self.redis: Literal["up", "down", "memory", "unknown"] = "unknown"
        self.threescale: Literal["up", "down", "unknown"] = "unknown"
        self.config: Callable[[], tuple[str, float | None]] | None = None
        """With services from the 3scale portal: where the configuration in use came from ("portal",
        "redis", "yaml", "none") and its age in seconds."""
        self._metrics = metrics

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body for /readyz."""
        body: dict[str, Any] = {"redis": self.redis, "threescale": self.threescale}
        missing = False
        if self.config is not None:
            source, age = self.config()
            body["config"] = source
            body["config_age_seconds"] = None if age is None else round(age, 1)
            missing = source == "none"
        if self.phase != "ready":
            return 503, {"status": self.phase, **body}
        if missing:  # nothing to route to: the load balancer should send requests elsewhere
            return 503, {"status": "no_configuration", **body}
        degraded = self.redis == "down" or self.threescale == "down"
        return 200, {"status": "degraded" if degraded else "ok", **body}

    async def probe_once(
        self, redis_ping: Callable[[], Awaitable[bool]] | None, threescale_ping: Callable[[], Awaitable[bool]]
    ) -> None:
        """One round of probes; each dependency's failure is recorded, never raised."""
        if redis_ping is None:
            self.redis = "memory"
        else:
            self.redis = "up" if await _safe(redis_ping) else "down"
        self.threescale = "up" if await _safe(threescale_ping) else "down"

    def make_app(self) -> web.Application:
        """The metrics-port application: /healthz, /readyz, /metrics."""

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "alive"})

        async def readyz(_: web.Request) -> web.Response:
            status, body = self.readiness()
            return web.json_response(body, status=status)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        return app


async def _safe(ping: Callable[[], Awaitable[bool]]) -> bool:
    try:
        async with asyncio.timeout(2.0):
            return await ping()
    except Exception:
        return False
