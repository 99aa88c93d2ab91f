"""Parsing of 3scale's XML documents: the literal examples of THREESCALE.md §2 and the real server's quirks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from proxy.threescale import BackendServerError, LimitHeaders, UnparseableResponse, UsageReport
from proxy.threescale.xml import parse_auth_response, parse_error, parse_limit_headers, parse_status

# --- the literal examples of THREESCALE.md §2, byte for byte --------------------------------------------------

EXAMPLE_1 = (
    '<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Default</plan>'
    '<usage_reports><usage_report metric="hits" period="minute"><period_start>2014-08-22 09:06:00 +0000'
    "</period_start><period_end>2014-08-22 09:07:00 +0000</period_end><max_value>5</max_value>"
    "<current_value>0</current_value></usage_report></usage_reports></status>"
)

EXAMPLE_2 = """<?xml version="1.0" encoding="UTF-8"?>
<status>
  <authorized>false</authorized>
  <reason>usage limits are exceeded</reason>
  <plan>Basic</plan>
  <usage_reports>
    <usage_report metric="hits" period="minute">
      <period_start>2018-09-01 14:44:00 +0000</period_start>
      <period_end>2018-09-01 14:45:00 +0000</period_end>
      <max_value>1</max_value>
      <current_value>1</current_value>
    </usage_report>
  </usage_reports>
</status>
"""

EXAMPLE_3_EXCERPT = """   <hierarchy>
      <metric name="hits" children="example sample test" />
      <metric name="test_metric" children="" />
   </hierarchy>
"""

EXAMPLE_4 = """<?xml version="1.0" encoding="UTF-8"?>
<status>
    <authorized>true</authorized>
    <plan>Basic</plan>
    <app_keys app="app_id" svc="service_id">
        <key id="a_secret_key" />
        <key id="another_secret_key"/>
    </app_keys>
