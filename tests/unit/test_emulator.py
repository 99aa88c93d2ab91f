"""The 3scale emulator speaks apisonator's wire protocol exactly (THREESCALE.md) and injects faults."""

from __future__ import annotations

import asyncio
import calendar
import copy
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import pytest
from yarl import URL

from proxy.emulator import Emulator, RecordedCall
from proxy.emulator.state import Counters, Usage
from tests.support import eventually, reported_totals

SID = "2555417777820"
TOKEN = "svc-token"
V2 = "v2svc"
V2_TOKEN = "v2-token"
OAUTH = "oauthsvc"
XML = '<?xml version="1.0" encoding="UTF-8"?>'
CT = "application/vnd.3scale-v2.0+xml"
# 2014-08-22 09:06:30 UTC, a Friday: the moment of THREESCALE.md's literal example 1.
NOW = float(calendar.timegm((2014, 8, 22, 9, 6, 30)))

CONFIG: dict[str, Any] = {
    "services": [
        {
            "id": SID,
            "token": TOKEN,
            "backend_version": 1,
            "metrics": {"hits": {}, "search": {"parent": "hits"}, "orders": {"parent": "hits"}},
            "plans": {
                "default": {"name": "Default", "limits": {"hits": {"minute": 5}}},
                "daily": {"name": "Daily", "limits": {"hits": {"day": 100}}},
                "basic": {"name": "Basic", "limits": {"hits": {"minute": 100, "day": 10000}, "search": {"minute": 10}}},
                "unlimited": {},
            },
            "applications": [
                {"user_key": "demo-key", "plan": "default"},
                {"user_key": "daily-key", "plan": "daily"},
                {"user_key": "basic-key", "plan": "basic"},
                {"user_key": "free-key", "plan": "unlimited"},
            ],
        },
        {
            "id": V2,
            "token": V2_TOKEN,
            "backend_version": 2,
            "metrics": {"hits": {}},
            "plans": {"basic": {"name": "Basic", "limits": {"hits": {"minute": 5}}}},
            "applications": [
                {"app_id": "a1", "app_keys": ["s1", "s2"], "plan": "basic"},
                {"app_id": "a2", "plan": "basic"},
                {"app_id": "sleepy", "app_keys": ["s1"], "plan": "basic", "state": "suspended"},
            ],
        },
        {
            "id": OAUTH,
            "token": "oauth-token",
            "backend_version": "oauth",
            "plans": {"p": {"name": "P"}},
            "applications": [
                {"app_id": "client", "app_keys": ["secret"], "plan": "p", "redirect_url": "https://app.example/cb"}
            ],
        },
    ]
}


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(copy.deepcopy(CONFIG))
    emu.clock = lambda: NOW
    return emu


@pytest.fixture
async def client(aiohttp_client, emulator):
    return await aiohttp_client(emulator.make_app())


def v1(**extra: str) -> dict[str, str]:
    return {"service_token": TOKEN, "service_id": SID, **extra}


def v2(**extra: str) -> dict[str, str]:
    return {"service_token": V2_TOKEN, "service_id": V2, **extra}


async def call(client, endpoint: str, params: Any, options: str | None = None) -> tuple[int, str, Any]:
    """GET /transactions/<endpoint>.xml; params as a dict, a list of pairs, or a raw query string."""
    query = params if isinstance(params, str) else urlencode(params)
    headers = {"3scale-options": options} if options else {}
    url = URL(f"{client.make_url('')}/transactions/{endpoint}.xml?{query}", encoded=True)  # sent verbatim
    response = await client.session.get(url, headers=headers)
    return response.status, await response.text(), response.headers


async def report(client, transactions: dict[str, dict[str, str]], creds: dict[str, str] | None = None, **kwargs: Any):
    """POST /transactions.xml with `transactions[<i>][<field>]` form fields (`usage[hits]` nests too)."""
    form = dict(creds if creds is not None else v1())
    for index, fields in transactions.items():
        for name, value in fields.items():
            first, bracket, rest = name.partition("[")
            form[f"transactions[{index}][{first}]{bracket}{rest}"] = value
    return await client.post("/transactions.xml", data=form, **kwargs)


def error_xml(code: str, message: str) -> str:
    return f'{XML}<error code="{code}">{message}</error>'


# ---- authorize / authrep: status documents ----


async def test_authorized_authorize_is_literal_example_1(client):
    status, body, headers = await call(client, "authorize", v1(user_key="demo-key"))
    assert status == 200
    assert body == (
        '<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Default</plan>'
        '<usage_reports><usage_report metric="hits" period="minute"><period_start>2014-08-22 09:06:00 +0000'
        "</period_start><period_end>2014-08-22 09:07:00 +0000</period_end><max_value>5</max_value>"
        "<current_value>0</current_value></usage_report></usage_reports></status>"
    )
    assert headers["Content-Type"] == CT
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_reports_are_listed_per_metric_longest_period_first(client):
    _, body, _ = await call(client, "authorize", v1(user_key="basic-key"))
    reports = body.split("<usage_report ")[1:]
    assert [r.split(">")[0] for r in reports] == [
        'metric="hits" period="day"',
        'metric="hits" period="minute"',
        'metric="search" period="minute"',
    ]
    assert "<period_start>2014-08-22 00:00:00 +0000</period_start>" in reports[0]


async def test_plan_without_limits_has_no_usage_reports(client):
    status, body, _ = await call(client, "authorize", v1(user_key="free-key"))
    assert (status, body) == (200, f"{XML}<status><authorized>true</authorized><plan>unlimited</plan></status>")


async def test_limits_exceeded_is_409_with_reason_and_rejection_header(client, emulator):
    assert (await call(client, "authrep", v1(user_key="demo-key", **{"usage[hits]": "5"})))[0] == 200
    status, body, headers = await call(
        client, "authrep", v1(user_key="demo-key", **{"usage[hits]": "1"}), options="rejection_reason_header=1"
    )
    assert status == 409
    assert headers["3scale-rejection-reason"] == "limits_exceeded"
    assert body == (
        f"{XML}<status><authorized>false</authorized><reason>usage limits are exceeded</reason><plan>Default</plan>"
        '<usage_reports><usage_report metric="hits" period="minute"><period_start>2014-08-22 09:06:00 +0000'
        "</period_start><period_end>2014-08-22 09:07:00 +0000</period_end><max_value>5</max_value>"
        "<current_value>5</current_value></usage_report></usage_reports></status>"
    )
    assert emulator.usage(SID, "demo-key", "hits", "minute") == 5  # the denied authrep counted nothing


