"""APIcast's answers for the same configuration, end to end: mapping on the path as APIcast sees it,
credentials as APIcast reads them, and what reached 3scale (the emulator)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import KEY, SERVICE_ID, proxy_settings, reported_totals

pytestmark = pytest.mark.asyncio

RULES = [
    {"method": "GET", "pattern": "/foo%20/bar$", "metric": "orders", "delta": 1},
    {"method": "GET", "pattern": "/v1/public", "metric": "hits", "delta": 1},
    {"method": "GET", "pattern": "/v1/expensive", "metric": "orders", "delta": 5},
]


def url(proxy, target: str) -> str:
    return f"http://127.0.0.1:{proxy.port}{target}"


async def raw_get(proxy, target: str, headers: str = f"x-api-key: {KEY}\r\n") -> tuple[int, bytes]:
    """One request with the target exactly as written (no client normalizes it), then the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_rules_match_the_path_as_apicast_sees_it(emulator, upstream, make_proxy):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"mapping_rules": RULES}))
    assert (await raw_get(proxy, "/foo%20/bar"))[0] == 200  # t/apicast-mapping-rules.t, TEST 6
    assert (await raw_get(proxy, "/foo%20/bar%0A"))[0] == 404  # `$` is the end, not a newline before it
    assert (await raw_get(proxy, "/v1/public/../expensive"))[0] == 200  # billed as what it reaches
    assert (await raw_get(proxy, "//v1///public"))[0] == 200
    await proxy.report_now()
    assert reported_totals(emulator, KEY) == {"orders": 6, "hits": 1}  # as sent: 3scale adds children to parents


async def test_a_path_nginx_refuses_is_400_and_reaches_nobody(emulator, upstream, make_proxy):
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"mapping_rules": RULES}))
    for target in ("/v1/../../etc", "/v1/a%zz"):
        status, body = await raw_get(proxy, target)
        assert status == 400 and b'"error": "bad_request"' in body, target
    assert upstream.received == [] and emulator.calls_to("authorize") == []


async def test_bearer_and_empty_credentials_as_apicast_reads_them(emulator, upstream, make_proxy):
    service = {"credentials": {"location": "authorization"}}
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service=service))
    assert (await raw_get(proxy, "/x", f"Authorization: Bearer {KEY}\r\n"))[0] == 200
    assert (await raw_get(proxy, "/x", "Authorization: bearer whatever\r\n"))[0] == 401  # scheme as written
    status, _ = await raw_get(proxy, "/x", "Authorization: Bearer\r\n")  # empty: 3scale's 403, not our 401
    assert status == 403
    sent = [dict(call.params).get("user_key") for call in emulator.calls_to("authorize")]
    assert sent == [KEY, ""]
    await proxy.report_now()
    assert reported_totals(emulator, KEY, service_id=SERVICE_ID) == {"hits": 1}


async def test_a_metric_disabled_in_the_plan_is_403_and_limits_nothing_else(upstream, make_proxy, http):
    """3scale disables a metric with a limit of 0; APIcast answers its 409 with the generic 403 (proxy.lua:
    "limit_max == 0 ... disabled metric"), and requests for other metrics go on."""
    from proxy.emulator.server import Emulator
    from tests.support import emulator_config

    config = emulator_config({"hits": {"day": 1_000_000}, "admin": {"eternity": 0}})
    config["services"][0]["metrics"]["admin"] = {}
    emulator = Emulator(config)
    await emulator.start()
    try:
        rules = [
            {"method": "ANY", "pattern": "/admin", "metric": "admin", "delta": 1, "last": True},
            {"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1},
        ]
        proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"mapping_rules": rules}))
        answers = []
        for path in ("/x", "/admin", "/x", "/admin/users", "/y"):
            async with http.get(url(proxy, path), headers={"x-api-key": KEY}) as resp:
                answers.append((path, resp.status, (await resp.json()).get("error")))
        assert answers == [
            ("/x", 200, None),
            ("/admin", 403, "auth_failed"),
            ("/x", 200, None),
            ("/admin/users", 403, "auth_failed"),
            ("/y", 200, None),
        ]
        assert [r.get("path") for r in upstream.received] == ["/x", "/x", "/y"]
        await proxy.report_now()
        assert reported_totals(emulator, KEY) == {"hits": 3}
    finally:
        await emulator.stop()


async def test_a_metric_disabled_after_it_was_used_denies_only_itself(upstream, make_proxy, http):
    """Its stored value is over 0, so 3scale answers an authorize without usage with 409 limits_exceeded on
    it alone: that is no reason to deny the application's other metrics."""
    from proxy.emulator.server import Emulator
    from proxy.threescale import AppCredentials, ThreescaleClient, Transaction
    from tests.support import TOKEN, emulator_config

    config = emulator_config({"hits": {"day": 1_000_000}, "admin": {"eternity": 0}})
    config["services"][0]["metrics"]["admin"] = {}
    emulator = Emulator(config)
    await emulator.start()
    try:
        async with ThreescaleClient(emulator.url) as client:  # used before the plan disabled it
            await client.report(SERVICE_ID, TOKEN, [Transaction(AppCredentials(user_key=KEY), {"admin": 5})])
        rules = [
            {"method": "ANY", "pattern": "/admin", "metric": "admin", "delta": 1, "last": True},
            {"method": "ANY", "pattern": "/", "metric": "hits", "delta": 1},
        ]
        proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"mapping_rules": rules}))
        statuses = []
        for path in ("/x", "/admin", "/y"):
            async with http.get(url(proxy, path), headers={"x-api-key": KEY}) as resp:
                statuses.append((path, resp.status))
        assert statuses == [("/x", 200), ("/admin", 403), ("/y", 200)]
        assert len(emulator.calls_to("authorize")) == 1
    finally:
        await emulator.stop()


async def test_an_error_with_a_content_type_is_answered_as_apicast_answers_it(emulator, upstream, make_proxy, http):
    """From the portal every error has its text and Content-Type (error_headers_*): the body is the text."""
    errors = {
        "auth_missing": {"status": 403, "message": "no key, no entry", "content_type": "text/plain; charset=us-ascii"}
    }
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url, service={"errors": errors}))
    async with http.get(url(proxy, "/x")) as resp:
        assert resp.status == 403 and resp.headers["Content-Type"] == "text/plain; charset=us-ascii"
        assert await resp.read() == b"no key, no entry"
    async with http.get(url(proxy, "/x"), headers={"x-api-key": "unknown-key-000"}) as resp:
        assert resp.status == 403 and resp.headers["Content-Type"].startswith("application/json")  # not configured
