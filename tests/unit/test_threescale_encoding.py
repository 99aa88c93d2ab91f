"""Rack nested-query encoding of authorize/authrep parameters, batch reports and the options header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode

import pytest

from proxy.threescale import DEFAULT_OPTIONS, AppCredentials, Transaction
from proxy.threescale.encoding import encode_auth_params, encode_options, encode_report, format_timestamp


def test_auth_params_with_user_key_and_usage() -> None:
    params = encode_auth_params("svc1", "tok", AppCredentials(user_key="uk"), {"hits": 1, "search": 3})

    assert params == [
        ("service_token", "tok"),
        ("service_id", "svc1"),
        ("user_key", "uk"),
        ("usage[hits]", "1"),
        ("usage[search]", "3"),
    ]


def test_auth_params_with_app_id_app_key_and_log_code() -> None:
    params = encode_auth_params("svc1", "tok", AppCredentials(app_id="a1", app_key="k1"), {"hits": 2}, log_code=201)

    assert params == [
        ("service_token", "tok"),
        ("service_id", "svc1"),
        ("app_id", "a1"),
        ("app_key", "k1"),
        ("usage[hits]", "2"),
        ("log[code]", "201"),
    ]


def test_empty_app_key_is_kept_and_none_fields_are_left_out() -> None:
    params = encode_auth_params("s", "t", AppCredentials(app_id="a1", app_key=""), None)

    assert params == [("service_token", "t"), ("service_id", "s"), ("app_id", "a1"), ("app_key", "")]


@pytest.mark.parametrize("usage", [None, {}])
def test_no_usage_sends_no_usage_parameter(usage: dict[str, int] | None) -> None:
    params = encode_auth_params("s", "t", AppCredentials(user_key="u"), usage)

    assert [key for key, _ in params] == ["service_token", "service_id", "user_key"]


@pytest.mark.parametrize(
    "usage",
    [{"hits": -1}, {"hits": True}, {"hits": "1"}, {"hits": 1.5}, {"": 1}, {"a[b]": 1}, {"a]": 1}],
)
def test_invalid_usage_is_refused_before_3scale_sees_it(usage: dict) -> None:
    with pytest.raises(ValueError, match=r"usage|metric"):
        encode_auth_params("s", "t", AppCredentials(user_key="u"), usage)


def test_report_of_several_transactions_uses_indexed_keys() -> None:
    transactions = [
        Transaction(
            credentials=AppCredentials(user_key="uk1"),
            usage={"hits": 3, "search": 1},
            timestamp=datetime(2024, 3, 4, 10, 1, tzinfo=UTC),
        ),
        Transaction(credentials=AppCredentials(app_id="app2", app_key="secret"), usage={"hits": 1}, log_code=404),
        Transaction(
            credentials=AppCredentials(app_id="app3"),
            usage={"hits": 0},
            timestamp=datetime(2024, 3, 4, 12, 1, 59, 999999, tzinfo=timezone(timedelta(hours=2))),
            log_code=200,
        ),
    ]

    params = encode_report("svc1", "tok", transactions)

    assert params == [
        ("service_token", "tok"),
        ("service_id", "svc1"),
        ("transactions[0][user_key]", "uk1"),
        ("transactions[0][usage][hits]", "3"),
        ("transactions[0][usage][search]", "1"),
        ("transactions[0][timestamp]", "2024-03-04 10:01:00 +0000"),
        ("transactions[1][app_id]", "app2"),
        ("transactions[1][usage][hits]", "1"),
        ("transactions[1][log][code]", "404"),
        ("transactions[2][app_id]", "app3"),
        ("transactions[2][usage][hits]", "0"),
        ("transactions[2][timestamp]", "2024-03-04 10:01:59 +0000"),
        ("transactions[2][log][code]", "200"),
    ]
    assert not any(key.startswith("transactions[]") for key, _ in params)


def test_report_params_survive_form_encoding() -> None:
    transaction = Transaction(
        credentials=AppCredentials(user_key="a+b c&d"),
        usage={"hits": 1},
        timestamp=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    params = encode_report("1", "t/o=k", [transaction])

    assert parse_qsl(urlencode(params), keep_blank_values=True, strict_parsing=True) == params


@pytest.mark.parametrize(
    "credentials",
    [
        AppCredentials(),
        AppCredentials(app_id=""),
        AppCredentials(user_key=""),
        AppCredentials(user_key="u", app_id="a"),
    ],
)
def test_report_refuses_transactions_that_would_drop_the_batch(credentials: AppCredentials) -> None:
    with pytest.raises(ValueError, match=r"transactions\[1\]"):
        encode_report(
            "s", "t", [Transaction(AppCredentials(user_key="ok"), {"hits": 1}), Transaction(credentials, {"hits": 1})]
        )


def test_report_refuses_negative_usage() -> None:
    with pytest.raises(ValueError, match="hits"):
        encode_report("s", "t", [Transaction(AppCredentials(user_key="u"), {"hits": -2})])


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (datetime(2010, 4, 22, 23, 59, 30, tzinfo=UTC), "2010-04-22 23:59:30 +0000"),
        (datetime(2010, 4, 23, 1, 59, 30, tzinfo=timezone(timedelta(hours=2))), "2010-04-22 23:59:30 +0000"),
        (datetime(2010, 4, 22, 18, 59, 30, tzinfo=timezone(timedelta(hours=-5))), "2010-04-22 23:59:30 +0000"),
        (datetime(2010, 4, 22, 23, 59, 30, 500000), "2010-04-22 23:59:30 +0000"),
        (datetime(2010, 1, 2, 3, 4, 5), "2010-01-02 03:04:05 +0000"),
    ],
)
def test_timestamps_are_utc_in_3scale_format(timestamp: datetime, expected: str) -> None:
    assert format_timestamp(timestamp) == expected


def test_default_options_header() -> None:
    assert encode_options(DEFAULT_OPTIONS) == "hierarchy=1&limit_headers=1&rejection_reason_header=1"


def test_options_header_is_url_encoded() -> None:
    assert encode_options({"flat_usage": "1", "odd key": "a&b=c"}) == "flat_usage=1&odd+key=a%26b%3Dc"
    assert encode_options({}) == ""
