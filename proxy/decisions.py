"""What an authorization decided, as plain data: the authorizer produces it, limits and reporting read it.

Neutral ground so that `limits` and `reporting` need not import the authorizer for a data type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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
    hierarchy: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
            code=d.get("c"),
            reason=d.get("r"),
            plan=d.get("p"),
            usage_reports=tuple(
                UsageReport(m, p, _from_iso(ps), _from_iso(pe), int(mx), int(cur), bool(ex))
                for m, p, ps, pe, mx, cur, ex in d.get("u", [])
            ),
            hierarchy={k: tuple(v) for k, v in d.get("h", {}).items()},
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
