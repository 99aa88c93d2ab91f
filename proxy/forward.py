"""Step 6: forward the request to the upstream and stream the answer back, with clean 502/504 errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .responses import json_error
from .transport import CHUNK_SIZE, Transport, UpstreamError, UpstreamRequest

SMALL_BODY = 64 * 1024
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


@dataclass(slots=True)
class Forwarded:
    """What the forwarding step did: the status sent and the time to upstream headers (None if none)."""

    status: int
    upstream_seconds: float | None
    error: str | None = None


def upstream_url(base: str, raw_path: str, strip_query: Iterable[str] = ()) -> str:
    """Join the upstream base URL and the client's raw path and query, dropping credential parameters."""
    path, sep, query = raw_path.partition("?")
    strip = {n for n in strip_query}
    if sep and strip:
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in strip]
        query = urlencode(pairs, quote_via=quote)
    base = base.rstrip("/")
    return base + path + (f"?{query}" if query else "")


def upstream_headers(request: web.Request, strip: Iterable[str] = (), client_ip: str | None = None) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones and credentials, plus the X-Forwarded-* family.

    `client_ip` (API Gateway's context.identity.sourceIp) starts X-Forwarded-For when the gateway sent none.
    """
    connection_tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",") if t.strip()}
    dropped = HOP_BY_HOP | connection_tokens | {"host"} | {n.lower() for n in strip}
    headers: CIMultiDict[str] = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in dropped)
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For") or client_ip
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
    headers["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
    return headers


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        yield chunk


async def forward(
    request: web.Request,
    transport: Transport,
    url: str,
    headers: CIMultiDict[str],
    upstream_timeout: float,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[web.StreamResponse, Forwarded]:
    """Send upstream and stream back. After headers are sent a failure can only cut the connection."""
    has_body = request.body_exists or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    upstream_request = UpstreamRequest(
        method=request.method,
        url=url,
        headers=headers,
        body=_request_body(request) if has_body else None,
        timeout=upstream_timeout,
    )
    started = time.perf_counter()
    try:
        upstream = await transport.send(upstream_request)
    except UpstreamError as exc:
        status, error = (504, "upstream_timeout") if exc.kind == "upstream_timeout" else (502, "bad_gateway")
        return json_error(status, error, str(exc)), Forwarded(status, None, exc.kind)
    upstream_seconds = time.perf_counter() - started
    try:
        headers = _response_headers(upstream.headers)
        if extra_headers:
            headers.update(extra_headers)
        bodiless = request.method == "HEAD" or upstream.status in (204, 304)
        length = upstream.headers.get("Content-Length", "")
        if not bodiless and length.isdigit() and int(length) <= SMALL_BODY:
            # Small answers (most API responses) are read whole and sent in one write: half the syscalls.
            try:
                body = await upstream.read()
            except UpstreamError as exc:
                return json_error(502, "bad_gateway", str(exc)), Forwarded(502, upstream_seconds, exc.kind)
            small = _OneWriteResponse(status=upstream.status, reason=upstream.reason or None, headers=headers)
            await small.prepare(request)
            await small.write_eof(body)
            return small, Forwarded(upstream.status, upstream_seconds)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason or None, headers=headers)
        if "Content-Length" not in headers and not bodiless:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
        except UpstreamError as exc:
            # Headers are out: the honest signal left is an aborted connection, never a truncated "success".
            if request.transport is not None:
                request.transport.close()
            return response, Forwarded(upstream.status, upstream_seconds, exc.kind)
        await response.write_eof()
    finally:
        await upstream.release()
    return response, Forwarded(upstream.status, upstream_seconds)


class _OneWriteResponse(web.StreamResponse):
    """Headers go out with the body in one write; web.Response would add a Content-Type the upstream
    did not send. (If aiohttp drops this attribute, the only cost is one more syscall.)"""

    _send_headers_immediately = False


def _response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop ones (and any it names in Connection)."""
    tokens = {t.strip().lower() for t in upstream.get("Connection", "").split(",") if t.strip()}
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in HOP_BY_HOP and k.lower() not in tokens)
