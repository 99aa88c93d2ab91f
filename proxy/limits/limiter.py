"""Step 5: enforce the plan's limits between syncs with 3scale, exactly, across replicas.

A Redis counter per (application, metric, period window) holds `used` and `reserved`. A replica reserves a
slice of the free headroom atomically (need + free/divisor) and spends it locally, so a key far from its limit
costs no Redis call; near the limit the slices shrink to one request's need. Used units are settled and idle
or near-limit slices given back every flush, and a denial while other replicas hold slices waits one flush
and asks again, so exactly `max` requests pass. 3scale's answers seed each window and raise it when 3scale
has seen more (other gateways).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .. import periods
from ..decisions import AuthDecision
from ..metrics import Metrics
from ..store import LimitClaim, Settlement, Store, StoreUnavailable, credentials_digest, limit_key
from ..threescale.models import AppCredentials, UsageReport

log = logging.getLogger(__name__)

MAX_PLANS = 100_000
KEEP_AFTER_WINDOW = 120  # seconds a counter outlives its window (late settlements still land)
ETERNITY_TTL = 400 * 86400


@dataclass(slots=True)
class _Window:
    """This replica's view of one limit window."""

    service_id: str
    end: float
    allowance: int = 0  # reserved in the store, not yet used here
    used: int = 0  # taken from the allowance since the last settlement
    counted: int = 0  # everything this replica admitted in the window (fallback while the store is down)
    extra: int = 0  # admitted without a reservation (store down): added to the shared count when it is back
    free_seen: int = 0  # headroom nobody had reserved, at our last reservation
    active: bool = False  # used since the last settlement


@dataclass(frozen=True, slots=True)
class _Claim:
    service_id: str
    key: str
    report: UsageReport
    need: int
    base: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Plan:
    decision: AuthDecision
    valid_until: float  # the earliest window end: then windows and keys are computed again
    windows: list[tuple[UsageReport, str, float, float, int]]  # report, key, start, end, base
    parent_of: dict[str, str]


@dataclass(frozen=True, slots=True)
class LimitResult:
    """Allowed or not, and the IETF draft RateLimit headers (plus Retry-After on a denial)."""

    allowed: bool
    headers: Mapping[str, str] = field(default_factory=dict)


ALLOWED_UNLIMITED = LimitResult(True)


def expand_usage(usage: Mapping[str, int], parent_of: Mapping[str, str]) -> dict[str, int]:
    """3scale adds a child metric's usage to its parents; do the same before checking limits."""
    expanded = dict(usage)
    for metric, delta in usage.items():
        seen = {metric}
        parent = parent_of.get(metric)
        while parent is not None and parent not in seen:
            expanded[parent] = expanded.get(parent, 0) + delta
            seen.add(parent)
            parent = parent_of.get(parent)
    return expanded


def app_digest(service_id: str, credentials: AppCredentials) -> str:
    """Limits belong to the application, whichever of its keys was used."""
    return credentials_digest(service_id, AppCredentials(user_key=credentials.user_key, app_id=credentials.app_id))


