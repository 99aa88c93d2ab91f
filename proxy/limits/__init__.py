"""Step 5, limits between syncs with 3scale: the limiter, and (split out as pure code) its windows, ledger and
rate-limit headers. The public names are re-exported here so `from proxy.limits import Limiter` keeps working."""

from .limiter import ALLOWED_UNLIMITED, MAX_PLANS, Limiter, LimitResult, app_digest
from .windows import expand_usage

__all__ = ["ALLOWED_UNLIMITED", "MAX_PLANS", "LimitResult", "Limiter", "app_digest", "expand_usage"]
