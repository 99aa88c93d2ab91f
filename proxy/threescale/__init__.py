"""Client of the 3scale Service Management API: wire encoding, XML parsing, typed errors and models."""

from .client import DEFAULT_OPTIONS, ThreescaleClient
from .encoding import encode_auth_params, encode_options, encode_report, format_timestamp
from .errors import (
    BackendConnectionError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    RequestRejected,
    ThreescaleError,
    UnparseableResponse,
)
from .models import PERIODS, AppCredentials, AuthStatus, LimitHeaders, Transaction, UsageReport
from .xml import parse_auth_response, parse_error, parse_status

__all__ = [
    "DEFAULT_OPTIONS",
    "PERIODS",
    "AppCredentials",
    "AuthStatus",
    "BackendConnectionError",
    "BackendServerError",
    "BackendTimeout",
    "BackendUnavailable",
    "LimitHeaders",
    "RequestRejected",
    "ThreescaleClient",
    "ThreescaleError",
    "Transaction",
    "UnparseableResponse",
    "UsageReport",
    "encode_auth_params",
    "encode_options",
    "encode_report",
    "format_timestamp",
    "parse_auth_response",
    "parse_error",
    "parse_status",
]
