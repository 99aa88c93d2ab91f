"""The quick path (no task): a cached key, no request body, a kept-alive upstream connection idle.

Each case warms up first (one request: the key gets cached, the connection idles in the pool), so the next
request takes the quick path; it must answer exactly as the task path does: the same statuses, bodies,
retries, errors, metrics and usage. The upstream is a raw asyncio server scripted by request path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import KEY, SERVICE_ID, eventually, metric_value, proxy_settings, reported_totals

pytestmark = pytest.mark.asyncio

BIG = bytes(range(256)) * 1024  # 256 KiB: over forward.SMALL_BODY, so it streams


class Scripted:
    """An upstream answering by path on keep-alive connections; counts connections, records paths."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self.paths: list[str] = []
        self.closed: list[str] = []  # paths whose connection the proxy closed while they were unanswered
        self.flaky_left = 1  # /flaky closes the connection without an answer this many times
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.paths.append(path)
                if not await self._answer(path, head, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, path: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        if path == "/ok":
            body = b"" if head.startswith(b"HEAD ") else b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: yes\r\n\r\n" + body)
        elif path == "/hang" or path == "/stall":
            if path == "/stall":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            while await reader.read(65536):
                pass
            self.closed.append(path)
            return False
        elif path == "/flaky" and self.flaky_left:
            self.flaky_left -= 1
            return False  # as an upstream that closed the idle connection just as the request came
        elif path == "/flaky":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
        elif path == "/cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            return False
        elif path == "/big":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG)
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart0\r\n5\r\npart1\r\n0\r\n\r\n")
        elif path == "/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/garbage":
            writer.write(b"SPDY/9 what is this\r\n\r\n")
        elif path == "/interim":  # an interim answer first, in a write of its own
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)  # the upstream's pause between writes, not a wait for an event
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        elif path == "/drip":  # one chunk, then nothing until the proxy goes away
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            while await reader.read(65536):
                pass
            self.closed.append(path)
            return False
        elif path == "/split":  # a small body in two writes: the quick path waits for the rest
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            await writer.drain()
            await asyncio.sleep(0.05)  # the upstream's pause between writes, not a wait for an event
            writer.write(b"56789")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = await Scripted().start()
    yield server
    await server.stop()


