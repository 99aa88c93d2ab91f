"""Every answer the proxy gives itself (not the upstream's): a JSON body `{"error": ..., "message": ...}`.

One place, so the pipeline and the forwarding step answer errors alike and a service's configured
error answers (config.ServiceSettings.errors) apply everywhere.
"""

from __future__ import annotations

from aiohttp import web

from .config import ServiceSettings


def json_error(status: int, error: str, message: str, **extra: str) -> web.Response:
    """An error answer with a machine-readable code and a message for people."""
    return web.json_response({"error": error, "message": message, **extra}, status=status)


def service_error(service: ServiceSettings, kind: str, **extra: str) -> web.Response:
    """The service's configured answer for an error kind (auth_missing, limits_exceeded, ...)."""
    answer = service.error(kind)
    return json_error(answer.status or 500, kind, answer.message or kind, **extra)
