"""Step 6: forward the request to the upstream and stream the answer back, with clean 502/504 errors."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from .http.client import H1Response, H1Transport
from .http.server import Request
from .responses import json_error
from .transport import (
    HeaderBlock,
    Transport,
    UpstreamError,
    UpstreamRefused,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_HOP_BY_HOP_B = frozenset(name.encode() for name in HOP_BY_HOP)
_HOP_BY_HOP_AND_LENGTH = _HOP_BY_HOP_B | {b"content-length"}
_UPSTREAM_DROPPED = _HOP_BY_HOP_B | {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


@dataclass(slots=True)
class Forwarded:
    """What the forwarding step did: the status sent and the time to upstream headers (None if none)."""

    status: int
    upstream_seconds: float | None
    error: str | None = None


def upstream_url(base: str, raw_path: str, strip_query: Iterable[str] = ()) -> str:
    """Join the upstream base URL and the client's raw path and query, dropping credential parameters."""
    path, sep, query = raw_path.partition("?")
    if sep and strip_query:
        strip = set(strip_query)
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in strip]
        query = urlencode(pairs, quote_via=quote)
    return base.rstrip("/") + path + (f"?{query}" if query else "")


def upstream_headers(request: Request, strip: tuple[str, ...] = (), client_ip: str | None = None) -> HeaderBlock:
    """The client's headers minus hop-by-hop ones and credentials, plus the X-Forwarded-* family.

    `client_ip` (API Gateway's context.identity.sourceIp) starts X-Forwarded-For when the gateway sent none.
    The client's fields pass as the bytes they came in (the parser has refused any with a line break).
    """
    source = request.headers
    first = source.first
    dropped = _dropped_upstream(strip)
    connection = first.get(b"connection")
    if connection:
        named = _named_in_connection(connection)
        if named:
            dropped = dropped | named
    lines = [b"%s: %s\r\n" % (name, value) for key, name, value in source.fields if key not in dropped]
    peer = (request.remote or "").encode("latin-1", "replace")
    previous = first.get(b"x-forwarded-for") or (client_ip.encode("utf-8", "surrogateescape") if client_ip else b"")
    lines.append(b"X-Forwarded-For: %s, %s\r\n" % (previous, peer) if previous else b"X-Forwarded-For: %s\r\n" % peer)
    lines.append(b"X-Forwarded-Proto: %s\r\n" % (first.get(b"x-forwarded-proto") or _SCHEMES[request.scheme]))
    lines.append(b"X-Forwarded-Host: %s\r\n" % (first.get(b"x-forwarded-host") or first.get(b"host", b"")))
    length = first.get(b"content-length")
    return HeaderBlock(lines, content_length=length.strip() if length is not None else None)


_SCHEMES = {"http": b"http", "https": b"https"}


async def forward(
    request: Request,
    transport: Transport,
    url: str,
    headers: HeaderBlock,
    upstream_timeout: float,
    extra_headers: Mapping[str, str] | None = None,
) -> Forwarded:
    """Send upstream and stream back. After headers are sent a failure can only cut the connection."""
    upstream_request = UpstreamRequest(
        method=request.method, url=url, headers=headers, body=request.body, timeout=upstream_timeout
    )
    started = time.perf_counter()
    try:
        upstream = await transport.send(upstream_request)
    except UpstreamError as exc:
        return _refused(request, exc, None)
    return await _answer(request, upstream, time.perf_counter() - started, extra_headers)


def _refused(request: Request, exc: UpstreamError, upstream_seconds: float | None) -> Forwarded:
    """No usable answer from the upstream: 504 when it was too slow, else 502."""
    status, error = (504, "upstream_timeout") if exc.kind == "upstream_timeout" else (502, "bad_gateway")
    json_error(status, error, str(exc)).send(request)
    return Forwarded(status, upstream_seconds, exc.kind)


