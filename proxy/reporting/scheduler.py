"""Drains the shared usage buffer to 3scale: `POST /transactions.xml` in batches, at least once, never lost.

Every round takes each service's pending usage as leased batches, re-authorizes their applications,
dead-letters what 3scale would reject and reports the rest in POSTs of `max_batch`, forgetting each chunk as
3scale accepts it. Services are isolated: one whose report fails (3scale refusing its token, say) backs off
on its own while the others go on; a batch left by a dead replica is taken over when its lease ends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..clock import Clock, system_clock
from ..config import ReportSettings, ServiceSettings
from ..metrics import Metrics, observe_backend
from ..store import Store
from ..threescale.client import ThreescaleClient
from ..threescale.errors import BackendUnavailable, RequestRejected
from ..threescale.models import Transaction
from . import dead_letters
from .batch import Dead, Pending, group, transaction
from .errors import LeaseLost, ReportFailed
from .lease import Lease
from .verify import OnStatus, Verifier, ignore_status

log = logging.getLogger(__name__)

MAX_BATCHES_PER_ROUND = 50  # per service: a backlog drains over several rounds instead of holding one forever

Ack = Callable[[list[str]], Awaitable[None]]


@dataclass(slots=True)
class _ServiceState:
    """One service's report health: its failures in a row and when it may be tried again."""

    failures: int = 0
    retry_at: float = 0.0


