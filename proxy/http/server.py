"""The proxy port's HTTP/1.1 server: asyncio protocols around httptools' C parser.

aiohttp's server costs more CPU per request than the rest of the proxy together (measured: README,
Performance); this one does only what a reverse proxy needs: keep-alive, pipelining answered in order,
100-continue sent on the first body read, request size limits, backpressure both ways, graceful drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools
from multidict import MultiDictProxy
from yarl import URL

from .headers import Headers, encode_fields

log = logging.getLogger(__name__)

MAX_URL = 16384  # API Gateway forwards request lines up to 10 KiB
MAX_FIELD = 16384  # one header line (name and value)
MAX_HEADERS = 128
MAX_HEAD = 65536  # the whole request head
BODY_HIGH_WATER = 256 * 1024  # request body buffered before the socket stops being read
MAX_PIPELINED = 16  # parsed requests waiting for their turn before the socket stops being read
KEEPALIVE_TIMEOUT = 75.0  # an idle connection (or one that sends its head too slowly) is closed after this
BACKLOG = 1024

Handler = Callable[["Request"], Awaitable[None]]
QuickHandler = Callable[["Request"], bool]
"""Takes a request without a body and answers it through callbacks, with no task; False leaves it to the
Handler. One that takes it sets `request.on_lost` when the client's going away must stop something."""

_NOT_STARTED, _STREAMING, _DONE = 0, 1, 2
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EMPTY_QUERY: MultiDictProxy[str] = URL("/").query


