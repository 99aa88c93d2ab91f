"""Every Prometheus metric, defined once; the names are a contract that dashboards and alerts use.

Each proxy owns a registry (not the global one) so several proxies can live in one test process.

With `workers: N` the supervisor sets PROMETHEUS_MULTIPROC_DIR for its children before they start (so before
prometheus_client is imported: it picks its value store at import). Each worker then keeps its values in files
there, and /metrics, whichever worker answers it, is the aggregate of all of them (prometheus_client's
MultiProcessCollector): counters and histograms summed, dead workers' counts included.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

T = TypeVar("T")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FLUSH_SECONDS = 1.0  # the longest a request's counts wait in plain ints before prometheus_client has them
RequestLabels = tuple[str, str, int, str]  # service, method, status, stage


class Metrics:
    """The proxy's metrics on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._exposed = r
        multiproc_dir = os.environ.get(MULTIPROC_ENV)
        if multiproc_dir:  # one worker of several: /metrics shows what all of them counted
            self._exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._exposed, path=multiproc_dir)  # type: ignore[no-untyped-call]
        self.requests = Counter(
            "threescale_proxy_requests",
            "Requests answered, by service, method, status and API Gateway stage.",
            ["service", "method", "status", "stage"],
            registry=r,
        )
        self.request_duration = Histogram(
            "threescale_proxy_request_duration_seconds",
            "Client-facing latency (like API Gateway's Latency).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "threescale_proxy_upstream_duration_seconds",
            "Time to the upstream's response headers (like API Gateway's IntegrationLatency).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_cache = Counter(
            "threescale_proxy_auth_cache",
            "Authorization lookups by cache layer (local|redis|backend) and result.",
            ["service", "layer", "result"],
            registry=r,
        )
        self.backend_requests = Counter(
            "threescale_proxy_backend_requests",
            "Calls to the 3scale Service Management API.",
            ["endpoint", "status"],
            registry=r,
        )
        self.backend_duration = Histogram(
            "threescale_proxy_backend_duration_seconds",
            "Latency of calls to 3scale.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.usage_pending = Gauge(
            "threescale_proxy_usage_pending",
            "Usage entries counted but not yet reported to 3scale.",
            registry=r,
            # each worker sets its memory plus the shared Redis buffer: summing would count the buffer N times;
            # the largest live value is the buffer plus the fullest worker's memory (ignored with one process)
            multiprocess_mode="livemax",
        )
        self.reports = Counter(
            "threescale_proxy_reports",
            "Batch reports to 3scale by service and result (each service fails and backs off on its own).",
            ["service", "result"],
            registry=r,
        )
        self.report_batch_size = Histogram(
            "threescale_proxy_report_batch_size",
            "Transactions per report POST.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.limited = Counter(
            "threescale_proxy_limited",
            "Requests denied by a limit, by service and reason.",
            ["service", "reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "threescale_proxy_config_reloads",
            "Configuration loads from 3scale by result: ok (applied), partial (applied; a service that does not "
            "validate kept its last good settings or stayed out), unchanged, failed (the portal could not be "
            "read), invalid (no service could be served), cached (the last good one, from Redis, at start).",
            ["result"],
            registry=r,
        )
        self.config_age = Gauge(
            "threescale_proxy_config_age_seconds",
            "Seconds since the configuration in use was read from 3scale (0 for YAML only).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.errors = Counter(
            "threescale_proxy_errors",
            "Errors by kind (redis, backend, upstream_refused, upstream_timeout, ...).",
            ["kind"],
            registry=r,
        )

        self._pending = _PendingRequests(self, flush_seconds)

    def record_request(self, labels: RequestLabels, seconds: float, upstream_seconds: float | None) -> None:
        """One answered request: its count, latency and upstream latency, kept in plain ints for a moment.

        prometheus_client takes a lock and walks the buckets in Python for every increment; counting per
        request here and handing it the sums at most FLUSH_SECONDS later costs a fraction (README,
        Performance). /metrics flushes first, so its own process is always current."""
        self._pending.add(labels, seconds, upstream_seconds)

    def record_local_hit(self, service_id: str) -> None:
        """An authorization answered from this process's cache (the auth_cache counter's hot label set)."""
        hits = self._pending.hits
        hits[service_id] = hits.get(service_id, 0) + 1
        self._pending.schedule()

    def flush(self) -> None:
        """Hand the requests counted since the last flush to prometheus_client (and, with workers, its files)."""
        self._pending.flush()

    def render(self) -> bytes:
        """The text exposition format for /metrics (with workers: the aggregate of every worker)."""
        self.flush()
        return generate_latest(self._exposed)


class _PendingRequests:
    """Request counts and latency histograms between flushes; a flush is scheduled by the first count after one."""

    __slots__ = ("_bounds", "_counts", "_delay", "_durations", "_metrics", "_scheduled", "_upstream", "hits")

    def __init__(self, metrics: Metrics, delay: float) -> None:
        self._metrics = metrics
        self._delay = delay
        self._bounds = (*(float(b) for b in LATENCY_BUCKETS), float("inf"))
        self._counts: dict[RequestLabels, int] = {}
        self._durations = _Buckets(len(self._bounds))
        self._upstream = _Buckets(len(self._bounds))
        self.hits: dict[str, int] = {}  # service id → local cache hits
        self._scheduled = False

    def add(self, labels: RequestLabels, seconds: float, upstream_seconds: float | None) -> None:
        counts = self._counts
        counts[labels] = counts.get(labels, 0) + 1
        bounds = self._bounds
        self._durations.add(bisect_left(bounds, seconds), seconds)
        if upstream_seconds is not None:
            self._upstream.add(bisect_left(bounds, upstream_seconds), upstream_seconds)
        if not self._scheduled:
            self.schedule()

    def schedule(self) -> None:
        """The next flush, unless one is due already."""
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:  # no loop (a caller outside the proxy): nothing would flush later
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        counts, self._counts = self._counts, {}
        requests = self._metrics.requests
        for (service, method, status, stage), n in counts.items():
            requests.labels(service, method, str(status), stage).inc(n)
        hits, self.hits = self.hits, {}
        for service, n in hits.items():
            self._metrics.auth_cache.labels(service, "local", "hit").inc(n)
        self._durations.move_to(self._metrics.request_duration)
        self._upstream.move_to(self._metrics.upstream_duration)


class _Buckets:
    """Observations per histogram bucket (the first bound not below the value) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0

    def add(self, index: int, value: float) -> None:
        self.counts[index] += 1
        self.total += value

    def move_to(self, histogram: Histogram) -> None:
        if not any(self.counts):
            return
        # prometheus_client has no bulk observe: its bucket values take the counts directly (checked in
        # tests/unit/test_metrics.py against what observe() gives, so a change in its internals fails there)
        buckets = histogram._buckets
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
                self.counts[i] = 0
        histogram._sum.inc(self.total)
        self.total = 0.0


async def observe_backend(metrics: Metrics, endpoint: str, call: Awaitable[T], status_of: Callable[[T], int]) -> T:
    """Await one 3scale call, counting it by endpoint and status (or failure kind) and timing it."""
    started = time.perf_counter()
    try:
        result = await call
    except BaseException as exc:
        status = getattr(exc, "status", None)
        label = str(status) if status else type(exc).__name__.removeprefix("Backend").lower()
        metrics.backend_requests.labels(endpoint, label).inc()
        raise
    finally:
        metrics.backend_duration.labels(endpoint).observe(time.perf_counter() - started)
    metrics.backend_requests.labels(endpoint, str(status_of(result))).inc()
    return result
