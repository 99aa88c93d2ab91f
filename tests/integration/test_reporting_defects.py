"""Issue 7, defects 1 and 2: reporting under a slow 3scale and with a broken tenant, on a real redis-server.

1. Three replicas share one buffer while 3scale is slow: what 3scale accepts must equal exactly what was served.
2. A service whose report fails (a revoked token) must not keep the other services' usage from 3scale.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from proxy import components
from proxy.emulator import Emulator
from tests.support import (
    KEY,
    SERVICE_ID,
    TOKEN,
    ManualClock,
    emulator_config,
    eventually,
    metric_value,
    proxy_settings,
    reported_totals,
)

APPS = [f"slow-app-{i:02d}-abcdefghij" for i in range(6)]


async def get(http: Any, proxy: Any, key: str, host: str | None = None) -> int:
    headers = {"x-api-key": key, **({"Host": host} if host else {})}
    async with http.get(f"http://127.0.0.1:{proxy.port}/x", headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize(
    "report",
    [
        {"lease": 2.5},  # the case: 6 apps × 0.5 s authorize > 2.5 s lease with sequential verification
        {"lease": 2.5, "verify_concurrency": 1},  # still sequential: only the lease heartbeat keeps B off it
    ],
    ids=["default-concurrency", "sequential-verify"],
)
async def test_three_replicas_under_a_slow_3scale_report_each_hit_once(
    emulator, upstream, make_proxy, http, redis_url, report
):
    for app in APPS:
        emulator.add_application(SERVICE_ID, {"user_key": app, "plan": "basic"})
    settings = proxy_settings(emulator.url, upstream.url, redis_url, report={"interval": 60, **report})
    a, b, c = [await make_proxy(settings) for _ in range(3)]  # three replicas on one Redis
    for app in APPS:
        assert await get(http, a, app) == 200
    served = len(APPS)
    await a.flush()
    emulator.delay = 0.5  # healthy but slow: every authorize and report takes 0.5 s

    first = asyncio.create_task(a.reporter.report_all())
    batches = f"tsp:{{svc:{SERVICE_ID}}}:batches"
    await eventually(lambda: a.store.client.zcard(batches), what="A taking the batch")
    while not first.done():  # B and C run their rounds meanwhile, as their report loops would
        await asyncio.gather(b.reporter.report_all(), c.reporter.report_all())
        await asyncio.wait([first], timeout=0.25)
    await first
    await asyncio.gather(b.reporter.report_all(), c.reporter.report_all())  # and one more after A is done

    assert reported_totals(emulator) == {"hits": served}
    assert all(reported_totals(emulator, app) == {"hits": 1} for app in APPS)
    assert len(emulator.calls_to("report")) == 1  # one POST: nobody else sent the batch
    assert await a.store.pending_size(SERVICE_ID) == 0


# ------------------------------------------------------------------------------------------- defect 2

OTHER_SERVICE = "2555417777999"
OTHER_TOKEN = "svc-token-other"
OTHER_APP = "second-tenant-key-0001"


def two_services_emulator_config() -> dict[str, Any]:
    config = emulator_config()
    other = copy.deepcopy(config["services"][0])
    other.update(id=OTHER_SERVICE, token=OTHER_TOKEN, applications=[{"user_key": OTHER_APP, "plan": "basic"}])
    config["services"].append(other)
    return config


def two_services_settings(backend: str, upstream: str, redis_url: str, first_token: str) -> Any:
    rules = [{"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1}]
    services = [
        {"id": SERVICE_ID, "token": first_token, "upstream": upstream, "mapping_rules": rules,
         "match": {"host": "first.example"}},
        {"id": OTHER_SERVICE, "token": OTHER_TOKEN, "upstream": upstream, "mapping_rules": rules,
         "match": {"host": "second.example"}},
    ]  # fmt: skip
    return proxy_settings(backend, upstream, redis_url, services=services)


async def buffered_hits(proxy: Any, service_id: str) -> int:
    """Usage still in the shared buffer for a service: pending plus every in-flight batch."""
    client = proxy.store.client
    tag = "tsp:{svc:" + service_id + "}"
    keys = [f"{tag}:pending"] + [f"{tag}:batch:{b.decode()}" for b in await client.zrange(f"{tag}:batches", 0, -1)]
    total = 0
    for key in keys:
        total += sum(int(v) for v in (await client.hgetall(key)).values())
    return total


async def test_a_service_with_a_revoked_token_does_not_keep_the_next_one_from_3scale(
    upstream, make_proxy, http, redis_url
):
    emu = Emulator(two_services_emulator_config())
    await emu.start()
    revoked = None
    try:
        serving = await make_proxy(two_services_settings(emu.url, upstream.url, redis_url, TOKEN))
        for _ in range(3):
            assert await get(http, serving, KEY, "first.example") == 200
        for _ in range(4):
            assert await get(http, serving, OTHER_APP, "second.example") == 200
        await serving.flush()
        # A replica still configured with the first service's old (revoked) token reports the shared buffer.
        # Its parts only, so that no report loop of its own runs beside the round under test.
        revoked = components.build(two_services_settings(emu.url, upstream.url, redis_url, "revoked-token"))
        failures = await revoked.reporter.report_all()
        assert [f.result for f in failures] == ["rejected"]

        assert reported_totals(emu, service_id=OTHER_SERVICE) == {"hits": 4}  # in the same round
        assert reported_totals(emu, service_id=SERVICE_ID) == {}
        assert await buffered_hits(revoked, OTHER_SERVICE) == 0
        assert await buffered_hits(revoked, SERVICE_ID) == 3  # kept for a later round, never lost
        metrics = revoked.metrics.render().decode()
        assert metric_value(metrics, "threescale_proxy_reports_total", service=OTHER_SERVICE, result="ok") == 1
        assert metric_value(metrics, "threescale_proxy_reports_total", service=SERVICE_ID, result="rejected") == 1
        assert metric_value(metrics, "threescale_proxy_reports_total", service=OTHER_SERVICE, result="rejected") is None
        assert metric_value(metrics, "threescale_proxy_reports_total", service=SERVICE_ID, result="ok") is None
    finally:
        if revoked is not None:
            await revoked.client.close()
            await revoked.store.close()
        await emu.stop()


def authorizes_for(emu: Emulator, service_id: str) -> int:
    return sum(1 for call in emu.calls_to("authorize") if ("service_id", service_id) in call.params)


async def test_a_failing_service_backs_off_on_its_own_clock_while_the_others_report_every_round(
    upstream, make_proxy, http, redis_url
):
    emu = Emulator(two_services_emulator_config())
    await emu.start()
    clock = ManualClock()
    revoked = None
    try:
        serving = await make_proxy(two_services_settings(emu.url, upstream.url, redis_url, TOKEN))
        settings = two_services_settings(emu.url, upstream.url, redis_url, "revoked-token")
        revoked = components.build(settings, clock=clock)
        for expected in (1, 2):
            assert await get(http, serving, KEY, "first.example") == 200
            assert await get(http, serving, OTHER_APP, "second.example") == 200
            await serving.flush()
            emu.reset_calls()
            failures = await revoked.reporter.report_all()
            assert reported_totals(emu, service_id=OTHER_SERVICE) == {"hits": expected}  # every round
            if expected == 1:
                assert [f.result for f in failures] == ["rejected"] and authorizes_for(emu, SERVICE_ID) == 1
            else:  # backing off: not even asked
                assert failures == [] and authorizes_for(emu, SERVICE_ID) == 0
        backoff = min(settings.report.backoff_max, settings.report.interval * 2)  # interval × 2^failures, capped
        clock.advance(backoff - 1)
        assert await revoked.reporter.report_all() == [] and authorizes_for(emu, SERVICE_ID) == 0
        clock.advance(1)
        # The held batch is retried now; the newer pending usage waits for the next batch, not lost either way.
        failures = await revoked.reporter.report_all()
        assert [f.result for f in failures] == ["rejected"] and authorizes_for(emu, SERVICE_ID) == 1
        assert await buffered_hits(revoked, SERVICE_ID) == 2
        metrics = revoked.metrics.render().decode()
        assert metric_value(metrics, "threescale_proxy_reports_total", service=SERVICE_ID, result="rejected") == 2
        assert metric_value(metrics, "threescale_proxy_reports_total", service=OTHER_SERVICE, result="ok") == 2
    finally:
        if revoked is not None:
            await revoked.client.close()
            await revoked.store.close()
        await emu.stop()
