"""The upstream transport: send a request, stream the response. One small interface so a faster
HTTP client can replace aiohttp's without touching any other step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

CHUNK_SIZE = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be used; `kind` picks the answer (refused → 502, timeout → 504)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamRefused(UpstreamError):
    """Connection refused, reset, DNS failure or a broken response: the client gets 502."""

    def __init__(self, message: str) -> None:
        super().__init__("upstream_refused", message)


class UpstreamTimeout(UpstreamError):
    """No response headers (or a stalled body) within the service's upstream_timeout: 504."""

    def __init__(self, message: str) -> None:
        super().__init__("upstream_timeout", message)


@dataclass(slots=True)
class UpstreamRequest:
    """What to send: `url` is already percent-encoded; the body is an async iterator so uploads stream."""

    method: str
    url: str
    headers: CIMultiDict[str]
    body: AsyncIterator[bytes] | None
    timeout: float


class UpstreamResponse(Protocol):
    """A response whose body is read in chunks; release it when done (returns the connection to the pool)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes:
        """The whole body at once; only for bodies known to be small (Content-Length checked)."""
        ...

    async def release(self) -> None: ...


class Transport(Protocol):
    """Sends requests to upstreams with one keep-alive pool per upstream origin."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class _AiohttpResponse:
    """UpstreamResponse over aiohttp.ClientResponse, mapping read errors to UpstreamError."""

    def __init__(self, response: aiohttp.ClientResponse, timeout: float) -> None:
        self._response = response
        self._timeout = timeout
        self.status = response.status
        self.reason = response.reason or ""
        self.headers = response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise UpstreamTimeout("upstream stalled while sending the body") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamRefused(f"upstream broke off the body: {type(exc).__name__}") from None
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._response.read()
        except TimeoutError:
            raise UpstreamTimeout("upstream stalled while sending the body") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamRefused(f"upstream broke off the body: {type(exc).__name__}") from None

    async def release(self) -> None:
        self._response.release()

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"


class AiohttpTransport:
    """The default Transport: aiohttp ClientSession per upstream origin, bodies passed through untouched."""

    def __init__(self, *, pool_size: int = 256, keepalive_timeout: float = 30.0) -> None:
        self._pool_size = pool_size
        self._keepalive_timeout = keepalive_timeout
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, url: str) -> aiohttp.ClientSession:
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, keepalive_timeout=self._keepalive_timeout, ttl_dns_cache=60
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # pass Content-Encoding through unchanged
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),  # send only what we got
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[key] = session
        return session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._session(request.url)
        try:
            async with asyncio.timeout(request.timeout):
                response = await session.request(
                    request.method,
                    URL(request.url, encoded=True),  # the client's path and query, byte for byte
                    headers=request.headers,
                    data=request.body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"no response from the upstream within {request.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamRefused(f"cannot reach the upstream: {type(exc).__name__}") from None
        return _AiohttpResponse(response, request.timeout)

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
