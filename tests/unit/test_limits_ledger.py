"""The local allowance ledger: spending, shortfalls, grants, the store-down fallback and settlements."""

from proxy.limits.ledger import Claim, Ledger
from proxy.store import Settlement
from proxy.threescale.models import UsageReport

NOW = 1_800_000_000.0
END = NOW + 60
MONTH = UsageReport("hits", "month", None, None, max_value=1000, current_value=0)


def claim(key: str = "k", need: int = 1, base: int = 0, report: UsageReport = MONTH, end: float = END) -> Claim:
    return Claim("svc", key, report, need, base, NOW - 10, end)


def test_nothing_is_spent_without_an_allowance():
    ledger = Ledger(divisor=8)
    assert not ledger.take([claim()])
    assert ledger.shortfall([claim(need=3)]) == [(claim(need=3), 3)]
    assert len(ledger) == 0


def test_a_grant_is_spent_locally_until_it_runs_out():
    ledger = Ledger(divisor=8)
    ledger.grant(claim(), granted=5, free_after=870)
    assert ledger.allowance("k") == 5 and ledger.held() == 5
    assert [ledger.take([claim(need=2)]) for _ in range(3)] == [True, True, False]
    assert ledger.allowance("k") == 1
    assert ledger.shortfall([claim(need=2)]) == [(claim(need=2), 1)]
    assert ledger.remaining(claim()) == 870 + 1
    w = ledger.get("k")
    assert w is not None and (w.used, w.counted, w.active) == (4, 4, True)


def test_take_is_all_or_nothing_across_windows():
    ledger = Ledger(divisor=8)
    ledger.grant(claim("a"), granted=3, free_after=0)
    ledger.grant(claim("b"), granted=1, free_after=0)
    assert not ledger.take([claim("a", need=1), claim("b", need=2)])
    assert (ledger.allowance("a"), ledger.allowance("b")) == (3, 1)
    assert ledger.take([claim("a", need=1), claim("b", need=1)])
    assert (ledger.allowance("a"), ledger.allowance("b")) == (2, 0)


def test_a_denial_knows_whether_other_replicas_hold_slices():
    ledger = Ledger(divisor=8)
    ledger.grant(claim(), granted=4, free_after=0)
    assert not ledger.others_hold(claim(), reserved=4)
    assert ledger.others_hold(claim(), reserved=5)
    assert ledger.others_hold(claim("elsewhere"), reserved=1)


def test_store_down_counts_alone_against_3scales_value():
    ledger = Ledger(divisor=8)
    c = claim(need=1, base=998)
    assert ledger.fits_alone(c) and ledger.remaining(c) == 2
    ledger.count_alone([c])
    assert ledger.fits_alone(c)
    ledger.count_alone([c])
    assert not ledger.fits_alone(c)  # 998 + 2 + 1 > 1000
    assert ledger.settle(NOW) == {"svc": [Settlement("k", used=0, release=0, ttl=60 + 120, extra=2)]}


def test_settlement_turns_used_into_usage_and_keeps_a_busy_roomy_slice():
    ledger = Ledger(divisor=8)
    ledger.grant(claim(), granted=100, free_after=900)
    assert ledger.take([claim(need=10)])
    # active, and 900 free >= 90 held * 8 / 2: the slice stays for the next requests
    assert ledger.settle(NOW) == {"svc": [Settlement("k", used=10, release=0, ttl=180)]}
    assert ledger.allowance("k") == 90
    # idle since: the slice goes back
    assert ledger.settle(NOW + 1) == {"svc": [Settlement("k", used=0, release=90, ttl=179)]}
    assert ledger.allowance("k") == 0 and ledger.held() == 0
    assert ledger.settle(NOW + 2) == {}


def test_settlement_gives_back_a_slice_near_the_limit_or_past_the_window():
    ledger = Ledger(divisor=8)
    ledger.grant(claim("tight"), granted=20, free_after=60)  # 60 free < 19 held * 8 / 2: others may need it
    ledger.grant(claim("ended", end=NOW + 5), granted=20, free_after=900)
    assert ledger.take([claim("tight"), claim("ended", end=NOW + 5)])
    assert ledger.settle(NOW + 5) == {
        "svc": [Settlement("tight", 1, 19, 175), Settlement("ended", 1, 19, 120)],
    }


def test_release_all_gives_back_every_slice():
    ledger = Ledger(divisor=8)
    ledger.grant(claim(), granted=100, free_after=900)
    assert ledger.take([claim()])
    assert ledger.settle(NOW, release_all=True) == {"svc": [Settlement("k", used=1, release=99, ttl=180)]}
    assert ledger.held() == 0


def test_windows_long_over_are_forgotten():
    ledger = Ledger(divisor=8)
    ledger.grant(claim(), granted=2, free_after=0)
    assert ledger.take([claim()])
    ledger.settle(END + 119)
    assert len(ledger) == 1  # late settlements may still land for KEEP_AFTER_WINDOW
    ledger.settle(END + 120)
    assert len(ledger) == 0 and ledger.get("k") is None


def test_over_its_bound_the_ledger_forgets_idle_windows_oldest_first_never_a_held_one():
    ledger = Ledger(divisor=8, max_windows=3)
    ledger.grant(claim("held"), granted=50, free_after=900)
    for key in ("a", "b", "c", "d"):
        ledger.grant(claim(key), granted=1, free_after=900)
        assert ledger.take([claim(key)])  # spent: nothing left held in these
    assert ledger.take([claim("held")])
    ledger.settle(NOW)  # "held" is busy and roomy: it keeps its slice
    assert len(ledger) == 3
    assert [k for k in ("held", "a", "b", "c", "d") if ledger.get(k) is not None] == ["held", "c", "d"]
    assert ledger.allowance("held") == 49
