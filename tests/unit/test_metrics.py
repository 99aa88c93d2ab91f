"""Request metrics counted in plain ints and handed to prometheus_client in batches: the exposition must be
exactly what one observe() per request gives, /metrics always current, and nothing left behind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from proxy.metrics import LATENCY_BUCKETS, Metrics
from tests.support import eventually

SECONDS = [0.0, 0.0004, 0.0005, 0.0007, 0.001, 0.003, 0.02, 0.7, 2.5, 29.0, 30.0, 45.0, 0.0005]


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.name == name
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_batched_histograms_equal_one_observe_per_request() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    direct = Histogram("threescale_proxy_request_duration_seconds", "x", buckets=LATENCY_BUCKETS, registry=reference)
    upstream = Histogram("threescale_proxy_upstream_duration_seconds", "x", buckets=LATENCY_BUCKETS, registry=reference)
    for i, seconds in enumerate(SECONDS):
        metrics.record_request(("svc", "GET", 200, ""), seconds, seconds / 2 if i % 2 else None)
        direct.observe(seconds)
        if i % 2:
            upstream.observe(seconds / 2)
    metrics.flush()
    for name in ("threescale_proxy_request_duration_seconds", "threescale_proxy_upstream_duration_seconds"):
        got, want = samples(metrics.registry, name), samples(reference, name)
        assert got == want and want  # every bucket boundary (a value on a bound counts in it), +Inf, sum, count


def test_counts_by_labels_and_render_is_current() -> None:
    metrics = Metrics()
    for status in (200, 200, 429, 200):
        metrics.record_request(("svc", "GET", status, "prod"), 0.001, None)
    metrics.record_request(("other", "POST", 502, ""), 0.002, 0.001)
    text = metrics.render().decode()  # no flush by hand: /metrics flushes first
    assert 'threescale_proxy_requests_total{method="GET",service="svc",stage="prod",status="200"} 3.0' in text
    assert 'threescale_proxy_requests_total{method="GET",service="svc",stage="prod",status="429"} 1.0' in text
    assert 'threescale_proxy_requests_total{method="POST",service="other",stage="",status="502"} 1.0' in text
    assert "threescale_proxy_request_duration_seconds_count 5.0" in text
    assert "threescale_proxy_upstream_duration_seconds_count 1.0" in text
    metrics.flush()  # a second flush adds nothing
    assert "threescale_proxy_request_duration_seconds_count 5.0" in metrics.render().decode()


async def test_counts_reach_prometheus_client_after_the_flush_delay_without_a_scrape() -> None:
    metrics = Metrics(flush_seconds=0.05)
    count = "threescale_proxy_requests_total"
    labels = {"service": "svc", "method": "GET", "status": "200", "stage": ""}
    metrics.record_request(("svc", "GET", 200, ""), 0.001, None)
    metrics.record_request(("svc", "GET", 200, ""), 0.001, None)
    assert metrics.registry.get_sample_value(count, labels) is None  # still in plain ints
    # the one flush the first count scheduled runs on the loop
    await eventually(lambda: metrics.registry.get_sample_value(count, labels), timeout=5, what="the flush")
    assert metrics.registry.get_sample_value(count, labels) == 2.0
    metrics.record_request(("svc", "GET", 200, ""), 0.001, None)  # the next count schedules the next flush
    await eventually(lambda: metrics.registry.get_sample_value(count, labels) == 3.0, timeout=5, what="a second flush")


def test_local_cache_hits_are_counted_in_the_auth_cache_family() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.record_local_hit("svc")
    metrics.record_local_hit("other")
    text = metrics.render().decode()
    assert 'threescale_proxy_auth_cache_total{layer="local",result="hit",service="svc"} 3.0' in text
    assert 'threescale_proxy_auth_cache_total{layer="local",result="hit",service="other"} 1.0' in text
