"""The upstream HTTP/1.1 client: asyncio protocols around httptools' C parser, behind `transport.Transport`.

One keep-alive pool per origin (scheme, host, port), at most `pool_size` connections each; a burst beyond waits
for one to come free. The request goes out as given: the path and query byte for byte, the caller's headers and
no others but Host and the body's framing. The response streams through a bounded buffer (the socket pauses when
the reader falls behind) and the connection goes back to the pool the moment the whole message has arrived.

Timeouts: `request.timeout` bounds connecting, sending and waiting for the response head; each wait for more
body bytes gets the same allowance again. One timer per wait, none per idle connection (one sweeper per pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..transport import HeaderBlock, UpstreamRefused, UpstreamRequest, UpstreamResponse, UpstreamTimeout

BODY_HIGH_WATER = 256 * 1024  # response bytes buffered before the upstream socket stops being read
_GET_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length: 0 without a body (as aiohttp)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding"})
_CHUNKED_END = b"0\r\n\r\n"

# request body framing
_NONE, _LENGTH, _CHUNKED = 0, 1, 2
# what the upload did: finished, stopped because the response head came first, or the connection went away
_SENT, _ANSWERED, _LOST = 0, 1, 2


def _expire(waiter: asyncio.Future[bool] | _Notify) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake(waiter: asyncio.Future[bool] | _Notify | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(True)


class _Notify:
    """Stands where a waiting task's Future would (`done`, `set_result`) and calls back instead: an exchange
    followed without a task. The call comes soon after, never from inside the parser's callbacks; no
    reference cycle is left behind (every request makes one: garbage only the cyclic GC could free costs)."""

    __slots__ = ("_callback", "_conn", "_done", "_loop", "_response")

    def __init__(self, response: _Response, conn: _Connection | None, callback: Callable[[bool], None]) -> None:
        self._loop = response._loop
        self._response = response
        self._conn = conn
        self._callback = callback
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, news: bool) -> None:
        if not self._done:
            self._done = True
            self._loop.call_soon(self._fire, news)

    def _fire(self, news: bool) -> None:
        conn = self._conn
        if conn is not None and conn._timed is self:
            conn._timed = None
        response = self._response
        if response._waiter is self:
            response._waiter = None
        self._callback(news)


class _Response:
    """One exchange on a connection: the head as parsed, then the body buffered for the reader."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof_ends",
        "_error",
        "_framing",
        "_got_bytes",
        "_head_request",
        "_headers",
        "_informational",
        "_loop",
        "_size",
        "_timeout",
        "_waiter",
        "complete",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection, head_request: bool, timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._loop: asyncio.AbstractEventLoop = conn._loop
        self._timeout = timeout
        self._head_request = head_request
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._framing: dict[bytes, bytes] = {}  # the first Connection, Content-Length, Transfer-Encoding
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = False
        self._error: str | None = None
        self._got_bytes = False  # any byte of an answer: a request that got none may be retried
        self._informational = False  # inside a 1xx answer, which is skipped
        self._eof_ends = False  # neither Content-Length nor chunked: the body ends when the connection does
        self._waiter: asyncio.Future[bool] | _Notify | None = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The fields decoded, on first use (forwarding passes `raw_headers` on as they are)."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict([(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self.raw_headers])
            )
        return self._headers

    # fed by the connection

    def _fail(self, message: str) -> None:
        if not self.complete and self._error is None:
            self._error = message
        self._conn = None
        _wake(self._waiter)

    def _finish(self) -> None:
        self.complete = True
        self._conn = None
        _wake(self._waiter)

    async def _wait(self, deadline: float) -> bool:
        """Until the connection has news (True) or the deadline passes (False)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = waiter
        conn = self._conn
        if conn is None:  # nothing more can come (a finished or failed exchange): the deadline alone
            timer = self._loop.call_at(deadline, _expire, waiter)
            try:
                return await waiter
            finally:
                timer.cancel()
                self._waiter = None
        conn._arm(deadline, waiter)
        try:
            return await waiter
        finally:
            conn._timed = None
            self._waiter = None

    def _abort(self) -> None:
        conn = self._conn
        if conn is not None and conn._response is self:
            conn.abort("the exchange was abandoned")
        self._fail("the exchange was abandoned")

    # followed without a task (H1Transport.start_now)

    def notify(self, deadline: float, callback: Callable[[bool], None]) -> None:
        """_wait() for a caller that is not a task: `callback(True)` soon after the connection has news (or at
        once if nothing more can come), `callback(False)` once `deadline` passes first. One call per notify()."""
        conn = self._conn
        waiter = _Notify(self, conn, callback)
        self._waiter = waiter
        if conn is None:
            waiter.set_result(True)
        else:
            conn._arm(deadline, waiter)

    @property
    def error(self) -> str | None:
        """Why the exchange failed (the connection broke, a malformed answer), or None."""
        return self._error

    @property
    def got_bytes(self) -> bool:
        """Whether any byte of an answer came: a request that got none may be sent again."""
        return self._got_bytes

    def take_body(self) -> bytes:
        """The whole body of a complete answer, taken once (read() without a task)."""
        chunks = self._chunks
        data = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    def abandon(self) -> None:
        """The rest of the answer will not be read: the connection goes, never back to the pool."""
        if not self.complete:
            self._abort()
        self._chunks.clear()

    # UpstreamResponse

    async def _read_chunk(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise UpstreamRefused(f"upstream broke off the body: {self._error}")
            try:
                news = await self._wait(self._loop.time() + self._timeout)
            except BaseException:
                self._abort()  # cancelled: the client went away, the connection cannot be reused
                raise
            if not news:
                self._abort()
                raise UpstreamTimeout("upstream stalled while sending the body")
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn._read_paused:
            conn._resume_reading()
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._read_chunk()
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        if self.complete:
            chunks = self._chunks
            data = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            return data
        parts = []
        while chunk := await self._read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def release(self) -> None:
        if not self.complete:
            self._abort()  # the rest of the body will not be read: the connection goes
        self._chunks.clear()

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"


H1Response = _Response
"""The exchange H1Transport.start_now hands out: an UpstreamResponse that can also be followed by callbacks."""


class _Connection(asyncio.Protocol):
    """One upstream socket: idle in its pool, or carrying one exchange (`_response`)."""

    __slots__ = (
        "_deadline",
        "_drain_waiter",
        "_forgotten",
        "_idle",
        "_keep",
        "_loop",
        "_parser",
        "_pool",
        "_read_paused",
        "_response",
        "_timed",
        "_timer",
        "_transport",
        "_uploading",
        "_write_paused",
        "idle_since",
        "lost",
    )

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: _Response | None = None
        self._keep = False
        self._uploading = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        self._idle = False
        self._forgotten = False
        self.lost = False  # closed, closing or aborted: never handed out again
        self.idle_since = 0.0
        # One timer per connection, re-armed only when it fires early: no timer per request (most answers
        # come long before their deadline, and a cancelled timer still costs a heap push).
        self._timer: asyncio.TimerHandle | None = None
        self._timed: asyncio.Future[bool] | _Notify | None = None
        self._deadline = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:  # idle, or already answered: the upstream speaks out of turn
            self.abort()
            return
        response._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("upstream switched protocols")
        except httptools.HttpParserError:
            self._broken("upstream sent a malformed response")

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._forget()
        response = self._response
        if response is not None:
            self._response = None
            if response.status and response._eof_ends and exc is None and not response._informational:
                response._finish()  # a body delimited by the connection's end
            elif response.status:
                response._fail("the connection closed before the end of the body")
            else:
                response._fail("the connection closed before an answer")
        _wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._response is None:
            self.abort()  # a second answer to one request

    def on_status(self, status: bytes) -> None:
        response = self._response
        if response is not None:
            response.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        if response is not None:
            response.raw_headers.append((name, value))
            key = name.lower()
            if key in _FRAMING and key not in response._framing:
                response._framing[key] = value

    def on_headers_complete(self) -> None:
        response = self._response
        if response is None:
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._broken("upstream switched protocols")
            else:  # 100 Continue, 102, 103: skipped, the real answer follows
                response._informational = True
                response.reason = ""
                response.raw_headers = []
                response._framing = {}
            return
        framing = response._framing
        response.status = status
        if response._head_request:
            connection = framing.get(b"connection", b"").lower()
            keep = b"close" not in connection and (parser.get_http_version() == "1.1" or b"keep-alive" in connection)
            # httptools cannot be told a HEAD answer has no body: it is complete here, and a fresh parser
            # takes the next answer (whatever this one's framing headers promised, nothing more may come)
            self._parser = httptools.HttpResponseParser(self)
            _wake(response._waiter)
            response._finish()
            self._message_done(keep)
            return
        keep = parser.should_keep_alive()
        if status != 204 and status != 304 and b"content-length" not in framing:
            encoding = framing.get(b"transfer-encoding")
            response._eof_ends = encoding is None or not encoding.lower().rstrip().endswith(b"chunked")
            keep = keep and not response._eof_ends
        self._keep = keep
        _wake(response._waiter)
        if self._uploading:
            _wake(self._drain_waiter)  # an answer before the whole body went: stop waiting to send more

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            self.abort()  # a body after HEAD's answer, or after the whole message
            return
        response._chunks.append(body)
        response._size += len(body)
        if response._size > BODY_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        _wake(response._waiter)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return  # the end of HEAD's answer as the discarded parser saw it
        if response._informational:
            response._informational = False
            return
        response._finish()
        self._message_done(self._keep)

    # the pool's side

    def _message_done(self, keep: bool) -> None:
        self._response = None
        if self._uploading:
            self._keep = False  # answered before the body was all sent: closed when the upload ends
            return
        self._pool.put(self, keep)

    def _upload_done(self) -> None:
        self._uploading = False
        if self._response is None and not self.lost:
            self.close()  # the answer finished first: the rest of the upload left the connection unusable

    def _start(self, response: _Response) -> None:
        self._response = response
        self._keep = False

    def _broken(self, message: str) -> None:
        self.abort(message)

    def _resume_reading(self) -> None:
        self._read_paused = False
        if self._transport is not None and not self.lost:
            self._transport.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.lost and self._transport is not None:
            self._transport.write(data)

    async def drain(self, stop_on_answer: bool) -> None:
        """Until the socket takes more, the connection goes, or (if asked) the answer's head arrives."""
        while self._write_paused and not self.lost:
            response = self._response
            if stop_on_answer and (response is None or response.status):
                return
            waiter: asyncio.Future[bool] = self._loop.create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None

    def _arm(self, deadline: float, waiter: asyncio.Future[bool] | _Notify) -> None:
        """`waiter` gets False at `deadline` unless woken before."""
        self._timed = waiter
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._timed
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms it again
        if self._deadline - self._loop.time() <= 0.001:  # the loop runs timers up to its clock resolution early
            waiter.set_result(False)
        else:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _forget(self) -> None:
        """Out of the pool's count, once: its place can go to a new connection."""
        self._disarm()
        if not self._forgotten:
            self._forgotten = True
            self._pool._forget(self)

    def close(self) -> None:
        self.lost = True
        self._forget()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self, message: str = "the connection was cut") -> None:
        self.lost = True
        response = self._response
        self._response = None
        if response is not None:
            response._fail(message)
        self._forget()
        if self._transport is not None:
            self._transport.abort()
        _wake(self._drain_waiter)