</status>
"""

EXAMPLE_5 = """<?xml version="1.0" encoding="UTF-8"?>
<error code="metric_invalid">metric "anyButHits" is invalid</error>
"""

EXAMPLE_6 = """<?xml version="1.0" encoding="UTF-8"?>
<error code="user_key_invalid">user key "some_user_key" is invalid</error>
"""

EXAMPLE_7 = """<?xml version="1.0" encoding="utf-8" ?>
<error code="provider_key_invalid">Provider key "abcd1234" is invalid</error>
"""


def test_example_1_compact_authorized_status() -> None:
    status = parse_status(EXAMPLE_1.encode(), 200, {})

    assert status.authorized is True
    assert status.http_status == 200
    assert status.reason is None
    assert status.code is None
    assert status.plan == "Default"
    assert status.usage_reports == (
        UsageReport(
            metric="hits",
            period="minute",
            period_start=datetime(2014, 8, 22, 9, 6, tzinfo=UTC),
            period_end=datetime(2014, 8, 22, 9, 7, tzinfo=UTC),
            max_value=5,
            current_value=0,
            exceeded=False,
        ),
    )
    assert status.usage_reports[0].period_start.utcoffset() == timedelta(0)
    assert status.hierarchy == {}
    assert status.limit_headers is None


def test_example_2_indented_denial_takes_code_from_rejection_header() -> None:
    status = parse_status(EXAMPLE_2, 409, {"3scale-rejection-reason": "limits_exceeded"})

    assert status.authorized is False
    assert status.http_status == 409
    assert status.reason == "usage limits are exceeded"
    assert status.code == "limits_exceeded"
    assert status.plan == "Basic"
    [report] = status.usage_reports
    assert (report.metric, report.period, report.max_value, report.current_value) == ("hits", "minute", 1, 1)
    assert report.period_start == datetime(2018, 9, 1, 14, 44, tzinfo=UTC)
    assert report.period_end == datetime(2018, 9, 1, 14, 45, tzinfo=UTC)
    assert report.exceeded is False


def test_example_3_hierarchy_inside_a_status_document() -> None:
    head = '<?xml version="1.0" encoding="UTF-8"?>\n<status>\n<authorized>true</authorized>\n<plan>Basic</plan>\n'
    body = f"{head}{EXAMPLE_3_EXCERPT}</status>"

    status = parse_status(body, 200, {})

    assert status.hierarchy == {"hits": ("example", "sample", "test"), "test_metric": ()}


def test_example_4_app_keys_are_tolerated() -> None:
    status = parse_status(EXAMPLE_4, 200, {})

    assert status.authorized is True
    assert status.plan == "Basic"
    assert status.usage_reports == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (EXAMPLE_5, ("metric_invalid", 'metric "anyButHits" is invalid')),
        (EXAMPLE_6, ("user_key_invalid", 'user key "some_user_key" is invalid')),
        (EXAMPLE_7, ("provider_key_invalid", 'Provider key "abcd1234" is invalid')),
    ],
)
def test_examples_5_to_7_error_documents(body: str, expected: tuple[str, str]) -> None:
    assert parse_error(body, 403) == expected
    assert parse_error(body.encode(), 403) == expected


def test_error_document_becomes_a_denied_auth_status() -> None:
    status = parse_auth_response(EXAMPLE_5.encode(), 404, {})

    assert status.authorized is False
    assert status.http_status == 404
    assert status.code == "metric_invalid"
    assert status.reason == 'metric "anyButHits" is invalid'
    assert status.usage_reports == ()


def test_compact_error_document_as_the_real_server_writes_it() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<error code="application_not_found">application with id="42" was not found</error>'
    )

    assert parse_error(body, 404) == ("application_not_found", 'application with id="42" was not found')


# --- the real server's shape: hierarchy, exceeded, eternity, headers ------------------------------------------

REAL_409 = (
    '<?xml version="1.0" encoding="UTF-8"?><status><authorized>false</authorized>'
    "<reason>usage limits are exceeded</reason><plan>Pro &amp; Co</plan><usage_reports>"
    '<usage_report metric="hits" period="eternity"><max_value>1000</max_value><current_value>10</current_value>'
    '</usage_report><usage_report metric="hits" period="day" exceeded="true">'
    "<period_start>2024-03-04 00:00:00 +0000</period_start><period_end>2024-03-05 00:00:00 +0000</period_end>"
    "<max_value>5</max_value><current_value>6</current_value></usage_report>"
    '<usage_report metric="search" period="minute"><period_start>2024-03-04 10:01:00 +0000</period_start>'
    "<period_end>2024-03-04 10:02:00 +0000</period_end><max_value>2</max_value><current_value>0</current_value>"
    '</usage_report></usage_reports><hierarchy><metric name="hits" children="search list"/>'
    '<metric name="hits" children="search list"/><metric name="search" children=""/></hierarchy></status>'
)


def test_real_denial_with_eternity_exceeded_and_repeated_hierarchy() -> None:
    status = parse_status(REAL_409.encode(), 409, {"3scale-rejection-reason": "limits_exceeded"})

    assert status.plan == "Pro & Co"
    eternity, day, minute = status.usage_reports
    assert (eternity.period, eternity.period_start, eternity.period_end) == ("eternity", None, None)
    assert (eternity.max_value, eternity.current_value, eternity.exceeded) == (1000, 10, False)
    assert (day.period, day.exceeded, day.current_value) == ("day", True, 6)
    assert day.period_end == datetime(2024, 3, 5, tzinfo=UTC)
    assert (minute.metric, minute.exceeded) == ("search", False)
    assert status.hierarchy == {"hits": ("search", "list"), "search": ()}


def test_rejection_reason_header_is_case_insensitive() -> None:
    status = parse_status(REAL_409, 409, {"3Scale-Rejection-Reason": "application_key_invalid"})

    assert status.code == "application_key_invalid"


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("usage limits are exceeded", "limits_exceeded"),
        ("application key is missing", "application_key_invalid"),
        ('application key "k1" is invalid', "application_key_invalid"),
        ("application is not active", "application_not_active"),
        ("service is not active", "service_not_active"),
        ("referrer is missing", "referrer_not_allowed"),
        ('referrer "example.org" is not allowed', "referrer_not_allowed"),
        ("oauth is not enabled", "oauth_not_enabled"),
        ('redirect_uri "https://x" is invalid', "redirect_uri_invalid"),
        ('redirect_url "https://x" is invalid', "redirect_url_invalid"),
        ("something new", None),
    ],
)
def test_code_is_inferred_from_the_reason_without_the_header(reason: str, code: str | None) -> None:
    body = f"<status><authorized>false</authorized><reason>{reason}</reason><plan>p</plan></status>"

    assert parse_status(body, 409, {}).code == code


def test_authorized_status_never_carries_a_code() -> None:
    status = parse_status(EXAMPLE_1, 200, {"3scale-rejection-reason": "limits_exceeded"})

    assert status.code is None


def test_limit_headers_are_read_case_insensitively() -> None:
    headers = {"3Scale-Limit-Remaining": "9", "3SCALE-LIMIT-RESET": "3600", "3scale-limit-max-value": "100"}

    status = parse_status(EXAMPLE_1, 200, headers)

    assert status.limit_headers == LimitHeaders(remaining=9, reset=3600, max_value=100)


def test_unconstrained_limit_headers_have_no_max_value() -> None:
    headers = {"3scale-limit-remaining": "-1", "3scale-limit-reset": "-1"}

    assert parse_limit_headers(headers) == LimitHeaders(remaining=-1, reset=-1, max_value=None)


@pytest.mark.parametrize(
    "headers",
    [{}, {"3scale-limit-remaining": "5"}, {"3scale-limit-remaining": "x", "3scale-limit-reset": "1"}],
)
def test_missing_or_malformed_limit_headers_are_ignored(headers: dict[str, str]) -> None:
    assert parse_limit_headers(headers) is None


def test_old_docs_offset_with_colon_parses() -> None:
    body = (
        "<status><authorized>true</authorized><plan>p</plan><usage_reports>"
        '<usage_report metric="hits" period="month"><period_start>2010-08-01 00:00:00 +02:00</period_start>'
        "<period_end>2010-09-01 00:00:00 +02:00</period_end><max_value>10</max_value>"
        "<current_value>1</current_value></usage_report></usage_reports></status>"
    )

    [report] = parse_status(body, 200, {}).usage_reports

    assert report.period_start == datetime(2010, 8, 1, tzinfo=timezone(timedelta(hours=2)))


# --- unescaped text from the real server -----------------------------------------------------------------------


def test_unescaped_reason_with_ampersand_and_angle_brackets() -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><status><authorized>false</authorized>'
        '<reason>referrer "a.com/?x=1&y=<2>" is not allowed</reason><plan>Basic</plan></status>'
    )

    status = parse_status(body.encode(), 409, {})

    assert status.reason == 'referrer "a.com/?x=1&y=<2>" is not allowed'
    assert status.code == "referrer_not_allowed"
    assert status.plan == "Basic"


def test_unescaped_oauth_application_section() -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><application><id>app</id>'
        "<key>k&1</key><redirect_url>https://cb.example/?a=1&b=2</redirect_url></application>"
        '<plan>Basic</plan><app_keys app="app" svc="7"><key id="k&1"/></app_keys></status>'
    )

    status = parse_status(body, 200, {})

    assert (status.authorized, status.plan) == (True, "Basic")


def test_already_escaped_entities_are_not_escaped_twice_on_the_fallback() -> None:
    body = "<status><authorized>false</authorized><reason>a & b &amp; c</reason><plan>x &amp; y</plan></status>"

    status = parse_status(body, 409, {})

    assert status.reason == "a & b & c"
    assert status.plan == "x & y"


# --- empty bodies and garbage -----------------------------------------------------------------------------------


def test_empty_200_is_authorized_for_no_body() -> None:
    status = parse_auth_response(b"", 200, {"3scale-limit-remaining": "4", "3scale-limit-reset": "30"})

    assert (status.authorized, status.http_status, status.code) == (True, 200, None)
    assert status.limit_headers == LimitHeaders(remaining=4, reset=30)


def test_empty_409_takes_its_code_from_the_header() -> None:
    status = parse_auth_response(b"", 409, {"3scale-rejection-reason": "application_not_active"})

    assert (status.authorized, status.code) == (False, "application_not_active")


def test_bare_empty_403_is_a_bad_request_denial() -> None:
    status = parse_auth_response(b"", 403, {})

    assert (status.authorized, status.http_status, status.code) == (False, 403, "bad_request")
    assert status.reason is not None and "empty 403" in status.reason


@pytest.mark.parametrize(
    ("body", "http_status"),
    [
        (b"", 404),
        (b"<html><body>Bad Gateway</body></html", 200),
        (b"not xml at all", 409),
        (b"<status><authorized>maybe</authorized></status>", 200),
        (b"<status><plan>p</plan></status>", 200),
        (
            b'<status><authorized>true</authorized><usage_reports><usage_report metric="h" period="day">'
            b"<max_value>lots</max_value><current_value>1</current_value></usage_report></usage_reports></status>",
            200,
        ),
        (
            b'<status><authorized>true</authorized><usage_reports><usage_report period="day">'
            b"<max_value>1</max_value><current_value>1</current_value></usage_report></usage_reports></status>",
            200,
        ),
        (EXAMPLE_6.encode(), 200),
        (b"<html><head/></html>", 403),
    ],
)
def test_unusable_bodies_raise_unparseable_with_the_status(body: bytes, http_status: int) -> None:
    with pytest.raises(UnparseableResponse) as caught:
        parse_auth_response(body, http_status, {})

    assert isinstance(caught.value, BackendServerError)
    assert caught.value.status == http_status


def test_parse_error_refuses_a_status_document() -> None:
    with pytest.raises(UnparseableResponse):
        parse_error(EXAMPLE_1, 400)


def test_parse_status_refuses_an_error_document() -> None:
    with pytest.raises(UnparseableResponse):
        parse_status(EXAMPLE_6, 403, {})
