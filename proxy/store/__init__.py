"""The only package that talks to Redis: connections, key names, Lua scripts; `memory://` for one replica."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    Batch,
    LimitClaim,
    Reservation,
    Settlement,
    Store,
    StoreUnavailable,
    auth_key,
    credentials_digest,
    limit_key,
    parse_usage_field,
    service_tag,
    usage_field,
)
from .memory import MemoryStore
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
    "credentials_digest",
    "limit_key",
    "open_store",
    "parse_usage_field",
    "service_tag",
    "usage_field",
]


def open_store(url: str) -> MemoryStore | RedisStore:
    """A store for `memory://`, `redis://`, `rediss://` (TLS, e.g. ElastiCache) or `unix://`."""
    if urlsplit(url).scheme == "memory":
        return MemoryStore()
    return RedisStore(url)
