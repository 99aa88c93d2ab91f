"""How many calls reach 3scale for N requests over K keys at a report interval, and whether usage adds up.

Runs the proxy on a real Redis (or memory://), the emulator and an upstream in this process, sends the
requests at a steady pace over several report intervals, stops the proxy (final report) and prints the
emulator's call counts by endpoint and the accounting difference (served minus reported; must be 0).
Run: `python -m bench.backend_calls [--requests 10000] [--keys 10] [--interval 5] [--seconds 20]
[--redis redis://127.0.0.1:6379/15]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import aiohttp
from aiohttp import web

from bench.targets import free_port
from proxy.app import ProxyServer
from proxy.config import settings_from_dict
from proxy.emulator import Emulator

SERVICE_ID = "2555417777820"
TOKEN = "bench-token"


async def main(args: argparse.Namespace) -> int:
    keys = [f"bench-key-{i:03d}-0123456789" for i in range(args.keys)]
    emulator = Emulator(
        {
            "services": [
                {
                    "id": SERVICE_ID,
                    "token": TOKEN,
                    "metrics": {"hits": {}},
                    "plans": {"p": {"limits": {"hits": {"minute": 10**9}}}},
                    "applications": [{"user_key": k, "plan": "p"} for k in keys],
                }
            ]
        }
    )
    backend = await emulator.start()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    up_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()

    if args.redis.startswith("redis"):
        import redis.asyncio as aioredis

        await aioredis.from_url(args.redis).flushdb()
    settings = settings_from_dict(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "metrics_listen": f"127.0.0.1:{free_port()}",
            "redis_url": args.redis,
            "threescale": {"backend_url": backend},
            "report": {"interval": args.interval},
            "shutdown": {"drain_delay": 0},
            "log": {"access_log": False, "level": "warning"},
            "services": [{"id": SERVICE_ID, "token": TOKEN, "upstream": f"http://127.0.0.1:{up_port}"}],
        },
        env={},
    )
    proxy = ProxyServer(settings)
    await proxy.start()
    served: Counter[str] = Counter()
    pace = args.seconds / args.requests
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, started + i * pace - time.monotonic()))
            key = keys[i % len(keys)]
            async with http.get(f"http://127.0.0.1:{proxy.port}/x", headers={"x-api-key": key}) as resp:
                await resp.read()
                if resp.status == 200:
                    served[key] += 1

        await asyncio.gather(*(one(i) for i in range(args.requests)))
    elapsed = time.monotonic() - started
    await proxy.stop()
    calls = Counter(emulator.call_counts())  # exact counts: the emulator keeps only its newest records
    reported: Counter[str] = Counter({key: emulator.reported_totals(key).get("hits", 0) for key in keys})
    await emulator.stop()
    await runner.cleanup()

    total = sum(calls.values())
    per_10k = total * 10_000 / args.requests
    print(
        f"{args.requests} requests, {args.keys} keys, {elapsed:.1f} s, report interval {args.interval} s, "
        f"redis_url={args.redis}"
    )
    print(f"backend calls: {dict(calls)} = {total} ({per_10k:.1f} per 10,000 requests)")
    difference = sum(served.values()) - sum(reported.values())
    print(f"served {sum(served.values())}, reported {sum(reported.values())}, accounting difference {difference}")
    mismatched = {k: (served[k], reported[k]) for k in keys if served[k] != reported[k]}
    if mismatched:
        print(f"per-key mismatches: {mismatched}")
    return 0 if difference == 0 and not mismatched else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
