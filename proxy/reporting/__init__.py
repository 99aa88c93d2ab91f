"""Usage reporting: drains the shared buffer to 3scale in leased, verified batches.

`scheduler` runs the rounds (per-service isolation and backoff), `batch` turns buffer fields into
transactions, `verify` re-authorizes applications (bounded concurrency), `lease` holds a batch with a
heartbeat, `dead_letters` records what 3scale would reject. Fresh 3scale answers go to an injected
`on_status` callback: this package imports neither the authorizer nor the limiter.
"""

from .errors import LeaseLost, ReportFailed
from .scheduler import Reporter
from .verify import OnStatus

__all__ = ["LeaseLost", "OnStatus", "ReportFailed", "Reporter"]