class _Pool:
    """The connections to one origin: idle ones newest last, the count of all open, and those waiting for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: URL, limit: int, keepalive_timeout: float) -> None:
        self.loop = loop
        host = url.raw_host or ""
        self.host = host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        authority = url.host_subcomponent or host
        if not url.is_default_port():
            authority = f"{authority}:{self.port}"
        self.host_line = f"Host: {authority}\r\n"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.size = 0  # open and opening connections
        self.idle: deque[_Connection] = deque()
        self.conns: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def acquire(self, deadline: float, allowance: float, fresh: bool) -> tuple[_Connection, bool]:
        """A connection and whether it was reused; a new one when `fresh` (a retry after a stale one)."""
        woken = False
        while True:
            if self.closed:
                raise UpstreamRefused("the upstream transport is closed")
            idle = self.idle
            if not fresh and (conn := self.idle_now()) is not None:
                return conn, True
            if self.size < self.limit:
                return await self._connect(deadline, allowance), False
            if fresh and idle:
                idle[0].close()  # make room for the fresh one: the oldest idle is the likeliest stale too
                continue
            waiter: asyncio.Future[bool] = self.loop.create_future()
            if woken:
                self.waiters.appendleft(waiter)
            else:
                self.waiters.append(waiter)
            timer = self.loop.call_at(deadline, _expire, waiter)
            try:
                woken = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self._wake_one()  # the place this waiter was given goes to the next one
                raise
            finally:
                timer.cancel()
            if not woken:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
                raise UpstreamTimeout(f"no upstream connection came free within {allowance:g}s")

    def idle_now(self) -> _Connection | None:
        """A kept-alive connection if one is idle, newest first (acquire() without waiting or connecting)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn._idle = False
            if not conn.lost:
                return conn
        return None

    async def _connect(self, deadline: float, allowance: float) -> _Connection:
        self.size += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except BaseException as exc:
            self.size -= 1
            self._wake_one()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no connection to the upstream within {allowance:g}s") from None
            if isinstance(exc, OSError):  # refused, reset, unreachable, DNS, TLS
                raise UpstreamRefused(f"cannot reach the upstream: {type(exc).__name__}") from None
            raise
        if self.closed:
            conn.close()
            raise UpstreamRefused("the upstream transport is closed")
        self.conns.add(conn)
        return conn

    def put(self, conn: _Connection, keep: bool) -> None:
        """An exchange is over: the connection idles for the next one, or closes."""
        if not keep or self.closed or conn.lost:
            conn.close()
            return
        if conn._read_paused:
            conn._resume_reading()
        conn.idle_since = now = self.loop.time()
        conn._idle = True
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(now + self.keepalive_timeout, self._sweep)
        self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        self.size -= 1
        self.conns.discard(conn)
        if conn._idle:
            conn._idle = False
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    def _sweep(self) -> None:
        """The pool's one timer: close connections idle for keepalive_timeout, then sleep until the next."""
        self._sweeper = None
        idle = self.idle
        expired = self.loop.time() - self.keepalive_timeout
        while idle and idle[0].idle_since <= expired:
            idle[0].close()
        if idle and not self.closed:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self.keepalive_timeout, self._sweep)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.conns):
            if conn._response is not None or conn._uploading:
                conn.abort("the upstream transport closed")
            else:
                conn.close()
        while self.waiters:
            _wake(self.waiters.popleft())


