"""`memory://`: the Store in this process, for one replica and the demo; nothing survives a restart."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..decisions import AuthDecision
from .base import DEAD_LETTER_MAX, MAX_BATCH_FIELDS, Batch, LimitClaim, Reservation, Settlement

COUNTERS_PER_VALUE = 2  # limit counters kept per cached value (an app's windows: one or two periods)
SWEEP_EVERY = 1024  # writes between two sweeps of expired entries (the cost stays O(1) per write on average)


@dataclass(slots=True)
class _Leased:
    until: float
    fields: dict[str, int]
    owner: str


@dataclass(slots=True)
class _Counter:
    """A limit counter while one call works on it; held packed (see _pack) in between."""

    used: int
    reserved: int
    expires: float


_PACKED = struct.Struct("<qqd")  # used, reserved, expires: one 64-byte object per counter instead of four
_Packed = bytes | tuple[int, int, float]  # the tuple for values beyond 64 bits


def _pack(counter: _Counter) -> _Packed:
    try:
        return _PACKED.pack(counter.used, counter.reserved, counter.expires)
    except struct.error:
        return counter.used, counter.reserved, counter.expires


def _unpack(packed: _Packed) -> _Counter:
    used, reserved, expires = _PACKED.unpack(packed) if isinstance(packed, bytes) else packed
    return _Counter(used, reserved, expires)


class MemoryStore:
    """Same semantics as RedisStore (dedup, leases, all-or-nothing reservations, expiry), in dicts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, max_values: int = 100_000) -> None:
        # Oldest write first: evicted first when full. A cached decision is held as the object itself (the one
        # the authorizer's L1 holds too), not as a second copy in JSON, and lives until its stale_until.
        self._data: dict[str, tuple[bytes, float] | AuthDecision] = {}
        self._max_values = max(1, max_values)
        self._max_counters = COUNTERS_PER_VALUE * self._max_values
        self._clock = clock
        self._writes = 0
        self._pending: dict[str, dict[str, int]] = {}
        self._batches: dict[str, dict[str, _Leased]] = {}
        self._dead: dict[str, list[str]] = {}
        self._limits: dict[str, _Packed] = {}  # expire like Redis keys, or a long-running process only grows

    def __len__(self) -> int:
        """Entries held (cached values and limit counters): what memory grows with."""
        return len(self._data) + len(self._limits)

    @property
    def available(self) -> bool:
        return True

    @property
    def shared(self) -> bool:
        return False

    def _value(self, key: str) -> bytes | AuthDecision | None:
        item = self._data.get(key)
        if item is None:
            return None
        if _expires(item) <= self._clock():
            del self._data[key]
            return None
        return item if isinstance(item, AuthDecision) else item[0]

    async def get(self, key: str) -> bytes | None:
        value = self._value(key)
        return value.to_json() if isinstance(value, AuthDecision) else value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._put(key, (value, self._clock() + ttl))

    def _put(self, key: str, item: tuple[bytes, float] | AuthDecision) -> None:
        """Like Redis with an LRU-on-write maxmemory policy: beyond `max_values` the oldest write goes."""
        self._data.pop(key, None)
        self._data[key] = item
        if len(self._data) > self._max_values:
            del self._data[next(iter(self._data))]
        self._wrote()

    async def get_decision(self, key: str) -> AuthDecision | None:
        value = self._value(key)
        return AuthDecision.from_json(value) if isinstance(value, bytes) else value

    async def set_decision(self, key: str, decision: AuthDecision, ttl: float) -> None:
        """Held until `decision.stale_until` by this store's clock, the authorizer's (`ttl` is the time left
        until then, which Redis is given)."""
        self._put(key, decision)

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self.sweep()

    def sweep(self) -> None:
        """Drop every expired value and limit counter (Redis does this by itself)."""
        now = self._clock()
        for k in [k for k, item in self._data.items() if _expires(item) <= now]:
            del self._data[k]
        for k in [k for k, c in self._limits.items() if _unpack(c).expires <= now]:
            del self._limits[k]

    def _counter(
        self, key: str, base: int, ttl: int, *, refresh: bool, seen: dict[str, _Counter] | None = None
    ) -> _Counter:
        """The live counter at `key`, created from `base` when missing or expired; `refresh` restarts its TTL
        (as the Redis scripts do: a reservation sets it on creation only, a settlement every time). Changes
        to it are kept by _save; `seen` holds the counters one call has already taken (a key twice in a call
        is the same counter)."""
        now = self._clock()
        counter = seen.get(key) if seen is not None else None
        if counter is None:
            packed = self._limits.get(key)
            counter = _unpack(packed) if packed is not None else None
        if counter is None or counter.expires <= now:
            self._limits.pop(key, None)
            counter = _Counter(base, 0, now + ttl)
            self._limits[key] = _pack(counter)
            if len(self._limits) > self._max_counters:
                self._evict_counter()
            self._wrote()
        elif refresh:
            counter.expires = now + ttl
            self._save(key, counter)
        if seen is not None:
            seen[key] = counter
        return counter

    def _save(self, key: str, counter: _Counter) -> None:
        """Keep a counter's new values, unless it was evicted meanwhile (then they are lost with it)."""
        if key in self._limits:
            self._limits[key] = _pack(counter)

    async def add_usage(self, service_id: str, flush_id: str, fields: dict[str, int]) -> None:
        # In-process calls always complete, so unlike Redis no flush id needs remembering.
        pending = self._pending.setdefault(service_id, {})
        for field, delta in fields.items():
            pending[field] = pending.get(field, 0) + delta

    async def take_batch(
        self,
        service_id: str,
        now: float,
        lease: float,
        new_id: str,
        *,
        owner: str | None = None,
        max_fields: int = MAX_BATCH_FIELDS,
    ) -> Batch | None:
        owner = owner or new_id
        batches = self._batches.setdefault(service_id, {})
        for batch_id, leased in batches.items():
            if leased.until <= now:
                leased.until, leased.owner = now + lease, owner
                return Batch(batch_id, dict(leased.fields), owner)
        pending = self._pending.get(service_id)
        if not pending:
            return None
        if len(pending) <= max_fields:
            taken = self._pending.pop(service_id)
        else:
            taken = {}
            for field in list(pending)[: max(1, max_fields)]:
                taken[field] = pending.pop(field)
        batches[new_id] = _Leased(now + lease, taken, owner)
        return Batch(new_id, dict(taken), owner)

    async def ack(self, service_id: str, batch_id: str, owner: str, fields: list[str]) -> bool:
        batches = self._batches.get(service_id, {})
        leased = batches.get(batch_id)
        if leased is None or leased.owner != owner:
            return False
        for field in fields:
            leased.fields.pop(field, None)
        if not leased.fields:
            del batches[batch_id]
        return True

    async def renew(self, service_id: str, batch_id: str, owner: str, until: float) -> bool:
        leased = self._batches.get(service_id, {}).get(batch_id)
        if leased is None or leased.owner != owner:
            return False
        leased.until = until
        return True

    async def dead_letter(self, service_id: str, entries: list[str]) -> None:
        dead = self._dead.setdefault(service_id, [])
        dead[:0] = list(reversed(entries))
        del dead[DEAD_LETTER_MAX:]

    async def dead_letters(self, service_id: str) -> list[str]:
        return list(self._dead.get(service_id, []))

    async def pending_size(self, service_id: str) -> int:
        in_flight = sum(len(leased.fields) for leased in self._batches.get(service_id, {}).values())
        return len(self._pending.get(service_id, {})) + in_flight

    async def reserve(self, claims: list[LimitClaim], divisor: int) -> Reservation:
        free: list[int] = []
        counters: list[_Counter] = []
        seen: dict[str, _Counter] = {}  # a key claimed twice is one counter
        for i, claim in enumerate(claims):
            counter = self._counter(claim.key, claim.base, claim.ttl, refresh=False, seen=seen)
            available = claim.max - counter.used - counter.reserved
            if available < claim.need:
                return Reservation(denied=i, used=counter.used, reserved=counter.reserved)
            free.append(available)
            counters.append(counter)
        granted, after = [], []
        for claim, counter, available in zip(claims, counters, free, strict=True):
            grant = claim.need + (available - claim.need) // divisor
            counter.reserved += grant
            self._save(claim.key, counter)
            granted.append(grant)
            after.append(available - grant)
        return Reservation(granted=tuple(granted), free_after=tuple(after))

    async def settle(self, service_id: str, flush_id: str, settlements: list[Settlement]) -> None:
        seen: dict[str, _Counter] = {}
        for s in settlements:
            counter = self._counter(s.key, 0, s.ttl, refresh=True, seen=seen)
            counter.used += s.used + s.extra
            counter.reserved = max(0, counter.reserved - s.used - s.release)
            self._save(s.key, counter)

    async def raise_used(self, items: list[tuple[str, int, int]]) -> None:
        seen: dict[str, _Counter] = {}
        for key, value, ttl in items:
            counter = self._counter(key, value, ttl, refresh=True, seen=seen)
            counter.used = max(counter.used, value)
            self._save(key, counter)

    def _evict_counter(self) -> None:
        """Over the bound, like Redis under maxmemory: the oldest counter nobody holds a slice of goes (a
        later reservation seeds it again from 3scale's value)."""
        for key, packed in self._limits.items():
            if _unpack(packed).reserved == 0:
                del self._limits[key]
                return

    def limit_counter(self, key: str) -> tuple[int, int] | None:
        """(used, reserved) of a live limit counter (tests and diagnostics)."""
        packed = self._limits.get(key)
        if packed is None:
            return None
        counter = _unpack(packed)
        if counter.expires <= self._clock():
            return None
        return counter.used, counter.reserved

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
        self._limits.clear()


def _expires(item: tuple[bytes, float] | AuthDecision) -> float:
    return item.stale_until if isinstance(item, AuthDecision) else item[1]