async def test_counter_exactly_at_the_limit_still_authorizes_without_usage(client, emulator):
    await call(client, "authrep", v1(user_key="demo-key", **{"usage[hits]": "5"}))
    assert (await call(client, "authorize", v1(user_key="demo-key")))[0] == 200
    status, _, headers = await call(client, "authorize", v1(user_key="demo-key", **{"usage[hits]": "1"}))
    assert status == 409
    assert "3scale-rejection-reason" not in headers  # only with the extension


async def test_exceeded_attribute_reflects_stored_value_over_max(client):
    assert (await report(client, {"0": {"user_key": "demo-key", "usage[hits]": "7"}})).status == 202
    status, body, _ = await call(client, "authorize", v1(user_key="demo-key"))
    assert status == 409
    assert '<usage_report metric="hits" period="minute" exceeded="true">' in body
    assert "<current_value>7</current_value>" in body


async def test_authrep_current_value_includes_this_request_and_child_usage(client):
    _, body, _ = await call(client, "authrep", v1(user_key="basic-key", **{"usage[search]": "3"}))
    assert body.count("<current_value>3</current_value>") == 3  # hits day, hits minute, search minute
    _, body, _ = await call(client, "authorize", v1(user_key="basic-key", **{"usage[search]": "2"}))
    assert body.count("<current_value>3</current_value>") == 3  # authorize shows the stored value


async def test_authrep_increments_every_period_and_parents_authorize_does_not(client, emulator):
    await call(client, "authorize", v1(user_key="basic-key", **{"usage[search]": "4"}))
    assert emulator.usage(SID, "basic-key", "hits") == 0
    await call(client, "authrep", v1(user_key="basic-key", **{"usage[search]": "4", "usage[orders]": "1"}))
    for period in ("eternity", "year", "month", "week", "day", "hour", "minute"):
        assert emulator.usage(SID, "basic-key", "search", period) == 4
        assert emulator.usage(SID, "basic-key", "hits", period) == 5
    assert emulator.reported == [
        {
            "service_id": SID,
            "app": "basic-key",
            "timestamp": NOW,
            "source": "authrep",
            "usage": {"search": 4, "orders": 1},
        }
    ]


async def test_authrep_without_usage_reports_nothing(client, emulator):
    assert (await call(client, "authrep", v1(user_key="basic-key")))[0] == 200
    assert emulator.reported == []
    assert emulator.usage(SID, "basic-key", "hits") == 0


async def test_flat_usage_does_not_add_children_to_parents(client, emulator):
    """flat_usage keeps a child's usage off its parents' counters, but the answer's current_value of a parent
    still adds its children's usage (apisonator's UsageReport#compute_current_value ignores flat_usage)."""
    status, body, _ = await call(
        client, "authrep", v1(user_key="basic-key", **{"usage[search]": "2"}), options="flat_usage=1"
    )
    assert emulator.usage(SID, "basic-key", "search") == 2
    assert emulator.usage(SID, "basic-key", "hits") == 0
    assert status == 200
    assert '<usage_report metric="hits" period="minute">' in body
    hits_minute = body.split('<usage_report metric="hits" period="minute">')[1].split("</usage_report>")[0]
    assert "<current_value>2</current_value>" in hits_minute


async def test_set_usage_replaces_the_counter(client, emulator):
    await call(client, "authrep", v1(user_key="basic-key", **{"usage[hits]": "7"}))
    await call(client, "authrep", v1(user_key="basic-key", **{"usage[hits]": "#2"}))
    assert emulator.usage(SID, "basic-key", "hits", "day") == 2


async def test_child_usage_is_checked_against_the_parent_limit(client):
    await call(client, "authrep", v1(user_key="demo-key", **{"usage[hits]": "4"}))
    status, _, _ = await call(client, "authorize", v1(user_key="demo-key", **{"usage[search]": "2"}))
    assert status == 409
    assert (await call(client, "authorize", v1(user_key="demo-key", **{"usage[search]": "1"})))[0] == 200


async def test_usage_only_checks_named_metrics_and_ancestors(client):
    await report(client, {"0": {"user_key": "basic-key", "usage[search]": "11"}})
    assert (await call(client, "authorize", v1(user_key="basic-key")))[0] == 409
    assert (await call(client, "authorize", v1(user_key="basic-key", **{"usage[orders]": "1"})))[0] == 200
    assert (await call(client, "authorize", v1(user_key="basic-key", **{"usage[search]": "1"})))[0] == 409


# ---- extensions ----


async def test_limit_headers_follow_the_documented_example(client):
    params = v1(user_key="daily-key", **{"usage[hits]": "10"})
    _, _, headers = await call(client, "authorize", params, options="limit_headers=1")
    assert headers["3scale-limit-remaining"] == "10"
    assert headers["3scale-limit-max-value"] == "100"
    assert headers["3scale-limit-reset"] == str(calendar.timegm((2014, 8, 23, 0, 0, 0)) - int(NOW))
    _, _, headers = await call(client, "authrep", params, options="limit_headers=1")
    assert headers["3scale-limit-remaining"] == "9"


async def test_limit_headers_without_usage_are_unconstrained_until_exhausted(client):
    _, _, headers = await call(client, "authorize", v1(user_key="demo-key"), options="limit_headers=1")
    assert (headers["3scale-limit-remaining"], headers["3scale-limit-reset"]) == ("-1", "-1")
    assert "3scale-limit-max-value" not in headers
    await call(client, "authrep", v1(user_key="demo-key", **{"usage[hits]": "5"}))
    _, _, headers = await call(client, "authorize", v1(user_key="demo-key"), options="limit_headers=1")
    assert (headers["3scale-limit-remaining"], headers["3scale-limit-reset"]) == ("0", "30")
    assert headers["3scale-limit-max-value"] == "5"


async def test_limit_headers_pick_the_tightest_limit_and_appear_on_limit_denials_only(client):
    params = v1(user_key="basic-key", **{"usage[search]": "3"})
    _, _, headers = await call(client, "authorize", params, options="limit_headers=1")
    assert (headers["3scale-limit-remaining"], headers["3scale-limit-max-value"]) == ("3", "10")
    await report(client, {"0": {"user_key": "basic-key", "usage[search]": "10"}})
    status, _, headers = await call(client, "authorize", params, options="limit_headers=1")
    assert (status, headers["3scale-limit-remaining"]) == (409, "0")
    status, _, headers = await call(client, "authorize", v1(user_key="nope"), options="limit_headers=1")
    assert status == 403 and "3scale-limit-remaining" not in headers
    status, _, headers = await call(client, "authorize", v2(app_id="a1"), options="limit_headers=1")
    assert status == 409 and "3scale-limit-remaining" not in headers


