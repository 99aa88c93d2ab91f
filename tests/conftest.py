"""Fixtures that start the real parts tests talk to (see tests/support.py for what they are)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import ProxyServer
from proxy.emulator import Emulator
from tests.support import RedisServer, Upstream, emulator_config, free_port, make_upstream_app


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's redis-server."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.runner = web.AppRunner(
        make_upstream_app(up), access_log=None, handler_cancellation=True, max_line_size=16384, max_field_size=16384
    )
    await up.runner.setup()
    port = free_port()
    await web.TCPSite(up.runner, "127.0.0.1", port).start()
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await up.runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(emulator_config())
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[..., Any]]:
    """Start proxies with `await make_proxy(settings)`; all are stopped at teardown."""
    started: list[ProxyServer] = []

    async def factory(settings: Any, **kwargs: Any) -> ProxyServer:
        server = ProxyServer(settings, **kwargs)
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