def _split(url: str) -> tuple[str, str]:
    """`http://host:port/path?query` → the origin and the request target, both as given."""
    slash = url.find("/", 8)  # past "http://" and the host's first character
    if slash > 0 and "#" not in url:
        origin = url[:slash]
        if "?" not in origin:
            return origin, url[slash:]
    start = url.find("://") + 3
    end = len(url)
    for mark in "/?#":
        at = url.find(mark, start)
        if 0 <= at < end:
            end = at
    target = url[end:].partition("#")[0]
    if not target.startswith("/"):
        target = "/" + target
    return url[:end], target


class H1Transport:
    """The fast Transport: HTTP/1.1 over asyncio protocols and httptools, one keep-alive pool per origin."""

    def __init__(self, *, pool_size: int = 256, keepalive_timeout: float = 30.0) -> None:
        self._pool_size = pool_size
        self._keepalive_timeout = keepalive_timeout
        self._pools: dict[str, _Pool] = {}
        self._uploads: set[asyncio.Task[None]] = set()  # bodies still going after an early answer

    def _pool(self, origin: str) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            try:
                url = URL(origin, encoded=True)
            except ValueError:
                raise UpstreamRefused("invalid upstream URL") from None
            if url.scheme not in ("http", "https") or not url.raw_host:
                raise UpstreamRefused("the upstream URL must be http:// or https:// with a host")
            pool = _Pool(asyncio.get_running_loop(), url, self._pool_size, self._keepalive_timeout)
            self._pools[origin] = pool
        return pool

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        origin, target = _split(request.url)
        pool = self._pool(origin)
        method = request.method
        headers = request.headers
        body = request.body
        timeout = request.timeout
        head, framing, length = _head(method, target, headers, pool.host_line, body is not None)
        deadline = pool.loop.time() + timeout
        first = b""
        body_done = body is None
        consumed = False  # chunks read past the first: the body can no longer be sent again
        for attempt in (0, 1):
            conn, reused = await pool.acquire(deadline, timeout, attempt > 0)
            response = _Response(conn, method == "HEAD", timeout)
            conn._start(response)
            try:
                if body is None:
                    conn.write(head)
                else:
                    conn._uploading = True
                    try:
                        async with asyncio.timeout_at(deadline):
                            if attempt == 0:
                                try:
                                    first = await anext(body)
                                except StopAsyncIteration:
                                    body_done = True
                            sent = len(first)
                            if framing == _CHUNKED:
                                data = head + _chunk(first) + (_CHUNKED_END if body_done else b"")
                            else:
                                data = head + first
                            conn.write(data)
                            outcome = _SENT
                            if not body_done:
                                consumed = True
                                outcome, sent = await _pump(conn, response, body, framing, length, sent, True)
                            elif framing == _LENGTH and sent != length:
                                raise _BodyMismatch
                    except TimeoutError:
                        conn.abort()
                        raise UpstreamTimeout(f"no response from the upstream within {timeout:g}s") from None
                    except _BodyMismatch:
                        conn.abort()
                        raise UpstreamRefused("the request body does not match its Content-Length") from None
                    except Exception as exc:
                        conn.abort()  # the client's body broke off
                        raise UpstreamRefused(f"the request body broke off: {type(exc).__name__}") from None
                    if outcome == _ANSWERED:
                        task = pool.loop.create_task(
                            _pump_rest(conn, response, body, framing, length, sent, timeout), name="upstream-upload"
                        )
                        self._uploads.add(task)
                        task.add_done_callback(self._uploads.discard)
                    else:
                        conn._upload_done()
                while not response.status:
                    if response._error is not None:
                        break
                    if not await response._wait(deadline):
                        response._abort()
                        raise UpstreamTimeout(f"no response from the upstream within {timeout:g}s")
            except BaseException:
                response._abort()  # cancelled (the client went away) or failed: never back to the pool
                raise
            if response.status:
                return response
            if (
                attempt == 0
                and reused
                and not response._got_bytes
                and (body is None or (method in _IDEMPOTENT and not consumed))
            ):
                continue  # a kept-alive connection the upstream had closed: once more on a new one
            raise UpstreamRefused(f"upstream failed: {response._error}")
        raise AssertionError("unreachable")

    def start_now(self, method: str, url: str, headers: HeaderBlock, timeout: float) -> _Response | None:
        """send() for a request without a body when a kept-alive connection to its origin is idle: the head
        goes out now and the answer is followed with notify(); None when no connection is idle (send() then).
        The connection was kept alive, so it may have been closed by the upstream meanwhile: an exchange that
        fails with no byte of an answer (`got_bytes` False) may be sent again."""
        origin, target = _split(url)
        pool = self._pools.get(origin)
        if pool is None or pool.closed or not pool.idle:
            return None
        head, _, _ = _head(method, target, headers, pool.host_line, False)
        conn = pool.idle_now()
        if conn is None:
            return None
        response = _Response(conn, method == "HEAD", timeout)
        conn._start(response)
        conn.write(head)
        return response

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        uploads = list(self._uploads)
        for task in uploads:
            task.cancel()
        if uploads:
            await asyncio.gather(*uploads, return_exceptions=True)

    async def __aenter__(self) -> H1Transport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _BodyMismatch(Exception):
    """The body iterator gave more or fewer bytes than the Content-Length header said."""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


