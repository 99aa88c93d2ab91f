"""Step 5: enforce the plan's limits between syncs with 3scale, exactly, across replicas.

A Redis counter per (application, metric, period window) holds `used` and `reserved`. A replica reserves a
slice of the free headroom atomically (need + free/divisor) and spends it locally, so a key far from its limit
costs no Redis call; near the limit the slices shrink to one request's need. Used units are settled and idle
or near-limit slices given back every flush, and a denial while other replicas hold slices waits one flush
and asks again, so exactly `max` requests pass. 3scale's answers seed each window and raise it when 3scale
has seen more (other gateways). A reservation runs in a task the limiter owns, so a request that goes away
mid-call never loses a slice Redis has granted; `close()` makes the final settlement give every slice back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from ..decisions import AuthDecision
from ..lru import LRU
from ..metrics import Metrics
from ..store import LimitClaim, Settlement, Store, StoreUnavailable, credentials_digest, limit_key
from ..threescale.models import AppCredentials, UsageReport
from .headers import LimitView, allowed_headers, denied_headers, one_limit_headers
from .ledger import Claim, Ledger
from .windows import base_value, counter_ttl, expand_usage, parent_map, window

log = logging.getLogger(__name__)

WINDOWS_PER_PLAN = 2  # ledger bound per cached plan: most plans limit one or two periods of one metric
MAX_PLANS = 100_000  # applications whose limit windows are kept computed; the least recent go first
CLAIMS_KEPT = 4096
"""Plans that keep the claims of their last usage (about 250 bytes each), replaced in turn: the busy
applications keep theirs, and memory does not grow by that much per cached key."""


@dataclass(slots=True)
class _Plan:
    """An application's limit windows, one per report of its decision: the counter keys are the application's
    own; the window spans and the parent map are shared by every plan that has the same ones. Up to
    CLAIMS_KEPT plans keep the claims of the last usage they saw: an application's requests mostly map to
    the same usage."""

    decision: AuthDecision
    valid_until: float  # the earliest window end: then windows and keys are computed again
    keys: tuple[str, ...]  # each window's shared counter
    spans: tuple[tuple[float, float], ...]  # each window's (start, end)
    synced: int  # bit i: 3scale's count in report i is this window's (its base); else the window starts at 0
    parent_of: Mapping[str, str]
    last_usage: Mapping[str, int] | None = None  # shared between plans (Limiter._shared_usage)
    last_claims: list[Claim] | None = None


NO_PARENTS: Mapping[str, str] = MappingProxyType({})
SHARED_MAX = 1024  # distinct window spans and parent maps kept for sharing; then the table starts afresh


class LimitResult(NamedTuple):
    """Allowed or not, and the IETF draft RateLimit headers (plus Retry-After on a denial). A NamedTuple:
    one is made per request, and a frozen dataclass costs three times as much to build."""

    allowed: bool
    headers: Mapping[str, str] = MappingProxyType({})
    disabled: bool = False  # denied because the plan disables a metric it needs (a limit of 0): 403, as APIcast


ALLOWED_UNLIMITED = LimitResult(True)
DISABLED = LimitResult(False, disabled=True)


K = TypeVar("K")
V = TypeVar("V")


def _shared(table: dict[K, V], key: K, make: Callable[[], V]) -> V:
    """The one object `table` keeps for `key` (made on first use), so plans that are alike share it; past
    SHARED_MAX entries the table starts afresh (plans keep what they hold)."""
    kept = table.get(key)
    if kept is None:
        if len(table) >= SHARED_MAX:
            table.clear()
        kept = table[key] = make()
    return kept


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
        max_plans: int = MAX_PLANS,
        claims_kept: int = CLAIMS_KEPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._flush_interval = flush_interval
        self._divisor = divisor
        self._clock = clock
        self._ledger = Ledger(divisor, max_windows=WINDOWS_PER_PLAN * max(1, max_plans))
        self._unsent: list[tuple[str, str, list[Settlement]]] = []  # (service, flush id, settlements)
        self._reserving: dict[str, asyncio.Future[None]] = {}
        self._reservations: set[asyncio.Task[tuple[int, bool] | None]] = set()
        self._closing = False
        self._plans: LRU[tuple[str, AppCredentials], _Plan] = LRU(max(1, max_plans))
        self._spans: dict[str, tuple[float, float]] = {}  # period → its current window, one tuple for all plans
        self._span_sets: dict[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...]] = {}
        self._parents: dict[tuple[tuple[str, tuple[str, ...]], ...], Mapping[str, str]] = {}  # hierarchy → parents
        self._usages: dict[tuple[tuple[str, int], ...], Mapping[str, int]] = {}  # a request's usage, shared
        # the plans that keep their last claims: at most CLAIMS_KEPT, so 100,000 cold keys do not each hold some
        self._kept_claims: list[_Plan | None] = [None] * max(1, min(claims_kept, max_plans))
        self._kept_at = 0
        self._settling = asyncio.Lock()

    def check_now(
        self, service_id: str, credentials: AppCredentials, decision: AuthDecision, usage: Mapping[str, int]
    ) -> LimitResult | None:
        """check() when it needs no wait: admitted (and counted) from the slices held here, or no limit
        applies, or denied because the plan disables a metric the request needs (DISABLED); None, with
        nothing counted, when Redis must be asked (check() then)."""
        if not decision.usage_reports:
            return ALLOWED_UNLIMITED
        now = self._clock()
        claims = self._claims(service_id, credentials, decision, usage, now)
        if not claims:
            return ALLOWED_UNLIMITED
        if self._ledger.take(claims):
            return LimitResult(True, self._headers(claims, now))
        for c in claims:
            if c.report.max_value == 0:  # 3scale's way to disable a metric: no slice can ever cover it
                return DISABLED
        return None

    async def check(
        self, service_id: str, credentials: AppCredentials, decision: AuthDecision, usage: Mapping[str, int]
    ) -> LimitResult:
        """Admit the request (and count it) or deny it with 429 headers."""
        admitted = self.check_now(service_id, credentials, decision, usage)
        if admitted is not None:
            return admitted
        now = self._clock()
        claims = self._claims(service_id, credentials, decision, usage, now)
        deadline = now + 3 * self._flush_interval  # how long a denial may wait for other replicas' slices
        while True:
            if self._ledger.take(claims):
                return LimitResult(True, self._headers(claims, now))
            busy = {id(f): f for c in claims if (f := self._reserving.get(c.key)) is not None}
            if busy:  # one reservation per window at a time: others wait and share its slice
                await asyncio.wait(list(busy.values()))
                continue
            try:
                outcome = await self._reserve_owned(claims)
            except StoreUnavailable:
                return self._check_alone(claims, now)
            if outcome is None:
                continue  # granted: take it on the next pass (another request may have got there first)
            denied, others_hold = outcome
            if others_hold and self._clock() < deadline:
                await asyncio.sleep(self._flush_interval)  # their unused slices come back at their next flush
                continue
            return self._deny(claims[denied], now)

    async def _reserve_owned(self, claims: list[Claim]) -> tuple[int, bool] | None:
        """_reserve in a task this limiter owns, shielded from the request: a client that goes away while
        Redis reserves its slice must not lose the grant (it would stay reserved until the window ends).

        The windows are marked busy at once, so concurrent requests here wait and share the slice."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for c in claims:
            self._reserving[c.key] = done
        task = asyncio.create_task(self._reserve(claims))
        self._reservations.add(task)
        task.add_done_callback(lambda t: self._reserved(t, claims, done))
        return await asyncio.shield(task)

    def _reserved(
        self, task: asyncio.Task[tuple[int, bool] | None], claims: list[Claim], done: asyncio.Future[None]
    ) -> None:
        """However the reservation ended: the windows are free again and the requests waiting on them go on."""
        self._reservations.discard(task)
        for c in claims:
            if self._reserving.get(c.key) is done:
                del self._reserving[c.key]
        done.set_result(None)

    async def close(self) -> None:
        """At shutdown, after the last request: wait for reservations in flight (their grants are booked),
        and make every later settle() give all held slices back, so none stays reserved past this process."""
        self._closing = True
        if self._reservations:
            await asyncio.gather(*list(self._reservations), return_exceptions=True)

    def _claims(
        self,
        service_id: str,
        credentials: AppCredentials,
        decision: AuthDecision,
        usage: Mapping[str, int],
        now: float,
    ) -> list[Claim]:
        plan = self._plans.get((service_id, credentials))
        if plan is None or plan.decision is not decision or now >= plan.valid_until:
            plan = self._plan(service_id, credentials, decision, now)
        elif plan.last_claims is not None and plan.last_usage == usage:
            return plan.last_claims  # claims are read-only: the ledger keeps its counts in its windows
        expanded = expand_usage(usage, plan.parent_of) if plan.parent_of else usage
        claims = []
        synced = plan.synced
        for report, key, (start, end) in zip(plan.decision.usage_reports, plan.keys, plan.spans, strict=True):
            need = expanded.get(report.metric, 0)
            if need > 0:
                base = report.current_value if synced & 1 else 0
                claims.append(Claim(service_id, key, report, need, base, start, end))
            synced >>= 1
        if plan.last_claims is None:  # a place among the plans that keep claims, in turn (no cost per hit)
            evicted = self._kept_claims[self._kept_at]
            if evicted is not None:
                evicted.last_usage = evicted.last_claims = None
            self._kept_claims[self._kept_at] = plan
            self._kept_at = (self._kept_at + 1) % len(self._kept_claims)
        plan.last_usage, plan.last_claims = self._shared_usage(usage), claims
        return claims

    def _shared_usage(self, usage: Mapping[str, int]) -> Mapping[str, int]:
        """A copy of `usage` that plans keep to compare with: one for every plan that saw the same usage."""
        items = tuple(usage.items())
        return _shared(self._usages, items, lambda: MappingProxyType(dict(items)))

    def _plan(self, service_id: str, credentials: AppCredentials, decision: AuthDecision, now: float) -> _Plan:
        """An application's limit windows and their counter keys, computed once per decision and window."""
        digest = app_digest(service_id, credentials)
        reports = decision.usage_reports
        spans = self._shared_spans(tuple(self._span(report.period, now) for report in reports))
        synced = 0
        for i, (r, (start, _)) in enumerate(zip(reports, spans, strict=True)):
            if base_value(r, start):  # 3scale's value if its answer was about this window, else 0 (a new one)
                synced |= 1 << i
        plan = _Plan(
            decision,
            min((end for _, end in spans), default=math.inf),
            tuple(
                limit_key(service_id, digest, r.metric, r.period, start)
                for r, (start, _) in zip(reports, spans, strict=True)
            ),
            spans,
            synced,
            self._parent_map(decision.hierarchy),
        )
        self._plans.put((service_id, credentials), plan)
        return plan

    def _span(self, period: str, now: float) -> tuple[float, float]:
        """The window of `period` containing `now`: the same tuple for every plan until that window ends."""
        span = self._spans.get(period)
        if span is None or not span[0] <= now < span[1]:
            span = window(period, now)
            if len(self._spans) >= SHARED_MAX:
                self._spans.clear()
            self._spans[period] = span
        return span

    def _shared_spans(self, spans: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        """One tuple for every plan with the same windows."""
        return _shared(self._span_sets, spans, lambda: spans)

    def _parent_map(self, hierarchy: Mapping[str, tuple[str, ...]]) -> Mapping[str, str]:
        """child → parent, one map for every plan with the same hierarchy."""
        if not hierarchy:
            return NO_PARENTS
        return _shared(self._parents, tuple(hierarchy.items()), lambda: MappingProxyType(parent_map(hierarchy)))

    async def _reserve(self, claims: list[Claim]) -> tuple[int, bool] | None:
        """Reserve what the local allowances lack; None when granted, else (denied claim, others hold some)."""
        now = self._clock()
        short = [
            (c, LimitClaim(c.key, c.base, c.report.max_value, lacking, counter_ttl(c.end, now)))
            for c, lacking in self._ledger.shortfall(claims)
        ]
        result = await self._store.reserve([lc for _, lc in short], self._divisor)
        if result.denied is not None:
            claim = short[result.denied][0]
            return claims.index(claim), self._ledger.others_hold(claim, result.reserved)
        for (c, _), granted, free in zip(short, result.granted, result.free_after, strict=True):
            self._ledger.grant(c, granted, free)
        return None

    def _check_alone(self, claims: list[Claim], now: float) -> LimitResult:
        """Redis is down: enforce with what this replica knows (3scale's value plus its own count)."""
        self._metrics.errors.labels("limits_store").inc()
        for c in claims:
            if not self._ledger.fits_alone(c):
                return self._deny(c, now)
        self._ledger.count_alone(claims)
        return LimitResult(True, self._headers(claims, now))

    def _deny(self, claim: Claim, now: float) -> LimitResult:
        return LimitResult(False, denied_headers(claim.report.max_value, claim.end, now))

    def _headers(self, claims: list[Claim], now: float) -> dict[str, str]:
        """Headers for the tightest limit: least remaining; among equals the longer period."""
        if len(claims) == 1:  # most plans limit one metric in one period: no ranking to do
            c = claims[0]
            return one_limit_headers(c.report.max_value, self._ledger.remaining(c), c.end, now)
        views = (LimitView(c.report.max_value, self._ledger.remaining(c), c.start, c.end) for c in claims)
        return allowed_headers(views, now)

    async def settle(self) -> None:
        """Turn used slices into usage, give back idle or near-limit slices, and forget ended windows."""
        async with self._settling:  # the flush loop and report_now() must not send the same settlement
            await self._settle()

    async def _settle(self) -> None:
        for service_id, settlements in self._ledger.settle(self._clock(), release_all=self._closing).items():
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
            start, end = window(r.period, now)
            if r.period_start is not None and r.period_start.timestamp() != start:
                continue
            items.append(
                (limit_key(service_id, digest, r.metric, r.period, start), r.current_value, counter_ttl(end, now))
            )
        if items:
            await self._store.raise_used(items)
