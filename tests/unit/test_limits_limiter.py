"""The limiter on the in-process store: its bounded plan cache."""

from proxy.decisions import AuthDecision
from proxy.limits.limiter import Limiter
from proxy.metrics import Metrics
from proxy.store import MemoryStore
from proxy.threescale.models import AppCredentials, UsageReport
from tests.support import ManualClock

SERVICE = "svc"
DECISION = AuthDecision(
    allowed=True,
    fresh_until=float("inf"),
    stale_until=float("inf"),
    usage_reports=(UsageReport("hits", "eternity", None, None, max_value=1000, current_value=0),),
)


def app(name: str) -> AppCredentials:
    return AppCredentials(user_key=name)


async def test_the_plan_cache_forgets_only_the_least_recently_used_plan():
    clock = ManualClock()
    limiter = Limiter(MemoryStore(clock=clock), Metrics(), 0.1, max_plans=3, clock=clock)
    for name in ("a", "b", "c", "a", "d"):  # a is used again before d arrives: b is the least recent
        assert (await limiter.check(SERVICE, app(name), DECISION, {"hits": 1})).allowed
    cached = {name for name in "abcd" if (SERVICE, app(name)) in limiter._plans}
    assert cached == {"a", "c", "d"}
