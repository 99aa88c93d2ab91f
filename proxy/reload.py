"""Services from the 3scale admin portal, kept current: at start, every `threescale.config_refresh` seconds,
and on demand, without a restart and without failing a request under way.

A portal that is down or answers something that does not validate leaves the last good configuration in
place (logged, counted in threescale_proxy_config_reloads_total{result}); the last good one is kept in
Redis too, so a replica that starts while the portal is down still serves what the others serve.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .clock import Clock, system_clock
from .config import ServiceSettings, Settings, merge_services
from .metrics import Metrics
from .portal.apicast import entries_from_contents
from .portal.client import PortalClient, PortalError
from .store import Store, StoreUnavailable, config_key

log = logging.getLogger(__name__)

CACHE_TTL = 30 * 86400.0  # how long Redis keeps the last good configuration without a newer one
Source = Literal["yaml", "portal", "redis", "none"]
Apply = Callable[[Sequence[ServiceSettings]], None]


async def check_portal(settings: Settings) -> tuple[int, list[tuple[str, str]]]:
    """What the portal serves now, converted and validated as a reload would: (services, problems).
    A service it cannot serve and a key that does not validate are problems, named by service and key."""
    endpoint = settings.threescale.portal_endpoint
    if not endpoint:
        return 0, [("threescale.portal_endpoint", "is not set")]
    client = PortalClient(endpoint, settings.threescale.environment, timeout=settings.threescale.timeout)
    try:
        contents = await client.contents()
    except PortalError as exc:
        return 0, [("portal", str(exc))]
    finally:
        await client.close()
    entries, problems = entries_from_contents(contents, "proxy_configs")
    checked = merge_services(settings, entries, problems)
    return sum(1 for service in checked.values() if service is not None), problems


class ConfigReloader:
    """Reads the portal, validates what it serves with the YAML's entries merged in, and applies it."""

    def __init__(
        self,
        settings: Settings,
        client: PortalClient,
        store: Store,
        metrics: Metrics,
        apply: Apply,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._settings = settings
        self._client = client
        self._store = store
        self._metrics = metrics
        self._apply = apply
        self._clock = clock
        self._key = config_key(client.origin, client.environment)
        self._current: str | None = None  # the contents in use, as canonical JSON: unchanged ones are not applied
        self._contents: list[Any] | None = None
        self._good: dict[str, ServiceSettings] = {}  # each service as last applied: kept when its new one is bad
        self.source: Source = "yaml" if settings.services else "none"
        self.loaded_at: float | None = None  # when the configuration in use was read from 3scale
        self._last_result = "ok"  # of the last _use: "ok", or "partial" when a service kept its last good settings

    def age(self) -> float | None:
        """Seconds since the configuration in use was read from 3scale; None if it never was."""
        return None if self.loaded_at is None else max(0.0, self._clock() - self.loaded_at)

    async def start(self) -> None:
        """The first load: the portal, else the last good configuration in Redis; never raises (with
        neither, the YAML's own services are served, or readiness says the configuration is missing)."""
        if await self.refresh():
            return
        try:
            cached = await self._store.get(self._key)
        except StoreUnavailable:
            cached = None
        if cached is None:
            log.error("no configuration from 3scale: the portal is unreachable and Redis holds none")
            return
        try:
            document = json.loads(cached)
            contents, loaded_at = document["contents"], float(document["loaded_at"])
        except (ValueError, KeyError, TypeError):
            log.error("the configuration kept in Redis is unreadable; ignored")
            return
        if self._use(contents, loaded_at, "redis"):
            self._metrics.config_reloads.labels("cached").inc()
            log.warning("serving the last good configuration from Redis: the portal is unreachable")

    async def refresh(self) -> bool:
        """One load from the portal; True when its configuration is in use (applied or unchanged)."""
        try:
            contents = await self._client.contents()
        except PortalError as exc:
            self._metrics.config_reloads.labels("failed").inc()
            log.warning(
                "the 3scale portal could not be read; the last good configuration stays",
                extra={"fields": {"portal": self._client.origin, "error": str(exc), "age": self.age()}},
            )
            return False
        now = self._clock()
        canonical = json.dumps(contents, sort_keys=True)
        if canonical == self._current:
            self.loaded_at, self.source = now, "portal"
            self._metrics.config_reloads.labels("unchanged").inc()
            await self._keep(contents, now)
            return True
        if not self._use(contents, now, "portal"):
            return False
        self._metrics.config_reloads.labels(self._last_result).inc()
        await self._keep(contents, now)
        return True

    def _use(self, contents: list[Any], loaded_at: float, source: Source) -> bool:
        """Convert, merge, validate and apply. A service that cannot be served, or does not validate, keeps
        its last good settings (or stays out if it has none): logged, and the load counts as "partial";
        False (counted "invalid", nothing changed) only when no service at all can be served."""
        entries, problems = entries_from_contents(contents, "proxy_configs")
        checked = merge_services(self._settings, entries, problems)
        for key, message in problems:
            log.error(
                "a service from 3scale cannot be served as it is", extra={"fields": {"key": key, "problem": message}}
            )
        # a service 3scale still has, but that cannot be converted, keeps its last good settings too
        listed = [str(c["id"]) for c in contents if isinstance(c, dict) and c.get("id") is not None]
        for sid in listed:
            if sid not in checked and sid in self._good:
                checked[sid] = None
        services: list[ServiceSettings] = []
        kept: list[str] = []
        for sid, service in checked.items():
            if service is None and sid in self._good:
                service = self._good[sid]
                kept.append(sid)
            if service is not None:
                services.append(service)
        if not services and (checked or problems):
            self._metrics.config_reloads.labels("invalid").inc()
            log.error("no service from 3scale can be served; the last good configuration stays")
            return False
        self._apply(services)
        self._good = {service.id: service for service in services}
        self._contents = contents
        self._current = json.dumps(contents, sort_keys=True)
        self.loaded_at, self.source = loaded_at, source
        self._last_result = "partial" if problems else "ok"
        log.info(
            "configuration from 3scale applied",
            extra={"fields": {"source": source, "services": len(services), "kept": kept, "problems": len(problems)}},
        )
        return True

    def use_settings(self, settings: Settings) -> bool:
        """The YAML was reloaded (SIGHUP): its entries merged into the configuration from 3scale in use, or
        its own services while there is none; False (nothing changed) if the result does not validate."""
        self._settings = settings
        if self._contents is None or self.loaded_at is None:
            if settings.services:
                self._apply(settings.services)
                self.source = "yaml"
            return True
        return self._use(self._contents, self.loaded_at, self.source)

    async def _keep(self, contents: list[Any], loaded_at: float) -> None:
        try:
            await self._store.set(
                self._key, json.dumps({"contents": contents, "loaded_at": loaded_at}).encode(), CACHE_TTL
            )
        except StoreUnavailable:
            pass  # the next refresh keeps it; this replica has it in memory meanwhile

    async def close(self) -> None:
        await self._client.close()
