"""The upstream transport: send a request, stream the response. One small interface so a faster
HTTP client can replace aiohttp's without touching any other step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
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


class HeaderBlock:
    """A request's header lines ready for the wire, with what a transport must know about their framing.

    Forwarding builds one from the client's fields without decoding them (`lines`); `of` builds one from
    str pairs and refuses line breaks, so no caller can split a header into two.
    """

    __slots__ = ("content_length", "has_host", "lines", "transfer_encoding")

    def __init__(
        self,
        lines: list[bytes],
        *,
        has_host: bool = False,
        content_length: bytes | None = None,
        transfer_encoding: bool = False,
    ) -> None:
        self.lines = lines  # b"Name: value\r\n" each
        self.has_host = has_host
        self.content_length = content_length  # the Content-Length line's value, if one is among `lines`
        self.transfer_encoding = transfer_encoding  # a Transfer-Encoding line is among `lines`

    @classmethod
    def of(cls, headers: Iterable[tuple[str, str]] | None = None) -> HeaderBlock:
        """From str pairs; ValueError for a name or value that would break the head (CR, LF, NUL)."""
        lines: list[bytes] = []
        has_host = chunked = False
        length: bytes | None = None
        for name, value in headers or ():
            if _BREAKS.intersection(name) or _BREAKS.intersection(value) or not name or ":" in name:
                raise ValueError(f"header {name!r} cannot be sent: a line break, NUL or colon in it")
            encoded = value.encode("utf-8", "surrogateescape")
            lines.append(name.encode("latin-1") + b": " + encoded + b"\r\n")
            lower = name.lower()
            if lower == "host":
                has_host = True
            elif lower == "content-length" and length is None:
                length = encoded.strip()
            elif lower == "transfer-encoding":
                chunked = True
        return cls(lines, has_host=has_host, content_length=length, transfer_encoding=chunked)

    def pairs(self) -> list[tuple[str, str]]:
        """The lines as str pairs (for clients that want them so, like aiohttp)."""
        out = []
        for line in self.lines:
            name, _, value = line[:-2].partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("utf-8", "surrogateescape")))
        return out

    def __repr__(self) -> str:
        return f"<HeaderBlock {len(self.lines)} lines>"


_BREAKS = frozenset("\r\n\x00")


@dataclass(slots=True)
class UpstreamRequest:
    """What to send: `url` is already percent-encoded; the body is an async iterator so uploads stream."""

    method: str
    url: str
    headers: HeaderBlock
    body: AsyncIterator[bytes] | None
    timeout: float


class UpstreamResponse(Protocol):
    """A response whose body is read in chunks; release it when done (returns the connection to the pool).

    `raw_headers` are the fields as received (name, value) in bytes: forwarding passes them on without
    decoding; `headers` is the same, decoded, for anyone who reads them."""

    status: int
    reason: str

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

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
        self.raw_headers = response.raw_headers

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
                    headers=CIMultiDict(request.headers.pairs()),
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
