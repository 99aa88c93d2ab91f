"""`workers: 2`: one `serve` supervisor, two worker processes on one port, a real Redis and the 3scale emulator.

Which worker answered a request is read from the access log (every worker's lines carry its `pid`); each
request opens a new connection, since the kernel spreads connections, not requests, over the workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.emulator import Emulator
from tests.e2e.replicas import Replica, ReplicaSet, metric_samples, proxy_config
from tests.support import KEY, Upstream, eventually, reported_totals

SHUTDOWN_TIMEOUT = 10.0


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaSet]:
    pool = ReplicaSet(tmp_path)
    yield pool
    pool.cleanup()


@pytest.fixture
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a connection per request (keep-alive would pin it to one worker)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def workers_config(emulator: Emulator, upstream: Upstream, redis_url: str, **sections: Any) -> dict[str, Any]:
    return proxy_config(
        emulator.url,
        upstream.url,
        redis_url,
        workers=2,
        log={"access_log": True},
        shutdown={"drain_delay": 0.2, "timeout": SHUTDOWN_TIMEOUT},
        **sections,
    )


def log_lines(replica: Replica) -> list[dict[str, Any]]:
    """The JSON lines on stdout so far (every process of the supervisor writes there)."""
    if not replica.stdout_path.exists():
        return []
    lines = []
    for raw in replica.stdout_path.read_text(errors="replace").splitlines():
        entry = json.loads(raw)  # a line cut by another process's write would fail here
        lines.append(entry)
    return lines


def ready_workers(replica: Replica) -> dict[int, int]:
    """The pid of the latest ready process of each worker index."""
    return {
        line["worker"]: line["pid"]
        for line in log_lines(replica)
        if line["msg"] == "threescale-proxy ready" and "worker" in line
    }


def serving_pids(replica: Replica) -> set[int]:
    return {line["pid"] for line in log_lines(replica) if line["logger"] == "threescale_proxy.access"}


async def start_workers(replicas: ReplicaSet, config: dict[str, Any], *, port_0: bool = False) -> Replica:
    """Start the supervisor and wait until both workers are ready; with `port_0` the supervisor picks the
    ports and the replica learns them from its first log line."""
    replica = Replica(f"supervisor-{len(replicas.replicas)}", replicas.workdir, config)
    if port_0:
        replica.port = replica.metrics_port = 0
    replicas.replicas.append(replica)
    replica.start()
    if port_0:

        def started() -> dict[str, Any] | None:
            return next((line for line in log_lines(replica) if line["msg"] == "starting workers"), None)

        line = await eventually(started, 20, what="the supervisor's first line")
        replica.port = int(line["listen"].rpartition(":")[2])
        replica.metrics_port = int(line["metrics_listen"].rpartition(":")[2])
        assert replica.port and replica.metrics_port and replica.port != replica.metrics_port
    await eventually(lambda: len(ready_workers(replica)) == 2 or not replica.running, 30, what="two ready workers")
    assert replica.running, replica.tail()
    return replica


async def send(http: aiohttp.ClientSession, replica: Replica, count: int, start: int = 0) -> None:
    """`count` requests, each on a new connection, all answered 200."""
    for i in range(start, start + count):
        async with http.get(f"{replica.url}/v1/catalog/{i}", headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200, await resp.text()


async def until_both_serve(http: aiohttp.ClientSession, replica: Replica, pids: set[int], sent: int) -> int:
    """Send batches until every pid in `pids` has answered one; the number of requests sent in all."""
    deadline = time.monotonic() + 30
    while not pids <= serving_pids(replica):
        assert time.monotonic() < deadline, f"workers {pids - serving_pids(replica)} never served a request"
        await send(http, replica, 20, sent)
        sent += 20
        await eventually(lambda n=sent: access_lines(replica) >= n, 10, what="the access log lines")
    return sent


def is_dir(path: str) -> bool:
    return os.path.isdir(path)


def access_lines(replica: Replica) -> int:
    return sum(1 for line in log_lines(replica) if line["logger"] == "threescale_proxy.access")


async def requests_total(replica: Replica) -> float:
    text = await replica.metrics_text()
    return sum(value for _, value in metric_samples(text, "threescale_proxy_requests_total"))


async def test_two_workers_share_the_port_sum_their_metrics_and_report_everything_on_sigterm(
    replicas, emulator, upstream, redis_url, fresh_connections
):
    replica = await start_workers(replicas, workers_config(emulator, upstream, redis_url), port_0=True)
    pids = set(ready_workers(replica).values())
    assert len(pids) == 2 and replica.proc is not None and replica.proc.pid not in pids

    sent = await until_both_serve(fresh_connections, replica, pids, 0)
    assert serving_pids(replica) == pids

    # one /metrics for both: whichever worker answers, the counts add up to every request sent
    for _ in range(4):
        await eventually(lambda: _equals(requests_total(replica), sent), 10, what=f"requests_total == {sent}")

    metrics_dir = next(line for line in log_lines(replica) if line["msg"] == "starting workers")["metrics_dir"]
    assert is_dir(metrics_dir)
    started = time.monotonic()
    code = await replica.terminate(SHUTDOWN_TIMEOUT + 5)
    assert code == 0, replica.tail()
    assert time.monotonic() - started < SHUTDOWN_TIMEOUT
    assert reported_totals(emulator, KEY) == {"hits": sent}  # every request's usage reached 3scale
    lines = log_lines(replica)
    stopped = {line["pid"] for line in lines if line["msg"] == "threescale-proxy stopped"}
    assert stopped == pids
    assert not is_dir(metrics_dir)  # the supervisor removed it


async def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    replicas, emulator, upstream, redis_url, fresh_connections
):
    replica = await start_workers(replicas, workers_config(emulator, upstream, redis_url))
    before = ready_workers(replica)
    sent = await until_both_serve(fresh_connections, replica, set(before.values()), 0)
    await eventually(lambda: _equals(requests_total(replica), sent), 10, what=f"requests_total == {sent}")
    # a SIGKILL loses what a worker holds only in memory (the flush is every 100 ms): wait until it reached 3scale
    await eventually(lambda: reported_totals(emulator, KEY) == {"hits": sent}, 10, what="the usage reported")

    victim_index, victim = next(iter(before.items()))
    os.kill(victim, signal.SIGKILL)

    def exit_logged() -> dict[str, Any] | None:
        return next(
            (line for line in log_lines(replica) if line["msg"].startswith("worker exited") and "exit_code" in line),
            None,
        )

    exited = await eventually(exit_logged, 10, what="the supervisor noticing the dead worker")
    assert exited["worker"] == victim_index and exited["worker_pid"] == victim
    assert exited["exit_code"] == -signal.SIGKILL and exited["signal"] == "SIGKILL" and exited["ready"] is True

    await send(fresh_connections, replica, 10, sent)  # the survivor (or the replacement) keeps serving the port
    sent += 10
    await eventually(lambda: ready_workers(replica)[victim_index] != victim, 30, what="the worker restarted")
    after = ready_workers(replica)
    assert after[1 - victim_index] == before[1 - victim_index]
    sent = await until_both_serve(fresh_connections, replica, {after[victim_index]}, sent)
    # the dead worker's counts stay in the sum
    await eventually(lambda: _equals(requests_total(replica), sent), 10, what=f"requests_total == {sent}")

    assert await replica.terminate(SHUTDOWN_TIMEOUT + 5) == 0, replica.tail()
    assert reported_totals(emulator, KEY) == {"hits": sent}


async def test_workers_that_cannot_bind_make_the_supervisor_exit_1(replicas, emulator, upstream, redis_url):
    taken = socket.socket()  # no SO_REUSEPORT: the workers cannot share it
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        replica = Replica("supervisor", replicas.workdir, workers_config(emulator, upstream, redis_url))
        replica.port = taken.getsockname()[1]
        replicas.replicas.append(replica)
        replica.start()
        assert await replica.wait_exit(60) == 1
    finally:
        taken.close()
    lines = log_lines(replica)
    gave_up = [line for line in lines if "before it was ready 3 times in a row" in line["msg"]]
    assert gave_up and gave_up[0]["level"] == "error", replica.tail()
    assert any(line["msg"] == "cannot start" and "worker" in line for line in lines)


async def _equals(value: Any, expected: float) -> bool:
    return bool(await value == expected)
