"""Authorization decisions (serialisation, TTLs, kinds) and the store's behaviour when Redis is gone."""

import asyncio
from datetime import UTC, datetime

import fakeredis
import pytest

from proxy.authorizer import _seconds_to_reset
from proxy.decisions import AuthDecision
from proxy.redact import scrub_reason
from proxy.store import MemoryStore, RedisStore, StoreUnavailable, auth_key, credentials_digest
from proxy.threescale.models import AppCredentials, UsageReport

MINUTE_END = datetime(2026, 1, 1, 12, 1, tzinfo=UTC)


def test_decision_round_trips_through_json():
    decision = AuthDecision(
        allowed=True,
        fresh_until=10.5,
        stale_until=99.0,
        plan="Basic",
        usage_reports=(
            UsageReport("hits", "minute", datetime(2026, 1, 1, 12, 0, tzinfo=UTC), MINUTE_END, 100, 7),
            UsageReport("hits", "eternity", None, None, 10**6, 5, exceeded=True),
        ),
        hierarchy={"hits": ("orders",)},
    )
    assert AuthDecision.from_json(decision.to_json()) == decision


@pytest.mark.parametrize(
    ("allowed", "code", "kind"),
    [
        (True, None, "allowed"),
        (False, "limits_exceeded", "limits_exceeded"),
        (False, "user_key_invalid", "auth_failed"),
        (False, "application_not_active", "auth_failed"),
        (False, "service_token_invalid", "backend_unavailable"),
        (False, "backend_unavailable", "backend_unavailable"),
    ],
)
def test_decision_kind_picks_the_error_answer(allowed, code, kind):
    assert AuthDecision(allowed=allowed, fresh_until=0, stale_until=0, code=code).kind == kind


def test_limits_denial_is_cached_no_longer_than_the_exceeded_period():
    now = MINUTE_END.timestamp() - 12.5
    exceeded = UsageReport("hits", "minute", None, MINUTE_END, 2, 3, exceeded=True)
    fine = UsageReport("hits", "day", None, datetime(2026, 1, 2, tzinfo=UTC), 100, 3)
    assert _seconds_to_reset((exceeded, fine), now) == pytest.approx(12.5)
    assert _seconds_to_reset((fine,), now) == float("inf")
    assert _seconds_to_reset((exceeded,), MINUTE_END.timestamp() + 5) == 1.0  # never 0 or negative


def test_reasons_lose_the_quoted_key():
    assert scrub_reason('user key "abc123" is invalid') == "user key is invalid"
    assert scrub_reason('application key "k" is invalid') == "application key is invalid"
    assert scrub_reason(None) is None


def test_redis_keys_share_the_service_hash_tag_and_hide_credentials():
    digest = credentials_digest("42", AppCredentials(user_key="secret-key"))
    key = auth_key("42", digest)
    assert key.startswith("tsp:{svc:42}:auth:") and "secret-key" not in key
    # the app key is part of the identity: a wrong key must not share the right key's cache entry
    a = credentials_digest("42", AppCredentials(app_id="a", app_key="right"))
    b = credentials_digest("42", AppCredentials(app_id="a", app_key="wrong"))
    assert len({a, b, credentials_digest("42", AppCredentials(app_id="a"))}) == 3


async def test_memory_store_expires_entries():
    now = [100.0]
    store = MemoryStore(clock=lambda: now[0])
    await store.set("k", b"v", 1.5)
    assert await store.get("k") == b"v"
    now[0] = 101.6
    assert await store.get("k") is None


async def test_redis_store_works_on_a_redis_protocol_server():
    store = RedisStore("redis://unused")
    store._redis = fakeredis.FakeAsyncRedis()  # fast unit check of the command usage; integration uses a real server
    await store.set("k", b"v", 0.5)
    assert await store.get("k") == b"v"
    assert 0 < await store.client.pttl("k") <= 500


async def test_redis_store_opens_its_breaker_after_a_failure():
    accepted = []

    async def hang_up(reader, writer):  # a "Redis" that drops every connection
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.2, retry_after=30)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        assert store.available is False
        attempts = len(accepted)
        assert attempts == 1  # no hidden retries adding latency to a request
        for _ in range(100):
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.get("k")
        assert len(accepted) == attempts  # the breaker made no connection at all
        assert await store.ping() is False  # probes always try
        assert len(accepted) == attempts + 1
    finally:
        await store.close()
        server.close()


async def test_concurrent_flushes_send_each_entry_once():
    from proxy.metrics import Metrics
    from proxy.usage import UsageRecorder

    class SlowStore(MemoryStore):  # every write yields, as a network call would
        async def add_usage(self, service_id, flush_id, fields):
            await asyncio.sleep(0.01)
            await super().add_usage(service_id, flush_id, fields)

    store = SlowStore()
    recorder = UsageRecorder(store, Metrics(), max_entries=1000)
    for i in range(5):
        recorder.add("s", AppCredentials(user_key=f"k{i}"), {"hits": 1}, now=0)
        await asyncio.gather(recorder.flush(), recorder.flush(), recorder.flush())
    batch = await store.take_batch("s", 1.0, 30, "b")
    assert sum(batch.fields.values()) == 5 and recorder.in_memory() == 0


