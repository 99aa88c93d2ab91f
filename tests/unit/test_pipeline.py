"""The request pipeline alone: built by the composition root, served on a test server, with the emulator as
3scale and a transport of the test's own behind the upstream interface (what the upstream received, and
the answers a broken upstream gives), so each step's effect is visible without an upstream process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import components
from proxy.http.server import HttpServer
from proxy.transport import UpstreamRefused, UpstreamRequest, UpstreamTimeout
from tests.support import KEY, ManualClock, proxy_settings


class Answer:
    """A fixed upstream response, read in one chunk."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.reason = "OK"
        self.raw_headers = [(b"Content-Type", b"text/plain"), (b"X-Upstream", b"yes")]
        self.headers = CIMultiDictProxy(CIMultiDict([(k.decode(), v.decode()) for k, v in self.raw_headers]))
        self._body = body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    async def release(self) -> None:
        return None


class RecordingTransport:
    """Records what would go upstream; answers 200, or fails the way `fail` names."""

    def __init__(self) -> None:
        self.sent: list[UpstreamRequest] = []
        self.fail: str | None = None

    async def send(self, request: UpstreamRequest) -> Answer:
        self.sent.append(request)
        if self.fail == "refused":
            raise UpstreamRefused("connection refused")
        if self.fail == "timeout":
            raise UpstreamTimeout("no response headers")
        return Answer(200, b"hello from upstream")

    async def close(self) -> None:
        return None


class Client:
    """Requests to the pipeline served by the proxy's own listener on a free port."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session, self._port = session, port

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        resp = await self._session.get(f"http://127.0.0.1:{self._port}{path}", **kwargs)
        await resp.read()
        return resp


@pytest.fixture
async def served(emulator: Any) -> AsyncIterator[tuple[Any, components.Components, Any]]:
    transport = RecordingTransport()
    parts = components.build(
        proxy_settings(emulator.url, "http://upstream.invalid:3000"), clock=ManualClock(), transport=transport
    )
    server = HttpServer(parts.pipeline.handle)
    port = await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        yield Client(session, port), parts, transport
    await server.close()
    await parts.authorizer.close()
    await parts.client.close()
    await parts.store.close()


async def test_an_allowed_request_goes_upstream_without_its_key_and_is_counted(served: Any) -> None:
    client, parts, transport = served
    resp = await client.get("/v1/orders?x=1", headers={"x-api-key": KEY})
    assert resp.status == 200 and await resp.read() == b"hello from upstream"
    assert resp.headers["X-Upstream"] == "yes"
    (sent,) = transport.sent
    assert sent.method == "GET" and sent.url == "http://upstream.invalid:3000/v1/orders?x=1"
    assert "x-api-key" not in {name.lower() for name, _ in sent.headers.pairs()}  # credentials stop at the proxy
    assert parts.usage.in_memory() == 1  # one (app, minute) entry, reported later


async def test_a_request_without_credentials_is_answered_here_and_never_billed(served: Any) -> None:
    client, parts, transport = served
    resp = await client.get("/v1/orders")
    assert resp.status == 401 and resp.content_type == "application/json"
    assert (await resp.json())["error"]
    assert transport.sent == [] and parts.usage.in_memory() == 0


@pytest.mark.parametrize(
    ("fail", "status", "body"),
    [
        ("refused", 502, {"error": "bad_gateway", "message": "connection refused"}),
        ("timeout", 504, {"error": "upstream_timeout", "message": "no response headers"}),
    ],
)
async def test_a_broken_upstream_gets_a_clean_json_error(served: Any, fail: str, status: int, body: Any) -> None:
    """The transport's message is the answer's (transports word it without hosts or tracebacks)."""
    client, _, transport = served
    transport.fail = fail
    resp = await client.get("/v1/orders", headers={"x-api-key": KEY})
    assert resp.status == status and resp.content_type == "application/json"
    assert await resp.json() == body
