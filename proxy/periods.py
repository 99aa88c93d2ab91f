"""3scale's limit periods as UTC-aligned windows (weeks start on Monday), for counting between syncs."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

ETERNITY_END = float("inf")


def window(period: str, now: float) -> tuple[float, float]:
    """(start, end) in epoch seconds of the period window containing `now`; eternity is (0, inf)."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "eternity":
        return 0.0, ETERNITY_END
    if period == "minute":
        start = t.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "week":
        start = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    elif period == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=calendar.monthrange(t.year, t.month)[1])
    elif period == "year":
        start = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=t.year + 1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return start.timestamp(), end.timestamp()