async def test_hierarchy_lists_direct_children_once_per_usage_report(client):
    _, body, _ = await call(client, "authorize", v1(user_key="basic-key"), options="hierarchy=1")
    assert body.endswith(
        '</usage_reports><hierarchy><metric name="hits" children="search orders"/>'
        '<metric name="hits" children="search orders"/><metric name="search" children=""/></hierarchy></status>'
    )
    _, body, _ = await call(client, "authorize", v1(user_key="free-key"), options="hierarchy=1")
    assert body.endswith("<plan>unlimited</plan><hierarchy></hierarchy></status>")
    _, body, _ = await call(client, "authorize", v1(user_key="basic-key"))
    assert "<hierarchy>" not in body


async def test_list_app_keys_comes_after_usage_reports(client):
    _, body, _ = await call(client, "authorize", v2(app_id="a1", app_key="s1"), options="list_app_keys=1")
    assert body.endswith(
        '</usage_reports><app_keys app="a1" svc="v2svc"><key id="s1"/><key id="s2"/></app_keys></status>'
    )


@pytest.mark.parametrize("how", ["header", "param"])
async def test_no_body_keeps_status_codes(client, how):
    options = "no_body=1" if how == "header" else None
    extra = {"no_body": "true"} if how == "param" else {}
    status, body, headers = await call(client, "authorize", v1(user_key="demo-key", **extra), options=options)
    assert (status, body, headers["Content-Type"]) == (200, "", CT)
    status, body, _ = await call(client, "authorize", v1(user_key="nope", **extra), options=options)
    assert (status, body) == (403, "")


async def test_no_body_checks_metric_names_before_the_validators(client):
    params = v2(app_id="a1", app_key="wrong", **{"usage[nope]": "1"})
    assert (await call(client, "authorize", params, options="no_body=1"))[:2] == (404, "")
    assert (await call(client, "authorize", params))[0] == 409


async def test_authrep_with_zero_usage_reports_nothing(client, emulator):
    assert (await call(client, "authrep", v1(user_key="basic-key", **{"usage[hits]": "0"})))[0] == 200
    assert emulator.reported == []


# ---- authorize / authrep: errors in check order ----


@pytest.mark.parametrize(
    ("query", "status", "code", "message"),
    [
        (
            "service_token=svc-token&service_id=2555417777820&user_key=%FF",
            422,
            "not_valid_data",
            "all data must be valid UTF8",
        ),
        ("user_key=%FF", 422, "not_valid_data", "all data must be valid UTF8"),
        (
            "user_key=demo-key",
            403,
            "provider_key_or_service_token_required",
            "Provider key or service token are required",
        ),
        (
            "service_token=&service_id=2555417777820&user_key=demo-key",
            403,
            "provider_key_or_service_token_required",
            "Provider key or service token are required",
        ),
        ("service_token=svc-token&user_key=demo-key", 422, "service_id_missing", "Service ID is missing"),
        ("service_token=svc-token&service_id=&user_key=demo-key", 422, "service_id_missing", "Service ID is missing"),
        (
            "service_token=wrong&service_id=2555417777820&user_id=u",
            403,
            "service_token_invalid",
            'service token "wrong" or service id "2555417777820" is invalid',
        ),
        (
            "service_token=svc-token&service_id=v2svc",
            403,
            "service_token_invalid",
            'service token "svc-token" or service id "v2svc" is invalid',
        ),
        (
            "provider_key=pk&service_id=2555417777820&user_key=demo-key",
            403,
            "provider_key_invalid",
            'provider key "pk" is invalid',
        ),
        (  # apisonator's Service.load_with_provider_key!: no service id and no default service for the key
            "provider_key=pk&user_key=demo-key",
            403,
            "provider_key_invalid_or_service_missing",
            'provider key "pk" invalid and/or service ID missing',
        ),
        (  # the service is looked up before the key is checked
            "provider_key=pk&service_id=no-such-service&user_key=demo-key",
            403,
            "service_id_invalid",
            'service id "no-such-service" is invalid',
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=nope&user_id=u",
            400,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=demo-key&app_id=a1",
            403,
            "authentication_error",
            "either app_id or user_key is allowed, not both",
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=nope",
            403,
            "user_key_invalid",
            'user key "nope" is invalid',
        ),
        (
            "service_token=v2-token&service_id=v2svc&app_id=nope",
            404,
            "application_not_found",
            'application with id="nope" was not found',
        ),
        (
            "service_token=v2-token&service_id=v2svc&app_id=&user_key=",
            404,
            "application_not_found",
            "application id is missing",
        ),
        ("service_token=v2-token&service_id=v2svc&user_key=a1", 403, "user_key_invalid", 'user key "a1" is invalid'),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=demo-key&usage[nope]=1",
            404,
            "metric_invalid",
            'metric "nope" is invalid',
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=demo-key&usage[hits]=-1",
            403,
            "usage_value_invalid",
            'usage value "-1" for metric "hits" is invalid',
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=demo-key&usage[hits]=",
            403,
            "usage_value_invalid",
            'usage value for metric "hits" can not be empty',
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=demo-key&usage[]=1&usage[hits]=1",
            400,
            "bad_request",
            "request contains syntax errors, should not be repeated without modification",
        ),
        (
            "service_token=svc-token&service_id=2555417777820&user_key=%zz",
            400,
            "bad_request",
            "Invalid query parameters: invalid %-encoding",
        ),
    ],
)
async def test_error_documents_in_check_order(client, query, status, code, message):
    got_status, body, headers = await call(client, "authorize", query)
    assert (got_status, body) == (status, error_xml(code, message))
    assert headers["Content-Type"] == CT


async def test_usage_that_is_not_a_hash_is_a_bare_403_before_the_app_lookup(client):
    status, body, _ = await call(client, "authrep", v1(user_key="nope", usage="1001"))
    assert (status, body) == (403, "")


