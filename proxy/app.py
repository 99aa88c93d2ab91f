"""Builds the proxy from its settings and owns the lifecycle: start, background loops, drain, final report.

The metrics port comes up first (readiness 503 while starting), then the proxy port. On SIGTERM readiness
goes false at once, the listener keeps accepting for `shutdown.drain_delay` so the load balancer stops
sending, in-flight requests finish, usage in memory goes to Redis (or straight to 3scale when Redis is
down), a final report is attempted, and everything closes within `shutdown.timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web

from .authorizer import Authorizer
from .config import Settings, parse_listen
from .health import Health
from .limits import Limiter
from .metrics import Metrics
from .pipeline import Pipeline
from .reporter import Reporter, ReportFailed
from .store import MemoryStore, RedisStore, StoreUnavailable, open_store
from .threescale.client import ThreescaleClient
from .transport import AiohttpTransport, Transport
from .usage import UsageRecorder

log = logging.getLogger(__name__)

STOP_MARGIN = 0.3  # seconds of shutdown.timeout kept for closing connections after the final report
FINAL_REPORT_RESERVE = 3.0  # seconds of it kept for the final flush and report while requests finish
LOOP_GRACE = 1.0  # seconds background loops get to finish their step before they are cancelled


class ProxyServer:
    """One proxy process: the proxy listener, the metrics listener, the background loops and what they share."""

    def __init__(self, settings: Settings, *, transport: Transport | None = None, probe_interval: float = 5.0) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.store: MemoryStore | RedisStore = open_store(settings.redis_url)
        self.usage = UsageRecorder(self.store, self.metrics, settings.report.max_pending_memory)
        self.client = ThreescaleClient(
            settings.threescale.backend_url,
            timeout=settings.threescale.timeout,
            pool_size=settings.threescale.pool_size,
        )
        self.authorizer = Authorizer(self.client, self.store, settings.cache, self.metrics)
        flush_interval = settings.report.flush_to_redis_ms / 1000
        self.limiter = Limiter(self.store, self.metrics, flush_interval)
        self.reporter = Reporter(
            self.store,
            self.client,
            settings.services,
            settings.report,
            self.metrics,
            self.limiter,
            self.authorizer,
            in_memory=self.usage.in_memory,
        )
        self.transport: Transport = transport or AiohttpTransport()
        self.pipeline = Pipeline(
            settings.services,
            self.authorizer,
            self.limiter,
            self.usage,
            self.transport,
            self.metrics,
            settings.gateway,
            access_log_enabled=settings.log.access_log,
        )
        self._probe_interval = probe_interval
        self._proxy_runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._stop_loops = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.port: int | None = None
        self.metrics_port: int | None = None

    def make_proxy_app(self) -> web.Application:
        """The aiohttp application that proxies every method and path."""
        app = web.Application(client_max_size=0)  # bodies stream; no size cap of our own
        app.router.add_route("*", "/{tail:.*}", self.pipeline.handle)
        app.on_response_prepare.append(self._close_while_draining)
        return app

    async def _close_while_draining(self, _: web.Request, response: web.StreamResponse) -> None:
        """While draining, every answer closes its connection: clients reconnect (through the load balancer,
        to other replicas) instead of reusing one this process is about to close."""
        if self.health.phase == "draining":
            response.force_close()
            response.headers["Connection"] = "close"  # aiohttp has chosen the header before this hook runs

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
            self.make_proxy_app(),
            access_log=None,
            handler_cancellation=True,
            # API Gateway forwards request lines and headers up to 10 KiB; aiohttp's default is 8 KiB
            max_line_size=16384,
            max_field_size=16384,
            # stop() waits for in-flight requests itself; aiohttp would also wait this long on a connection
            # accepted as the listener closed that never sends a request
            shutdown_timeout=1.0,
        )
        await self._proxy_runner.setup()
        self.port = await _bind(self._proxy_runner, self.settings.listen)
        self.health.start_probes(redis_ping, self.client.status, self._probe_interval)
        self._loops = [
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self.reporter.run(self._stop_loops)),
        ]
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

    async def flush(self) -> bool:
        """Usage and limit counts from memory to the store; False when the store is unreachable."""
        ok = True
        try:
            await self.usage.flush()
        except StoreUnavailable:
            ok = False
        try:  # a failed usage write must not keep reserved slices from going back
            await self.limiter.settle()
        except StoreUnavailable:
            ok = False
        return ok

    async def _flush_loop(self) -> None:
        interval = self.settings.report.flush_to_redis_ms / 1000
        while not self._stop_loops.is_set():
            try:
                await self.flush()
            except Exception:  # the loop must survive anything, and say so
                self.metrics.errors.labels("flush").inc()
                log.exception("usage flush crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_loops.wait(), interval)

    async def report_now(self) -> None:
        """Flush and report everything pending (tests, and the last step of a shutdown)."""
        if await self.flush():
            try:
                await self.reporter.report_all()
            finally:
                with contextlib.suppress(StoreUnavailable):
                    await self.reporter.update_pending_gauge()
            return
        for service_id, fields in self.usage.take_unsent():  # Redis is down: straight to 3scale from memory
            service = next(s for s in self.settings.services if s.id == service_id)

            async def forget(_: list[str]) -> None:
                return None

            await self.reporter.send_fields(service, fields, forget)

    async def stop(self, drain_delay: float | None = None) -> None:
        """Readiness false, keep accepting for `drain_delay`, finish in-flight requests, flush, report, close.

        Everything ends by `shutdown.timeout`: background loops get a short grace and are then cancelled (a
        batch they held stays in Redis under its lease), usage in memory goes to Redis before the final
        report is attempted, and that report is cut off at the deadline (what it did not send stays in Redis).
        """
        started = time.monotonic()
        shutdown = self.settings.shutdown
        deadline = started + shutdown.timeout - STOP_MARGIN
        delay = shutdown.drain_delay if drain_delay is None else drain_delay
        self.health.phase = "draining"
        log.info("draining", extra={"fields": {"drain_delay": delay, "timeout": shutdown.timeout}})
        if delay > 0:
            await asyncio.sleep(delay)
        if self._proxy_runner is not None:
            for site in list(self._proxy_runner.sites):
                await site.stop()  # no new connections
            budget = deadline - time.monotonic() - FINAL_REPORT_RESERVE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pipeline.idle.wait(), max(budget, 0.1))
            await self._proxy_runner.cleanup()  # closes the (now idle) connections
            self._proxy_runner = None
        self._stop_loops.set()
        await _finish_or_cancel(self._loops, min(LOOP_GRACE, max(deadline - time.monotonic(), 0.0) / 4))
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self.report_now()
        except (TimeoutError, ReportFailed, StoreUnavailable) as exc:
            log.error("final report incomplete; usage stays in the buffer", extra={"fields": {"error": repr(exc)}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(started + shutdown.timeout - time.monotonic(), 0.1)):
                await self.health.stop()
                await self.authorizer.close()
        await self.transport.close()
        await self.client.close()
        await self.store.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        log.info("threescale-proxy stopped", extra={"fields": {"seconds": round(time.monotonic() - started, 3)}})


async def _finish_or_cancel(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Let tasks end by themselves for `grace` seconds, then cancel what is left and wait for it."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _bind(runner: web.AppRunner, listen: str) -> int:
    host, port = parse_listen(listen)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port
