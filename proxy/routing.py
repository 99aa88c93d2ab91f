"""Step 1: pick the service a request belongs to, from its Host, path prefix and headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import ServiceSettings


class Router:
    """Matches requests to services; the most specific match wins (longest path prefix, then a host,
    then more headers), and config order breaks ties."""

    def __init__(self, services: Sequence[ServiceSettings]) -> None:
        self._services = sorted(services, key=_specificity, reverse=True)

    def route(self, host: str | None, path: str, headers: Mapping[str, str]) -> ServiceSettings | None:
        """The service for this request, or None when no service matches."""
        for service in self._services:
            if _matches(service, host, path, headers):
                return service
        return None


def _specificity(service: ServiceSettings) -> tuple[int, int, int]:
    m = service.match
    if m is None:
        return (-1, 0, 0)
    return (len(m.path_prefix.rstrip("/")), m.host is not None or bool(m.hosts), len(m.header))


def _matches(service: ServiceSettings, host: str | None, path: str, headers: Mapping[str, str]) -> bool:
    match = service.match
    if match is None:
        return True
    if match.host is not None and not _host_matches(match.host, host):
        return False
    if match.hosts and not any(_host_matches(pattern, host) for pattern in match.hosts):
        return False
    if not _prefix_matches(match.path_prefix, path):
        return False
    return all(headers.get(name) == value for name, value in match.header.items())


def _host_matches(pattern: str, host: str | None) -> bool:
    """Case-insensitive, port ignored; `*.example.com` matches any one-or-more-label subdomain."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name, pattern = name.lower(), pattern.lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def _prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware: `/v1` matches `/v1` and `/v1/x` but not `/v10`."""
    base = prefix.rstrip("/")
    return not base or path == base or path.startswith(base + "/")
