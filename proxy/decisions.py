"""What an authorization decided, as plain data: the authorizer produces it, limits and reporting read it.

Neutral ground so that `limits` and `reporting` need not import the authorizer for a data type.

A process caches one decision per key, and most of a decision is the same for every key on a plan: metric
and period names, window times, limits, the hierarchy. `shared_reports` and `shared_hierarchy` make every
decision built from 3scale's answer (or read back from Redis) hold one object per distinct value instead of
a copy per key; shared objects are never changed (decisions are immutable, and so is what they hold).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from .threescale.models import UsageReport

# Codes that mean *our* configuration is wrong (token, service id), not the caller's key.
SERVICE_CONFIG_CODES = frozenset(
    {
        "service_token_invalid",
        "service_id_invalid",
        "service_id_missing",
        "provider_key_invalid",
        "provider_key_invalid_or_service_missing",
        "provider_key_or_service_token_required",
    }
)
BACKEND_UNAVAILABLE = "backend_unavailable"

DecisionKind = Literal["allowed", "limits_exceeded", "backend_unavailable", "auth_failed"]

# ------------------------------------------------------------------------------------ shared values

EMPTY_HIERARCHY: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
"""The hierarchy of every decision without one (one object, never changed)."""

SHARED_MAX = 4096
"""Distinct names, times and hierarchies kept for sharing; when full the table starts afresh (what was shared
stays shared)."""
SHARED_REPORTS_MAX = 16_384
"""Distinct reports (and tuples of them) kept for sharing, in a table of their own."""

_ZERO = timedelta(0)
T = TypeVar("T")


class _Table:
    """One object per distinct value, for at most `size` values at a time."""

    __slots__ = ("_kept", "_size")

    def __init__(self, size: int) -> None:
        self._kept: dict[Hashable, Any] = {}
        self._size = size

    def get(self, key: Hashable) -> Any:
        return self._kept.get(key)

    def one(self, key: Hashable, value: T) -> T:
        """The object already kept for `key`, else `value`, kept from now on."""
        kept: T | None = self._kept.get(key)
        if kept is not None:
            return kept
        if len(self._kept) >= self._size:
            self._kept.clear()
        self._kept[key] = value
        return value


_parts = _Table(SHARED_MAX)
_reports = _Table(SHARED_REPORTS_MAX)


def shared_text(value: str | None) -> str | None:
    """One string object per distinct metric, period, plan name, code or reason."""
    return None if value is None else _parts.one(value, value)


def _plain(value: datetime | None) -> bool:
    """Equal datetimes print alike (in UTC, or naive); an instant in another offset is another value."""
    return value is None or value.utcoffset() in (None, _ZERO)


def _shared_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return _parts.one(value if _plain(value) else (value, value.utcoffset()), value)


def shared_reports(reports: Iterable[UsageReport]) -> tuple[UsageReport, ...]:
    """The reports as shared objects: one per distinct report (apps of a plan with the same count in the same
    window share theirs), one per distinct tuple of them, and their names and times shared in any case."""
    kept = []
    plain = True
    for r in reports:
        if _plain(r.period_start) and _plain(r.period_end):
            report: UsageReport | None = _reports.get(r)
            kept.append(report if report is not None else _reports.one(r, _compact_report(r)))
        else:
            kept.append(_compact_report(r))
            plain = False
    if not kept:
        return ()
    reports_tuple = tuple(kept)
    return _reports.one(reports_tuple, reports_tuple) if plain else reports_tuple


def _compact_report(r: UsageReport) -> UsageReport:
    return UsageReport(
        metric=shared_text(r.metric) or "",
        period=shared_text(r.period) or "",
        period_start=_shared_time(r.period_start),
        period_end=_shared_time(r.period_end),
        max_value=_parts.one(r.max_value, r.max_value),
        current_value=r.current_value,
        exceeded=r.exceeded,
    )


def shared_hierarchy(hierarchy: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    """One mapping object per distinct hierarchy (the empty one for none); never to be changed."""
    if not hierarchy:
        return EMPTY_HIERARCHY
    items = tuple(hierarchy.items())
    kept: Mapping[str, tuple[str, ...]] | None = _parts.get(items)
    if kept is None:
        shared = {shared_text(k) or "": tuple(shared_text(c) or "" for c in v) for k, v in items}
        kept = _parts.one(items, MappingProxyType(shared))
    return kept


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """What is known about one set of credentials, with the times it may be used until (epoch seconds)."""

    allowed: bool
    fresh_until: float
    stale_until: float
    code: str | None = None
    reason: str | None = None
    plan: str | None = None
    usage_reports: tuple[UsageReport, ...] = ()
    hierarchy: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: EMPTY_HIERARCHY)  # shared: read only

    @property
    def kind(self) -> DecisionKind:
        """Which configured error answers a denial (see config.DEFAULT_ERRORS)."""
        if self.allowed:
            return "allowed"
        if self.code == "limits_exceeded":
            return "limits_exceeded"
        if self.code == BACKEND_UNAVAILABLE or self.code in SERVICE_CONFIG_CODES:
            return "backend_unavailable"
        return "auth_failed"

    def to_json(self) -> bytes:
        """Compact JSON for Redis; datetimes as ISO strings."""
        data: dict[str, Any] = {
            "a": self.allowed,
            "f": self.fresh_until,
            "s": self.stale_until,
            "c": self.code,
            "r": self.reason,
            "p": self.plan,
            "u": [
                [u.metric, u.period, _iso(u.period_start), _iso(u.period_end), u.max_value, u.current_value, u.exceeded]
                for u in self.usage_reports
            ],
            "h": {k: list(v) for k, v in self.hierarchy.items()},
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuthDecision:
        """Inverse of to_json; raises ValueError (or KeyError/TypeError) on a foreign value."""
        d = json.loads(raw)
        return cls(
            allowed=bool(d["a"]),
            fresh_until=float(d["f"]),
            stale_until=float(d["s"]),
            code=shared_text(d.get("c")),
            reason=shared_text(d.get("r")),
            plan=shared_text(d.get("p")),
            usage_reports=shared_reports(
                UsageReport(m, p, _from_iso(ps), _from_iso(pe), int(mx), int(cur), bool(ex))
                for m, p, ps, pe, mx, cur, ex in d.get("u", [])
            ),
            hierarchy=shared_hierarchy({k: tuple(v) for k, v in d.get("h", {}).items()}),
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
