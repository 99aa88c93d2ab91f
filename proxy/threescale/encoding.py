"""Rack nested-query parameters for 3scale requests (THREESCALE.md §0, §1, §4).

Functions return ordered (key, value) pairs so the caller can URL-encode them once, as a query or a form body.
Reports are validated here: one bad transaction makes 3scale silently drop the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

from .models import AppCredentials, Transaction

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S +0000"

Params = list[tuple[str, str]]


def encode_auth_params(
    service_id: str,
    service_token: str,
    credentials: AppCredentials,
    usage: Mapping[str, int] | None,
    log_code: int | None = None,
) -> Params:
    """Parameters of authorize/authrep; None fields are left out, an empty `app_key` is kept on purpose."""
    params: Params = [("service_token", service_token), ("service_id", service_id)]
    params += _credential_params("", credentials, with_app_key=True)
    params += _usage_params("usage", usage or {})
    if log_code is not None:
        params.append(("log[code]", str(int(log_code))))
    return params


def encode_report(service_id: str, service_token: str, transactions: Sequence[Transaction]) -> Params:
    """Parameters of `POST /transactions.xml`, always with indexed keys (`transactions[0][...]`)."""
    params: Params = [("service_token", service_token), ("service_id", service_id)]
    for index, transaction in enumerate(transactions):
        params += _transaction_params(f"transactions[{index}]", transaction)
    return params


def encode_options(options: Mapping[str, str]) -> str:
    """The `3scale-options` header value: URL-encoded `k=v&k2=v2`."""
    return urlencode(list(options.items()))


def format_timestamp(timestamp: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS +0000` in UTC; a naive datetime is taken to be UTC already."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def _transaction_params(prefix: str, transaction: Transaction) -> Params:
    """One transaction; `app_key` is not sent because 3scale does not check it in reports."""
    credentials = transaction.credentials
    if not credentials.identity or (credentials.user_key is not None and credentials.app_id is not None):
        raise ValueError(f"{prefix}: a report needs exactly one of user_key or app_id, non-empty")
    params = _credential_params(prefix, credentials, with_app_key=False)
    params += _usage_params(f"{prefix}[usage]", transaction.usage)
    if transaction.timestamp is not None:
        params.append((f"{prefix}[timestamp]", format_timestamp(transaction.timestamp)))
    if transaction.log_code is not None:
        params.append((f"{prefix}[log][code]", str(int(transaction.log_code))))
    return params


def _credential_params(prefix: str, credentials: AppCredentials, *, with_app_key: bool) -> Params:
    fields = {"user_key": credentials.user_key, "app_id": credentials.app_id}
    if with_app_key:
        fields["app_key"] = credentials.app_key
    return [(_key(prefix, name), value) for name, value in fields.items() if value is not None]


def _usage_params(prefix: str, usage: Mapping[str, int]) -> Params:
    """`prefix[metric]=N`, checked here because 3scale rejects bad values (or drops a whole report) later."""
    params: Params = []
    for metric, value in usage.items():
        if not metric or "[" in metric or "]" in metric:
            raise ValueError(f"metric name {metric!r} cannot be nested into a Rack parameter")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage of metric {metric!r} must be a non-negative int, got {value!r}")
        params.append((f"{prefix}[{metric}]", str(value)))
    return params


def _key(prefix: str, name: str) -> str:
    return f"{prefix}[{name}]" if prefix else name
