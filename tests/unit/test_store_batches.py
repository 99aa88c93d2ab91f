"""The usage buffer's batches and the limit counters, as one contract for memory:// and a real redis-server.

Issue 7: a batch's lease belongs to one owner (renew and ack fail once another replica took it over), a new
batch takes a bounded number of fields, memory:// limit counters expire like Redis keys, and the Redis pool
is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from proxy.store import LimitClaim, MemoryStore, RedisStore, Settlement, Store, usage_field
from tests.support import ManualClock

SVC = "2555417777820"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=ManualClock(1000.0))
        return
    redis_store = RedisStore(request.getfixturevalue("redis_url"))
    yield redis_store
    await redis_store.close()


def fields(n: int, app: str = "app") -> dict[str, int]:
    return {usage_field(29_000_000 + i, "user_key", "hits", app): i + 1 for i in range(n)}


async def test_a_new_batch_takes_at_most_max_fields_and_the_rest_stays_pending(store: Store) -> None:
    pending = fields(1200)
    await store.add_usage(SVC, "f1", pending)
    taken: dict[str, int] = {}
    sizes = []
    for n in range(4):
        batch = await store.take_batch(SVC, 1000.0, 30, f"b{n}", max_fields=500)
        if batch is None:
            break
        sizes.append(len(batch.fields))
        assert not taken.keys() & batch.fields.keys()  # no field in two batches
        taken.update(batch.fields)
    assert sorted(sizes) == [200, 500, 500]
    assert taken == pending  # every field once, with its delta
    assert await store.pending_size(SVC) == 1200  # all in flight now, none lost


async def test_only_the_owner_renews_and_acks_and_a_takeover_changes_the_owner(store: Store) -> None:
    await store.add_usage(SVC, "f1", fields(3))
    mine = await store.take_batch(SVC, 1000.0, 30, "b1", owner="replica-a")
    assert mine is not None and mine.owner == "replica-a"
    assert await store.renew(SVC, "b1", "replica-a", 1060.0) is True
    assert await store.take_batch(SVC, 1059.0, 30, "b2", owner="replica-b") is None  # still leased to A
    assert await store.renew(SVC, "b1", "replica-b", 2000.0) is False  # B cannot extend A's lease

    theirs = await store.take_batch(SVC, 1061.0, 30, "b3", owner="replica-b")  # A's lease ended: taken over
    assert theirs is not None and theirs.id == "b1" and theirs.owner == "replica-b"
    assert theirs.fields == mine.fields
    first = next(iter(mine.fields))
    assert await store.renew(SVC, "b1", "replica-a", 1100.0) is False  # A has lost it
    assert await store.ack(SVC, "b1", "replica-a", [first]) is False  # and forgets nothing
    assert await store.pending_size(SVC) == 3

    assert await store.ack(SVC, "b1", "replica-b", list(theirs.fields)) is True
    assert await store.pending_size(SVC) == 0
    assert await store.renew(SVC, "b1", "replica-b", 1200.0) is False  # gone once empty
    assert await store.take_batch(SVC, 5000.0, 30, "b4", owner="replica-c") is None


async def test_an_empty_ack_clears_a_batch_whose_fields_are_gone(store: Store) -> None:
    await store.add_usage(SVC, "f1", fields(2))
    batch = await store.take_batch(SVC, 1000.0, 30, "b1")
    assert batch is not None and batch.owner == "b1"  # no owner named: the batch id is the owner token
    assert await store.ack(SVC, "b1", "b1", list(batch.fields)) is True
    assert await store.take_batch(SVC, 2000.0, 30, "b2") is None


async def test_memory_limit_counters_expire_like_redis_keys() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore(clock=clock)
    claim = LimitClaim(key="lim-a", base=0, max=10, need=1, ttl=60)
    reservation = await store.reserve([claim], divisor=1)
    assert reservation.granted == (10,)
    await store.settle(SVC, "s1", [Settlement("lim-a", used=4, release=6, ttl=60)])
    assert store.limit_counter("lim-a") == (4, 0)
    clock.advance(59)
    assert store.limit_counter("lim-a") == (4, 0)
    clock.advance(2)
    assert store.limit_counter("lim-a") is None  # the window and its grace are over
    assert (await store.reserve([claim], divisor=1)).granted == (10,)  # a fresh counter, not the old one


async def test_memory_store_sweeps_expired_counters_so_memory_does_not_only_grow() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore(clock=clock)
    for i in range(3000):
        await store.reserve([LimitClaim(key=f"lim-{i}", base=0, max=5, need=1, ttl=60)], divisor=1)
    assert len(store) == 3000
    clock.advance(61)
    await store.reserve([LimitClaim(key="lim-new", base=0, max=5, need=1, ttl=60)], divisor=1)
    store.sweep()
    assert len(store) == 1


async def test_redis_pool_is_bounded_and_a_burst_waits_for_a_connection(redis_url: str) -> None:
    probe = redis.asyncio.from_url(redis_url)
    before = len(await probe.client_list())
    store = RedisStore(redis_url, max_connections=2)
    try:
        results = await asyncio.gather(*(store.set(f"k{i}", b"v", 10) for i in range(50)))
        assert results == [None] * 50
        assert all([await store.get(f"k{i}") == b"v" for i in range(50)])
        assert len(await probe.client_list()) - before == 2  # 50 concurrent calls, two connections
        assert await store.ping() is True  # ping has a connection of its own, never waits behind calls
    finally:
        await store.close()
        await probe.aclose()


async def test_memory_store_bounds_cached_values_and_limit_counters_keeping_held_slices() -> None:
    store = MemoryStore(clock=ManualClock(1000.0), max_values=2)
    for i in range(5):
        await store.set(f"v{i}", b"x", 300)
    assert [await store.get(f"v{i}") for i in range(5)] == [None, None, None, b"x", b"x"]
    held = LimitClaim(key="held", base=0, max=100, need=1, ttl=3600)
    assert (await store.reserve([held], divisor=8)).granted == (13,)
    for i in range(10):  # 2 counters per cached value: 4 in all
        claim = LimitClaim(key=f"lim-{i}", base=0, max=5, need=1, ttl=3600)
        await store.reserve([claim], divisor=1)
        await store.settle(SVC, f"s{i}", [Settlement(claim.key, used=1, release=4, ttl=3600)])
    assert len(store) == 2 + 4
    assert store.limit_counter("held") == (0, 13)  # a slice someone holds is never evicted
    assert store.limit_counter("lim-0") is None and store.limit_counter("lim-9") == (1, 0)
