"""Services and mapping rules from the 3scale admin portal (the emulator's portal endpoints), as APIcast's
remote_v2 loader reads them: paginated, hot-reloaded, kept in Redis, overridden from YAML."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import settings_from_dict
from proxy.emulator.server import Emulator
from tests.support import KEY, OTHER_KEY, SERVICE_ID, TOKEN, eventually, metric_value, reported_totals

pytestmark = pytest.mark.asyncio

PORTAL_TOKEN = "portal-access-token-123"


def portal_config(upstream_url: str, extra_services: int = 0) -> dict[str, Any]:
    """The emulator's config: one service with applications and a proxy config, and `extra_services` more."""
    services = [
        {
            "id": SERVICE_ID,
            "token": TOKEN,
            "backend_version": 1,
            "metrics": {"hits": {}, "orders": {"parent": "hits"}},
            "plans": {"basic": {"limits": {"hits": {"day": 1_000_000}}}},
            "applications": [{"user_key": KEY, "plan": "basic"}, {"user_key": OTHER_KEY, "plan": "basic"}],
            "proxy": {
                "hosts": ["api.example.com"],
                "api_backend": "https://private.example.com:443",
                "credentials_location": "headers",
                "auth_user_key": "x-api-key",
                "proxy_rules": [
                    {"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": 1, "position": 1},
                ],
            },
        }
    ]
    for i in range(extra_services):
        sid = str(10_000 + i)
        services.append(
            {
                "id": sid,
                "token": f"token-{sid}",
                "backend_version": 1,
                "metrics": {"hits": {}},
                "plans": {"p": {}},
                "applications": [{"user_key": f"key-of-{sid}-0123", "plan": "p"}],
                "proxy": {"hosts": [f"s{sid}.example.com"], "api_backend": upstream_url},
            }
        )
    return {"services": services, "portal": {"access_token": PORTAL_TOKEN}}


def proxy_raw(emulator: Emulator, upstream_url: str, redis_url: str = "memory://", **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "redis_url": redis_url,
        "threescale": {
            "backend_url": emulator.url,
            "timeout": 1,
            "portal_endpoint": emulator.url.replace("http://", f"http://{PORTAL_TOKEN}@"),
            "environment": "production",
            "config_refresh": 3600,
        },
        # in a sidecar the upstream is the app beside the proxy, not the portal's api_backend
        "services": [{"id": SERVICE_ID, "upstream": upstream_url}],
        "log": {"access_log": False},
        "report": {"interval": 60, "flush_to_redis_ms": 100, "lease": 5},
        "shutdown": {"drain_delay": 0, "timeout": 10},
    }
    raw.update(extra)
    return raw


@pytest.fixture
async def portal_emulator(upstream):
    emu = Emulator(portal_config(upstream.url))
    await emu.start()
    yield emu
    await emu.stop()


async def get(http, proxy, path, host="api.example.com", key=KEY) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{proxy.port}{path}", headers={"Host": host, "x-api-key": key}) as resp:
        return resp.status, await resp.text()


async def test_services_and_rules_come_from_the_portal_with_the_yaml_override(
    portal_emulator, upstream, make_proxy, http
):
    proxy = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url), env={}))
    assert (await get(http, proxy, "/anything"))[0] == 200
    assert upstream.received[-1]["path"] == "/anything"  # the YAML's upstream, not the portal's api_backend
    assert (await get(http, proxy, "/anything", host="other.example.com"))[0] == 404  # hosts route
    (call,) = [c for c in portal_emulator.calls_to("authorize")]
    assert dict(call.params)["service_token"] == TOKEN  # the portal's backend_authentication_value
    async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["config"] == "portal" and body["config_age_seconds"] < 60
    await proxy.report_now()
    assert reported_totals(portal_emulator, KEY) == {"hits": 1}