async def _answer(
    request: Request, upstream: UpstreamResponse, upstream_seconds: float, extra_headers: Mapping[str, str] | None
) -> Forwarded:
    """Pass the upstream's answer on: small ones whole, the rest streamed."""
    try:
        status = upstream.status
        reason = upstream.reason or None
        bodiless = request.method == "HEAD" or status in (204, 304) or status < 200
        fields, length, dated = _response_fields(upstream.raw_headers, extra_headers)
        if not bodiless and length is not None and length <= SMALL_BODY:
            # Small answers (most API responses) are read whole and sent in one write: half the syscalls.
            try:
                body = await upstream.read()
            except UpstreamError as exc:
                json_error(502, "bad_gateway", str(exc)).send(request)
                return Forwarded(502, upstream_seconds, exc.kind)
            request.respond_encoded(status, fields, body, reason=reason, date=not dated)
            return Forwarded(status, upstream_seconds)
        if length is not None:
            fields += b"Content-Length: %d\r\n" % length
        request.start_encoded(status, fields, reason=reason, length=length, date=not dated)  # one Date
        if not bodiless:
            try:
                async for chunk in upstream.iter_chunks():
                    await request.write(chunk)
            except UpstreamError as exc:
                # Headers are out: the honest signal left is an aborted connection, never a truncated "success".
                request.abort()
                return Forwarded(status, upstream_seconds, exc.kind)
            except ConnectionResetError:
                request.abort()
                return Forwarded(CLIENT_CLOSED, upstream_seconds, "client_closed")
        await request.finish()
    finally:
        await upstream.release()
    return Forwarded(status, upstream_seconds)


Done = Callable[[Forwarded | None], None]
"""Told what forward() would have returned; None when the client went away first (forward() cancelled)."""


def forward_now(
    request: Request,
    transport: H1Transport,
    url: str,
    headers: HeaderBlock,
    upstream_timeout: float,
    extra_headers: Mapping[str, str] | None,
    done: Done,
) -> bool:
    """forward() without a task, for a request without a body while a kept-alive upstream connection is idle
    (the common case); the same answers, and `done` is told the outcome. False when nothing was sent: await
    forward() instead. What needs waiting beyond one small answer (a stale connection to retry, a large or
    streamed body) goes on in a task of its own, through forward()'s code."""
    try:
        response = transport.start_now(request.method, url, headers, upstream_timeout)
    except UpstreamError as exc:
        done(_refused(request, exc, None))
        return True
    if response is None:
        return False
    _Quick(request, transport, url, headers, upstream_timeout, extra_headers, done, response)
    return True


class _Quick:
    """One exchange followed by callbacks (H1 `notify`) until its answer is out or a task takes it over."""

    __slots__ = (
        "_deadline",
        "_done",
        "_ended",
        "_extra",
        "_head",
        "_headers",
        "_loop",
        "_request",
        "_response",
        "_started",
        "_task",
        "_timeout",
        "_transport",
        "_upstream_seconds",
        "_url",
    )

    def __init__(
        self,
        request: Request,
        transport: H1Transport,
        url: str,
        headers: HeaderBlock,
        timeout: float,
        extra: Mapping[str, str] | None,
        done: Done,
        response: H1Response,
    ) -> None:
        self._request = request
        self._transport = transport
        self._url = url
        self._headers = headers
        self._timeout = timeout
        self._extra = extra
        self._done = done
        self._response = response
        self._started = time.perf_counter()
        self._upstream_seconds: float | None = None
        self._head: tuple[bytes, int | None, bool] | None = None  # the answer's fields, length and Date, once
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._loop = asyncio.get_running_loop()
        request.on_lost = self._lost
        response.notify(self._loop.time() + timeout, self._news)

    def _news(self, news: bool) -> None:
        if self._ended or self._task is not None:
            return
        try:
            self._step(news)
        except Exception:
            log.exception("unexpected error while forwarding a request")
            self._response.abandon()
            request = self._request
            if request.started:
                request.abort()
            else:
                json_error(500, "internal_error", "The proxy failed to handle the request").send(request)
            self._end(Forwarded(500, self._upstream_seconds, "internal_error"))

    def _step(self, news: bool) -> None:
        response = self._response
        request = self._request
        if not news:
            response.abandon()
            if not response.status:
                timeout = UpstreamTimeout(f"no response from the upstream within {self._timeout:g}s")
                self._end(_refused(request, timeout, None))
            else:  # as forward() answers a small body that stalls: the head came, so 502, not 504
                json_error(502, "bad_gateway", "upstream stalled while sending the body").send(request)
                self._end(Forwarded(502, self._upstream_seconds, "upstream_timeout"))
            return
        if not response.status:  # news before a head is a failure (interim 1xx answers wake no one)
            if not response.got_bytes:  # a kept-alive connection the upstream had closed: send() tries again
                self._later(self._again())
            else:
                self._end(_refused(request, UpstreamRefused(f"upstream failed: {response.error}"), None))
            return
        if self._upstream_seconds is None:
            self._upstream_seconds = time.perf_counter() - self._started
        head = self._head
        if head is None:
            head = self._head = _response_fields(response.raw_headers, self._extra)
        fields, length, dated = head
        status = response.status
        small = length is not None and length <= SMALL_BODY and request.method != "HEAD" and status not in (204, 304)
        if small and response.complete:
            body = response.take_body()
            request.respond_encoded(status, fields, body, reason=response.reason or None, date=not dated)
            self._end(Forwarded(status, self._upstream_seconds))
        elif small and response.error is None:
            response.notify(self._loop.time() + self._timeout, self._news)  # the rest of a small body
        else:  # bodiless, large, streamed or broken off: forward()'s own code, in a task
            self._later(_answer(request, response, self._upstream_seconds, self._extra))

    async def _again(self) -> Forwarded:
        return await forward(self._request, self._transport, self._url, self._headers, self._timeout, self._extra)

    def _later(self, work: Coroutine[Any, Any, Forwarded]) -> None:
        self._task = self._loop.create_task(self._run(work))

    async def _run(self, work: Coroutine[Any, Any, Forwarded]) -> None:
        try:
            forwarded: Forwarded | None = await work
        except asyncio.CancelledError:
            forwarded = None
        except Exception:
            log.exception("unexpected error while forwarding a request")
            request = self._request
            if request.started:
                request.abort()
            else:
                json_error(500, "internal_error", "The proxy failed to handle the request").send(request)
            forwarded = Forwarded(500, self._upstream_seconds, "internal_error")
        self._end(forwarded)

    def _lost(self) -> None:
        """The client went away before its answer was out: stop the exchange (the connection cannot be reused)."""
        if self._ended:
            return
        if self._task is not None:
            self._task.cancel()  # _run ends it
            return
        self._response.abandon()
        self._end(None)

    def _end(self, forwarded: Forwarded | None) -> None:
        if not self._ended:
            self._ended = True
            self._request.on_lost = None
            self._done(forwarded)


