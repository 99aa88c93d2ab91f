"""The only package that talks to Redis: connections, key names, Lua scripts; `memory://` for one replica."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .base import (
    DEFAULT_MAX_CONNECTIONS,
    Batch,
    LimitClaim,
    Reservation,
    Settlement,
    Store,
    StoreUnavailable,
    auth_key,
    config_key,
    credentials_digest,
    limit_key,
    parse_usage_field,
    service_tag,
    usage_field,
)
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore


__all__ = [
    "Batch",
    "LimitClaim",
    "MemoryStore",
    "RedisStore",
    "Reservation",
    "Settlement",
    "Store",
    "StoreUnavailable",
    "auth_key",
    "config_key",
    "credentials_digest",
    "limit_key",
    "open_store",
    "parse_usage_field",
    "service_tag",
    "usage_field",
]


def open_store(
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_values: int = 100_000,
) -> MemoryStore | RedisStore:
    """A store for `memory://`, `redis://`, `rediss://` (TLS, e.g. ElastiCache) or `unix://`.

    `clock` times memory:// expiry; Redis expires keys by its own clock (its breaker keeps the monotonic one).
    `max_values` bounds memory://'s cached values (Redis is bounded by its own maxmemory).
    """
    if urlsplit(url).scheme == "memory":
        return MemoryStore(clock=clock, max_values=max_values)
    from .redis import RedisStore  # redis-py only where Redis is used: 7 MiB less in a memory:// process

    return RedisStore(url, max_connections=max_connections)


def __getattr__(name: str) -> Any:
    """`RedisStore` imported on first use (see open_store)."""
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
