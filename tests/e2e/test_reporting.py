"""Usage reporting, limits and shutdown, end to end: `serve` processes sharing a Redis, the 3scale emulator.

Every test counts what the clients were actually served (200 answers, metric by metric, app by app) and
compares it with what the emulator accepted (`emu.reported`, the raw usage of accepted transactions: 3scale
adds `orders` to its parent `hits` on its side, so parent counters would double-count). Faults are real:
SIGTERM and SIGKILL of processes, 3scale answering 503, redis-server killed and restarted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy.emulator import Emulator
from tests.e2e.replicas import (
    Ledger,
    Replica,
    ReplicaSet,
    metric_samples,
    proxy_config,
    reported_usage,
)
from tests.support import (
    KEY,
    OTHER_KEY,
    SERVICE_ID,
    RedisServer,
    UsageBuffer,
    emulator_config,
    eventually,
    free_port,
)

APPS = [KEY, OTHER_KEY, "third-key-1111111111", "fourth-key-222222222", "fifth-key-3333333333"]
"""Five applications: the emulator config's two and three added by `add_apps`."""

REQUEST_KINDS: list[tuple[str, str]] = [
    ("GET", "/v1/orders/{i}"),  # hits + orders
    ("POST", "/v1/orders/{i}"),  # hits only (the orders rule is GET)
    ("GET", "/v1/catalog/{i}"),  # hits only
]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaSet]:
    """Every proxy process a test starts; whatever still runs at teardown is killed, its logs printed."""
    pool = ReplicaSet(tmp_path)
    yield pool
    pool.cleanup()


@pytest.fixture
async def buffer(redis_url: str) -> AsyncIterator[UsageBuffer]:
    """The shared Redis usage buffer the replicas of a test write to (pending usage and in-flight batches)."""
    usage_buffer = UsageBuffer(redis_url)
    yield usage_buffer
    await usage_buffer.aclose()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session without a connection cap, so a burst of 150 really is concurrent."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def add_apps(emu: Emulator) -> None:
    for key in APPS[2:]:
        emu.add_application(SERVICE_ID, {"user_key": key, "plan": "basic"})


# ------------------------------------------------------------------------------------------------ client side


@dataclass
class Answer:
    """One request as the client saw it: a status (or the error instead), headers, body and its times."""

    app: str
    method: str
    path: str
    started: float
    ended: float
    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: bytes = b""
    error: str | None = None


async def call(
    session: aiohttp.ClientSession,
    replica: Replica,
    app: str,
    method: str = "GET",
    path: str = "/v1/orders/1",
    query: Mapping[str, str] | None = None,
) -> Answer:
    """Send one request; a connection error or timeout is returned in `error`, never raised."""
    answer = Answer(app, method, path, started=time.monotonic(), ended=0.0)
    try:
        async with session.request(method, replica.url + path, params=query, headers={"x-api-key": app}) as resp:
            answer.body = await resp.read()
            answer.status, answer.headers = resp.status, resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    answer.ended = time.monotonic()
    return answer


