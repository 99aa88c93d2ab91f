"""`memory://`: the Store in this process, for one replica and the demo; nothing survives a restart."""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import DEAD_LETTER_MAX, Batch, LimitClaim, Reservation, Settlement


class MemoryStore:
    """Same semantics as RedisStore (dedup, leases, all-or-nothing reservations), in dicts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._clock = clock
        self._writes = 0
        self._pending: dict[str, dict[str, int]] = {}
        self._batches: dict[str, dict[str, tuple[float, dict[str, int]]]] = {}
        self._dead: dict[str, list[str]] = {}
        self._limits: dict[str, list[int]] = {}  # key → [used, reserved]

    @property
    def available(self) -> bool:
        return True

    @property
    def shared(self) -> bool:
        return False

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._data[key]
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (value, self._clock() + ttl)
        self._writes += 1
        if self._writes % 1024 == 0:
            now = self._clock()
            for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[k]

    async def add_usage(self, service_id: str, flush_id: str, fields: dict[str, int]) -> None:
        # In-process calls always complete, so unlike Redis no flush id needs remembering.
        pending = self._pending.setdefault(service_id, {})
        for field, delta in fields.items():
            pending[field] = pending.get(field, 0) + delta

    async def take_batch(self, service_id: str, now: float, lease: float, new_id: str) -> Batch | None:
        batches = self._batches.setdefault(service_id, {})
        for batch_id, (until, fields) in batches.items():
            if until <= now:
                batches[batch_id] = (now + lease, fields)
                return Batch(batch_id, dict(fields))
        pending = self._pending.pop(service_id, None)
        if not pending:
            return None
        batches[new_id] = (now + lease, pending)
        return Batch(new_id, dict(pending))

    async def ack(self, service_id: str, batch_id: str, fields: list[str]) -> None:
        batches = self._batches.get(service_id, {})
        entry = batches.get(batch_id)
        if entry is None:
            return
        for field in fields:
            entry[1].pop(field, None)
        if not entry[1]:
            del batches[batch_id]

    async def renew(self, service_id: str, batch_id: str, until: float) -> None:
        batches = self._batches.get(service_id, {})
        if batch_id in batches:
            batches[batch_id] = (until, batches[batch_id][1])

    async def dead_letter(self, service_id: str, entries: list[str]) -> None:
        dead = self._dead.setdefault(service_id, [])
        dead[:0] = list(reversed(entries))
        del dead[DEAD_LETTER_MAX:]

    async def dead_letters(self, service_id: str) -> list[str]:
        return list(self._dead.get(service_id, []))

    async def pending_size(self, service_id: str) -> int:
        in_flight = sum(len(f) for _, f in self._batches.get(service_id, {}).values())
        return len(self._pending.get(service_id, {})) + in_flight

    async def reserve(self, claims: list[LimitClaim], divisor: int) -> Reservation:
        free: list[int] = []
        for i, claim in enumerate(claims):
            counter = self._limits.setdefault(claim.key, [claim.base, 0])
            available = claim.max - counter[0] - counter[1]
            if available < claim.need:
                return Reservation(denied=i, used=counter[0], reserved=counter[1])
            free.append(available)
        granted, after = [], []
        for claim, available in zip(claims, free, strict=True):
            grant = claim.need + (available - claim.need) // divisor
            self._limits[claim.key][1] += grant
            granted.append(grant)
            after.append(available - grant)
        return Reservation(granted=tuple(granted), free_after=tuple(after))

    async def settle(self, service_id: str, flush_id: str, settlements: list[Settlement]) -> None:
        for s in settlements:
            counter = self._limits.setdefault(s.key, [0, 0])
            counter[0] += s.used + s.extra
            counter[1] = max(0, counter[1] - s.used - s.release)

    async def raise_used(self, items: list[tuple[str, int, int]]) -> None:
        for key, value, _ttl in items:
            counter = self._limits.setdefault(key, [value, 0])
            counter[0] = max(counter[0], value)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