async def test_a_service_has_only_the_metrics_it_defines():
    """apisonator has no implicit `hits`: a service whose metrics are listed without it refuses usage of it
    (porta creates `hits` with every service, so a config that lists no metrics at all still has it)."""
    from aiohttp.test_utils import TestClient, TestServer

    config = {
        "services": [
            {
                "id": "s1",
                "token": "t1",
                "metrics": {"search": {}},
                "plans": {"p": {}},
                "applications": [{"user_key": "k1", "plan": "p"}],
            },
            {"id": "s2", "token": "t2", "plans": {"p": {}}, "applications": [{"user_key": "k2", "plan": "p"}]},
        ]
    }
    async with TestClient(TestServer(Emulator(config).make_app())) as client:
        status, body, _ = await call(
            client, "authorize", {"service_token": "t1", "service_id": "s1", "user_key": "k1", "usage[hits]": "1"}
        )
        assert (status, body) == (404, error_xml("metric_invalid", 'metric "hits" is invalid'))
        ok = {"service_token": "t1", "service_id": "s1", "user_key": "k1", "usage[search]": "1"}
        assert (await call(client, "authorize", ok))[0] == 200
        default = {"service_token": "t2", "service_id": "s2", "user_key": "k2", "usage[hits]": "1"}
        assert (await call(client, "authorize", default))[0] == 200


async def test_metric_errors_surface_only_when_limits_run(client):
    status, _, headers = await call(
        client, "authorize", v2(app_id="a1", app_key="x", **{"usage[nope]": "1"}), options="rejection_reason_header=1"
    )
    assert (status, headers["3scale-rejection-reason"]) == (409, "application_key_invalid")
    status, body, _ = await call(client, "authorize", v1(user_key="free-key", **{"usage[nope]": "1"}))
    assert (status, body) == (404, error_xml("metric_invalid", 'metric "nope" is invalid'))


@pytest.mark.parametrize(
    ("params", "code", "reason"),
    [
        (v2(app_id="a1"), "application_key_invalid", "application key is missing"),
        (v2(app_id="a1", app_key=""), "application_key_invalid", "application key is missing"),
        (v2(app_id="a1", app_key="nope"), "application_key_invalid", 'application key "nope" is invalid'),
        (v2(app_id="sleepy", app_key="nope"), "application_key_invalid", 'application key "nope" is invalid'),
        (
            v2(app_id="sleepy", app_key="s1", **{"usage[hits]": "99"}),
            "application_not_active",
            "application is not active",
        ),
    ],
)
async def test_validators_run_in_order_key_state_limits(client, params, code, reason):
    status, body, headers = await call(client, "authorize", params, options="rejection_reason_header=1")
    assert status == 409
    assert headers["3scale-rejection-reason"] == code
    assert body.startswith(f"{XML}<status><authorized>false</authorized><reason>{reason}</reason><plan>Basic")


async def test_app_without_keys_needs_none_and_v1_ignores_app_key(client):
    assert (await call(client, "authorize", v2(app_id="a2")))[0] == 200
    assert (await call(client, "authorize", v2(app_id="a1", app_key="s2")))[0] == 200
    assert (await call(client, "authorize", v1(user_key="demo-key", app_key="whatever")))[0] == 200


async def test_suspended_service_is_not_active_after_app_state(client, emulator):
    emulator.set_service_state(V2, "suspended")
    _, body, headers = await call(client, "authorize", v2(app_id="a2"), options="rejection_reason_header=1")
    assert headers["3scale-rejection-reason"] == "service_not_active"
    assert "<reason>service is not active</reason>" in body
    _, _, headers = await call(
        client, "authorize", v2(app_id="sleepy", app_key="s1"), options="rejection_reason_header=1"
    )
    assert headers["3scale-rejection-reason"] == "application_not_active"


async def test_set_app_state_suspends_and_resumes(client, emulator):
    emulator.set_app_state(V2, "a2", "suspended")
    assert (await call(client, "authorize", v2(app_id="a2")))[0] == 409
    emulator.set_app_state(V2, "a2", "active")
    assert (await call(client, "authorize", v2(app_id="a2")))[0] == 200


async def test_params_in_a_form_body_are_merged_with_the_query(client):
    response = await client.get(
        "/transactions/authrep.xml?" + urlencode(v1()), data={"user_key": "basic-key", "usage[hits]": "2"}
    )
    assert response.status == 200
    assert "<current_value>2</current_value>" in await response.text()


async def test_oauth_authorize_adds_the_application_section(client):
    creds = {"service_token": "oauth-token", "service_id": OAUTH}
    status, body, _ = await call(client, "oauth_authorize", {**creds, "app_id": "client"})
    assert (status, body) == (
        200,
        f"{XML}<status><authorized>true</authorized><application><id>client</id>"
        "<key>secret</key><redirect_url>https://app.example/cb</redirect_url>"
        "</application><plan>P</plan></status>",
    )
    status, body, _ = await call(
        client, "oauth_authorize", {**creds, "app_id": "client", "redirect_uri": "https://evil/"}
    )
    assert status == 409 and '<reason>redirect_uri "https://evil/" is invalid</reason>' in body
    assert "<redirect_uri>https://app.example/cb</redirect_uri>" in body
    status, body, _ = await call(client, "oauth_authorize", creds)
    assert (status, body) == (404, error_xml("application_not_found", "application id is missing"))
    status, body, _ = await call(client, "oauth_authorize", v2(app_id="a2"))
    assert status == 409 and "<reason>oauth is not enabled</reason>" in body


async def test_an_oidc_service_checks_keys_with_oauthkey_on_authorize_and_authrep(client):
    """apisonator's Transactor.validate: a `backend_version: oauth` service on authorize/authrep.xml runs
    OIDC_VALIDATORS, whose OauthKey accepts a missing app_key and refuses an empty or unknown one."""
    creds = {"service_token": "oauth-token", "service_id": OAUTH}
    for endpoint in ("authorize", "authrep"):
        assert (await call(client, endpoint, {**creds, "app_id": "client"}))[0] == 200, endpoint  # no app_key
        assert (await call(client, endpoint, {**creds, "app_id": "client", "app_key": "secret"}))[0] == 200
        status, body, _ = await call(client, endpoint, {**creds, "app_id": "client", "app_key": "wrong"})
        assert status == 409 and '<reason>application key "wrong" is invalid</reason>' in body
        status, body, _ = await call(client, endpoint, {**creds, "app_id": "client", "app_key": ""})
        assert status == 409 and "<reason>application key is missing</reason>" in body


async def test_oauthkey_refuses_a_key_the_application_does_not_have_even_with_no_keys(client, emulator):
    emulator.add_application(OAUTH, {"app_id": "keyless", "plan": "p"})
    creds = {"service_token": "oauth-token", "service_id": OAUTH, "app_id": "keyless"}
    assert (await call(client, "oauth_authorize", creds))[0] == 200
    status, body, _ = await call(client, "oauth_authorize", {**creds, "app_key": "anything"})
    assert status == 409 and '<reason>application key "anything" is invalid</reason>' in body


