"""The RateLimit / Retry-After headers: which limit is advertised, and the exact values."""

import pytest

from proxy.limits.headers import LimitView, allowed_headers, denied_headers, one_limit_headers, tightest

NOW = 1_800_000_000.0
MINUTE = LimitView(limit=100, remaining=40, start=NOW - 20, end=NOW + 40)
DAY = LimitView(limit=1000, remaining=40, start=NOW - 3600, end=NOW + 82800)
ETERNAL = LimitView(limit=5, remaining=3, start=0.0, end=float("inf"))


def test_the_least_remaining_limit_is_advertised():
    assert allowed_headers([MINUTE, ETERNAL], NOW) == {"RateLimit-Limit": "5", "RateLimit-Remaining": "3"}
    fuller = LimitView(100, 99, NOW - 20, NOW + 40)
    assert allowed_headers([fuller, DAY], NOW) == {
        "RateLimit-Limit": "1000",
        "RateLimit-Remaining": "40",
        "RateLimit-Reset": "82800",
    }


def test_among_equals_the_longer_period_wins_then_the_first():
    assert tightest([MINUTE, DAY]) is DAY
    assert tightest([DAY, MINUTE]) is DAY
    twin = LimitView(7, 40, MINUTE.start, MINUTE.end)
    assert tightest([MINUTE, twin]) is MINUTE


def test_remaining_below_zero_is_shown_and_ranked_as_zero():
    over = LimitView(10, -4, NOW - 10, NOW + 50)
    empty = LimitView(20, 0, NOW - 3600, NOW + 10.2)
    assert tightest([over, empty]) is empty  # both count as 0: the longer period wins
    assert allowed_headers([over], NOW) == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "50",
    }


def test_a_denial_says_when_to_retry():
    assert denied_headers(100, NOW + 12.1, NOW) == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "13",
        "Retry-After": "13",
    }
    assert denied_headers(5, float("inf"), NOW) == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0"}


def test_no_limit_is_a_programming_error():
    with pytest.raises(ValueError, match="at least one"):
        tightest([])


def test_a_single_limit_gets_the_same_headers_without_a_view():
    assert one_limit_headers(100, 40, NOW + 40, NOW) == allowed_headers([MINUTE], NOW)
    assert one_limit_headers(100, 40, NOW + 40, NOW) == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "40",
        "RateLimit-Reset": "40",
    }
    assert one_limit_headers(5, -2, float("inf"), NOW) == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0"}
