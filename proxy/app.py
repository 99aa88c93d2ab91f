"""The lifecycle of one proxy process: start, background loops, drain, final report, stop.

The metrics port comes up first (readiness 503 while starting), then the proxy port. On SIGTERM readiness
goes false at once, the listener keeps accepting for `shutdown.drain_delay` so the load balancer stops
sending, in-flight requests finish, usage in memory goes to Redis (or straight to 3scale when Redis is
down), a final report is attempted, and everything closes within `shutdown.timeout`. The parts themselves
are built by `components`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from .background import Periodic
from .clock import Clock, system_clock
from .components import build
from .config import ConfigError, ServiceSettings, Settings, load_settings, parse_listen
from .eventloop import running_loop_kind
from .http.server import HttpServer
from .portal.client import PortalClient
from .reload import ConfigReloader
from .reporting import ReportFailed
from .store import StoreUnavailable
from .transport import Transport

log = logging.getLogger(__name__)

STOP_MARGIN = 0.3  # seconds of shutdown.timeout kept for closing connections after the final report
FINAL_REPORT_RESERVE = 3.0  # seconds of it kept for the final flush and report while requests finish
LOOP_GRACE = 1.0  # seconds background loops get to finish their step before they are cancelled


class ProxyServer:
    """One proxy process: the proxy listener, the metrics listener, the background loops and what they share."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport | None = None,
        probe_interval: float = 5.0,
        clock: Clock = system_clock,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port  # workers of one supervisor bind the same ports (SO_REUSEPORT)
        parts = build(settings, clock=clock, transport=transport)
        self.components = parts
        self.metrics = parts.metrics
        self.health = parts.health
        self.store = parts.store
        self.usage = parts.usage
        self.client = parts.client
        self.authorizer = parts.authorizer
        self.limiter = parts.limiter
        self.reporter = parts.reporter
        self.transport = parts.transport
        self.pipeline = parts.pipeline
        errors = self.metrics.errors
        report = settings.report
        self._redis_ping = self.store.ping if self.store.shared else None
        self._loops = [
            Periodic("flush", self._flush_step, report.flush_to_redis_ms / 1000, errors),
            Periodic(
                "report",
                self._report_step,
                report.interval,
                errors,
                backoff_max=report.backoff_max,
                expected=(ReportFailed, StoreUnavailable),
            ),
            Periodic("health_probe", self._probe_step, probe_interval, errors),
        ]
        self.reloader: ConfigReloader | None = None
        if settings.threescale.portal_endpoint:
            portal = PortalClient(
                settings.threescale.portal_endpoint,
                settings.threescale.environment,
                timeout=settings.threescale.timeout,
            )
            self.reloader = ConfigReloader(
                settings, portal, self.store, self.metrics, self._apply_services, clock=clock
            )
            reloader = self.reloader
            self.health.config = lambda: (reloader.source, reloader.age())
            self._loops.append(Periodic("config", self._config_step, settings.threescale.config_refresh, errors))
        self._proxy_server: HttpServer | None = None
        self._admin_runner: web.AppRunner | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Bind both listeners (port 0 picks a free one; see .port/.metrics_port) and become ready."""
        self._admin_runner = web.AppRunner(self.health.make_app(), access_log=None)
        await self._admin_runner.setup()
        self.metrics_port = await _bind(self._admin_runner, self.settings.metrics_listen, self.reuse_port)

        await self._probe_step()
        if self.reloader is not None:
            await self.reloader.start()  # the portal, else Redis's last good copy; never raises
            self._show_config_age()
        if self.health.redis == "down":
            log.warning("redis is not reachable at start; serving with the in-process cache until it is back")

        # The proxy port is served by our own listener (proxy.http.server): aiohttp's server cost more CPU
        # per request than everything else the proxy does; the metrics port stays on aiohttp.
        self._proxy_server = HttpServer(self.pipeline.handle, quick=self.pipeline.handle_now)
        host, port = parse_listen(self.settings.listen)
        self.port = await self._proxy_server.start(host, port, reuse_port=self.reuse_port)
        for loop in self._loops:
            loop.start(at_once=loop.name not in ("health_probe", "config"))  # start() has just done those
        self.health.phase = "ready"
        log.info(
            "threescale-proxy ready",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "services": self.pipeline.service_count,
                    "event_loop": running_loop_kind(),
                }
            },
        )

    def _apply_services(self, services: Sequence[ServiceSettings]) -> None:
        """A new configuration from 3scale: the next request is routed with it; reporting knows every service
        it ever had (usage counted for a removed one is still reported with its token)."""
        self.pipeline.reconfigure(services)
        self.reporter.set_services(services)

    async def _config_step(self) -> None:
        await self.reload_config()

    async def reload_config(self) -> bool:
        """One reload from the portal now (the refresh loop, tests); True when its configuration is in use."""
        if self.reloader is None:
            return False
        try:
            return await self.reloader.refresh()
        finally:
            self._show_config_age()

    def _show_config_age(self) -> None:
        """The age of the configuration in use, in its gauge: after every load and every health probe."""
        if self.reloader is not None:
            age = self.reloader.age()
            self.metrics.config_age.set(age if age is not None else 0)

    def reload_file(self, path: str | None) -> bool:
        """SIGHUP: read the YAML (and APIcast's file) again and serve its services and rules; what else
        changed needs a restart (logged). A file that does not validate changes nothing (logged, counted)."""
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            for key, message in exc.problems:
                log.error(
                    "the reloaded file does not validate; nothing changed",
                    extra={"fields": {"key": key, "problem": message}},
                )
            return False
        ignored = [
            f.name
            for f in dataclasses.fields(Settings)
            if f.name not in ("services", "service_entries")
            and getattr(settings, f.name) != getattr(self.settings, f.name)
        ]
        if ignored:
            log.warning("settings other than services change only on a restart", extra={"fields": {"keys": ignored}})
        if self.reloader is not None:
            applied = self.reloader.use_settings(settings)
        else:
            self._apply_services(settings.services)
            applied = True
        if applied:
            self.metrics.config_reloads.labels("ok").inc()
            log.info("configuration file reloaded", extra={"fields": {"services": self.pipeline.service_count}})
        return applied

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

    async def _flush_step(self) -> None:
        await self.flush()  # an unreachable store is not a crash: usage waits in memory, the breaker counts it

    async def _report_step(self) -> None:
        try:
            await self.reporter.report_all()  # a failing service backs off on its own; the loop goes on
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self.reporter.update_pending_gauge()

    async def _probe_step(self) -> None:
        await self.health.probe_once(self._redis_ping, self.client.status)
        self._show_config_age()

    async def report_now(self) -> None:
        """Flush and report everything pending (tests, and the last step of a shutdown)."""
        if await self.flush():
            try:
                failures = await self.reporter.report_all(force=True)
            finally:
                with contextlib.suppress(StoreUnavailable):
                    await self.reporter.update_pending_gauge()
            if failures:
                raise ReportFailed("; ".join(str(f) for f in failures), failures[0].result)
            return
        failed = []
        for service_id, fields in self.usage.take_unsent():  # Redis is down: straight to 3scale from memory
            service = self.reporter.service(service_id)
            if service is None:  # counted for a service no configuration ever had: cannot happen
                log.error("usage of an unknown service", extra={"fields": {"service": service_id}})
                continue

            async def forget(_: list[str]) -> None:
                return None

            try:
                await self.reporter.send_fields(service, fields, forget)
            except ReportFailed as exc:  # one tenant's failure must not keep the others' usage from 3scale
                failed.append(exc)
        if failed:
            raise ReportFailed("; ".join(str(f) for f in failed), failed[0].result)

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
        if self._proxy_server is not None:
            # every answer now closes its connection: clients reconnect (through the load balancer, to other
            # replicas) instead of reusing one this process is about to close
            self._proxy_server.draining = True
        log.info("draining", extra={"fields": {"drain_delay": delay, "timeout": shutdown.timeout}})
        if delay > 0:
            await asyncio.sleep(delay)
        if self._proxy_server is not None:
            await self._proxy_server.stop_listening()  # no new connections; idle ones close
            budget = deadline - time.monotonic() - FINAL_REPORT_RESERVE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pipeline.idle.wait(), max(budget, 0.1))
            await self._proxy_server.close()  # closes the (now idle) connections
            self._proxy_server = None
        grace = min(LOOP_GRACE, max(deadline - time.monotonic(), 0.0) / 4)
        await asyncio.gather(*(loop.stop(grace) for loop in self._loops))
        with contextlib.suppress(TimeoutError):  # reservations in flight end within the Redis timeout
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self.limiter.close()  # the final flush then gives every held limit slice back
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self.report_now()
        except (TimeoutError, ReportFailed, StoreUnavailable) as exc:
            log.error("final report incomplete; usage stays in the buffer", extra={"fields": {"error": repr(exc)}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(started + shutdown.timeout - time.monotonic(), 0.1)):
                await self.authorizer.close()
        await self.transport.close()
        await self.client.close()
        if self.reloader is not None:
            await self.reloader.close()
        await self.store.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        self.metrics.flush()  # with workers, a stopped worker's counts stay in its files: write them first
        log.info("threescale-proxy stopped", extra={"fields": {"seconds": round(time.monotonic() - started, 3)}})


async def _bind(runner: web.AppRunner, listen: str, reuse_port: bool = False) -> int:
    host, port = parse_listen(listen)
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port


async def run_until_signal(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    reload: Callable[[], object] | None = None,
) -> int:
    """Start, wait for SIGTERM or SIGINT, stop; exit 0 on a clean stop (what ECS and Kubernetes expect).
    SIGHUP calls `reload` (the configuration file again), as nginx and APIcast users expect."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await start()
    except OSError as exc:
        log.error("cannot start", extra={"fields": {"error": str(exc)}})
        await stop()
        return 1
    await stopping.wait()
    log.info("signal received, stopping")
    await stop()
    return 0
