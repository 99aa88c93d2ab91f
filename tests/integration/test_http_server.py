"""The proxy port's listener on real sockets: what clients see from keep-alive, pipelining, 100-continue,
limits, streaming both ways, drain and disconnects, with small handlers of the test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.http.server import MAX_URL, HttpServer, Request

Handler = Callable[[Request], Awaitable[None]]


async def echo(request: Request) -> None:
    """Answers what it got: method, raw path, decoded path, query, the body's size."""
    body = await request.body.read() if request.body is not None else b""
    answer = {
        "method": request.method,
        "raw_path": request.raw_path,
        "path": request.path,
        "query": dict(request.query),
        "size": len(body),
        "host": request.host,
        "remote": request.remote,
        "version": request.version,
    }
    request.respond(200, [("Content-Type", "application/json")], json.dumps(answer).encode())


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[HttpServer, int]]]]:
    servers: list[HttpServer] = []

    async def start(handler: Handler = echo, **kwargs: Any) -> tuple[HttpServer, int]:
        server = HttpServer(handler, **kwargs)
        port = await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        await server.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def responses(data: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length answers into (status line, headers, body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((lines[0], headers, rest[:size]))
        data = rest[size:]
    return out


async def test_keep_alive_serves_many_requests_on_one_connection(serve: Any) -> None:
    server, port = await serve()
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(5):
            async with session.get(f"http://127.0.0.1:{port}/a%20b/%2F?x={i}&y=+1") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
                assert "Date" in resp.headers and "Server" not in resp.headers
                got = await resp.json()
            assert got["raw_path"] == f"/a%20b/%2F?x={i}&y=+1"  # byte for byte
            assert got["path"] == "/a b//" and got["query"] == {"x": str(i), "y": " 1"}  # decoded as aiohttp does
        assert server.connections == 1  # one connection for all five


async def test_pipelined_requests_are_answered_in_order(serve: Any) -> None:
    _, port = await serve()  # one write: all four are parsed before the first handler runs
    raw = b"".join(f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in (1, 2, 3))
    raw += b"POST /4 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    answers = responses(await exchange(port, raw))
    assert [json.loads(body)["raw_path"] for _, _, body in answers] == ["/1", "/2", "/3", "/4"]
    assert json.loads(answers[3][2])["size"] == 3
    assert answers[3][1]["connection"] == "close" and "connection" not in answers[0][1]


async def test_100_continue_is_sent_only_when_the_body_is_read(serve: Any) -> None:
    async def deny_unless_key(request: Request) -> None:
        if request.headers.get("x-api-key") != "good":
            request.respond(403, [("Content-Type", "application/json")], b'{"error":"auth_failed"}')
            return
        await echo(request)

    _, port = await serve(deny_unless_key)
    head = "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nx-api-key: {}\r\n\r\n"
    # denied: no 100, the answer closes the connection (the body was never sent)
    data = await exchange(port, head.format("bad").encode())
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"100 Continue" not in data
    assert b"Connection: close" in data
    # allowed: 100 first, then the body, then the answer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.format("good").encode())
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_http_1_0_keep_alive_and_close_delimited_streams(serve: Any) -> None:
    async def stream(request: Request) -> None:
        request.start(200, [("Content-Type", "text/plain")])
        for part in (b"one,", b"two,", b"three"):
            await request.write(part)
        await request.finish()

    _, port = await serve(stream)
    data = await exchange(port, b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert b"Transfer-Encoding" not in head and body == b"one,two,three"  # ended by closing
    data = await exchange(port, b"GET /s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b"GET /" + b"a" * (MAX_URL + 1) + b" HTTP/1.1\r\nHost: h\r\n\r\n", "414", "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", "431", "headers_too_large"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
            "431",
            "headers_too_large",
        ),
        (b"GARBAGE\r\n\r\n", "400", "bad_request"),
        (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400", "bad_request"),
    ],
)
async def test_requests_over_a_limit_or_unparsable_get_a_json_answer(
    serve: Any, raw: bytes, status: str, error: str
) -> None:
    _, port = await serve()
    ((line, headers, body),) = responses(await exchange(port, raw))
    assert line.split()[1] == status and headers["connection"] == "close"
    assert headers["content-type"] == "application/json" and json.loads(body)["error"] == error


async def test_a_request_before_a_broken_one_is_still_answered(serve: Any) -> None:
    _, port = await serve()
    answers = responses(await exchange(port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nBROKEN\r\n\r\n"))
    assert [line.split()[1] for line, _, _ in answers] == ["200", "400"]


async def test_a_large_upload_streams_through_with_backpressure(serve: Any) -> None:
    seen: list[int] = []

    async def count(request: Request) -> None:
        assert request.body is not None
        total = 0
        async for chunk in request.body:
            total += len(chunk)
            seen.append(len(chunk))
            await asyncio.sleep(0)  # a consumer slower than the socket
        request.respond(200, [], str(total).encode())

    _, port = await serve(count)
    size = 8 * 1024 * 1024
    async with aiohttp.ClientSession() as session:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(size // 65536):
                yield b"x" * 65536

        async with session.post(f"http://127.0.0.1:{port}/up", data=chunks()) as resp:
            assert resp.status == 200 and await resp.text() == str(size)
    assert sum(seen) == size


async def test_a_slow_reader_gets_the_whole_stream(serve: Any) -> None:
    async def big(request: Request) -> None:
        request.start(200, [("Content-Length", str(32 * 65536))], length=32 * 65536)
        for _ in range(32):
            await request.write(b"z" * 65536)  # waits on the client's window instead of buffering it all
        await request.finish()

    _, port = await serve(big)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 2097152" in head
    total = 0
    while chunk := await reader.read(4096):
        total += len(chunk)
    assert total == 32 * 65536
    writer.close()


async def test_a_client_going_away_cancels_its_handler(serve: Any) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(request: Request) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    _, port = await serve(hang)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /h HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_a_failing_handler_gets_a_500_and_the_connection_lives_on(serve: Any) -> None:
    async def fail(request: Request) -> None:
        if request.raw_path == "/boom":
            raise RuntimeError("secret-detail")
        await echo(request)

    _, port = await serve(fail)
    answers = responses(
        await exchange(
            port, b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
    )
    assert [line.split()[1] for line, _, _ in answers] == ["500", "200"]
    assert b"secret-detail" not in answers[0][2] and json.loads(answers[0][2])["error"] == "internal_error"


async def test_a_quick_handler_answers_without_a_task_or_leaves_the_request_to_the_handler(serve: Any) -> None:
    """`quick` sees bodiless requests first: it answers them (or raises: 500), or says False and the
    handler gets them; requests with a body always go to the handler. Pipelined answers stay in order."""
    seen: list[str] = []

    def quick(request: Request) -> bool:
        seen.append(request.raw_path)
        if request.raw_path == "/boom":
            raise RuntimeError("secret-detail")
        if request.raw_path != "/quick":
            return False
        request.respond(200, [("Content-Type", "text/plain")], b"quick")
        return True

    _, port = await serve(echo, quick=quick)
    raw = (
        b"GET /quick HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /quick HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    answers = responses(await exchange(port, raw))
    assert [line.split()[1] for line, _, _ in answers] == ["200", "500", "200", "200", "200"]
    assert answers[0][2] == b"quick" and answers[4][2] == b"quick"
    assert b"secret-detail" not in answers[1][2] and json.loads(answers[1][2])["error"] == "internal_error"
    assert json.loads(answers[2][2])["raw_path"] == "/slow" and json.loads(answers[3][2])["size"] == 3
    assert seen == ["/quick", "/boom", "/slow", "/quick"]  # the POST went straight to the handler


async def test_a_client_going_away_calls_the_quick_handlers_on_lost(serve: Any) -> None:
    lost = asyncio.Event()
    taken = asyncio.Event()

    def quick(request: Request) -> bool:
        request.on_lost = lost.set  # answered later, by a callback of its own: here, never
        taken.set()
        return True

    _, port = await serve(echo, quick=quick)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /h HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(taken.wait(), 5)
    writer.close()
    await asyncio.wait_for(lost.wait(), 5)


async def test_draining_closes_each_connection_after_its_answer(serve: Any) -> None:
    server, port = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    server.draining = True
    writer.write(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)  # read() returns only once the server closes
    assert b"HTTP/1.1 200" in rest and b"Connection: close" in rest
    writer.close()


async def test_idle_connections_are_closed_after_the_keepalive_timeout(serve: Any) -> None:
    server, port = await serve(keepalive_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # the answer, then EOF once the connection idles out
    assert data.startswith(b"HTTP/1.1 200")
    assert server.connections == 0
    writer.close()


async def test_stop_listening_refuses_new_connections_and_closes_idle_ones(serve: Any) -> None:
    server, port = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await server.stop_listening()
    assert await asyncio.wait_for(reader.read(), 5) is not None  # the idle keep-alive connection is closed
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.close()


async def test_head_answers_carry_the_length_but_no_body(serve: Any) -> None:
    _, port = await serve()
    data = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head and body == b""
