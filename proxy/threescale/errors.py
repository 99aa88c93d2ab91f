"""Typed failures of the 3scale client, so callers choose a policy by class instead of parsing messages.

Messages name the endpoint and the HTTP status only: never a URL query, a token or a key.
"""

from __future__ import annotations


class ThreescaleError(Exception):
    """Base of everything the 3scale client raises on purpose."""


class BackendUnavailable(ThreescaleError):
    """3scale could not be asked, or gave no usable answer: the cache mode decides what happens next.

    `maybe_delivered` is True when 3scale may have received and acted on the request anyway (a timeout, a
    connection lost after sending, a 504 from a gateway): retrying a report then risks counting twice.
    """

    def __init__(self, message: str, *, endpoint: str | None = None, maybe_delivered: bool = True) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.maybe_delivered = maybe_delivered


class BackendTimeout(BackendUnavailable):
    """No complete answer within the client's timeout."""


class BackendConnectionError(BackendUnavailable):
    """The connection failed: refused, reset, DNS or TLS failure, or closed before a full answer."""


class BackendServerError(BackendUnavailable):
    """3scale (or a proxy in front of it) answered with a 5xx or another status the protocol never uses."""

    def __init__(
        self, message: str, *, status: int, endpoint: str | None = None, maybe_delivered: bool = False
    ) -> None:
        super().__init__(message, endpoint=endpoint, maybe_delivered=maybe_delivered)
        self.status = status


class UnparseableResponse(BackendServerError):
    """The status code was plausible but the body is not a 3scale document we can read."""


class RequestRejected(ThreescaleError):
    """3scale refused a report with a 4xx error document: sending the same batch again will fail again."""

    def __init__(self, *, status: int, code: str, message: str, endpoint: str | None = None) -> None:
        super().__init__(f"3scale {endpoint or 'request'} rejected with {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.endpoint = endpoint
