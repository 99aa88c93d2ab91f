"""The bounded LRU maps behind the authorization cache and the limiter's plans."""

import pytest

from proxy.lru import LRU, SplitLRU


def test_the_least_recently_used_entry_goes_first():
    lru: LRU[str, int] = LRU(3)
    for i, key in enumerate("abc"):
        lru.put(key, i)
    assert lru.get("a") == 0  # a is now the most recent
    lru.put("d", 3)
    assert lru.keys() == ["c", "a", "d"] and "b" not in lru
    lru.put("c", 20)  # replacing also refreshes
    lru.put("e", 4)
    assert lru.keys() == ["d", "c", "e"]
    assert (len(lru), lru.evictions, lru.capacity) == (3, 2, 3)


def test_peek_reads_without_refreshing():
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.peek("a") == 1 and lru.peek("zz") is None
    lru.put("c", 3)
    assert lru.keys() == ["b", "c"]


def test_get_pop_and_clear():
    lru: LRU[str, int] = LRU(2)
    assert lru.get("a") is None and lru.get("a", -1) == -1
    lru.put("a", 1)
    assert lru.pop("a") == 1 and lru.pop("a") is None and len(lru) == 0
    lru.put("b", 2)
    lru.clear()
    assert len(lru) == 0 and lru.evictions == 0


def test_a_capacity_below_one_is_refused():
    with pytest.raises(ValueError, match="capacity must be at least 1, not 0"):
        LRU(0)


def test_a_flood_of_negative_entries_never_evicts_a_positive_one():
    cache: SplitLRU[str, str] = SplitLRU(capacity=10, negative_capacity=2)
    for i in range(10):
        cache.put(f"good{i}", "ok", negative=False)
    for i in range(1000):
        cache.put(f"bad{i}", "no", negative=True)
    assert all(cache.get(f"good{i}") == "ok" for i in range(10))
    assert cache.negative.keys() == ["bad998", "bad999"]
    assert (len(cache), cache.positive.evictions, cache.negative.evictions) == (12, 0, 998)


def test_an_entry_moves_between_segments_when_its_sign_changes():
    cache: SplitLRU[str, str] = SplitLRU(capacity=3, negative_capacity=1)
    cache.put("k", "denied", negative=True)
    cache.put("k", "allowed", negative=False)
    assert "k" in cache.positive and "k" not in cache.negative and cache.get("k") == "allowed"
    cache.put("k", "denied again", negative=True)
    assert cache.positive.keys() == [] and cache.negative.keys() == ["k"]
    assert cache.peek("k") == "denied again" and len(cache) == 1
    assert cache.pop("k") == "denied again" and "k" not in cache and cache.pop("k") is None
    cache.put("x", "y", negative=False)
    cache.clear()
    assert len(cache) == 0


def test_reading_refreshes_within_the_entrys_own_segment():
    cache: SplitLRU[str, int] = SplitLRU(capacity=2, negative_capacity=2)
    cache.put("a", 1, negative=False)
    cache.put("b", 2, negative=False)
    assert cache.get("a") == 1
    cache.put("c", 3, negative=False)
    assert cache.positive.keys() == ["a", "c"]
    assert cache.peek("b") is None and cache.get("b") is None