async def warmed(make_proxy: Any, emulator: Any, scripted: Scripted, http: Any, **service: Any) -> Any:
    """A proxy whose key is cached and whose one upstream connection idles: the next request goes quick."""
    proxy = await make_proxy(proxy_settings(emulator.url, scripted.url, service={"upstream_timeout": 0.5, **service}))
    async with http.get(url(proxy, "/ok"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b"ok"
    assert scripted.connections == 1
    return proxy


def url(proxy: Any, path: str) -> str:
    return f"http://127.0.0.1:{proxy.port}{path}"


def count(proxy: Any, sample: str, **labels: str) -> float:
    return metric_value(proxy.metrics.render().decode(), sample, **labels) or 0.0


async def test_small_answers_reuse_the_connection_and_are_counted(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    for _ in range(5):
        async with http.get(url(proxy, "/ok"), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200 and await resp.read() == b"ok"
            assert resp.headers["X-Up"] == "yes" and len(resp.headers.getall("Date")) == 1
    async with http.get(url(proxy, "/split"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b"0123456789"
    async with http.get(url(proxy, "/empty"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 204 and await resp.read() == b""
    async with http.head(url(proxy, "/ok"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "2" and await resp.read() == b""
    assert scripted.connections == 1
    labels = {"service": SERVICE_ID, "method": "GET", "status": "200", "stage": ""}
    assert count(proxy, "threescale_proxy_requests_total", **labels) == 7
    assert count(proxy, "threescale_proxy_auth_cache_total", service=SERVICE_ID, layer="local", result="hit") == 8
    await proxy.report_now()
    assert reported_totals(emulator, KEY) == {"hits": 9}


async def test_large_and_chunked_answers_stream_through(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    async with http.get(url(proxy, "/big"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and resp.content_length == len(BIG) and await resp.read() == BIG
    async with http.get(url(proxy, "/chunked"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"part0part1"
    async with http.get(url(proxy, "/ok"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b"ok"
    assert scripted.connections == 1


async def test_no_answer_is_504_and_a_stalled_small_body_is_502(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    async with http.get(url(proxy, "/hang"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 504
        message = "no response from the upstream within 0.5s"
        assert await resp.json() == {"error": "upstream_timeout", "message": message}
    async with http.get(url(proxy, "/ok"), headers={"x-api-key": KEY}) as resp:  # warm again: a new connection
        assert resp.status == 200
    async with http.get(url(proxy, "/stall"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 502
        assert await resp.json() == {"error": "bad_gateway", "message": "upstream stalled while sending the body"}
    await eventually(lambda: scripted.closed == ["/hang", "/stall"], what="both stuck connections closed")
    assert count(proxy, "threescale_proxy_errors_total", kind="upstream_timeout") == 2


async def test_an_idle_connection_the_upstream_closed_is_retried_once(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    async with http.get(url(proxy, "/flaky"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b"again"
    assert scripted.paths == ["/ok", "/flaky", "/flaky"] and scripted.connections == 2


async def test_a_body_cut_short_is_502(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    async with http.get(url(proxy, "/cut"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["error"] == "bad_gateway" and "broke off the body" in body["message"]
    assert count(proxy, "threescale_proxy_errors_total", kind="upstream_refused") == 1


async def test_a_client_that_goes_away_closes_the_upstream_exchange_and_is_499(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http, upstream_timeout=10)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /hang HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
    await writer.drain()
    await eventually(lambda: "/hang" in scripted.paths, what="the request reaching the upstream")
    writer.close()
    await eventually(lambda: scripted.closed == ["/hang"], what="the upstream seeing the proxy drop its connection")
    labels = {"service": SERVICE_ID, "method": "GET", "status": "499", "stage": ""}
    await eventually(lambda: count(proxy, "threescale_proxy_requests_total", **labels) == 1, what="the 499 counted")
    assert count(proxy, "threescale_proxy_errors_total", kind="client_closed") == 0  # as for a cancelled task
    assert proxy.pipeline.in_flight == 0


async def test_pipelined_requests_are_answered_in_order(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    one = f"GET /ok HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n"
    two = f"GET /split HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n"
    last = f"GET /ok HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nConnection: close\r\n\r\n"
    writer.write((one + two + last).encode())
    data = await reader.read(-1)
    writer.close()
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert data.count(b"HTTP/1.1 200 OK") == 3 and bodies == [b"ok", b"0123456789", b"ok"]


async def test_interim_answers_are_skipped_and_a_garbage_answer_is_502(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)
    async with http.get(url(proxy, "/interim"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200 and await resp.read() == b"final" and "Link" not in resp.headers
    async with http.get(url(proxy, "/garbage"), headers={"x-api-key": KEY}) as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["error"] == "bad_gateway" and "malformed" in body["message"]
    assert scripted.connections == 1  # the garbage came on the kept-alive connection: no retry on a new one


async def test_requests_beyond_the_idle_connections_open_new_ones(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http)

    async def one() -> bytes:
        async with http.get(url(proxy, "/split"), headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
            return bytes(await resp.read())

    assert await asyncio.gather(*(one() for _ in range(4))) == [b"0123456789"] * 4
    assert scripted.connections == 4  # one idle, three opened for the requests that found none
    labels = {"service": SERVICE_ID, "method": "GET", "status": "200", "stage": ""}
    assert count(proxy, "threescale_proxy_requests_total", **labels) == 5


async def test_a_client_that_goes_away_mid_stream_is_499(make_proxy, emulator, scripted, http):
    proxy = await warmed(make_proxy, emulator, scripted, http, upstream_timeout=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"GET /drip HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
    await writer.drain()
    assert b"first" in await reader.readuntil(b"first\r\n")
    writer.close()
    await eventually(lambda: scripted.closed == ["/drip"], what="the upstream seeing the proxy drop its connection")
    labels = {"service": SERVICE_ID, "method": "GET", "status": "499", "stage": ""}
    await eventually(lambda: count(proxy, "threescale_proxy_requests_total", **labels) == 1, what="the 499 counted")
    assert proxy.pipeline.in_flight == 0
