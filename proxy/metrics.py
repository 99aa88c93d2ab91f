"""Every Prometheus metric, defined once; the names are a contract that dashboards and alerts use.

Each proxy owns a registry (not the global one) so several proxies can live in one test process.

With `workers: N` the supervisor sets PROMETHEUS_MULTIPROC_DIR for its children before they start (so before
prometheus_client is imported: it picks its value store at import). Each worker then keeps its values in files
there, and /metrics, whichever worker answers it, is the aggregate of all of them (prometheus_client's
MultiProcessCollector): counters and histograms summed, dead workers' counts included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

T = TypeVar("T")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The proxy's metrics on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.errors = Counter(
            "threescale_proxy_errors",
            "Errors by kind (redis, backend, upstream_refused, upstream_timeout, ...).",
            ["kind"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format for /metrics (with workers: the aggregate of every worker)."""
        return generate_latest(self._exposed)


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
