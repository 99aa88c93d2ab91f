"""The whole request path on real sockets: proxy, emulator (3scale), upstream, and redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

import aiohttp
import pytest
from yarl import URL

from tests.support import KEY, OTHER_KEY, SERVICE_ID, ManualClock, eventually, proxy_settings, reported_totals

pytestmark = pytest.mark.asyncio


def url(proxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.port}{path}"


def admin(proxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.metrics_port}{path}"


async def test_valid_key_reaches_upstream_with_body_and_headers_intact(emulator, upstream, make_proxy, http, redis_url):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    body = b"\x00binary\xffpayload" * 1000
    async with http.post(
        URL(url(proxy, "/v1/things?a=1&b=%2F"), encoded=True),
        data=body,
        headers={
            "x-api-key": KEY,
            "X-Amzn-Trace-Id": "Root=1-abc",
            "X-Forwarded-For": "203.0.113.7",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "must-not-pass",
            "X-Custom": "kept",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "yes"
        assert "Connection" not in resp.headers or resp.headers["Connection"].lower() == "keep-alive"
        got = await resp.json()
    assert got["method"] == "POST"
    assert got["raw_path"] == "/v1/things?a=1&b=%2F"
    assert got["body_size"] == len(body) and got["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert "x-api-key" not in headers  # strip_credentials
    assert "x-hop" not in headers  # named in Connection: hop-by-hop
    assert headers["x-custom"] == "kept"
    assert headers["x-amzn-trace-id"] == "Root=1-abc"
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert len(emulator.calls_to("authorize")) == 1
    await proxy.report_now()
    assert reported_totals(emulator) == {"hits": 1}


async def test_headers_the_upstream_names_in_connection_stop_at_the_proxy(
    emulator, upstream, make_proxy, http, redis_url
):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    async with http.get(url(proxy, "/hop"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "yes" and "X-Internal" not in resp.headers
        assert len(resp.headers.getall("Date")) == 1
        assert int(resp.headers["Content-Length"]) == len(await resp.read())


async def test_cached_key_makes_no_call_but_upstream(emulator, upstream, make_proxy, http, redis_url):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    for _ in range(20):
        async with http.get(url(proxy, "/v1/orders/7"), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
    assert len(emulator.calls_to("authorize")) == 1
    assert len(upstream.received) == 20
    await proxy.report_now()
    assert reported_totals(emulator, KEY) == {"hits": 20, "orders": 20}


async def test_shared_cache_serves_a_second_replica_without_3scale(emulator, upstream, make_proxy, http, redis_url):
    first = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    second = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    async with http.get(url(first, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    async with http.get(url(second, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    assert len(emulator.calls_to("authorize")) == 1
    metrics = await (await http.get(admin(second, "/metrics"))).text()
    assert f'threescale_proxy_auth_cache_total{{layer="redis",result="hit",service="{SERVICE_ID}"}} 1.0' in metrics


async def test_unknown_key_is_403_and_cached_negatively(emulator, upstream, make_proxy, http, redis_url):
    clock = ManualClock()
    proxy = await make_proxy(
        proxy_settings(emulator.url, upstream.url, redis_url, cache={"negative_ttl": 1}), clock=clock
    )
    for _ in range(5):
        async with http.get(url(proxy, "/x"), headers={"x-api-key": "no-such-key-123456"}) as resp:
            assert resp.status == 403
            body = await resp.json()
    assert body == {
        "error": "auth_failed",
        "message": "Authentication failed",
        "reason": "user_key_invalid",
        "detail": "user key is invalid",
    }
    assert len(emulator.calls_to("authorize")) == 1
    assert upstream.received == []
    clock.advance(1.1)  # past negative_ttl: 3scale is asked again
    async with http.get(url(proxy, "/x"), headers={"x-api-key": "no-such-key-123456"}) as resp:
        assert resp.status == 403
    assert len(emulator.calls_to("authorize")) == 2


async def test_missing_key_is_401_and_unmatched_path_is_404(emulator, upstream, make_proxy, http):
    settings = proxy_settings(
        emulator.url, upstream.url, service={"mapping_rules": [{"pattern": "/v1/", "metric": "hits"}]}
    )
    proxy = await make_proxy(settings)
    async with http.get(url(proxy, "/v1/x")) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "auth_missing", "message": "Authentication parameters missing"}
    async with http.get(url(proxy, "/v2/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no_match", "message": "No mapping rule matched"}
        assert resp.content_type == "application/json"
    assert emulator.calls_to("authorize") == [] and upstream.received == []


async def test_error_answers_are_configurable_per_service(emulator, upstream, make_proxy, http):
    settings = proxy_settings(
        emulator.url,
        upstream.url,
        service={
            "errors": {"auth_missing": {"status": 403, "message": "Key required"}, "auth_failed": {"status": 401}}
        },
    )
    proxy = await make_proxy(settings)
    async with http.get(url(proxy, "/x")) as resp:
        assert resp.status == 403 and (await resp.json())["message"] == "Key required"
    async with http.get(url(proxy, "/x"), headers={"x-api-key": "wrong-key-000000"}) as resp:
        assert resp.status == 401 and (await resp.json())["message"] == "Authentication failed"


async def test_app_id_and_app_key_in_query_are_checked_and_stripped(upstream, make_proxy, http):
    from proxy.emulator import Emulator

    emu = Emulator(
        {
            "services": [
                {
                    "id": SERVICE_ID,
                    "token": "t",
                    "backend_version": 2,
                    "metrics": {"hits": {}},
                    "plans": {"p": {}},
                    "applications": [{"app_id": "app1", "app_keys": ["sec1"], "plan": "p"}],
                }
            ]
        }
    )
    await emu.start()
    try:
        settings = proxy_settings(
            emu.url,
            upstream.url,
            service={"token": "t", "credentials": {"location": "query", "app_id": "app_id", "app_key": "app_key"}},
        )
        proxy = await make_proxy(settings)
        async with http.get(url(proxy, "/p?app_id=app1&app_key=sec1&x=1")) as resp:
            assert resp.status == 200
            assert (await resp.json())["raw_path"] == "/p?x=1"
        async with http.get(url(proxy, "/p?app_id=app1&app_key=wrong")) as resp:
            assert resp.status == 403
            assert (await resp.json())["reason"] == "application_key_invalid"
        async with http.get(url(proxy, "/p?app_key=sec1")) as resp:
            assert resp.status == 401
        params = [dict(c.params) for c in emu.calls_to("authorize")]
        assert [(p.get("app_id"), p.get("app_key")) for p in params] == [("app1", "sec1"), ("app1", "wrong")]
        assert all(p["service_token"] == "t" and p["service_id"] == SERVICE_ID for p in params)
    finally:
        await emu.stop()


async def test_thousand_concurrent_requests_with_a_new_key_cause_one_authorize(
    emulator, upstream, make_proxy, redis_url
):
    emulator.delay = 0.2  # every request arrives while the one 3scale call is still in flight
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, redis_url))
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(url(proxy, "/x"), headers={"x-api-key": OTHER_KEY}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(1000)))
    assert statuses.count(200) == 1000
    assert len(emulator.calls_to("authorize")) == 1
    await proxy.report_now()
    assert reported_totals(emulator, OTHER_KEY) == {"hits": 1000}


async def test_resilient_serves_known_keys_and_denies_unknown_when_3scale_is_down(
    emulator, upstream, make_proxy, http, redis_url
):
    clock = ManualClock()
    settings = proxy_settings(emulator.url, upstream.url, redis_url, cache={"ttl": 1, "local_ttl": 0.5})
    proxy = await make_proxy(settings, clock=clock)
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    await emulator.set_down("refuse")
    clock.advance(1.1)  # the authorization is now expired
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    async with http.get(url(proxy, "/x"), headers={"x-api-key": OTHER_KEY}) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "backend_unavailable"
    # a restarted replica with an empty local cache still serves the key from Redis
    fresh = await make_proxy(settings, clock=clock)
    async with http.get(url(fresh, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    assert len(upstream.received) == 3


async def test_strict_denies_expired_and_unknown_keys_when_3scale_is_down(emulator, upstream, make_proxy, http):
    clock = ManualClock()
    proxy = await make_proxy(
        proxy_settings(emulator.url, upstream.url, cache={"mode": "strict", "ttl": 1, "local_ttl": 0.5}), clock=clock
    )
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
    await emulator.set_down("error")  # 503 from 3scale
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200  # still fresh
    clock.advance(1.1)
    for key in (KEY, OTHER_KEY):
        async with http.get(url(proxy, "/x"), headers={"x-api-key": key}) as resp:
            assert resp.status == 503
    assert len(upstream.received) == 2


async def test_allow_mode_lets_requests_through_and_counts_usage_when_3scale_is_down(
    emulator, upstream, make_proxy, http
):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, cache={"mode": "allow"}))
    await emulator.set_down("refuse")
    async with http.get(url(proxy, "/x"), headers={"x-api-key": "never-seen-key-42"}) as resp:
        assert resp.status == 200
    await proxy.flush()
    batch = await proxy.store.take_batch(SERVICE_ID, time.time(), 30, "b1")  # counted, to be reported later
    assert batch is not None and sum(batch.fields.values()) == 1


async def test_3scale_answers_slowly_beyond_timeout_counts_as_down(emulator, upstream, make_proxy, http):
    emulator.delay = 2.0  # the proxy's 3scale timeout is 1 s
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, cache={"mode": "strict"}))
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 503
    metrics = await (await http.get(admin(proxy, "/metrics"))).text()
    assert 'threescale_proxy_backend_requests_total{endpoint="authorize",status="timeout"} 1.0' in metrics


async def test_redis_killed_mid_run(tmp_path, emulator, upstream, make_proxy, http):
    from tests.support import RedisServer, free_port

    redis = RedisServer(free_port(), tmp_path)
    redis.start()
    clock = ManualClock()
    try:
        proxy = await make_proxy(
            proxy_settings(emulator.url, upstream.url, redis.url, cache={"local_ttl": 0.2}),
            probe_interval=0.2,
            clock=clock,
        )
        async with http.get(admin(proxy, "/readyz")) as resp:
            assert resp.status == 200 and (await resp.json())["redis"] == "up"
        async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
        redis.kill()
        clock.advance(0.5)  # past local_ttl: hits start background re-reads of the (dead) Redis
        for _ in range(10):  # cached key: from the local layer
            async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
                assert resp.status == 200
        async with http.get(url(proxy, "/x"), headers={"x-api-key": OTHER_KEY}) as resp:
            assert resp.status == 200  # new key: straight to 3scale
        assert len(emulator.calls_to("authorize")) == 2

        async def readyz() -> tuple[int, dict[str, str]]:
            async with http.get(admin(proxy, "/readyz")) as resp:
                return resp.status, await resp.json()

        down = (200, {"status": "degraded", "redis": "down", "threescale": "up"})
        await eventually(lambda: _is(readyz(), down), what="readiness reporting Redis down")
        redis.start()
        up = (200, {"status": "ok", "redis": "up", "threescale": "up"})
        await eventually(lambda: _is(readyz(), up), what="readiness reporting Redis back")
    finally:
        redis.kill()


async def test_upstream_refused_is_502_and_slow_is_504(emulator, upstream, make_proxy, http):
    from tests.support import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(proxy_settings(emulator.url, dead))
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["error"] == "bad_gateway" and "cannot reach the upstream" in body["message"]
    slow = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"upstream_timeout": 0.3}))
    async with http.get(url(slow, "/slow?seconds=3"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 504
        body = await resp.json()
        assert body == {"error": "upstream_timeout", "message": "no response from the upstream within 0.3s"}
    metrics = await (await http.get(admin(slow, "/metrics"))).text()
    assert 'threescale_proxy_errors_total{kind="upstream_timeout"} 1.0' in metrics


async def test_upstream_status_and_large_download_stream_through(emulator, upstream, make_proxy, http):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url))
    async with http.delete(url(proxy, "/status/418"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 418 and (await resp.json())["method"] == "DELETE"
    async with http.get(url(proxy, "/download?mb=20"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and resp.content_length == 20 * 1024 * 1024
        total = 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            total += len(chunk)
    assert total == 20 * 1024 * 1024
    async with http.get(url(proxy, "/chunked?parts=50"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.text() == "".join(f"part{i};" for i in range(50))
    async with http.head(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_an_answer_carries_one_date_header_the_upstreams_when_it_sent_one(emulator, upstream, make_proxy, http):
    """Date is a singleton field (RFC 9110): the upstream's is passed on and ours added only when it has
    none, for answers read whole, streamed and chunked alike; the proxy's own answers carry ours."""
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url))
    for path in ("/x", "/download?mb=1", "/chunked?parts=3"):
        async with http.get(url(proxy, path), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
            assert len(resp.headers.getall("Date")) == 1, (path, resp.headers.getall("Date"))
            await resp.read()
    async with http.get(url(proxy, "/x")) as resp:  # no key: our own 401
        assert resp.status == 401 and len(resp.headers.getall("Date")) == 1


async def test_client_disconnect_cancels_the_upstream_call(emulator, upstream, make_proxy):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"upstream_timeout": 10}))
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /slow?seconds=5 HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
    await writer.drain()
    await eventually(lambda: upstream.received, what="the request reaching the upstream")
    writer.close()
    await eventually(lambda: upstream.cancelled, what="the upstream seeing the proxy drop its connection")
    assert upstream.cancelled == ["/slow"]
    line = f'threescale_proxy_requests_total{{method="GET",service="{SERVICE_ID}",stage="",status="499"}} 1.0'
    await eventually(lambda: line in proxy.metrics.render().decode(), what="the 499 in the metrics")


