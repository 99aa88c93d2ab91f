"""Step 7: count the usage of allowed requests in memory, per service, application and minute.

The aggregate is what the reporter (and, with Redis, the shared buffer) drains; keeping the minute
lets every report carry the timestamp of the period its usage was counted in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import NamedTuple

from .metrics import Metrics
from .store import Store, usage_field
from .threescale.models import AppCredentials


class UsageKey(NamedTuple):
    """Who used what, when: `app` is the user_key or app_id 3scale knows the application by. (A NamedTuple:
    one is made and hashed per request.)"""

    service_id: str
    kind: str  # "user_key" | "app_id"
    app: str
    minute: int  # unix time // 60

    def credentials(self) -> AppCredentials:
        """The credentials a report transaction names the application with."""
        return AppCredentials(user_key=self.app) if self.kind == "user_key" else AppCredentials(app_id=self.app)


class _Counts:
    """One entry's sums: the first metric counted inline (most requests count one), any others in a dict."""

    __slots__ = ("count", "metric", "more")

    def __init__(self) -> None:
        self.metric: str | None = None
        self.count = 0
        self.more: dict[str, int] | None = None

    def add(self, metric: str, delta: int) -> None:
        if metric == self.metric:
            self.count += delta
        elif self.metric is None:
            self.metric, self.count = metric, delta
        elif self.more is None:
            self.more = {metric: delta}
        else:
            self.more[metric] = self.more.get(metric, 0) + delta

    def as_dict(self) -> dict[str, int]:
        if self.metric is None:
            return {}
        counts = {self.metric: self.count}
        if self.more:
            counts.update(self.more)
        return counts


class UsageAggregate:
    """Sums `{metric: delta}` per UsageKey; cheap enough for the hot path (one update per metric)."""

    def __init__(self) -> None:
        self._counts: dict[UsageKey, _Counts] = {}

    def add(self, service_id: str, credentials: AppCredentials, usage: Mapping[str, int], now: float) -> None:
        """Count one allowed request's usage; zero deltas are not kept (3scale drops them anyway)."""
        key = self._key(service_id, credentials, now)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts()
        for metric, delta in usage.items():
            if delta:
                counts.add(metric, delta)

    def has(self, service_id: str, credentials: AppCredentials, now: float) -> bool:
        """Whether this application already has an entry for the current minute."""
        return self._key(service_id, credentials, now) in self._counts

    @staticmethod
    def _key(service_id: str, credentials: AppCredentials, now: float) -> UsageKey:
        if credentials.user_key is not None:
            return UsageKey(service_id, "user_key", credentials.user_key, int(now // 60))
        return UsageKey(service_id, "app_id", credentials.app_id or "", int(now // 60))

    def drain(self) -> dict[UsageKey, dict[str, int]]:
        """Take everything counted so far, leaving the aggregate empty."""
        counts, self._counts = self._counts, {}
        return {k: v.as_dict() for k, v in counts.items() if v.metric is not None}

    def __len__(self) -> int:
        return len(self._counts)


class UsageRecorder:
    """The aggregate plus its way to the shared buffer: `flush()` writes it to the store every
    flush_to_redis_ms. A failed write is retried with the same flush id, so it is applied exactly once;
    while the store is down usage waits in memory, at most `max_entries` entries (more are counted, dropped).
    """

    def __init__(self, store: Store, metrics: Metrics, max_entries: int) -> None:
        self.aggregate = UsageAggregate()
        self._store = store
        self._metrics = metrics
        self._max_entries = max_entries
        self._unsent: list[tuple[str, str, dict[str, int]]] = []  # (service, flush id, fields)
        self._unsent_entries = 0
        self._flushing = asyncio.Lock()  # the flush loop and report_now() must not send the same entry

    def add(self, service_id: str, credentials: AppCredentials, usage: Mapping[str, int], now: float) -> None:
        """Hot path: count an allowed request (no I/O)."""
        if len(self.aggregate) + self._unsent_entries >= self._max_entries and not self.aggregate.has(
            service_id, credentials, now
        ):
            self._metrics.errors.labels("usage_dropped").inc()
            return
        self.aggregate.add(service_id, credentials, usage, now)

    def in_memory(self) -> int:
        """Usage entries not yet in the store."""
        return len(self.aggregate) + self._unsent_entries

    async def flush(self) -> None:
        """Move the aggregate to the store; raises StoreUnavailable (usage stays in memory for the next try)."""
        async with self._flushing:
            for service_id, fields in self._fields_of(self.aggregate.drain()).items():
                self._unsent.append((service_id, uuid.uuid4().hex, fields))
                self._unsent_entries += len(fields)
            while self._unsent:
                service_id, flush_id, fields = self._unsent[0]
                await self._store.add_usage(service_id, flush_id, fields)
                self._unsent.pop(0)
                self._unsent_entries -= len(fields)

    def take_unsent(self) -> list[tuple[str, dict[str, int]]]:
        """At shutdown with the store down: what never reached it, for a report straight to 3scale."""
        self._unsent += [(sid, "", fields) for sid, fields in self._fields_of(self.aggregate.drain()).items()]
        taken = [(sid, fields) for sid, _, fields in self._unsent]
        self._unsent, self._unsent_entries = [], 0
        return taken

    @staticmethod
    def _fields_of(drained: dict[UsageKey, dict[str, int]]) -> dict[str, dict[str, int]]:
        per_service: dict[str, dict[str, int]] = {}
        for key, counts in drained.items():
            fields = per_service.setdefault(key.service_id, {})
            for metric, delta in counts.items():
                name = usage_field(key.minute, key.kind, metric, key.app)
                fields[name] = fields.get(name, 0) + delta
        return per_service