# ---- reports ----


async def test_report_answers_202_empty_and_counts(client, emulator):
    response = await report(
        client,
        {"0": {"user_key": "basic-key", "usage[hits]": "2"}, "1": {"user_key": "demo-key", "usage[search]": "1"}},
    )
    assert (response.status, await response.text()) == (202, "")
    assert response.headers["Content-Type"] == CT
    assert emulator.usage(SID, "basic-key", "hits", "minute") == 2
    assert emulator.usage(SID, "demo-key", "hits", "minute") == 1
    assert [(r["app"], r["usage"], r["source"]) for r in emulator.reported] == [
        ("basic-key", {"hits": 2}, "report"),
        ("demo-key", {"search": 1}, "report"),
    ]


async def test_one_deleted_app_drops_the_whole_batch(client, emulator):
    emulator.delete_application(SID, "demo-key")
    response = await report(
        client,
        {
            "0": {"user_key": "basic-key", "usage[hits]": "1"},
            "1": {"user_key": "demo-key", "usage[hits]": "1"},
            "2": {"user_key": "daily-key", "usage[hits]": "1"},
        },
    )
    assert response.status == 202
    assert emulator.usage(SID, "basic-key", "hits") == 0
    assert emulator.usage(SID, "daily-key", "hits") == 0
    assert emulator.reported == []
    assert emulator.report_errors(SID) == [
        {
            "code": "user_key_invalid",
            "message": 'user key "demo-key" is invalid',
            "timestamp": "2014-08-22 09:06:30 +0000",
        }
    ]
    assert (await call(client, "authorize", v1(user_key="demo-key")))[0] == 403


@pytest.mark.parametrize(
    ("bad", "code", "message"),
    [
        ({"app_id": "gone", "usage[hits]": "1"}, "application_not_found", 'application with id="gone" was not found'),
        ({"app_id": "a1", "usage[nope]": "1"}, "metric_invalid", 'metric "nope" is invalid'),
        ({"app_id": "a1", "usage[hits]": "x"}, "usage_value_invalid", 'usage value "x" for metric "hits" is invalid'),
        (
            {"app_id": "a1", "user_key": "k", "usage[hits]": "1"},
            "authentication_error",
            "either app_id or user_key is allowed, not both",
        ),
        (
            {"app_id": "a1", "usage[hits]": "1", "timestamp": str(int(NOW) - 86401)},
            "transaction_timestamp_too_old",
            "reporting transactions older than 86400 seconds is not allowed",
        ),
        (
            {"app_id": "a1", "usage[hits]": "1", "timestamp": "2014-08-22 10:06:31"},
            "transaction_timestamp_too_new",
            "reporting transactions more than 3600 seconds in the future is not allowed",
        ),
    ],
)
async def test_any_bad_transaction_drops_the_batch(client, emulator, bad, code, message):
    response = await report(client, {"0": {"app_id": "a2", "usage[hits]": "1"}, "1": bad}, creds=v2())
    assert response.status == 202
    assert emulator.usage(V2, "a2", "hits") == 0
    assert [(e["code"], e["message"]) for e in emulator.report_errors(V2)] == [(code, message)]


async def test_report_timestamps_land_in_their_period(client, emulator):
    transactions = {
        "0": {"app_id": "a2", "usage[hits]": "1", "timestamp": "2014-08-22 07:30:00"},
        "1": {"app_id": "a2", "usage[hits]": "2", "timestamp": "2014-08-22 09:45:00 +0200"},  # 07:45 UTC
        "2": {"app_id": "a2", "usage[hits]": "4", "timestamp": str(calendar.timegm((2014, 8, 21, 23, 0, 0)))},
        "3": {"app_id": "a2", "usage[hits]": "8", "timestamp": "2014-08-22T08:15:00Z"},
        "4": {"app_id": "a2", "usage[hits]": "16", "timestamp": "not a date"},
    }
    assert (await report(client, transactions, creds=v2())).status == 202
    assert emulator.usage(V2, "a2", "hits", "hour") == 16  # "now" for the unparsable one
    assert emulator.usage(V2, "a2", "hits", "day") == 27
    assert emulator.usage(V2, "a2", "hits", "week") == 31
    emulator.clock = lambda: float(calendar.timegm((2014, 8, 22, 7, 59, 0)))
    assert emulator.usage(V2, "a2", "hits", "hour") == 3
    emulator.clock = lambda: float(calendar.timegm((2014, 8, 21, 23, 30, 0)))
    assert emulator.usage(V2, "a2", "hits", "day") == 4
    assert [r["timestamp"] for r in emulator.reported][:2] == [NOW - 5790, NOW - 4890]


async def test_reports_ignore_suspension_and_limits_and_drop_zero_usage(client, emulator):
    """apisonator's Transactor.report drops a transaction whose every delta is the literal "0" before the job
    runs (so its application is never looked up); "00" is not "0" (kept, counting 0)."""
    response = await report(
        client,
        {
            "0": {"app_id": "sleepy", "usage[hits]": "50"},
            "1": {"app_id": "gone", "usage[hits]": "0"},
            "2": {"app_id": "a2", "usage[hits]": "00"},
        },
        creds=v2(),
    )
    assert response.status == 202
    assert emulator.usage(V2, "sleepy", "hits", "minute") == 50
    assert emulator.report_errors(V2) == []
    assert [r["app"] for r in emulator.reported] == ["sleepy", "a2"]
    assert emulator.usage(V2, "a2", "hits", "minute") == 0


async def test_a_report_transaction_without_usage_is_still_checked(client, emulator):
    """ReportJob looks every transaction's application up (group_by_application_id), usage or not: one
    that does not exist fails the whole batch, as any invalid transaction does; a valid one counts nothing."""
    ok = await report(client, {"0": {"app_id": "a2"}, "1": {"app_id": "sleepy", "usage[hits]": "2"}}, creds=v2())
    assert ok.status == 202 and emulator.report_errors(V2) == []
    assert [r["app"] for r in emulator.reported] == ["sleepy"]
    bad = await report(client, {"0": {"app_id": "sleepy", "usage[hits]": "5"}, "1": {"app_id": "gone"}}, creds=v2())
    assert bad.status == 202  # accepted, then the job fails it
    assert [e["code"] for e in emulator.report_errors(V2)] == ["application_not_found"]
    assert emulator.usage(V2, "sleepy", "hits", "minute") == 2  # the batch counted nothing