def _status_lines() -> dict[int, bytes]:
    return {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


_STATUS_LINES = _status_lines()


class _DateHeader:
    """`Date:` changes once a second; formatting it per response would cost more than the rest of the head."""

    second = 0
    line = ""

    @classmethod
    def get(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.line = now, f"Date: {formatdate(now, usegmt=True)}\r\n"
        return cls.line


def _error_body(error: str, message: str) -> bytes:
    return json.dumps({"error": error, "message": message}).encode()


class _Rejected(Exception):
    """Raised inside a parser callback: the request is refused with this status before any handler runs."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


class Body:
    """A request body as it arrives: chunks are buffered up to a high-water mark, then the socket pauses.

    The first read sends `100 Continue` when the client asked for it, so a request answered without its
    body (denied, unknown key) never uploads it.
    """

    __slots__ = ("_chunks", "_conn", "_error", "_expect_continue", "_size", "_waiter", "complete")

    def __init__(self, conn: _Connection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.complete = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._expect_continue = expect_continue

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER:
            self._conn._pause("body")
        self._wake()

    def _end(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.complete:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read_chunk(self) -> bytes:
        """The next chunk as received, b"" at the end; ConnectionResetError if the client went away."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise ConnectionResetError("the client closed the connection before sending the whole body")
            if self._expect_continue:
                self._expect_continue = False
                self._conn._write_continue()
            self._waiter = self._conn._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= BODY_HIGH_WATER // 4:
            self._conn._resume("body")
        return chunk

    async def read(self) -> bytes:
        """The whole body (only for bodies known to be small)."""
        return b"".join([chunk async for chunk in self])


class Request:
    """One request on a connection, and the way its answer goes back (respond, or start/write/finish)."""

    __slots__ = (
        "_chunked",
        "_closing",
        "_conn",
        "_path",
        "_query",
        "_state",
        "body",
        "headers",
        "keep_alive",
        "method",
        "on_lost",
        "query_string",
        "raw_path",
        "remote",
        "version",
    )

    scheme = "http"

    def __init__(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: Headers,
        version: str,
        keep_alive: bool,
        body: Body | None,
    ) -> None:
        self._conn = conn
        self.method = method
        if target[:1] != "/" and "://" in target:  # absolute-form (a client talking to us as to a proxy)
            parsed = httptools.parse_url(target.encode("utf-8", "surrogateescape"))
            path = parsed.path.decode("utf-8", "surrogateescape") if parsed.path else "/"
            target = path + ("?" + parsed.query.decode("utf-8", "surrogateescape") if parsed.query else "")
        self.raw_path = target  # path and query exactly as sent
        path, _, self.query_string = target.partition("?")
        self._path = path
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.body = body
        self.remote = conn._peer
        self._query: MultiDictProxy[str] | None = None
        self._state = _NOT_STARTED
        self._chunked = False
        self._closing = False
        self.on_lost: Callable[[], object] | None = None  # a QuickHandler's: called if the client goes first

    @property
    def encoded_path(self) -> str:
        """The path part of the target as sent, still percent-encoded."""
        return self._path

    @property
    def path(self) -> str:
        """The path percent-decoded the way aiohttp and yarl decode it (%2F stays encoded)."""
        path = self._path
        if "%" in path:
            return URL.build(path=path, encoded=True).path
        return path

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query parameters, parsed on first use (most requests never look)."""
        if self._query is None:
            qs = self.query_string
            self._query = URL.build(query_string=qs, encoded=True).query if qs else _EMPTY_QUERY
        return self._query

    @property
    def host(self) -> str:
        return self.headers.get_lower(b"host", "")

    @property
    def body_exists(self) -> bool:
        return self.body is not None

    @property
    def started(self) -> bool:
        """True once the status line is out: from then on a failure can only cut the connection."""
        return self._state != _NOT_STARTED

    def _head(self, status: int, reason: str | None, fields: bytes, extra: str, date: bool) -> bytes:
        line = _STATUS_LINES.get(status) if reason is None else None
        if line is None:
            phrase = reason if reason is not None else _phrase(status)
            line = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1", "replace")
        conn = self._conn
        closing = not self.keep_alive or conn.server.draining or (self.body is not None and not self.body.complete)
        self._closing = closing
        if closing:
            extra += "Connection: close\r\n"
        elif self.version == "1.0":
            extra += "Connection: keep-alive\r\n"
        if date:
            extra += _DateHeader.get()
        return line + fields + extra.encode("latin-1") + b"\r\n"

    def respond(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        *,
        reason: str | None = None,
        date: bool = True,
    ) -> None:
        """The whole answer in one write; Content-Length is added here (the caller must not send one), and
        Date unless `date` is False (the headers carry one: it is a singleton field)."""
        self.respond_encoded(status, encode_fields(headers), body, reason=reason, date=date)

    def respond_encoded(
        self, status: int, fields: bytes, body: bytes = b"", *, reason: str | None = None, date: bool = True
    ) -> None:
        """respond() with the header lines already on the wire's form (`Name: value\\r\\n` each)."""
        if self._state != _NOT_STARTED:
            raise RuntimeError("the answer has already started")
        self._state = _DONE
        bodiless = status in _NO_BODY_STATUS or status < 200
        extra = "" if bodiless else f"Content-Length: {len(body)}\r\n"
        head = self._head(status, reason, fields, extra, date)
        self._conn._write(head if bodiless or self.method == "HEAD" else head + body)
        self._conn._answered(self)

    def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        *,
        reason: str | None = None,
        length: int | None = None,
        date: bool = True,
    ) -> None:
        """Send the head of a streamed answer: `length` is the Content-Length already in `headers`, or None
        for a body of unknown length (chunked to HTTP/1.1 clients, ended by closing for HTTP/1.0); Date as
        in respond()."""
        self.start_encoded(status, encode_fields(headers), reason=reason, length=length, date=date)

    def start_encoded(
        self, status: int, fields: bytes, *, reason: str | None = None, length: int | None = None, date: bool = True
    ) -> None:
        """start() with the header lines already encoded, as in respond_encoded()."""
        if self._state != _NOT_STARTED:
            raise RuntimeError("the answer has already started")
        self._state = _STREAMING
        extra = ""
        bodiless = status in _NO_BODY_STATUS or status < 200 or self.method == "HEAD"
        if length is None and not bodiless:
            if self.version == "1.0":
                self.keep_alive = False
            else:
                self._chunked = True
                extra = "Transfer-Encoding: chunked\r\n"
        self._conn._write(self._head(status, reason, fields, extra, date))

    async def write(self, data: bytes) -> None:
        """One piece of a streamed body; waits while the client reads slower than the upstream sends."""
        if not data or self.method == "HEAD":
            return
        conn = self._conn
        if conn._lost:
            raise ConnectionResetError("the client closed the connection")
        conn._write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        if conn._write_paused:
            await conn._drain()

    async def finish(self) -> None:
        """End a streamed body (the last chunk for chunked answers)."""
        if self._state != _STREAMING:
            return
        self._state = _DONE
        if self._chunked and self.method != "HEAD":
            self._conn._write(b"0\r\n\r\n")
        self._conn._answered(self)

    def abort(self) -> None:
        """Cut the connection: after the head is out, the only honest signal left that the answer is broken."""
        self._state = _DONE
        self._conn._abort()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs the handler for one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._loop = server._loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._url: list[bytes] = []
        self._url_size = 0
        self._fields: list[tuple[bytes, bytes, bytes]] = []
        self._first: dict[bytes, bytes] = {}
        self._head_size = 0
        self._parsing: Request | None = None  # the request whose head/body is being received
        self._active: Request | None = None  # the request being answered
        self._task: asyncio.Task[None] | None = None
        self._waiting: deque[Request] = deque()
        self._paused: set[str] = set()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._closing = False  # no more requests are read (parse error, upgrade, a limit, shutdown)
        self._reject: _Rejected | None = None
        self.idle_since: float | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self.idle_since = self._loop.time()
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade (WebSocket, h2c) is answered as a plain request, then the connection closes
            self._stop_reading()
        except httptools.HttpParserCallbackError:
            rejected = self._reject or _Rejected(400, "bad_request", "The request could not be parsed")
            self._refuse(rejected)
        except httptools.HttpParserError as exc:
            self._refuse(_Rejected(400, "bad_request", f"Malformed HTTP request: {_parser_message(exc)}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        self.server._connections.discard(self)
        reset = ConnectionResetError("the client closed the connection")
        for request in (self._parsing, self._active, *self._waiting):
            if request is not None and request.body is not None:
                request.body._fail(reset)
        self._waiting.clear()
        active = self._active
        if active is not None and active._state != _DONE:  # an answered request finishes undisturbed
            if self._task is not None and not self._task.done():
                self._task.cancel()
            elif active.on_lost is not None:
                active.on_lost()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(reset)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool | None:
        # like nginx: a client that stops sending has gone away (the transport closes, the handler is cancelled)
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url.clear()
        self._url_size = 0
        self._fields = []
        self._first = {}
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > MAX_URL:
            self._reject = _Rejected(414, "uri_too_long", f"The request target is longer than {MAX_URL} bytes")
            raise self._reject
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size + 4
        if size > MAX_FIELD or len(self._fields) >= MAX_HEADERS or self._head_size > MAX_HEAD:
            self._reject = _Rejected(
                431,
                "headers_too_large",
                f"Request headers exceed the limits ({MAX_HEADERS} fields, {MAX_FIELD} bytes each)",
            )
            raise self._reject
        key = name.lower()
        self._fields.append((key, name, value))
        first = self._first
        if key not in first:
            first[key] = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        first = self._first
        headers = Headers(self._fields, first)
        target = b"".join(self._url).decode("utf-8", "surrogateescape")
        body: Body | None = None
        length = first.get(b"content-length")
        if b"transfer-encoding" in first or (length is not None and length != b"0"):
            expect = first.get(b"expect", b"").lower() == b"100-continue"
            body = Body(self, expect)
        request = Request(
            self,
            parser.get_method().decode("ascii", "replace"),
            target,
            headers,
            parser.get_http_version(),
            parser.should_keep_alive(),
            body,
        )
        self._parsing = request
        self.idle_since = None
        if self._active is None:
            self._run(request)
        else:
            self._waiting.append(request)
            if len(self._waiting) >= MAX_PIPELINED:
                self._pause("pipeline")

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body._feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body._end()
        self._parsing = None

    # serving

    def _run(self, request: Request) -> None:
        self._active = request
        self._task = None
        quick = self.server.quick
        if quick is not None and request.body is None:
            try:
                if quick(request):
                    return
            except Exception:
                log.exception("unexpected error while answering a request")
                self._fail(request)
                return
        self._task = self._loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        try:
            await self.server.handler(request)
        except asyncio.CancelledError:
            return  # the client went away (connection_lost), or the server is closing
        except Exception:
            log.exception("unexpected error while answering a request")
            self._fail(request)
            return
        if request._state == _NOT_STARTED:
            log.error("the handler returned without answering")
            request.respond(
                500, [("Content-Type", "application/json")], _error_body("internal_error", "No answer was produced")
            )
        elif request._state == _STREAMING:
            request.abort()

    def _fail(self, request: Request) -> None:
        """A handler raised: a 500 if nothing was sent yet, else the connection is cut."""
        if request._state == _NOT_STARTED:
            request.respond(
                500,
                [("Content-Type", "application/json")],
                _error_body("internal_error", "The proxy failed to handle the request"),
            )
        else:
            request.abort()

    def _answered(self, request: Request) -> None:
        """The request's answer is out: close, or go on with the next pipelined request."""
        if request._closing or (request.body is not None and not request.body.complete) or self._lost:
            self._close()
            return
        self._active = None
        if self._waiting:
            self._run(self._waiting.popleft())
            if len(self._waiting) < MAX_PIPELINED:
                self._resume("pipeline")
        elif self._reject is not None:
            self._send_rejection(self._reject)
        elif self._closing:
            self._close()
        else:
            self.idle_since = self._loop.time()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._lost:
            self._transport.write(data)

    def _write_continue(self) -> None:
        active = self._active
        if active is not None and active._state == _NOT_STARTED and active.version == "1.1":
            self._write(_CONTINUE)

    async def _drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("the client closed the connection")
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _pause(self, reason: str) -> None:
        if not self._paused and self._transport is not None and not self._lost:
            self._transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self._transport is not None and not self._lost and not self._closing:
                self._transport.resume_reading()

    def _stop_reading(self) -> None:
        """No more requests on this connection: answer those already read, then close."""
        self._closing = True
        parsing = self._parsing
        if parsing is not None:
            parsing.keep_alive = False
            if parsing.body is not None and not parsing.body.complete:
                parsing.body._end()
        for request in self._waiting:
            request.keep_alive = False
        if self._active is not None:
            self._active.keep_alive = False
        elif not self._waiting and parsing is None:
            self._close()

    def _refuse(self, rejected: _Rejected) -> None:
        """A request that cannot be parsed or is over a limit: answered after those before it, then closed."""
        self._closing = True
        self._reject = rejected
        if self._transport is not None and not self._lost:
            self._transport.pause_reading()
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body._fail(ConnectionResetError("the request body could not be parsed"))
        if self._active is None and not self._waiting:
            self._send_rejection(rejected)

    def _send_rejection(self, rejected: _Rejected) -> None:
        body = _error_body(rejected.error, str(rejected))
        head = (
            _STATUS_LINES.get(rejected.status, b"HTTP/1.1 400 Bad Request\r\n")
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{_DateHeader.get()}"
            "Connection: close\r\n\r\n".encode()
        )
        self._write(head + body)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def close_if_idle(self) -> bool:
        """Close the connection when no request is in flight; True if it was closed."""
        if self._active is None and not self._waiting:
            self._close()
            return True
        return False


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:120]


class HttpServer:
    """The listener: accepts connections, hands each request to `handler`, drains on request."""

    def __init__(
        self, handler: Handler, *, quick: QuickHandler | None = None, keepalive_timeout: float = KEEPALIVE_TIMEOUT
    ) -> None:
        self.handler = handler
        self.quick = quick
        self.keepalive_timeout = keepalive_timeout
        self.draining = False  # every answer then closes its connection
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port (0 picks a free port) and return the bound port."""
        self._server = await self._loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=BACKLOG,
        )
        self._schedule_sweep()
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _schedule_sweep(self) -> None:
        self._sweeper = self._loop.call_later(min(self.keepalive_timeout / 4, 5.0), self._sweep)

    def _sweep(self) -> None:
        """One timer for every connection: close those idle (or slow to send a head) for too long."""
        deadline = self._loop.time() - self.keepalive_timeout
        for conn in list(self._connections):
            if conn.idle_since is not None and conn.idle_since < deadline:
                conn.close_if_idle()
        self._schedule_sweep()

    async def stop_listening(self) -> None:
        """No new connections; the ones open go on until closed."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close_if_idle()

    async def close(self, grace: float = 1.0) -> None:
        """Close every connection: idle ones at once, busy ones cut after `grace` seconds."""
        await self.stop_listening()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = self._loop.time() + grace
        while self._connections and self._loop.time() < deadline:
            for conn in list(self._connections):
                conn.close_if_idle()
            await asyncio.sleep(0.01)  # poll: a handful of rounds at most, only at shutdown
        tasks: list[asyncio.Task[Any]] = []
        for conn in list(self._connections):
            if conn._task is not None and not conn._task.done():
                tasks.append(conn._task)
            conn._abort()
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=grace)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), grace)
            self._server = None
