"""Bounded records of the emulator: the newest calls and accepted transactions, plus exact running totals.

Part of `proxy.emulator`. A `demo` runs for days: its records must not grow with its traffic, yet tests read
the records like lists and need exact totals of what 3scale accepted however many records were dropped.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

T = TypeVar("T")


class RecordLog(Sequence[T]):
    """The newest `maxlen` records, oldest first: read like a list (index, slice, `==`), bounded when written."""

    def __init__(self, maxlen: int) -> None:
        if maxlen <= 0:
            raise ValueError(f"max_records must be greater than 0, not {maxlen}")
        self._items: deque[T] = deque(maxlen=maxlen)

    @property
    def maxlen(self) -> int:
        """How many records are kept; appending more drops the oldest."""
        return self._items.maxlen or 0

    def append(self, item: T) -> None:
        self._items.append(item)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self._items)[index]
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordLog):
            return list(self._items) == list(other._items)
        if isinstance(other, list):
            return list(self._items) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"RecordLog({list(self._items)!r}, maxlen={self.maxlen})"


class Totals:
    """Exact sums of accepted usage per (source, service, app, metric): bounded by the configured apps and metrics."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str, str], int] = {}

    def add(self, source: str, service_id: str, app: str, usage: Mapping[str, Any]) -> None:
        """Add one accepted transaction's usage as it was said (`N` adds, `"#N"` sets)."""
        for metric, value in usage.items():
            key = (source, service_id, app, metric)
            if isinstance(value, str) and value.startswith("#"):
                self._values[key] = int(value[1:])
            else:
                self._values[key] = self._values.get(key, 0) + int(value)

    def select(self, source: str, service_id: str | None = None, app: str | None = None) -> dict[str, int]:
        """Totals per metric of one source ("report" or "authrep"), optionally of one service and app."""
        out: Counter[str] = Counter()
        for (src, svc, name, metric), value in self._values.items():
            if src == source and service_id in (None, svc) and app in (None, name):
                out[metric] += value
        return dict(out)

    def clear(self) -> None:
        self._values.clear()