async def test_a_rule_added_changed_and_removed_takes_effect_on_reload_with_requests_in_flight(
    portal_emulator, upstream, make_proxy, http
):
    proxy = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url), env={}))
    rules = portal_emulator.portal.proxy(SERVICE_ID)["proxy_rules"]
    orders = {"http_method": "GET", "pattern": "/slow", "metric_system_name": "orders", "delta": 3, "position": 0}

    async def slow() -> int:
        return (await get(http, proxy, "/slow?seconds=0.5"))[0]

    proxy_obj = portal_emulator.portal.proxy(SERVICE_ID)
    proxy_obj["proxy_rules"] = [orders, *rules]  # added
    portal_emulator.portal.set_proxy(SERVICE_ID, proxy_obj)
    assert await proxy.reload_config()
    in_flight = asyncio.create_task(slow())
    await eventually(lambda: any(r["path"] == "/slow" for r in upstream.received), what="the slow request upstream")
    proxy_obj["proxy_rules"] = [{**orders, "delta": 5}]  # changed, and "/" removed, while /slow is under way
    portal_emulator.portal.set_proxy(SERVICE_ID, proxy_obj)
    assert await proxy.reload_config()
    assert await in_flight == 200
    assert (await get(http, proxy, "/slow?seconds=0"))[0] == 200
    assert await get(http, proxy, "/other") == (404, "No Mapping Rule matched")  # "/" is gone: porta's answer
    await proxy.report_now()
    assert reported_totals(portal_emulator, KEY) == {"orders": 3 + 5, "hits": 1}  # the first /slow matched "/" too


async def test_a_portal_that_is_down_or_answers_garbage_keeps_the_last_good_configuration(
    portal_emulator, upstream, make_proxy, http
):
    proxy = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url), env={}))
    for fault in ("error", "garbage", "shapeless"):
        portal_emulator.portal.fault = fault
        assert not await proxy.reload_config()
        assert (await get(http, proxy, "/x"))[0] == 200
    portal_emulator.portal.fault = None
    broken = portal_emulator.portal.proxy(SERVICE_ID)
    broken["proxy_rules"] = [{"http_method": "GET", "pattern": "/a(b", "metric_system_name": "hits"}]
    portal_emulator.portal.set_proxy(SERVICE_ID, broken)
    assert await proxy.reload_config()  # applied, but the service does not validate: it keeps its last good rules
    assert (await get(http, proxy, "/x"))[0] == 200
    text = proxy.metrics.render().decode()
    assert metric_value(text, "threescale_proxy_config_reloads_total", result="failed") == 3
    assert metric_value(text, "threescale_proxy_config_reloads_total", result="partial") == 1
    assert metric_value(text, "threescale_proxy_config_reloads_total", result="ok") == 1