async def test_no_service_for_host_is_404(emulator, upstream, make_proxy, http):
    settings = proxy_settings(emulator.url, upstream.url, service={"match": {"host": "api.example.com"}})
    proxy = await make_proxy(settings)
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY, "Host": "other.example.com"}) as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "no_service"
    async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY, "Host": "api.example.com"}) as resp:
        assert resp.status == 200


async def test_metrics_health_and_access_log(emulator, upstream, make_proxy, http, caplog):
    settings = proxy_settings(emulator.url, upstream.url, log={"access_log": True})
    proxy = await make_proxy(settings)
    with caplog.at_level(logging.INFO, logger="threescale_proxy.access"):
        async with http.get(
            url(proxy, "/v1/orders/1"),
            headers={
                "x-api-key": KEY,
                "X-Amzn-Trace-Id": "Root=1-t",
                "x-apigw-stage": "prod",
                "x-apigw-source-ip": "198.51.100.4",
                "x-apigw-api-key-id": "abc123keyid",
                "x-apigw-request-id": "req-1",
            },
        ) as resp:
            assert resp.status == 200
    record = [r for r in caplog.records if r.name == "threescale_proxy.access"][-1]
    fields = record.fields
    assert fields["service"] == SERVICE_ID and fields["status"] == 200 and fields["method"] == "GET"
    assert fields["path"] == "/v1/orders/1" and fields["key"] == "vali…6789" and fields["cache"] == "backend"
    assert fields["trace_id"] == "Root=1-t" and fields["request_id"] == "req-1" and fields["stage"] == "prod"
    assert fields["client"] == "198.51.100.4" and fields["api_key_id"] == "abc123keyid"
    forwarded = {k.lower(): v for k, v in upstream.received[-1]["headers"].items()}
    assert forwarded["x-forwarded-for"] == "198.51.100.4, 127.0.0.1" and forwarded["x-apigw-request-id"] == "req-1"
    assert fields["total_ms"] >= fields["upstream_ms"] > 0
    assert KEY not in json.dumps(fields)
    async with http.get(admin(proxy, "/healthz")) as resp:
        assert resp.status == 200
    async with http.get(admin(proxy, "/metrics")) as resp:
        text = await resp.text()
    assert (
        f'threescale_proxy_requests_total{{method="GET",service="{SERVICE_ID}",stage="prod",status="200"}} 1.0' in text
    )
    assert 'threescale_proxy_backend_requests_total{endpoint="authorize",status="200"} 1.0' in text
    assert "threescale_proxy_upstream_duration_seconds_count 1.0" in text
    assert "threescale_proxy_request_duration_seconds_count 1.0" in text
    assert KEY not in text


