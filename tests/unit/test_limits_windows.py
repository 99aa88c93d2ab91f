"""Limit windows as arithmetic: period bounds, counter lifetimes, reset seconds, 3scale's base, child metrics."""

from datetime import UTC, datetime

import pytest

from proxy.limits.windows import (
    ETERNITY_TTL,
    KEEP_AFTER_WINDOW,
    base_value,
    counter_ttl,
    expand_usage,
    parent_map,
    reset_seconds,
    window,
)
from proxy.threescale.models import UsageReport


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


NOW = ts(2026, 3, 18, 13, 45, 30)  # a Wednesday


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("minute", ts(2026, 3, 18, 13, 45), ts(2026, 3, 18, 13, 46)),
        ("hour", ts(2026, 3, 18, 13), ts(2026, 3, 18, 14)),
        ("day", ts(2026, 3, 18), ts(2026, 3, 19)),
        ("week", ts(2026, 3, 16), ts(2026, 3, 23)),  # weeks start on Monday
        ("month", ts(2026, 3, 1), ts(2026, 4, 1)),
        ("year", ts(2026, 1, 1), ts(2027, 1, 1)),
        ("eternity", 0.0, float("inf")),
    ],
)
def test_windows_are_utc_aligned(period, start, end):
    assert window(period, NOW) == (start, end)


def test_an_unknown_period_is_an_error():
    with pytest.raises(ValueError, match="unknown period 'fortnight'"):
        window("fortnight", NOW)


def test_counters_outlive_their_window_by_the_margin():
    assert KEEP_AFTER_WINDOW == 120
    assert counter_ttl(NOW + 29.9, NOW) == 29 + 120
    assert counter_ttl(NOW - 500, NOW) == 1  # long over: never 0 or negative (Redis rejects that)
    assert counter_ttl(float("inf"), NOW) == ETERNITY_TTL == 400 * 86400


def test_reset_seconds_round_up_and_are_at_least_one():
    assert reset_seconds(NOW + 29.5, NOW) == 30
    assert reset_seconds(NOW + 30, NOW) == 30
    assert reset_seconds(NOW, NOW) == 1
    assert reset_seconds(NOW - 3, NOW) == 1
    assert reset_seconds(float("inf"), NOW) is None


def test_base_is_3scales_value_only_for_the_window_it_answered_about():
    start, end = window("minute", NOW)
    same = UsageReport("hits", "minute", datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), 10, 7)
    earlier = UsageReport("hits", "minute", datetime.fromtimestamp(start - 60, UTC), None, 10, 7)
    eternity = UsageReport("hits", "eternity", None, None, 10, 4)
    assert base_value(same, start) == 7
    assert base_value(earlier, start) == 0  # a new window starts empty
    assert base_value(eternity, 0.0) == 4


def test_child_usage_adds_to_every_ancestor():
    parent_of = parent_map({"hits": ("orders", "search"), "orders": ("refunds",)})
    assert parent_of == {"orders": "hits", "search": "hits", "refunds": "orders"}
    assert expand_usage({"refunds": 2, "search": 1}, parent_of) == {"refunds": 2, "orders": 2, "search": 1, "hits": 3}
    assert expand_usage({"hits": 1}, parent_of) == {"hits": 1}
    assert expand_usage({"orders": 1}, {}) == {"orders": 1}


def test_a_cyclic_hierarchy_from_3scale_cannot_loop():
    assert expand_usage({"a": 1}, {"a": "b", "b": "a"}) == {"a": 1, "b": 1}
