"""Step 4: decide whether credentials may call a service: in-process cache → Redis → 3scale on a miss.

A cached, allowed request costs a dict lookup: when the local copy is older than `local_ttl` it is still
served while one background task re-reads Redis. Misses are single-flight per key, rejections are cached
for `negative_ttl`, and the cache mode decides what happens when 3scale cannot be reached. What was decided
because 3scale could not be reached holds only until 3scale answers again, for any key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from .config import CacheSettings, ServiceSettings
from .decisions import (
    BACKEND_UNAVAILABLE,
    SERVICE_CONFIG_CODES,
    AuthDecision,
    shared_hierarchy,
    shared_reports,
    shared_text,
)
from .lru import SplitLRU
from .metrics import Metrics, observe_backend
from .redact import scrub_reason
from .store import Store, StoreUnavailable, auth_key, credentials_digest
from .threescale.client import ThreescaleClient
from .threescale.errors import BackendUnavailable
from .threescale.models import AppCredentials, AuthStatus, UsageReport

log = logging.getLogger(__name__)

LocalKey = tuple[str, AppCredentials]  # (service id, credentials)


Layer = Literal["local", "redis", "backend", "stale", "fallback"]

__all__ = ["AuthResult", "Authorizer"]  # decision types live in proxy.decisions


class AuthResult(NamedTuple):
    """A decision and the layer that produced it (for logs and metrics); one per request."""

    decision: AuthDecision
    layer: Layer


@dataclass(slots=True)
class _LocalEntry:
    decision: AuthDecision
    check_after: float  # when to re-read Redis in the background
    outage: int | None = None  # decided without 3scale, in this outage (see Authorizer._outage)


class Authorizer:
    """The two-level authorization cache in front of 3scale."""

    def __init__(
        self,
        client: ThreescaleClient,
        store: Store,
        settings: CacheSettings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        negative = settings.negative_entries
        # denied keys in a segment of their own: a flood of bad keys only ever evicts other bad keys
        self._local: SplitLRU[LocalKey, _LocalEntry] = SplitLRU(max(1, settings.local_max_entries - negative), negative)
        self._inflight: dict[LocalKey, asyncio.Task[AuthResult]] = {}
        self._refreshing: dict[LocalKey, asyncio.Task[None]] = {}
        # Outages are numbered: a decision made while 3scale was unreachable carries the current number, and
        # the first answer from 3scale afterwards starts a new one, so every such decision is a miss at once.
        self._outage = 0
        self._backend_down = False

    def allowed_now(self, service: ServiceSettings, credentials: AppCredentials) -> AuthDecision | None:
        """authorize() when its answer is an allowing decision held in this process (counted as a local hit);
        None, with nothing counted, otherwise (authorize() then)."""
        local_key = (service.id, credentials)
        entry = self._local.get(local_key)
        if entry is None or not entry.decision.allowed:
            return None
        return self._hit(service, local_key, entry, self._clock())

    async def authorize(self, service: ServiceSettings, credentials: AppCredentials) -> AuthResult:
        """The decision for these credentials; never raises for Redis or 3scale failures."""
        local_key = (service.id, credentials)  # a tuple of a str and a NamedTuple: hashed in C, no digest
        now = self._clock()
        entry = self._local.get(local_key)
        if entry is not None and (decision := self._hit(service, local_key, entry, now)) is not None:
            return AuthResult(decision, "local")
        self._metrics.auth_cache.labels(service.id, "local", "miss").inc()
        task = self._inflight.get(local_key)
        if task is None:
            stale = entry.decision if entry is not None else None
            task = asyncio.create_task(self._lookup(service, credentials, local_key, stale))
            self._inflight[local_key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(local_key, None))
        # shield: one caller going away (client disconnect) must not cancel the lookup others wait for
        return await asyncio.shield(task)

    def _hit(
        self, service: ServiceSettings, local_key: LocalKey, entry: _LocalEntry, now: float
    ) -> AuthDecision | None:
        """The entry's decision if it may be served (fresh, and not decided in an earlier outage), counted."""
        if now >= entry.decision.fresh_until or (entry.outage is not None and entry.outage != self._outage):
            return None
        self._metrics.record_local_hit(service.id)
        if now >= entry.check_after and local_key not in self._refreshing:
            self._start_refresh(service, local_key, entry)
        return entry.decision

    async def close(self) -> None:
        """Cancel background refreshes and wait for in-flight lookups to end."""
        for t in list(self._refreshing.values()):
            t.cancel()
        pending = [*self._refreshing.values(), *self._inflight.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # ---------------------------------------------------------------------------------------- layers

    async def _lookup(
        self, service: ServiceSettings, credentials: AppCredentials, local_key: LocalKey, stale: AuthDecision | None
    ) -> AuthResult:
        key = auth_key(service.id, credentials_digest(service.id, credentials))
        shared = await self._read_shared(service, key)
        now = self._clock()
        if shared is not None:
            if now < shared.fresh_until:
                self._metrics.auth_cache.labels(service.id, "redis", "hit").inc()
                self._remember(local_key, shared, now)
                return AuthResult(shared, "redis")
            if stale is None or shared.fresh_until > stale.fresh_until:
                stale = shared
        self._metrics.auth_cache.labels(service.id, "redis", "miss").inc()
        try:
            status = await self._ask_backend(service, credentials)
        except BackendUnavailable as exc:
            self._metrics.auth_cache.labels(service.id, "backend", "miss").inc()
            return self._when_backend_down(service, local_key, stale, exc)
        self._backend_answered()
        self._metrics.auth_cache.labels(service.id, "backend", "hit").inc()
        decision = self._decide(status, self._clock())
        self._remember(local_key, decision, self._clock())
        await self._write_shared(key, decision)
        return AuthResult(decision, "backend")

    async def _ask_backend(self, service: ServiceSettings, credentials: AppCredentials) -> AuthStatus:
        call = self._client.at(service.backend_url).authorize(service.id, service.token, credentials)
        try:
            status = await observe_backend(self._metrics, "authorize", call, lambda s: s.http_status)
        except BackendUnavailable:
            self._metrics.errors.labels("backend").inc()
            raise
        if status.code in SERVICE_CONFIG_CODES:
            self._metrics.errors.labels("backend_config").inc()
            log.error(
                "3scale rejected the service's own credentials",
                extra={"fields": {"service": service.id, "code": status.code}},
            )
        return status

    def remember_status(self, service: ServiceSettings, credentials: AppCredentials, status: AuthStatus) -> None:
        """Take a fresh answer from 3scale obtained elsewhere (the reporter's re-authorization)."""
        self._backend_answered()
        local_key = (service.id, credentials)
        if local_key in self._local:
            self._remember(local_key, self._decide(status, self._clock()), self._clock())

    def _backend_answered(self) -> None:
        """3scale answered: the outage, if one was under way, is over for every key."""
        if self._backend_down:
            self._backend_down = False
            self._outage += 1

    def _when_backend_down(
        self, service: ServiceSettings, local_key: LocalKey, stale: AuthDecision | None, exc: BackendUnavailable
    ) -> AuthResult:
        """strict: deny what is not fresh; resilient: serve what was decided before; allow: let it through.

        Whatever is decided here is remembered as part of this outage: a miss once 3scale answers again."""
        self._backend_down = True
        outage = self._outage
        now = self._clock()
        mode = self._settings.mode
        # Ask 3scale again for this key after a short pause, not on every request while it is down.
        retry_at = now + max(self._settings.local_ttl, 1.0)
        log.warning(
            "3scale unreachable", extra={"fields": {"service": service.id, "mode": mode, "error": type(exc).__name__}}
        )
        if mode != "strict" and stale is not None and now < stale.stale_until:
            served = replace(stale, fresh_until=min(retry_at, stale.stale_until))
            self._remember(local_key, served, now, outage=outage)
            return AuthResult(served, "stale")
        if mode == "allow":
            allowed = AuthDecision(allowed=True, fresh_until=retry_at, stale_until=retry_at, code=BACKEND_UNAVAILABLE)
            self._remember(local_key, allowed, now, outage=outage)
            return AuthResult(allowed, "fallback")
        denied = AuthDecision(
            allowed=False,
            fresh_until=retry_at,
            stale_until=retry_at,
            code=BACKEND_UNAVAILABLE,
            reason="3scale could not be reached",
        )
        self._remember(local_key, denied, now, outage=outage)
        return AuthResult(denied, "fallback")

    def _decide(self, status: AuthStatus, now: float) -> AuthDecision:
        """Turn 3scale's answer into a cacheable decision with its TTLs."""
        s = self._settings
        if status.authorized or _only_disabled_metrics_exceeded(status):
            stale_for = 0.0 if s.mode == "strict" else s.stale_ttl
            return AuthDecision(
                allowed=True,
                fresh_until=now + s.ttl,
                stale_until=now + s.ttl + stale_for,
                plan=shared_text(status.plan),
                usage_reports=shared_reports(status.usage_reports),
                hierarchy=shared_hierarchy(status.hierarchy),
            )
        ttl = s.negative_ttl
        if status.code == "limits_exceeded":
            ttl = min(ttl, _seconds_to_reset(status.usage_reports, now))
        return AuthDecision(
            allowed=False,
            fresh_until=now + ttl,
            stale_until=now + ttl,
            code=shared_text(status.code or "authorization_failed"),
            reason=shared_text(scrub_reason(status.reason)),
            plan=shared_text(status.plan),
            usage_reports=shared_reports(status.usage_reports),
            hierarchy=shared_hierarchy(status.hierarchy),
        )

    # ---------------------------------------------------------------------------------------- storage

    def _remember(self, local_key: LocalKey, decision: AuthDecision, now: float, *, outage: int | None = None) -> None:
        entry = _LocalEntry(decision, now + self._settings.local_ttl, outage)
        self._local.put(local_key, entry, negative=not decision.allowed)

    async def _read_shared(self, service: ServiceSettings, key: str) -> AuthDecision | None:
        try:
            return await self._store.get_decision(key)
        except StoreUnavailable:
            self._metrics.errors.labels("redis").inc()
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable cache entry", extra={"fields": {"service": service.id}})
            return None

    async def _write_shared(self, key: str, decision: AuthDecision) -> None:
        ttl = decision.stale_until - self._clock()
        if ttl <= 0:
            return
        try:
            await self._store.set_decision(key, decision, ttl)
        except StoreUnavailable:
            self._metrics.errors.labels("redis").inc()

    def _start_refresh(self, service: ServiceSettings, local_key: LocalKey, entry: _LocalEntry) -> None:
        """Re-read Redis in the background so replicas converge without a round trip on the hot path."""
        entry.check_after = self._clock() + self._settings.local_ttl
        task = asyncio.create_task(self._refresh(service, local_key))
        self._refreshing[local_key] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(local_key, None))

    async def _refresh(self, service: ServiceSettings, local_key: LocalKey) -> None:
        digest = credentials_digest(service.id, local_key[1])
        shared = await self._read_shared(service, auth_key(service.id, digest))
        now = self._clock()
        current = self._local.peek(local_key)  # a background re-read must not keep an entry alive
        if shared is None or current is None or now >= shared.fresh_until:
            return
        if shared.fresh_until >= current.decision.fresh_until:
            self._remember(local_key, shared, now)


def _only_disabled_metrics_exceeded(status: AuthStatus) -> bool:
    """3scale's 409 limits_exceeded to an authorize without usage, over nothing but metrics the plan disables
    (a limit of 0 that was used before): the application may call everything else, so it is served as
    authorized and the limiter answers a request for a disabled metric (403, as APIcast does)."""
    if status.code != "limits_exceeded":
        return False
    exceeded = [u for u in status.usage_reports if u.exceeded]
    return bool(exceeded) and all(u.max_value == 0 for u in exceeded)


def _seconds_to_reset(reports: tuple[UsageReport, ...], now: float) -> float:
    """Until the earliest exceeded period ends, so a minute limit is not cached as denied for longer."""
    ends = [u.period_end.timestamp() - now for u in reports if u.exceeded and u.period_end is not None]
    return max(1.0, min(ends)) if ends else float("inf")