async def test_readyz_is_503_while_draining(emulator, upstream, make_proxy, http):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url))
    async with http.get(admin(proxy, "/readyz")) as resp:
        assert resp.status == 200 and (await resp.json())["redis"] == "memory"
    proxy.health.phase = "draining"
    async with http.get(admin(proxy, "/readyz")) as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "draining"


async def test_application_over_its_limit_in_3scale_gets_429(upstream, make_proxy, http):
    from proxy.emulator import Emulator
    from proxy.threescale import AppCredentials, ThreescaleClient, Transaction
    from tests.support import TOKEN, emulator_config

    emu = Emulator(emulator_config({"hits": {"minute": 2}}))
    await emu.start()
    try:
        async with ThreescaleClient(emu.url) as client:  # another gateway used the app beyond its plan
            await client.report(SERVICE_ID, TOKEN, [Transaction(AppCredentials(user_key=KEY), {"hits": 3})])
        proxy = await make_proxy(proxy_settings(emu.url, upstream.url))
        for _ in range(3):
            async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
                assert resp.status == 429
                body = await resp.json()
        assert body == {
            "error": "limits_exceeded",
            "message": "Usage limit exceeded",
            "reason": "limits_exceeded",
            "detail": "usage limits are exceeded",
        }
        assert len(emu.calls_to("authorize")) == 1  # the denial is cached (until the minute ends at most)
        async with http.get(url(proxy, "/x"), headers={"x-api-key": OTHER_KEY}) as resp:
            assert resp.status == 200
        metrics = proxy.metrics.render().decode()
        assert f'threescale_proxy_limited_total{{reason="backend",service="{SERVICE_ID}"}} 3.0' in metrics
        assert upstream.received and all(r["headers"].get("x-api-key") is None for r in upstream.received)
    finally:
        await emu.stop()


