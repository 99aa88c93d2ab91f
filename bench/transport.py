"""Micro-benchmark of the upstream transports: requests/s and CPU µs per request, aiohttp against h1.

The upstream runs in a child process (a raw asyncio server with one fixed keep-alive answer), so the CPU
time measured here (time.process_time of this process) is the transport's, plus the event loop, the syscalls
and this loop of calls: send → read → release, as proxy.forward does for a small answer. "floor" is no
transport but the least any asyncio client does per request (see _Floor): a transport's own cost is its
figure minus the floor's. Each line is the best of `--rounds` runs (a shared machine only adds noise).

    python -m bench.transport [--requests 5000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import time

from proxy.http.client import H1Transport
from proxy.transport import AiohttpTransport, HeaderBlock, Transport, UpstreamRequest

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"
    b'{"id": 42, "status": "ok"}\n'
)
HEADERS = [
    ("Accept", "application/json"),
    ("User-Agent", "bench/1.0"),
    ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "api.example.com"),
    ("X-Amzn-Trace-Id", "Root=1-67891233-abcdef012345678912345678"),
]


class _Fixed(asyncio.Protocol):
    """Answers every request head with ANSWER (GETs only: a head ends at the blank line)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        count = data.count(b"\r\n\r\n")
        self.tail = data[data.rfind(b"\r\n\r\n") + 4 :] if count else data
        if count and self.transport is not None:
            self.transport.write(ANSWER * count)


def _upstream(conn: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Fixed, "127.0.0.1", 0, backlog=1024)
        conn.send(server.sockets[0].getsockname()[1])
        await loop.run_in_executor(None, conn.recv)  # until the parent says stop
        server.close()

    asyncio.run(main())


class _FloorConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(ANSWER) and self.waiter is not None:
            self.waiter.set_result(self.received[: len(ANSWER)])
            self.received = self.received[len(ANSWER) :]


class _FloorResponse:
    status = 200
    reason = "OK"

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self) -> bytes:
        return self.data[-27:]

    async def release(self) -> None:
        pass


class _Floor:
    """Not a transport: a fixed request written and a fixed-size answer awaited, on pooled connections.

    What any asyncio client pays (event loop, syscalls, a future per request) and what h1 is measured against.
    """

    def __init__(self) -> None:
        self.idle: list[_FloorConnection] = []
        self.request = b""

    async def send(self, request: UpstreamRequest) -> _FloorResponse:
        if not self.request:
            origin, _, target = request.url.partition("//")[2].partition("/")
            lines = [f"GET /{target} HTTP/1.1", f"Host: {origin}", *(f"{k}: {v}" for k, v in request.headers.items())]
            self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
            self.port = int(origin.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        if self.idle:
            conn = self.idle.pop()
        else:
            _, conn = await loop.create_connection(_FloorConnection, "127.0.0.1", self.port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(self.request)
        data = await conn.waiter
        self.idle.append(conn)
        return _FloorResponse(data)

    async def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def _run(transport: Transport | _Floor, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request) for `requests` sends, `concurrency` at a time."""
    headers = HeaderBlock.of(HEADERS)

    async def one() -> None:
        response = await transport.send(UpstreamRequest("GET", url, headers, None, 10.0))
        body = await response.read()
        await response.release()
        assert response.status == 200 and len(body) == 27

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    for _ in range(200):  # warm the pool and the caches
        await one()
    share, rest = divmod(requests, concurrency)
    counts = [share + (1 if i < rest else 0) for i in range(concurrency)]
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n) for n in counts if n))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6


async def _bench(port: int, requests: int, concurrency: int, rounds: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/orders/42?fields=id%2Cstatus"
    print(f"{'transport':<10}{'mode':<16}{'requests/s':>12}{'CPU µs/req':>12}")
    makers: tuple[tuple[str, type[Transport | _Floor]], ...] = (
        ("aiohttp", AiohttpTransport),
        ("h1", H1Transport),
        ("floor", _Floor),
    )
    for name, make in makers:
        for mode, n in (("sequential", 1), (f"{concurrency}-concurrent", concurrency)):
            best_rate, best_cpu = 0.0, float("inf")
            for _ in range(rounds):
                transport = make()
                try:
                    rate, cpu = await _run(transport, url, requests, n)
                finally:
                    await transport.close()
                best_rate, best_cpu = max(best_rate, rate), min(best_cpu, cpu)
            rate, cpu = best_rate, best_cpu
            print(f"{name:<10}{mode:<16}{rate:>12,.0f}{cpu:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    upstream = multiprocessing.Process(target=_upstream, args=(child,), daemon=True)
    upstream.start()
    try:
        port = parent.recv()
        asyncio.run(_bench(port, args.requests, args.concurrency, args.rounds))
    finally:
        parent.send("stop")
        upstream.join(5)
        if upstream.is_alive():
            upstream.terminate()


if __name__ == "__main__":
    main()
