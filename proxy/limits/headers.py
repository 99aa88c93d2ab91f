"""The IETF draft RateLimit headers (and Retry-After on a denial), built from plain numbers. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .windows import reset_seconds


@dataclass(frozen=True, slots=True)
class LimitView:
    """One limit as a caller sees it: its maximum, what is left of it, and its window."""

    limit: int
    remaining: int
    start: float
    end: float


def tightest(views: Iterable[LimitView]) -> LimitView:
    """The limit to advertise: least remaining (below 0 counts as 0); among equals the longer period (it
    resets later); among those the first."""
    best: LimitView | None = None
    for v in views:
        if best is None or _rank(v) < _rank(best):
            best = v
    if best is None:
        raise ValueError("tightest() needs at least one limit")
    return best


def _rank(v: LimitView) -> tuple[int, float]:
    return max(0, v.remaining), -(v.end - v.start)


def allowed_headers(views: Iterable[LimitView], now: float) -> dict[str, str]:
    """RateLimit-Limit/-Remaining/-Reset of the tightest limit (no Reset for an eternity limit)."""
    view = tightest(views)
    return one_limit_headers(view.limit, view.remaining, view.end, now)


def one_limit_headers(limit: int, remaining: int, end: float, now: float) -> dict[str, str]:
    """allowed_headers of a single limit (the common case, without building a LimitView)."""
    headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(max(0, remaining))}
    reset = reset_seconds(end, now)
    if reset is not None:
        headers["RateLimit-Reset"] = str(reset)
    return headers


def denied_headers(limit: int, end: float, now: float) -> dict[str, str]:
    """The exceeded limit, nothing remaining, and when to retry (Retry-After = RateLimit-Reset)."""
    headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": "0"}
    reset = reset_seconds(end, now)
    if reset is not None:
        headers["RateLimit-Reset"] = str(reset)
        headers["Retry-After"] = str(reset)
    return headers
