"""Holding a batch's lease while this replica works on it, so no other replica takes it over meanwhile.

A heartbeat renews the lease every third of it for as long as the work lasts (verification of many apps
against a slow 3scale may take longer than one lease). Before each POST the lease is renewed once more and
checked: every POST starts with a whole lease ahead, and `report.lease > threescale.timeout + 1 s` (see
config) means it and its ack end before any other replica may take the batch. Renewals and acks are checked
against the owner token in Redis, so a replica that lost its lease (a long pause) learns it and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from ..clock import Clock
from ..store import Batch, Store, StoreUnavailable
from .errors import LeaseLost

log = logging.getLogger(__name__)

ACK_RETRY = 0.25  # seconds between attempts to record an accepted chunk while Redis is briefly away


class Lease:
    """`async with Lease(...) as lease:` renews in the background; `confirm()` and `ack()` check ownership."""

    def __init__(self, store: Store, service_id: str, batch: Batch, seconds: float, clock: Clock) -> None:
        self._store = store
        self._service_id = service_id
        self.batch = batch
        self._seconds = seconds
        self._clock = clock
        self._heartbeat: asyncio.Task[None] | None = None
        self.lost = False

    async def __aenter__(self) -> Lease:
        self._heartbeat = asyncio.ensure_future(self._beat())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    async def _beat(self) -> None:
        """Renew every third of the lease; a failed renewal (Redis away) is retried at the next beat."""
        while not self.lost:
            await asyncio.sleep(self._seconds / 3)
            with contextlib.suppress(StoreUnavailable):
                await self._renew(self._clock() + self._seconds)

    async def _renew(self, until: float) -> None:
        if not await self._store.renew(self._service_id, self.batch.id, self.batch.owner, until):
            self.lost = True

    async def confirm(self) -> None:
        """Renew now and check: call right before a POST, which then has a whole lease to end in."""
        if not self.lost:
            await self._renew(self._clock() + self._seconds)
        if self.lost:
            raise LeaseLost(f"batch {self.batch.id} of service {self._service_id} was taken over")

    async def ack(self, fields: list[str]) -> None:
        """Forget fields 3scale accepted; LeaseLost (nothing forgotten) if another replica holds the batch.

        3scale has these already: a Redis blip here is retried for up to a lease (the heartbeat keeps the
        batch ours meanwhile), since giving up would let another replica send them a second time."""
        attempts = max(1, int(self._seconds / ACK_RETRY))
        for attempt in range(attempts):
            try:
                acked = await self._store.ack(self._service_id, self.batch.id, self.batch.owner, fields)
                break
            except StoreUnavailable:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(ACK_RETRY)
        if not acked:
            self.lost = True
            raise LeaseLost(f"batch {self.batch.id} of service {self._service_id} was taken over")

    async def hold_until(self, until: float) -> None:
        """Keep the batch (no takeover) until `until`: after a failure, retry it after the backoff, not later."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.renew(self._service_id, self.batch.id, self.batch.owner, until)
