"""The proxy process's memory per cached key: RSS with N keys authorized, limited and counted.

Builds the real parts exactly as `ProxyServer` does (`components.build`), with one stand-in: the 3scale
client's `authorize` answers from a 3scale-shaped XML document parsed by the real parser, so no HTTP runs
and the cached objects are those a live proxy holds. Each key then goes the way a request does: authorize
(a miss: L1 and, on memory://, the shared copy), the limiter (plan, windows, reservation), usage (the
aggregate, then a flush to the store). RSS (VmRSS of /proc/self/status) is read after each phase; every
configuration runs in a fresh process so one does not inherit another's heap. With `--trace`, one more run
per store lists the allocations still live at the end, by source line (tracemalloc).

Run: `python -m bench.memory [--keys 100000] [--limits 2] [--store memory:// [redis://127.0.0.1:6379/15]]
[--invalid] [--trace] [--limit-mib 256] [--hold-all] [--target-mib 150]`. A redis:// store is flushed first
(use a database of its own). `--hold-all` raises the bounds (cache.local_max_entries, report.max_pending_memory)
to the number of keys so every key is really held; the default bounds forget the least recent beyond them.
Issue 8's target: `--keys 100000 --hold-all --target-mib 150 --store memory:// redis://127.0.0.1:6379/15`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from proxy import components
from proxy.config import settings_from_dict
from proxy.store import MemoryStore
from proxy.threescale.client import ThreescaleClient
from proxy.threescale.models import AppCredentials, AuthStatus
from proxy.threescale.xml import parse_auth_response

SERVICE_ID = "2555417777820"
TOKEN = "bench-token"
PERIODS = ("minute", "hour", "day", "week", "month", "year")
LENGTH = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400, "year": 366 * 86400}
CHUNK = 1000  # keys in flight at once (a burst of first requests)


def rss_bytes() -> int:
    """Resident set size of this process, as the kernel (and a container's memory limit) counts it."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def user_key(i: int) -> str:
    """A key as long as 3scale's generated ones (32 hex digits); a fresh string for every request."""
    return f"{i:032x}"


class InProcess3scale(ThreescaleClient):
    """3scale's authorize answer for each key, as a document parsed by the real XML parser."""

    limits: int = 2
    now: float = 0.0
    valid: bool = True

    async def authorize(
        self,
        service_id: str,
        service_token: str,
        credentials: AppCredentials,
        usage: Mapping[str, int] | None = None,
        *,
        options: Mapping[str, str] | None = None,
    ) -> AuthStatus:
        if not self.valid:
            body = '<?xml version="1.0" encoding="UTF-8"?><error code="user_key_invalid">user key is invalid</error>'
            return parse_auth_response(body, 403, {})
        moment = datetime.fromtimestamp(self.now, UTC)
        index = int(credentials.user_key or "0", 16)
        reports = []
        for n, period in enumerate(PERIODS[: self.limits]):
            start = moment - timedelta(seconds=self.now % LENGTH[period])  # near enough: a window containing now
            end = start + timedelta(seconds=LENGTH[period])
            reports.append(
                f'<usage_report metric="hits" period="{period}">'
                f"<period_start>{start:%Y-%m-%d %H:%M:%S} +0000</period_start>"
                f"<period_end>{end:%Y-%m-%d %H:%M:%S} +0000</period_end>"
                f"<max_value>{1000 * 10**n}</max_value>"  # apps spread over the first half of the limit:
                f"<current_value>{index % (500 * 10**n)}</current_value></usage_report>"  # few share a value
            )
        hierarchy = "".join('<metric name="hits" children=""/>' for _ in reports)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Basic</plan>'
            f"<usage_reports>{''.join(reports)}</usage_reports><hierarchy>{hierarchy}</hierarchy></status>"
        )
        return parse_auth_response(body, 200, {})


