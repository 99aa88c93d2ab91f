"""Shutdown within its deadline with a slow 3scale, and the flush's two steps guarded apart (issue 7, defects 5-6)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from proxy.app import ProxyServer
from proxy.emulator import Emulator
from proxy.store import RedisStore, StoreUnavailable, parse_usage_field
from proxy.store.base import batch_key, batches_key, pending_key
from tests.support import KEY, OTHER_KEY, SERVICE_ID, emulator_config, eventually, proxy_settings, reported_totals


async def hits_in_redis(url: str, service_id: str = SERVICE_ID) -> int:
    """Hits waiting in the shared buffer: pending plus every in-flight batch."""
    client = aioredis.from_url(url)
    try:
        hashes = [pending_key(service_id)]
        hashes += [batch_key(service_id, b.decode()) for b in await client.zrange(batches_key(service_id), 0, -1)]
        total = 0
        for key in hashes:
            for name, delta in (await client.hgetall(key)).items():
                if parse_usage_field(name.decode())[2] == "hits":
                    total += int(delta)
        return total
    finally:
        await client.aclose()


async def test_stop_ends_within_its_timeout_with_a_slow_3scale_and_keeps_the_usage_in_redis(
    emulator, upstream, redis_url, http
):
    settings = proxy_settings(
        emulator.url,
        upstream.url,
        redis_url,
        threescale={"timeout": 3},
        report={"interval": 0.2, "lease": 30},
        shutdown={"drain_delay": 0, "timeout": 3},
    )
    proxy = ProxyServer(settings)
    await proxy.start()
    emulator.delay = 2.5  # healthy but slow: every call answers, just late
    base = f"http://127.0.0.1:{proxy.port}/x"

    async def get(key: str) -> int:
        async with http.get(base, headers={"x-api-key": key}) as resp:
            return resp.status

    assert await asyncio.gather(get(KEY), get(OTHER_KEY)) == [200, 200]
    assert [await get(k) for k in [KEY, OTHER_KEY] * 4] == [200] * 8  # cached: no 3scale call

    async def reporter_is_busy() -> bool:  # a batch in flight: the reporter is re-authorizing its apps
        client = aioredis.from_url(redis_url)
        try:
            return bool(await client.zcard(batches_key(SERVICE_ID)))
        finally:
            await client.aclose()

    await eventually(reporter_is_busy, what="a report round in progress")
    assert [await get(KEY) for _ in range(3)] == [200] * 3  # counted in memory while the round is running

    started = time.monotonic()
    await proxy.stop()
    elapsed = time.monotonic() - started
    assert elapsed <= settings.shutdown.timeout + 0.25, f"stop took {elapsed:.2f}s"
    # nothing reached 3scale (every call was still waiting), and every served hit is in Redis for a survivor
    assert reported_totals(emulator) == {}
    assert await hits_in_redis(redis_url) == 13


class _AddUsageFails(RedisStore):
    """Redis whose usage writes fail (a poisoned key, an error answer) while limit settlements work."""

    async def add_usage(self, service_id: str, flush_id: str, fields: dict[str, int]) -> None:
        raise StoreUnavailable("add_usage refused")


async def test_a_failed_usage_flush_still_settles_limits(emulator, upstream, http, redis_url):
    proxy = ProxyServer(proxy_settings(emulator.url, upstream.url, redis_url))
    store = _AddUsageFails(redis_url)
    proxy.store = proxy.usage._store = proxy.limiter._store = store
    await proxy.start()
    client = aioredis.from_url(redis_url)
    try:
        async with http.get(f"http://127.0.0.1:{proxy.port}/x", headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
        assert await proxy.flush() is False  # the usage write failed: the usage waits in memory
        assert proxy.usage.in_memory() == 1
        (counter,) = await client.keys("tsp:{svc:" + SERVICE_ID + "}:lim:*")
        # ...and the limit counter got its settlement all the same: 1 used (the busy slice is kept)...
        fields = await client.hgetall(counter)
        assert fields[b"u"] == b"1" and int(fields[b"r"]) > 0
        # ...and at the next flush, with the usage write still failing, the now idle slice goes back
        assert await proxy.flush() is False
        assert await client.hgetall(counter) == {b"u": b"1", b"r": b"0"}
    finally:
        await proxy.stop()
        await client.aclose()


async def test_stop_gives_every_reserved_limit_slice_back(upstream, redis_url, http):
    """A slice of a limit held by a replica that stops would stay reserved until its window ends."""
    emu = Emulator(emulator_config({"hits": {"day": 1000}}))
    await emu.start()
    settings = proxy_settings(
        emu.url,
        upstream.url,
        redis_url,
        report={"flush_to_redis_ms": 60_000},  # no flush between the requests and stop()
        shutdown={"drain_delay": 0, "timeout": 5},
    )
    proxy = ProxyServer(settings)
    await proxy.start()
    try:
        for _ in range(20):  # a slice of 1 + 999 // 8 = 125, busy: a routine settle would keep 105 reserved
            async with http.get(f"http://127.0.0.1:{proxy.port}/x", headers={"x-api-key": KEY}) as resp:
                assert resp.status == 200
    finally:
        await proxy.stop()
        await emu.stop()
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(f"tsp:{{svc:{SERVICE_ID}}}:lim:*")]
        assert len(keys) == 1  # the plan's one limit: hits per day
        counter = {k.decode(): int(v) for k, v in (await client.hgetall(keys[0])).items()}
    finally:
        await client.aclose()
    assert counter == {"u": 20, "r": 0}
