"""The periodic-task helper every background loop runs on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.background import Periodic
from proxy.metrics import Metrics


class Outage(Exception):
    pass


def loop(step, **kwargs) -> tuple[Periodic, Metrics]:
    metrics = Metrics()
    kwargs.setdefault("rng", lambda: 0.5)  # no jitter
    return Periodic("flush", step, 1.0, metrics.errors, **kwargs), metrics


def errors(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("threescale_proxy_errors_total", {"kind": kind}) or 0.0


async def test_failures_back_off_exponentially_up_to_the_cap_and_reset_on_success():
    outcomes = [Outage("redis down")] * 4 + [None]

    async def step() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    periodic, metrics = loop(step, backoff_max=5.0, expected=(Outage,))
    assert periodic.next_delay() == 1.0
    delays = []
    for _ in range(5):
        await periodic.run_once()
        delays.append(periodic.next_delay())
    assert delays == [2.0, 4.0, 5.0, 5.0, 1.0]
    assert errors(metrics, "flush") == 0  # an expected outage is a warning, not a crash


async def test_an_unexpected_exception_is_logged_counted_and_survived(caplog):
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("bug")

    periodic, metrics = loop(step)
    with caplog.at_level(logging.ERROR, logger="proxy.background"):
        assert await periodic.run_once() is False
    assert await periodic.run_once() is True
    assert errors(metrics, "flush") == 1
    assert [r.getMessage() for r in caplog.records] == ["flush crashed"] and caplog.records[0].exc_info


@pytest.mark.parametrize("draw, expected", [(0.0, 0.9), (1.0, 1.1)])
def test_jitter_spreads_the_delay(draw, expected):
    periodic, _ = loop(lambda: None, rng=lambda: draw)
    assert periodic.next_delay() == pytest.approx(expected)


async def test_stop_cancels_a_run_that_outlives_its_grace():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a call that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    periodic, _ = loop(step)
    periodic.start()
    await started.wait()
    await periodic.stop(grace=0.05)
    assert cancelled.is_set()


async def test_stop_lets_a_run_in_progress_finish_within_its_grace():
    started, release = asyncio.Event(), asyncio.Event()
    finished = []

    async def step() -> None:
        started.set()
        await release.wait()
        finished.append(True)

    periodic, _ = loop(step)
    periodic.start()
    await started.wait()
    asyncio.get_running_loop().call_soon(release.set)  # answers while stop() is already waiting
    await periodic.stop(grace=5.0)
    assert finished == [True]  # ended by itself, then the loop saw the stop and did not run again


@pytest.mark.parametrize("at_once, runs_before_first_pause", [(True, 1), (False, 0)])
async def test_the_first_run_is_at_once_or_after_one_interval(at_once, runs_before_first_pause):
    runs, paused = [], asyncio.Event()

    async def step() -> None:
        runs.append(1)

    def rng() -> float:  # drawn when the loop starts a pause
        if not paused.is_set():
            paused.set()
            seen.append(len(runs))
        return 0.5

    seen: list[int] = []
    periodic, _ = loop(step, rng=rng)
    periodic.start(at_once=at_once)
    await paused.wait()
    await periodic.stop(grace=1.0)
    assert seen == [runs_before_first_pause]
