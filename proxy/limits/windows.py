"""Limit windows as arithmetic: which window a time falls in, how long its counter lives, what 3scale's
last answer says it already holds, and how child metrics add to their parents. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..periods import window
from ..threescale.models import UsageReport

KEEP_AFTER_WINDOW = 120  # seconds a counter outlives its window (late settlements still land)
ETERNITY_TTL = 400 * 86400  # eternity never ends: a counter untouched for this long is forgotten

__all__ = [
    "ETERNITY_TTL",
    "KEEP_AFTER_WINDOW",
    "base_value",
    "counter_ttl",
    "expand_usage",
    "parent_map",
    "reset_seconds",
    "window",
]


def counter_ttl(end: float, now: float) -> int:
    """Seconds the shared counter of a window ending at `end` must live: past the end, so late
    settlements still land; at least 1 (Redis rejects a zero TTL)."""
    if math.isinf(end):
        return ETERNITY_TTL
    return max(1, int(end - now) + KEEP_AFTER_WINDOW)


def reset_seconds(end: float, now: float) -> int | None:
    """Whole seconds until the window resets (RateLimit-Reset, Retry-After): at least 1; None for eternity."""
    return None if math.isinf(end) else max(1, math.ceil(end - now))


def base_value(report: UsageReport, window_start: float) -> int:
    """What 3scale had counted in this window at its last answer: its value if that answer was about
    this very window, else 0 (the answer was about an earlier window, and a new window starts empty)."""
    synced_start = report.period_start.timestamp() if report.period_start else 0.0
    return report.current_value if synced_start == window_start else 0


def parent_map(hierarchy: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """3scale's `parent → children` hierarchy turned into `child → parent`, for expand_usage."""
    return {child: parent for parent, children in hierarchy.items() for child in children}


def expand_usage(usage: Mapping[str, int], parent_of: Mapping[str, str]) -> dict[str, int]:
    """3scale adds a child metric's usage to its parents; do the same before checking limits."""
    expanded = dict(usage)
    for metric, delta in usage.items():
        seen = {metric}
        parent = parent_of.get(metric)
        while parent is not None and parent not in seen:
            expanded[parent] = expanded.get(parent, 0) + delta
            seen.add(parent)
            parent = parent_of.get(parent)
    return expanded
