"""Drains the shared usage buffer to 3scale: `POST /transactions.xml` in batches, at least once, never lost.

3scale answers 202 and later drops a whole POST silently if one transaction names a deleted application or
an unknown metric, so every batch's applications are re-authorized first and what 3scale now rejects goes to
a dead-letter list instead. A batch is deleted chunk by chunk as 3scale accepts it; a failed send keeps it
for the next round (with backoff), and a batch left by a dead replica is taken over when its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from .authorizer import SERVICE_CONFIG_CODES, Authorizer
from .config import ReportSettings, ServiceSettings
from .limits import Limiter
from .logs import mask
from .metrics import Metrics, observe_backend
from .store import Store, StoreUnavailable, parse_usage_field
from .threescale.client import ThreescaleClient
from .threescale.errors import BackendUnavailable, RequestRejected
from .threescale.models import AppCredentials, AuthStatus, Transaction

log = logging.getLogger(__name__)

APP_GONE_CODES = frozenset({"user_key_invalid", "application_not_found", "authentication_error"})
MAX_AGE = 86400 - 600  # 3scale refuses timestamps older than 24 h; keep a margin for clock skew
MAX_BATCHES_PER_ROUND = 50
_METRIC_INVALID = re.compile(r'metric "([^"]+)" is invalid')

Ack = Callable[[list[str]], Awaitable[None]]


class ReportFailed(Exception):
    """This round cannot go on (3scale unreachable or refusing the service); retry after a backoff.

    `result` is the reports_total label: failed, timeout (may have arrived) or rejected.
    """

    def __init__(self, message: str, result: str = "failed") -> None:
        super().__init__(message)
        self.result = result


class Reporter:
    """Reports every service's pending usage every `report.interval` seconds."""

    def __init__(
        self,
        store: Store,
        client: ThreescaleClient,
        services: Sequence[ServiceSettings],
        settings: ReportSettings,
        metrics: Metrics,
        limiter: Limiter,
        authorizer: Authorizer,
        *,
        in_memory: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._in_memory = in_memory
        self._client = client
        self._services = list(services)
        self._settings = settings
        self._metrics = metrics
        self._limiter = limiter
        self._authorizer = authorizer
        self._clock = clock
        self._failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Report, wait an interval (longer after failures), repeat until `stop` is set."""
        while not stop.is_set():
            try:
                await self.report_all()
                self._failures = 0
            except (ReportFailed, StoreUnavailable) as exc:
                self._failures += 1
                log.warning("report round failed", extra={"fields": {"error": str(exc), "failures": self._failures}})
            except Exception:  # the loop must survive anything, and say so
                self._failures += 1
                self._metrics.errors.labels("reporter").inc()
                log.exception("report round crashed")
            with contextlib.suppress(StoreUnavailable):
                await self.update_pending_gauge()
            delay = min(self._settings.backoff_max, self._settings.interval * 2 ** min(self._failures, 16))
            if not self._failures:
                delay = self._settings.interval
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    async def report_all(self) -> None:
        """One round: take and report batches of every service until the buffer is empty."""
        for service in self._services:
            for _ in range(MAX_BATCHES_PER_ROUND):
                batch = await self._store.take_batch(service.id, self._clock(), self._settings.lease, uuid.uuid4().hex)
                if batch is None:
                    break

                async def ack(fields: list[str], batch_id: str = batch.id, sid: str = service.id) -> None:
                    await self._store.ack(sid, batch_id, fields)

                try:
                    await self.send_fields(service, batch.fields, ack, batch.id)
                except ReportFailed:
                    # Retry after the backoff rather than the whole lease; any replica may pick it up then.
                    retry_in = min(
                        self._settings.backoff_max, self._settings.interval * 2 ** min(self._failures + 1, 16)
                    )
                    await self._store.renew(service.id, batch.id, self._clock() + retry_in)
                    raise

    async def update_pending_gauge(self) -> None:
        """Usage not yet reported: this replica's memory plus the shared buffer."""
        total = self._in_memory()
        for service in self._services:
            total += await self._store.pending_size(service.id)
        self._metrics.usage_pending.set(total)

    async def send_fields(
        self, service: ServiceSettings, fields: dict[str, int], ack: Ack, batch_id: str | None = None
    ) -> None:
        """Verify, dead-letter what 3scale would reject, and report the rest in POSTs of max_batch."""
        try:
            await self._send_fields(service, fields, ack, batch_id)
        except ReportFailed as exc:
            self._metrics.reports.labels(exc.result).inc()
            raise

    async def _send_fields(
        self, service: ServiceSettings, fields: dict[str, int], ack: Ack, batch_id: str | None
    ) -> None:
        transactions: dict[tuple[int, str, str], dict[str, int]] = {}
        names: dict[tuple[int, str, str], list[str]] = {}
        for name, delta in fields.items():
            minute, kind, metric, app = parse_usage_field(name)
            if delta <= 0:
                continue
            transactions.setdefault((minute, kind, app), {})[metric] = delta
            names.setdefault((minute, kind, app), []).append(name)
        empty = [n for n, d in fields.items() if d <= 0]
        if empty:
            await ack(empty)

        apps = {(kind, app) for _, kind, app in transactions}
        rejected: dict[tuple[str, str], dict[str, str]] = {}  # (kind, app) → metric → reason (or "*" → reason)
        for kind, app in sorted(apps):
            metrics = sorted({m for (_, k, a), usage in transactions.items() if (k, a) == (kind, app) for m in usage})
            rejected[(kind, app)] = await self._verify(service, kind, app, metrics)

        await self._dead_letter(service, transactions, names, rejected, ack)
        keep = []
        for key, usage in transactions.items():
            bad = rejected.get((key[1], key[2]), {})
            if "*" in bad:
                continue
            good = {m: n for m, n in usage.items() if m not in bad}
            if good:
                keep.append((key, good, [n for n in names[key] if parse_usage_field(n)[2] in good]))

        size = self._settings.max_batch
        for i in range(0, len(keep), size):
            chunk = keep[i : i + size]
            if batch_id is not None:
                await self._store.renew(service.id, batch_id, self._clock() + self._settings.lease)
            await self._post(service, [self._transaction(k, usage) for k, usage, _ in chunk])
            await ack([n for _, _, chunk_names in chunk for n in chunk_names])

    async def _post(self, service: ServiceSettings, transactions: list[Transaction]) -> None:
        call = self._client.report(service.id, service.token, transactions)
        try:
            await observe_backend(self._metrics, "report", call, lambda _: 202)
        except BackendUnavailable as exc:
            # Not idempotent: after a timeout it may have arrived; sending again risks one duplicate, not a loss.
            result = "timeout" if getattr(exc, "maybe_delivered", False) else "failed"
            raise ReportFailed(f"3scale unavailable for service {service.id}: {type(exc).__name__}", result) from None
        except RequestRejected as exc:
            log.error("3scale rejected a report", extra={"fields": {"service": service.id, "code": exc.code}})
            raise ReportFailed(f"3scale rejected the report for service {service.id}: {exc.code}", "rejected") from None
        self._metrics.reports.labels("ok").inc()
        self._metrics.report_batch_size.observe(len(transactions))

    def _transaction(self, key: tuple[int, str, str], usage: dict[str, int]) -> Transaction:
        minute, kind, app = key
        stamp = minute * 60
        if self._clock() - stamp > MAX_AGE:
            self._metrics.errors.labels("usage_late").inc()  # 3scale would drop the batch: count it now instead
            stamp = int(self._clock())
        creds = AppCredentials(user_key=app) if kind == "user_key" else AppCredentials(app_id=app)
        return Transaction(creds, usage, timestamp=datetime.fromtimestamp(stamp, UTC))

    async def _verify(self, service: ServiceSettings, kind: str, app: str, metrics: list[str]) -> dict[str, str]:
        """Which of the app's metrics 3scale would now reject: {} all fine, {"*": reason} the whole app."""
        creds = AppCredentials(user_key=app) if kind == "user_key" else AppCredentials(app_id=app)
        bad: dict[str, str] = {}
        remaining = list(metrics)
        while True:
            call = self._client.authorize(service.id, service.token, creds, {m: 0 for m in remaining})
            try:
                status: AuthStatus = await observe_backend(self._metrics, "authorize", call, lambda s: s.http_status)
            except BackendUnavailable as exc:
                raise ReportFailed(f"3scale unavailable for service {service.id}: {type(exc).__name__}") from None
            if status.authorized or status.http_status == 409:
                await self._refresh(service, creds, status)  # suspended or over a limit still takes reports
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
                raise ReportFailed(f"3scale rejects service {service.id}'s own credentials: {status.code}")
            raise ReportFailed(f"unexpected answer {status.http_status} {status.code} from 3scale")

    async def _refresh(self, service: ServiceSettings, creds: AppCredentials, status: AuthStatus) -> None:
        """The re-authorization doubles as a sync: cached decision and limit windows take 3scale's values."""
        self._authorizer.remember_status(service, creds, status)
        try:
            await self._limiter.sync(service.id, creds, status.usage_reports)
        except StoreUnavailable:
            pass

    async def _dead_letter(
        self,
        service: ServiceSettings,
        transactions: dict[tuple[int, str, str], dict[str, int]],
        names: dict[tuple[int, str, str], list[str]],
        rejected: dict[tuple[str, str], dict[str, str]],
        ack: Ack,
    ) -> None:
        entries, dead_names = [], []
        for key, usage in transactions.items():
            minute, kind, app = key
            bad = rejected.get((kind, app), {})
            dead = {m: n for m, n in usage.items() if "*" in bad or m in bad}
            if not dead:
                continue
            reason = bad.get("*") or ",".join(sorted({bad[m] for m in dead}))
            shown = mask(app) if kind == "user_key" else app
            entries.append(
                json.dumps({"app": shown, "kind": kind, "minute": minute * 60, "usage": dead, "reason": reason})
            )
            dead_names += [n for n in names[key] if parse_usage_field(n)[2] in dead]
            log.warning(
                "usage 3scale would reject was dead-lettered",
                extra={"fields": {"service": service.id, "app": shown, "reason": reason, "usage": dead}},
            )
        if entries:
            await self._store.dead_letter(service.id, entries)
            await ack(dead_names)
            self._metrics.reports.labels("dead_letter").inc(len(entries))