class Limiter:
    """Checks and counts limit usage; `settle()` runs every flush_to_redis_ms."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        flush_interval: float,
        *,
        divisor: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._flush_interval = flush_interval
        self._divisor = divisor
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._unsent: list[tuple[str, str, list[Settlement]]] = []  # (service, flush id, settlements)
        self._reserving: dict[str, asyncio.Future[None]] = {}
        self._plans: dict[tuple[str, AppCredentials], _Plan] = {}
        self._settling = asyncio.Lock()

    async def check(
        self, service_id: str, credentials: AppCredentials, decision: AuthDecision, usage: Mapping[str, int]
    ) -> LimitResult:
        """Admit the request (and count it) or deny it with 429 headers."""
        if not decision.usage_reports:
            return ALLOWED_UNLIMITED
        now = self._clock()
        claims = self._claims(service_id, credentials, decision, usage, now)
        if not claims:
            return ALLOWED_UNLIMITED
        deadline = now + 3 * self._flush_interval  # how long a denial may wait for other replicas' slices
        while True:
            if self._take_locally(claims):
                return LimitResult(True, self._headers(claims, now))
            busy = {id(f): f for c in claims if (f := self._reserving.get(c.key)) is not None}
            if busy:  # one reservation per window at a time: others wait and share its slice
                await asyncio.wait(list(busy.values()))
                continue
            try:
                outcome = await self._reserve_once(claims)
            except StoreUnavailable:
                return self._check_alone(claims, now)
            if outcome is None:
                continue  # granted: take it on the next pass (another request may have got there first)
            denied, others_hold = outcome
            if others_hold and self._clock() < deadline:
                await asyncio.sleep(self._flush_interval)  # their unused slices come back at their next flush
                continue
            return self._deny(claims[denied], now)

    async def _reserve_once(self, claims: list[_Claim]) -> tuple[int, bool] | None:
        """_reserve, with the windows marked busy so concurrent requests here wait instead of reserving too."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for c in claims:
            self._reserving[c.key] = done
        try:
            return await self._reserve(claims)
        finally:
            for c in claims:
                if self._reserving.get(c.key) is done:
                    del self._reserving[c.key]
            done.set_result(None)

    def _claims(
        self,
        service_id: str,
        credentials: AppCredentials,
        decision: AuthDecision,
        usage: Mapping[str, int],
        now: float,
    ) -> list[_Claim]:
        plan = self._plans.get((service_id, credentials))
        if plan is None or plan.decision is not decision or now >= plan.valid_until:
            plan = self._plan(service_id, credentials, decision, now)
        expanded = expand_usage(usage, plan.parent_of) if plan.parent_of else usage
        claims = []
        for report, key, start, end, base in plan.windows:
            need = expanded.get(report.metric, 0)
            if need > 0:
                claims.append(_Claim(service_id, key, report, need, base, start, end))
        return claims

    def _plan(self, service_id: str, credentials: AppCredentials, decision: AuthDecision, now: float) -> _Plan:
        """An application's limit windows and their counter keys, computed once per decision and window."""
        digest = app_digest(service_id, credentials)
        windows = []
        for report in decision.usage_reports:
            start, end = periods.window(report.period, now)
            synced_start = report.period_start.timestamp() if report.period_start else 0.0
            base = report.current_value if synced_start == start else 0  # a new window starts empty
            windows.append(
                (report, limit_key(service_id, digest, report.metric, report.period, start), start, end, base)
            )
        parent_of = {child: parent for parent, children in decision.hierarchy.items() for child in children}
        plan = _Plan(decision, min((w[3] for w in windows), default=math.inf), windows, parent_of)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[(service_id, credentials)] = plan
        return plan

    def _window(self, claim: _Claim) -> _Window:
        w = self._windows.get(claim.key)
        if w is None:
            w = self._windows[claim.key] = _Window(claim.service_id, claim.end)
        return w

    def _take_locally(self, claims: list[_Claim]) -> bool:
        windows = [self._windows.get(c.key) for c in claims]
        if any(w is None or w.allowance < c.need for w, c in zip(windows, claims, strict=True)):
            return False
        for w, c in zip(windows, claims, strict=True):
            assert w is not None
            w.allowance -= c.need
            w.used += c.need
            w.counted += c.need
            w.active = True
        return True

    async def _reserve(self, claims: list[_Claim]) -> tuple[int, bool] | None:
        """Reserve what the local allowances lack; None when granted, else (denied claim, others hold some)."""
        short = []
        for c in claims:
            w = self._windows.get(c.key)
            have = w.allowance if w is not None else 0
            if have < c.need:
                ttl = ETERNITY_TTL if math.isinf(c.end) else int(c.end - self._clock()) + KEEP_AFTER_WINDOW
                short.append((c, LimitClaim(c.key, c.base, c.report.max_value, c.need - have, max(ttl, 1))))
        result = await self._store.reserve([lc for _, lc in short], self._divisor)
        if result.denied is not None:
            claim = short[result.denied][0]
            w = self._windows.get(claim.key)
            mine = w.allowance if w is not None else 0
            return claims.index(claim), result.reserved - mine > 0
        for (c, _), grant, free in zip(short, result.granted, result.free_after, strict=True):
            w = self._window(c)
            w.allowance += grant
            w.free_seen = free
        return None

    def _check_alone(self, claims: list[_Claim], now: float) -> LimitResult:
        """Redis is down: enforce with what this replica knows (3scale's value plus its own count)."""
        self._metrics.errors.labels("limits_store").inc()
        for c in claims:
            w = self._windows.get(c.key)
            counted = w.counted if w is not None else 0
            if c.base + counted + c.need > c.report.max_value:
                return self._deny(c, now)
        for c in claims:
            w = self._window(c)
            w.counted += c.need
            w.extra += c.need
        return LimitResult(True, self._headers(claims, now))

    def _deny(self, claim: _Claim, now: float) -> LimitResult:
        reset = _reset_seconds(claim.end, now)
        headers = {"RateLimit-Limit": str(claim.report.max_value), "RateLimit-Remaining": "0"}
        if reset is not None:
            headers["RateLimit-Reset"] = str(reset)
            headers["Retry-After"] = str(reset)
        return LimitResult(False, headers)

    def _headers(self, claims: list[_Claim], now: float) -> dict[str, str]:
        """Headers for the tightest limit: least remaining; among equals the longer period."""
        best: tuple[int, float, _Claim] | None = None
        for c in claims:
            w = self._windows.get(c.key)
            remaining = max(0, (w.free_seen + w.allowance) if w is not None else c.report.max_value - c.base)
            rank = (remaining, -(c.end - c.start))
            if best is None or rank < best[:2]:
                best = (remaining, -(c.end - c.start), c)
        assert best is not None
        remaining, _, claim = best
        headers = {"RateLimit-Limit": str(claim.report.max_value), "RateLimit-Remaining": str(remaining)}
        reset = _reset_seconds(claim.end, now)
        if reset is not None:
            headers["RateLimit-Reset"] = str(reset)
        return headers

    async def settle(self) -> None:
        """Turn used slices into usage, give back idle or near-limit slices, and forget ended windows."""
        async with self._settling:  # the flush loop and report_now() must not send the same settlement
            await self._settle()

    async def _settle(self) -> None:
        now = self._clock()
        per_service: dict[str, list[Settlement]] = {}
        for key, w in list(self._windows.items()):
            release = 0
            if w.allowance and (not w.active or w.free_seen < w.allowance * self._divisor or now >= w.end):
                release, w.allowance = w.allowance, 0
            if w.used or release or w.extra:
                ttl = ETERNITY_TTL if math.isinf(w.end) else max(1, int(w.end - now) + KEEP_AFTER_WINDOW)
                per_service.setdefault(w.service_id, []).append(Settlement(key, w.used, release, ttl, w.extra))
            w.used, w.extra, w.active = 0, 0, False
            if now >= w.end + KEEP_AFTER_WINDOW and not w.allowance:
                del self._windows[key]
        for service_id, settlements in per_service.items():
            self._unsent.append((service_id, uuid.uuid4().hex, settlements))
        while self._unsent:
            service_id, flush_id, settlements = self._unsent[0]
            await self._store.settle(service_id, flush_id, settlements)  # same id on retry: applied once
            self._unsent.pop(0)

    async def sync(self, service_id: str, credentials: AppCredentials, reports: tuple[UsageReport, ...]) -> None:
        """3scale's current values after a report: a window never counts less than 3scale has seen."""
        now = self._clock()
        digest = app_digest(service_id, credentials)
        items = []
        for r in reports:
            start, end = periods.window(r.period, now)
            if r.period_start is not None and r.period_start.timestamp() != start:
                continue
            ttl = ETERNITY_TTL if math.isinf(end) else int(end - now) + KEEP_AFTER_WINDOW
            items.append((limit_key(service_id, digest, r.metric, r.period, start), r.current_value, max(ttl, 1)))
        if items:
            await self._store.raise_used(items)


def _reset_seconds(end: float, now: float) -> int | None:
    return None if math.isinf(end) else max(1, math.ceil(end - now))