async def test_a_rejected_service_token_is_503_not_the_callers_fault(emulator, upstream, make_proxy, http, caplog):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"token": "wrong-token"}))
    with caplog.at_level(logging.ERROR):
        async with http.get(url(proxy, "/x"), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 503
            body = await resp.json()
    assert body["error"] == "backend_unavailable" and body["reason"] == "service_token_invalid"
    assert "wrong-token" not in json.dumps(body)
    assert any(getattr(r, "fields", {}).get("code") == "service_token_invalid" for r in caplog.records)
    assert 'threescale_proxy_errors_total{kind="backend_config"} 1.0' in proxy.metrics.render().decode()
    assert upstream.received == []


async def test_malformed_requests_get_clear_4xx_answers(emulator, upstream, make_proxy, http):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(body) == {
        "error": "auth_failed",
        "message": "Authentication failed",
        "reason": "credentials_malformed",
    }
    assert emulator.calls_to("authorize") == []
    long_query = "a=" + "b" * 9000  # API Gateway passes request lines up to 10 KiB
    async with http.get(url(proxy, f"/x?{long_query}"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and (await resp.json())["raw_path"] == f"/x?{long_query}"
    async with http.get(URL(url(proxy, "/x?a=%ff%fe&%zz=1"), encoded=True), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and (await resp.json())["raw_path"] == "/x?a=%ff%fe&%zz=1"


async def _is(answer, expected) -> bool:
    return await answer == expected