# ------------------------------------------------------------------------------------ the in-process cache


@pytest.fixture
async def authorizer_for(emulator, redis_url):
    """Build Authorizers against the emulator and the real redis-server, with one manual clock."""
    from proxy.authorizer import Authorizer
    from proxy.metrics import Metrics
    from proxy.store import open_store
    from proxy.threescale.client import ThreescaleClient
    from tests.support import ManualClock, proxy_settings

    clock = ManualClock()
    made = []

    def make(**cache):
        settings = proxy_settings(emulator.url, "http://127.0.0.1:9", redis_url, cache=cache)
        client = ThreescaleClient(emulator.url, timeout=1, pool_size=10)
        store = open_store(redis_url)
        authorizer = Authorizer(client, store, settings.cache, Metrics(), clock=clock)
        made.append((authorizer, client, store))
        return authorizer, settings.services[0], clock

    yield make
    for authorizer, client, store in made:
        await authorizer.close()
        await client.close()
        await store.close()


async def test_a_flood_of_bad_keys_leaves_the_good_keys_cached(emulator, redis_server, authorizer_for):
    from tests.support import SERVICE_ID

    authorizer, service, _ = authorizer_for(local_max_entries=20)  # the negative segment defaults to 20 // 10
    good = [AppCredentials(user_key=f"good-key-{i:02}-0123456789") for i in range(10)]
    for creds in good:
        emulator.add_application(SERVICE_ID, {"user_key": creds.user_key, "plan": "basic"})
        assert (await authorizer.authorize(service, creds)).decision.allowed
    bad = [AppCredentials(user_key=f"random-bad-key-{i:04}") for i in range(200)]  # 10 × local_max_entries
    for creds in bad:
        result = await authorizer.authorize(service, creds)
        assert (result.layer, result.decision.code) == ("backend", "user_key_invalid")
    assert emulator.call_count("authorize") == 210
    redis_server.flush()  # the shared layer forgets too (a restart without persistence): only L1 is left

    results = [await authorizer.authorize(service, creds) for creds in good]
    assert [(r.layer, r.decision.allowed) for r in results] == [("local", True)] * 10
    assert emulator.call_count("authorize") == 210  # no 3scale call for a good key
    # the bad keys share a segment of 2: the last two are still cached, the others are asked again
    assert [(await authorizer.authorize(service, creds)).layer for creds in bad[-2:]] == ["local", "local"]
    assert (await authorizer.authorize(service, bad[0])).layer == "backend"
    assert emulator.call_count("authorize") == 211


@pytest.mark.parametrize("mode", ["strict", "resilient"])
async def test_the_first_answer_after_an_outage_ends_it_for_every_key(emulator, authorizer_for, mode):
    from tests.support import KEY, OTHER_KEY

    authorizer, service, clock = authorizer_for(mode=mode, local_ttl=2)
    a, b = AppCredentials(user_key=KEY), AppCredentials(user_key=OTHER_KEY)
    await emulator.set_down("error")
    first = await authorizer.authorize(service, a)
    clock.advance(1.5)
    second = await authorizer.authorize(service, b)
    assert [(r.layer, r.decision.kind) for r in (first, second)] == [("fallback", "backend_unavailable")] * 2
    await emulator.set_down(None)
    clock.advance(0.6)  # A's 503 is due for a retry (2 s); B's would be cached for 1.4 s more
    assert (await authorizer.authorize(service, a)).layer == "backend"  # 3scale is back
    result = await authorizer.authorize(service, b)
    assert (result.layer, result.decision.allowed) == ("backend", True)
    assert emulator.call_count("authorize") == 4  # A and B in the outage, then each once more
    assert (await authorizer.authorize(service, b)).layer == "local"  # and cached again from here


async def test_allowed_now_serves_only_a_fresh_allowing_local_decision(emulator, authorizer_for):
    """The quick path's authorizer call: no wait, ever; a local hit is counted only when it is served."""
    from tests.support import KEY, SERVICE_ID

    authorizer, service, clock = authorizer_for(local_ttl=5, ttl=60)
    good, bad = AppCredentials(user_key=KEY), AppCredentials(user_key="random-bad-key-0001")
    metrics = authorizer._metrics

    def local_hits() -> float:
        metrics.flush()
        return metrics.auth_cache.labels(SERVICE_ID, "local", "hit")._value.get()

    assert authorizer.allowed_now(service, good) is None  # nothing cached: authorize() asks
    assert (await authorizer.authorize(service, good)).layer == "backend"
    assert not (await authorizer.authorize(service, bad)).decision.allowed
    decision = authorizer.allowed_now(service, good)
    assert decision is not None and decision.allowed
    assert authorizer.allowed_now(service, bad) is None  # a cached denial is authorize()'s to answer
    assert local_hits() == 1
    clock.advance(61)  # past the decision's ttl: not served from here any more
    assert authorizer.allowed_now(service, good) is None
    assert local_hits() == 1 and emulator.call_count("authorize") == 2
