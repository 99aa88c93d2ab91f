"""Plain dataclasses for what the 3scale Service Management API sends and receives.

They carry no behaviour tied to HTTP, Redis or config so every other module can share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

PERIODS: tuple[str, ...] = ("eternity", "year", "month", "week", "day", "hour", "minute")
"""3scale's periods, longest first (the order usage_reports are listed in within a metric)."""


class AppCredentials(NamedTuple):
    """An application's credentials: `user_key` (backend v1) or `app_id` [+ `app_key`] (v2/oauth).

    A NamedTuple: one is made per request and is the key of three caches; its hash and equality are
    the tuple's own (in C), where a frozen dataclass runs Python for each."""

    user_key: str | None = None
    app_id: str | None = None
    app_key: str | None = None

    @property
    def identity(self) -> str:
        """The value that names the application in reports (user_key or app_id)."""
        return self.user_key if self.user_key is not None else (self.app_id or "")


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One `<usage_report>`: a limit of the plan and the counter 3scale holds for it."""

    metric: str
    period: str
    period_start: datetime | None
    period_end: datetime | None
    max_value: int
    current_value: int
    exceeded: bool = False


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    """The `3scale-limit-*` response headers (extension `limit_headers=1`); -1 means unconstrained."""

    remaining: int
    reset: int
    max_value: int | None = None


@dataclass(frozen=True, slots=True)
class AuthStatus:
    """The answer to authorize/authrep: a `<status>` document, or an `<error>` document for a rejected key.

    `code` is the machine-readable reason: the `3scale-rejection-reason` header on 409, or the
    `<error code=...>` attribute on 4xx error documents; None when authorized.
    """

    authorized: bool
    http_status: int
    reason: str | None = None
    code: str | None = None
    plan: str | None = None
    usage_reports: tuple[UsageReport, ...] = ()
    hierarchy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limit_headers: LimitHeaders | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One entry of a batch report (`POST /transactions.xml`)."""

    credentials: AppCredentials
    usage: Mapping[str, int]
    timestamp: datetime | None = None
    log_code: int | None = None