async def test_report_with_flat_usage_and_parameters_in_the_query(client, emulator):
    query = urlencode({**v1(), "transactions[0][user_key]": "basic-key", "transactions[0][usage][search]": "3"})
    # aiohttp labels a body-less POST application/octet-stream, which 3scale refuses.
    response = await client.post(f"/transactions.xml?{query}")
    assert response.status == 400
    assert 'code="content_type_invalid">invalid Content-Type: application/octet-stream<' in await response.text()
    headers = {"3scale-options": "flat_usage=1", "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    response = await client.post(f"/transactions.xml?{query}", headers=headers)
    assert response.status == 202
    assert (emulator.usage(SID, "basic-key", "search"), emulator.usage(SID, "basic-key", "hits")) == (3, 0)


async def test_multipart_report_is_accepted(client, emulator):
    form = aiohttp.FormData(
        {**v2(), "transactions[0][app_id]": "a2", "transactions[0][usage][hits]": "3"}, default_to_multipart=True
    )
    response = await client.post("/transactions.xml", data=form)
    assert response.status == 202
    assert emulator.usage(V2, "a2", "hits") == 3


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "message"),
    [
        (
            {**v1(), "transactions[0][user_key]": "demo-key"},
            "application/json",
            400,
            "content_type_invalid",
            "invalid Content-Type: application/json",
        ),
        (
            {"transactions[0][user_key]": "demo-key"},
            None,
            403,
            "provider_key_or_service_token_required",
            "Provider key or service token are required",
        ),
        (
            {**v1(service_token="bad"), "transactions[0][user_key]": "x"},
            None,
            403,
            "service_token_invalid",
            'service token "bad" or service id "2555417777820" is invalid',
        ),
        ({**v1(), "transactions[0][user_key]": "%FF"}, None, 422, "not_valid_data", "all data must be valid UTF8"),
        (v1(), None, 400, "transactions_is_blank", "transactions parameter is blank"),
        ({**v1(), "transactions": ""}, None, 400, "transactions_is_blank", "transactions parameter is blank"),
        (
            {**v1(), "transactions[][user_key]": "demo-key"},
            None,
            400,
            "transactions_format_invalid",
            "transactions format is invalid",
        ),
        (
            {**v1(), "transactions[0]": None},
            None,
            400,
            "transactions_has_nil_transaction",
            "transactions has a nil transaction",
        ),
        (
            {**v1(), "transactions[0][user_key]": "demo-key", "transactions[0][user_id]": "u"},
            None,
            400,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        ),
    ],
)
async def test_report_synchronous_errors(client, emulator, body, content_type, status, code, message):
    # None: a key without "=" (Rack's nil); "%FF": sent as is (invalid UTF-8).
    parts = [
        quote_plus(key) if value is None else f"{quote_plus(key)}={'%FF' if value == '%FF' else quote_plus(value)}"
        for key, value in body.items()
    ]
    headers = {"Content-Type": content_type or "application/x-www-form-urlencoded"}
    response = await client.post("/transactions.xml", data="&".join(parts).encode(), headers=headers)
    assert (response.status, await response.text()) == (status, error_xml(code, message))
    assert emulator.reported == []


# ---- other endpoints ----


async def test_health_endpoints_and_unknown_paths(client, emulator):
    response = await client.get("/status")
    assert (response.status, await response.text()) == (200, '{"status":"ok","version":{"backend":"3.4.3"}}')
    assert response.content_type == "application/json"
    response = await client.get("/check.txt")
    assert (response.status, await response.text(), response.content_type) == (200, "ok", "text/plain")
    assert (await client.head("/available")).status == 200
    response = await client.get("/transactions.xml")
    assert (response.status, await response.text()) == (404, "")
    response = await client.options("/transactions/authorize.xml")
    assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert [c.endpoint for c in emulator.calls] == ["status", "check", "available", "unknown", "options"]


# ---- faults ----


async def test_down_error_answers_503_and_is_recorded(client, emulator):
    await emulator.set_down("error")
    response = await client.get("/transactions/authorize.xml?" + urlencode(v1(user_key="demo-key")))
    assert (response.status, await response.text()) == (503, "")
    assert (await client.get("/status")).status == 503
    assert [(c.endpoint, c.status) for c in emulator.calls] == [("authorize", 503), ("status", 503)]
    await emulator.set_down(None)
    assert (await call(client, "authorize", v1(user_key="demo-key")))[0] == 200


async def test_down_refuse_closes_the_port_and_comes_back_on_it():
    emulator = Emulator(copy.deepcopy(CONFIG))
    url = await emulator.start()
    try:
        async with aiohttp.ClientSession() as session:
            query = urlencode(v1(user_key="demo-key", **{"usage[hits]": "1"}))
            async with session.get(f"{url}/transactions/authrep.xml?{query}") as response:
                assert response.status == 200
            await emulator.set_down("refuse")
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"{url}/status")
            assert emulator.url == url
            await emulator.set_down(None)
            async with session.get(f"{url}/transactions/authorize.xml?{query}") as response:
                assert response.status == 200
                assert "<current_value>1</current_value>" in await response.text()
        assert [c.endpoint for c in emulator.calls] == ["authrep", "authorize"]
    finally:
        await emulator.stop()


async def test_delay_slows_every_protocol_answer(client, emulator):
    emulator.delay = 0.2
    started = time.monotonic()
    assert (await client.get("/status")).status == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert (await client.get("/_emulator/state")).status == 200
    assert time.monotonic() - started < 0.2


async def test_delay_longer_than_the_client_timeout_times_out(client, emulator):
    emulator.delay = 1.0
    with pytest.raises(asyncio.TimeoutError):
        await client.get("/status", timeout=aiohttp.ClientTimeout(total=0.1))


# ---- records ----


async def test_calls_are_recorded_with_raw_params_and_headers(client, emulator):
    await client.get(
        "/transactions/authrep.xml?service_token=svc-token&service_id=2555417777820"
        "&user_key=demo-key&usage%5Bhits%5D=2",
        headers={"3scale-options": "hierarchy=1"},
    )
    await report(client, {"0": {"user_key": "demo-key", "usage[hits]": "1"}})
    await client.get("/_emulator/calls")
    authrep = emulator.calls_to("authrep")
    assert len(emulator.calls) == 2 and len(authrep) == 1
    recorded = authrep[0]
    assert isinstance(recorded, RecordedCall)
    assert (recorded.method, recorded.path, recorded.status, recorded.at) == (
        "GET",
        "/transactions/authrep.xml",
        200,
        NOW,
    )
    assert recorded.params == [
        ("service_token", "svc-token"),
        ("service_id", SID),
        ("user_key", "demo-key"),
        ("usage[hits]", "2"),
    ]
    assert recorded.headers["3scale-options"] == "hierarchy=1"
    assert emulator.calls_to("report")[0].params[-1] == ("transactions[0][usage][hits]", "1")
    emulator.reset_calls()
    assert emulator.calls == []