async def test_one_service_that_does_not_validate_holds_no_other_back(upstream, make_proxy, http):
    """A rule typo in one service: the others' changes apply, it keeps its last good settings, and a new service
    that does not validate stays out; with nothing servable at all the last good configuration stays."""
    emu = Emulator(portal_config(upstream.url, extra_services=1))
    await emu.start()
    try:
        proxy = await make_proxy(settings_from_dict(proxy_raw(emu, upstream.url), env={}))
        other, other_key = "10000", "key-of-10000-0123"
        assert (await get(http, proxy, f"/v1?user_key={other_key}", host="s10000.example.com"))[0] == 200
        broken = emu.portal.proxy(SERVICE_ID)
        broken["proxy_rules"] = [{"http_method": "GET", "pattern": "/a(b", "metric_system_name": "hits"}]
        emu.portal.set_proxy(SERVICE_ID, broken)
        changed = emu.portal.proxy(other)
        changed["proxy_rules"] = [{"http_method": "GET", "pattern": "/v2", "metric_system_name": "hits", "delta": 1}]
        emu.portal.set_proxy(other, changed)
        assert await proxy.reload_config()
        assert (await get(http, proxy, "/x"))[0] == 200  # the broken one: its last good rules
        assert (await get(http, proxy, f"/v1?user_key={other_key}", host="s10000.example.com"))[0] == 404
        assert (await get(http, proxy, f"/v2?user_key={other_key}", host="s10000.example.com"))[0] == 200
        text = proxy.metrics.render().decode()
        assert metric_value(text, "threescale_proxy_config_reloads_total", result="partial") == 1
        for sid in (SERVICE_ID, other):  # now neither can even be converted: both keep their last good settings
            bad = emu.portal.proxy(sid)
            bad["credentials_location"] = "cookie"
            emu.portal.set_proxy(sid, bad)
        assert await proxy.reload_config()
        assert (await get(http, proxy, f"/v2?user_key={other_key}", host="s10000.example.com"))[0] == 200
        assert (await get(http, proxy, "/x"))[0] == 200
        text = proxy.metrics.render().decode()
        assert metric_value(text, "threescale_proxy_config_reloads_total", result="partial") == 2
        # a replica that starts now has no last good settings: nothing can be served, and it says so
        fresh = await make_proxy(settings_from_dict(proxy_raw(emu, upstream.url), env={}))
        async with http.get(f"http://127.0.0.1:{fresh.metrics_port}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["status"] == "no_configuration"
        text = fresh.metrics.render().decode()
        assert metric_value(text, "threescale_proxy_config_reloads_total", result="invalid") == 1
    finally:
        await emu.stop()


async def test_a_replica_that_starts_while_the_portal_is_down_serves_the_config_kept_in_redis(
    portal_emulator, upstream, make_proxy, http, redis_url
):
    first = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url, redis_url), env={}))
    assert (await get(http, first, "/x"))[0] == 200
    portal_emulator.portal.fault = "error"
    second = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url, redis_url), env={}))
    assert (await get(http, second, "/x"))[0] == 200
    async with http.get(f"http://127.0.0.1:{second.metrics_port}/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["config"] == "redis"


async def test_with_no_portal_and_no_copy_readiness_says_so(portal_emulator, upstream, make_proxy, http):
    portal_emulator.portal.fault = "error"
    raw = proxy_raw(portal_emulator, upstream.url)
    raw["services"] = []
    proxy = await make_proxy(settings_from_dict(raw, env={}))
    async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "no_configuration"
    assert (await get(http, proxy, "/x"))[0] == 404
    portal_emulator.portal.fault = None
    assert await proxy.reload_config()
    async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz") as resp:
        assert resp.status == 200


async def test_more_than_one_page_of_proxy_configs_is_read(upstream, make_proxy, http):
    emu = Emulator(portal_config(upstream.url, extra_services=520))
    await emu.start()
    try:
        proxy = await make_proxy(settings_from_dict(proxy_raw(emu, upstream.url), env={}))
        assert proxy.pipeline.service_count == 521
        # porta's defaults for a service whose proxy says nothing of credentials: user_key in the query
        assert (await get(http, proxy, "/x?user_key=key-of-10519-0123", host="s10519.example.com"))[0] == 200
        assert (await get(http, proxy, "/x", host="s10519.example.com"))[0] == 403  # porta's auth_missing: 403
        pages = [(path, query.get("page"), query.get("per_page")) for path, query in emu.portal.requests]
        endpoint = "/admin/api/account/proxy_configs/production.json"
        assert pages == [(endpoint, "1", "500"), (endpoint, "2", "500")]
    finally:
        await emu.stop()


async def test_the_token_goes_as_apicast_sends_it_and_a_wrong_one_is_refused(portal_emulator, upstream, make_proxy):
    from proxy.portal.client import PortalClient, PortalError

    good = PortalClient(portal_emulator.url.replace("http://", f"http://{PORTAL_TOKEN}@"), "production")
    bad = PortalClient(portal_emulator.url.replace("http://", "http://wrong-token@"), "production")
    try:
        assert [c["id"] for c in await good.contents()] == [int(SERVICE_ID)]
        with pytest.raises(PortalError) as err:
            await bad.contents()
        assert "status 403" in str(err.value) and "wrong-token" not in str(err.value)
    finally:
        await good.close()
        await bad.close()


async def test_a_reloaded_yaml_override_applies_to_the_portals_service(
    portal_emulator, upstream, make_proxy, http, tmp_path
):
    import yaml

    raw = proxy_raw(portal_emulator, upstream.url)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    proxy = await make_proxy(settings_from_dict(raw, env={}))
    assert (await get(http, proxy, "/x"))[0] == 200
    raw["services"][0]["mapping_rules"] = [{"method": "GET", "pattern": "/only", "metric": "hits"}]
    path.write_text(yaml.safe_dump(raw))
    asked = len(portal_emulator.portal.requests)
    assert proxy.reload_file(str(path))
    assert (await get(http, proxy, "/x"))[0] == 404 and (await get(http, proxy, "/only/y"))[0] == 200
    assert len(portal_emulator.portal.requests) == asked  # merged into the portal's config in use: no new call
    path.write_text("services: 3\n")
    assert not proxy.reload_file(str(path))
    assert (await get(http, proxy, "/only/y"))[0] == 200


async def test_refreshes_under_load_fail_no_request(portal_emulator, upstream, make_proxy, http):
    """The periodic refresh (every 0.1 s here) swaps the rules under a steady stream of requests: every request
    is answered 200 by one configuration or the next, and the new rule takes effect within a refresh."""
    raw = proxy_raw(portal_emulator, upstream.url)
    raw["threescale"]["config_refresh"] = 0.1
    proxy = await make_proxy(settings_from_dict(raw, env={}))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            statuses.append((await get(http, proxy, "/v2/orders"))[0])

    workers = [asyncio.create_task(load()) for _ in range(8)]
    for delta in (2, 3, 4):
        proxy_obj = portal_emulator.portal.proxy(SERVICE_ID)
        proxy_obj["proxy_rules"] = [
            {"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": 1, "position": 1},
            {"http_method": "GET", "pattern": "/v2", "metric_system_name": "orders", "delta": delta, "position": 2},
        ]
        portal_emulator.portal.set_proxy(SERVICE_ID, proxy_obj)
        seen = len(statuses)
        applied = delta  # the start's load, then one per change: ok counts 2, 3, 4
        await eventually(
            lambda a=applied: (
                metric_value(proxy.metrics.render().decode(), "threescale_proxy_config_reloads_total", result="ok") == a
            ),
            what=f"the rule with delta {delta} applied",
        )
        await eventually(lambda s=seen: len(statuses) > s + 20, what="requests served after the swap")
    stop.set()
    await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    await proxy.report_now()
    totals = reported_totals(portal_emulator, KEY)
    assert totals["hits"] == len(statuses)  # every request counted once ("/" matches all of them)
    # each at the delta of the configuration that routed it: 0 before the first change, then 2, 3 or 4, and
    # more than 20 requests were served after each change
    assert 2 * 20 * 3 < totals["orders"] <= 4 * len(statuses)


async def test_each_service_is_authorized_at_the_backend_its_proxy_config_names(upstream, make_proxy, http):
    """APIcast's proxy.backend.endpoint: with threescale.backend_url left out, a service's 3scale calls go
    to the backend its configuration names."""
    config = portal_config(upstream.url)
    backend = Emulator(config)  # holds the applications: the service's own backend
    portal = Emulator(config)
    await backend.start()
    await portal.start()
    try:
        proxy_obj = portal.portal.proxy(SERVICE_ID)
        proxy_obj["backend"] = {"endpoint": backend.url, "host": "backend"}
        portal.portal.set_proxy(SERVICE_ID, proxy_obj)
        raw = proxy_raw(portal, upstream.url)
        del raw["threescale"]["backend_url"]
        proxy = await make_proxy(settings_from_dict(raw, env={}))
        assert (await get(http, proxy, "/x"))[0] == 200
        assert len(backend.calls_to("authorize")) == 1 and portal.calls_to("authorize") == []
        await proxy.report_now()
        assert reported_totals(backend, KEY) == {"hits": 1} and reported_totals(portal, KEY) == {}
    finally:
        await backend.stop()
        await portal.stop()


async def test_redis_down_does_not_keep_the_portals_configuration_from_applying(
    portal_emulator, upstream, make_proxy, http
):
    from tests.support import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    proxy = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url, dead_redis), env={}))
    assert (await get(http, proxy, "/x"))[0] == 200  # served from the portal's config; its copy waits for Redis
    assert await proxy.reload_config()
    async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz") as resp:
        body = await resp.json()
        assert body["config"] == "portal" and body["redis"] == "down"


async def test_the_age_of_the_configuration_in_use_grows_while_the_portal_is_down(
    portal_emulator, upstream, make_proxy, http
):
    from tests.support import ManualClock

    clock = ManualClock()
    proxy = await make_proxy(settings_from_dict(proxy_raw(portal_emulator, upstream.url), env={}), clock=clock)

    def age_metric() -> float | None:
        return metric_value(proxy.metrics.render().decode(), "threescale_proxy_config_age_seconds")

    assert age_metric() == 0
    portal_emulator.portal.fault = "error"
    clock.advance(120)
    assert not await proxy.reload_config()
    assert age_metric() == 120
    async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["config"] == "portal" and body["config_age_seconds"] == 120
    portal_emulator.portal.fault = None
    assert await proxy.reload_config()
    assert age_metric() == 0
