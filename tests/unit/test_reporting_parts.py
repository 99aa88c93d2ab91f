"""The reporting package's parts, one at a time: batch grouping (pure), dead letters, bounded verification
against a real HTTP 3scale stand-in, and the lease heartbeat on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio
from aiohttp import web

from proxy.config import ServiceSettings
from proxy.metrics import Metrics
from proxy.reporting import LeaseLost, ReportFailed
from proxy.reporting.batch import MAX_AGE, Dead, Pending, group, transaction
from proxy.reporting.dead_letters import entry
from proxy.reporting.lease import Lease
from proxy.reporting.verify import Verifier
from proxy.store import RedisStore, usage_field
from proxy.threescale.client import ThreescaleClient
from proxy.threescale.models import AppCredentials, AuthStatus
from tests.support import eventually, free_port

SVC = "2555417777820"
MINUTE = 29_000_000


def test_group_makes_one_transaction_per_minute_and_app_and_remembers_its_fields() -> None:
    a1 = usage_field(MINUTE, "user_key", "hits", "key-a")
    a2 = usage_field(MINUTE, "user_key", "orders", "key-a")
    a3 = usage_field(MINUTE + 1, "user_key", "hits", "key-a")
    b1 = usage_field(MINUTE, "app_id", "hits", "app|with|pipes")
    zero = usage_field(MINUTE, "user_key", "hits", "key-z")
    grouped = group({a1: 2, a2: 1, a3: 5, b1: 7, zero: 0})
    assert grouped.usage == {
        (MINUTE, "user_key", "key-a"): {"hits": 2, "orders": 1},
        (MINUTE + 1, "user_key", "key-a"): {"hits": 5},
        (MINUTE, "app_id", "app|with|pipes"): {"hits": 7},
    }
    assert grouped.fields[(MINUTE, "user_key", "key-a")] == [a1, a2]
    assert grouped.empty == [zero]
    assert grouped.apps() == {("app_id", "app|with|pipes"): ["hits"], ("user_key", "key-a"): ["hits", "orders"]}


def test_split_sends_what_3scale_takes_and_dead_letters_the_rest_with_its_fields() -> None:
    a1 = usage_field(MINUTE, "user_key", "hits", "key-a")
    a2 = usage_field(MINUTE, "user_key", "gone_metric", "key-a")
    b1 = usage_field(MINUTE, "user_key", "hits", "key-b")
    grouped = group({a1: 2, a2: 3, b1: 4})
    send, dead = grouped.split(
        {("user_key", "key-a"): {"gone_metric": "metric_invalid"}, ("user_key", "key-b"): {"*": "user_key_invalid"}}
    )
    assert send == [Pending((MINUTE, "user_key", "key-a"), {"hits": 2}, [a1])]
    assert dead == [
        Dead((MINUTE, "user_key", "key-a"), {"gone_metric": 3}, "metric_invalid", [a2]),
        Dead((MINUTE, "user_key", "key-b"), {"hits": 4}, "user_key_invalid", [b1]),
    ]


def test_a_transaction_older_than_3scale_takes_is_sent_as_now_and_flagged() -> None:
    pending = Pending((MINUTE, "app_id", "app-1"), {"hits": 1}, [])
    fresh, late = transaction(pending, MINUTE * 60 + 30)
    assert not late and fresh.timestamp == datetime.fromtimestamp(MINUTE * 60, UTC)
    assert fresh.credentials == AppCredentials(app_id="app-1") and fresh.usage == {"hits": 1}
    old, late = transaction(pending, MINUTE * 60 + MAX_AGE + 61.5)
    assert late and old.timestamp == datetime.fromtimestamp(MINUTE * 60 + MAX_AGE + 61, UTC)


def test_dead_letters_mask_user_keys_and_show_app_ids() -> None:
    keyed = json.loads(entry(Dead((MINUTE, "user_key", "secret-user-key-123456"), {"hits": 2}, "user_key_invalid", [])))
    assert keyed == {
        "app": "secr…3456",
        "kind": "user_key",
        "minute": MINUTE * 60,
        "usage": {"hits": 2},
        "reason": "user_key_invalid",
    }
    by_id = json.loads(entry(Dead((MINUTE, "app_id", "app-77"), {"hits": 1}, "application_not_found", [])))
    assert by_id["app"] == "app-77"


# ---------------------------------------------------------------------------------- bounded verification

AUTHORIZED = b'<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Basic</plan></status>'


class SlowThreescale:
    """A 3scale stand-in over real HTTP that answers authorize calls in waves of `hold` (the last one may be
    smaller, `total` in all), so concurrent calls really overlap, and records the peak in flight."""

    def __init__(self, answer: tuple[int, bytes] = (200, AUTHORIZED)) -> None:
        self.answer = answer
        self.hold = 1
        self.total = 1
        self.in_flight = 0
        self.peak = 0
        self.apps: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.apps.append(request.query.get("user_key", ""))
        wave_end = min(-(-len(self.apps) // self.hold) * self.hold, self.total)  # monotonic: no re-waiting
        try:
            async with self._arrived:
                self._arrived.notify_all()
                await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.apps) >= wave_end), 5)
        finally:
            self.in_flight -= 1
        return web.Response(status=self.answer[0], body=self.answer[1], content_type="application/xml")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/transactions/authorize.xml", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def slow3scale() -> AsyncIterator[SlowThreescale]:
    server = SlowThreescale()
    await server.start()
    yield server
    await server.stop()


def service() -> ServiceSettings:
    return ServiceSettings(id=SVC, token="svc-token", upstream="http://127.0.0.1:1")


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_verification_asks_about_every_app_at_most_concurrency_at_once(
    slow3scale: SlowThreescale, concurrency: int
) -> None:
    client = ThreescaleClient(f"http://127.0.0.1:{slow3scale.port}", timeout=5)
    seen: list[tuple[str | None, bool]] = []

    async def on_status(_svc: ServiceSettings, creds: AppCredentials, status: AuthStatus) -> None:
        seen.append((creds.user_key, status.authorized))

    try:
        verifier = Verifier(client, Metrics(), concurrency=concurrency, on_status=on_status)
        apps = {("user_key", f"key-{i}"): ["hits"] for i in range(7)}
        slow3scale.hold, slow3scale.total = concurrency, len(apps)
        assert await verifier.verify(service(), apps) == {app: {} for app in apps}
    finally:
        await client.close()
    assert sorted(slow3scale.apps) == sorted(f"key-{i}" for i in range(7))  # each app asked once
    assert slow3scale.peak == concurrency
    assert sorted(seen) == [(f"key-{i}", True) for i in range(7)]  # every fresh answer handed on


async def test_verification_stops_at_an_answer_that_rejects_the_service(slow3scale: SlowThreescale) -> None:
    slow3scale.answer = (
        403,
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<error code="service_token_invalid">service token "x" is invalid</error>',
    )
    client = ThreescaleClient(f"http://127.0.0.1:{slow3scale.port}", timeout=5)
    try:
        verifier = Verifier(client, Metrics(), concurrency=2)
        slow3scale.hold, slow3scale.total = 2, 10
        with pytest.raises(ReportFailed, match="service_token_invalid") as failed:
            await verifier.verify(service(), {("user_key", f"key-{i}"): ["hits"] for i in range(10)})
    finally:
        await client.close()
    assert failed.value.result == "rejected"
    assert len(slow3scale.apps) == 2  # the two in flight; the other eight were never asked
    assert slow3scale.in_flight == 0


# ------------------------------------------------------------------------------------------ the lease


async def test_the_heartbeat_holds_a_batch_past_its_lease_and_a_lost_lease_stops_the_owner(redis_url: str) -> None:
    store = RedisStore(redis_url)
    batches = f"tsp:{{svc:{SVC}}}:batches"
    try:
        await store.add_usage(SVC, "f1", {usage_field(MINUTE, "user_key", "hits", "key-a"): 3})
        lease_s = 0.6
        batch = await store.take_batch(SVC, time.time(), lease_s, "b1", owner="replica-a")
        assert batch is not None
        first_end = await store.client.zscore(batches, "b1")
        async with Lease(store, SVC, batch, lease_s, time.time) as lease:
            # Wait for renewals to carry the lease beyond its first end plus one more lease: time has passed
            # the first end, and no other replica could take the batch meanwhile.
            await eventually(
                lambda: _score_above(store, batches, first_end + lease_s), timeout=5, what="two heartbeats"
            )
            assert time.time() > first_end
            assert await store.take_batch(SVC, time.time(), 30, "b2", owner="replica-b") is None
            await lease.confirm()  # still ours

            await store.client.zadd(batches, {"b1": 0})  # as if this replica had paused for longer than a lease
            taken = await store.take_batch(SVC, time.time(), 30, "b3", owner="replica-b")
            assert taken is not None and taken.id == "b1"
            with pytest.raises(LeaseLost):
                await lease.confirm()
            with pytest.raises(LeaseLost):
                await lease.ack(list(batch.fields))
        assert await store.pending_size(SVC) == 1  # nothing forgotten by the replica that lost the lease
        assert await store.ack(SVC, "b1", "replica-b", list(batch.fields)) is True
    finally:
        await store.close()


async def _score_above(store: RedisStore, key: str, value: float) -> bool:
    score = await store.client.zscore(key, "b1")
    return score is not None and score > value


async def test_an_accepted_chunk_is_acked_through_a_redis_blip_instead_of_being_sent_again(redis_url: str) -> None:
    store = RedisStore(redis_url)
    probe = redis.asyncio.from_url(redis_url)
    try:
        await store.add_usage(SVC, "f1", {usage_field(MINUTE, "user_key", "hits", "key-a"): 3})
        batch = await store.take_batch(SVC, time.time(), 5, "b1", owner="replica-a")
        assert batch is not None
        async with Lease(store, SVC, batch, 5, time.time) as lease:
            await probe.client_pause(1500)  # Redis answers nobody for 1.5 s: the ack's first tries time out
            await lease.ack(list(batch.fields))
            assert not lease.lost
        assert await store.pending_size(SVC) == 0  # recorded: no replica will send it to 3scale again
        assert await store.take_batch(SVC, time.time() + 60, 5, "b2", owner="replica-b") is None
    finally:
        await store.close()
        await probe.aclose()
