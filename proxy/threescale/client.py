"""Async client of the 3scale Service Management API: authorize, authrep, report and the health probe.

It only turns calls into HTTP requests and answers into models or typed errors; caching, retries and
metrics belong to the callers, which choose their policy from the exception class.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Self
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .encoding import encode_auth_params, encode_options, encode_report
from .errors import (
    BackendConnectionError,
    BackendServerError,
    BackendTimeout,
    RequestRejected,
    UnparseableResponse,
)
from .models import AppCredentials, AuthStatus, Transaction
from .xml import parse_auth_response, parse_error

DEFAULT_OPTIONS: Mapping[str, str] = MappingProxyType(
    {"hierarchy": "1", "limit_headers": "1", "rejection_reason_header": "1"}
)
"""Extensions asked for on authorize/authrep: the hierarchy, the limit headers and the 409 code."""

AUTHORIZE_PATH = "/transactions/authorize.xml"
AUTHREP_PATH = "/transactions/authrep.xml"
REPORT_PATH = "/transactions.xml"
STATUS_PATH = "/status"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
RETRYABLE_4XX = frozenset({408, 429})
"""Never sent by apisonator; from a proxy in front of it they mean "try later", not "refused"."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class ThreescaleClient:
    """One pooled keep-alive session to a 3scale backend; safe to share between tasks."""

    def __init__(
        self,
        backend_url: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 100,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        url = _checked_url(backend_url)
        self._base = str(url).rstrip("/")
        self.backend_url = str(url.with_user(None)).rstrip("/")
        """The backend URL without user info, safe to log."""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool_size = pool_size
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._siblings: dict[str, ThreescaleClient] = {}

    def at(self, backend_url: str | None) -> ThreescaleClient:
        """The client for a service whose 3scale backend is elsewhere (APIcast's per-service
        `proxy.backend.endpoint`): this one for None or the same URL, else one more with the same timeout
        and pool size, made on first use and closed with this one."""
        if backend_url is None:
            return self
        key = backend_url.rstrip("/")
        if key == self._base:
            return self
        sibling = self._siblings.get(key)
        if sibling is None:
            sibling = self._siblings[key] = ThreescaleClient(
                key, timeout=self._timeout.total or 5.0, pool_size=self._pool_size
            )
        return sibling

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it; a session passed in belongs to the caller."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
        siblings, self._siblings = list(self._siblings.values()), {}
        for sibling in siblings:
            await sibling.close()

    async def authorize(
        self,
        service_id: str,
        service_token: str,
        credentials: AppCredentials,
        usage: Mapping[str, int] | None = None,
        *,
        options: Mapping[str, str] | None = None,
    ) -> AuthStatus:
        """Read-only check; `usage` is the predicted usage (none: every limit is checked)."""
        params = encode_auth_params(service_id, service_token, credentials, usage)
        return await self._auth("authorize", AUTHORIZE_PATH, params, options, _secrets(service_token, credentials))

    async def authrep(
        self,
        service_id: str,
        service_token: str,
        credentials: AppCredentials,
        usage: Mapping[str, int] | None = None,
        *,
        options: Mapping[str, str] | None = None,
        log_code: int | None = None,
    ) -> AuthStatus:
        """Check and, if authorized, count `usage` (3scale counts nothing when no usage is given)."""
        params = encode_auth_params(service_id, service_token, credentials, usage, log_code)
        return await self._auth("authrep", AUTHREP_PATH, params, options, _secrets(service_token, credentials))

    async def report(self, service_id: str, service_token: str, transactions: Sequence[Transaction]) -> None:
        """POST a batch; returns on any 2xx (3scale validates later, silently). Nothing to send, no request."""
        if not transactions:
            return
        body = urlencode(encode_report(service_id, service_token, transactions)).encode()
        answer = await self._send("report", "POST", REPORT_PATH, data=body, headers={"Content-Type": FORM_CONTENT_TYPE})
        if 200 <= answer.status < 300:
            return
        if 400 <= answer.status < 500 and answer.status not in RETRYABLE_4XX:
            secrets = _secrets(service_token, *(t.credentials for t in transactions))
            raise self._rejection("report", answer, secrets)
        raise self._server_error("report", answer.status)

    async def status(self) -> bool:
        """True when `GET /status` answers 200, for readiness probes; never raises."""
        try:
            session = self._get_session()
            async with session.get(self._base + STATUS_PATH, timeout=self._timeout) as response:
                return response.status == 200
        except Exception:
            return False

    async def _auth(
        self,
        endpoint: str,
        path: str,
        params: list[tuple[str, str]],
        options: Mapping[str, str] | None,
        secrets: Sequence[str],
    ) -> AuthStatus:
        options_value = encode_options(DEFAULT_OPTIONS if options is None else options)
        headers = {"3scale-options": options_value} if options_value else {}
        answer = await self._send(endpoint, "GET", path, params=params, headers=headers)
        if not (200 <= answer.status < 300 or 400 <= answer.status < 500) or answer.status in RETRYABLE_4XX:
            raise self._server_error(endpoint, answer.status)
        try:
            result = parse_auth_response(answer.body, answer.status, answer.headers)
        except UnparseableResponse as exc:
            raise self._unparseable(endpoint, exc) from None
        if result.reason is None:
            return result
        return dataclasses.replace(result, reason=_redact(result.reason, secrets))

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str],
    ) -> _Answer:
        """One HTTP exchange; aiohttp errors (whose text can hold the query) become typed errors `from None`."""
        query = f"?{urlencode(params)}" if params else ""
        url = URL(f"{self._base}{path}{query}", encoded=True)
        where = f"3scale {endpoint} ({method} {self.backend_url}{path})"
        try:
            session = self._get_session()
            async with session.request(method, url, data=data, headers=headers, timeout=self._timeout) as response:
                return _Answer(response.status, response.headers, await response.read())
        except TimeoutError:
            # aiohttp's total timeout does not say whether the request went out (even a wait for a pooled
            # connection looks the same), so a timeout always counts as maybe delivered.
            message = f"{where} timed out after {self._timeout.total}s"
            raise BackendTimeout(message, endpoint=endpoint, maybe_delivered=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            maybe_delivered = not isinstance(exc, aiohttp.ClientConnectorError)
            message = f"{where} failed: {_describe(exc)}"
            raise BackendConnectionError(message, endpoint=endpoint, maybe_delivered=maybe_delivered) from None

    def _get_session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use so that it binds to the running loop."""
        if self._closed:
            raise RuntimeError("ThreescaleClient is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def _rejection(
        self, endpoint: str, answer: _Answer, secrets: Sequence[str]
    ) -> RequestRejected | UnparseableResponse:
        """A 4xx error document refuses the request; any other 4xx body is no 3scale answer (e.g. a proxy)."""
        try:
            code, message = parse_error(answer.body, answer.status)
        except UnparseableResponse as exc:
            return self._unparseable(endpoint, exc)
        return RequestRejected(status=answer.status, code=code, message=_redact(message, secrets), endpoint=endpoint)

    def _server_error(self, endpoint: str, status: int) -> BackendServerError:
        """5xx and statuses 3scale never sends; a 504 means a gateway gave up, so 3scale may have acted."""
        message = f"3scale {endpoint} at {self.backend_url} answered {status}"
        return BackendServerError(message, status=status, endpoint=endpoint, maybe_delivered=status == 504)

    def _unparseable(self, endpoint: str, exc: UnparseableResponse) -> UnparseableResponse:
        message = f"3scale {endpoint} at {self.backend_url}: {exc}"
        return UnparseableResponse(
            message, status=exc.status, endpoint=endpoint, maybe_delivered=200 <= exc.status < 300
        )


def _checked_url(backend_url: str) -> URL:
    """The backend URL without query or fragment; a path prefix is kept."""
    url = URL(backend_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("3scale backend URL must be http(s)://host[:port][/prefix]")
    return url.with_query(None).with_fragment(None)


def _secrets(service_token: str, *credentials: AppCredentials) -> tuple[str, ...]:
    """The values 3scale may echo in a message (`service token "T" ...`, `user key "U" ...`)."""
    values = {service_token}
    for creds in credentials:
        values.update(v for v in (creds.user_key, creds.app_key) if v)
    return tuple(v for v in values if v)


def _redact(text: str, secrets: Sequence[str]) -> str:
    """Mask every quoted secret in a 3scale message; its templates always quote the values."""
    for secret in secrets:
        text = text.replace(f'"{secret}"', f'"{_mask(secret)}"')
    return text


def _mask(secret: str) -> str:
    """`abcd…wxyz` for long values, `…` for short ones (the same rule as the proxy's logs)."""
    return f"{secret[:4]}…{secret[-4:]}" if len(secret) >= 12 else "…"


def _describe(exc: BaseException) -> str:
    """Exception class and errno name only: aiohttp's messages can contain the full URL with the token."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return f"{type(exc).__name__} {name}".strip()
