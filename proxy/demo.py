"""`threescale-proxy demo`: the proxy, the 3scale emulator and an echo upstream in one process.

No Redis and no 3scale account: storage is `memory://` and 3scale is the project's emulator, so a new
user sees the whole flow (401, 403, 200, 429) with one command. The service and its mapping rules come
from the emulator's admin portal, as they come from 3scale's: a rule added there applies within
DEMO_REFRESH seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web

from .app import ProxyServer, run_until_signal
from .config import settings_from_dict
from .emulator import Emulator
from .logs import setup_logging

DEMO_SERVICE_ID = "2555417777820"
DEMO_TOKEN = "demo-service-token"
DEMO_KEY = "demo-key-5f3c9a1e7b2d4c68"
DEMO_PER_MINUTE = 600
DEMO_PORTAL_TOKEN = "demo-portal-access-token"
DEMO_REFRESH = 5  # seconds between reloads from the (emulated) portal
ERROR_KINDS = ("auth_failed", "auth_missing", "no_match", "limits_exceeded")


def demo_emulator_config() -> dict[str, Any]:
    """One service, one application on a plan of 600 hits a minute."""
    return {
        "services": [
            {
                "id": DEMO_SERVICE_ID,
                "token": DEMO_TOKEN,
                "backend_version": 1,
                "metrics": {"hits": {}, "orders": {"parent": "hits"}},
                "plans": {"demo": {"limits": {"hits": {"minute": DEMO_PER_MINUTE}}}},
                "applications": [{"user_key": DEMO_KEY, "plan": "demo"}],
                "proxy": {  # APIcast's proxy config, as the admin portal serves it
                    "hosts": [],
                    "credentials_location": "headers",
                    "auth_user_key": "x-api-key",
                    "proxy_rules": [
                        {"http_method": "GET", "pattern": "/hello", "metric_system_name": "hits", "delta": 1}
                    ],
                    # no error_headers_*: JSON answers with 3scale's reason instead of porta's plain text
                    **{f"error_headers_{kind}": None for kind in ERROR_KINDS},
                    "error_status_auth_missing": 401,
                },
            }
        ],
        "portal": {"access_token": DEMO_PORTAL_TOKEN},
    }


def make_echo_app() -> web.Application:
    """An upstream that answers every request with what it received, as JSON."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body_bytes": len(body),
            }
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _run(host: str, port: int, metrics_port: int) -> int:
    emulator = Emulator(demo_emulator_config())
    backend_url = await emulator.start(host="127.0.0.1", port=0)
    echo_runner = web.AppRunner(make_echo_app(), access_log=None)
    await echo_runner.setup()
    echo_site = web.TCPSite(echo_runner, "127.0.0.1", 0)
    await echo_site.start()
    echo_port = echo_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    settings = settings_from_dict(
        {
            "listen": f"{host}:{port}",
            "metrics_listen": f"{host}:{metrics_port}",
            "redis_url": "memory://",
            "threescale": {
                "backend_url": backend_url,
                "portal_endpoint": backend_url.replace("http://", f"http://{DEMO_PORTAL_TOKEN}@"),
                "config_refresh": DEMO_REFRESH,
            },
            # the portal's service, its upstream overridden: the echo app beside the proxy
            "services": [{"id": DEMO_SERVICE_ID, "upstream": f"http://127.0.0.1:{echo_port}"}],
        },
        source="<demo>",
        env={},
    )
    server = ProxyServer(settings)

    async def start() -> None:
        await server.start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        banner = "\n".join(
            [
                "threescale-proxy demo is running (Ctrl-C to stop)",
                f"  proxy     http://{shown}:{server.port}",
                f"  metrics   http://{shown}:{server.metrics_port}/metrics  (/healthz, /readyz)",
                f"  3scale    {backend_url}  (emulator, service {DEMO_SERVICE_ID})",
                f"  upstream  http://127.0.0.1:{echo_port}  (echo)",
                f"  demo key  {DEMO_KEY}  ({DEMO_PER_MINUTE} hits a minute)",
                "Try:",
                f"  curl -i -H 'x-api-key: {DEMO_KEY}' http://{shown}:{server.port}/hello",
                "No rule maps /orders yet (404). Add one in the (emulated) 3scale portal; within "
                f"{DEMO_REFRESH} s it applies, no restart:",
                f"  curl -X POST {backend_url}/_emulator/portal/{DEMO_SERVICE_ID}/proxy_rules -d "
                """'{"http_method": "GET", "pattern": "/orders", "metric_system_name": "orders", "delta": 2}'""",
                f"  curl -i -H 'x-api-key: {DEMO_KEY}' http://{shown}:{server.port}/orders",
            ]
        )
        # one write: the log writer thread shares stdout, and print() writes the text and its newline apart
        sys.stdout.write(banner + "\n")
        sys.stdout.flush()

    async def stop() -> None:
        await server.stop()
        await echo_runner.cleanup()
        await emulator.stop()

    return await run_until_signal(start, stop)


def run_demo(host: str, port: int, metrics_port: int) -> int:
    """Run until Ctrl-C or SIGTERM."""
    setup_logging("info")
    return asyncio.run(_run(host, port, metrics_port))