def _response_fields(
    upstream: Sequence[tuple[bytes, bytes]], extra: Mapping[str, str] | None
) -> tuple[bytes, int | None, bool]:
    """The upstream's header lines minus hop-by-hop ones (those it names in Connection too) and its
    Content-Length, plus ours; with the Content-Length (None if none or not a number) and whether it
    sent a Date (ours is added only without one)."""
    dropped = _dropped_downstream(tuple(extra)) if extra else _HOP_BY_HOP_AND_LENGTH
    length: int | None = None
    dated = False
    named: frozenset[bytes] = frozenset()  # what the upstream's Connection header names, beyond hop-by-hop
    lines: list[bytes] = []
    for name, value in upstream:
        key = name.lower()
        if key in dropped:
            if key == b"content-length":
                if length is None and value.strip().isdigit():
                    length = int(value)
            elif key == b"connection":
                named |= _named_in_connection(value)
            continue
        if key == b"date":
            dated = True
        lines.append(b"%s: %s\r\n" % (name, value))
    if named:  # rare: an upstream that declares a header of its own hop-by-hop
        dropped = dropped | named
        lines = [b"%s: %s\r\n" % (n, v) for n, v in upstream if n.lower() not in dropped]
    fields = b"".join(lines)
    if extra:
        fields += "".join([f"{k}: {v}\r\n" for k, v in extra.items()]).encode("latin-1", "replace")
    return fields, length, dated


@functools.lru_cache(maxsize=256)
def _named_in_connection(value: bytes) -> frozenset[bytes]:
    """The field names a Connection header lists beyond the hop-by-hop ones (`keep-alive`, `close`: none)."""
    return frozenset(t.strip().lower() for t in value.split(b",")) - _HOP_BY_HOP_B - {b"", b"close"}


@functools.lru_cache(maxsize=256)
def _dropped_upstream(strip: tuple[str, ...]) -> frozenset[bytes]:
    """Hop-by-hop headers, Host, the X-Forwarded-* we set and a service's credential headers: one set per
    service, not per request."""
    return _UPSTREAM_DROPPED | {n.lower().encode("latin-1", "replace") for n in strip}


@functools.lru_cache(maxsize=256)
def _dropped_downstream(extra: tuple[str, ...]) -> frozenset[bytes]:
    """Hop-by-hop headers and Content-Length plus the names of ours, once per set of names (the limiter's
    RateLimit-* headers are the same few names on every answer)."""
    return _HOP_BY_HOP_AND_LENGTH | {k.lower().encode("latin-1", "replace") for k in extra}