class Reporter:
    """Reports every service's pending usage, one round every `report.interval` seconds."""

    def __init__(
        self,
        store: Store,
        client: ThreescaleClient,
        services: Sequence[ServiceSettings],
        settings: ReportSettings,
        metrics: Metrics,
        *,
        on_status: OnStatus = ignore_status,
        in_memory: Callable[[], int] = lambda: 0,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._in_memory = in_memory
        self._client = client
        self._services = list(services)
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._verifier = Verifier(client, metrics, concurrency=settings.verify_concurrency, on_status=on_status)
        self._state = {service.id: _ServiceState() for service in self._services}
        self._owner = uuid.uuid4().hex  # this replica's lease owner token

    def set_services(self, services: Sequence[ServiceSettings]) -> None:
        """A new configuration (from 3scale): its services replace those of the same id; a service it no
        longer has stays known, so the usage counted for it is still reported with its token."""
        known = {service.id: service for service in self._services}
        for service in services:
            known[service.id] = service
            self._state.setdefault(service.id, _ServiceState())
        self._services = list(known.values())

    def service(self, service_id: str) -> ServiceSettings | None:
        """The settings last known for a service id (reporting needs its token)."""
        return next((s for s in self._services if s.id == service_id), None)

    async def report_all(self, *, force: bool = False) -> list[ReportFailed]:
        """One round over every service (those backing off are skipped unless `force`). Returns the services'
        failures, each counted and logged, so one tenant's trouble never stops the others; StoreUnavailable
        (the buffer itself is unreachable) ends the round."""
        failures = []
        for service in self._services:
            state = self._state[service.id]
            if not force and self._clock() < state.retry_at:
                continue
            try:
                await self._report_service(service, state)
            except ReportFailed as exc:
                failures.append(exc)
            else:
                state.failures = 0
                state.retry_at = 0.0
        return failures

    async def _report_service(self, service: ServiceSettings, state: _ServiceState) -> None:
        for _ in range(MAX_BATCHES_PER_ROUND):
            batch = await self._store.take_batch(
                service.id,
                self._clock(),
                self._settings.lease,
                uuid.uuid4().hex,
                owner=f"{self._owner}:{uuid.uuid4().hex[:8]}",
                max_fields=self._settings.batch_fields,
            )
            if batch is None:
                return
            async with Lease(self._store, service.id, batch, self._settings.lease, self._clock) as lease:
                try:
                    await self._send(service, batch.fields, lease.ack, lease)
                except ReportFailed as exc:
                    self._failed(service, state, exc)
                    await lease.hold_until(state.retry_at)  # retried after the backoff, by any replica
                    raise
                except LeaseLost as exc:
                    self._metrics.reports.labels(service.id, "lease_lost").inc()
                    log.warning("batch taken over by another replica", extra={"fields": {"error": str(exc)}})
                    return

    def _failed(self, service: ServiceSettings, state: _ServiceState, exc: ReportFailed) -> None:
        state.failures += 1
        backoff = min(self._settings.backoff_max, self._settings.interval * 2 ** min(state.failures, 16))
        state.retry_at = self._clock() + backoff
        self._metrics.reports.labels(service.id, exc.result).inc()
        log.warning(
            "report failed; this service backs off, the others go on",
            extra={
                "fields": {"service": service.id, "error": str(exc), "failures": state.failures, "retry_in": backoff}
            },
        )

    async def send_fields(self, service: ServiceSettings, fields: dict[str, int], ack: Ack) -> None:
        """Verify and report usage that is in no batch (Redis down at shutdown: straight from memory)."""
        try:
            await self._send(service, fields, ack, None)
        except ReportFailed as exc:
            self._metrics.reports.labels(service.id, exc.result).inc()
            raise

    async def update_pending_gauge(self) -> None:
        """Usage not yet reported: this replica's memory plus the shared buffer."""
        total = self._in_memory()
        for service in self._services:
            total += await self._store.pending_size(service.id)
        self._metrics.usage_pending.set(total)

    async def _send(self, service: ServiceSettings, fields: dict[str, int], ack: Ack, lease: Lease | None) -> None:
        """Verify, dead-letter what 3scale would reject, and report the rest in POSTs of max_batch."""
        grouped = group(fields)
        if grouped.empty:
            await ack(grouped.empty)
        rejected = await self._verifier.verify(service, grouped.apps())
        send, dead = grouped.split(rejected)
        if dead:
            await self._dead_letter(service, dead, ack)
        size = self._settings.max_batch
        for i in range(0, len(send), size):
            chunk = send[i : i + size]
            if lease is not None:
                await lease.confirm()  # a whole lease ahead of this POST, or LeaseLost and no POST
            await self._post(service, [self._transaction(p) for p in chunk])
            await ack([name for p in chunk for name in p.fields])
        if not fields and lease is not None:
            await ack([])  # a batch whose fields are all gone: drop its lease entry

    def _transaction(self, pending: Pending) -> Transaction:
        tx, late = transaction(pending, self._clock())
        if late:
            self._metrics.errors.labels("usage_late").inc()  # 3scale would drop the batch: count it now instead
        return tx

    async def _post(self, service: ServiceSettings, transactions: list[Transaction]) -> None:
        call = self._client.at(service.backend_url).report(service.id, service.token, transactions)
        try:
            await observe_backend(self._metrics, "report", call, lambda _: 202)
        except BackendUnavailable as exc:
            # Not idempotent: after a timeout it may have arrived; sending again risks one duplicate, not a loss.
            result = "timeout" if getattr(exc, "maybe_delivered", False) else "failed"
            raise ReportFailed(f"3scale unavailable for service {service.id}: {type(exc).__name__}", result) from None
        except RequestRejected as exc:
            log.error("3scale rejected a report", extra={"fields": {"service": service.id, "code": exc.code}})
            raise ReportFailed(f"3scale rejected the report for service {service.id}: {exc.code}", "rejected") from None
        self._metrics.reports.labels(service.id, "ok").inc()
        self._metrics.report_batch_size.observe(len(transactions))

    async def _dead_letter(self, service: ServiceSettings, dead: list[Dead], ack: Ack) -> None:
        for item in dead:
            log.warning(
                "usage 3scale would reject was dead-lettered",
                extra={
                    "fields": {
                        "service": service.id,
                        "app": dead_letters.shown_app(item.key[1], item.key[2]),
                        "reason": item.reason,
                        "usage": item.usage,
                    }
                },
            )
        await self._store.dead_letter(service.id, [dead_letters.entry(item) for item in dead])
        await ack([name for item in dead for name in item.fields])
        self._metrics.reports.labels(service.id, "dead_letter").inc(len(dead))