# ---- Python state API ----


async def test_add_and_delete_applications(client, emulator):
    emulator.add_application(V2, {"app_id": "new", "app_keys": ["k"], "plan": "basic"})
    assert (await call(client, "authorize", v2(app_id="new", app_key="k")))[0] == 200
    with pytest.raises(ValueError, match="already exists"):
        emulator.add_application(V2, {"app_id": "new", "plan": "basic"})
    emulator.delete_application(V2, "new")
    assert (await call(client, "authorize", v2(app_id="new", app_key="k")))[0] == 404
    with pytest.raises(KeyError):
        emulator.delete_application(V2, "new")


def test_config_errors_name_the_key():
    bad = copy.deepcopy(CONFIG)
    bad["services"][0]["plans"]["default"]["limits"] = {"nope": {"minute": 1}}
    with pytest.raises(ValueError, match=r"services\[0\]\.plans\.default\.limits\.nope: unknown metric"):
        Emulator(bad)
    bad = copy.deepcopy(CONFIG)
    bad["services"][1]["applications"][0]["plan"] = "gold"
    with pytest.raises(ValueError, match=r"services\[1\]\.applications\[0\]\.plan: unknown plan 'gold'"):
        Emulator(bad)


async def test_from_yaml(tmp_path, aiohttp_client):
    path = tmp_path / "emulator.yaml"
    path.write_text(
        'services:\n  - id: "2555417777820"\n    token: "svc-token"\n    backend_version: 1\n'
        "    metrics: {hits: {}, search: {parent: hits}}\n"
        "    plans:\n      basic: {limits: {hits: {minute: 100, day: 10000}, search: {minute: 10}}}\n"
        '    applications:\n      - {user_key: "demo-key", plan: basic}\n'
    )
    emulator = Emulator.from_yaml(path)
    client = await aiohttp_client(emulator.make_app())
    status, body, _ = await call(client, "authorize", v1(user_key="demo-key"))
    assert status == 200 and "<plan>basic</plan>" in body and body.count("<usage_report ") == 3


# ---- control API ----


async def test_control_api_reads_state_without_being_recorded(client, emulator):
    await call(client, "authrep", v1(user_key="basic-key", **{"usage[hits]": "3"}))
    calls = await (await client.get("/_emulator/calls")).json()
    assert [(c["endpoint"], c["status"], c["params"][-1]) for c in calls] == [("authrep", 200, ["usage[hits]", "3"])]
    assert await (await client.get("/_emulator/calls?endpoint=report")).json() == []
    reported = await (await client.get("/_emulator/reported")).json()
    assert reported == [
        {"service_id": SID, "app": "basic-key", "timestamp": NOW, "source": "authrep", "usage": {"hits": 3}}
    ]
    usage = await client.get(f"/_emulator/usage?service_id={SID}&app=basic-key&metric=hits&period=minute")
    assert await usage.json() == {"value": 3}
    assert (await client.get("/_emulator/usage?service_id=x")).status == 400
    assert (await client.get("/_emulator/nope")).status == 404
    assert len(emulator.calls) == 1


async def test_control_api_faults_reset_and_applications(client, emulator):
    response = await client.post("/_emulator/state", json={"down": "error", "delay": 0.01})
    assert await response.json() == {"down": "error", "delay": 0.01}
    assert (await client.get("/status")).status == 503
    assert (await client.post("/_emulator/state", json={"down": "sideways"})).status == 400
    await client.post("/_emulator/state", json={"down": None, "delay": 0})
    assert (await client.get("/status")).status == 200

    assert (await client.delete("/_emulator/applications/v2svc/a2")).status == 204
    assert (await client.delete("/_emulator/applications/v2svc/a2")).status == 404
    await report(client, {"0": {"app_id": "a2", "usage[hits]": "1"}}, creds=v2())
    errors = await (await client.get("/_emulator/errors?service_id=v2svc")).json()
    assert [e["code"] for e in errors] == ["application_not_found"]
    response = await client.post("/_emulator/applications/v2svc", json={"app_id": "a3", "plan": "basic"})
    assert response.status == 201
    assert (await call(client, "authorize", v2(app_id="a3")))[0] == 200

    await client.post("/_emulator/state", json={"down": "error"})
    assert (await client.post("/_emulator/reset")).status == 200
    assert (emulator.down, emulator.calls, emulator.report_errors(V2)) == (None, [], [])
    assert (await call(client, "authorize", v2(app_id="a2")))[0] == 200  # back from the config
    assert (await call(client, "authorize", v2(app_id="a3")))[0] == 404


async def test_control_api_refuse_for_a_while_comes_back_by_itself():
    emulator = Emulator(copy.deepcopy(CONFIG))
    url = await emulator.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/_emulator/state", json={"down": "refuse", "for": 0.3}) as response:
                assert await response.json() == {"down": "refuse", "delay": 0.0}
            await eventually(lambda: emulator.down == "refuse", what="the emulator going down after its answer")
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"{url}/status")
            await eventually(lambda: emulator.down is None, what="the emulator coming back after 0.3 s")
            async with session.get(f"{url}/status") as response:
                assert response.status == 200
    finally:
        await emulator.stop()


# ---- standalone ----


