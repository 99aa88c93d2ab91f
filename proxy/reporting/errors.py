"""Why a report stops: 3scale refusing or unreachable (retry later), or a lease another replica now holds."""

from __future__ import annotations


class ReportFailed(Exception):
    """This service's report cannot go on now (3scale unreachable or refusing the service); retry after a
    backoff. `result` is the reports_total label: failed, timeout (may have arrived) or rejected."""

    def __init__(self, message: str, result: str = "failed") -> None:
        super().__init__(message)
        self.result = result


class LeaseLost(Exception):
    """Another replica has taken the batch over: stop working on it, send nothing more of it."""
