"""One behaviour for every upstream Transport: the same cases against aiohttp's client and our own (h1).

A well-behaved aiohttp.web upstream for the ordinary cases; raw asyncio servers for the misbehaving ones (they
close mid-body, never answer, stall, send garbage, drop an idle keep-alive connection). All on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from proxy.http.client import H1Transport
from proxy.transport import (
    AiohttpTransport,
    HeaderBlock,
    Transport,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamTimeout,
)
from tests.support import eventually, free_port

BIG = bytes(range(256)) * 4096  # 1 MiB
GZIPPED = gzip.compress(b"x" * 1000, mtime=0)
TransportFactory = Callable[..., Transport]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(params=["aiohttp", "h1"])
async def make_transport(request: pytest.FixtureRequest) -> AsyncIterator[TransportFactory]:
    made: list[Transport] = []

    def factory(**kwargs: Any) -> Transport:
        transport: Transport = AiohttpTransport(**kwargs) if request.param == "aiohttp" else H1Transport(**kwargs)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        await transport.close()


class AppUpstream:
    """An aiohttp.web upstream that remembers the client ports it saw (one per connection)."""

    def __init__(self) -> None:
        self.url = ""
        self.peers: set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.runner: web.AppRunner | None = None

    def _seen(self, request: web.Request) -> None:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[1])

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        body = await request.read()
        answer = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "size": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(answer)

    async def cookies(self, request: web.Request) -> web.Response:
        self._seen(request)
        response = web.Response(status=201, reason="Made It", body=b"made", headers={"X-Thing": "one"})
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers.add("X-Thing", "two")
        return response

    async def small(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"hello world", content_type="text/plain")

    async def big(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
        await response.write_eof()
        return response

    async def status(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(status=int(request.match_info["code"]))

    async def gzipped(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip"})

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # the upstream's slowness, not a wait for an event
        finally:
            self.in_flight -= 1
        return web.Response(body=b"slow")


@pytest.fixture
async def app_upstream() -> AsyncIterator[AppUpstream]:
    up = AppUpstream()
    app = web.Application()
    app.router.add_route("*", "/echo", up.echo)
    app.router.add_route("*", "/echo/{tail:.*}", up.echo)
    app.router.add_get("/cookies", up.cookies)
    app.router.add_get("/small", up.small)
    app.router.add_get("/big", up.big)
    app.router.add_get("/chunked", up.chunked)
    app.router.add_get("/status/{code}", up.status)
    app.router.add_get("/gzip", up.gzipped)
    app.router.add_get("/slow", up.slow)
    up.runner = web.AppRunner(app, access_log=None)
    await up.runner.setup()
    port = free_port()
    await web.TCPSite(up.runner, "127.0.0.1", port).start()
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await up.runner.cleanup()


RawHandler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server speaking whatever its handler writes; counts connections, records request heads."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed: list[asyncio.Event] = []  # set when the client's side of connection i closes
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = self.connections
        self.connections += 1
        self.closed.append(asyncio.Event())
        try:
            await self.handler(self, reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): returning normally, as asyncio 3.11's start_server callback chokes on a cancelled task
        finally:
            writer.close()
            self.closed[index].set()
            self._tasks.discard(task)

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: RawHandler) -> RawServer:
        server = await RawServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def wait_for_eof(server: RawServer, reader: asyncio.StreamReader, index: int) -> None:
    """Hold the connection open until the client closes it (the `closed` event then fires)."""
    while await reader.read(65536):
        pass


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def answer_ok_forever(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int
) -> None:
    """Keep-alive: every request head (no request bodies here) gets an empty 200."""
    while True:
        await server.read_head(reader)
        writer.write(OK_EMPTY)
        await writer.drain()


def req(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: AsyncIterator[bytes] | None = None,
    timeout: float = 10.0,
) -> UpstreamRequest:
    pairs = headers.items() if isinstance(headers, dict) else headers
    return UpstreamRequest(method, url, HeaderBlock.of(pairs), body, timeout)


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)  # arrives in pieces, as a client's upload does
        yield part


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    return lines[0], [(k, v) for k, v in fields]


# ------------------------------------------------------------------------------------------------ round trips


async def test_status_reason_and_headers_round_trip_with_duplicates(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    transport = make_transport()
    response = await transport.send(req(app_upstream.url + "/cookies"))
    assert (response.status, response.reason) == (201, "Made It")
    assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.headers.getall("x-thing") == ["one", "two"]
    assert await response.read() == b"made"
    await response.release()


async def test_request_headers_arrive_exactly_with_host_from_the_url(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    server = await raw_server(answer_ok_forever)
    transport = make_transport()
    port = server.url.rsplit(":", 1)[1]
    sent = [("X-Api-Key", "k1"), ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"), ("X-Dup", "1"), ("X-Dup", "2")]
    response = await transport.send(req(server.url + "/h", headers=sent))
    await response.release()
    line, fields = parse_head(server.heads[0])
    assert line == "GET /h HTTP/1.1"
    assert fields == [("Host", f"127.0.0.1:{port}"), *sent]  # nothing added: no User-Agent, Accept…

    response = await transport.send(req(server.url + "/h", headers={"Host": "api.example.com", "X-A": "b"}))
    await response.release()
    assert parse_head(server.heads[1])[1] == [("Host", "api.example.com"), ("X-A", "b")]

    response = await transport.send(req(server.url + "/p", method="POST"))  # no body: Content-Length: 0
    await response.release()
    line, fields = parse_head(server.heads[2])
    assert line == "POST /p HTTP/1.1"
    assert fields == [("Host", f"127.0.0.1:{port}"), ("Content-Length", "0")]


async def test_raw_path_and_query_are_sent_byte_for_byte(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    server = await raw_server(answer_ok_forever)
    transport = make_transport()
    response = await transport.send(req(server.url + "/a%2Fb/%7E?x=%20&y=1+2&z=%zz"))
    await response.release()
    assert server.heads[0].split(b"\r\n", 1)[0] == b"GET /a%2Fb/%7E?x=%20&y=1+2&z=%zz HTTP/1.1"


async def test_get_without_body(make_transport: TransportFactory, app_upstream: AppUpstream) -> None:
    response = await make_transport().send(req(app_upstream.url + "/echo/x?q=1"))
    answer = json.loads(await response.read())
    await response.release()
    assert (answer["method"], answer["raw_path"], answer["size"]) == ("GET", "/echo/x?q=1", 0)
    names = {k.lower() for k, _ in answer["headers"]}
    assert names == {"host"}


async def test_post_streamed_body_with_content_length_is_sent_raw(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    parts = [b"a" * 100_000, b"b" * 100_000, b"c" * 50_000]
    body = b"".join(parts)
    response = await make_transport().send(
        req(app_upstream.url + "/echo", "POST", {"Content-Length": str(len(body))}, chunks_of(*parts))
    )
    answer = json.loads(await response.read())
    await response.release()
    assert (answer["size"], answer["sha"]) == (len(body), hashlib.sha256(body).hexdigest())
    headers = {k.lower(): v for k, v in answer["headers"]}
    assert headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in headers


async def test_post_body_without_length_goes_chunked_and_arrives_whole(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    parts = [b"x" * 70_000, b"", b"y" * 3, b"z" * 200_000]
    body = b"".join(parts)
    response = await make_transport().send(req(app_upstream.url + "/echo", "PUT", None, chunks_of(*parts)))
    answer = json.loads(await response.read())
    await response.release()
    assert (answer["method"], answer["size"]) == ("PUT", len(body))
    assert answer["sha"] == hashlib.sha256(body).hexdigest()
    headers = {k.lower(): v for k, v in answer["headers"]}
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers


async def test_large_response_streams_in_chunks(make_transport: TransportFactory, app_upstream: AppUpstream) -> None:
    response = await make_transport().send(req(app_upstream.url + "/big"))
    assert response.headers["Content-Length"] == str(len(BIG))
    chunks = [chunk async for chunk in response.iter_chunks()]
    await response.release()
    assert len(chunks) >= 2
    assert b"".join(chunks) == BIG


async def test_chunked_response(make_transport: TransportFactory, app_upstream: AppUpstream) -> None:
    response = await make_transport().send(req(app_upstream.url + "/chunked"))
    assert response.headers["Transfer-Encoding"] == "chunked"
    body = b"".join([chunk async for chunk in response.iter_chunks()])
    await response.release()
    assert body == b"part0;part1;part2;part3;part4;"


async def test_read_small_body(make_transport: TransportFactory, app_upstream: AppUpstream) -> None:
    response = await make_transport().send(req(app_upstream.url + "/small"))
    assert response.status == 200 and response.reason == "OK"
    assert await response.read() == b"hello world"
    await response.release()


async def test_head_has_no_body_and_the_connection_is_reused(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    transport = make_transport()
    response = await transport.send(req(app_upstream.url + "/small", "HEAD"))
    assert response.status == 200
    assert response.headers["Content-Length"] == "11"
    assert await response.read() == b""
    await response.release()
    response = await transport.send(req(app_upstream.url + "/small"))
    assert await response.read() == b"hello world"
    await response.release()
    assert len(app_upstream.peers) == 1


@pytest.mark.parametrize("code", [204, 304])
async def test_bodiless_statuses(make_transport: TransportFactory, app_upstream: AppUpstream, code: int) -> None:
    transport = make_transport()
    for _ in range(2):
        response = await transport.send(req(app_upstream.url + f"/status/{code}"))
        assert response.status == code
        assert [chunk async for chunk in response.iter_chunks()] == []
        await response.release()
    assert len(app_upstream.peers) == 1


async def test_informational_answers_are_skipped(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok")
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    response = await make_transport().send(req(server.url + "/"))
    assert (response.status, response.reason) == (200, "Fine")
    assert await response.read() == b"ok"
    await response.release()


async def test_content_encoding_is_passed_through_undecoded(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    response = await make_transport().send(req(app_upstream.url + "/gzip", headers={"Accept-Encoding": "gzip"}))
    assert response.headers["Content-Encoding"] == "gzip"
    body = await response.read()
    await response.release()
    assert body == GZIPPED


# ------------------------------------------------------------------------------------------------ the pool


async def test_sequential_requests_share_one_connection(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    transport = make_transport()
    for _ in range(10):
        response = await transport.send(req(app_upstream.url + "/small"))
        assert await response.read() == b"hello world"
        await response.release()
    assert len(app_upstream.peers) == 1


async def test_pool_size_bounds_concurrent_connections(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    transport = make_transport(pool_size=2)

    async def one() -> bytes:
        response = await transport.send(req(app_upstream.url + "/slow"))
        try:
            return await response.read()
        finally:
            await response.release()

    assert await asyncio.gather(*(one() for _ in range(5))) == [b"slow"] * 5
    assert app_upstream.max_in_flight == 2
    assert len(app_upstream.peers) == 2


async def test_idle_connection_closed_by_the_upstream_is_retried(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" if i == 0 else OK_EMPTY)
        await writer.drain()
        if i == 0:  # the next request races the upstream's idle close: it arrives, and the socket closes
            await server.read_head(reader)
            return
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    transport = make_transport()
    response = await transport.send(req(server.url + "/one"))
    assert await response.read() == b"first"
    await response.release()
    response = await transport.send(req(server.url + "/two"))
    assert response.status == 200 and await response.read() == b""
    await response.release()
    assert server.connections == 2
    assert [h.split(b" ")[1] for h in server.heads] == [b"/one", b"/two", b"/two"]


async def test_idle_connections_close_after_keepalive_timeout(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    server = await raw_server(answer_ok_forever)
    transport = make_transport(keepalive_timeout=0.2)
    response = await transport.send(req(server.url + "/"))
    await response.read()
    await response.release()
    await asyncio.wait_for(server.closed[0].wait(), 5)


async def test_release_before_the_end_of_the_body_then_a_new_request_works(
    make_transport: TransportFactory, app_upstream: AppUpstream
) -> None:
    transport = make_transport()
    response = await transport.send(req(app_upstream.url + "/big"))
    async for chunk in response.iter_chunks():
        assert chunk
        break
    await response.release()
    response = await transport.send(req(app_upstream.url + "/small"))
    assert await response.read() == b"hello world"
    await response.release()


async def test_close_closes_pooled_connections(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    server = await raw_server(answer_ok_forever)
    transport = make_transport()
    response = await transport.send(req(server.url + "/"))
    await response.read()
    await response.release()
    assert not server.closed[0].is_set()
    await transport.close()
    await asyncio.wait_for(server.closed[0].wait(), 5)


async def test_cancelled_request_closes_its_connection(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    started = asyncio.Event()

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        if i == 0:
            started.set()
            await wait_for_eof(server, reader, i)  # never answers
            return
        writer.write(OK_EMPTY)
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    transport = make_transport()
    task = asyncio.create_task(transport.send(req(server.url + "/")))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.closed[0].wait(), 5)
    response = await transport.send(req(server.url + "/"))
    assert response.status == 200
    await response.release()
    assert server.connections == 2


# ------------------------------------------------------------------------------------------------ failures


async def test_refused_port(make_transport: TransportFactory) -> None:
    with pytest.raises(UpstreamRefused):
        await make_transport().send(req(f"http://127.0.0.1:{free_port()}/"))


async def test_no_answer_within_the_timeout(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    with pytest.raises(UpstreamTimeout):
        await make_transport().send(req(server.url + "/", timeout=0.2))
    assert len(server.heads) == 1


async def test_body_stall_times_out_in_iter_chunks(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    response = await make_transport().send(req(server.url + "/", timeout=0.2))
    received = b""
    with pytest.raises(UpstreamTimeout):
        async for chunk in response.iter_chunks():
            received += chunk
    await response.release()
    assert received == b"0123456789"


async def test_close_mid_body_is_refused_in_iter_chunks(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    server = await raw_server(handler)
    response = await make_transport().send(req(server.url + "/"))
    received = b""
    with pytest.raises(UpstreamRefused):
        async for chunk in response.iter_chunks():
            received += chunk
    await response.release()
    assert received == b"0123456789"


async def test_garbage_status_line_is_refused(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"SPDY/9 what is this\r\n\r\n")
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    with pytest.raises(UpstreamRefused):
        await make_transport().send(req(server.url + "/"))


async def test_close_delimited_body_ends_with_the_connection(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    server = await raw_server(handler)
    response = await make_transport().send(req(server.url + "/"))
    assert b"".join([chunk async for chunk in response.iter_chunks()]) == b"until the end"
    await response.release()


# ------------------------------------------------------------------------------------------------ early answers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return body


async def test_an_early_error_answer_stops_the_upload(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        await reader.readexactly(1000)  # some of the body, then a refusal and the connection's end
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        await writer.drain()

    async def endless() -> AsyncIterator[bytes]:
        while True:  # a client uploading more than the upstream will take
            await asyncio.sleep(0)
            yield b"u" * 1000

    server = await raw_server(handler)
    response = await make_transport().send(req(server.url + "/up", "POST", None, endless()))
    assert (response.status, await response.read()) == (413, b"too big!")
    await response.release()


async def test_an_early_answer_still_gets_the_whole_body(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")  # answers first, reads after
        await writer.drain()
        body = await read_chunked(reader)
        size = str(len(body)).encode()
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(size), size))
        await wait_for_eof(server, reader, i)

    server = await raw_server(handler)
    parts = [b"p" * 10_000] * 20
    response = await make_transport().send(req(server.url + "/duplex", "POST", None, chunks_of(*parts)))
    assert response.status == 200
    assert b"".join([chunk async for chunk in response.iter_chunks()]) == b"200000"
    await response.release()


async def test_waiting_for_a_free_connection_is_bounded_by_the_timeout(
    make_transport: TransportFactory, raw_server: Callable[[RawHandler], Awaitable[RawServer]]
) -> None:
    answer = asyncio.Event()

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        while True:
            await server.read_head(reader)
            await answer.wait()
            writer.write(OK_EMPTY)

    server = await raw_server(handler)
    transport = make_transport(pool_size=1)
    held = asyncio.create_task(transport.send(req(server.url + "/held")))
    await eventually(lambda: len(server.heads) == 1, what="the first request")
    with pytest.raises(UpstreamTimeout):
        await transport.send(req(server.url + "/waits", timeout=0.2))
    answer.set()
    response = await held
    await response.release()
    response = await transport.send(req(server.url + "/after"))
    assert response.status == 200
    await response.release()
    assert server.connections == 1


# ------------------------------------------------------------------------------------------------ h1 only


async def test_h1_refuses_a_line_break_in_the_target(raw_server: Callable[[RawHandler], Awaitable[RawServer]]) -> None:
    server = await raw_server(answer_ok_forever)
    async with H1Transport() as transport:
        with pytest.raises(UpstreamRefused):
            await transport.send(req(server.url + "/a\r\nX-Injected: 1"))
    assert server.heads == []


async def test_h1_refuses_a_body_longer_than_its_content_length(
    raw_server: Callable[[RawHandler], Awaitable[RawServer]],
) -> None:
    server = await raw_server(answer_ok_forever)
    async with H1Transport() as transport:
        with pytest.raises(UpstreamRefused):
            await transport.send(req(server.url + "/", "POST", {"Content-Length": "3"}, chunks_of(b"abc", b"def")))