def test_module_runs_standalone(tmp_path):
    path = tmp_path / "emulator.yaml"
    path.write_text('services:\n  - {id: "1", token: t, plans: {p: {}}, applications: [{user_key: k, plan: p}]}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.emulator", "--config", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        async def authorize() -> int:
            async with aiohttp.ClientSession() as session:
                query = urlencode({"service_token": "t", "service_id": "1", "user_key": "k"})
                async with session.get(f"{url}/transactions/authorize.xml?{query}") as response:
                    return response.status

        assert asyncio.run(authorize()) == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# ---- bounded records (defect 4: the call log grew for as long as `demo` ran) ----


def _emulator_bytes(snapshot: Any) -> int:
    """Bytes still allocated by the emulator's own code (aiohttp's and the test client's are left out)."""
    emulator_dir = str(Path(sys.modules[Emulator.__module__].__file__ or "").parent)
    return sum(
        stat.size
        for stat in snapshot.filter_traces([tracemalloc.Filter(True, f"{emulator_dir}/*")]).statistics("filename")
    )


async def test_records_are_bounded_and_totals_stay_exact(aiohttp_client):
    bound = 20
    emulator = Emulator(copy.deepcopy(CONFIG), max_records=bound)
    emulator.clock = lambda: NOW
    client = await aiohttp_client(emulator.make_app())

    sent = 0

    async def traffic(rounds: int) -> None:
        nonlocal sent
        for _ in range(rounds):
            await call(client, "authrep", v1(user_key="free-key", **{"usage[hits]": "2"}))
            await report(
                client,
                {
                    "0": {"user_key": "basic-key", "usage[search]": "1"},
                    "1": {"user_key": "free-key", "usage[hits]": "3"},
                },
            )
            await call(client, "authorize", v1(user_key=f"unknown-{sent}"))  # 404, recorded
            sent += 1

    tracemalloc.start()
    try:
        await traffic(2 * bound)
        gc.collect()  # count what is kept, not garbage waiting for the cycle collector
        at_twice_the_bound = _emulator_bytes(tracemalloc.take_snapshot())
        await traffic(8 * bound)  # 10× the bound in all
        gc.collect()
        at_ten_times = _emulator_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    rounds = 10 * bound
    assert len(emulator.calls) == bound and len(emulator.reported) == bound
    # 480 more calls and 320 transactions kept would be about 700 KB; what moves is allocator noise of a few KB
    assert at_ten_times - at_twice_the_bound < 64 * 1024, (at_twice_the_bound, at_ten_times)
    # the log keeps the newest entries, in order
    assert [c.endpoint for c in emulator.calls[-3:]] == ["authrep", "report", "authorize"]
    assert emulator.calls[-1].params[-1] == ("user_key", f"unknown-{rounds - 1}")
    assert emulator.reported[-1] == {
        "service_id": SID,
        "app": "free-key",
        "timestamp": NOW,
        "source": "report",
        "usage": {"hits": 3},
    }
    # counts and totals are exact however many records were dropped
    assert (emulator.call_count("authrep"), emulator.call_count("report"), emulator.call_count("authorize")) == (
        rounds,
        rounds,
        rounds,
    )
    assert emulator.call_count() == 3 * rounds
    assert emulator.call_counts() == {"authrep": rounds, "report": rounds, "authorize": rounds}
    assert emulator.reported_totals() == {"hits": 3 * rounds, "search": rounds}
    assert emulator.reported_totals(app="free-key") == {"hits": 3 * rounds}
    assert emulator.reported_totals(source="authrep") == {"hits": 2 * rounds}
    assert emulator.reported_totals(service_id=V2) == {}
    assert reported_totals(emulator) == {"hits": 3 * rounds, "search": rounds}
    assert reported_totals(emulator, "basic-key") == {"search": rounds}
    assert emulator.usage(SID, "free-key", "hits") == 5 * rounds  # 3scale's own counter agrees
    totals = await (await client.get("/_emulator/totals?source=report&app=free-key")).json()
    assert totals == {"hits": 3 * rounds}
    assert len(await (await client.get("/_emulator/calls")).json()) == bound

    emulator.reset_calls()
    assert (emulator.calls, emulator.call_count()) == ([], 0)
    emulator.reset()
    assert (emulator.reported, emulator.reported_totals(), emulator.reported_totals(source="authrep")) == ([], {}, {})


async def test_records_are_bounded_by_default_and_a_bound_must_be_positive():
    emulator = Emulator(copy.deepcopy(CONFIG))
    assert emulator.calls.maxlen == emulator.reported.maxlen == 10_000
    with pytest.raises(ValueError, match="max_records"):
        Emulator(copy.deepcopy(CONFIG), max_records=0)


def test_counters_of_windows_older_than_any_accepted_report_are_dropped():
    counters = Counters()
    start, step, steps = NOW, 600.0, 3 * 24 * 6  # every 10 minutes for 3 days
    for i in range(steps):
        counters.apply(SID, "free-key", {"hits": Usage(1)}, start + i * step)
    last = start + (steps - 1) * step
    # minute, hour and day windows that ended more than 25 h before the newest usage go (3scale refuses reports
    # older than 24 h); weeks, months, years and eternity stay: 432 + 72 + 4 + 4 windows would be kept otherwise
    # kept: 151 minutes and 27 hours (25 h back, one every 10 min / hour), 3 days, 2 weeks, month, year, eternity
    assert len(counters) <= 151 + 27 + 3 + 2 + 3, len(counters)
    assert counters.get(SID, "free-key", "hits", "eternity", last) == steps
    assert counters.get(SID, "free-key", "hits", "hour", last) == 6
    # a report 23 h old still lands in (and reads from) its windows
    old = last - 23 * 3600
    before = counters.get(SID, "free-key", "hits", "minute", old)
    counters.apply(SID, "free-key", {"hits": Usage(5)}, old)
    assert counters.get(SID, "free-key", "hits", "minute", old) == before + 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # apisonator's Time.parse_to_utc tries Ruby's Integer() first: signs, 0x/0b/0o and leading-0 octal,
        # underscores between digits, surrounding whitespace
        ("1408698390", 1408698390.0),
        (" 1408698390 ", 1408698390.0),
        ("1_408_698_390", 1408698390.0),
        ("0x53F707D6", 1408698326.0),
        ("010", 8.0),
        ("+60", 60.0),
        # then Date._parse, which needs a year, a month and a day (no time: midnight UTC)
        ("2014-08-22 09:06:30 +0000", 1408698390.0),
        ("2014-08-22T09:06:30.5+02:00", 1408691190.5),
        ("2014-08-22", 1408665600.0),
        ("Fri, 22 Aug 2014 09:06:30 GMT", 1408698390.0),
        ("22 Aug 2014 09:06", 1408698360.0),
        ("Aug 22 2014", 1408665600.0),
        ("20140822T090630Z", 1408698390.0),
        ("2014/08/22 09:06:30 UTC", 1408698390.0),
    ],
)
def test_report_timestamps_are_parsed_as_apisonator_parses_them(raw, expected):
    from proxy.emulator.params import parse_timestamp

    assert parse_timestamp(raw, now=0.0) == expected


@pytest.mark.parametrize("raw", ["08", "1__2", "_12", "yesterday", "2014-13-01", "09:06:30", ""])
def test_a_timestamp_apisonator_cannot_read_means_now(raw):
    from proxy.emulator.params import parse_timestamp

    assert parse_timestamp(raw, now=123.0) == 123.0
