"""Re-authorize a batch's applications before reporting it, a bounded number at a time.

3scale accepts a POST with 202 and later drops all of it for one transaction naming a deleted application
or an unknown metric, so each application is asked first (`authorize` with zero usage). Each fresh answer
also goes to `on_status`, which refreshes the caches and limit windows: the report doubles as a sync.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping

from ..config import ServiceSettings
from ..decisions import SERVICE_CONFIG_CODES
from ..metrics import Metrics, observe_backend
from ..threescale.client import ThreescaleClient
from ..threescale.errors import BackendUnavailable
from ..threescale.models import AppCredentials, AuthStatus
from .batch import App, Rejections, credentials
from .errors import ReportFailed

APP_GONE_CODES = frozenset({"user_key_invalid", "application_not_found", "authentication_error"})
_METRIC_INVALID = re.compile(r'metric "([^"]+)" is invalid')

OnStatus = Callable[[ServiceSettings, AppCredentials, AuthStatus], Awaitable[None]]


async def ignore_status(_service: ServiceSettings, _creds: AppCredentials, _status: AuthStatus) -> None:
    """The default `on_status`: nothing to refresh."""


class Verifier:
    """Asks 3scale about every application of a batch, at most `concurrency` at once."""

    def __init__(
        self, client: ThreescaleClient, metrics: Metrics, *, concurrency: int = 10, on_status: OnStatus = ignore_status
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._concurrency = max(1, concurrency)
        self._on_status = on_status

    async def verify(self, service: ServiceSettings, apps: Mapping[App, list[str]]) -> dict[App, Rejections]:
        """What 3scale would now reject, per application; ReportFailed as soon as one answer says to stop."""
        queue = list(apps.items())
        queue.reverse()
        rejected: dict[App, Rejections] = {}

        async def worker() -> None:
            while queue:
                app, metrics = queue.pop()
                rejected[app] = await self._verify_app(service, app, metrics)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self._concurrency, len(queue)))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        return rejected

    async def _verify_app(self, service: ServiceSettings, app: App, metrics: list[str]) -> Rejections:
        """{} all fine, {metric: reason} for metrics 3scale does not know, {"*": reason} the whole app."""
        creds = credentials(*app)
        bad: Rejections = {}
        remaining = list(metrics)
        while True:
            call = self._client.at(service.backend_url).authorize(
                service.id, service.token, creds, {m: 0 for m in remaining}
            )
            try:
                status: AuthStatus = await observe_backend(self._metrics, "authorize", call, lambda s: s.http_status)
            except BackendUnavailable as exc:
                raise ReportFailed(f"3scale unavailable for service {service.id}: {type(exc).__name__}") from None
            if status.authorized or status.http_status == 409:
                await self._on_status(service, creds, status)  # suspended or over a limit still takes reports
                return bad
            if status.code in APP_GONE_CODES:
                return {"*": status.code or "rejected"}
            if status.code == "metric_invalid":
                m = _METRIC_INVALID.search(status.reason or "")
                if m is None or m.group(1) not in remaining:
                    return {**bad, **{metric: "metric_invalid" for metric in remaining}}
                bad[m.group(1)] = "metric_invalid"
                remaining.remove(m.group(1))
                if not remaining:
                    return bad
                continue
            if status.code in SERVICE_CONFIG_CODES:
                raise ReportFailed(f"3scale rejects service {service.id}'s own credentials: {status.code}", "rejected")
            raise ReportFailed(f"unexpected answer {status.http_status} {status.code} from 3scale")
