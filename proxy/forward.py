"""Step 6: forward the request to the upstream and stream the answer back, with clean 502/504 errors."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

from multidict import CIMultiDict, CIMultiDictProxy

from .http.server import Request
from .responses import json_error
from .transport import Transport, UpstreamError, UpstreamRequest

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
_HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {"content-length"}


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


def upstream_headers(request: Request, strip: tuple[str, ...] = (), client_ip: str | None = None) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones and credentials, plus the X-Forwarded-* family.

    `client_ip` (API Gateway's context.identity.sourceIp) starts X-Forwarded-For when the gateway sent none.
    """
    source = request.headers
    connection = source.get("Connection")
    dropped = _dropped_upstream(strip)
    if connection:
        dropped |= {t.strip().lower() for t in connection.split(",") if t.strip()}
    headers: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in source.items() if k.lower() not in dropped])
    peer = request.remote or ""
    previous = source.get("X-Forwarded-For") or client_ip
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Proto"] = source.get("X-Forwarded-Proto", request.scheme)
    headers["X-Forwarded-Host"] = source.get("X-Forwarded-Host", request.host)
    return headers


async def forward(
    request: Request,
    transport: Transport,
    url: str,
    headers: CIMultiDict[str],
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
        status, error = (504, "upstream_timeout") if exc.kind == "upstream_timeout" else (502, "bad_gateway")
        json_error(status, error, str(exc)).send(request)
        return Forwarded(status, None, exc.kind)
    upstream_seconds = time.perf_counter() - started
    try:
        status = upstream.status
        reason = upstream.reason or None
        bodiless = request.method == "HEAD" or status in (204, 304) or status < 200
        length = upstream.headers.get("Content-Length", "")
        if not bodiless and length.isdigit() and int(length) <= SMALL_BODY:
            # Small answers (most API responses) are read whole and sent in one write: half the syscalls.
            try:
                body = await upstream.read()
            except UpstreamError as exc:
                json_error(502, "bad_gateway", str(exc)).send(request)
                return Forwarded(502, upstream_seconds, exc.kind)
            answer = _response_headers(upstream.headers, extra_headers, True)
            request.respond(status, answer, body, reason=reason, date="Date" not in upstream.headers)
            return Forwarded(status, upstream_seconds)
        request.start(
            status,
            _response_headers(upstream.headers, extra_headers, False),
            reason=reason,
            length=int(length) if length.isdigit() else None,
            date="Date" not in upstream.headers,  # one Date: the upstream's, else ours
        )
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


def _response_headers(
    upstream: CIMultiDictProxy[str], extra: Mapping[str, str] | None, drop_length: bool
) -> list[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones (and any it names in Connection), plus ours."""
    dropped = _HOP_BY_HOP_AND_LENGTH if drop_length else HOP_BY_HOP
    if extra:
        dropped = _dropped_downstream(drop_length, tuple(extra))  # ours replace the upstream's of the same name
    connection = upstream.get("Connection")
    if connection:
        dropped = dropped | {t.strip().lower() for t in connection.split(",") if t.strip()}
    headers = [(k, v) for k, v in upstream.items() if k.lower() not in dropped]
    if extra:
        headers.extend(extra.items())
    return headers


@functools.lru_cache(maxsize=256)
def _dropped_upstream(strip: tuple[str, ...]) -> frozenset[str]:
    """Hop-by-hop headers, Host and a service's credential headers: one set per service, not per request."""
    return HOP_BY_HOP | {"host"} | {n.lower() for n in strip}


@functools.lru_cache(maxsize=256)
def _dropped_downstream(drop_length: bool, extra: tuple[str, ...]) -> frozenset[str]:
    """Hop-by-hop headers (and Content-Length) plus the names of ours, once per set of names (the limiter's
    RateLimit-* headers are the same few names on every answer)."""
    return (_HOP_BY_HOP_AND_LENGTH if drop_length else HOP_BY_HOP) | {k.lower() for k in extra}
