"""Every answer the proxy gives itself (not the upstream's): a JSON body `{"error": ..., "message": ...}`.

One place, so the pipeline and the forwarding step answer errors alike and a service's configured
error answers (config.ServiceSettings.errors) apply everywhere. Answers are built once and reused: the
same few (service, kind) answers go out for every denied request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import ServiceSettings
from .http.server import Request

JSON_HEADERS: tuple[tuple[str, str], ...] = (("Content-Type", "application/json; charset=utf-8"),)
_CACHE_MAX = 4096  # distinct answers kept (the detail of a denial comes from 3scale: bounded, but not by us)


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer of the proxy's own: status, the JSON body already encoded, its headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS

    def send(self, request: Request, extra_headers: Mapping[str, str] | None = None) -> None:
        """Write it out in one piece, with per-request headers (RateLimit, Retry-After) added."""
        headers: Iterable[tuple[str, str]] = self.headers
        if extra_headers:
            headers = (*self.headers, *extra_headers.items())
        request.respond(self.status, headers, self.body)


_replies: dict[tuple[object, ...], Reply] = {}


def json_error(status: int, error: str, message: str, **extra: str) -> Reply:
    """An error answer with a machine-readable code and a message for people."""
    key = (status, error, message, *extra.items())
    reply = _replies.get(key)
    if reply is None:
        body = json.dumps({"error": error, "message": message, **extra}).encode()
        reply = Reply(status, body)
        if len(_replies) >= _CACHE_MAX:
            _replies.clear()
        _replies[key] = reply
    return reply


def service_error(service: ServiceSettings, kind: str, **extra: str) -> Reply:
    """The service's configured answer for an error kind (auth_missing, limits_exceeded, ...)."""
    answer = service.error(kind)
    if answer.content_type:  # APIcast's way: the configured text as it is, with its Content-Type
        return text_reply(answer.status or 500, answer.message or "", answer.content_type)
    return json_error(answer.status or 500, kind, answer.message or kind, **extra)


def text_reply(status: int, text: str, content_type: str) -> Reply:
    """An answer whose body is `text` verbatim (cached like json_error's)."""
    key = (status, "text", text, content_type)
    reply = _replies.get(key)
    if reply is None:
        reply = Reply(status, text.encode("utf-8"), (("Content-Type", content_type),))
        if len(_replies) >= _CACHE_MAX:
            _replies.clear()
        _replies[key] = reply
    return reply
