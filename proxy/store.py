"""The only module that talks to Redis: key names, connections, and the shared authorization cache.

`memory://` gives an in-process store with the same interface, for the embedded default and the demo.
A Redis failure never raises past this module as anything but StoreUnavailable, and after one the store
stops trying for `retry_after` seconds so a dead Redis adds no latency to every request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .threescale.models import AppCredentials

KEY_PREFIX = "tsp"


class StoreUnavailable(Exception):
    """Redis could not be reached or answered with an error; callers degrade, never fail the request."""


def service_tag(service_id: str) -> str:
    """`{svc:ID}`: every key of one service shares this Redis Cluster hash tag."""
    return "{svc:" + service_id + "}"


def credentials_digest(service_id: str, credentials: AppCredentials) -> str:
    """A stable digest of the credentials, so raw keys never appear in Redis key names."""
    parts = [service_id, credentials.user_key or "", credentials.app_id or "", credentials.app_key or ""]
    flags = "u" if credentials.user_key is not None else "a" + ("k" if credentials.app_key is not None else "")
    return hashlib.sha256("\x00".join([flags, *parts]).encode()).hexdigest()[:40]


def auth_key(service_id: str, digest: str) -> str:
    """Redis key of a cached authorization."""
    return f"{KEY_PREFIX}:{service_tag(service_id)}:auth:{digest}"


class Store(Protocol):
    """What the proxy needs from shared storage."""

    @property
    def available(self) -> bool:
        """False after a failure, until a call succeeds again."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store for `memory://`: one replica only, nothing survives a restart."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._clock = clock
        self._writes = 0

    @property
    def available(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._data[key]
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (value, self._clock() + ttl)
        self._writes += 1
        if self._writes % 1024 == 0:
            self._evict_expired()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()

    def _evict_expired(self) -> None:
        now = self._clock()
        for key in [k for k, (_, exp) in self._data.items() if exp <= now]:
            del self._data[key]


class RedisStore:
    """Redis (or ElastiCache) through redis.asyncio with short timeouts and a brief circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._retry_after = retry_after
        self._clock = clock
        self._down_until = 0.0
        self._available = True

    @property
    def available(self) -> bool:
        return self._available

    @property
    def client(self) -> aioredis.Redis:
        """The raw client, for modules of this package that add their own scripts (usage buffer)."""
        return self._redis

    def _check_breaker(self) -> None:
        if not self._available and self._clock() < self._down_until:
            raise StoreUnavailable("redis is down (circuit open)")

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        self._available = False
        self._down_until = self._clock() + self._retry_after
        return StoreUnavailable(f"redis: {type(exc).__name__}")

    async def get(self, key: str) -> bytes | None:
        self._check_breaker()
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        self._available = True
        return value  # type: ignore[no-any-return]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check_breaker()
        try:
            await self._redis.set(key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        self._available = True

    async def ping(self) -> bool:
        """Always tries (ignores the breaker): readiness and recovery depend on it."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._available = True
        return True

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str) -> MemoryStore | RedisStore:
    """A store for `memory://`, `redis://`, `rediss://` (TLS, e.g. ElastiCache) or `unix://`."""
    if urlsplit(url).scheme == "memory":
        return MemoryStore()
    return RedisStore(url)