def bounds(keys: int, invalid: bool) -> dict[str, Any]:
    """Cache bounds that hold every one of `keys` keys: the segment they go to (positive, or negative for
    invalid keys), the limiter's plans and memory://'s shared copies (both sized by local_max_entries), and
    the usage waiting in memory (report.max_pending_memory)."""
    other = max(1, keys // 10)  # the segment these keys do not go to keeps its default share
    negative = keys if invalid else other
    return {
        "cache": {"local_max_entries": keys + (other if invalid else negative), "local_max_negative": negative},
        "report": {"max_pending_memory": keys},
    }


async def measure(keys: int, limits: int, store_url: str, invalid: bool, trace: bool, hold_all: bool) -> dict[str, Any]:
    """Run one configuration in this process; returns RSS per phase (bytes) and, traced, the top lines."""
    now = time.time()
    settings = settings_from_dict(
        {
            "redis_url": store_url,
            "threescale": {"backend_url": "http://127.0.0.1:9"},
            "log": {"access_log": False, "level": "warning"},
            "services": [{"id": SERVICE_ID, "token": TOKEN, "upstream": "http://127.0.0.1:9"}],
            **(bounds(keys, invalid) if hold_all else {}),
        },
        env={},
    )
    InProcess3scale.limits, InProcess3scale.now, InProcess3scale.valid = limits, now, not invalid
    with mock.patch.object(components, "ThreescaleClient", InProcess3scale):
        parts = components.build(settings, clock=lambda: now)
    if store_url.startswith(("redis", "rediss", "unix")):
        import redis.asyncio as aioredis

        await aioredis.from_url(store_url).flushdb()
    service = settings.services[0]
    phases: list[tuple[str, int]] = []

    def phase(name: str) -> None:
        gc.collect()
        phases.append((name, rss_bytes()))

    # A key's first request carries one credentials object through every step, as the pipeline does: what
    # the authorizer, the limiter and the usage aggregate keep of it is that one object (slots made up front).
    first_request: list[AppCredentials | None] = [None] * keys
    if trace:
        tracemalloc.start()
    phase("built, no keys")

    async def authorize(i: int, credentials: AppCredentials) -> Any:
        return (await parts.authorizer.authorize(service, credentials)).decision

    def credentials_of(i: int) -> AppCredentials:
        credentials = first_request[i] = AppCredentials(user_key=user_key(i))
        return credentials

    for first in range(0, keys, CHUNK):
        await asyncio.gather(*(authorize(i, credentials_of(i)) for i in range(first, min(first + CHUNK, keys))))
    phase("authorized (L1 + shared copy)" if store_url.startswith("memory") else "authorized (L1)")
    if not invalid:
        for first in range(0, keys, CHUNK):
            for i in range(first, min(first + CHUNK, keys)):
                credentials = first_request[i]
                assert credentials is not None
                decision = await authorize(i, AppCredentials(user_key=user_key(i)))  # a local hit (a later request)
                result = await parts.limiter.check(SERVICE_ID, credentials, decision, {"hits": 1})
                assert result.allowed
            await parts.limiter.settle()  # the flush loop runs every flush_to_redis_ms meanwhile
        phase("limits (plans, windows, counters)")
        for credentials in first_request:
            assert credentials is not None
            parts.usage.add(SERVICE_ID, credentials, {"hits": 1}, now)
        phase("usage counted (aggregate)")
        await parts.usage.flush()
        phase("usage flushed (to the store)")
    top: list[tuple[str, int, int]] = []
    if trace:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            ]
        )
        tracemalloc.stop()
        top = [(str(s.traceback[0]), s.size, s.count) for s in snapshot.statistics("lineno")[:40]]
    held = {
        "decisions": len(parts.authorizer._local),  # a bench may look inside
        "plans": len(parts.limiter._plans),
        "windows": len(parts.limiter._ledger),
    }
    if isinstance(parts.store, MemoryStore):
        held["store entries"] = len(parts.store)
    await parts.client.close()
    await parts.store.close()
    return {
        "store": store_url.split("://")[0] + "://",
        "keys": keys,
        "limits": limits,
        "invalid": invalid,
        "settings": {
            "cache.local_max_entries": settings.cache.local_max_entries,
            "cache.local_max_negative": settings.cache.negative_entries,
            "report.max_pending_memory": settings.report.max_pending_memory,
        },
        "held": held,
        "phases": phases,
        "top": top,
    }