def request_for(i: int) -> tuple[str, str, str]:
    """The i-th request of a mix: app, method, path, cycling so every app gets every kind."""
    method, path = REQUEST_KINDS[(i // len(APPS)) % len(REQUEST_KINDS)]
    return APPS[i % len(APPS)], method, path.format(i=i)


async def warm(session: aiohttp.ClientSession, fleet: list[Replica], ledger: Ledger, apps: list[str]) -> None:
    """One request per app and replica, so every key is authorized and cached before the faults start."""
    for replica in fleet:
        for app in apps:
            answer = await call(session, replica, app)
            assert answer.status == 200, f"warm-up on {replica.name} for {app}: {answer.status} {answer.error}"
            ledger.record(app, answer.method, answer.path, 200)


async def run_load(
    session: aiohttp.ClientSession,
    fleet: list[Replica],
    ledger: Ledger,
    until: Callable[[], bool],
    workers: int = 4,
    answers: list[Answer] | None = None,
) -> None:
    """`workers` loops sending the request mix round-robin over `fleet` until `until()`; all go to `ledger`."""
    counter = itertools.count()

    async def worker() -> None:
        while not until():
            i = next(counter)
            app, method, path = request_for(i)
            answer = await call(session, fleet[i % len(fleet)], app, method, path)
            if answers is not None:
                answers.append(answer)
            if answer.error is not None:
                ledger.errors.append(answer.error)
                await asyncio.sleep(0.05)
            else:
                assert answer.status is not None
                ledger.record(app, method, path, answer.status)

    await asyncio.gather(*(worker() for _ in range(workers)))


def usage_diff(expected: Counter[tuple[str, str]], got: Counter[tuple[str, str]]) -> str:
    """The (app, metric) pairs that differ, for assertion messages."""
    keys = sorted(set(expected) | set(got))
    rows = [f"  {app}/{metric}: served {expected[app, metric]}, 3scale got {got[app, metric]}" for app, metric in keys]
    bad = [row for row, key in zip(rows, keys, strict=True) if expected[key] != got[key]]
    return "\n".join(bad) or "  (no difference)"


async def reported_equals(emu: Emulator, expected: Counter[tuple[str, str]], timeout: float) -> str | None:
    """Wait until 3scale's accepted usage equals `expected`; None when it does, else the difference."""
    try:
        await eventually(lambda: reported_usage(emu.reported) == expected, timeout, what="3scale's usage as served")
    except AssertionError:
        return usage_diff(expected, reported_usage(emu.reported))
    return None


async def readiness(replica: Replica) -> tuple[int, dict[str, str]]:
    """A replica's /readyz answer: its status and body (`{"status", "redis", "threescale"}`)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        async with session.get(f"{replica.admin_url}/readyz") as resp:
            return resp.status, await resp.json()


# ------------------------------------------------------------------------------------------------ 1. accounting


async def test_usage_served_by_three_replicas_reaches_3scale_exactly(
    emulator, upstream, redis_url, replicas, client, buffer
):
    """600 requests over 5 apps, 3 request kinds and 3 replicas sharing one Redis: after SIGTERM 3scale
    holds exactly what was served, per app and metric, once. The report interval (60 s) is longer than the
    test, so nothing is reported before the signal: all of it goes through the replicas' final flushes,
    which run at the same time on one shared buffer."""
    add_apps(emulator)
    config = proxy_config(emulator.url, upstream.url, redis_url, report={"interval": 60})
    fleet = await replicas.start(config, count=3)
    ledger = Ledger()
    gate = asyncio.Semaphore(24)

    async def one(i: int) -> None:
        app, method, path = request_for(i)
        async with gate:
            answer = await call(client, fleet[(i // 7) % 3], app, method, path)
        assert answer.status is not None, answer.error
        ledger.record(app, method, path, answer.status)

    await asyncio.gather(*(one(i) for i in range(600)))
    assert ledger.statuses == Counter({200: 600})
    # every replica has flushed: all the usage is in Redis, not only in memory
    await eventually(lambda: buffer.holds(ledger.usage), what="the served usage in the Redis buffer")
    assert emulator.reported == [], "reported before SIGTERM: the final flush would not be what is tested"

    codes = await replicas.terminate_all(fleet)
    assert codes == {r.name: 0 for r in fleet}
    got = reported_usage(emulator.reported)
    assert got == ledger.usage, "3scale's usage differs from what was served:\n" + usage_diff(ledger.usage, got)
    assert sum(got.values()) == 600 + 600 // 3  # every request is a hit, a third are also orders
    assert emulator.report_errors(SERVICE_ID) == []


# ------------------------------------------------------------------------------------------------ 2. 3scale down


async def test_usage_counted_while_3scale_is_down_is_reported_once_after(
    emulator, upstream, redis_url, replicas, client, buffer
):
    """3scale answers 503 for ~5 report intervals while cached keys keep being served: nothing is accepted
    meanwhile, the reporters do try, and once 3scale is back everything arrives exactly once."""
    add_apps(emulator)
    fleet = await replicas.start(proxy_config(emulator.url, upstream.url, redis_url), count=2)
    ledger = Ledger()
    await warm(client, fleet, ledger, APPS)
    assert (diff := await reported_equals(emulator, ledger.usage, timeout=10)) is None, "before the outage:\n" + diff

    await emulator.set_down("error")
    calls_before, accepted_before = len(emulator.calls), len(emulator.reported)
    outage_ends = time.monotonic() + 2.5  # report.interval is 0.5
    await run_load(client, fleet, ledger, until=lambda: time.monotonic() > outage_ends)
    # The reporter re-authorizes a batch's apps before POSTing it, so its tries may all be authorize calls.
    failed_tries = [c.endpoint for c in emulator.calls[calls_before:] if c.status == 503]
    accepted_during = len(emulator.reported) - accepted_before
    await emulator.set_down(None)

    assert ledger.errors == [] and set(ledger.statuses) == {200}, (ledger.statuses, ledger.errors[:5])
    assert ledger.ok > 50, f"too little load to mean anything: {ledger.ok} answers"
    assert failed_tries, "no call reached 3scale while it was down: the outage was never exercised"
    assert accepted_during == 0
    assert (diff := await reported_equals(emulator, ledger.usage, timeout=15)) is None, "after the outage:\n" + diff
    # Once no batch is left in Redis (every one acknowledged, nothing pending) none can be sent again; one
    # still being sent twice at that moment shows after the final flush below, when the processes are gone.
    await eventually(buffer.is_empty, what="every batch acknowledged and nothing pending in Redis")
    got = reported_usage(emulator.reported)
    assert got == ledger.usage, "reported more than once:\n" + usage_diff(ledger.usage, got)

    codes = await replicas.terminate_all(fleet)
    assert codes == {r.name: 0 for r in fleet}
    got = reported_usage(emulator.reported)
    assert got == ledger.usage, "after the final flush:\n" + usage_diff(ledger.usage, got)
    assert emulator.report_errors(SERVICE_ID) == []


# ------------------------------------------------------------------------------------------------ 3. SIGTERM


async def test_sigterm_under_load_drains_finishes_in_flight_and_reports_everything(
    emulator, upstream, redis_url, replicas, client
):
    """SIGTERM while six clients hammer one replica (two with 0.8 s upstream answers), plus two 1 s probes
    timed to be in flight at the signal and when the listener closes after drain_delay: /readyz goes 503
    at once, every request started before the signal or inside the drain window gets its 200, later ones
    may only be refused, the process exits 0 within shutdown.timeout, and 3scale gets the usage of every 200."""
    drain_delay, shutdown_timeout = 1.0, 10.0
    config = proxy_config(
        emulator.url, upstream.url, redis_url, shutdown={"drain_delay": drain_delay, "timeout": shutdown_timeout}
    )
    (replica,) = await replicas.start(config)
    ledger = Ledger()
    await warm(client, [replica], ledger, [KEY])

    answers: list[Answer] = []
    readiness: list[tuple[float, int | str]] = []
    stop = asyncio.Event()

    async def worker(n: int, slow: bool) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            if slow:
                answer = await call(client, replica, KEY, "GET", "/slow", {"seconds": "0.8"})
            else:
                answer = await call(client, replica, KEY, "GET", f"/v1/orders/{n}-{i}")
            answers.append(answer)
            if answer.status is not None:
                ledger.record(KEY, answer.method, answer.path, answer.status)
            else:
                await asyncio.sleep(0.02)  # refused: don't spin

    async def poll_readyz() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as admin:
            while not stop.is_set():
                try:
                    async with admin.get(f"{replica.admin_url}/readyz") as resp:
                        readiness.append((time.monotonic(), resp.status))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    readiness.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.02)

    async def slow_probe(at: float) -> Answer:
        """One 1 s request started at a chosen moment (relative to the signal, once it is known)."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        answer = await call(client, replica, KEY, "GET", "/slow", {"seconds": "1.0"})
        if answer.status is not None:
            ledger.record(KEY, answer.method, answer.path, answer.status)
        return answer

    tasks = [asyncio.create_task(worker(n, slow=n < 2)) for n in range(6)]
    tasks.append(asyncio.create_task(poll_readyz()))
    try:
        await eventually(lambda: len(answers) > 20, what="the load running before the signal")
        across_signal = asyncio.create_task(slow_probe(time.monotonic()))  # still running at the signal
        probe_path = "/slow?seconds=1.0"
        await eventually(
            lambda: any(r["raw_path"] == probe_path for r in upstream.received), what="the probe at the upstream"
        )
        signalled = replica.sigterm()
        across_close = asyncio.create_task(slow_probe(signalled + 0.4))  # still running when the listener closes
        code = await replica.wait_exit(timeout=shutdown_timeout + 5)
        exited = time.monotonic()
        probes = await asyncio.gather(across_signal, across_close)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert code == 0, replica.tail()
    assert exited - signalled <= shutdown_timeout, f"exited {exited - signalled:.1f}s after SIGTERM"
    for probe in probes:  # in flight at the signal, and at the listener's close: both answered
        assert probe.status == 200, (probe.status, probe.error, round(probe.started - signalled, 3))
    assert probes[0].started < signalled < probes[0].ended
    assert probes[1].started < signalled + drain_delay - 0.3 and probes[1].ended > signalled + drain_delay

    drain_end = signalled + drain_delay - 0.3  # margin: the signal is handled a little after it is sent
    before = [a for a in answers if a.started < signalled]
    in_drain = [a for a in answers if signalled <= a.started < drain_end]
    late = [a for a in answers if a.started >= drain_end]
    bad_before = [(a.path, a.status, a.error) for a in before if a.status != 200]
    bad_drain = [(a.path, a.status, a.error, round(a.started - signalled, 3)) for a in in_drain if a.status != 200]
    assert bad_before == [], f"requests started before SIGTERM failed: {bad_before[:5]}"
    assert bad_drain == [], f"requests started in the drain window failed: {bad_drain[:5]}"
    late_5xx = [(a.path, a.status) for a in late if a.status is not None and a.status >= 500]
    late_refused = [a for a in late if a.error is not None]
    assert late_5xx == [], f"5xx after the drain window: {late_5xx[:5]}"
    assert len(before) > 20 and len(in_drain) > 20, f"{len(before)} before, {len(in_drain)} in the drain window"
    print(
        f"sigterm: exit after {exited - signalled:.2f}s; {len(before)} requests before, {len(in_drain)} in drain, "
        f"{len(late)} late ({len(late_refused)} refused)"
    )

    after_signal = [(t, s) for t, s in readiness if t > signalled]
    first_503 = next((t for t, s in after_signal if s == 503), None)
    assert first_503 is not None and first_503 - signalled <= 0.5, f"readiness after SIGTERM: {after_signal[:10]}"
    assert all(s != 200 for t, s in after_signal if t >= first_503), "readiness went back to 200 while draining"

    got = reported_usage(emulator.reported)
    assert got == ledger.usage, "usage of the 200s vs 3scale:\n" + usage_diff(ledger.usage, got)
    assert emulator.report_errors(SERVICE_ID) == []

    # Last, because it is the cause rather than the symptom: an answer given while draining must say
    # `Connection: close`. One that doesn't invites the client to reuse a connection the proxy is about to
    # close, and the next request on it is reset (seen inside the drain window) or, when it lands as the
    # listener closes, hangs until aiohttp's shutdown timeout and is cut (seen: 7 s, exit at 8.5 of 10 s).
    reusable = [
        (a.path, round(a.started - signalled, 3), (a.headers or {}).get("Connection"))
        for a in in_drain
        if a.status == 200
        and a.started > signalled + 0.3
        and (a.headers or {}).get("Connection", "").lower() != "close"
    ]
    assert reusable == [], (
        f"{len(reusable)} of {len(in_drain)} answers in the drain window lack `Connection: close`: {reusable[:3]}"
    )


# ------------------------------------------------------------------------------------------------ 4. SIGKILL

FLUSH_MS = 200
SCHEDULING_SLACK = 0.1
"""Seconds added to flush_to_redis_ms for the loss window: the flush timer, the Redis write and this
client's clock reading are not instantaneous on a loaded 2-core machine."""


async def test_sigkill_loses_at_most_one_flush_and_a_survivor_reports_the_rest(
    emulator, upstream, redis_url, replicas, client, buffer
):
    """Replica A serves paced requests while 3scale is down (so its reports fail and a batch stays in
    flight), then is SIGKILLed. B, alive, reports the shared buffer and, after report.lease, A's in-flight
    batch: 3scale ends with everything A served but at most the requests A answered in its last
    flush_to_redis_ms, and nothing twice."""
    lease = 3.0
    config = proxy_config(
        emulator.url, upstream.url, redis_url, report={"interval": 0.5, "flush_to_redis_ms": FLUSH_MS, "lease": lease}
    )
    a, b = await replicas.start(config, count=2, prefix="ab")
    warmup = await call(client, a, KEY, "GET", "/v1/catalog/warm")
    assert warmup.status == 200
    answered = [warmup.ended]

    await emulator.set_down("error")
    # A random length puts the kill at a random point of A's flush cycle (a fixed one would always hit the
    # same phase, and could hide a flush that runs far less often than flush_to_redis_ms).
    duration = random.uniform(1.5, 3.0)
    started = time.monotonic()
    for i in itertools.count():  # one at a time: nothing is in flight when the kill comes
        answer = await call(client, a, KEY, "GET", f"/v1/catalog/{i}")
        assert answer.status == 200, (answer.status, answer.error)
        answered.append(answer.ended)
        if time.monotonic() - started >= duration:
            killed = time.monotonic()
            a.kill()
            calls_at_kill = emulator.call_count()
            break
        await asyncio.sleep(0.01)
    served = len(answered)
    window = FLUSH_MS / 1000 + SCHEDULING_SLACK
    at_risk = sum(1 for t in answered if t > killed - window)
    assert a.exit_code == -9

    # B's reports fail too (3scale is still down when it next tries), then 3scale is back.
    await eventually(lambda: emulator.call_count() > calls_at_kill, lease + 5, what="B trying 3scale after the kill")
    await emulator.set_down(None)

    def hits() -> int:
        return reported_usage(emulator.reported)[KEY, "hits"]

    # B reports the shared buffer and, after the lease, A's in-flight batch: once Redis holds no batch and
    # nothing pending, nothing is left to report (a batch still being sent twice then shows at B's exit).
    await eventually(buffer.is_empty, lease + 15, what="the shared buffer and A's batch reported by B")
    got = hits()
    lost = served - got
    assert 0 <= lost <= at_risk, (
        f"A served {served} hits, 3scale got {got}: lost {lost}; the bound is the {at_risk} requests A answered "
        f"in the last {window * 1000:.0f} ms (flush_to_redis_ms {FLUSH_MS} + {SCHEDULING_SLACK * 1000:.0f} ms slack)"
    )
    print(f"sigkill: after {duration:.2f}s served {served}, reported {got}, lost {lost}, bound {at_risk}")
    assert b.running, b.tail()
    assert await b.terminate() == 0
    assert hits() == got, "B's final flush reported something again"
    assert emulator.report_errors(SERVICE_ID) == []


# ------------------------------------------------------------------------------------------------ 5. limits

MIN_ROOM = 10.0
"""Seconds left in the UTC minute needed to start the burst (replicas are already up; it takes ~2 s)."""


def _int_header(answer: Answer, name: str) -> int:
    assert answer.headers is not None and name in answer.headers, f"{name} missing: {answer.status} {answer.headers}"
    value = answer.headers[name]
    assert value.isdigit(), f"{name}: {value!r} is not a non-negative integer"
    return int(value)


@pytest.mark.slow
async def test_limit_of_100_a_minute_holds_across_three_replicas_and_resets(upstream, redis_url, replicas, client):
    """150 concurrent requests round-robin over 3 replicas against a 100 hits/minute plan, with reports only
    every 5 s (so the shared counters, not 3scale, must hold the line): exactly 100 pass, 50 get 429, all
    with coherent RateLimit headers; once the minute rolls over the key passes again; only the 200s are
    reported. Started as early in a minute as the clock allows, so the wait for the rollover is short."""
    emu = Emulator(emulator_config({"hits": {"minute": 100}}))
    await emu.start()
    try:
        config = proxy_config(emu.url, upstream.url, redis_url, report={"interval": 5}, cache={"ttl": 300})
        fleet = await replicas.start(config, count=3)
        room = 60 - time.time() % 60
        if room < MIN_ROOM:
            await asyncio.sleep(room + 0.5)
        minute = int(time.time() // 60)
        burst = await asyncio.gather(*(call(client, fleet[i % 3], KEY, "GET", f"/v1/catalog/{i}") for i in range(150)))
        burst_end = time.time()
        assert int(burst_end // 60) == minute, "the burst crossed a minute boundary: the test's timing broke"
        errors = [a.error for a in burst if a.error]
        assert errors == [], errors[:5]
        statuses = Counter(a.status for a in burst)
        assert statuses == Counter({200: 100, 429: 50}), f"{statuses} (per replica: {_per_replica(burst, fleet)})"

        for answer in burst:
            assert answer.headers is not None
            assert answer.headers.get("RateLimit-Limit") == "100", dict(answer.headers)
            remaining = _int_header(answer, "RateLimit-Remaining")
            reset = _int_header(answer, "RateLimit-Reset")
            assert 1 <= reset <= 60, f"RateLimit-Reset {reset}"
            until_minute_end = 60 - burst_end % 60
            assert abs(reset - until_minute_end) <= 3, f"RateLimit-Reset {reset}, minute ends in {until_minute_end}"
            if answer.status == 200:
                assert remaining <= 99, f"RateLimit-Remaining {remaining} on a 200"
            else:
                assert remaining == 0, f"RateLimit-Remaining {remaining} on a 429"
                retry_after = _int_header(answer, "Retry-After")
                assert 1 <= retry_after <= 60, f"Retry-After {retry_after}"
                assert json.loads(answer.body)["error"] == "limits_exceeded", answer.body
        assert min(_int_header(a, "RateLimit-Remaining") for a in burst if a.status == 200) == 0

        await asyncio.sleep(max(0.0, (minute + 1) * 60 + 1 - time.time()))
        after = [await call(client, replica, KEY, "GET", "/v1/catalog/next") for replica in fleet]
        assert [a.status for a in after] == [200, 200, 200], [(a.status, a.body[:200]) for a in after]
        for answer in after:
            assert answer.headers is not None and answer.headers.get("RateLimit-Limit") == "100"
            # Slices reserved by the other replicas count as spent here, so the value is conservative.
            assert 1 <= _int_header(answer, "RateLimit-Remaining") <= 99

        codes = await replicas.terminate_all(fleet)
        assert codes == {r.name: 0 for r in fleet}
        assert reported_usage(emu.reported) == Counter({(KEY, "hits"): 103}), emu.reported
        assert emu.report_errors(SERVICE_ID) == []
    finally:
        await emu.stop()


def _per_replica(answers: list[Answer], fleet: list[Replica]) -> dict[str, Counter[int | None]]:
    return {
        r.name: Counter(a.status for i, a in enumerate(answers) if i % len(fleet) == k) for k, r in enumerate(fleet)
    }


# ------------------------------------------------------------------------------------------------ 6. Redis down


async def test_redis_outage_under_load_serves_everything_and_reports_exact_totals(
    tmp_path, emulator, upstream, replicas, client
):
    """redis-server killed while two replicas are under load, until both have seen it down and served 500
    more requests without it, then brought back until both have seen it up again: no request fails (no 5xx,
    no connection error), readiness stays 200 (degraded is not unready), and once Redis is back and the
    replicas have flushed (SIGTERM) 3scale holds exactly what was served. Redis keeps its data across the
    restart (RedisServer durable=True): this tests the proxy's outage handling, not Redis data loss."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    redis = RedisServer(free_port(), workdir, durable=True)
    redis.start()
    try:
        add_apps(emulator)
        fleet = await replicas.start(proxy_config(emulator.url, upstream.url, redis.url), count=2)
        ledger = Ledger()
        await warm(client, fleet, ledger, APPS)
        answers: list[Answer] = []
        done = False
        load = asyncio.create_task(run_load(client, fleet, ledger, until=lambda: done, answers=answers))

        def started_since(moment: float) -> int:
            return sum(1 for a in answers if a.started >= moment)

        async def sees_redis(replica: Replica, state: str) -> tuple[int, dict[str, str]] | None:
            answer = await readiness(replica)
            return answer if answer[1].get("redis") == state else None

        try:
            await eventually(lambda: len(answers) >= 100, what="the load running before the outage")
            redis.kill()
            down_at = time.monotonic()
            for replica in fleet:  # each health probe sees the outage, and the replica stays ready
                status, body = await eventually(lambda r=replica: sees_redis(r, "down"), 15, what="Redis seen down")
                assert status == 200, f"{replica.name} /readyz {status} {body} during the Redis outage"
            await eventually(lambda: started_since(down_at) >= 500, 30, what="500 requests during the outage")
            redis.start()
            up_at = time.monotonic()
            for replica in fleet:
                status, body = await eventually(lambda r=replica: sees_redis(r, "up"), 15, what="Redis seen back")
                assert (status, body["status"]) == (200, "ok"), f"{replica.name} /readyz {status} {body}"
            await eventually(lambda: started_since(up_at) >= 100, what="the load going on after the outage")
        finally:
            done = True
            await load

        assert ledger.errors == [], ledger.errors[:5]
        assert set(ledger.statuses) == {200}, ledger.statuses
        during = sum(1 for a in answers if down_at <= a.started < up_at and a.status == 200)
        assert during > 100, f"only {during} requests were served during the outage"
        assert (diff := await reported_equals(emulator, ledger.usage, timeout=20)) is None, diff
        codes = await replicas.terminate_all(fleet)
        assert codes == {r.name: 0 for r in fleet}
        got = reported_usage(emulator.reported)
        assert got == ledger.usage, "after the final flush:\n" + usage_diff(ledger.usage, got)
        assert emulator.report_errors(SERVICE_ID) == []
    finally:
        redis.kill()


# ------------------------------------------------------------------------------------------------ 7. deleted app


async def test_deleted_application_is_left_out_of_the_batch_and_dead_lettered(
    emulator, upstream, redis_url, replicas, client
):
    """Three apps used, the second deleted in 3scale before the next report. 3scale drops a whole batch
    for one bad transaction (the emulator does too, and records an error), so the other apps' exact totals
    and an empty error list prove the proxy left the deleted app out; its usage is counted as dead letter."""
    add_apps(emulator)
    apps = [APPS[0], APPS[2], APPS[3]]
    deleted = apps[1]
    config = proxy_config(emulator.url, upstream.url, redis_url, report={"interval": 2})
    (replica,) = await replicas.start(config)
    warm_ledger = Ledger()
    await warm(client, [replica], warm_ledger, apps)
    # A report has just happened when the warm-up shows up: the next one is ~2 s away.
    assert (diff := await reported_equals(emulator, warm_ledger.usage, timeout=10)) is None, diff
    accepted_before = len(emulator.reported)

    ledger = Ledger()
    kinds = [(method, path.format(i=i)) for i, (method, path) in enumerate(REQUEST_KINDS * 10)]
    burst = await asyncio.gather(*(call(client, replica, app, method, path) for method, path in kinds for app in apps))
    for answer in burst:
        assert answer.status == 200, (answer.status, answer.error)
        ledger.record(answer.app, answer.method, answer.path, 200)
    emulator.delete_application(SERVICE_ID, deleted)
    early = [tx for tx in emulator.reported[accepted_before:] if tx["app"] == deleted]
    assert early == [], "a report came between the burst and the deletion: the test's timing broke"

    expected = warm_ledger.usage + Counter({k: v for k, v in ledger.usage.items() if k[0] != deleted})
    assert (diff := await reported_equals(emulator, expected, timeout=15)) is None, (
        "the other apps' usage did not reach 3scale exactly (was the batch with the deleted app dropped?):\n"
        + diff
        + f"\nreport errors: {emulator.report_errors(SERVICE_ID)[:3]}"
    )

    async def dead_lettered() -> bool:
        samples = metric_samples(await replica.metrics_text(), "threescale_proxy_reports_total")
        return any("dead" in labels.get("result", "") and value > 0 for labels, value in samples)

    try:
        await eventually(dead_lettered, 5, what="a dead letter counted in threescale_proxy_reports_total")
    except AssertionError as exc:
        lines = [line for line in (await replica.metrics_text()).splitlines() if "reports_total" in line]
        raise AssertionError(f"{exc}: {lines}") from None
    assert emulator.report_errors(SERVICE_ID) == []

    assert await replica.terminate() == 0
    got = reported_usage(emulator.reported)
    assert got == expected, "after the final flush:\n" + usage_diff(expected, got)
    assert emulator.report_errors(SERVICE_ID) == []
