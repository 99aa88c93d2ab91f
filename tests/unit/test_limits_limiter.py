"""The limiter on the in-process store: its bounded plan cache, its kept claims, its denials."""

import asyncio

from proxy.decisions import AuthDecision
from proxy.limits.limiter import ALLOWED_UNLIMITED, Limiter
from proxy.metrics import Metrics
from proxy.store import MemoryStore
from proxy.threescale.models import AppCredentials, UsageReport
from tests.support import ManualClock

SERVICE = "svc"


def eternal_limit(max_value: int) -> AuthDecision:
    """An allowed, never-expiring decision whose plan limits hits to `max_value` for eternity."""
    return AuthDecision(
        allowed=True,
        fresh_until=float("inf"),
        stale_until=float("inf"),
        usage_reports=(UsageReport("hits", "eternity", None, None, max_value=max_value, current_value=0),),
    )


DECISION = eternal_limit(1000)


def app(name: str) -> AppCredentials:
    return AppCredentials(user_key=name)


async def test_the_plan_cache_forgets_only_the_least_recently_used_plan():
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, max_plans=3, clock=clock)
    for name in ("a", "b", "c", "a", "d"):  # a is used again before d arrives: b is the least recent
        assert (await limiter.check(SERVICE, app(name), DECISION, {"hits": 1})).allowed
    cached = {name for name in "abcd" if (SERVICE, app(name)) in limiter._plans}
    assert cached == {"a", "c", "d"}


async def test_claims_kept_for_the_last_usage_follow_a_change_of_usage():
    """The plan keeps the claims of the last usage it saw; a request with other usage must get its own."""
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, clock=clock)
    decision = eternal_limit(10)
    answers = []
    for delta in (1, 2, 1, 2, 1, 2, 1, 2, 1):
        async with asyncio.timeout(1):  # a denial is answered at once (see the next test)
            result = await limiter.check(SERVICE, app("a"), decision, {"hits": delta})
        answers.append((delta, result.allowed, result.headers.get("RateLimit-Remaining")))
    assert answers == [
        (1, True, "9"),
        (2, True, "7"),
        (1, True, "6"),
        (2, True, "4"),
        (1, True, "3"),
        (2, True, "1"),
        (1, True, "0"),
        (2, False, "0"),
        (1, False, "0"),
    ]
    # usage of another metric has no claim on a plan that limits only hits
    assert (await limiter.check(SERVICE, app("a"), decision, {"orders": 1})) == ALLOWED_UNLIMITED


async def test_one_replica_at_its_limit_denies_at_once_instead_of_waiting_for_its_own_slices():
    """Its own used-but-unsettled units are reserved in the counter too; they are not another replica's
    slice that a flush could give back, so there is nothing to wait for. (The clock never moves here:
    a limiter that waits for a flush waits forever.)"""
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, clock=clock)
    decision = eternal_limit(3)
    for _ in range(3):
        assert (await limiter.check(SERVICE, app("a"), decision, {"hits": 1})).allowed
    async with asyncio.timeout(1):
        denied = await limiter.check(SERVICE, app("a"), decision, {"hits": 1})
    assert not denied.allowed
    assert denied.headers["RateLimit-Remaining"] == "0"


async def test_only_claims_kept_plans_hold_claims_and_the_others_still_count_exactly():
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, claims_kept=2, clock=clock)
    decision = eternal_limit(2)
    for name in ("a", "b", "c"):  # c takes the place of a, the first to keep claims
        assert (await limiter.check(SERVICE, app(name), decision, {"hits": 1})).allowed
    holding = {name for name in "abc" if limiter._plans.get((SERVICE, app(name))).last_claims is not None}
    assert holding == {"b", "c"}
    for name in ("a", "b", "c"):  # a computes its claims again: every app still gets exactly its 2
        assert (await limiter.check(SERVICE, app(name), decision, {"hits": 1})).allowed
        async with asyncio.timeout(1):
            assert not (await limiter.check(SERVICE, app(name), decision, {"hits": 1})).allowed


async def test_a_busy_key_far_from_its_limit_keeps_its_slice_across_a_flush():
    """A grant is a slice of the free headroom (need + free/divisor); a key that keeps being used and is far
    from its limit must keep it through a settlement, or every flush makes its next request wait for a new
    reservation (a Redis call on the request's path). Units the settlement turns into used are gone."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    limiter = Limiter(store, Metrics(), 0.1, clock=clock)
    decision = eternal_limit(1_000_000)
    for _ in range(10):
        assert (await limiter.check(SERVICE, app("a"), decision, {"hits": 1})).allowed
    (key,) = limiter._plans.get((SERVICE, app("a"))).keys
    used, reserved = store.limit_counter(key)
    assert (used, reserved) == (0, 1 + 999_999 // 8)  # one reservation: need + free/8
    await limiter.settle()
    used, reserved = store.limit_counter(key)
    assert used == 10
    assert reserved == 1 + 999_999 // 8 - 10, "the busy, roomy slice was given back at the flush"


async def test_check_now_admits_from_local_slices_and_otherwise_counts_nothing():
    """The quick path's limiter call: an answer only when no wait is needed; None leaves every count as it
    was, so check() afterwards decides exactly as if check_now had never been called."""
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, clock=clock)
    unlimited = AuthDecision(allowed=True, fresh_until=float("inf"), stale_until=float("inf"))
    assert limiter.check_now(SERVICE, app("a"), unlimited, {"hits": 1}) == ALLOWED_UNLIMITED
    roomy = eternal_limit(1000)  # a slice covers many requests
    assert limiter.check_now(SERVICE, app("a"), roomy, {"hits": 1}) is None  # no slice held yet
    assert (await limiter.check(SERVICE, app("a"), roomy, {"hits": 1})).headers["RateLimit-Remaining"] == "999"
    admitted = limiter.check_now(SERVICE, app("a"), roomy, {"hits": 1})
    assert admitted is not None and admitted.allowed and admitted.headers["RateLimit-Remaining"] == "998"
    tight = eternal_limit(1)
    assert (await limiter.check(SERVICE, app("b"), tight, {"hits": 1})).allowed
    assert limiter.check_now(SERVICE, app("b"), tight, {"hits": 1}) is None  # at the limit: check() decides
    async with asyncio.timeout(1):
        denied = await limiter.check(SERVICE, app("b"), tight, {"hits": 1})
    assert not denied.allowed and denied.headers["RateLimit-Remaining"] == "0"


async def test_a_limit_of_zero_disables_its_metric_and_nothing_else():
    """3scale disables a metric with max 0: a request needing it is DISABLED at once (no Redis round trip,
    no waiting for slices), and one that needs only other metrics is not limited by it."""
    from proxy.limits.limiter import DISABLED

    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, clock=clock)
    decision = AuthDecision(
        allowed=True,
        fresh_until=float("inf"),
        stale_until=float("inf"),
        usage_reports=(
            UsageReport("admin", "eternity", None, None, max_value=0, current_value=0),
            UsageReport("hits", "eternity", None, None, max_value=10, current_value=0),
        ),
    )
    assert limiter.check_now(SERVICE, app("a"), decision, {"admin": 1}) == DISABLED
    assert await limiter.check(SERVICE, app("a"), decision, {"admin": 1, "hits": 1}) == DISABLED
    assert (await limiter.check(SERVICE, app("a"), decision, {"hits": 1})).allowed
    assert (await limiter.check(SERVICE, app("a"), decision, {"other": 1})) == ALLOWED_UNLIMITED
