"""The composition root: builds every part of one proxy process from its settings and wires them together.

Nothing else constructs parts or knows how they connect; `app` only starts and stops what this builds.
One clock is injected into every part that reads the time, so tests can move time instead of sleeping.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .authorizer import Authorizer
from .clock import Clock, system_clock
from .config import ServiceSettings, Settings
from .health import Health
from .http.client import H1Transport
from .limits import Limiter
from .metrics import Metrics
from .pipeline import Pipeline
from .reporting import Reporter
from .store import Store, StoreUnavailable, open_store
from .threescale.client import ThreescaleClient
from .threescale.models import AppCredentials, AuthStatus
from .transport import AiohttpTransport, Transport
from .usage import UsageRecorder


@dataclass(frozen=True)
class Components:
    """Every long-lived part of one process; `app.ProxyServer` owns their lifecycle."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    health: Health
    store: Store
    usage: UsageRecorder
    client: ThreescaleClient
    authorizer: Authorizer
    limiter: Limiter
    reporter: Reporter
    transport: Transport
    pipeline: Pipeline


def _transport(settings: Settings) -> Transport:
    """The upstream HTTP client settings.upstream names, with its keep-alive pool per origin."""
    upstream = settings.upstream
    kind = H1Transport if upstream.transport == "h1" else AiohttpTransport
    return kind(pool_size=upstream.pool_size, keepalive_timeout=upstream.keepalive_timeout)


def build(settings: Settings, *, clock: Clock = system_clock, transport: Transport | None = None) -> Components:
    """Construct and wire the parts; opens no connection yet (clients connect lazily)."""
    metrics = Metrics()
    store = open_store(
        settings.redis_url,
        clock=clock,
        max_connections=settings.redis_max_connections,
        max_values=settings.cache.local_max_entries,  # memory:// holds the "shared" copy in this process too
    )
    usage = UsageRecorder(store, metrics, settings.report.max_pending_memory)
    client = ThreescaleClient(
        settings.threescale.backend_url,
        timeout=settings.threescale.timeout,
        pool_size=settings.threescale.pool_size,
    )
    authorizer = Authorizer(client, store, settings.cache, metrics, clock=clock)
    limiter = Limiter(
        store,
        metrics,
        settings.report.flush_to_redis_ms / 1000,
        max_plans=settings.cache.local_max_entries,
        clock=clock,
    )

    async def fresh_answer(service: ServiceSettings, credentials: AppCredentials, status: AuthStatus) -> None:
        """A report's re-authorization doubles as a sync: cached decision and limit windows take its values."""
        authorizer.remember_status(service, credentials, status)
        with contextlib.suppress(StoreUnavailable):
            await limiter.sync(service.id, credentials, status.usage_reports)

    reporter = Reporter(
        store,
        client,
        settings.services,
        settings.report,
        metrics,
        on_status=fresh_answer,
        in_memory=usage.in_memory,
        clock=clock,
    )
    transport = transport or _transport(settings)
    pipeline = Pipeline(
        settings.services,
        authorizer,
        limiter,
        usage,
        transport,
        metrics,
        settings.gateway,
        access_log_enabled=settings.log.access_log,
        clock=clock,
    )
    return Components(
        settings=settings,
        clock=clock,
        metrics=metrics,
        health=Health(metrics),
        store=store,
        usage=usage,
        client=client,
        authorizer=authorizer,
        limiter=limiter,
        reporter=reporter,
        transport=transport,
        pipeline=pipeline,
    )