def run_child(args: argparse.Namespace, store: str, keys: int, trace: bool) -> dict[str, Any]:
    """One configuration in a fresh interpreter (the parent's heap would hide what this one needs)."""
    command = [sys.executable, "-m", "bench.memory", "--child", "--store", store, "--keys", str(keys)]
    command += ["--limits", str(args.limits)] + (["--invalid"] if args.invalid else []) + (["--trace"] if trace else [])
    command += ["--hold-all"] if args.hold_all else []
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONHASHSEED": "0"}
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_result(result: dict[str, Any], limit_mib: float, target_mib: float | None) -> None:
    keys, phases = result["keys"], result["phases"]
    kind = "invalid keys (negative cache)" if result["invalid"] else f"valid keys, {result['limits']} limits each"
    print(f"\n{result['store']}  {keys:,} {kind}  ({', '.join(f'{k} {v:,}' for k, v in result['settings'].items())})")
    print(f"  {'phase':<36} {'RSS MiB':>8} {'+MiB':>7} {'bytes/key':>10} {'total/key':>10}")
    base = previous = phases[0][1]
    for name, rss in phases:
        step = rss - previous
        print(
            f"  {name:<36} {rss / 2**20:8.1f} {step / 2**20:7.1f} {step / keys if keys else 0:10.0f}"
            f" {(rss - base) / keys if keys else 0:10.0f}"
        )
        previous = rss
    print(f"  held at the end: {', '.join(f'{k} {v:,}' for k, v in result['held'].items())}")
    peak = max(rss for _, rss in phases)
    print(f"  peak {peak / 2**20:.1f} MiB = {100 * peak / (limit_mib * 2**20):.0f}% of the {limit_mib:g} MiB limit")
    if target_mib is not None:
        idle, verdict = phases[0][1], "within" if peak <= target_mib * 2**20 else "OVER"
        print(
            f"  target: peak {peak / 2**20:.1f} MiB {verdict} {target_mib:g} MiB"
            f" ({(peak - idle) / keys if keys else 0:,.0f} B/key above {idle / 2**20:.1f} MiB idle)"
        )
    if result["top"]:
        print(f"  live allocations at the end (tracemalloc), top {len(result['top'])}:")
        for where, size, count in result["top"]:
            print(f"    {size / 2**20:7.1f} MiB {size / keys:6.0f} B/key {count:>9,} blocks  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000])
    parser.add_argument("--limits", type=int, default=2, choices=range(0, len(PERIODS) + 1), help="limits per plan")
    parser.add_argument("--store", nargs="+", default=["memory://"], help="memory:// and/or redis://host:port/db")
    parser.add_argument("--invalid", action="store_true", help="every key is rejected (the negative cache)")
    parser.add_argument("--trace", action="store_true", help="also list live allocations by source line")
    parser.add_argument("--limit-mib", type=float, default=256, help="the container memory limit to compare with")
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="raise cache.local_max_entries (with local_max_negative) and report.max_pending_memory to the number"
        " of keys, so every key is really held (decision, plan, windows, shared copy, usage)",
    )
    parser.add_argument("--target-mib", type=float, default=None, help="a peak RSS target to report against")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.keys[0], args.limits, args.store[0], args.invalid, args.trace, args.hold_all)
        print(json.dumps(asyncio.run(result)))
        return 0
    for store in args.store:
        for keys in args.keys:
            print_result(run_child(args, store, keys, trace=False), args.limit_mib, args.target_mib)
        if args.trace:
            print_result(run_child(args, store, max(args.keys), trace=True), args.limit_mib, args.target_mib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
