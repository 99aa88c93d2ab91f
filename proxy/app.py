"""Builds the proxy from its settings and owns the lifecycle: start, drain, stop.

The metrics port comes up first (readiness 503 while starting), then the shared store and the proxy
port; on stop, readiness goes false before the listener closes so load balancers stop sending first.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .authorizer import Authorizer
from .config import Settings, parse_listen
from .health import Health
from .metrics import Metrics
from .pipeline import Pipeline
from .store import MemoryStore, RedisStore, open_store
from .threescale.client import ThreescaleClient
from .transport import AiohttpTransport, Transport
from .usage import UsageAggregate

log = logging.getLogger(__name__)


class ProxyServer:
    """One proxy process: the proxy listener, the metrics listener and everything they share."""

    def __init__(self, settings: Settings, *, transport: Transport | None = None, probe_interval: float = 5.0) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.usage = UsageAggregate()
        self.store: MemoryStore | RedisStore = open_store(settings.redis_url)
        self.client = ThreescaleClient(
            settings.threescale.backend_url,
            timeout=settings.threescale.timeout,
            pool_size=settings.threescale.pool_size,
        )
        self.authorizer = Authorizer(self.client, self.store, settings.cache, self.metrics)
        self.transport: Transport = transport or AiohttpTransport()
        self.pipeline = Pipeline(
            settings.services,
            self.authorizer,
            self.usage,
            self.transport,
            self.metrics,
            settings.gateway,
            access_log_enabled=settings.log.access_log,
        )
        self._probe_interval = probe_interval
        self._proxy_runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    def make_proxy_app(self) -> web.Application:
        """The aiohttp application that proxies every method and path."""
        app = web.Application(client_max_size=0)  # bodies stream; no size cap of our own
        app.router.add_route("*", "/{tail:.*}", self.pipeline.handle)
        return app

    async def start(self) -> None:
        """Bind both listeners (port 0 picks a free one; see .port/.metrics_port) and become ready."""
        self._admin_runner = web.AppRunner(self.health.make_app(), access_log=None)
        await self._admin_runner.setup()
        self.metrics_port = await _bind(self._admin_runner, self.settings.metrics_listen)

        redis_ping = self.store.ping if isinstance(self.store, RedisStore) else None
        await self.health.probe_once(redis_ping, self.client.status)
        if self.health.redis == "down":
            log.warning("redis is not reachable at start; serving with the in-process cache until it is back")

        self._proxy_runner = web.AppRunner(
            self.make_proxy_app(), access_log=None, handler_cancellation=True, shutdown_timeout=30.0
        )
        await self._proxy_runner.setup()
        self.port = await _bind(self._proxy_runner, self.settings.listen)
        self.health.start_probes(redis_ping, self.client.status, self._probe_interval)
        self.health.phase = "ready"
        log.info(
            "threescale-proxy ready",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "services": len(self.settings.services),
                }
            },
        )

    async def stop(self, drain_delay: float = 0.0) -> None:
        """Readiness false, wait `drain_delay` for the load balancer, finish in-flight requests, close."""
        self.health.phase = "draining"
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()  # stops accepting, waits for in-flight handlers
            self._proxy_runner = None
        await self.health.stop()
        await self.authorizer.close()
        await self.transport.close()
        await self.client.close()
        await self.store.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        log.info("threescale-proxy stopped")


async def _bind(runner: web.AppRunner, listen: str) -> int:
    host, port = parse_listen(listen)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port