async def _pump(
    conn: _Connection,
    response: _Response,
    body: AsyncIterator[bytes],
    framing: int,
    length: int,
    sent: int,
    stop_on_answer: bool,
) -> tuple[int, int]:
    """Send the rest of the body; stop early when the connection goes (or, if asked, the answer's head comes).

    Returns what happened and the bytes sent so far (counted for a Content-Length body only)."""
    while True:
        if conn.lost:
            return _LOST, sent
        if stop_on_answer and response.status:
            return _ANSWERED, sent
        if conn._write_paused:
            await conn.drain(stop_on_answer)
            continue
        try:
            chunk = await anext(body)
        except StopAsyncIteration:
            if framing == _CHUNKED:
                conn.write(_CHUNKED_END)
            elif sent != length:
                raise _BodyMismatch from None
            return _SENT, sent
        if framing == _CHUNKED:
            conn.write(_chunk(chunk))
        else:
            sent += len(chunk)
            if sent > length:
                raise _BodyMismatch
            conn.write(chunk)


async def _pump_rest(
    conn: _Connection,
    response: _Response,
    body: AsyncIterator[bytes],
    framing: int,
    length: int,
    sent: int,
    allowance: float,
) -> None:
    """The upload after an early answer, in its own task so the answer streams back meanwhile."""
    try:
        async with asyncio.timeout(allowance):
            await _pump(conn, response, body, framing, length, sent, False)
    except BaseException:
        conn.abort()
        raise
    finally:
        conn._upload_done()


def _head(method: str, target: str, headers: HeaderBlock, host_line: str, has_body: bool) -> tuple[bytes, int, int]:
    """The request line and headers, and how the body is framed (with its declared length)."""
    if " " in target or "\r" in target or "\n" in target:
        raise UpstreamRefused("the request target contains a space or a line break")
    host = "" if headers.has_host else host_line
    extra = b""  # the body's framing
    framing, length = _NONE, 0
    declared = headers.content_length
    if not has_body:
        if method not in _GET_METHODS and declared is None and not headers.transfer_encoding:
            extra = b"Content-Length: 0\r\n"
    elif declared is not None:
        if not declared.isdigit():
            raise UpstreamRefused("the request's Content-Length is not a number")
        framing, length = _LENGTH, int(declared)
    else:
        framing = _CHUNKED
        if not headers.transfer_encoding:
            extra = b"Transfer-Encoding: chunked\r\n"
    try:
        line = f"{method} {target} HTTP/1.1\r\n{host}".encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UpstreamRefused("the request target cannot be encoded") from None
    return line + b"".join(headers.lines) + extra + b"\r\n", framing, length
