"""Step 7: count the usage of allowed requests in memory, per service, application and minute.

The aggregate is what the reporter (and, with Redis, the shared buffer) drains; keeping the minute
lets every report carry the timestamp of the period its usage was counted in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .threescale.models import AppCredentials


@dataclass(frozen=True, slots=True)
class UsageKey:
    """Who used what, when: `app` is the user_key or app_id 3scale knows the application by."""

    service_id: str
    kind: str  # "user_key" | "app_id"
    app: str
    minute: int  # unix time // 60

    def credentials(self) -> AppCredentials:
        """The credentials a report transaction names the application with."""
        return AppCredentials(user_key=self.app) if self.kind == "user_key" else AppCredentials(app_id=self.app)


class UsageAggregate:
    """Sums `{metric: delta}` per UsageKey; cheap enough for the hot path (one dict update per metric)."""

    def __init__(self) -> None:
        self._counts: dict[UsageKey, dict[str, int]] = {}

    def add(self, service_id: str, credentials: AppCredentials, usage: Mapping[str, int], now: float) -> None:
        """Count one allowed request's usage; zero deltas are not kept (3scale drops them anyway)."""
        if credentials.user_key is not None:
            key = UsageKey(service_id, "user_key", credentials.user_key, int(now // 60))
        else:
            key = UsageKey(service_id, "app_id", credentials.app_id or "", int(now // 60))
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = {}
        for metric, delta in usage.items():
            if delta:
                counts[metric] = counts.get(metric, 0) + delta

    def drain(self) -> dict[UsageKey, dict[str, int]]:
        """Take everything counted so far, leaving the aggregate empty."""
        counts, self._counts = self._counts, {}
        return {k: v for k, v in counts.items() if v}

    def totals(self, service_id: str | None = None) -> dict[str, int]:
        """Sum per metric (all applications and minutes): for tests, logs and the pending gauge."""
        out: dict[str, int] = {}
        for key, counts in self._counts.items():
            if service_id is None or key.service_id == service_id:
                for metric, n in counts.items():
                    out[metric] = out.get(metric, 0) + n
        return out

    def __len__(self) -> int:
        return len(self._counts)
