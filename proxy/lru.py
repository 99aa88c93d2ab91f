"""Bounded in-process maps that forget the least recently used entry first, so memory stays capped and
what is in use stays cached. `SplitLRU` keeps negative entries in a smaller segment of their own, so a
flood of them (random bad keys) only ever evicts other negative entries."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class LRU(Generic[K, V]):
    """A map of at most `capacity` entries (values not None); reading or writing one makes it the most recent."""

    __slots__ = ("_capacity", "_data", "evictions")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self.evictions = 0
        """Entries dropped to make room, since creation (for tests and gauges)."""

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: D | None = None) -> V | D | None:
        """The entry, now the most recent; `default` when absent."""
        try:
            value = self._data[key]
        except KeyError:
            return default
        self._data.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The entry without making it more recent (background work must not keep an entry alive)."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        """Insert or replace as the most recent entry, dropping the least recent ones beyond capacity."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._capacity:
            self._data.popitem(last=False)
            self.evictions += 1

    def pop(self, key: K) -> V | None:
        """Remove and return the entry, None when absent."""
        return self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def keys(self) -> list[K]:
        """Keys from the least to the most recent (a copy)."""
        return list(self._data)


class SplitLRU(Generic[K, V]):
    """Two LRU segments behind one map: positive entries, and negative ones in a segment of their own.

    An entry lives in one segment at a time; putting it with the other sign moves it.
    """

    __slots__ = ("negative", "positive")

    def __init__(self, capacity: int, negative_capacity: int) -> None:
        self.positive: LRU[K, V] = LRU(capacity)
        self.negative: LRU[K, V] = LRU(negative_capacity)

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative)

    def __contains__(self, key: object) -> bool:
        return key in self.positive or key in self.negative

    def get(self, key: K) -> V | None:
        """The entry from either segment, now the most recent of its segment."""
        value = self.positive.get(key)
        return value if value is not None else self.negative.get(key)

    def peek(self, key: K) -> V | None:
        """The entry without making it more recent."""
        value = self.positive.peek(key)
        return value if value is not None else self.negative.peek(key)

    def put(self, key: K, value: V, *, negative: bool) -> None:
        """Insert or replace in the segment `negative` names, removing it from the other one."""
        into, other = (self.negative, self.positive) if negative else (self.positive, self.negative)
        other.pop(key)
        into.put(key, value)

    def pop(self, key: K) -> V | None:
        value = self.positive.pop(key)
        return value if value is not None else self.negative.pop(key)

    def clear(self) -> None:
        self.positive.clear()
        self.negative.clear()
