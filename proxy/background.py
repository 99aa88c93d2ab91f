"""One helper for every background loop (usage flush, reporting, health probes): the same failure handling
for all of them: the loop survives any exception, logs it, counts it, backs off with jitter, and stops by
a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]


class Periodic:
    """Runs `step` every `interval` seconds until stopped.

    An exception of a type in `expected` (an outage: Redis or 3scale down) is logged as a warning; any other
    is logged with its traceback and counted in `errors{kind=name}`. Either way the next run waits
    `interval × 2^failures` (capped at `backoff_max`, ±`jitter`) so a dead dependency is not hammered.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        interval: float,
        errors: Counter,
        *,
        backoff_max: float | None = None,
        expected: tuple[type[BaseException], ...] = (),
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._step = step
        self._interval = interval
        self._errors = errors
        self._backoff_max = backoff_max if backoff_max is not None else interval
        self._expected = expected
        self._jitter = jitter
        self._rng = rng
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # consecutive failed runs

    def start(self, *, at_once: bool = True) -> None:
        """Run in a task of its own; the first run happens at once, or after one interval."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(at_once), name=self.name)

    def next_delay(self) -> float:
        """The pause before the next run: the interval, or the backoff after failures, with jitter."""
        delay = self._interval * 2 ** min(self.failures, 16) if self.failures else self._interval
        delay = min(delay, max(self._backoff_max, self._interval))
        return max(0.0, delay * (1 + self._jitter * (2 * self._rng() - 1)))

    async def run_once(self) -> bool:
        """One run of the step with the loop's failure handling; True when it succeeded."""
        try:
            await self._step()
        except self._expected as exc:
            self.failures += 1
            log.warning(f"{self.name} failed", extra={"fields": {"error": str(exc), "failures": self.failures}})
            return False
        except Exception:  # the loop must survive anything, and say so
            self.failures += 1
            self._errors.labels(self.name).inc()
            log.exception(f"{self.name} crashed")
            return False
        self.failures = 0
        return True

    async def _loop(self, at_once: bool) -> None:
        if not at_once:
            await self._pause()
        while not self._stop.is_set():
            await self.run_once()
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.next_delay())

    async def stop(self, grace: float) -> None:
        """Ask the loop to end; after `grace` seconds a run still going is cancelled (it must be safe to)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
