"""Batched reporting and limits between syncs, with proxies in this process on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import aiohttp
import pytest

from proxy.emulator import Emulator
from proxy.reporting import ReportFailed
from tests.support import (
    KEY,
    OTHER_KEY,
    SERVICE_ID,
    ManualClock,
    RedisServer,
    emulator_config,
    eventually,
    free_port,
    metric_value,
    minute_start_clock,
    proxy_settings,
    reported_totals,
)


def url(proxy, path: str = "/x") -> str:
    return f"http://127.0.0.1:{proxy.port}{path}"


@pytest.fixture
async def limited_emulator():
    """A plan of 5 hits a minute (and orders, a child of hits)."""
    emu = Emulator(emulator_config({"hits": {"minute": 5, "day": 1000}}))
    await emu.start()
    yield emu
    await emu.stop()


async def get(http, proxy, path="/x", key=KEY):
    async with http.get(url(proxy, path), headers={"x-api-key": key}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_a_single_replica_stops_at_the_limit_with_headers(limited_emulator, upstream, make_proxy, http):
    clock = limited_emulator.clock = minute_start_clock()  # 1 s into a minute: the test stays inside it
    proxy = await make_proxy(proxy_settings(limited_emulator.url, upstream.url), clock=clock)
    results = [await get(http, proxy) for _ in range(7)]
    assert [status for status, _, _ in results] == [200] * 5 + [429] * 2
    allowed_headers = results[0][1]
    assert allowed_headers["RateLimit-Limit"] == "5"  # the minute limit is the tightest
    assert allowed_headers["RateLimit-Reset"] == "59"  # the minute ends 59 s from now
    assert [int(h["RateLimit-Remaining"]) for _, h, _ in results[:5]] == [4, 3, 2, 1, 0]
    _, headers, body = results[5]
    assert json.loads(body) == {"error": "limits_exceeded", "message": "Usage limit exceeded"}
    assert headers["RateLimit-Remaining"] == "0" and headers["RateLimit-Limit"] == "5"
    assert headers["Retry-After"] == headers["RateLimit-Reset"] == "59"
    assert len(upstream.received) == 5
    await proxy.report_now()
    assert reported_totals(limited_emulator) == {"hits": 5}  # denied requests are not counted
    assert len(limited_emulator.calls_to("authorize")) == 2  # the first miss and the report's re-authorization


async def test_a_child_metric_counts_against_its_parents_limit(limited_emulator, upstream, make_proxy, http):
    clock = limited_emulator.clock = minute_start_clock()
    proxy = await make_proxy(proxy_settings(limited_emulator.url, upstream.url), clock=clock)
    # GET /v1/orders/{id} maps to hits 1 + orders 1 (orders is a child of hits: 3scale adds it to hits)
    statuses = [(await get(http, proxy, "/v1/orders/1"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    await proxy.report_now()
    assert reported_totals(limited_emulator) == {"hits": 2, "orders": 2}
    assert limited_emulator.usage(SERVICE_ID, KEY, "hits", "minute") == 4  # what 3scale itself counts


async def test_three_replicas_admit_exactly_the_limit(upstream, make_proxy, redis_url):
    emu = Emulator(emulator_config({"hits": {"minute": 100}}))
    clock = emu.clock = minute_start_clock()  # one clock for the three replicas and 3scale: one minute
    await emu.start()
    try:
        replicas = [await make_proxy(proxy_settings(emu.url, upstream.url, redis_url), clock=clock) for _ in range(3)]
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> tuple[int, dict[str, str]]:
                async with session.get(url(replicas[i % 3]), headers={"x-api-key": KEY}) as resp:
                    await resp.read()
                    return resp.status, dict(resp.headers)

            results = await asyncio.gather(*(one(i) for i in range(150)))
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: 100, 429: 50}
        for status, headers in results:
            assert headers["RateLimit-Limit"] == "100" and int(headers["RateLimit-Remaining"]) >= 0
            assert headers["RateLimit-Reset"] == "59"
            if status == 429:
                assert headers["RateLimit-Remaining"] == "0" and headers["Retry-After"] == headers["RateLimit-Reset"]
        for proxy in replicas:
            await proxy.flush()
        await replicas[0].report_now()
        assert reported_totals(emu) == {"hits": 100}
        assert emu.usage(SERVICE_ID, KEY, "hits", "minute") == 100
    finally:
        await emu.stop()


async def test_deleted_application_is_dead_lettered_and_the_rest_reported(upstream, make_proxy, http, redis_url):
    emu = Emulator(emulator_config())
    emu.add_application(SERVICE_ID, {"user_key": "third-key-0000000000", "plan": "basic"})
    await emu.start()
    try:
        proxy = await make_proxy(proxy_settings(emu.url, upstream.url, redis_url))
        for key, n in ((KEY, 3), (OTHER_KEY, 2), ("third-key-0000000000", 4)):
            for _ in range(n):
                assert (await get(http, proxy, "/v1/orders/9", key))[0] == 200
        emu.delete_application(SERVICE_ID, OTHER_KEY)
        await proxy.report_now()
        assert reported_totals(emu, KEY) == {"hits": 3, "orders": 3}
        assert reported_totals(emu, "third-key-0000000000") == {"hits": 4, "orders": 4}
        assert reported_totals(emu, OTHER_KEY) == {}
        assert emu.report_errors(SERVICE_ID) == []  # nothing 3scale would have dropped a batch for
        dead = [json.loads(e) for e in await proxy.store.dead_letters(SERVICE_ID)]
        assert [(d["reason"], d["usage"]) for d in dead] == [("user_key_invalid", {"hits": 2, "orders": 2})]
        assert OTHER_KEY not in json.dumps(dead)  # the key is masked
        metrics = proxy.metrics.render().decode()
        assert metric_value(metrics, "threescale_proxy_reports_total", service=SERVICE_ID, result="dead_letter") == 1
        assert await proxy.store.pending_size(SERVICE_ID) == 0
    finally:
        await emu.stop()


async def test_usage_counted_while_3scale_is_down_is_reported_once_after(
    emulator, upstream, make_proxy, http, redis_url
):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    assert (await get(http, proxy))[0] == 200  # cached from now on
    await emulator.set_down("error")
    for _ in range(9):
        assert (await get(http, proxy))[0] == 200
    with pytest.raises(ReportFailed, match="unavailable"):
        await proxy.report_now()
    calls = len(emulator.calls)
    await proxy.report_now()  # the batch waits in flight for its backoff: nothing is sent twice meanwhile
    assert len(emulator.calls) == calls and reported_totals(emulator) == {}
    assert proxy.metrics.usage_pending._value.get() >= 1
    await emulator.set_down(None)
    (batch_id,) = await _only_batch(proxy)
    owner = (await proxy.store.client.hget(f"tsp:{{svc:{SERVICE_ID}}}:owners", batch_id)).decode()
    await proxy.store.renew(SERVICE_ID, batch_id, owner, time.time() - 1)  # as if the lease ended
    await proxy.report_now()
    assert reported_totals(emulator) == {"hits": 10}
    assert proxy.metrics.usage_pending._value.get() == 0
    await proxy.report_now()
    assert reported_totals(emulator) == {"hits": 10}
    metrics = proxy.metrics.render().decode()
    assert metric_value(metrics, "threescale_proxy_reports_total", service=SERVICE_ID, result="failed") == 1


async def _only_batch(proxy) -> tuple[str]:
    ids = await proxy.store.client.zrange(f"tsp:{{svc:{SERVICE_ID}}}:batches", 0, -1)
    assert len(ids) == 1
    return (ids[0].decode(),)


async def test_a_dead_replicas_batch_is_taken_over_after_the_lease(emulator, upstream, make_proxy, http, redis_url):
    clock = emulator.clock = ManualClock()
    settings = proxy_settings(emulator.url, upstream.url, redis_url, report={"lease": 3})
    first = await make_proxy(settings, clock=clock)
    for _ in range(4):
        assert (await get(http, first))[0] == 200
    await first.flush()
    taken = await first.store.take_batch(SERVICE_ID, clock(), 3, "dead-replica")  # taken, never reported
    assert taken is not None and sum(taken.fields.values()) == 4
    second = await make_proxy(settings, clock=clock)
    await second.report_now()
    assert reported_totals(emulator) == {}  # still leased
    clock.advance(2.9)
    await second.report_now()
    assert reported_totals(emulator) == {}  # still leased, just before its end
    clock.advance(0.2)  # past the lease
    await second.report_now()
    assert reported_totals(emulator) == {"hits": 4}


async def test_posts_hold_at_most_max_batch_transactions_with_minute_timestamps(
    emulator, upstream, make_proxy, http, redis_url
):
    keys = [f"batch-key-{i:02d}-abcdefgh" for i in range(7)]
    for key in keys:
        emulator.add_application(SERVICE_ID, {"user_key": key, "plan": "basic"})
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url, report={"max_batch": 3}))
    started = time.time()
    for key in keys:
        assert (await get(http, proxy, key=key))[0] == 200
    await proxy.report_now()
    posts = emulator.calls_to("report")
    sizes = sorted(len({k.split("]")[0] for k, _ in c.params if k.startswith("transactions[")}) for c in posts)
    assert sizes == [1, 3, 3]
    assert reported_totals(emulator) == {"hits": 7}
    for entry in emulator.reported:
        stamp = entry["timestamp"]
        stamp = stamp if isinstance(stamp, float | int) else stamp.timestamp()
        assert stamp % 60 == 0 and started - 60 < stamp <= time.time()


async def test_redis_outage_keeps_usage_in_memory_then_delivers_it_once(tmp_path, emulator, upstream, make_proxy, http):
    redis = RedisServer(free_port(), tmp_path, durable=True)  # an outage, not data loss
    redis.start()
    try:
        proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis.url))
        assert (await get(http, proxy))[0] == 200
        redis.kill()
        for _ in range(20):
            assert (await get(http, proxy))[0] == 200
        assert await proxy.flush() is False  # a flush fails while Redis is down
        assert proxy.usage.in_memory() >= 1  # and the usage stays in memory
        redis.start()
        await eventually(lambda: proxy.usage.in_memory() == 0, what="the flush loop delivering the usage in memory")
        await proxy.report_now()
        assert reported_totals(emulator) == {"hits": 21}
    finally:
        redis.kill()


async def test_report_goes_straight_to_3scale_from_memory_when_redis_is_down_at_shutdown(
    tmp_path, emulator, upstream, http
):
    from proxy.app import ProxyServer

    redis = RedisServer(free_port(), tmp_path)
    redis.start()
    proxy = ProxyServer(proxy_settings(emulator.url, upstream.url, redis.url))
    await proxy.start()
    try:
        redis.kill()  # before any usage reached it: all of it is in this process's memory
        for _ in range(6):
            assert (await get(http, proxy))[0] == 200
        assert await proxy.flush() is False  # Redis is down: the usage cannot leave this process's memory
        assert proxy.usage.in_memory() >= 1
    finally:
        await proxy.stop()
        redis.kill()
    assert reported_totals(emulator) == {"hits": 6}


async def test_a_slice_held_by_an_idle_replica_is_not_lost(upstream, make_proxy, http, redis_url):
    emu = Emulator(emulator_config({"hits": {"minute": 20}}))
    clock = emu.clock = minute_start_clock()
    await emu.start()
    try:
        a = await make_proxy(proxy_settings(emu.url, upstream.url, redis_url), clock=clock)
        b = await make_proxy(proxy_settings(emu.url, upstream.url, redis_url), clock=clock)
        assert (await get(http, a))[0] == 200  # A reserves a slice (1 + 19 // 8) and keeps the rest unused
        statuses = Counter([(await get(http, b))[0] for _ in range(25)])
        assert statuses == {200: 19, 429: 6}  # B still gets all that A did not use: 20 in total
    finally:
        await emu.stop()
