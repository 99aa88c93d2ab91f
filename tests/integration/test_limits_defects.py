"""Regression tests for the limiter's defects (issue 7), on a real redis-server.

Defect 3: a request cancelled (client gone) while its reservation was in flight lost the grant: the
counter kept the units reserved for the rest of the window while no replica knew it held them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.decisions import AuthDecision
from proxy.limits import Limiter, app_digest
from proxy.metrics import Metrics
from proxy.periods import window
from proxy.store import LimitClaim, Reservation, open_store
from proxy.store import limit_key as counter_key
from proxy.threescale.models import AppCredentials, UsageReport
from tests.support import SERVICE_ID, ManualClock

MONTHLY = 1_000_000
CREDS = AppCredentials(user_key="monthly-key-0123456789")


class HeldAnswers:
    """The real Redis store, except that a reservation's answer (already applied in Redis) is held back
    until the test releases it: the window in which a client disconnect used to lose the grant."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reservations = 0
        self.applied = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def reserve(self, claims: list[LimitClaim], divisor: int) -> Reservation:
        self.reservations += 1
        result = await self._inner.reserve(claims, divisor)
        self.applied.set()
        await self.release.wait()
        return result


@pytest.fixture
async def setup(request: pytest.FixtureRequest, redis_url: str):
    monthly = getattr(request, "param", MONTHLY)
    clock = ManualClock()
    start, end = window("month", clock())
    decision = AuthDecision(
        allowed=True,
        fresh_until=clock() + 300,
        stale_until=clock() + 300,
        usage_reports=(
            UsageReport(
                "hits", "month", datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), monthly, 0
            ),
        ),
    )
    real = open_store(redis_url)
    store = HeldAnswers(real)
    limiter = Limiter(store, Metrics(), 0.1, clock=clock)  # type: ignore[arg-type]
    key = counter_key(SERVICE_ID, app_digest(SERVICE_ID, CREDS), "hits", "month", start)
    redis = aioredis.from_url(redis_url)

    async def counter() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}

    yield limiter, store, decision, key, counter
    await redis.aclose()
    await real.close()


async def cancelled_mid_reservation(limiter: Limiter, store: HeldAnswers, decision: AuthDecision) -> None:
    """One request whose client goes away after Redis reserved its slice but before the answer arrived."""
    request = asyncio.create_task(limiter.check(SERVICE_ID, CREDS, decision, {"hits": 1}))
    await store.applied.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    store.release.set()


async def test_a_cancelled_reservation_is_spent_by_the_next_requests(setup):
    limiter, store, decision, key, counter = setup
    await cancelled_mid_reservation(limiter, store, decision)
    # the slice Redis reserved: the need (1) plus an eighth of the rest of the headroom
    slice_ = 1 + (MONTHLY - 1) // 8
    assert slice_ == 125_000 and await counter() == {"u": 0, "r": slice_}

    results = [await limiter.check(SERVICE_ID, CREDS, decision, {"hits": 1}) for _ in range(10)]
    assert all(r.allowed for r in results)
    assert store.reservations == 1  # spent from the slice the cancelled request obtained
    assert results[0].headers["RateLimit-Remaining"] == str(MONTHLY - 1)
    assert await counter() == {"u": 0, "r": slice_}
    assert limiter._ledger.allowance(key) == slice_ - 10  # Redis' reservation is exactly what is held here

    await limiter.settle()
    assert await counter() == {"u": 10, "r": slice_ - 10}  # the used units counted; busy and roomy: kept
    assert limiter._ledger.allowance(key) == slice_ - 10
    await limiter.settle()
    assert await counter() == {"u": 10, "r": 0}  # idle since the last settle: the rest given back
    assert limiter._ledger.allowance(key) == 0


async def test_a_cancelled_reservation_is_given_back_by_the_next_settle(setup):
    limiter, store, decision, key, counter = setup
    await cancelled_mid_reservation(limiter, store, decision)
    await asyncio.wait_for(limiter.close(), 5)  # waits for the reservation the limiter finishes on its own
    assert limiter._ledger.allowance(key) == 125_000 and await counter() == {"u": 0, "r": 125_000}
    await limiter.settle()
    assert await counter() == {"u": 0, "r": 0}


@pytest.mark.parametrize("setup", [1000], indirect=True)
async def test_closing_gives_every_held_slice_back(setup):
    limiter, store, decision, _, counter = setup
    store.release.set()
    for _ in range(20):  # a slice of 1 + 999 // 8 = 125, spent fast enough to be kept past a settle
        assert (await limiter.check(SERVICE_ID, CREDS, decision, {"hits": 1})).allowed
    await limiter.settle()
    assert await counter() == {"u": 20, "r": 105}  # busy, with 875 still free: the slice stays here
    assert (await limiter.check(SERVICE_ID, CREDS, decision, {"hits": 1})).allowed
    await limiter.close()  # shutdown: nothing may stay reserved for the rest of the month
    await limiter.settle()
    assert await counter() == {"u": 21, "r": 0}
    assert store.reservations == 1
